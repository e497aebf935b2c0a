//! `kith`: the command-line interface of a kith node.
//!
//! `init` and `run` work on the node dir directly; `id` asks the daemon when one runs and reads
//! `kith.toml` otherwise; every other command talks to the running daemon over its local HTTP
//! API (address in `<dir>/api.json`, token in `<dir>/private/api-token`).

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use kith_node::{
    api::ApiInfo,
    config::{ByteSize, RawConfig},
    daemon::{self, RunOptions},
    nodedir::NodeDir,
};

/// `println!` that ends the process quietly when stdout is a closed pipe (`kith id | head -1`).
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (the message says why)
  2  bad usage (unknown flag, missing argument)
  3  no kith daemon is running for this node dir (start one with `kith run`)
  4  check / deep-check: something is unhealthy (after repair, when --repair was given)
  5  uncoordinated write: another writer changed the mutable file at the same time; nothing
     of yours was written — run the command again";

const CHECK_EXIT_CODES: &str = "\
Exit codes:
  0  healthy (or repaired to healthy)
  1  the check could not run (the message says why)
  2  bad usage
  3  no kith daemon is running for this node dir
  4  unhealthy after the command";

/// kith: a peer-to-peer friendnet storage node.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Node directory [default: $KITH_DIR or ~/.kith]
    #[arg(long, global = true, env = "KITH_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a node dir (kith.toml, node key, secrets).
    Init(Box<InitArgs>),
    /// Run the node in the foreground (creates the node dir with defaults if needed).
    Run,
    /// Print this node's dialable addresses with /p2p/<peer id>, one a line.
    Id,
    /// Show node id, addresses, connected peers and storage usage.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage static peers (dialed at start and kept connected).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Upload a file (or stdin with `-`); prints its cap as the last line. With a
    /// destination (`alias:path`) it is linked there; a mutable file already there is
    /// updated in place (new version, same cap).
    Put {
        /// File to upload, or `-` for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Where to link it: `alias:dir/name` or `<dircap>/name`.
        dest: Option<String>,
        /// Make (or update) a mutable file (at most 4 MiB) instead of an immutable one.
        #[arg(long)]
        mutable: bool,
        /// Encrypt with a random key instead of the convergent one.
        #[arg(long)]
        random_key: bool,
        /// k: shares needed to rebuild.
        #[arg(long)]
        shares_needed: Option<u8>,
        /// Servers of happiness.
        #[arg(long)]
        shares_happy: Option<u8>,
        /// n: shares made.
        #[arg(long)]
        shares_total: Option<u8>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a file by its cap or path (`alias:path`).
    Get {
        /// The read cap (kith:chk:…, kith:lit:…, kith:ssk:…) or a path like home:notes.txt.
        cap: String,
        /// Output file [default: stdout].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Create an invitation code for a friend (one line; `kith join <code>` on their side).
    Invite {
        /// How long the code stays valid: 30m, 24h, 7d… [default: 7d].
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a grid with an invitation code (works with or without a running daemon).
    Join {
        /// The code from `kith invite`.
        code: String,
    },
    /// List the grid's members.
    Members {
        /// Print JSON (members, expulsions, gossip counters).
        #[arg(long)]
        json: bool,
    },
    /// Expel a member grid-wide (founder or the member's inviter only).
    Expel {
        /// The member's peer id.
        peer: String,
    },
    /// Friends and access: per friend what it stores here, what this node stores there, its
    /// grant and audit score.
    Friends {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grant a friend storage on this node (unlimited, or up to a quota).
    Grant {
        /// The friend's peer id.
        peer: String,
        /// Most bytes it may store here: 50GiB, 10GB… [default: unlimited].
        #[arg(long)]
        quota: Option<String>,
    },
    /// Revoke a friend's access: no new writes from now; its shares are kept for the grace
    /// period, then collected.
    Revoke {
        /// The friend's peer id.
        peer: String,
        /// Grace period: 30m, 24h, 7d… [default: 7d].
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
    },
    /// Renew this node's leases on everything it uploaded (the daemon also does it by itself).
    Renew,
    /// Audit servers holding this node's shares now: random blocks, checked against the
    /// files' verify caps; scores show in `kith friends`.
    Audit {
        /// Challenges to send.
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// Run the storage server's garbage collector now (expired leases, revoked friends past
    /// their grace period).
    Collect,
    /// Show or change the storage policy for friends.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a file's shares (by read or verify cap); optionally verify every block and
    /// repair it. Prints one summary line, e.g. `healthy: 10/10 shares on 10 servers (happy 10
    /// >= 7)`.
    #[command(after_help = CHECK_EXIT_CODES)]
    Check {
        /// Also download and check every block of every share (finds corrupt shares).
        #[arg(long)]
        verify: bool,
        /// Repair an unhealthy file: regenerate missing or corrupt shares (from the verify cap
        /// alone) and place them by servers of happiness.
        #[arg(long)]
        repair: bool,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        /// The file's cap (kith:chk:…, kith:chk-verify:…, kith:lit:…), a mutable file's or
        /// directory's cap, or a path (alias:path).
        cap: String,
    },
    /// Print the control panel URL.
    Panel,
    /// Create a directory; prints its write cap. With a path, links it there (parents too).
    Mkdir {
        /// Where: `alias:path` [default: unlinked, just print the cap].
        path: Option<String>,
    },
    /// Local names for caps (kept in the node dir): `home:` in paths.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// List a directory (or show one file).
    Ls {
        /// `alias:path`, `alias:` or a directory cap.
        path: String,
        /// Long listing: kind, size, modification time, cap.
        #[arg(short, long)]
        long: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy local files to the grid (`-r` for directories: one progress bar, each directory
    /// linked in one write).
    Cp {
        /// Copy directories recursively.
        #[arg(short, long)]
        recursive: bool,
        /// Local file or directory.
        src: PathBuf,
        /// Destination `alias:path`.
        dest: String,
        /// Print JSON (every file's cap).
        #[arg(long)]
        json: bool,
    },
    /// Rename or move an entry (within or between writable directories).
    Mv {
        /// From `alias:path`.
        from: String,
        /// To `alias:path`.
        to: String,
    },
    /// Unlink an entry from its directory (the file stays on the grid until its leases
    /// expire).
    Rm {
        /// `alias:path`.
        path: String,
    },
    /// Link a cap, or what a path names, at another path.
    Ln {
        /// A cap, or `alias:path`.
        from: String,
        /// Where to link it: `alias:path`.
        to: String,
        /// Replace an existing entry.
        #[arg(long)]
        replace: bool,
    },
    /// Freeze a directory tree: an immutable copy (mutable files by their current content);
    /// prints its cap, links it at DEST if given.
    Snapshot {
        /// The directory: `alias:path` or a cap.
        path: String,
        /// Where to link the snapshot: `alias:path`.
        dest: Option<String>,
    },
    /// Print the next weaker cap, offline: write -> read -> verify.
    Attenuate {
        /// A cap.
        cap: String,
    },
    /// Check every file and directory under a path; --repair fixes what is unhealthy.
    DeepCheck {
        /// `alias:path` or a directory cap.
        path: String,
        /// Fetch and verify every block of immutable files.
        #[arg(long)]
        verify: bool,
        /// Repair what is unhealthy.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the running daemon.
    Stop,
}

#[derive(Subcommand, Debug)]
enum AliasCommand {
    /// Name a cap.
    Add {
        /// The name (letters, digits, '-', '_', '.').
        name: String,
        /// The cap (usually a directory's write cap from `kith mkdir`).
        cap: String,
        /// Replace an existing alias.
        #[arg(long)]
        replace: bool,
    },
    /// List aliases (their caps are secrets: this prints them).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget an alias (the directory stays on the grid).
    Rm {
        /// The name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Show the policy.
    Show,
    /// Change it: `default-grant 10GiB|unlimited|none`, `reciprocal 1.0|off`,
    /// `invite-only [on|off]`.
    Set {
        /// The change, as words.
        #[arg(required = true, num_args = 1..)]
        change: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PeerCommand {
    /// Record a static peer and connect to it: /ip4/…/tcp/…/p2p/<peer id>.
    Add {
        /// The peer's multiaddr with /p2p/<peer id>.
        addr: String,
    },
    /// List static peers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a static peer.
    Remove {
        /// The peer id.
        peer: String,
    },
}

#[derive(Args, Debug)]
struct InitArgs {
    /// A name for humans.
    #[arg(long)]
    nickname: Option<String>,
    /// Listen multiaddr (repeatable) [default: TCP and QUIC on all interfaces, IPv4 and IPv6,
    /// a free port].
    #[arg(long)]
    listen: Vec<String>,
    /// Extra multiaddr to announce (repeatable).
    #[arg(long)]
    announce: Vec<String>,
    /// Static peer multiaddr with /p2p/<id> (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// k: shares needed to rebuild a file [default: 3].
    #[arg(long)]
    shares_needed: Option<u8>,
    /// Servers of happiness [default: 7].
    #[arg(long)]
    shares_happy: Option<u8>,
    /// n: shares per file [default: 10].
    #[arg(long)]
    shares_total: Option<u8>,
    /// Segment size [default: 1MiB].
    #[arg(long)]
    segment_size: Option<ByteSize>,
    /// Use a random key per upload instead of convergent encryption.
    #[arg(long)]
    random_key: bool,
    /// Most share bytes to keep for others [default: 100GiB].
    #[arg(long)]
    capacity: Option<ByteSize>,
    /// Disk space always left free [default: 1GiB].
    #[arg(long)]
    reserved: Option<ByteSize>,
    /// Lease duration in days [default: 31].
    #[arg(long)]
    lease_days: Option<u32>,
    /// Do not offer storage to peers.
    #[arg(long)]
    no_storage: bool,
    /// Local API / panel address (loopback) [default: 127.0.0.1 and a free port].
    #[arg(long)]
    api_listen: Option<String>,
    /// Sysadmin mode: only the configured listen/announce addresses; no address detection,
    /// UPnP, relays or hole punching.
    #[arg(long)]
    sysadmin: bool,
    /// Do not map ports on the router (UPnP).
    #[arg(long)]
    no_upnp: bool,
    /// Anonymous node: Tor only (an onion service, dials through Tor), no clearnet listen
    /// address, sysadmin NAT mode. Refuses any setting that could reveal the IP address.
    #[arg(long, conflicts_with_all = ["listen", "tor"])]
    tor_only: bool,
    /// Also run an onion service and dial onion addresses through Tor (clearnet stays on).
    #[arg(long)]
    tor: bool,
    /// No Tor at all: don't dial members' onion addresses through Tor (by default a clearnet
    /// node starts arti on demand, at its first dial to a Tor-only member).
    #[arg(long, conflicts_with_all = ["tor_only", "tor"])]
    no_tor: bool,
    /// Virtual port of the onion service [default: 41800].
    #[arg(long)]
    tor_port: Option<u16>,
    /// Extra arti configuration file (TOML), e.g. for a private Tor network.
    #[arg(long)]
    arti_config: Option<std::path::PathBuf>,
    /// Do not run the automatic repairer.
    #[arg(long)]
    no_repair: bool,
    /// Time between the automatic repairer's passes: 90s, 30m, 1h, 1d [default: 1h].
    #[arg(long)]
    repair_interval: Option<String>,
    /// Pause between two files of a repairer pass [default: 1s].
    #[arg(long)]
    repair_pause: Option<String>,
}

impl InitArgs {
    fn into_raw(self) -> RawConfig {
        let mut raw = RawConfig {
            nickname: self.nickname.unwrap_or_else(default_nickname),
            ..RawConfig::default()
        };
        if !self.listen.is_empty() {
            raw.network.listen = self.listen;
        }
        raw.network.announce = self.announce;
        raw.network.peers = self.peers;
        let e = &mut raw.encoding;
        e.shares_needed = self.shares_needed.unwrap_or(e.shares_needed);
        e.shares_happy = self.shares_happy.unwrap_or(e.shares_happy);
        e.shares_total = self.shares_total.unwrap_or(e.shares_total);
        e.segment_size = self.segment_size.unwrap_or(e.segment_size);
        e.convergent = !self.random_key;
        let s = &mut raw.storage;
        s.capacity = self.capacity.unwrap_or(s.capacity);
        s.reserved = self.reserved.unwrap_or(s.reserved);
        s.lease_days = self.lease_days.unwrap_or(s.lease_days);
        s.enabled = !self.no_storage;
        if let Some(a) = self.api_listen {
            raw.api.listen = a;
        }
        raw.nat.sysadmin = self.sysadmin;
        raw.nat.upnp = !self.no_upnp;
        if self.tor {
            raw.tor.mode = kith_node::config::TorMode::Both;
        }
        if self.tor_only {
            raw.tor.mode = kith_node::config::TorMode::Only;
            raw.nat.sysadmin = true;
            raw.network.listen.clear();
        }
        raw.tor.dial_onions = !self.no_tor;
        raw.tor.port = self.tor_port.unwrap_or(raw.tor.port);
        raw.tor.arti_config = self.arti_config;
        raw.repair.enabled = !self.no_repair;
        if let Some(i) = self.repair_interval {
            raw.repair.interval = i;
        }
        if let Some(p) = self.repair_pause {
            raw.repair.pause = p;
        }
        raw
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn default_nickname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().chars().take(32).collect())
        .unwrap_or_default()
}

/// `check` / `deep-check` found something unhealthy: exit code 4.
#[derive(Debug)]
struct Unhealthy;

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not healthy (see above)")
    }
}

impl std::error::Error for Unhealthy {}

/// Prints `v` as pretty JSON with `--json`, for people with `human` otherwise.
fn show(
    v: &serde_json::Value,
    json: bool,
    human: impl FnOnce(&serde_json::Value),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human(v);
    }
    Ok(())
}

/// Prints a deep-check report; `Unhealthy` (exit 4) when anything is.
fn print_deep_check(v: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    show(v, json, |v| {
        for n in v["nodes"].as_array().into_iter().flatten() {
            if n["healthy"].as_bool() != Some(true) || n["repair"].is_string() {
                println!(
                    "{:9} {}: {}{}",
                    if n["healthy"].as_bool() == Some(true) {
                        "healthy"
                    } else {
                        "UNHEALTHY"
                    },
                    n["path"].as_str().unwrap_or_default(),
                    n["summary"].as_str().unwrap_or_default(),
                    n["repair"]
                        .as_str()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default()
                );
            }
        }
        for u in v["unreadable"].as_array().into_iter().flatten() {
            println!(
                "UNREADABLE {}: {}",
                u[0].as_str().unwrap_or_default(),
                u[1].as_str().unwrap_or_default()
            );
        }
        println!(
            "checked {} objects: {} healthy, {} unhealthy; repairs: {} attempted, {} successful",
            v["checked"],
            v["healthy"],
            v["unhealthy"],
            v["repairs_attempted"],
            v["repairs_successful"]
        );
    })?;
    if v["unhealthy"].as_u64().unwrap_or(0) > 0
        || !v["unreadable"].as_array().is_none_or(Vec::is_empty)
    {
        return Err(Unhealthy.into());
    }
    Ok(())
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_entry(e: &serde_json::Value, name: &str, long: bool) {
    let kind = e["kind"].as_str().unwrap_or_default();
    let shown = if kind == "dir" {
        format!("{name}/")
    } else {
        name.to_owned()
    };
    if !long {
        println!("{shown}");
        return;
    }
    let size = e["size"].as_u64().map_or("-".to_owned(), |s| s.to_string());
    let mtime = e["mtime"].as_u64().unwrap_or(0);
    println!(
        "{kind:7} {}{size:>12} {mtime:>10} {shown}  {}",
        if e["writable"].as_bool() == Some(true) {
            "rw "
        } else {
            "ro "
        },
        e["cap"].as_str().unwrap_or_default()
    );
}

/// Small files `kith cp -r` uploads at once.
const CP_IN_FLIGHT: u32 = 16;

/// `kith cp`: uploads files (immutable) and links them; directories are created on the way and
/// each directory's entries are linked in one write.
async fn cp(
    api: &Api,
    src: &std::path::Path,
    dest: &str,
    recursive: bool,
    json: bool,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if meta.is_file() {
        let v = api
            .put_file(src, &format!("path={}", urlencode(dest)))
            .await?;
        return show(&v, json, |v| {
            println!("{}", v["cap"].as_str().unwrap_or_default())
        });
    }
    if !recursive {
        bail!("{} is a directory: use cp -r", src.display());
    }
    // Walk first: total size for one progress bar, then upload directory by directory.
    let mut dirs: Vec<(PathBuf, String)> =
        vec![(src.to_owned(), dest.trim_end_matches('/').to_owned())];
    let mut files: Vec<(PathBuf, String, u64)> = Vec::new();
    let mut i = 0;
    while i < dirs.len() {
        let (d, remote) = dirs[i].clone();
        let mut rd: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("cannot read {}", d.display()))?
            .collect::<Result<_, _>>()?;
        rd.sort_by_key(std::fs::DirEntry::file_name);
        for e in rd {
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type()?;
            let sep = if remote.ends_with(':') { "" } else { "/" };
            if ft.is_dir() {
                dirs.push((e.path(), format!("{remote}{sep}{name}")));
            } else if ft.is_file() {
                files.push((e.path(), remote.clone(), e.metadata()?.len()));
            } else {
                eprintln!(
                    "kith: skipping {} (not a regular file or directory)",
                    e.path().display()
                );
            }
        }
        i += 1;
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    let bar = progress_bar(total);
    let mut by_dir: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        dirs.iter().map(|(_, r)| (r.clone(), Vec::new())).collect();
    let mut caps = Vec::new();
    // Several files at once (one round trip each is mostly waiting): up to CP_IN_FLIGHT small
    // ones, a large one alone (its upload streams with both cores and bounded buffers already).
    let limit = tokio::sync::Semaphore::new(CP_IN_FLIGHT as usize);
    let mut uploads = futures::stream::iter(&files)
        .map(|(path, _, size)| {
            let weight = if *size <= kith_node::client::SMALL_FILE {
                1
            } else {
                CP_IN_FLIGHT
            };
            let limit = &limit;
            async move {
                let _turn = limit.acquire_many(weight).await?;
                api.put_file_quiet(path).await
            }
        })
        .buffered(CP_IN_FLIGHT as usize);
    for (path, remote, size) in &files {
        let v = uploads
            .next()
            .await
            .ok_or_else(|| anyhow!("an upload went missing"))??;
        let cap = v["cap"].as_str().unwrap_or_default().to_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(b) = &bar {
            b.inc(*size);
        }
        caps.push(serde_json::json!({ "path": path.display().to_string(), "cap": cap }));
        by_dir
            .entry(remote.clone())
            .or_default()
            .push(serde_json::json!({ "name": name, "cap": cap, "size": size }));
    }
    // Parents before children: each link-many creates missing parents anyway.
    for (remote, children) in by_dir {
        api.post_json(
            "/link-many",
            &serde_json::json!({ "path": remote, "children": children, "replace": true }),
        )
        .await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
    } else {
        eprintln!(
            "copied {} files ({total} bytes) in {} directories",
            files.len(),
            dirs.len()
        );
    }
    Ok(())
}

/// "No daemon" is its own failure so it gets its own exit code.
#[derive(Debug)]
struct NoDaemon(String);

impl std::fmt::Display for NoDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoDaemon {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kith_node=info"));
    // A Tor-only node never logs an IP address (no colours then: they would hide boundaries).
    let redact = matches!(&cli.command, Command::Init(a) if a.tor_only)
        || kith_node::redact::wanted(&NodeDir::new(
            cli.dir.clone().unwrap_or_else(NodeDir::default_root),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !redact)
        .with_writer(kith_node::redact::MakeRedacting::new(
            std::io::stderr,
            redact,
        ))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kith: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("kith: {e:#}");
            match redact {
                true => eprintln!("{}", kith_node::redact::redact(&msg)),
                false => eprintln!("{msg}"),
            }
            if e.downcast_ref::<NoDaemon>().is_some() {
                ExitCode::from(3)
            } else if e.downcast_ref::<Unhealthy>().is_some() {
                ExitCode::from(4)
            } else if format!("{e:#}").contains("uncoordinated write") {
                ExitCode::from(5)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let dir = NodeDir::new(cli.dir.unwrap_or_else(NodeDir::default_root));
    match cli.command {
        Command::Init(args) => {
            let (config, peer) = dir.init((*args).into_raw())?;
            println!("created node dir {}", dir.root().display());
            println!("peer id: {peer}");
            for a in &config.listen {
                println!("  will listen on {a}");
            }
            if config.tor.mode != kith_node::config::TorMode::Off {
                println!(
                    "  tor mode {}: will listen on an onion service, port {} (its address is fixed by the key under {}/tor/state)",
                    config.tor.mode,
                    config.tor.port,
                    dir.root().display()
                );
            }
            println!("start it with: kith --dir {} run", dir.root().display());
            Ok(())
        }
        Command::Run => {
            daemon::run(dir, RunOptions::default()).await?;
            Ok(())
        }
        Command::Id => {
            if let Ok(api) = Api::connect(&dir)
                && let Ok(v) = api.get("/id").await
            {
                for a in v["addrs"].as_array().into_iter().flatten() {
                    println!("{}", a.as_str().unwrap_or_default());
                }
                return Ok(());
            }
            // No daemon: the configured addresses (unspecified hosts are not dialable).
            let config = dir.load_config()?;
            let peer = dir.keypair()?.public().to_peer_id();
            for a in config.announce.iter().chain(config.listen.iter()) {
                let s = a.to_string();
                if s.contains("/0.0.0.0/") || s.contains("/::/") {
                    eprintln!(
                        "(daemon not running: {s} listens on every interface; start it to see the concrete addresses)"
                    );
                    continue;
                }
                println!("{}", kith_transports::with_peer_id(a, peer));
            }
            Ok(())
        }
        Command::Status { json } => {
            let api = Api::connect(&dir)?;
            show(&api.get("/status").await?, json, print_status)
        }
        Command::Peer(cmd) => {
            let api = Api::connect(&dir)?;
            match cmd {
                PeerCommand::Add { addr } => {
                    let v = api
                        .post_json("/peers", &serde_json::json!({ "addr": addr }))
                        .await?;
                    println!("connected to {}", v["peer_id"].as_str().unwrap_or_default());
                }
                PeerCommand::List { json } => {
                    show(&api.get("/peers").await?, json, |v| {
                        for p in v.as_array().into_iter().flatten() {
                            let c = if p["connected"].as_bool() == Some(true) {
                                "connected"
                            } else {
                                "not connected"
                            };
                            println!("{}  {c}", p["addr"].as_str().unwrap_or_default());
                        }
                    })?;
                }
                PeerCommand::Remove { peer } => {
                    let v = api.delete(&format!("/peers/{peer}")).await?;
                    if v["removed"].as_bool() == Some(true) {
                        println!("removed {peer}");
                    } else {
                        bail!("{peer} is not a static peer added with `kith peer add`");
                    }
                }
            }
            Ok(())
        }
        Command::Put {
            file,
            dest,
            mutable,
            random_key,
            shares_needed,
            shares_happy,
            shares_total,
            json,
        } => {
            let api = Api::connect(&dir)?;
            if mutable {
                let mut url = "/mutable".to_owned();
                if let Some(d) = &dest {
                    url = format!("{url}?path={}", urlencode(d));
                }
                let v = api.post_body(&url, &file).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else if v["updated"].as_bool() == Some(true) {
                    eprintln!("updated the mutable file in place");
                }
                println!("{}", v["cap"].as_str().unwrap_or_default());
                return Ok(());
            }
            let mut query = vec![];
            // The file's name for the daemon's operations list (the panel shows it).
            if let Some(name) = file.file_name().filter(|_| file.as_os_str() != "-") {
                query.push(format!("name={}", urlencode(&name.to_string_lossy())));
            }
            if random_key {
                query.push("random_key=true".to_owned());
            }
            if let Some(d) = &dest {
                query.push(format!("path={}", urlencode(d)));
            }
            for (k, v) in [
                ("needed", shares_needed),
                ("happy", shares_happy),
                ("total", shares_total),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={v}"));
                }
            }
            let v = api.put_file(&file, &query.join("&")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            for s in v["left_behind"].as_array().into_iter().flatten() {
                eprintln!(
                    "kith: note: server {} was far slower than the others; the upload went on \
                     without its shares (`kith check --repair` places them)",
                    s.as_str().unwrap_or_default()
                );
            }
            println!(
                "{}",
                v["cap"]
                    .as_str()
                    .ok_or_else(|| anyhow!("daemon sent no cap"))?
            );
            Ok(())
        }
        Command::Get { cap, output } => {
            let api = Api::connect(&dir)?;
            let cap = if cap.trim().starts_with("kith:") && !cap.contains('/') {
                cap
            } else {
                let v = api
                    .get(&format!("/resolve?path={}", urlencode(&cap)))
                    .await?;
                v["cap"].as_str().unwrap_or_default().to_owned()
            };
            let parsed: kith_node::caps::Cap = cap.trim().parse().map_err(|e| anyhow!("{e}"))?;
            if parsed.is_dir() {
                bail!("that is a directory: list it with `kith ls`");
            }
            if !parsed.can_read() {
                bail!("that is a verify cap: it can check a file (`kith check`) but not read it");
            }
            api.get_file(&cap, output).await
        }
        Command::Mkdir { path } => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json("/mkdir", &serde_json::json!({ "path": path }))
                .await?;
            println!("{}", v["cap"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Alias(cmd) => {
            let api = Api::connect(&dir)?;
            match cmd {
                AliasCommand::Add { name, cap, replace } => {
                    let v = api
                        .post_json(
                            "/aliases",
                            &serde_json::json!({ "name": name, "cap": cap, "replace": replace }),
                        )
                        .await?;
                    println!(
                        "alias {name}: -> {}",
                        v["kind"].as_str().unwrap_or_default()
                    );
                }
                AliasCommand::List { json } => {
                    show(&api.get("/aliases").await?, json, |v| {
                        for a in v.as_array().into_iter().flatten() {
                            println!(
                                "{}: {}",
                                a["name"].as_str().unwrap_or_default(),
                                a["cap"].as_str().unwrap_or_default()
                            );
                        }
                    })?;
                }
                AliasCommand::Rm { name } => {
                    let v = api
                        .delete(&format!("/aliases/{}", urlencode(&name)))
                        .await?;
                    if v["removed"].as_bool() != Some(true) {
                        bail!("no alias {name:?}");
                    }
                }
            }
            Ok(())
        }
        Command::Ls { path, long, json } => {
            let api = Api::connect(&dir)?;
            let v = api.get(&format!("/ls?path={}", urlencode(&path))).await?;
            show(&v, json, |v| {
                let Some(entries) = v["entries"].as_array() else {
                    print_entry(v, v["path"].as_str().unwrap_or_default(), long);
                    return;
                };
                for e in entries {
                    print_entry(e, e["name"].as_str().unwrap_or_default(), long);
                }
            })
        }
        Command::Cp {
            recursive,
            src,
            dest,
            json,
        } => {
            let api = Api::connect(&dir)?;
            cp(&api, &src, &dest, recursive, json).await
        }
        Command::Mv { from, to } => {
            let api = Api::connect(&dir)?;
            api.post_json("/mv", &serde_json::json!({ "from": from, "to": to }))
                .await?;
            Ok(())
        }
        Command::Rm { path } => {
            let api = Api::connect(&dir)?;
            api.post_json("/rm", &serde_json::json!({ "path": path }))
                .await?;
            Ok(())
        }
        Command::Ln { from, to, replace } => {
            let api = Api::connect(&dir)?;
            api.post_json(
                "/ln",
                &serde_json::json!({ "from": from, "to": to, "replace": replace }),
            )
            .await?;
            Ok(())
        }
        Command::Snapshot { path, dest } => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json(
                    "/snapshot",
                    &serde_json::json!({ "path": path, "to": dest }),
                )
                .await?;
            println!("{}", v["cap"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Attenuate { cap } => {
            let c: kith_node::caps::Cap = cap.trim().parse().map_err(|e| anyhow!("{e}"))?;
            match c.attenuate() {
                Some(weaker) => {
                    println!("{weaker}");
                    Ok(())
                }
                None => bail!(
                    "nothing weaker: this is already a verify cap (or a literal file, which has none)"
                ),
            }
        }
        Command::DeepCheck {
            path,
            verify,
            repair,
            json,
        } => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json(
                    "/deep-check",
                    &serde_json::json!({ "path": path, "verify": verify, "repair": repair }),
                )
                .await?;
            print_deep_check(&v, json)
        }
        Command::Invite {
            expires,
            uses,
            json,
        } => {
            let api = Api::connect(&dir)?;
            let mut body = serde_json::json!({ "uses": uses });
            if let Some(e) = expires {
                body["expires_secs"] = e.as_secs().into();
            }
            show(&api.post_json("/grid/invite", &body).await?, json, |v| {
                eprintln!(
                    "invitation for {} join(s); give this line to your friend, who runs `kith join <code>`:",
                    v["uses"]
                );
                println!("{}", v["code"].as_str().unwrap_or_default());
            })
        }
        Command::Join { code } => {
            let members = if let Ok(api) = Api::connect(&dir) {
                let v = api
                    .post_json("/grid/join", &serde_json::json!({ "code": code }))
                    .await?;
                v["members"].as_u64().unwrap_or(0) as usize
            } else {
                // No daemon: start the node just long enough to join.
                if !dir.is_initialized() {
                    let (_, peer) = dir.init(RawConfig::default())?;
                    eprintln!("created node dir {} (peer id {peer})", dir.root().display());
                }
                let node = kith_node::Node::start(dir.clone(), Default::default()).await?;
                let res = node.handle().join(&code).await;
                node.shutdown().await;
                res?
            };
            println!("joined: {members} member(s) known; they learn of this node by gossip");
            Ok(())
        }
        Command::Members { json } => {
            let api = Api::connect(&dir)?;
            show(&api.get("/grid").await?, json, print_members)
        }
        Command::Expel { peer } => {
            let api = Api::connect(&dir)?;
            api.post_json("/grid/expel", &serde_json::json!({ "peer": peer }))
                .await?;
            println!("expelled {peer}; every member drops it as the expulsion spreads");
            Ok(())
        }
        Command::Friends { json } => {
            let api = Api::connect(&dir)?;
            show(&api.get("/friends").await?, json, print_friends)
        }
        Command::Grant { peer, quota } => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json(
                    &format!("/friends/{peer}/grant"),
                    &serde_json::json!({ "quota": quota.unwrap_or_else(|| "unlimited".into()) }),
                )
                .await?;
            println!(
                "granted {peer}: {}",
                v["access"]["quota"].as_str().unwrap_or("unlimited")
            );
            Ok(())
        }
        Command::Revoke { peer, grace } => {
            let api = Api::connect(&dir)?;
            let grace = grace.unwrap_or(Duration::from_secs(7 * 86400));
            api.post_json(
                &format!("/friends/{peer}/revoke"),
                &serde_json::json!({ "grace_secs": grace.as_secs() }),
            )
            .await?;
            println!(
                "revoked {peer}: no new writes; its shares are kept for {}",
                human_secs(grace.as_secs())
            );
            Ok(())
        }
        Command::Renew => {
            let api = Api::connect(&dir)?;
            let v = api.post_json("/renew", &serde_json::json!({})).await?;
            println!(
                "renewed {} lease(s) on {} file(s)",
                v["renewed"], v["files"]
            );
            let failed = v["failed"].as_array().cloned().unwrap_or_default();
            for f in &failed {
                eprintln!("  not renewed: {}", f.as_str().unwrap_or_default());
            }
            if !failed.is_empty() {
                bail!("{} lease(s) could not be renewed", failed.len());
            }
            Ok(())
        }
        Command::Audit { count } => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json("/audit/run", &serde_json::json!({ "count": count }))
                .await?;
            println!(
                "{} challenges: {} passed, {} failed, {} unanswered (offline, not held against them)",
                v["challenges"],
                v["passed"],
                v["failed"].as_array().map_or(0, Vec::len),
                v["offline"]
            );
            for f in v["failed"].as_array().into_iter().flatten() {
                println!("  failed: {}", f.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::Collect => {
            let api = Api::connect(&dir)?;
            let v = api
                .post_json("/collector/run", &serde_json::json!({}))
                .await?;
            let c = &v["current"];
            println!(
                "scanned {} leases, removed {}, deleted {} shares ({})",
                c["leases_scanned"],
                c["leases_removed"],
                c["shares_removed"],
                human(c["bytes_freed"].as_u64().unwrap_or(0))
            );
            Ok(())
        }
        Command::Policy(cmd) => {
            let api = Api::connect(&dir)?;
            let v = match cmd {
                PolicyCommand::Show => api.get("/policy").await?,
                PolicyCommand::Set { change } => {
                    api.post_json(
                        "/policy",
                        &serde_json::json!({ "change": change.join(" ") }),
                    )
                    .await?
                }
            };
            println!(
                "default grant: {}\nreciprocal:    {}\ninvite-only:   {}",
                v["default_grant"].as_str().unwrap_or("none"),
                v["reciprocal"]
                    .as_f64()
                    .map_or("off".to_owned(), |r| r.to_string()),
                if v["invite_only"].as_bool() == Some(true) {
                    "on"
                } else {
                    "off"
                }
            );
            Ok(())
        }
        Command::Check {
            verify,
            repair,
            json,
            cap,
        } => check_command(&dir, &cap, verify, repair, json).await,
        Command::Panel => {
            let api = Api::connect(&dir)?;
            println!("{}/#token={}", api.info.url, api.token);
            Ok(())
        }
        Command::Stop => {
            let api = Api::connect(&dir)?;
            api.post_json("/shutdown", &serde_json::json!({})).await?;
            println!("stopping the daemon");
            Ok(())
        }
    }
}

/// `kith check`: one summary line (or the JSON report); the problems on stderr.
async fn check_command(
    dir: &NodeDir,
    cap: &str,
    verify: bool,
    repair: bool,
    json: bool,
) -> anyhow::Result<()> {
    let trimmed = cap.trim();
    let immutable = trimmed.starts_with("kith:")
        && !trimmed.contains('/')
        && !matches!(
            trimmed.parse::<kith_node::caps::Cap>(),
            Ok(kith_node::caps::Cap::Ssk(_))
        );
    if !immutable {
        // A path, a mutable file or a directory: one node, through the tree checker.
        let api = Api::connect(dir)?;
        let v = api
            .post_json(
                "/deep-check",
                &serde_json::json!({ "path": trimmed, "verify": verify, "repair": repair, "deep": false }),
            )
            .await?;
        return print_deep_check(&v, json);
    }
    // Refuse a bad cap before asking the daemon (which parses it again).
    let _: kith_node::checker::CheckTarget = cap.parse()?;
    let api = Api::connect(dir)?;
    let cap = cap.trim();
    let v = api
        .post_json(
            "/check",
            &serde_json::json!({ "cap": cap, "verify": verify, "repair": repair }),
        )
        .await?;
    let report: kith_node::checker::CheckReport = serde_json::from_value(v.clone())?;
    show(&v, json, |_| {
        println!("{}", report.summary());
        for c in &report.corrupt {
            let at = c
                .segment
                .map(|s| format!(" (segment {s})"))
                .unwrap_or_default();
            eprintln!(
                "  corrupt: share {} on {}{at}: {}",
                c.shnum, c.server, c.reason
            );
        }
        for u in &report.unreachable {
            eprintln!("  no answer: {}: {}", u.server, u.problem);
        }
        if let Some(r) = &report.repair {
            for p in r.problems.iter().chain(r.notes.iter()) {
                eprintln!("  repair: {p}");
            }
        }
    })?;
    if report.healthy_now() {
        Ok(())
    } else {
        Err(Unhealthy.into())
    }
}

fn human(bytes: u64) -> String {
    kith_accounting::policy::human_size(bytes)
}

fn print_members(v: &serde_json::Value) {
    println!(
        "grid {}{}",
        v["grid"].as_str().unwrap_or_default(),
        if v["founder"].as_bool() == Some(true) {
            " (founded by this node)"
        } else {
            ""
        }
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for m in v["members"].as_array().into_iter().flatten() {
        let state = if m["me"].as_bool() == Some(true) {
            "this node"
        } else if m["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        };
        let roles: Vec<&str> = m["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        let ago = now.saturating_sub(m["last_seen"].as_u64().unwrap_or(now));
        println!(
            "{}  {:<16} {:<13} {:<13} seen {} ago  {}",
            m["peer_id"].as_str().unwrap_or_default(),
            m["nickname"].as_str().unwrap_or_default(),
            state,
            if roles.is_empty() {
                "-".to_owned()
            } else {
                roles.join(",")
            },
            human_secs(ago),
            m["addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let expelled = v["expelled"].as_array().map_or(0, Vec::len);
    if expelled > 0 {
        println!("{expelled} expelled member(s)");
    }
}

fn print_friends(v: &serde_json::Value) {
    if v["friends"].as_array().is_none_or(Vec::is_empty) {
        println!(
            "no friends yet: every other member of the grid shows up here (`kith invite` makes a code for one)"
        );
    }
    for f in v["friends"].as_array().into_iter().flatten() {
        let access = &f["access"];
        let state = match access["state"].as_str().unwrap_or("") {
            "granted" => format!("granted {}", access["quota"].as_str().unwrap_or("")),
            "revoked" => "revoked".to_owned(),
            other => other.to_owned(),
        };
        println!(
            "{}  {:<16} {:<13} here {:>10} ({} shares)  there {:>10}  {:<18} audit {:.2}",
            f["peer_id"].as_str().unwrap_or_default(),
            f["nickname"].as_str().unwrap_or_default(),
            if f["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            human(f["stored_here"]["bytes"].as_u64().unwrap_or(0)),
            f["stored_here"]["shares"].as_u64().unwrap_or(0),
            human(f["placed_there"]["bytes"].as_u64().unwrap_or(0)),
            state,
            f["audit"]["score"].as_f64().unwrap_or(1.0),
        );
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_status(s: &serde_json::Value) {
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    println!(
        "node      {} ({})",
        str_of(&s["peer_id"]),
        str_of(&s["nickname"])
    );
    println!("dir       {}", str_of(&s["dir"]));
    println!(
        "grid      {} ({} members)",
        str_of(&s["grid"]),
        s["members"].as_u64().unwrap_or(0)
    );
    println!("reach     {}", str_of(&s["reachability"]));
    // AutoNAT's candidates (behind a strict NAT every connection brings another port): the
    // first few, most reported first.
    let tested = s["nat"]["autonat"].as_array().cloned().unwrap_or_default();
    for a in tested.iter().take(4) {
        println!("autonat   {}", str_of(&a["summary"]));
    }
    if tested.len() > 4 {
        println!("autonat   and {} more", tested.len() - 4);
    }
    println!("router    {}", str_of(&s["nat"]["upnp_summary"]));
    if let Ok(t) = serde_json::from_value::<kith_node::node::TorInfo>(s["tor"].clone()) {
        println!("tor       {}", t.line());
    }
    for a in s["addrs"].as_array().into_iter().flatten() {
        println!("address   {}", str_of(a));
    }
    if let Some(st) = s["storage"].as_object() {
        let size = |k: &str| human(st.get(k).and_then(|v| v.as_u64()).unwrap_or(0));
        println!(
            "storage   {} used in {} shares, {} free of {}",
            size("used_bytes"),
            st.get("share_count").and_then(|v| v.as_u64()).unwrap_or(0),
            size("free_bytes"),
            size("capacity_bytes"),
        );
    } else {
        println!("storage   not offered");
    }
    let peers = s["connected_peers"].as_array().cloned().unwrap_or_default();
    println!("peers     {} connected", peers.len());
    for p in peers {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map(|r| format!("{r:.1} ms"))
            .unwrap_or_default();
        println!(
            "  {:<12} {}  {:<12}  {}  {}{}{}",
            p["nickname"].as_str().unwrap_or("-"),
            str_of(&p["peer_id"]),
            str_of(&p["path"]),
            p["addrs"]
                .as_array()
                .and_then(|a| a.first())
                .map(str_of)
                .unwrap_or_default(),
            rtt,
            if p["storage"].as_bool() == Some(true) {
                ""
            } else {
                "  (no storage)"
            },
            if p["silent"].as_bool() == Some(true) {
                "  (not answering: left out of new uploads for now)"
            } else if p["slow"].as_bool() == Some(true) {
                "  (far slower than the others lately: left out of new uploads for now)"
            } else {
                ""
            }
        );
    }
}

struct Api {
    info: ApiInfo,
    token: String,
    http: reqwest::Client,
    /// The daemon's local socket (`private/api.sock`).
    socket: std::path::PathBuf,
}

impl Api {
    fn connect(dir: &NodeDir) -> anyhow::Result<Api> {
        let no_daemon = || {
            NoDaemon(format!(
                "no kith daemon is running for {} (start it with `kith --dir {} run`)",
                dir.root().display(),
                dir.root().display()
            ))
        };
        let text = std::fs::read_to_string(dir.api_file()).map_err(|_| no_daemon())?;
        let info: ApiInfo = serde_json::from_str(&text).map_err(|_| no_daemon())?;
        if !std::path::Path::new(&format!("/proc/{}", info.pid)).exists() {
            return Err(no_daemon().into());
        }
        let token = dir.api_token()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        let socket = kith_node::local::socket_path(dir);
        Ok(Api {
            info,
            token,
            http,
            socket,
        })
    }

    /// Uploads an open file over the daemon's local socket (no bytes cross a socket, nothing
    /// is spooled). `Ok(None)`: no socket to use, or not a regular file: upload over HTTP.
    async fn put_local(
        &self,
        file: std::fs::File,
        query: &str,
        show_progress: bool,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let meta = file.metadata()?;
        if !self.socket.exists() || !meta.is_file() {
            return Ok(None);
        }
        let len = meta.len();
        let bar = if show_progress {
            progress_bar(len)
        } else {
            None
        };
        let (socket, token, query) = (self.socket.clone(), self.token.clone(), query.to_owned());
        let answer = tokio::task::spawn_blocking(move || {
            kith_node::local::put(&socket, &token, &file, &query, |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                    if done >= total / 2 {
                        b.set_message("encoding and placing shares…");
                    }
                }
            })
        })
        .await?;
        match answer {
            // The socket is there but nobody listens (a daemon that crashed): HTTP will say so.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow!("the daemon's local socket failed: {e}")),
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err((msg, _status))) => bail!("{msg}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.info.url)
    }

    async fn check(
        &self,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = resp.map_err(|e| {
            if e.is_connect() {
                anyhow::Error::new(NoDaemon(format!(
                    "the kith daemon at {} does not answer ({e}); is it still running?",
                    self.info.url
                )))
            } else {
                anyhow::Error::new(e)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let msg = body["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        bail!("{msg}")
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await;
        Ok(self.check(r).await?.json().await?)
    }

    async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        Ok(self.check(r).await?.json().await?)
    }

    async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await;
        Ok(self.check(r).await?.json().await?)
    }

    async fn put_file(
        &self,
        file: &std::path::Path,
        query: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let (body, total) = if file.as_os_str() == "-" {
            let stdin = tokio::io::stdin();
            (
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    stdin,
                    1 << 20,
                )),
                None,
            )
        } else {
            let f = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            if let Some(v) = self.put_local(f.try_clone()?, query, true).await? {
                return Ok(v);
            }
            let f = tokio::fs::File::from_std(f);
            let len = f.metadata().await?.len();
            let bar = progress_bar(len);
            let stream =
                tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |chunk| {
                    if let (Ok(c), Some(b)) = (&chunk, &bar) {
                        b.inc(c.len() as u64);
                        if b.position() >= len {
                            b.set_message("encoding and placing shares…");
                        }
                    }
                    chunk
                });
            (reqwest::Body::wrap_stream(stream), Some(len))
        };
        let mut url = self.url("/files");
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let mut req = self.http.post(url).bearer_auth(&self.token).body(body);
        if let Some(len) = total {
            req = req.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let r = req.send().await;
        Ok(self.check(r).await?.json().await?)
    }

    /// POSTs a file's (or stdin's) bytes to `path` (small bodies: mutable files).
    async fn post_body(
        &self,
        path: &str,
        file: &std::path::Path,
    ) -> anyhow::Result<serde_json::Value> {
        let body = if file.as_os_str() == "-" {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
            v
        } else {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        };
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await;
        Ok(self.check(r).await?.json().await?)
    }

    /// Uploads a file without its own progress bar (cp -r has one for everything).
    async fn put_file_quiet(&self, file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        if let Some(v) = self.put_local(f.try_clone()?, "", false).await? {
            return Ok(v);
        }
        let f = tokio::fs::File::from_std(f);
        let len = f.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let r = self
            .http
            .post(self.url("/files"))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await;
        Ok(self.check(r).await?.json().await?)
    }

    async fn get_file(&self, cap: &str, output: Option<PathBuf>) -> anyhow::Result<()> {
        let size = kith_node::client::parse_read_cap(cap)
            .ok()
            .map(|c| c.size());
        let r = self
            .http
            .get(self.url(&format!("/files/{}", cap.trim())))
            .bearer_auth(&self.token)
            .send()
            .await;
        let resp = self.check(r).await?;
        let report_id = resp
            .headers()
            .get("x-kith-report")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut out: Box<dyn Write> = match &output {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout().lock()),
        };
        let bar = match (output.is_some(), size) {
            (true, Some(size)) => progress_bar(size),
            _ => None,
        };
        let mut stream = resp.bytes_stream();
        let mut got = 0u64;
        // The daemon cuts the body short when the download fails mid-way; its report says why.
        let mut broke = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            };
            got += chunk.len() as u64;
            out.write_all(&chunk)?;
            if let Some(b) = &bar {
                b.set_position(got);
            }
        }
        out.flush()?;
        drop(out);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let report = match report_id {
            Some(id) => self.get(&format!("/reports/{id}")).await.ok(),
            None => None,
        };
        if let Some(r) = &report {
            for b in r["bad_shares"].as_array().into_iter().flatten() {
                eprintln!(
                    "kith: warning: share {} on server {} was bad and was not used: {}",
                    b["shnum"],
                    b["server"].as_str().unwrap_or_default(),
                    b["problem"].as_str().unwrap_or_default()
                );
            }
            for s in r["slow_shares"].as_array().into_iter().flatten() {
                eprintln!(
                    "kith: note: server {} was far slower than the others; share {} was read \
                     around it, from another share",
                    s["server"].as_str().unwrap_or_default(),
                    s["shnum"]
                );
            }
            for u in r["unanswered"].as_array().into_iter().flatten() {
                eprintln!(
                    "kith: note: server {} {}; the download went on without it",
                    u["server"].as_str().unwrap_or_default(),
                    match u["error"].as_str() {
                        Some(e) => format!("did not list its shares ({e})"),
                        None => "did not answer during the download".to_owned(),
                    }
                );
            }
            if let Some(e) = r["error"].as_str() {
                bail!("download failed after {got} bytes: {e}");
            }
        }
        if let Some(e) = broke {
            bail!("download broke off after {got} bytes: {e}");
        }
        if let Some(size) = size
            && got != size
        {
            bail!("download broke off after {got} of {size} bytes");
        }
        Ok(())
    }
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}
