//! Check, verify and repair on a real loopback grid of ten nodes (3-of-10, happy 7): shares
//! deleted from servers' stores are counted missing and regenerated from the verify cap alone
//! on a node that never saw the read cap; a flipped byte in a block is found by `verify` and
//! the share replaced on another server; and the automatic repairer restores a damaged upload
//! with no command.

use std::{collections::BTreeSet, time::Duration};

use kith_node::{
    NodeHandle,
    caps::{ChkReadCap, ReadCap},
    checker::{CheckOptions, CheckReport, CheckTarget},
    client::PutOptions,
};
use kith_tests::{Encoding, Grid, Listen, random_bytes, until};

async fn put(node: &NodeHandle, data: &[u8]) -> ChkReadCap {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, data).unwrap();
    let opts = PutOptions {
        params: node.config().encoding,
        convergent: true,
        key: None,
    };
    let res = node.put_file(&path, &opts, &|_| {}).await.unwrap();
    match res.cap.parse::<ReadCap>().unwrap() {
        ReadCap::Chk(c) => c,
        ReadCap::Lit(_) => panic!("expected a CHK cap"),
    }
}

/// Downloads `cap`; only `bad_server` (if any) may be reported for bad data.
async fn get(node: &NodeHandle, cap: &ChkReadCap, bad_server: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let report = node
        .get(&ReadCap::Chk(cap.clone()), &mut out)
        .await
        .unwrap();
    assert!(
        report
            .bad_shares
            .iter()
            .all(|b| Some(b.server.as_str()) == bad_server),
        "{:?}",
        report.bad_shares
    );
    out
}

async fn check(node: &NodeHandle, target: CheckTarget, verify: bool, repair: bool) -> CheckReport {
    tokio::time::timeout(
        Duration::from_secs(120),
        node.check(&target, CheckOptions { verify, repair }),
    )
    .await
    .expect("check took over 2 minutes")
    .unwrap()
}

/// Deletes `count` shares of `si` through the servers' stores (row, leases, file): the servers
/// genuinely lack them afterwards. Returns the (node, share) pairs deleted.
fn delete_shares(grid: &Grid, si: &[u8; 16], count: usize) -> Vec<(usize, u8)> {
    let mut gone = Vec::new();
    for (i, h) in grid.handles().iter().enumerate() {
        let store = h.server().store().unwrap();
        for sh in store.list(si).unwrap() {
            if gone.len() < count {
                assert!(store.remove_share(si, sh).unwrap());
                assert!(!store.list(si).unwrap().contains(&sh));
                gone.push((i, sh));
            }
        }
    }
    assert_eq!(gone.len(), count);
    gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verify_repair_and_the_automatic_repairer_on_ten_nodes() {
    let enc = Encoding {
        needed: 3,
        happy: 7,
        total: 10,
    };
    // Only node 0 runs the automatic repairer, every 300 ms; it repairs only its own uploads.
    let grid = Grid::start_with(10, Listen::Tcp, enc, |i, raw| {
        raw.repair.enabled = i == 0;
        raw.repair.interval = "300ms".into();
        raw.repair.pause = "0s".into();
    })
    .await
    .expect("grid");

    // --- Check, and repair from the verify cap alone. ---
    let data = random_bytes((3 << 20) + 1234, 70);
    let cap = put(&grid.node(1), &data).await;
    let si = cap.storage_index();
    let read_target = CheckTarget::from(&ReadCap::Chk(cap.clone()));
    let r = check(&grid.node(1), read_target.clone(), false, false).await;
    assert!(r.healthy, "{r:?}");
    assert_eq!((r.good_shares, r.happiness, r.happy), (10, 10, 7));
    assert_eq!(
        r.summary(),
        "healthy: 10/10 shares on 10 servers (happy 10 >= 7)"
    );

    let gone = delete_shares(&grid, &si, 5);
    let r = check(&grid.node(1), read_target.clone(), false, false).await;
    assert!(!r.healthy);
    assert_eq!((r.good_shares, r.happiness), (5, 5), "{r:?}");
    assert!(r.corrupt.is_empty(), "{:?}", r.corrupt);
    assert!(
        r.summary()
            .starts_with("unhealthy: 5/10 shares on 5 servers (happy 5 < 7)")
    );

    // Node 7 gets only the verify cap (text form, as a user would pass it).
    let verify_text = cap.verify_cap().to_string();
    assert!(verify_text.starts_with("kith:chk-verify:"));
    let target: CheckTarget = verify_text.parse().unwrap();
    let started = std::time::Instant::now();
    let r = check(&grid.node(7), target, false, true).await;
    let took = started.elapsed();
    let rep = r.repair.clone().expect("repair report");
    eprintln!(
        "repair of a {} byte file (5 of 10 shares regenerated from the verify cap): {took:?} \
         ({} ms inside the repair)",
        data.len(),
        rep.elapsed_ms
    );
    assert!(rep.attempted && rep.successful, "{rep:?}");
    assert_eq!(rep.shares_placed.len(), 5, "{rep:?}");
    assert_eq!(rep.servers, 5, "{rep:?}");
    let placed: BTreeSet<u8> = rep.shares_placed.keys().copied().collect();
    let deleted: BTreeSet<u8> = gone.iter().map(|(_, sh)| *sh).collect();
    assert_eq!(placed, deleted);
    assert_eq!((rep.good_shares_after, rep.happiness_after), (10, 10));
    assert!(rep.healthy_after && r.healthy_now());
    assert!(
        r.summary()
            .contains("repaired: placed 5 shares on 5 servers"),
        "{}",
        r.summary()
    );
    // The repairing node owns the leases on what it placed and added one on what was there.
    let node7 = grid.node(7).peer_id().to_bytes();
    for h in grid.handles() {
        let store = h.server().store().unwrap();
        for sh in store.list(&si).unwrap() {
            assert!(
                store.leases(&si, sh).unwrap().contains_key(&node7),
                "share {sh} on {} has no lease of the repairer",
                h.config().nickname
            );
        }
    }
    // A fresh check agrees, and the file downloads byte-identical.
    let r = check(&grid.node(1), read_target, true, false).await;
    assert!(r.healthy && r.corrupt.is_empty(), "{r:?}");
    assert_eq!((r.good_shares, r.happiness), (10, 10));
    assert!(
        get(&grid.node(8), &cap, None).await == data,
        "bytes differ after repair"
    );

    // --- Verify finds a flipped byte in a block; repair replaces the share elsewhere. ---
    let data_b = random_bytes((2 << 20) + 99, 71);
    let cap_b = put(&grid.node(1), &data_b).await;
    let si_b = cap_b.storage_index();
    let (bad_node, bad_sh) = (4usize, {
        let store = grid.node(4).server().store().unwrap().clone();
        store.list(&si_b).unwrap()[0]
    });
    {
        let store = grid.node(bad_node).server().store().unwrap().clone();
        let path = store.share_path(&si_b, bad_sh);
        let mut bytes = std::fs::read(&path).unwrap();
        // Segment 1's block starts at one block size (ceil(1 MiB / 3)) into the data.
        let at = kith_node::storage::DATA_OFFSET as usize + (1usize << 20).div_ceil(3) + 10;
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    }
    let target_b = CheckTarget::from(&ReadCap::Chk(cap_b.clone()));
    // A plain check only reads metadata: it cannot see the bad block.
    let r = check(&grid.node(1), target_b.clone(), false, false).await;
    assert!(r.healthy && r.corrupt.is_empty(), "{r:?}");
    let r = check(&grid.node(1), target_b.clone(), true, false).await;
    assert!(!r.healthy && r.verified);
    assert_eq!(r.good_shares, 9);
    assert_eq!(r.corrupt.len(), 1, "{:?}", r.corrupt);
    let c = &r.corrupt[0];
    let bad_peer = grid.node(bad_node).peer_id().to_string();
    assert_eq!(
        (c.server.as_str(), c.shnum, c.segment),
        (bad_peer.as_str(), bad_sh, Some(1))
    );
    assert!(c.reason.contains("corrupt"), "{}", c.reason);
    let r = check(&grid.node(1), target_b.clone(), true, true).await;
    let rep = r.repair.clone().unwrap();
    assert!(rep.successful, "{rep:?}");
    assert_eq!(rep.shares_placed.len(), 1, "{rep:?}");
    let new_home = rep
        .shares_placed
        .get(&bad_sh)
        .expect("the corrupt share was replaced");
    assert_ne!(
        *new_home, bad_peer,
        "placed back on the server with the corrupt copy"
    );
    assert!(
        !rep.notes.is_empty(),
        "the corrupt copy left in place is not mentioned"
    );
    // Verified again: ten good shares; the corrupt copy is still on its server, and named.
    let r = check(&grid.node(1), target_b, true, false).await;
    assert!(r.healthy && r.good_shares == 10, "{r:?}");
    assert_eq!(r.corrupt.len(), 1);
    assert!(
        get(&grid.node(9), &cap_b, Some(&bad_peer)).await == data_b,
        "bytes differ"
    );

    // --- The automatic repairer restores a damaged upload of node 0 with no command. ---
    let repairer = grid.node(0).repairer().clone();
    let data_c = random_bytes((1 << 20) + 4321, 72);
    let cap_c = put(&grid.node(0), &data_c).await;
    let si_c = cap_c.storage_index();
    // Let it see the healthy file once, then damage it.
    until(
        "the repairer checks the new upload",
        Duration::from_secs(60),
        async || repairer.status().total.files_checked >= 1,
    )
    .await;
    let before = repairer.status().total;
    assert_eq!(
        (before.unhealthy, before.repaired, before.failed),
        (0, 0, 0)
    );
    // Damaged while no pass runs: a pass between two deletions would repair a half-damaged
    // file and count the second loss as a failed repair.
    let hold = repairer.hold().await;
    delete_shares(&grid, &si_c, 5);
    drop(hold);
    until(
        "the repairer repairs the damaged upload",
        Duration::from_secs(90),
        async || repairer.status().total.repaired >= 1,
    )
    .await;
    let after = repairer.status();
    assert_eq!(after.total.unhealthy, 1, "{after:?}");
    assert_eq!(after.total.failed, 0, "{after:?}");
    assert!(after.enabled && after.passes >= 1 && after.last_pass_started.is_some());
    // The same counters are in the node's status JSON and its metrics.
    let status = serde_json::to_value(grid.node(0).status().await).unwrap();
    assert!(
        status["repair"]["total"]["repaired"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        grid.node(0)
            .metrics()
            .await
            .contains("kith_repair_repaired_total 1")
    );
    let r = check(
        &grid.node(2),
        CheckTarget::from(&ReadCap::Chk(cap_c.clone())),
        false,
        false,
    )
    .await;
    assert!(r.healthy && r.good_shares == 10, "{r:?}");
    assert!(
        get(&grid.node(3), &cap_c, None).await == data_c,
        "bytes differ"
    );
    // The other nodes' repairers are off and said so.
    assert!(!grid.node(5).repairer().status().enabled);

    // LIT caps are always healthy.
    let lit: CheckTarget = "kith:lit:nbswy3dp".parse().unwrap();
    let r = check(&grid.node(1), lit, true, true).await;
    assert!(r.healthy && r.healthy_now() && r.kind == "lit");
}

/// The automatic repairer walks the aliases' trees: a directory, a mutable file and an
/// immutable file in it (uploaded by another node) each lose shares and come back to all n
/// shares with no command; the mutable ones keep their version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repairer_walks_alias_trees_and_repairs_mutable_and_immutable_files() {
    use kith_node::{
        caps::Cap,
        fs::{self, Target},
        slot,
    };
    let enc = Encoding {
        needed: 2,
        happy: 4,
        total: 5,
    };
    let grid = Grid::start_with(5, Listen::Tcp, enc, |i, raw| {
        raw.repair.enabled = i == 0;
        raw.repair.interval = "300ms".into();
        raw.repair.pause = "0s".into();
    })
    .await
    .expect("grid");
    let (a, b) = (grid.node(0), grid.node(1));
    // Node 0's alias names a directory; node 1 (not the repairer) fills it.
    let home = fs::empty_dir(&a).await.unwrap();
    kith_node::aliases::add(a.database(), "home", &Cap::Ssk(home.clone()), false).unwrap();
    let root = |p: &[&str]| Target {
        root: Cap::Ssk(home.clone()),
        root_name: "home:".into(),
        path: p.iter().map(|s| (*s).to_owned()).collect(),
    };
    // Filled while no pass runs: a pass that met the directory between two servers' copies of
    // a new version would count an honest concurrent write as a failed repair.
    let repairer = a.repairer().clone();
    let hold = repairer.hold().await;
    let todo = b"a mutable todo list, long enough to be erasure coded".to_vec();
    let (todo_cap, _) = fs::put_mutable(&b, Some(&root(&["todo.md"])), todo.clone())
        .await
        .unwrap();
    let data = random_bytes(300_000, 80);
    let file = put(&b, &data).await;
    fs::link(
        &b,
        &root(&["data.bin"]),
        &Cap::Read(ReadCap::Chk(file.clone())),
        None,
        false,
    )
    .await
    .unwrap();
    let Cap::Ssk(todo_slot) = todo_cap else {
        panic!("not a slot")
    };
    let version = slot::map(&a, &todo_slot).await.best().unwrap();
    let checked = repairer.status().total.files_checked;
    drop(hold);
    until(
        "a pass over the tree",
        Duration::from_secs(60),
        async || repairer.status().total.files_checked >= checked + 3,
    )
    .await;
    assert_eq!(
        repairer.status().total.unhealthy,
        0,
        "{:?}",
        repairer.status()
    );

    // Damage all three: 2 of 5 shares each (k = 2 remain recoverable... and more), with no
    // pass running meanwhile.
    let hold = repairer.hold().await;
    for si in [
        home.storage_index(),
        todo_slot.storage_index(),
        file.storage_index(),
    ] {
        delete_shares(&grid, &si, 2);
    }
    assert!(!slot::check(&grid.node(3), &todo_slot, false).await.healthy);
    drop(hold);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while repairer.status().total.repaired < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repairer did not repair all three in 90 s: {:?}",
            repairer.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = repairer.status();
    assert_eq!((st.total.unhealthy, st.total.failed), (3, 0), "{st:?}");
    // Each is whole again; the mutable ones at the same version, the content unchanged.
    for s in [&home, &todo_slot] {
        let c = slot::check(&grid.node(3), s, false).await;
        assert!(c.healthy && c.good_shares == 5, "{c:?}");
    }
    assert_eq!(slot::map(&a, &todo_slot).await.best(), Some(version));
    assert_eq!(slot::read(&grid.node(4), &todo_slot).await.unwrap().0, todo);
    let r = check(
        &grid.node(2),
        CheckTarget::from(&ReadCap::Chk(file.clone())),
        false,
        false,
    )
    .await;
    assert!(r.healthy && r.good_shares == 5, "{r:?}");
    assert!(
        get(&grid.node(3), &file, None).await == data,
        "bytes differ"
    );
}
