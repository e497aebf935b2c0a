//! The network actor: owns the libp2p `Swarm` (identify, ping, storage request-response) and
//! is driven through a bounded command queue by a cloneable [`NetHandle`].
//!
//! - Inbound storage requests are answered by the [`StorageServer`] on their own tasks; the
//!   answers come back to the actor on a bounded queue (local work before remote work: the
//!   actor drains answers and commands before polling the swarm again).
//! - Outbound requests ([`NetHandle::request`]) resolve a oneshot when the response (or the
//!   failure) arrives.
//! - Static peers are dialed at start and redialed with capped exponential backoff.
//! - What the rest of the node reads (listen addresses, connected peers, which of them offer
//!   storage, round-trip times) is published on a `watch` channel ([`NetState`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, identify, ping,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent, dial_opts::DialOpts},
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::StaticPeer,
    protocol::{self, BytesCodec, Request, RequestFrame, Response},
    server::StorageServer,
};

/// How long a storage request may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a peer connection looks like from here.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerState {
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
    /// Connected peers.
    pub peers: BTreeMap<PeerId, PeerState>,
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
    Shutdown,
}

/// Cloneable handle to the network actor.
#[derive(Clone, Debug)]
pub struct NetHandle {
    local: PeerId,
    cmd: mpsc::Sender<Command>,
    state: watch::Receiver<NetState>,
    book: AddressBook,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
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
) -> Result<
    (
        NetHandle,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetError,
> {
    let local = keypair.public().to_peer_id();
    let transport = kith_transports::build_transport(keypair, transports)?;
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
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            // Members keep their connections: storage requests flow both ways at any time.
            .with_idle_connection_timeout(Duration::from_secs(24 * 3600)),
    );
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen(addr.clone(), e.to_string()))?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (state_tx, state_rx) = watch::channel(NetState::default());
    let (answer_tx, answer_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(4096);
    let book: AddressBook = Arc::default();
    let actor = Actor {
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
    let task = tokio::spawn(actor.run(cmd_rx, answer_rx));
    Ok((
        NetHandle {
            local,
            cmd: cmd_tx,
            state: state_rx,
            book,
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

struct Actor {
    events: mpsc::Sender<NetEvent>,
    book: AddressBook,
    joins: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, RpcError>>>,
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
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, mut answers: mpsc::Receiver<Answer>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
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
                _ = tick.tick() => self.redial_due(),
                Some(event) = self.swarm.next() => self.on_event(event),
            }
        }
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

    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    fn send_storage(
        &mut self,
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, RpcError>>,
        may_retry: bool,
    ) {
        let addrs = self.addresses(&peer);
        let retry = (may_retry && !self.swarm.is_connected(&peer)).then(|| req.clone());
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
                let addrs = self.addresses(&peer);
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .send_request_with_addresses(&peer, msg, addrs);
            }
            Command::Join { peer, msg, reply } => {
                let addrs = self.addresses(&peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .join
                    .send_request_with_addresses(&peer, msg, addrs);
                self.joins.insert(id, reply);
            }
            Command::Connect { peer } => {
                let addrs = self.addresses(&peer);
                if !self.swarm.is_connected(&peer) && !addrs.is_empty() {
                    let opts = DialOpts::peer_id(peer).addresses(addrs).build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "dialing a member failed");
                    }
                }
            }
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

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.state.send_modify(|s| s.listen_addrs.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.state
                    .send_modify(|s| s.listen_addrs.retain(|a| a != &address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
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
                        addrs: Vec::new(),
                        storage: false,
                        agent: None,
                        rtt_ms: None,
                        connections: 0,
                    });
                    st.connections += 1;
                    if !st.addrs.contains(&addr) {
                        st.addrs.push(addr);
                    }
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                self.state.send_modify(|s| {
                    if num_established == 0 {
                        s.peers.remove(&peer_id);
                    } else if let Some(st) = s.peers.get_mut(&peer_id) {
                        st.connections = num_established as usize;
                        st.addrs.retain(|a| a != &addr);
                    }
                });
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
            } if !self.swarm.is_connected(&peer) => {
                self.dial_failed(peer, error.to_string());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let storage = info.protocols.contains(&protocol::PROTOCOL);
                self.state.send_modify(|s| {
                    if let Some(st) = s.peers.get_mut(&peer_id) {
                        st.storage = storage;
                        st.agent = Some(info.agent_version.chars().take(64).collect());
                    }
                });
            }
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
                if let (Some(req), request_response::OutboundFailure::DialFailure) =
                    (p.retry, &error)
                {
                    tracing::debug!(%peer, "dial failed; retrying the request once");
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
                let _ = p.reply.send(Err(RpcError::Failed {
                    peer,
                    reason: error.to_string(),
                }));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound storage stream failed");
            }
            request_response::Event::ResponseSent { .. } => {}
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
                if let Some(reply) = self.joins.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.joins.remove(&request_id) {
                    let _ = reply.send(Err(RpcError::Failed {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }
}
