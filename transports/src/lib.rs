//! kith-transports: the libp2p transport stack every kith node speaks, and the identity and
//! address types shared by every crate.
//!
//! A node listens and dials on:
//! - **TCP** upgraded with Noise (XX handshake, ed25519 identity) and Yamux stream multiplexing;
//! - **QUIC** (quinn + rustls with libp2p's TLS certificate binding the same ed25519 key);
//! - an **in-memory** transport (`/memory/<port>` addresses) for tests that want real swarms
//!   without sockets.
//!
//! Tor (arti-client dial + onion-service listen) joins this stack in the Tor issue; nothing here
//! pretends to support it yet.
//!
//! The node's libp2p identity *is* its ed25519 node key ([`identity`]): the peer id other
//! members see, the key that authenticates every connection (Noise / TLS) and, later, the key
//! that signs node records. There are no other shared secrets on the wire.
//!
//! Entry points: [`Config`] says which transports to enable, [`build_transport`] returns the
//! boxed, authenticated, multiplexed transport a `libp2p::Swarm` is built on.

pub mod identity;
pub mod relayed;

use std::time::Duration;

use libp2p::{
    PeerId, Transport,
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, MemoryTransport, OptionalTransport, upgrade::Version},
    },
    noise, quic, tcp, yamux,
};

pub use libp2p::{Multiaddr, identity::Keypair};

/// Which transports a node runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// TCP + Noise + Yamux.
    pub tcp: bool,
    /// QUIC v1 (quinn).
    pub quic: bool,
    /// In-memory transport (`/memory/N` addresses), for tests.
    pub memory: bool,
    /// How long a connection handshake (security + muxer negotiation) may take.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tcp: true,
            quic: true,
            memory: false,
            handshake_timeout: Duration::from_secs(20),
        }
    }
}

/// Errors building the transport stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Noise handshake configuration could not be derived from the node key.
    #[error("cannot configure the Noise handshake from the node key: {0}")]
    Noise(#[from] noise::Error),
    /// Every transport was switched off.
    #[error("no transport is enabled: enable at least one of tcp, quic or memory")]
    NoTransport,
}

/// The boxed transport a swarm runs on: every connection is authenticated (remote [`PeerId`])
/// and multiplexed.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // Storage traffic opens a stream per request; allow a generous number in flight.
    cfg.set_max_num_streams(512);
    cfg
}

fn optional(t: Option<BoxedTransport>) -> OptionalTransport<BoxedTransport> {
    match t {
        Some(t) => OptionalTransport::some(t),
        None => OptionalTransport::none(),
    }
}

/// Builds the transport stack selected by `config` for the node identified by `keypair`.
pub fn build_transport(keypair: &Keypair, config: &Config) -> Result<BoxedTransport, Error> {
    if !(config.tcp || config.quic || config.memory) {
        return Err(Error::NoTransport);
    }
    let noise = noise::Config::new(keypair)?;
    let tcp = config.tcp.then(|| {
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .upgrade(Version::V1Lazy)
            .authenticate(noise.clone())
            .multiplex(yamux_config())
            .timeout(config.handshake_timeout)
            .boxed()
    });
    let memory = config.memory.then(|| {
        MemoryTransport::default()
            .upgrade(Version::V1Lazy)
            .authenticate(noise.clone())
            .multiplex(yamux_config())
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
    let stream_transports = optional(tcp)
        .or_transport(optional(memory))
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

/// Splits `/…/p2p/<peer>` into the peer id and the address without it.
pub fn split_peer_id(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some((peer, addr)),
        _ => None,
    }
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
    fn peer_id_suffix_round_trips() {
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7001".parse().unwrap();
        let full = with_peer_id(&addr, peer);
        assert_eq!(with_peer_id(&full, peer), full);
        assert_eq!(split_peer_id(&full), Some((peer, addr.clone())));
        assert_eq!(split_peer_id(&addr), None);
    }
}
