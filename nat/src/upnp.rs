//! UPnP IGD port mappings and IPv6 firewall pinholes through igd-next (IGDv1 and IGDv2
//! `WANIPConnection` services, IGDv2 `WANIPv6FirewallControl`).
//!
//! [`Mapper::map`] finds the gateway by SSDP, asks for each listen port the same external port
//! first (so the mapped address is also the address hole punching and port reuse show peers),
//! and falls back to any free external port when that one is taken or the router wants a
//! different one. Mappings carry a lease ([`DEFAULT_LEASE`]); the caller renews them (the
//! policy says when) by calling `map` again, which re-requests the same external ports.
//! Routers that only take permanent leases get a permanent mapping, which [`Mapper::unmap_all`]
//! removes on shutdown like the others. A refusal (`ActionNotAuthorized`, e.g. miniupnpd's
//! secure mode or permission rules) is reported as [`UpnpError::Refused`].
//!
//! When no UPnP gateway answers, IPv4 ports are mapped over NAT-PMP ([`crate::natpmp`]) with
//! the default gateway instead, with the same lease, renewal and removal.
//!
//! IPv6 needs no translation, but a home router's stateful firewall lets nothing new in. When
//! the router describes a `WANIPv6FirewallControl` service (or when no IPv4 gateway answered),
//! [`Mapper::map`] also opens a *pinhole* for each IPv6 listen port on the global address this
//! host reaches the router from. The search goes over IPv6 (SSDP to `ff02::c`, sent from that
//! global address) and so do the requests: a router in secure mode (miniupnpd's default) only
//! opens pinholes to the address the request comes from. Pinholes carry the same lease as
//! mappings (at most a day, the service's limit), are renewed by `UpdatePinhole` and removed with
//! the mappings. A host behind carrier-grade NAT or DS-Lite (no IPv4 to map) thereby becomes
//! reachable over IPv6.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use igd_next::{
    AddAnyPortError, AddPortError, PinholeError, PortMappingProtocol, SearchOptions,
    aio::{Gateway, Ipv6FirewallGateway, tokio::Tokio},
};
use libp2p::{Multiaddr, multiaddr::Protocol};

use crate::natpmp;

/// Lease asked for each mapping.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// How long the SSDP search for a gateway may take.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest pinhole lease `WANIPv6FirewallControl` allows.
pub const MAX_PINHOLE_LEASE: Duration = Duration::from_secs(86_400);

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
            .filter_map(listen_port)
            .filter_map(|(ip, port)| (ip.is_ipv4() && !ip.is_loopback()).then_some(port))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The global IPv6 addresses and ports of these listen addresses: what a pinhole in the
    /// router's IPv6 firewall may open.
    pub fn v6_from_listen_addrs<'a>(
        addrs: impl IntoIterator<Item = &'a Multiaddr>,
    ) -> Vec<(Ipv6Addr, Port)> {
        let mut out: Vec<(Ipv6Addr, Port)> = addrs
            .into_iter()
            .filter_map(listen_port)
            .filter_map(|(ip, port)| match ip {
                IpAddr::V6(a) if is_global(ip) => Some((a, port)),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn pmp_proto(self) -> natpmp::Proto {
        match self {
            Port::Tcp(_) => natpmp::Proto::Tcp,
            Port::Quic(_) => natpmp::Proto::Udp,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Port::Tcp(_) => "tcp",
            Port::Quic(_) => "udp",
        }
    }
}

/// Whether an interface of this host holds a global IPv6 address (one a pinhole could open).
pub fn host_has_global_ipv6() -> bool {
    if_addrs::get_if_addrs().is_ok_and(|ifs| {
        ifs.iter()
            .any(|i| matches!(i.ip(), IpAddr::V6(_)) && is_global(i.ip()))
    })
}

/// The IP address and port of a direct TCP or QUIC listen address.
fn listen_port(a: &Multiaddr) -> Option<(IpAddr, Port)> {
    let mut it = a.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match (it.next(), it.next()) {
        (Some(Protocol::Tcp(p)), _) => Some((ip, Port::Tcp(p))),
        (Some(Protocol::Udp(p)), Some(Protocol::QuicV1)) => Some((ip, Port::Quic(p))),
        _ => None,
    }
}

/// One mapping on the router: an IPv4 port mapping or an IPv6 firewall pinhole.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    /// What is mapped.
    #[serde(skip)]
    pub port: Port,
    /// The local address traffic is forwarded to.
    pub internal: SocketAddr,
    /// The address the router accepts traffic on (for a pinhole, the internal one).
    pub external: SocketAddr,
    /// The lease granted (0 = permanent).
    pub lease_secs: u32,
    /// For a pinhole, the router's id of it (`UniqueID`); `None` for a port mapping.
    pub pinhole: Option<u16>,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pinhole {
            Some(_) => write!(f, "pinhole {} ({})", self.internal, self.port.name()),
            None => write!(
                f,
                "{} -> {} ({})",
                self.internal,
                self.external,
                self.port.name()
            ),
        }
    }
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
    /// No gateway answered the SSDP search (nor, for IPv4, a NAT-PMP request).
    #[error("no UPnP or NAT-PMP gateway found")]
    NoGateway,
    /// The router refused (secure mode, permission rules).
    #[error("the router refused the mapping of {0:?} (not authorized)")]
    Refused(Port),
    /// The router's external address is itself private: a second NAT sits upstream.
    #[error("the router's external address {0} is private (double NAT); a mapping would not help")]
    PrivateExternal(IpAddr),
    /// The router's IPv6 firewall takes no pinholes (the owner turned them off).
    #[error("the router's IPv6 firewall does not allow pinholes")]
    PinholesNotAllowed,
    /// This host reaches the router's IPv6 firewall from an address kith does not listen on
    /// (or not a global one), and a router only opens pinholes to the requesting address.
    #[error("this host reaches the router from {0}, not a global address kith listens on")]
    NotListening(IpAddr),
    /// No listen address worth a mapping (only loopback ones, say).
    #[error("no IPv4 TCP or QUIC listen port to map, no global IPv6 one to open")]
    NothingToMap,
    /// Anything else the router said.
    #[error("UPnP request failed: {0}")]
    Request(String),
}

/// Keeps the mappings and pinholes of one node.
#[derive(Debug)]
pub struct Mapper {
    v4: PortMaps,
    pmp: PmpMaps,
    v6: Pinholes,
    lease: Duration,
    description: String,
}

impl Mapper {
    /// A mapper asking for `lease`-long mappings labelled `description` in the router's table.
    pub fn new(lease: Duration, description: &str) -> Self {
        Self {
            v4: PortMaps::default(),
            pmp: PmpMaps::default(),
            v6: Pinholes::default(),
            lease,
            description: description.chars().take(64).collect(),
        }
    }

    /// The IPv4 port mappings and the IPv6 pinholes in place.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.v4
            .mappings
            .iter()
            .chain(&self.pmp.mappings)
            .chain(&self.v6.open)
    }

    /// Which services the router was asked through: `WANIPConnection:1` or `:2` (or
    /// `NAT-PMP` for mappings made that way), and `WANIPv6FirewallControl:1` where pinholes
    /// are asked of it; comma-separated.
    pub fn service(&self) -> Option<String> {
        let name = |t: &str| t.rsplit(":service:").next().unwrap_or("").to_owned();
        let v4 = match &self.v4.gateway {
            Some(g) => Some(name(&g.service_type)),
            None => (!self.pmp.mappings.is_empty()).then(|| "NAT-PMP".to_owned()),
        };
        let v6 = self
            .v6
            .gateway
            .as_ref()
            .map(|_| "WANIPv6FirewallControl:1".to_owned());
        match (v4, v6) {
            (Some(a), Some(b)) => Some(format!("{a}, {b}")),
            (a, b) => a.or(b),
        }
    }

    /// Maps (or renews) the IPv4 `ports`, and opens (or renews) pinholes for the IPv6 listen
    /// addresses `v6` (see [`Port::v6_from_listen_addrs`]; only the address this host reaches
    /// the router from gets them). Returns what is now in place; ports that failed are left
    /// out, and an error is returned only if nothing is in place and something failed (the
    /// IPv4 side's error first).
    ///
    /// Each gateway found by a search is kept; a request to it that fails for any other reason
    /// than a refusal or a conflict forgets it, so the next call searches again (a router that
    /// restarted may serve its control URL on another port; a laptop may be on another
    /// network). The IPv6 firewall is searched for only when the IPv4 gateway describes one,
    /// or when no IPv4 gateway answered (a router reached over IPv6 only).
    pub async fn map(
        &mut self,
        ports: &[Port],
        v6: &[(Ipv6Addr, Port)],
    ) -> Result<Vec<Mapping>, UpnpError> {
        let asked = !ports.is_empty() || !v6.is_empty();
        let v4 = if ports.is_empty() {
            Ok(Vec::new())
        } else {
            match self.v4.map(ports, self.lease, &self.description).await {
                // No UPnP gateway: the router may speak NAT-PMP.
                Err(UpnpError::NoGateway) => self.pmp.map(ports, self.lease).await,
                r => {
                    // Mappings made over NAT-PMP while UPnP did not answer are left to expire:
                    // deleting them now could delete what UPnP just mapped (one table holds
                    // both on a router that speaks both).
                    self.pmp.mappings.clear();
                    r
                }
            }
        };
        let firewall_described = self
            .v4
            .gateway
            .as_ref()
            .map(|g| g.ipv6_firewall().is_some());
        let v6 = match firewall_described {
            Some(false) if self.v6.gateway.is_none() => {
                self.v6.close_all().await;
                Ok(Vec::new())
            }
            _ => self.v6.open(v6, self.lease).await,
        };
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for r in [v4, v6] {
            match r {
                Ok(m) => done.extend(m),
                Err(e) => errors.push(e),
            }
        }
        if !done.is_empty() || errors.is_empty() {
            for e in errors {
                tracing::info!(error = %e, "UPnP: part of the mapping failed");
            }
            if done.is_empty() && !asked {
                return Err(UpnpError::NothingToMap);
            }
            return Ok(done);
        }
        Err(errors.swap_remove(0))
    }

    /// Forgets the gateways: the next [`Mapper::map`] searches for them (after a router
    /// announced that it restarted).
    pub fn forget_gateway(&mut self) {
        self.v4.gateway = None;
        self.v6.gateway = None;
    }

    /// Removes every mapping and pinhole (on shutdown).
    pub async fn unmap_all(&mut self) {
        if let Some(gateway) = &self.v4.gateway {
            for m in std::mem::take(&mut self.v4.mappings) {
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
        self.pmp.unmap_all().await;
        self.v6.close_all().await;
    }
}

/// The IPv4 side over NAT-PMP, when no UPnP gateway answers.
#[derive(Debug, Default)]
struct PmpMaps {
    /// The gateway that holds `mappings`.
    gateway: Option<Ipv4Addr>,
    mappings: Vec<Mapping>,
}

impl PmpMaps {
    async fn map(&mut self, ports: &[Port], lease: Duration) -> Result<Vec<Mapping>, UpnpError> {
        let gateway = natpmp::default_gateway().ok_or(UpnpError::NoGateway)?;
        // Mappings on another router (the node moved) are not this one's to remove.
        if self.gateway != Some(gateway) {
            self.mappings.clear();
        }
        self.gateway = Some(gateway);
        let client = natpmp::Client::of(gateway);
        let external_ip = match client.ask(natpmp::Request::ExternalAddress).await {
            Ok(natpmp::Response::ExternalAddress { ip, .. }) => ip,
            Ok(natpmp::Response::Mapped { .. }) => {
                return Err(UpnpError::Request(
                    "NAT-PMP: a mapping for an address".into(),
                ));
            }
            Err(natpmp::ClientError::NoAnswer(_)) => return Err(UpnpError::NoGateway),
            Err(e) => return Err(UpnpError::Request(e.to_string())),
        };
        if !is_global(external_ip.into()) {
            return Err(UpnpError::PrivateExternal(external_ip.into()));
        }
        let local_ip = match local_ip_towards((gateway, natpmp::SERVER_PORT).into())
            .map_err(UpnpError::Request)?
        {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => return Err(UpnpError::NotListening(ip.into())),
        };
        // A lifetime of 0 would delete the mapping: a "permanent" lease asks for a day.
        let lifetime_secs = match u32::try_from(lease.as_secs()).unwrap_or(u32::MAX) {
            0 => 86_400,
            s => s,
        };
        let mut first_error = None;
        let mut done = Vec::new();
        for &port in ports {
            let wanted = kept_external_port(&self.mappings, port);
            let req = natpmp::Request::Map {
                proto: port.pmp_proto(),
                internal: port.number(),
                external: wanted,
                lifetime_secs,
            };
            match client.ask(req).await {
                Ok(natpmp::Response::Mapped {
                    external,
                    lifetime_secs,
                    ..
                }) => done.push(Mapping {
                    port,
                    internal: SocketAddrV4::new(local_ip, port.number()).into(),
                    external: SocketAddr::new(external_ip.into(), external),
                    lease_secs: lifetime_secs,
                    pinhole: None,
                }),
                Ok(natpmp::Response::ExternalAddress { .. }) => {}
                Err(natpmp::ClientError::Refused(e)) if e.is_refusal() => {
                    tracing::info!(?port, "NAT-PMP mapping refused");
                    first_error.get_or_insert(UpnpError::Refused(port));
                }
                Err(e) => {
                    tracing::info!(?port, error = %e, "NAT-PMP mapping failed");
                    first_error.get_or_insert(UpnpError::Request(e.to_string()));
                }
            }
        }
        for old in std::mem::take(&mut self.mappings) {
            if !done.iter().any(|m| m.port == old.port) {
                let _ = client.ask(pmp_delete(old.port)).await;
            }
        }
        self.mappings = done.clone();
        settle(done, first_error)
    }

    async fn unmap_all(&mut self) {
        let Some(gateway) = self.gateway else {
            return;
        };
        let client = natpmp::Client::of(gateway);
        for m in std::mem::take(&mut self.mappings) {
            match client.ask(pmp_delete(m.port)).await {
                Ok(_) => tracing::info!(external = %m.external, "NAT-PMP mapping removed"),
                Err(e) => {
                    tracing::info!(external = %m.external, error = %e, "NAT-PMP mapping not removed")
                }
            }
        }
    }
}

/// What one side's attempt comes to: the mappings in place, or the first failure if none is.
fn settle(done: Vec<Mapping>, first_error: Option<UpnpError>) -> Result<Vec<Mapping>, UpnpError> {
    match (done.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(done),
    }
}

/// The external port to ask for `port`: the one it has now, else the same as the local one.
fn kept_external_port(mappings: &[Mapping], port: Port) -> u16 {
    mappings
        .iter()
        .find(|m| m.port == port)
        .map_or(port.number(), |m| m.external.port())
}

/// Forgets `gateway` when a request to it failed for any other reason than a refusal or a
/// conflict, so the next attempt searches again (a router that restarted may serve its
/// control URL elsewhere; a laptop may be on another network).
fn forget_if_failing<G>(
    gateway: &mut Option<G>,
    result: &Result<Vec<Mapping>, UpnpError>,
    what: &str,
) {
    if let Err(UpnpError::Request(e)) = result
        && gateway.take().is_some()
    {
        tracing::info!(error = %e, "{what} stopped answering; searching again next time");
    }
}

/// The NAT-PMP request that deletes the mapping of `port` (lifetime and external port 0).
fn pmp_delete(port: Port) -> natpmp::Request {
    natpmp::Request::Map {
        proto: port.pmp_proto(),
        internal: port.number(),
        external: 0,
        lifetime_secs: 0,
    }
}

/// The IPv4 side: port mappings on the `WANIPConnection` service.
#[derive(Debug, Default)]
struct PortMaps {
    gateway: Option<Gateway<Tokio>>,
    /// The address of the gateway that holds `mappings`.
    mapped_at: Option<IpAddr>,
    mappings: Vec<Mapping>,
}

impl PortMaps {
    async fn map(
        &mut self,
        ports: &[Port],
        lease: Duration,
        description: &str,
    ) -> Result<Vec<Mapping>, UpnpError> {
        let result = self.map_on_gateway(ports, lease, description).await;
        forget_if_failing(&mut self.gateway, &result, "UPnP gateway");
        result
    }

    async fn map_on_gateway(
        &mut self,
        ports: &[Port],
        lease: Duration,
        description: &str,
    ) -> Result<Vec<Mapping>, UpnpError> {
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
        let local_ip = match local_ip_towards(gateway.addr).map_err(UpnpError::Request)? {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => {
                return Err(UpnpError::Request(format!(
                    "gateway reached over IPv6 ({ip}); IPv4 needed"
                )));
            }
        };
        let mut first_error = None;
        let mut done = Vec::new();
        for &port in ports {
            let internal = SocketAddrV4::new(local_ip, port.number());
            let wanted = kept_external_port(&self.mappings, port);
            match map_one(&gateway, port, internal, wanted, lease, description).await {
                Ok((external_port, lease_secs)) => done.push(Mapping {
                    port,
                    internal: internal.into(),
                    external: SocketAddr::new(external_ip, external_port),
                    lease_secs,
                    pinhole: None,
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
        settle(done, first_error)
    }
}

async fn map_one(
    gateway: &Gateway<Tokio>,
    port: Port,
    internal: SocketAddrV4,
    wanted: u16,
    lease: Duration,
    desc: &str,
) -> Result<(u16, u32), UpnpError> {
    let proto = port.protocol();
    let mut lease = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
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

/// The IPv6 side: pinholes on the `WANIPv6FirewallControl` service.
#[derive(Debug, Default)]
struct Pinholes {
    gateway: Option<Ipv6FirewallGateway<Tokio>>,
    /// The address of the gateway that holds `open`.
    opened_at: Option<IpAddr>,
    open: Vec<Mapping>,
}

impl Pinholes {
    async fn open(
        &mut self,
        wanted: &[(Ipv6Addr, Port)],
        lease: Duration,
    ) -> Result<Vec<Mapping>, UpnpError> {
        if wanted.is_empty() {
            self.close_all().await;
            return Ok(Vec::new());
        }
        let result = self.open_on_gateway(wanted, lease).await;
        forget_if_failing(&mut self.gateway, &result, "UPnP IPv6 firewall");
        result
    }

    async fn open_on_gateway(
        &mut self,
        wanted: &[(Ipv6Addr, Port)],
        lease: Duration,
    ) -> Result<Vec<Mapping>, UpnpError> {
        let gateway = match &self.gateway {
            Some(g) => g.clone(),
            None => {
                let g = search_firewall(wanted).await?;
                if self.opened_at != Some(g.addr.ip()) {
                    self.open.clear();
                }
                self.opened_at = Some(g.addr.ip());
                self.gateway = Some(g.clone());
                g
            }
        };
        // A router that cannot say how its firewall stands is asked for the pinholes anyway.
        match gateway.get_firewall_status().await {
            Ok(status) if !status.firewall_enabled => {
                tracing::info!("the router's IPv6 firewall is off: no pinhole needed");
                self.open.clear();
                return Ok(Vec::new());
            }
            Ok(status) if !status.inbound_pinhole_allowed => {
                return Err(UpnpError::PinholesNotAllowed);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "the router did not say how its IPv6 firewall stands")
            }
        }
        // A router in secure mode opens pinholes only to the address the request comes from:
        // the one the kernel picks towards it.
        let local = match local_ip_towards(gateway.addr).map_err(UpnpError::Request)? {
            IpAddr::V6(ip) if wanted.iter().any(|(a, _)| *a == ip) => ip,
            other => return Err(UpnpError::NotListening(other)),
        };
        let lease_secs = match lease.min(MAX_PINHOLE_LEASE).as_secs() {
            0 => MAX_PINHOLE_LEASE.as_secs(),
            s => s,
        } as u32;
        let mut first_error = None;
        let mut done = Vec::new();
        for &(_, port) in wanted.iter().filter(|(a, _)| *a == local) {
            let internal = SocketAddrV6::new(local, port.number(), 0, 0);
            let old = self
                .open
                .iter()
                .find(|m| m.port == port && m.internal == internal.into())
                .and_then(|m| m.pinhole);
            let renewed = match old {
                Some(id) => gateway.update_pinhole(id, lease_secs).await.map(|()| id),
                None => Err(PinholeError::NoSuchEntry),
            };
            // A router that restarted forgot its pinholes: open it again.
            let id = match renewed {
                Ok(id) => Ok(id),
                Err(_) => {
                    gateway
                        .add_pinhole(port.protocol(), internal, lease_secs)
                        .await
                }
            };
            match id {
                Ok(id) => done.push(Mapping {
                    port,
                    internal: internal.into(),
                    external: internal.into(),
                    lease_secs,
                    pinhole: Some(id),
                }),
                Err(e) => {
                    let e = pinhole_error(port, e);
                    tracing::info!(?port, error = %e, "UPnP pinhole failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        // Pinholes no longer asked for (another address, a port that went) are closed.
        for old in std::mem::take(&mut self.open) {
            if let Some(id) = old.pinhole
                && !done.iter().any(|m| m.pinhole == Some(id))
            {
                let _ = gateway.remove_pinhole(id).await;
            }
        }
        self.open = done.clone();
        settle(done, first_error)
    }

    async fn close_all(&mut self) {
        let open = std::mem::take(&mut self.open);
        let Some(gateway) = &self.gateway else {
            return;
        };
        for m in open {
            let Some(id) = m.pinhole else { continue };
            match gateway.remove_pinhole(id).await {
                Ok(()) => tracing::info!(internal = %m.internal, "UPnP pinhole removed"),
                Err(e) => {
                    tracing::info!(internal = %m.internal, error = %e, "UPnP pinhole not removed")
                }
            }
        }
    }
}

/// Searches for the router's IPv6 firewall over IPv6, from the first global address in
/// `wanted` that an interface holds. Sent from a global address, the search is answered
/// from the router's address on that prefix, the one its description URL names (igd-next
/// trusts only URLs on the address that answered; from a link-local address the answer
/// would come from the router's link-local one).
async fn search_firewall(
    wanted: &[(Ipv6Addr, Port)],
) -> Result<Ipv6FirewallGateway<Tokio>, UpnpError> {
    let interfaces = if_addrs::get_if_addrs().map_err(|e| UpnpError::Request(e.to_string()))?;
    let (from, scope) = interfaces
        .iter()
        .find_map(|i| match i.ip() {
            IpAddr::V6(a) if wanted.iter().any(|(w, _)| *w == a) => Some((a, i.index?)),
            _ => None,
        })
        .ok_or(UpnpError::NoGateway)?;
    let mut opts = SearchOptions::ipv6(scope);
    opts.bind_addr = SocketAddr::V6(SocketAddrV6::new(from, 0, 0, 0));
    opts.timeout = Some(SEARCH_TIMEOUT);
    opts.single_search_timeout = Some(SEARCH_TIMEOUT);
    igd_next::aio::tokio::search_ipv6_firewall_gateway(opts)
        .await
        .map_err(|_| UpnpError::NoGateway)
}

fn pinhole_error(port: Port, e: PinholeError) -> UpnpError {
    match e {
        PinholeError::ActionNotAuthorized => UpnpError::Refused(port),
        PinholeError::InboundPinholeNotAllowed | PinholeError::FirewallDisabled => {
            UpnpError::PinholesNotAllowed
        }
        e => UpnpError::Request(format!("IPv6 firewall: {e}")),
    }
}

/// The local address the kernel would use to reach `gateway` (no packet is sent).
fn local_ip_towards(gateway: SocketAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = match gateway {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(any).map_err(|e| e.to_string())?;
    sock.connect(gateway).map_err(|e| e.to_string())?;
    Ok(sock.local_addr().map_err(|e| e.to_string())?.ip())
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
    fn listen_addresses_worth_a_pinhole() {
        let addrs: Vec<Multiaddr> = [
            "/ip6/2a0f:1::10/tcp/4002",
            "/ip6/2a0f:1::10/udp/4002/quic-v1",
            "/ip6/fe80::1/tcp/4002",
            "/ip6/fd00::10/tcp/4002",
            "/ip6/::1/tcp/4002",
            "/ip4/192.168.1.10/tcp/4002",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let a: Ipv6Addr = "2a0f:1::10".parse().unwrap();
        assert_eq!(
            Port::v6_from_listen_addrs(&addrs),
            vec![(a, Port::Tcp(4002)), (a, Port::Quic(4002))]
        );
    }

    #[test]
    fn mappings_and_pinholes_as_text() {
        let m = Mapping {
            port: Port::Tcp(4002),
            internal: "192.168.1.10:4002".parse().unwrap(),
            external: "11.0.0.11:4002".parse().unwrap(),
            lease_secs: 3600,
            pinhole: None,
        };
        assert_eq!(m.to_string(), "192.168.1.10:4002 -> 11.0.0.11:4002 (tcp)");
        let p = Mapping {
            port: Port::Quic(4002),
            internal: "[2a0f:1::10]:4002".parse().unwrap(),
            external: "[2a0f:1::10]:4002".parse().unwrap(),
            lease_secs: 3600,
            pinhole: Some(7),
        };
        assert_eq!(p.to_string(), "pinhole [2a0f:1::10]:4002 (udp)");
        assert_eq!(
            p.multiaddr().to_string(),
            "/ip6/2a0f:1::10/udp/4002/quic-v1"
        );
    }

    #[test]
    fn mapping_multiaddrs() {
        let m = Mapping {
            port: Port::Quic(4002),
            internal: "192.168.1.10:4002".parse().unwrap(),
            external: "11.0.0.11:41000".parse().unwrap(),
            lease_secs: 3600,
            pinhole: None,
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
