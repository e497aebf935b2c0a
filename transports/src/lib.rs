//! kith-transports: the libp2p transport stack every kith node speaks, and the identity and
//! address types shared by every crate.
//!
//! A node listens and dials on:
//! - **TCP** upgraded with libp2p's TLS 1.3 handshake (AES-GCM where the CPU has AES
//!   instructions) or Noise (XX handshake, ChaCha20-Poly1305) for peers that offer only Noise,
//!   both binding the ed25519 node key ([`security`]), and Yamux stream multiplexing; the socket
//!   is read and written through 64 KiB buffers ([`buffered`]);
//! - **QUIC** (quinn + rustls with libp2p's TLS certificate binding the same ed25519 key);
//! - an **in-memory** transport (`/memory/<port>` addresses) for tests that want real swarms
//!   without sockets;
//! - **Tor** (feature `tor`, on by default; module [`tor`]): dial `/onion3/…` through onion
//!   services and `/ip4|ip6|dns/…/tcp/…` through exits, listen on an onion service hosted by
//!   arti. Its streams get Noise + Yamux (Tor is the bottleneck there, not the cipher). A Tor-only node
//!   ([`Config::tor_only`]) has no TCP, QUIC or memory transport at all.
//!
//! When Tor runs alongside TCP, TCP dials `/ip4|ip6/…/tcp/…` (clearnet, as without Tor) and Tor
//! dials only what TCP can't: `/onion3/…` and `/dns…` names. With [`Config::tor_scope`] =
//! [`tor::Scope::OnionDialOnly`] (a clearnet node that can reach Tor-only members) Tor dials
//! `/onion3/…` alone and never listens.
//!
//! The node's libp2p identity *is* its ed25519 node key ([`identity`]): the peer id other
//! members see, the key that authenticates every connection (Noise / TLS) and, later, the key
//! that signs node records. There are no other shared secrets on the wire.
//!
//! Entry points: [`Config`] says which transports to enable, [`build_transport`] returns the
//! boxed, authenticated, multiplexed transport a `libp2p::Swarm` is built on.

pub mod buffered;
pub mod identity;
pub mod mux;
pub mod relayed;
pub mod security;
#[cfg(feature = "tor")]
pub mod tor;

use std::time::Duration;

use libp2p::{
    PeerId, Transport,
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, MemoryTransport, OptionalTransport, upgrade::Version},
    },
    noise, quic, tcp,
};

pub use libp2p::{Multiaddr, identity::Keypair};

/// Which transports a node runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// TCP + Noise + Yamux.
    pub tcp: bool,
    /// QUIC v1 (quinn).
    pub quic: bool,
    /// In-memory transport (`/memory/N` addresses), for tests.
    pub memory: bool,
    /// Tor through this arti client: onion services and exits (see [`tor`]).
    #[cfg(feature = "tor")]
    pub tor: Option<tor::Tor>,
    /// What the Tor transport may do: everything, or dial onion services only.
    #[cfg(feature = "tor")]
    pub tor_scope: tor::Scope,
    /// How long a connection handshake (security + muxer negotiation) may take.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tcp: true,
            quic: true,
            memory: false,
            #[cfg(feature = "tor")]
            tor: None,
            #[cfg(feature = "tor")]
            tor_scope: tor::Scope::Full,
            handshake_timeout: Duration::from_secs(20),
        }
    }
}

impl Config {
    /// Tor and nothing else: no TCP, QUIC or memory transport, so the node opens no clearnet
    /// socket of its own (arti's connections to Tor relays are the only ones).
    #[cfg(feature = "tor")]
    pub fn tor_only(tor: tor::Tor) -> Self {
        Self {
            tcp: false,
            quic: false,
            memory: false,
            tor: Some(tor),
            tor_scope: tor::Scope::Full,
            ..Self::default()
        }
    }

    /// True if every enabled transport goes through Tor (and at least one is enabled).
    pub fn is_tor_only(&self) -> bool {
        #[cfg(feature = "tor")]
        let tor = self.tor.is_some();
        #[cfg(not(feature = "tor"))]
        let tor = false;
        tor && !(self.tcp || self.quic || self.memory)
    }

    fn any_enabled(&self) -> bool {
        #[cfg(feature = "tor")]
        let tor = self.tor.is_some();
        #[cfg(not(feature = "tor"))]
        let tor = false;
        tor || self.tcp || self.quic || self.memory
    }
}

/// Errors building the transport stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Noise handshake configuration could not be derived from the node key.
    #[error("cannot configure the Noise handshake from the node key: {0}")]
    Noise(#[from] noise::Error),
    /// The TLS or Noise handshake configuration could not be derived from the node key.
    #[error("cannot configure the connection security from the node key: {0}")]
    Security(#[from] security::SecurityError),
    /// Every transport was switched off.
    #[error("no transport is enabled: enable at least one of tcp, quic, memory or tor")]
    NoTransport,
}

/// The boxed transport a swarm runs on: every connection is authenticated (remote [`PeerId`])
/// and multiplexed.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

fn optional(t: Option<BoxedTransport>) -> OptionalTransport<BoxedTransport> {
    match t {
        Some(t) => OptionalTransport::some(t),
        None => OptionalTransport::none(),
    }
}

/// Builds the transport stack selected by `config` for the node identified by `keypair`.
pub fn build_transport(keypair: &Keypair, config: &Config) -> Result<BoxedTransport, Error> {
    if !config.any_enabled() {
        return Err(Error::NoTransport);
    }
    let noise = noise::Config::new(keypair)?;
    let secure = if config.tcp || config.memory {
        Some(security::Security::new(keypair)?)
    } else {
        None
    };
    let tcp = secure.clone().filter(|_| config.tcp).map(|secure| {
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .map(|socket, _| buffered::buffered(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(secure)
            .multiplex(mux::Config::default())
            .timeout(config.handshake_timeout)
            .boxed()
    });
    let memory = secure.filter(|_| config.memory).map(|secure| {
        MemoryTransport::default()
            .upgrade(Version::V1Lazy)
            .authenticate(secure)
            .multiplex(mux::Config::default())
            .timeout(config.handshake_timeout)
            .boxed()
    });
    let quic = config.quic.then(|| {
        let mut qc = quic::Config::new(keypair);
        qc.handshake_timeout = config.handshake_timeout;
        quic::tokio::Transport::new(qc)
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .boxed()
    });
    #[cfg(feature = "tor")]
    let tor = config.tor.as_ref().map(|t| {
        tor::TorTransport::with_scope(t.clone(), config.tor_scope)
            .upgrade(Version::V1Lazy)
            .authenticate(noise.clone())
            .multiplex(mux::Config::default())
            .timeout(t.connect_timeout().max(config.handshake_timeout))
            .boxed()
    });
    #[cfg(not(feature = "tor"))]
    let tor: Option<BoxedTransport> = None;
    // Order matters for dialing: the first transport that supports an address gets it, so TCP
    // (when enabled) keeps clearnet IP addresses and Tor gets onion addresses and names.
    let stream_transports = optional(tcp)
        .or_transport(optional(memory))
        .map(|either, _| either.into_inner())
        .or_transport(optional(tor))
        .map(|either, _| either.into_inner())
        .boxed();
    Ok(optional(quic)
        .or_transport(stream_transports)
        .map(|either, _| either.into_inner())
        .boxed())
}

/// Returns `addr` with a trailing `/p2p/<peer>` (unless it already ends in one).
pub fn with_peer_id(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer)),
    }
}

/// Whether another socket already holds the TCP port of `addr` (an IP and TCP listen address
/// with a fixed port), including one that libp2p's listener would share it with.
///
/// libp2p's TCP listener sets `SO_REUSEPORT`. On Linux a second listener of the same user that
/// sets it too (another kith node on the machine, say, whose `kith init` picked the same free
/// port) then binds the port without an error, and the kernel splits incoming connections
/// between the two: peers dialing one node sometimes reach the other, and libp2p refuses those
/// connections ("Unexpected peer ID"). A bind without `SO_REUSEPORT` fails on such a port; this
/// is that bind (no `listen`, so no connection can land on it), released at once.
pub fn tcp_port_taken(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip: std::net::IpAddr = match it.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return false,
    };
    let port = match it.next() {
        Some(Protocol::Tcp(port)) if port != 0 => port,
        _ => return false,
    };
    if it.any(|p| !matches!(p, Protocol::P2p(_))) {
        return false;
    }
    port_in_use(std::net::SocketAddr::new(ip, port), false)
}

/// Whether binding `sa` (TCP, or UDP with `udp`) fails because the port is in use, probed the
/// way libp2p's listeners bind: TCP with `SO_REUSEADDR` (connections in `TIME_WAIT` do not
/// count), IPv6 sockets IPv6-only (an IPv4 listener on the same port does not count). Any
/// other failure (no IPv6 on this host, say) counts as free. The probe is released at once.
pub fn port_in_use(sa: std::net::SocketAddr, udp: bool) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let Ok(socket) = Socket::new(Domain::for_address(sa), ty, Some(proto)) else {
        return false;
    };
    if (!udp && socket.set_reuse_address(true).is_err())
        || (sa.is_ipv6() && socket.set_only_v6(true).is_err())
    {
        return false;
    }
    matches!(socket.bind(&sa.into()), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Splits `/…/p2p/<peer>` into the peer id and the address without it.
pub fn split_peer_id(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some((peer, addr)),
        _ => None,
    }
}

/// `addr` without a trailing `/p2p/<peer>` (a relayed address keeps its relay's).
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    split_peer_id(addr).map_or_else(|| addr.clone(), |(_, bare)| bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_transport_is_an_error() {
        let kp = Keypair::generate_ed25519();
        let cfg = Config {
            tcp: false,
            quic: false,
            memory: false,
            ..Config::default()
        };
        assert!(matches!(
            build_transport(&kp, &cfg),
            Err(Error::NoTransport)
        ));
    }

    #[test]
    fn default_config_is_not_tor_only() {
        let cfg = Config::default();
        assert!(cfg.tcp && cfg.quic && !cfg.is_tor_only());
        #[cfg(feature = "tor")]
        assert!(cfg.tor.is_none());
    }

    /// A Tor-only config enables no clearnet transport, and the transport it builds refuses
    /// every clearnet listen address and every non-Tor dial (UDP/QUIC, memory).
    #[cfg(feature = "tor")]
    #[tokio::test]
    async fn tor_only_has_no_tcp_or_quic() {
        use libp2p::core::{
            Endpoint,
            transport::{DialOpts, ListenerId, PortUse, TransportError},
        };

        // A made-up network on a closed loopback port: even an accidental bootstrap would not
        // leave this machine. (Creating the client sends nothing; this also checks that an arti
        // TOML fragment of custom authorities and fallbacks is accepted.)
        let fragment = r#"
            [tor_network.authorities]
            v3idents = ["0000000000000000000000000000000000000000"]
            uploads = [["127.0.0.1:9"]]
            downloads = [["127.0.0.1:9"]]
            votes = [["127.0.0.1:9"]]
            [tor_network]
            fallback_caches = [{ rsa_identity = "0000000000000000000000000000000000000000",
                ed_identity = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", orports = ["127.0.0.1:9"] }]
        "#;
        let dir = tempfile::tempdir().unwrap();
        let tor = tor::Tor::create(&tor::TorConfig {
            arti_toml: Some(fragment.to_owned()),
            trust_all_dir_permissions: true,
            ..tor::TorConfig::new(dir.path().join("state"), dir.path().join("cache"))
        })
        .unwrap();
        assert!(!tor.status().ready);
        let cfg = Config::tor_only(tor);
        assert!(!cfg.tcp && !cfg.quic && !cfg.memory);
        assert!(cfg.is_tor_only());

        let kp = Keypair::generate_ed25519();
        let mut t = build_transport(&kp, &cfg).unwrap();
        for a in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip6/::1/tcp/0",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "/memory/0",
        ] {
            let r = t.listen_on(ListenerId::next(), a.parse().unwrap());
            assert!(
                matches!(r, Err(TransportError::MultiaddrNotSupported(_))),
                "tor-only must not listen on {a}: {r:?}"
            );
        }
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        for a in ["/ip4/127.0.0.1/udp/4001/quic-v1", "/memory/4001"] {
            let r = t.dial(a.parse().unwrap(), opts).map(|_| ());
            assert!(
                matches!(r, Err(TransportError::MultiaddrNotSupported(_))),
                "tor-only must not dial {a}: {r:?}"
            );
        }
        // Host names go to Tor as names (the exit resolves them): the tor-only stack has no
        // other transport that could take them, and no DNS transport resolving them here.
        // (The dial future is dropped unpolled: nothing is sent.)
        for a in ["/dns4/example.org/tcp/443", "/dns/example.org/tcp/443"] {
            assert!(t.dial(a.parse().unwrap(), opts).is_ok(), "{a}");
        }
    }

    /// A clearnet node's Tor transport ([`tor::Scope::OnionDialOnly`], on demand): TCP keeps the
    /// clearnet, Tor takes `/onion3` dials only, never listens, and no arti state exists until
    /// a dial runs.
    #[cfg(feature = "tor")]
    #[tokio::test]
    async fn onion_dial_only_tor_takes_nothing_but_onion_dials() {
        use libp2p::core::{
            Endpoint,
            transport::{DialOpts, ListenerId, PortUse, TransportError},
        };

        let dir = tempfile::tempdir().unwrap();
        let tor = tor::Tor::on_demand(&tor::TorConfig {
            trust_all_dir_permissions: true,
            ..tor::TorConfig::new(dir.path().join("state"), dir.path().join("cache"))
        })
        .unwrap();
        let cfg = Config {
            quic: false,
            tor: Some(tor.clone()),
            tor_scope: tor::Scope::OnionDialOnly,
            ..Config::default()
        };
        assert!(!cfg.is_tor_only());
        let kp = Keypair::generate_ed25519();
        let mut t = build_transport(&kp, &cfg).unwrap();
        let r = t.listen_on(ListenerId::next(), tor::onion_listen_addr(4001));
        assert!(
            matches!(r, Err(TransportError::MultiaddrNotSupported(_))),
            "must not listen on an onion service: {r:?}"
        );
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        for a in ["/dns4/example.org/tcp/443", "/ip6/2001:db8::1/tcp/443/ws"] {
            let r = t.dial(a.parse().unwrap(), opts).map(|_| ());
            assert!(
                matches!(r, Err(TransportError::MultiaddrNotSupported(_))),
                "must not dial {a} through Tor: {r:?}"
            );
        }
        let onion = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234";
        assert!(t.dial(onion.parse().unwrap(), opts).is_ok());
        // The dial was not polled: arti was never created, nothing was written or sent.
        assert!(!tor.started());
        assert!(!tor.status().started);
        assert!(!dir.path().join("state").exists() && !dir.path().join("cache").exists());
    }

    /// A port held by libp2p's own TCP listener (`SO_REUSEPORT`, which a second such listener
    /// would silently share) counts as taken; a free one, port 0, and other addresses do not.
    #[tokio::test]
    async fn a_port_libp2p_listens_on_is_taken_even_for_a_port_sharing_listener() {
        use libp2p::core::transport::ListenerId;
        let mut tcp = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::new());
        tcp.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let held = loop {
            let event = futures::future::poll_fn(|cx| std::pin::Pin::new(&mut tcp).poll(cx)).await;
            if let libp2p::core::transport::TransportEvent::NewAddress { listen_addr, .. } = event {
                break listen_addr;
            }
        };
        assert!(tcp_port_taken(&held), "{held} is libp2p's");
        // A second libp2p listener binds it all the same: the sharing this check prevents.
        let mut second = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::new());
        assert!(second.listen_on(ListenerId::next(), held.clone()).is_ok());
        assert!(tcp_port_taken(&with_peer_id(&held, PeerId::random())));

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        assert!(!tcp_port_taken(
            &format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
        ));
        for other in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            "/dns4/example.org/tcp/443",
        ] {
            assert!(!tcp_port_taken(&other.parse().unwrap()), "{other}");
        }
    }

    #[test]
    fn peer_id_suffix_round_trips() {
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7001".parse().unwrap();
        let full = with_peer_id(&addr, peer);
        assert_eq!(with_peer_id(&full, peer), full);
        assert_eq!(split_peer_id(&full), Some((peer, addr.clone())));
        assert_eq!(split_peer_id(&addr), None);
    }
}
