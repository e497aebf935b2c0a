//! `gossip-sim`: runs gossip scenarios (TOML files) through the deterministic simulator and
//! prints one row per scenario and seed.
//!
//! ```text
//! cargo run --release -p kith-simulations --bin gossip-sim -- simulations/scenarios/1k.toml
//! cargo run --release -p kith-simulations --bin gossip-sim -- -v --seed 7 simulations/scenarios/*.toml
//! ```
//!
//! Columns: times for running nodes to learn a new record in ms (p50, p99, p99.9, max; `miss`
//! when the percentile falls on a node that never learned it), `deliv%` of (record, node) pairs
//! delivered, `redund` duplicate payloads per delivery, `B/n/s` bytes sent per node per second
//! over the whole run and `B/n/s*` after the warm-up (steady state), `missed` pairs, `sybil
//! drop` Sybil messages dropped by the cores / received, and the first 16 hex digits of the
//! trace hash.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use clap::Parser;
use kith_simulations::gossip_sim::{Report, Scenario, Sim};

/// Run gossip simulation scenarios.
#[derive(Parser)]
struct Args {
    /// Scenario files (TOML).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Run only this seed instead of the scenario's seeds.
    #[arg(long)]
    seed: Option<u64>,
    /// Print bytes per message kind and other counters under each row.
    #[arg(short, long)]
    verbose: bool,
    /// Print every input and message of this node on stderr.
    #[arg(long)]
    watch: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("{}  wall", Report::header());
    for path in &args.scenarios {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let sc = Scenario::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        let seeds = args.seed.map_or_else(|| sc.seeds.clone(), |s| vec![s]);
        for seed in seeds {
            let start = Instant::now();
            let mut sim = Sim::new(&sc, seed);
            if let Some(n) = args.watch {
                sim = sim.watch(n);
            }
            let r = sim.run();
            println!("{}  {:.1}s", r.row(), start.elapsed().as_secs_f64());
            if args.verbose {
                println!("{}", r.detail());
            }
        }
    }
    Ok(())
}
