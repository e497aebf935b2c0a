//! The network actor: owns the libp2p `Swarm` (identify, ping, storage request-response) and
//! is driven through a bounded command queue by a cloneable [`NetHandle`].
//!
//! - Inbound storage requests are answered by the [`StorageServer`] on their own tasks; the
//!   answers come back to the actor on a bounded queue (local work before remote work: the
//!   actor drains answers and commands before polling the swarm again).
//! - Outbound requests ([`NetHandle::request`]) resolve a oneshot when the response (or the
//!   failure) arrives.
//! - Static peers are dialed at start and redialed with capped exponential backoff.
//! - What the rest of the node reads (listen addresses, confirmed external addresses, connected
//!   peers with the path in use and round-trip times, reachability) is published on a `watch`
//!   channel ([`NetState`]).
//! - Connectivity (the connectivity issue): AutoNAT v2 (kith's clients, one per address
//!   family, and libp2p's server) confirms observed and UPnP-mapped addresses, the relay
//!   client keeps reservations on members' relays when the node is not reachable, the relay server (members only, storage-sized limits) serves when
//!   it is, and DCUtR upgrades relayed connections to direct ones. What to try next is decided
//!   by [`kith_nat::Policy`]; this actor only carries out its actions and feeds it events.
//!   Every advertised address of a peer is dialed in parallel; the first to connect wins. A
//!   peer reached only through a relay is dialed again at any direct address its record gains
//!   later (UPnP turned on, a port forwarded), and relayed connections close a few seconds
//!   after a direct one to the same peer exists, however it came about.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kith_nat::{Policy, policy::is_relayed, upnp};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::{ConnectedPoint, transport::ListenerId},
    dcutr, identify,
    multiaddr::Protocol,
    ping, relay,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{
        ConnectionId, NetworkBehaviour, SwarmEvent,
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::StaticPeer,
    protocol::{self, BytesCodec, Request, RequestFrame, Response},
    server::StorageServer,
};

/// How long a storage request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How a peer is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// A direct connection (either side dialed the other's address).
    Direct,
    /// A direct connection that came in through this node's UPnP mapping.
    Upnp,
    /// A direct connection made by hole punching (DCUtR).
    HolePunched,
    /// Through a member's relay.
    Relayed,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Upnp => "UPnP",
            Path::HolePunched => "hole-punched",
            Path::Relayed => "relayed",
        })
    }
}

/// What a peer connection looks like from here.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerState {
    /// The best path of the open connections.
    pub path: Path,
    /// Remote addresses of the open connections.
    pub addrs: Vec<Multiaddr>,
    /// Whether the peer offers storage (from identify).
    pub storage: bool,
    /// The peer's agent string (from identify).
    pub agent: Option<String>,
    /// Last measured round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Open connections.
    #[serde(skip)]
    pub connections: usize,
}

/// The actor's published view.
#[derive(Clone, Debug, Default)]
pub struct NetState {
    /// Addresses the swarm listens on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses (configured, AutoNAT-confirmed, UPnP, relayed), the ones to
    /// announce before the listen addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// Connected peers.
    pub peers: BTreeMap<PeerId, PeerState>,
    /// Reachability and the automatic connectivity features.
    pub nat: NatState,
}

/// Reachability: the policy's view plus what the IO around it holds.
#[derive(Clone, Debug, Default)]
pub struct NatState {
    /// The policy (for its state and its explanation).
    pub policy: Option<Policy>,
    /// UPnP mappings in place.
    pub upnp: Vec<upnp::Mapping>,
    /// The router's IGD service, once found.
    pub upnp_service: Option<String>,
    /// Whether this node's relay service is on (it is reachable and relaying is allowed).
    pub relay_service: bool,
    /// Members holding a reservation on this node's relay.
    pub relay_reservations: std::collections::BTreeSet<PeerId>,
    /// Circuits relayed through this node now.
    pub relay_circuits: usize,
    /// Reservation or circuit requests refused (non-members, limits), per requester.
    pub relay_refused: BTreeMap<PeerId, u64>,
    /// AutoNAT's candidate addresses and their tests (both families) as of the last test,
    /// and when that was (their `next_in_ms` count from then).
    pub autonat: Vec<kith_nat::autonat::schedule::Report<Multiaddr>>,
    /// When `autonat` was taken.
    pub autonat_at: Option<Instant>,
}

impl NetState {
    /// Connected peers that offer storage.
    pub fn storage_peers(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| s.storage)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// A failed request to a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The network actor stopped.
    #[error("the node is shutting down")]
    Shutdown,
    /// Dialing, the stream, the timeout or decoding failed.
    #[error("request to {peer} failed: {reason}")]
    Failed {
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
    },
}

/// What the network tells the grid (gossip) task.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetEvent {
    /// First connection to a peer opened.
    Connected(PeerId),
    /// Last connection to a peer closed.
    Disconnected(PeerId),
    /// A gossip message (undecoded) from a peer.
    Gossip(PeerId, Vec<u8>),
    /// A join request from a peer; the answer goes back on the sender.
    Join(PeerId, Vec<u8>, oneshot::Sender<Vec<u8>>),
}

/// Known addresses of peers (from member records and static peers), shared with the actor.
pub type AddressBook = Arc<Mutex<HashMap<PeerId, Vec<Multiaddr>>>>;

enum Command {
    Retry {
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, RpcError>>,
    },
    Gossip {
        peer: PeerId,
        msg: Vec<u8>,
    },
    Join {
        peer: PeerId,
        msg: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RpcError>>,
    },
    Connect {
        peer: PeerId,
    },
    Request {
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, RpcError>>,
    },
    Dial {
        peer: StaticPeer,
        keep: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Forget {
        peer: PeerId,
    },
    CloseRelayed {
        peer: PeerId,
    },
    Repunch {
        peer: PeerId,
    },
    RetryJoin {
        peer: PeerId,
        msg: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RpcError>>,
        attempt: u8,
    },
    DialRelayed {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Shutdown,
}

/// Cloneable handle to the network actor.
#[derive(Clone)]
pub struct NetHandle {
    local: PeerId,
    cmd: mpsc::Sender<Command>,
    state: watch::Receiver<NetState>,
    book: AddressBook,
    members: kith_nat::MemberCheck,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NetHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The current view.
    pub fn state(&self) -> NetState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of the view.
    pub fn watch(&self) -> watch::Receiver<NetState> {
        self.state.clone()
    }

    /// Sends a storage request to `peer` and waits for its answer.
    pub async fn request(&self, peer: PeerId, req: Request) -> Result<Response, RpcError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request { peer, req, reply })
            .await
            .map_err(|_| RpcError::Shutdown)?;
        rx.await.map_err(|_| RpcError::Shutdown)?
    }

    /// Dials `peer`, waiting until connected or failed. With `keep`, the peer is redialed
    /// whenever the connection drops.
    pub async fn dial(&self, peer: StaticPeer, keep: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Dial { peer, keep, reply })
            .await
            .map_err(|_| "the node is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the node is shutting down".to_owned())?
    }

    /// Records where `peer` can be reached (used when a request or a dial needs a connection).
    pub fn set_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local || addrs.is_empty() {
            return;
        }
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, addrs);
    }

    /// Sets who may use this node's relay (grid members). Until set, nobody may.
    pub fn set_relay_members(&self, check: Arc<dyn Fn(&PeerId) -> bool + Send + Sync>) {
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = Some(check);
    }

    /// Sends one gossip message (fire and forget: gossip repairs losses).
    pub fn send_gossip(&self, peer: PeerId, msg: Vec<u8>) {
        if self.cmd.try_send(Command::Gossip { peer, msg }).is_err() {
            tracing::debug!(%peer, "gossip message dropped: network queue full");
        }
    }

    /// Sends a join request and waits for the answer.
    pub async fn join_request(&self, peer: PeerId, msg: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Join { peer, msg, reply })
            .await
            .map_err(|_| RpcError::Shutdown)?;
        rx.await.map_err(|_| RpcError::Shutdown)?
    }

    /// Opens a connection to `peer` at its known addresses, unless one is open.
    pub async fn connect(&self, peer: PeerId) {
        let _ = self.cmd.send(Command::Connect { peer }).await;
    }

    /// Stops redialing `peer` and closes connections to it.
    pub async fn forget(&self, peer: PeerId) {
        let _ = self.cmd.send(Command::Forget { peer }).await;
    }

    /// Stops the actor (closing every connection).
    pub async fn shutdown(&self) {
        let _ = self.cmd.send(Command::Shutdown).await;
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    storage: request_response::Behaviour<protocol::Codec>,
    gossip: request_response::Behaviour<BytesCodec>,
    join: request_response::Behaviour<BytesCodec>,
    relay_client: Toggle<relay::client::Behaviour>,
    relay: Toggle<kith_nat::relay_server::Behaviour>,
    dcutr: Toggle<dcutr::Behaviour>,
    /// AutoNAT v2 for IPv4 addresses, asking only members known to reach IPv4; neither
    /// client hears of onion candidates (identify's "observed" wildcard onion address over
    /// Tor). See [`kith_nat::candidates::Testable`] for why one client per family.
    autonat_v4: Toggle<AutonatClient>,
    /// AutoNAT v2 for IPv6 addresses, asking only members known to reach IPv6.
    autonat_v6: Toggle<AutonatClient>,
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
    candidates: kith_nat::candidates::Behaviour,
}

type AutonatClient = kith_nat::candidates::Testable<kith_nat::autonat::Behaviour>;

impl Behaviour {
    /// The AutoNAT clients that are on (one per family).
    fn autonat(&self) -> impl Iterator<Item = &AutonatClient> {
        [self.autonat_v4.as_ref(), self.autonat_v6.as_ref()]
            .into_iter()
            .flatten()
    }

    /// The AutoNAT clients that are on, to change.
    fn autonat_mut(&mut self) -> impl Iterator<Item = &mut AutonatClient> {
        [self.autonat_v4.as_mut(), self.autonat_v6.as_mut()]
            .into_iter()
            .flatten()
    }
}

/// kith's AutoNAT v2 client for this node's addresses of `family`, looking for due tests
/// every 2 s.
fn autonat_client(family: kith_nat::candidates::Family) -> AutonatClient {
    kith_nat::candidates::Testable::new(
        kith_nat::autonat::Behaviour::new(Duration::from_secs(2)),
        family,
    )
}

/// Connectivity settings for [`spawn`].
#[derive(Clone, Debug)]
pub struct NatOptions {
    /// Which automatic behaviours are on.
    pub features: kith_nat::Features,
    /// Relay service limits.
    pub relay_limits: kith_nat::RelayLimits,
    /// Configured announce addresses (taken as confirmed).
    pub announce: Vec<Multiaddr>,
    /// Label of UPnP mappings in the router's table.
    pub upnp_description: String,
    /// Tor-only node: no AutoNAT server (it would dial clearnet addresses on request), and
    /// nothing but `/onion3` addresses is ever taken as this node's external address
    /// (identify's observed addresses over Tor are meaningless and must not be announced).
    /// Pair with [`kith_nat::Features::sysadmin`].
    pub tor_only: bool,
    /// Tor is only there to reach onion-only peers (`tor.mode = "off"`, arti started on
    /// demand): a peer's `/onion3` addresses are dialed only when it has no other address, so
    /// reaching a dual-stack member never starts Tor.
    pub onions_on_demand: bool,
}

impl Default for NatOptions {
    fn default() -> Self {
        Self {
            features: kith_nat::Features::default(),
            relay_limits: kith_nat::RelayLimits::default(),
            announce: Vec::new(),
            upnp_description: "kith".into(),
            tor_only: false,
            onions_on_demand: false,
        }
    }
}

/// One open connection.
struct Conn {
    peer: PeerId,
    relayed: bool,
    inbound: bool,
    remote: Multiaddr,
}

/// Dial errors kept for requests' failure reasons (the map is emptied when it reaches this).
const MAX_DIAL_ERRORS: usize = 1024;

/// Extra hole-punch rounds after DCUtR's own three attempts failed, and the first delay
/// (doubling).
const PUNCH_ROUNDS: u32 = 3;
const PUNCH_RETRY: Duration = Duration::from_secs(2);

fn is_global_addr(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => upnp::is_global(ip.into()),
        Protocol::Ip6(ip) => upnp::is_global(ip.into()),
        _ => false,
    })
}

/// Which of a peer's known addresses to dial.
/// - A Tor-only node dials a peer's onion addresses alone when it has any: end to end inside
///   Tor, no exit sees the connection (clearnet addresses, reached through an exit, are for
///   peers without an onion service).
/// - A clearnet node whose Tor starts on demand dials a peer's onion addresses only when the
///   peer has no other address (a Tor-only member): a dual-stack member is reached over the
///   clearnet without starting Tor.
fn dial_set(all: Vec<Multiaddr>, tor_only: bool, onions_on_demand: bool) -> Vec<Multiaddr> {
    let onion = crate::grid::is_onion;
    if tor_only && all.iter().any(onion) {
        return all.into_iter().filter(onion).collect();
    }
    if onions_on_demand && all.iter().any(|a| !onion(a)) {
        return all.into_iter().filter(|a| !onion(a)).collect();
    }
    all
}

/// How long direct addresses have to connect before relayed ones are dialed too.
const RELAYED_DIAL_DELAY: Duration = Duration::from_millis(300);

/// How long a relayed connection stays open after a direct one to the same peer appeared.
const RELAYED_GRACE: Duration = Duration::from_secs(5);

/// The path one connection gives: `punched` whether a hole punch to its peer succeeded,
/// `upnp` whether this node is reachable at a UPnP mapping, `announced` whether the connection
/// was dialed at an address its peer announces.
fn conn_path(c: &Conn, punched: bool, upnp: bool, announced: bool) -> Path {
    match c {
        Conn { relayed: true, .. } => Path::Relayed,
        // Reached at our UPnP mapping, whether or not a hole punch prompted the dial.
        Conn { inbound: true, .. } if upnp => Path::Upnp,
        // Dialed at an address the peer announces (public, mapped or forwarded): direct, even
        // when DCUtR made the dial.
        Conn { inbound: false, .. } if announced => Path::Direct,
        _ if punched => Path::HolePunched,
        _ => Path::Direct,
    }
}

fn rank(p: Path) -> u8 {
    match p {
        Path::Relayed => 0,
        Path::Direct => 1,
        Path::Upnp => 2,
        Path::HolePunched => 3,
    }
}

struct Redial {
    peer: StaticPeer,
    next: Instant,
    backoff: Duration,
}

/// Starts the network actor. Returns its handle and the task running it.
pub fn spawn(
    keypair: &libp2p::identity::Keypair,
    transports: &kith_transports::Config,
    listen: &[Multiaddr],
    server: StorageServer,
    nat: NatOptions,
) -> Result<
    (
        NetHandle,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetError,
> {
    let local = keypair.public().to_peer_id();
    let features = nat.features;
    let members: kith_nat::MemberCheck = Arc::default();
    let mut transport = kith_transports::build_transport(keypair, transports)?;
    let relay_client = if features.relay_client {
        let (relay_transport, behaviour) = relay::client::new(local);
        transport = kith_transports::relayed::with_relay(
            keypair,
            transport,
            relay_transport,
            transports.handshake_timeout,
        )?;
        Some(behaviour)
    } else {
        None
    };
    let support = if server.store().is_some() {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    let behaviour = Behaviour {
        identify: identify::Behaviour::new(
            identify::Config::new("/kith/1.0.0".into(), keypair.public())
                .with_agent_version(format!("kith/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
        storage: request_response::Behaviour::new(
            [(protocol::PROTOCOL, support)],
            request_response::Config::default()
                .with_request_timeout(REQUEST_TIMEOUT)
                .with_max_concurrent_streams(256),
        ),
        gossip: request_response::Behaviour::with_codec(
            BytesCodec {
                max_request: kith_gossip::message::MAX_MESSAGE,
                max_response: 16,
            },
            [(protocol::GOSSIP_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(256),
        ),
        join: request_response::Behaviour::with_codec(
            BytesCodec {
                max_request: 1024,
                max_response: crate::grid::MAX_JOIN_RESPONSE,
            },
            [(protocol::JOIN_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        ),
        relay_client: relay_client.into(),
        relay: features
            .relay_server
            .then(|| {
                // On once a direct external address is confirmed (configured, AutoNAT, UPnP).
                kith_nat::relay_server::Behaviour::new(relay::Behaviour::new(
                    local,
                    kith_nat::relay_config(nat.relay_limits, members.clone()),
                ))
            })
            .into(),
        dcutr: features
            .hole_punching
            .then(|| dcutr::Behaviour::new(local))
            .into(),
        autonat_v4: features
            .detect_addresses
            .then(|| autonat_client(kith_nat::candidates::Family::V4))
            .into(),
        autonat_v6: features
            .detect_addresses
            .then(|| autonat_client(kith_nat::candidates::Family::V6))
            .into(),
        autonat_server: (!nat.tor_only)
            .then(autonat::v2::server::Behaviour::default)
            .into(),
        candidates: kith_nat::candidates::Behaviour::default(),
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            // Members keep their connections: storage requests flow both ways at any time.
            .with_idle_connection_timeout(Duration::from_secs(24 * 3600))
            // Every advertised address of a peer is dialed at once; the first to connect wins.
            .with_dial_concurrency_factor(
                std::num::NonZeroU8::new(kith_gossip::membership::MAX_ADDRS as u8)
                    .unwrap_or(std::num::NonZeroU8::MIN),
            ),
    );
    for addr in &nat.announce {
        if !nat.tor_only || crate::grid::is_onion(addr) {
            swarm.add_external_address(addr.clone());
        }
    }
    for addr in listen {
        // libp2p's listener would share a port another listener holds with `SO_REUSEPORT`
        // (another kith node on this machine), and peers would reach either (see
        // `tcp_port_taken`). This run listens on a free port instead; the node's record
        // carries whatever it listens on.
        let addr = if kith_transports::tcp_port_taken(addr) {
            let free = with_port_zero(addr);
            tracing::warn!(
                address = %addr,
                instead = %free,
                "the configured TCP port is in use by another program; listening on a free \
                 port for this run (free the port or change network.listen to keep it stable)"
            );
            free
        } else {
            addr.clone()
        };
        match swarm.listen_on(addr.clone()) {
            Ok(_) => {}
            // The default listens on both families; a host without IPv6 still runs.
            Err(e) if is_ip6_wildcard(&addr) => tracing::warn!(
                address = %addr,
                error = %transport_error(&e),
                "not listening on IPv6 (is it switched off on this host?)"
            ),
            Err(e) => return Err(NetError::Listen(addr.clone(), transport_error(&e))),
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (state_tx, state_rx) = watch::channel(NetState::default());
    let (answer_tx, answer_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(4096);
    let book: AddressBook = Arc::default();
    let (upnp_tx, upnp_rx) = mpsc::channel(4);
    let mappable_listeners = listen
        .iter()
        .filter(|a| !upnp::Port::from_listen_addrs([*a]).is_empty())
        .count()
        .max(1);
    // IPv6 listeners worth a pinhole: those on `::` (or a global address) when this host has
    // a global IPv6 address at all.
    let pinhole_listeners = if !nat.tor_only && upnp::host_has_global_ipv6() {
        listen
            .iter()
            .filter(|a| match a.iter().next() {
                Some(Protocol::Ip6(ip)) => ip.is_unspecified() || upnp::is_global(ip.into()),
                _ => false,
            })
            .count()
    } else {
        0
    };
    let actor = Actor {
        tor_only: nat.tor_only,
        onions_on_demand: nat.onions_on_demand,
        mappable_listeners,
        pinhole_listeners,
        members: members.clone(),
        policy: Policy::new(features, &nat.announce, 0),
        started: Instant::now(),
        mapper: Arc::new(tokio::sync::Mutex::new(upnp::Mapper::new(
            upnp::DEFAULT_LEASE,
            &nat.upnp_description,
        ))),
        upnp_tx,
        reservations: HashMap::new(),
        conns: HashMap::new(),
        dialing: HashMap::new(),
        dial_errors: HashMap::new(),
        punch_rounds: HashMap::new(),
        punched: std::collections::HashSet::new(),
        known_direct: HashMap::new(),
        serving: HashMap::new(),
        redial_after_close: std::collections::HashSet::new(),
        relay_offers: std::collections::HashSet::new(),
        events: events_tx,
        book: book.clone(),
        joins: HashMap::new(),
        swarm,
        server,
        state: state_tx,
        pending: HashMap::new(),
        retry_tx: cmd_tx.clone(),
        dials: HashMap::new(),
        redial: BTreeMap::new(),
        answers_tx: answer_tx,
    };
    // Routers' announcements (UPnP's SSDP, NAT-PMP/PCP's) bring a UPnP attempt forward (a
    // Tor-only node opens no clearnet socket at all).
    fn listener<L>(bound: std::io::Result<L>, port: &str) -> Option<L> {
        bound
            .inspect_err(
                |e| tracing::info!(error = %e, port, "not listening for routers' announcements"),
            )
            .ok()
    }
    let hear = features.upnp && !nat.tor_only;
    let ssdp = hear
        .then(|| listener(kith_nat::ssdp::Listener::bind(kith_nat::ssdp::PORT), "SSDP"))
        .flatten();
    let natpmp = hear
        .then(|| {
            listener(
                kith_nat::natpmp::Listener::bind(kith_nat::natpmp::ANNOUNCE_PORT),
                "NAT-PMP",
            )
        })
        .flatten();
    let task = tokio::spawn(actor.run(cmd_rx, answer_rx, upnp_rx, ssdp, natpmp));
    Ok((
        NetHandle {
            local,
            cmd: cmd_tx,
            state: state_rx,
            book,
            members,
        },
        events_rx,
        task,
    ))
}

/// Errors starting the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport stack could not be built.
    #[error(transparent)]
    Transport(#[from] kith_transports::Error),
    /// A listen address was refused (in use, unsupported...).
    #[error("cannot listen on {0}: {1}")]
    Listen(Multiaddr, String),
}

/// An outbound storage request waiting for its answer. The request is kept for one retry
/// when the dial fails: two members dialing each other at the same moment from their reused
/// listen ports can collide in a TCP simultaneous open that fails both handshakes; a moment
/// later one connection exists and the retry uses it.
struct Pending {
    peer: PeerId,
    reply: oneshot::Sender<Result<Response, RpcError>>,
    retry: Option<Request>,
}

enum Answer {
    Storage(request_response::ResponseChannel<Response>, Response),
    Join(request_response::ResponseChannel<Vec<u8>>, Vec<u8>),
}

type JoinReply = oneshot::Sender<Result<Vec<u8>, RpcError>>;

/// A join request waiting for its answer.
struct PendingJoin {
    reply: JoinReply,
    /// The request, kept for retries.
    msg: Vec<u8>,
    /// Which attempt this is (1 for the first).
    attempt: u8,
    /// How many addresses of the inviter it was sent with: fewer now means a dial reached
    /// another peer at one and it was forgotten ([`Actor::forget_wrong_address`]).
    addrs: usize,
}

/// Attempts of one join request at most (see the join's `OutboundFailure` handling).
const MAX_JOIN_ATTEMPTS: u8 = 8;

type UpnpResult = Result<(Vec<upnp::Mapping>, Option<String>), upnp::UpnpError>;

struct Actor {
    /// Tor-only: only `/onion3` external addresses.
    tor_only: bool,
    /// Onion addresses only for peers that have nothing else (see [`NatOptions`]).
    onions_on_demand: bool,
    /// Configured listeners whose ports UPnP maps (IPv4 TCP or QUIC, not loopback).
    mappable_listeners: usize,
    /// Configured IPv6 listeners whose ports UPnP opens pinholes for (0 on a host without a
    /// global IPv6 address).
    pinhole_listeners: usize,
    members: kith_nat::MemberCheck,
    policy: Policy,
    started: Instant,
    mapper: Arc<tokio::sync::Mutex<upnp::Mapper>>,
    upnp_tx: mpsc::Sender<UpnpResult>,
    /// Relay reservations: listener → relay.
    reservations: HashMap<ListenerId, PeerId>,
    conns: HashMap<ConnectionId, Conn>,
    /// Inbound storage requests being answered, per peer.
    serving: HashMap<PeerId, usize>,
    /// Peers reached by a successful hole punch (until they disconnect).
    punched: std::collections::HashSet<PeerId>,
    /// Per connected peer, the direct addresses it had when it connected and those dialed
    /// since: one that appears in its record later (its owner turned UPnP on, forwarded a
    /// port) is dialed while the peer is reached only through a relay, whatever hole
    /// punching concluded before.
    known_direct: HashMap<PeerId, std::collections::HashSet<Multiaddr>>,
    /// Hole-punch rounds that failed per peer (reset by a success).
    punch_rounds: HashMap<PeerId, u32>,
    /// Peers to redial once their (relayed) connections closed, for another punch.
    redial_after_close: std::collections::HashSet<PeerId>,
    /// Addresses of dials under way (ours, see `ensure_dial`).
    dialing: HashMap<PeerId, Vec<Multiaddr>>,
    /// Why the last dial of a peer failed (until it connects), so that a request which could not
    /// dial says why rather than only "Failed to dial the requested peer".
    dial_errors: HashMap<PeerId, String>,
    /// Connected peers offering the relay protocol over a direct connection.
    relay_offers: std::collections::HashSet<PeerId>,
    events: mpsc::Sender<NetEvent>,
    book: AddressBook,
    /// Join requests waiting for answers.
    joins: HashMap<OutboundRequestId, PendingJoin>,
    swarm: Swarm<Behaviour>,
    server: StorageServer,
    state: watch::Sender<NetState>,
    pending: HashMap<OutboundRequestId, Pending>,
    retry_tx: mpsc::Sender<Command>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    redial: BTreeMap<PeerId, Redial>,
    answers_tx: mpsc::Sender<Answer>,
}

impl Actor {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut answers: mpsc::Receiver<Answer>,
        mut upnp_results: mpsc::Receiver<UpnpResult>,
        ssdp: Option<kith_nat::ssdp::Listener>,
        natpmp: Option<kith_nat::natpmp::Listener>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let announcement = async || match &ssdp {
            Some(l) => l.next().await,
            None => std::future::pending().await,
        };
        let natpmp_announcement = async || match &natpmp {
            Some(l) => l.next().await,
            None => std::future::pending().await,
        };
        loop {
            tokio::select! {
                biased;
                Some(answer) = answers.recv() => match answer {
                    Answer::Storage(channel, resp) => {
                        let _ = self.swarm.behaviour_mut().storage.send_response(channel, resp);
                    }
                    Answer::Join(channel, resp) => {
                        let _ = self.swarm.behaviour_mut().join.send_response(channel, resp);
                    }
                },
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                Some(result) = upnp_results.recv() => self.on_upnp(result),
                a = announcement() => self.on_announcement(a),
                gateway = natpmp_announcement() => {
                    tracing::info!(%gateway, "the router announced a restart (NAT-PMP/PCP)");
                    self.policy.on(kith_nat::Event::GatewayRestarted, self.now_ms());
                    self.run_policy();
                }
                _ = tick.tick() => {
                    protocol::trim_idle_bulk();
                    self.redial_due();
                    self.dial_new_direct_addresses();
                    self.run_policy();
                }
                Some(event) = self.swarm.next() => {
                    let nat = self.on_event(event);
                    if nat {
                        self.run_policy();
                    }
                }
            }
        }
        // Mappings go when the node goes (a crash leaves them to expire with their lease).
        self.mapper.lock().await.unmap_all().await;
        // The member check holds the grid, which holds this actor's handle: break the cycle.
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = None;
        for (_, Pending { peer, reply, .. }) in self.pending.drain() {
            let _ = reply.send(Err(RpcError::Failed {
                peer,
                reason: "node shutting down".into(),
            }));
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// Where `peer` can be reached (see [`dial_set`]).
    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let all = self
            .book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
            .unwrap_or_default();
        dial_set(all, self.tor_only, self.onions_on_demand)
    }

    /// Dials `peer` at every address known now, unless connected or a dial that covers them
    /// is under way. An older dial (say, to addresses from the peer's first record, which may
    /// only be its LAN addresses) does not hold up a newer one: requests wait for whichever
    /// connects first.
    ///
    /// Direct addresses are dialed first; relayed ones [`RELAYED_DIAL_DELAY`] later if no
    /// connection exists by then (a direct path, when there is one, is not beaten to the line
    /// by a relay and then left to hole punching).
    fn ensure_dial(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let addrs = self.addresses(&peer);
        let covered = self
            .dialing
            .get(&peer)
            .is_some_and(|d| addrs.iter().all(|a| d.contains(a)));
        if addrs.is_empty() || covered {
            return;
        }
        self.dialing.insert(peer, addrs.clone());
        let (relayed, direct): (Vec<Multiaddr>, Vec<Multiaddr>) =
            addrs.into_iter().partition(is_relayed);
        let (first, then) = if direct.is_empty() {
            (relayed, Vec::new())
        } else {
            (direct, relayed)
        };
        let mut result = self.dial_addresses(peer, first, PeerCondition::Disconnected);
        if !then.is_empty() {
            if result.is_ok() {
                self.later(
                    RELAYED_DIAL_DELAY,
                    Command::DialRelayed { peer, addrs: then },
                );
            } else {
                // Nothing direct to wait for.
                result = self.dial_addresses(peer, then, PeerCondition::Disconnected);
            }
        }
        // A dial the swarm refused at once (every address is one of ours, a behaviour denied
        // it) reports no event later: end it here, or it would count as under way forever.
        if let Err(e) = result {
            self.dial_ended(peer, e.to_string());
        }
    }

    fn dial_addresses(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        condition: PeerCondition,
    ) -> Result<(), libp2p::swarm::DialError> {
        let opts = DialOpts::peer_id(peer)
            .condition(condition)
            .addresses(addrs)
            .build();
        self.swarm.dial(opts).inspect_err(|e| {
            tracing::debug!(%peer, error = %e, "dialing a member failed");
        })
    }

    /// A dial of `peer` ended without a connection: requests waiting for it fail with `error`,
    /// which later failures quote.
    fn dial_ended(&mut self, peer: PeerId, error: String) {
        self.dialing.remove(&peer);
        if self.dial_errors.len() >= MAX_DIAL_ERRORS {
            self.dial_errors.clear();
        }
        self.dial_errors.insert(peer, error.clone());
        self.dial_failed(peer, error);
    }

    fn send_join(&mut self, peer: PeerId, msg: Vec<u8>, reply: JoinReply, attempt: u8) {
        self.ensure_dial(peer);
        let addrs = self.addresses(&peer);
        let pending = PendingJoin {
            reply,
            msg: msg.clone(),
            attempt,
            addrs: addrs.len(),
        };
        let id = self
            .swarm
            .behaviour_mut()
            .join
            .send_request_with_addresses(&peer, msg, addrs);
        self.joins.insert(id, pending);
    }

    /// A dial of `peer` at `addr` reached `obtained` instead (the security handshake proved
    /// it): the address is not `peer`'s, or no longer (on one host a port is soon another
    /// process's). libp2p fails the whole dial when any of its concurrent attempts reaches the
    /// wrong peer, so an address left in the book would spoil every later dial; forget it.
    fn forget_wrong_address(&self, peer: PeerId, obtained: PeerId, addr: &Multiaddr) {
        let bare = kith_transports::without_peer_id;
        let wrong = bare(addr);
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let Some(addrs) = book.get_mut(&peer) else {
            return;
        };
        let before = addrs.len();
        addrs.retain(|a| bare(a) != wrong);
        if addrs.len() < before {
            tracing::info!(%peer, %obtained, address = %wrong, "forgot an address that reached another peer");
            if addrs.is_empty() {
                book.remove(&peer);
            }
        }
    }

    fn send_storage(
        &mut self,
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, RpcError>>,
        may_retry: bool,
    ) {
        self.ensure_dial(peer);
        let addrs = self.addresses(&peer);
        // Kept for one retry: any request when there is no connection yet (the dial may fail),
        // reads always (the connection may close under them, e.g. a relayed one replaced by a
        // direct one). Writes are never sent twice once a connection carried them.
        let retry = (may_retry && (!self.swarm.is_connected(&peer) || req.is_read_only()))
            .then(|| req.clone());
        let id = self
            .swarm
            .behaviour_mut()
            .storage
            .send_request_with_addresses(&peer, RequestFrame::Request(req), addrs);
        self.pending.insert(id, Pending { peer, reply, retry });
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request { peer, req, reply } => {
                self.send_storage(peer, req, reply, true);
            }
            Command::Retry { peer, req, reply } => self.send_storage(peer, req, reply, false),
            Command::Gossip { peer, msg } => {
                self.ensure_dial(peer);
                let addrs = self.addresses(&peer);
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .send_request_with_addresses(&peer, msg, addrs);
            }
            Command::Join { peer, msg, reply } => self.send_join(peer, msg, reply, 1),
            Command::RetryJoin {
                peer,
                msg,
                reply,
                attempt,
            } => self.send_join(peer, msg, reply, attempt),
            Command::Connect { peer } => self.ensure_dial(peer),
            Command::Dial { peer, keep, reply } => {
                self.book
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(peer.peer)
                    .or_insert_with(|| vec![peer.addr.clone()]);
                if keep {
                    self.redial.insert(
                        peer.peer,
                        Redial {
                            peer: peer.clone(),
                            next: Instant::now() + Duration::from_secs(1),
                            backoff: Duration::from_secs(1),
                        },
                    );
                }
                if self.swarm.is_connected(&peer.peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.dials.entry(peer.peer).or_default().push(reply);
                self.dial(&peer);
            }
            Command::Forget { peer } => {
                self.redial.remove(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::DialRelayed { peer, addrs } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = self.dial_addresses(peer, addrs, PeerCondition::Disconnected);
                }
            }
            Command::Repunch { peer } => {
                if self.has_direct(&peer) {
                    return;
                }
                if self.busy(&peer) {
                    // Requests in either direction would be cut: try again when they are done.
                    self.later(Duration::from_secs(1), Command::Repunch { peer });
                    return;
                }
                // Closing the relayed connections makes the redial (once they are gone) open
                // a fresh one, which DCUtR punches again.
                if self.close_relayed(&peer) {
                    self.redial_after_close.insert(peer);
                }
            }
            Command::CloseRelayed { peer } => {
                if self.has_direct(&peer) {
                    if self.busy(&peer) {
                        self.later(Duration::from_secs(1), Command::CloseRelayed { peer });
                    } else {
                        self.close_relayed(&peer);
                    }
                }
            }
            Command::Shutdown => {}
        }
    }

    fn dial(&mut self, peer: &StaticPeer) {
        let opts = DialOpts::peer_id(peer.peer)
            .addresses(vec![peer.addr.clone()])
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            self.dial_failed(peer.peer, e.to_string());
        }
    }

    /// A failed request's reason; a request that could not dial carries the dial's error.
    fn failure_reason(&self, peer: PeerId, error: &request_response::OutboundFailure) -> String {
        match (error, self.dial_errors.get(&peer)) {
            (request_response::OutboundFailure::DialFailure, Some(why)) => {
                format!("{error}: {why}")
            }
            // libp2p reports no dial error when there was no address to dial at all.
            (request_response::OutboundFailure::DialFailure, None)
                if self.addresses(&peer).is_empty() =>
            {
                format!("{error}: no known address of the peer")
            }
            _ => error.to_string(),
        }
    }

    fn dial_failed(&mut self, peer: PeerId, reason: String) {
        for reply in self.dials.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(reason.clone()));
        }
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<StaticPeer> = self
            .redial
            .values_mut()
            .filter(|r| r.next <= now)
            .map(|r| {
                r.next = now + r.backoff;
                r.backoff = (r.backoff * 2).min(Duration::from_secs(60));
                r.peer.clone()
            })
            .collect();
        for peer in due {
            if !self.swarm.is_connected(&peer.peer) {
                self.dial(&peer);
            }
        }
    }

    /// Handles one swarm event; returns whether the reachability policy should run.
    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> bool {
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                if self.reservations.contains_key(&listener_id) || is_relayed(&address) {
                    tracing::info!(%address, "reachable through a relay");
                    return true;
                }
                tracing::info!(%address, "listening");
                self.addresses_changed(&address);
                // A global IPv6 address is not translated on its way out: it is the external
                // address if the firewall in front lets connections in. AutoNAT finds out, even
                // when no peer happened to connect over IPv6 and observe it.
                if self.policy.features().detect_addresses
                    && !self.tor_only
                    && matches!(address.iter().next(), Some(Protocol::Ip6(_)))
                    && is_global_addr(&address)
                {
                    self.swarm.behaviour_mut().candidates.add(address.clone());
                }
                self.state.send_modify(|s| s.listen_addrs.push(address));
                return true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.addresses_changed(&address);
                self.state
                    .send_modify(|s| s.listen_addrs.retain(|a| a != &address));
                return true;
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.reservations.remove(&listener_id) {
                    let ev = match reason {
                        Ok(()) => kith_nat::Event::ReservationClosed(relay),
                        Err(e) => {
                            tracing::info!(%relay, error = %e, "relay reservation failed");
                            kith_nat::Event::ReservationFailed(relay, e.to_string())
                        }
                    };
                    self.policy.on(ev, self.now_ms());
                    return true;
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address }
                if self.tor_only && !crate::grid::is_onion(&address) =>
            {
                tracing::warn!(%address, "tor-only: not taking a clearnet external address");
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.policy
                    .on(kith_nat::Event::Confirmed(address), self.now_ms());
                return true;
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.policy
                    .on(kith_nat::Event::Expired(address), self.now_ms());
                return true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                self.dialing.remove(&peer_id);
                self.dial_errors.remove(&peer_id);
                self.conns.insert(
                    connection_id,
                    Conn {
                        peer: peer_id,
                        relayed: endpoint.is_relayed(),
                        inbound: matches!(endpoint, ConnectedPoint::Listener { .. }),
                        remote: endpoint.get_remote_address().clone(),
                    },
                );
                if !self.known_direct.contains_key(&peer_id) {
                    let known = self.direct_addresses(&peer_id).into_iter().collect();
                    self.known_direct.insert(peer_id, known);
                }
                if !endpoint.is_relayed() && self.has_relayed(&peer_id) {
                    // Storage goes over the direct connection (however it came about); the
                    // relayed one is closed once requests already on it have had time to
                    // finish.
                    self.later(RELAYED_GRACE, Command::CloseRelayed { peer: peer_id });
                }
                let path = self.path(&peer_id);
                if let Some(r) = self.redial.get_mut(&peer_id) {
                    r.backoff = Duration::from_secs(1);
                }
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                let addr = endpoint.get_remote_address().clone();
                if !self.state.borrow().peers.contains_key(&peer_id) {
                    let _ = self.events.try_send(NetEvent::Connected(peer_id));
                }
                self.state.send_modify(|s| {
                    let st = s.peers.entry(peer_id).or_insert(PeerState {
                        path,
                        addrs: Vec::new(),
                        storage: false,
                        agent: None,
                        rtt_ms: None,
                        connections: 0,
                    });
                    st.connections += 1;
                    st.path = path;
                    if !st.addrs.contains(&addr) {
                        st.addrs.push(addr);
                    }
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                connection_id,
                ..
            } => {
                self.conns.remove(&connection_id);
                let path = self.path(&peer_id);
                let addr = endpoint.get_remote_address().clone();
                self.state.send_modify(|s| {
                    if num_established == 0 {
                        s.peers.remove(&peer_id);
                    } else if let Some(st) = s.peers.get_mut(&peer_id) {
                        st.connections = num_established as usize;
                        st.path = path;
                        st.addrs.retain(|a| a != &addr);
                    }
                });
                let direct_left = self.conns.values().any(|c| c.peer == peer_id && !c.relayed);
                if !direct_left && self.relay_offers.remove(&peer_id) {
                    self.policy
                        .on(kith_nat::Event::RelayGone(peer_id), self.now_ms());
                }
                if num_established == 0 {
                    self.punched.remove(&peer_id);
                    self.known_direct.remove(&peer_id);
                }
                if num_established == 0 && self.redial_after_close.remove(&peer_id) {
                    self.ensure_dial(peer_id);
                }
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    let _ = self.events.try_send(NetEvent::Disconnected(peer_id));
                    let server = self.server.clone();
                    tokio::spawn(async move { server.peer_gone(peer_id).await });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let libp2p::swarm::DialError::WrongPeerId { obtained, address } = &error {
                    self.forget_wrong_address(peer, *obtained, address);
                }
                if self.swarm.is_connected(&peer) {
                    return false;
                }
                self.dial_ended(peer, error.to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => {
                let storage = info.protocols.contains(&protocol::PROTOCOL);
                for client in self.swarm.behaviour_mut().autonat_mut() {
                    client.peer_listens_on(peer_id, &info.listen_addrs);
                }
                let direct = self.conns.get(&connection_id).is_some_and(|c| !c.relayed);
                let offers_relay = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
                let nat = if direct && offers_relay && self.relay_offers.insert(peer_id) {
                    self.policy
                        .on(kith_nat::Event::RelayAvailable(peer_id), self.now_ms());
                    true
                } else if direct && !offers_relay && self.relay_offers.remove(&peer_id) {
                    self.policy
                        .on(kith_nat::Event::RelayGone(peer_id), self.now_ms());
                    true
                } else {
                    false
                };
                self.state.send_modify(|s| {
                    if let Some(st) = s.peers.get_mut(&peer_id) {
                        st.storage = storage;
                        st.agent = Some(info.agent_version.chars().take(64).collect());
                    }
                });
                return nat;
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.policy.on(
                    kith_nat::Event::ReservationAccepted(relay_peer_id),
                    self.now_ms(),
                );
                return true;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                let ok = match result {
                    Ok(id) => {
                        self.punch_rounds.remove(&remote_peer_id);
                        tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection");
                        tracing::debug!(peer = %remote_peer_id, connection = ?id, "punched");
                        // Per peer, not per connection: a punch can end in more than one
                        // direct connection (TCP and QUIC both meet), and either may be the
                        // one that stays.
                        self.punched.insert(remote_peer_id);
                        let path = self.path(&remote_peer_id);
                        self.state.send_if_modified(|s| {
                            s.peers.get_mut(&remote_peer_id).is_some_and(|st| {
                                st.path = path;
                                true
                            })
                        });
                        // The relayed connection closes as for any direct one (see
                        // `ConnectionEstablished`).
                        true
                    }
                    Err(e) => {
                        // DCUtR tries three times on one relayed connection. A punch that
                        // missed (timing on a loaded machine, a router slow to map) gets new
                        // relayed connections, so new rounds, a bounded number of times.
                        let round = self.punch_rounds.entry(remote_peer_id).or_insert(0);
                        *round += 1;
                        let round = *round;
                        if round <= PUNCH_ROUNDS {
                            tracing::info!(peer = %remote_peer_id, error = %e, round, "hole punch failed; another round soon");
                            self.later(
                                PUNCH_RETRY * 2u32.pow(round - 1),
                                Command::Repunch {
                                    peer: remote_peer_id,
                                },
                            );
                        } else {
                            tracing::info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed");
                        }
                        false
                    }
                };
                self.policy.on(
                    kith_nat::Event::HolePunch {
                        peer: remote_peer_id,
                        ok,
                    },
                    self.now_ms(),
                );
                return true;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => {
                self.on_relay_server(ev);
            }
            SwarmEvent::Behaviour(
                BehaviourEvent::AutonatV4(ev) | BehaviourEvent::AutonatV6(ev),
            ) => {
                tracing::debug!(
                    addr = %ev.tested_addr, server = %ev.server, outcome = ?ev.outcome,
                    detail = %ev.detail, bytes_sent = ev.bytes_sent, "AutoNAT test"
                );
                self.publish_autonat();
            }
            // A new candidate shows (untested) at once, not only after the first test ends
            // (which needs a member this node dialed: on loopback, maybe none for a while).
            SwarmEvent::NewExternalAddrCandidate { .. } => self.publish_autonat(),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.state
                    .send_if_modified(|s| match s.peers.get_mut(&peer) {
                        Some(st) => {
                            st.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                            true
                        }
                        None => false,
                    });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Storage(ev)) => self.on_storage(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Join(ev)) => self.on_join(ev),
            _ => {}
        }
        false
    }

    /// Whether storage requests to or from `peer` are in flight.
    fn busy(&self, peer: &PeerId) -> bool {
        self.pending.values().any(|p| p.peer == *peer)
            || self.serving.get(peer).is_some_and(|n| *n > 0)
    }

    fn served(&mut self, peer: PeerId) {
        if let Some(n) = self.serving.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.serving.remove(&peer);
            }
        }
    }

    /// Sends `cmd` to this actor after `delay`.
    fn later(&self, delay: Duration, cmd: Command) {
        let cmds = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = cmds.send(cmd).await;
        });
    }

    fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|c| c.peer == *peer && !c.relayed)
    }

    fn has_relayed(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|c| c.peer == *peer && c.relayed)
    }

    /// The addresses of `peer` to dial that are not through a relay.
    fn direct_addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs = self.addresses(peer);
        addrs.retain(|a| !is_relayed(a));
        addrs
    }

    /// Dials, for each peer reached only through relays, the direct addresses that appeared
    /// in its record since it connected (see `known_direct`). A connection that succeeds
    /// replaces the relayed ones (see `ConnectionEstablished`); one that fails is not retried
    /// until the address changes again or the peer reconnects.
    fn dial_new_direct_addresses(&mut self) {
        let relayed_only: Vec<PeerId> = self
            .known_direct
            .keys()
            .filter(|p| !self.has_direct(p))
            .copied()
            .collect();
        for peer in relayed_only {
            let fresh: Vec<Multiaddr> = {
                let known = &self.known_direct[&peer];
                self.direct_addresses(&peer)
                    .into_iter()
                    .filter(|a| !known.contains(a))
                    .collect()
            };
            if fresh.is_empty() {
                continue;
            }
            if let Some(known) = self.known_direct.get_mut(&peer) {
                known.extend(fresh.iter().cloned());
            }
            tracing::info!(%peer, "a peer reached through a relay announced a new direct address; dialing it");
            tracing::debug!(%peer, addresses = ?fresh, "new direct addresses");
            let _ = self.dial_addresses(peer, fresh, PeerCondition::Always);
        }
    }

    /// Closes the relayed connections to `peer`; whether there were any.
    fn close_relayed(&mut self, peer: &PeerId) -> bool {
        let relayed: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == *peer && c.relayed)
            .map(|(id, _)| *id)
            .collect();
        for id in &relayed {
            self.swarm.close_connection(*id);
        }
        !relayed.is_empty()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The best path among the open connections to `peer`.
    fn path(&self, peer: &PeerId) -> Path {
        let upnp = matches!(self.policy.upnp(), kith_nat::policy::Upnp::Mapped { .. })
            && self.policy.is_public();
        let announced: Vec<Multiaddr> = self
            .addresses(peer)
            .iter()
            .map(kith_transports::without_peer_id)
            .collect();
        let punched = self.punched.contains(peer);
        let mut best = Path::Relayed;
        for c in self.conns.values().filter(|c| c.peer == *peer) {
            let dialed_announced =
                !c.inbound && announced.contains(&kith_transports::without_peer_id(&c.remote));
            let p = conn_path(c, punched, upnp, dialed_announced);
            if rank(p) > rank(best) {
                best = p;
            }
        }
        best
    }

    fn on_relay_server(&mut self, ev: relay::Event) {
        match ev {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                if !renewed {
                    tracing::debug!(peer = %src_peer_id, "relaying for a member");
                }
                self.state.send_modify(|s| {
                    s.nat.relay_reservations.insert(src_peer_id);
                });
            }
            // libp2p reports "closed" for every closed connection of a peer it tracks.
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.state
                    .send_if_modified(|s| s.nat.relay_reservations.remove(&src_peer_id));
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. }
            | relay::Event::CircuitReqDenied { src_peer_id, .. } => {
                tracing::info!(peer = %src_peer_id, "relay request refused (not a member, or over a limit)");
                self.state
                    .send_modify(|s| *s.nat.relay_refused.entry(src_peer_id).or_default() += 1);
            }
            relay::Event::StatusChanged { status } => {
                let on = status == relay::Status::Enable;
                tracing::info!(on, "relay service for members");
                self.state.send_modify(|s| s.nat.relay_service = on);
            }
            relay::Event::CircuitReqAccepted { .. } => {
                self.state.send_modify(|s| s.nat.relay_circuits += 1);
            }
            relay::Event::CircuitClosed { .. } => {
                self.state
                    .send_modify(|s| s.nat.relay_circuits = s.nat.relay_circuits.saturating_sub(1));
            }
            _ => {}
        }
    }

    fn on_upnp(&mut self, result: UpnpResult) {
        let now = self.now_ms();
        match result {
            Ok((mappings, service)) => {
                for m in &mappings {
                    tracing::info!(mapping = %m, "UPnP mapping in place");
                    // The router's external address may have been tested (and failed) as an
                    // observed address before the mapping existed: test it at once rather
                    // than after its back-off.
                    let addr = m.multiaddr();
                    let b = self.swarm.behaviour_mut();
                    for client in b.autonat_mut() {
                        client.test_now(&addr);
                    }
                    b.candidates.add(addr);
                }
                let lease_ms = mappings
                    .iter()
                    .map(|m| u64::from(m.lease_secs) * 1000)
                    .min()
                    .unwrap_or(0);
                self.policy.on(
                    kith_nat::Event::UpnpMapped {
                        external: mappings.iter().map(upnp::Mapping::multiaddr).collect(),
                        lease_ms,
                    },
                    now,
                );
                self.state.send_modify(|s| {
                    s.nat.upnp = mappings;
                    s.nat.upnp_service = service;
                });
            }
            Err(e) => {
                tracing::info!(error = %e, "no UPnP mapping");
                self.policy
                    .on(kith_nat::Event::UpnpFailed(e.to_string()), now);
                self.state.send_modify(|s| s.nat.upnp.clear());
            }
        }
        self.run_policy();
    }

    /// A listen address of this node's came or went: once the first UPnP attempt is made,
    /// a change of an address worth mapping (or of a global IPv6 one, which pinholes open)
    /// means another network (or another address on it, or a new IPv6 prefix), and the router
    /// is asked again now.
    fn addresses_changed(&mut self, address: &Multiaddr) {
        if self.policy.upnp_trigger().is_some()
            && !is_relayed(address)
            && (!upnp::Port::from_listen_addrs([address]).is_empty()
                || !upnp::Port::v6_from_listen_addrs([address]).is_empty())
        {
            tracing::debug!(%address, "an address worth mapping came or went");
            self.policy
                .on(kith_nat::Event::NetworkChanged, self.now_ms());
        }
    }

    /// A router announced itself on the LAN (or said goodbye).
    fn on_announcement(&mut self, a: kith_nat::ssdp::Announcement) {
        tracing::debug!(gateway = %a.id, alive = a.alive, boot_id = ?a.boot_id, "a router announced itself");
        let event = if a.alive {
            kith_nat::Event::GatewayAnnounced {
                id: a.id,
                boot_id: a.boot_id,
            }
        } else {
            kith_nat::Event::GatewayLeft(a.id)
        };
        self.policy.on(event, self.now_ms());
        self.run_policy();
    }

    /// Publishes AutoNAT's candidates and their tests (`nat.autonat`).
    fn publish_autonat(&mut self) {
        let reports: Vec<_> = self
            .swarm
            .behaviour()
            .autonat()
            .flat_map(|c| c.inner().report())
            .collect();
        self.state.send_modify(|s| {
            s.nat.autonat = reports;
            s.nat.autonat_at = Some(Instant::now());
        });
    }

    /// Whether every configured listener worth a mapping or a pinhole reports its addresses.
    fn listening_on_all(&self) -> bool {
        let listen = &self.state.borrow().listen_addrs;
        let v6: std::collections::BTreeSet<upnp::Port> = upnp::Port::v6_from_listen_addrs(listen)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        upnp::Port::from_listen_addrs(listen).len() >= self.mappable_listeners
            && v6.len() >= self.pinhole_listeners
    }

    /// Carries out what the reachability policy wants and publishes the result.
    fn run_policy(&mut self) {
        // Wait for every listen port worth mapping or a pinhole (they arrive one event at a
        // time), or 2 s.
        if self.started.elapsed() > Duration::from_secs(2) || self.listening_on_all() {
            for action in self.policy.poll(self.now_ms()) {
                match action {
                    kith_nat::Action::MapPorts => {
                        let (ports, v6) = {
                            let listen = &self.state.borrow().listen_addrs;
                            (
                                upnp::Port::from_listen_addrs(listen),
                                upnp::Port::v6_from_listen_addrs(listen),
                            )
                        };
                        tracing::debug!(?ports, ?v6, trigger = ?self.policy.upnp_trigger(), "UPnP attempt");
                        let (mapper, tx) = (self.mapper.clone(), self.upnp_tx.clone());
                        // A router that announced a restart may serve its control URL
                        // elsewhere; after a network change it may be another router.
                        let search = matches!(
                            self.policy.upnp_trigger(),
                            Some(
                                kith_nat::policy::Trigger::Announced
                                    | kith_nat::policy::Trigger::NetworkChanged
                            )
                        );
                        tokio::spawn(async move {
                            let mut m = mapper.lock().await;
                            if search {
                                m.forget_gateway();
                            }
                            let r = m.map(&ports, &v6).await;
                            let _ = tx.send(r.map(|v| (v, m.service()))).await;
                        });
                    }
                    kith_nat::Action::Reserve(relay) => self.reserve(relay),
                    kith_nat::Action::Release(relay) => {
                        let ids: Vec<ListenerId> = self
                            .reservations
                            .iter()
                            .filter(|(_, p)| **p == relay)
                            .map(|(id, _)| *id)
                            .collect();
                        for id in ids {
                            self.swarm.remove_listener(id);
                        }
                    }
                }
            }
        }
        let external: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .filter(|a| !self.tor_only || crate::grid::is_onion(a))
            .cloned()
            .collect();
        let policy = self.policy.clone();
        self.state.send_if_modified(|s| {
            let changed = s.external_addrs != external || s.nat.policy.as_ref() != Some(&policy);
            s.external_addrs = external;
            s.nat.policy = Some(policy);
            changed
        });
    }

    fn reserve(&mut self, relay: PeerId) {
        // The relay's address as we reach it: an address we dialed it on, else one from its
        // record that is publicly routable, else any.
        let dialed = self
            .conns
            .values()
            .find(|c| c.peer == relay && !c.inbound && !c.relayed)
            .map(|c| c.remote.clone());
        let book = self.addresses(&relay);
        let global = book.iter().find(|a| !is_relayed(a) && is_global_addr(a));
        let Some(addr) = dialed
            .or_else(|| global.cloned())
            .or_else(|| book.iter().find(|a| !is_relayed(a)).cloned())
        else {
            self.policy.on(
                kith_nat::Event::ReservationFailed(relay, "no address known for the relay".into()),
                self.now_ms(),
            );
            return;
        };
        let addr = kith_transports::with_peer_id(&addr, relay).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                tracing::info!(%relay, %addr, "reserving a relay slot");
                self.reservations.insert(id, relay);
                self.observe_both_transports(relay);
            }
            Err(e) => self.policy.on(
                kith_nat::Event::ReservationFailed(relay, e.to_string()),
                self.now_ms(),
            ),
        }
    }

    /// Hole punching dials the addresses the *other* side observed for itself, and a node only
    /// learns an observed address per transport it used: a node that reached the relay over
    /// TCP alone offers TCP candidates while its peer, which happened to win the race over
    /// QUIC, offers QUIC ones, and the punch never meets (seen in the NAT lab). So a node
    /// behind NAT keeps a connection to its relay over each transport.
    fn observe_both_transports(&mut self, relay: PeerId) {
        let is_quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::QuicV1));
        let open: Vec<bool> = self
            .conns
            .values()
            .filter(|c| c.peer == relay && !c.relayed)
            .map(|c| is_quic(&c.remote))
            .collect();
        let book = self.addresses(&relay);
        for quic in [false, true] {
            if open.contains(&quic) {
                continue;
            }
            let Some(addr) = book
                .iter()
                .find(|a| !is_relayed(a) && is_quic(a) == quic && is_global_addr(a))
                .or_else(|| book.iter().find(|a| !is_relayed(a) && is_quic(a) == quic))
            else {
                continue;
            };
            let opts = DialOpts::peer_id(relay)
                .condition(PeerCondition::Always)
                .addresses(vec![addr.clone()])
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%relay, error = %e, "second transport to the relay");
            }
        }
    }

    fn on_storage(&mut self, ev: request_response::Event<RequestFrame, Response>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                *self.serving.entry(peer).or_default() += 1;
                let server = self.server.clone();
                let answers = self.answers_tx.clone();
                tokio::spawn(async move {
                    let resp = server.handle(peer, request).await;
                    let _ = answers.send(Answer::Storage(channel, resp)).await;
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(p) = self.pending.remove(&request_id) {
                    let _ = p.reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(p) = self.pending.remove(&request_id) else {
                    return;
                };
                let again = match (&p.retry, &error) {
                    (Some(_), request_response::OutboundFailure::DialFailure) => true,
                    (Some(req), request_response::OutboundFailure::ConnectionClosed) => {
                        req.is_read_only()
                    }
                    _ => false,
                };
                if let (true, Some(req)) = (again, p.retry) {
                    tracing::debug!(%peer, %error, "retrying the request once");
                    let retry = self.retry_tx.clone();
                    tokio::spawn(async move {
                        let jitter = 50 + u64::from(rand::random::<u8>());
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                        let _ = retry
                            .send(Command::Retry {
                                peer,
                                req,
                                reply: p.reply,
                            })
                            .await;
                    });
                    return;
                }
                let reason = self.failure_reason(peer, &error);
                let _ = p.reply.send(Err(RpcError::Failed { peer, reason }));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound storage stream failed");
                self.served(peer);
            }
            request_response::Event::ResponseSent { peer, .. } => self.served(peer),
        }
    }

    fn on_gossip(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self
                    .events
                    .try_send(NetEvent::Gossip(peer, request))
                    .is_err()
                {
                    tracing::debug!(%peer, "gossip message dropped: queue full");
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .send_response(channel, Vec::new());
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "gossip message not delivered");
            }
            _ => {}
        }
    }

    fn on_join(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let (tx, rx) = oneshot::channel();
                if self
                    .events
                    .try_send(NetEvent::Join(peer, request, tx))
                    .is_err()
                {
                    return;
                }
                let answers = self.answers_tx.clone();
                tokio::spawn(async move {
                    if let Ok(resp) = rx.await {
                        let _ = answers.send(Answer::Join(channel, resp)).await;
                    }
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(join) = self.joins.remove(&request_id) {
                    let _ = join.reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(PendingJoin {
                    reply,
                    msg,
                    attempt,
                    addrs,
                }) = self.joins.remove(&request_id)
                else {
                    return;
                };
                // Like storage requests: a dial that lost a race (two dials from one reused
                // port, a simultaneous open) gets one more try a moment later. A dial that
                // failed because an address led to another peer gets another try as long as
                // that made the book shorter and addresses remain (bounded: an invitation
                // carries few, and gossip could bring one back).
                let left = self.addresses(&peer).len();
                let pruned = left < addrs;
                let dial_failed = matches!(error, request_response::OutboundFailure::DialFailure);
                let again = attempt == 1 || (pruned && attempt < MAX_JOIN_ATTEMPTS && left > 0);
                if dial_failed && again {
                    tracing::debug!(%peer, attempt, "dial failed; retrying the join request");
                    self.later(
                        Duration::from_millis(if pruned { 0 } else { 200 }),
                        Command::RetryJoin {
                            peer,
                            msg,
                            reply,
                            attempt: attempt + 1,
                        },
                    );
                    return;
                }
                let reason = self.failure_reason(peer, &error);
                let _ = reply.send(Err(RpcError::Failed { peer, reason }));
            }
            _ => {}
        }
    }
}

/// `addr` with its TCP port replaced by 0 (any free port).
fn with_port_zero(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            p => p,
        })
        .collect()
}

/// A transport error with its cause: libp2p's `TransportError::Other` displays as nothing.
/// Whether `addr` listens on every IPv6 address (`/ip6/::/…`).
fn is_ip6_wildcard(addr: &Multiaddr) -> bool {
    matches!(addr.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_unspecified())
}

fn transport_error<E: std::error::Error>(e: &libp2p::TransportError<E>) -> String {
    match e {
        libp2p::TransportError::Other(inner) => {
            let mut s = inner.to_string();
            let mut src = inner.source();
            while let Some(cause) = src {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                src = cause.source();
            }
            s
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    const ONION: &str = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800";

    #[test]
    fn dial_sets_keep_tor_where_it_belongs() {
        let tcp = ma("/ip4/192.0.2.1/tcp/41000");
        let dual = vec![tcp.clone(), ma(ONION)];
        let onion_only = vec![ma(ONION)];
        // Tor-only: the onion address alone when there is one, else the clearnet via an exit.
        assert_eq!(dial_set(dual.clone(), true, false), onion_only);
        assert_eq!(dial_set(vec![tcp.clone()], true, false), vec![tcp.clone()]);
        // Clearnet node with Tor on demand: a dual-stack member over the clearnet (Tor is not
        // started for it), a Tor-only member over its onion address.
        assert_eq!(dial_set(dual.clone(), false, true), vec![tcp.clone()]);
        assert_eq!(dial_set(onion_only.clone(), false, true), onion_only);
        // Tor running anyway (mode both): everything, in parallel.
        assert_eq!(dial_set(dual.clone(), false, false), dual);
    }

    #[test]
    fn a_connection_to_an_announced_address_is_direct_even_when_a_punch_made_it() {
        let conn = |relayed, inbound| Conn {
            peer: PeerId::random(),
            relayed,
            inbound,
            remote: ma("/ip4/11.0.0.11/tcp/4002"),
        };
        let (out, inb, relayed) = (conn(false, false), conn(false, true), conn(true, false));
        // Relayed stays relayed, whatever else holds.
        assert_eq!(conn_path(&relayed, true, true, true), Path::Relayed);
        // DCUtR dialed the peer's announced (say, UPnP-mapped) address: direct; its own
        // observed address (not announced): hole-punched.
        assert_eq!(conn_path(&out, true, false, true), Path::Direct);
        assert_eq!(conn_path(&out, true, false, false), Path::HolePunched);
        // The other end: reached at its mapping, punch or not.
        assert_eq!(conn_path(&inb, true, true, false), Path::Upnp);
        assert_eq!(conn_path(&inb, true, false, false), Path::HolePunched);
        assert_eq!(conn_path(&inb, false, false, false), Path::Direct);
        assert_eq!(conn_path(&out, false, false, false), Path::Direct);
    }
}
