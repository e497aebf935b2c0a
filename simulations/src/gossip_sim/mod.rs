//! A deterministic discrete-event simulator of the gossip core ([`kith_gossip::Gossip`]).
//!
//! Thousands of real `Gossip<u32>` state machines (the same code the node runs) exchange real
//! [`kith_gossip::Message`]s over a simulated network; only the network, the clock, the RNG and
//! the item store are simulated. Everything is driven from one seeded [`rand_chacha::ChaCha8Rng`]
//! and one time-ordered event queue (`BTreeMap<(time_ms, seq), Event>`), so a scenario and a
//! seed always produce the same run, which the trace hash proves.
//!
//! # Model
//!
//! - **Nodes.** Members `0..nodes`, each a `Gossip<u32>` with the scenario's [`kith_gossip::Config`]
//!   and a [`store::SimStore`]: every member starts knowing every member's record (an
//!   [`Arc`](std::sync::Arc)-shared base, see [`store`]), like a grid that has existed for a
//!   while. Nodes start at random times in the first second; their cores ask for connections
//!   (`Output::Connect`) on their first timers, so the overlay forms by itself. `Tick` inputs
//!   are scheduled at each core's `next_deadline()`.
//! - **Links.** `Connect(p)` reaches `p` after one latency; if both ends run, a link opens, `p`
//!   gets `Connected` at once and the dialer one latency later. Links are ordered streams: a
//!   message on a link is never delivered before an earlier one (FIFO per direction). Each
//!   message has a one-way latency uniform in `latency_ms` and is lost with probability `loss`
//!   (i.i.d.). A message to a peer with no open link is dropped (counted `no-link`); one in
//!   flight when its link closes is dropped (`cut`).
//! - **Bytes.** Every sent message is encoded with [`kith_gossip::Message::encode`]: the sizes
//!   are real CBOR sizes (transport framing and encryption overhead are not counted).
//! - **Churn.** During the measured window a Poisson process takes `churn_per_min × nodes`
//!   random nodes offline per minute for `offline_ms`: all their links close, both ends get
//!   `Disconnected`, the node runs no timers and receives nothing; it keeps its store and core
//!   (a network outage; a restart with a fresh core converges the same way through
//!   anti-entropy) and on return reconnects through its own timers.
//! - **Stalled nodes.** At the end of the warm-up a fraction `stalled` of the nodes hang: their
//!   links stay open and messages to them are swallowed, but they never process, forward or run
//!   timers. The tree must route around them (IHAVE + GRAFT).
//! - **Sybils.** Peers `nodes..nodes+sybils` have no membership record (`is_member` is false).
//!   After the warm-up each dials `sybil_links` members and every `sybil_interval_ms` sends each
//!   of them a forged push, a fake IHAVE, a sync root or a graft. The cores must drop and count
//!   them (`Stats::non_member`); none of their items may be delivered.
//! - **Forgers.** `forged` times during the window a member pushes a forged record (a valid
//!   encoding with a bad tag) to its peers: the stores refuse it (`Reject::BadSignature`).
//! - **Records.** `records` new versions of random members' records are published by their
//!   owners (`Input::Publish`) at random times in the window, and with `refresh_interval_ms`
//!   every member re-publishes its record with that period (random phase). Every publication
//!   inside the window is measured.
//!
//! # Measurements ([`Report`])
//!
//! For every measured publication, the nodes that should learn it are those that ran
//! continuously from the publication to the end of the run (not the origin, not stalled, not
//! offline at any point after it). The latency percentiles are over those (record, node) pairs,
//! with a missed pair counting as infinitely late (printed `miss` when a percentile falls on
//! one). Learning a newer version counts as learning the older. Redundancy is the cores'
//! duplicate payloads divided by new deliveries after the warm-up. Bytes per node per second
//! are over all members, for the whole run and for the window after the warm-up.
//!
//! # Steady-state traffic and the refresh rate
//!
//! Real nodes refresh their record every 12 h, so 10 000 nodes publish 10 000 / 43 200 s ≈ 0.23
//! records per second grid-wide. `steady-10k.toml` simulates exactly that rate
//! (`refresh_interval_ms = 43_200_000`): only the refreshes whose random phase falls inside the
//! simulated window happen (≈ 0.23/s × window), so the measured bytes/node/s are those of the
//! real rate without simulating 12 hours. Traffic grows linearly with the publication rate
//! (each record costs every node about one payload plus one IHAVE per lazy link), so other
//! intervals scale proportionally; the timers' own traffic (anti-entropy roots, rotations) is
//! independent of it.
//!
//! # Trace hash
//!
//! A SHA-256 over the processed events in order (time, kind, nodes involved) and every sent
//! message's encoded bytes with its destination. Any change in behaviour or any
//! nondeterminism (iteration over a hash map, an unseeded RNG) changes it.
//!
//! # Bounds
//!
//! A run stops at `warmup_ms + duration_ms + drain_ms` of simulated time or after `max_events`
//! events (then the report says `truncated`). Periodic sources (Sybils, churn, refreshes) stop
//! at the end of the window.

pub mod report;
pub mod scenario;
pub mod sim;
pub mod store;

pub use report::{Report, Totals};
pub use scenario::{CoreOverrides, Scenario, ScenarioError};
pub use sim::Sim;

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    Sim::new(scenario, seed).run()
}
