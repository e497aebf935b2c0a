//! Grid membership: certificates chained to the founder, signed node records, expulsions, and
//! the [`Registry`] that validates and holds them.
//!
//! - A grid is identified by its founder's ed25519 public key ([`GridId`]).
//! - A [`Certificate`] says "`inviter` admits `member` to `grid`", signed by the inviter. A
//!   member's chain runs from its own certificate up to one issued by the founder; the founder
//!   needs none. Chains are at most [`MAX_CHAIN`] long.
//! - A [`NodeRecord`] is what a member says about itself (addresses or onion address, nickname,
//!   roles, capacity, software version), signed, with a sequence number (newest wins) and an
//!   expiry; it carries the member's chain so anyone can check it alone.
//! - An [`Expulsion`] removes a member grid-wide; it is signed by the founder or by the member's
//!   inviter and carries the expelled member's chain (which names the inviter). Expulsion
//!   cascades: a chain through an expelled member is broken, so whoever an expelled member
//!   invited must be invited again by someone else. (An expelled member could otherwise keep
//!   a grid of its own invitees.)
//!
//! Everything here is pure: the caller passes the time in.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    core::{Inserted, Reject},
    index::{Index, ItemKey, Meta},
    message::MAX_ITEM,
};

/// A grid's identity: its founder's public key.
pub type GridId = [u8; 32];
/// An ed25519 public key (a member's identity; the same key as its libp2p peer id).
pub type PublicKey = [u8; 32];

/// Longest accepted certificate chain.
pub const MAX_CHAIN: usize = 16;
/// Most addresses in a record.
pub const MAX_ADDRS: usize = 16;
/// Longest address (binary multiaddr).
pub const MAX_ADDR_LEN: usize = 128;
/// Longest nickname, software version or onion address (bytes).
pub const MAX_TEXT: usize = 96;

/// Role bit: offers storage.
pub const ROLE_STORAGE: u8 = 1;
/// Role bit: offers relaying for members.
pub const ROLE_RELAY: u8 = 2;

/// Item kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A [`NodeRecord`].
    Record = 1,
    /// An [`Expulsion`].
    Expulsion = 2,
}

/// Signing with a member's key.
#[derive(Clone)]
pub struct Signer(SigningKey);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", hex(&self.public()))
    }
}

impl Signer {
    /// From the 32-byte ed25519 secret (seed).
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        Signer(SigningKey::from_bytes(seed))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.0.verifying_key().to_bytes()
    }

    fn sign(&self, tag: &[u8], msg: &[u8]) -> [u8; 64] {
        let mut m = Vec::with_capacity(tag.len() + msg.len());
        m.extend_from_slice(tag);
        m.extend_from_slice(msg);
        self.0.sign(&m).to_bytes()
    }
}

fn verify(key: &PublicKey, tag: &[u8], msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    let mut m = Vec::with_capacity(tag.len() + msg.len());
    m.extend_from_slice(tag);
    m.extend_from_slice(msg);
    vk.verify_strict(&m, &Signature::from_bytes(sig)).is_ok()
}

/// Lowercase hex (for logs and ids).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// "`inviter` admits `member` to `grid`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The grid.
    #[serde(rename = "g", with = "serde_bytes")]
    pub grid: GridId,
    /// The admitted member.
    #[serde(rename = "m", with = "serde_bytes")]
    pub member: PublicKey,
    /// Who admitted it (and signed).
    #[serde(rename = "i", with = "serde_bytes")]
    pub inviter: PublicKey,
    /// When (unix seconds).
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// The inviter's signature.
    #[serde(rename = "s", with = "serde_bytes")]
    pub sig: [u8; 64],
}

const CERT_TAG: &[u8] = b"kith-cert-v1";
const RECORD_TAG: &[u8] = b"kith-record-v1";
const EXPEL_TAG: &[u8] = b"kith-expel-v1";

impl Certificate {
    fn payload(grid: &GridId, member: &PublicKey, inviter: &PublicKey, at: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(104);
        m.extend_from_slice(grid);
        m.extend_from_slice(member);
        m.extend_from_slice(inviter);
        m.extend_from_slice(&at.to_be_bytes());
        m
    }

    /// The inviter issues a certificate for `member`.
    pub fn issue(inviter: &Signer, grid: GridId, member: PublicKey, issued_at: u64) -> Certificate {
        let me = inviter.public();
        let sig = inviter.sign(CERT_TAG, &Self::payload(&grid, &member, &me, issued_at));
        Certificate {
            grid,
            member,
            inviter: me,
            issued_at,
            sig,
        }
    }

    fn verifies(&self) -> bool {
        verify(
            &self.inviter,
            CERT_TAG,
            &Self::payload(&self.grid, &self.member, &self.inviter, self.issued_at),
            &self.sig,
        )
    }
}

/// Checks that `chain` admits `member` to `grid`: each certificate admits the previous one's
/// inviter, the last is issued by the founder, nobody on the way is expelled.
pub fn verify_chain(
    grid: &GridId,
    member: &PublicKey,
    chain: &[Certificate],
    expelled: &dyn Fn(&PublicKey) -> bool,
) -> Result<(), Reject> {
    if member == grid {
        return if chain.is_empty() {
            Ok(())
        } else {
            Err(Reject::BrokenChain)
        };
    }
    if chain.len() > MAX_CHAIN {
        return Err(Reject::BrokenChain);
    }
    let mut cur = *member;
    for (i, cert) in chain.iter().enumerate() {
        if &cert.grid != grid {
            return Err(Reject::WrongGrid);
        }
        if cert.member != cur || !cert.verifies() {
            return Err(Reject::BrokenChain);
        }
        if expelled(&cert.member) {
            return Err(Reject::Expelled);
        }
        cur = cert.inviter;
        if &cur == grid {
            return if i + 1 == chain.len() {
                Ok(())
            } else {
                Err(Reject::BrokenChain)
            };
        }
    }
    Err(Reject::BrokenChain)
}

/// The signed part of a node record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    /// The grid.
    #[serde(rename = "g", with = "serde_bytes")]
    pub grid: GridId,
    /// The member (its public key).
    #[serde(rename = "p", with = "serde_bytes")]
    pub peer: PublicKey,
    /// Sequence number: the newest record per member wins.
    #[serde(rename = "q")]
    pub seq: u64,
    /// When it was made (unix seconds).
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// When it stops being valid (unix seconds).
    #[serde(rename = "x")]
    pub expires: u64,
    /// The owner's nickname.
    #[serde(rename = "n")]
    pub nickname: String,
    /// Binary multiaddrs the member listens on (empty for Tor-only members).
    #[serde(rename = "a")]
    pub addrs: Vec<ByteBuf>,
    /// Onion address (Tor-only and dual-stack members).
    #[serde(rename = "o")]
    pub onion: Option<String>,
    /// [`ROLE_STORAGE`] | [`ROLE_RELAY`].
    #[serde(rename = "r")]
    pub roles: u8,
    /// Free storage space offered (bytes).
    #[serde(rename = "f")]
    pub free: u64,
    /// Total storage capacity offered (bytes).
    #[serde(rename = "c")]
    pub capacity: u64,
    /// Software version.
    #[serde(rename = "v")]
    pub version: String,
    /// The member's certificate chain.
    #[serde(rename = "ch")]
    pub chain: Vec<Certificate>,
    /// Whom this member lets store on its node, so uploaders skip servers that would refuse.
    #[serde(rename = "gr", default)]
    pub grants: GrantView,
}

/// Most explicit grants published in a record.
pub const MAX_EXPLICIT_GRANTS: usize = 64;

/// Unlimited, in [`GrantView`] quotas.
pub const UNLIMITED: u64 = u64::MAX;

/// A member's storage policy as published in its record (its node enforces the real one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// Quota for members without an explicit decision ([`UNLIMITED`], bytes, or `None`).
    #[serde(rename = "d")]
    pub default: Option<u64>,
    /// Reciprocal factor in thousandths (grant = factor x what the member grants this node).
    #[serde(rename = "r")]
    pub reciprocal_milli: Option<u32>,
    /// New members wait for the owner's decision.
    #[serde(rename = "i")]
    pub invite_only: bool,
    /// Explicit decisions (0 = refused: revoked or pending).
    #[serde(rename = "x")]
    pub explicit: Vec<ExplicitGrant>,
}

impl Default for GrantView {
    fn default() -> Self {
        GrantView {
            default: Some(UNLIMITED),
            reciprocal_milli: None,
            invite_only: false,
            explicit: Vec::new(),
        }
    }
}

/// One explicit decision in a [`GrantView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplicitGrant {
    /// The member.
    #[serde(rename = "m", with = "serde_bytes")]
    pub member: PublicKey,
    /// Its quota ([`UNLIMITED`], bytes, 0 = refused).
    #[serde(rename = "q")]
    pub quota: u64,
}

impl GrantView {
    /// What this view grants `member` (`None`: nothing), given what `member` grants the
    /// view's owner when known (for a reciprocal policy).
    pub fn grant_for(&self, member: &PublicKey, theirs: Option<u64>) -> Option<u64> {
        if let Some(e) = self.explicit.iter().find(|e| &e.member == member) {
            return (e.quota > 0).then_some(e.quota);
        }
        if self.invite_only {
            return None;
        }
        if let (Some(r), Some(t)) = (self.reciprocal_milli, theirs) {
            if t == UNLIMITED {
                return Some(UNLIMITED);
            }
            let q = (u128::from(t) * u128::from(r) / 1000).min(u128::from(u64::MAX - 1)) as u64;
            return (q > 0).then_some(q);
        }
        self.default.filter(|q| *q > 0)
    }
}

/// A member's signed self-description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// What is signed.
    #[serde(rename = "b")]
    pub body: RecordBody,
    /// The member's signature.
    #[serde(rename = "s", with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl NodeRecord {
    /// Signs `body` with the member's key.
    pub fn sign(signer: &Signer, body: RecordBody) -> NodeRecord {
        let sig = signer.sign(RECORD_TAG, &cbor(&body));
        NodeRecord { body, sig }
    }

    /// Whether the member offers storage.
    pub fn offers_storage(&self) -> bool {
        self.body.roles & ROLE_STORAGE != 0
    }
}

/// The signed part of an expulsion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpulsionBody {
    /// The grid.
    #[serde(rename = "g", with = "serde_bytes")]
    pub grid: GridId,
    /// The expelled member.
    #[serde(rename = "m", with = "serde_bytes")]
    pub member: PublicKey,
    /// Who expels (the founder or the member's inviter).
    #[serde(rename = "b", with = "serde_bytes")]
    pub by: PublicKey,
    /// When (unix seconds).
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// The expelled member's chain (names its inviter).
    #[serde(rename = "ch")]
    pub chain: Vec<Certificate>,
}

/// A grid-wide expulsion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expulsion {
    /// What is signed.
    #[serde(rename = "b")]
    pub body: ExpulsionBody,
    /// The expeller's signature.
    #[serde(rename = "s", with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl Expulsion {
    /// Signs `body` with the expeller's key.
    pub fn sign(signer: &Signer, body: ExpulsionBody) -> Expulsion {
        let sig = signer.sign(EXPEL_TAG, &cbor(&body));
        Expulsion { body, sig }
    }
}

/// Anything gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GridItem {
    /// A node record.
    Record(NodeRecord),
    /// An expulsion.
    Expulsion(Expulsion),
}

impl GridItem {
    /// Bounded decoding of an item.
    pub fn decode(bytes: &[u8]) -> Result<GridItem, Reject> {
        if bytes.len() > MAX_ITEM {
            return Err(Reject::Malformed);
        }
        let item: GridItem = ciborium::de::from_reader_with_recursion_limit(bytes, 8)
            .map_err(|_| Reject::Malformed)?;
        let text_ok = |s: &str| s.len() <= MAX_TEXT;
        let ok = match &item {
            GridItem::Record(r) => {
                let b = &r.body;
                text_ok(&b.nickname)
                    && text_ok(&b.version)
                    && b.onion.as_deref().is_none_or(text_ok)
                    && b.addrs.len() <= MAX_ADDRS
                    && b.addrs.iter().all(|a| a.len() <= MAX_ADDR_LEN)
                    && b.chain.len() <= MAX_CHAIN
                    && b.grants.explicit.len() <= MAX_EXPLICIT_GRANTS
            }
            GridItem::Expulsion(e) => e.body.chain.len() <= MAX_CHAIN,
        };
        if ok { Ok(item) } else { Err(Reject::Malformed) }
    }

    /// The canonical encoding (what is stored, hashed and sent on).
    pub fn encode(&self) -> Vec<u8> {
        cbor(self)
    }

    /// The item's key and meta.
    pub fn key_meta(&self) -> (ItemKey, Meta) {
        let bytes = self.encode();
        match self {
            GridItem::Record(r) => (
                ItemKey {
                    kind: Kind::Record as u8,
                    id: r.body.peer,
                },
                Meta::of(r.body.seq, &bytes),
            ),
            GridItem::Expulsion(e) => (
                ItemKey {
                    kind: Kind::Expulsion as u8,
                    id: e.body.member,
                },
                Meta::of(0, &bytes),
            ),
        }
    }

    /// Checks signatures, chain, grid and expiry.
    pub fn verify(
        &self,
        grid: &GridId,
        unix_now: u64,
        expelled: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<(), Reject> {
        match self {
            GridItem::Record(r) => {
                let b = &r.body;
                if &b.grid != grid {
                    return Err(Reject::WrongGrid);
                }
                if !verify(&b.peer, RECORD_TAG, &cbor(b), &r.sig) {
                    return Err(Reject::BadSignature);
                }
                if b.expires <= unix_now {
                    return Err(Reject::Expired);
                }
                if expelled(&b.peer) {
                    return Err(Reject::Expelled);
                }
                verify_chain(grid, &b.peer, &b.chain, expelled)
            }
            GridItem::Expulsion(e) => {
                let b = &e.body;
                if &b.grid != grid {
                    return Err(Reject::WrongGrid);
                }
                if !verify(&b.by, EXPEL_TAG, &cbor(b), &e.sig) {
                    return Err(Reject::BadSignature);
                }
                if &b.member == grid {
                    return Err(Reject::NotAllowed);
                }
                // The expelled member's chain must be genuine (expulsions of members already
                // expelled by cascade still count, so ignore expulsions here).
                verify_chain(grid, &b.member, &b.chain, &|_| false)?;
                let inviter = b.chain.first().map(|c| c.inviter);
                if &b.by == grid || Some(b.by) == inviter {
                    Ok(())
                } else {
                    Err(Reject::NotAllowed)
                }
            }
        }
    }
}

/// What an accepted item changed (for the caller to persist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Stored: key and canonical bytes.
    pub stored: Option<(ItemKey, Vec<u8>)>,
    /// Removed (records of newly expelled members).
    pub removed: Vec<ItemKey>,
}

/// The validated membership view of one node: every current record and expulsion.
#[derive(Clone, Debug)]
pub struct Registry {
    grid: GridId,
    index: Index,
    items: BTreeMap<ItemKey, (Vec<u8>, GridItem)>,
    expelled: BTreeSet<PublicKey>,
}

impl Registry {
    /// An empty view of `grid`.
    pub fn new(grid: GridId) -> Registry {
        Registry {
            grid,
            index: Index::default(),
            items: BTreeMap::new(),
            expelled: BTreeSet::new(),
        }
    }

    /// The grid.
    pub fn grid(&self) -> &GridId {
        &self.grid
    }

    /// The digest index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Decodes `bytes` and returns key and meta of its canonical form (no signature check).
    pub fn identify(bytes: &[u8]) -> Result<(ItemKey, Meta, GridItem), Reject> {
        let item = GridItem::decode(bytes)?;
        let (k, m) = item.key_meta();
        Ok((k, m, item))
    }

    /// Validates `bytes` and stores the item if newer than what is held.
    pub fn insert(&mut self, bytes: &[u8], unix_now: u64) -> Result<(Inserted, Change), Reject> {
        let (key, meta, item) = Self::identify(bytes)?;
        if let Some(held) = self.index.get(&key) {
            if held == meta {
                return Ok((Inserted::Duplicate, Change::default()));
            }
            if held > meta {
                return Err(Reject::Replayed);
            }
        }
        if key.kind == Kind::Expulsion as u8 && self.expelled.contains(&key.id) {
            // Already expelled by another valid expulsion: keep the first.
            return Ok((Inserted::Duplicate, Change::default()));
        }
        let expelled = &self.expelled;
        item.verify(&self.grid, unix_now, &|k| expelled.contains(k))?;
        let mut change = Change::default();
        if let GridItem::Expulsion(e) = &item {
            self.expelled.insert(e.body.member);
            // Drop the records of the member and of everyone whose chain runs through it.
            let gone: Vec<ItemKey> = self
                .items
                .iter()
                .filter_map(|(k, (_, it))| match it {
                    GridItem::Record(r)
                        if r.body.peer == e.body.member
                            || r.body.chain.iter().any(|c| c.member == e.body.member) =>
                    {
                        Some(*k)
                    }
                    _ => None,
                })
                .collect();
            for k in gone {
                self.items.remove(&k);
                self.index.remove(&k);
                change.removed.push(k);
            }
        }
        let canonical = item.encode();
        self.index.set(key, meta);
        self.items.insert(key, (canonical.clone(), item));
        change.stored = Some((key, canonical));
        Ok((Inserted::New, change))
    }

    /// Removes records past their expiry; returns their keys.
    pub fn expire(&mut self, unix_now: u64) -> Vec<ItemKey> {
        let gone: Vec<ItemKey> = self
            .items
            .iter()
            .filter_map(|(k, (_, it))| match it {
                GridItem::Record(r) if r.body.expires <= unix_now => Some(*k),
                _ => None,
            })
            .collect();
        for k in &gone {
            self.items.remove(k);
            self.index.remove(k);
        }
        gone
    }

    /// The meta held for `key`.
    pub fn meta(&self, key: &ItemKey) -> Option<Meta> {
        self.index.get(key)
    }

    /// The canonical bytes held for `key`.
    pub fn get(&self, key: &ItemKey) -> Option<&[u8]> {
        self.items.get(key).map(|(b, _)| b.as_slice())
    }

    /// The record of `peer`.
    pub fn record(&self, peer: &PublicKey) -> Option<&NodeRecord> {
        let key = ItemKey {
            kind: Kind::Record as u8,
            id: *peer,
        };
        match self.items.get(&key) {
            Some((_, GridItem::Record(r))) => Some(r),
            _ => None,
        }
    }

    /// Every current record.
    pub fn records(&self) -> impl Iterator<Item = &NodeRecord> {
        self.items.values().filter_map(|(_, it)| match it {
            GridItem::Record(r) => Some(r),
            GridItem::Expulsion(_) => None,
        })
    }

    /// Every expulsion.
    pub fn expulsions(&self) -> impl Iterator<Item = &Expulsion> {
        self.items.values().filter_map(|(_, it)| match it {
            GridItem::Expulsion(e) => Some(e),
            GridItem::Record(_) => None,
        })
    }

    /// Whether `peer` has a current record.
    pub fn is_member(&self, peer: &PublicKey) -> bool {
        self.record(peer).is_some()
    }

    /// Whether `peer` was expelled.
    pub fn is_expelled(&self, peer: &PublicKey) -> bool {
        self.expelled.contains(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn signer(n: u8) -> Signer {
        Signer::from_seed(&[n; 32])
    }

    fn body(s: &Signer, grid: GridId, seq: u64, chain: Vec<Certificate>) -> RecordBody {
        RecordBody {
            grid,
            peer: s.public(),
            seq,
            issued_at: 100,
            expires: 1000,
            nickname: "n".into(),
            addrs: vec![ByteBuf::from(vec![4, 127, 0, 0, 1])],
            onion: None,
            roles: ROLE_STORAGE,
            free: 1 << 30,
            capacity: 1 << 31,
            version: "0.1.0".into(),
            chain,
            grants: GrantView::default(),
        }
    }

    fn rec(s: &Signer, grid: GridId, seq: u64, chain: Vec<Certificate>) -> Vec<u8> {
        GridItem::Record(NodeRecord::sign(s, body(s, grid, seq, chain))).encode()
    }

    #[test]
    fn chains_records_replays_forgeries_and_expulsion_cascade() {
        let (founder, bob, carol, mallory) = (signer(1), signer(2), signer(3), signer(4));
        let grid = founder.public();
        let bob_cert = Certificate::issue(&founder, grid, bob.public(), 10);
        let carol_cert = Certificate::issue(&bob, grid, carol.public(), 11);
        let mut reg = Registry::new(grid);
        assert_eq!(
            reg.insert(&rec(&founder, grid, 1, vec![]), 50).map(|r| r.0),
            Ok(Inserted::New)
        );
        assert_eq!(
            reg.insert(&rec(&bob, grid, 1, vec![bob_cert.clone()]), 50)
                .map(|r| r.0),
            Ok(Inserted::New)
        );
        let carol_chain = vec![carol_cert.clone(), bob_cert.clone()];
        assert!(
            reg.insert(&rec(&carol, grid, 5, carol_chain.clone()), 50)
                .is_ok()
        );
        assert_eq!(reg.records().count(), 3);

        // Replayed old record, duplicate, expired.
        assert_eq!(
            reg.insert(&rec(&carol, grid, 4, carol_chain.clone()), 50),
            Err(Reject::Replayed)
        );
        assert_eq!(
            reg.insert(&rec(&carol, grid, 5, carol_chain.clone()), 50)
                .map(|r| r.0),
            Ok(Inserted::Duplicate)
        );
        assert_eq!(
            reg.insert(&rec(&carol, grid, 6, carol_chain.clone()), 1000),
            Err(Reject::Expired)
        );

        // Forged signature: Mallory signs a record in Carol's name.
        let mut forged = NodeRecord::sign(&mallory, body(&carol, grid, 9, carol_chain.clone()));
        forged.body.nickname = "carol".into();
        assert_eq!(
            reg.insert(&GridItem::Record(forged).encode(), 50),
            Err(Reject::BadSignature)
        );

        // Broken chains: no chain, a self-made certificate, a certificate of another grid.
        assert_eq!(
            reg.insert(&rec(&mallory, grid, 1, vec![]), 50),
            Err(Reject::BrokenChain)
        );
        let self_cert = Certificate::issue(&mallory, grid, mallory.public(), 1);
        assert_eq!(
            reg.insert(&rec(&mallory, grid, 1, vec![self_cert]), 50),
            Err(Reject::BrokenChain)
        );
        let other = Certificate::issue(&founder, [9; 32], mallory.public(), 1);
        assert_eq!(
            reg.insert(&rec(&mallory, grid, 1, vec![other]), 50),
            Err(Reject::WrongGrid)
        );
        assert_eq!(
            reg.insert(&rec(&mallory, [9; 32], 1, vec![]), 50),
            Err(Reject::WrongGrid)
        );
        assert!(!reg.is_member(&mallory.public()));

        // Only the founder or the inviter may expel: Carol may not expel Bob.
        let by_carol = Expulsion::sign(
            &carol,
            ExpulsionBody {
                grid,
                member: bob.public(),
                by: carol.public(),
                issued_at: 60,
                chain: vec![bob_cert.clone()],
            },
        );
        assert_eq!(
            reg.insert(&GridItem::Expulsion(by_carol).encode(), 60),
            Err(Reject::NotAllowed)
        );

        // The founder expels Bob: Bob and Carol (invited by Bob) are gone and stay gone.
        let expel = Expulsion::sign(
            &founder,
            ExpulsionBody {
                grid,
                member: bob.public(),
                by: grid,
                issued_at: 60,
                chain: vec![bob_cert.clone()],
            },
        );
        let (ins, change) = reg
            .insert(&GridItem::Expulsion(expel).encode(), 60)
            .expect("expel");
        assert_eq!(ins, Inserted::New);
        assert_eq!(change.removed.len(), 2);
        assert!(!reg.is_member(&bob.public()) && !reg.is_member(&carol.public()));
        assert!(reg.is_member(&founder.public()));
        assert_eq!(
            reg.insert(&rec(&bob, grid, 7, vec![bob_cert]), 60),
            Err(Reject::Expelled)
        );
        assert_eq!(
            reg.insert(&rec(&carol, grid, 7, carol_chain), 60),
            Err(Reject::Expelled)
        );

        // Expiry sweeps records.
        assert_eq!(reg.expire(1000).len(), 1);
        assert_eq!(reg.records().count(), 0);
    }

    #[test]
    fn grant_views_answer_for_each_member() {
        let (me, other) = ([1; 32], [2; 32]);
        let mut g = GrantView::default();
        assert_eq!(g.grant_for(&me, None), Some(UNLIMITED));
        g.explicit.push(ExplicitGrant {
            member: me,
            quota: 0,
        });
        assert_eq!(g.grant_for(&me, None), None, "revoked");
        assert_eq!(g.grant_for(&other, None), Some(UNLIMITED));
        g.reciprocal_milli = Some(500);
        assert_eq!(g.grant_for(&other, Some(1000)), Some(500));
        assert_eq!(
            g.grant_for(&other, None),
            Some(UNLIMITED),
            "unknown: the default"
        );
        g.invite_only = true;
        assert_eq!(g.grant_for(&other, Some(1000)), None);
    }

    #[test]
    fn malformed_items_are_refused() {
        assert_eq!(GridItem::decode(&[0xff, 0x00]), Err(Reject::Malformed));
        assert_eq!(
            GridItem::decode(&vec![0; MAX_ITEM + 1]),
            Err(Reject::Malformed)
        );
        let s = signer(1);
        let mut b = body(&s, s.public(), 1, vec![]);
        b.nickname = "x".repeat(MAX_TEXT + 1);
        let item = GridItem::Record(NodeRecord::sign(&s, b)).encode();
        assert_eq!(GridItem::decode(&item), Err(Reject::Malformed));
    }
}
