//! A tiny libp2p behaviour that hands the swarm external address *candidates* found outside
//! libp2p (UPnP mappings), so that AutoNAT v2 tests them like identify's observed addresses
//! and only confirmed ones are announced; and [`Testable`], which makes an AutoNAT v2 client
//! test one [`Family`] of addresses with members that can dial in it, and keeps candidates no
//! dial-back can confirm (onion and relayed addresses) away from it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    task::{Context, Poll},
};

use either::Either;
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

/// An IP address family. kith runs one AutoNAT v2 client per family ([`Testable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`/ip4`, `/dns4`).
    V4,
    /// IPv6 (`/ip6`, `/dns6`).
    V6,
}

impl Family {
    /// Whether `addr` is in this family, by its first component: `/ip4` and `/dns4` are
    /// IPv4, `/ip6` and `/dns6` IPv6, `/dns` and `/dnsaddr` may be either (so both); anything
    /// else (onion, memory) is neither.
    pub fn contains(self, addr: &Multiaddr) -> bool {
        matches!(
            (self, addr.iter().next()),
            (Family::V4, Some(Protocol::Ip4(_) | Protocol::Dns4(_)))
                | (Family::V6, Some(Protocol::Ip6(_) | Protocol::Dns6(_)))
                | (_, Some(Protocol::Dns(_) | Protocol::Dnsaddr(_)))
        )
    }

    /// Whether a peer that listens on `addr` can dial the world in this family: a direct
    /// address in it that is not loopback, unspecified or link-local (nor, for IPv6, a
    /// unique-local `fc00::/7` one, which reaches no global address). Private IPv4 counts:
    /// a home behind a NAT dials out.
    pub fn reaches_out_from(self, addr: &Multiaddr) -> bool {
        if is_relayed(addr) {
            return false;
        }
        match (self, addr.iter().next()) {
            (Family::V4, Some(Protocol::Ip4(ip))) => {
                !(ip.is_loopback() || ip.is_unspecified() || ip.is_link_local())
            }
            (Family::V6, Some(Protocol::Ip6(ip))) => {
                let first = ip.segments()[0];
                !(ip.is_loopback()
                    || ip.is_unspecified()
                    || first & 0xffc0 == 0xfe80
                    || first & 0xfe00 == 0xfc00)
            }
            (Family::V4, Some(Protocol::Dns4(_)))
            | (Family::V6, Some(Protocol::Dns6(_)))
            | (_, Some(Protocol::Dns(_) | Protocol::Dnsaddr(_))) => true,
            _ => false,
        }
    }
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Handler events an outbound connection's handler may send before its peer is known to serve
/// the family (only "the peer supports AutoNAT", once per protocol change); more are dropped.
const MAX_HELD: usize = 4;

/// What a [`Testable`] knows of a connection the inner behaviour has a handler on.
#[derive(Debug)]
struct Conn<E> {
    peer: PeerId,
    /// The handler's events, held while the peer is not known to reach this family (so the
    /// inner behaviour does not learn the connection leads to a server); `None` once it is,
    /// and on inbound connections.
    held: Option<Vec<E>>,
}

/// Wraps a behaviour (AutoNAT v2's client) so that it tests only this node's addresses of one
/// [`Family`], and only with servers that can dial in that family.
///
/// An AutoNAT client asks a random connected server to dial a candidate back. A member
/// without IPv6 cannot dial any IPv6 address, so one such member, picked, answers
/// "unreachable" for a reachable IPv6 address: with libp2p's v2 client (which never tests an
/// address again after that) for the rest of the run, with kith's ([`crate::autonat`]) until
/// the retest a minute or more later. With one wrapped client per family, the client only
/// learns that a connection leads to a server once the peer is known to reach the family: it
/// was dialed directly in it, or it listens on an address in it ([`Self::peer_listens_on`],
/// from identify). Until then the handler's events (the "server supports AutoNAT" news) are
/// held back, so the client never picks that server. Dial-backs arrive as inbound
/// connections on the tested address, so direct inbound connections go to the client of their
/// local address's family; every other connection gets a dummy handler and is never mentioned
/// to the inner behaviour.
///
/// Candidates outside the family never reach the inner behaviour, nor do relayed ones or those
/// that fail [`is_testable`]; every other swarm event passes through unchanged.
pub struct Testable<B: NetworkBehaviour> {
    inner: B,
    family: Family,
    /// Connections the inner behaviour has a handler on.
    conns: HashMap<ConnectionId, Conn<THandlerOutEvent<B>>>,
    /// Connected peers known to reach the family.
    reach: HashSet<PeerId>,
}

impl Testable<crate::autonat::Behaviour> {
    /// Tests `addr` at the next tick whatever its past (a router just mapped it, see
    /// [`crate::autonat::Behaviour::test_now`]), if it is of this wrapper's family.
    pub fn test_now(&mut self, addr: &Multiaddr) {
        if self.family.contains(addr) {
            self.inner.test_now(addr.clone());
        }
    }
}

impl<B: NetworkBehaviour> Testable<B> {
    /// Wraps `inner` for addresses of `family`.
    pub fn new(inner: B, family: Family) -> Self {
        Self {
            inner,
            family,
            conns: HashMap::new(),
            reach: HashSet::new(),
        }
    }

    /// The wrapped behaviour.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Tells the wrapper the addresses `peer` listens on (identify's `listen_addrs`). If one
    /// of them [reaches out](Family::reaches_out_from) in the family, the peer may serve.
    pub fn peer_listens_on(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if let Some(a) = addrs.iter().find(|a| self.family.reaches_out_from(a)) {
            if !self.reach.contains(&peer) {
                tracing::debug!(%peer, family = ?self.family, listens_on = %a, "AutoNAT server");
            }
            self.reach.insert(peer);
            self.release(peer);
        }
    }

    /// If `peer` reaches the family, hands its connections' held events to the inner behaviour.
    fn release(&mut self, peer: PeerId) {
        if !self.reach.contains(&peer) {
            return;
        }
        for (id, c) in self.conns.iter_mut().filter(|(_, c)| c.peer == peer) {
            for e in c.held.take().unwrap_or_default() {
                self.inner.on_connection_handler_event(peer, *id, e);
            }
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Testable<B> {
    type ConnectionHandler = Either<B::ConnectionHandler, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    delegate_pending!(inner);

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local) || !self.family.contains(local) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        let handler = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        self.conns.insert(id, Conn { peer, held: None });
        Ok(Either::Left(handler))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !is_testable(addr) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        let handler = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        let held = Some(Vec::new());
        self.conns.insert(id, Conn { peer, held });
        if !is_relayed(addr) && self.family.contains(addr) && self.reach.insert(peer) {
            tracing::debug!(%peer, family = ?self.family, dialed = %addr, "AutoNAT server");
        }
        self.release(peer);
        Ok(Either::Left(handler))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr })
                if !is_testable(addr) || is_relayed(addr) || !self.family.contains(addr) =>
            {
                tracing::trace!(%addr, family = ?self.family, "not an AutoNAT candidate here");
                return;
            }
            FromSwarm::ConnectionEstablished(c) if !self.conns.contains_key(&c.connection_id) => {
                return;
            }
            FromSwarm::ConnectionClosed(c) => {
                if c.remaining_established == 0 {
                    self.reach.remove(&c.peer_id);
                }
                if self.conns.remove(&c.connection_id).is_none() {
                    return;
                }
            }
            // A connection another behaviour denied after ours accepted it: it never opens.
            FromSwarm::DialFailure(f) => {
                self.conns.remove(&f.connection_id);
            }
            FromSwarm::ListenFailure(f) => {
                self.conns.remove(&f.connection_id);
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let e = match event {
            Either::Left(e) => e,
            Either::Right(v) => match v {},
        };
        match self.conns.get_mut(&id).map(|c| c.held.as_mut()) {
            Some(None) => self.inner.on_connection_handler_event(peer, id, e),
            Some(Some(held)) if held.len() < MAX_HELD => held.push(e),
            // Too many held, or a connection the inner behaviour has no handler on.
            _ => tracing::debug!(%peer, "AutoNAT: dropping a handler event"),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use libp2p::{
        core::ConnectedPoint,
        swarm::{
            ConnectionClosed, ConnectionHandler, behaviour::ConnectionEstablished,
            handler::MapOutEvent,
        },
    };

    use super::*;

    /// A handler whose events are numbers (sent by the test, never by the handler).
    type Numbers = MapOutEvent<dummy::ConnectionHandler, fn(Infallible) -> u32>;

    fn numbers() -> Numbers {
        dummy::ConnectionHandler.map_out_event(|v: Infallible| match v {})
    }

    /// Records the candidates it hears of, the connections it has handlers on and hears
    /// established, and the handler events it gets.
    #[derive(Default)]
    struct Recorder {
        candidates: Vec<Multiaddr>,
        handlers: Vec<ConnectionId>,
        open: Vec<ConnectionId>,
        events: Vec<(ConnectionId, u32)>,
    }

    impl NetworkBehaviour for Recorder {
        type ConnectionHandler = Numbers;
        type ToSwarm = Infallible;

        fn handle_established_inbound_connection(
            &mut self,
            id: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.handlers.push(id);
            Ok(numbers())
        }

        fn handle_established_outbound_connection(
            &mut self,
            id: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.handlers.push(id);
            Ok(numbers())
        }

        fn on_swarm_event(&mut self, event: FromSwarm) {
            match event {
                FromSwarm::NewExternalAddrCandidate(c) => self.candidates.push(c.addr.clone()),
                FromSwarm::ConnectionEstablished(c) => self.open.push(c.connection_id),
                FromSwarm::ConnectionClosed(c) => self.open.retain(|i| *i != c.connection_id),
                _ => {}
            }
        }

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            id: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            self.events.push((id, event));
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

    fn id(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    /// A test swarm of one wrapped [`Recorder`]: opens connections the way the swarm does.
    struct Swarmish {
        b: Testable<Recorder>,
        points: Vec<(ConnectionId, PeerId, ConnectedPoint)>,
    }

    impl Swarmish {
        fn new(family: Family) -> Self {
            Self {
                b: Testable::new(Recorder::default(), family),
                points: Vec::new(),
            }
        }

        fn dial(&mut self, n: usize, peer: PeerId, addr: &str) {
            let addr = ma(addr);
            let (c, e) = (id(n), Endpoint::Dialer);
            let handler = self
                .b
                .handle_established_outbound_connection(c, peer, &addr, e, PortUse::Reuse)
                .unwrap();
            assert_eq!(
                matches!(handler, Either::Left(_)),
                self.b.inner().handlers.contains(&c)
            );
            self.established(
                c,
                peer,
                ConnectedPoint::Dialer {
                    address: addr,
                    role_override: e,
                    port_use: PortUse::Reuse,
                },
            );
        }

        fn accept(&mut self, n: usize, peer: PeerId, local: &str, remote: &str) {
            let (local, remote) = (ma(local), ma(remote));
            self.b
                .handle_established_inbound_connection(id(n), peer, &local, &remote)
                .unwrap();
            self.established(
                id(n),
                peer,
                ConnectedPoint::Listener {
                    local_addr: local,
                    send_back_addr: remote,
                },
            );
        }

        fn established(&mut self, c: ConnectionId, peer: PeerId, endpoint: ConnectedPoint) {
            self.b
                .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                    peer_id: peer,
                    connection_id: c,
                    endpoint: &endpoint,
                    failed_addresses: &[],
                    other_established: 0,
                }));
            self.points.push((c, peer, endpoint));
        }

        /// Every connection's handler says something (the number of its connection).
        fn handlers_speak(&mut self) {
            for (c, peer, _) in &self.points {
                let n = format!("{c}").parse().unwrap();
                self.b
                    .on_connection_handler_event(*peer, *c, Either::Left(n));
            }
        }

        fn close_all(&mut self) {
            for (c, peer, endpoint) in std::mem::take(&mut self.points) {
                self.b
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        peer_id: peer,
                        connection_id: c,
                        endpoint: &endpoint,
                        cause: None,
                        remaining_established: 0,
                    }));
            }
            assert!(
                self.b.inner().open.is_empty(),
                "every connection it heard of closed"
            );
            assert!(self.b.conns.is_empty() && self.b.reach.is_empty());
        }

        fn heard(&self) -> Vec<u32> {
            self.b.inner().events.iter().map(|(_, n)| *n).collect()
        }
    }

    /// What identify reports as observed over an inbound Tor connection (the onion listener's
    /// wildcard: an all-zero key, 56 `a`s), this node's real onion address and relayed
    /// addresses never reach AutoNAT; clearnet candidates (observed or UPnP) reach the client
    /// of their family.
    #[test]
    fn onion_and_relayed_candidates_never_reach_autonat_and_others_reach_their_family() {
        let wildcard = ma(&format!("/onion3/{}:41800", "a".repeat(56)));
        let real = ma("/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800");
        let tcp = ma("/ip4/192.0.2.1/tcp/41000");
        let quic = ma("/ip6/2001:db8::1/udp/41000/quic-v1");
        let dns = ma("/dns/home.example/tcp/41000");
        let relayed = ma(
            "/ip4/192.0.2.9/tcp/4001/p2p/12D3KooWEmLXn2ZPn2441v32yvKwG2cKbfFfhJrhxK62B23mBxvn/p2p-circuit",
        );
        let heard = |family| {
            let mut b = Testable::new(Recorder::default(), family);
            for addr in [&wildcard, &tcp, &real, &quic, &dns, &relayed] {
                b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                    NewExternalAddrCandidate { addr },
                ));
            }
            b.inner().candidates.clone()
        };
        assert_eq!(heard(Family::V4), vec![tcp.clone(), dns.clone()]);
        assert_eq!(heard(Family::V6), vec![quic.clone(), dns.clone()]);
        assert!(!is_testable(&wildcard) && !is_testable(&real));
        assert!(is_testable(&tcp) && is_testable(&quic));
    }

    /// The IPv6 client learns that a connection leads to a server only once the peer is known
    /// to reach IPv6: dialed over IPv6, or listening on a global IPv6 address. A member with
    /// IPv4 only (dialed over IPv4, through a relay, or by name) never becomes one; its news
    /// is held (at most [`MAX_HELD`]) and dropped with the connection. Dial-backs on IPv6
    /// addresses reach the client at once; onion connections and inbound IPv4 ones never do.
    #[test]
    fn the_ipv6_client_uses_only_servers_that_reach_ipv6() {
        let (r, b, c, t) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut s = Swarmish::new(Family::V6);
        s.dial(1, r, "/ip4/198.51.100.1/tcp/4001"); // R over IPv4
        s.dial(2, b, "/ip4/203.0.113.7/tcp/4002"); // B over IPv4
        s.dial(3, b, "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWEmLXn2ZPn2441v32yvKwG2cKbfFfhJrhxK62B23mBxvn/p2p-circuit");
        s.dial(4, c, "/ip6/2001:db8:2::10/udp/4002/quic-v1"); // C over IPv6
        s.dial(
            5,
            t,
            "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800",
        );
        s.accept(
            6,
            r,
            "/ip6/2001:db8:1::10/tcp/4002",
            "/ip6/2001:db8::1/tcp/50000",
        );
        s.accept(
            7,
            r,
            "/ip4/192.168.1.10/tcp/4002",
            "/ip4/198.51.100.1/tcp/50000",
        );
        assert_eq!(
            s.b.inner().handlers,
            vec![id(1), id(2), id(3), id(4), id(6)]
        );
        assert_eq!(
            s.b.inner().open,
            s.b.inner().handlers,
            "established = with a handler"
        );
        s.handlers_speak();
        s.handlers_speak();
        assert_eq!(
            s.heard(),
            vec![4, 6, 4, 6],
            "C (over IPv6) and the IPv6 dial-back only"
        );

        // R says it listens on a global IPv6 address: its held news reaches the client.
        s.b.peer_listens_on(
            r,
            &[
                ma("/ip4/198.51.100.1/tcp/4001"),
                ma("/ip6/2001:db8::1/tcp/4001"),
            ],
        );
        assert_eq!(s.heard(), vec![4, 6, 4, 6, 1, 1]);
        // B listens on IPv4, loopback, link-local, a unique-local address and a relay's IPv6:
        // none of them reaches IPv6.
        s.b.peer_listens_on(b, &[
            ma("/ip4/192.168.2.10/tcp/4002"),
            ma("/ip6/::1/tcp/4002"),
            ma("/ip6/fe80::1/tcp/4002"),
            ma("/ip6/fd00::10/tcp/4002"),
            ma("/ip6/2001:db8::1/tcp/4001/p2p/12D3KooWEmLXn2ZPn2441v32yvKwG2cKbfFfhJrhxK62B23mBxvn/p2p-circuit"),
        ]);
        for _ in 0..MAX_HELD {
            s.handlers_speak();
        }
        let heard = s.heard();
        assert!(
            !heard.contains(&2)
                && !heard.contains(&3)
                && !heard.contains(&5)
                && !heard.contains(&7)
        );
        assert!(
            s.b.conns
                .values()
                .filter_map(|c| c.held.as_ref())
                .all(|h| h.len() == MAX_HELD)
        );
        s.close_all();
    }

    /// The IPv4 client: servers dialed over IPv4 or by name at once, the IPv6-only member
    /// once it lists a private IPv4 address (a home behind a NAT dials out), dial-backs on
    /// IPv4 addresses.
    #[test]
    fn the_ipv4_client_uses_servers_dialed_over_ipv4_or_listening_on_it() {
        let (r, d, v) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Swarmish::new(Family::V4);
        s.dial(1, r, "/ip4/198.51.100.1/tcp/4001");
        s.dial(2, d, "/dns/relay.example/tcp/4001");
        s.dial(3, v, "/ip6/2001:db8:2::10/tcp/4002");
        s.accept(
            4,
            r,
            "/ip4/192.168.1.10/tcp/4002",
            "/ip4/198.51.100.1/tcp/50000",
        );
        s.accept(
            5,
            r,
            "/ip6/2001:db8:1::10/tcp/4002",
            "/ip6/2001:db8::1/tcp/50000",
        );
        s.handlers_speak();
        assert_eq!(s.heard(), vec![1, 2, 4]);
        s.b.peer_listens_on(v, &[ma("/ip4/127.0.0.1/tcp/4002")]);
        assert_eq!(s.heard(), vec![1, 2, 4], "loopback is no way out");
        s.b.peer_listens_on(v, &[ma("/ip4/10.0.0.5/tcp/4002")]);
        assert_eq!(s.heard(), vec![1, 2, 4, 3]);
        s.handlers_speak();
        assert_eq!(s.heard(), vec![1, 2, 4, 3, 1, 2, 3, 4]);
        s.close_all();
    }
}
