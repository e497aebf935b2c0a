//! The benchmark binary, run small: a grid of four daemons on loopback moves a 2 MiB file both
//! ways (over HTTP and handed over the local socket) and 20 small files, and prints every
//! figure issue 8 asks for in one table; the join benchmark forms a grid and times a join.
//! The bench itself compares every downloaded byte with what it uploaded and fails otherwise,
//! so a passing run is also a correct round trip. Speed is not asserted (dev profile): this
//! keeps `cargo run --release -p kith-simulations --bin bench` working between measurements.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Runs the bench binary with `args`, waiting at most `limit`; its stdout, once it succeeded.
fn bench(args: &[&str], limit: Duration) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a timeout the bench and the daemons it started go together.
        .process_group(0)
        .spawn()
        .expect("start the bench binary");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the bench"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("bench {args:?} did not finish in {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value column of the row whose measure is `measure`.
fn row<'a>(table: &'a str, measure: &str) -> &'a str {
    table
        .lines()
        .find_map(|l| {
            let mut cells = l.strip_prefix("| ")?.strip_suffix(" |")?.split(" | ");
            (cells.next()? == measure).then(|| cells.next()).flatten()
        })
        .unwrap_or_else(|| panic!("no row {measure:?} in\n{table}"))
}

/// The number before `unit` in `cell` (`"12.7 MiB/s (0.16 s), 57% of …"`, `"MiB/s"` -> 12.7).
fn number_before(cell: &str, unit: &str) -> f64 {
    let at = cell
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {cell:?}"));
    let num = cell[..at]
        .trim_end()
        .rsplit([' ', '('])
        .next()
        .unwrap_or("");
    num.trim_start_matches('+')
        .parse()
        .unwrap_or_else(|_| panic!("no number before {unit:?} in {cell:?}"))
}

#[test]
fn the_grid_bench_round_trips_files_and_prints_every_figure_of_issue_8() {
    let table = bench(
        &[
            "grid",
            "--nodes",
            "4",
            "--sizes",
            "2MiB",
            "--small-files",
            "20",
            "--needed",
            "2",
            "--happy",
            "3",
            "--total",
            "4",
        ],
        Duration::from_secs(300),
    );
    let positive = [
        ("2MiB: encoder only (key pass + encode, 2 cores)", "MB/s"),
        ("2MiB: upload (node 0 API -> 4 servers)", "MiB/s"),
        (
            "2MiB: upload (node 0 API -> 4 servers)",
            "% of encoder-only",
        ),
        (
            "2MiB: upload (`kith put`: file handed over the local socket)",
            "MiB/s",
        ),
        (
            "2MiB: upload (`kith put`: file handed over the local socket)",
            "% of encoder-only",
        ),
        (
            "2MiB: upload over HTTP with a random key (sent as it arrives, no spool)",
            "MiB/s",
        ),
        ("2MiB: download (node 1 API, verified)", "MiB/s"),
        ("uploading node RSS idle", "MiB"),
        ("20 x 4KiB: upload (16 at once)", "files/s"),
        ("20 x 4KiB: download, verified", "files/s"),
    ];
    for (measure, unit) in positive {
        let n = number_before(row(&table, measure), unit);
        assert!(n > 0.0, "{measure}: {n} {unit}");
    }
    let peak = row(&table, "2MiB: uploading node RSS peak");
    assert!(number_before(peak, "MiB over idle") >= 0.0, "{peak}");
    assert!(row(&table, "2MiB: CPU during upload").starts_with("uploader "));
    // The random-key upload's CPU and phases are printed like the others' (that it is sent
    // as it arrives is the CLI test's to check, against the daemon's share files).
    let cpu = row(&table, "2MiB: CPU during the random-key upload");
    assert!(cpu.starts_with("uploader "), "{cpu}");
    let phases = row(&table, "2MiB: the random-key upload phases (ms)");
    assert!(phases.starts_with("key pass "), "{phases}");
}

#[test]
fn the_join_bench_times_a_join_into_a_grid() {
    let text = bench(
        &["join", "--nodes", "3", "--rounds", "1"],
        Duration::from_secs(120),
    );
    let round = text
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut f| (f.next() == Some("1")).then(|| f.collect::<Vec<_>>()))
        .unwrap_or_else(|| panic!("no round 1 in\n{text}"));
    assert_eq!(round.first(), Some(&"4"), "members after the join: {text}");
    for ms in &round[1..] {
        ms.parse::<u64>()
            .unwrap_or_else(|_| panic!("not a time in ms: {ms:?} in\n{text}"));
    }
}
