//! The relay service, wrapped: libp2p's circuit relay v2 server with two corrections.
//!
//! - It only counts *direct* confirmed external addresses as reachability. libp2p's server
//!   enables itself on any confirmed external address, and a node behind NAT that holds a
//!   relay reservation has one (its relayed address): it would offer to relay while nobody
//!   can reach it.
//! - It never sees relayed connections. libp2p 0.57's server tracks them too and, when its
//!   status changes, sends a "set status" message to every tracked connection's handler; a
//!   relayed connection's handler is a dummy, and the swarm panics (`unreachable!` in
//!   `handler/either.rs`). Observed in the NAT lab when a UPnP mapping was confirmed while a
//!   relayed connection was open.

use std::task::{Context, Poll};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    relay,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
};

use crate::policy::is_relayed;

/// The member-only relay server (see [`crate::relay_config`]) behind the two corrections.
pub struct Behaviour {
    inner: relay::Behaviour,
}

impl Behaviour {
    /// Wraps a relay server.
    pub fn new(inner: relay::Behaviour) -> Self {
        Self { inner }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = <relay::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = relay::Event;

    delegate_connections!(inner);

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let skip = match &event {
            FromSwarm::ConnectionEstablished(e) => e.endpoint.is_relayed(),
            FromSwarm::ConnectionClosed(e) => e.endpoint.is_relayed(),
            FromSwarm::ExternalAddrConfirmed(e) => is_relayed(e.addr),
            FromSwarm::ExternalAddrExpired(e) => is_relayed(e.addr),
            _ => false,
        };
        if !skip {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
