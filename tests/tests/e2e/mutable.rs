//! Mutable files and directories between real nodes: updates across nodes, racing writers,
//! what read and verify caps can and cannot do, and a directory of 1 000 entries.

use std::time::{Duration, Instant};

use kith_node::{
    caps::{Cap, SskCap},
    fs::{self, FsError, Target},
    mutable::{self, MutableError},
    protocol::{ErrorKind, Request, Response, SlotShareWrite},
    slot::{self, SlotError},
};
use kith_tests::{Encoding, Grid, Listen, random_bytes};
use serde_bytes::ByteBuf;

const ENC: Encoding = Encoding {
    needed: 3,
    happy: 4,
    total: 5,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutable_update_round_trip_across_nodes() {
    let grid = Grid::start(5, Listen::Tcp, ENC).await.unwrap();
    let (a, b) = (grid.node(0), grid.node(3));
    let v1 = random_bytes(100_000, 1);
    let cap = slot::create(&a, false, &v1).await.unwrap();
    // B reads what A wrote.
    let (got, ver) = slot::read(&b, &cap).await.unwrap();
    assert_eq!(got, v1);
    assert_eq!(ver.seqnum, 1);
    // A updates; B sees the new version under the same cap.
    let m = slot::map(&a, &cap).await;
    assert_eq!(m.count(ver), 5, "all n shares of version 1 are placed");
    let v2 = random_bytes(70_000, 2);
    let v = slot::publish(&a, &cap, &v2, &m).await.unwrap();
    assert_eq!(v.seqnum, 2);
    assert_eq!(slot::read(&b, &cap).await.unwrap(), (v2.clone(), v));
    // B, holding the write cap too, updates; A reads B's version.
    let v3 = b"third version, written by another node".repeat(10);
    let m = slot::map(&b, &cap).await;
    let v = slot::publish(&b, &cap, &v3, &m).await.unwrap();
    assert_eq!(v.seqnum, 3);
    let (got, ver) = slot::read(&a, &cap).await.unwrap();
    assert_eq!((got, ver.seqnum), (v3, 3));
    // Every server now holds version 3 only (the older shares were replaced, not left over).
    let m = slot::map(&a, &cap).await;
    assert!(
        m.shares.iter().all(|(_, s)| s.version.seqnum == 3),
        "stale shares left"
    );
    assert_eq!(m.count(ver), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_get_one_success_and_one_uncoordinated_write_and_no_version_is_lost() {
    let grid = Grid::start(5, Listen::Tcp, ENC).await.unwrap();
    let (a, b) = (grid.node(1), grid.node(4));
    let cap = slot::create(&a, false, b"version one of a shared todo list, long enough")
        .await
        .unwrap();
    for round in 0..3u8 {
        // Both writers read the same version, then write at the same time.
        let (ma, mb) = tokio::join!(slot::map(&a, &cap), slot::map(&b, &cap));
        assert_eq!(ma.best(), mb.best());
        let base = ma.best().unwrap().seqnum;
        let (wa, wb) = (
            format!("round {round}: A's version").repeat(5).into_bytes(),
            format!("round {round}: B's version").repeat(5).into_bytes(),
        );
        let (ra, rb) = tokio::join!(
            slot::publish(&a, &cap, &wa, &ma),
            slot::publish(&b, &cap, &wb, &mb)
        );
        let (winner, loser_err) = match (ra, rb) {
            (Ok(v), Err(e)) => ((v, wa.clone()), e),
            (Err(e), Ok(v)) => ((v, wb.clone()), e),
            (ra, rb) => panic!("round {round}: expected exactly one success: {ra:?} / {rb:?}"),
        };
        assert!(
            matches!(loser_err, SlotError::Uncoordinated { .. }),
            "round {round}: {loser_err}"
        );
        assert!(loser_err.to_string().contains("uncoordinated write"));
        assert_eq!(winner.0.seqnum, base + 1);
        // The winner's version is whole: every share holds it, readers get it.
        let m = slot::map(&a, &cap).await;
        assert_eq!(m.best(), Some(winner.0));
        assert!(
            m.shares.iter().all(|(_, s)| s.version == winner.0),
            "round {round}: mixed versions"
        );
        assert_eq!(m.count(winner.0), 5);
        assert_eq!(slot::read(&b, &cap).await.unwrap().0, winner.1);
    }
    // The loser retries as read-modify-write and lands on top: nothing was lost.
    let appended = slot::modify(&b, &cap, |old| -> Result<_, SlotError> {
        let mut v = old.to_vec();
        v.extend_from_slice(b" + B's retry");
        Ok(Some(v))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(appended.seqnum, 5);
    let (got, _) = slot::read(&a, &cap).await.unwrap();
    assert!(got.ends_with(b" + B's retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cap_cannot_write_and_a_verify_cap_cannot_read() {
    let grid = Grid::start(5, Listen::Tcp, ENC).await.unwrap();
    let (a, b) = (grid.node(0), grid.node(2));
    let secret = b"the content only read-cap holders may see, long enough to be coded".to_vec();
    let cap = slot::create(&a, false, &secret).await.unwrap();
    let ro = cap.read_only();
    let verify = ro.verify_cap();
    // The read cap reads...
    assert_eq!(slot::read(&b, &ro).await.unwrap().0, secret);
    // ...but cannot publish: it has no signing key.
    let m = slot::map(&b, &ro).await;
    let err = slot::publish(&b, &ro, b"defaced", &m).await.unwrap_err();
    assert!(
        matches!(err, SlotError::Mutable(MutableError::NotAllowed(_))),
        "{err}"
    );
    // Nor can it get a server to overwrite a share: the write enabler it can derive (from the
    // read key) is not the slot's, and the server says so.
    let si = ro.storage_index();
    let (server, share) = m.shares[0].clone();
    let forged = mutable::write_enabler(&ro.readkey().unwrap(), &server.to_bytes());
    let r = b
        .rpc(
            server,
            Request::SlotWrite {
                si,
                write_enabler: ByteBuf::from(forged.to_vec()),
                writes: vec![SlotShareWrite {
                    shnum: share.shnum,
                    expect: Some(1),
                    data: ByteBuf::from(share.to_bytes()),
                }],
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Error(ref e) if e.kind == ErrorKind::BadWriteEnabler),
        "{r:?}"
    );
    // The write enabler never leaves a server: reading a slot share's metadata is refused.
    let r = b
        .rpc(
            server,
            Request::ReadMeta {
                si,
                shnum: share.shnum,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Error(ref e) if e.kind == ErrorKind::NotFound),
        "{r:?}"
    );
    // The verify cap sees every share (a check works) but cannot decrypt.
    let m = slot::map(&b, &verify).await;
    assert_eq!(m.count(m.best().unwrap()), 5);
    let err = slot::read(&b, &verify).await.unwrap_err();
    assert!(
        matches!(err, SlotError::Mutable(MutableError::NotAllowed(_))),
        "{err}"
    );
    let check = slot::check(&b, &verify, false).await;
    assert!(check.healthy, "{check:?}");
    // A share from the slot is ciphertext: the secret is not in it.
    assert!(
        !share
            .block
            .windows(16)
            .any(|w| secret.windows(16).any(|s| s == w))
    );
    // Still the original content, on every node.
    assert_eq!(slot::read(&a, &cap).await.unwrap().0, secret);
}

fn target(root: &SskCap, path: &[&str]) -> Target {
    Target {
        root: Cap::Ssk(root.clone()),
        root_name: "t:".into(),
        path: path.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_1000_entries_is_created_listed_renamed_and_pruned() {
    let grid = Grid::start(5, Listen::Tcp, ENC).await.unwrap();
    let (a, b) = (grid.node(0), grid.node(3));
    let root = fs::empty_dir(&a).await.unwrap();
    // Children: a few real files (immutable and mutable), the rest links to them.
    let file = {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, random_bytes(5_000, 9)).unwrap();
        let opts = kith_node::client::PutOptions {
            params: a.config().encoding,
            convergent: true,
            key: None,
        };
        a.put_file(&p, &opts, &|_| {})
            .await
            .unwrap()
            .cap
            .parse::<Cap>()
            .unwrap()
    };
    let todo = Cap::Ssk(
        slot::create(&a, false, b"a mutable child with its own write cap here")
            .await
            .unwrap(),
    );
    let sub = Cap::Ssk(fs::empty_dir(&a).await.unwrap());
    let mut children = vec![
        ("todo.md".to_owned(), todo.clone(), None),
        ("sub".to_owned(), sub.clone(), None),
    ];
    for i in 0..998 {
        children.push((format!("file-{i:04}.bin"), file.clone(), Some(5_000)));
    }
    let started = Instant::now();
    fs::link_many(&a, &target(&root, &[]), children, false)
        .await
        .unwrap();
    let created = started.elapsed();

    // Another node lists all 1 000 with the write cap and sees write caps of writable children.
    let rw = fs::read_dir(&b, &Cap::Ssk(root.clone()), "t:")
        .await
        .unwrap();
    assert_eq!(rw.len(), 1000);
    assert_eq!(rw["todo.md"].cap, todo);
    assert!(rw["sub"].cap.is_writable());
    assert_eq!(rw["file-0500.bin"].cap, file);
    // The read-only view: same names, no write caps at all.
    let ro = fs::read_dir(&b, &Cap::Ssk(root.read_only()), "t:")
        .await
        .unwrap();
    assert_eq!(ro.keys().collect::<Vec<_>>(), rw.keys().collect::<Vec<_>>());
    assert!(ro.values().all(|e| !e.cap.is_writable()));
    assert_eq!(ro["todo.md"].cap, todo.read_only());
    // And a read-only view refuses changes.
    let err = fs::unlink(
        &b,
        &Target {
            root: Cap::Ssk(root.read_only()),
            root_name: "ro:".into(),
            path: vec!["sub".into()],
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FsError::ReadOnly(_)), "{err}");

    // Rename (one write in the same directory), move into a subdirectory, remove.
    let started = Instant::now();
    fs::rename(
        &b,
        &target(&root, &["file-0001.bin"]),
        &target(&root, &["renamed.bin"]),
    )
    .await
    .unwrap();
    fs::rename(
        &a,
        &target(&root, &["file-0002.bin"]),
        &target(&root, &["sub", "moved.bin"]),
    )
    .await
    .unwrap();
    fs::unlink(&b, &target(&root, &["file-0003.bin"]))
        .await
        .unwrap();
    let edited = started.elapsed();
    let now = fs::read_dir(&a, &Cap::Ssk(root.clone()), "t:")
        .await
        .unwrap();
    assert_eq!(now.len(), 998);
    assert!(now.contains_key("renamed.bin") && !now.contains_key("file-0001.bin"));
    assert!(!now.contains_key("file-0002.bin") && !now.contains_key("file-0003.bin"));
    assert_eq!(
        fs::resolve(&b, &target(&root, &["sub", "moved.bin"]))
            .await
            .unwrap(),
        file
    );
    let missing = fs::resolve(&b, &target(&root, &["file-0003.bin"]))
        .await
        .unwrap_err();
    assert!(matches!(missing, FsError::NotFound(_)), "{missing}");
    eprintln!(
        "directory of 1000 entries: created in {:.2} s, 3 edits in {:.2} s",
        created.as_secs_f64(),
        edited.as_secs_f64()
    );

    // Concurrent edits of different entries from two nodes all land (retries on conflict).
    let (ta, tb) = (target(&root, &["from-a"]), target(&root, &["from-b"]));
    let (ra, rb) = tokio::join!(
        fs::link(&a, &ta, &file, None, false),
        fs::link(&b, &tb, &file, None, false)
    );
    ra.unwrap();
    rb.unwrap();
    let after = fs::read_dir(&a, &Cap::Ssk(root), "t:").await.unwrap();
    assert!(after.contains_key("from-a") && after.contains_key("from-b"));
    assert!(Duration::from_secs(0) < created);
}
