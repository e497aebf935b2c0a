//! Share metadata: what a storage server keeps next to a share's data and returns to
//! downloaders — the UEB, the share's block hashes (leaves of its block Merkle tree), the proof of
//! its block-tree root under the share root, and the crypttext segment hashes.
//!
//! Encoding (little-endian): `b"KSHM"`, version 1, shnum u8, ueb_len u16, ueb, n_blocks u32,
//! block hashes, proof_len u8, proof hashes, n_segments u32, crypttext hashes. Decoding is bounded
//! by the input length and a caller-given maximum; counts the input cannot hold are refused before
//! anything is allocated.

use super::wire::{FormatError, Reader};

const MAGIC: &[u8; 4] = b"KSHM";
const VERSION: u8 = 1;
/// Most segments a file may have (1 TiB of 256 KiB segments).
pub const MAX_SEGMENTS: usize = 1 << 22;

/// Metadata of one share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareMeta {
    /// Share number.
    pub shnum: u8,
    /// The encoded UEB.
    pub ueb: Vec<u8>,
    /// One hash per segment: the leaves of this share's block tree.
    pub block_hashes: Vec<[u8; 32]>,
    /// Sibling hashes proving this share's block-tree root under the UEB's share root.
    pub share_hash_proof: Vec<[u8; 32]>,
    /// One hash per segment of crypttext, the same in every share.
    pub crypttext_hashes: Vec<[u8; 32]>,
}

impl ShareMeta {
    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            16 + self.ueb.len()
                + 32 * (self.block_hashes.len()
                    + self.share_hash_proof.len()
                    + self.crypttext_hashes.len()),
        );
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.push(self.shnum);
        v.extend_from_slice(&(self.ueb.len() as u16).to_le_bytes());
        v.extend_from_slice(&self.ueb);
        v.extend_from_slice(&(self.block_hashes.len() as u32).to_le_bytes());
        self.block_hashes
            .iter()
            .for_each(|h| v.extend_from_slice(h));
        v.push(self.share_hash_proof.len() as u8);
        self.share_hash_proof
            .iter()
            .for_each(|h| v.extend_from_slice(h));
        v.extend_from_slice(&(self.crypttext_hashes.len() as u32).to_le_bytes());
        self.crypttext_hashes
            .iter()
            .for_each(|h| v.extend_from_slice(h));
        v
    }

    /// Decodes, refusing inputs longer than `max_len`.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, FormatError> {
        if bytes.len() > max_len {
            return Err(FormatError::TooLong {
                len: bytes.len(),
                max: max_len,
            });
        }
        let mut r = Reader::new(bytes, "share metadata");
        let magic = r.take(4)?;
        let version = r.u8()?;
        if magic != MAGIC || version != VERSION {
            return Err(FormatError::BadHeader {
                what: "share metadata",
                version,
            });
        }
        let shnum = r.u8()?;
        let ueb_len = usize::from(r.u16()?);
        let ueb = r.take(ueb_len)?.to_vec();
        let n_blocks = r.u32()? as usize;
        if n_blocks > MAX_SEGMENTS {
            return Err(FormatError::Invalid {
                what: "share metadata",
                why: format!("{n_blocks} blocks"),
            });
        }
        let block_hashes = r.hashes(n_blocks)?;
        let n_proof = usize::from(r.u8()?);
        let share_hash_proof = r.hashes(n_proof)?;
        let n_ct = r.u32()? as usize;
        if n_ct != n_blocks {
            return Err(FormatError::Invalid {
                what: "share metadata",
                why: format!("{n_ct} crypttext hashes for {n_blocks} blocks"),
            });
        }
        let crypttext_hashes = r.hashes(n_ct)?;
        r.finish()?;
        Ok(ShareMeta {
            shnum,
            ueb,
            block_hashes,
            share_hash_proof,
            crypttext_hashes,
        })
    }
}
