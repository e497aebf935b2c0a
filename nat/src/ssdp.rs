//! Hearing a router announce itself: SSDP `NOTIFY` messages (UPnP device architecture 1.1,
//! section 1.2) that gateways multicast to 239.255.255.250:1900 when they start, periodically
//! while they run (`ssdp:alive`) and when they stop (`ssdp:byebye`).
//!
//! A node whose first UPnP attempt found no gateway otherwise retries on a backoff (30 s up to
//! 30 minutes); a router whose owner turns UPnP on, or that reboots and loses every mapping,
//! announces itself at once. [`parse_notify`] is the pure decoder (bounded, typed errors, no
//! panics on any input); [`Listener`] is the socket. What an announcement means for the node
//! is the policy's business ([`crate::policy::Event::GatewayAnnounced`]).
//!
//! Everyone on the LAN can send these datagrams; the policy treats them only as a hint to ask
//! the router now rather than later, at most once per [`crate::policy::MIN_ANNOUNCED_GAP_MS`].

use std::net::{Ipv4Addr, SocketAddrV4};

/// The SSDP multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
/// The SSDP port.
pub const PORT: u16 = 1900;
/// Longest datagram taken (a router's `NOTIFY` is about 400 bytes).
pub const MAX_DATAGRAM: usize = 2048;
/// Most header lines taken.
pub const MAX_HEADERS: usize = 32;
/// Longest gateway id (the `uuid:` part of the USN) taken.
pub const MAX_ID: usize = 128;

/// A gateway's announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// `ssdp:alive` (true) or `ssdp:byebye` (false).
    pub alive: bool,
    /// The device's identity: the USN up to its `::` (`uuid:...`).
    pub id: String,
    /// `BOOTID.UPNP.ORG`: grows each time the device restarts (UPnP 1.1; absent in 1.0).
    pub boot_id: Option<u32>,
}

/// Why a datagram is not a gateway's announcement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SsdpError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM}")]
    TooLong(usize),
    /// Not UTF-8 text.
    #[error("not text")]
    NotText,
    /// Another SSDP message (a search, a response) or not SSDP at all.
    #[error("not a NOTIFY")]
    NotNotify,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// A header line without a colon.
    #[error("malformed header line")]
    BadHeader,
    /// A required header is missing.
    #[error("no {0} header")]
    Missing(&'static str),
    /// `NTS` is neither `ssdp:alive` nor `ssdp:byebye` (e.g. `ssdp:update`).
    #[error("NTS {0:?} is neither alive nor byebye")]
    OtherNts(String),
    /// The device or service announced is not an internet gateway's.
    #[error("{0:?} is not an internet gateway")]
    NotAGateway(String),
    /// The USN is longer than [`MAX_ID`] or does not start with `uuid:`.
    #[error("bad USN")]
    BadUsn,
}

/// Whether an `NT` names an internet gateway device or its WAN connection services.
fn is_gateway(nt: &str) -> bool {
    const KINDS: [&str; 3] = [
        "urn:schemas-upnp-org:device:InternetGatewayDevice:",
        "urn:schemas-upnp-org:service:WANIPConnection:",
        "urn:schemas-upnp-org:service:WANPPPConnection:",
    ];
    KINDS.iter().any(|k| nt.starts_with(k))
}

/// Decodes one datagram received on the SSDP port.
pub fn parse_notify(datagram: &[u8]) -> Result<Announcement, SsdpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(SsdpError::TooLong(datagram.len()));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| SsdpError::NotText)?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let start = lines.next().unwrap_or_default().trim();
    if !start.eq_ignore_ascii_case("NOTIFY * HTTP/1.1") {
        return Err(SsdpError::NotNotify);
    }
    let (mut nt, mut nts, mut usn, mut boot_id) = (None, None, None, None);
    for (i, line) in lines.take_while(|l| !l.trim().is_empty()).enumerate() {
        if i >= MAX_HEADERS {
            return Err(SsdpError::TooManyHeaders);
        }
        let (name, value) = line.split_once(':').ok_or(SsdpError::BadHeader)?;
        let value = value.trim();
        match name.trim().to_ascii_uppercase().as_str() {
            "NT" => nt = Some(value),
            "NTS" => nts = Some(value),
            "USN" => usn = Some(value),
            "BOOTID.UPNP.ORG" => boot_id = value.parse().ok(),
            _ => {}
        }
    }
    let nt = nt.ok_or(SsdpError::Missing("NT"))?;
    let alive = match nts.ok_or(SsdpError::Missing("NTS"))? {
        "ssdp:alive" => true,
        "ssdp:byebye" => false,
        other => return Err(SsdpError::OtherNts(other.chars().take(64).collect())),
    };
    if !is_gateway(nt) {
        return Err(SsdpError::NotAGateway(nt.chars().take(96).collect()));
    }
    let usn = usn.ok_or(SsdpError::Missing("USN"))?;
    let id = usn.split("::").next().unwrap_or_default();
    if id.len() > MAX_ID || !id.starts_with("uuid:") {
        return Err(SsdpError::BadUsn);
    }
    Ok(Announcement {
        alive,
        id: id.to_owned(),
        boot_id,
    })
}

/// A socket on the SSDP port that hears gateways' announcements.
pub struct Listener {
    socket: tokio::net::UdpSocket,
}

impl Listener {
    /// Binds `0.0.0.0:port` shared with other programs (`SO_REUSEADDR`, `SO_REUSEPORT`: every
    /// socket in the group gets each multicast datagram) and joins [`GROUP`] on the interface
    /// of the route to it (the default route, where the router is). Must run inside a tokio
    /// runtime. A failed join is logged, not fatal: the socket then only hears datagrams sent
    /// to it directly.
    pub fn bind(port: u16) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: shared_multicast_socket(port, GROUP)?,
        })
    }

    /// The local address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }

    /// The next gateway announcement; other datagrams are skipped (a receive error waits a
    /// second and goes on). Cancel-safe.
    pub async fn next(&self) -> Announcement {
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        loop {
            let (n, from) = next_datagram(&self.socket, &mut buf).await;
            match parse_notify(&buf[..n]) {
                Ok(a) => return a,
                Err(e) => tracing::trace!(%from, error = %e, "SSDP datagram skipped"),
            }
        }
    }
}

/// The next datagram on `socket` into `buf` (its length and sender); a receive error waits a
/// second and tries again. Cancel-safe.
pub(crate) async fn next_datagram(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> (usize, std::net::SocketAddr) {
    loop {
        match socket.recv_from(buf).await {
            Ok(got) => return got,
            Err(e) => {
                tracing::debug!(error = %e, "receiving a router's announcement failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// A UDP socket on `0.0.0.0:port` shared with other programs (`SO_REUSEADDR`,
/// `SO_REUSEPORT`: every socket in the group gets each multicast datagram) that joined `group`
/// on the interface of the route to it. A failed join is logged, not fatal: the socket then
/// hears only datagrams sent to it directly. Must run inside a tokio runtime.
pub(crate) fn shared_multicast_socket(
    port: u16,
    group: Ipv4Addr,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    if let Err(e) = socket.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED) {
        tracing::info!(error = %e, %group, port, "not listening for routers' announcements there (no multicast route)");
    }
    tokio::net::UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What miniupnpd 2.3 sends when it starts (IGDv2).
    const MINIUPNPD: &str = "NOTIFY * HTTP/1.1\r\n\
        HOST: 239.255.255.250:1900\r\n\
        CACHE-CONTROL: max-age=120\r\n\
        LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\
        SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.3\r\n\
        NT: urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n\
        USN: uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427::urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n\
        NTS: ssdp:alive\r\n\
        OPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\
        01-NLS: 1\r\n\
        BOOTID.UPNP.ORG: 7\r\n\
        CONFIGID.UPNP.ORG: 1337\r\n\
        \r\n";

    #[test]
    fn a_gateways_alive_and_byebye_are_read() {
        let a = parse_notify(MINIUPNPD.as_bytes()).unwrap();
        assert_eq!(
            a,
            Announcement {
                alive: true,
                id: "uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                boot_id: Some(7),
            }
        );
        let bye = MINIUPNPD
            .replace("ssdp:alive", "ssdp:byebye")
            .replace(
                "NT: urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                "nt: urn:schemas-upnp-org:service:WANIPConnection:2",
            )
            .replace("BOOTID.UPNP.ORG: 7\r\n", "");
        let b = parse_notify(bye.as_bytes()).unwrap();
        assert!(!b.alive);
        assert_eq!(b.boot_id, None);
        assert_eq!(b.id, a.id);
    }

    #[test]
    fn other_ssdp_traffic_is_told_apart() {
        let printer = MINIUPNPD.replace(
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\nUSN",
            "urn:schemas-upnp-org:device:Printer:1\r\nUSN",
        );
        assert!(matches!(
            parse_notify(printer.as_bytes()),
            Err(SsdpError::NotAGateway(_))
        ));
        let search = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n\r\n";
        assert_eq!(parse_notify(search.as_bytes()), Err(SsdpError::NotNotify));
        let update = MINIUPNPD.replace("ssdp:alive", "ssdp:update");
        assert!(matches!(
            parse_notify(update.as_bytes()),
            Err(SsdpError::OtherNts(_))
        ));
        let no_usn = MINIUPNPD.replace("USN:", "X-USN:");
        assert_eq!(
            parse_notify(no_usn.as_bytes()),
            Err(SsdpError::Missing("USN"))
        );
        let long = format!("{MINIUPNPD}{}", "x".repeat(MAX_DATAGRAM));
        assert!(matches!(
            parse_notify(long.as_bytes()),
            Err(SsdpError::TooLong(_))
        ));
        let many = format!(
            "NOTIFY * HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse_notify(many.as_bytes()),
            Err(SsdpError::TooManyHeaders)
        );
        assert_eq!(parse_notify(&[0xff, 0xfe]), Err(SsdpError::NotText));
    }

    proptest! {
        /// Any bytes give an announcement or a typed error, never a panic.
        #[test]
        fn any_datagram_decodes_or_errs(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse_notify(&bytes);
        }

        /// Mangled real announcements too (headers cut, reordered, doubled).
        #[test]
        fn any_mangled_notify_decodes_or_errs(cut in 0..MINIUPNPD.len(), dup in 0..MINIUPNPD.len()) {
            let s = format!("{}{}", &MINIUPNPD[..cut], &MINIUPNPD[dup..]);
            let _ = parse_notify(s.as_bytes());
        }
    }

    #[tokio::test]
    async fn the_listener_hears_an_announcement_and_skips_the_rest() {
        let l = Listener::bind(0).unwrap();
        let port = l.local_addr().unwrap().port();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in [
            "junk".as_bytes(),
            b"M-SEARCH * HTTP/1.1\r\n\r\n",
            MINIUPNPD.as_bytes(),
        ] {
            tx.send_to(d, ("127.0.0.1", port)).unwrap();
        }
        let a = tokio::time::timeout(std::time::Duration::from_secs(10), l.next())
            .await
            .expect("announcement heard within 10 s");
        assert_eq!(a.boot_id, Some(7));
    }
}
