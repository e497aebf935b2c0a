//! kith-simulations: benchmarks and deterministic simulations.
//!
//! - `bench` (binary): `bench grid --nodes 10 --size 256MiB` starts N real kith daemons on
//!   loopback and measures encoder-only throughput, end-to-end upload and download, and the
//!   uploading node's memory; see the README for recorded numbers.
//! - [`gossip_sim`] and the `gossip-sim` binary: a deterministic discrete-event simulator of the
//!   sans-IO gossip core at up to 10 000 peers (latency, loss, churn, stalled nodes, Sybils),
//!   driven by the TOML scenarios in `simulations/scenarios/`:
//!
//! ```text
//! cargo run --release -p kith-simulations --bin gossip-sim -- simulations/scenarios/1k.toml
//! ```

pub mod accounting_sim;
pub mod gossip_sim;
pub mod scenario;
