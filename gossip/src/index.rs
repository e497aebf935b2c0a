//! Item identities and the digest index behind anti-entropy.
//!
//! Every gossiped item has a key (kind + 32-byte subject, usually a member's public key) and a
//! [`Meta`] (version, then a 16-byte content hash as tie-break): the greater `Meta` wins. The
//! [`Index`] keeps one [`Meta`] per key plus [`BUCKETS`] bucket digests (XOR of the entry
//! digests of the keys whose first subject byte selects the bucket), updated incrementally, so
//! two nodes compare their whole sets with one 16-byte root and narrow a difference down to
//! buckets and then entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Number of anti-entropy buckets (the first byte of an item's subject selects one).
pub const BUCKETS: usize = 256;

/// What an item is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemKey {
    /// Item kind (see [`crate::membership::Kind`]).
    pub kind: u8,
    /// Subject: the public key the item is about.
    #[serde(with = "serde_bytes")]
    pub id: [u8; 32],
}

impl ItemKey {
    /// The anti-entropy bucket of this key.
    pub fn bucket(&self) -> usize {
        usize::from(self.id[0]) % BUCKETS
    }
}

/// Version of an item: the greater wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Meta {
    /// Sequence number chosen by the item's author.
    pub version: u64,
    /// First 16 bytes of the SHA-256 of the item's canonical bytes (tie-break).
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 16],
}

impl Meta {
    /// The meta of `bytes` at `version`.
    pub fn of(version: u64, bytes: &[u8]) -> Meta {
        let h = Sha256::digest(bytes);
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h[..16]);
        Meta { version, hash }
    }
}

/// A 16-byte set digest (XOR of entry digests).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 16]);

impl Digest {
    /// The digest of one entry.
    pub fn entry(key: &ItemKey, meta: &Meta) -> Digest {
        let mut h = Sha256::new();
        h.update([key.kind]);
        h.update(key.id);
        h.update(meta.version.to_be_bytes());
        h.update(meta.hash);
        let h = h.finalize();
        let mut d = [0u8; 16];
        d.copy_from_slice(&h[..16]);
        Digest(d)
    }

    /// XORs `other` into `self` (adding and removing are the same operation).
    pub fn toggle(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a ^= b;
        }
    }

    /// The root digest of a bucket array.
    pub fn root(buckets: &[Digest]) -> Digest {
        let mut r = Digest::default();
        for b in buckets {
            r.toggle(b);
        }
        r
    }
}

/// One [`Meta`] per key with incrementally maintained bucket digests.
#[derive(Clone, Debug)]
pub struct Index {
    entries: BTreeMap<ItemKey, Meta>,
    buckets: Vec<Digest>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            entries: BTreeMap::new(),
            buckets: vec![Digest::default(); BUCKETS],
        }
    }
}

impl Index {
    /// Sets `key` to `meta`, returning the previous meta.
    pub fn set(&mut self, key: ItemKey, meta: Meta) -> Option<Meta> {
        let b = key.bucket();
        let old = self.entries.insert(key, meta);
        if let Some(old) = &old {
            self.buckets[b].toggle(&Digest::entry(&key, old));
        }
        self.buckets[b].toggle(&Digest::entry(&key, &meta));
        old
    }

    /// Removes `key`, returning its meta.
    pub fn remove(&mut self, key: &ItemKey) -> Option<Meta> {
        let old = self.entries.remove(key)?;
        self.buckets[key.bucket()].toggle(&Digest::entry(key, &old));
        Some(old)
    }

    /// The meta of `key`.
    pub fn get(&self, key: &ItemKey) -> Option<Meta> {
        self.entries.get(key).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bucket digests.
    pub fn buckets(&self) -> &[Digest] {
        &self.buckets
    }

    /// The entries of bucket `b`.
    pub fn bucket_entries(&self, b: usize) -> Vec<(ItemKey, Meta)> {
        // Keys are ordered by kind first, so scan each kind's range for the bucket's byte.
        self.entries
            .iter()
            .filter(|(k, _)| k.bucket() == b)
            .map(|(k, m)| (*k, *m))
            .collect()
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ItemKey, &Meta)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: u8, b: u8) -> ItemKey {
        ItemKey { kind, id: [b; 32] }
    }

    #[test]
    fn digests_are_order_independent_and_track_replacements() {
        let mut a = Index::default();
        let mut b = Index::default();
        let items: Vec<(ItemKey, Meta)> = (0..50u8)
            .map(|i| (key(i % 2, i), Meta::of(u64::from(i), &[i])))
            .collect();
        for (k, m) in &items {
            a.set(*k, *m);
        }
        for (k, m) in items.iter().rev() {
            b.set(*k, *m);
        }
        assert_eq!(a.buckets(), b.buckets());
        let newer = Meta::of(99, b"new");
        a.set(items[3].0, newer);
        assert_ne!(Digest::root(a.buckets()), Digest::root(b.buckets()));
        b.set(items[3].0, newer);
        assert_eq!(Digest::root(a.buckets()), Digest::root(b.buckets()));
        a.remove(&items[4].0);
        b.remove(&items[4].0);
        assert_eq!(a.buckets(), b.buckets());
        assert_eq!(a.bucket_entries(items[5].0.bucket()), vec![items[5]]);
    }

    #[test]
    fn greater_meta_wins_by_version_then_hash() {
        let low = Meta {
            version: 1,
            hash: [9; 16],
        };
        let high = Meta {
            version: 2,
            hash: [0; 16],
        };
        assert!(high > low);
        let tie = Meta {
            version: 1,
            hash: [10; 16],
        };
        assert!(tie > low);
    }
}
