//! Multi-node end-to-end tests: real kith nodes (in-process swarms, or `kith-test-node` child
//! processes) on loopback. One test binary, a module per feature.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod access;
mod audit;
mod crash;
mod gossip;
mod grid;
mod local;
mod mutable;
mod protocol;
mod repair;
