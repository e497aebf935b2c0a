//! The client's connection handlers, after libp2p-autonat 0.16's (MIT): [`DialRequest`] on
//! connections this node dialed (asks the server to dial an address back), [`DialBack`] on
//! connections it accepted (takes the server's dial-back and its nonce).

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    task::{Context, Poll},
    time::Duration,
};

use futures::channel::oneshot;
use futures_bounded::{FuturesMap, StreamSet};
use libp2p::{
    Multiaddr, Stream, StreamProtocol,
    core::upgrade::{DeniedUpgrade, ReadyUpgrade},
    swarm::{
        ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
            ProtocolsChange,
        },
    },
};

use super::{
    DIAL_BACK_PROTOCOL, DIAL_REQUEST_PROTOCOL,
    protocol::{self, Coder, DATA_LEN_LOWER_BOUND, DATA_LEN_UPPER_BOUND, Response},
    schedule::Outcome,
    structs::{DialStatus, dial_response::ResponseStatus},
};

/// How long one test may take, stream opening included.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tests in flight on one connection.
const MAX_TESTS: usize = 10;

/// Ask the handler's server to test `addr` with `nonce`.
#[derive(Debug, Clone)]
pub struct Test {
    pub(crate) addr: Multiaddr,
    pub(crate) nonce: u64,
}

/// What a [`DialRequest`] handler tells the behaviour.
#[derive(Debug)]
pub enum RequestEvent {
    /// The peer speaks the dial-request protocol.
    ServerSupport,
    /// A test ended.
    Tested {
        nonce: u64,
        outcome: Outcome,
        /// Data sent to pay for the dial-back.
        bytes_sent: usize,
        /// Why, when not reachable (for the logs).
        detail: String,
    },
}

/// Handler on connections this node dialed: runs tests against the peer.
pub struct DialRequest {
    events: VecDeque<RequestEvent>,
    open: usize,
    tests: FuturesMap<u64, (Outcome, usize, String)>,
    streams: VecDeque<oneshot::Sender<Result<Stream, StreamUpgradeError<Infallible>>>>,
}

impl DialRequest {
    pub(crate) fn new() -> Self {
        Self {
            events: VecDeque::new(),
            open: 0,
            tests: FuturesMap::new(
                || futures_bounded::Delay::futures_timer(TEST_TIMEOUT),
                MAX_TESTS,
            ),
            streams: VecDeque::new(),
        }
    }
}

impl ConnectionHandler for DialRequest {
    type FromBehaviour = Test;
    type ToBehaviour = RequestEvent;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if self.open > 0 {
            self.open -= 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(DIAL_REQUEST_PROTOCOL), ()),
            });
        }
        if let Some(e) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(e));
        }
        if let Poll::Ready((nonce, res)) = self.tests.poll_unpin(cx) {
            let (outcome, bytes_sent, detail) =
                res.unwrap_or((Outcome::Error, 0, "timed out".into()));
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                RequestEvent::Tested {
                    nonce,
                    outcome,
                    bytes_sent,
                    detail,
                },
            ));
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, test: Test) {
        let (tx, rx) = oneshot::channel();
        let nonce = test.nonce;
        if self.tests.try_push(nonce, run_test(test, rx)).is_err() {
            tracing::debug!("AutoNAT: too many tests on one connection, dropping one");
            self.events.push_back(RequestEvent::Tested {
                nonce,
                outcome: Outcome::Error,
                bytes_sent: 0,
                detail: "too many tests in flight".into(),
            });
            return;
        }
        self.streams.push_back(tx);
        self.open += 1;
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                if let Some(tx) = self.streams.pop_front() {
                    let _ = tx.send(Err(error));
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => {
                if let Some(tx) = self.streams.pop_front() {
                    let _ = tx.send(Ok(protocol));
                }
            }
            // The iterator is consumed, which a match guard cannot do.
            #[allow(clippy::collapsible_match)]
            ConnectionEvent::RemoteProtocolsChange(ProtocolsChange::Added(added)) => {
                if added
                    .into_iter()
                    .any(|p| p.as_ref() == DIAL_REQUEST_PROTOCOL)
                {
                    self.events.push_back(RequestEvent::ServerSupport);
                }
            }
            _ => {}
        }
    }
}

/// One test on its own stream.
async fn run_test(
    test: Test,
    stream: oneshot::Receiver<Result<Stream, StreamUpgradeError<Infallible>>>,
) -> (Outcome, usize, String) {
    let stream = match stream.await {
        Ok(Ok(s)) => s,
        Ok(Err(StreamUpgradeError::NegotiationFailed)) => {
            return (Outcome::Unsupported, 0, "protocol not supported".into());
        }
        Ok(Err(e)) => return (Outcome::Error, 0, e.to_string()),
        Err(_) => return (Outcome::Error, 0, "connection closed".into()),
    };
    match exchange(test, stream).await {
        Ok(r) => r,
        Err(e) => (Outcome::Error, 0, e.to_string()),
    }
}

async fn exchange(test: Test, stream: Stream) -> io::Result<(Outcome, usize, String)> {
    let mut coder = Coder::new(stream);
    coder
        .request(std::slice::from_ref(&test.addr), test.nonce)
        .await?;
    let (res, bytes_sent) = match coder.next().await? {
        Response::Data {
            addr_idx,
            num_bytes,
        } => {
            if addr_idx != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "address index out of bounds",
                ));
            }
            if !(DATA_LEN_LOWER_BOUND..=DATA_LEN_UPPER_BOUND).contains(&num_bytes) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "requested data out of bounds",
                ));
            }
            coder.send_data(num_bytes).await?;
            let Response::Dial(res) = coder.next().await? else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "expected a dial response",
                ));
            };
            (res, num_bytes)
        }
        Response::Dial(res) => (res, 0),
    };
    // The server may have closed its side already: that is fine.
    let _ = coder.close().await;
    let outcome = match (res.status, res.addr_idx, res.dial_status) {
        (ResponseStatus::Ok, 0, DialStatus::Ok) => (Outcome::Reachable, ""),
        (ResponseStatus::Ok, 0, DialStatus::EDialError) => {
            (Outcome::Unreachable, "server failed to connect")
        }
        (ResponseStatus::Ok, 0, DialStatus::EDialBackError) => {
            (Outcome::Unreachable, "dial-back stream failed")
        }
        (ResponseStatus::Ok, _, _) => (Outcome::Error, "malformed answer"),
        (ResponseStatus::ERequestRejected, ..) => (Outcome::Error, "server rejected the request"),
        (ResponseStatus::EDialRefused, ..) => (Outcome::Error, "server refused to dial"),
        (ResponseStatus::EInternalError, ..) => (Outcome::Error, "server internal error"),
    };
    Ok((outcome.0, bytes_sent, outcome.1.to_string()))
}

/// A dial-back's nonce, with the way to answer it (`Ok` when a test waits for it).
#[derive(Debug)]
pub struct IncomingNonce {
    pub(crate) nonce: u64,
    pub(crate) answer: oneshot::Sender<bool>,
}

/// Handler on connections this node accepted: takes dial-backs.
pub struct DialBack {
    inbound: StreamSet<io::Result<IncomingNonce>>,
}

impl DialBack {
    pub(crate) fn new() -> Self {
        Self {
            inbound: StreamSet::new(
                || futures_bounded::Delay::futures_timer(Duration::from_secs(5)),
                2,
            ),
        }
    }
}

impl ConnectionHandler for DialBack {
    type FromBehaviour = Infallible;
    type ToBehaviour = IncomingNonce;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(DIAL_BACK_PROTOCOL), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        loop {
            match self.inbound.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => continue,
                Poll::Ready(Some(Err(_))) => tracing::debug!("AutoNAT: dial-back timed out"),
                Poll::Ready(Some(Ok(Err(e)))) => tracing::debug!("AutoNAT: dial-back failed: {e}"),
                Poll::Ready(Some(Ok(Ok(n)))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(n));
                }
            }
        }
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, .. }) =
            event
            && self.inbound.try_push(take_dial_back(protocol)).is_err()
        {
            tracing::debug!("AutoNAT: too many dial-backs at once, dropping one");
        }
    }
}

/// Reads a dial-back's nonce, hands it to the behaviour, and answers OK if a test waited for
/// it (otherwise closes the stream without an answer, as libp2p's client does).
fn take_dial_back(stream: Stream) -> impl futures::Stream<Item = io::Result<IncomingNonce>> {
    struct State {
        stream: Stream,
        answer: Option<oneshot::Receiver<bool>>,
    }
    let start = Some(State {
        stream,
        answer: None,
    });
    futures::stream::unfold(start, |state| async move {
        let mut st = state?;
        if let Some(rx) = st.answer.take() {
            if rx.await == Ok(true)
                && let Err(e) = protocol::dial_back_response(&mut st.stream).await
            {
                return Some((Err(e), None));
            }
            return None;
        }
        match protocol::recv_dial_back(&mut st.stream).await {
            Err(e) => Some((Err(e), None)),
            Ok(nonce) => {
                let (answer, rx) = oneshot::channel();
                st.answer = Some(rx);
                Some((Ok(IncomingNonce { nonce, answer }), Some(st)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stream_reads_as_unsupported_and_a_lost_one_as_an_error() {
        let (tx, rx) = oneshot::channel();
        let t = Test {
            addr: "/ip4/192.0.2.1/tcp/1".parse().unwrap(),
            nonce: 1,
        };
        tx.send(Err(StreamUpgradeError::NegotiationFailed)).unwrap();
        let (o, ..) = futures::executor::block_on(run_test(t.clone(), rx));
        assert_eq!(o, Outcome::Unsupported);
        let (tx, rx) = oneshot::channel();
        drop(tx);
        let (o, ..) = futures::executor::block_on(run_test(t, rx));
        assert_eq!(o, Outcome::Error);
    }
}
