//! Log redaction for Tor-only nodes: a Tor-only node must never write an IP address to its log,
//! not its own, not a peer's, not a relay's (the log may be read by someone the owner did not
//! mean to tell where the node or its friends are).
//!
//! [`redact`] is the pure function: it replaces IPv4 and IPv6 literals (compressed forms such
//! as `::1` and `::ffff:192.0.2.1` included, with or without `:port` or `[...]:port`) and the
//! value of every `/ip4/…`, `/ip6/…` and `/ip6zone/…` multiaddr component with `[redacted]`.
//! It leaves onion addresses, peer ids, caps, Rust paths (`kith_node::net`) and times
//! (`12:34:56`) alone: a literal counts only when it stands on its own (no letter, digit or `_`
//! right before or after it). Four-part version numbers (`0.4.9.1`) look like IPv4 addresses and
//! are redacted too: better too much than too little.
//!
//! [`MakeRedacting`] is the `tracing_subscriber` writer that applies it to every formatted log
//! line; the `kith` binary installs it when the node dir's `tor.mode` is `only` ([`wanted`]).
//! Turn ANSI colours off with it: escape codes glued to a value would hide its boundary.

use std::{borrow::Cow, io, net::Ipv6Addr};

use tracing_subscriber::fmt::MakeWriter;

use crate::{config::TorMode, nodedir::NodeDir};

/// What an address is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Whether the node in `dir` wants redacted logs: its configuration says `tor.mode = "only"`.
/// A missing or unreadable configuration gives `false` (no Tor-only node runs from it).
pub fn wanted(dir: &NodeDir) -> bool {
    dir.load_config().is_ok_and(|c| c.tor.mode == TorMode::Only)
}

/// `text` with every IP address literal and `/ip4|ip6|ip6zone/` multiaddr value replaced by
/// [`REDACTED`]. Borrowed when there was nothing to replace.
pub fn redact(text: &str) -> Cow<'_, str> {
    let after_multiaddrs = redact_multiaddrs(text);
    match redact_literals(&after_multiaddrs) {
        Cow::Borrowed(_) => after_multiaddrs,
        Cow::Owned(s) => Cow::Owned(s),
    }
}

/// Characters an IP literal (with its port) is made of.
fn is_addr_char(c: char) -> bool {
    c.is_ascii_hexdigit() || c == '.' || c == ':'
}

/// A character that glues a run of address characters to a word (so it isn't an address).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn redact_multiaddrs(text: &str) -> Cow<'_, str> {
    const PROTOCOLS: [&str; 3] = ["/ip4/", "/ip6/", "/ip6zone/"];
    let next = |from: usize| {
        PROTOCOLS
            .iter()
            .filter_map(|p| text[from..].find(p).map(|i| (from + i, p.len())))
            .min()
    };
    let Some(mut found) = next(0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    loop {
        let (at, len) = found;
        let value_start = at + len;
        // The value runs to the next component (or the end of the word).
        let value_end = if text[value_start..].starts_with(REDACTED) {
            value_start + REDACTED.len()
        } else {
            text[value_start..]
                .find(|c: char| c == '/' || c.is_whitespace() || "\"',;)]}>".contains(c))
                .map_or(text.len(), |i| value_start + i)
        };
        out.push_str(&text[copied..value_start]);
        if value_end > value_start {
            out.push_str(REDACTED);
        }
        copied = value_end;
        match next(value_end.max(value_start)) {
            Some(f) => found = f,
            None => break,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Dotted-quad IPv4: four decimal groups of 1-3 digits, each at most 255 (leading zeros
/// accepted, unlike `Ipv4Addr::from_str`, since some tools print them).
fn is_ipv4(s: &str) -> bool {
    let mut groups = 0;
    for g in s.split('.') {
        groups += 1;
        if g.is_empty() || g.len() > 3 || !g.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if g.parse::<u16>().map_or(true, |n| n > 255) {
            return false;
        }
    }
    groups == 4
}

fn is_ipv6(s: &str) -> bool {
    s.contains(':') && s.parse::<Ipv6Addr>().is_ok()
}

/// The part of a run of address characters to replace, as a byte range inside the run, or
/// `None` if the run holds no address.
fn address_in(run: &str) -> Option<(usize, usize)> {
    // Sentence punctuation after an address ("at 192.0.2.1." / "addr 192.0.2.1:") is no part
    // of it; but `2001:db8::` ends in colons of its own, so the run is tried whole first.
    let one_less = run.strip_suffix(['.', ':']).unwrap_or(run);
    let trimmed = run.trim_end_matches(['.', ':']);
    for core in [run, one_less, trimmed] {
        // `::` (and `:::`) alone say nothing: an address has a digit somewhere.
        if !core.bytes().any(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if is_ipv4(core) || is_ipv6(core) {
            return Some((0, core.len()));
        }
    }
    // ip4:port: the address goes, the port stays.
    if let Some((ip, port)) = trimmed.rsplit_once(':')
        && is_ipv4(ip)
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        return Some((0, ip.len()));
    }
    None
}

fn redact_literals(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut chars = text.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((start, c)) = chars.next() {
        if !is_addr_char(c) {
            prev = Some(c);
            continue;
        }
        let glued_before = prev.is_some_and(is_word_char);
        // The maximal run of address characters starting here (skipped whole when glued to a
        // word: no address starts in the middle of `kith_node::net` or `x1.2.3.4`).
        let mut end = start + c.len_utf8();
        let mut last = c;
        while let Some(&(i, d)) = chars.peek() {
            if !is_addr_char(d) {
                break;
            }
            end = i + d.len_utf8();
            last = d;
            chars.next();
        }
        prev = Some(last);
        let glued_after = text[end..].chars().next().is_some_and(is_word_char);
        if glued_before || glued_after {
            continue;
        }
        let Some((from, to)) = address_in(&text[start..end]) else {
            continue;
        };
        let (mut from, mut to) = (start + from, start + to);
        // `[::1]:4001` → `[redacted]:4001`, not `[[redacted]]:4001`.
        if text[..from].ends_with('[') && text[to..].starts_with(']') {
            from -= 1;
            to += 1;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..from]);
        o.push_str(REDACTED);
        copied = to;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// A `tracing_subscriber` writer maker that passes every log line through [`redact`] (when
/// `on`) before it reaches `inner`.
#[derive(Clone, Debug)]
pub struct MakeRedacting<M> {
    inner: M,
    on: bool,
}

impl<M> MakeRedacting<M> {
    /// Wraps `inner`; redacts only when `on`.
    pub fn new(inner: M, on: bool) -> Self {
        Self { inner, on }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for MakeRedacting<M> {
    type Writer = Redacting<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting {
            inner: self.inner.make_writer(),
            on: self.on,
        }
    }
}

/// One writer of [`MakeRedacting`]. The fmt layer writes each event with one `write_all` of the
/// whole formatted line, so an address is never split between two writes.
#[derive(Debug)]
pub struct Redacting<W> {
    inner: W,
    on: bool,
}

impl<W: io::Write> io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.on {
            return self.inner.write(buf);
        }
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    const ONION: &str = "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:41800";
    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn addresses_go() {
        for (input, want) in [
            ("dialing 192.0.2.1", "dialing [redacted]"),
            ("addr=10.0.0.7:4001 ok", "addr=[redacted]:4001 ok"),
            ("at 127.0.0.1.", "at [redacted]."),
            ("peer ::1 said", "peer [redacted] said"),
            ("remote [::1]:41000", "remote [redacted]:41000"),
            ("v6 2001:db8::17, v4", "v6 [redacted], v4"),
            ("mapped ::ffff:192.0.2.1)", "mapped [redacted])"),
            ("zone fe80::1%eth0", "zone [redacted]%eth0"),
            ("(\"198.51.100.3\")", "(\"[redacted]\")"),
            ("full fe80:0:0:0:202:b3ff:fe1e:8329 x", "full [redacted] x"),
            (
                "listening on /ip4/0.0.0.0/tcp/41000/p2p/12D3KooW",
                "listening on /ip4/[redacted]/tcp/41000/p2p/12D3KooW",
            ),
            (
                "[/ip6/::1/udp/9/quic-v1, /ip4/127.0.0.1/tcp/1]",
                "[/ip6/[redacted]/udp/9/quic-v1, /ip4/[redacted]/tcp/1]",
            ),
            (
                "/ip6zone/eth0/ip6/fe80::1",
                "/ip6zone/[redacted]/ip6/[redacted]",
            ),
            ("leading 010.001.000.001 zeros", "leading [redacted] zeros"),
            ("prefix 2001:db8:: routed", "prefix [redacted] routed"),
            ("ends 2001:db8::.", "ends [redacted]."),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn everything_else_stays() {
        for input in [
            ONION,
            PEER,
            "2025-01-02T12:34:56.123456Z  INFO kith_node::net: listening",
            "took 12:34:56 and 1.5s, 3.25 MiB/s, 100%",
            "kith:chk:aebqgdacamvdpr5u3ah2ynrdmjjn6ejc:3:10:1048576",
            "tor_netdir::foo: Requested 45 relays",
            "version 0.47.0, 1.2.3 and 300.1.1.1, deadbeef:cafe",
            "a::b::c and ::: and 1.2.3.4.5 and 256.1.1.1",
            "x1.2.3.4 and 1.2.3.4y and ab::cd_e",
            "/dns4/example.org/tcp/443/p2p/12D3KooW",
            "",
            "ünïcödé ✓ 12:00",
        ] {
            assert_eq!(redact(input), input, "{input}");
            assert!(matches!(redact(input), Cow::Borrowed(_)), "{input}");
        }
    }

    #[test]
    fn the_writer_redacts_only_when_on() {
        use std::io::Write as _;
        let line = b"connected to 192.0.2.1:80 via /ip6/::1/tcp/1\n";
        let mut on = Redacting {
            inner: Vec::new(),
            on: true,
        };
        on.write_all(line).unwrap();
        assert_eq!(
            String::from_utf8(on.inner).unwrap(),
            "connected to [redacted]:80 via /ip6/[redacted]/tcp/1\n"
        );
        let mut off = Redacting {
            inner: Vec::new(),
            on: false,
        };
        off.write_all(line).unwrap();
        assert_eq!(off.inner, line);
    }

    /// No address survives, whatever it is and whatever surrounds it.
    fn no_leak(ip: &str, text: &str) {
        let out = redact(text);
        assert!(!out.contains(ip), "{ip} left in {out:?} (from {text:?})");
        assert!(out.contains(REDACTED), "{out:?}");
        assert_eq!(redact(&out), out, "idempotent");
    }

    const BEFORE: [&str; 7] = ["", " ", "addr=", "(", "\"", "[", "at\t"];
    const AFTER: [&str; 8] = ["", " ", ",", ")", ".", ":", "\"", "\n"];

    proptest! {
        #[test]
        fn ipv4_literals_never_survive(
            ip in any::<u32>().prop_map(Ipv4Addr::from),
            port in any::<u16>(),
            b in 0..BEFORE.len(),
            a in 0..AFTER.len(),
        ) {
            let ip = ip.to_string();
            no_leak(&ip, &format!("{}{ip}{}", BEFORE[b], AFTER[a]));
            no_leak(&ip, &format!("{}{ip}:{port}{}", BEFORE[b], AFTER[a]));
            no_leak(&ip, &format!("dial /ip4/{ip}/tcp/{port}/p2p/{PEER}{}", AFTER[a]));
        }

        #[test]
        fn ipv6_literals_never_survive(
            ip in any::<u128>().prop_map(Ipv6Addr::from),
            port in any::<u16>(),
            b in 0..BEFORE.len(),
            a in 0..AFTER.len(),
        ) {
            // `::` alone (the unspecified address) says nothing and is left alone.
            prop_assume!(!ip.is_unspecified());
            // std prints the shortest form: `::`, `::1`, `::ffff:a.b.c.d`, `2001:db8::…`.
            let text = ip.to_string();
            no_leak(&text, &format!("{}{text}{}", BEFORE[b], AFTER[a]));
            let sa = SocketAddr::from((ip, port)).to_string();
            no_leak(&text, &format!("{}{sa}{}", BEFORE[b], AFTER[a]));
            no_leak(&text, &format!("{ONION} /ip6/{text}/udp/{port}/quic-v1{}", AFTER[a]));
        }

        #[test]
        fn compressed_ipv6_never_survives(
            head in proptest::collection::vec(any::<u16>(), 0..3),
            tail in proptest::collection::vec(any::<u16>(), 1..3),
        ) {
            // `a:b::c`-style forms written by hand (not only std's choice of compression).
            let hex = |v: &[u16]| v.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":");
            let text = format!("{}::{}", hex(&head), hex(&tail));
            prop_assume!(text.parse::<Ipv6Addr>().is_ok());
            no_leak(&text, &format!("from {text} on"));
        }

        #[test]
        fn never_panics_and_is_idempotent(text in "\\PC{0,80}") {
            let once = redact(&text).into_owned();
            prop_assert_eq!(redact(&once), once.clone());
        }

        #[test]
        fn words_without_addresses_stay(text in "[g-zG-Z_ /:.\\-]{0,60}") {
            // No hex digit, so no address: nothing may change (onion names, paths, times).
            let text = text.replace("/ip", "/xp");
            prop_assert_eq!(redact(&text), text.clone());
        }
    }
}
