//! The NAT lab: real Linux NAT routers in network namespaces (nftables masquerade, a real
//! miniupnpd), built by `tests/scripts/nat-lab.sh`, and kith nodes running inside them.
//!
//! Nodes run in this process: each on its own thread that first moves into its namespace
//! (`setns`, per thread) and then builds the node's Tokio runtime, so every socket the node
//! opens (libp2p listeners and dials, UPnP's SSDP and SOAP) lives in that namespace. The test
//! drives the node through its [`NodeHandle`] like the other end-to-end tests do.
//!
//! The lab needs root, `ip`, `nft` and `miniupnpd`. [`Lab::available`] installs the Debian
//! packages when they are missing and it runs as root; otherwise it says why the test skips,
//! and with `CI=true` it fails instead of skipping.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use kith_node::{Node, NodeHandle, StartOptions, nodedir::NodeDir};

/// How a lab router translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Linux masquerade: endpoint-independent mapping, port-dependent filtering.
    Moderate,
    /// `masquerade random`: endpoint-dependent mapping (a "symmetric" NAT).
    Strict,
}

impl Nat {
    fn arg(self) -> &'static str {
        match self {
            Nat::Moderate => "moderate",
            Nat::Strict => "strict",
        }
    }
}

/// Whether router 1 runs a miniupnpd, and which IGD version it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Igd {
    /// No UPnP on the router.
    None,
    /// miniupnpd forced to IGDv1 (`WANIPConnection:1`).
    V1,
    /// miniupnpd as Debian ships it (IGDv2, `WANIPConnection:2`).
    V2,
    /// IGDv2 that maps no IPv4 port (its permission rules deny them all, as a router behind
    /// carrier-grade NAT or DS-Lite has nothing to map) but opens IPv6 firewall pinholes.
    V2PinholesOnly,
    /// miniupnpd with UPnP off and NAT-PMP on: a router that speaks NAT-PMP only.
    NatPmp,
}

impl Igd {
    fn arg(self) -> &'static str {
        match self {
            Igd::None => "none",
            Igd::V1 => "upnp1",
            Igd::V2 => "upnp",
            Igd::V2PinholesOnly => "upnp6",
            Igd::NatPmp => "natpmp",
        }
    }
}

/// The namespaces of the lab.
pub mod ns {
    /// The public segment (11.0.0.1 on the bridge).
    pub const INET: &str = "kl-inet";
    /// Home 1 (192.168.1.10 behind router 1, 11.0.0.11, which may run miniupnpd).
    pub const H1: &str = "kl-h1";
    /// Router 1 (may run miniupnpd).
    pub const R1: &str = "kl-r1";
    /// A second host in home 1 (192.168.1.30, 2a0f:1::30), after [`super::Lab::add_h3`].
    pub const H3: &str = "kl-h3";
    /// Home 2 (192.168.2.10 behind router 2, 11.0.0.12).
    pub const H2: &str = "kl-h2";
}

/// Where the lab keeps miniupnpd's config, log and lease file.
pub const LAB_DIR: &str = "/tmp/kith-natlab";

static LAB_LOCK: Mutex<()> = Mutex::new(());

/// A running lab; torn down on drop. One lab at a time (the namespace names are fixed).
pub struct Lab {
    _lock: MutexGuard<'static, ()>,
}

/// Runs `nat-lab.sh` as `cmd` says (its `what` subcommand); panics with its stderr if it fails.
fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .env("NATLAB_DIR", LAB_DIR)
        .output()
        .expect("run nat-lab.sh");
    assert!(
        out.status.success(),
        "nat-lab.sh {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nat-lab.sh")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Root, the tools (installed when missing), and network namespaces that can be made.
fn check_and_install() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("it needs root (network namespaces, nftables, miniupnpd)".into());
    }
    let missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("miniupnpd", "miniupnpd-nftables"),
    ]
    .iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(_, pkg)| *pkg)
    .collect();
    if !missing.is_empty() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("could not install {}", missing.join(", ")));
        }
    }
    let probe = format!("kl-probe-{}", std::process::id());
    if Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .map_or(true, |s| !s.success())
    {
        return Err("cannot create network namespaces here".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    Ok(())
}

impl Lab {
    /// Whether the lab can run here; installs missing Debian packages when root. Prints why
    /// not and returns `false` (the caller skips), except with `CI=true`, where it panics.
    pub fn available() -> bool {
        static CHECK: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        match CHECK.get_or_init(check_and_install) {
            Ok(()) => true,
            Err(why) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true");
                assert!(
                    !ci,
                    "the NAT lab must run in CI (CI=true) but cannot: {why}"
                );
                eprintln!("skipping the NAT lab test: {why}");
                false
            }
        }
    }

    /// Builds the lab: router 1 and 2 translating as `r1` and `r2`, router 1 running a real
    /// miniupnpd as `igd` says.
    pub fn up(r1: Nat, r2: Nat, igd: Igd) -> Lab {
        Self::build(r1, r2, igd, false)
    }

    /// [`Lab::up`] with global IPv6 too: the public segment 2a0f::/64 (the relay's host at
    /// 2a0f::1), home i's /64 2a0f:i::/64 (its host at 2a0f:i::10) routed without NAT through
    /// router i's stateful firewall (replies in, nothing new).
    pub fn up_v6(r1: Nat, r2: Nat, igd: Igd) -> Lab {
        Self::build(r1, r2, igd, true)
    }

    fn build(r1: Nat, r2: Nat, igd: Igd, v6: bool) -> Lab {
        let lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(["up", r1.arg(), r2.arg()]);
        cmd.arg(igd.arg());
        if v6 {
            cmd.arg("v6");
        }
        run(cmd, "up");
        Lab { _lock: lock }
    }

    /// Starts miniupnpd on router 1 now (on a lab built with [`Igd::None`]): a router whose
    /// owner turns UPnP on while nodes run behind it.
    pub fn start_upnp(&self, igd: Igd) {
        self.start_upnp_on(igd, 5000);
    }

    /// Starts router 1's miniupnpd with an empty lease table, its HTTP (control URL) server on
    /// `http_port`.
    pub fn start_upnp_on(&self, igd: Igd, http_port: u16) {
        if igd == Igd::None {
            return;
        }
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(["upnp-start", igd.arg(), &http_port.to_string()]);
        run(cmd, "upnp-start");
    }

    /// Stops router 1's miniupnpd (SIGTERM: it says goodbye and removes its rules).
    pub fn stop_upnp(&self) {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("upnp-stop");
        run(cmd, "upnp-stop");
    }

    /// Router 1 reboots: its miniupnpd stops, the firewall rules it made are gone (miniupnpd
    /// leaves its IPv6 pinholes in place when it stops, and finds them again when it starts;
    /// a reboot starts from an empty firewall), and it starts again with an empty lease table.
    pub fn reboot_upnp(&self, igd: Igd) {
        self.stop_upnp();
        for chain in ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"] {
            let mut cmd = Command::new("ip");
            cmd.args([
                "netns", "exec", "kl-r1", "nft", "flush", "chain", "inet", "filter",
            ])
            .arg(chain);
            run(cmd, "flush miniupnpd's rules");
        }
        self.start_upnp(igd);
    }

    /// A second host in home 1 ([`ns::H3`], 192.168.1.30, and 2a0f:1::30 on a lab with IPv6),
    /// on the same LAN as home 1's host: router 1's LAN side becomes a switch.
    pub fn add_h3(&self) {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("add-h3");
        run(cmd, "add-h3");
    }

    /// Home 1's host moves from 192.168.1.10 to `ip` (same /24), as with a new DHCP lease.
    pub fn readdress_h1(&self, ip: &str) {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(["h1-readdress", ip]);
        run(cmd, "h1-readdress");
    }

    /// Router 1 lets new IPv6 connections in to home 1's host (an open IPv6 firewall, or a
    /// pinhole its owner made), on a lab built with [`Lab::up_v6`].
    pub fn open_v6_to_h1(&self) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            "kl-r1",
            "nft",
            "add",
            "rule",
            "inet",
            "filter",
            "forward",
            "ip6",
            "daddr",
            "2a0f:1::10",
            "accept",
        ]);
        run(cmd, "open IPv6 to h1");
    }

    /// Home 2's host loses its IPv6 address (a home whose ISP gives IPv4 only).
    pub fn no_v6_in_h2(&self) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", "kl-h2", "addr", "del", "2a0f:2::10/64", "dev", "eth0"]);
        run(cmd, "remove h2's IPv6 address");
    }

    /// miniupnpd's lease file (one `PROTO:EXT:INT_IP:INT_PORT:...` line per mapping).
    pub fn upnp_leases(&self) -> String {
        std::fs::read_to_string(Path::new(LAB_DIR).join("upnp.leases")).unwrap_or_default()
    }

    /// A manual port forward on router 1 (what a sysadmin sets up by hand): TCP `port` on
    /// its WAN address goes to home 1's `port`.
    pub fn forward_tcp(&self, port: u16) {
        self.forward_tcp_to(port, port);
    }

    /// A manual port forward on router 1: TCP `port` on its WAN address goes to home 1's
    /// `to`. Put before the forwards made earlier, so a later call corrects an earlier one.
    pub fn forward_tcp_to(&self, port: u16, to: u16) {
        Self::forward("kl-r1", "192.168.1.10", port, to);
    }

    /// A manual port forward on router 2: TCP `port` on its WAN address (11.0.0.12) goes to
    /// home 2's `port`.
    pub fn forward_tcp_h2(&self, port: u16) {
        Self::forward("kl-r2", "192.168.2.10", port, port);
    }

    fn forward(router: &str, host: &str, port: u16, to: u16) {
        let rules = format!(
            "insert rule inet filter prerouting iifname \"wan\" tcp dport {port} dnat ip to {host}:{to}\n\
             insert rule inet filter forward iifname \"wan\" ip daddr {host} tcp dport {to} accept\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", router, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused the forward"
        );
    }

    /// The rules miniupnpd put in router 1's forward path (`nft list chain inet filter
    /// miniupnpd`): its IPv6 pinholes (and the forwards of its IPv4 mappings).
    pub fn upnp_forward_rules(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", "kl-r1", "nft", "list", "chain", "inet", "filter",
            ])
            .arg("miniupnpd")
            .output()
            .expect("run nft");
        assert!(out.status.success(), "nft list chain failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// miniupnpd's debug log.
    pub fn miniupnpd_log(&self) -> String {
        std::fs::read_to_string(Path::new(LAB_DIR).join("miniupnpd.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .env("NATLAB_DIR", LAB_DIR)
            .output();
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it opens live there) and returns what
/// it returns.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("the thread in the namespace panicked")
}

/// A kith node running inside a network namespace, on its own thread and runtime.
pub struct NsNode {
    handle: NodeHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsNode {
    /// Starts the node of `dir` inside namespace `ns`.
    pub async fn start(ns: &str, dir: NodeDir) -> anyhow::Result<NsNode> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = format!("/var/run/netns/{ns}");
        let thread = std::thread::Builder::new()
            .name(format!("node-{ns}"))
            .spawn(move || {
                let enter = || -> anyhow::Result<tokio::runtime::Runtime> {
                    let f = std::fs::File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        f.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    Ok(tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?)
                };
                let rt = match enter() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Node::start(dir, StartOptions::default()).await {
                        Ok(node) => {
                            let _ = ready_tx.send(Ok(node.handle()));
                            let _ = stop_rx.await;
                            node.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                        }
                    }
                });
            })?;
        let handle = ready_rx.await??;
        Ok(NsNode {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node cleanly (closing connections, removing UPnP mappings) and waits.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await;
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
