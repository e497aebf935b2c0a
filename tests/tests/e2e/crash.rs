//! A storage server killed with SIGKILL in the middle of an upload restarts with a consistent
//! redb and share store: no half-written share is visible, usage equals the stored shares.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use kith_node::{
    Node, StartOptions,
    client::PutOptions,
    config::{ByteSize, RawConfig},
    nodedir::NodeDir,
    storage::{ShareStore, StoreConfig},
};
use kith_tests::random_bytes;

fn spawn_daemon(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kith-test-node"))
        .arg(dir)
        .env("KITH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kith-test-node")
}

/// Waits (with a deadline) until `cond` holds, checking every few milliseconds.
fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn incoming_bytes(storage: &Path) -> u64 {
    std::fs::read_dir(storage.join("incoming"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_restarts_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = NodeDir::new(tmp.path().join("server"));
    let mut raw = RawConfig::default();
    raw.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    raw.storage.reserved = ByteSize(0);
    // The client is a static peer of the server's, not a grid member: an open server.
    raw.storage.accept_from = kith_node::config::AcceptFrom::Anyone;
    let (server_cfg, server_peer) = server_dir.init(raw).unwrap();
    let server_addr = kith_transports::with_peer_id(&server_cfg.listen[0], server_peer);

    let client_dir = NodeDir::new(tmp.path().join("client"));
    let mut raw = RawConfig::default();
    raw.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    raw.network.peers = vec![server_addr.to_string()];
    raw.storage.enabled = false;
    // Every share goes to the one server.
    raw.encoding.shares_needed = 1;
    raw.encoding.shares_happy = 1;
    raw.encoding.shares_total = 3;
    raw.encoding.segment_size = ByteSize(64 << 10);
    client_dir.init(raw).unwrap();

    let mut child = spawn_daemon(server_dir.root());
    wait_until("the server's api.json", Duration::from_secs(30), || {
        server_dir.api_file().exists()
    });
    let client = Node::start(client_dir.clone(), StartOptions::default())
        .await
        .unwrap();
    let handle = client.handle();
    handle
        .wait_for_storage_servers(1, Duration::from_secs(30))
        .await
        .unwrap();

    // A finished file first, so the store has something that must survive.
    let data_dir = tempfile::tempdir().unwrap();
    let small = data_dir.path().join("small");
    std::fs::write(&small, random_bytes(300 << 10, 10)).unwrap();
    let opts = PutOptions {
        params: handle.config().encoding,
        convergent: true,
        key: None,
    };
    let done = handle
        .put_file(&small, &opts, &|_| {})
        .await
        .expect("first upload");

    // Now a big upload, killed once the server has share bytes in flight.
    let big = data_dir.path().join("big");
    std::fs::write(&big, random_bytes(48 << 20, 11)).unwrap();
    let h2 = handle.clone();
    let opts2 = opts.clone();
    let upload = tokio::spawn(async move { h2.put_file(&big, &opts2, &|_| {}).await });
    let storage = server_dir.storage();
    let s2 = storage.clone();
    tokio::task::spawn_blocking(move || {
        wait_until(
            "share bytes arriving at the server",
            Duration::from_secs(60),
            || incoming_bytes(&s2) > (1 << 20),
        );
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        upload.await.unwrap().is_err(),
        "the upload cannot succeed without its server"
    );
    assert!(
        incoming_bytes(&storage) > 0,
        "the kill left no partial share: the test proves nothing"
    );

    // Open the store as the restarted daemon would: recovery removes the partial share.
    {
        let db = Arc::new(
            redb::Database::create(server_dir.db_path()).expect("redb opens after SIGKILL"),
        );
        let store = ShareStore::open(
            db,
            StoreConfig {
                root: storage.clone(),
                capacity: u64::MAX / 4,
                reserved: 0,
                read_only: true,
                direct_io: true,
            },
        )
        .unwrap();
        let report = store.verify_consistency().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(incoming_bytes(&storage), 0, "partial share still on disk");
        let usage = store.usage().unwrap();
        assert_eq!(
            usage.share_count, 3,
            "only the first file's 3 shares are stored"
        );
        let cap: kith_node::caps::ReadCap = done.cap.parse().unwrap();
        let kith_node::caps::ReadCap::Chk(cap) = cap else {
            panic!("not a chk cap")
        };
        assert_eq!(store.list(&cap.storage_index()).unwrap(), vec![0, 1, 2]);
    }

    // The real daemon restarts on the same dir and serves the finished file again.
    let _ = std::fs::remove_file(server_dir.api_file());
    let mut child = spawn_daemon(server_dir.root());
    wait_until(
        "the restarted server's api.json",
        Duration::from_secs(30),
        || server_dir.api_file().exists(),
    );
    let mut out = Vec::new();
    let cap: kith_node::caps::ReadCap = done.cap.parse().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        // The client redials its static peer with backoff; retry until it is back.
        match handle.get(&cap, &mut out).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < end, "download after restart: {e}");
                out.clear();
                let mut w = handle.net_watch();
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    w.wait_for(|s| !s.storage_peers().is_empty()),
                )
                .await;
            }
        }
    }
    assert_eq!(out, std::fs::read(&small).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    client.shutdown().await;
}
