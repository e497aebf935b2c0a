//! Share store tests, including a real SIGKILL crash test.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;

fn open(dir: &Path, capacity: u64, reserved: u64) -> ShareStore {
    open_with(dir, capacity, reserved, true)
}

fn open_with(dir: &Path, capacity: u64, reserved: u64, direct_io: bool) -> ShareStore {
    let db = Arc::new(redb::Database::create(dir.join("node.redb")).unwrap());
    ShareStore::open(
        db,
        StoreConfig {
            root: dir.join("storage"),
            capacity,
            reserved,
            read_only: false,
            direct_io,
        },
    )
    .unwrap()
}

fn si(n: u8) -> [u8; 16] {
    [n; 16]
}

fn pattern(si: &[u8; 16], shnum: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            si[0]
                .wrapping_mul(31)
                .wrapping_add(shnum)
                .wrapping_add(i as u8)
        })
        .collect()
}

fn put(store: &ShareStore, s: &[u8; 16], shnum: u8, owner: &[u8], len: usize) {
    let a = store.allocate(s, owner, &[shnum], len as u64, 100).unwrap();
    assert_eq!(a.allocated, vec![shnum]);
    let data = pattern(s, shnum, len);
    for (i, chunk) in data.chunks(1000).enumerate() {
        store
            .write(s, shnum, owner, (i * 1000) as u64, chunk)
            .unwrap();
    }
    store.close(s, shnum, owner, b"meta").unwrap();
}

#[test]
fn round_trip_leases_and_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    put(&store, &si(1), 0, b"alice", 2500);
    put(&store, &si(1), 3, b"alice", 2500);
    assert_eq!(store.list(&si(1)).unwrap(), vec![0, 3]);
    assert_eq!(
        store.read(&si(1), 0, 10, 100).unwrap(),
        pattern(&si(1), 0, 2500)[10..110]
    );
    assert_eq!(store.read_meta(&si(1), 3).unwrap(), b"meta");
    // A second uploader of the same file only adds a lease.
    let a = store
        .allocate(&si(1), b"bob", &[0, 3, 5], 2500, 200)
        .unwrap();
    assert_eq!(a.already_have, vec![0, 3]);
    assert_eq!(a.allocated, vec![5]);
    assert_eq!(
        store.leases(&si(1), 0).unwrap().get(b"bob".as_slice()),
        Some(&200)
    );
    // Shares being uploaded by someone else are in progress.
    let c = store.allocate(&si(1), b"carol", &[5], 2500, 1).unwrap();
    assert_eq!(c.in_progress, vec![5]);
    assert!(matches!(
        store.write(&si(1), 5, b"carol", 0, b"x"),
        Err(StoreError::NotAllocated { .. })
    ));
    assert!(matches!(
        store.write(&si(1), 5, b"bob", 2500, b"x"),
        Err(StoreError::OutOfBounds { .. })
    ));
    assert!(matches!(
        store.read(&si(1), 0, 2400, 200),
        Err(StoreError::OutOfBounds { .. })
    ));
    assert!(matches!(
        store.read(&si(1), 1, 0, 1),
        Err(StoreError::NotFound { .. })
    ));
    store.abort(&si(1), 5, b"bob").unwrap();
    assert_eq!(store.add_lease(&si(1), b"dave", 50).unwrap(), 2);
    let u = store.usage().unwrap();
    assert_eq!(
        (u.used_bytes, u.share_count, u.in_flight_bytes),
        (2 * 2504, 2, 0)
    );
    assert!(store.verify_consistency().unwrap().is_clean());
}

#[test]
fn capacity_reserve_and_read_only_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 10_000, 0);
    store.allocate(&si(2), b"a", &[0], 6000, 1).unwrap();
    // The in-flight reservation counts.
    assert!(matches!(
        store.allocate(&si(3), b"a", &[0], 6000, 1),
        Err(StoreError::OverCapacity {
            needed: 6000,
            available: 4000
        })
    ));
    store.abort(&si(2), 0, b"a").unwrap();
    store.allocate(&si(3), b"a", &[0], 6000, 1).unwrap();
    drop(store);
    let tmp2 = tempfile::tempdir().unwrap();
    let store = open(tmp2.path(), u64::MAX, u64::MAX / 2);
    assert!(matches!(
        store.allocate(&si(1), b"a", &[0], 10, 1),
        Err(StoreError::DiskReserve { .. })
    ));
    let db = Arc::new(redb::Database::create(tmp2.path().join("ro.redb")).unwrap());
    let ro = ShareStore::open(
        db,
        StoreConfig {
            root: tmp2.path().join("ro"),
            capacity: 1 << 30,
            reserved: 0,
            read_only: true,
            direct_io: true,
        },
    )
    .unwrap();
    assert!(matches!(
        ro.allocate(&si(1), b"a", &[0], 10, 1),
        Err(StoreError::ReadOnly)
    ));
    assert!(matches!(
        ro.allocate(&si(1), b"a", &[0], 0, 1),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[test]
fn reopen_keeps_shares_and_recovers_from_every_crash_point() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    put(&store, &si(1), 0, b"a", 3000);
    put(&store, &si(2), 1, b"a", 3000);
    // (a) an upload in progress when the process died
    store.allocate(&si(3), b"a", &[0], 3000, 1).unwrap();
    store.write(&si(3), 0, b"a", 0, &[1; 100]).unwrap();
    let orphan = store.share_path(&si(4), 2);
    let lost = store.share_path(&si(2), 1);
    drop(store);
    // (b) a share renamed into place whose index transaction never committed
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, b"KITHSHR\0 whatever").unwrap();
    // (c) an indexed share whose file vanished
    fs::remove_file(&lost).unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    let r = store.recovery_report().clone();
    assert_eq!(
        (r.incoming_removed, r.orphan_files_removed, r.rows_removed),
        (1, 1, 1),
        "{r:?}"
    );
    assert!(!orphan.exists());
    assert_eq!(store.list(&si(1)).unwrap(), vec![0]);
    assert!(store.list(&si(2)).unwrap().is_empty());
    let u = store.usage().unwrap();
    assert_eq!((u.used_bytes, u.share_count), (3004, 1));
    assert!(store.verify_consistency().unwrap().is_clean());
}

#[test]
fn corrupt_files_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    put(&store, &si(1), 0, b"a", 3000);
    let p = store.share_path(&si(1), 0);
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        store.read(&si(1), 0, 0, 10),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(!store.verify_consistency().unwrap().is_clean());
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, u16),
    Whole(u8, u8, u16),
    Alloc(u8, u8, u16),
    Abort(u8, u8),
    Lease(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..4, 1u16..3000).prop_map(|(a, b, c)| Op::Put(a, b, c)),
        (0u8..4, 0u8..4, 1u16..3000).prop_map(|(a, b, c)| Op::Alloc(a, b, c)),
        (0u8..4, 0u8..4, prop_oneof![1u16..3000, 16_000u16..17_000])
            .prop_map(|(a, b, c)| Op::Whole(a, b, c)),
        (0u8..4, 0u8..4).prop_map(|(a, b)| Op::Abort(a, b)),
        (0u8..4).prop_map(Op::Lease),
    ]
}

proptest! {
    #![proptest_config(crate::prop::cases(24))]
    #[test]
    fn usage_always_equals_the_stored_shares(ops in proptest::collection::vec(op(), 1..25)) {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 1 << 30, 0);
        let mut model: BTreeMap<([u8; 16], u8), u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(s, sh, len) => {
                    let a = store.allocate(&si(s), b"o", &[sh], u64::from(len), 9).unwrap();
                    if a.allocated == vec![sh] {
                        store.write(&si(s), sh, b"o", 0, &pattern(&si(s), sh, len as usize)).unwrap();
                        store.close(&si(s), sh, b"o", b"mm").unwrap();
                        model.insert((si(s), sh), u64::from(len) + 2);
                    }
                }
                Op::Whole(s, sh, len) => {
                    let data = pattern(&si(s), sh, len as usize);
                    let a = store.put(&si(s), b"w", &[(sh, &data, b"mm")], 9).unwrap();
                    if a.allocated == vec![sh] {
                        model.insert((si(s), sh), u64::from(len) + 2);
                    }
                }
                Op::Alloc(s, sh, len) => { let _ = store.allocate(&si(s), b"x", &[sh], u64::from(len), 9); }
                Op::Abort(s, sh) => { let _ = store.abort(&si(s), sh, b"x"); }
                Op::Lease(s) => { let _ = store.add_lease(&si(s), b"p", 10); }
            }
            let u = store.usage().unwrap();
            prop_assert_eq!(u.used_bytes, model.values().sum::<u64>());
            prop_assert_eq!(u.share_count, model.len() as u64);
        }
        drop(store);
        let store = open(tmp.path(), 1 << 30, 0);
        let u = store.usage().unwrap();
        prop_assert_eq!(u.used_bytes, model.values().sum::<u64>());
        prop_assert!(store.verify_consistency().unwrap().is_clean());
    }
}

/// Child side of the crash test: writes shares forever, printing each closed one.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("KITH_STORE_CRASH_CHILD") else {
        return; // only runs as the crash test's child process
    };
    let store = open(Path::new(&dir), u64::MAX / 4, 0);
    // A fresh range of storage indexes per child process.
    let mut n: u32 = std::process::id().wrapping_mul(100_000);
    loop {
        let s = {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&n.to_le_bytes());
            s
        };
        for sh in 0..3u8 {
            if n.is_multiple_of(2) {
                // Whole small shares, kept inline in the index.
                let len = 1000 + (n as usize % 7) * 100;
                let data = pattern(&s, sh, len);
                let a = store
                    .put(&s, b"child", &[(sh, &data, &n.to_le_bytes())], 9)
                    .unwrap();
                assert_eq!(a.allocated, vec![sh]);
                println!("closed {n} {sh}");
                continue;
            }
            let len = 20_000 + (n as usize % 7) * 1000;
            store.allocate(&s, b"child", &[sh], len as u64, 9).unwrap();
            let data = pattern(&s, sh, len);
            for (i, chunk) in data.chunks(4096).enumerate() {
                store
                    .write(&s, sh, b"child", (i * 4096) as u64, chunk)
                    .unwrap();
            }
            store.close(&s, sh, b"child", &n.to_le_bytes()).unwrap();
            println!("closed {n} {sh}");
        }
        n += 1;
    }
}

#[test]
fn sigkill_at_any_point_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    for (round, wait_for) in [5usize, 40, 120].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "storage::tests::crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KITH_STORE_CRASH_CHILD", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut closed = 0;
        while closed < wait_for {
            assert!(Instant::now() < deadline, "round {round}: child too slow");
            match lines.next() {
                Some(Ok(l)) if l.starts_with("closed") => closed += 1,
                Some(Ok(_)) => {}
                _ => panic!("round {round}: child ended early"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store = open(tmp.path(), u64::MAX / 4, 0);
        let report = store.verify_consistency().unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
        assert!(report.shares_checked as usize >= closed);
        for (s, sh, row) in store.rows().unwrap() {
            let data = store.read(&s, sh, 0, row.data_len as u32).unwrap();
            assert_eq!(
                data,
                pattern(&s, sh, row.data_len as usize),
                "round {round}"
            );
        }
    }
}

#[test]
fn collector_removes_expired_and_revoked_leases_and_unleased_shares_with_their_accounting() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    let peer = || {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    };
    let (alice, bob) = (peer().to_bytes(), peer().to_bytes());
    let later = 4_000_000_000;
    // A: alice only, expired (put() leases until t=100). B: bob only, valid. C: both.
    put(&store, &si(1), 0, &alice, 3000);
    let b = store.allocate(&si(2), &bob, &[0], 2000, later).unwrap();
    assert_eq!(b.allocated, vec![0]);
    store
        .write(&si(2), 0, &bob, 0, &pattern(&si(2), 0, 2000))
        .unwrap();
    store.close(&si(2), 0, &bob, b"meta").unwrap();
    put(&store, &si(3), 1, &alice, 1000);
    store.add_lease(&si(3), &bob, later).unwrap();
    assert!(store.verify_consistency().unwrap().is_clean());

    let now = 1_000_000;
    let run = |gone: &std::collections::BTreeSet<kith_accounting::AccountId>| {
        let mut total = CollectReport::default();
        let mut cursor = None;
        loop {
            // A budget of 1 lease per step exercises the cursor.
            let (r, next) = store.collect_step(now, gone, cursor.take(), 1).unwrap();
            total.add(&r);
            match next {
                Some(n) => cursor = Some(n),
                None => return total,
            }
        }
    };
    let r = run(&Default::default());
    assert_eq!(r.leases_removed, 2, "{r:?}");
    assert_eq!(r.shares_removed, 1, "{r:?}");
    assert!(store.list(&si(1)).unwrap().is_empty());
    assert_eq!(store.list(&si(3)).unwrap(), vec![1], "bob still leases C");
    assert!(!store.share_path(&si(1), 0).exists());
    let report = store.verify_consistency().unwrap();
    assert!(report.is_clean(), "{report:?}");
    let ledger = kith_accounting::store::load(store.database()).unwrap();
    let of = |o: &[u8]| {
        ledger
            .account(&account_of(o).unwrap())
            .map(|a| a.stored().shares)
    };
    assert_eq!(of(&alice), None, "alice's account emptied");
    assert_eq!(of(&bob), Some(2));

    // Bob revoked with his grace over: everything goes.
    let gone = [account_of(&bob).unwrap()].into_iter().collect();
    let r = run(&gone);
    assert_eq!((r.leases_removed, r.shares_removed), (2, 2), "{r:?}");
    assert_eq!(store.usage().unwrap().share_count, 0);
    assert!(store.verify_consistency().unwrap().is_clean());
}

/// A fake encoded mutable share: the header the store peeks at, then filler.
fn slot_share(seq: u64, len: usize) -> Vec<u8> {
    let mut v = b"KMSH\x01".to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v.resize(len.max(13), seq as u8);
    v
}

#[test]
fn slot_writes_are_test_and_set_guarded_by_the_write_enabler_and_keep_accounting_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    let peer = || {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_bytes()
    };
    let (alice, bob) = (peer(), peer());
    let (we, other_we) = ([1u8; 32], [2u8; 32]);
    let w = |shnum, expect, seq, len| SlotWrite {
        shnum,
        expect,
        data: slot_share(seq, len),
    };
    // Creating: expect "absent".
    let r = store
        .slot_write(
            &si(9),
            &alice,
            &we,
            &[w(0, None, 1, 500), w(1, None, 1, 500)],
            4_000_000_000,
        )
        .unwrap();
    assert_eq!(r, SlotOutcome::Written);
    // A stale expectation changes nothing and says what is stored.
    let r = store
        .slot_write(
            &si(9),
            &alice,
            &we,
            &[w(0, Some(1), 2, 700), w(1, None, 2, 700)],
            4_000_000_000,
        )
        .unwrap();
    assert_eq!(r, SlotOutcome::Conflict(vec![(0, Some(1)), (1, Some(1))]));
    let (got, more) = store.slot_read(&si(9), &[], 1 << 20).unwrap();
    assert!(more.is_empty());
    assert_eq!(got, vec![(0, slot_share(1, 500)), (1, slot_share(1, 500))]);
    // Another enabler (someone without the write cap) is refused, whatever it expects.
    let e = store
        .slot_write(
            &si(9),
            &bob,
            &other_we,
            &[w(0, Some(1), 2, 100)],
            4_000_000_000,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::BadWriteEnabler { shnum: 0 }), "{e}");
    // Bob, with the enabler, writes a larger version: both lease holders are charged the new
    // size, and the store's own consistency check agrees.
    store.add_lease(&si(9), &bob, 4_000_000_000).unwrap();
    let r = store
        .slot_write(
            &si(9),
            &bob,
            &we,
            &[w(0, Some(1), 2, 3000), w(1, Some(1), 2, 3000)],
            4_000_000_000,
        )
        .unwrap();
    assert_eq!(r, SlotOutcome::Written);
    let report = store.verify_consistency().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let usage = store.usage().unwrap();
    assert_eq!(usage.share_count, 2);
    assert_eq!(usage.used_bytes, 2 * (3000 + 37));
    // A budget smaller than two shares returns one and names the other.
    let (got, more) = store.slot_read(&si(9), &[], 3500).unwrap();
    assert_eq!((got.len(), more), (1, vec![1]));
    // Immutable shares are not slots: a slot write over one is refused, and slot reads skip it.
    put(&store, &si(4), 0, &alice, 100);
    let e = store
        .slot_write(&si(4), &alice, &we, &[w(0, None, 1, 100)], 4_000_000_000)
        .unwrap_err();
    assert!(matches!(e, StoreError::NotASlot { .. }), "{e}");
    assert!(store.slot_read(&si(4), &[], 1 << 20).unwrap().0.is_empty());
    // Garbage that is not a mutable share is refused before anything is touched.
    let e = store
        .slot_write(
            &si(5),
            &alice,
            &we,
            &[SlotWrite {
                shnum: 0,
                expect: None,
                data: vec![0; 40],
            }],
            1,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");
    // Reopening (crash recovery) keeps everything and finds it consistent.
    drop(store);
    let store = open(tmp.path(), 1 << 30, 0);
    assert!(store.verify_consistency().unwrap().is_clean());
    assert_eq!(
        store.slot_read(&si(9), &[0], 1 << 20).unwrap().0,
        vec![(0, slot_share(2, 3000))]
    );
}

#[test]
fn removing_a_share_drops_its_row_leases_usage_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    put(&store, &si(1), 0, b"a", 3000);
    put(&store, &si(1), 1, b"a", 3000);
    store.add_lease(&si(1), b"b", 200).unwrap();
    assert!(store.remove_share(&si(1), 0).unwrap());
    assert!(!store.remove_share(&si(1), 0).unwrap());
    assert_eq!(store.list(&si(1)).unwrap(), vec![1]);
    assert!(store.leases(&si(1), 0).unwrap().is_empty());
    assert!(!store.share_path(&si(1), 0).exists());
    assert!(matches!(
        store.read_meta(&si(1), 0),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.usage().unwrap().share_count, 1);
    let report = store.verify_consistency().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn whole_small_shares_live_in_the_index_with_leases_usage_and_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    let (a, b) = (si(1), si(2));
    let d0 = pattern(&a, 0, 1400);
    let d1 = pattern(&a, 1, 1400);
    let r = store
        .put(&a, b"alice", &[(0, &d0, b"meta0"), (1, &d1, b"meta1")], 100)
        .unwrap();
    assert_eq!(r.allocated, vec![0, 1]);
    // Inline: no file of its own, readable like any share.
    assert!(!store.share_path(&a, 0).exists());
    assert_eq!(store.list(&a).unwrap(), vec![0, 1]);
    assert_eq!(store.read(&a, 1, 0, 1400).unwrap(), d1);
    assert_eq!(store.read(&a, 0, 1000, 400).unwrap(), d0[1000..]);
    assert_eq!(store.read_meta(&a, 0).unwrap(), b"meta0");
    assert!(matches!(
        store.read(&a, 0, 1000, 401),
        Err(StoreError::OutOfBounds { .. })
    ));
    let u = store.usage().unwrap();
    assert_eq!((u.used_bytes, u.share_count), (2 * 1405, 2));
    // The same put from someone else stores nothing and adds their lease.
    let r = store.put(&a, b"bob", &[(0, &d0, b"meta0")], 200).unwrap();
    assert_eq!((r.already_have, r.allocated), (vec![0], vec![]));
    assert_eq!(store.leases(&a, 0).unwrap().len(), 2);
    assert_eq!(store.usage().unwrap().used_bytes, 2 * 1405);
    // A share being streamed by someone else is left to them.
    store.allocate(&b, b"carol", &[3], 1400, 100).unwrap();
    let r = store
        .put(&b, b"alice", &[(3, &d0, b"m"), (4, &d0, b"m")], 100)
        .unwrap();
    assert_eq!((r.in_progress, r.allocated), (vec![3], vec![4]));
    // Lengths must agree; big shares still go to files.
    assert!(matches!(
        store.put(&b, b"alice", &[(5, &d0, b"m"), (6, &d1[..10], b"m")], 100),
        Err(StoreError::InvalidArgument(_))
    ));
    let big = pattern(&b, 7, INLINE_MAX as usize);
    store.put(&b, b"alice", &[(7, &big, b"m")], 100).unwrap();
    assert!(store.share_path(&b, 7).exists());
    assert_eq!(store.read(&b, 7, 0, 100).unwrap(), big[..100]);
    store.abort(&b, 3, b"carol").unwrap();
    assert!(store.verify_consistency().unwrap().is_clean());

    // Removal and expiry drop the inline bytes with the row; reopening keeps the rest.
    assert!(store.remove_share(&a, 1).unwrap());
    assert!(matches!(
        store.read(&a, 1, 0, 1),
        Err(StoreError::NotFound { .. })
    ));
    let (r, _) = store
        .collect_step(150, &Default::default(), None, 1000)
        .unwrap();
    assert_eq!(r.shares_removed, 2, "{r:?}"); // b/4 and b/7 (alice's leases ran out)
    assert_eq!(store.list(&a).unwrap(), vec![0], "bob still leases a/0");
    drop(store);
    let store = open(tmp.path(), 1 << 30, 0);
    assert!(store.recovery_report().rows_removed == 0);
    assert_eq!(store.read(&a, 0, 0, 1400).unwrap(), d0);
    let u = store.usage().unwrap();
    assert_eq!((u.used_bytes, u.share_count), (1405, 1));
    let report = store.verify_consistency().unwrap();
    assert!(report.is_clean(), "{report:?}");
    let inline = store.inline_lens().unwrap();
    assert_eq!(inline.len(), 1, "the removed shares' bytes are gone too");
}

/// Concurrent small puts share commits (group commit) and each still gets its own answer: with
/// room for exactly ten shares, sixteen racing puts store ten, refuse six for capacity, and the
/// usage, rows and bytes agree.
#[test]
fn concurrent_small_puts_share_commits_and_each_gets_its_own_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 10 * 1405, 0);
    let mut rounds = 0;
    // Racing threads nearly always overlap a commit's fsync; a few rounds make it certain.
    while rounds < 10 {
        let (batches, jobs) = store.put_batches();
        let before = store.usage().unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let results: Vec<Result<Allocation, StoreError>> = (0..16u8)
            .map(|t| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let s = si(rounds * 16 + t + 1);
                    let d = pattern(&s, 0, 1400);
                    barrier.wait();
                    store.put(&s, b"alice", &[(0, &d, b"meta0")], 100)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok(a) if a.allocated == vec![0]))
            .count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::OverCapacity { .. })))
            .count();
        let after = store.usage().unwrap();
        if rounds == 0 {
            assert_eq!((stored, refused), (10, 6), "{results:?}");
        } else {
            assert_eq!((stored, refused), (0, 16), "the store is full: {results:?}");
        }
        assert_eq!(after.used_bytes - before.used_bytes, stored as u64 * 1405);
        assert_eq!(after.share_count - before.share_count, stored as u64);
        let (b2, j2) = store.put_batches();
        assert_eq!(j2 - jobs, 16, "every put went through a commit");
        rounds += 1;
        if b2 - batches < 16 {
            break;
        }
    }
    assert!(rounds < 10, "16 racing puts never shared a commit");
    assert!(store.verify_consistency().unwrap().is_clean());
    // Every stored share reads back.
    let mut found = 0;
    for t in 0..16u8 {
        let s = si(t + 1);
        if store.list(&s).unwrap() == vec![0] {
            assert_eq!(store.read(&s, 0, 0, 1400).unwrap(), pattern(&s, 0, 1400));
            found += 1;
        }
    }
    assert_eq!(found, 10);
}

#[test]
fn large_shares_written_out_of_order_survive_write_behind_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    // Through the page cache: with O_DIRECT only the pages at the writes' edges count.
    let store = Arc::new(open_with(tmp.path(), 1 << 30, 0, false));
    let s = si(9);
    let len = (3 * WRITE_BEHIND + 12_345) as usize;
    let data = Arc::new(pattern(&s, 4, len));
    store.allocate(&s, b"alice", &[4], len as u64, 100).unwrap();
    // Two writers, pieces of 1 MiB, each going backwards through its half of the pieces:
    // flushes happen while other pieces of the same file are still being written.
    let pieces: Vec<usize> = (0..len.div_ceil(1 << 20)).collect();
    std::thread::scope(|sc| {
        for half in pieces.chunks(pieces.len().div_ceil(2)) {
            let (store, data) = (store.clone(), data.clone());
            sc.spawn(move || {
                for &p in half.iter().rev() {
                    let start = p << 20;
                    let end = (start + (1 << 20)).min(len);
                    store
                        .write(&s, 4, b"alice", start as u64, &data[start..end])
                        .unwrap();
                }
            });
        }
    });
    assert!(
        store.write_behind_flushes() >= 2,
        "{} flushes for {len} bytes",
        store.write_behind_flushes()
    );
    let store = Arc::into_inner(store).unwrap();
    close_and_read_back(tmp.path(), store, &s, 4, &data);
}

#[test]
fn several_puts_in_one_call_are_answered_each_on_its_own_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    // Held before: share 1 of si(3) (the put of it only adds a lease).
    store
        .put(&si(3), b"bob", &[(1, &[7u8; 100][..], &b"m"[..])], 10)
        .unwrap();
    let small = pattern(&si(1), 0, 2000);
    let large = pattern(&si(2), 0, (INLINE_MAX + 10) as usize);
    let (bad_a, bad_b) = (vec![1u8; 10], vec![1u8; 11]);
    let held = [7u8; 100];
    let puts: Vec<([u8; 16], Vec<PutShareRef<'_>>)> = vec![
        (si(1), vec![(0, &small[..], &b"meta1"[..])]),
        (si(2), vec![(0, &large[..], &b"meta2"[..])]),
        (
            si(4),
            vec![(0, &bad_a[..], &b""[..]), (1, &bad_b[..], &b""[..])],
        ),
        (
            si(3),
            vec![(1, &held[..], &b"m"[..]), (2, &held[..], &b"m"[..])],
        ),
        (si(5), vec![]),
    ];
    let items: Vec<PutRef<'_>> = puts.iter().map(|(s, sh)| (*s, sh.as_slice())).collect();
    let (batches_before, _) = store.put_batches();
    let out = store.put_many(b"alice", &items, 100);
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_ref().unwrap().allocated, vec![0]);
    assert_eq!(out[1].as_ref().unwrap().allocated, vec![0]);
    assert!(matches!(out[2], Err(StoreError::InvalidArgument(_))));
    let a = out[3].as_ref().unwrap();
    assert_eq!(
        (a.already_have.clone(), a.allocated.clone()),
        (vec![1], vec![2])
    );
    assert_eq!(out[4].as_ref().unwrap(), &Allocation::default());
    // The inline ones went into one commit; the large one became a file.
    assert_eq!(store.put_batches().0, batches_before + 1);
    assert!(!store.share_path(&si(1), 0).exists());
    assert!(store.share_path(&si(2), 0).exists());
    assert_eq!(store.read(&si(1), 0, 0, 2000).unwrap(), small);
    assert_eq!(store.read(&si(2), 0, 0, large.len() as u32).unwrap(), large);
    assert_eq!(store.read_meta(&si(2), 0).unwrap(), b"meta2");
    assert_eq!(store.list(&si(4)).unwrap(), Vec::<u8>::new());
    assert_eq!(store.leases(&si(3), 1).unwrap().len(), 2);
    assert!(store.verify_consistency().unwrap().is_clean());
}

/// Reads a whole share.
fn read_all(store: &ShareStore, s: &[u8; 16], shnum: u8, len: usize) -> Vec<u8> {
    let mut back = Vec::with_capacity(len);
    while back.len() < len {
        let n = (len - back.len()).min(MAX_READ_LEN as usize);
        back.extend(store.read(s, shnum, back.len() as u64, n as u32).unwrap());
    }
    back
}

/// Closes share `shnum` and checks it reads back as `want`, with its metadata, in a
/// consistent store, before and after a reopen (what a restart sees).
fn close_and_read_back(dir: &Path, store: ShareStore, s: &[u8; 16], shnum: u8, want: &[u8]) {
    store.close(s, shnum, b"alice", b"meta").unwrap();
    assert!(
        read_all(&store, s, shnum, want.len()) == want,
        "the share came back different"
    );
    assert_eq!(store.read_meta(s, shnum).unwrap(), b"meta");
    assert!(store.verify_consistency().unwrap().is_clean());
    drop(store);
    let store = open(dir, 1 << 30, 0);
    assert!(
        read_all(&store, s, shnum, want.len()) == want,
        "the share came back different after a reopen"
    );
}

/// Whether `dir`'s file system takes `O_DIRECT`; where it does not, says so, and fails under
/// `CI=true` (CI's disk takes it).
fn direct_io_works(dir: &Path) -> bool {
    let probe = dir.join("direct-probe");
    std::fs::write(&probe, b"").unwrap();
    let ok = open_direct(&probe).is_some();
    std::fs::remove_file(&probe).unwrap();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the test dir's file system refuses O_DIRECT under CI"
        );
        eprintln!(
            "skipping the O_DIRECT assertions: {} refuses O_DIRECT",
            dir.display()
        );
    }
    ok
}

#[test]
fn plan_write_writes_whole_aligned_pages_and_joins_only_a_continued_carry() {
    let a = DIRECT_ALIGN as u64;
    // Blocks of a 1 MiB-segment 3-of-10 upload, as the store places them.
    let bs = 349_526u64;
    let r = plan_write(DATA_OFFSET, bs as usize, None);
    assert_eq!(r, a..(DATA_OFFSET + bs) / a * a);
    // The next block continues the carry (the first block's last bytes): its range starts
    // with the carry's page.
    let carry = (r.end, (DATA_OFFSET + bs - r.end) as usize);
    let r2 = plan_write(DATA_OFFSET + bs, bs as usize, Some(carry));
    assert_eq!(r2, r.end..(DATA_OFFSET + 2 * bs) / a * a);
    // A carry the write does not continue is not joined.
    let r3 = plan_write(DATA_OFFSET + 2 * bs, bs as usize, Some(carry));
    assert!(r3.start >= DATA_OFFSET + 2 * bs, "{r3:?}");
    // Too little for a direct write, or no whole page at all.
    assert_eq!(plan_write(100, DIRECT_MIN, None), 0..0);
    assert_eq!(plan_write(4095, 2, Some((0, 4095))), 0..0);
    assert_eq!(plan_write(u64::MAX - 10, 5, None), 0..0);
    proptest!(|(pos in 0u64..1 << 40, len in 0usize..4 << 20, carry in proptest::option::of(0usize..4096))| {
        let carry = carry.map(|n| ((pos.saturating_sub(n as u64)) / a * a, n));
        let r = plan_write(pos, len, carry);
        if !r.is_empty() {
            prop_assert!(r.end - r.start >= DIRECT_MIN as u64);
            prop_assert_eq!(r.start % a, 0);
            prop_assert_eq!(r.end % a, 0);
            prop_assert!(r.end <= pos + len as u64 && pos + len as u64 - r.end < a);
            if r.start < pos {
                // Joined: only a carry this write continues.
                let (at, n) = carry.unwrap();
                prop_assert_eq!((r.start, at + n as u64), (at, pos));
            } else {
                prop_assert!(r.start - pos < a);
            }
        }
    });
}

/// Allocates share `shnum` of `s` for alice, writes `data` to it in blocks of `block` bytes,
/// in order, and closes it.
fn store_in_blocks(store: &ShareStore, s: &[u8; 16], shnum: u8, data: &[u8], block: usize) {
    store
        .allocate(s, b"alice", &[shnum], data.len() as u64, 100)
        .unwrap();
    for (b, chunk) in data.chunks(block).enumerate() {
        store
            .write(s, shnum, b"alice", (b * block) as u64, chunk)
            .unwrap();
    }
    store.close(s, shnum, b"alice", b"meta").unwrap();
}

#[test]
fn blocks_read_at_their_place_go_to_the_disk_without_a_copy() {
    use crate::protocol::BulkBuf;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 30, 0);
    if !direct_io_works(tmp.path()) {
        return;
    }
    let block = 349_526usize;
    let blocks = 12;
    let len = blocks * block + 777;
    // As a server receives an upload: each block in a buffer of its own, read at the place
    // the protocol gives it (`BulkBuf::placed`, the share file position modulo the page).
    let s = si(22);
    let data = pattern(&s, 2, len);
    store.allocate(&s, b"alice", &[2], len as u64, 100).unwrap();
    for (b, chunk) in data.chunks(block).enumerate() {
        let offset = (b * block) as u64;
        let mut buf = BulkBuf::placed(vec![0xee; 3], chunk.len(), DATA_OFFSET + offset);
        buf.copy_from_slice(chunk);
        store.write(&s, 2, b"alice", offset, &buf).unwrap();
    }
    store.close(&s, 2, b"alice", b"meta").unwrap();
    let last_page = (DATA_OFFSET as usize + len) / DIRECT_ALIGN * DIRECT_ALIGN;
    assert_eq!(store.direct_bytes(), (last_page - DIRECT_ALIGN) as u64);
    // Only the page where a block meets the bytes the one before left waiting is copied:
    // once for each block after the first (the last, 777 bytes, goes through the page cache).
    assert!(
        (0..blocks).all(|b| !(DATA_OFFSET as usize + (b + 1) * block).is_multiple_of(DIRECT_ALIGN)),
        "every block must leave a carry for the count below"
    );
    assert_eq!(
        store.direct_copied_bytes(),
        ((blocks - 1) * DIRECT_ALIGN) as u64
    );
    assert!(
        read_all(&store, &s, 2, len) == data,
        "the share came back different"
    );
    // The same blocks out of place (cut from one buffer placed a byte off) all go from the
    // aligned copy, and read back the same.
    let (direct_before, copied_before) = (store.direct_bytes(), store.direct_copied_bytes());
    let s = si(23);
    let mut skewed = BulkBuf::placed(Vec::new(), len, DATA_OFFSET + 1);
    skewed.copy_from_slice(&pattern(&s, 2, len));
    let data = &skewed[..];
    store_in_blocks(&store, &s, 2, data, block);
    let direct = store.direct_bytes() - direct_before;
    assert_eq!(direct, (last_page - DIRECT_ALIGN) as u64);
    assert_eq!(store.direct_copied_bytes() - copied_before, direct);
    assert!(
        read_all(&store, &s, 2, len) == data,
        "the share came back different"
    );
}

#[test]
fn uploaded_shares_go_around_the_page_cache_and_read_back_exactly() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open(tmp.path(), 1 << 30, 0));
    let direct = direct_io_works(tmp.path());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let block = 349_526usize;
    let len = 12 * block + 777;
    // Blocks in order, one after another: everything goes around the page cache but the
    // header's page and the last one (each block's last bytes wait for the next block).
    let s = si(20);
    let data = pattern(&s, 1, len);
    store_in_blocks(&store, &s, 1, &data, block);
    if direct {
        let last_page = (DATA_OFFSET as usize + len) / DIRECT_ALIGN * DIRECT_ALIGN;
        assert_eq!(store.direct_bytes(), (last_page - DIRECT_ALIGN) as u64);
    }
    assert!(
        read_all(&store, &s, 1, len) == data,
        "the share came back different"
    );
    // Then as an upload writes it: two writers racing.
    let store_direct_first = store.direct_bytes();
    let s = si(21);
    let data = Arc::new(pattern(&s, 1, len));
    store.allocate(&s, b"alice", &[1], len as u64, 100).unwrap();
    std::thread::scope(|sc| {
        for lane in 0..2 {
            let (store, data) = (store.clone(), data.clone());
            sc.spawn(move || {
                for b in (lane..len.div_ceil(block)).step_by(2) {
                    let range = b * block..((b + 1) * block).min(len);
                    store
                        .write(&s, 1, b"alice", range.start as u64, &data[range])
                        .unwrap();
                }
            });
        }
    });
    let direct_after_blocks = store.direct_bytes();
    if direct {
        let direct_after_blocks = direct_after_blocks - store_direct_first;
        // All but the header's page, the last one and, where the two writers' blocks came
        // out of order, the pages at those blocks' edges.
        assert!(
            direct_after_blocks >= (len - 12 * 2 * DIRECT_ALIGN) as u64,
            "{direct_after_blocks} of {len} bytes went around the page cache"
        );
    }
    let mut model = data.to_vec();
    // A write that overlaps the bytes the one before it left waiting (its carry) without
    // continuing them lands last: the carry goes out first.
    let at = 3 * block + 5_000;
    let first_end = DATA_OFFSET as usize + at + 100_000;
    assert!(
        first_end % DIRECT_ALIGN > 1_000,
        "the first write must leave a carry"
    );
    for (at, n, byte) in [(at, 100_000, 0xaa), (at + 99_000, 80_000, 0x55)] {
        store
            .write(&s, 1, b"alice", at as u64, &vec![byte; n])
            .unwrap();
        model[at..at + n].fill(byte);
    }
    // Then pieces of any size at any offset, overlapping what O_DIRECT wrote and each
    // other, in any order; a model of the share says what it must hold.
    for _ in 0..60 {
        let at = rng.gen_range(0..len);
        let n = rng.gen_range(1..=(len - at).min(300_000));
        let piece: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
        store.write(&s, 1, b"alice", at as u64, &piece).unwrap();
        model[at..at + n].copy_from_slice(&piece);
    }
    if direct {
        assert!(
            store.direct_bytes() > direct_after_blocks,
            "no piece went direct"
        );
    }
    let store = Arc::into_inner(store).unwrap();
    close_and_read_back(tmp.path(), store, &s, 1, &model);
}

#[test]
fn with_direct_io_off_shares_go_through_the_page_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_with(tmp.path(), 1 << 30, 0, false);
    let s = si(22);
    let len = 3 << 20;
    let data = pattern(&s, 0, len);
    store.allocate(&s, b"alice", &[0], len as u64, 100).unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        store
            .write(&s, 0, b"alice", (i << 20) as u64, chunk)
            .unwrap();
    }
    store.close(&s, 0, b"alice", b"m").unwrap();
    assert_eq!(store.direct_bytes(), 0);
    assert!(read_all(&store, &s, 0, len) == data);
}
