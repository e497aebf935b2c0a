//! Directory tables: pure, no IO.
//!
//! A directory is a mutable slot (or, for a snapshot, an immutable file) whose content is a
//! table of entries `name -> (child cap, metadata)`, as Tahoe-LAFS's dirnodes. Each entry keeps
//! the child's **read-only** cap in the clear (for anyone holding the directory's read cap) and
//! the child's **write** cap, if any, encrypted under a key derived from the directory's write
//! key and a per-entry salt: a read-only view of a directory therefore shows no write caps, and
//! a write cap is only trusted when it attenuates to the entry's read-only cap.
//!
//! Encoding: CBOR `{"v": 1, "e": [[name, ro_cap, salt, enc_rw_cap, size, ctime, mtime], …]}`,
//! entries sorted by name. Decoding is bounded ([`MAX_ENTRIES`], names of at most
//! [`MAX_NAME`] bytes, the content limit of a mutable file) and every field is checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    caps::Cap,
    codec::{Key, apply_keystream},
    hash::tagged_hash,
    mutable::MAX_MUTABLE_SIZE,
};

/// Most entries in one directory.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest entry name, in bytes.
pub const MAX_NAME: usize = 255;
const ENTRY_KEY_TAG: &str = "kith:dir:entry-key:v1";

/// Why a directory table is unusable or an edit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// The content does not decode.
    #[error("malformed directory: {0}")]
    Malformed(String),
    /// A name that cannot be an entry.
    #[error("invalid name {0:?}: names are 1-255 bytes, without '/' or NUL, not '.' or '..'")]
    BadName(String),
    /// The name is not in the directory.
    #[error("no entry named {0:?}")]
    NoSuchEntry(String),
    /// The name is taken (and replacing was not asked for).
    #[error("an entry named {0:?} already exists")]
    Exists(String),
    /// Too many entries or too large.
    #[error("directory too large: {0}")]
    TooLarge(String),
    /// A write cap in an immutable directory.
    #[error("an immutable directory can only hold read-only caps")]
    WriteCapInSnapshot,
}

/// Entry metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Size in bytes of a file child (none for directories and mutable files).
    pub size: Option<u64>,
    /// When the entry was created (Unix seconds).
    pub ctime: u64,
    /// When the entry last changed (Unix seconds).
    pub mtime: u64,
}

/// One entry as the holder of the directory's cap sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The child's strongest cap this view reveals (its write cap only through a writable view).
    pub cap: Cap,
    /// Metadata.
    pub meta: Meta,
}

/// A directory's entries by name.
pub type Table = BTreeMap<String, Entry>;

#[derive(Serialize, Deserialize)]
struct Raw {
    v: u8,
    e: Vec<RawEntry>,
}

#[derive(Serialize, Deserialize)]
struct RawEntry(
    String,
    String,
    #[serde(with = "serde_bytes")] [u8; 16],
    ByteBuf,
    Option<u64>,
    u64,
    u64,
);

/// Checks an entry name.
pub fn check_name(name: &str) -> Result<(), DirError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(DirError::BadName(name.to_owned()));
    }
    Ok(())
}

fn entry_key(writekey: &[u8; 32], salt: &[u8; 16]) -> Key {
    Key(tagged_hash(ENTRY_KEY_TAG, &[writekey, salt]))
}

/// Decodes a table. `writekey` (the directory's, when the view is writable) reveals the
/// children's write caps.
pub fn decode(content: &[u8], writekey: Option<&[u8; 32]>) -> Result<Table, DirError> {
    if content.is_empty() {
        return Ok(Table::new());
    }
    if content.len() > MAX_MUTABLE_SIZE {
        return Err(DirError::TooLarge(format!("{} bytes", content.len())));
    }
    let raw: Raw =
        ciborium::from_reader(content).map_err(|e| DirError::Malformed(e.to_string()))?;
    if raw.v != 1 {
        return Err(DirError::Malformed(format!("table version {}", raw.v)));
    }
    if raw.e.len() > MAX_ENTRIES {
        return Err(DirError::TooLarge(format!("{} entries", raw.e.len())));
    }
    let mut t = Table::new();
    for RawEntry(name, ro, salt, rw, size, ctime, mtime) in raw.e {
        check_name(&name).map_err(|e| DirError::Malformed(e.to_string()))?;
        // The clear field is read-only by definition: a write cap put there (by a buggy or
        // hostile writer) is downgraded, never shown to read-only viewers as writable.
        let ro_cap: Cap = ro
            .parse::<Cap>()
            .map_err(|e| DirError::Malformed(format!("entry {name:?}: {e}")))?
            .read_only();
        let mut cap = ro_cap.clone();
        if let Some(wk) = writekey
            && !rw.is_empty()
            && rw.len() <= 512
        {
            let mut text = rw.into_vec();
            apply_keystream(&entry_key(wk, &salt), 0, &mut text);
            // Trusted only when it attenuates to the entry's read-only cap.
            if let Some(w) = std::str::from_utf8(&text)
                .ok()
                .and_then(|s| s.parse::<Cap>().ok())
                .filter(|w| w.read_only() == ro_cap)
            {
                cap = w;
            }
        }
        if t.contains_key(&name) {
            return Err(DirError::Malformed(format!("entry {name:?} twice")));
        }
        t.insert(
            name,
            Entry {
                cap,
                meta: Meta { size, ctime, mtime },
            },
        );
    }
    Ok(t)
}

/// Encodes a table. Write caps of children are encrypted under `writekey` (required to store
/// any; `None` makes an immutable directory, which refuses them). `salt` gives each entry's
/// salt (random in real use).
pub fn encode(
    t: &Table,
    writekey: Option<&[u8; 32]>,
    mut salt: impl FnMut() -> [u8; 16],
) -> Result<Vec<u8>, DirError> {
    if t.len() > MAX_ENTRIES {
        return Err(DirError::TooLarge(format!("{} entries", t.len())));
    }
    let mut e = Vec::with_capacity(t.len());
    for (name, entry) in t {
        check_name(name)?;
        let ro = entry.cap.read_only();
        let s = salt();
        let rw = if entry.cap.is_writable() {
            let wk = writekey.ok_or(DirError::WriteCapInSnapshot)?;
            let mut text = entry.cap.to_string().into_bytes();
            apply_keystream(&entry_key(wk, &s), 0, &mut text);
            text
        } else {
            Vec::new()
        };
        e.push(RawEntry(
            name.clone(),
            ro.to_string(),
            s,
            ByteBuf::from(rw),
            entry.meta.size,
            entry.meta.ctime,
            entry.meta.mtime,
        ));
    }
    let mut out = Vec::new();
    ciborium::into_writer(&Raw { v: 1, e }, &mut out)
        .map_err(|e| DirError::Malformed(e.to_string()))?;
    if out.len() > MAX_MUTABLE_SIZE {
        return Err(DirError::TooLarge(format!(
            "{} bytes (a directory holds at most {MAX_MUTABLE_SIZE})",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{ChkReadCap, LitCap, ReadCap, SskAccess, SskCap};
    use proptest::prelude::*;

    fn ssk(n: u8, dir: bool) -> Cap {
        Cap::Ssk(SskCap {
            dir,
            access: SskAccess::Write { writekey: [n; 32] },
            fingerprint: [n.wrapping_add(1); 32],
        })
    }

    fn chk(n: u8) -> Cap {
        Cap::Read(ReadCap::Chk(ChkReadCap {
            key: Key([n; 32]),
            ueb_hash: [n; 32],
            needed: 3,
            total: 10,
            size: 1000 + u64::from(n),
        }))
    }

    fn table() -> Table {
        let mut t = Table::new();
        t.insert(
            "a.txt".into(),
            Entry {
                cap: chk(1),
                meta: Meta {
                    size: Some(1001),
                    ctime: 5,
                    mtime: 6,
                },
            },
        );
        t.insert(
            "sub".into(),
            Entry {
                cap: ssk(2, true),
                meta: Meta::default(),
            },
        );
        t.insert(
            "todo.md".into(),
            Entry {
                cap: ssk(3, false),
                meta: Meta::default(),
            },
        );
        t.insert(
            "tiny".into(),
            Entry {
                cap: Cap::Read(ReadCap::Lit(LitCap {
                    data: b"hi".to_vec(),
                })),
                meta: Meta::default(),
            },
        );
        t
    }

    #[test]
    fn writable_view_round_trips_read_only_view_hides_write_caps() {
        let wk = [9u8; 32];
        let t = table();
        let bytes = encode(&t, Some(&wk), || [7; 16]).unwrap();
        assert_eq!(decode(&bytes, Some(&wk)).unwrap(), t);
        let ro = decode(&bytes, None).unwrap();
        assert_eq!(ro.len(), t.len());
        for (name, e) in &ro {
            assert!(!e.cap.is_writable(), "{name}");
            assert_eq!(e.cap, t[name].cap.read_only());
        }
        // No write cap text appears in the encoding.
        let text = String::from_utf8_lossy(&bytes);
        for e in t.values().filter(|e| e.cap.is_writable()) {
            assert!(!text.contains(&e.cap.to_string()));
        }
        // Another write key reveals nothing.
        let other = decode(&bytes, Some(&[8; 32])).unwrap();
        assert!(other.values().all(|e| !e.cap.is_writable()));
    }

    #[test]
    fn snapshots_refuse_write_caps_and_names_are_checked() {
        assert_eq!(
            encode(&table(), None, || [0; 16]),
            Err(DirError::WriteCapInSnapshot)
        );
        for bad in ["", ".", "..", "a/b", "x\0y", &"n".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("ok name.txt").is_ok());
        assert!(decode(b"", None).unwrap().is_empty());
    }

    #[test]
    fn a_thousand_entries_fit() {
        let wk = [1u8; 32];
        let mut t = Table::new();
        for i in 0..1000u32 {
            t.insert(
                format!("file-{i:04}"),
                Entry {
                    cap: chk((i % 250) as u8),
                    meta: Meta {
                        size: Some(u64::from(i)),
                        ctime: 1,
                        mtime: 2,
                    },
                },
            );
        }
        let bytes = encode(&t, Some(&wk), || [3; 16]).unwrap();
        assert!(bytes.len() < 400_000, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes, Some(&wk)).unwrap(), t);
    }

    proptest! {
        #![proptest_config(crate::prop::cases(256))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes, Some(&[1; 32]));
            let _ = decode(&bytes, None);
        }
    }
}
