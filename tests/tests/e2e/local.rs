//! `kith put`'s local socket: the daemon uploads from a descriptor the client opened, with the
//! same caps as an upload of the same bytes over HTTP, and refuses what it should.

use std::{
    io::{BufRead, Write},
    os::unix::{fs::FileExt, net::UnixStream},
    sync::atomic::{AtomicBool, Ordering},
};

use kith_node::{
    caps::ReadCap,
    client::{PutOptions, Source, UploadError},
    local,
};
use kith_tests::{Encoding, Grid, Listen, random_bytes};

async fn share_count(grid: &Grid) -> u64 {
    let mut n = 0;
    for h in grid.handles() {
        n += h.status().await.storage.map_or(0, |s| s.share_count);
    }
    n
}

/// Sends raw request bytes (no descriptor) and returns the daemon's one answer line.
fn raw_request(socket: &std::path::Path, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(bytes).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kith_put_hands_the_open_file_over_the_local_socket() {
    let enc = Encoding {
        needed: 2,
        happy: 3,
        total: 4,
    };
    let grid = Grid::start(4, Listen::Tcp, enc).await.expect("grid");
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("api.sock");
    let task = local::listen(&socket, grid.node(0), "s3cret".into()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");
    }

    // A 5 MiB file through the socket downloads identical from another node, and gets the same
    // cap as the same bytes uploaded from a spooled copy (the key does not depend on the way
    // the bytes came).
    let data = random_bytes(5 << 20, 11);
    let path = tmp.path().join("file.bin");
    std::fs::write(&path, &data).unwrap();
    let (s, p) = (socket.clone(), path.clone());
    let mut seen = Vec::new();
    let (answer, seen) = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p).unwrap();
        let a = local::put(&s, "s3cret", &f, "name=file.bin", |done, total| {
            seen.push((done, total))
        });
        (a, seen)
    })
    .await
    .unwrap();
    let v = answer.expect("socket").expect("upload");
    assert!(
        v["timings"]["receive_ms"].is_null(),
        "nothing was received: {v}"
    );
    let cap: ReadCap = v["cap"].as_str().unwrap().parse().unwrap();
    assert!(
        seen.iter().all(|&(d, t)| d <= t && t == 5 << 20),
        "{seen:?}"
    );
    let mut got = Vec::new();
    grid.node(1).get(&cap, &mut got).await.expect("download");
    assert!(got == data, "downloaded bytes differ");
    let opts = PutOptions {
        params: grid.node(0).config().encoding,
        convergent: true,
        key: None,
    };
    let again = grid
        .node(0)
        .put_file(&path, &opts, &|_| {})
        .await
        .expect("upload from a path");
    assert_eq!(again.cap, v["cap"].as_str().unwrap());
    assert_eq!(again.already_present, 4);

    // Refusals: a wrong token, a descriptor that is not a regular file, a request without a
    // descriptor, an oversized request. Each is a clear answer, and the socket keeps serving.
    let refused = |token: &'static str, what: std::path::PathBuf| {
        let s = socket.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&what).unwrap();
            local::put(&s, token, &f, "", |_, _| {})
                .unwrap()
                .unwrap_err()
        })
    };
    let (msg, status) = refused("guess", path.clone()).await.unwrap();
    assert_eq!(status, 401, "{msg}");
    let (msg, status) = refused("s3cret", tmp.path().to_owned()).await.unwrap();
    assert!(status == 400 && msg.contains("not a regular file"), "{msg}");
    let s = socket.clone();
    let (no_fd, too_long) = tokio::task::spawn_blocking(move || {
        let body = br#"{"token":"s3cret","query":""}"#;
        let mut req = (body.len() as u32).to_be_bytes().to_vec();
        req.extend_from_slice(body);
        (
            raw_request(&s, &req),
            raw_request(&s, &(1u32 << 20).to_be_bytes()),
        )
    })
    .await
    .unwrap();
    assert!(
        no_fd["error"]
            .as_str()
            .unwrap()
            .contains("exactly one file descriptor, it carried 0"),
        "{no_fd}"
    );
    assert!(
        too_long["error"]
            .as_str()
            .unwrap()
            .contains("request of 1048576 bytes"),
        "{too_long}"
    );

    // A file rewritten in place while it is encoded (same size, other bytes) fails the upload
    // before any share is closed: nothing new is stored.
    let before = share_count(&grid).await;
    let changing = random_bytes(5 << 20, 12);
    let cpath = tmp.path().join("changing.bin");
    std::fs::write(&cpath, &changing).unwrap();
    let f = std::fs::File::open(&cpath).unwrap();
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&cpath)
        .unwrap();
    let once = AtomicBool::new(false);
    // Written until the change shows in the file's times (at once where the kernel keeps
    // fine-grained times for files whose times were just read, within a clock tick elsewhere).
    let rewrite = move |_: u64| {
        if once.swap(true, Ordering::SeqCst) {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let ctime = |w: &std::fs::File| {
            let m = w.metadata().unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = ctime(&writer);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut i = 0u8;
        loop {
            writer.write_all_at(&[b'x', i], 4 << 20).unwrap();
            if ctime(&writer) != before {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "the file's ctime never moved"
            );
            i = i.wrapping_add(1);
        }
    };
    let err = kith_node::client::upload_from(&grid.node(0), Source::Open(&f), &opts, &rewrite)
        .await
        .expect_err("a changed file must not upload");
    assert!(matches!(err, UploadError::Changed), "{err}");
    assert_eq!(share_count(&grid).await, before, "no share was kept");
    // Once the file holds still it uploads.
    let f = std::fs::File::open(&cpath).unwrap();
    let ok = kith_node::client::upload_from(&grid.node(0), Source::Open(&f), &opts, &|_| {})
        .await
        .expect("upload of the settled file");
    let cap: ReadCap = ok.cap.parse().unwrap();
    let mut got = Vec::new();
    grid.node(2).get(&cap, &mut got).await.expect("download");
    assert!(
        got == std::fs::read(&cpath).unwrap(),
        "settled file differs"
    );

    // A client that goes away mid-upload (Ctrl-C on `kith put`) cancels it: the next progress
    // line fails to go out and the operation ends with that error, no share closed.
    let before = share_count(&grid).await;
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, random_bytes(96 << 20, 13)).unwrap();
    let s = socket.clone();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&big).unwrap();
        let sock = UnixStream::connect(&s).unwrap();
        let req = local::PutRequest {
            token: "s3cret".into(),
            query: "name=abandoned".into(),
        };
        local::send_request(&sock, &req, &f).unwrap();
        // Gone as soon as the daemon says it has started.
        let mut line = String::new();
        std::io::BufReader::new(&sock).read_line(&mut line).unwrap();
        assert!(line.contains("\"done\""), "{line}");
    })
    .await
    .unwrap();
    let node = grid.node(0);
    let ended = || {
        node.operations()
            .into_iter()
            .find(|o| o.name == "abandoned" && o.finished)
    };
    kith_tests::until(
        "the abandoned upload ends",
        std::time::Duration::from_secs(60),
        async || ended().is_some(),
    )
    .await;
    let op = ended().unwrap();
    assert_eq!(op.error.as_deref(), Some("the client went away"), "{op:?}");
    assert!(op.done < 96 << 20, "{op:?}");
    assert_eq!(share_count(&grid).await, before, "no share was kept");
    task.abort();
}
