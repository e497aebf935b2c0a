//! NAT-PMP (RFC 6886) port mappings, for routers that speak it instead of (or besides) UPnP
//! IGD: Apple's, and pfSense/OPNsense/OpenWrt setups with only NAT-PMP switched on.
//!
//! The codec ([`Request`], [`decode`]) is pure and bounded: a response is exactly 12 or 16
//! bytes, anything else is a typed [`DecodeError`]. [`Client`] does the IO: requests go to the
//! default gateway's UDP port 5351 from a connected socket (so only the gateway's answers are
//! read), retransmitted after 250 ms doubling, four times at most (3.75 s; the RFC allows nine,
//! 64 s, which would hold up the relay fallback for a minute when no router answers). The
//! default gateway comes from the kernel's route table ([`default_gateway`], Linux).
//!
//! [`crate::upnp::Mapper`] falls back to NAT-PMP when no UPnP gateway answers. [`Listener`]
//! hears the gateway announce (NAT-PMP, or PCP `ANNOUNCE` as miniupnpd sends) that it started
//! or its external address changed, so mappings come back at once instead of at the renewal.

use std::{net::Ipv4Addr, time::Duration};

/// The port a NAT-PMP server listens on.
pub const SERVER_PORT: u16 = 5351;
/// The first retransmission delay (RFC 6886 3.1), doubled after each try.
pub const FIRST_WAIT: Duration = Duration::from_millis(250);
/// Tries per request.
pub const TRIES: u32 = 4;

/// What a mapping carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Opcode 1.
    Udp,
    /// Opcode 2.
    Tcp,
}

impl Proto {
    fn opcode(self) -> u8 {
        match self {
            Proto::Udp => 1,
            Proto::Tcp => 2,
        }
    }
}

/// A request to the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// "What is your external address?" (opcode 0).
    ExternalAddress,
    /// Map `internal` to `external` (a suggestion) for `lifetime_secs`; a lifetime of 0 (with
    /// external port 0) deletes the mapping.
    Map {
        /// UDP or TCP.
        proto: Proto,
        /// The port on this host.
        internal: u16,
        /// The external port asked for (the gateway may give another).
        external: u16,
        /// Seconds.
        lifetime_secs: u32,
    },
}

impl Request {
    /// The request's bytes (2 or 12).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::ExternalAddress => vec![0, 0],
            Request::Map {
                proto,
                internal,
                external,
                lifetime_secs,
            } => {
                let mut b = vec![0, proto.opcode(), 0, 0];
                b.extend_from_slice(&internal.to_be_bytes());
                b.extend_from_slice(&external.to_be_bytes());
                b.extend_from_slice(&lifetime_secs.to_be_bytes());
                b
            }
        }
    }

    /// Whether `r` answers this request (same opcode, and for a mapping the same port).
    pub fn answered_by(&self, r: &Response) -> bool {
        match (self, r) {
            (Request::ExternalAddress, Response::ExternalAddress { .. }) => true,
            (
                Request::Map {
                    proto, internal, ..
                },
                Response::Mapped {
                    proto: p,
                    internal: i,
                    ..
                },
            ) => proto == p && internal == i,
            _ => false,
        }
    }
}

/// A successful answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// The gateway's external address.
    ExternalAddress {
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A mapping in place (or deleted, with lifetime 0).
    Mapped {
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// UDP or TCP.
        proto: Proto,
        /// The port on this host.
        internal: u16,
        /// The external port the gateway gave.
        external: u16,
        /// The lifetime granted, in seconds.
        lifetime_secs: u32,
    },
}

/// Why a response was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not 12 or 16 bytes, or not the size its opcode has.
    #[error("a NAT-PMP response of {0} bytes")]
    Length(usize),
    /// Not version 0.
    #[error("NAT-PMP version {0}")]
    Version(u8),
    /// Not a response opcode kith asks for.
    #[error("NAT-PMP response opcode {0}")]
    Opcode(u8),
    /// The gateway said no (RFC 6886 3.5).
    #[error("the gateway answered {code} ({})", result_text(*.code))]
    Result {
        /// The result code.
        code: u16,
    },
}

impl DecodeError {
    /// Whether the gateway refused for lack of permission (result code 2).
    pub fn is_refusal(&self) -> bool {
        matches!(self, DecodeError::Result { code: 2 })
    }
}

fn result_text(code: u16) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized or refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result code",
    }
}

/// Decodes a gateway's answer.
pub fn decode(b: &[u8]) -> Result<Response, DecodeError> {
    if b.len() != 12 && b.len() != 16 {
        return Err(DecodeError::Length(b.len()));
    }
    if b[0] != 0 {
        return Err(DecodeError::Version(b[0]));
    }
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let op = b[1];
    let proto = match op {
        128 => None,
        129 => Some(Proto::Udp),
        130 => Some(Proto::Tcp),
        _ => return Err(DecodeError::Opcode(op)),
    };
    let want = if proto.is_some() { 16 } else { 12 };
    if b.len() != want {
        return Err(DecodeError::Length(b.len()));
    }
    let code = u16_at(2);
    if code != 0 {
        return Err(DecodeError::Result { code });
    }
    let epoch = u32_at(4);
    Ok(match proto {
        None => Response::ExternalAddress {
            epoch,
            ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        },
        Some(proto) => Response::Mapped {
            epoch,
            proto,
            internal: u16_at(8),
            external: u16_at(10),
            lifetime_secs: u32_at(12),
        },
    })
}

/// The IPv4 default gateway in a `/proc/net/route` table: of the default routes that are up
/// and go through a gateway, the one with the lowest metric. Lines that do not parse are
/// skipped.
pub fn default_gateway_in(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags, metric, mask) = (
                f.get(1)?,
                f.get(2)?,
                u16::from_str_radix(f.get(3)?, 16).ok()?,
                f.get(6)?.parse::<u32>().ok()?,
                f.get(7)?,
            );
            let up_via_gateway = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            if *dest != "00000000" || *mask != "00000000" || !up_via_gateway {
                return None;
            }
            // The kernel prints the address as a host-order u32 of network-order bytes.
            let raw = u32::from_str_radix(gw, 16).ok()?;
            Some((metric, Ipv4Addr::from(raw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, ip)| ip)
}

/// This host's IPv4 default gateway (Linux: the route table of the calling thread's network
/// namespace, `/proc/thread-self/net/route`, else `/proc/net/route`, which is the main
/// thread's; elsewhere none).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/thread-self/net/route")
        .or_else(|_| std::fs::read_to_string("/proc/net/route"))
        .ok()?;
    default_gateway_in(&table)
}

/// The port gateways send their announcements to (multicast to [`ANNOUNCE_GROUP`]).
pub const ANNOUNCE_PORT: u16 = 5350;
/// The all-hosts group announcements go to.
pub const ANNOUNCE_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
/// Announcements closer together than this are one burst (RFC 6886 3.2.1: up to ten, 250 ms
/// apart doubling, so about two minutes; RFC 6887 PCP ANNOUNCE alike).
pub const BURST_MS: u64 = 180_000;
/// Longest PCP message (RFC 6887 7).
const MAX_PCP: usize = 1100;

/// Decodes a gateway's announcement: a NAT-PMP external-address response (sent when it starts
/// or its external address changes, RFC 6886 3.2.1) or a PCP `ANNOUNCE` response (RFC 6887
/// 14.1, sent when it starts or may have lost its mappings: what miniupnpd sends). Returns
/// the gateway's epoch.
pub fn parse_announcement(b: &[u8]) -> Result<u32, DecodeError> {
    match b.first() {
        Some(0) => match decode(b)? {
            Response::ExternalAddress { epoch, .. } => Ok(epoch),
            Response::Mapped { .. } => Err(DecodeError::Opcode(b[1])),
        },
        Some(2) => {
            if b.len() < 24 || b.len() > MAX_PCP || !b.len().is_multiple_of(4) {
                return Err(DecodeError::Length(b.len()));
            }
            // R bit set, opcode 0 (ANNOUNCE).
            if b[1] != 0x80 {
                return Err(DecodeError::Opcode(b[1]));
            }
            if b[3] != 0 {
                return Err(DecodeError::Result { code: b[3].into() });
            }
            Ok(u32::from_be_bytes([b[8], b[9], b[10], b[11]]))
        }
        Some(v) => Err(DecodeError::Version(*v)),
        None => Err(DecodeError::Length(0)),
    }
}

/// Collapses each gateway's burst of announcements into one.
#[derive(Debug, Default)]
pub struct Bursts {
    last: Vec<(Ipv4Addr, u64)>,
}

impl Bursts {
    /// Gateways remembered at most.
    pub const MAX: usize = 8;

    /// Whether an announcement from `from` at `now_ms` starts a burst (none from it in the
    /// last [`BURST_MS`]).
    pub fn first_of_burst(&mut self, from: Ipv4Addr, now_ms: u64) -> bool {
        match self.last.iter_mut().find(|(a, _)| *a == from) {
            Some((_, at)) => {
                let first = now_ms.saturating_sub(*at) >= BURST_MS;
                *at = now_ms;
                first
            }
            None => {
                if self.last.len() >= Self::MAX {
                    self.last.remove(0);
                }
                self.last.push((from, now_ms));
                true
            }
        }
    }
}

/// A socket on [`ANNOUNCE_PORT`] that hears the default gateway say its mappings may be lost.
pub struct Listener {
    socket: tokio::net::UdpSocket,
    bursts: std::sync::Mutex<Bursts>,
    started: std::time::Instant,
}

impl Listener {
    /// Binds `0.0.0.0:port` shared with other programs and joins [`ANNOUNCE_GROUP`] (a failed
    /// join is logged: the socket then hears only datagrams sent to it directly). Must run
    /// inside a tokio runtime.
    pub fn bind(port: u16) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: crate::ssdp::shared_multicast_socket(port, ANNOUNCE_GROUP)?,
            bursts: std::sync::Mutex::default(),
            started: std::time::Instant::now(),
        })
    }

    /// The next burst of announcements from this host's default gateway: its address.
    /// Datagrams from anyone else, that do not decode, or later in a burst are skipped.
    /// Cancel-safe.
    pub async fn next(&self) -> Ipv4Addr {
        let mut buf = [0u8; MAX_PCP + 1];
        loop {
            let (n, from) = crate::ssdp::next_datagram(&self.socket, &mut buf).await;
            let std::net::SocketAddr::V4(from) = from else {
                continue;
            };
            let epoch = match parse_announcement(&buf[..n]) {
                Ok(e) => e,
                Err(e) => {
                    tracing::trace!(%from, error = %e, "NAT-PMP datagram skipped");
                    continue;
                }
            };
            if default_gateway() != Some(*from.ip()) {
                tracing::debug!(%from, "a NAT-PMP announcement not from the default gateway");
                continue;
            }
            let now_ms = self.started.elapsed().as_millis() as u64;
            let first = self
                .bursts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_of_burst(*from.ip(), now_ms);
            tracing::debug!(%from, epoch, first, "the gateway announced itself (NAT-PMP/PCP)");
            if first {
                return *from.ip();
            }
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answered (or the gateway's port is closed: no NAT-PMP server there).
    #[error("no NAT-PMP answer from {0}")]
    NoAnswer(Ipv4Addr),
    /// The gateway answered with an error.
    #[error("NAT-PMP: {0}")]
    Refused(#[from] DecodeError),
    /// The socket failed.
    #[error("NAT-PMP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Talks NAT-PMP to one gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The gateway's NAT-PMP server.
    pub server: std::net::SocketAddrV4,
}

impl Client {
    /// The client of `gateway`'s server (port [`SERVER_PORT`]).
    pub fn of(gateway: Ipv4Addr) -> Client {
        Client {
            server: std::net::SocketAddrV4::new(gateway, SERVER_PORT),
        }
    }

    /// Sends `req` and waits for its answer (see the module docs for the retransmissions).
    /// Answers to other requests and bytes that do not decode are ignored; an answer with an
    /// error code is returned as [`ClientError::Refused`].
    pub async fn ask(&self, req: Request) -> Result<Response, ClientError> {
        let sock = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        sock.connect(self.server).await?;
        let bytes = req.encode();
        let mut wait = FIRST_WAIT;
        let mut buf = [0u8; 64];
        for _ in 0..TRIES {
            sock.send(&bytes).await?;
            let until = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                    Err(_) => break,
                    // ICMP port unreachable: nothing listens there.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(ClientError::NoAnswer(*self.server.ip()));
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(n)) => match decode(&buf[..n]) {
                        Ok(r) if req.answered_by(&r) => return Ok(r),
                        // An error code for this opcode is this request's answer.
                        Err(e @ DecodeError::Result { .. })
                            if buf[1] == 128 + request_opcode(&req) =>
                        {
                            return Err(e.into());
                        }
                        Ok(_) | Err(_) => {
                            tracing::debug!(bytes = n, "NAT-PMP: ignored an answer");
                        }
                    },
                }
            }
            wait *= 2;
        }
        Err(ClientError::NoAnswer(*self.server.ip()))
    }
}

fn request_opcode(req: &Request) -> u8 {
    match req {
        Request::ExternalAddress => 0,
        Request::Map { proto, .. } => proto.opcode(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_as_the_rfc_lays_them_out() {
        assert_eq!(Request::ExternalAddress.encode(), [0, 0]);
        let map = Request::Map {
            proto: Proto::Tcp,
            internal: 4002,
            external: 4002,
            lifetime_secs: 3600,
        };
        assert_eq!(
            map.encode(),
            [0, 2, 0, 0, 0x0f, 0xa2, 0x0f, 0xa2, 0, 0, 0x0e, 0x10]
        );
    }

    #[test]
    fn responses_decode_and_errors_are_typed() {
        let ext = [0, 128, 0, 0, 0, 0, 0, 9, 11, 0, 0, 11];
        assert_eq!(
            decode(&ext),
            Ok(Response::ExternalAddress {
                epoch: 9,
                ip: Ipv4Addr::new(11, 0, 0, 11)
            })
        );
        let mapped = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x0f, 0xa2, 0x0f, 0xa3, 0, 0, 0x0e, 0x10,
        ];
        let r = decode(&mapped).unwrap();
        assert_eq!(
            r,
            Response::Mapped {
                epoch: 9,
                proto: Proto::Udp,
                internal: 4002,
                external: 4003,
                lifetime_secs: 3600
            }
        );
        let udp = Request::Map {
            proto: Proto::Udp,
            internal: 4002,
            external: 4002,
            lifetime_secs: 3600,
        };
        assert!(udp.answered_by(&r));
        let tcp = Request::Map {
            proto: Proto::Tcp,
            internal: 4002,
            external: 4002,
            lifetime_secs: 3600,
        };
        assert!(!tcp.answered_by(&r));
        let refused = [0, 130, 0, 2, 0, 0, 0, 9, 0x0f, 0xa2, 0, 0, 0, 0, 0, 0];
        assert!(decode(&refused).unwrap_err().is_refusal());
        assert_eq!(decode(&[0, 128, 0, 0]), Err(DecodeError::Length(4)));
        assert_eq!(decode(&mapped[..12]), Err(DecodeError::Length(12)));
        assert_eq!(decode(&[1; 12]), Err(DecodeError::Version(1)));
        assert_eq!(
            decode(&[0, 131, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Opcode(131))
        );
    }

    /// What miniupnpd 2.3 multicasts when it starts (a PCP ANNOUNCE response).
    const MINIUPNPD_ANNOUNCE: &str = "02800000000000000000d00b000000000000000000000000";

    #[test]
    fn announcements_of_both_kinds_decode() {
        let pcp: Vec<u8> = (0..MINIUPNPD_ANNOUNCE.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&MINIUPNPD_ANNOUNCE[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(parse_announcement(&pcp), Ok(0xd00b));
        let natpmp = [0, 128, 0, 0, 0, 0, 0, 7, 11, 0, 0, 11];
        assert_eq!(parse_announcement(&natpmp), Ok(7));
        let mut refused = pcp.clone();
        refused[3] = 1;
        assert!(parse_announcement(&refused).is_err());
        let mut map = pcp.clone();
        map[1] = 0x81;
        assert_eq!(parse_announcement(&map), Err(DecodeError::Opcode(0x81)));
        assert_eq!(parse_announcement(&pcp[..20]), Err(DecodeError::Length(20)));
        assert_eq!(parse_announcement(&[]), Err(DecodeError::Length(0)));
        assert_eq!(parse_announcement(&[1, 0]), Err(DecodeError::Version(1)));
    }

    #[test]
    fn a_burst_of_announcements_counts_once() {
        let (gw, other) = (Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(10, 0, 0, 1));
        let mut b = Bursts::default();
        assert!(b.first_of_burst(gw, 0));
        // RFC 6886's ten, 250 ms doubling.
        let mut at = 0;
        for i in 0..9 {
            at += 250 << i;
            assert!(!b.first_of_burst(gw, at), "datagram {} of the burst", i + 2);
        }
        assert!(b.first_of_burst(other, at));
        assert!(b.first_of_burst(gw, at + BURST_MS), "the next restart");
        for i in 0..20 {
            b.first_of_burst(Ipv4Addr::from(i as u32), at);
        }
        assert!(b.last.len() <= Bursts::MAX);
    }

    #[test]
    fn the_default_gateway_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n\
            garbage line\n";
        assert_eq!(
            default_gateway_in(table),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(default_gateway_in("Iface\tDestination\n"), None);
    }

    /// A server on loopback that lets the first request go unanswered (the client must send
    /// it again), then answers with an unrelated mapping and garbage (both ignored) before the
    /// answer.
    #[tokio::test]
    async fn the_client_retransmits_and_takes_only_its_answer() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!()
        };
        let serve = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], [0, 0], "an external-address request");
            let t = std::time::Instant::now();
            let (n, from2) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!((n, from2), (2, from), "the same request again");
            let waited = t.elapsed();
            let stray = [
                0, 130, 0, 0, 0, 0, 0, 9, 0x0f, 0xa2, 0x0f, 0xa2, 0, 0, 0x0e, 0x10,
            ];
            server.send_to(&stray, from).await.unwrap();
            server.send_to(&[0xff; 40], from).await.unwrap();
            let answer = [0, 128, 0, 0, 0, 0, 0, 9, 11, 0, 0, 11];
            server.send_to(&answer, from).await.unwrap();
            waited
        });
        let r = Client { server: addr }
            .ask(Request::ExternalAddress)
            .await
            .unwrap();
        assert_eq!(
            r,
            Response::ExternalAddress {
                epoch: 9,
                ip: Ipv4Addr::new(11, 0, 0, 11)
            }
        );
        let waited = serve.await.unwrap();
        assert!(waited >= FIRST_WAIT / 2, "resent after {waited:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_no_answer_at_once() {
        // A port nothing listens on: the kernel's ICMP port unreachable ends the wait.
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = free.local_addr().unwrap() else {
            unreachable!()
        };
        drop(free);
        let t = std::time::Instant::now();
        let r = Client { server: addr }.ask(Request::ExternalAddress).await;
        assert!(matches!(r, Err(ClientError::NoAnswer(_))), "{r:?}");
        assert!(t.elapsed() < FIRST_WAIT * 2, "took {:?}", t.elapsed());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_or_fail(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(r) = decode(&b) {
                prop_assert!(b.len() == 12 || b.len() == 16);
                let size_fits = matches!(
                    (r, b.len()),
                    (Response::ExternalAddress { .. }, 12) | (Response::Mapped { .. }, 16)
                );
                prop_assert!(size_fits);
            }
        }

        #[test]
        fn arbitrary_announcements_decode_or_fail(b in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if parse_announcement(&b).is_ok() {
                prop_assert!(b.len() == 12 || (24..=MAX_PCP).contains(&b.len()));
            }
        }

        #[test]
        fn arbitrary_route_tables_never_panic(s in "\\PC{0,400}") {
            let _ = default_gateway_in(&s);
        }
    }
}
