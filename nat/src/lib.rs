//! kith-nat: how a home node becomes reachable, and why it is (or is not).
//!
//! - [`policy`]: the sans-IO core. It takes what the node learned (confirmed addresses from
//!   AutoNAT v2, UPnP results, relays offered by members, reservation and hole-punch outcomes)
//!   and decides what to try next (map ports, reserve or release relay slots), and explains the
//!   result in one line for `kith status`. No IO, clocks or RNG: `now` is an argument.
//! - [`upnp`]: UPnP IGD (v1 and v2) mappings through igd-next, with leases, renewal, a
//!   fallback external port and removal on shutdown; IPv6 firewall pinholes (IGDv2) the same
//!   way.
//! - [`natpmp`]: NAT-PMP (RFC 6886) mappings, the fallback when no UPnP gateway answers: a
//!   bounded codec and a small client.
//! - [`ssdp`]: hears routers announce themselves (SSDP `NOTIFY`), so a router that turns UPnP
//!   on or restarts is asked at once instead of after the retry backoff.
//! - [`autonat`]: kith's AutoNAT v2 client (libp2p's protocol; tests again what failed, backs
//!   off, bounded, expires confirmed addresses that stop working).
//! - [`candidates`]: a small libp2p behaviour that feeds UPnP-mapped addresses to AutoNAT as
//!   candidates, so only confirmed mappings are announced; and the wrapper that makes one
//!   AutoNAT v2 client per address family, asking only members that can dial in it.
//! - [`relay_server`]: libp2p's relay server behind two corrections (direct addresses only
//!   count as reachability; relayed connections are kept from it, see the module docs).
//! - [`relay_config`]: relay server limits sized for storage traffic (the libp2p defaults of
//!   2 minutes and 128 KiB per circuit would cut every transfer), member-only.
//!
//! The libp2p behaviours (identify, AutoNAT v2 server, relay client and server, DCUtR) and
//! kith's AutoNAT clients are composed in the node's network actor, which drives the policy.

/// The two pending-connection checks of a `NetworkBehaviour` that wraps another in its field
/// `$inner`, handed to it unchanged (used by [`candidates::Testable`], which decides the
/// established connections itself). Expects `Multiaddr`, `PeerId`, `Endpoint`,
/// `ConnectionDenied` and `ConnectionId` in scope.
macro_rules! delegate_pending {
    ($inner:ident) => {
        fn handle_pending_inbound_connection(
            &mut self,
            id: ConnectionId,
            local: &Multiaddr,
            remote: &Multiaddr,
        ) -> Result<(), ConnectionDenied> {
            self.$inner
                .handle_pending_inbound_connection(id, local, remote)
        }

        fn handle_pending_outbound_connection(
            &mut self,
            id: ConnectionId,
            peer: Option<PeerId>,
            addresses: &[Multiaddr],
            role: Endpoint,
        ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
            self.$inner
                .handle_pending_outbound_connection(id, peer, addresses, role)
        }
    };
}

/// All four connection-setup methods of a `NetworkBehaviour` that wraps another in its field
/// `$inner` and lets it decide alone (used by [`relay_server::Behaviour`], which only filters
/// swarm events and polls). Expects what [`delegate_pending!`] does, and `PortUse` and
/// `THandler`.
macro_rules! delegate_connections {
    ($inner:ident) => {
        delegate_pending!($inner);

        fn handle_established_inbound_connection(
            &mut self,
            id: ConnectionId,
            peer: PeerId,
            local: &Multiaddr,
            remote: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.$inner
                .handle_established_inbound_connection(id, peer, local, remote)
        }

        fn handle_established_outbound_connection(
            &mut self,
            id: ConnectionId,
            peer: PeerId,
            addr: &Multiaddr,
            role: Endpoint,
            port_use: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.$inner
                .handle_established_outbound_connection(id, peer, addr, role, port_use)
        }
    };
}

pub mod autonat;
pub mod candidates;
pub mod natpmp;
pub mod policy;
pub mod relay_server;
pub mod ssdp;
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
    /// New circuits a single member may open per minute.
    pub circuits_per_minute: u32,
    /// The node's relay bandwidth cap: most bytes all circuits together may carry per hour
    /// (0 = no cap). Each new circuit books its `max_circuit_bytes` (libp2p's relay cannot
    /// meter bytes as they flow, so the cap books the most a circuit may carry); a circuit
    /// that would overrun the hour's budget is refused.
    pub max_bytes_per_hour: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 64,
            max_circuits: 32,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 16 << 30,
            circuits_per_minute: 30,
            max_bytes_per_hour: 0,
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
    let mut budget = Budget::new(limits.max_bytes_per_hour, 3600);
    let started = std::time::Instant::now();
    let cost = limits.max_circuit_bytes;
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
    let mut cfg = cfg.circuit_src_per_peer(per_minute, Duration::from_secs(60));
    // Last, so that only circuits every other check let through book bytes.
    cfg.circuit_src_rate_limiters
        .push(Box::new(move |_: PeerId, _: &libp2p::Multiaddr, _| {
            budget.try_take(started.elapsed().as_secs(), cost)
        }));
    cfg
}

/// A byte budget over a sliding window (sans-IO: the caller passes the time in seconds).
#[derive(Clone, Debug)]
pub struct Budget {
    limit: u64,
    window: u64,
    booked: std::collections::VecDeque<(u64, u64)>,
    total: u64,
}

impl Budget {
    /// At most `limit` bytes per `window` seconds; `limit = 0` means no cap.
    pub fn new(limit: u64, window: u64) -> Self {
        Self {
            limit,
            window,
            booked: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    /// Books `cost` bytes at time `now` if the window has room for them.
    pub fn try_take(&mut self, now: u64, cost: u64) -> bool {
        if self.limit == 0 {
            return true;
        }
        while let Some(&(t, c)) = self.booked.front() {
            if now.saturating_sub(t) < self.window {
                break;
            }
            self.total -= c;
            self.booked.pop_front();
        }
        if self.total.saturating_add(cost) > self.limit {
            return false;
        }
        self.total += cost;
        self.booked.push_back((now, cost));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_bytes_per_window_and_frees_them_as_it_slides() {
        let mut b = Budget::new(3 << 30, 3600);
        assert!(b.try_take(0, 1 << 30));
        assert!(b.try_take(10, 1 << 30));
        assert!(b.try_take(20, 1 << 30));
        assert!(!b.try_take(30, 1 << 30), "the hour's budget is spent");
        assert!(
            b.try_take(3600, 1 << 30),
            "the first booking left the window"
        );
        assert!(!b.try_take(3605, 1 << 30));
        let mut open = Budget::new(0, 3600);
        assert!((0..1000).all(|t| open.try_take(t, u64::MAX)));
    }
}
