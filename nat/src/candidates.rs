//! A tiny libp2p behaviour that hands the swarm external address *candidates* found outside
//! libp2p (UPnP mappings), so that AutoNAT v2 tests them like identify's observed addresses
//! and only confirmed ones are announced; and [`Testable`], which keeps candidates no dial-back
//! can confirm (onion addresses) away from AutoNAT.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
        THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// Queues candidates for the swarm.
#[derive(Debug, Default)]
pub struct Behaviour {
    queue: VecDeque<Multiaddr>,
}

impl Behaviour {
    /// Reports `addr` as an external address candidate.
    pub fn add(&mut self, addr: Multiaddr) {
        self.queue.push_back(addr);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.queue.pop_front() {
            Some(a) => Poll::Ready(ToSwarm::NewExternalAddrCandidate(a)),
            None => Poll::Pending,
        }
    }
}

/// Whether AutoNAT should test `addr` as this node's external address: not an onion address.
/// Onion addresses are this node's own listen addresses when it has an onion service, and
/// what identify reports as "observed" over Tor is the onion listener's wildcard (all-zero key)
/// address, which is nobody's. A dial-back test of either proves nothing about the clearnet
/// and would make the server dial through Tor.
pub fn is_testable(addr: &Multiaddr) -> bool {
    !addr
        .iter()
        .any(|p| matches!(p, Protocol::Onion3(_) | Protocol::Onion(..)))
}

/// Wraps a behaviour (AutoNAT v2's client) so it never hears of external address candidates
/// that fail [`is_testable`]; everything else passes through unchanged.
#[derive(Debug)]
pub struct Testable<B> {
    inner: B,
}

impl<B> Testable<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }

    /// The wrapped behaviour.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Testable<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    delegate_connections!(inner);

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) = &event
            && !is_testable(addr)
        {
            tracing::debug!(%addr, "not an AutoNAT candidate (onion address)");
            return;
        }
        self.inner.on_swarm_event(event);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the candidates it hears of.
    #[derive(Default)]
    struct Recorder(Vec<Multiaddr>);

    impl NetworkBehaviour for Recorder {
        type ConnectionHandler = dummy::ConnectionHandler;
        type ToSwarm = std::convert::Infallible;

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, event: FromSwarm) {
            if let FromSwarm::NewExternalAddrCandidate(c) = event {
                self.0.push(c.addr.clone());
            }
        }

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
            Poll::Pending
        }
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    /// What identify reports as observed over an inbound Tor connection (the onion listener's
    /// wildcard: an all-zero key, 56 `a`s) and this node's real onion address never reach
    /// AutoNAT; clearnet candidates (observed or UPnP) do.
    #[test]
    fn onion_candidates_never_reach_autonat() {
        let wildcard = ma(&format!("/onion3/{}:41800", "a".repeat(56)));
        let real = ma("/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800");
        let tcp = ma("/ip4/192.0.2.1/tcp/41000");
        let quic = ma("/ip6/2001:db8::1/udp/41000/quic-v1");
        let mut b = Testable::new(Recorder::default());
        for addr in [&wildcard, &tcp, &real, &quic] {
            b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr },
            ));
        }
        assert_eq!(b.inner().0, vec![tcp.clone(), quic.clone()]);
        assert!(!is_testable(&wildcard) && !is_testable(&real));
        assert!(is_testable(&tcp) && is_testable(&quic));
    }
}
