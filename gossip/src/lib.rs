//! kith-gossip: grid membership and discovery without an introducer.
//!
//! This crate will hold the gossip issue's work: invitation codes, membership certificates
//! chained to the grid founder's key, signed and sequence-numbered node records, and their
//! dissemination (a sans-IO core, generic over peer id and RNG, driven by a libp2p shell) with
//! periodic anti-entropy.
//!
//! Today the crate is an empty skeleton: nodes learn about each other only from static peers
//! (`kith peer add`, or `peers` in `kith.toml`).
