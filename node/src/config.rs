//! `kith.toml`: the node's one configuration file, in two stages (as ripgrep's flags): the
//! documented serde struct [`RawConfig`] as written on disk, and the validated [`Config`] the
//! node runs with (`Config::try_from(raw)`).
//!
//! Every field can be set by a flag at `kith init` (see `cli`). A node dir is self-contained:
//! `kith.toml`, `private/` (node key, convergence secret, API token), `node.redb` (indexes) and
//! `storage/` (share files), so it can be moved or mounted as a container volume.
//!
//! ```toml
//! nickname = "alice"
//!
//! [network]
//! # Addresses to listen on (TCP and/or QUIC multiaddrs). `kith init` picks a free port once so
//! # the addresses stay the same across restarts (a TCP port found in use at start is replaced
//! # by a free one for that run, with a warning).
//! listen = ["/ip4/0.0.0.0/tcp/41234", "/ip4/0.0.0.0/udp/41234/quic-v1",
//!           "/ip6/::/tcp/41234", "/ip6/::/udp/41234/quic-v1"]
//! # Addresses to tell peers about, in addition to the listen addresses.
//! announce = []
//! # Static peers, dialed at start and redialed when they drop (`kith peer add` adds more).
//! peers = ["/ip4/192.0.2.7/tcp/41000/p2p/12D3KooW..."]
//!
//! [storage]
//! enabled = true          # serve storage to peers
//! capacity = "100GiB"     # most share bytes this node keeps for others
//! reserved = "1GiB"       # always leave this much disk free
//! lease_days = 31         # how long a lease lasts unless renewed
//! direct_io = true        # write uploaded shares around the page cache (O_DIRECT) where the
//!                         # file system allows; false: through the page cache, flushed every 8 MiB
//!
//! [encoding]              # defaults for uploads from this node
//! shares_needed = 3       # k: any k shares rebuild a file
//! shares_happy = 7        # an upload succeeds only on this many distinct servers
//! shares_total = 10       # n: shares made per file
//! segment_size = "1MiB"
//! convergent = true       # convergent encryption (dedupe); `false` = a random key per upload
//!
//! [api]
//! listen = "127.0.0.1:41235"  # local HTTP API and control panel; loopback only
//!
//! [nat]                   # how a home node becomes reachable by itself
//! sysadmin = false        # true: only the addresses above, nothing automatic
//! detect_addresses = true # observed addresses (identify) confirmed by members (AutoNAT v2)
//! upnp = true             # map the listen ports on the router (UPnP IGD v1/v2)
//! relay_client = true     # unreachable: keep reservations on two members' relays
//! relay_server = true     # reachable: relay for members (never for others)
//! hole_punching = true    # upgrade relayed connections to direct ones (DCUtR)
//! relay_max_circuits = 32
//! relay_max_circuit_bytes = "16GiB"
//! relay_max_circuit_minutes = 60
//! relay_circuits_per_minute = 30
//! relay_max_bytes_per_hour = "0"  # the relay's bandwidth cap (0 = none); circuits book their max
//!
//! [repair]                # the automatic repairer (check + repair of this node's uploads)
//! enabled = true
//! interval = "1h"         # a pass over every file this often ("90s", "30m", "1h", "1d")
//! pause = "1s"            # between two files of a pass (throttle)
//!
//! [tor]                   # Tor through arti (onion service + exits)
//! mode = "off"            # "off"; "both": clearnet and an onion service; "only": Tor only
//! dial_onions = true      # mode "off": reach onion-only members through Tor, started on demand
//! port = 41800            # the onion service's virtual port
//! # arti_config = "/path/to/extra-arti.toml"  # extra arti TOML (e.g. a private Tor network)
//! ```
//!
//! `mode = "only"` is the anonymous node (Tahoe's `reveal-IP-address = false`): validation
//! refuses every setting that could reveal the node's IP address (clearnet listen addresses,
//! announce addresses that are not `/onion3`, static peers with IP addresses, UPnP, relays,
//! hole punching, address detection), naming the field.
//!
//! `mode = "off"` with `dial_onions = true` (the default) is a clearnet node that can still reach
//! Tor-only members: it dials `/onion3` addresses (and nothing else) through arti, which it
//! creates and bootstraps only at the first such dial; it runs no onion service. `dial_onions =
//! false` is no Tor at all (no arti state, a Tor-only member is unreachable). The other modes
//! always dial onions, so `dial_onions = false` is refused with them.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use crate::codec::{EncodingParams, MAX_SEGMENT_SIZE};

/// File name of the configuration inside the node dir.
pub const CONFIG_FILE: &str = "kith.toml";

/// A byte count written with an optional unit (`"50GiB"`, `"1MiB"`, `"10GB"`, `"4096"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    /// `4096`, `10GB` (powers of 1000), `50GiB` (powers of 1024), `1.5KiB`: the one size
    /// syntax shared with the accounting policy (`kith grant --quota`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        kith_accounting::policy::parse_size(s)
            .map(ByteSize)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&kith_accounting::policy::format_size(self.0))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(ByteSize(n)),
            Either::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `kith.toml` as written on disk. Every field has a default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// A name for humans; shown to peers.
    pub nickname: String,
    /// Listen / announce addresses and static peers.
    pub network: RawNetwork,
    /// The storage server.
    pub storage: RawStorage,
    /// Defaults for uploads.
    pub encoding: RawEncoding,
    /// Local HTTP API and control panel.
    pub api: RawApi,
    /// Automatic connectivity (NAT traversal) and the relay service.
    pub nat: RawNat,
    /// Tor (onion service and exits through arti).
    pub tor: RawTor,
    /// The automatic repairer.
    pub repair: RawRepair,
}

/// `[repair]`: the automatic repairer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRepair {
    /// Run the automatic repairer.
    pub enabled: bool,
    /// Time between passes over every file (`"1h"`, `"30m"`, `"90s"`, `"500ms"`).
    pub interval: String,
    /// Pause between two files of a pass.
    pub pause: String,
}

impl Default for RawRepair {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "1h".into(),
            pause: "1s".into(),
        }
    }
}

/// The validated `[repair]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairSettings {
    /// Run the automatic repairer.
    pub enabled: bool,
    /// Time between passes.
    pub interval: std::time::Duration,
    /// Pause between files.
    pub pause: std::time::Duration,
}

/// Parses `"500ms"`, `"90s"`, `"30m"`, `"1h"`, `"7d"` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 90s, 30m, 1h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h or d")),
    };
    Ok(std::time::Duration::from_millis(n.saturating_mul(ms)))
}

/// How a node uses Tor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TorMode {
    /// No Tor.
    #[default]
    Off,
    /// Clearnet transports plus an onion service; onion addresses are dialed through Tor.
    Both,
    /// Tor and nothing else: no clearnet socket, no clearnet address anywhere.
    Only,
}

impl fmt::Display for TorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TorMode::Off => "off",
            TorMode::Both => "both",
            TorMode::Only => "only",
        })
    }
}

/// Default virtual port of the onion service.
pub const DEFAULT_ONION_PORT: u16 = 41800;

/// `[tor]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTor {
    /// `off`, `both` or `only`.
    pub mode: TorMode,
    /// With `mode = "off"`: dial members' `/onion3` addresses through Tor (arti started at the
    /// first such dial). `false`: no Tor at all.
    pub dial_onions: bool,
    /// Virtual port of the onion service.
    pub port: u16,
    /// Extra arti configuration (TOML file in arti's syntax), e.g. a private Tor network.
    pub arti_config: Option<PathBuf>,
}

impl Default for RawTor {
    fn default() -> Self {
        Self {
            mode: TorMode::Off,
            dial_onions: true,
            port: DEFAULT_ONION_PORT,
            arti_config: None,
        }
    }
}

/// The validated `[tor]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorSettings {
    /// How Tor is used.
    pub mode: TorMode,
    /// Onion addresses are dialed through Tor (always true unless `mode` is `off`).
    pub dial_onions: bool,
    /// Virtual port of the onion service.
    pub port: u16,
    /// Extra arti TOML file.
    pub arti_config: Option<PathBuf>,
}

/// `[nat]`: what the node does by itself to become reachable. `sysadmin = true` switches every
/// automatic behaviour off; each can also be switched off alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNat {
    /// Only configured listen/announce addresses: no detection, UPnP, relays or hole punching.
    pub sysadmin: bool,
    /// Learn observed addresses (identify) and confirm them with other members (AutoNAT v2).
    pub detect_addresses: bool,
    /// Map the listen ports on the router (UPnP IGD).
    pub upnp: bool,
    /// When not reachable, keep reservations on two members' relays.
    pub relay_client: bool,
    /// When reachable, relay for members.
    pub relay_server: bool,
    /// Upgrade relayed connections to direct ones (DCUtR, TCP and QUIC).
    pub hole_punching: bool,
    /// Circuits this node relays at once.
    pub relay_max_circuits: usize,
    /// Most bytes one relayed circuit may carry.
    pub relay_max_circuit_bytes: ByteSize,
    /// Longest a relayed circuit may last, in minutes.
    pub relay_max_circuit_minutes: u32,
    /// New circuits one member may open through this node per minute.
    pub relay_circuits_per_minute: u32,
    /// The relay's bandwidth cap: most bytes all circuits together may carry per hour
    /// (`"0"` = no cap). Each circuit books `relay_max_circuit_bytes` when it opens.
    pub relay_max_bytes_per_hour: ByteSize,
}

impl Default for RawNat {
    fn default() -> Self {
        let limits = kith_nat::RelayLimits::default();
        Self {
            sysadmin: false,
            detect_addresses: true,
            upnp: true,
            relay_client: true,
            relay_server: true,
            hole_punching: true,
            relay_max_circuits: limits.max_circuits,
            relay_max_circuit_bytes: ByteSize(limits.max_circuit_bytes),
            relay_max_circuit_minutes: (limits.max_circuit_duration.as_secs() / 60) as u32,
            relay_circuits_per_minute: limits.circuits_per_minute,
            relay_max_bytes_per_hour: ByteSize(limits.max_bytes_per_hour),
        }
    }
}

/// `[network]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNetwork {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Extra multiaddrs to announce.
    pub announce: Vec<String>,
    /// Static peers (`/…/p2p/<peer id>`).
    pub peers: Vec<String>,
}

impl Default for RawNetwork {
    fn default() -> Self {
        Self {
            // Both families: at home, IPv6 often reaches a friend directly (or by hole
            // punching through a firewall, with no NAT in the way) where IPv4 needs a relay.
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
                "/ip6/::/tcp/0".into(),
                "/ip6/::/udp/0/quic-v1".into(),
            ],
            announce: Vec::new(),
            peers: Vec::new(),
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStorage {
    /// Serve storage to peers.
    pub enabled: bool,
    /// Most share bytes kept for others.
    pub capacity: ByteSize,
    /// Disk space always left free.
    pub reserved: ByteSize,
    /// Lease duration in days.
    pub lease_days: u32,
    /// Who may store here: `"members"` of this node's grid and static peers (default), or
    /// `"anyone"` who can connect (an open server, as a Tahoe storage node).
    pub accept_from: AcceptFrom,
    /// Write the bulk of uploaded shares with `O_DIRECT`.
    pub direct_io: bool,
}

/// Who may store on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcceptFrom {
    /// Members of this node's grid (not expelled) and static peers.
    #[default]
    Members,
    /// Anyone who can connect.
    Anyone,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: ByteSize(100 << 30),
            reserved: ByteSize(1 << 30),
            lease_days: 31,
            accept_from: AcceptFrom::Members,
            direct_io: true,
        }
    }
}

/// `[encoding]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEncoding {
    /// k.
    pub shares_needed: u8,
    /// Servers of happiness.
    pub shares_happy: u8,
    /// n.
    pub shares_total: u8,
    /// Segment size.
    pub segment_size: ByteSize,
    /// Convergent encryption (else a random key per upload).
    pub convergent: bool,
}

impl Default for RawEncoding {
    fn default() -> Self {
        let d = EncodingParams::default();
        Self {
            shares_needed: d.needed,
            shares_happy: d.happy,
            shares_total: d.total,
            segment_size: ByteSize(u64::from(d.segment_size)),
            convergent: true,
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApi {
    /// Socket address of the local API and panel.
    pub listen: String,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
        }
    }
}

/// A configuration that failed validation; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("kith.toml: {field}: {message}")]
pub struct ConfigError {
    /// Dotted field name, e.g. `encoding.shares_happy`.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// A static peer: its id and the address to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPeer {
    /// The peer.
    pub peer: PeerId,
    /// Where to dial it (without `/p2p/`).
    pub addr: Multiaddr,
}

impl FromStr for StaticPeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr: Multiaddr = s
            .parse()
            .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))?;
        let (peer, addr) = kith_transports::split_peer_id(&addr)
            .ok_or_else(|| format!("{s:?} must end in /p2p/<peer id>"))?;
        if addr.is_empty() {
            return Err(format!("{s:?} has no address before /p2p/"));
        }
        Ok(StaticPeer { peer, addr })
    }
}

impl fmt::Display for StaticPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            kith_transports::with_peer_id(&self.addr, self.peer)
        )
    }
}

/// The validated configuration a node runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Nickname.
    pub nickname: String,
    /// Listen multiaddrs.
    pub listen: Vec<Multiaddr>,
    /// Extra announced multiaddrs.
    pub announce: Vec<Multiaddr>,
    /// Static peers.
    pub peers: Vec<StaticPeer>,
    /// Serve storage.
    pub storage_enabled: bool,
    /// Who may store here.
    pub accept_from: AcceptFrom,
    /// Storage capacity in bytes.
    pub capacity: u64,
    /// Reserved free disk in bytes.
    pub reserved: u64,
    /// Write the bulk of uploaded shares with `O_DIRECT`.
    pub direct_io: bool,
    /// Lease duration in seconds.
    pub lease_secs: u64,
    /// Upload encoding defaults.
    pub encoding: EncodingParams,
    /// Convergent encryption by default.
    pub convergent: bool,
    /// Local API socket address (loopback).
    pub api_listen: SocketAddr,
    /// Automatic connectivity features in force.
    pub nat: kith_nat::Features,
    /// Relay service limits.
    pub relay_limits: kith_nat::RelayLimits,
    /// Tor.
    pub tor: TorSettings,
    /// The automatic repairer.
    pub repair: RepairSettings,
}

fn is_onion(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Onion3(_)))
}

fn has_ip(a: &Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)))
}

/// `tor.mode = "only"`: refuses whatever could reveal the node's IP address.
fn check_tor_only(
    listen: &[Multiaddr],
    announce: &[Multiaddr],
    peers: &[StaticPeer],
    nat: &kith_nat::Features,
) -> Result<(), ConfigError> {
    const WHY: &str = "with tor.mode = \"only\" it would reveal this node's IP address";
    if let Some(a) = listen.first() {
        return Err(bad(
            "network.listen",
            format!(
                "{a}: {WHY}; a Tor-only node listens on its onion service only (tor.port), so leave network.listen empty"
            ),
        ));
    }
    if let Some(a) = announce.iter().find(|a| !is_onion(a)) {
        return Err(bad(
            "network.announce",
            format!("{a} is not an /onion3 address: {WHY}"),
        ));
    }
    if let Some(p) = peers.iter().find(|p| has_ip(&p.addr)) {
        return Err(bad(
            "network.peers",
            format!("{p} has an IP address: {WHY} (use its /onion3 address)"),
        ));
    }
    let on: [(&'static str, bool); 5] = [
        ("nat.detect_addresses", nat.detect_addresses),
        ("nat.upnp", nat.upnp),
        ("nat.relay_client", nat.relay_client),
        ("nat.relay_server", nat.relay_server),
        ("nat.hole_punching", nat.hole_punching),
    ];
    if let Some((field, _)) = on.iter().find(|(_, on)| *on) {
        return Err(bad(
            field,
            format!("must be off: {WHY} (set nat.sysadmin = true)"),
        ));
    }
    Ok(())
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.nickname.len() > 64 || raw.nickname.chars().any(char::is_control) {
            return Err(bad("nickname", "at most 64 bytes, no control characters"));
        }
        let parse_addrs = |field, list: &[String]| -> Result<Vec<Multiaddr>, ConfigError> {
            list.iter()
                .map(|s| {
                    s.parse::<Multiaddr>()
                        .map_err(|e| bad(field, format!("{s:?} is not a multiaddr: {e}")))
                })
                .collect()
        };
        let listen = parse_addrs("network.listen", &raw.network.listen)?;
        for a in &listen {
            let ok = a
                .iter()
                .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1 | Protocol::Memory(_)));
            if !ok {
                return Err(bad(
                    "network.listen",
                    format!("{a} is neither a TCP, QUIC nor memory address"),
                ));
            }
        }
        let announce = parse_addrs("network.announce", &raw.network.announce)?;
        let peers = raw
            .network
            .peers
            .iter()
            .map(|s| s.parse().map_err(|e| bad("network.peers", e)))
            .collect::<Result<Vec<StaticPeer>, _>>()?;
        let segment_size = u32::try_from(raw.encoding.segment_size.0)
            .ok()
            .filter(|s| (1024..=MAX_SEGMENT_SIZE).contains(s))
            .ok_or_else(|| {
                bad(
                    "encoding.segment_size",
                    format!(
                        "must be between 1KiB and {}",
                        ByteSize(MAX_SEGMENT_SIZE.into())
                    ),
                )
            })?;
        let encoding = EncodingParams {
            needed: raw.encoding.shares_needed,
            happy: raw.encoding.shares_happy,
            total: raw.encoding.shares_total,
            segment_size,
        };
        encoding
            .validate()
            .map_err(|e| bad("encoding", e.to_string()))?;
        let api_listen: SocketAddr = raw
            .api
            .listen
            .parse()
            .map_err(|e| bad("api.listen", format!("{:?}: {e}", raw.api.listen)))?;
        if !api_listen.ip().is_loopback() {
            return Err(bad(
                "api.listen",
                "the control panel only binds loopback addresses (127.0.0.1 or ::1)",
            ));
        }
        let n = &raw.nat;
        let nat = if n.sysadmin {
            kith_nat::Features::sysadmin()
        } else {
            kith_nat::Features {
                detect_addresses: n.detect_addresses,
                upnp: n.upnp,
                relay_client: n.relay_client,
                relay_server: n.relay_server,
                hole_punching: n.hole_punching,
            }
        };
        let tor = TorSettings {
            mode: raw.tor.mode,
            dial_onions: raw.tor.dial_onions,
            port: raw.tor.port,
            arti_config: raw.tor.arti_config,
        };
        if tor.mode != TorMode::Off && !tor.dial_onions {
            return Err(bad(
                "tor.dial_onions",
                format!(
                    "tor.mode = \"{}\" dials onion addresses through Tor; dial_onions = false needs tor.mode = \"off\"",
                    tor.mode
                ),
            ));
        }
        if tor.mode != TorMode::Off && tor.port == 0 {
            return Err(bad("tor.port", "the onion service needs a port (1-65535)"));
        }
        if tor.mode == TorMode::Only {
            check_tor_only(&listen, &announce, &peers, &nat)?;
        }
        if nat.hole_punching && !nat.relay_client {
            return Err(bad(
                "nat.hole_punching",
                "hole punching upgrades relayed connections: it needs nat.relay_client = true",
            ));
        }
        if n.relay_max_bytes_per_hour.0 != 0
            && n.relay_max_bytes_per_hour.0 < n.relay_max_circuit_bytes.0
        {
            return Err(bad(
                "nat.relay_max_bytes_per_hour",
                "must be 0 (no cap) or at least nat.relay_max_circuit_bytes (one circuit)",
            ));
        }
        if n.relay_max_circuit_minutes == 0 || n.relay_max_circuit_bytes.0 < 1 << 20 {
            return Err(bad(
                "nat.relay_max_circuit_bytes",
                "relayed circuits need at least 1 minute and 1MiB to carry storage traffic",
            ));
        }
        let relay_limits = kith_nat::RelayLimits {
            max_circuits: n.relay_max_circuits,
            max_circuit_bytes: n.relay_max_circuit_bytes.0,
            max_circuit_duration: std::time::Duration::from_secs(
                u64::from(n.relay_max_circuit_minutes) * 60,
            ),
            circuits_per_minute: n.relay_circuits_per_minute,
            max_bytes_per_hour: n.relay_max_bytes_per_hour.0,
            ..kith_nat::RelayLimits::default()
        };
        if raw.storage.lease_days == 0 {
            return Err(bad("storage.lease_days", "must be at least 1"));
        }
        let repair = RepairSettings {
            enabled: raw.repair.enabled,
            interval: parse_duration(&raw.repair.interval)
                .map_err(|e| bad("repair.interval", e))?,
            pause: parse_duration(&raw.repair.pause).map_err(|e| bad("repair.pause", e))?,
        };
        if repair.interval < std::time::Duration::from_millis(100) {
            return Err(bad("repair.interval", "must be at least 100ms"));
        }

        Ok(Config {
            nickname: raw.nickname,
            listen,
            announce,
            peers,
            storage_enabled: raw.storage.enabled,
            accept_from: raw.storage.accept_from,
            capacity: raw.storage.capacity.0,
            reserved: raw.storage.reserved.0,
            direct_io: raw.storage.direct_io,
            lease_secs: u64::from(raw.storage.lease_days) * 86_400,
            encoding,
            convergent: raw.encoding.convergent,
            api_listen,
            nat,
            relay_limits,
            tor,
            repair,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_and_print() {
        for (s, n) in [
            ("4096", 4096),
            ("1MiB", 1 << 20),
            ("50GiB", 50 << 30),
            ("10GB", 10_000_000_000),
            ("1.5KiB", 1536),
        ] {
            assert_eq!(s.parse::<ByteSize>().unwrap(), ByteSize(n), "{s}");
        }
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
    }

    #[test]
    fn default_config_is_valid_and_round_trips_through_toml() {
        let raw = RawConfig::default();
        let text = toml::to_string(&raw).unwrap();
        let back: RawConfig = toml::from_str(&text).unwrap();
        let cfg = Config::try_from(back).unwrap();
        assert_eq!(cfg.encoding, EncodingParams::default());
        assert_eq!(cfg.lease_secs, 31 * 86_400);
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut raw = RawConfig::default();
        raw.encoding.shares_happy = 11;
        let err = Config::try_from(raw).unwrap_err();
        assert_eq!(err.field, "encoding");
        let mut raw = RawConfig::default();
        raw.api.listen = "0.0.0.0:80".into();
        assert_eq!(Config::try_from(raw).unwrap_err().field, "api.listen");
        let mut raw = RawConfig::default();
        raw.network.peers = vec!["/ip4/127.0.0.1/tcp/1".into()];
        assert_eq!(Config::try_from(raw).unwrap_err().field, "network.peers");
        assert!(toml::from_str::<RawConfig>("bogus = 1").is_err());
    }

    #[test]
    fn repair_section_parses_validates_and_defaults_to_hourly() {
        let c = Config::try_from(RawConfig::default()).unwrap();
        assert_eq!(
            c.repair,
            RepairSettings {
                enabled: true,
                interval: std::time::Duration::from_secs(3600),
                pause: std::time::Duration::from_secs(1),
            }
        );
        let raw: RawConfig =
            toml::from_str("[repair]\nenabled = false\ninterval = \"500ms\"\npause = \"0s\"\n")
                .unwrap();
        let c = Config::try_from(raw).unwrap();
        assert!(!c.repair.enabled);
        assert_eq!(c.repair.interval, std::time::Duration::from_millis(500));
        assert_eq!(c.repair.pause, std::time::Duration::ZERO);
        for (interval, pause) in [("1 hour", "1s"), ("50ms", "1s"), ("1h", "x")] {
            let mut raw = RawConfig::default();
            raw.repair.interval = interval.into();
            raw.repair.pause = pause.into();
            let err = Config::try_from(raw).unwrap_err();
            assert!(err.field.starts_with("repair."), "{err}");
        }
        assert_eq!(
            parse_duration("7d"),
            Ok(std::time::Duration::from_secs(7 * 86400))
        );
    }

    /// What `kith init --tor-only` writes.
    fn tor_only() -> RawConfig {
        let mut raw = RawConfig::default();
        raw.tor.mode = TorMode::Only;
        raw.nat.sysadmin = true;
        raw.network.listen.clear();
        raw
    }

    const ONION: &str = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800";

    #[test]
    fn tor_section_parses_and_defaults_to_off() {
        let cfg = Config::try_from(RawConfig::default()).unwrap();
        assert_eq!(cfg.tor.mode, TorMode::Off);
        assert!(
            cfg.tor.dial_onions,
            "a clearnet node reaches Tor-only members by default"
        );
        assert_eq!(cfg.tor.port, DEFAULT_ONION_PORT);
        let raw: RawConfig = toml::from_str("[tor]\ndial_onions = false\n").unwrap();
        let cfg = Config::try_from(raw).unwrap();
        assert!(!cfg.tor.dial_onions);
        for mode in ["both", "only"] {
            let mut raw: RawConfig =
                toml::from_str(&format!("[tor]\nmode = \"{mode}\"\ndial_onions = false\n"))
                    .unwrap();
            raw.nat.sysadmin = true;
            raw.network.listen.clear();
            assert_eq!(
                Config::try_from(raw).unwrap_err().field,
                "tor.dial_onions",
                "{mode}"
            );
        }
        let raw: RawConfig =
            toml::from_str("[tor]\nmode = \"both\"\nport = 4001\narti_config = \"/x/arti.toml\"\n")
                .unwrap();
        let cfg = Config::try_from(raw).unwrap();
        assert_eq!(cfg.tor.mode, TorMode::Both);
        assert_eq!(cfg.tor.port, 4001);
        assert_eq!(cfg.tor.arti_config, Some(PathBuf::from("/x/arti.toml")));
        assert!(toml::from_str::<RawConfig>("[tor]\nmode = \"sometimes\"").is_err());
        assert!(toml::from_str::<RawConfig>("[tor]\nbogus = 1").is_err());
        let mut raw = RawConfig::default();
        raw.tor.mode = TorMode::Both;
        raw.tor.port = 0;
        assert_eq!(Config::try_from(raw).unwrap_err().field, "tor.port");
    }

    /// A Tor-only node may name static peers by host name: the transport hands `/dns*` names to
    /// Tor (the exit resolves them), never to a local resolver. IP addresses are refused.
    #[test]
    fn tor_only_takes_dns_static_peers() {
        let mut raw = tor_only();
        let peer = PeerId::random();
        raw.network.peers = vec![
            format!("/dns4/friend.example.org/tcp/41000/p2p/{peer}"),
            format!("/dns/friend.example.org/tcp/41000/p2p/{peer}"),
        ];
        let cfg = Config::try_from(raw).unwrap();
        assert_eq!(cfg.peers.len(), 2);
    }

    #[test]
    fn tor_only_config_is_valid_and_round_trips() {
        let mut raw = tor_only();
        raw.network.announce = vec![ONION.into()];
        raw.network.peers = vec![format!("{ONION}/p2p/{}", PeerId::random())];
        let text = toml::to_string(&raw).unwrap();
        let cfg = Config::try_from(toml::from_str::<RawConfig>(&text).unwrap()).unwrap();
        assert_eq!(cfg.tor.mode, TorMode::Only);
        assert!(cfg.listen.is_empty());
        assert_eq!(cfg.nat, kith_nat::Features::sysadmin());
    }

    #[test]
    fn tor_only_refuses_every_leak_naming_the_field() {
        let refused = |edit: &dyn Fn(&mut RawConfig)| {
            let mut raw = tor_only();
            edit(&mut raw);
            let err = Config::try_from(raw).unwrap_err();
            assert!(err.to_string().contains("tor.mode"), "{err}");
            err.field
        };
        for listen in [
            "/ip4/0.0.0.0/tcp/41000",
            "/ip4/127.0.0.1/udp/41000/quic-v1",
            "/ip6/::/tcp/0",
        ] {
            assert_eq!(
                refused(&|r| r.network.listen = vec![listen.into()]),
                "network.listen",
                "{listen}"
            );
        }
        for announce in ["/ip4/192.0.2.1/tcp/41000", "/dns4/example.org/tcp/41000"] {
            assert_eq!(
                refused(&|r| r.network.announce = vec![ONION.into(), announce.into()]),
                "network.announce",
                "{announce}"
            );
        }
        let peer = PeerId::random();
        for addr in ["/ip4/192.0.2.7/tcp/41000", "/ip6/2001:db8::1/udp/1/quic-v1"] {
            assert_eq!(
                refused(&|r| r.network.peers = vec![format!("{addr}/p2p/{peer}")]),
                "network.peers",
                "{addr}"
            );
        }
        type Edit = fn(&mut RawNat);
        let nat: [(&str, Edit); 5] = [
            ("nat.detect_addresses", |n| n.detect_addresses = true),
            ("nat.upnp", |n| n.upnp = true),
            ("nat.relay_client", |n| n.relay_client = true),
            ("nat.relay_server", |n| n.relay_server = true),
            ("nat.hole_punching", |n| {
                n.relay_client = false;
                n.hole_punching = true;
            }),
        ];
        for (field, on) in nat {
            let got = refused(&|r| {
                r.nat = RawNat {
                    sysadmin: false,
                    detect_addresses: false,
                    upnp: false,
                    relay_client: false,
                    relay_server: false,
                    hole_punching: false,
                    ..RawNat::default()
                };
                on(&mut r.nat);
            });
            assert_eq!(got, field);
        }
        // the NAT defaults (everything on) are refused too
        assert_eq!(
            refused(&|r| r.nat = RawNat::default()),
            "nat.detect_addresses"
        );
    }
}
