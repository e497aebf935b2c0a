//! Mutable slots (Tahoe-LAFS SDMF, simplified): pure, no IO.
//!
//! A slot is named by an RSA-2048 key pair. From the private key (PKCS#8 DER) derive, one way:
//! the **write key** (tagged hash of the private key), the **read key** (of the write key,
//! [`crate::caps::ssk_readkey`]) and the **storage index** (of the read key). The caps carry the
//! public key's fingerprint, so a reader accepts only versions signed by the slot's key.
//!
//! A version is the whole content (at most [`MAX_MUTABLE_SIZE`]) encrypted with AES-256-CTR under
//! a key derived from the read key and a fresh random salt (a new keystream per version),
//! Reed-Solomon coded into n blocks, one per share. The block hashes form a Merkle tree whose root
//! is signed together with the storage index, the sequence number, the salt, k, n and the length.
//! Every share carries the signed header, the public key, the signature, its block's Merkle proof,
//! the private key encrypted under a key derived from the write key (so any write-cap holder can
//! sign new versions) and its block.
//!
//! Servers do not interpret shares beyond [`peek_seqnum`]; they only enforce the per-server
//! **write enabler** ([`write_enabler`], derivable only from the write key) and test-and-set.
//! Readers verify every share ([`verify_share`]) and take the newest version with at least k
//! shares ([`best_version`]).
//!
//! Share encoding (little-endian): `b"KMSH"`, version 1, seqnum u64, root hash, `salt[16]`, k u8,
//! n u8, data_len u64, shnum u8, pubkey (u16 length + DER), signature (u16 + bytes), proof
//! (u8 count + hashes), encrypted private key (u16 + bytes), block (u32 + bytes). Decoding is
//! bounded by the input and [`MAX_SHARE_LEN`].

use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1v15::{Signature, SigningKey, VerifyingKey},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey},
    signature::{SignatureEncoding, Signer, Verifier},
    traits::PublicKeyParts,
};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{
    caps::{SskAccess, SskCap, ssk_readkey, ssk_storage_index},
    codec::{
        Erasure, FormatError, Key, apply_keystream,
        merkle::{merkle_proof, merkle_root, verify_merkle_proof},
        wire::Reader,
    },
    hash::tagged_hash,
};

/// Largest content of a mutable file or directory.
pub const MAX_MUTABLE_SIZE: usize = 4 << 20;
/// Largest encoded share (content at k=1 plus keys, signature and proof).
pub const MAX_SHARE_LEN: usize = MAX_MUTABLE_SIZE + 16 * 1024;
/// RSA modulus size of slot keys.
pub const RSA_BITS: usize = 2048;

const MAGIC: &[u8; 4] = b"KMSH";
const VERSION: u8 = 1;
const WRITEKEY_TAG: &str = "kith:ssk:writekey:v1";
const FINGERPRINT_TAG: &str = "kith:ssk:pubkey:v1";
const DATAKEY_TAG: &str = "kith:ssk:datakey:v1";
const PRIVKEY_KEY_TAG: &str = "kith:ssk:privkey-key:v1";
const WE_MASTER_TAG: &str = "kith:ssk:write-enabler-master:v1";
const WE_TAG: &str = "kith:ssk:write-enabler:v1";
const SIGNED_TAG: &str = "kith:ssk:signed:v1";
const BLOCK_TAG: &str = "kith:ssk:block:v1";

/// Why a mutable operation failed (pure side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MutableError {
    /// The share bytes do not decode.
    #[error("malformed mutable share: {0}")]
    Format(#[from] FormatError),
    /// The public key is not the one the cap names.
    #[error("share {shnum}: public key does not match the cap's fingerprint")]
    WrongKey {
        /// The share.
        shnum: u8,
    },
    /// The signature does not verify.
    #[error("share {shnum}: bad signature")]
    BadSignature {
        /// The share.
        shnum: u8,
    },
    /// The block does not chain to the signed root.
    #[error("share {shnum}: block does not match the signed root hash")]
    BadBlock {
        /// The share.
        shnum: u8,
    },
    /// Parameters out of range.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Not enough shares of one version.
    #[error("not enough shares: {0}")]
    NotEnoughShares(String),
    /// The content is larger than [`MAX_MUTABLE_SIZE`].
    #[error(
        "mutable content of {0} bytes exceeds the {MAX_MUTABLE_SIZE}-byte limit (upload large files immutable)"
    )]
    TooLarge(usize),
    /// The cap cannot do this (e.g. write with a read cap).
    #[error("{0}")]
    NotAllowed(String),
    /// RSA failure (key generation, encoding).
    #[error("signing key: {0}")]
    Key(String),
}

/// A version of a slot: later sequence numbers win; equal ones are ordered by root hash so
/// every reader picks the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Sequence number (starts at 1).
    pub seqnum: u64,
    /// Merkle root over the version's block hashes.
    pub root_hash: [u8; 32],
}

/// One share of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableShare {
    /// The version.
    pub version: Version,
    /// Salt of the data key.
    pub salt: [u8; 16],
    /// k.
    pub needed: u8,
    /// n.
    pub total: u8,
    /// Plaintext length.
    pub data_len: u64,
    /// Share number.
    pub shnum: u8,
    /// The slot's public key (SubjectPublicKeyInfo DER).
    pub pubkey: Vec<u8>,
    /// PKCS#1 v1.5 SHA-256 signature over the signed header.
    pub signature: Vec<u8>,
    /// Merkle proof of this share's block hash under the root.
    pub proof: Vec<[u8; 32]>,
    /// The private key, encrypted under a key derived from the write key.
    pub enc_privkey: Vec<u8>,
    /// The erasure-coded block.
    pub block: Vec<u8>,
}

/// A new slot's key pair and write cap.
pub struct NewSlot {
    /// The write cap.
    pub cap: SskCap,
    /// The signing key.
    pub privkey: RsaPrivateKey,
}

impl std::fmt::Debug for NewSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewSlot({:?})", self.cap)
    }
}

fn key_err(e: impl std::fmt::Display) -> MutableError {
    MutableError::Key(e.to_string())
}

/// The fingerprint of a public key (DER).
pub fn fingerprint(pubkey_der: &[u8]) -> [u8; 32] {
    tagged_hash(FINGERPRINT_TAG, &[pubkey_der])
}

fn pubkey_der(key: &RsaPrivateKey) -> Result<Vec<u8>, MutableError> {
    Ok(key
        .to_public_key()
        .to_public_key_der()
        .map_err(key_err)?
        .as_bytes()
        .to_vec())
}

/// A cap (write access) for an existing private key.
pub fn cap_for_key(privkey: &RsaPrivateKey, dir: bool) -> Result<SskCap, MutableError> {
    let der = privkey.to_pkcs8_der().map_err(key_err)?;
    let writekey = tagged_hash(WRITEKEY_TAG, &[der.as_bytes()]);
    Ok(SskCap {
        dir,
        access: SskAccess::Write { writekey },
        fingerprint: fingerprint(&pubkey_der(privkey)?),
    })
}

/// Generates a slot key (RSA-2048; takes a fraction of a second).
pub fn new_slot(
    rng: &mut (impl rand::CryptoRng + rand::RngCore),
    dir: bool,
) -> Result<NewSlot, MutableError> {
    let privkey = RsaPrivateKey::new(rng, RSA_BITS).map_err(key_err)?;
    Ok(NewSlot {
        cap: cap_for_key(&privkey, dir)?,
        privkey,
    })
}

/// The write enabler a server `server_id` stores for the slot of `writekey`.
pub fn write_enabler(writekey: &[u8; 32], server_id: &[u8]) -> [u8; 32] {
    let master = tagged_hash(WE_MASTER_TAG, &[writekey]);
    tagged_hash(WE_TAG, &[&master, server_id])
}

fn data_key(readkey: &[u8; 32], salt: &[u8; 16]) -> Key {
    Key(tagged_hash(DATAKEY_TAG, &[readkey, salt]))
}

fn privkey_key(writekey: &[u8; 32]) -> Key {
    Key(tagged_hash(PRIVKEY_KEY_TAG, &[writekey]))
}

fn block_hash(block: &[u8]) -> [u8; 32] {
    tagged_hash(BLOCK_TAG, &[block])
}

fn signed_message(si: &[u8; 16], s: &MutableShare) -> [u8; 32] {
    tagged_hash(
        SIGNED_TAG,
        &[
            si,
            &s.version.seqnum.to_le_bytes(),
            &s.version.root_hash,
            &s.salt,
            &[s.needed, s.total],
            &s.data_len.to_le_bytes(),
        ],
    )
}

/// The private key from a share, for a write-cap holder; checks it is the slot's key.
pub fn recover_privkey(cap: &SskCap, share: &MutableShare) -> Result<RsaPrivateKey, MutableError> {
    let writekey = cap
        .writekey()
        .ok_or_else(|| MutableError::NotAllowed("a read cap cannot write".into()))?;
    let mut der = Zeroizing::new(share.enc_privkey.clone());
    apply_keystream(&privkey_key(writekey), 0, &mut der);
    if tagged_hash(WRITEKEY_TAG, &[&der]) != *writekey {
        return Err(MutableError::WrongKey { shnum: share.shnum });
    }
    RsaPrivateKey::from_pkcs8_der(&der).map_err(key_err)
}

/// Encodes `plaintext` as version `seqnum` of the slot: n shares, signed.
pub fn encode_version(
    cap: &SskCap,
    privkey: &RsaPrivateKey,
    seqnum: u64,
    plaintext: &[u8],
    needed: u8,
    total: u8,
    salt: [u8; 16],
) -> Result<Vec<MutableShare>, MutableError> {
    let writekey = cap
        .writekey()
        .ok_or_else(|| MutableError::NotAllowed("a read cap cannot write".into()))?;
    if plaintext.len() > MAX_MUTABLE_SIZE {
        return Err(MutableError::TooLarge(plaintext.len()));
    }
    let erasure = Erasure::new(needed, total).map_err(|e| MutableError::Params(e.to_string()))?;
    let readkey = ssk_readkey(writekey);
    let si = ssk_storage_index(&readkey);
    let mut crypttext = plaintext.to_vec();
    apply_keystream(&data_key(&readkey, &salt), 0, &mut crypttext);
    let blocks = erasure.encode(&crypttext);
    let hashes: Vec<[u8; 32]> = blocks.iter().map(|b| block_hash(b)).collect();
    let root_hash = merkle_root(&hashes);
    let pubkey = pubkey_der(privkey)?;
    if fingerprint(&pubkey) != cap.fingerprint {
        return Err(MutableError::WrongKey { shnum: 0 });
    }
    let der = privkey.to_pkcs8_der().map_err(key_err)?;
    let mut enc_privkey = der.as_bytes().to_vec();
    apply_keystream(&privkey_key(writekey), 0, &mut enc_privkey);
    let mut template = MutableShare {
        version: Version { seqnum, root_hash },
        salt,
        needed,
        total,
        data_len: plaintext.len() as u64,
        shnum: 0,
        pubkey,
        signature: Vec::new(),
        proof: Vec::new(),
        enc_privkey,
        block: Vec::new(),
    };
    let signer = SigningKey::<Sha256>::new(privkey.clone());
    template.signature = signer
        .try_sign(&signed_message(&si, &template))
        .map_err(key_err)?
        .to_vec();
    Ok(one_per_block(&template, blocks, &hashes))
}

/// Share i of a version: the template's signed header, keys and signature, block i and its
/// proof.
fn one_per_block(
    template: &MutableShare,
    blocks: Vec<Vec<u8>>,
    hashes: &[[u8; 32]],
) -> Vec<MutableShare> {
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, block)| MutableShare {
            shnum: i as u8,
            proof: merkle_proof(hashes, i).unwrap_or_default(),
            block,
            ..template.clone()
        })
        .collect()
}

impl MutableShare {
    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            96 + self.pubkey.len()
                + self.signature.len()
                + 32 * self.proof.len()
                + self.enc_privkey.len()
                + self.block.len(),
        );
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.extend_from_slice(&self.version.seqnum.to_le_bytes());
        v.extend_from_slice(&self.version.root_hash);
        v.extend_from_slice(&self.salt);
        v.push(self.needed);
        v.push(self.total);
        v.extend_from_slice(&self.data_len.to_le_bytes());
        v.push(self.shnum);
        v.extend_from_slice(&(self.pubkey.len() as u16).to_le_bytes());
        v.extend_from_slice(&self.pubkey);
        v.extend_from_slice(&(self.signature.len() as u16).to_le_bytes());
        v.extend_from_slice(&self.signature);
        v.push(self.proof.len() as u8);
        self.proof.iter().for_each(|h| v.extend_from_slice(h));
        v.extend_from_slice(&(self.enc_privkey.len() as u16).to_le_bytes());
        v.extend_from_slice(&self.enc_privkey);
        v.extend_from_slice(&(self.block.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.block);
        v
    }

    /// Decodes (no signature check: see [`verify_share`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > MAX_SHARE_LEN {
            return Err(FormatError::TooLong {
                len: bytes.len(),
                max: MAX_SHARE_LEN,
            });
        }
        let mut r = Reader::new(bytes, "mutable share");
        let magic = r.take(4)?;
        let version = r.u8()?;
        if magic != MAGIC || version != VERSION {
            return Err(FormatError::BadHeader {
                what: "mutable share",
                version,
            });
        }
        let seqnum = r.u64()?;
        let root_hash = r.hash()?;
        let mut salt = [0u8; 16];
        salt.copy_from_slice(r.take(16)?);
        let needed = r.u8()?;
        let total = r.u8()?;
        let data_len = r.u64()?;
        let shnum = r.u8()?;
        let n = usize::from(r.u16()?);
        let pubkey = r.take(n)?.to_vec();
        let n = usize::from(r.u16()?);
        let signature = r.take(n)?.to_vec();
        let n = usize::from(r.u8()?);
        let proof = r.hashes(n)?;
        let n = usize::from(r.u16()?);
        let enc_privkey = r.take(n)?.to_vec();
        let n = r.u32()? as usize;
        let block = r.take(n)?.to_vec();
        r.finish()?;
        Ok(MutableShare {
            version: Version { seqnum, root_hash },
            salt,
            needed,
            total,
            data_len,
            shnum,
            pubkey,
            signature,
            proof,
            enc_privkey,
            block,
        })
    }
}

/// The sequence number of an encoded share (what a server's test-and-set compares).
pub fn peek_seqnum(bytes: &[u8]) -> Result<u64, FormatError> {
    let mut r = Reader::new(bytes, "mutable share");
    let magic = r.take(4)?;
    let version = r.u8()?;
    if magic != MAGIC || version != VERSION {
        return Err(FormatError::BadHeader {
            what: "mutable share",
            version,
        });
    }
    r.u64()
}

/// Decodes and verifies a share of the slot (storage index `si`, key `fingerprint`): the key,
/// the signature, the parameters and the block's proof under the signed root.
pub fn verify_share(
    si: &[u8; 16],
    fp: &[u8; 32],
    bytes: &[u8],
) -> Result<MutableShare, MutableError> {
    let s = MutableShare::from_bytes(bytes)?;
    let shnum = s.shnum;
    if s.needed == 0 || s.needed > s.total || shnum >= s.total {
        return Err(MutableError::Params(format!(
            "k={} n={} shnum={shnum}",
            s.needed, s.total
        )));
    }
    if s.data_len > MAX_MUTABLE_SIZE as u64 {
        return Err(MutableError::TooLarge(s.data_len as usize));
    }
    if fingerprint(&s.pubkey) != *fp {
        return Err(MutableError::WrongKey { shnum });
    }
    let key = RsaPublicKey::from_public_key_der(&s.pubkey)
        .map_err(|_| MutableError::WrongKey { shnum })?;
    if key.size() * 8 != RSA_BITS {
        return Err(MutableError::WrongKey { shnum });
    }
    let sig = Signature::try_from(s.signature.as_slice())
        .map_err(|_| MutableError::BadSignature { shnum })?;
    VerifyingKey::<Sha256>::new(key)
        .verify(&signed_message(si, &s), &sig)
        .map_err(|_| MutableError::BadSignature { shnum })?;
    let expected = (s.data_len as usize).div_ceil(usize::from(s.needed)).max(1);
    if s.block.len() != expected
        || !verify_merkle_proof(
            &s.version.root_hash,
            u64::from(shnum),
            u64::from(s.total),
            &block_hash(&s.block),
            &s.proof,
        )
    {
        return Err(MutableError::BadBlock { shnum });
    }
    Ok(s)
}

/// The newest version with at least k distinct shares among `shares` (already verified).
pub fn best_version<'a>(shares: impl IntoIterator<Item = &'a MutableShare>) -> Option<Version> {
    let mut by_version: std::collections::BTreeMap<Version, (u8, std::collections::BTreeSet<u8>)> =
        std::collections::BTreeMap::new();
    for s in shares {
        let e = by_version
            .entry(s.version)
            .or_insert((s.needed, Default::default()));
        e.1.insert(s.shnum);
    }
    by_version
        .into_iter()
        .rev()
        .find(|(_, (k, set))| set.len() >= usize::from(*k))
        .map(|(v, _)| v)
}

/// Decrypts version `version` from verified shares (at least k of that version).
pub fn decode_version<'a>(
    cap: &SskCap,
    version: Version,
    shares: impl IntoIterator<Item = &'a MutableShare>,
) -> Result<Vec<u8>, MutableError> {
    let readkey = cap
        .readkey()
        .ok_or_else(|| MutableError::NotAllowed("a verify cap cannot read".into()))?;
    let mine: Vec<&MutableShare> = shares
        .into_iter()
        .filter(|s| s.version == version)
        .collect();
    let first = mine
        .first()
        .ok_or_else(|| MutableError::NotEnoughShares("no share of that version".into()))?;
    let (needed, total, len, salt) = (first.needed, first.total, first.data_len, first.salt);
    let erasure = Erasure::new(needed, total).map_err(|e| MutableError::Params(e.to_string()))?;
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; usize::from(total)];
    for s in &mine {
        // Same signed root implies the same header; refuse a share that disagrees anyway.
        if s.needed != needed || s.total != total || s.data_len != len || s.salt != salt {
            continue;
        }
        if let Some(slot) = slots.get_mut(usize::from(s.shnum)) {
            *slot = Some(s.block.clone());
        }
    }
    let mut data = erasure
        .decode(slots, len as usize)
        .map_err(|e| MutableError::NotEnoughShares(e.to_string()))?;
    apply_keystream(&data_key(&readkey, &salt), 0, &mut data);
    Ok(data)
}

/// Rebuilds all n shares of one version from at least k verified shares of it, without any
/// key (the blocks are re-derived by Reed-Solomon from the crypttext; the signed root proves
/// them). What a repairer places where shares are missing.
pub fn regenerate<'a>(
    shares: impl IntoIterator<Item = &'a MutableShare>,
    version: Version,
) -> Result<Vec<MutableShare>, MutableError> {
    let mine: Vec<&MutableShare> = shares
        .into_iter()
        .filter(|s| s.version == version)
        .collect();
    let first = *mine
        .first()
        .ok_or_else(|| MutableError::NotEnoughShares("no share of that version".into()))?;
    let erasure =
        Erasure::new(first.needed, first.total).map_err(|e| MutableError::Params(e.to_string()))?;
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; usize::from(first.total)];
    for s in &mine {
        if let Some(slot) = slots.get_mut(usize::from(s.shnum)) {
            *slot = Some(s.block.clone());
        }
    }
    let crypttext = erasure
        .decode(slots, first.data_len as usize)
        .map_err(|e| MutableError::NotEnoughShares(e.to_string()))?;
    let blocks = erasure.encode(&crypttext);
    let hashes: Vec<[u8; 32]> = blocks.iter().map(|b| block_hash(b)).collect();
    if merkle_root(&hashes) != version.root_hash {
        return Err(MutableError::BadBlock { shnum: first.shnum });
    }
    Ok(one_per_block(first, blocks, &hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use std::sync::OnceLock;

    /// One key for the whole test module (RSA-2048 generation is the slow part).
    fn slot() -> &'static NewSlot {
        static SLOT: OnceLock<NewSlot> = OnceLock::new();
        SLOT.get_or_init(|| {
            new_slot(&mut rand_chacha::ChaCha20Rng::seed_from_u64(7), false).unwrap()
        })
    }

    fn si() -> [u8; 16] {
        slot().cap.storage_index()
    }

    #[test]
    fn round_trip_and_any_k_shares_decode() {
        let s = slot();
        let data = b"hello mutable world, a little longer than a LIT".repeat(40);
        let shares = encode_version(&s.cap, &s.privkey, 3, &data, 3, 10, [9; 16]).unwrap();
        assert_eq!(shares.len(), 10);
        let verified: Vec<MutableShare> = shares
            .iter()
            .map(|sh| verify_share(&si(), &s.cap.fingerprint, &sh.to_bytes()).unwrap())
            .collect();
        let v = best_version(&verified).unwrap();
        assert_eq!(v.seqnum, 3);
        for pick in [[0usize, 1, 2], [7, 8, 9], [1, 5, 9]] {
            let some: Vec<&MutableShare> = pick.iter().map(|&i| &verified[i]).collect();
            assert_eq!(decode_version(&s.cap, v, some).unwrap(), data);
        }
        // A read cap decodes too; a verify cap cannot.
        let ro = s.cap.read_only();
        assert_eq!(decode_version(&ro, v, &verified).unwrap(), data);
        assert!(matches!(
            decode_version(&s.cap.verify_cap(), v, &verified),
            Err(MutableError::NotAllowed(_))
        ));
        // The write cap recovers the signing key; the read cap cannot, nor sign.
        assert!(recover_privkey(&s.cap, &verified[0]).is_ok());
        assert!(recover_privkey(&ro, &verified[0]).is_err());
        assert!(encode_version(&ro, &s.privkey, 4, b"x", 3, 10, [0; 16]).is_err());
    }

    #[test]
    fn forged_or_foreign_shares_are_refused() {
        let s = slot();
        let shares = encode_version(&s.cap, &s.privkey, 1, &[5u8; 500], 3, 10, [1; 16]).unwrap();
        let good = shares[4].to_bytes();
        // A flipped bit anywhere is caught: by verification, or (in the encrypted signing key,
        // which only writers use) when a writer recovers the key.
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 1;
            if let Ok(share) = verify_share(&si(), &s.cap.fingerprint, &bad) {
                assert_ne!(share.enc_privkey, shares[4].enc_privkey, "byte {i}");
                assert!(recover_privkey(&s.cap, &share).is_err(), "byte {i}");
            }
        }
        // A share for another storage index (replayed) fails the signature.
        assert!(matches!(
            verify_share(&[0; 16], &s.cap.fingerprint, &good),
            Err(MutableError::BadSignature { .. })
        ));
        // Another key is refused by fingerprint.
        assert!(matches!(
            verify_share(&si(), &[1; 32], &good),
            Err(MutableError::WrongKey { .. })
        ));
        assert_eq!(peek_seqnum(&good).unwrap(), 1);
    }

    #[test]
    fn newest_version_with_enough_shares_wins() {
        let s = slot();
        let v1 = encode_version(
            &s.cap,
            &s.privkey,
            1,
            b"version one, long enough to code",
            3,
            10,
            [1; 16],
        )
        .unwrap();
        let v2 = encode_version(
            &s.cap,
            &s.privkey,
            2,
            b"version two, long enough to code",
            3,
            10,
            [2; 16],
        )
        .unwrap();
        // Two shares of v2 (not enough) and five of v1: v1 wins.
        let mixed: Vec<MutableShare> = v2[..2].iter().chain(v1[..5].iter()).cloned().collect();
        assert_eq!(best_version(&mixed).unwrap().seqnum, 1);
        let mixed: Vec<MutableShare> = v2[..3].iter().chain(v1[..5].iter()).cloned().collect();
        let v = best_version(&mixed).unwrap();
        assert_eq!(v.seqnum, 2);
        assert_eq!(
            decode_version(&s.cap, v, &mixed).unwrap(),
            b"version two, long enough to code"
        );
        assert!(best_version(&v1[..2]).is_none());
    }

    #[test]
    fn any_k_shares_regenerate_every_share_exactly() {
        let s = slot();
        let shares = encode_version(&s.cap, &s.privkey, 2, &[42u8; 3000], 3, 10, [5; 16]).unwrap();
        for keep in [[0usize, 1, 2], [3, 6, 9], [2, 4, 8]] {
            let some: Vec<&MutableShare> = keep.iter().map(|&i| &shares[i]).collect();
            assert_eq!(regenerate(some, shares[0].version).unwrap(), shares);
        }
        assert!(regenerate(&shares[..2], shares[0].version).is_err());
    }

    #[test]
    fn empty_content_and_size_limit() {
        let s = slot();
        let shares = encode_version(&s.cap, &s.privkey, 1, b"", 3, 10, [0; 16]).unwrap();
        let v: Vec<MutableShare> = shares
            .iter()
            .map(|x| verify_share(&si(), &s.cap.fingerprint, &x.to_bytes()).unwrap())
            .collect();
        assert_eq!(decode_version(&s.cap, v[0].version, &v).unwrap(), b"");
        assert!(matches!(
            encode_version(
                &s.cap,
                &s.privkey,
                1,
                &vec![0; MAX_MUTABLE_SIZE + 1],
                3,
                10,
                [0; 16]
            ),
            Err(MutableError::TooLarge(_))
        ));
    }

    #[test]
    fn write_enablers_differ_per_server_and_need_the_write_key() {
        let wk = *slot().cap.writekey().unwrap();
        assert_ne!(write_enabler(&wk, b"a"), write_enabler(&wk, b"b"));
        assert_ne!(
            write_enabler(&wk, b"a"),
            write_enabler(&ssk_readkey(&wk), b"a")
        );
    }

    proptest! {
        #![proptest_config(crate::prop::cases(256))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = MutableShare::from_bytes(&bytes);
            let _ = peek_seqnum(&bytes);
            let _ = verify_share(&[0; 16], &[0; 32], &bytes);
        }

        #[test]
        fn encoding_round_trips(seq in any::<u64>(), k in 1u8..=5, extra in 0u8..=5, shnum in 0u8..10, block in proptest::collection::vec(any::<u8>(), 0..100)) {
            let s = MutableShare {
                version: Version { seqnum: seq, root_hash: [3; 32] },
                salt: [4; 16], needed: k, total: k + extra, data_len: 9, shnum,
                pubkey: vec![1; 20], signature: vec![2; 30], proof: vec![[5; 32]; 3],
                enc_privkey: vec![6; 40], block,
            };
            prop_assert_eq!(MutableShare::from_bytes(&s.to_bytes()).unwrap(), s.clone());
            prop_assert_eq!(peek_seqnum(&s.to_bytes()).unwrap(), seq);
        }
    }
}
