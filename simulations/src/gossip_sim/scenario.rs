//! Scenario files: what to simulate, read from TOML.
//!
//! Every field has a default, so a scenario names only what it changes. Times are in
//! milliseconds unless the name says otherwise. Example (`simulations/scenarios/1k.toml`):
//!
//! ```toml
//! name = "1k"
//! nodes = 1000
//! seeds = [1, 2, 3]
//! latency_ms = [10, 150]
//! loss = 0.01
//! warmup_ms = 30000
//! records = 50
//! duration_ms = 60000
//! ```

use kith_gossip::Config;
use serde::Deserialize;

pub use crate::scenario::ScenarioError;

/// One simulation scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name printed in the result table.
    pub name: String,
    /// Number of member nodes.
    pub nodes: u32,
    /// Seeds to run (one result row each).
    pub seeds: Vec<u64>,
    /// Per-message one-way latency, uniform in `[min, max]` ms.
    pub latency_ms: [u64; 2],
    /// Probability that a message is lost (i.i.d.).
    pub loss: f64,
    /// Encoded size of a record in bytes (real signed records are 300–500 bytes).
    pub item_size: usize,
    /// Warm-up before measuring: the overlay forms and `warmup_records` form the Plumtree tree.
    pub warmup_ms: u64,
    /// Records published during the warm-up (not measured).
    pub warmup_records: u32,
    /// Measured window after the warm-up.
    pub duration_ms: u64,
    /// Time after the window for late deliveries (anti-entropy) before the run ends.
    pub drain_ms: u64,
    /// New record versions published by random online nodes, spread over the window.
    pub records: u32,
    /// Every node re-publishes its record this often (the design uses 12 h); 0 disables.
    /// Refreshes falling inside the window are measured like `records`.
    pub refresh_interval_ms: u64,
    /// Fraction of the nodes that go offline per minute during the window (Poisson).
    pub churn_per_min: f64,
    /// How long an offline spell lasts, uniform in `[min, max]` ms.
    pub offline_ms: [u64; 2],
    /// Fraction of the nodes that stall at the end of the warm-up: connections stay up,
    /// messages to them are swallowed, they never process or forward anything.
    pub stalled: f64,
    /// Number of Sybil peers (no valid membership) that connect and send junk.
    pub sybils: u32,
    /// Members each Sybil connects to.
    pub sybil_links: u32,
    /// How often each Sybil sends one junk message to each member it is connected to.
    pub sybil_interval_ms: u64,
    /// Forged records (bad signature) pushed by random members during the window.
    pub forged: u32,
    /// Stop after this many events (a safety bound; the row is marked truncated).
    pub max_events: u64,
    /// Gossip core overrides (unset fields keep [`Config::default`]).
    pub core: CoreOverrides,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            nodes: 100,
            seeds: vec![1],
            latency_ms: [10, 150],
            loss: 0.01,
            item_size: 400,
            warmup_ms: 20_000,
            warmup_records: 5,
            duration_ms: 30_000,
            drain_ms: 15_000,
            records: 20,
            refresh_interval_ms: 0,
            churn_per_min: 0.0,
            offline_ms: [10_000, 60_000],
            stalled: 0.0,
            sybils: 0,
            sybil_links: 6,
            sybil_interval_ms: 1_000,
            forged: 0,
            max_events: 2_000_000_000,
            core: CoreOverrides::default(),
        }
    }
}

/// Optional overrides of [`Config`] fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // each field overrides the Config field of the same name
pub struct CoreOverrides {
    pub target_degree: Option<usize>,
    pub max_degree: Option<usize>,
    pub ihave_timeout: Option<u64>,
    pub graft_timeout: Option<u64>,
    pub lazy_flush: Option<u64>,
    pub sync_interval: Option<u64>,
    pub rotate_interval: Option<u64>,
    pub connect_timeout: Option<u64>,
    pub optimize_threshold: Option<u16>,
    pub min_eager: Option<usize>,
}

impl CoreOverrides {
    /// [`Config::default`] with these overrides applied.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            target_degree,
            max_degree,
            ihave_timeout,
            graft_timeout,
            lazy_flush,
            sync_interval,
            rotate_interval,
            connect_timeout,
            optimize_threshold,
            min_eager
        );
        c
    }
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// Checks value ranges.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m| Err(ScenarioError::Invalid(m));
        if self.nodes < 2 {
            return bad("nodes must be at least 2");
        }
        if self.latency_ms[0] > self.latency_ms[1] || self.offline_ms[0] > self.offline_ms[1] {
            return bad("a [min, max] range has min > max");
        }
        if !(0.0..1.0).contains(&self.loss) || !(0.0..=1.0).contains(&self.stalled) {
            return bad("loss must be in [0, 1) and stalled in [0, 1]");
        }
        if self.churn_per_min < 0.0 || self.churn_per_min > 60.0 {
            return bad("churn_per_min must be in [0, 60]");
        }
        if self.item_size < 64 || self.item_size > kith_gossip::message::MAX_ITEM {
            return bad("item_size must be in [64, MAX_ITEM]");
        }
        if self.seeds.is_empty() {
            return bad("seeds is empty");
        }
        if self.sybils > 0 && self.sybil_interval_ms == 0 {
            return bad("sybil_interval_ms must be > 0");
        }
        Ok(())
    }
}
