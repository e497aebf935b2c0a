//! The Tor transport over a private Tor network on loopback ([`kith_tests::tornet`]): real
//! libp2p swarms whose only transport is Tor (arti), one listening on an arti-hosted onion
//! service, the other dialing its `/onion3` address; Noise authenticates the listener's node key
//! on top, exactly as on TCP. Also: the onion address survives a restart, and a Tor-only node
//! reaches a clearnet TCP peer through an exit.
//!
//! Skips (with a message) without `tor`/`tor-gencert` unless `CI=true`, where it fails. Every
//! wait is a deadline on a swarm event. The first onion connection may fail while the service's
//! descriptor is still being uploaded to the HSDirs, so dials are retried until a deadline.
//!
//! Prints time to bootstrap, to connect, to first byte and the throughput of a 16 MiB echo,
//! and (lines starting `MEASURE`) the node-level figures: a Tor-only node's start to onion
//! ready, a clearnet node's first onion dial (arti created and bootstrapped on demand), and
//! 16 MiB put and get over Tor.
//!
//! Every log line of this test process goes through the node's redacting writer (as the `kith`
//! binary does for a Tor-only node) into a buffer; the tests with Tor-only nodes assert that no
//! IP address is in it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kith_node::protocol::BytesCodec;
use kith_tests::tornet::TorNet;
use kith_transports::{
    Config, Keypair, Multiaddr, build_transport,
    tor::{Tor, onion_listen_addr},
    with_peer_id,
};
use libp2p::{
    PeerId, StreamProtocol, Swarm,
    multiaddr::Protocol,
    ping,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// First port of this binary's Tor network (authorities P.., relays P+100..).
const BASE_PORT: u16 = 17_000;
/// Virtual port of the onion service.
const ONION_PORT: u16 = 4001;
const MIB: usize = 1 << 20;
/// How long a dial through a fresh onion service may keep failing before the test fails.
/// (Usually the first dial works; on a network whose first consensus is seconds old, arti could
/// not build onion-service circuits for up to a minute in one run.)
const CONNECT_DEADLINE: Duration = Duration::from_secs(240);

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    echo: request_response::Behaviour<BytesCodec>,
}

/// A Tor-only swarm.
fn swarm(kp: &Keypair, tor: &Tor) -> Swarm<Behaviour> {
    let config = Config::tor_only(tor.clone());
    assert!(config.is_tor_only());
    swarm_on(kp, &config)
}

fn swarm_on(kp: &Keypair, config: &Config) -> Swarm<Behaviour> {
    Swarm::new(
        build_transport(kp, config).unwrap(),
        Behaviour {
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            // Bytes echoed back: the node's own bounded byte codec (gossip and joins use it).
            echo: request_response::Behaviour::with_codec(
                BytesCodec {
                    max_request: 32 * MIB,
                    max_response: 32 * MIB,
                },
                [(
                    StreamProtocol::new("/kith-test/echo/1"),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
            ),
        },
        kp.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(120)),
    )
}

/// Creates and bootstraps an arti client on `net` with its state under `root`, and waits until
/// arti says it is ready for traffic (bootstrap returns once the directory is usable; readiness
/// also needs a working guard connection). Prints and returns how long that took.
async fn bootstrapped(net: &TorNet, root: &Path, who: &str) -> (Tor, Duration) {
    let t0 = Instant::now();
    let tor = Tor::create(&net.tor_config(root)).unwrap();
    let mut events = tor.status_events().unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        tor.bootstrap().await.unwrap();
        while !tor.status().ready {
            events.next().await.expect("status events ended");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: not ready within 120 s: {}", tor.status()));
    let took = t0.elapsed();
    let status = tor.status();
    println!("{who}: bootstrapped in {took:.2?} ({status})");
    assert_eq!(status.percent, 100, "{who}: {status}");
    assert!(status.blocked.is_none(), "{who}: {status}");
    (tor, took)
}

/// An echo server on its own task: listens on the onion service, sends back every request.
struct Server {
    addr: Multiaddr,
    peer: PeerId,
    task: JoinHandle<()>,
}

/// An echo server on the onion service of `tor`.
async fn serve(kp: &Keypair, tor: &Tor) -> Server {
    serve_on(swarm(kp, tor), onion_listen_addr(ONION_PORT)).await
}

async fn serve_on(mut swarm: Swarm<Behaviour>, listen: Multiaddr) -> Server {
    let peer = *swarm.local_peer_id();
    swarm.listen_on(listen).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let _ = tx.send(address).await;
                }
                SwarmEvent::Behaviour(BehaviourEvent::Echo(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                })) => {
                    let _ = swarm.behaviour_mut().echo.send_response(channel, request);
                }
                SwarmEvent::ListenerClosed { reason, .. } => panic!("listener closed: {reason:?}"),
                _ => {}
            }
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no listen address within 60 s")
        .unwrap();
    Server { addr, peer, task }
}

impl Server {
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Dials `server` until a connection is up (the first tries may fail while the descriptor is
/// being published). Returns the time from the first dial and the number of attempts.
async fn connect(client: &mut Swarm<Behaviour>, server: &Server) -> (Duration, u32) {
    let addr = with_peer_id(&server.addr, server.peer);
    let t0 = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        client.dial(addr.clone()).unwrap();
        let outcome = tokio::time::timeout_at((t0 + CONNECT_DEADLINE).into(), async {
            loop {
                match client.select_next_some().await {
                    SwarmEvent::ConnectionEstablished {
                        peer_id, endpoint, ..
                    } if peer_id == server.peer => {
                        return Ok(endpoint);
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no connection to {addr} within {CONNECT_DEADLINE:?}"));
        match outcome {
            Ok(endpoint) => {
                assert_eq!(endpoint.get_remote_address(), &addr);
                return (t0.elapsed(), attempts);
            }
            Err(e) => {
                let e = e.to_string();
                // arti nests the same cause several times: the innermost one says it all
                let cause = e.rsplit(": ").next().unwrap_or(&e);
                println!(
                    "dial attempt {attempts} after {:.1?} failed: {cause}",
                    t0.elapsed()
                );
                assert!(
                    t0.elapsed() < CONNECT_DEADLINE,
                    "cannot connect to {addr}: {e}"
                );
                // a pause before redialing the same onion service, not a wait for a condition
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Sends `data` to the echo server and waits for it to come back.
async fn echo(client: &mut Swarm<Behaviour>, server: PeerId, data: Vec<u8>) -> Vec<u8> {
    let id = client.behaviour_mut().echo.send_request(&server, data);
    tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let ev = match client.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::Echo(ev)) => ev,
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                    result: Ok(rtt),
                    ..
                })) => {
                    println!("  ping rtt {rtt:.1?}");
                    continue;
                }
                _ => continue,
            };
            match ev {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } if request_id == id => return response,
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } if request_id == id => panic!("echo failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("no echo within 600 s")
}

/// Every log line of this process, after the node's redaction ([`kith_node::redact`]).
type Logs = Arc<Mutex<Vec<u8>>>;

struct LogSink(Logs);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a tracing subscriber that logs kith, libp2p and arti at debug
/// level through the node's redacting writer into a buffer, and returns the buffer.
fn capture_logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Logs = Arc::default();
        let sink = logs.clone();
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,yamux=info,libp2p_yamux=info,multistream_select=info,libp2p_noise=info,\
             tor_proto=info,tor_netdir=error,tor_dirmgr=info,tor_dirclient=info,tor_guardmgr=info,\
             tor_circmgr=info,tor_hsservice=info,tor_hsclient=info,tor_chanmgr=info,\
             tor_persist=info,tor_keymgr=info,tor_memquota=info,tor_rtcompat=info,hyper=info",
        );
        let installed = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(kith_node::redact::MakeRedacting::new(
                move || LogSink(sink.clone()),
                true,
            ))
            .try_init();
        assert!(installed.is_ok(), "another subscriber is installed");
        logs
    })
    .clone()
}

/// Asserts that the captured log holds no IP address, checked independently of the redactor:
/// none of the addresses this test network uses appears as a substring, every multiaddr IP
/// component is `[redacted]`, and no whitespace/punctuation-separated token parses as an IP
/// address or socket address. Also that the log is not empty and did have addresses to redact
/// (so the check is not vacuous).
fn assert_no_ip_in_logs(logs: &Logs, who: &str) {
    use std::net::{IpAddr, SocketAddr};
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let lines = text.lines().count();
    assert!(
        lines > 0,
        "{who}: nothing was logged: the capture is broken"
    );
    let redactions = text.matches(kith_node::redact::REDACTED).count();
    assert!(
        redactions > 0,
        "{who}: no address was ever redacted in {lines} lines: the check proves nothing"
    );
    let offending = |line: &str| {
        if ["127.0.0.1", "0.0.0.0", "[::1]", "/ip4/", "/ip6/"]
            .iter()
            .any(|n| {
                line.replace("/ip4/[redacted]", "")
                    .replace("/ip6/[redacted]", "")
                    .contains(n)
            })
        {
            return true;
        }
        line.split(|c: char| c.is_whitespace() || "()[]{},;\"'=<>|`".contains(c))
            .map(|t| t.trim_end_matches(['.', ':']))
            .filter(|t| !t.is_empty() && *t != "::")
            .any(|t| t.parse::<IpAddr>().is_ok() || t.parse::<SocketAddr>().is_ok())
    };
    let bad: Vec<&str> = text.lines().filter(|l| offending(l)).take(10).collect();
    assert!(
        bad.is_empty(),
        "{who}: IP addresses in the log:\n{}",
        bad.join("\n")
    );
    println!(
        "{who}: log check: {lines} lines ({} KiB), {redactions} addresses redacted, none left",
        text.len() / 1024
    );
}

/// The shared Tor network, held by one test. If the test fails, dropping it prints what CI
/// keeps nothing else of: the network's state ([`TorNet::report`]) and the newest warnings and
/// arti lines of this process's log.
struct Net(Arc<TorNet>);

impl std::ops::Deref for Net {
    type Target = TorNet;
    fn deref(&self) -> &TorNet {
        &self.0
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        println!("{}", self.0.report());
        let logs = capture_logs();
        let text =
            String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                [" WARN ", " ERROR ", " tor_", " arti_"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect();
        println!("--- the last warnings and arti lines of this process's log:");
        for l in &lines[lines.len().saturating_sub(80)..] {
            println!("{l}");
        }
    }
}

fn net() -> Option<Net> {
    capture_logs();
    let net = TorNet::shared(BASE_PORT).unwrap()?;
    println!(
        "private Tor network up in {:.1?} ({})",
        net.startup,
        net.dir().display()
    );
    Some(Net(net))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_service_carries_16_mib_between_tor_only_swarms() {
    let Some(net) = net() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (server_tor, _) = bootstrapped(&net, &tmp.path().join("server"), "server").await;
    let (client_tor, _) = bootstrapped(&net, &tmp.path().join("client"), "client").await;

    let server = serve(&Keypair::generate_ed25519(), &server_tor).await;
    let onion = server.addr.iter().next();
    assert!(
        matches!(onion, Some(Protocol::Onion3(ref a)) if a.port() == ONION_PORT),
        "listen address {} is not /onion3/…:{ONION_PORT}",
        server.addr
    );
    assert_ne!(
        server.addr,
        onion_listen_addr(ONION_PORT),
        "not the wildcard"
    );
    println!("server listens on {}", server.addr);

    let mut client = swarm(&Keypair::generate_ed25519(), &client_tor);
    let t0 = Instant::now();
    let (connected, attempts) = connect(&mut client, &server).await;
    let first = echo(&mut client, server.peer, vec![7]).await;
    let first_byte = t0.elapsed();
    assert_eq!(first, vec![7]);
    println!(
        "connected in {connected:.2?} ({attempts} attempt(s)); first echoed byte after {first_byte:.2?}"
    );

    let data = kith_tests::random_bytes(16 * MIB, 0x70e);
    let t1 = Instant::now();
    let back = echo(&mut client, server.peer, data.clone()).await;
    let took = t1.elapsed();
    assert!(back == data, "16 MiB came back different");
    // The server reads the whole request before it answers: 16 MiB go out, then 16 MiB come
    // back, one direction at a time.
    println!(
        "16 MiB echoed in {took:.2?}: {:.2} MiB/s (32 MiB moved, one direction at a time)",
        32.0 / took.as_secs_f64()
    );
    println!(
        "server tor status: {}; client tor status: {}",
        server_tor.status(),
        client_tor.status()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_address_survives_a_restart() {
    let Some(net) = net() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server_root = tmp.path().join("server");
    let server_key = Keypair::generate_ed25519();
    let (client_tor, _) = bootstrapped(&net, &tmp.path().join("client"), "client").await;
    let mut client = swarm(&Keypair::generate_ed25519(), &client_tor);

    let (tor, _) = bootstrapped(&net, &server_root, "server (first run)").await;
    let first = serve(&server_key, &tor).await;
    let (took, attempts) = connect(&mut client, &first).await;
    println!(
        "first run: {} reached in {took:.2?} ({attempts} attempt(s))",
        first.addr
    );
    let addr = first.addr.clone();
    first.stop().await;
    drop(tor);

    let (tor, _) = bootstrapped(&net, &server_root, "server (second run)").await;
    let second = serve(&server_key, &tor).await;
    assert_eq!(second.addr, addr, "same state dir, same onion address");
    let (took, attempts) = connect(&mut client, &second).await;
    println!(
        "second run: {} reached in {took:.2?} ({attempts} attempt(s))",
        second.addr
    );
    assert_eq!(
        echo(&mut client, second.peer, b"again".to_vec()).await,
        b"again"
    );
    second.stop().await;
}

/// A Tor-only node reaches a clearnet TCP peer through a Tor exit (the exit relays of the test
/// network accept 127.0.0.1; the arti fragment allows local addresses). The TCP server sees a
/// connection from the exit relay, never from the dialer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tor_only_swarm_reaches_a_tcp_peer_through_an_exit() {
    let Some(net) = net() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (client_tor, _) = bootstrapped(&net, &tmp.path().join("client"), "exit client").await;
    let tcp_only = Config {
        quic: false,
        ..Config::default()
    };
    let server = serve_on(
        swarm_on(&Keypair::generate_ed25519(), &tcp_only),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    )
    .await;
    let mut client = swarm(&Keypair::generate_ed25519(), &client_tor);
    let (took, attempts) = connect(&mut client, &server).await;
    println!(
        "{} reached through an exit in {took:.2?} ({attempts} attempt(s))",
        server.addr
    );
    let data = kith_tests::random_bytes(MIB, 0xe817);
    assert!(echo(&mut client, server.peer, data.clone()).await == data);
    server.stop().await;
}

/// The sockets of this process (every `/proc/self/fd` entry that is a socket, looked up in
/// `/proc/self/net/{tcp,tcp6,udp,udp6}`) whose local or remote address is not loopback. A
/// socket bound to no address yet (local `0.0.0.0:0`) and an unconnected one (remote all zero)
/// are fine; a listener on every interface is not. Also returns how many sockets were checked.
fn non_loopback_sockets() -> (usize, Vec<String>) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    // "0100007F:1F90" (IPv4) or 32 hex digits (IPv6), each 32-bit word in host (little-endian)
    // order, then ":port".
    let parse = |s: &str| -> (IpAddr, u16) {
        let (ip, port) = s.split_once(':').unwrap();
        let port = u16::from_str_radix(port, 16).unwrap();
        let words: Vec<[u8; 4]> = (0..ip.len() / 8)
            .map(|i| {
                u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)
                    .unwrap()
                    .to_le_bytes()
            })
            .collect();
        let ip = if words.len() == 1 {
            IpAddr::V4(Ipv4Addr::from(words[0]))
        } else {
            let b: Vec<u8> = words.concat();
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()))
        };
        (ip, port)
    };
    let loopback = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    };
    let mut bad = Vec::new();
    let mut checked = 0;
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            checked += 1;
            let (lip, lport) = parse(cols[1]);
            let (rip, _) = parse(cols[2]);
            let local_ok = loopback(lip) || (lip.is_unspecified() && lport == 0);
            let remote_ok = loopback(rip) || rip.is_unspecified();
            if !(local_ok && remote_ok) {
                bad.push(format!("{table}: {} -> {}", cols[1], cols[2]));
            }
        }
    }
    (checked, bad)
}

/// A kith node of `net`: `mode` off (loopback TCP; onion addresses dialed through Tor on
/// demand), both (loopback TCP and an onion service) or only (Tor alone), sysadmin NAT mode,
/// arti pointed at `net`, encoding k = 1, happy = 1, n = 1, storage only when `storage`.
fn init_tor_node(
    net: &TorNet,
    root: &Path,
    name: &str,
    mode: kith_node::config::TorMode,
    storage: bool,
) -> kith_node::nodedir::NodeDir {
    use kith_node::config::{ByteSize, RawConfig, TorMode};
    let arti = root.join(format!("{name}-arti.toml"));
    std::fs::write(&arti, net.arti_toml()).unwrap();
    let mut raw = RawConfig {
        nickname: name.into(),
        ..RawConfig::default()
    };
    raw.network.listen = match mode {
        TorMode::Only => Vec::new(),
        _ => vec!["/ip4/127.0.0.1/tcp/0".into()],
    };
    raw.nat.sysadmin = true;
    raw.tor.mode = mode;
    raw.tor.port = ONION_PORT;
    raw.tor.arti_config = Some(arti);
    raw.encoding.shares_needed = 1;
    raw.encoding.shares_happy = 1;
    raw.encoding.shares_total = 1;
    raw.storage.enabled = storage;
    raw.storage.capacity = ByteSize(1 << 30);
    raw.storage.reserved = ByteSize(0);
    let dir = kith_node::nodedir::NodeDir::new(root.join(name));
    dir.init(raw).unwrap();
    dir
}

async fn start_node(dir: &kith_node::nodedir::NodeDir) -> kith_node::Node {
    kith_node::Node::start(
        dir.clone(),
        kith_node::StartOptions {
            tor_trust_dirs: true,
            ..kith_node::StartOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Waits until `node`'s arti is ready and its onion service listens; returns the onion address.
async fn onion_ready(node: &kith_node::NodeHandle, t0: Instant) -> Multiaddr {
    let name = node.config().nickname.clone();
    kith_tests::until(
        &format!("{name}: tor ready and an onion address"),
        Duration::from_secs(180),
        async || {
            node.tor_status()
                .is_some_and(|t| t.ready && t.onion.is_some())
        },
    )
    .await;
    let t = node.tor_status().unwrap();
    println!(
        "{name}: tor {}% ready after {:.2?}, onion {}",
        t.percent,
        t0.elapsed(),
        t.onion.as_deref().unwrap_or("-")
    );
    node.onion_addr().unwrap()
}

/// `joiner` joins with an invitation from `inviter`, retried until [`CONNECT_DEADLINE`] (the
/// first onion connection may fail while the descriptor is being published).
async fn join_over_tor(inviter: &kith_node::NodeHandle, joiner: &kith_node::NodeHandle) {
    let t0 = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let code = inviter
            .invite(Duration::from_secs(600), 1)
            .await
            .unwrap()
            .code;
        match joiner.join(&code).await {
            Ok(n) => {
                println!(
                    "{} joined via {} in {:.2?} ({attempts} attempt(s)), {n} members known",
                    joiner.config().nickname,
                    inviter.config().nickname,
                    t0.elapsed()
                );
                return;
            }
            Err(e) => {
                println!(
                    "{} joining via {}: attempt {attempts} after {:.1?} failed: {e}",
                    joiner.config().nickname,
                    inviter.config().nickname,
                    t0.elapsed()
                );
                assert!(t0.elapsed() < CONNECT_DEADLINE, "cannot join: {e}");
                // a pause before asking again, not a wait for a condition
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Puts `data` from `node` (retried while Tor connections come up); returns the read cap, the
/// server that got the only share and how long the successful put took.
async fn put_over_tor(
    node: &kith_node::NodeHandle,
    data: &[u8],
) -> (kith_node::caps::ReadCap, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, data).unwrap();
    let opts = kith_node::client::PutOptions {
        params: node.config().encoding,
        convergent: false,
        key: None,
    };
    let t0 = Instant::now();
    loop {
        let attempt = Instant::now();
        match node.put_file(&path, &opts, &|_| {}).await {
            Ok(res) => {
                let took = attempt.elapsed();
                println!(
                    "{}: put {} bytes in {took:.2?} ({:.2?} with retries)",
                    node.config().nickname,
                    data.len(),
                    t0.elapsed()
                );
                let server = res.placement.values().next().cloned().unwrap();
                return (res.cap.parse().unwrap(), server, took);
            }
            Err(e) => {
                println!("{}: put failed, retrying: {e}", node.config().nickname);
                assert!(t0.elapsed() < CONNECT_DEADLINE, "put failed: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// What a download wrote, and when it wrote its first byte.
#[derive(Default)]
struct Timed {
    data: Vec<u8>,
    first: Option<Instant>,
}

impl tokio::io::AsyncWrite for Timed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !buf.is_empty() && self.first.is_none() {
            self.first = Some(Instant::now());
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Gets `cap` on `node` (retried while Tor connections come up); returns the bytes, the time
/// the successful get took and its time to first byte.
async fn get_timed(
    node: &kith_node::NodeHandle,
    cap: &kith_node::caps::ReadCap,
) -> (Vec<u8>, Duration, Duration) {
    let t0 = Instant::now();
    loop {
        let attempt = Instant::now();
        let mut out = Timed::default();
        match node.get(cap, &mut out).await {
            Ok(report) => {
                let took = attempt.elapsed();
                let first = out.first.map_or(took, |f| f - attempt);
                println!(
                    "{}: got {} bytes in {took:.2?} (first byte after {first:.2?}) from {:?}",
                    node.config().nickname,
                    out.data.len(),
                    report.servers_used
                );
                return (out.data, took, first);
            }
            Err(e) => {
                println!("{}: get failed, retrying: {e}", node.config().nickname);
                assert!(t0.elapsed() < CONNECT_DEADLINE, "get failed: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn get_over_tor(node: &kith_node::NodeHandle, cap: &kith_node::caps::ReadCap) -> Vec<u8> {
    get_timed(node, cap).await.0
}

/// Three kith nodes over the private Tor network: `a` runs Tor alongside loopback TCP and
/// founds the grid, `b` and `c` are Tor-only. `b` joins with `a`'s invitation, `c` with `b`'s
/// (onion to onion). Only `c` stores, so every share crosses Tor: a file put on `b` is got by
/// `a`, a file put on `a` is got by `b`. No socket of the process is off loopback. `b`'s onion
/// address survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tor_only_nodes_form_a_grid_and_move_files_with_a_dual_stack_node() {
    use kith_node::config::TorMode;
    let Some(net) = net() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = init_tor_node(&net, tmp.path(), "a", TorMode::Both, false);
    let b_dir = init_tor_node(&net, tmp.path(), "b", TorMode::Only, false);
    let c_dir = init_tor_node(&net, tmp.path(), "c", TorMode::Only, true);
    let t0 = Instant::now();
    let a = start_node(&a_dir).await;
    let mut b = start_node(&b_dir).await;
    let c = start_node(&c_dir).await;
    let (ah, bh, ch) = (a.handle(), b.handle(), c.handle());
    onion_ready(&ah, t0).await;
    let b_onion = onion_ready(&bh, t0).await;
    onion_ready(&ch, t0).await;

    // Tor-only nodes announce their onion address and nothing else.
    for h in [&bh, &ch] {
        let addrs = h.addrs();
        assert!(
            !addrs.is_empty() && addrs.iter().all(kith_node::grid::is_onion_with_peer),
            "{}: {addrs:?}",
            h.config().nickname
        );
        let st = h.status().await;
        assert!(st.nat.external.is_empty(), "{:?}", st.nat.external);
    }

    join_over_tor(&ah, &bh).await;
    join_over_tor(&bh, &ch).await;
    // A Tor-only node dials the onion address of a peer that has one, not its clearnet
    // addresses through an exit.
    for (from, to) in [(&bh, &ah), (&ch, &bh)] {
        let addrs = from.net().peers.get(&to.peer_id()).map(|p| p.addrs.clone());
        println!(
            "{} reaches {} over {addrs:?}",
            from.config().nickname,
            to.config().nickname
        );
        assert!(
            addrs.is_some_and(|a| !a.is_empty() && a.iter().all(kith_node::grid::is_onion)),
            "{} -> {}",
            from.config().nickname,
            to.config().nickname
        );
    }
    for h in [&ah, &bh, &ch] {
        h.wait_for_members(3, CONNECT_DEADLINE).await.unwrap();
        h.wait_for_storage_servers(1, CONNECT_DEADLINE)
            .await
            .unwrap();
    }
    // What a member record says about a Tor-only member: its onion address only.
    let info = ah.grid_info().await;
    let b_rec = info
        .members
        .iter()
        .find(|m| m.peer_id == bh.peer_id().to_string())
        .unwrap();
    assert_eq!(b_rec.onion.as_deref(), Some(b_onion.to_string().as_str()));
    assert!(
        b_rec.addrs.iter().all(|a| a.starts_with("/onion3/")),
        "{:?}",
        b_rec.addrs
    );

    let c_id = ch.peer_id().to_string();
    let from_b = kith_tests::random_bytes(256 << 10, 0xb0b);
    let (cap_b, server, _) = put_over_tor(&bh, &from_b).await;
    assert_eq!(server, c_id);
    assert!(get_over_tor(&ah, &cap_b).await == from_b);

    let from_a = kith_tests::random_bytes(256 << 10, 0xa11ce);
    let (cap_a, server, _) = put_over_tor(&ah, &from_a).await;
    assert_eq!(server, c_id);
    assert!(get_over_tor(&bh, &cap_a).await == from_a);

    // No socket of this process (three nodes, three arti clients) left loopback: the Tor
    // network is on 127.0.0.1, so anything else would be a leak.
    let (checked, sockets) = non_loopback_sockets();
    assert!(sockets.is_empty(), "non-loopback sockets: {sockets:#?}");
    assert!(
        checked > 0,
        "the leak check found no socket at all: it is broken"
    );
    println!("leak check: all {checked} sockets of the process are on loopback");
    assert_no_ip_in_logs(&capture_logs(), "tor-only grid");

    // Restart b: same onion address, and it still gets files. (A handle keeps the node's
    // database open: drop it first.)
    drop(bh);
    b.shutdown().await;
    let t1 = Instant::now();
    b = start_node(&b_dir).await;
    let bh = b.handle();
    assert_eq!(onion_ready(&bh, t1).await, b_onion, "same onion address");
    assert!(get_over_tor(&bh, &cap_b).await == from_b);

    b.shutdown().await;
    c.shutdown().await;
    a.shutdown().await;
}

/// A clearnet node (tor mode `off`, the default: no onion service, arti created and bootstrapped
/// only at its first onion dial) and a Tor-only node form a grid: the clearnet node joins with
/// the Tor-only node's invitation, reaching it over its onion address. Only the clearnet node
/// stores, so a 16 MiB file put on the Tor-only node crosses Tor into the clearnet node's store
/// (which gets it back), and a 16 MiB file put on the clearnet node crosses Tor when the Tor-only
/// node gets it. Before the join the clearnet node has no Tor state at all; afterwards its
/// status shows arti ready and the streams it opened. The Tor-only node's status shows its
/// onion address as published and reached. No IP address is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clearnet_node_reaches_a_tor_only_node_through_tor_on_demand() {
    use kith_node::{config::TorMode, grid::is_onion};
    let Some(net) = net() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let o_dir = init_tor_node(&net, tmp.path(), "o", TorMode::Off, true);
    let t_dir = init_tor_node(&net, tmp.path(), "t", TorMode::Only, false);
    let t0 = Instant::now();
    let o = start_node(&o_dir).await;
    let t = start_node(&t_dir).await;
    let (oh, th) = (o.handle(), t.handle());
    let t_onion = onion_ready(&th, t0).await;
    let onion_up = t0.elapsed();

    // The clearnet node: no onion service, no Tor state, nothing sent, until it dials an onion.
    let st = oh
        .tor_status()
        .expect("tor mode off keeps an on-demand Tor for onion dials");
    println!("o: tor {}", st.line());
    assert_eq!(st.mode, "off");
    assert!(!st.started, "{}", st.line());
    assert!(st.line().contains("idle"), "{}", st.line());
    assert!(
        !o_dir.root().join("tor").exists(),
        "arti state exists before the first onion dial"
    );
    assert!(oh.onion_addr().is_none());
    assert!(oh.addrs().iter().all(|a| !is_onion(a)), "{:?}", oh.addrs());

    let t1 = Instant::now();
    join_over_tor(&th, &oh).await;
    let first_dial = t1.elapsed();
    let st = oh.tor_status().unwrap();
    println!("o: tor {}", st.line());
    assert!(st.started && st.ready && st.percent == 100, "{}", st.line());
    assert!(st.dials_ok >= 1, "{}", st.line());
    assert!(o_dir.root().join("tor").join("state").is_dir());
    assert!(oh.onion_addr().is_none(), "mode off never listens on Tor");
    let via = oh.net().peers.get(&th.peer_id()).map(|p| p.addrs.clone());
    println!("o reaches t over {via:?}");
    assert!(
        via.is_some_and(|a| !a.is_empty() && a.iter().all(is_onion)),
        "o -> t is not over t's onion address"
    );
    for h in [&oh, &th] {
        h.wait_for_members(2, CONNECT_DEADLINE).await.unwrap();
        h.wait_for_storage_servers(1, CONNECT_DEADLINE)
            .await
            .unwrap();
    }

    // `kith status` of the Tor-only node (the JSON the API serves, and the line the CLI prints).
    let ts = th
        .status()
        .await
        .tor
        .expect("tor-only status has a tor part");
    println!("t: tor {}", ts.line());
    assert_eq!(ts.mode, "only");
    assert!(ts.started && ts.ready && ts.percent == 100, "{}", ts.line());
    assert_eq!(ts.onion.as_deref(), Some(t_onion.to_string().as_str()));
    assert!(
        ts.inbound >= 1,
        "o reached t's onion service: {}",
        ts.line()
    );
    assert_eq!(ts.onion_reachable, Some(true), "{}", ts.line());
    let line = ts.line();
    for part in ["only mode", "100% ok", &t_onion.to_string(), "reachable"] {
        assert!(line.contains(part), "{line:?} lacks {part:?}");
    }
    let json = serde_json::to_value(th.status().await).unwrap();
    assert_eq!(json["tor"]["onion"], serde_json::json!(t_onion.to_string()));

    // 16 MiB from t: the put crosses Tor into o's store.
    let o_id = oh.peer_id().to_string();
    let from_t = kith_tests::random_bytes(16 * MIB, 0x7011);
    let (cap_t, server, put_t) = put_over_tor(&th, &from_t).await;
    assert_eq!(server, o_id);
    assert!(get_over_tor(&oh, &cap_t).await == from_t);
    // 16 MiB from o: the get crosses Tor into t.
    let from_o = kith_tests::random_bytes(16 * MIB, 0x0ff);
    let (cap_o, server, _) = put_over_tor(&oh, &from_o).await;
    assert_eq!(server, o_id);
    let (got, get_t, first_byte) = get_timed(&th, &cap_o).await;
    assert!(got == from_o, "16 MiB came back different");

    println!(
        "MEASURE tor-only node: start to bootstrapped with its onion service listening: {onion_up:.2?}"
    );
    println!(
        "MEASURE clearnet node (tor mode off): first onion dial, arti created + bootstrapped + join over the onion service: {first_dial:.2?}"
    );
    println!(
        "MEASURE 16 MiB put on the Tor-only node (over Tor): {put_t:.2?}, {:.2} MiB/s",
        16.0 / put_t.as_secs_f64()
    );
    println!(
        "MEASURE 16 MiB get on the Tor-only node (over Tor): {get_t:.2?}, {:.2} MiB/s, first byte after {first_byte:.2?}",
        16.0 / get_t.as_secs_f64()
    );
    let st = oh.tor_status().unwrap();
    println!("o: tor {}", st.line());
    assert_no_ip_in_logs(&capture_logs(), "clearnet + tor-only grid");

    t.shutdown().await;
    o.shutdown().await;
}
