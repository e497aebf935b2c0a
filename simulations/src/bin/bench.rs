//! `bench grid`: start N real kith daemons on loopback (child processes), upload a random file
//! through node 0's local API and download it through node 1's, and print in one table:
//! encoder-only throughput (the same file encoded in-process on every core), end-to-end upload
//! and download MiB/s, and the uploading node's idle and peak RSS.
//!
//! ```text
//! cargo run --release -p kith-simulations --bin bench -- grid --nodes 10 --size 256MiB
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
    config::{ByteSize, RawConfig},
    nodedir::NodeDir,
};
use sha2::{Digest, Sha256};

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
        /// File size.
        #[arg(long, default_value = "256MiB")]
        size: ByteSize,
        /// k.
        #[arg(long, default_value_t = 3)]
        needed: u8,
        /// Servers of happiness.
        #[arg(long, default_value_t = 7)]
        happy: u8,
        /// n.
        #[arg(long, default_value_t = 10)]
        total: u8,
        /// Keep the node dirs here instead of a temp dir.
        #[arg(long)]
        workdir: Option<PathBuf>,
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
            size,
            needed,
            happy,
            total,
            workdir,
        } => rt.block_on(grid(
            nodes,
            size.0,
            EncodingParams {
                needed,
                happy,
                total,
                segment_size: 1 << 20,
            },
            workdir,
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

/// Encodes `data` in-process: convergent key pass, then every segment on all cores.
fn encoder_only(data: &[u8], params: EncodingParams) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut h = kith_node::codec::ConvergentKeyHasher::new(&[7u8; 32], &params);
    h.update(data);
    let key = h.finalize();
    let enc =
        FileEncoder::new(key, params, data.len() as u64).map_err(|e| anyhow::anyhow!("{e}"))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
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

async fn wait_api(dir: &NodeDir) -> anyhow::Result<(String, String)> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.api_file()) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let url = v["url"].as_str().unwrap_or_default().to_owned();
            return Ok((url, dir.api_token()?));
        }
        if Instant::now() > end {
            bail!("{} did not start", dir.root().display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn grid(
    nodes: usize,
    size: u64,
    params: EncodingParams,
    workdir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if nodes < 2 {
        bail!("need at least 2 nodes");
    }
    let tmp = tempfile::tempdir()?;
    let root = workdir.unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    println!(
        "kith bench: {nodes} nodes on loopback, {} file, {}-of-{} (happy {})",
        ByteSize(size),
        params.needed,
        params.total,
        params.happy
    );
    let data = {
        use rand::{RngCore, SeedableRng};
        let mut v = vec![0u8; size as usize];
        rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut v);
        v
    };
    let file = root.join("input.bin");
    std::fs::write(&file, &data)?;
    let want = Sha256::digest(&data);

    let enc_time = encoder_only(&data, params)?;
    drop(data);

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
        raw.storage.reserved = ByteSize(0);
        dir.init(raw)?;
        dirs.push(dir);
    }
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut daemons = form_grid(&me, &http, dirs).await?;
    let up = &daemons[0];
    let pid = up.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid, "VmRSS:");
    let idle_hwm = rss_kib(pid, "VmHWM:");

    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    let cpu_before: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let start = Instant::now();
    let f = tokio::fs::File::open(&file).await?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
    let resp = http
        .post(format!("{}/api/v1/files", up.url))
        .bearer_auth(&up.token)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("upload failed: {}", resp.text().await?);
    }
    let put: serde_json::Value = resp.json().await?;
    let up_time = start.elapsed();
    let peak_rss = rss_kib(pid, "VmHWM:");
    let cpu_up: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| cpu_secs(p) - b)
        .collect();
    let cap = put["cap"].as_str().unwrap_or_default().to_owned();

    let down = &daemons[1];
    let start = Instant::now();
    let mut resp = http
        .get(format!("{}/api/v1/files/{cap}", down.url))
        .bearer_auth(&down.token)
        .send()
        .await?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let down_time = start.elapsed();
    let ok = got == size && hasher.finalize() == want;

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
    let enc_mbs = size as f64 / 1e6 / enc_time.as_secs_f64();
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| encoder only (key pass + encode, all cores) | {enc_mbs:.0} MB/s ({:.0} MiB/s) |",
        mib_s(size, enc_time)
    );
    println!(
        "| upload (node 0 API -> {nodes} servers) | {:.1} MiB/s ({:.2} s) |",
        mib_s(size, up_time),
        up_time.as_secs_f64()
    );
    println!(
        "| download (node 1 API, verified) | {:.1} MiB/s ({:.2} s) |",
        mib_s(size, down_time),
        down_time.as_secs_f64()
    );
    println!(
        "| upload / encoder-only | {:.0}% |",
        100.0 * enc_time.as_secs_f64() / up_time.as_secs_f64()
    );
    println!(
        "| uploading node RSS idle | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| uploading node RSS peak during upload | {:.1} MiB (+{:.1} MiB over idle) |",
        peak_rss as f64 / 1024.0,
        (peak_rss.saturating_sub(idle_rss.max(idle_hwm.min(idle_rss)))) as f64 / 1024.0
    );
    println!(
        "| CPU during upload | uploader {:.2} s, {} servers {:.2} s, in {:.2} s wall on {} cores |",
        cpu_up[0],
        nodes - 1,
        cpu_up[1..].iter().sum::<f64>(),
        up_time.as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let t = &put["timings"];
    println!(
        "| upload phases (ms) | receive+spool {} / key pass {} / placement {} / encode+send {} / close {} |",
        t["receive_ms"], t["key_ms"], t["placement_ms"], t["stream_ms"], t["close_ms"]
    );
    println!(
        "| download byte-identical | {} |",
        if ok { "yes" } else { "NO" }
    );
    drop(tmp);
    if !ok {
        bail!("downloaded file differs");
    }
    let _ = Path::new("");
    Ok(())
}

async fn spawn_daemon(me: &std::path::Path, dir: NodeDir) -> anyhow::Result<Daemon> {
    let child = Command::new(me)
        .arg("node")
        .arg(dir.root())
        .env("KITH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("spawning a node")?;
    let (url, token) = wait_api(&dir).await?;
    Ok(Daemon {
        child,
        dir,
        url,
        token,
    })
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
