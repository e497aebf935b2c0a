//! The composition root: [`Node::start`] opens the node dir (config, key, redb, share store),
//! starts the network actor, dials static peers, and hands out a cloneable [`NodeHandle`] that
//! the CLI's local API, the tests and the benchmark all go through.
//!
//! Tor (`[tor]` in `kith.toml`): with `mode = "both"` or `"only"` the node creates an arti
//! client (state and the onion-service key under `<dir>/tor/state`, so the onion address is
//! stable; cache under `<dir>/tor/cache`), bootstraps it in the background and listens on its
//! onion service (`tor.port`). `only` runs the Tor transport alone (no TCP/QUIC socket) and the
//! network actor without AutoNAT, relays, hole punching or UPnP; the onion address is the only
//! address in the node's record. With `mode = "off"` and `dial_onions` (the default) the node
//! keeps an on-demand arti client (same dirs, created and bootstrapped at the first dial to an
//! onion address, never listening, never used for clearnet addresses), so clearnet members reach
//! Tor-only ones. [`NodeHandle::tor_status`] is the `tor` line of `kith status`.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use tokio::io::AsyncWrite;

use crate::{
    caps::ReadCap,
    client::{self, DownloadError, DownloadReport, PutOptions, PutResult, UploadError},
    config::{Config, StaticPeer, TorMode},
    friends::{FriendError, Friends, FriendsInfo, PolicyInfo},
    grid::{self, GridError, GridHandle, GridInfo, InviteInfo},
    maintenance::{self, CollectorStatus, RenewReport},
    net::{self, NetHandle, NetState, RpcError},
    nodedir::{DirError, NodeDir},
    protocol::{Request, RequestFrame, Response},
    server::StorageServer,
    storage::{ShareStore, StoreConfig, StoreError},
};

/// Static peers added at run time (`kith peer add`): peer id (text) -> multiaddr (text).
const STATIC_PEERS: TableDefinition<&str, &str> = TableDefinition::new("static-peers-0");

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node dir is missing, unreadable or invalid.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The redb database could not be opened (another `kith run` on the same dir?).
    #[error("cannot open {path}: {message} (is another kith daemon running on this dir?)")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's message.
        message: String,
    },
    /// The share store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// A peer address is invalid or the peer could not be reached.
    #[error("{0}")]
    Peer(String),
    /// The grid state could not be loaded.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// Tor (arti) could not be set up.
    #[error("tor: {0}")]
    Tor(#[from] kith_transports::tor::TorError),
    /// `tor.arti_config` could not be read.
    #[error("cannot read tor.arti_config {path}: {source}")]
    ArtiConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn db_err(path: &Path) -> impl Fn(String) -> NodeError + '_ {
    move |message| NodeError::Db {
        path: path.to_owned(),
        message,
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    net_task: tokio::task::JoinHandle<()>,
    grid_task: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    repairer: tokio::task::JoinHandle<()>,
}

/// Options for [`Node::start`] beyond `kith.toml`.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Enable the in-memory transport in addition to what the listen addresses need.
    pub memory_transport: bool,
    /// Skip arti's permission checks on the node's Tor dirs (tests under a shared `/tmp`).
    pub tor_trust_dirs: bool,
}

/// The node's arti client (state and onion key under `<dir>/tor/state`, directory cache under
/// `<dir>/tor/cache`). With `eager` it is created now and bootstraps in the background: the node
/// starts at once, `kith status` shows the progress. Without, it is created and bootstrapped
/// only when the first onion address is dialed (`tor.mode = "off"`).
fn start_tor(
    dir: &NodeDir,
    settings: &crate::config::TorSettings,
    trust_dirs: bool,
    eager: bool,
) -> Result<kith_transports::tor::Tor, NodeError> {
    let root = dir.root().join("tor");
    let arti_toml = match &settings.arti_config {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| NodeError::ArtiConfig {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let config = kith_transports::tor::TorConfig {
        arti_toml,
        trust_all_dir_permissions: trust_dirs,
        ..kith_transports::tor::TorConfig::new(root.join("state"), root.join("cache"))
    };
    if !eager {
        return Ok(kith_transports::tor::Tor::on_demand(&config)?);
    }
    let tor = kith_transports::tor::Tor::create(&config)?;
    let t = tor.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match t.bootstrap().await {
            Ok(()) => tracing::info!(took = ?started.elapsed(), "tor bootstrapped"),
            Err(e) => tracing::warn!(error = %e, "tor bootstrap failed; arti keeps trying on use"),
        }
    });
    Ok(tor)
}

#[derive(Debug)]
struct Inner {
    dir: NodeDir,
    config: Config,
    peer_id: PeerId,
    convergence: [u8; 32],
    server: StorageServer,
    net: NetHandle,
    tor: Option<kith_transports::tor::Tor>,
    grid: GridHandle,
    friends: Friends,
    statics: Arc<Mutex<BTreeSet<PeerId>>>,
    db: Arc<redb::Database>,
    reports: Mutex<VecDeque<(u64, DownloadReport)>>,
    ops: Mutex<VecDeque<Operation>>,
    collector: maintenance::SharedStatus,
    repairer: crate::checker::Repairer,
    transferred: [std::sync::atomic::AtomicU64; 2],
    collect_now: tokio::sync::Notify,
    next_report: Mutex<u64>,
    puts: crate::client::PutQueues,
    silent: Mutex<crate::hedge::Silent<PeerId>>,
    /// Servers uploads left behind as far slower than the others, lately.
    lagging: Mutex<crate::hedge::Silent<PeerId>>,
}

/// Cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl Node {
    /// Starts the node in `dir` (which must be initialized).
    pub async fn start(dir: NodeDir, opts: StartOptions) -> Result<Node, NodeError> {
        let config = dir.load_config()?;
        let keypair = dir.keypair()?;
        let convergence = dir.convergence_secret()?;
        let db_path = dir.db_path();
        let db = Arc::new(
            redb::Database::create(&db_path).map_err(|e| db_err(&db_path)(e.to_string()))?,
        );
        {
            let tx = db
                .begin_write()
                .map_err(|e| db_err(&db_path)(e.to_string()))?;
            tx.open_table(STATIC_PEERS)
                .map_err(|e| db_err(&db_path)(e.to_string()))?;
            tx.commit().map_err(|e| db_err(&db_path)(e.to_string()))?;
        }
        let store = if config.storage_enabled {
            let store_cfg = StoreConfig {
                root: dir.storage(),
                capacity: config.capacity,
                reserved: config.reserved,
                read_only: false,
                direct_io: config.direct_io,
            };
            let db2 = db.clone();
            Some(
                tokio::task::spawn_blocking(move || ShareStore::open(db2, store_cfg))
                    .await
                    .map_err(|e| NodeError::Peer(e.to_string()))??,
            )
        } else {
            None
        };
        let server = StorageServer::new(store, config.lease_secs);
        let uses =
            |f: fn(&Protocol<'_>) -> bool| config.listen.iter().any(|a| a.iter().any(|p| f(&p)));
        let tor_mode = config.tor.mode;
        let tor = match (tor_mode, config.tor.dial_onions) {
            (TorMode::Off, false) => None,
            (TorMode::Off, true) => Some(start_tor(&dir, &config.tor, opts.tor_trust_dirs, false)?),
            (TorMode::Both | TorMode::Only, _) => {
                Some(start_tor(&dir, &config.tor, opts.tor_trust_dirs, true)?)
            }
        };
        let mut listen = config.listen.clone();
        let transports = match &tor {
            Some(t) if tor_mode == TorMode::Only => kith_transports::Config::tor_only(t.clone()),
            _ => kith_transports::Config {
                tcp: true,
                quic: true,
                memory: opts.memory_transport || uses(|p| matches!(p, Protocol::Memory(_))),
                tor: tor.clone(),
                tor_scope: match tor_mode {
                    TorMode::Off => kith_transports::tor::Scope::OnionDialOnly,
                    TorMode::Both | TorMode::Only => kith_transports::tor::Scope::Full,
                },
                ..kith_transports::Config::default()
            },
        };
        if tor_mode != TorMode::Off {
            listen.push(kith_transports::tor::onion_listen_addr(config.tor.port));
        }
        let (net, events, net_task) = net::spawn(
            &keypair,
            &transports,
            &listen,
            server.clone(),
            net::NatOptions {
                features: config.nat,
                relay_limits: config.relay_limits,
                announce: config.announce.clone(),
                upnp_description: format!("kith {}", config.nickname),
                tor_only: transports.is_tor_only(),
                onions_on_demand: tor_mode == TorMode::Off,
            },
        )?;
        let _ = std::fs::create_dir_all(dir.tmp());
        let membership = {
            let db = db.clone();
            let keypair = keypair.clone();
            tokio::task::spawn_blocking(move || grid::load(&db, &keypair))
                .await
                .map_err(|e| NodeError::Peer(e.to_string()))??
        };
        let free_store = server.store().cloned();
        let profile = grid::Profile {
            nickname: config.nickname.clone(),
            storage: server.store().is_some(),
            capacity: config.capacity,
            free: Arc::new(move || {
                free_store
                    .as_ref()
                    .and_then(|s| s.usage().ok())
                    .map_or(0, |u| {
                        u.capacity
                            .saturating_sub(u.used_bytes)
                            .saturating_sub(u.in_flight_bytes)
                    })
            }),
            encoding: (
                config.encoding.needed,
                config.encoding.happy,
                config.encoding.total,
            ),
            announce: config.announce.clone(),
            grants: {
                let db = db.clone();
                Arc::new(move || crate::friends::grant_view(&db))
            },
        };
        let (grid, grid_task) =
            GridHandle::spawn(membership, db.clone(), net.clone(), events, profile);
        let peer_id = keypair.public().to_peer_id();
        {
            let grid = grid.clone();
            net.set_relay_members(Arc::new(move |p: &PeerId| grid.is_member(p)));
        }
        let statics: Arc<Mutex<BTreeSet<PeerId>>> = Arc::default();
        if config.accept_from == crate::config::AcceptFrom::Members {
            let (grid, statics) = (grid.clone(), statics.clone());
            server.set_write_policy(Arc::new(move |p: &PeerId| {
                *p == peer_id
                    || grid.is_member(p)
                    || statics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(p)
            }));
        }
        let friends = {
            let (db, grid) = (db.clone(), grid.clone());
            tokio::task::spawn_blocking(move || Friends::open(db, grid, peer_id))
                .await
                .map_err(|e| NodeError::Peer(e.to_string()))?
                .map_err(|e| NodeError::Peer(e.to_string()))?
        };
        let handle = NodeHandle {
            inner: Arc::new(Inner {
                peer_id,
                friends,
                dir,
                config,
                convergence,
                server,
                net,
                tor,
                grid,
                statics,
                db,
                reports: Mutex::new(VecDeque::new()),
                ops: Mutex::new(VecDeque::new()),
                collector: maintenance::SharedStatus::default(),
                repairer: crate::checker::Repairer::new(),
                transferred: Default::default(),
                collect_now: tokio::sync::Notify::new(),
                next_report: Mutex::new(0),
                puts: Default::default(),
                silent: Default::default(),
                lagging: Mutex::new(crate::hedge::Silent::fading_after(
                    crate::hedge::LAGGING_FOR,
                )),
            }),
        };
        for peer in handle.static_peers() {
            handle
                .inner
                .statics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer.peer);
            let net = handle.inner.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.dial(peer.clone(), true).await {
                    tracing::info!(peer = %peer, error = %e, "static peer not reachable yet; will retry");
                }
            });
        }
        {
            let db = handle.inner.db.clone();
            tokio::task::spawn_blocking(move || {
                maintenance::init(&db)?;
                crate::slot::init(&db)?;
                crate::aliases::init(&db)
            })
            .await
            .map_err(|e| NodeError::Peer(e.to_string()))?
            .map_err(NodeError::Peer)?;
        }
        let upkeep = tokio::spawn(upkeep(handle.clone()));
        let repairer = tokio::spawn(crate::checker::run_repairer(
            handle.clone(),
            handle.inner.config.repair,
        ));
        Ok(Node {
            handle,
            net_task,
            grid_task,
            upkeep,
            repairer,
        })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node: closes connections, stops the network actor.
    pub async fn shutdown(self) {
        self.upkeep.abort();
        let _ = self.upkeep.await;
        self.repairer.abort();
        let _ = self.repairer.await;
        self.handle.inner.net.shutdown().await;
        let _ = self.net_task.await;
        // The gossip task ends when the network's event queue closes.
        let _ = self.grid_task.await;
    }
}

/// How often the collector runs on its own.
pub const COLLECT_EVERY: Duration = Duration::from_secs(3600);
/// How often a round of audits runs.
pub const AUDIT_EVERY: Duration = Duration::from_secs(15 * 60);
/// Challenges per audit round (384 a day, spread over every share this node placed).
pub const AUDITS_PER_ROUND: usize = 4;
/// How often uploads' leases are checked for renewal.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// The upkeep task: the collector every hour (or when asked), lease renewal of uploads whose
/// leases are past half their period.
async fn upkeep(node: NodeHandle) {
    let mut collect = tokio::time::interval(COLLECT_EVERY);
    let mut renew = tokio::time::interval(RENEW_CHECK_EVERY);
    let mut audit = tokio::time::interval(AUDIT_EVERY);
    audit.tick().await;
    let mut members = node.inner.grid.watch();
    loop {
        tokio::select! {
            r = members.changed() => {
                if r.is_err() {
                    break;
                }
                let (db, grid) = (node.inner.db.clone(), node.inner.grid.clone());
                let me = grid::pk_of(&node.inner.peer_id);
                let _ = tokio::task::spawn_blocking(move || {
                    me.map(|me| crate::friends::learn_their_grants(&db, &grid, &me))
                })
                .await;
            }
            _ = audit.tick() => {
                if let Err(e) = maintenance::audit(&node, AUDITS_PER_ROUND).await {
                    tracing::warn!(error = %e, "audit round failed");
                }
            }
            _ = collect.tick() => node.run_collector().await,
            () = node.inner.collect_now.notified() => node.run_collector().await,
            _ = renew.tick() => {
                let half = Duration::from_secs(node.inner.config.lease_secs / 2);
                match maintenance::renew(&node, half).await {
                    Ok(r) if !r.failed.is_empty() => {
                        tracing::warn!(renewed = r.renewed, failed = r.failed.len(), "lease renewal incomplete");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
            }
        }
    }
}

/// An upload or download in progress (or recently finished), for the panel.
#[derive(Clone, Debug, Serialize)]
pub struct Operation {
    /// Id.
    pub id: u64,
    /// "upload" or "download".
    pub kind: &'static str,
    /// File name, when known.
    pub name: String,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all, when known.
    pub total: Option<u64>,
    /// Started (unix seconds).
    pub started: u64,
    /// Finished (successfully or not).
    pub finished: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// `kith status` as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node's peer id.
    pub peer_id: String,
    /// Nickname.
    pub nickname: String,
    /// Node dir.
    pub dir: String,
    /// Listen addresses.
    pub listen_addrs: Vec<String>,
    /// Dialable addresses with `/p2p/`.
    pub addrs: Vec<String>,
    /// Connected peers.
    pub connected_peers: Vec<PeerStatus>,
    /// Storage server usage (absent when storage is off).
    pub storage: Option<StorageStatus>,
    /// Software version.
    pub version: String,
    /// The grid (its founder's peer id).
    pub grid: String,
    /// Members known, this node included.
    pub members: usize,
    /// How this node is reachable and how it got there, in one line.
    pub reachability: String,
    /// The automatic connectivity state behind that line.
    pub nat: NatStatus,
    /// Tor (absent when Tor is off entirely: `tor.mode = "off"` with `dial_onions = false`).
    pub tor: Option<TorInfo>,
    /// The automatic repairer's progress.
    pub repair: crate::checker::RepairerStatus,
}

/// Tor as `kith status` shows it ([`TorInfo::line`]) and `/api/v1/status` returns it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TorInfo {
    /// `off` (onion addresses dialed on demand), `both` or `only`.
    pub mode: String,
    /// The arti client exists (in mode `off`: since the first onion dial).
    pub started: bool,
    /// Arti's bootstrap progress, 0..=100.
    pub percent: u8,
    /// Arti can build circuits.
    pub ready: bool,
    /// Why arti is stuck, if it is (a guard that can't be reached, clock skew, no directory).
    pub blocked: Option<String>,
    /// The onion service's state (arti's estimate), once it runs.
    pub onion_service: Option<String>,
    /// The onion service is reachable: arti believes it is (descriptor published, introduction
    /// points up), or a peer has reached it. `None` without an onion service.
    pub onion_reachable: Option<bool>,
    /// What arti says is wrong with the onion service, if anything.
    pub onion_problem: Option<String>,
    /// This node's onion address (`/onion3/…:<port>`), once listening.
    pub onion: Option<String>,
    /// Incoming onion-service connections accepted since start.
    pub inbound: u64,
    /// Tor streams opened since start (dials that reached the far end).
    pub dials_ok: u64,
    /// Tor streams that failed to open since start.
    pub dials_failed: u64,
    /// Why the last failed one failed.
    pub last_dial_error: Option<String>,
}

impl TorInfo {
    /// The `tor` line of `kith status`: bootstrap progress and health, the onion address and
    /// whether the service is published and reachable, and the streams opened through Tor.
    pub fn line(&self) -> String {
        let mut out = format!("{} mode", self.mode);
        if !self.started {
            out.push_str(if self.mode == "off" {
                ", idle: arti starts at the first dial to an onion address"
            } else {
                ", not started"
            });
            return out;
        }
        let state = match (&self.blocked, self.ready) {
            (Some(why), _) => format!("blocked: {why}"),
            (None, true) => "ok".to_owned(),
            (None, false) => "bootstrapping".to_owned(),
        };
        out.push_str(&format!(", bootstrap {}% {state}", self.percent));
        if self.mode != "off" {
            match &self.onion {
                Some(a) => out.push_str(&format!(", onion {a}")),
                None => out.push_str(", onion (not listening yet)"),
            }
            let service = match self.onion_service.as_deref() {
                Some("Running") => "published",
                Some("DegradedReachable") => "published (degraded)",
                Some("DegradedUnreachable") => "descriptor upload failing",
                Some("Bootstrapping") => "publishing",
                Some("Recovering") => "recovering",
                Some("Broken") => "broken",
                Some("Shutdown") => "stopped",
                Some(other) => other,
                None => "not launched",
            };
            let reach = match self.onion_reachable {
                Some(true) => "reachable",
                _ => "not known reachable",
            };
            // Arti's estimate can say "failing" while peers get in: both are shown.
            out.push_str(&format!(
                " ({reach}: {} inbound; arti: {service})",
                self.inbound
            ));
            if let Some(p) = &self.onion_problem {
                out.push_str(&format!(" problem: {p}"));
            }
        }
        out.push_str(&format!(
            ", streams {} ok / {} failed",
            self.dials_ok, self.dials_failed
        ));
        if let (Some(e), true) = (&self.last_dial_error, self.dials_failed > 0) {
            out.push_str(&format!(" (last: {e})"));
        }
        out
    }
}

/// Connectivity state (`kith status`, the panel's overview, `/api/v1/status`).
#[derive(Clone, Debug, Serialize)]
pub struct NatStatus {
    /// `public`, `private` or `unknown` (sysadmin mode without confirmed addresses).
    pub kind: &'static str,
    /// Confirmed external addresses with where each came from (`configured`, `autonat`,
    /// `upnp`), relayed ones excluded.
    pub external: Vec<(String, kith_nat::Source)>,
    /// Relayed addresses this node announces.
    pub relayed: Vec<String>,
    /// Relays holding this node's reservations (`accepted` or `requesting`).
    pub reservations: Vec<(String, &'static str)>,
    /// UPnP: `off`, `idle`, `trying`, `mapped` or `failed: <why>`.
    pub upnp: String,
    /// One line for `kith status` and the panel: the state, and once mapped the service and
    /// what is mapped (`mapped by NAT-PMP: 192.168.1.10:4002 -> 11.0.0.11:4002 (tcp), ...`).
    pub upnp_summary: String,
    /// What started the last UPnP attempt (`start`, `retry`, `renewal`, `announced`: the
    /// router announced itself, `network_changed`: this node's addresses changed), if one was
    /// made.
    pub upnp_trigger: Option<kith_nat::policy::Trigger>,
    /// UPnP mappings in place (`internal -> external (tcp)`) and IPv6 pinholes (`pinhole
    /// [address]:port (tcp)`).
    pub upnp_mappings: Vec<String>,
    /// The router's IGD service (`WANIPConnection:1` or `:2`).
    pub upnp_service: Option<String>,
    /// Hole punches that ended direct, of all that finished.
    pub hole_punched: (usize, usize),
    /// Whether this node relays for members now.
    pub relay_service: bool,
    /// Members holding a reservation on this node's relay now.
    pub relay_clients: Vec<String>,
    /// Circuits relayed through this node now.
    pub relay_circuits: usize,
    /// Relay requests refused (non-members, limits), per requester.
    pub relay_refused: Vec<(String, u64)>,
    /// The features in force.
    pub features: kith_nat::Features,
    /// Addresses AutoNAT tests, with their last outcome and next test.
    pub autonat: Vec<AutonatStatus>,
}

/// One address AutoNAT tests.
#[derive(Clone, Debug, Serialize)]
pub struct AutonatStatus {
    /// The address.
    pub addr: String,
    /// Confirmed reachable.
    pub confirmed: bool,
    /// Where its tests stand: `reachable`, `unreachable`, `no_answer` (timeouts, refusals)
    /// or `untested`.
    pub state: &'static str,
    /// The last test's outcome (`reachable`, `unreachable`, `error`, `unsupported`).
    pub last: Option<kith_nat::autonat::Outcome>,
    /// Tests finished.
    pub tests: u32,
    /// Seconds until the next test (none while one runs).
    pub next_test_in_s: Option<u64>,
    /// One line for `kith status`.
    pub summary: String,
}

impl AutonatStatus {
    /// `r` as reported `since` ago.
    fn of(r: &kith_nat::autonat::schedule::Report<Multiaddr>, since: Duration) -> Self {
        use kith_nat::autonat::Outcome;
        let state = match (r.confirmed, r.last) {
            (true, _) | (false, Some(Outcome::Reachable)) => "reachable",
            (false, Some(Outcome::Unreachable)) => "unreachable",
            (false, Some(_)) => "no_answer",
            (false, None) => "untested",
        };
        let next = r
            .next_in_ms
            .map(|ms| Duration::from_millis(ms).saturating_sub(since).as_secs());
        let tests = match r.tests {
            0 => String::new(),
            1 => " (1 test)".to_owned(),
            n => format!(" ({n} tests)"),
        };
        let when = match next {
            None => ", testing now".to_owned(),
            Some(0) => ", next test now".to_owned(),
            Some(s) => format!(", next test in {s} s"),
        };
        Self {
            addr: r.addr.to_string(),
            confirmed: r.confirmed,
            state,
            last: r.last,
            tests: r.tests,
            next_test_in_s: next,
            summary: format!("{} {}{tests}{when}", r.addr, state.replace('_', " ")),
        }
    }
}

/// One connected peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// Peer id.
    pub peer_id: String,
    /// Remote addresses.
    pub addrs: Vec<String>,
    /// Offers storage.
    pub storage: bool,
    /// Agent string.
    pub agent: Option<String>,
    /// Round-trip time.
    pub rtt_ms: Option<f64>,
    /// The path in use: `direct`, `UPnP`, `hole-punched` or `relayed`.
    pub path: String,
    /// The peer's nickname, when it is a member.
    pub nickname: Option<String>,
    /// A static peer (`kith peer add`).
    pub static_peer: bool,
    /// It left a storage request unanswered lately (failed, or still silent when the others
    /// had answered): new uploads and mutable writes leave it out while enough others remain,
    /// until it answers a request or [`crate::hedge::SILENT_FOR`] passes.
    pub silent: bool,
    /// An upload left it behind lately, far slower than the others: new uploads and repairs
    /// leave it out while enough others remain, for [`crate::hedge::LAGGING_FOR`].
    pub slow: bool,
}

/// Storage server usage.
#[derive(Clone, Debug, Serialize)]
pub struct StorageStatus {
    /// Bytes of shares stored.
    pub used_bytes: u64,
    /// Shares stored.
    pub share_count: u64,
    /// Configured capacity.
    pub capacity_bytes: u64,
    /// Capacity left (capacity - used - in flight).
    pub free_bytes: u64,
    /// Free disk space.
    pub disk_free_bytes: u64,
    /// Reserved disk space.
    pub reserved_bytes: u64,
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The node dir.
    pub fn dir(&self) -> &NodeDir {
        &self.inner.dir
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The convergence secret.
    pub(crate) fn convergence_secret(&self) -> &[u8; 32] {
        &self.inner.convergence
    }

    /// The network view.
    pub fn net(&self) -> NetState {
        self.inner.net.state()
    }

    /// A receiver of every change of the network view.
    pub fn net_watch(&self) -> tokio::sync::watch::Receiver<NetState> {
        self.inner.net.watch()
    }

    /// The storage server (and through it the share store).
    pub fn server(&self) -> &StorageServer {
        &self.inner.server
    }

    /// The addresses this node tells others (as its record does, see `grid::advertised`),
    /// each with `/p2p/<peer id>`.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        grid::advertised(&self.inner.config.announce, &self.inner.net.state())
            .iter()
            .map(|a| kith_transports::with_peer_id(a, self.inner.peer_id))
            .collect()
    }

    /// Candidate storage servers: grid members whose records offer storage (connections open
    /// on demand), connected static peers offering storage, and this node when it offers
    /// storage.
    pub fn storage_servers(&self) -> Vec<PeerId> {
        self.storage_candidates().0
    }

    /// [`storage_servers`](Self::storage_servers) and the members whose published grants
    /// refuse this node (with why), from one consistent view of the grid.
    pub fn storage_candidates(&self) -> (Vec<PeerId>, Vec<(PeerId, &'static str)>) {
        let (granting, refusing) = self.inner.grid.storage_view();
        let mut s: BTreeSet<PeerId> = granting.into_iter().collect();
        let statics = self
            .inner
            .statics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.extend(
            self.inner
                .net
                .state()
                .storage_peers()
                .into_iter()
                .filter(|p| statics.contains(p)),
        );
        if self.inner.server.store().is_some() {
            s.insert(self.inner.peer_id);
        }
        (s.into_iter().collect(), refusing)
    }

    /// The grid (membership and gossip).
    pub fn grid(&self) -> &GridHandle {
        &self.inner.grid
    }

    /// Friends and access (the accounting ledger).
    pub fn friends(&self) -> &Friends {
        &self.inner.friends
    }

    /// Every member and account: usage both ways, access, audit score.
    pub async fn friends_info(&self) -> Result<FriendsInfo, FriendError> {
        let connected = self.inner.net.state().peers;
        self.with_friends(move |f| f.info(&connected)).await
    }

    /// Runs `op` on the ledger off the async threads (it reads and writes redb).
    async fn with_friends<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Friends) -> Result<T, FriendError> + Send + 'static,
    ) -> Result<T, FriendError> {
        let f = self.inner.friends.clone();
        tokio::task::spawn_blocking(move || op(&f))
            .await
            .map_err(|e| FriendError::Store(e.to_string()))?
    }

    /// An owner's decision: applied to the ledger, then this node's record is republished so
    /// uploaders learn it.
    async fn decide<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Friends) -> Result<T, FriendError> + Send + 'static,
    ) -> Result<T, FriendError> {
        let out = self.with_friends(op).await?;
        let _ = self.inner.grid.refresh_record().await;
        Ok(out)
    }

    /// Grants `peer` storage here up to `quota`.
    pub async fn grant(
        &self,
        peer: PeerId,
        quota: kith_accounting::Quota,
    ) -> Result<(), FriendError> {
        self.decide(move |f| f.grant(&peer, quota)).await
    }

    /// Revokes `peer`'s access: no new writes from now; shares kept for `grace`.
    pub async fn revoke(&self, peer: PeerId, grace: Duration) -> Result<(), FriendError> {
        self.decide(move |f| f.revoke(&peer, grace)).await
    }

    /// Changes the storage policy.
    pub async fn set_policy(
        &self,
        change: kith_accounting::PolicyChange,
    ) -> Result<PolicyInfo, FriendError> {
        self.decide(move |f| f.set_policy(change)).await
    }

    /// Members, expulsions and gossip counters.
    pub async fn grid_info(&self) -> GridInfo {
        self.inner.grid.info().await
    }

    /// Creates an invitation code valid for `ttl` and `uses` joins.
    pub async fn invite(&self, ttl: Duration, uses: u32) -> Result<InviteInfo, GridError> {
        let enc = &self.inner.config.encoding;
        self.inner
            .grid
            .invite(ttl, uses, self.addrs(), (enc.needed, enc.happy, enc.total))
            .await
    }

    /// Joins the grid of an invitation code; returns how many members are known.
    pub async fn join(&self, code: &str) -> Result<usize, GridError> {
        self.inner.grid.join(code).await
    }

    /// Expels a member grid-wide.
    pub async fn expel(&self, peer: PeerId) -> Result<(), GridError> {
        self.inner.grid.expel(peer).await
    }

    /// Waits until this node knows `n` members (itself included).
    pub async fn wait_for_members(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let mut w = self.inner.grid.watch();
        let count = |g: &GridHandle| g.state().registry().records().count();
        let res = tokio::time::timeout(timeout, w.wait_for(|_| count(&self.inner.grid) >= n)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "{} knows {} of {n} members after {timeout:?}",
                self.inner.config.nickname,
                count(&self.inner.grid)
            )),
        }
    }

    /// Small-file puts queued per server (see [`crate::client::PutQueues`]).
    pub(crate) fn put_queues(&self) -> &crate::client::PutQueues {
        &self.inner.puts
    }

    /// Sends a storage request to `server` (answered locally when it is this node). A failed
    /// request marks the server [silent](crate::hedge::Silent), an answer clears the mark (a
    /// request whose caller stopped waiting for it counts as neither).
    pub async fn rpc(&self, server: PeerId, req: Request) -> Result<Response, RpcError> {
        if server == self.inner.peer_id {
            Ok(self
                .inner
                .server
                .handle(server, RequestFrame::Request(req))
                .await)
        } else {
            let r = self.inner.net.request(server, req).await;
            match &r {
                Ok(_) => self.silent().answered(&server),
                Err(RpcError::Failed { .. }) => self.went_silent(server),
                Err(_) => {}
            }
            r
        }
    }

    fn silent(&self) -> std::sync::MutexGuard<'_, crate::hedge::Silent<PeerId>> {
        self.inner.silent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `server` left a request unanswered (a straggler an operation stopped waiting for): new
    /// uploads and mutable writes leave it out for a while ([`crate::hedge::SILENT_FOR`]).
    pub fn went_silent(&self, server: PeerId) {
        if server != self.inner.peer_id {
            self.silent().went_silent(server, std::time::Instant::now());
        }
    }

    /// Whether `server` left a request unanswered lately.
    pub fn is_silent(&self, server: &PeerId) -> bool {
        self.silent().is_silent(server, std::time::Instant::now())
    }

    /// Servers that left a request unanswered lately.
    pub fn silent_servers(&self) -> Vec<PeerId> {
        self.silent().silent(std::time::Instant::now())
    }

    /// An upload left `server` behind, far slower than the others: new uploads and repairs
    /// leave it out for a while ([`crate::hedge::LAGGING_FOR`]) while enough others remain.
    pub fn went_slow(&self, server: PeerId) {
        if server != self.inner.peer_id {
            self.lagging()
                .went_silent(server, std::time::Instant::now());
        }
    }

    fn lagging(&self) -> std::sync::MutexGuard<'_, crate::hedge::Silent<PeerId>> {
        self.inner.lagging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Servers uploads left behind lately as far slower than the others.
    pub fn slow_servers(&self) -> Vec<PeerId> {
        self.lagging().silent(std::time::Instant::now())
    }

    /// `servers` without the silent ones, when at least `keep` remain, and then without the
    /// lagging ones, when at least `keep` still remain.
    pub fn put_aside(&self, servers: Vec<PeerId>, keep: usize) -> Vec<PeerId> {
        let now = std::time::Instant::now();
        let heard = self.silent().put_aside(servers, keep, now);
        self.lagging().put_aside(heard, keep, now)
    }

    /// Waits until at least `n` storage servers (this node included) are available.
    pub async fn wait_for_storage_servers(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut net = self.inner.net.watch();
        let mut grid = self.inner.grid.watch();
        let res = tokio::time::timeout(timeout, async {
            while self.storage_servers().len() < n {
                tokio::select! {
                    r = net.changed() => if r.is_err() { return false },
                    r = grid.changed() => if r.is_err() { return false },
                }
            }
            true
        })
        .await;
        match res {
            Ok(true) => Ok(()),
            _ => Err(format!(
                "only {} of {n} storage servers after {timeout:?}",
                self.storage_servers().len()
            )),
        }
    }

    /// Static peers: from `kith.toml` and from `kith peer add`.
    pub fn static_peers(&self) -> Vec<StaticPeer> {
        let mut peers = self.inner.config.peers.clone();
        if let Ok(tx) = self.inner.db.begin_read()
            && let Ok(table) = tx.open_table(STATIC_PEERS)
            && let Ok(iter) = table.iter()
        {
            for (k, v) in iter.flatten() {
                if let Ok(p) = format!("{}/p2p/{}", v.value(), k.value()).parse::<StaticPeer>()
                    && !peers.iter().any(|q| q.peer == p.peer)
                {
                    peers.push(p);
                }
            }
        }
        peers
    }

    /// Records a static peer (persisted) and dials it; returns once connected, or with the dial
    /// error (the peer stays recorded and is redialed).
    pub async fn add_peer(&self, peer: StaticPeer) -> Result<(), NodeError> {
        if peer.peer == self.inner.peer_id {
            return Err(NodeError::Peer("that is this node's own peer id".into()));
        }
        let db = self.inner.db.clone();
        let (k, v) = (peer.peer.to_string(), peer.addr.to_string());
        let path = self.inner.dir.db_path();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.open_table(STATIC_PEERS)
                .map_err(|e| e.to_string())?
                .insert(k.as_str(), v.as_str())
                .map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| NodeError::Peer(e.to_string()))?
        .map_err(db_err(&path))?;
        self.inner
            .statics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.peer);
        self.inner
            .net
            .dial(peer.clone(), true)
            .await
            .map_err(|e| NodeError::Peer(format!("recorded {peer}, but dialing it failed: {e}")))
    }

    /// Forgets a static peer added with [`add_peer`](Self::add_peer) and disconnects from it.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<bool, NodeError> {
        let db = self.inner.db.clone();
        let key = peer.to_string();
        let path = self.inner.dir.db_path();
        let removed = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            let removed = tx
                .open_table(STATIC_PEERS)
                .map_err(|e| e.to_string())?
                .remove(key.as_str())
                .map_err(|e| e.to_string())?
                .is_some();
            tx.commit().map_err(|e| e.to_string())?;
            Ok(removed)
        })
        .await
        .map_err(|e| NodeError::Peer(e.to_string()))?
        .map_err(db_err(&path))?;
        self.inner
            .statics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        self.inner.net.forget(peer).await;
        Ok(removed)
    }

    /// The node's status.
    pub async fn status(&self) -> Status {
        let (grid_id, members) = {
            let g = self.inner.grid.state();
            (g.grid(), g.registry().records().count())
        };
        let net = self.inner.net.state();
        let statics: Vec<PeerId> = self.static_peers().iter().map(|p| p.peer).collect();
        let silent = self.silent_servers();
        let slow = self.slow_servers();
        let storage = match self.inner.server.store().cloned() {
            Some(store) => tokio::task::spawn_blocking(move || store.usage())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|u| StorageStatus {
                    used_bytes: u.used_bytes,
                    share_count: u.share_count,
                    capacity_bytes: u.capacity,
                    free_bytes: u
                        .capacity
                        .saturating_sub(u.used_bytes)
                        .saturating_sub(u.in_flight_bytes),
                    disk_free_bytes: u.disk_free,
                    reserved_bytes: u.reserved,
                }),
            None => None,
        };
        let names: std::collections::HashMap<PeerId, String> = {
            let g = self.inner.grid.state();
            g.registry()
                .records()
                .filter_map(|r| Some((grid::peer_of(&r.body.peer)?, r.body.nickname.clone())))
                .collect()
        };
        let name = |p: &PeerId| {
            names.get(p).cloned().unwrap_or_else(|| {
                let s = p.to_string();
                format!("{}…", &s[..s.len().min(12)])
            })
        };
        let nat = self.nat_status(&net, &name);
        let tor = self.tor_status();
        Status {
            repair: self.inner.repairer.status(),
            tor,
            reachability: net
                .nat
                .policy
                .as_ref()
                .map(|p| p.explain(&name))
                .unwrap_or_default(),
            nat,
            peer_id: self.inner.peer_id.to_string(),
            nickname: self.inner.config.nickname.clone(),
            dir: self.inner.dir.root().display().to_string(),
            listen_addrs: net.listen_addrs.iter().map(ToString::to_string).collect(),
            addrs: self.addrs().iter().map(ToString::to_string).collect(),
            connected_peers: net
                .peers
                .iter()
                .map(|(p, s)| PeerStatus {
                    peer_id: p.to_string(),
                    addrs: s.addrs.iter().map(ToString::to_string).collect(),
                    storage: s.storage,
                    agent: s.agent.clone(),
                    rtt_ms: s.rtt_ms,
                    path: s.path.to_string(),
                    nickname: names.get(p).cloned(),
                    static_peer: statics.contains(p),
                    silent: silent.contains(p),
                    slow: slow.contains(p),
                })
                .collect(),
            storage,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            grid: grid::peer_of(&grid_id)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            members,
        }
    }

    /// Tor's state (`None` when Tor is off entirely).
    pub fn tor_status(&self) -> Option<TorInfo> {
        let tor = self.inner.tor.as_ref()?;
        let st = tor.status();
        let onion = self.onion_addr();
        Some(TorInfo {
            mode: self.inner.config.tor.mode.to_string(),
            started: st.started,
            percent: st.percent,
            ready: st.ready,
            blocked: st.blocked,
            onion_service: st.onion_service.map(|s| format!("{s:?}")),
            onion_reachable: (self.inner.config.tor.mode != TorMode::Off).then(|| {
                st.inbound > 0 || st.onion_service.is_some_and(|s| s.is_fully_reachable())
            }),
            onion_problem: st.onion_problem,
            onion: onion.map(|a| a.to_string()),
            inbound: st.inbound,
            dials_ok: st.dials_ok,
            dials_failed: st.dials_failed,
            last_dial_error: st.last_dial_error,
        })
    }

    /// This node's onion address, once its onion service listens.
    pub fn onion_addr(&self) -> Option<Multiaddr> {
        self.inner
            .net
            .state()
            .listen_addrs
            .into_iter()
            .find(grid::is_onion)
    }

    fn nat_status(&self, net: &NetState, name: &dyn Fn(&PeerId) -> String) -> NatStatus {
        use kith_nat::{Reachability, policy::Upnp};
        let policy = net.nat.policy.clone().unwrap_or_else(|| {
            kith_nat::Policy::new(self.inner.config.nat, &self.inner.config.announce, 0)
        });
        let (kind, external) = match policy.reachability() {
            Reachability::Public { addrs } => (
                "public",
                addrs.iter().map(|(a, s)| (a.to_string(), *s)).collect(),
            ),
            Reachability::Private { .. } => ("private", Vec::new()),
            Reachability::Unknown => ("unknown", Vec::new()),
        };
        let upnp = match policy.upnp() {
            Upnp::Off => "off".into(),
            Upnp::Idle => "idle".into(),
            Upnp::Trying => "trying".into(),
            Upnp::Mapped { .. } => "mapped".into(),
            Upnp::Failed { reason, .. } => format!("failed: {reason}"),
        };
        let upnp_mappings: Vec<String> = net.nat.upnp.iter().map(ToString::to_string).collect();
        let upnp_summary = match (policy.upnp(), &net.nat.upnp_service) {
            (Upnp::Mapped { .. }, Some(service)) if !upnp_mappings.is_empty() => {
                format!("mapped by {service}: {}", upnp_mappings.join(", "))
            }
            _ => upnp.clone(),
        };
        NatStatus {
            kind,
            external,
            relayed: net
                .external_addrs
                .iter()
                .filter(|a| kith_nat::policy::is_relayed(a))
                .map(ToString::to_string)
                .collect(),
            reservations: policy
                .reservations()
                .iter()
                .map(|(p, r)| {
                    let state = match r {
                        kith_nat::policy::Reservation::Accepted => "accepted",
                        kith_nat::policy::Reservation::Requesting => "requesting",
                    };
                    (name(p), state)
                })
                .collect(),
            upnp,
            upnp_summary,
            upnp_trigger: policy.upnp_trigger(),
            upnp_mappings,
            upnp_service: net.nat.upnp_service.clone(),
            hole_punched: policy.hole_punches(),
            relay_service: net.nat.relay_service,
            relay_clients: net.nat.relay_reservations.iter().map(name).collect(),
            relay_circuits: net.nat.relay_circuits,
            relay_refused: net
                .nat
                .relay_refused
                .iter()
                .map(|(p, n)| (name(p), *n))
                .collect(),
            features: policy.features(),
            autonat: {
                let since = net.nat.autonat_at.map(|t| t.elapsed()).unwrap_or_default();
                net.nat
                    .autonat
                    .iter()
                    .map(|r| AutonatStatus::of(r, since))
                    .collect()
            },
        }
    }

    /// Uploads the file at `path`.
    pub async fn put_file(
        &self,
        path: &Path,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PutResult, UploadError> {
        client::upload(self, path, opts, progress).await
    }

    /// Downloads `cap` into `out`; the report says which servers were used and which sent bad
    /// data.
    pub async fn get<W: AsyncWrite + Unpin + Send>(
        &self,
        cap: &ReadCap,
        out: &mut W,
    ) -> Result<DownloadReport, DownloadError> {
        client::download(self, cap, out).await
    }

    /// Downloads `cap`, handing each decoded segment's buffer to `out` (no copy).
    pub async fn get_segments<S: client::SegmentSink>(
        &self,
        cap: &ReadCap,
        out: &mut S,
    ) -> Result<DownloadReport, DownloadError> {
        client::download_to(self, cap, out).await
    }

    /// Checks (and with `opts`, verifies and repairs) the file `target`.
    pub async fn check(
        &self,
        target: &crate::checker::CheckTarget,
        opts: crate::checker::CheckOptions,
    ) -> Result<crate::checker::CheckReport, crate::checker::CheckError> {
        crate::checker::check(self, target, opts).await
    }

    /// The automatic repairer (its status, its roots, a pass now).
    pub fn repairer(&self) -> &crate::checker::Repairer {
        &self.inner.repairer
    }

    /// Adds a root of files for the automatic repairer to keep healthy.
    pub fn add_repair_root(&self, root: Arc<dyn crate::checker::RepairRoot>) {
        self.inner.repairer.add_root(root);
    }

    /// The node's database (share index, accounting, grid, uploads).
    pub fn database(&self) -> &Arc<redb::Database> {
        &self.inner.db
    }

    async fn run_collector(&self) {
        if let Some(store) = self.inner.server.store().cloned()
            && let Err(e) = maintenance::collect_pass(&store, &self.inner.collector).await
        {
            tracing::warn!(error = %e, "collector pass failed");
        }
    }

    /// Runs a collector pass now and waits for it.
    pub async fn collect(&self) -> Result<CollectorStatus, String> {
        let store = self
            .inner
            .server
            .store()
            .cloned()
            .ok_or("this node does not offer storage")?;
        maintenance::collect_pass(&store, &self.inner.collector).await?;
        Ok(self.collector_status())
    }

    /// Asks the upkeep task to run the collector (returns at once).
    pub fn collect_soon(&self) {
        self.inner.collect_now.notify_one();
    }

    /// The collector's progress.
    pub fn collector_status(&self) -> CollectorStatus {
        self.inner
            .collector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Audits `count` random shares this node placed on other servers.
    pub async fn audit(&self, count: usize) -> Result<maintenance::AuditReport, String> {
        maintenance::audit(self, count).await
    }

    /// Renews this node's leases on everything it uploaded.
    pub async fn renew(&self) -> Result<RenewReport, String> {
        maintenance::renew(self, Duration::ZERO).await
    }

    /// Registers an operation; returns its id.
    pub fn op_start(&self, kind: &'static str, name: &str, total: Option<u64>) -> u64 {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        let id = ops.back().map_or(1, |o| o.id + 1);
        if ops.len() >= 64
            && let Some(i) = ops.iter().position(|o| o.finished)
        {
            ops.remove(i);
        }
        ops.push_back(Operation {
            id,
            kind,
            name: name.chars().take(200).collect(),
            done: 0,
            total,
            started: grid::now_ms() / 1000,
            finished: false,
            error: None,
        });
        id
    }

    /// Updates an operation's progress.
    pub fn op_progress(&self, id: u64, done: u64) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = ops.iter_mut().find(|o| o.id == id) {
            o.done = done;
        }
    }

    /// Marks an operation finished.
    pub fn op_finish(&self, id: u64, error: Option<String>) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = ops.iter_mut().find(|o| o.id == id) {
            if o.finished {
                return;
            }
            o.finished = true;
            o.error = error;
            let slot = usize::from(o.kind == "download");
            self.inner.transferred[slot].fetch_add(
                o.total.filter(|_| o.error.is_none()).unwrap_or(o.done),
                std::sync::atomic::Ordering::Relaxed,
            );
            if o.error.is_none()
                && let Some(t) = o.total
            {
                o.done = t;
            }
        }
    }

    /// Bytes uploaded and downloaded through the API since start.
    pub fn transferred(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.transferred[0].load(Relaxed),
            self.inner.transferred[1].load(Relaxed),
        )
    }

    /// Prometheus text exposition of the node's state.
    pub async fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::new();
        let mut gauge = |name: &str, help: &str, rows: &[(String, f64)]| {
            let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in rows {
                let _ = writeln!(m, "{name}{labels} {v}");
            }
        };
        let status = self.status().await;
        if let Some(st) = &status.storage {
            gauge(
                "kith_storage_used_bytes",
                "Share bytes stored here.",
                &[(String::new(), st.used_bytes as f64)],
            );
            gauge(
                "kith_storage_shares",
                "Shares stored here.",
                &[(String::new(), st.share_count as f64)],
            );
            gauge(
                "kith_storage_capacity_bytes",
                "Configured capacity.",
                &[(String::new(), st.capacity_bytes as f64)],
            );
            gauge(
                "kith_storage_free_bytes",
                "Capacity left.",
                &[(String::new(), st.free_bytes as f64)],
            );
            if let Some(store) = self.server().store() {
                let (commits, puts) = store.put_batches();
                gauge(
                    "kith_storage_inline_puts_total",
                    "Small-file puts stored inline since start.",
                    &[(String::new(), puts as f64)],
                );
                gauge(
                    "kith_storage_inline_put_commits_total",
                    "Index commits that carried them (group commit: fewer than puts under load).",
                    &[(String::new(), commits as f64)],
                );
                let (requests, puts) = self.server().put_many_counts();
                gauge(
                    "kith_storage_put_many_requests_total",
                    "Requests that carried several small files' puts at once.",
                    &[(String::new(), requests as f64)],
                );
                gauge(
                    "kith_storage_put_many_puts_total",
                    "Puts those requests carried.",
                    &[(String::new(), puts as f64)],
                );
                gauge(
                    "kith_storage_write_behind_flushes_total",
                    "Times a share being received was flushed to disk and dropped from the page cache.",
                    &[(String::new(), store.write_behind_flushes() as f64)],
                );
                gauge(
                    "kith_storage_direct_bytes_total",
                    "Share bytes received and written around the page cache (O_DIRECT).",
                    &[(String::new(), store.direct_bytes() as f64)],
                );
                gauge(
                    "kith_storage_read_bytes_total",
                    "Share data bytes read for downloaders (this node's own downloads included).",
                    &[(String::new(), store.read_bytes() as f64)],
                );
                gauge(
                    "kith_storage_direct_copied_bytes_total",
                    "Of those, bytes written from an aligned copy (a block that did not arrive at its place in memory, or the page where two blocks meet).",
                    &[(String::new(), store.direct_copied_bytes() as f64)],
                );
            }
        }
        gauge(
            "kith_members",
            "Grid members known (this node included).",
            &[(String::new(), status.members as f64)],
        );
        let by_path: Vec<(String, f64)> = ["direct", "UPnP", "hole-punched", "relayed"]
            .iter()
            .map(|path| {
                let n = status
                    .connected_peers
                    .iter()
                    .filter(|p| p.path == *path)
                    .count();
                (format!("{{path=\"{path}\"}}"), n as f64)
            })
            .collect();
        gauge("kith_connections", "Connected peers by path.", &by_path);
        gauge(
            "kith_reachable_public",
            "1 when a direct external address is confirmed (configured, AutoNAT, UPnP).",
            &[(
                String::new(),
                f64::from(u8::from(status.nat.kind == "public")),
            )],
        );
        gauge(
            "kith_relay_reservations",
            "Relays holding a reservation for this node (accepted).",
            &[(
                String::new(),
                status
                    .nat
                    .reservations
                    .iter()
                    .filter(|(_, s)| *s == "accepted")
                    .count() as f64,
            )],
        );
        gauge(
            "kith_relay_clients",
            "Members holding a reservation on this node's relay.",
            &[(String::new(), status.nat.relay_clients.len() as f64)],
        );
        gauge(
            "kith_hole_punches",
            "Peers whose last hole punch ended direct / that were punched at all.",
            &[
                (
                    "{result=\"direct\"}".into(),
                    status.nat.hole_punched.0 as f64,
                ),
                ("{result=\"any\"}".into(), status.nat.hole_punched.1 as f64),
            ],
        );
        let mut tested = std::collections::BTreeMap::<&str, f64>::new();
        for state in ["reachable", "unreachable", "no_answer", "untested"] {
            tested.insert(state, 0.0);
        }
        for c in &status.nat.autonat {
            *tested.entry(c.state).or_default() += 1.0;
        }
        gauge(
            "kith_autonat_addresses",
            "Addresses AutoNAT tests, by the state of their tests.",
            &tested
                .iter()
                .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
                .collect::<Vec<_>>(),
        );
        let (up, down) = self.transferred();
        gauge(
            "kith_upload_bytes_total",
            "Bytes uploaded through the local API.",
            &[(String::new(), up as f64)],
        );
        gauge(
            "kith_download_bytes_total",
            "Bytes downloaded through the local API.",
            &[(String::new(), down as f64)],
        );
        if let Ok(f) = self.friends_info().await {
            let label = |p: &str| format!("{{peer=\"{p}\"}}");
            let rows = |get: &dyn Fn(&crate::friends::FriendInfo) -> f64| -> Vec<(String, f64)> {
                f.friends
                    .iter()
                    .map(|x| (label(&x.peer_id), get(x)))
                    .collect()
            };
            gauge(
                "kith_account_stored_here_bytes",
                "Bytes each friend stores on this node.",
                &rows(&|x| x.stored_here.bytes as f64),
            );
            gauge(
                "kith_account_placed_there_bytes",
                "Bytes this node stores on each friend.",
                &rows(&|x| x.placed_there.bytes as f64),
            );
            gauge(
                "kith_account_audit_score",
                "Audit reputation of each friend (0..1).",
                &rows(&|x| x.audit.score),
            );
            let mut audits = Vec::new();
            for x in &f.friends {
                for (outcome, n) in [
                    ("pass", x.audit.passes),
                    ("fail", x.audit.fails),
                    ("offline", x.audit.offline),
                ] {
                    audits.push((
                        format!("{{peer=\"{}\",outcome=\"{outcome}\"}}", x.peer_id),
                        n as f64,
                    ));
                }
            }
            gauge("kith_audits_total", "Audit outcomes per friend.", &audits);
        }
        let g = self.grid_info().await;
        gauge(
            "kith_gossip_delivered_total",
            "Gossip items stored.",
            &[(String::new(), g.gossip.delivered as f64)],
        );
        let rejected: Vec<(String, f64)> = g
            .gossip
            .rejected
            .iter()
            .map(|(r, n)| {
                (
                    format!(
                        "{{reason=\"{}\"}}",
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                    *n as f64,
                )
            })
            .collect();
        gauge(
            "kith_gossip_rejected_total",
            "Gossip items refused, by reason.",
            &rejected,
        );
        gauge(
            "kith_gossip_non_member_total",
            "Gossip messages from non-members dropped.",
            &[(String::new(), g.gossip.non_member as f64)],
        );
        let c = self.collector_status();
        gauge(
            "kith_collector_shares_removed_total",
            "Shares the collector deleted.",
            &[(String::new(), c.total.shares_removed as f64)],
        );
        let r = &status.repair;
        for (name, help, v) in [
            (
                "kith_repair_passes_total",
                "Automatic repairer passes completed.",
                r.passes,
            ),
            (
                "kith_repair_files_checked_total",
                "Files the automatic repairer checked.",
                r.total.files_checked,
            ),
            (
                "kith_repair_unhealthy_total",
                "Files the automatic repairer found unhealthy.",
                r.total.unhealthy,
            ),
            (
                "kith_repair_repaired_total",
                "Files the automatic repairer repaired to health.",
                r.total.repaired,
            ),
            (
                "kith_repair_failed_total",
                "Files the automatic repairer could not repair.",
                r.total.failed,
            ),
        ] {
            gauge(name, help, &[(String::new(), v as f64)]);
        }
        gauge(
            "kith_repair_running",
            "1 while a repairer pass runs.",
            &[(String::new(), f64::from(u8::from(r.running)))],
        );
        m
    }

    /// Operations in progress and recently finished, oldest first.
    pub fn operations(&self) -> Vec<Operation> {
        let ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter().cloned().collect()
    }

    /// Keeps a download report for `kith get` to fetch after the body; returns its id.
    pub fn remember_report(&self, report: DownloadReport) -> u64 {
        let id = {
            let mut n = self
                .inner
                .next_report
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let mut r = self.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= 128 {
            r.pop_front();
        }
        r.push_back((id, report));
        id
    }

    /// Replaces the report kept under `id`.
    pub fn update_report(&self, id: u64, report: DownloadReport) {
        let mut r = self.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = r.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = report;
        }
    }

    /// A report kept by [`remember_report`](Self::remember_report).
    pub fn report(&self, id: u64) -> Option<DownloadReport> {
        let r = self.inner.reports.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().find(|(i, _)| *i == id).map(|(_, rep)| rep.clone())
    }

    /// Peers currently connected, keyed by id (for the API).
    pub fn connected(&self) -> BTreeMap<PeerId, net::PeerState> {
        self.inner.net.state().peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tor_line_says_what_tor_does() {
        let idle = TorInfo {
            mode: "off".into(),
            ..TorInfo::default()
        };
        assert_eq!(
            idle.line(),
            "off mode, idle: arti starts at the first dial to an onion address"
        );
        let dialer = TorInfo {
            mode: "off".into(),
            started: true,
            percent: 100,
            ready: true,
            dials_ok: 2,
            dials_failed: 1,
            last_dial_error: Some("tor connect to x.onion:1: timed out".into()),
            ..TorInfo::default()
        };
        assert_eq!(
            dialer.line(),
            "off mode, bootstrap 100% ok, streams 2 ok / 1 failed (last: tor connect to x.onion:1: timed out)"
        );
        let onion = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800";
        let service = TorInfo {
            mode: "only".into(),
            started: true,
            percent: 100,
            ready: true,
            onion_service: Some("Running".into()),
            onion_reachable: Some(true),
            onion: Some(onion.into()),
            inbound: 3,
            ..TorInfo::default()
        };
        assert_eq!(
            service.line(),
            format!(
                "only mode, bootstrap 100% ok, onion {onion} (reachable: 3 inbound; arti: published), streams 0 ok / 0 failed"
            )
        );
        let stuck = TorInfo {
            mode: "both".into(),
            started: true,
            percent: 40,
            blocked: Some("can't reach a guard".into()),
            onion_reachable: Some(false),
            ..TorInfo::default()
        };
        assert_eq!(
            stuck.line(),
            "both mode, bootstrap 40% blocked: can't reach a guard, onion (not listening yet) (not known reachable: 0 inbound; arti: not launched), streams 0 ok / 0 failed"
        );
        // What the CLI does: the API's JSON back into the struct (missing fields default).
        let json = serde_json::to_value(&service).unwrap();
        let back: TorInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back.line(), service.line());
        let old: TorInfo = serde_json::from_str(r#"{"mode":"both","percent":5}"#).unwrap();
        assert_eq!(old.line(), "both mode, not started");
    }
}
