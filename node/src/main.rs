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
  3  no kith daemon is running for this node dir (start one with `kith run`)";

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
    Init(InitArgs),
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
    /// Upload a file (or stdin with `-`); prints its read cap as the last line.
    Put {
        /// File to upload, or `-` for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
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
    /// Download a file by its read cap.
    Get {
        /// The read cap (kith:chk:… or kith:lit:…).
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
    /// Print the control panel URL.
    Panel,
    /// Stop the running daemon.
    Stop,
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
    /// Listen multiaddr (repeatable) [default: TCP and QUIC on all interfaces, a free port].
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
            let (config, peer) = dir.init(args.into_raw())?;
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
            let s = api.get("/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(())
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
                    let v = api.get("/peers").await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        for p in v.as_array().into_iter().flatten() {
                            let c = if p["connected"].as_bool() == Some(true) {
                                "connected"
                            } else {
                                "not connected"
                            };
                            println!("{}  {c}", p["addr"].as_str().unwrap_or_default());
                        }
                    }
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
            random_key,
            shares_needed,
            shares_happy,
            shares_total,
            json,
        } => {
            let api = Api::connect(&dir)?;
            let mut query = vec![];
            if random_key {
                query.push("random_key=true".to_owned());
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
            println!(
                "{}",
                v["cap"]
                    .as_str()
                    .ok_or_else(|| anyhow!("daemon sent no cap"))?
            );
            Ok(())
        }
        Command::Get { cap, output } => {
            kith_node::client::parse_read_cap(&cap).map_err(|e| anyhow!("{e}"))?;
            let api = Api::connect(&dir)?;
            api.get_file(&cap, output).await
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
            let v = api.post_json("/grid/invite", &body).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!(
                    "invitation for {} join(s); give this line to your friend, who runs `kith join <code>`:",
                    v["uses"]
                );
                println!("{}", v["code"].as_str().unwrap_or_default());
            }
            Ok(())
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
            let v = api.get("/grid").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_members(&v);
            }
            Ok(())
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
            let v = api.get("/friends").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_friends(&v);
            }
            Ok(())
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
            "  {:<12} {}  {:<12}  {}  {}{}",
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
            }
        );
    }
}

struct Api {
    info: ApiInfo,
    token: String,
    http: reqwest::Client,
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
        Ok(Api { info, token, http })
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
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(stdin)),
                None,
            )
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
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

    async fn get_file(&self, cap: &str, output: Option<PathBuf>) -> anyhow::Result<()> {
        let size = kith_node::client::parse_read_cap(cap)
            .map_err(|e| anyhow!("{e}"))?
            .size();
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
        let bar = if output.is_some() {
            progress_bar(size)
        } else {
            None
        };
        let mut stream = resp.bytes_stream();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
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
            if let Some(e) = r["error"].as_str() {
                bail!("download failed after {got} bytes: {e}");
            }
        }
        if got != size {
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
