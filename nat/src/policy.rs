//! The reachability policy: a sans-IO state machine that decides what the node tries next to
//! become reachable (map a port on the router, reserve relay slots, let go of them) from what
//! it has learned so far, and explains where it stands.
//!
//! Inputs are [`Event`]s stamped with `now` (milliseconds on any monotonic clock); outputs are
//! [`Action`]s from [`Policy::poll`]. Nothing here touches a socket, a clock or a random
//! number generator, so the policy can be driven by a simulator or a property test.
//!
//! The rules, in order:
//! 1. A confirmed external address (configured, confirmed by AutoNAT, or a UPnP mapping that
//!    AutoNAT confirmed) makes the node *public*. A public node needs no relay slots; it keeps
//!    them for [`RELEASE_AFTER_PUBLIC_MS`] (so a flapping confirmation does not churn its record)
//!    and then releases them.
//! 2. With UPnP on, the router is asked for a mapping at start, renewed at half its lease and
//!    asked again with capped exponential backoff after a failure.
//! 3. With the relay client on, a node that is not public keeps reservations on
//!    [`WANTED_RELAYS`] relays (members that offer the relay protocol), picked in a stable
//!    order, skipping relays that refused recently (backoff). It reserves at once rather than
//!    waiting for AutoNAT to say "private": the first byte between two homes should not wait
//!    for a probe.
//! 4. Hole punching runs by itself on relayed connections (DCUtR); the policy only counts the
//!    outcomes for the explanation.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::{Multiaddr, PeerId};

/// Relay reservations an unreachable node keeps.
pub const WANTED_RELAYS: usize = 2;
/// How long a node stays public before it lets its relay reservations go.
pub const RELEASE_AFTER_PUBLIC_MS: u64 = 30_000;
/// First retry delay after a failed UPnP attempt.
pub const FIRST_BACKOFF_MS: u64 = 30_000;
/// First retry delay after a refused reservation (short: a relay refuses a node that is
/// still joining the grid, and accepts it a moment later).
pub const FIRST_RESERVE_BACKOFF_MS: u64 = 1_000;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: u64 = 30 * 60_000;
/// Shortest time between the start of one UPnP attempt and one that a gateway's announcement
/// brings forward (anyone on the LAN can send announcements).
pub const MIN_ANNOUNCED_GAP_MS: u64 = 5_000;
/// Most gateways remembered (with their boot ids) from announcements.
pub const MAX_GATEWAYS: usize = 16;

/// Which automatic behaviours are on. `Features::default()` is the home-user setting (all on);
/// [`Features::sysadmin`] switches every one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Features {
    /// Learn observed addresses (identify) and confirm them (AutoNAT v2).
    pub detect_addresses: bool,
    /// Map ports on the router with UPnP IGD.
    pub upnp: bool,
    /// Reserve relay slots on members when not publicly reachable.
    pub relay_client: bool,
    /// Relay for members when publicly reachable.
    pub relay_server: bool,
    /// Upgrade relayed connections to direct ones (DCUtR).
    pub hole_punching: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            detect_addresses: true,
            upnp: true,
            relay_client: true,
            relay_server: true,
            hole_punching: true,
        }
    }
}

impl Features {
    /// Sysadmin mode: only configured addresses, nothing automatic.
    pub fn sysadmin() -> Self {
        Self {
            detect_addresses: false,
            upnp: false,
            relay_client: false,
            relay_server: false,
            hole_punching: false,
        }
    }
}

/// Where a confirmed external address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Written in the configuration (`network.announce`).
    Configured,
    /// Confirmed by another member's AutoNAT dial-back.
    Autonat,
    /// A UPnP mapping on the router, confirmed by AutoNAT.
    Upnp,
}

/// What the policy learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An external address was confirmed.
    Confirmed(Multiaddr),
    /// A confirmed external address expired (AutoNAT no longer reaches it, mapping gone).
    Expired(Multiaddr),
    /// The router mapped ports; `external` are the mapped addresses (not yet confirmed).
    UpnpMapped {
        /// The external addresses of the mappings.
        external: Vec<Multiaddr>,
        /// Lease in milliseconds (0 = permanent).
        lease_ms: u64,
    },
    /// The UPnP attempt failed (no gateway, refused, ...).
    UpnpFailed(String),
    /// A gateway announced itself on the LAN (SSDP `ssdp:alive`). One not heard before, or
    /// with a new boot id (it restarted and lost its mappings), brings the next UPnP attempt
    /// forward to now (or [`MIN_ANNOUNCED_GAP_MS`] after the last one).
    GatewayAnnounced {
        /// The device's `uuid:` id.
        id: String,
        /// Its `BOOTID.UPNP.ORG`, if it sends one.
        boot_id: Option<u32>,
    },
    /// A gateway said it is leaving (`ssdp:byebye`): its next `alive` counts as a restart.
    GatewayLeft(String),
    /// The default gateway said its mappings may be lost (a NAT-PMP or PCP announcement,
    /// sent when it starts or its external address changes): the next attempt comes now (or
    /// [`MIN_ANNOUNCED_GAP_MS`] after the last one), mapped or not.
    GatewayRestarted,
    /// The node's own addresses changed after the first UPnP attempt (an interface came or
    /// went, DHCP gave another address, a laptop joined another network): the next attempt
    /// comes now (or [`MIN_ANNOUNCED_GAP_MS`] after the last one), mapped or not.
    NetworkChanged,
    /// A connected member offers the relay protocol.
    RelayAvailable(PeerId),
    /// A relay is no longer connected or no longer offers relaying.
    RelayGone(PeerId),
    /// A reservation was accepted.
    ReservationAccepted(PeerId),
    /// A reservation was refused or failed.
    ReservationFailed(PeerId, String),
    /// A reservation ended (connection closed, relay went away).
    ReservationClosed(PeerId),
    /// A hole punch to a peer finished.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// Whether a direct connection came out of it.
        ok: bool,
    },
}

/// What the policy wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the router for (or renew) port mappings.
    MapPorts,
    /// Reserve a relay slot on this member.
    Reserve(PeerId),
    /// Let this reservation go.
    Release(PeerId),
}

/// The state of the UPnP attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upnp {
    /// Switched off.
    Off,
    /// Not tried yet.
    Idle,
    /// A request is in flight.
    Trying,
    /// Mapped.
    Mapped {
        /// External addresses of the mappings.
        external: Vec<Multiaddr>,
        /// When to renew (ms).
        renew_at: u64,
    },
    /// The last attempt failed.
    Failed {
        /// Why.
        reason: String,
        /// When to try again (ms).
        retry_at: u64,
    },
}

/// What started a UPnP attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The node started.
    Start,
    /// The backoff after a failure ran out.
    Retry,
    /// Half the lease went by.
    Renewal,
    /// A gateway announced itself (new, or restarted).
    Announced,
    /// The node's addresses changed.
    NetworkChanged,
}

/// How a gateway was last heard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    boot_id: Option<u32>,
    /// It said goodbye.
    left: bool,
}

/// One relay reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Requested, waiting for the answer.
    Requesting,
    /// Accepted: the node is reachable through this relay.
    Accepted,
}

/// The node's reachability, as shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Reachable directly at `addrs`.
    Public {
        /// Confirmed external addresses and where each came from.
        addrs: Vec<(Multiaddr, Source)>,
    },
    /// Not reachable directly; reachable through these relays (maybe none yet).
    Private {
        /// Relays holding an accepted reservation.
        relays: Vec<PeerId>,
    },
    /// Nothing learned yet (no address detection, no configured address).
    Unknown,
}

/// The policy state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    features: Features,
    confirmed: BTreeMap<Multiaddr, Source>,
    configured: BTreeSet<Multiaddr>,
    public_since: Option<u64>,
    upnp: Upnp,
    upnp_backoff: u64,
    /// When the last UPnP attempt started and why.
    upnp_last: Option<(u64, Trigger)>,
    /// Why the next attempt was brought forward, if it was.
    upnp_early: Option<Trigger>,
    /// Something that undoes a mapping (a network change, a router that lost its table) came
    /// since the last attempt started: an attempt under way may map what no longer holds, so
    /// once it succeeds another comes (gap-limited).
    upnp_redo: bool,
    /// Gateways heard announcing themselves.
    gateways: BTreeMap<String, Seen>,
    relays: BTreeSet<PeerId>,
    reservations: BTreeMap<PeerId, Reservation>,
    refused: BTreeMap<PeerId, (u64, u64)>,
    punched: BTreeMap<PeerId, bool>,
}

impl Policy {
    /// A policy with these features; `configured` are announce addresses the owner typed in
    /// (taken as confirmed).
    pub fn new(features: Features, configured: &[Multiaddr], now: u64) -> Self {
        let confirmed: BTreeMap<_, _> = configured
            .iter()
            .map(|a| (a.clone(), Source::Configured))
            .collect();
        let mut p = Self {
            features,
            public_since: None,
            confirmed,
            configured: configured.iter().cloned().collect(),
            upnp: if features.upnp { Upnp::Idle } else { Upnp::Off },
            upnp_backoff: FIRST_BACKOFF_MS,
            upnp_last: None,
            upnp_early: None,
            upnp_redo: false,
            gateways: BTreeMap::new(),
            relays: BTreeSet::new(),
            reservations: BTreeMap::new(),
            refused: BTreeMap::new(),
            punched: BTreeMap::new(),
        };
        p.public_since = p.needs_no_relay().then_some(now);
        p
    }

    /// The features in force.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Takes one thing learned.
    pub fn on(&mut self, event: Event, now: u64) {
        let event = match event {
            Event::Confirmed(a) => Event::Confirmed(without_peer(a)),
            Event::Expired(a) => Event::Expired(without_peer(a)),
            e => e,
        };
        match event {
            Event::Confirmed(addr) => {
                let source = if self.configured.contains(&addr) {
                    Source::Configured
                } else if self.upnp_external().any(|a| a == &addr) {
                    Source::Upnp
                } else {
                    Source::Autonat
                };
                if is_relayed(&addr) {
                    return;
                }
                self.confirmed.insert(addr, source);
                if self.needs_no_relay() {
                    self.public_since.get_or_insert(now);
                }
            }
            Event::Expired(addr) => {
                if self.configured.contains(&addr) {
                    return;
                }
                self.confirmed.remove(&addr);
                if !self.needs_no_relay() {
                    self.public_since = None;
                }
            }
            Event::UpnpMapped { external, lease_ms } => {
                if self.features.upnp {
                    self.upnp_backoff = FIRST_BACKOFF_MS;
                    let mut renew_at = if lease_ms == 0 {
                        u64::MAX
                    } else {
                        now + lease_ms / 2
                    };
                    // The network changed (or the router lost its table) while this attempt
                    // was under way: it may have mapped the old address.
                    if self.upnp_redo {
                        renew_at = renew_at.min(self.early_at(now));
                    } else {
                        self.upnp_early = None;
                    }
                    for a in &external {
                        if let Some(s) = self.confirmed.get_mut(a) {
                            *s = Source::Upnp;
                        }
                    }
                    self.upnp = Upnp::Mapped { external, renew_at };
                }
            }
            Event::UpnpFailed(reason) => {
                if self.features.upnp {
                    let mut retry_at = now + self.upnp_backoff;
                    if self.upnp_early.is_some() {
                        retry_at = retry_at.min(self.early_at(now));
                    }
                    self.upnp = Upnp::Failed { reason, retry_at };
                    self.upnp_backoff = (self.upnp_backoff * 2).min(MAX_BACKOFF_MS);
                }
            }
            Event::GatewayAnnounced { id, boot_id } => {
                let seen = Seen {
                    boot_id,
                    left: false,
                };
                let before = self.remember_gateway(id, seen);
                let restarted = before.is_some_and(|b| b != seen);
                let new = before.is_none();
                // A gateway merely heard for the first time while mapped is most likely the
                // one that mapped, announcing itself as it does every few minutes.
                self.bring_upnp_forward(now, Trigger::Announced, new || restarted, restarted);
            }
            Event::NetworkChanged => {
                self.bring_upnp_forward(now, Trigger::NetworkChanged, true, true);
            }
            Event::GatewayRestarted => {
                self.bring_upnp_forward(now, Trigger::Announced, true, true);
            }
            Event::GatewayLeft(id) => {
                self.remember_gateway(
                    id,
                    Seen {
                        boot_id: None,
                        left: true,
                    },
                );
            }
            Event::RelayAvailable(peer) => {
                self.relays.insert(peer);
            }
            Event::RelayGone(peer) => {
                self.relays.remove(&peer);
                self.reservations.remove(&peer);
            }
            Event::ReservationAccepted(peer) => {
                // Only answers to our own requests count (a late renewal of a released
                // reservation does not bring it back).
                if let Some(r) = self.reservations.get_mut(&peer) {
                    self.refused.remove(&peer);
                    *r = Reservation::Accepted;
                }
            }
            Event::ReservationFailed(peer, _) => {
                self.reservations.remove(&peer);
                let backoff = self
                    .refused
                    .get(&peer)
                    .map_or(FIRST_RESERVE_BACKOFF_MS, |(_, b)| {
                        (b * 2).min(MAX_BACKOFF_MS)
                    });
                self.refused.insert(peer, (now + backoff, backoff));
            }
            Event::ReservationClosed(peer) => {
                self.reservations.remove(&peer);
            }
            Event::HolePunch { peer, ok } => {
                self.punched.insert(peer, ok);
            }
        }
    }

    /// The earliest moment for an attempt brought forward: now, but no sooner than
    /// [`MIN_ANNOUNCED_GAP_MS`] after the last one started.
    fn early_at(&self, now: u64) -> u64 {
        self.upnp_last
            .map_or(now, |(t, _)| now.max(t + MIN_ANNOUNCED_GAP_MS))
    }

    /// Brings the next UPnP attempt forward for `why`: a failed or running attempt's retry
    /// when `unmapped`, a mapping's renewal when `mapped` (the event undoes mappings: a
    /// running attempt's success is then followed by another).
    fn bring_upnp_forward(&mut self, now: u64, why: Trigger, unmapped: bool, mapped: bool) {
        let at = self.early_at(now);
        match &mut self.upnp {
            Upnp::Failed { retry_at, .. } if unmapped => {
                *retry_at = (*retry_at).min(at);
                self.upnp_backoff = FIRST_BACKOFF_MS;
            }
            Upnp::Mapped { renew_at, .. } if mapped => *renew_at = (*renew_at).min(at),
            // The attempt under way may fail for coming too early: its failure then retries at
            // `at` instead of after the backoff.
            Upnp::Trying if unmapped => {}
            _ => return,
        }
        // The reason given for the next attempt is what forces it, if anything does.
        if mapped || !self.upnp_redo {
            self.upnp_early = Some(why);
        }
        self.upnp_redo |= mapped;
    }

    /// Records how a gateway was last heard of; returns how it was heard of before. A
    /// goodbye keeps the boot id it had (an `alive` after it counts as a restart).
    fn remember_gateway(&mut self, id: String, mut seen: Seen) -> Option<Seen> {
        if !self.gateways.contains_key(&id) && self.gateways.len() >= MAX_GATEWAYS {
            self.gateways.pop_first();
        }
        let before = self.gateways.get(&id).copied();
        if seen.left {
            seen.boot_id = before.and_then(|b| b.boot_id);
        }
        self.gateways.insert(id, seen);
        before
    }

    fn upnp_external(&self) -> impl Iterator<Item = &Multiaddr> {
        match &self.upnp {
            Upnp::Mapped { external, .. } => external.as_slice(),
            _ => &[],
        }
        .iter()
    }

    /// Whether a confirmed external address exists.
    pub fn is_public(&self) -> bool {
        !self.confirmed.is_empty()
    }

    /// Whether every member can reach this node without a relay: a confirmed IPv4 address (or
    /// one the owner configured). A node reachable only at an IPv6 address keeps its relays
    /// for members that have no IPv6.
    pub fn needs_no_relay(&self) -> bool {
        self.confirmed.iter().any(|(a, s)| reaches_everyone(a, *s))
    }

    /// What to do now. Call after every event and on a timer.
    pub fn poll(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let upnp_due = match &self.upnp {
            Upnp::Idle => true,
            Upnp::Mapped { renew_at, .. } => now >= *renew_at,
            Upnp::Failed { retry_at, .. } => now >= *retry_at,
            Upnp::Off | Upnp::Trying => false,
        };
        if upnp_due {
            let trigger = match (self.upnp_early.take(), &self.upnp) {
                (Some(why), _) => why,
                (None, Upnp::Mapped { .. }) => Trigger::Renewal,
                (None, Upnp::Failed { .. }) => Trigger::Retry,
                (None, _) => Trigger::Start,
            };
            self.upnp_last = Some((now, trigger));
            self.upnp_redo = false;
            if let Upnp::Mapped { renew_at, .. } = &mut self.upnp {
                // Stay "mapped" while renewing; a failed renewal reports UpnpFailed.
                *renew_at = u64::MAX;
            } else {
                self.upnp = Upnp::Trying;
            }
            out.push(Action::MapPorts);
        }
        let public_long_enough = self
            .public_since
            .is_some_and(|t| now.saturating_sub(t) >= RELEASE_AFTER_PUBLIC_MS);
        if public_long_enough || !self.features.relay_client {
            for peer in std::mem::take(&mut self.reservations).into_keys() {
                out.push(Action::Release(peer));
            }
            return out;
        }
        if self.needs_no_relay() {
            return out;
        }
        let wanted = WANTED_RELAYS.saturating_sub(self.reservations.len());
        let picks: Vec<PeerId> = self
            .relays
            .iter()
            .filter(|p| {
                !self.reservations.contains_key(p)
                    && self.refused.get(p).is_none_or(|(until, _)| *until <= now)
            })
            .take(wanted)
            .copied()
            .collect();
        for peer in picks {
            self.reservations.insert(peer, Reservation::Requesting);
            out.push(Action::Reserve(peer));
        }
        out
    }

    /// The reachability as it stands.
    pub fn reachability(&self) -> Reachability {
        if self.is_public() {
            return Reachability::Public {
                addrs: self
                    .confirmed
                    .iter()
                    .map(|(a, s)| (a.clone(), *s))
                    .collect(),
            };
        }
        if !self.features.detect_addresses && !self.features.relay_client {
            return Reachability::Unknown;
        }
        Reachability::Private {
            relays: self.accepted_relays(),
        }
    }

    /// Relays holding an accepted reservation.
    pub fn accepted_relays(&self) -> Vec<PeerId> {
        self.reservations
            .iter()
            .filter(|(_, r)| **r == Reservation::Accepted)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The reservations (requested and accepted).
    pub fn reservations(&self) -> &BTreeMap<PeerId, Reservation> {
        &self.reservations
    }

    /// The UPnP state.
    pub fn upnp(&self) -> &Upnp {
        &self.upnp
    }

    /// What started the last UPnP attempt, if one was made.
    pub fn upnp_trigger(&self) -> Option<Trigger> {
        self.upnp_last.map(|(_, t)| t)
    }

    /// Hole punches that ended in a direct connection, and all that finished.
    pub fn hole_punches(&self) -> (usize, usize) {
        (
            self.punched.values().filter(|ok| **ok).count(),
            self.punched.len(),
        )
    }

    /// One line for `kith status`: how the node is reachable and how it got there. `name`
    /// turns a peer id into what the user calls it.
    pub fn explain(&self, name: &dyn Fn(&PeerId) -> String) -> String {
        let mut text = match self.reachability() {
            Reachability::Public { addrs } => {
                let upnp = addrs.iter().find(|(_, s)| *s == Source::Upnp);
                let public = match upnp {
                    Some((a, _)) => {
                        // IPv6 is not translated: what the router made is a firewall pinhole.
                        let what = match a.iter().next() {
                            Some(libp2p::multiaddr::Protocol::Ip6(_)) => "pinhole",
                            _ => "mapping",
                        };
                        format!("public (UPnP {what} {} on the router)", host_port(a))
                    }
                    None => {
                        let mut list: Vec<String> =
                            addrs.iter().map(|(a, _)| host_port(a)).collect();
                        list.dedup();
                        let how = if addrs.iter().all(|(_, s)| *s == Source::Configured) {
                            "configured"
                        } else {
                            "confirmed by AutoNAT"
                        };
                        format!("public at {} ({how})", list.join(", "))
                    }
                };
                let relays = self.accepted_relays();
                if relays.is_empty() || self.needs_no_relay() {
                    public
                } else {
                    let names: Vec<String> = relays.iter().map(name).collect();
                    format!("{public}, relayed via {} for IPv4", names.join(" and "))
                }
            }
            Reachability::Private { relays } if relays.is_empty() => {
                let waiting = if self.reservations.is_empty() {
                    if self.features.relay_client {
                        "no relay available yet"
                    } else {
                        "relays switched off"
                    }
                } else {
                    "reserving a relay"
                };
                format!("behind NAT, {waiting}")
            }
            Reachability::Private { relays } => {
                let names: Vec<String> = relays.iter().map(name).collect();
                format!("behind NAT, relayed via {}", names.join(" and "))
            }
            Reachability::Unknown => "configured addresses only (sysadmin mode)".to_owned(),
        };
        let (ok, all) = self.hole_punches();
        if all > 0 {
            text.push_str(&format!(", direct to {ok} of {all} peers by hole punching"));
        }
        if let Upnp::Failed { reason, .. } = &self.upnp
            && !self.is_public()
        {
            text.push_str(&format!("; UPnP: {reason}"));
        }
        text
    }
}

/// Whether a confirmed address serves every member: IPv4 (every member has it), or written
/// in the configuration (the owner's call).
fn reaches_everyone(addr: &Multiaddr, source: Source) -> bool {
    source == Source::Configured
        || matches!(
            addr.iter().next(),
            Some(libp2p::multiaddr::Protocol::Ip4(_))
        )
}

/// `addr` without a trailing `/p2p/<peer>`.
pub fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

/// Whether an address goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

/// `203.0.113.7:41000` (or `[::1]:41000`) for an IP + TCP/UDP multiaddr; the multiaddr otherwise.
pub fn host_port(addr: &Multiaddr) -> String {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a.to_string()),
            Protocol::Ip6(a) => ip = Some(format!("[{a}]")),
            Protocol::Tcp(p) | Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// A home-user policy with UPnP off (no MapPorts in the way).
    fn without_upnp() -> Policy {
        Policy::new(
            Features {
                upnp: false,
                ..Features::default()
            },
            &[],
            0,
        )
    }

    fn peers(n: u8) -> Vec<PeerId> {
        (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[0] = i;
                libp2p::identity::Keypair::ed25519_from_bytes(seed)
                    .unwrap()
                    .public()
                    .to_peer_id()
            })
            .collect()
    }

    #[test]
    fn unreachable_node_reserves_two_relays_and_explains_it() {
        let mut p = Policy::new(Features::default(), &[], 0);
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        let r = peers(3);
        for x in &r {
            p.on(Event::RelayAvailable(*x), 10);
        }
        let acts = p.poll(10);
        assert_eq!(acts.len(), WANTED_RELAYS);
        assert!(acts.iter().all(|a| matches!(a, Action::Reserve(_))));
        assert!(p.poll(11).is_empty(), "no second request while waiting");
        p.on(Event::UpnpFailed("no gateway found".into()), 12);
        for a in acts {
            if let Action::Reserve(x) = a {
                p.on(Event::ReservationAccepted(x), 20);
            }
        }
        let text = p.explain(&|x| format!("n{}", r.iter().position(|y| y == x).unwrap()));
        assert!(text.starts_with("behind NAT, relayed via n"), "{text}");
        assert!(text.contains("UPnP: no gateway found"), "{text}");
    }

    #[test]
    fn a_natpmp_gateway_restarting_brings_the_renewal_forward() {
        let mut p = Policy::new(Features::default(), &[], 0);
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        let ext = vec![addr("/ip4/11.0.0.11/tcp/4002")];
        p.on(
            Event::UpnpMapped {
                external: ext,
                lease_ms: 3_600_000,
            },
            3_100,
        );
        assert!(p.poll(4_000).is_empty());
        // Mapped a moment ago, but the router lost its table: at once, not in 30 minutes...
        p.on(Event::GatewayRestarted, 4_000);
        assert!(
            p.poll(4_000).is_empty(),
            "no sooner than the gap after the last"
        );
        assert_eq!(p.poll(MIN_ANNOUNCED_GAP_MS), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Announced));
        // ... and while failing, the retry comes now instead of after the backoff.
        p.on(Event::UpnpFailed("no gateway found".into()), 6_000);
        assert!(p.poll(20_000).is_empty());
        p.on(Event::GatewayRestarted, 20_000);
        assert_eq!(p.poll(20_000), vec![Action::MapPorts]);
        // With UPnP off it changes nothing.
        let mut off = without_upnp();
        off.on(Event::GatewayRestarted, 0);
        assert!(!off.poll(0).contains(&Action::MapPorts));
    }

    #[test]
    fn a_gateway_announcing_itself_brings_the_next_upnp_attempt_forward_once() {
        let mut p = Policy::new(Features::default(), &[], 0);
        let gw = |id: &str, boot_id| Event::GatewayAnnounced {
            id: id.into(),
            boot_id,
        };
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Start));
        p.on(Event::UpnpFailed("no gateway found".into()), 3_000);
        assert!(p.poll(10_000).is_empty(), "backoff: 30 s");
        // The router's owner turns UPnP on: its first announcement means "now".
        p.on(gw("uuid:r", Some(1)), 10_000);
        assert_eq!(p.poll(10_000), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Announced));
        let ext = vec![addr("/ip4/11.0.0.11/tcp/4002")];
        p.on(
            Event::UpnpMapped {
                external: ext.clone(),
                lease_ms: 3_600_000,
            },
            10_100,
        );
        // Its periodic announcements change nothing, nor does another device heard while
        // mapped.
        p.on(gw("uuid:r", Some(1)), 40_000);
        p.on(gw("uuid:other", Some(1)), 40_000);
        assert!(p.poll(40_000).is_empty());
        // It restarts (new boot id, mappings gone): renew now, not at half the lease.
        p.on(gw("uuid:r", Some(2)), 50_000);
        assert_eq!(p.poll(50_000), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Announced));
        p.on(
            Event::UpnpMapped {
                external: ext,
                lease_ms: 3_600_000,
            },
            50_100,
        );
        // Leaves and comes back (a 1.0 device without boot ids): counts as new again, but
        // no sooner than MIN_ANNOUNCED_GAP_MS after the last attempt.
        p.on(Event::GatewayLeft("uuid:r".into()), 51_000);
        p.on(gw("uuid:r", None), 52_000);
        assert!(p.poll(52_000).is_empty());
        assert_eq!(
            p.poll(50_000 + MIN_ANNOUNCED_GAP_MS),
            vec![Action::MapPorts]
        );
        // A renewal at half the lease is a renewal.
        p.on(
            Event::UpnpMapped {
                external: vec![],
                lease_ms: 1_000,
            },
            60_000,
        );
        assert_eq!(p.poll(60_500), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Renewal));
    }

    #[test]
    fn an_announcement_during_an_attempt_retries_its_failure_early() {
        let mut p = Policy::new(Features::default(), &[], 0);
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        // The router comes up while the search is under way and the search misses it.
        p.on(
            Event::GatewayAnnounced {
                id: "uuid:r".into(),
                boot_id: Some(1),
            },
            1_000,
        );
        p.on(Event::UpnpFailed("no gateway found".into()), 3_000);
        assert!(p.poll(4_000).is_empty());
        assert_eq!(p.poll(MIN_ANNOUNCED_GAP_MS), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Announced));
        // Without an announcement the backoff holds (doubled by the first failure).
        p.on(Event::UpnpFailed("no gateway found".into()), 8_000);
        assert!(p.poll(8_000 + 2 * FIRST_BACKOFF_MS - 1).is_empty());
        assert_eq!(p.poll(8_000 + 2 * FIRST_BACKOFF_MS), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::Retry));
    }

    #[test]
    fn a_network_change_remaps_at_once_mapped_or_not_and_again_if_it_came_mid_attempt() {
        let mut p = Policy::new(Features::default(), &[], 0);
        let mapped = |p: &mut Policy, now| {
            p.on(
                Event::UpnpMapped {
                    external: vec![addr("/ip4/11.0.0.11/tcp/4002")],
                    lease_ms: 3_600_000,
                },
                now,
            )
        };
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        mapped(&mut p, 100);
        p.on(Event::NetworkChanged, 60_000);
        assert_eq!(p.poll(60_000), vec![Action::MapPorts]);
        assert_eq!(p.upnp_trigger(), Some(Trigger::NetworkChanged));
        // Another change while that attempt runs: once it is done, again (gap-limited).
        p.on(Event::NetworkChanged, 60_200);
        mapped(&mut p, 60_300);
        assert!(p.poll(60_300).is_empty());
        assert_eq!(
            p.poll(60_000 + MIN_ANNOUNCED_GAP_MS),
            vec![Action::MapPorts]
        );
        assert_eq!(p.upnp_trigger(), Some(Trigger::NetworkChanged));
        mapped(&mut p, 65_100);
        assert!(
            p.poll(70_000).is_empty(),
            "nothing more until half the lease"
        );
        // A change during the very first attempt (an address that came a moment after it
        // started): once it is done, again.
        // A router announcing itself meanwhile (as one that just started does) changes
        // nothing about that.
        let mut first = Policy::new(Features::default(), &[], 0);
        assert_eq!(first.poll(0), vec![Action::MapPorts]);
        first.on(Event::NetworkChanged, 1);
        first.on(
            Event::GatewayAnnounced {
                id: "uuid:r".into(),
                boot_id: Some(1),
            },
            2,
        );
        mapped(&mut first, 300);
        assert_eq!(first.poll(MIN_ANNOUNCED_GAP_MS), vec![Action::MapPorts]);
        assert_eq!(first.upnp_trigger(), Some(Trigger::NetworkChanged));
        // So does a router that announces it lost its table while an attempt runs; one
        // merely heard for the first time does not.
        mapped(&mut first, 5_100);
        assert!(first.poll(6_000).is_empty());
        let mut again = Policy::new(Features::default(), &[], 0);
        assert_eq!(again.poll(0), vec![Action::MapPorts]);
        again.on(Event::GatewayRestarted, 1);
        mapped(&mut again, 300);
        assert_eq!(again.poll(MIN_ANNOUNCED_GAP_MS), vec![Action::MapPorts]);
        let mut heard = Policy::new(Features::default(), &[], 0);
        assert_eq!(heard.poll(0), vec![Action::MapPorts]);
        heard.on(
            Event::GatewayAnnounced {
                id: "uuid:r".into(),
                boot_id: Some(1),
            },
            1,
        );
        mapped(&mut heard, 300);
        assert!(heard.poll(MIN_ANNOUNCED_GAP_MS).is_empty());
        // Failed, then the laptop joins a network with a router: now, not after the backoff.
        p.on(Event::UpnpFailed("no gateway found".into()), 80_000);
        p.on(Event::NetworkChanged, 90_000);
        assert_eq!(p.poll(90_000), vec![Action::MapPorts]);
    }

    #[test]
    fn announcements_do_nothing_with_upnp_off_and_stay_bounded() {
        let mut off = Policy::new(Features::sysadmin(), &[], 0);
        let mut on = Policy::new(Features::default(), &[], 0);
        on.poll(0);
        on.on(Event::UpnpFailed("no gateway found".into()), 1);
        for i in 0..100u32 {
            let e = Event::GatewayAnnounced {
                id: format!("uuid:{i}"),
                boot_id: Some(i),
            };
            off.on(e.clone(), 10_000 + u64::from(i));
            on.on(e, 10_000 + u64::from(i));
        }
        assert!(off.poll(20_000).is_empty());
        assert_eq!(*off.upnp(), Upnp::Off);
        assert!(on.gateways.len() <= MAX_GATEWAYS);
        // A flood of "new" gateways: one attempt, not one per announcement.
        assert_eq!(on.poll(20_000), vec![Action::MapPorts]);
        assert!(on.poll(20_001).is_empty());
    }

    #[test]
    fn refused_relay_is_skipped_then_retried_after_backoff() {
        let mut p = without_upnp();
        let r = peers(1);
        p.on(Event::RelayAvailable(r[0]), 0);
        assert_eq!(p.poll(0), vec![Action::Reserve(r[0])]);
        p.on(Event::ReservationFailed(r[0], "denied".into()), 5);
        assert!(p.poll(6).is_empty());
        assert_eq!(
            p.poll(5 + FIRST_RESERVE_BACKOFF_MS),
            vec![Action::Reserve(r[0])]
        );
        // A second refusal waits twice as long.
        let t = 5 + FIRST_RESERVE_BACKOFF_MS;
        p.on(Event::ReservationFailed(r[0], "denied".into()), t);
        assert!(p.poll(t + FIRST_RESERVE_BACKOFF_MS).is_empty());
        assert_eq!(
            p.poll(t + 2 * FIRST_RESERVE_BACKOFF_MS),
            vec![Action::Reserve(r[0])]
        );
    }

    #[test]
    fn an_ipv6_pinhole_confirmed_counts_as_upnp() {
        let mut p = Policy::new(Features::default(), &[], 0);
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        let pinhole = addr("/ip6/2a0f:1::10/tcp/4002");
        p.on(
            Event::UpnpMapped {
                external: vec![pinhole.clone()],
                lease_ms: 3_600_000,
            },
            100,
        );
        assert!(!p.is_public(), "a pinhole alone is not reachability");
        p.on(Event::Confirmed(pinhole), 200);
        assert_eq!(
            p.explain(&|x| x.to_string()),
            "public (UPnP pinhole [2a0f:1::10]:4002 on the router)"
        );
    }

    #[test]
    fn upnp_mapping_counts_only_once_confirmed_and_is_renewed() {
        let mut p = Policy::new(Features::default(), &[], 0);
        assert_eq!(p.poll(0), vec![Action::MapPorts]);
        let ext = addr("/ip4/11.0.0.11/tcp/4002");
        p.on(
            Event::UpnpMapped {
                external: vec![ext.clone()],
                lease_ms: 3_600_000,
            },
            100,
        );
        assert!(!p.is_public(), "a mapping alone is not reachability");
        p.on(Event::Confirmed(ext.clone()), 200);
        assert!(p.is_public());
        assert_eq!(
            p.explain(&|x| x.to_string()),
            "public (UPnP mapping 11.0.0.11:4002 on the router)"
        );
        assert!(p.poll(1_000).is_empty());
        assert_eq!(p.poll(100 + 1_800_000), vec![Action::MapPorts]);
        assert!(matches!(p.upnp(), Upnp::Mapped { .. }));
    }

    #[test]
    fn public_node_releases_reservations_after_a_while() {
        let mut p = without_upnp();
        let r = peers(2);
        p.on(Event::RelayAvailable(r[0]), 0);
        assert_eq!(p.poll(0), vec![Action::Reserve(r[0])]);
        p.on(Event::ReservationAccepted(r[0]), 1);
        p.on(Event::Confirmed(addr("/ip4/198.51.100.1/tcp/1")), 1000);
        assert!(p.poll(1001).is_empty());
        assert_eq!(
            p.poll(1000 + RELEASE_AFTER_PUBLIC_MS),
            vec![Action::Release(r[0])]
        );
        assert!(p.reservations().is_empty());
    }

    #[test]
    fn a_node_public_only_over_ipv6_keeps_its_relays_for_ipv4_members() {
        let mut p = without_upnp();
        let r = peers(2);
        for x in &r {
            p.on(Event::RelayAvailable(*x), 0);
        }
        assert_eq!(p.poll(0).len(), WANTED_RELAYS);
        p.on(Event::ReservationAccepted(r[0]), 1);
        p.on(Event::ReservationFailed(r[1], "busy".into()), 1);
        // AutoNAT confirms the IPv6 address (no NAT, an open firewall); IPv4 is behind NAT.
        p.on(Event::Confirmed(addr("/ip6/2a0f:1::10/tcp/4002")), 1000);
        assert!(p.is_public() && !p.needs_no_relay());
        let later = 1000 + 10 * RELEASE_AFTER_PUBLIC_MS;
        // Relays are kept, and a refused one is asked again after its backoff.
        assert_eq!(p.poll(later), vec![Action::Reserve(r[1])]);
        assert_eq!(
            p.explain(&|x| format!("n{}", r.iter().position(|y| y == x).unwrap())),
            "public at [2a0f:1::10]:4002 (confirmed by AutoNAT), relayed via n0 for IPv4"
        );
        // An IPv4 address confirmed too: every member reaches it, the relays go.
        p.on(Event::Confirmed(addr("/ip4/198.51.100.1/tcp/4002")), later);
        assert!(p.needs_no_relay());
        assert!(p.poll(later + 1).is_empty());
        let released = p.poll(later + RELEASE_AFTER_PUBLIC_MS);
        assert_eq!(released.len(), 2, "{released:?}");
        assert!(released.iter().all(|a| matches!(a, Action::Release(_))));
        // The IPv4 address lapses: back to relays for IPv4.
        p.on(
            Event::Expired(addr("/ip4/198.51.100.1/tcp/4002")),
            later + 2 * RELEASE_AFTER_PUBLIC_MS,
        );
        assert_eq!(
            p.poll(later + 2 * RELEASE_AFTER_PUBLIC_MS).len(),
            WANTED_RELAYS
        );
    }

    #[test]
    fn sysadmin_mode_does_nothing_by_itself() {
        let cfg = addr("/ip4/198.51.100.7/tcp/41000");
        let mut p = Policy::new(Features::sysadmin(), std::slice::from_ref(&cfg), 0);
        for x in peers(3) {
            p.on(Event::RelayAvailable(x), 0);
        }
        assert!(p.poll(0).is_empty());
        assert!(p.poll(10 * MAX_BACKOFF_MS).is_empty());
        assert_eq!(
            p.explain(&|x| x.to_string()),
            "public at 198.51.100.7:41000 (configured)"
        );
        let mut q = Policy::new(Features::sysadmin(), &[], 0);
        assert_eq!(q.reachability(), Reachability::Unknown);
        assert!(q.poll(0).is_empty());
    }

    #[test]
    fn tcp_and_quic_on_one_port_are_one_address_and_peer_suffixes_are_ignored() {
        let me = peers(1)[0];
        let mut p = Policy::new(Features::default(), &[], 0);
        p.on(Event::Confirmed(addr("/ip4/11.0.0.1/tcp/4002")), 0);
        p.on(
            Event::Confirmed(addr(&format!("/ip4/11.0.0.1/udp/4002/quic-v1/p2p/{me}"))),
            0,
        );
        assert_eq!(
            p.explain(&|x| x.to_string()),
            "public at 11.0.0.1:4002 (confirmed by AutoNAT)"
        );
        p.on(
            Event::Expired(addr(&format!("/ip4/11.0.0.1/udp/4002/quic-v1/p2p/{me}"))),
            1,
        );
        p.on(Event::Expired(addr("/ip4/11.0.0.1/tcp/4002")), 1);
        assert!(!p.is_public());
    }

    #[test]
    fn relayed_addresses_never_make_a_node_public() {
        let mut p = Policy::new(Features::default(), &[], 0);
        let r = peers(1)[0];
        p.on(
            Event::Confirmed(addr(&format!("/ip4/11.0.0.1/tcp/4001/p2p/{r}/p2p-circuit"))),
            0,
        );
        assert!(!p.is_public());
    }

    fn event() -> impl Strategy<Value = Event> {
        let peer = (0u8..5).prop_map(|i| peers(5)[i as usize]);
        let a = (0u8..3).prop_map(|i| addr(&format!("/ip4/203.0.113.{i}/tcp/1")));
        prop_oneof![
            a.clone().prop_map(Event::Confirmed),
            a.clone().prop_map(Event::Expired),
            a.prop_map(|a| Event::UpnpMapped {
                external: vec![a],
                lease_ms: 60_000
            }),
            Just(Event::UpnpFailed("x".into())),
            peer.clone().prop_map(Event::RelayAvailable),
            peer.clone().prop_map(Event::RelayGone),
            peer.clone().prop_map(Event::ReservationAccepted),
            peer.clone()
                .prop_map(|p| Event::ReservationFailed(p, "no".into())),
            peer.clone().prop_map(Event::ReservationClosed),
            (peer, any::<bool>()).prop_map(|(peer, ok)| Event::HolePunch { peer, ok }),
        ]
    }

    proptest! {
        #[test]
        fn never_more_than_wanted_relays_and_never_an_unknown_one(
            events in proptest::collection::vec((event(), 0u64..100_000), 0..60),
            relay_client in any::<bool>(),
        ) {
            let features = Features { relay_client, ..Features::default() };
            let mut p = Policy::new(features, &[], 0);
            let mut now = 0;
            for (ev, dt) in events {
                now += dt;
                p.on(ev, now);
                for a in p.poll(now) {
                    if let Action::Reserve(x) = a {
                        prop_assert!(relay_client);
                        prop_assert!(p.relays.contains(&x));
                        prop_assert!(!p.is_public());
                    }
                }
                prop_assert!(p.reservations().len() <= WANTED_RELAYS);
                let _ = p.explain(&|x| x.to_string());
            }
        }
    }
}
