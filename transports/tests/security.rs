//! The security handshake of TCP connections on real loopback sockets: TLS 1.3 with AES-GCM
//! where the CPU has AES instructions, interoperable with libp2p's own TLS and with peers that
//! speak only Noise; peer ids bound to the node keys.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt, future::Either};
use kith_transports::{
    Config, Keypair, build_transport,
    security::{NOISE_PROTOCOL, Security, TLS_PROTOCOL, negotiated_suite},
};
use libp2p::{
    PeerId, Swarm, Transport,
    core::{
        muxing::StreamMuxerBox,
        transport::upgrade::Version,
        upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade},
    },
    noise, ping,
    swarm::SwarmEvent,
    tcp::tokio::TcpStream,
    yamux,
};
use rustls::CipherSuite;

/// A connected pair of loopback TCP sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    (TcpStream(a.unwrap()), TcpStream(b.unwrap().0))
}

/// Handshakes a dialer with `client` against a listener with `server` over `protocol`; checks
/// both sides learnt the other's key; returns the suite each side negotiated.
async fn handshake(
    (ck, client): (&Keypair, Security),
    (sk, server): (&Keypair, Security),
    protocol: &'static str,
) -> (Option<CipherSuite>, Option<CipherSuite>) {
    let (c, s) = socket_pair().await;
    let (out, inb) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(
            client.upgrade_outbound(c, protocol),
            server.upgrade_inbound(s, protocol),
        ),
    )
    .await
    .expect("handshake within 20 s");
    let (server_seen, mut out) = out.unwrap();
    let (client_seen, mut inb) = inb.unwrap();
    assert_eq!(server_seen, sk.public().to_peer_id());
    assert_eq!(client_seen, ck.public().to_peer_id());
    // A megabyte each way through the secured streams.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
    let (sent, got) = futures::future::join(
        async {
            out.write_all(&data).await.unwrap();
            out.flush().await.unwrap();
            let mut back = vec![0u8; data.len()];
            out.read_exact(&mut back).await.unwrap();
            back
        },
        async {
            let mut buf = vec![0u8; data.len()];
            inb.read_exact(&mut buf).await.unwrap();
            inb.write_all(&buf).await.unwrap();
            inb.flush().await.unwrap();
            buf
        },
    )
    .await;
    assert!(sent == data && got == data, "bytes differ");
    (negotiated_suite(&out), negotiated_suite(&inb))
}

#[tokio::test]
async fn tls_negotiates_aes_gcm_when_both_have_aes_and_chacha_when_either_lacks_it() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let aes = CipherSuite::TLS13_AES_256_GCM_SHA384;
    let chacha = CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
    for (client_aes, server_aes, want) in [
        (true, true, aes),
        // The client without AES asks for ChaCha20 first; the server follows the client.
        (false, true, chacha),
        // The server without AES picks by its own order.
        (true, false, chacha),
        (false, false, chacha),
    ] {
        let got = handshake(
            (&a, Security::with_aes(&a, client_aes).unwrap()),
            (&b, Security::with_aes(&b, server_aes).unwrap()),
            TLS_PROTOCOL,
        )
        .await;
        assert_eq!(
            got,
            (Some(want), Some(want)),
            "client aes {client_aes}, server aes {server_aes}"
        );
    }
    // This machine's own choice.
    let own = handshake(
        (&a, Security::new(&a).unwrap()),
        (&b, Security::new(&b).unwrap()),
        TLS_PROTOCOL,
    )
    .await;
    let want = if kith_transports::security::aes_hardware() {
        aes
    } else {
        chacha
    };
    assert_eq!(own, (Some(want), Some(want)));
}

#[tokio::test]
async fn tls_interoperates_with_libp2p_tls_both_ways_and_noise_still_works() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    // kith dials a libp2p-tls listener, and a libp2p-tls dialer reaches a kith listener.
    let (c, s) = socket_pair().await;
    let (out, inb) = futures::future::join(
        Security::new(&a).unwrap().upgrade_outbound(c, TLS_PROTOCOL),
        libp2p::tls::Config::new(&b)
            .unwrap()
            .upgrade_inbound(s, "/tls/1.0.0"),
    )
    .await;
    assert_eq!(out.unwrap().0, b.public().to_peer_id());
    assert_eq!(inb.unwrap().0, a.public().to_peer_id());
    let (c, s) = socket_pair().await;
    let (out, inb) = futures::future::join(
        libp2p::tls::Config::new(&a)
            .unwrap()
            .upgrade_outbound(c, "/tls/1.0.0"),
        Security::new(&b).unwrap().upgrade_inbound(s, TLS_PROTOCOL),
    )
    .await;
    assert_eq!(out.unwrap().0, b.public().to_peer_id());
    let (peer, stream) = inb.unwrap();
    assert_eq!(peer, a.public().to_peer_id());
    assert!(matches!(stream, Either::Left(_)), "a TLS stream");
    // Noise between two kith nodes (the second protocol on offer).
    let (suite_out, suite_in) = handshake(
        (&a, Security::new(&a).unwrap()),
        (&b, Security::new(&b).unwrap()),
        NOISE_PROTOCOL,
    )
    .await;
    assert_eq!(
        (suite_out, suite_in),
        (None, None),
        "Noise has no TLS suite"
    );
}

/// A swarm on a transport that offers only Noise, as libp2p's defaults and older kith did.
fn noise_only_swarm() -> Swarm<ping::Behaviour> {
    let kp = Keypair::generate_ed25519();
    let transport = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(&kp).unwrap())
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    swarm_on(kp, transport)
}

fn kith_swarm() -> Swarm<ping::Behaviour> {
    let kp = Keypair::generate_ed25519();
    let t = build_transport(&kp, &Config::default()).unwrap();
    swarm_on(kp, t)
}

fn swarm_on(
    kp: Keypair,
    t: libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>,
) -> Swarm<ping::Behaviour> {
    Swarm::new(
        t,
        ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(50))),
        kp.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(10)),
    )
}

async fn listen(s: &mut Swarm<ping::Behaviour>) -> libp2p::Multiaddr {
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    loop {
        if let Some(SwarmEvent::NewListenAddr { address, .. }) = s.next().await {
            return address;
        }
    }
}

/// Drives both swarms until `dialer` pings `listener`.
async fn pings(dialer: &mut Swarm<ping::Behaviour>, listener: &mut Swarm<ping::Behaviour>) {
    let want = *listener.local_peer_id();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                _ = listener.next() => {}
                ev = dialer.next() => if let Some(SwarmEvent::Behaviour(ping::Event { peer, result: Ok(_), .. })) = ev {
                    assert_eq!(peer, want);
                    return;
                },
            }
        }
    })
    .await
    .expect("a ping within 20 s");
}

#[tokio::test]
async fn noise_only_peers_still_connect_both_ways_and_a_wrong_peer_id_is_refused() {
    let mut kith = kith_swarm();
    let mut old = noise_only_swarm();
    let kith_addr = listen(&mut kith).await;
    old.dial(kith_addr.clone()).unwrap();
    pings(&mut old, &mut kith).await;

    let mut kith = kith_swarm();
    let mut old = noise_only_swarm();
    let old_addr = listen(&mut old).await;
    kith.dial(old_addr).unwrap();
    pings(&mut kith, &mut old).await;

    // Dialing the kith listener under another node's id fails the handshake's peer check.
    let mut listener = kith_swarm();
    let addr = listen(&mut listener).await;
    let mut dialer = kith_swarm();
    let wrong = Keypair::generate_ed25519().public().to_peer_id();
    dialer
        .dial(addr.with(libp2p::multiaddr::Protocol::P2p(wrong)))
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                _ = listener.next() => {}
                ev = dialer.next() => match ev {
                    Some(SwarmEvent::OutgoingConnectionError { error, .. }) => return error,
                    Some(SwarmEvent::ConnectionEstablished { .. }) => panic!("connected to the wrong peer"),
                    _ => {}
                },
            }
        }
    })
    .await
    .expect("the dial ends within 20 s");
    assert!(
        matches!(err, libp2p::swarm::DialError::WrongPeerId { .. }),
        "{err}"
    );
}
