//! Multi-node end-to-end tests: real kith nodes (in-process swarms, or `kith-test-node` child
//! processes) on loopback. One test binary, a module per feature.

mod crash;
mod grid;
mod protocol;
