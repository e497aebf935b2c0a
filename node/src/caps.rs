//! Capabilities: the only credential for data (Tahoe-LAFS's caps).
//!
//! - [`ChkReadCap`] `kith:chk:<key>:<ueb hash>:<k>:<n>:<size>` reads an immutable file;
//! - [`ChkVerifyCap`] `kith:chk-verify:<storage index>:<ueb hash>:<k>:<n>:<size>` is derived one
//!   way from the read cap ([`ChkReadCap::verify_cap`]): it lets a node check and repair shares
//!   without being able to decrypt;
//! - [`LitCap`] `kith:lit:<data>` holds files of at most 55 bytes inside the cap;
//! - [`SskCap`] names a mutable slot (see `mutable`): `kith:ssk:<write key>:<fingerprint>`
//!   writes, `kith:ssk-ro:<read key>:<fingerprint>` reads, `kith:ssk-verify:<storage
//!   index>:<fingerprint>` checks and repairs; each is derived one way from the one before
//!   ([`Cap::attenuate`]). A directory is a slot holding a directory table:
//!   `kith:dir:`, `kith:dir-ro:`, `kith:dir-verify:` with the same fields;
//! - an immutable directory (a snapshot) is a CHK or LIT file holding a directory table:
//!   `kith:dir-imm:<chk fields>`, `kith:dir-lit:<data>`, `kith:dir-imm-verify:<verify fields>`.
//!
//! Binary fields are lowercase RFC 4648 base32 without padding (upper case is accepted).
//! `Display` and `FromStr` round-trip; `Debug` redacts keys and LIT contents so caps never leak
//! into logs. Parsing is bounded and returns a [`CapParseError`] naming the bad field.

use std::{fmt, str::FromStr};

use data_encoding::BASE32_NOPAD;

use crate::codec::{Key, LIT_THRESHOLD, storage_index};

/// Longest cap text accepted.
const MAX_CAP_LEN: usize = 512;

/// Read cap of an immutable (CHK) file.
#[derive(Clone, PartialEq, Eq)]
pub struct ChkReadCap {
    /// The AES-256 key.
    pub key: Key,
    /// Hash of the URI extension block.
    pub ueb_hash: [u8; 32],
    /// k.
    pub needed: u8,
    /// n.
    pub total: u8,
    /// File size.
    pub size: u64,
}

/// Verify cap of an immutable file: can check shares, cannot decrypt.
#[derive(Clone, PartialEq, Eq)]
pub struct ChkVerifyCap {
    /// Storage index.
    pub storage_index: [u8; 16],
    /// Hash of the URI extension block.
    pub ueb_hash: [u8; 32],
    /// k.
    pub needed: u8,
    /// n.
    pub total: u8,
    /// File size.
    pub size: u64,
}

/// A literal file (at most 55 bytes) stored in the cap.
#[derive(Clone, PartialEq, Eq)]
pub struct LitCap {
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// Any read cap.
#[derive(Clone, PartialEq, Eq)]
pub enum ReadCap {
    /// Immutable, erasure-coded.
    Chk(ChkReadCap),
    /// Literal.
    Lit(LitCap),
}

/// Any cap this version knows.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Cap {
    /// A read cap of an immutable file.
    Read(ReadCap),
    /// A verify cap of an immutable file.
    Verify(ChkVerifyCap),
    /// A mutable file or directory (write, read or verify).
    Ssk(SskCap),
    /// An immutable directory (a snapshot): its table is stored as this immutable file.
    ImmDir(ReadCap),
    /// The verify cap of an immutable directory.
    ImmDirVerify(ChkVerifyCap),
}

/// What a mutable-slot cap lets its holder do, with the secret that does it.
#[derive(Clone, PartialEq, Eq)]
pub enum SskAccess {
    /// Write (and read): the write key, from which the signing key's encryption key, the read
    /// key and the write enablers derive.
    Write {
        /// The write key.
        writekey: [u8; 32],
    },
    /// Read: the read key (derives the data keys and the storage index).
    Read {
        /// The read key.
        readkey: [u8; 32],
    },
    /// Check and repair: the storage index only.
    Verify {
        /// The storage index.
        storage_index: [u8; 16],
    },
}

/// A cap of a mutable slot: a mutable file or a directory.
#[derive(Clone, PartialEq, Eq)]
pub struct SskCap {
    /// Whether the slot holds a directory table.
    pub dir: bool,
    /// The access level and its secret.
    pub access: SskAccess,
    /// SHA-256 (tagged) of the slot's RSA public key: every version must be signed by it.
    pub fingerprint: [u8; 32],
}

const WRITE_TO_READ_TAG: &str = "kith:ssk:readkey:v1";
const READ_TO_SI_TAG: &str = "kith:ssk:storage-index:v1";

/// The read key of a slot from its write key.
pub fn ssk_readkey(writekey: &[u8; 32]) -> [u8; 32] {
    crate::hash::tagged_hash(WRITE_TO_READ_TAG, &[writekey])
}

/// The storage index of a slot from its read key.
pub fn ssk_storage_index(readkey: &[u8; 32]) -> [u8; 16] {
    let h = crate::hash::tagged_hash(READ_TO_SI_TAG, &[readkey]);
    let mut si = [0u8; 16];
    si.copy_from_slice(&h[..16]);
    si
}

impl SskCap {
    /// The write key, when this is a write cap.
    pub fn writekey(&self) -> Option<&[u8; 32]> {
        match &self.access {
            SskAccess::Write { writekey } => Some(writekey),
            _ => None,
        }
    }

    /// The read key, when this cap can read.
    pub fn readkey(&self) -> Option<[u8; 32]> {
        match &self.access {
            SskAccess::Write { writekey } => Some(ssk_readkey(writekey)),
            SskAccess::Read { readkey } => Some(*readkey),
            SskAccess::Verify { .. } => None,
        }
    }

    /// The storage index.
    pub fn storage_index(&self) -> [u8; 16] {
        match &self.access {
            SskAccess::Verify { storage_index } => *storage_index,
            _ => ssk_storage_index(&self.readkey().unwrap_or_default()),
        }
    }

    /// The read-only form (a read cap stays itself; a verify cap stays itself).
    pub fn read_only(&self) -> SskCap {
        match &self.access {
            SskAccess::Write { .. } => SskCap {
                dir: self.dir,
                access: SskAccess::Read {
                    readkey: self.readkey().unwrap_or_default(),
                },
                fingerprint: self.fingerprint,
            },
            _ => self.clone(),
        }
    }

    /// The verify form.
    pub fn verify_cap(&self) -> SskCap {
        SskCap {
            dir: self.dir,
            access: SskAccess::Verify {
                storage_index: self.storage_index(),
            },
            fingerprint: self.fingerprint,
        }
    }

    fn prefix(&self) -> &'static str {
        match (&self.access, self.dir) {
            (SskAccess::Write { .. }, false) => "ssk",
            (SskAccess::Read { .. }, false) => "ssk-ro",
            (SskAccess::Verify { .. }, false) => "ssk-verify",
            (SskAccess::Write { .. }, true) => "dir",
            (SskAccess::Read { .. }, true) => "dir-ro",
            (SskAccess::Verify { .. }, true) => "dir-verify",
        }
    }
}

impl fmt::Display for SskCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match &self.access {
            SskAccess::Write { writekey } => b32(writekey),
            SskAccess::Read { readkey } => b32(readkey),
            SskAccess::Verify { storage_index } => b32(storage_index),
        };
        write!(
            f,
            "kith:{}:{}:{}",
            self.prefix(),
            secret,
            b32(&self.fingerprint)
        )
    }
}

impl fmt::Debug for SskCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.access {
            SskAccess::Write { .. } => "write",
            SskAccess::Read { .. } => "read",
            SskAccess::Verify { .. } => "verify",
        };
        write!(
            f,
            "SskCap({}{what}, key=<redacted>, si={}…)",
            if self.dir { "dir " } else { "" },
            short(&self.storage_index())
        )
    }
}

impl Cap {
    /// The next weaker cap, computed offline: write -> read -> verify (`None` for a verify cap
    /// and for LIT caps, which have nothing weaker).
    pub fn attenuate(&self) -> Option<Cap> {
        match self {
            Cap::Read(ReadCap::Chk(c)) => Some(Cap::Verify(c.verify_cap())),
            Cap::Read(ReadCap::Lit(_)) | Cap::Verify(_) | Cap::ImmDirVerify(_) => None,
            Cap::ImmDir(ReadCap::Chk(c)) => Some(Cap::ImmDirVerify(c.verify_cap())),
            Cap::ImmDir(ReadCap::Lit(_)) => None,
            Cap::Ssk(s) => match s.access {
                SskAccess::Write { .. } => Some(Cap::Ssk(s.read_only())),
                SskAccess::Read { .. } => Some(Cap::Ssk(s.verify_cap())),
                SskAccess::Verify { .. } => None,
            },
        }
    }

    /// The read-only form of this cap (itself when it cannot write).
    pub fn read_only(&self) -> Cap {
        match self {
            Cap::Ssk(s) => Cap::Ssk(s.read_only()),
            other => other.clone(),
        }
    }

    /// Whether the cap names a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Cap::ImmDir(_) | Cap::ImmDirVerify(_))
            || matches!(self, Cap::Ssk(s) if s.dir)
    }

    /// Whether the cap can change what it names.
    pub fn is_writable(&self) -> bool {
        matches!(self, Cap::Ssk(s) if s.writekey().is_some())
    }

    /// Whether the cap can read (decrypt) what it names.
    pub fn can_read(&self) -> bool {
        match self {
            Cap::Read(_) | Cap::ImmDir(_) => true,
            Cap::Verify(_) | Cap::ImmDirVerify(_) => false,
            Cap::Ssk(s) => s.readkey().is_some(),
        }
    }

    /// Whether the cap names something mutable.
    pub fn is_mutable(&self) -> bool {
        matches!(self, Cap::Ssk(_))
    }
}

impl ChkReadCap {
    /// The storage index (where servers keep the shares).
    pub fn storage_index(&self) -> [u8; 16] {
        storage_index(&self.key)
    }

    /// The verify cap.
    pub fn verify_cap(&self) -> ChkVerifyCap {
        ChkVerifyCap {
            storage_index: self.storage_index(),
            ueb_hash: self.ueb_hash,
            needed: self.needed,
            total: self.total,
            size: self.size,
        }
    }
}

impl ChkVerifyCap {
    /// The storage index.
    pub fn storage_index(&self) -> [u8; 16] {
        self.storage_index
    }
}

impl ReadCap {
    /// The file size.
    pub fn size(&self) -> u64 {
        match self {
            ReadCap::Chk(c) => c.size,
            ReadCap::Lit(l) => l.data.len() as u64,
        }
    }
}

fn b32(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

fn short(bytes: &[u8]) -> String {
    b32(bytes).chars().take(8).collect()
}

impl fmt::Display for ChkReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kith:chk:{}:{}:{}:{}:{}",
            b32(&self.key.0),
            b32(&self.ueb_hash),
            self.needed,
            self.total,
            self.size
        )
    }
}

impl fmt::Display for ChkVerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kith:chk-verify:{}:{}:{}:{}:{}",
            b32(&self.storage_index),
            b32(&self.ueb_hash),
            self.needed,
            self.total,
            self.size
        )
    }
}

impl fmt::Display for LitCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kith:lit:{}", b32(&self.data))
    }
}

impl fmt::Display for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadCap::Chk(c) => c.fmt(f),
            ReadCap::Lit(l) => l.fmt(f),
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Read(c) => c.fmt(f),
            Cap::Verify(c) => c.fmt(f),
            Cap::Ssk(c) => c.fmt(f),
            Cap::ImmDir(c) => {
                let inner = c.to_string();
                let rest = inner
                    .strip_prefix("kith:chk:")
                    .map(|r| format!("kith:dir-imm:{r}"))
                    .or_else(|| {
                        inner
                            .strip_prefix("kith:lit:")
                            .map(|r| format!("kith:dir-lit:{r}"))
                    })
                    .unwrap_or(inner);
                f.write_str(&rest)
            }
            Cap::ImmDirVerify(c) => {
                let inner = c.to_string();
                let rest = inner
                    .strip_prefix("kith:chk-verify:")
                    .map(|r| format!("kith:dir-imm-verify:{r}"))
                    .unwrap_or(inner);
                f.write_str(&rest)
            }
        }
    }
}

impl fmt::Debug for ChkReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChkReadCap(key=<redacted>, ueb={}…, {}-of-{}, {} bytes)",
            short(&self.ueb_hash),
            self.needed,
            self.total,
            self.size
        )
    }
}

impl fmt::Debug for ChkVerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChkVerifyCap(si={}…, {}-of-{}, {} bytes)",
            short(&self.storage_index),
            self.needed,
            self.total,
            self.size
        )
    }
}

impl fmt::Debug for LitCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LitCap(<redacted>, {} bytes)", self.data.len())
    }
}

impl fmt::Debug for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadCap::Chk(c) => c.fmt(f),
            ReadCap::Lit(l) => l.fmt(f),
        }
    }
}

/// A cap string that does not parse; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid kith cap: {0}")]
pub struct CapParseError(String);

fn err(s: impl Into<String>) -> CapParseError {
    CapParseError(s.into())
}

fn decode_b32<const N: usize>(field: &str, s: &str) -> Result<[u8; N], CapParseError> {
    let v = BASE32_NOPAD
        .decode(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| err(format!("{field} is not base32")))?;
    v.try_into()
        .map_err(|v: Vec<u8>| err(format!("{field} has {} bytes, expected {N}", v.len())))
}

fn parse_params(parts: &[&str]) -> Result<(u8, u8, u64), CapParseError> {
    let [k, n, size] = parts else {
        return Err(err("expected <k>:<n>:<size> at the end"));
    };
    let k: u8 = k
        .parse()
        .map_err(|_| err(format!("k {k:?} is not a number 1-255")))?;
    let n: u8 = n
        .parse()
        .map_err(|_| err(format!("n {n:?} is not a number 1-255")))?;
    let size: u64 = size
        .parse()
        .map_err(|_| err(format!("size {size:?} is not a number")))?;
    if k == 0 || k > n {
        return Err(err(format!("k={k} n={n} (need 1 <= k <= n)")));
    }
    if size <= LIT_THRESHOLD as u64 {
        return Err(err(format!("size {size} is small enough for a LIT cap")));
    }
    Ok((k, n, size))
}

impl FromStr for Cap {
    type Err = CapParseError;

    fn from_str(s: &str) -> Result<Self, CapParseError> {
        let s = s.trim();
        if s.len() > MAX_CAP_LEN {
            return Err(err(format!("{} characters is too long", s.len())));
        }
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["kith", "lit", data] => {
                let data = BASE32_NOPAD
                    .decode(data.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err("LIT data is not base32"))?;
                if data.len() > LIT_THRESHOLD {
                    return Err(err("LIT data longer than 55 bytes"));
                }
                Ok(Cap::Read(ReadCap::Lit(LitCap { data })))
            }
            ["kith", "chk", key, ueb, rest @ ..] => {
                let (needed, total, size) = parse_params(rest)?;
                Ok(Cap::Read(ReadCap::Chk(ChkReadCap {
                    key: Key(decode_b32("key", key)?),
                    ueb_hash: decode_b32("UEB hash", ueb)?,
                    needed,
                    total,
                    size,
                })))
            }
            ["kith", "chk-verify", si, ueb, rest @ ..] => {
                let (needed, total, size) = parse_params(rest)?;
                Ok(Cap::Verify(ChkVerifyCap {
                    storage_index: decode_b32("storage index", si)?,
                    ueb_hash: decode_b32("UEB hash", ueb)?,
                    needed,
                    total,
                    size,
                }))
            }
            [
                "kith",
                kind @ ("ssk" | "ssk-ro" | "ssk-verify" | "dir" | "dir-ro" | "dir-verify"),
                secret,
                fp,
            ] => {
                let dir = kind.starts_with("dir");
                let access = match *kind {
                    "ssk" | "dir" => SskAccess::Write {
                        writekey: decode_b32("write key", secret)?,
                    },
                    "ssk-ro" | "dir-ro" => SskAccess::Read {
                        readkey: decode_b32("read key", secret)?,
                    },
                    _ => SskAccess::Verify {
                        storage_index: decode_b32("storage index", secret)?,
                    },
                };
                Ok(Cap::Ssk(SskCap {
                    dir,
                    access,
                    fingerprint: decode_b32("fingerprint", fp)?,
                }))
            }
            [
                "kith",
                kind @ ("ssk" | "ssk-ro" | "ssk-verify" | "dir" | "dir-ro" | "dir-verify"),
                ..,
            ] => Err(err(format!("kith:{kind}: expects <key>:<fingerprint>"))),
            ["kith", "dir-imm", rest @ ..] => {
                match format!("kith:chk:{}", rest.join(":")).parse::<Cap>()? {
                    Cap::Read(r) => Ok(Cap::ImmDir(r)),
                    _ => Err(err("bad immutable directory cap")),
                }
            }
            ["kith", "dir-lit", rest @ ..] => {
                match format!("kith:lit:{}", rest.join(":")).parse::<Cap>()? {
                    Cap::Read(r) => Ok(Cap::ImmDir(r)),
                    _ => Err(err("bad literal directory cap")),
                }
            }
            ["kith", "dir-imm-verify", rest @ ..] => {
                match format!("kith:chk-verify:{}", rest.join(":")).parse::<Cap>()? {
                    Cap::Verify(v) => Ok(Cap::ImmDirVerify(v)),
                    _ => Err(err("bad immutable directory verify cap")),
                }
            }
            ["kith", kind, ..] => Err(err(format!("unknown cap kind {kind:?}"))),
            _ => Err(err(
                "a cap starts with kith:chk:, kith:lit:, kith:ssk:, kith:dir: (or their -ro, -verify forms)",
            )),
        }
    }
}

impl FromStr for ReadCap {
    type Err = CapParseError;

    fn from_str(s: &str) -> Result<Self, CapParseError> {
        match s.parse::<Cap>()? {
            Cap::Read(r) => Ok(r),
            Cap::Verify(_) | Cap::ImmDirVerify(_) => Err(err(
                "this is a verify cap: it can check a file but not read it",
            )),
            Cap::Ssk(c) if c.readkey().is_none() => Err(err(
                "this is a verify cap: it can check a file but not read it",
            )),
            Cap::Ssk(_) | Cap::ImmDir(_) => Err(err(
                "this cap names a mutable file or a directory, not an immutable file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn caps_round_trip(key in any::<[u8; 32]>(), ueb in any::<[u8; 32]>(), k in 1u8..=255, extra in any::<u8>(), size in 56u64.., lit in proptest::collection::vec(any::<u8>(), 0..=55)) {
            let n = k.saturating_add(extra);
            let c = ReadCap::Chk(ChkReadCap { key: Key(key), ueb_hash: ueb, needed: k, total: n, size });
            let text = c.to_string();
            prop_assert_eq!(text.parse::<ReadCap>().unwrap(), c.clone());
            prop_assert_eq!(text.to_ascii_uppercase().replace("KITH:CHK:", "kith:chk:").parse::<ReadCap>().unwrap(), c.clone());
            let dbg = format!("{:?}", c);
            prop_assert!(!dbg.contains(&b32(&key)));
            let ReadCap::Chk(chk) = &c else { unreachable!() };
            let v = Cap::Verify(chk.verify_cap());
            prop_assert_eq!(v.to_string().parse::<Cap>().unwrap(), v.clone());
            prop_assert!(!v.to_string().contains(&b32(&key)));
            let l = ReadCap::Lit(LitCap { data: lit.clone() });
            prop_assert_eq!(l.to_string().parse::<ReadCap>().unwrap(), l.clone());
            if lit.len() > 4 {
                let dbg = format!("{:?}", l);
                prop_assert!(!dbg.contains(&b32(&lit)));
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,200}", t in "kith:(chk|lit|chk-verify):[a-z2-7:0-9]{0,120}") {
            let _ = s.parse::<Cap>();
            let _ = t.parse::<Cap>();
        }
    }

    proptest! {
        #[test]
        fn ssk_caps_round_trip_and_attenuate_one_way(wk in any::<[u8; 32]>(), fp in any::<[u8; 32]>(), dir in any::<bool>()) {
            let w = Cap::Ssk(SskCap { dir, access: SskAccess::Write { writekey: wk }, fingerprint: fp });
            let text = w.to_string();
            prop_assert_eq!(text.parse::<Cap>().unwrap(), w.clone());
            let dbg = format!("{w:?}");
            prop_assert!(!dbg.contains(&b32(&wk)));
            prop_assert!(w.is_writable() && w.can_read());
            prop_assert_eq!(w.is_dir(), dir);
            let r = w.attenuate().unwrap();
            prop_assert!(!r.is_writable() && r.can_read());
            prop_assert!(!r.to_string().contains(&b32(&wk)));
            prop_assert_eq!(r.to_string().parse::<Cap>().unwrap(), r.clone());
            prop_assert_eq!(w.read_only(), r.clone());
            let v = r.attenuate().unwrap();
            prop_assert!(!v.can_read() && !v.is_writable());
            prop_assert_eq!(v.to_string().parse::<Cap>().unwrap(), v.clone());
            prop_assert!(v.attenuate().is_none());
            let (Cap::Ssk(ws), Cap::Ssk(vs)) = (&w, &v) else { unreachable!() };
            prop_assert_eq!(ws.storage_index(), vs.storage_index());
        }

        #[test]
        fn immutable_dir_caps_round_trip(key in any::<[u8; 32]>(), ueb in any::<[u8; 32]>(), size in 56u64..1_000_000, lit in proptest::collection::vec(any::<u8>(), 0..=55)) {
            let c = Cap::ImmDir(ReadCap::Chk(ChkReadCap { key: Key(key), ueb_hash: ueb, needed: 3, total: 10, size }));
            prop_assert!(c.to_string().starts_with("kith:dir-imm:"));
            prop_assert_eq!(c.to_string().parse::<Cap>().unwrap(), c.clone());
            prop_assert!(c.is_dir() && !c.is_writable());
            let v = c.attenuate().unwrap();
            prop_assert!(v.to_string().starts_with("kith:dir-imm-verify:"));
            prop_assert_eq!(v.to_string().parse::<Cap>().unwrap(), v);
            let l = Cap::ImmDir(ReadCap::Lit(LitCap { data: lit }));
            prop_assert_eq!(l.to_string().parse::<Cap>().unwrap(), l);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = "kith:chk:abc:def:3:10:100".parse::<ReadCap>().unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
        let key = b32(&[1; 32]);
        let e = format!("kith:chk:{key}:{key}:0:10:100")
            .parse::<ReadCap>()
            .unwrap_err();
        assert!(e.to_string().contains("k=0"), "{e}");
        assert!("http://x".parse::<ReadCap>().is_err());
        assert!("kith:lit:".parse::<ReadCap>().unwrap().size() == 0);
        let v = ChkReadCap {
            key: Key([1; 32]),
            ueb_hash: [2; 32],
            needed: 3,
            total: 10,
            size: 1000,
        }
        .verify_cap();
        assert!(
            v.to_string()
                .parse::<ReadCap>()
                .unwrap_err()
                .to_string()
                .contains("verify cap")
        );
        assert!("kith:chk:".repeat(100).parse::<Cap>().is_err());
    }
}
