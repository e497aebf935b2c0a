//! `kith check` with the real binary and two daemons: the summary line, `--json`, the exit
//! codes (0 healthy, 2 unhealthy after the command, 1 error) and a repair that cannot reach
//! happiness with one server left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

fn kith(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kith"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("KITH_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kith(dir, args);
    assert!(
        out.status.success(),
        "kith {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A daemon process, killed if the test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn run(dir: &Path) -> Daemon {
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_kith"))
            .arg("--dir")
            .arg(dir)
            .arg("run")
            .env("KITH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kith_check_prints_one_line_and_exits_by_health() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, name) in [(&a, "alice"), (&b, "bob")] {
        ok(
            dir,
            &[
                "init",
                "--nickname",
                name,
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--reserved",
                "0",
                "--shares-needed",
                "1",
                "--shares-happy",
                "2",
                "--shares-total",
                "2",
                "--no-repair",
            ],
        );
    }
    let mut da = run(&a);
    wait_until("alice's API", || a.join("api.json").exists());
    let code = ok(&a, &["invite"]).trim().to_owned();
    ok(&b, &["join", &code]);
    let _db = run(&b);
    wait_until("bob's API", || b.join("api.json").exists());
    wait_until("two storage servers", || {
        let v: serde_json::Value = serde_json::from_str(&ok(&b, &["members", "--json"])).unwrap();
        v["members"].as_array().map_or(0, Vec::len) == 2
    });
    let file = tmp.path().join("f.bin");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();
    // The upload may race the storage grant's gossip: retry until it succeeds.
    let mut cap = String::new();
    wait_until("an upload to both servers", || {
        let out = kith(&b, &["put", file.to_str().unwrap()]);
        cap = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success()
    });

    let out = kith(&b, &["check", &cap]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "healthy: 2/2 shares on 2 servers (happy 2 >= 2)"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&b, &["check", "--verify", "--json", &cap])).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["verified"], true);
    assert_eq!(v["good_shares"], 2);
    let lit = kith(&b, &["check", "kith:lit:nbswy3dp"]);
    assert_eq!(lit.status.code(), Some(0));
    let bad = kith(&b, &["check", "kith:chk:nonsense"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid kith cap"));

    // Alice stops: one share is gone, and bob alone cannot make the file happy again.
    ok(&a, &["stop"]);
    assert!(da.0.wait().unwrap().success());
    let out = kith(&b, &["check", &cap]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("unhealthy: 1/2 shares on 1 server (happy 1 < 2)"),
        "{line}"
    );
    let out = kith(&b, &["check", "--repair", &cap]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.contains("repair incomplete: placed 1 share on 1 server")
            && line.contains("now unhealthy: 2/2 shares on 1 server (happy 1 < 2)"),
        "{line}"
    );
    ok(&b, &["stop"]);
}
