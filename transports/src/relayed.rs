//! Relayed connections: the libp2p circuit relay v2 client transport, upgraded exactly like
//! TCP (Noise with the node key, Yamux), in front of the node's other transports.

use libp2p::{
    Transport,
    core::{muxing::StreamMuxerBox, transport::upgrade::Version},
    noise, relay,
};

use crate::{BoxedTransport, Error, Keypair};

/// Puts the relay client transport (from `libp2p::relay::client::new`) in front of `base`:
/// `/…/p2p/<relay>/p2p-circuit/…` addresses go through a relay, everything else to `base`.
pub fn with_relay(
    keypair: &Keypair,
    base: BoxedTransport,
    relay_transport: relay::client::Transport,
    handshake_timeout: std::time::Duration,
) -> Result<BoxedTransport, Error> {
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(keypair)?)
        .multiplex(crate::mux::Config::default())
        .timeout(handshake_timeout)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(relayed
        .or_transport(base)
        .map(|either, _| either.into_inner())
        .boxed())
}
