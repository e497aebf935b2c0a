//! kith-node: the composition root of a kith node, and the `kith` binary's library.
//!
//! kith is a peer-to-peer "friendnet" store in the lineage of Tahoe-LAFS: files are encrypted on
//! the uploader's machine, erasure-coded k-of-n and spread over friends' nodes; servers learn
//! nothing about the plaintext and every block is verified against the capability before use.
//!
//! Pure modules (no tokio, no IO, no clocks):
//! - [`hash`]: SHA-256 tagged hashes;
//! - [`caps`]: read / verify / LIT capabilities and their text forms;
//! - [`codec`]: convergent AES-256-CTR, segmenting, Reed-Solomon, block and share Merkle trees,
//!   the URI extension block (UEB), share metadata, verification;
//! - [`placement`]: permuted ring and servers of happiness;
//! - [`protocol`]: the storage protocol's messages and bounded wire codec.
//!
//! IO modules:
//! - [`storage`]: share files and their redb index and leases;
//! - [`server`]: the storage server answering protocol requests;
//! - [`net`]: the libp2p swarm actor (identify, ping, storage request-response);
//! - [`client`]: uploader and downloader;
//! - [`friends`]: the accounting ledger joined with the members: usage both ways, grants, policy;
//! - [`grid`]: membership (invitations, certificates, records, expulsions) and the gossip task;
//! - [`maintenance`]: lease renewal of uploads and the storage server's garbage collector;
//! - [`node`]: [`node::Node`] and the cloneable [`node::NodeHandle`];
//! - [`api`], [`daemon`]: the local HTTP API and `kith run`;
//! - [`config`], [`nodedir`]: `kith.toml` and the node directory.

pub mod api;
pub mod caps;
pub mod client;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod friends;
pub mod grid;
pub mod hash;
pub mod maintenance;
pub mod net;
pub mod node;
pub mod nodedir;
pub mod placement;
pub mod protocol;
pub mod redact;
pub mod server;
pub mod storage;

pub use node::{Node, NodeHandle, StartOptions};
