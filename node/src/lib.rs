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
//! - [`mutable`]: mutable slots (RSA-signed versions, write enablers, newest-version choice);
//! - [`dirnode`]: directory tables (read-only views hide children's write caps);
//! - [`placement`]: permuted ring and servers of happiness;
//! - [`hedge`]: when a download stops waiting for a server's listing or block;
//! - [`repair`]: the repair planner (where regenerated shares go) and the share regenerator
//!   that rebuilds missing shares from the verify cap alone;
//! - [`protocol`]: the storage protocol's messages and bounded wire codec.
//!
//! IO modules:
//! - [`storage`]: share files and their redb index and leases;
//! - [`server`]: the storage server answering protocol requests;
//! - [`net`]: the libp2p swarm actor (identify, ping, storage request-response);
//! - [`client`]: uploader and downloader;
//! - [`fs`]: directories and paths (`alias:a/b`): list, link, unlink, rename, mkdir, put;
//! - [`aliases`]: local names for caps;
//! - [`slot`]: mutable files on the grid (map, read, test-and-set publish, modify);
//! - [`friends`]: the accounting ledger joined with the members: usage both ways, grants, policy;
//! - [`grid`]: membership (invitations, certificates, records, expulsions) and the gossip task;
//! - [`maintenance`]: lease renewal of uploads and the storage server's garbage collector;
//! - [`checker`]: check / verify / repair of immutable files and the automatic repairer;
//! - [`node`]: [`node::Node`] and the cloneable [`node::NodeHandle`];
//! - [`api`], [`daemon`]: the local HTTP API and `kith run`;
//! - [`config`], [`nodedir`]: `kith.toml` and the node directory.

pub mod aliases;
pub mod api;
mod api_fs;
pub mod caps;
pub mod checker;
pub mod client;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod deepcheck;
pub mod dirnode;
pub mod friends;
pub mod fs;
pub mod grid;
pub mod hash;
pub mod hedge;
pub mod local;
pub mod maintenance;
pub mod mutable;
pub mod net;
pub mod node;
pub mod nodedir;
pub mod placement;
pub mod protocol;
pub mod redact;
pub mod repair;
pub mod server;
pub mod slot;
pub mod storage;

pub use node::{Node, NodeHandle, StartOptions};

/// Property-test settings shared by the crate's tests.
#[cfg(test)]
pub(crate) mod prop {
    use proptest::test_runner::Config;

    /// `n` cases, or `PROPTEST_CASES` when it is set, for a longer soak
    /// (`PROPTEST_CASES=5000 cargo test -p kith`): `Config::with_cases` alone ignores it.
    pub(crate) fn cases(n: u32) -> Config {
        Config::with_cases(cases_from(
            std::env::var("PROPTEST_CASES").ok().as_deref(),
            n,
        ))
    }

    fn cases_from(env: Option<&str>, n: u32) -> u32 {
        env.and_then(|v| v.trim().parse().ok())
            .filter(|&c| c > 0)
            .unwrap_or(n)
    }

    #[test]
    fn proptest_cases_from_the_environment_win_over_the_test_s_own_count() {
        assert_eq!(cases_from(None, 48), 48);
        assert_eq!(cases_from(Some("5000"), 48), 5000);
        assert_eq!(cases_from(Some(" 7 "), 48), 7);
        assert_eq!(cases_from(Some("many"), 48), 48);
        assert_eq!(cases_from(Some("0"), 48), 48);
    }
}
