//! kith-simulations: benchmarks now, deterministic simulations later.
//!
//! - `bench` (binary): `bench grid --nodes 10 --size 256MiB` starts N real kith daemons on
//!   loopback and measures encoder-only throughput, end-to-end upload and download, and the
//!   uploading node's memory; see the README for recorded numbers.
//!
//! The gossip issue adds discrete-event simulations of the sans-IO cores here (thousands of
//! peers, fixed seeds, a trace hash to prove determinism).
