//! kith-nat: how a home node becomes reachable, and why it is (or is not).
//!
//! - [`policy`]: the sans-IO core. It takes what the node learned (confirmed addresses from
//!   AutoNAT v2, UPnP results, relays offered by members, reservation and hole-punch outcomes)
//!   and decides what to try next (map ports, reserve or release relay slots), and explains the
//!   result in one line for `kith status`. No IO, clocks or RNG: `now` is an argument.
//! - [`upnp`]: UPnP IGD (v1 and v2) mappings through igd-next, with leases, renewal, a
//!   fallback external port and removal on shutdown.
//! - [`candidates`]: a small libp2p behaviour that feeds UPnP-mapped addresses to AutoNAT as
//!   candidates, so only confirmed mappings are announced.
//! - [`relay_server`]: libp2p's relay server behind two corrections (direct addresses only
//!   count as reachability; relayed connections are kept from it, see the module docs).
//! - [`relay_config`]: relay server limits sized for storage traffic (the libp2p defaults of
//!   2 minutes and 128 KiB per circuit would cut every transfer), member-only.
//!
//! The libp2p behaviours themselves (identify, AutoNAT v2 client and server, relay client and
//! server, DCUtR) are composed in the node's network actor, which drives the policy.

pub mod candidates;
pub mod policy;
pub mod relay_server;
pub mod upnp;

pub use policy::{Action, Event, Features, Policy, Reachability, Source};

use std::{
    num::NonZeroU32,
    sync::{Arc, RwLock},
    time::Duration,
};

use libp2p::{PeerId, relay};

/// Who may use this node's relay: a check the node keeps current (grid members).
pub type MemberCheck = Arc<RwLock<Option<Arc<dyn Fn(&PeerId) -> bool + Send + Sync>>>>;

/// Relay service limits (`[nat]` in the node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Longest a circuit may last.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit may carry (each direction).
    pub max_circuit_bytes: u64,
    /// New circuits a single member may open per minute (bounds the relay's bandwidth use
    /// together with `max_circuit_bytes`).
    pub circuits_per_minute: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 64,
            max_circuits: 32,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 16 << 30,
            circuits_per_minute: 30,
        }
    }
}

/// The relay server configuration: `limits`, and only peers `members` accepts may reserve a
/// slot or open a circuit (until the check is set, nobody may).
pub fn relay_config(limits: RelayLimits, members: MemberCheck) -> relay::Config {
    let allowed = move |peer: &PeerId| {
        members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|f| f(peer))
    };
    let for_circuits = allowed.clone();
    let per_minute = NonZeroU32::new(limits.circuits_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut cfg = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: 2,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: 8,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    cfg.reservation_rate_limiters
        .push(Box::new(move |peer: PeerId, _: &libp2p::Multiaddr, _| {
            allowed(&peer)
        }));
    cfg.circuit_src_rate_limiters
        .push(Box::new(move |peer: PeerId, _: &libp2p::Multiaddr, _| {
            for_circuits(&peer)
        }));
    cfg.circuit_src_per_peer(per_minute, Duration::from_secs(60))
}
