//! Scenario files: what to simulate, read from TOML.
//!
//! Every field has a default (the chosen parameters at 1 000 nodes), so a scenario names only
//! what it changes. Sizes are in bytes, MiB or GiB as the field name says; times in hours.
//! Example (`simulations/scenarios/accounting-block.toml`):
//!
//! ```toml
//! name = "acct-block"
//! seeds = [1, 2]
//! audit_unit = 0          # whole blocks (the current share format)
//! ```

use serde::Deserialize;

pub use crate::scenario::ScenarioError;

/// One accounting scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name printed in the result table.
    pub name: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Seeds to run (one result row each).
    pub seeds: Vec<u64>,
    /// Simulated window in hours (audits, in-window uploads, deletions).
    pub hours: u64,
    /// Fraction of the nodes that are free riders.
    pub free_riders: f64,
    /// Free-rider kinds, relative weights: `[none, overcommit, refuse]`. `none` offers no
    /// storage (advertises a zero grant); `overcommit` advertises a normal node's capacity but
    /// keeps only `overcommit_capacity` of it and refuses once full; `refuse` advertises a normal
    /// capacity and refuses every write.
    pub free_rider_mix: [f64; 3],
    /// What an `overcommit` free rider really keeps, as a fraction of what it advertises.
    pub overcommit_capacity: f64,
    /// Fraction of the nodes that silently delete shares.
    pub deleters: f64,
    /// Fraction of the deleters that delete only `small_deletion` of their shares; the others
    /// delete a fraction uniform in `big_deletion`.
    pub small_deleters: f64,
    /// The small deleters' fraction (the issue's "≥ 1%").
    pub small_deletion: f64,
    /// The big deleters' fraction, uniform in `[min, max]` (the issue's "≥ 10%").
    pub big_deletion: [f64; 2],
    /// When a deleter first deletes, uniform in `[min, max]` hours into the window.
    pub deletion_start_hours: [f64; 2],
    /// Fraction of all nodes (any role) online only `diurnal_online_hours` a day, at a random
    /// phase (laptops, home machines switched off at night).
    pub diurnal: f64,
    /// Hours a day a diurnal node is online.
    pub diurnal_online_hours: f64,
    /// Fraction of all nodes with random churn: online spells exponential with mean
    /// `churn_up_hours`, offline spells uniform in `churn_down_hours`.
    pub random_churn: f64,
    /// Mean online spell of a churning node, hours.
    pub churn_up_hours: f64,
    /// Offline spell of a churning node, uniform in `[min, max]` hours.
    pub churn_down_hours: [f64; 2],
    /// File bytes a node uploads, log-uniform in `[min, max]` GiB.
    pub demand_gib: [f64; 2],
    /// File sizes, log-uniform in `[min, max]` MiB.
    pub file_mib: [f64; 2],
    /// Fraction of each node's files uploaded before the window (the grid's history).
    pub preloaded: f64,
    /// k: shares needed.
    pub k: u32,
    /// n: shares per file, on distinct servers.
    pub n: u32,
    /// Fewest distinct servers an upload accepts (happy); below that it fails.
    pub happy: u32,
    /// Segment size in bytes (a block is `segment / k`).
    pub segment: u64,
    /// Honest capacity = `headroom` × the node's share bytes (n/k × demand).
    pub headroom: f64,
    /// Each honest node's capacity is further multiplied by a factor log-uniform in
    /// `[1/capacity_spread, capacity_spread]` (owners do not size storage exactly).
    pub capacity_spread: f64,
    /// A node's advertised per-member grant, as a fraction of its advertised capacity (in its
    /// record; the reciprocal policy grants each member what that member grants).
    pub grant_fraction: f64,
    /// Placement weights: `"free"` draws servers by advertised free space (a weighted permuted
    /// ring); `"balance"` first draws by what a server consumes beyond what it stores
    /// (`placed + balance_slack × capacity − stored`, from the records, capped by its free space)
    /// and falls back to free space.
    pub placement: Placement,
    /// The balance weight's allowance, as a fraction of the server's advertised capacity.
    pub balance_slack: f64,
    /// Reciprocal factor r of every node's policy.
    pub reciprocal: f64,
    /// Uploaders that are refused by a server which advertised room lower "what it grants me"
    /// to what it already holds for them (the reciprocal policy then grants it the same).
    pub observe_refusals: bool,
    /// Bytes challenged per audit: 0 = a whole block (the current format); otherwise a range of
    /// this size with its proof against a per-block hash tree of `audit_unit` leaves.
    pub audit_unit: u64,
    /// Target audits per audited peer per day, over all its auditors, before the traffic cap.
    /// `kith_accounting::audit` derives 99 for always-online peers; 300 leaves room for peers
    /// online 10 h a day.
    pub audits_per_peer_day: f64,
    /// Ceiling on audit traffic per week as a fraction of the bytes an auditor holds on the peer
    /// (0.001: 0.1%/week; 0 disables the cap).
    pub traffic_cap: f64,
    /// An audit that finds the peer offline is retried this many times, 1-6 h later.
    pub offline_retries: u32,
    /// Draws from the weighted ring per file before the upload gives up.
    pub max_draws: u32,
    /// Stop after this many events (a safety bound; the row is marked truncated).
    pub max_events: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            nodes: 1000,
            seeds: vec![1],
            hours: 14 * 24,
            free_riders: 0.20,
            free_rider_mix: [1.0, 1.0, 1.0],
            overcommit_capacity: 0.1,
            deleters: 0.05,
            small_deleters: 0.5,
            small_deletion: 0.01,
            big_deletion: [0.10, 1.0],
            deletion_start_hours: [12.0, 96.0],
            diurnal: 0.30,
            diurnal_online_hours: 10.0,
            random_churn: 0.10,
            churn_up_hours: 20.0,
            churn_down_hours: [1.0, 48.0],
            demand_gib: [1.0, 30.0],
            file_mib: [2.0, 500.0],
            preloaded: 0.8,
            k: 3,
            n: 10,
            happy: 7,
            segment: 1 << 20,
            headroom: 1.25,
            capacity_spread: 1.15,
            grant_fraction: 0.05,
            placement: Placement::Balance,
            balance_slack: 0.05,
            reciprocal: 1.0,
            observe_refusals: true,
            audit_unit: 4096,
            audits_per_peer_day: 300.0,
            traffic_cap: 0.001,
            offline_retries: 3,
            max_draws: 400,
            max_events: 200_000_000,
        }
    }
}

/// How uploaders weight servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// By advertised free space.
    Free,
    /// By consumption beyond contribution, then free space.
    Balance,
}

fn range_ok(r: [f64; 2], min: f64) -> bool {
    r[0].is_finite() && r[1].is_finite() && r[0] >= min && r[0] <= r[1]
}

fn frac(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
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
        if self.nodes < self.n + 1 || self.nodes > 100_000 {
            return bad("nodes must be in [n + 1, 100000]");
        }
        if self.seeds.is_empty() {
            return bad("seeds is empty");
        }
        if self.hours == 0 || self.hours > 24 * 365 {
            return bad("hours must be in [1, 8760]");
        }
        if !(frac(self.free_riders)
            && frac(self.deleters)
            && self.free_riders + self.deleters <= 1.0)
        {
            return bad("free_riders + deleters must be a fraction");
        }
        if self
            .free_rider_mix
            .iter()
            .any(|w| !(w.is_finite() && *w >= 0.0))
            || self.free_rider_mix.iter().sum::<f64>() <= 0.0
        {
            return bad("free_rider_mix needs non-negative weights, not all 0");
        }
        if !(frac(self.overcommit_capacity)
            && frac(self.small_deleters)
            && frac(self.small_deletion)
            && frac(self.diurnal)
            && frac(self.random_churn)
            && frac(self.preloaded)
            && self.diurnal + self.random_churn <= 1.0)
        {
            return bad("a fraction is outside [0, 1] (or diurnal + random_churn > 1)");
        }
        if !(range_ok(self.big_deletion, 0.0) && self.big_deletion[1] <= 1.0) {
            return bad("big_deletion must be a range in [0, 1]");
        }
        if !(range_ok(self.deletion_start_hours, 0.0)
            && range_ok(self.churn_down_hours, 0.0)
            && range_ok(self.demand_gib, 1e-6)
            && range_ok(self.file_mib, 1e-6))
        {
            return bad("a [min, max] range has min > max or is out of range");
        }
        let hours_ok = self.diurnal_online_hours > 0.0
            && self.diurnal_online_hours <= 24.0
            && self.churn_up_hours > 0.0
            && self.churn_up_hours.is_finite();
        if !hours_ok {
            return bad("diurnal_online_hours must be in (0, 24] and churn_up_hours > 0");
        }
        if self.k == 0 || self.k > self.happy || self.happy > self.n || self.n > 255 {
            return bad("need 1 <= k <= happy <= n <= 255");
        }
        if !(1024..=(4 << 20)).contains(&self.segment) {
            return bad("segment must be in [1 KiB, 4 MiB]");
        }
        for x in [
            self.headroom,
            self.capacity_spread,
            self.grant_fraction,
            self.reciprocal,
        ] {
            if !(x.is_finite() && x > 0.0 && x <= 1000.0) {
                return bad(
                    "headroom, capacity_spread, grant_fraction, reciprocal must be in (0, 1000]",
                );
            }
        }
        if !frac(self.balance_slack) {
            return bad("balance_slack must be in [0, 1]");
        }
        if self.capacity_spread < 1.0 {
            return bad("capacity_spread must be >= 1");
        }
        let audit_ok = self.audits_per_peer_day.is_finite()
            && (0.0..=100_000.0).contains(&self.audits_per_peer_day)
            && self.traffic_cap.is_finite()
            && self.traffic_cap >= 0.0;
        if !audit_ok {
            return bad("audits_per_peer_day must be in [0, 100000] and traffic_cap >= 0");
        }
        if self.audit_unit != 0 && self.audit_unit < 32 {
            return bad("audit_unit must be 0 (whole block) or >= 32 bytes");
        }
        if self.offline_retries > 24 || self.max_draws < self.n {
            return bad("offline_retries must be <= 24 and max_draws >= n");
        }
        Ok(())
    }

    /// Simulated window in seconds.
    pub fn window_secs(&self) -> u64 {
        self.hours * 3600
    }

    /// Block size in bytes: `⌈segment / k⌉`.
    pub fn block_size(&self) -> u64 {
        self.segment.div_ceil(u64::from(self.k))
    }
}
