//! kith's AutoNAT v2 client against libp2p's own server, both real swarms on loopback TCP:
//! the wire format is the same, a reachable address is confirmed (with the dial-back's nonce
//! checked), an unreachable one is reported so and left waiting for its retest, not failed
//! for good.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use kith_nat::autonat::{self, Outcome, schedule::Status};
use libp2p::{
    Multiaddr, Swarm, SwarmBuilder, autonat as lp_autonat, identify, noise,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};

#[derive(NetworkBehaviour)]
struct Client {
    identify: identify::Behaviour,
    autonat: autonat::Behaviour,
    candidates: kith_nat::candidates::Behaviour,
}

#[derive(NetworkBehaviour)]
struct Server {
    identify: identify::Behaviour,
    autonat: lp_autonat::v2::server::Behaviour,
}

/// A swarm on loopback TCP (Noise, Yamux) around the behaviour `make` builds.
fn swarm<B: NetworkBehaviour>(make: impl FnOnce(&libp2p::identity::Keypair) -> B) -> Swarm<B> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|k| make(k))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn identify(k: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new("/kith-test/1".into(), k.public()))
}

fn client() -> Swarm<Client> {
    swarm(|k| Client {
        identify: identify(k),
        autonat: autonat::Behaviour::new(Duration::from_millis(200)),
        candidates: kith_nat::candidates::Behaviour::default(),
    })
}

fn server() -> Swarm<Server> {
    swarm(|k| Server {
        identify: identify(k),
        autonat: lp_autonat::v2::server::Behaviour::default(),
    })
}

async fn listen<B: NetworkBehaviour>(s: &mut Swarm<B>) -> Multiaddr {
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
            return address;
        }
    }
}

/// Runs both swarms until the client's events satisfy `done` (or 30 s pass: a failure).
async fn drive(
    c: &mut Swarm<Client>,
    s: &mut Swarm<Server>,
    mut done: impl FnMut(&SwarmEvent<ClientEvent>) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                e = c.select_next_some() => if done(&e) { return },
                _ = s.select_next_some() => {}
            }
        }
    })
    .await
    .expect("the client's expected event within 30 s");
}

#[tokio::test]
async fn a_reachable_address_is_confirmed_by_libp2ps_server() {
    let (mut c, mut s) = (client(), server());
    let mine = listen(&mut c).await;
    let theirs = listen(&mut s).await;
    c.behaviour_mut().candidates.add(mine.clone());
    c.dial(theirs).unwrap();
    let mut tested = None;
    drive(&mut c, &mut s, |e| match e {
        SwarmEvent::Behaviour(ClientEvent::Autonat(ev)) => {
            tested = Some(ev.clone());
            false
        }
        SwarmEvent::ExternalAddrConfirmed { address } => *address == mine,
        _ => false,
    })
    .await;
    let ev = tested.expect("a test event before the confirmation");
    assert_eq!(ev.outcome, Outcome::Reachable);
    assert_eq!(ev.tested_addr, mine);
    assert!(c.external_addresses().any(|a| *a == mine));
}

#[tokio::test]
async fn an_unreachable_address_is_reported_and_waits_for_its_retest() {
    let (mut c, mut s) = (client(), server());
    let _ = listen(&mut c).await;
    let theirs = listen(&mut s).await;
    // A port nobody listens on: the server's dial is refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("/ip4/127.0.0.1/tcp/{port}")
            .parse::<Multiaddr>()
            .unwrap()
    };
    c.behaviour_mut().candidates.add(closed.clone());
    c.dial(theirs).unwrap();
    let mut outcome = None;
    drive(&mut c, &mut s, |e| match e {
        SwarmEvent::Behaviour(ClientEvent::Autonat(ev)) if ev.tested_addr == closed => {
            outcome = Some(ev.outcome);
            true
        }
        _ => false,
    })
    .await;
    assert_eq!(outcome, Some(Outcome::Unreachable));
    assert!(!c.external_addresses().any(|a| *a == closed));
    assert!(
        matches!(
            c.behaviour().autonat.status(&closed),
            Some(Status::Waiting { .. })
        ),
        "waiting for a retest, not failed for good: {:?}",
        c.behaviour().autonat.status(&closed)
    );
}
