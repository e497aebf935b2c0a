//! Grids formed by invitation, discovery by gossip, restarts, rejections and expulsion, with real
//! nodes on loopback.

use std::time::Duration;

use kith_gossip::{Certificate, GridItem, Kind, Message, NodeRecord, Reject, Signer};
use kith_node::{
    NodeHandle,
    grid::{GridError, JoinRefusal, pk_of},
    protocol::{ErrorKind, Request, Response},
};
use kith_tests::{Encoding, Grid, Listen, random_bytes};

const BOUND: Duration = Duration::from_secs(20);

async fn until(what: &str, cond: impl AsyncFnMut() -> bool) {
    kith_tests::until(what, BOUND, cond).await;
}

/// `h` joins with `code`, within [`BOUND`].
async fn join_in_time(h: &NodeHandle, code: &str) -> Result<usize, GridError> {
    tokio::time::timeout(BOUND, h.join(code))
        .await
        .expect("the join to finish")
}

async fn put_get(from: &NodeHandle, to: &NodeHandle, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let data = random_bytes(300_000, seed);
    std::fs::write(&file, &data).unwrap();
    let opts = kith_node::client::PutOptions {
        params: from.config().encoding,
        convergent: true,
        key: None,
    };
    let put = from.put_file(&file, &opts, &|_| {}).await.expect("put");
    let cap: kith_node::caps::ReadCap = put.cap.parse().unwrap();
    let mut out = Vec::new();
    to.get(&cap, &mut out).await.expect("get");
    assert!(out == data, "downloaded bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_join_by_invitation_chains_and_survive_restarts() {
    let enc = Encoding {
        needed: 3,
        happy: 5,
        total: 8,
    };
    let mut grid = Grid::start(20, Listen::Tcp, enc).await.expect("grid");
    // Every node lists all 20 (Grid::start waited for that); not all were invited by the founder.
    let founder = grid.node(0).peer_id().to_string();
    let info = grid.node(0).grid_info().await;
    assert_eq!(info.members.len(), 20);
    assert!(info.founder);
    let by_others = info
        .members
        .iter()
        .filter(|m| m.invited_by.as_deref().is_some_and(|p| p != founder))
        .count();
    assert_eq!(by_others, 17, "nodes 3..19 were invited by non-founders");
    for h in grid.handles() {
        let i = h.grid_info().await;
        assert_eq!(i.members.len(), 20, "{}", h.config().nickname);
        assert_eq!(i.grid, founder);
        assert!(i.members.iter().all(|m| m.roles == vec!["storage"]));
    }
    // A node not invited by the founder stores, a node far away in the chain reads.
    put_get(&grid.node(19), &grid.node(7), 1).await;

    // Restart half the grid: nobody types an address again.
    for i in 10..20 {
        grid.stop(i).await.unwrap();
    }
    for i in 10..20 {
        grid.restart(i).await.unwrap();
    }
    grid.wait_converged(BOUND).await.unwrap();
    // Restarted nodes listen on new ports: every node ends up with every member's current
    // addresses, and every restarted node is connected to members again.
    let handles = grid.handles();
    until(
        "every node to learn the restarted nodes' new addresses",
        async || {
            for h in &handles {
                let info = h.grid_info().await;
                for other in &handles {
                    let now: Vec<String> = other
                        .net()
                        .listen_addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    let pid = other.peer_id().to_string();
                    let Some(m) = info.members.iter().find(|m| m.peer_id == pid) else {
                        return false;
                    };
                    // Records carry the listen addresses (after any confirmed external or
                    // relayed ones the reachability policy found).
                    if !now.iter().all(|a| m.addrs.contains(a)) {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;
    for i in 10..20 {
        let h = grid.node(i);
        until(&format!("node{i} to reconnect"), async || {
            !h.net().peers.is_empty()
        })
        .await;
    }
    put_get(&grid.node(12), &grid.node(3), 2).await;
    put_get(&grid.node(4), &grid.node(15), 3).await;
}

/// An invitation whose addresses mostly lead to other nodes (on one host a port the inviter
/// once used is soon another process's) still joins: libp2p fails a whole dial when one of its
/// concurrent attempts reaches the wrong peer, so each such address is forgotten and the join
/// tried again with the rest. An invitation with only such addresses fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_skips_invitation_addresses_that_reach_other_nodes() {
    let enc = Encoding {
        needed: 2,
        happy: 2,
        total: 3,
    };
    let grid = Grid::start_unjoined(6, Listen::Tcp, enc)
        .await
        .expect("grid");
    let inviter = grid.node(1);
    let as_inviter = |h: &NodeHandle| -> Vec<libp2p::Multiaddr> {
        h.net()
            .listen_addrs
            .iter()
            .map(|a| kith_transports::with_peer_id(a, inviter.peer_id()))
            .collect()
    };
    let stale: Vec<libp2p::Multiaddr> = (2..6).flat_map(|i| as_inviter(&grid.node(i))).collect();
    assert_eq!(stale.len(), 4);
    let invite = |addrs: Vec<libp2p::Multiaddr>| {
        let g = inviter.grid().clone();
        async move {
            g.invite(Duration::from_secs(600), 1, addrs, (2, 2, 3))
                .await
                .expect("invite")
                .code
        }
    };

    // Four of five addresses lead to other nodes; the good one is listed last.
    let mut addrs = stale.clone();
    addrs.extend(as_inviter(&inviter));
    let code = invite(addrs).await;
    join_in_time(&grid.node(0), &code)
        .await
        .expect("the join to succeed past the wrong addresses");
    grid.node(0)
        .wait_for_members(2, BOUND)
        .await
        .expect("node0 a member");

    // Only wrong addresses: a clear error, not a hang.
    let code = invite(stale[..3].to_vec()).await;
    let err = join_in_time(&grid.node(5), &code)
        .await
        .expect_err("no address of the inviter");
    assert!(
        err.to_string().contains("Unexpected peer ID"),
        "unclear error: {err}"
    );
    assert_eq!(grid.node(5).grid_info().await.members.len(), 1);

    // A request to a peer nobody knows an address of says so.
    let err = grid
        .node(5)
        .rpc(libp2p::PeerId::random(), Request::AddLease { si: [0; 16] })
        .await
        .expect_err("nowhere to send it");
    assert!(
        err.to_string().contains("no known address"),
        "unclear error: {err}"
    );
}

/// A node configured with a TCP port another node on the machine already listens on does not
/// share it (libp2p's listener sets `SO_REUSEPORT`, and the kernel would hand each incoming
/// connection to either node): it listens on a free port for the run, and a join dialing the
/// first node's port reaches the first node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_share_a_tcp_port_with_another_node() {
    let enc = Encoding {
        needed: 1,
        happy: 1,
        total: 2,
    };
    let first = Grid::start_unjoined(1, Listen::Tcp, enc)
        .await
        .expect("first node");
    let held = first.node(0).net().listen_addrs.clone();
    assert_eq!(held.len(), 1, "{held:?}");
    let port_of = |a: &libp2p::Multiaddr| {
        a.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
    };
    let taken = held[0].to_string();
    let second = Grid::start_with(1, Listen::Tcp, enc, |_, raw| {
        raw.network.listen = vec![taken.clone()];
    })
    .await
    .expect("second node starts all the same");
    let b = second.node(0);
    let theirs = b.net().listen_addrs.clone();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_ne!(
        port_of(&theirs[0]),
        port_of(&held[0]),
        "the second node shares the first one's port"
    );
    // Dialing the first node's port reaches the first node, every time.
    let code = first
        .node(0)
        .invite(Duration::from_secs(600), 1)
        .await
        .expect("invite")
        .code;
    join_in_time(&b, &code)
        .await
        .expect("the join to reach the first node");
    b.wait_for_members(2, BOUND).await.expect("two members");
    first
        .node(0)
        .wait_for_members(2, BOUND)
        .await
        .expect("two members");
}

fn signer_of(h: &NodeHandle) -> Signer {
    h.grid().signer()
}

fn record_of(h: &NodeHandle, of: &NodeHandle) -> (Vec<u8>, NodeRecord) {
    let s = h.grid().state();
    let pk = pk_of(&of.peer_id()).unwrap();
    let key = kith_gossip::ItemKey {
        kind: Kind::Record as u8,
        id: pk,
    };
    let bytes = s.registry().get(&key).expect("record").to_vec();
    (bytes, s.registry().record(&pk).unwrap().clone())
}

async fn rejected(h: &NodeHandle, r: Reject) -> u64 {
    h.grid_info()
        .await
        .gossip
        .rejected
        .get(&r)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_broken_replayed_records_and_bad_invitations_are_rejected_and_counted() {
    let enc = Encoding {
        needed: 1,
        happy: 1,
        total: 2,
    };
    let grid = Grid::start_unjoined(5, Listen::Tcp, enc).await.unwrap();
    grid.join(1, 0).await.unwrap();
    grid.join(2, 1).await.unwrap();
    for i in 0..3 {
        grid.node(i).wait_for_members(3, BOUND).await.unwrap();
    }
    let (a, b, c) = (grid.node(0), grid.node(1), grid.node(2));

    // Forged: B signs a record in C's name.
    let (_, c_rec) = record_of(&a, &c);
    let mut body = c_rec.body.clone();
    body.seq += 1000;
    body.nickname = "not-carol".into();
    let forged = GridItem::Record(NodeRecord::sign(&signer_of(&b), body)).encode();
    let before = rejected(&a, Reject::BadSignature).await;
    b.grid().send_raw(
        a.peer_id(),
        &Message::Push {
            item: forged.into(),
            round: 0,
        },
    );
    until("the forged record to be counted", async || {
        rejected(&a, Reject::BadSignature).await > before
    })
    .await;

    // Broken chain: a key that certifies itself.
    let mallory = Signer::from_seed(&[66; 32]);
    let grid_id = c_rec.body.grid;
    let mut body = c_rec.body.clone();
    body.peer = mallory.public();
    body.chain = vec![Certificate::issue(&mallory, grid_id, mallory.public(), 1)];
    let broken = GridItem::Record(NodeRecord::sign(&mallory, body)).encode();
    let before = rejected(&a, Reject::BrokenChain).await;
    b.grid().send_raw(
        a.peer_id(),
        &Message::Push {
            item: broken.into(),
            round: 0,
        },
    );
    until("the broken chain to be counted", async || {
        rejected(&a, Reject::BrokenChain).await > before
    })
    .await;

    // Replayed: C's current record, after C published a newer one.
    let (old, old_rec) = record_of(&a, &c);
    c.grid().refresh_record().await.unwrap();
    until("C's new record to reach A", async || {
        record_of(&a, &c).1.body.seq > old_rec.body.seq
    })
    .await;
    let before = rejected(&a, Reject::Replayed).await;
    b.grid().send_raw(
        a.peer_id(),
        &Message::Push {
            item: old.into(),
            round: 0,
        },
    );
    until("the replay to be counted", async || {
        rejected(&a, Reject::Replayed).await > before
    })
    .await;
    assert_eq!(record_of(&a, &c).1.body.nickname, "node2");
    assert!(
        !a.grid_info()
            .await
            .members
            .iter()
            .any(|m| m.nickname == "not-carol")
    );

    // Non-members' messages are dropped and counted: node 4 is in no grid of A's.
    let outsider = grid.node(4);
    let before = a.grid_info().await.gossip.non_member;
    outsider
        .add_peer(kith_node::config::StaticPeer {
            peer: a.peer_id(),
            addr: a.net().listen_addrs[0].clone(),
        })
        .await
        .unwrap();
    outsider.grid().send_raw(a.peer_id(), &Message::Prune);
    until("the outsider's message to be counted", async || {
        a.grid_info().await.gossip.non_member > before
    })
    .await;

    // Invitations: a used code, an expired one and a forged one are refused with the reason
    // counted at the inviter; the joiner gets a clear error.
    let code = a.invite(Duration::from_secs(600), 1).await.unwrap().code;
    grid.node(3).join(&code).await.expect("first use");
    let err = outsider.join(&code).await.unwrap_err();
    assert!(
        matches!(err, GridError::Refused(JoinRefusal::Used)),
        "{err}"
    );
    assert!(err.to_string().contains("already used"), "{err}");
    let expired = a.invite(Duration::ZERO, 1).await.unwrap().code;
    let err = outsider.join(&expired).await.unwrap_err();
    assert!(
        matches!(err, GridError::Refused(JoinRefusal::Expired)),
        "{err}"
    );
    let mut inv = kith_gossip::Invitation::decode(&code).unwrap();
    inv.secret = [1; 16];
    let err = outsider.join(&inv.encode()).await.unwrap_err();
    assert!(
        matches!(err, GridError::Refused(JoinRefusal::Unknown)),
        "{err}"
    );
    let refused = a.grid_info().await.join_refused;
    assert_eq!(refused.get(&JoinRefusal::Used), Some(&1));
    assert_eq!(refused.get(&JoinRefusal::Expired), Some(&1));
    assert_eq!(refused.get(&JoinRefusal::Unknown), Some(&1));
    // An inviter that cannot be reached: the error says why the dial failed, not only that it
    // did (a port nobody listens on refuses the connection).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut gone = kith_gossip::Invitation::decode(&code).unwrap();
    gone.inviter = libp2p::identity::Keypair::generate_ed25519()
        .try_into_ed25519()
        .unwrap()
        .public()
        .to_bytes();
    gone.addrs = vec![serde_bytes::ByteBuf::from(
        format!("/ip4/127.0.0.1/tcp/{port}")
            .parse::<libp2p::Multiaddr>()
            .unwrap()
            .to_vec(),
    )];
    let err = outsider.join(&gone.encode()).await.unwrap_err();
    assert!(matches!(err, GridError::Join(_)), "{err}");
    assert!(
        err.to_string().contains("Failed to dial") && err.to_string().contains("refused"),
        "{err}"
    );
    // A damaged code never leaves the joiner's machine.
    let err = outsider.join(&code[..code.len() - 3]).await.unwrap_err();
    assert!(matches!(err, GridError::Code(_)), "{err}");
    assert!(!outsider.grid().is_member(&a.peer_id()));
    // The outsider is refused writes at A.
    let r = outsider
        .rpc(
            a.peer_id(),
            Request::Allocate {
                si: [9; 16],
                shnums: vec![0],
                data_len: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Error(ref e) if e.kind == ErrorKind::NoGrant),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expelled_member_is_dropped_everywhere_and_refused_storage() {
    let enc = Encoding {
        needed: 2,
        happy: 3,
        total: 4,
    };
    let grid = Grid::start(6, Listen::Tcp, enc).await.unwrap();
    let founder = grid.node(0);
    let bad = grid.node(5);
    let bad_id = bad.peer_id();
    // Node 5 was invited by node 2: node 1 (neither founder nor inviter) may not expel it.
    let err = grid.node(1).expel(bad_id).await.unwrap_err();
    assert!(matches!(err, GridError::NotAllowed(_)), "{err}");
    founder.expel(bad_id).await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..5 {
        let h = grid.node(i);
        until("every member to drop the expelled node", async || {
            let info = h.grid_info().await;
            !info.members.iter().any(|m| m.peer_id == bad_id.to_string())
                && info.expelled.contains(&bad_id.to_string())
        })
        .await;
        assert!(!h.storage_servers().contains(&bad_id));
    }
    eprintln!("expulsion reached 5 nodes in {:?}", started.elapsed());
    for i in 0..5 {
        let r = bad
            .rpc(
                grid.node(i).peer_id(),
                Request::Allocate {
                    si: [7; 16],
                    shnums: vec![0],
                    data_len: 10,
                },
            )
            .await;
        assert!(
            matches!(r, Ok(Response::Error(ref e)) if e.kind == ErrorKind::NoGrant),
            "node{i} answered {r:?}"
        );
    }
    // The rest of the grid still works.
    put_get(&grid.node(3), &grid.node(1), 4).await;
}
