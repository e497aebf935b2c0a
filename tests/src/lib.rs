//! kith-tests: helpers for the multi-node end-to-end tests in `tests/tests/e2e/`.
//!
//! [`Grid`] starts real kith nodes in this process (each with its own node dir, redb, share
//! store and libp2p swarm on loopback TCP or QUIC) that form a grid the way users do: node 0
//! founds it, node i joins with an invitation from node (i-1)/2 (chains, not all invited by
//! the founder), and everyone learns of everyone by gossip. The
//! `kith-test-node` binary runs the real daemon in a child process for tests that must kill a
//! node with SIGKILL. [`natlab`] runs nodes inside a NAT lab of network namespaces;
//! [`tornet`] runs a private Tor network on loopback for the Tor tests (`tests/tests/tor.rs`).

pub mod natlab;
pub mod tornet;

use std::{path::PathBuf, time::Duration};

use kith_node::{
    Node, NodeHandle, StartOptions,
    config::{ByteSize, RawConfig},
    nodedir::NodeDir,
};

/// Which transport the grid's nodes listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `/ip4/127.0.0.1/tcp/<port>`.
    Tcp,
    /// `/ip4/127.0.0.1/udp/<port>/quic-v1`.
    Quic,
    /// `/ip6/::1/tcp/<port>`.
    Tcp6,
    /// `/ip6/::1/udp/<port>/quic-v1`.
    Quic6,
}

/// Encoding for a grid's nodes.
#[derive(Clone, Copy, Debug)]
pub struct Encoding {
    /// k.
    pub needed: u8,
    /// Servers of happiness.
    pub happy: u8,
    /// n.
    pub total: u8,
}

/// A grid of in-process nodes on loopback, formed by invitation chains.
pub struct Grid {
    /// Keeps the node dirs alive.
    pub tmp: tempfile::TempDir,
    /// Node dirs, in order.
    pub dirs: Vec<NodeDir>,
    /// Running nodes (`None` once stopped).
    pub nodes: Vec<Option<Node>>,
}

impl Grid {
    /// Initializes and starts `n` nodes, forms the grid by invitation chains and waits until
    /// each knows all `n` members and storage servers.
    pub async fn start(n: usize, listen: Listen, enc: Encoding) -> anyhow::Result<Grid> {
        Self::start_with(n, listen, enc, |_, _| {}).await
    }

    /// [`start`](Self::start), with `configure(i, config)` applied to node `i`'s `kith.toml`
    /// before it starts.
    pub async fn start_with(
        n: usize,
        listen: Listen,
        enc: Encoding,
        configure: impl Fn(usize, &mut RawConfig),
    ) -> anyhow::Result<Grid> {
        let grid = Self::start_unjoined_with(n, listen, enc, configure).await?;
        for i in 1..n {
            grid.join(i, (i - 1) / 2).await?;
        }
        grid.wait_converged(Duration::from_secs(30)).await?;
        Ok(grid)
    }

    /// Node `i` joins with an invitation from node `inviter`.
    pub async fn join(&self, i: usize, inviter: usize) -> anyhow::Result<()> {
        let code = self
            .node(inviter)
            .invite(Duration::from_secs(600), 1)
            .await?
            .code;
        self.node(i)
            .join(&code)
            .await
            .map_err(|e| anyhow::anyhow!("node{i} joining via node{inviter}: {e}"))?;
        Ok(())
    }

    /// Waits until every running node knows every running node as a member and storage server.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.handles().len();
        for h in self.handles() {
            h.wait_for_members(n, timeout)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            h.wait_for_storage_servers(n, timeout)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", h.config().nickname))?;
        }
        Ok(())
    }

    /// Initializes and starts `n` nodes, each alone in a grid of its own.
    pub async fn start_unjoined(n: usize, listen: Listen, enc: Encoding) -> anyhow::Result<Grid> {
        Self::start_unjoined_with(n, listen, enc, |_, _| {}).await
    }

    async fn start_unjoined_with(
        n: usize,
        listen: Listen,
        enc: Encoding,
        configure: impl Fn(usize, &mut RawConfig),
    ) -> anyhow::Result<Grid> {
        let tmp = tempfile::tempdir()?;
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = NodeDir::new(tmp.path().join(format!("node{i}")));
            let mut raw = RawConfig {
                nickname: format!("node{i}"),
                ..RawConfig::default()
            };
            raw.network.listen = vec![match listen {
                Listen::Tcp => "/ip4/127.0.0.1/tcp/0".into(),
                Listen::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                Listen::Tcp6 => "/ip6/::1/tcp/0".into(),
                Listen::Quic6 => "/ip6/::1/udp/0/quic-v1".into(),
            }];
            raw.encoding.shares_needed = enc.needed;
            raw.encoding.shares_happy = enc.happy;
            raw.encoding.shares_total = enc.total;
            raw.storage.capacity = ByteSize(8 << 30);
            // Tests must not depend on how full the machine's disk is.
            raw.storage.reserved = ByteSize(0);
            configure(i, &mut raw);
            dir.init(raw)?;
            dirs.push(dir);
        }
        let mut nodes = Vec::new();
        for dir in &dirs {
            nodes.push(Some(
                Node::start(dir.clone(), StartOptions::default()).await?,
            ));
        }
        Ok(Grid { tmp, dirs, nodes })
    }

    /// Starts node `i` again (after [`stop`](Self::stop)) from its node dir.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_none() {
            self.nodes[i] = Some(Node::start(self.dirs[i].clone(), StartOptions::default()).await?);
        }
        Ok(())
    }

    /// Handle of node `i` (panics if stopped: a test bug).
    pub fn node(&self, i: usize) -> NodeHandle {
        match &self.nodes[i] {
            Some(n) => n.handle(),
            None => panic!("node {i} is stopped"),
        }
    }

    /// Handles of the running nodes.
    pub fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().flatten().map(Node::handle).collect()
    }

    /// Stops node `i` and waits until every other running node has seen it disconnect.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(node) = self.nodes[i].take() else {
            return Ok(());
        };
        let peer = node.handle().peer_id();
        node.shutdown().await;
        for h in self.handles() {
            let mut w = h.net_watch();
            tokio::time::timeout(
                Duration::from_secs(20),
                w.wait_for(|s| !s.peers.contains_key(&peer)),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{} still sees a stopped node", h.config().nickname))??;
        }
        Ok(())
    }

    /// Where node `i` keeps its storage.
    pub fn storage_dir(&self, i: usize) -> PathBuf {
        self.dirs[i].storage()
    }
}

/// The addresses in `peer`'s record as `of` holds it (panics when `of` has no record of it).
pub async fn record_addrs(of: &NodeHandle, peer: &NodeHandle) -> Vec<String> {
    let id = peer.peer_id().to_string();
    of.grid_info()
        .await
        .members
        .into_iter()
        .find(|m| m.peer_id == id)
        .unwrap_or_else(|| panic!("{} has no record of {id}", of.config().nickname))
        .addrs
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `bound` (tests wait on
/// conditions with a deadline, never on a fixed sleep).
pub async fn until(what: &str, bound: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + bound;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` bytes from a seeded generator (fast, reproducible).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}
