//! `accounting-sim`: runs accounting scenarios (TOML files) through the deterministic simulator
//! and prints one row per scenario and seed.
//!
//! ```text
//! cargo run --release -p kith-simulations --bin accounting-sim -- simulations/scenarios/accounting-1k.toml
//! cargo run --release -p kith-simulations --bin accounting-sim -- -v --seed 7 simulations/scenarios/accounting-*.toml
//! ```
//!
//! Columns: `≥10%24h` deleters of ≥ 10% of their shares flagged within 24 h of their first
//! deletion / those whose first deletion was ≥ 24 h before the end, `P24` the mean modelled
//! odds of that (`1 − (1 − f)^a` over the audits each answered, in %), `1%7d` and `P7d` the same
//! for ~1% deleters over 7 days, `det h p50/max` hours from first deletion to the first flag (≥ 10%
//! deleters), `false` non-deleters ever flagged, `aud%/wk` audit bytes per week as a % of stored
//! bytes (grid-wide) and `p99%/wk` its 99th percentile per audited peer, `band%` honest peers
//! consuming 0.8-1.25× what they contribute, `ratio p5/50/95` that ratio's percentiles, `fr%`
//! the share bytes free riders managed to place as a % of what they wanted, and the first 16 hex
//! digits of the trace hash. `-v` adds volumes, audit counters and free riders by kind.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use clap::Parser;
use kith_simulations::accounting_sim::{Report, Scenario, Sim};

/// Run accounting simulation scenarios.
#[derive(Parser)]
struct Args {
    /// Scenario files (TOML).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Run only this seed instead of the scenario's seeds.
    #[arg(long)]
    seed: Option<u64>,
    /// Print volumes, audit counters and free riders by kind under each row.
    #[arg(short, long)]
    verbose: bool,
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
            let r = Sim::new(&sc, seed).run();
            println!("{}  {:.1}s", r.row(), start.elapsed().as_secs_f64());
            if args.verbose {
                println!("{}", r.detail());
            }
        }
    }
    Ok(())
}
