//! `bench grid`: start N real kith daemons on loopback (child processes); for each file size
//! upload a random file through node 0's local API and download it through node 1's, then
//! hand another file of the same size to node 0 over its local socket as `kith put` does, and
//! post it once more with a random key (encoded and sent as it arrives); then upload many
//! small files; and print in one table: encoder-only throughput (the same file
//! encoded in-process on every core), end-to-end upload and download MiB/s, their ratio to the
//! encoder, the uploading node's idle RSS and its peak above idle during each upload (sampled
//! every 5 ms), CPU per process group, and small files per second.
//!
//! ```text
//! cargo run --release -p kith-simulations --bin bench -- grid --nodes 10 --sizes 16MiB,256MiB,1GiB --small-files 1000
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kith_node::{
    codec::{EncodingParams, FileEncoder},
    config::{ByteSize, CONFIG_FILE, RawConfig},
    nodedir::{self, NodeDir},
};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the grid benchmark.
    Grid {
        /// Nodes in the grid.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// File sizes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "16MiB,256MiB,1GiB")]
        sizes: Vec<ByteSize>,
        /// Small files to upload after the large ones (0: skip).
        #[arg(long, default_value_t = 1000)]
        small_files: usize,
        /// Size of each small file.
        #[arg(long, default_value = "4KiB")]
        small_size: ByteSize,
        /// Small-file uploads in flight at once.
        #[arg(long, default_value_t = 16)]
        small_parallel: usize,
        /// k.
        #[arg(long, default_value_t = 3)]
        needed: u8,
        /// Servers of happiness.
        #[arg(long, default_value_t = 7)]
        happy: u8,
        /// n.
        #[arg(long, default_value_t = 10)]
        total: u8,
        /// Segment size (the encoder-only figure and every node use it).
        #[arg(long, default_value = "1MiB")]
        segment_size: ByteSize,
        /// Keep the node dirs here instead of a temp dir.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Servers write shares through the page cache (`storage.direct_io = false`).
        #[arg(long)]
        no_direct_io: bool,
    },
    /// Measure how fast new members are seen: form a grid by invitations, then join more
    /// nodes one at a time and time until the joiner lists everyone and everyone lists it.
    Join {
        /// Nodes in the grid before the joins.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// How many nodes join, one after another.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// (internal) run one node: what `kith --dir DIR run` does.
    #[command(hide = true)]
    Node {
        /// Node dir.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match args.cmd {
        Cmd::Node { dir } => {
            rt.block_on(kith_node::daemon::run(
                NodeDir::new(dir),
                Default::default(),
            ))?;
            Ok(())
        }
        Cmd::Join { nodes, rounds } => rt.block_on(join_bench(nodes, rounds)),
        Cmd::Grid {
            nodes,
            sizes,
            small_files,
            small_size,
            small_parallel,
            needed,
            happy,
            total,
            segment_size,
            workdir,
            no_direct_io,
        } => rt.block_on(grid(
            nodes,
            &sizes.iter().map(|s| s.0).collect::<Vec<_>>(),
            (small_files, small_size.0 as usize, small_parallel.max(1)),
            EncodingParams {
                needed,
                happy,
                total,
                segment_size: u32::try_from(segment_size.0).context("segment size")?,
            },
            workdir,
            !no_direct_io,
        )),
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// How many of the functions `node/link/hot.order` lists (see `node/build.rs`) this binary
/// has, and where they lie: the list names symbols of one build, and when code or compiler
/// changed enough for the count to fall, the idle node's code is spread over more pages again
/// and the list wants regenerating (`node/link/hot-order.sh`); when they span the whole of the
/// code, the binary was linked without the list (another linker, or a build without it).
/// Reads the symbol table with `nm`.
fn hot_order_found(exe: &Path) -> String {
    // Set by the build script (`node/build_link.rs`), which links with the same file.
    let order = Path::new(env!("KITH_HOT_ORDER"));
    let Ok(listed) = std::fs::read_to_string(order) else {
        return format!("n/a ({} not readable)", order.display());
    };
    let out = match Command::new("nm").arg("--defined-only").arg(exe).output() {
        Ok(o) if o.status.success() => o.stdout,
        _ => return "n/a (no `nm`, or no symbol table)".into(),
    };
    hot_order_report(&String::from_utf8_lossy(&out), &listed)
}

/// [`hot_order_found`]'s figure from `nm` output (`address type name` lines) and the list:
/// `found of listed, in the first X of Y MB of code`, X reaching from the first function of
/// the code to the end of the last listed one's start.
fn hot_order_report(nm: &str, listed: &str) -> String {
    let mut text: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for line in nm.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if matches!(kind, "t" | "T")
            && let Ok(addr) = u64::from_str_radix(addr, 16)
        {
            text.insert(name, addr);
        }
    }
    let listed: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    let found: Vec<u64> = listed.iter().filter_map(|f| text.get(f).copied()).collect();
    let (Some(&start), Some(&end)) = (text.values().min(), text.values().max()) else {
        return format!("0 of {} (no code symbols)", listed.len());
    };
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let hot_end = found.iter().copied().max().unwrap_or(start);
    format!(
        "{} of {}, in the first {:.1} of {:.1} MB of code",
        found.len(),
        listed.len(),
        mb(hot_end - start),
        mb(end - start)
    )
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Each process's CPU seconds so far.
fn cpu_now(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|&p| cpu_secs(p)).collect()
}

/// Each process's CPU seconds since `before` (from [`cpu_now`]).
fn cpu_since(pids: &[u32], before: &[f64]) -> Vec<f64> {
    pids.iter()
        .zip(before)
        .map(|(&p, b)| cpu_secs(p) - b)
        .collect()
}

/// Encodes `data` in-process: convergent key pass, then every segment on all cores.
fn encoder_only(data: &[u8], params: EncodingParams) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // The key pass as the node does it for a file on disk: pieces copied out and hashed on
    // every core.
    let key = kith_node::client::convergent_key_by_pieces(
        &[7u8; 32],
        &params,
        data.len() as u64,
        |offset, buf| {
            let at = offset as usize;
            buf.copy_from_slice(&data[at..at + buf.len()]);
            Ok(())
        },
    )?;
    let enc =
        FileEncoder::new(key, params, data.len() as u64).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = enc.num_segments();
    let seg = params.segment_size as usize;
    let hashes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let enc = &enc;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut i = t as u32;
                    while i < n {
                        let start = i as usize * seg;
                        let end = (start + seg).min(data.len());
                        if let Ok(e) = enc.encode_segment(i, &data[start..end]) {
                            out.push(e.hashes());
                        }
                        i += threads as u32;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    enc.finish(hashes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(start.elapsed())
}

struct Daemon {
    child: Child,
    dir: NodeDir,
    url: String,
    token: String,
}

/// A daemon that is still running when the bench lets go of it (an error on the way) is
/// killed, not left behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_api(dir: &NodeDir, child: &mut Child) -> anyhow::Result<(String, String)> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{} exited at start: {status}", dir.root().display());
        }
        if let Ok(text) = std::fs::read_to_string(dir.api_file()) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let url = v["url"].as_str().unwrap_or_default().to_owned();
            return Ok((url, dir.api_token()?));
        }
        if Instant::now() > end {
            bail!("{} did not start in 60 s", dir.root().display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One large-file round: upload through node 0, download through node 1.
struct Round {
    size: u64,
    enc: Duration,
    /// The file posted to node 0's HTTP API (convergent key: received, spooled, then sent).
    http: Upload,
    down: Duration,
    cpu_down: Vec<f64>,
    /// Shares the download read around (its report's `slow_shares`): none on an even grid.
    slow: usize,
    /// Segments whose block the download also asked of its spare share.
    spare_reads: u64,
    /// A file of the same size handed to node 0 over its local socket (`kith put`).
    local: Upload,
    /// Another one posted with a random key: encoded and sent as it arrives, never spooled.
    streamed: Upload,
    ok: bool,
}

/// One upload: time, peak RSS of node 0, every node's CPU, and the phases node 0 reports.
struct Upload {
    up: Duration,
    peak_rss_kib: u64,
    cpu: Vec<f64>,
    timings: serde_json::Value,
}

/// Measures `put` as an [`Upload`]; also returns node 0's JSON answer.
async fn measure_upload(
    daemons: &[Daemon],
    put: impl std::future::Future<Output = anyhow::Result<serde_json::Value>>,
) -> anyhow::Result<(Upload, serde_json::Value)> {
    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    let cpu_before = cpu_now(&pids);
    let (stop, sampler) = sample_rss(pids[0]);
    let start = Instant::now();
    let answer = put.await;
    let up = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_rss_kib = sampler.await?;
    let cpu = cpu_since(&pids, &cpu_before);
    let v = answer?;
    // Every server here is alike: one left behind as a laggard would mean fewer shares sent
    // than the figures claim (or a node hung during the run).
    if v["left_behind"].as_array().is_some_and(|l| !l.is_empty()) {
        eprintln!(
            "bench: warning: the upload left {} behind; this run placed fewer shares",
            v["left_behind"]
        );
    }
    let upload = Upload {
        up,
        peak_rss_kib,
        cpu,
        timings: v["timings"].clone(),
    };
    Ok((upload, v))
}

/// Uploads a file through node 0's local socket, as `kith put FILE` does: the daemon reads
/// the open file itself.
async fn put_local(up: &Daemon, file: &Path) -> anyhow::Result<serde_json::Value> {
    let socket = kith_node::local::socket_path(&up.dir);
    let token = up.token.clone();
    let f = std::fs::File::open(file)?;
    let answer = tokio::task::spawn_blocking(move || {
        kith_node::local::put(&socket, &token, &f, "name=bench", |_, _| {})
    })
    .await??;
    answer.map_err(|(e, status)| anyhow::anyhow!("local upload failed ({status}): {e}"))
}

/// Posts a file to node 0's HTTP API (`query` appended to the URL), streamed from disk.
async fn put_http(
    http: &reqwest::Client,
    up: &Daemon,
    file: &Path,
    query: &str,
) -> anyhow::Result<serde_json::Value> {
    let f = tokio::fs::File::open(file).await?;
    let size = f.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
    let resp = http
        .post(format!("{}/api/v1/files{query}", up.url))
        .bearer_auth(&up.token)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("upload failed: {}", resp.text().await?);
    }
    Ok(resp.json().await?)
}

/// Samples a process's RSS every 5 ms until told to stop; returns the maximum (KiB).
fn sample_rss(
    pid: u32,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut max = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            max = max.max(rss_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        max.max(rss_kib(pid, "VmRSS:"))
    });
    (stop, task)
}

async fn round(
    http: &reqwest::Client,
    daemons: &[Daemon],
    root: &Path,
    size: u64,
    params: EncodingParams,
) -> anyhow::Result<Round> {
    let data = {
        use rand::{RngCore, SeedableRng};
        let mut v = vec![0u8; size as usize];
        rand::rngs::StdRng::seed_from_u64(size).fill_bytes(&mut v);
        v
    };
    let file = root.join(format!("input-{size}.bin"));
    std::fs::write(&file, &data)?;
    let enc = encoder_only(&data, params)?;
    let (http_up, put) = measure_upload(daemons, put_http(http, &daemons[0], &file, "")).await?;
    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    let cap = put["cap"].as_str().unwrap_or_default().to_owned();
    let down = &daemons[1];
    let cpu_before = cpu_now(&pids);
    let start = Instant::now();
    let mut resp = http
        .get(format!("{}/api/v1/files/{cap}", down.url))
        .bearer_auth(&down.token)
        .send()
        .await?;
    // Checked against the original bytes kept in memory: a comparison costs a fraction of
    // hashing the download, and the bench shares the nodes' two cores.
    let mut got = 0usize;
    let mut same = true;
    while let Some(chunk) = resp.chunk().await? {
        let end = got + chunk.len();
        same &= data.get(got..end) == Some(&chunk[..]);
        got = end;
    }
    let down_time = start.elapsed();
    let cpu_down = cpu_since(&pids, &cpu_before);
    let report: serde_json::Value = http
        .get(format!(
            "{}/api/v1/reports/{}",
            down.url,
            header(&resp, "x-kith-report")
        ))
        .bearer_auth(&down.token)
        .send()
        .await?
        .json()
        .await?;
    let slow = report["slow_shares"].as_array().map_or(0, Vec::len);
    let spare_reads = report["spare_reads"].as_u64().unwrap_or(0);
    // The same size again through the local socket, with other bytes (the same ones would be
    // found already stored), after the download so that it measures what it did before.
    {
        use rand::{RngCore, SeedableRng};
        let mut other = vec![0u8; size as usize];
        rand::rngs::StdRng::seed_from_u64(!size).fill_bytes(&mut other);
        std::fs::write(&file, &other)?;
    }
    let uploads = async {
        let local = measure_upload(daemons, put_local(&daemons[0], &file)).await?;
        // And once more over HTTP with a random key (new shares whatever the bytes).
        let query = "?random_key=true&name=bench";
        let streamed = measure_upload(daemons, put_http(http, &daemons[0], &file, query)).await?;
        anyhow::Ok((local.0, streamed.0))
    }
    .await;
    let _ = std::fs::remove_file(&file);
    let (local, streamed) = uploads?;
    Ok(Round {
        size,
        enc,
        http: http_up,
        down: down_time,
        cpu_down,
        slow,
        spare_reads,
        local,
        streamed,
        ok: same && got as u64 == size,
    })
}

/// Uploads `count` distinct small files through node 0, `parallel` at once; then downloads
/// them all through node 1 and checks every byte. Returns (upload time, download time).
async fn small_files(
    http: &reqwest::Client,
    daemons: &[Daemon],
    count: usize,
    size: usize,
    parallel: usize,
) -> anyhow::Result<(Duration, Duration)> {
    use futures::StreamExt;
    let files: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            use rand::{RngCore, SeedableRng};
            let mut v = vec![0u8; size];
            rand::rngs::StdRng::seed_from_u64(1_000_000 + i as u64).fill_bytes(&mut v);
            v
        })
        .collect();
    let (up, down) = (&daemons[0], &daemons[1]);
    let start = Instant::now();
    let caps: Vec<anyhow::Result<String>> = futures::stream::iter(files.iter().cloned())
        .map(|body| async move {
            let r = http
                .post(format!("{}/api/v1/files", up.url))
                .bearer_auth(&up.token)
                .body(body)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("small upload failed: {}", r.text().await?);
            }
            let v: serde_json::Value = r.json().await?;
            Ok(v["cap"].as_str().unwrap_or_default().to_owned())
        })
        .buffered(parallel)
        .collect()
        .await;
    let up_time = start.elapsed();
    let caps: Vec<String> = caps.into_iter().collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let got: Vec<anyhow::Result<Vec<u8>>> = futures::stream::iter(caps.iter())
        .map(|cap| async move {
            let r = http
                .get(format!("{}/api/v1/files/{cap}", down.url))
                .bearer_auth(&down.token)
                .send()
                .await?;
            Ok(r.bytes().await?.to_vec())
        })
        .buffered(parallel)
        .collect()
        .await;
    let down_time = start.elapsed();
    for (want, got) in files.iter().zip(got) {
        if &got? != want {
            bail!("a small file came back different");
        }
    }
    Ok((up_time, down_time))
}

async fn grid(
    nodes: usize,
    sizes: &[u64],
    (small_count, small_size, small_parallel): (usize, usize, usize),
    params: EncodingParams,
    workdir: Option<PathBuf>,
    direct_io: bool,
) -> anyhow::Result<()> {
    if nodes < 2 {
        bail!("need at least 2 nodes");
    }
    let tmp = tempfile::tempdir()?;
    let root = workdir.unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "kith bench: {nodes} nodes on loopback, {}-of-{} (happy {}), {cores} cores",
        params.needed, params.total, params.happy
    );
    let me = std::env::current_exe()?;
    let mut dirs = Vec::new();
    for i in 0..nodes {
        let dir = NodeDir::new(root.join(format!("node{i}")));
        let mut raw = RawConfig {
            nickname: format!("bench{i}"),
            ..RawConfig::default()
        };
        raw.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        raw.encoding.shares_needed = params.needed;
        raw.encoding.shares_happy = params.happy;
        raw.encoding.shares_total = params.total;
        raw.encoding.segment_size = ByteSize(u64::from(params.segment_size));
        raw.storage.reserved = ByteSize(0);
        raw.storage.direct_io = direct_io;
        raw.repair.enabled = false;
        dir.init(raw)?;
        dirs.push(dir);
    }
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut daemons = form_grid(&me, &http, dirs).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = daemons[0].child.id();
    let idle_rss = rss_kib(pid, "VmRSS:");
    let mut rounds = Vec::new();
    let mut failure = None;
    for &size in sizes {
        match round(&http, &daemons, &root, size, params).await {
            Ok(r) => rounds.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let small = if small_count > 0 && failure.is_none() {
        Some(small_files(&http, &daemons, small_count, small_size, small_parallel).await)
    } else {
        None
    };
    let idle_after = rss_kib(pid, "VmRSS:");
    for d in &mut daemons {
        let _ = http
            .post(format!("{}/api/v1/shutdown", d.url))
            .bearer_auth(&d.token)
            .send()
            .await;
    }
    for d in &mut daemons {
        let _ = d.child.wait();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| uploading node RSS idle | {:.1} MiB (after the runs: {:.1} MiB) |",
        idle_rss as f64 / 1024.0,
        idle_after as f64 / 1024.0
    );
    println!(
        "| functions of `node/link/hot.order` in this binary | {} |",
        hot_order_found(&me)
    );
    for r in &rounds {
        let name = ByteSize(r.size).to_string();
        let enc_mbs = r.size as f64 / 1e6 / r.enc.as_secs_f64();
        println!(
            "| {name}: encoder only (key pass + encode, {cores} cores) | {enc_mbs:.0} MB/s ({:.0} MiB/s) |",
            mib_s(r.size, r.enc)
        );
        println!(
            "| {name}: upload (node 0 API -> {nodes} servers) | {:.1} MiB/s ({:.2} s), {:.0}% of encoder-only |",
            mib_s(r.size, r.http.up),
            r.http.up.as_secs_f64(),
            100.0 * r.enc.as_secs_f64() / r.http.up.as_secs_f64()
        );
        println!(
            "| {name}: download (node 1 API, verified) | {:.1} MiB/s ({:.2} s){}{} |",
            mib_s(r.size, r.down),
            r.down.as_secs_f64(),
            if r.slow > 0 || r.spare_reads > 0 {
                format!(
                    ", {} slow share(s) read around, {} spare read(s)",
                    r.slow, r.spare_reads
                )
            } else {
                String::new()
            },
            if r.ok { "" } else { " NOT IDENTICAL" }
        );
        println!(
            "| {name}: uploading node RSS peak | {:.1} MiB (+{:.1} MiB over idle) |",
            r.http.peak_rss_kib as f64 / 1024.0,
            r.http.peak_rss_kib.saturating_sub(idle_rss) as f64 / 1024.0
        );
        println!(
            "| {name}: CPU during upload | uploader {:.2} s, {} servers {:.2} s, in {:.2} s wall |",
            r.http.cpu[0],
            nodes - 1,
            r.http.cpu[1..].iter().sum::<f64>(),
            r.http.up.as_secs_f64()
        );
        println!(
            "| {name}: CPU during download | downloader {:.2} s, {} others {:.2} s, in {:.2} s wall |",
            r.cpu_down[1],
            nodes - 1,
            r.cpu_down[0] + r.cpu_down[2..].iter().sum::<f64>(),
            r.down.as_secs_f64()
        );
        let t = &r.http.timings;
        println!(
            "| {name}: upload phases (ms) | receive+spool {} / key pass {} / placement {} / encode+send {} / close {} |",
            t["receive_ms"], t["key_ms"], t["placement_ms"], t["stream_ms"], t["close_ms"]
        );
        for (l, what, short) in [
            (
                &r.local,
                "upload (`kith put`: file handed over the local socket)",
                "`kith put`",
            ),
            (
                &r.streamed,
                "upload over HTTP with a random key (sent as it arrives, no spool)",
                "the random-key upload",
            ),
        ] {
            println!(
                "| {name}: {what} | {:.1} MiB/s ({:.2} s), {:.0}% of encoder-only; RSS peak +{:.1} MiB |",
                mib_s(r.size, l.up),
                l.up.as_secs_f64(),
                100.0 * r.enc.as_secs_f64() / l.up.as_secs_f64(),
                l.peak_rss_kib.saturating_sub(idle_rss) as f64 / 1024.0
            );
            println!(
                "| {name}: CPU during {short} | uploader {:.2} s, {} servers {:.2} s |",
                l.cpu[0],
                nodes - 1,
                l.cpu[1..].iter().sum::<f64>(),
            );
            let t = &l.timings;
            println!(
                "| {name}: {short} phases (ms) | key pass {} / placement {} / encode+send {} / close {} |",
                t["key_ms"], t["placement_ms"], t["stream_ms"], t["close_ms"]
            );
        }
    }
    if let Some(small) = small {
        let (up, down) = small?;
        println!(
            "| {small_count} x {}: upload ({small_parallel} at once) | {:.2} s, {:.0} files/s |",
            ByteSize(small_size as u64),
            up.as_secs_f64(),
            small_count as f64 / up.as_secs_f64()
        );
        println!(
            "| {small_count} x {}: download, verified | {:.2} s, {:.0} files/s |",
            ByteSize(small_size as u64),
            down.as_secs_f64(),
            small_count as f64 / down.as_secs_f64()
        );
    }
    drop(tmp);
    if rounds.iter().any(|r| !r.ok) {
        bail!("a downloaded file differs");
    }
    Ok(())
}

async fn spawn_daemon(me: &std::path::Path, mut dir: NodeDir) -> anyhow::Result<Daemon> {
    // A node dir's ports are picked when it is created; by the time its daemon starts, another
    // process may have one (this machine's other daemons and their outgoing connections draw
    // from the same range). A daemon that exits at start gets fresh ports and another try.
    let mut tries = 0;
    loop {
        tries += 1;
        let child = Command::new(me)
            .arg("node")
            .arg(dir.root())
            .env("KITH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("spawning a node")?;
        // A `Daemon` from the start, so that its `Drop` kills the child on every error below.
        let mut d = Daemon {
            child,
            dir,
            url: String::new(),
            token: String::new(),
        };
        match wait_api(&d.dir, &mut d.child).await {
            Ok((url, token)) => {
                (d.url, d.token) = (url, token);
                return Ok(d);
            }
            Err(e) if tries < 3 && d.child.try_wait()?.is_some() => {
                eprintln!("{e:#}; trying again on fresh ports");
                repick_ports(&d.dir)?;
                dir = d.dir.clone();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Gives a node dir's listen and API addresses fresh ports (see [`spawn_daemon`]).
fn repick_ports(dir: &NodeDir) -> anyhow::Result<()> {
    let path = dir.config_path();
    let mut raw: RawConfig = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let port = nodedir::free_port();
    raw.network.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
    raw.api.listen = format!("127.0.0.1:{}", nodedir::free_port_except(port));
    nodedir::write_atomic(dir.root(), CONFIG_FILE, toml::to_string(&raw)?.as_bytes())?;
    Ok(())
}

async fn api_post(
    http: &reqwest::Client,
    d: &Daemon,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = http
        .post(format!("{}/api/v1{path}", d.url))
        .bearer_auth(&d.token)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("{path}: {}", r.text().await?);
    }
    Ok(r.json().await?)
}

async fn members(http: &reqwest::Client, d: &Daemon) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = http
        .get(format!("{}/api/v1/grid", d.url))
        .bearer_auth(&d.token)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["peer_id"].as_str().map(str::to_owned))
        .collect())
}

/// Node `i` joins with an invitation from node `inviter`.
async fn invite_join(
    http: &reqwest::Client,
    inviter: &Daemon,
    joiner: &Daemon,
) -> anyhow::Result<()> {
    let inv = api_post(http, inviter, "/grid/invite", serde_json::json!({})).await?;
    api_post(
        http,
        joiner,
        "/grid/join",
        serde_json::json!({ "code": inv["code"] }),
    )
    .await?;
    Ok(())
}

/// Waits until every daemon lists `n` members.
async fn wait_members(http: &reqwest::Client, daemons: &[Daemon], n: usize) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    for d in daemons {
        while members(http, d).await?.len() < n {
            if Instant::now() > end {
                bail!("{} never listed {n} members", d.dir.root().display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Starts daemons for `dirs` and forms a grid: node i joins with node (i-1)/2's invitation.
async fn form_grid(
    me: &std::path::Path,
    http: &reqwest::Client,
    dirs: Vec<NodeDir>,
) -> anyhow::Result<Vec<Daemon>> {
    let mut daemons = Vec::new();
    for dir in dirs {
        daemons.push(spawn_daemon(me, dir).await?);
    }
    for i in 1..daemons.len() {
        invite_join(http, &daemons[(i - 1) / 2], &daemons[i]).await?;
    }
    wait_members(http, &daemons, daemons.len()).await?;
    Ok(daemons)
}

async fn join_bench(nodes: usize, rounds: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let init = |i: usize| -> anyhow::Result<NodeDir> {
        let dir = NodeDir::new(tmp.path().join(format!("node{i}")));
        let mut raw = RawConfig {
            nickname: format!("bench{i}"),
            ..RawConfig::default()
        };
        raw.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        raw.storage.reserved = ByteSize(0);
        dir.init(raw)?;
        Ok(dir)
    };
    let dirs = (0..nodes).map(init).collect::<anyhow::Result<Vec<_>>>()?;
    let t = Instant::now();
    let mut daemons = form_grid(&me, &http, dirs).await?;
    println!(
        "kith bench join: {nodes} daemons on loopback formed a grid by invitation chains in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "{:>6} {:>10} {:>22} {:>22}",
        "round", "members", "joiner lists all (ms)", "all list joiner (ms)"
    );
    for r in 0..rounds {
        let i = daemons.len();
        let d = spawn_daemon(&me, init(i)?).await?;
        let inviter = r % daemons.len();
        let start = Instant::now();
        invite_join(&http, &daemons[inviter], &d).await?;
        let mut joiner_done = None;
        let mut all_done = None;
        let end = Instant::now() + Duration::from_secs(30);
        let pid = {
            let v: serde_json::Value = http
                .get(format!("{}/api/v1/id", d.url))
                .bearer_auth(&d.token)
                .send()
                .await?
                .json()
                .await?;
            v["peer_id"].as_str().unwrap_or_default().to_owned()
        };
        while joiner_done.is_none() || all_done.is_none() {
            if joiner_done.is_none() && members(&http, &d).await?.len() > daemons.len() {
                joiner_done = Some(start.elapsed());
            }
            if all_done.is_none() {
                let mut all = true;
                for o in &daemons {
                    if !members(&http, o).await?.contains(&pid) {
                        all = false;
                        break;
                    }
                }
                if all {
                    all_done = Some(start.elapsed());
                }
            }
            if Instant::now() > end {
                bail!("round {r}: the grid did not converge in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "{:>6} {:>10} {:>22.0} {:>22.0}",
            r + 1,
            daemons.len() + 1,
            ms(joiner_done),
            ms(all_done)
        );
        daemons.push(d);
    }
    for mut d in daemons {
        let _ = d.child.kill();
        let _ = d.child.wait();
    }
    Ok(())
}

/// A response header's value as text ("" when absent).
fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::hot_order_report;

    const LISTED: &str = "hot_a\nhot_b\ngone\n";

    #[test]
    fn listed_functions_linked_first_show_a_short_span() {
        let nm = "0000000000001000 T hot_a\n0000000000001800 t hot_b\n\
                  0000000000002000 T cold\n0000000000400000 T colder\n\
                  0000000000500000 D data\n                 U undefined\n";
        assert_eq!(
            hot_order_report(nm, LISTED),
            "2 of 3, in the first 0.0 of 4.2 MB of code"
        );
    }

    #[test]
    fn listed_functions_spread_over_the_code_show_its_whole_span() {
        let nm = "0000000000001000 T cold\n0000000000200000 T hot_a\n\
                  0000000000400000 t hot_b\n";
        assert_eq!(
            hot_order_report(nm, LISTED),
            "2 of 3, in the first 4.2 of 4.2 MB of code"
        );
    }

    #[test]
    fn no_code_symbols_say_so() {
        assert_eq!(hot_order_report("", LISTED), "0 of 3 (no code symbols)");
    }
}
