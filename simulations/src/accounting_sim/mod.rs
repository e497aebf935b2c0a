//! A deterministic simulator of kith's accounting: reciprocal grants, free riders, silent
//! deleters, audits and beta reputation at 1 000 nodes (the accounting issue's scope item 7).
//!
//! The decisions are `kith_accounting`'s: [`kith_accounting::Policy::effective_grant`] with the
//! reciprocal policy (r = 1.0) and [`kith_accounting::Quota::allows`] decide every write exactly
//! as `Ledger::check_write` does; [`kith_accounting::audit::plan`] picks every day's challenges;
//! [`kith_accounting::Reputation`] scores every answer. The ledger itself is not instantiated
//! (1 000 ledgers × ~1 000 accounts is ~0.5 GB); the simulator keeps the same per-account
//! numbers (bytes stored, bytes placed, what the peer grants, reputation) in compact pairs. One
//! seeded [`rand_chacha::ChaCha8Rng`] and one time-ordered queue (`BTreeMap<(secs, seq), _>`)
//! drive everything, so a scenario and a seed always produce the same run (the trace hash).
//!
//! # Model
//!
//! - **Nodes and roles.** `nodes` nodes; a random `free_riders` fraction are free riders of three
//!   kinds: `none` (storage off: advertises a zero grant), `overcommit` (advertises a normal
//!   node's capacity, keeps 10% of it and refuses once full), `refuse` (advertises a normal
//!   capacity, refuses every write); a `deleters` fraction are silent deleters: at a random
//!   time in the first days they delete a fraction of the shares they hold (half of them 1%,
//!   half 10-100%) and from then on drop new shares with the same probability, while
//!   answering audits of what they kept. The rest are honest.
//! - **Churn**, independent of the role: `diurnal` nodes are online `diurnal_online_hours` a
//!   day at a random phase; `random_churn` nodes alternate exponential online spells and
//!   uniform offline spells. An offline node stores nothing new, answers no challenge and sends
//!   none (its audits that day are skipped); its uploads wait until it is back.
//! - **Files.** Each node uploads log-uniform `demand_gib` of files of log-uniform `file_mib`;
//!   `preloaded` of them before the window (the grid's history, all nodes reachable), the rest
//!   at random times in it. Files are k-of-n (3-of-10): n shares of `⌈size / k⌉` bytes with one
//!   block per 1 MiB segment, on n distinct servers; fewer than `happy` (7) willing servers
//!   fails the upload.
//! - **Capacities and grants.** An honest node offers `headroom` (1.25) × its share bytes, times
//!   a log-uniform owner's whim in `[1/capacity_spread, capacity_spread]`. Every node advertises
//!   a per-member grant of `grant_fraction` of its advertised capacity in its record; every node
//!   runs `reciprocal 1.0`, so a server grants each uploader what that uploader grants, and the
//!   server refuses a write over that quota, over its own capacity, or always (`refuse`).
//!   Uploaders skip shares larger than their own grant (no reciprocal server would take them).
//! - **Observed grants.** When a server that advertised room refuses a write (full, or a
//!   refuser), the uploader records that "what it grants me" is what it already holds for me
//!   (`Event::TheyGrant` in the node) and stops placing there: the reciprocal policy then grants
//!   that server no more than it gives (`observe_refusals`).
//! - **Placement** is a weighted permuted ring, sampled without replacement from a Fenwick tree:
//!   `balance` (the default) draws first by each server's consumption beyond its contribution
//!   (`placed + 5% of capacity − stored`, from the records, capped by free space) and then by
//!   free space; `free` draws by advertised free space only. Per uploader, suspects are skipped
//!   and other servers kept with probability = their reputation score (low scorers get fewer
//!   new shares).
//! - **Audits.** Every day each node plans, per peer holding its shares, `rate` challenges
//!   with [`kith_accounting::audit::plan`] (random share, random block, random second), where
//!   `rate = min(audits_per_peer_day × held / stored_on_peer, traffic_cap × held / (7 ×
//!   bytes_per_audit))` with fractional audits carried to the next day: the peer receives
//!   `audits_per_peer_day` a day from all its auditors together, unless that would exceed
//!   `traffic_cap` (0.1%) of the bytes per week. A challenge of a deleted share fails; an
//!   offline peer gives `Outcome::Offline` (never a failure), retried up to
//!   `offline_retries` times 1-6 h later. A peer is **flagged** by an auditor when that
//!   auditor's reputation for it becomes `suspect()`; a flagged non-deleter is a false
//!   accusation.
//! - **Audit sizes.** `audit_unit = 0` challenges a whole block (~341 KiB with 1 MiB segments,
//!   the current format: a block hash covers the whole block). `audit_unit = 4096` challenges
//!   a 4 KiB range with its path in a per-block hash tree of 4 KiB leaves (7 hashes) — a
//!   **share-format change** (the block hash would become that tree's root) which the current
//!   codec does not have. Both add the block-tree and share-tree proofs and ~100 bytes of
//!   request and framing.
//!
//! # Measurements ([`Report`])
//!
//! Detection time per deleter is from its first deletion to the first auditor flagging it;
//! deleters are split by fraction (≥ 10%, ~1%) and counted within 24 h / 7 days among those
//! whose window fits in the run; `P24`/`P7d` average `1 − (1 − f)^a` over the audits each
//! answered (the sampling odds, meaningful with 25 deleters a class). Audit traffic is every
//! audit's bytes per week over the mean stored bytes (daily samples), grid-wide and per peer.
//! The honest ratio is share bytes placed / share bytes stored for others at the end.
//!
//! # Trace hash
//!
//! A SHA-256 over every processed event's time, every placement (file, servers), deletion
//! count, day plan size and audit (auditor, peer, share, block, outcome, flag).
//!
//! # Bounds
//!
//! Uploads retry hourly only inside the window; planning covers the window's days; weighted
//! draws per file are bounded by `max_draws`; the run stops after `max_events` (then the report
//! says truncated).

pub mod report;
pub mod scenario;
pub mod sim;

pub use report::{Detection, Report};
pub use scenario::{Scenario, ScenarioError};
pub use sim::Sim;

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    Sim::new(scenario, seed).run()
}
