//! Real swarms on the kith transport stack: every transport authenticates the remote peer id
//! and carries a protocol (ping) over the negotiated muxer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use futures::StreamExt;
use kith_transports::{Config, Keypair, Multiaddr, build_transport};
use libp2p::{Swarm, ping, swarm::SwarmEvent};

fn swarm(cfg: &Config) -> Swarm<ping::Behaviour> {
    let kp = Keypair::generate_ed25519();
    Swarm::new(
        build_transport(&kp, cfg).unwrap(),
        ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(50))),
        kp.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(10)),
    )
}

async fn ping_over(listen: &str, cfg: Config) {
    let mut a = swarm(&cfg);
    let mut b = swarm(&cfg);
    a.listen_on(listen.parse().unwrap()).unwrap();
    let addr: Multiaddr = loop {
        if let Some(SwarmEvent::NewListenAddr { address, .. }) = a.next().await {
            break address;
        }
    };
    let a_id = *a.local_peer_id();
    b.dial(addr.clone()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                _ = a.next() => {}
                ev = b.next() => if let Some(SwarmEvent::Behaviour(ping::Event { peer, result: Ok(rtt), .. })) = ev {
                    return (peer, rtt);
                },
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ping over {addr}"));
    assert_eq!(result.0, a_id, "the remote peer id is the listener's key");
}

#[tokio::test]
async fn tcp_noise_yamux_carries_ping() {
    ping_over("/ip4/127.0.0.1/tcp/0", Config::default()).await;
}

#[tokio::test]
async fn quic_carries_ping() {
    ping_over("/ip4/127.0.0.1/udp/0/quic-v1", Config::default()).await;
}

#[tokio::test]
async fn memory_transport_carries_ping() {
    let cfg = Config {
        tcp: false,
        quic: false,
        memory: true,
        ..Config::default()
    };
    ping_over("/memory/0", cfg).await;
}
