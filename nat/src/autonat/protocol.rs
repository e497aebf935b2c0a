//! The client's half of AutoNAT v2's exchanges, after libp2p-autonat 0.16's `protocol.rs`
//! (MIT): length-prefixed protobuf frames, bounded in size on reading (a peer's frame longer
//! than the bound is an error, not an allocation).

use std::io;

use asynchronous_codec::{Framed, FramedRead, FramedWrite};
use futures::{AsyncRead, AsyncWrite, SinkExt, StreamExt};
use libp2p::Multiaddr;
use prost_codec::Codec;

use super::structs as proto;

/// Longest dial-request stream frame (a request with its addresses, or 4 KiB of data).
const REQUEST_MAX_SIZE: usize = 4104;
/// Least amount of data a server may ask for before dialing another IP than it sees.
pub(crate) const DATA_LEN_LOWER_BOUND: usize = 30_000;
/// Most amount of data a server may ask for.
pub(crate) const DATA_LEN_UPPER_BOUND: usize = 100_000;
/// Most data in one frame.
const DATA_FIELD_LEN_UPPER_BOUND: usize = 4096;
/// Longest dial-back frame.
const DIAL_BACK_MAX_SIZE: usize = 10;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A server's answer on the dial-request stream.
#[derive(Debug, Clone)]
pub(crate) enum Response {
    /// The verdict.
    Dial(DialResponse),
    /// Send this much data first.
    Data { addr_idx: usize, num_bytes: usize },
}

/// The verdict on a dial request.
#[derive(Debug, Clone)]
pub(crate) struct DialResponse {
    pub(crate) status: proto::dial_response::ResponseStatus,
    pub(crate) addr_idx: usize,
    pub(crate) dial_status: proto::DialStatus,
}

impl TryFrom<proto::Message> for Response {
    type Error = io::Error;

    fn try_from(msg: proto::Message) -> Result<Self, Self::Error> {
        match msg.msg {
            Some(proto::message::Msg::DialResponse(proto::DialResponse {
                status,
                addr_idx,
                dial_status,
            })) => Ok(Response::Dial(DialResponse {
                status: proto::dial_response::ResponseStatus::try_from(status)
                    .map_err(|_| invalid(format!("unknown response status: {status}")))?,
                addr_idx: addr_idx as usize,
                dial_status: proto::DialStatus::try_from(dial_status)
                    .map_err(|_| invalid(format!("unknown dial status: {dial_status}")))?,
            })),
            Some(proto::message::Msg::DialDataRequest(proto::DialDataRequest {
                addr_idx,
                num_bytes,
            })) => Ok(Response::Data {
                addr_idx: addr_idx as usize,
                num_bytes: usize::try_from(num_bytes).unwrap_or(usize::MAX),
            }),
            _ => Err(invalid("expected a dial response or a dial data request")),
        }
    }
}

/// The dial-request stream, framed.
pub(crate) struct Coder<I> {
    inner: Framed<I, Codec<proto::Message>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Coder<I> {
    pub(crate) fn new(io: I) -> Self {
        Self {
            inner: Framed::new(io, Codec::new(REQUEST_MAX_SIZE)),
        }
    }

    /// Asks the server to dial one of `addrs` back with `nonce`.
    pub(crate) async fn request(&mut self, addrs: &[Multiaddr], nonce: u64) -> io::Result<()> {
        let msg = proto::Message {
            msg: Some(proto::message::Msg::DialRequest(proto::DialRequest {
                addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                nonce,
            })),
        };
        self.inner.send(msg).await.map_err(io::Error::other)
    }

    /// Sends `num_bytes` of zeros in frames of at most 4 KiB (the price of a dial-back to
    /// another IP than the server sees).
    pub(crate) async fn send_data(&mut self, num_bytes: usize) -> io::Result<()> {
        let mut left = num_bytes;
        while left > 0 {
            let n = left.min(DATA_FIELD_LEN_UPPER_BOUND);
            let msg = proto::Message {
                msg: Some(proto::message::Msg::DialDataResponse(
                    proto::DialDataResponse { data: vec![0; n] },
                )),
            };
            self.inner.send(msg).await.map_err(io::Error::other)?;
            left -= n;
        }
        Ok(())
    }

    /// The server's next answer.
    pub(crate) async fn next(&mut self) -> io::Result<Response> {
        let msg = self
            .inner
            .next()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?
            .map_err(|e| invalid(e.to_string()))?;
        msg.try_into()
    }

    pub(crate) async fn close(mut self) -> io::Result<()> {
        self.inner.close().await.map_err(io::Error::other)
    }
}

/// Reads the nonce a dial-back carries.
pub(crate) async fn recv_dial_back(stream: impl AsyncRead + Unpin) -> io::Result<u64> {
    let framed = &mut FramedRead::new(stream, Codec::<proto::DialBack>::new(DIAL_BACK_MAX_SIZE));
    let proto::DialBack { nonce } = framed
        .next()
        .await
        .ok_or(io::Error::from(io::ErrorKind::UnexpectedEof))?
        .map_err(|e| invalid(e.to_string()))?;
    Ok(nonce)
}

/// Answers a dial-back: OK.
pub(crate) async fn dial_back_response(stream: impl AsyncWrite + Unpin) -> io::Result<()> {
    let msg = proto::DialBackResponse {
        status: proto::dial_back_response::DialBackStatus::Ok as i32,
    };
    let mut framed = FramedWrite::new(
        stream,
        Codec::<proto::DialBackResponse>::new(DIAL_BACK_MAX_SIZE),
    );
    framed.send(msg).await.map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn the_largest_frames_fit_their_bounds() {
        let data = proto::Message {
            msg: Some(proto::message::Msg::DialDataResponse(
                proto::DialDataResponse {
                    data: vec![0; DATA_FIELD_LEN_UPPER_BOUND],
                },
            )),
        };
        assert!(data.encode_to_vec().len() < REQUEST_MAX_SIZE);
        let back = proto::DialBack { nonce: u64::MAX };
        assert!(back.encode_to_vec().len() <= DIAL_BACK_MAX_SIZE);
    }

    /// Whatever a server sends, decoding gives an answer or an error, never a panic.
    #[test]
    fn arbitrary_frames_decode_or_fail_cleanly() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..64))| {
            if let Ok(m) = proto::Message::decode(bytes.as_slice()) {
                let _ = Response::try_from(m);
            }
            let _ = proto::DialBack::decode(bytes.as_slice());
        });
    }
}
