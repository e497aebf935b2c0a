//! UPnP IGD port mappings through igd-next (IGDv1 and IGDv2 `WANIPConnection` services).
//!
//! [`Mapper::map`] finds the gateway by SSDP, asks for each listen port the same external port
//! first (so the mapped address is also the address hole punching and port reuse show peers),
//! and falls back to any free external port when that one is taken or the router wants a
//! different one. Mappings carry a lease ([`DEFAULT_LEASE`]); the caller renews them (the
//! policy says when) by calling `map` again, which re-requests the same external ports.
//! Routers that only take permanent leases get a permanent mapping, which [`Mapper::unmap_all`]
//! removes on shutdown like the others. A refusal (`ActionNotAuthorized`, e.g. miniupnpd's
//! secure mode or permission rules) is reported as [`UpnpError::Refused`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use igd_next::{
    AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions,
    aio::{Gateway, tokio::Tokio},
};
use libp2p::{Multiaddr, multiaddr::Protocol};

/// Lease asked for each mapping.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// How long the SSDP search for a gateway may take.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A port to map: the transport and the local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// A TCP listen port.
    Tcp(u16),
    /// A UDP (QUIC) listen port.
    Quic(u16),
}

impl Port {
    fn protocol(self) -> PortMappingProtocol {
        match self {
            Port::Tcp(_) => PortMappingProtocol::TCP,
            Port::Quic(_) => PortMappingProtocol::UDP,
        }
    }

    fn number(self) -> u16 {
        match self {
            Port::Tcp(p) | Port::Quic(p) => p,
        }
    }

    /// The listen ports of these multiaddrs that are worth mapping (IPv4 TCP and QUIC).
    pub fn from_listen_addrs<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>) -> Vec<Port> {
        let mut out: Vec<Port> = addrs
            .into_iter()
            .filter_map(|a| {
                let mut it = a.iter();
                let Some(Protocol::Ip4(ip)) = it.next() else {
                    return None;
                };
                if ip.is_loopback() {
                    return None;
                }
                match (it.next(), it.next()) {
                    (Some(Protocol::Tcp(p)), _) => Some(Port::Tcp(p)),
                    (Some(Protocol::Udp(p)), Some(Protocol::QuicV1)) => Some(Port::Quic(p)),
                    _ => None,
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One mapping on the router.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    /// What is mapped.
    #[serde(skip)]
    pub port: Port,
    /// The local address traffic is forwarded to.
    pub internal: SocketAddrV4,
    /// The address the router accepts traffic on.
    pub external: SocketAddr,
    /// The lease granted (0 = permanent).
    pub lease_secs: u32,
}

impl Mapping {
    /// The external address as a multiaddr (`/ip4/E/tcp/P` or `/ip4/E/udp/P/quic-v1`).
    pub fn multiaddr(&self) -> Multiaddr {
        let ip: Multiaddr = match self.external.ip() {
            IpAddr::V4(a) => Multiaddr::empty().with(Protocol::Ip4(a)),
            IpAddr::V6(a) => Multiaddr::empty().with(Protocol::Ip6(a)),
        };
        match self.port {
            Port::Tcp(_) => ip.with(Protocol::Tcp(self.external.port())),
            Port::Quic(_) => ip
                .with(Protocol::Udp(self.external.port()))
                .with(Protocol::QuicV1),
        }
    }
}

/// Why mapping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpnpError {
    /// No gateway answered the SSDP search.
    #[error("no UPnP gateway found")]
    NoGateway,
    /// The router refused (secure mode, permission rules).
    #[error("the router refused the mapping of {0:?} (not authorized)")]
    Refused(Port),
    /// The router's external address is itself private: a second NAT sits upstream.
    #[error("the router's external address {0} is private (double NAT); a mapping would not help")]
    PrivateExternal(IpAddr),
    /// Anything else the router said.
    #[error("UPnP request failed: {0}")]
    Request(String),
}

/// Keeps the mappings of one node.
#[derive(Debug)]
pub struct Mapper {
    gateway: Option<Gateway<Tokio>>,
    /// The address of the gateway that holds `mappings`.
    mapped_at: Option<IpAddr>,
    mappings: Vec<Mapping>,
    lease: Duration,
    description: String,
}

impl Mapper {
    /// A mapper asking for `lease`-long mappings labelled `description` in the router's table.
    pub fn new(lease: Duration, description: &str) -> Self {
        Self {
            gateway: None,
            mapped_at: None,
            mappings: Vec::new(),
            lease,
            description: description.chars().take(64).collect(),
        }
    }

    /// The mappings in place.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Which IGD service the gateway speaks (`WANIPConnection:1` or `:2`), once found.
    pub fn service(&self) -> Option<&str> {
        self.gateway
            .as_ref()
            .map(|g| g.service_type.rsplit(":service:").next().unwrap_or(""))
    }

    /// Maps (or renews) `ports`. Returns the mappings now in place; ports that failed are
    /// left out, and the first failure is returned if none succeeded.
    ///
    /// The gateway found by the first search is kept; a request to it that fails for any other
    /// reason than a refusal or a conflict forgets it, so the next call searches again (a
    /// router that restarted may serve its control URL on another port; a laptop may be on
    /// another network).
    pub async fn map(&mut self, ports: &[Port]) -> Result<Vec<Mapping>, UpnpError> {
        let result = self.map_on_gateway(ports).await;
        if let Err(UpnpError::Request(e)) = &result
            && self.gateway.take().is_some()
        {
            tracing::info!(error = %e, "UPnP gateway stopped answering; searching again next time");
        }
        result
    }

    /// Forgets the gateway: the next [`Mapper::map`] searches for one (after a router announced
    /// that it restarted).
    pub fn forget_gateway(&mut self) {
        self.gateway = None;
    }

    async fn map_on_gateway(&mut self, ports: &[Port]) -> Result<Vec<Mapping>, UpnpError> {
        let gateway = match &self.gateway {
            Some(g) => g.clone(),
            None => {
                let mut opts = SearchOptions::default();
                opts.timeout = Some(SEARCH_TIMEOUT);
                opts.single_search_timeout = Some(SEARCH_TIMEOUT);
                let g = igd_next::aio::tokio::search_gateway(opts)
                    .await
                    .map_err(|_| UpnpError::NoGateway)?;
                // Mappings on another router (the node moved) are not this one's to remove.
                if self.mapped_at != Some(g.addr.ip()) {
                    self.mappings.clear();
                }
                self.mapped_at = Some(g.addr.ip());
                self.gateway = Some(g.clone());
                g
            }
        };
        let external_ip = gateway
            .get_external_ip()
            .await
            .map_err(|e| UpnpError::Request(e.to_string()))?;
        if !is_global(external_ip) {
            return Err(UpnpError::PrivateExternal(external_ip));
        }
        let local_ip = local_ip_towards(gateway.addr).map_err(UpnpError::Request)?;
        let mut first_error = None;
        let mut done = Vec::new();
        for &port in ports {
            let internal = SocketAddrV4::new(local_ip, port.number());
            let wanted = self
                .mappings
                .iter()
                .find(|m| m.port == port)
                .map_or(port.number(), |m| m.external.port());
            match self.map_one(&gateway, port, internal, wanted).await {
                Ok((external_port, lease_secs)) => done.push(Mapping {
                    port,
                    internal,
                    external: SocketAddr::new(external_ip, external_port),
                    lease_secs,
                }),
                Err(e) => {
                    tracing::info!(?port, error = %e, "UPnP mapping failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        // Mappings of ports no longer asked for (or that failed to renew) are removed.
        for old in std::mem::take(&mut self.mappings) {
            if !done
                .iter()
                .any(|m| m.port == old.port && m.external == old.external)
            {
                let _ = gateway
                    .remove_port(old.port.protocol(), old.external.port())
                    .await;
            }
        }
        self.mappings = done.clone();
        match (done.is_empty(), first_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(done),
        }
    }

    async fn map_one(
        &self,
        gateway: &Gateway<Tokio>,
        port: Port,
        internal: SocketAddrV4,
        wanted: u16,
    ) -> Result<(u16, u32), UpnpError> {
        let proto = port.protocol();
        let mut lease = u32::try_from(self.lease.as_secs()).unwrap_or(u32::MAX);
        let desc = &self.description;
        for _ in 0..2 {
            match gateway
                .add_port(proto, wanted, internal.into(), lease, desc)
                .await
            {
                Ok(()) => return Ok((wanted, lease)),
                Err(AddPortError::OnlyPermanentLeasesSupported) if lease != 0 => lease = 0,
                Err(AddPortError::ActionNotAuthorized) => return Err(UpnpError::Refused(port)),
                // 718 ConflictInMappingEntry, 724 SamePortValuesRequired and 729
                // ConflictWithOtherMechanisms (the router itself uses the port): try another.
                Err(
                    AddPortError::PortInUse
                    | AddPortError::SamePortValuesRequired
                    | AddPortError::RequestError(igd_next::RequestError::ErrorCode(729, _)),
                ) => break,
                Err(e) => return Err(UpnpError::Request(e.to_string())),
            }
        }
        // The same port is taken (or the router insists): let it pick another external port.
        match gateway
            .add_any_port(proto, internal.into(), lease, desc)
            .await
        {
            Ok(p) => Ok((p, lease)),
            Err(AddAnyPortError::ActionNotAuthorized) => Err(UpnpError::Refused(port)),
            Err(e) => Err(UpnpError::Request(e.to_string())),
        }
    }

    /// Removes every mapping (on shutdown).
    pub async fn unmap_all(&mut self) {
        let Some(gateway) = &self.gateway else {
            return;
        };
        for m in std::mem::take(&mut self.mappings) {
            match gateway
                .remove_port(m.port.protocol(), m.external.port())
                .await
            {
                Ok(()) => tracing::info!(external = %m.external, "UPnP mapping removed"),
                Err(e) => {
                    tracing::info!(external = %m.external, error = %e, "UPnP mapping not removed")
                }
            }
        }
    }
}

/// The local address the kernel would use to reach `gateway` (no packet is sent).
fn local_ip_towards(gateway: SocketAddr) -> Result<Ipv4Addr, String> {
    let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    sock.connect(gateway).map_err(|e| e.to_string())?;
    match sock.local_addr().map_err(|e| e.to_string())?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => Err(format!("gateway reached over IPv6 ({ip}); IPv4 needed")),
    }
}

/// Whether an address is routable on the internet (not private, shared, loopback, link-local,
/// documentation or reserved space).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
                || o[0] == 0)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_ports_worth_mapping() {
        let addrs: Vec<Multiaddr> = [
            "/ip4/192.168.1.10/tcp/4002",
            "/ip4/192.168.1.10/udp/4002/quic-v1",
            "/ip4/127.0.0.1/tcp/4002",
            "/ip6/::1/tcp/9",
            "/memory/5",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(
            Port::from_listen_addrs(&addrs),
            vec![Port::Tcp(4002), Port::Quic(4002)]
        );
    }

    #[test]
    fn mapping_multiaddrs() {
        let m = Mapping {
            port: Port::Quic(4002),
            internal: "192.168.1.10:4002".parse().unwrap(),
            external: "11.0.0.11:41000".parse().unwrap(),
            lease_secs: 3600,
        };
        assert_eq!(
            m.multiaddr().to_string(),
            "/ip4/11.0.0.11/udp/41000/quic-v1"
        );
    }

    #[test]
    fn global_addresses() {
        for (ip, global) in [
            ("11.0.0.11", true),
            ("8.8.8.8", true),
            ("192.168.1.1", false),
            ("10.1.2.3", false),
            ("100.64.0.1", false),
            ("198.18.0.1", false),
            ("203.0.113.7", false),
            ("2001:db8::1", false),
            ("fe80::1", false),
            ("2a00::1", true),
        ] {
            assert_eq!(is_global(ip.parse().unwrap()), global, "{ip}");
        }
    }
}
