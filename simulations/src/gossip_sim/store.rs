//! The simulator's item store: synthetic membership records over a shared immutable base.
//!
//! Every simulated member must hold every member's record (membership is what is gossiped), so
//! 10 000 nodes × 10 000 records would not fit if each node kept its own copy. Instead the
//! initial membership lives once in an [`Arc<Base>`] (keys, metas, per-bucket entry lists and
//! bucket digests) and each [`SimStore`] keeps only an overlay of the records it learned during
//! the run, plus the XOR adjustment of the affected bucket digests. Item bytes are never stored:
//! a record is fully determined by `(subject, version)`, so [`SimStore::get`] rebuilds it.
//!
//! # Item layout
//!
//! `kind (1) | key id (32) | subject (u32 BE) | version (u64 BE) | tag (16) | padding`, padded to
//! [`Base::item_size`] bytes (real signed records with their certificate chain are 300–500
//! bytes). The tag is a keyed SHA-256 over the rest of the item, standing in for the ed25519
//! signature and certificate chain: only the simulator (the "grid") knows the key, so Sybils
//! and forgers cannot produce valid items, and [`SimStore::insert`] refuses theirs with
//! [`Reject::BadSignature`] (bad tag) or [`Reject::BrokenChain`] (subject not a member).

use std::{collections::BTreeMap, sync::Arc};

use kith_gossip::{BUCKETS, Digest, Inserted, ItemKey, Meta, Millis, Reject, Store};
use rand::{Rng, RngCore};
use sha2::{Digest as _, Sha256};

/// Item kind of a synthetic node record (same number as [`kith_gossip::Kind::Record`]).
pub const RECORD_KIND: u8 = 1;
/// Version of every record in the initial membership.
pub const BASE_VERSION: u64 = 1;
/// Versions at or above this mark forged items (so a delivery of one is detectable).
pub const FORGED_VERSION: u64 = 1 << 62;

const HEADER: usize = 1 + 32 + 4 + 8;
const TAG: usize = 16;
const SECRET: &[u8] = b"kith-sim grid key";

/// The key id of member (or Sybil) `subject`: a hash, so keys spread evenly over buckets.
pub fn key_of(subject: u32) -> ItemKey {
    let h = Sha256::new()
        .chain_update(b"kith-sim key")
        .chain_update(subject.to_be_bytes())
        .finalize();
    let mut id = [0u8; 32];
    id.copy_from_slice(&h);
    ItemKey {
        kind: RECORD_KIND,
        id,
    }
}

fn tag(header: &[u8], padding: &[u8]) -> [u8; TAG] {
    let h = Sha256::new()
        .chain_update(SECRET)
        .chain_update(header)
        .chain_update(padding)
        .finalize();
    let mut t = [0u8; TAG];
    t.copy_from_slice(&h[..TAG]);
    t
}

fn header(subject: u32, version: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = RECORD_KIND;
    h[1..33].copy_from_slice(&key_of(subject).id);
    h[33..37].copy_from_slice(&subject.to_be_bytes());
    h[37..45].copy_from_slice(&version.to_be_bytes());
    h
}

fn padding(subject: u32, version: u64, len: usize) -> Vec<u8> {
    // Deterministic, content-dependent filler (so the CBOR size is realistic).
    (0..len)
        .map(|i| (i as u32 ^ subject ^ version as u32).wrapping_mul(2_654_435_761) as u8)
        .collect()
}

/// A valid record of `subject` at `version`, `size` bytes long.
pub fn build_item(subject: u32, version: u64, size: usize) -> Vec<u8> {
    let h = header(subject, version);
    let pad = padding(subject, version, size.saturating_sub(HEADER + TAG));
    let mut out = Vec::with_capacity(HEADER + TAG + pad.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(&tag(&h, &pad));
    out.extend_from_slice(&pad);
    out
}

/// A forged record of `subject`: well formed, with a tag that does not verify.
pub fn forge_item(subject: u32, nonce: u64, size: usize) -> Vec<u8> {
    let mut item = build_item(subject, FORGED_VERSION + nonce, size);
    for b in &mut item[HEADER..HEADER + TAG] {
        *b ^= 0x5a;
    }
    item
}

struct Parsed {
    key: ItemKey,
    subject: u32,
    version: u64,
}

fn parse(item: &[u8]) -> Result<Parsed, Reject> {
    if item.len() < HEADER + TAG || item[0] != RECORD_KIND {
        return Err(Reject::Malformed);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&item[1..33]);
    let mut s = [0u8; 4];
    s.copy_from_slice(&item[33..37]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&item[37..45]);
    Ok(Parsed {
        key: ItemKey {
            kind: RECORD_KIND,
            id,
        },
        subject: u32::from_be_bytes(s),
        version: u64::from_be_bytes(v),
    })
}

/// The initial membership, shared by every node.
pub struct Base {
    members: u32,
    item_size: usize,
    subjects: BTreeMap<ItemKey, u32>,
    metas: Vec<Meta>,
    bucket_entries: Vec<Vec<(ItemKey, Meta)>>,
    buckets: Vec<Digest>,
}

impl Base {
    /// Members `0..members`, each with a record at [`BASE_VERSION`] of `item_size` bytes.
    pub fn new(members: u32, item_size: usize) -> Base {
        let mut subjects = BTreeMap::new();
        let mut metas = Vec::with_capacity(members as usize);
        let mut bucket_entries = vec![Vec::new(); BUCKETS];
        let mut buckets = vec![Digest::default(); BUCKETS];
        for s in 0..members {
            let key = key_of(s);
            let meta = Meta::of(BASE_VERSION, &build_item(s, BASE_VERSION, item_size));
            subjects.insert(key, s);
            metas.push(meta);
            bucket_entries[key.bucket()].push((key, meta));
            buckets[key.bucket()].toggle(&Digest::entry(&key, &meta));
        }
        for e in &mut bucket_entries {
            e.sort();
        }
        Base {
            members,
            item_size,
            subjects,
            metas,
            bucket_entries,
            buckets,
        }
    }

    /// Number of members.
    pub fn members(&self) -> u32 {
        self.members
    }

    /// Size of every item in bytes.
    pub fn item_size(&self) -> usize {
        self.item_size
    }

    /// The member whose record has key `key`.
    pub fn subject(&self, key: &ItemKey) -> Option<u32> {
        self.subjects.get(key).copied()
    }
}

/// One node's store: the shared [`Base`] plus what it learned since.
pub struct SimStore {
    base: Arc<Base>,
    me: u32,
    overlay: BTreeMap<ItemKey, Meta>,
    /// XOR adjustment of the base bucket digests (allocated on first change).
    delta: Option<Box<[Digest]>>,
}

impl SimStore {
    /// The store of node `me`, starting with the base membership.
    pub fn new(base: Arc<Base>, me: u32) -> SimStore {
        SimStore {
            base,
            me,
            overlay: BTreeMap::new(),
            delta: None,
        }
    }

    /// Records learned (or published) since the start.
    pub fn learned(&self) -> usize {
        self.overlay.len()
    }
}

impl Store<u32> for SimStore {
    fn identify(&self, item: &[u8]) -> Result<(ItemKey, Meta), Reject> {
        let p = parse(item)?;
        Ok((p.key, Meta::of(p.version, item)))
    }

    fn insert(&mut self, item: &[u8], _now: Millis) -> Result<Inserted, Reject> {
        let p = parse(item)?;
        if p.subject >= self.base.members || self.base.subject(&p.key) != Some(p.subject) {
            return Err(Reject::BrokenChain);
        }
        if item.len() != self.base.item_size
            || item[HEADER..HEADER + TAG] != tag(&item[..HEADER], &item[HEADER + TAG..])
        {
            return Err(Reject::BadSignature);
        }
        let meta = Meta::of(p.version, item);
        let old = self
            .meta(&p.key)
            .unwrap_or(self.base.metas[p.subject as usize]);
        if meta <= old {
            return Ok(Inserted::Duplicate);
        }
        let delta = self
            .delta
            .get_or_insert_with(|| vec![Digest::default(); BUCKETS].into_boxed_slice());
        let b = p.key.bucket();
        delta[b].toggle(&Digest::entry(&p.key, &old));
        delta[b].toggle(&Digest::entry(&p.key, &meta));
        self.overlay.insert(p.key, meta);
        Ok(Inserted::New)
    }

    fn meta(&self, key: &ItemKey) -> Option<Meta> {
        if let Some(m) = self.overlay.get(key) {
            return Some(*m);
        }
        self.base.subject(key).map(|s| self.base.metas[s as usize])
    }

    fn get(&self, key: &ItemKey) -> Option<Vec<u8>> {
        let s = self.base.subject(key)?;
        let version = self.overlay.get(key).map_or(BASE_VERSION, |m| m.version);
        Some(build_item(s, version, self.base.item_size))
    }

    fn buckets(&self) -> Vec<Digest> {
        let mut b = self.base.buckets.clone();
        if let Some(delta) = &self.delta {
            for (d, x) in b.iter_mut().zip(delta.iter()) {
                d.toggle(x);
            }
        }
        b
    }

    fn bucket_entries(&self, b: usize) -> Vec<(ItemKey, Meta)> {
        let mut e = self.base.bucket_entries[b].clone();
        if self.overlay.is_empty() {
            return e;
        }
        for (k, m) in e.iter_mut() {
            if let Some(o) = self.overlay.get(k) {
                *m = *o;
            }
        }
        e
    }

    fn is_member(&self, peer: &u32) -> bool {
        *peer < self.base.members
    }

    fn sample_members(
        &self,
        rng: &mut dyn RngCore,
        n: usize,
        skip: &dyn Fn(&u32) -> bool,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(n);
        if self.base.members == 0 {
            return out;
        }
        // Rejection sampling, bounded: a member set smaller than `n` returns fewer.
        for _ in 0..(n * 16 + 64) {
            if out.len() == n {
                break;
            }
            let p = rng.gen_range(0..self.base.members);
            if p != self.me && !skip(&p) && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_verify_and_forgeries_do_not() {
        let base = Arc::new(Base::new(20, 400));
        let mut a = SimStore::new(base.clone(), 0);
        let b = SimStore::new(base, 1);
        assert_eq!(a.buckets(), b.buckets());
        let item = build_item(3, 2, 400);
        assert_eq!(item.len(), 400);
        assert_eq!(a.insert(&item, 0), Ok(Inserted::New));
        assert_eq!(a.insert(&item, 0), Ok(Inserted::Duplicate));
        assert_eq!(a.get(&key_of(3)), Some(item.clone()));
        assert_ne!(a.buckets(), b.buckets());
        assert_eq!(
            a.insert(&forge_item(4, 0, 400), 0),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            a.insert(&forge_item(25, 0, 400), 0),
            Err(Reject::BrokenChain)
        );
        let (k, m) = a.identify(&item).expect("valid item");
        assert_eq!((k, m.version), (key_of(3), 2));
        let entries = a.bucket_entries(k.bucket());
        assert!(entries.contains(&(k, m)));
    }
}
