//! Tor: a libp2p [`Transport`] over [arti-client](https://docs.rs/arti-client), the Rust Tor
//! implementation, so a kith node can run with no clearnet presence at all.
//!
//! # What it does
//! - **Dial** `/onion3/<56 chars>:<port>` through the onion service protocol (rend-spec-v3), and
//!   `/ip4|ip6/<addr>/tcp/<port>` or `/dns|dns4|dns6/<name>/tcp/<port>` through a Tor exit.
//!   A trailing `/p2p/<peer>` is accepted and ignored (the Noise handshake checks it).
//! - **Listen** on a v3 onion service hosted by arti: `listen_on(/onion3/<addr>:<port>)` where
//!   `<addr>` is either the *wildcard* [`onion_listen_addr`] (all-zero key, 56 `a`s, the onion
//!   analogue of `0.0.0.0`) or this node's own onion address. The listener reports the real
//!   `/onion3/<56 chars>:<port>` with [`TransportEvent::NewAddress`]. Several listeners on
//!   different virtual ports share one onion service.
//! - The streams are plain byte streams ([`DataStream`]); [`crate::build_transport`] gives them
//!   the same Noise + Yamux upgrade as TCP, so peers are authenticated by their ed25519 node key
//!   exactly as on TCP. The onion address only says *where* to reach a peer, never *who* it is.
//!
//! # Keys and state
//! The onion service's identity key lives in arti's keystore under
//! [`TorConfig::state_dir`] (`<state_dir>/keystore`), keyed by [`TorConfig::nickname`]: the same
//! state dir gives the same onion address across restarts. Arti's directory cache (consensus,
//! microdescriptors) lives in [`TorConfig::cache_dir`] and can be deleted at any time.
//!
//! # Anonymity hygiene (what this module guarantees, and what it leaves to the node)
//! - **No local DNS.** Hostnames (`/dns*/…`) are handed to arti as names and resolved by the exit;
//!   this module never calls the system resolver. (So never wrap the stack in libp2p's `dns`
//!   transport: it would resolve `/dns` addresses locally before Tor sees them.)
//! - **No clearnet sockets.** The only sockets opened are arti's own connections to Tor relays
//!   (guards, directory caches). A *Tor-only* node ([`crate::Config::tor_only`]) has no TCP, QUIC
//!   or memory transport, so nothing in the transport stack can reach the clearnet directly.
//! - Every dial gets its own isolation group (its own circuit), so an exit cannot link two peers'
//!   connections to one node.
//! - Incoming connections have no address: their `send_back_addr` is the wildcard
//!   [`onion_listen_addr`] for the listener's port. The node must not treat it (or anything
//!   learned from identify's "observed address" over Tor) as an external address.
//! - What stays the node's job: not advertising clearnet addresses when Tor-only, and not
//!   putting anything identifying into gossip.
//!
//! # On demand
//! [`Tor::on_demand`] checks the configuration at once but creates the arti client only when
//! something first needs it (a dial, a listener, [`Tor::bootstrap`]): a clearnet node that may
//! some day dial a Tor-only member touches no Tor state and sends nothing until it does. With
//! [`Scope::OnionDialOnly`] the transport dials `/onion3` addresses and nothing else, and never
//! listens: such a node uses Tor only to reach onion services, never as a way out to the
//! clearnet.
//!
//! # Progress and health
//! [`Tor::status`] / [`Tor::status_events`] report arti's bootstrap progress (percent, ready,
//! and why it is stuck if it is), which keeps being updated after bootstrap: a guard that can no
//! longer be reached shows up as `blocked`. That is the cheap circuit-health signal arti
//! exposes. The onion service's own state ([`OnionServiceState`]) is included once a listener
//! runs; it is arti's estimate and can say `DegradedUnreachable` while the service is in fact
//! reachable, so show it but don't gate on it.
//!
//! # Runtime
//! Arti needs a Tokio runtime: call [`Tor::create`] from inside one (the node's runtime). The
//! [`TorTransport`] itself is polled by the swarm like any transport.

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use arti_client::{
    BootstrapBehavior, DataStream, StreamPrefs, TorAddr, TorClient,
    config::{
        BoolOrAuto, CfgPath, TorClientConfig, TorClientConfigBuilder,
        onion_service::OnionServiceConfigBuilder,
    },
};
use futures::{Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p::{
    Multiaddr,
    core::{
        Endpoint,
        transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent},
    },
    multiaddr::Protocol,
};
use safelog::DisplayRedacted as _;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{HsNickname, RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

pub use tor_hsservice::status::State as OnionServiceState;

/// Default onion-service nickname (the name of its key in the keystore).
pub const DEFAULT_NICKNAME: &str = "kith";

/// Length of an onion3 address in a multiaddr: ed25519 key (32) + checksum (2) + version (1).
const ONION3_LEN: usize = 35;

/// How to run arti. Paths are the node's; nothing is read from `~/.config/arti`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorConfig {
    /// Arti's persistent state: guards, onion-service keystore and state. Keep it: it is what
    /// makes the onion address stable.
    pub state_dir: PathBuf,
    /// Arti's directory cache; may be deleted at any time.
    pub cache_dir: PathBuf,
    /// Extra arti configuration as TOML in arti's `arti.toml` syntax (for example the
    /// authorities, fallbacks, path rules and address filter of a private test network).
    /// `[storage]` dirs set here are overridden by `state_dir`/`cache_dir`.
    pub arti_toml: Option<String>,
    /// Onion-service nickname: which key in the keystore is this node's onion identity.
    pub nickname: String,
    /// Skip arti's permission checks on `state_dir`/`cache_dir` and their parents (arti refuses
    /// group/world-writable paths by default). For tests under a shared `/tmp`.
    pub trust_all_dir_permissions: bool,
    /// How long a dial may take, including the Noise + Yamux handshake. Onion-service
    /// connections (descriptor fetch, introduction, rendezvous) are slow: tens of seconds.
    pub connect_timeout: Duration,
}

impl TorConfig {
    /// The defaults for a node whose Tor state lives under `state_dir` and `cache_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            cache_dir: cache_dir.into(),
            arti_toml: None,
            nickname: DEFAULT_NICKNAME.to_owned(),
            trust_all_dir_permissions: false,
            connect_timeout: Duration::from_secs(120),
        }
    }
}

/// Errors of the Tor transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorError {
    /// [`TorConfig::arti_toml`] is not valid arti configuration.
    #[error("invalid arti configuration TOML: {0}")]
    ConfigToml(#[from] toml::de::Error),
    /// Arti rejected the configuration.
    #[error("invalid arti configuration: {0}")]
    Config(#[from] arti_client::config::ConfigBuildError),
    /// [`TorConfig::nickname`] is not a valid onion-service nickname.
    #[error("invalid onion service nickname: {0}")]
    Nickname(#[from] tor_hsservice::InvalidNickname),
    /// Arti failed to start or to bootstrap.
    #[error("tor client: {0}")]
    Client(#[source] arti_client::Error),
    /// Arti could not launch the onion service.
    #[error("cannot launch the onion service: {0}")]
    LaunchService(#[source] arti_client::Error),
    /// The onion service was launched but its key is in no keystore.
    #[error("the onion service has no identity key in the keystore")]
    NoServiceKey,
    /// `listen_on` named an onion address that is not this node's.
    #[error("cannot listen on {requested}: this node's onion address is {ours}")]
    NotOurAddress {
        /// The address asked for.
        requested: Multiaddr,
        /// This node's onion service address with the same port.
        ours: Multiaddr,
    },
    /// Another listener already uses this virtual port.
    #[error("onion service port {0} already has a listener")]
    PortInUse(u16),
    /// The onion service stopped producing connections.
    #[error("the onion service stopped")]
    ServiceStopped,
    /// A dial through Tor failed.
    #[error("tor connect to {target}: {source}")]
    Connect {
        /// Where we dialed (an onion name, a host name or an IP address, and the port).
        target: String,
        /// Arti's error.
        #[source]
        source: arti_client::Error,
    },
    /// An incoming onion-service stream could not be accepted.
    #[error("cannot accept an onion service stream: {0}")]
    Accept(#[source] Box<tor_hsservice::ClientError>),
}

/// Arti's view of Tor, in a form `kith status` can print.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TorStatus {
    /// The arti client exists (an on-demand handle creates it on first use; until then the
    /// other fields are zero).
    pub started: bool,
    /// Rough bootstrap progress, 0..=100.
    pub percent: u8,
    /// Arti can open circuits now.
    pub ready: bool,
    /// Why arti thinks it is stuck (clock skew, cannot reach guards, no directory), if it is.
    pub blocked: Option<String>,
    /// The onion service's state, once a listener runs.
    pub onion_service: Option<OnionServiceState>,
    /// What arti says is wrong with the onion service, if anything.
    pub onion_problem: Option<String>,
    /// Incoming onion-service streams accepted so far.
    pub inbound: u64,
    /// Tor streams this transport opened (dials that reached the far end).
    pub dials_ok: u64,
    /// Tor streams that failed to open.
    pub dials_failed: u64,
    /// Why the last failed one failed.
    pub last_dial_error: Option<String>,
}

impl fmt::Display for TorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.started {
            return write!(f, "tor not started");
        }
        write!(f, "tor {}%", self.percent)?;
        match (&self.blocked, self.ready) {
            (Some(why), _) => write!(f, ", blocked: {why}")?,
            (None, true) => write!(f, ", ok")?,
            (None, false) => write!(f, ", bootstrapping")?,
        }
        if let Some(s) = self.onion_service {
            write!(f, ", onion service {s:?}")?;
        }
        Ok(())
    }
}

/// A handle on one arti client: cheap to clone, shared by the transport and the node's status
/// reporting.
#[derive(Clone)]
pub struct Tor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The validated arti configuration the client is (or will be) created from.
    config: TorClientConfig,
    /// Created by [`Tor::create`] at once, by [`Tor::on_demand`] on first use.
    client: OnceLock<Arc<TorClient<PreferredRuntime>>>,
    /// Serializes client creation (arti's state dir lock allows one client per dir).
    creating: Mutex<()>,
    nickname: HsNickname,
    connect_timeout: Duration,
    /// The running onion service, if a listener launched one (for status only).
    service: Mutex<Option<Arc<RunningOnionService>>>,
    health: Health,
}

/// What the transport saw, for [`TorStatus`].
#[derive(Default)]
struct Health {
    inbound: AtomicU64,
    dials_ok: AtomicU64,
    dials_failed: AtomicU64,
    last_dial_error: Mutex<Option<String>>,
}

impl fmt::Debug for Tor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tor")
            .field("nickname", &self.inner.nickname)
            .finish_non_exhaustive()
    }
}

impl Tor {
    /// Creates the arti client without bootstrapping it (no network traffic yet). Bootstrap starts
    /// with [`Tor::bootstrap`], or by itself on the first dial or listen.
    ///
    /// One handle hosts one onion service ([`TorConfig::nickname`]): give it to one listening
    /// transport. A second transport listening through the same handle fails to launch the
    /// service while the first one runs.
    ///
    /// # Panics
    /// Outside a Tokio runtime: arti spawns its tasks on the current one.
    pub fn create(config: &TorConfig) -> Result<Self, TorError> {
        let tor = Self::on_demand(config)?;
        tor.ensure_client()?;
        Ok(tor)
    }

    /// Checks `config` and returns a handle whose arti client is created only when first needed
    /// (a dial, a listener, [`Tor::bootstrap`], [`Tor::status_events`]); until then nothing is
    /// written under the state and cache dirs and nothing is sent. [`Tor::status`] says
    /// `started: false` meanwhile. Creation then runs on the caller's Tokio runtime.
    pub fn on_demand(config: &TorConfig) -> Result<Self, TorError> {
        let nickname = HsNickname::new(config.nickname.clone())?;
        let mut builder = match &config.arti_toml {
            Some(text) => toml::from_str::<TorClientConfigBuilder>(text)?,
            None => TorClientConfigBuilder::default(),
        };
        builder
            .storage()
            .state_dir(CfgPath::new_literal(&config.state_dir))
            .cache_dir(CfgPath::new_literal(&config.cache_dir));
        if config.trust_all_dir_permissions {
            builder.storage().permissions().dangerously_trust_everyone();
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config: builder.build()?,
                client: OnceLock::new(),
                creating: Mutex::new(()),
                nickname,
                connect_timeout: config.connect_timeout,
                service: Mutex::new(None),
                health: Health::default(),
            }),
        })
    }

    /// The arti client, created now (unbootstrapped, bootstrapping on demand) if it wasn't.
    fn ensure_client(&self) -> Result<&Arc<TorClient<PreferredRuntime>>, TorError> {
        if let Some(c) = self.inner.client.get() {
            return Ok(c);
        }
        let _guard = self
            .inner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = self.inner.client.get() {
            return Ok(c);
        }
        // rustls is built with two providers (aws-lc for libp2p's TLS and QUIC, ring for our
        // TCP TLS, see `security`), so it cannot choose a process default itself; arti's TLS to
        // relays takes the process default: aws-lc, as when it was the only one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = TorClient::builder()
            .config(self.inner.config.clone())
            .bootstrap_behavior(BootstrapBehavior::OnDemand)
            .create_unbootstrapped()
            .map_err(TorError::Client)?;
        tracing::debug!("arti client created");
        Ok(self.inner.client.get_or_init(|| client))
    }

    /// Bootstraps: returns once arti has enough directory information to build circuits. Watch
    /// [`Tor::status_events`] meanwhile for progress.
    pub async fn bootstrap(&self) -> Result<(), TorError> {
        self.ensure_client()?
            .bootstrap()
            .await
            .map_err(TorError::Client)
    }

    /// Current bootstrap progress and health. Never creates the client.
    pub fn status(&self) -> TorStatus {
        match self.inner.client.get() {
            Some(c) => self.status_from(&c.bootstrap_status()),
            None => self.health(TorStatus::default()),
        }
    }

    /// Whether the arti client exists yet (see [`Tor::on_demand`]).
    pub fn started(&self) -> bool {
        self.inner.client.get().is_some()
    }

    /// A stream of [`TorStatus`] updates (arti's bootstrap events), for a status display.
    /// It never ends while the client lives. Creates the client if it doesn't exist yet.
    pub fn status_events(
        &self,
    ) -> Result<impl Stream<Item = TorStatus> + Send + 'static + use<>, TorError> {
        let this = self.clone();
        Ok(self
            .ensure_client()?
            .bootstrap_events()
            .map(move |s| this.status_from(&s)))
    }

    /// How long a dial through this client may take (see [`TorConfig::connect_timeout`]).
    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// The arti client, for anything this module doesn't wrap (created now if need be).
    pub fn client(&self) -> Result<&Arc<TorClient<PreferredRuntime>>, TorError> {
        self.ensure_client()
    }

    /// Opens a Tor stream to `target` (creating the client and bootstrapping first if need be).
    async fn connect(&self, target: &Target) -> Result<DataStream, TorError> {
        let connect = |source| TorError::Connect {
            target: target.to_string(),
            source,
        };
        let mut prefs = StreamPrefs::new();
        // One circuit per connection: an exit can't link our peers.
        prefs.new_isolation_group();
        let tor_addr = match target {
            Target::Onion(host, port) => {
                prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
                TorAddr::from((host.as_str(), *port))
            }
            Target::Ip(sa) => TorAddr::dangerously_from(*sa),
            Target::Name(host, port, v) => {
                match v {
                    IpVersion::Any => {}
                    IpVersion::V4 => {
                        prefs.ipv4_only();
                    }
                    IpVersion::V6 => {
                        prefs.ipv6_only();
                    }
                }
                TorAddr::from((host.as_str(), *port))
            }
        };
        let tor_addr = tor_addr.map_err(|e| connect(e.into()))?;
        self.ensure_client()?
            .connect_with_prefs(tor_addr, &prefs)
            .await
            .map_err(connect)
    }

    fn status_from(&self, s: &arti_client::status::BootstrapStatus) -> TorStatus {
        let service = self
            .inner
            .service
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|svc| svc.status()));
        self.health(TorStatus {
            started: true,
            percent: (s.as_frac().clamp(0.0, 1.0) * 100.0).round() as u8,
            ready: s.ready_for_traffic(),
            blocked: s.blocked().map(|b| b.to_string()),
            onion_service: service.as_ref().map(|st| st.state()),
            onion_problem: service
                .as_ref()
                .and_then(|st| st.current_problem().map(problem_text)),
            ..TorStatus::default()
        })
    }

    fn health(&self, status: TorStatus) -> TorStatus {
        let h = &self.inner.health;
        TorStatus {
            inbound: h.inbound.load(Ordering::Relaxed),
            dials_ok: h.dials_ok.load(Ordering::Relaxed),
            dials_failed: h.dials_failed.load(Ordering::Relaxed),
            last_dial_error: h
                .last_dial_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            ..status
        }
    }
}

/// One line for arti's onion-service problem (its type has no `Display`).
fn problem_text(p: &tor_hsservice::status::Problem) -> String {
    use tor_hsservice::status::Problem;
    match p {
        Problem::Runtime(e) => format!("fatal: {e}"),
        Problem::DescriptorUpload(errs) => match errs.first() {
            Some(e) => format!("descriptor upload failed ({} HSDirs): {e}", errs.len()),
            None => "descriptor upload failed".to_owned(),
        },
        Problem::Ipt(errs) => match errs.first() {
            Some(e) => format!("introduction points failed ({}): {e}", errs.len()),
            None => "introduction points failed".to_owned(),
        },
        _ => "onion service problem".to_owned(),
    }
}

/// What a [`TorTransport`] is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Dial onion services, and clearnet addresses and host names through exits; listen on an
    /// onion service.
    #[default]
    Full,
    /// Dial `/onion3` addresses and nothing else; never listen. A clearnet node uses this to
    /// reach Tor-only members without ever sending clearnet traffic through an exit.
    OnionDialOnly,
}

/// The wildcard onion listen address for virtual port `port`: `/onion3/aaaa…a:<port>` (an
/// all-zero key, which no real service has). `listen_on` it to listen on this node's own onion
/// service, whatever its address.
pub fn onion_listen_addr(port: u16) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Onion3(([0u8; ONION3_LEN], port).into()))
}

/// `/onion3/<addr>:<port>` → `("<addr>.onion", port)`.
fn onion_host(hash: &[u8; ONION3_LEN]) -> String {
    let mut name = data_encoding::BASE32_NOPAD.encode(hash);
    name.make_ascii_lowercase();
    name.push_str(".onion");
    name
}

/// Where a multiaddr asks us to connect, in arti's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A v3 onion service: `xxx.onion`, virtual port.
    Onion(String, u16),
    /// An IP literal, reached through an exit.
    Ip(SocketAddr),
    /// A host name, resolved by the exit (never locally).
    Name(String, u16, IpVersion),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpVersion {
    Any,
    V4,
    V6,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Onion(h, p) | Target::Name(h, p, _) => write!(f, "{h}:{p}"),
            Target::Ip(a) => write!(f, "{a}"),
        }
    }
}

/// Parses a dialable multiaddr; `None` for anything this transport can't reach.
fn dial_target(addr: &Multiaddr) -> Option<Target> {
    let mut it = addr.iter().peekable();
    let target = match it.next()? {
        Protocol::Onion3(a) if a.hash() != &[0u8; ONION3_LEN] && a.port() != 0 => {
            Target::Onion(onion_host(a.hash()), a.port())
        }
        first => {
            let port = match it.next()? {
                Protocol::Tcp(p) if p != 0 => p,
                _ => return None,
            };
            match first {
                Protocol::Ip4(ip) => Target::Ip(SocketAddr::new(IpAddr::V4(ip), port)),
                Protocol::Ip6(ip) => Target::Ip(SocketAddr::new(IpAddr::V6(ip), port)),
                Protocol::Dns(h) => Target::Name(h.into_owned(), port, IpVersion::Any),
                Protocol::Dns4(h) => Target::Name(h.into_owned(), port, IpVersion::V4),
                Protocol::Dns6(h) => Target::Name(h.into_owned(), port, IpVersion::V6),
                _ => return None,
            }
        }
    };
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(target),
        _ => None,
    }
}

/// The onion service this node hosts, shared by its listeners.
struct Service {
    /// Keeps the service up: dropping the last handle stops it.
    _running: Arc<RunningOnionService>,
    /// Our onion address as multiaddr bytes.
    hash: [u8; ONION3_LEN],
    requests: Pin<Box<dyn Stream<Item = StreamRequest> + Send>>,
}

struct Listener {
    id: ListenerId,
    port: u16,
}

/// The libp2p transport over arti. Build it with [`TorTransport::new`] from a [`Tor`] handle;
/// [`crate::build_transport`] does that and adds Noise + Yamux.
pub struct TorTransport {
    tor: Tor,
    scope: Scope,
    service: Option<Service>,
    listeners: Vec<Listener>,
    events: VecDeque<TransportEvent<<Self as Transport>::ListenerUpgrade, TorError>>,
    /// Streams to ports nobody listens on, being refused.
    rejections: FuturesUnordered<BoxFuture<'static, ()>>,
    waker: Option<Waker>,
}

impl fmt::Debug for TorTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorTransport")
            .field("tor", &self.tor)
            .field("scope", &self.scope)
            .field("listening", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl TorTransport {
    /// A transport dialing and listening through `tor`.
    pub fn new(tor: Tor) -> Self {
        Self::with_scope(tor, Scope::Full)
    }

    /// A transport using `tor` for what `scope` allows.
    pub fn with_scope(tor: Tor, scope: Scope) -> Self {
        Self {
            tor,
            scope,
            service: None,
            listeners: Vec::new(),
            events: VecDeque::new(),
            rejections: FuturesUnordered::new(),
            waker: None,
        }
    }

    fn onion_addr(hash: &[u8; ONION3_LEN], port: u16) -> Multiaddr {
        Multiaddr::empty().with(Protocol::Onion3((*hash, port).into()))
    }

    /// Launches this node's onion service unless it runs already.
    fn service(&mut self) -> Result<&mut Service, TorError> {
        if self.service.is_none() {
            let config = OnionServiceConfigBuilder::default()
                .nickname(self.tor.inner.nickname.clone())
                .build()?;
            let (running, rend_requests) = self
                .tor
                .ensure_client()?
                .launch_onion_service(config)
                .map_err(TorError::LaunchService)?
                .ok_or(TorError::ServiceStopped)?;
            let hs_id = running.onion_address().ok_or(TorError::NoServiceKey)?;
            let name = hs_id.display_unredacted().to_string();
            let hash = data_encoding::BASE32_NOPAD
                .decode(
                    name.trim_end_matches(".onion")
                        .to_ascii_uppercase()
                        .as_bytes(),
                )
                .ok()
                .and_then(|b| <[u8; ONION3_LEN]>::try_from(b).ok())
                .ok_or(TorError::NoServiceKey)?;
            tracing::info!(address = %name, "onion service launched");
            if let Ok(mut g) = self.tor.inner.service.lock() {
                *g = Some(running.clone());
            }
            self.service = Some(Service {
                _running: running,
                hash,
                requests: Box::pin(tor_hsservice::handle_rend_requests(rend_requests)),
            });
        }
        self.service.as_mut().ok_or(TorError::ServiceStopped)
    }

    fn stop_service_if_unused(&mut self) {
        if self.listeners.is_empty()
            && self.service.take().is_some()
            && let Ok(mut g) = self.tor.inner.service.lock()
        {
            *g = None;
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Transport for TorTransport {
    type Output = DataStream;
    type Error = TorError;
    type ListenerUpgrade = BoxFuture<'static, Result<DataStream, TorError>>;
    type Dial = BoxFuture<'static, Result<DataStream, TorError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let mut it = addr.iter();
        let (requested, port) = match (it.next(), it.next()) {
            (Some(Protocol::Onion3(a)), None) if a.port() != 0 && self.scope == Scope::Full => {
                (*a.hash(), a.port())
            }
            _ => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(TransportError::Other(TorError::PortInUse(port)));
        }
        let ours = self.service().map_err(TransportError::Other)?.hash;
        if requested != [0u8; ONION3_LEN] && requested != ours {
            let err = TorError::NotOurAddress {
                requested: addr,
                ours: Self::onion_addr(&ours, port),
            };
            self.stop_service_if_unused();
            return Err(TransportError::Other(err));
        }
        self.listeners.push(Listener { id, port });
        self.events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: Self::onion_addr(&ours, port),
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|l| l.id == id) else {
            return false;
        };
        let l = self.listeners.remove(i);
        if let Some(svc) = &self.service {
            self.events.push_back(TransportEvent::AddressExpired {
                listener_id: id,
                listen_addr: Self::onion_addr(&svc.hash, l.port),
            });
        }
        self.events.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        self.stop_service_if_unused();
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        // Hole punching (both sides dialing) makes no sense through Tor.
        if opts.role == Endpoint::Listener {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let target = match (dial_target(&addr), self.scope) {
            (Some(t @ Target::Onion(..)), _) | (Some(t), Scope::Full) => t,
            _ => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        let tor = self.tor.clone();
        Ok(Box::pin(async move {
            let result = tor.connect(&target).await;
            let h = &tor.inner.health;
            match &result {
                Ok(_) => {
                    h.dials_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    h.dials_failed.fetch_add(1, Ordering::Relaxed);
                    *h.last_dial_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                }
            }
            result
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        while let Poll::Ready(Some(())) = this.rejections.poll_next_unpin(cx) {}
        loop {
            if let Some(ev) = this.events.pop_front() {
                return Poll::Ready(ev);
            }
            let Some(svc) = this.service.as_mut() else {
                break;
            };
            match svc.requests.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    tracing::warn!("onion service stopped producing connections");
                    for l in this.listeners.drain(..) {
                        this.events.push_back(TransportEvent::ListenerClosed {
                            listener_id: l.id,
                            reason: Err(TorError::ServiceStopped),
                        });
                    }
                    this.service = None;
                    if let Ok(mut g) = this.tor.inner.service.lock() {
                        *g = None;
                    }
                }
                Poll::Ready(Some(req)) => {
                    let port = match req.request() {
                        IncomingStreamRequest::Begin(b) => Some(b.port()),
                        _ => None,
                    };
                    match port.and_then(|p| this.listeners.iter().find(|l| l.port == p)) {
                        Some(l) => {
                            let addr = TorTransport::onion_addr(&svc.hash, l.port);
                            this.tor
                                .inner
                                .health
                                .inbound
                                .fetch_add(1, Ordering::Relaxed);
                            let upgrade: Self::ListenerUpgrade = Box::pin(async move {
                                req.accept(Connected::new_empty())
                                    .await
                                    .map_err(|e| TorError::Accept(Box::new(e)))
                            });
                            return Poll::Ready(TransportEvent::Incoming {
                                listener_id: l.id,
                                upgrade,
                                local_addr: addr,
                                send_back_addr: onion_listen_addr(l.port),
                            });
                        }
                        None => {
                            // rend-spec: refuse like C tor does, with END reason DONE.
                            this.rejections.push(Box::pin(async move {
                                let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
                            }));
                            while let Poll::Ready(Some(())) = this.rejections.poll_next_unpin(cx) {}
                        }
                    }
                }
            }
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_targets() {
        let onion = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234";
        assert_eq!(
            dial_target(&onion.parse().unwrap()),
            Some(Target::Onion(
                "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd.onion".into(),
                1234
            ))
        );
        let with_peer: Multiaddr = format!("{onion}/p2p/{}", libp2p::PeerId::random())
            .parse()
            .unwrap();
        assert!(matches!(dial_target(&with_peer), Some(Target::Onion(..))));
        assert_eq!(
            dial_target(&"/ip4/127.0.0.1/tcp/80".parse().unwrap()),
            Some(Target::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            dial_target(&"/dns4/example.org/tcp/443".parse().unwrap()),
            Some(Target::Name("example.org".into(), 443, IpVersion::V4))
        );
        // Not for Tor: UDP, QUIC, the wildcard, memory, trailing junk.
        for a in [
            "/ip4/127.0.0.1/udp/80/quic-v1",
            "/ip4/127.0.0.1/tcp/80/ws",
            "/memory/5",
            "/ip4/127.0.0.1/tcp/0",
        ] {
            assert_eq!(dial_target(&a.parse().unwrap()), None, "{a}");
        }
        assert_eq!(dial_target(&onion_listen_addr(80)), None);
    }

    #[test]
    fn status_reads_well() {
        assert_eq!(TorStatus::default().to_string(), "tor not started");
        let mut s = TorStatus {
            started: true,
            percent: 42,
            ..TorStatus::default()
        };
        assert_eq!(s.to_string(), "tor 42%, bootstrapping");
        s.blocked = Some("can't reach a guard".into());
        assert_eq!(s.to_string(), "tor 42%, blocked: can't reach a guard");
        s = TorStatus {
            started: true,
            percent: 100,
            ready: true,
            onion_service: Some(OnionServiceState::Running),
            ..TorStatus::default()
        };
        assert_eq!(s.to_string(), "tor 100%, ok, onion service Running");
    }

    #[test]
    fn bad_arti_toml_is_a_config_error() {
        let dir = std::env::temp_dir().join("kith-tor-never-created");
        let config = TorConfig {
            arti_toml: Some("[tor_network\n".into()),
            ..TorConfig::new(dir.join("state"), dir.join("cache"))
        };
        assert!(matches!(Tor::create(&config), Err(TorError::ConfigToml(_))));
        let config = TorConfig {
            nickname: "not a nickname!".into(),
            ..TorConfig::new(dir.join("state"), dir.join("cache"))
        };
        assert!(matches!(Tor::create(&config), Err(TorError::Nickname(_))));
        assert!(!dir.exists());
    }

    #[test]
    fn wildcard_is_all_a() {
        let a = onion_listen_addr(7000).to_string();
        assert_eq!(a, format!("/onion3/{}:7000", "a".repeat(56)));
    }
}
