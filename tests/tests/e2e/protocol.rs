//! Malformed and oversized storage-protocol frames from a real libp2p peer get typed errors,
//! and the server keeps serving.

use std::{io, time::Duration};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_node::protocol::{self, ErrorKind, Request, Response};
use kith_tests::{Encoding, Grid, Listen};
use libp2p::{
    StreamProtocol, Swarm,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
};

/// Sends raw bytes as the request (the test writes the framing itself); reads a real frame back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("client only"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
        io.read_exact(&mut rest).await?;
        protocol::decode_frame(&[&len[..], &rest].concat()).map_err(io::Error::other)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Response,
    ) -> io::Result<()> {
        Err(io::Error::other("client only"))
    }
}

/// A frame around `header` (no bulk bytes).
fn frame(header: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend_from_slice(&(header.len() as u32).to_be_bytes());
    v.extend_from_slice(header);
    v
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_typed_errors_and_never_panic_the_server() {
    let grid = Grid::start(
        1,
        Listen::Tcp,
        Encoding {
            needed: 1,
            happy: 1,
            total: 1,
        },
    )
    .await
    .unwrap();
    let server = grid.node(0);
    let server_addr = server.addrs()[0].clone();

    let kp = libp2p::identity::Keypair::generate_ed25519();
    let transport =
        kith_transports::build_transport(&kp, &kith_transports::Config::default()).unwrap();
    let behaviour = request_response::Behaviour::<RawCodec>::new(
        [(protocol::PROTOCOL, ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    );
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        kp.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    swarm.dial(server_addr).unwrap();

    let valid = protocol::encode_frame(Request::List { si: [1; 16] })
        .unwrap()
        .to_bytes();
    let mut oversized = (u32::MAX).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 64]);
    let cases: Vec<(&str, Vec<u8>, Option<ErrorKind>)> = vec![
        (
            "garbage",
            frame(&[0xff, 0xfe, 0x00, 0x13, 0x37]),
            Some(ErrorKind::Malformed),
        ),
        (
            "oversized length prefix",
            oversized,
            Some(ErrorKind::TooLarge),
        ),
        (
            "valid CBOR of the wrong shape",
            frame(&cbor(&"hello")),
            Some(ErrorKind::Malformed),
        ),
        ("empty header", frame(&[]), Some(ErrorKind::Malformed)),
        (
            "empty frame",
            0u32.to_be_bytes().to_vec(),
            Some(ErrorKind::Malformed),
        ),
        (
            "header length beyond the frame",
            [&8u32.to_be_bytes()[..], &100u32.to_be_bytes(), &[0xa0; 4]].concat(),
            Some(ErrorKind::Malformed),
        ),
        (
            "bulk bytes after a list",
            {
                let mut f = frame(&cbor(&Request::List { si: [1; 16] }));
                let len = u32::from_be_bytes(f[..4].try_into().unwrap()) + 5;
                f[..4].copy_from_slice(&len.to_be_bytes());
                f.extend_from_slice(&[7; 5]);
                f
            },
            Some(ErrorKind::Malformed),
        ),
        (
            "huge array header",
            frame(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(ErrorKind::Malformed),
        ),
        (
            "read far beyond a share",
            protocol::encode_frame(Request::Read {
                si: [1; 16],
                shnum: 0,
                offset: u64::MAX - 3,
                len: u32::MAX,
            })
            .unwrap()
            .to_bytes(),
            None,
        ),
        ("valid list", valid, None),
    ];
    let server_peer = server.peer_id();
    for (name, bytes, expect) in cases {
        let id = swarm.behaviour_mut().send_request(&server_peer, bytes);
        let resp = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match swarm.next().await {
                    Some(SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    })) if request_id == id => return Ok(response),
                    Some(SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    })) if request_id == id => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no answer"));
        let resp = resp.unwrap_or_else(|e| panic!("{name}: {e}"));
        match (expect, &resp) {
            (Some(kind), Response::Error(e)) => assert_eq!(e.kind, kind, "{name}: {e}"),
            (None, Response::Shares(v)) => assert!(v.is_empty(), "{name}"),
            (None, Response::Error(e)) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::TooLarge | ErrorKind::NotFound | ErrorKind::OutOfBounds
                ),
                "{name}: {e}"
            ),
            (_, other) => panic!("{name}: unexpected {other:?}"),
        }
    }
    // The server is still up and serving its owner.
    assert!(server.status().await.storage.is_some());

    // Several files' puts in one request (from a member: the node itself): one answer per
    // put, in order, a bad put refused alone; and the request's bounds hold.
    let put = |si: u8, lens: &[usize]| protocol::PutItem {
        si: [si; 16],
        shares: lens
            .iter()
            .enumerate()
            .map(|(i, &n)| protocol::PutShare {
                shnum: i as u8,
                data: vec![si; n].into(),
                meta: vec![1; 8].into(),
            })
            .collect(),
    };
    let me = server.peer_id();
    let ask = |req| {
        server
            .server()
            .handle(me, protocol::RequestFrame::Request(req))
    };
    match ask(Request::PutMany {
        puts: vec![put(20, &[100]), put(21, &[10, 11]), put(22, &[300, 300])],
    })
    .await
    {
        Response::StoredMany(a) => {
            assert_eq!(a.len(), 3, "{a:?}");
            assert!(
                matches!(&a[0], protocol::PutAnswer::Stored { stored, .. } if stored == &[0]),
                "{a:?}"
            );
            assert!(
                matches!(&a[1], protocol::PutAnswer::Error(e) if e.kind == ErrorKind::Malformed),
                "{a:?}"
            );
            assert!(
                matches!(&a[2], protocol::PutAnswer::Stored { stored, .. } if stored == &[0, 1]),
                "{a:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    for (name, puts) in [
        (
            "too many puts",
            (0..=protocol::MAX_PUT_MANY as u8)
                .map(|i| put(i, &[1]))
                .collect(),
        ),
        (
            "too many bytes",
            vec![
                put(30, &[protocol::MAX_PUT / 2]),
                put(31, &[protocol::MAX_PUT / 2]),
            ],
        ),
    ] {
        match ask(Request::PutMany { puts }).await {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::TooLarge, "{name}: {e}"),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
    assert_eq!(server.server().put_many_counts(), (3, 3 + 65 + 2));
}
