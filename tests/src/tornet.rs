//! A private Tor network on loopback for the Tor transport tests (`tests/tests/tor.rs`).
//!
//! [`TorNet::start`] runs `tests/scripts/tor-testnet.sh up` in a fresh temp dir: 3 directory
//! authorities and 5 relays (each Guard + Exit + HSDir) from Debian's `tor` package, all on
//! 127.0.0.1 from a base port on (authorities `P..P+5`, relays `P+100..P+104`). It waits until
//! the authorities have published a live consensus that lists every relay and every authority and
//! relay holds one (a relay without one answers 404 to a client that picked it as its fallback
//! directory; the likely reason a CI run's arti client never got a consensus within 120 s). The
//! script writes an arti config fragment (custom authorities and fallbacks, no subnet families,
//! exits to local addresses allowed), which [`TorNet::tor_config`] puts into a [`TorConfig`] for
//! the transport. Drop runs the script's `down`, which kills only the PIDs recorded under the temp
//! dir.
//!
//! Without `tor`/`tor-gencert` the harness installs them with apt-get when running as root;
//! otherwise [`TorNet::start`] returns `Ok(None)` after printing why (the test skips), except
//! under `CI=true`, where a missing tool is an error.
//!
//! The script's pitfalls (onion-service time period, fallbacks, families, END reason MISC, first
//! connect may fail) are documented in its header and in the transport's module docs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use kith_transports::tor::TorConfig;

/// The network script, shipped in this crate.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tor-testnet.sh");

/// A running private Tor network. Stops on drop.
pub struct TorNet {
    dir: tempfile::TempDir,
    arti_toml: String,
    /// How long `up` took (key generation + first consensus).
    pub startup: Duration,
}

impl TorNet {
    /// Starts a network whose ports begin at `base_port`. `Ok(None)`: the tools are missing and
    /// cannot be installed here, and this is not CI: the caller skips its test.
    pub fn start(base_port: u16) -> anyhow::Result<Option<TorNet>> {
        if !ensure_tools()? {
            return Ok(None);
        }
        let dir = tempfile::Builder::new().prefix("kith-tornet-").tempdir()?;
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("up")
            .arg(dir.path())
            .env("TORNET_BASE_PORT", base_port.to_string())
            .env("TORNET_CLIENT", "0")
            .env("TORNET_HS", "0")
            .env("TORNET_WAIT", "180")
            // Only arti hosts and reaches onion services here (no C tor client or service), so
            // arti's onion-service time period can be a day instead of C tor's 8 test minutes:
            // each change of period left services unreachable for 35 s to over a minute.
            .env("TORNET_HSDIR_INTERVAL", "1440")
            .output()
            .context("running tor-testnet.sh")?;
        // From here on, Drop cleans up whatever was started.
        let mut net = TorNet {
            dir,
            arti_toml: String::new(),
            startup: started.elapsed(),
        };
        if !out.status.success() {
            bail!(
                "tor-testnet.sh up failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8(out.stdout)?;
        let toml_path = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ARTI_TOML="))
            .context("tor-testnet.sh printed no ARTI_TOML=")?;
        net.arti_toml =
            std::fs::read_to_string(toml_path).with_context(|| format!("reading {toml_path}"))?;
        Ok(Some(net))
    }

    /// One network shared by every test of this process that overlaps with another: started by
    /// the first caller, stopped when the last holder drops it.
    pub fn shared(base_port: u16) -> anyhow::Result<Option<Arc<TorNet>>> {
        static SHARED: Mutex<Weak<TorNet>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(net) = slot.upgrade() {
            return Ok(Some(net));
        }
        let Some(net) = TorNet::start(base_port)? else {
            return Ok(None);
        };
        let net = Arc::new(net);
        *slot = Arc::downgrade(&net);
        Ok(Some(net))
    }

    /// The network's directory (nodes' data dirs, logs, the arti fragment).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The arti configuration fragment for this network (authorities, fallbacks, path rules,
    /// address filter), in arti's TOML syntax.
    pub fn arti_toml(&self) -> &str {
        &self.arti_toml
    }

    /// A transport config for an arti client of this network whose state and cache live under
    /// `root` (`root/state`, `root/cache`). Reusing `root` reuses the onion-service key.
    pub fn tor_config(&self, root: &Path) -> TorConfig {
        TorConfig {
            arti_toml: Some(self.arti_toml.clone()),
            // temp dirs under a shared /tmp fail arti's permission checks
            trust_all_dir_permissions: true,
            connect_timeout: Duration::from_secs(60),
            ..TorConfig::new(root.join("state"), root.join("cache"))
        }
    }

    /// What the network looks like now, for the output of a failing test (CI keeps nothing
    /// else): the clock, each node's process state, each authority's newest microdesc consensus
    /// (its times, relays and shared random value) and the last lines of every node's log.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let now = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M:%S"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = writeln!(out, "--- Tor network {} at {now} UTC", self.dir().display());
        let mut nodes: Vec<PathBuf> = std::fs::read_dir(self.dir().join("nodes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        nodes.sort();
        for node in nodes {
            let name = node
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let pid = std::fs::read_to_string(node.join("pid")).unwrap_or_default();
            let alive = !pid.trim().is_empty() && Path::new("/proc").join(pid.trim()).exists();
            let _ = writeln!(
                out,
                "{name}: pid {} {}",
                pid.trim(),
                if alive { "running" } else { "NOT RUNNING" }
            );
            if let Ok(c) = std::fs::read_to_string(node.join("cached-microdesc-consensus")) {
                let field = |k: &str| {
                    c.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .unwrap_or("-")
                        .to_owned()
                };
                let _ = writeln!(
                    out,
                    "  consensus: valid-after {}, fresh-until {}, valid-until {}, {} relays, \
                     {} signatures, srv current {}, params {}",
                    field("valid-after "),
                    field("fresh-until "),
                    field("valid-until "),
                    c.lines().filter(|l| l.starts_with("r ")).count(),
                    c.lines()
                        .filter(|l| l.starts_with("directory-signature "))
                        .count(),
                    field("shared-rand-current-value "),
                    field("params "),
                );
            }
            let log = std::fs::read_to_string(node.join("notice.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(6)..] {
                let _ = writeln!(out, "  {l}");
            }
        }
        out
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        let r = Command::new("bash")
            .arg(SCRIPT)
            .arg("down")
            .arg(self.dir.path())
            .output();
        if let Err(e) = r {
            eprintln!("tor-testnet.sh down {}: {e}", self.dir.path().display());
        }
    }
}

fn tools_present() -> bool {
    ["tor", "tor-gencert"].iter().all(|t| which(t).is_some())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The tor package may start a system tor (where init scripts may run), which would try to
/// reach the public Tor network; the tests need only the binaries. Stops it by its PID file.
fn stop_system_tor() {
    if let Ok(pid) = std::fs::read_to_string("/run/tor/tor.pid")
        && let Ok(pid) = pid.trim().parse::<u32>()
    {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

/// `Ok(true)`: tor and tor-gencert are there (installed now if need be). `Ok(false)`: they are
/// not and this isn't CI (the test skips). `Err`: missing under `CI=true`.
fn ensure_tools() -> anyhow::Result<bool> {
    if tools_present() {
        return Ok(true);
    }
    if is_root() {
        eprintln!("tor/tor-gencert missing: installing Debian's tor package");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "tor"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            install();
        }
        stop_system_tor();
        if tools_present() {
            return Ok(true);
        }
    }
    let why = "tor/tor-gencert not installed (apt-get install -y tor)";
    if std::env::var("CI").as_deref() == Ok("true") {
        bail!("{why}: CI must run the Tor tests");
    }
    eprintln!("skipping the Tor test: {why}");
    Ok(false)
}
