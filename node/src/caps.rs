//! Capabilities: the only credential for data (Tahoe-LAFS's caps).
//!
//! - [`ChkReadCap`] `kith:chk:<key>:<ueb hash>:<k>:<n>:<size>` reads an immutable file;
//! - [`ChkVerifyCap`] `kith:chk-verify:<storage index>:<ueb hash>:<k>:<n>:<size>` is derived one
//!   way from the read cap ([`ChkReadCap::verify_cap`]): it lets a node check and repair shares
//!   without being able to decrypt;
//! - [`LitCap`] `kith:lit:<data>` holds files of at most 55 bytes inside the cap.
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
    /// A read cap.
    Read(ReadCap),
    /// A verify cap.
    Verify(ChkVerifyCap),
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
            ["kith", kind, ..] => Err(err(format!("unknown cap kind {kind:?}"))),
            _ => Err(err(
                "a cap starts with kith:chk:, kith:chk-verify: or kith:lit:",
            )),
        }
    }
}

impl FromStr for ReadCap {
    type Err = CapParseError;

    fn from_str(s: &str) -> Result<Self, CapParseError> {
        match s.parse::<Cap>()? {
            Cap::Read(r) => Ok(r),
            Cap::Verify(_) => Err(err(
                "this is a verify cap: it can check a file but not read it",
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
