//! The client behaviour: hears candidates, asks connected servers to test them on the
//! [`Schedule`], checks dial-backs against the nonces it handed out, and confirms or expires
//! external addresses.

use std::{
    collections::{HashMap, VecDeque},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use either::Either;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, ExternalAddrExpired, FromSwarm, NetworkBehaviour,
        NewExternalAddrCandidate, NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
};
use rand::{RngCore, SeedableRng, rngs::StdRng};

use super::{
    handler::{DialBack, DialRequest, IncomingNonce, RequestEvent, Test},
    schedule::{Outcome, Schedule, Verdict},
};

/// A finished test, for the logs.
#[derive(Debug, Clone)]
pub struct Event {
    /// The address tested.
    pub tested_addr: Multiaddr,
    /// The server asked.
    pub server: PeerId,
    /// What it came to.
    pub outcome: Outcome,
    /// Data sent to pay for the dial-back.
    pub bytes_sent: usize,
    /// Why, when not reachable.
    pub detail: String,
}

struct Server {
    peer: PeerId,
    supports: bool,
}

/// kith's AutoNAT v2 client (wire-compatible with libp2p's server; see the module docs for
/// how it differs from libp2p's client).
pub struct Behaviour {
    schedule: Schedule<Multiaddr, PeerId>,
    start: Instant,
    interval: Duration,
    tick: Delay,
    /// Nonces and server picks: a nonce must not be guessable by a server that saw others.
    rng: StdRng,
    /// Outbound connections (their handlers run tests), by id.
    servers: HashMap<ConnectionId, Server>,
    /// Tests under way: nonce -> (address, server, connection).
    tests: HashMap<u64, (Multiaddr, PeerId, ConnectionId)>,
    events: VecDeque<ToSwarm<Event, Either<Test, std::convert::Infallible>>>,
}

impl Behaviour {
    /// A client that looks for due tests every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            schedule: Schedule::new(),
            start: Instant::now(),
            interval,
            tick: Delay::new(interval),
            rng: StdRng::from_entropy(),
            servers: HashMap::new(),
            tests: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Tests `addr` at the next tick, whatever its past (see [`Schedule::test_now`]).
    pub fn test_now(&mut self, addr: Multiaddr) {
        if !self.schedule.test_now(addr.clone()) {
            tracing::debug!(%addr, "AutoNAT: candidate dropped (every slot is busy)");
        }
    }

    /// Every candidate and its tests, most reported first.
    pub fn report(&self) -> Vec<super::schedule::Report<Multiaddr>> {
        self.schedule.report(self.now_ms())
    }

    /// Where `addr` stands in the schedule, if it is a candidate.
    pub fn status(&self, addr: &Multiaddr) -> Option<&super::schedule::Status<PeerId>> {
        self.schedule.status(addr)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn start_due_tests(&mut self) {
        let mut peers: Vec<PeerId> = self
            .servers
            .values()
            .filter(|s| s.supports)
            .map(|s| s.peer)
            .collect();
        peers.sort();
        peers.dedup();
        let now = self.now_ms();
        let rng = &mut self.rng;
        let probes = self.schedule.due(now, &peers, &mut || rng.next_u64());
        // Tests the schedule gave up on (no outcome in time).
        let schedule = &self.schedule;
        self.tests.retain(|n, _| schedule.is_pending(*n));
        for p in probes {
            let Some((&conn, _)) = self
                .servers
                .iter()
                .find(|(_, s)| s.supports && s.peer == p.server)
            else {
                continue;
            };
            self.tests.insert(p.nonce, (p.addr.clone(), p.server, conn));
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: p.server,
                handler: NotifyHandler::One(conn),
                event: Either::Left(Test {
                    addr: p.addr,
                    nonce: p.nonce,
                }),
            });
        }
    }

    fn on_tested(&mut self, nonce: u64, outcome: Outcome, bytes_sent: usize, detail: String) {
        let now = self.now_ms();
        // The test's event first, then what it changed.
        if let Some((tested_addr, server, _)) = self.tests.remove(&nonce) {
            self.events.push_back(ToSwarm::GenerateEvent(Event {
                tested_addr,
                server,
                outcome,
                bytes_sent,
                detail,
            }));
        }
        match self.schedule.outcome(nonce, outcome, now) {
            Verdict::Confirmed(a) => self.events.push_back(ToSwarm::ExternalAddrConfirmed(a)),
            Verdict::Expired(a) => self.events.push_back(ToSwarm::ExternalAddrExpired(a)),
            Verdict::None => {}
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Either<DialRequest, DialBack>;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Either::Right(DialBack::new()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.servers.insert(
            id,
            Server {
                peer,
                supports: false,
            },
        );
        Ok(Either::Left(DialRequest::new()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) => {
                let kept = self.schedule.add(addr.clone());
                if !kept {
                    tracing::debug!(%addr, "AutoNAT: candidate dropped (every slot is busy)");
                }
            }
            // Expired by whoever (this client, UPnP removal, Tor-only): tested afresh if it
            // is reported again.
            FromSwarm::ExternalAddrExpired(ExternalAddrExpired { addr }) => {
                self.schedule.forget(addr)
            }
            FromSwarm::ConnectionClosed(c) => {
                self.servers.remove(&c.connection_id);
                let lost: Vec<u64> = self
                    .tests
                    .iter()
                    .filter(|(_, t)| t.2 == c.connection_id)
                    .map(|(n, _)| *n)
                    .collect();
                for n in lost {
                    self.on_tested(n, Outcome::Error, 0, "connection closed".into());
                }
            }
            FromSwarm::DialFailure(f) => {
                self.servers.remove(&f.connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(RequestEvent::ServerSupport) => {
                if let Some(s) = self.servers.get_mut(&id) {
                    s.supports = true;
                }
            }
            Either::Left(RequestEvent::Tested {
                nonce,
                outcome,
                bytes_sent,
                detail,
            }) => {
                if outcome == Outcome::Unsupported
                    && let Some(s) = self.servers.get_mut(&id)
                {
                    s.supports = false;
                }
                self.on_tested(nonce, outcome, bytes_sent, detail);
            }
            Either::Right(IncomingNonce { nonce, answer }) => {
                let waited = self.schedule.dialed_back(nonce);
                if !waited {
                    tracing::debug!(nonce, "AutoNAT: a dial-back nobody waited for");
                }
                let _ = answer.send(waited);
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Poll::Ready(e);
            }
            if self.tick.poll_unpin(cx).is_ready() {
                self.tick.reset(self.interval);
                self.start_due_tests();
                continue;
            }
            return Poll::Pending;
        }
    }
}
