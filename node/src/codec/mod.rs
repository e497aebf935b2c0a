//! The immutable-file codec (Tahoe-LAFS CHK, simplified): pure, no IO.
//!
//! Upload: [`FileEncoder`] cuts a file into segments; [`FileEncoder::encode_segment`] encrypts
//! one segment (AES-256-CTR at its file offset, [`encrypt`]), Reed-Solomon codes it into n blocks
//! ([`erasure`]) and hashes the blocks; the segment's leaf in the crypttext hash tree is the
//! hash of its k primary block hashes ([`crypttext_leaf`]), so the crypttext is not hashed a
//! second time. It takes `&self`, so segments encode on several threads at once; the caller
//! keeps only the hashes ([`SegmentHashes`]) and sends the blocks away. [`FileEncoder::finish`]
//! builds each share's block Merkle tree, the share hash tree over the block-tree roots, the
//! crypttext hash tree, the URI extension block ([`ueb`]) and the read cap, plus one
//! [`ShareMeta`] per share for the servers.
//!
//! Download: [`verify_ueb`] checks a UEB against the cap, [`VerifiedShare::new`] checks a share's
//! metadata against the UEB (block hashes -> block root -> proof -> share root; crypttext hashes ->
//! crypttext root), [`VerifiedShare::check_block`] checks each block, and [`decode_segment`]
//! rebuilds, checks and decrypts a segment from any k verified blocks. A flipped bit anywhere is
//! caught by one of these before any plaintext is returned.
//!
//! Why hashing the primary block hashes pins the crypttext as tightly as hashing the crypttext:
//! the Reed-Solomon code is systematic, so the k primary (data) blocks *are* the segment's
//! crypttext cut in k and zero-padded; given the leaf, a different crypttext would need a
//! SHA-256 collision. A downloader that fetched the primary shares has already hashed those
//! blocks to check them against their shares' block trees, so checking the decoded segment
//! costs k hashes of 32 bytes; one that fetched other shares hashes only the primary blocks it
//! rebuilt. Files uploaded with version-1 UEBs (leaf = hash of the crypttext) still decode.

pub mod encrypt;
pub mod erasure;
pub mod merkle;
pub mod share;
pub mod ueb;
pub mod wire;

use std::collections::BTreeMap;

pub use encrypt::{ConvergentKeyHasher, KEY_PIECE, Key, apply_keystream, random_key};
pub use erasure::{Erasure, ErasureError};
pub use share::ShareMeta;
pub use ueb::UriExtension;
pub use wire::FormatError;

use crate::{
    caps::{ChkReadCap, ChkVerifyCap},
    hash::{tagged_hash, tagged_hash_of_pieces},
};
use merkle::{merkle_proof, merkle_root, verify_merkle_proof};

/// Largest segment size.
pub const MAX_SEGMENT_SIZE: u32 = 4 << 20;
/// Files of at most this many bytes live inside their cap (LIT).
pub const LIT_THRESHOLD: usize = 55;

const BLOCK_TAG: &str = "kith:block:v1";
const CRYPTTEXT_TAG_V1: &str = "kith:crypttext-segment:v1";
const CRYPTTEXT_TAG_V2: &str = "kith:crypttext-segment:v2";
const STORAGE_INDEX_TAG: &str = "kith:storage-index:v1";

/// Encoding parameters: k, servers of happiness, n, segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncodingParams {
    /// k: shares needed to rebuild.
    pub needed: u8,
    /// Distinct servers an upload must reach.
    pub happy: u8,
    /// n: shares made.
    pub total: u8,
    /// Segment size in bytes.
    pub segment_size: u32,
}

impl Default for EncodingParams {
    fn default() -> Self {
        Self {
            needed: 3,
            happy: 7,
            total: 10,
            segment_size: 1 << 20,
        }
    }
}

/// Invalid encoding parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid encoding parameters: {0}")]
pub struct ParamsError(String);

impl EncodingParams {
    /// Checks 1 <= k <= happy <= n and 1 KiB <= segment size <= 4 MiB.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.needed == 0 || self.needed > self.happy || self.happy > self.total {
            return Err(ParamsError(format!(
                "need 1 <= shares-needed ({}) <= shares-happy ({}) <= shares-total ({})",
                self.needed, self.happy, self.total
            )));
        }
        if !(1024..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(ParamsError(format!(
                "segment size {} is outside 1 KiB..4 MiB",
                self.segment_size
            )));
        }
        Ok(())
    }
}

/// The storage index of a file key: 16 bytes, one-way.
pub fn storage_index(key: &Key) -> [u8; 16] {
    let h = tagged_hash(STORAGE_INDEX_TAG, &[&key.0]);
    let mut si = [0u8; 16];
    si.copy_from_slice(&h[..16]);
    si
}

/// The hash of one block (a leaf of its share's block tree).
pub fn block_hash(block: &[u8]) -> [u8; 32] {
    tagged_hash(BLOCK_TAG, &[block])
}

/// A segment's leaf in a version-2 crypttext hash tree: the tagged hash of the hashes of its k
/// primary blocks ([`block_hash`]), in share order.
pub fn crypttext_leaf(primary_block_hashes: &[[u8; 32]]) -> [u8; 32] {
    let parts: Vec<&[u8]> = primary_block_hashes.iter().map(|h| h.as_slice()).collect();
    tagged_hash(CRYPTTEXT_TAG_V2, &parts)
}

/// Encoding errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Bad parameters.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// The file is small enough for a LIT cap, or empty.
    #[error("files of at most {LIT_THRESHOLD} bytes are stored in the cap (LIT), not encoded")]
    TooSmall,
    /// A segment index or length does not match the file.
    #[error("segment {index}: {why}")]
    Segment {
        /// The segment.
        index: u32,
        /// What is wrong.
        why: String,
    },
    /// Erasure coding failed.
    #[error(transparent)]
    Erasure(#[from] ErasureError),
}

/// One encoded segment: its n blocks and hashes.
#[derive(Debug)]
pub struct EncodedSegment {
    /// Segment index.
    pub index: u32,
    /// Block i goes to share i.
    pub blocks: Vec<Vec<u8>>,
    /// Hash of each block.
    pub block_hashes: Vec<[u8; 32]>,
    /// Hash of the segment's crypttext.
    pub crypttext_hash: [u8; 32],
}

/// What [`FileEncoder::finish`] needs of a segment once its blocks are sent.
#[derive(Clone, Debug)]
pub struct SegmentHashes {
    /// Segment index.
    pub index: u32,
    /// Hash of each block.
    pub block_hashes: Vec<[u8; 32]>,
    /// Hash of the crypttext.
    pub crypttext_hash: [u8; 32],
}

impl EncodedSegment {
    /// The hashes to keep.
    pub fn hashes(&self) -> SegmentHashes {
        SegmentHashes {
            index: self.index,
            block_hashes: self.block_hashes.clone(),
            crypttext_hash: self.crypttext_hash,
        }
    }
}

/// The result of encoding a file.
#[derive(Debug)]
pub struct EncodedFile {
    /// The read cap.
    pub cap: ChkReadCap,
    /// The UEB.
    pub ueb: UriExtension,
    /// Metadata of share i at index i.
    pub share_metas: Vec<ShareMeta>,
}

/// Encodes one file, segment by segment.
#[derive(Debug)]
pub struct FileEncoder {
    key: Key,
    params: EncodingParams,
    size: u64,
    num_segments: u32,
    erasure: Erasure,
}

impl FileEncoder {
    /// An encoder for a file of `file_size` bytes (more than [`LIT_THRESHOLD`]).
    pub fn new(key: Key, params: EncodingParams, file_size: u64) -> Result<Self, EncodeError> {
        params.validate()?;
        if file_size <= LIT_THRESHOLD as u64 {
            return Err(EncodeError::TooSmall);
        }
        let num_segments = u32::try_from(file_size.div_ceil(u64::from(params.segment_size)))
            .ok()
            .filter(|&n| (n as usize) <= share::MAX_SEGMENTS)
            .ok_or_else(|| EncodeError::Segment {
                index: 0,
                why: "file too large for this segment size".into(),
            })?;
        Ok(Self {
            erasure: Erasure::new(params.needed, params.total)?,
            key,
            params,
            size: file_size,
            num_segments,
        })
    }

    /// Number of segments.
    pub fn num_segments(&self) -> u32 {
        self.num_segments
    }

    /// Plaintext length of segment `i`.
    pub fn segment_len(&self, i: u32) -> usize {
        let seg = u64::from(self.params.segment_size);
        let start = u64::from(i) * seg;
        (self.size.saturating_sub(start)).min(seg) as usize
    }

    /// Block size of segment `i`.
    pub fn block_size(&self, i: u32) -> u64 {
        self.erasure.block_size(self.segment_len(i)) as u64
    }

    /// The parameters this encoder uses.
    pub fn params(&self) -> EncodingParams {
        self.params
    }

    /// Segment `i`'s k data blocks as `(file offset, file bytes)`: block `j` holds the file's
    /// bytes from that offset on, that many of them, then zero padding. The keystream offset of
    /// those bytes is the same file offset. A block of padding only (a short tail segment's
    /// last blocks) gets the segment's end as its offset, so every piece lies inside the file.
    pub fn data_pieces(&self, i: u32) -> impl Iterator<Item = (u64, usize)> + use<> {
        let start = u64::from(i) * u64::from(self.params.segment_size);
        let (len, bs) = (self.segment_len(i), self.block_size(i) as usize);
        (0..usize::from(self.params.needed)).map(move |j| {
            let at = (j * bs).min(len);
            (start + at as u64, (len - at).min(bs))
        })
    }

    /// Offset of segment `i`'s block in a share's data.
    pub fn block_offset(&self, i: u32) -> u64 {
        u64::from(i) * self.block_size(0)
    }

    /// Length of one share's data (all its blocks).
    pub fn share_data_len(&self) -> u64 {
        self.block_offset(self.num_segments - 1) + self.block_size(self.num_segments - 1)
    }

    /// The storage index.
    pub fn storage_index(&self) -> [u8; 16] {
        storage_index(&self.key)
    }

    /// Encrypts and erasure-codes segment `index` (callable from several threads at once).
    pub fn encode_segment(
        &self,
        index: u32,
        plaintext: &[u8],
    ) -> Result<EncodedSegment, EncodeError> {
        if index >= self.num_segments || plaintext.len() != self.segment_len(index) {
            return Err(EncodeError::Segment {
                index,
                why: format!(
                    "{} bytes, expected {}",
                    plaintext.len(),
                    self.segment_len(index)
                ),
            });
        }
        self.encode_segment_blocks(index, self.erasure.split(plaintext))
    }

    /// [`Self::encode_segment`] on buffers it keeps as the blocks (no copy of the segment):
    /// `blocks` are n buffers of [`Self::block_size`]`(index)` bytes; block `i < k` holds
    /// plaintext bytes `i*bs..(i+1)*bs` of the segment, as far as the segment goes (bytes past
    /// its end and the parity buffers may hold anything: they are zeroed or overwritten).
    /// Callable from several threads at once.
    pub fn encode_segment_blocks(
        &self,
        index: u32,
        mut blocks: Vec<Vec<u8>>,
    ) -> Result<EncodedSegment, EncodeError> {
        let bs = self.block_size(index) as usize;
        if index >= self.num_segments
            || blocks.len() != usize::from(self.params.total)
            || blocks.iter().any(|b| b.len() != bs)
        {
            return Err(EncodeError::Segment {
                index,
                why: format!(
                    "{} blocks, expected {} of {bs} bytes",
                    blocks.len(),
                    self.params.total
                ),
            });
        }
        for (b, (offset, real)) in blocks.iter_mut().zip(self.data_pieces(index)) {
            // The crypttext is zero-padded to k blocks after encryption.
            apply_keystream(&self.key, offset, &mut b[..real]);
            b[real..].fill(0);
        }
        self.erasure.encode_blocks(&mut blocks);
        let block_hashes: Vec<[u8; 32]> = blocks.iter().map(|b| block_hash(b)).collect();
        let crypttext_hash = crypttext_leaf(&block_hashes[..usize::from(self.params.needed)]);
        Ok(EncodedSegment {
            index,
            blocks,
            block_hashes,
            crypttext_hash,
        })
    }

    /// Builds the hash trees, UEB, cap and share metadata from every segment's hashes.
    pub fn finish(
        self,
        segments: impl IntoIterator<Item = SegmentHashes>,
    ) -> Result<EncodedFile, EncodeError> {
        let n = usize::from(self.params.total);
        let mut by_index: BTreeMap<u32, SegmentHashes> = BTreeMap::new();
        for s in segments {
            if s.index >= self.num_segments || s.block_hashes.len() != n {
                return Err(EncodeError::Segment {
                    index: s.index,
                    why: "unexpected segment hashes".into(),
                });
            }
            if by_index.insert(s.index, s).is_some() {
                return Err(EncodeError::Segment {
                    index: 0,
                    why: "segment given twice".into(),
                });
            }
        }
        if by_index.len() != self.num_segments as usize {
            return Err(EncodeError::Segment {
                index: 0,
                why: format!("{} of {} segments", by_index.len(), self.num_segments),
            });
        }
        let segs: Vec<SegmentHashes> = by_index.into_values().collect();
        let per_share: Vec<Vec<[u8; 32]>> = (0..n)
            .map(|sh| segs.iter().map(|s| s.block_hashes[sh]).collect())
            .collect();
        let block_roots: Vec<[u8; 32]> = per_share.iter().map(|l| merkle_root(l)).collect();
        let crypttext_hashes: Vec<[u8; 32]> = segs.iter().map(|s| s.crypttext_hash).collect();
        let ueb = UriExtension {
            version: ueb::UEB_V2,
            size: self.size,
            segment_size: self.params.segment_size,
            needed: self.params.needed,
            total: self.params.total,
            num_segments: self.num_segments,
            tail_segment_size: self.segment_len(self.num_segments - 1) as u32,
            share_root: merkle_root(&block_roots),
            crypttext_root: merkle_root(&crypttext_hashes),
        };
        let ueb_bytes = ueb.to_bytes();
        let share_metas = per_share
            .into_iter()
            .enumerate()
            .map(|(sh, block_hashes)| ShareMeta {
                shnum: sh as u8,
                ueb: ueb_bytes.clone(),
                block_hashes,
                share_hash_proof: merkle_proof(&block_roots, sh).unwrap_or_default(),
                crypttext_hashes: crypttext_hashes.clone(),
            })
            .collect();
        let cap = ChkReadCap {
            key: self.key.clone(),
            ueb_hash: ueb.hash(),
            needed: self.params.needed,
            total: self.params.total,
            size: self.size,
        };
        Ok(EncodedFile {
            cap,
            ueb,
            share_metas,
        })
    }
}

/// Verification failures: what was wrong and, where it applies, which share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The UEB's hash is not the cap's.
    #[error("UEB hash does not match the cap")]
    UebHashMismatch,
    /// The UEB's fields disagree with the cap.
    #[error("UEB does not match the cap: {0}")]
    UebMismatch(String),
    /// The UEB or share metadata does not decode.
    #[error("malformed share data: {0}")]
    Format(#[from] FormatError),
    /// The share's block hashes do not chain to the share root.
    #[error("share {shnum}: block hashes do not match the share hash tree")]
    BadShareProof {
        /// The share.
        shnum: u8,
    },
    /// The crypttext hashes do not match the crypttext root.
    #[error("share {shnum}: crypttext hashes do not match the UEB")]
    BadCrypttextHashes {
        /// The share.
        shnum: u8,
    },
    /// A block's hash does not match.
    #[error("share {shnum}: block {segment} is corrupt (hash mismatch)")]
    BadBlock {
        /// The share.
        shnum: u8,
        /// The segment.
        segment: u32,
    },
    /// A block has the wrong length.
    #[error("share {shnum}: block {segment} has {len} bytes, expected {expected}")]
    WrongBlockLength {
        /// The share.
        shnum: u8,
        /// The segment.
        segment: u32,
        /// Its length.
        len: usize,
        /// The expected length.
        expected: u64,
    },
    /// The decoded segment's crypttext hash does not match.
    #[error("segment {segment} decodes to the wrong crypttext (inconsistent shares)")]
    CrypttextMismatch {
        /// The segment.
        segment: u32,
    },
    /// Fewer than k blocks, or blocks of unknown shares.
    #[error("segment {segment}: {why}")]
    NotEnoughBlocks {
        /// The segment.
        segment: u32,
        /// Details.
        why: String,
    },
}

fn check_ueb_against(
    ueb_bytes: &[u8],
    ueb_hash: &[u8; 32],
    needed: u8,
    total: u8,
    size: u64,
) -> Result<UriExtension, VerifyError> {
    let ueb = UriExtension::from_bytes(ueb_bytes)?;
    if ueb.hash() != *ueb_hash {
        return Err(VerifyError::UebHashMismatch);
    }
    if ueb.needed != needed || ueb.total != total || ueb.size != size {
        return Err(VerifyError::UebMismatch(format!(
            "k={} n={} size={}",
            ueb.needed, ueb.total, ueb.size
        )));
    }
    Ok(ueb)
}

/// Checks `ueb_bytes` against a read cap.
pub fn verify_ueb(cap: &ChkReadCap, ueb_bytes: &[u8]) -> Result<UriExtension, VerifyError> {
    check_ueb_against(ueb_bytes, &cap.ueb_hash, cap.needed, cap.total, cap.size)
}

/// Checks `ueb_bytes` against a verify cap (no key needed).
pub fn verify_ueb_with_verify_cap(
    cap: &ChkVerifyCap,
    ueb_bytes: &[u8],
) -> Result<UriExtension, VerifyError> {
    check_ueb_against(ueb_bytes, &cap.ueb_hash, cap.needed, cap.total, cap.size)
}

/// Block size of segment `segment`.
pub fn block_size_for(ueb: &UriExtension, segment: u32) -> u64 {
    ueb.segment_len(segment)
        .div_ceil(u64::from(ueb.needed))
        .max(1)
}

/// Offset of segment `segment`'s block in a share's data.
pub fn block_offset(ueb: &UriExtension, segment: u32) -> u64 {
    u64::from(segment) * block_size_for(ueb, 0)
}

/// A share whose metadata chains to a verified UEB; checks its blocks.
#[derive(Debug)]
pub struct VerifiedShare {
    shnum: u8,
    ueb: UriExtension,
    block_hashes: Vec<[u8; 32]>,
}

impl VerifiedShare {
    /// Checks `meta` against the verified `ueb`.
    pub fn new(ueb: &UriExtension, meta: ShareMeta) -> Result<Self, VerifyError> {
        let shnum = meta.shnum;
        if shnum >= ueb.total {
            return Err(VerifyError::BadShareProof { shnum });
        }
        if meta.ueb != ueb.to_bytes() {
            return Err(VerifyError::UebHashMismatch);
        }
        if meta.block_hashes.len() != ueb.num_segments as usize {
            return Err(VerifyError::BadShareProof { shnum });
        }
        let root = merkle_root(&meta.block_hashes);
        if !verify_merkle_proof(
            &ueb.share_root,
            u64::from(shnum),
            u64::from(ueb.total),
            &root,
            &meta.share_hash_proof,
        ) {
            return Err(VerifyError::BadShareProof { shnum });
        }
        if meta.crypttext_hashes.len() != ueb.num_segments as usize
            || merkle_root(&meta.crypttext_hashes) != ueb.crypttext_root
        {
            return Err(VerifyError::BadCrypttextHashes { shnum });
        }
        Ok(Self {
            shnum,
            ueb: ueb.clone(),
            block_hashes: meta.block_hashes,
        })
    }

    /// The share number.
    pub fn shnum(&self) -> u8 {
        self.shnum
    }

    /// Checks block `segment` of this share.
    pub fn check_block(&self, segment: u32, block: &[u8]) -> Result<(), VerifyError> {
        self.checked_hash(segment, block).map(|_| ())
    }

    /// Checks block `segment` of this share and keeps its hash with it, so decoding the segment
    /// need not hash it again.
    pub fn verify_block(&self, segment: u32, block: Vec<u8>) -> Result<SegmentBlock, VerifyError> {
        let hash = self.checked_hash(segment, &block)?;
        Ok(SegmentBlock {
            shnum: self.shnum,
            data: block,
            hash: Some(hash),
        })
    }

    fn checked_hash(&self, segment: u32, block: &[u8]) -> Result<[u8; 32], VerifyError> {
        let shnum = self.shnum;
        let expected = block_size_for(&self.ueb, segment);
        if block.len() as u64 != expected {
            return Err(VerifyError::WrongBlockLength {
                shnum,
                segment,
                len: block.len(),
                expected,
            });
        }
        let hash = block_hash(block);
        match self.block_hashes.get(segment as usize) {
            Some(h) if *h == hash => Ok(hash),
            _ => Err(VerifyError::BadBlock { shnum, segment }),
        }
    }
}

/// One block of a segment, on its way to [`decode_segment`] or [`decode_crypttext`]: the share
/// it belongs to, its bytes and, when [`VerifiedShare::verify_block`] made it, its hash (which is
/// then known to be the block's hash, so decoding does not hash it again).
#[derive(Clone, Debug)]
pub struct SegmentBlock {
    shnum: u8,
    data: Vec<u8>,
    hash: Option<[u8; 32]>,
}

impl SegmentBlock {
    /// A block whose hash is not known yet: decoding hashes it if it needs to.
    pub fn new(shnum: u8, data: Vec<u8>) -> Self {
        Self {
            shnum,
            data,
            hash: None,
        }
    }

    /// Its share number.
    pub fn shnum(&self) -> u8 {
        self.shnum
    }
}

/// A decoded segment's bytes, in order, in the buffers of the k data blocks it was rebuilt from
/// (the padding cut): nothing copies them together, so a download hands each block's buffer on
/// as it is (to an HTTP body: [`crate::client::SegmentSink`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentBytes(Vec<Vec<u8>>);

impl SegmentBytes {
    /// How many bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffers, in order; none is empty.
    pub fn pieces(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// The buffers, in order; none is empty.
    pub fn into_pieces(self) -> Vec<Vec<u8>> {
        self.0
    }

    /// The bytes in one buffer (the first piece's, grown: one copy of the others).
    pub fn into_vec(self) -> Vec<u8> {
        erasure::join_pieces(self.0)
    }
}

impl From<Vec<Vec<u8>>> for SegmentBytes {
    /// The pieces in order (empty ones dropped).
    fn from(mut pieces: Vec<Vec<u8>>) -> Self {
        pieces.retain(|p| !p.is_empty());
        SegmentBytes(pieces)
    }
}

impl From<Vec<u8>> for SegmentBytes {
    /// One piece (none when empty).
    fn from(bytes: Vec<u8>) -> Self {
        SegmentBytes::from(vec![bytes])
    }
}

/// Rebuilds segment `segment` from at least k blocks, checks it against the verified
/// `crypttext_hashes`, and decrypts it, each piece in its own buffer.
pub fn decode_segment(
    ueb: &UriExtension,
    key: &Key,
    crypttext_hashes: &[[u8; 32]],
    segment: u32,
    blocks: Vec<SegmentBlock>,
) -> Result<SegmentBytes, VerifyError> {
    let mut crypttext = decode_crypttext(ueb, crypttext_hashes, segment, blocks)?;
    let mut offset = u64::from(segment) * u64::from(ueb.segment_size);
    for piece in &mut crypttext.0 {
        apply_keystream(key, offset, piece);
        offset += piece.len() as u64;
    }
    Ok(crypttext)
}

/// Rebuilds segment `segment`'s crypttext from at least k blocks and checks it against the
/// verified `crypttext_hashes`, without decrypting: what a repairer holding only the verify cap
/// can do.
pub fn decode_crypttext(
    ueb: &UriExtension,
    crypttext_hashes: &[[u8; 32]],
    segment: u32,
    blocks: Vec<SegmentBlock>,
) -> Result<SegmentBytes, VerifyError> {
    let not_enough = |why: String| VerifyError::NotEnoughBlocks { segment, why };
    if segment >= ueb.num_segments {
        return Err(not_enough("no such segment".into()));
    }
    let erasure = Erasure::new(ueb.needed, ueb.total).map_err(|e| not_enough(e.to_string()))?;
    let n = usize::from(ueb.total);
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut known: Vec<Option<[u8; 32]>> = vec![None; n];
    for b in blocks {
        let sh = usize::from(b.shnum);
        match slots.get_mut(sh) {
            Some(slot) => {
                *slot = Some(b.data);
                known[sh] = b.hash;
            }
            None => return Err(not_enough(format!("share {sh} out of range"))),
        }
    }
    let want = crypttext_hashes
        .get(segment as usize)
        .ok_or_else(|| not_enough("no crypttext hash".into()))?;
    let len = ueb.segment_len(segment) as usize;
    let primaries = erasure
        .reconstruct(slots, len)
        .map_err(|e| not_enough(e.to_string()))?;
    let leaf = match ueb.version {
        ueb::UEB_V1 => None,
        _ => {
            // Blocks verified against their share's tree come with their hash; rebuilt or
            // unverified ones are hashed here.
            let hashes: Vec<[u8; 32]> = primaries
                .iter()
                .zip(&known)
                .map(|(b, h)| h.unwrap_or_else(|| block_hash(b)))
                .collect();
            Some(crypttext_leaf(&hashes))
        }
    };
    let crypttext = SegmentBytes(erasure::trim_data_blocks(primaries, len));
    let leaf = leaf.unwrap_or_else(|| tagged_hash_of_pieces(CRYPTTEXT_TAG_V1, crypttext.pieces()));
    if leaf != *want {
        return Err(VerifyError::CrypttextMismatch { segment });
    }
    Ok(crypttext)
}

/// A re-encoded segment: its n blocks and each block's hash.
pub type Reencoded = (Vec<Vec<u8>>, Vec<[u8; 32]>);

/// Erasure-codes segment `segment`'s crypttext (from [`decode_crypttext`]) back into its n
/// blocks, exactly as the uploader did (the coding is deterministic), with each block's hash.
pub fn reencode_crypttext(
    ueb: &UriExtension,
    segment: u32,
    crypttext: &[u8],
) -> Result<Reencoded, VerifyError> {
    let not_enough = |why: String| VerifyError::NotEnoughBlocks { segment, why };
    if segment >= ueb.num_segments || crypttext.len() as u64 != ueb.segment_len(segment) {
        return Err(not_enough(format!(
            "{} bytes of crypttext for segment {segment}",
            crypttext.len()
        )));
    }
    let erasure = Erasure::new(ueb.needed, ueb.total).map_err(|e| not_enough(e.to_string()))?;
    let blocks = erasure.encode(crypttext);
    let hashes = blocks.iter().map(|b| block_hash(b)).collect();
    Ok((blocks, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(data: &[u8], params: EncodingParams) -> (EncodedFile, Vec<EncodedSegment>) {
        let mut h = ConvergentKeyHasher::new(&[3; 32], &params);
        h.update(data);
        let enc = FileEncoder::new(h.finalize(), params, data.len() as u64).unwrap();
        let seg = params.segment_size as usize;
        let segs: Vec<EncodedSegment> = (0..enc.num_segments())
            .map(|i| {
                let start = i as usize * seg;
                enc.encode_segment(i, &data[start..(start + seg).min(data.len())])
                    .unwrap()
            })
            .collect();
        let hashes: Vec<SegmentHashes> = segs.iter().map(EncodedSegment::hashes).collect();
        (enc.finish(hashes).unwrap(), segs)
    }

    /// Downloads using the given shares, verifying everything like the real downloader.
    fn decode_with(
        file: &EncodedFile,
        segs: &[EncodedSegment],
        use_shares: &[u8],
    ) -> Result<Vec<u8>, VerifyError> {
        let ueb = verify_ueb(&file.cap, &file.share_metas[0].ueb)?;
        let mut out = Vec::new();
        let shares: Vec<VerifiedShare> = use_shares
            .iter()
            .map(|&sh| VerifiedShare::new(&ueb, file.share_metas[usize::from(sh)].clone()))
            .collect::<Result<_, _>>()?;
        for (i, seg) in segs.iter().enumerate() {
            let mut blocks = Vec::new();
            for s in &shares {
                let b = &seg.blocks[usize::from(s.shnum())];
                blocks.push(s.verify_block(i as u32, b.clone())?);
            }
            out.extend(
                decode_segment(
                    &ueb,
                    &file.cap.key,
                    &file.share_metas[0].crypttext_hashes,
                    i as u32,
                    blocks,
                )?
                .into_vec(),
            );
        }
        Ok(out)
    }

    fn params(k: u8, n: u8, seg: u32) -> EncodingParams {
        EncodingParams {
            needed: k,
            happy: k,
            total: n,
            segment_size: seg,
        }
    }

    #[test]
    fn a_decoded_segment_is_its_data_blocks_own_buffers_decrypted_in_place() {
        // Segments of 3 000 bytes cut in three blocks of 1 000; the last segment is 57 bytes
        // (blocks of 19: nothing to drop), or 2 bytes, which fill only two of their three
        // 1-byte blocks (the third is padding alone and goes).
        for (len, last_pieces) in [(6_057usize, vec![19, 19, 19]), (3_002, vec![1, 1])] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let (file, segs) = encode_all(&data, params(3, 5, 3_000));
            let ueb = verify_ueb(&file.cap, &file.share_metas[0].ueb).unwrap();
            let mut out = Vec::new();
            for (i, seg) in segs.iter().enumerate() {
                let i = i as u32;
                let blocks: Vec<SegmentBlock> = (0..3u8)
                    .map(|sh| {
                        let share =
                            VerifiedShare::new(&ueb, file.share_metas[usize::from(sh)].clone())
                                .unwrap();
                        share
                            .verify_block(i, seg.blocks[usize::from(sh)].clone())
                            .unwrap()
                    })
                    .collect();
                let addrs: Vec<*const u8> = blocks.iter().map(|b| b.data.as_ptr()).collect();
                let plain = decode_segment(
                    &ueb,
                    &file.cap.key,
                    &file.share_metas[0].crypttext_hashes,
                    i,
                    blocks,
                )
                .unwrap();
                let lens: Vec<usize> = plain.pieces().iter().map(Vec::len).collect();
                if i + 1 == ueb.num_segments {
                    assert_eq!(lens, last_pieces, "{len} bytes, segment {i}");
                } else {
                    assert_eq!(lens, vec![1_000; 3], "{len} bytes, segment {i}");
                }
                for (p, at) in plain.pieces().iter().zip(&addrs) {
                    assert_eq!(
                        p.as_ptr(),
                        *at,
                        "{len} bytes, segment {i}: a piece was copied"
                    );
                }
                assert_eq!(plain.len(), ueb.segment_len(i) as usize);
                out.extend(plain.into_vec());
            }
            assert_eq!(out, data, "{len} bytes");
        }
    }

    proptest! {
        #![proptest_config(crate::prop::cases(48))]
        #[test]
        fn any_k_of_n_shares_rebuild_the_file(len in 56usize..40_000, k in 1u8..5, extra in 0u8..6, seed in any::<u64>()) {
            let n = k + extra;
            let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed).wrapping_mul(0x9E37_79B9) as u8).collect();
            let (file, segs) = encode_all(&data, params(k, n, 4096));
            let mut order: Vec<u8> = (0..n).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(decode_with(&file, &segs, &order[..usize::from(k)]).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_in_a_block_or_metadata_is_detected(len in 56usize..20_000, bit in any::<u32>(), which in 0u8..4, pick in any::<u32>()) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (mut file, mut segs) = encode_all(&data, params(2, 4, 2048));
            match which {
                0 => {
                    let s = pick as usize % segs.len();
                    let b = &mut segs[s].blocks[(pick as usize / 7) % 4];
                    let i = bit as usize % (b.len() * 8);
                    b[i / 8] ^= 1 << (i % 8);
                }
                1 => {
                    let m = &mut file.share_metas[(pick % 4) as usize];
                    let mut bytes = m.to_bytes();
                    let i = bit as usize % (bytes.len() * 8);
                    bytes[i / 8] ^= 1 << (i % 8);
                    match ShareMeta::from_bytes(&bytes, 1 << 20) {
                        Ok(parsed) => *m = parsed,
                        Err(_) => return Ok(()), // detected at decode time
                    }
                }
                2 => {
                    // the UEB copy inside every share
                    let mut ueb = file.share_metas[0].ueb.clone();
                    let i = bit as usize % (ueb.len() * 8);
                    ueb[i / 8] ^= 1 << (i % 8);
                    for m in &mut file.share_metas { m.ueb = ueb.clone(); }
                }
                _ => {
                    let m = &mut file.share_metas[(pick % 4) as usize];
                    let s = pick as usize % m.crypttext_hashes.len();
                    m.crypttext_hashes[s][(bit % 32) as usize] ^= 1 << (bit % 8);
                }
            }
            // Every 2-subset must either fail verification or return the exact plaintext.
            for a in 0..4u8 {
                for b in (a + 1)..4u8 {
                    if let Ok(out) = decode_with(&file, &segs, &[a, b]) {
                        prop_assert_eq!(&out, &data);
                    }
                }
            }
            // ...and at least one subset touching the damage fails.
            let all_ok = (0..4u8).all(|a| ((a + 1)..4u8).all(|b| decode_with(&file, &segs, &[a, b]).is_ok()));
            prop_assert!(!all_ok, "corruption went unnoticed");
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = UriExtension::from_bytes(&bytes);
            let _ = ShareMeta::from_bytes(&bytes, 1 << 20);
        }
    }

    /// Encodes `data` with a fixed key, returning the encoder's output and the segments.
    fn encode_with_key(data: &[u8], p: EncodingParams) -> (Vec<EncodedSegment>, FileEncoder) {
        let enc = FileEncoder::new(Key([9; 32]), p, data.len() as u64).unwrap();
        let seg = p.segment_size as usize;
        let segs = (0..enc.num_segments())
            .map(|i| {
                let start = i as usize * seg;
                enc.encode_segment(i, &data[start..(start + seg).min(data.len())])
                    .unwrap()
            })
            .collect();
        (segs, enc)
    }

    /// A lying uploader: shares 0 and 1 (the primary ones) carry file X, shares 2 and 3 carry the
    /// parity of file Y, and every share's block tree, the share root, the crypttext tree (X's)
    /// and the cap are all consistent with that. Each share verifies alone; only decoding can
    /// tell. Whatever two shares a downloader picks, it gets X or an error, never Y or a mix:
    /// the primary-share path (which checks the leaf with the hashes it already has) and the
    /// rebuild path both hold.
    #[test]
    fn shares_that_decode_differently_by_subset_give_the_committed_file_or_an_error() {
        let p = params(2, 4, 2048);
        let x: Vec<u8> = (0..9000u32).map(|i| (i * 13) as u8).collect();
        let y: Vec<u8> = (0..9000u32).map(|i| (i * 13 + 1) as u8).collect();
        let (sx, enc) = encode_with_key(&x, p);
        let (sy, _) = encode_with_key(&y, p);
        let mut segs = Vec::new();
        let mut hashes = Vec::new();
        for (a, b) in sx.into_iter().zip(sy) {
            let mut blocks = a.blocks;
            blocks[2] = b.blocks[2].clone();
            blocks[3] = b.blocks[3].clone();
            let mut block_hashes = a.block_hashes;
            block_hashes[2] = b.block_hashes[2];
            block_hashes[3] = b.block_hashes[3];
            hashes.push(SegmentHashes {
                index: a.index,
                block_hashes: block_hashes.clone(),
                crypttext_hash: a.crypttext_hash,
            });
            segs.push(EncodedSegment {
                index: a.index,
                blocks,
                block_hashes,
                crypttext_hash: a.crypttext_hash,
            });
        }
        let file = enc.finish(hashes).unwrap();
        assert_eq!(decode_with(&file, &segs, &[0, 1]).unwrap(), x);
        assert_eq!(decode_with(&file, &segs, &[1, 0]).unwrap(), x);
        for pair in [[2, 3], [0, 2], [0, 3], [1, 2], [1, 3]] {
            assert!(
                matches!(
                    decode_with(&file, &segs, &pair),
                    Err(VerifyError::CrypttextMismatch { segment: 0 })
                ),
                "shares {pair:?} were accepted"
            );
        }
    }

    /// A file stored before version-2 UEBs (bytes written by that version of the encoder: a
    /// 5 000-byte file, 2-of-4, 1 KiB segments) still downloads from any two of its shares,
    /// and a flipped bit in a block is still caught by the version-1 crypttext check when the
    /// block is not checked against its share first.
    #[test]
    fn files_with_version_1_uebs_still_decode() {
        let fixture = include_bytes!("testdata/chk-v1.bin");
        let mut parts = Vec::new();
        let mut rest = &fixture[..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            parts.push(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        let crate::caps::ReadCap::Chk(cap) = std::str::from_utf8(parts[0])
            .unwrap()
            .parse::<crate::caps::ReadCap>()
            .unwrap()
        else {
            panic!("not a CHK cap");
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let metas: Vec<ShareMeta> = (0..4)
            .map(|sh| ShareMeta::from_bytes(parts[1 + 2 * sh], 1 << 20).unwrap())
            .collect();
        let shares: Vec<&[u8]> = (0..4).map(|sh| parts[2 + 2 * sh]).collect();
        let ueb = verify_ueb(&cap, &metas[0].ueb).unwrap();
        assert_eq!(ueb.version, ueb::UEB_V1);
        let bs = block_size_for(&ueb, 0) as usize;
        let decode = |pick: [u8; 2], verify: bool, shares: &[&[u8]]| {
            let mut out = Vec::new();
            for seg in 0..ueb.num_segments {
                let off = block_offset(&ueb, seg) as usize;
                let len = block_size_for(&ueb, seg) as usize;
                let mut blocks = Vec::new();
                for sh in pick {
                    let block = shares[usize::from(sh)][off..off + len].to_vec();
                    let v = VerifiedShare::new(&ueb, metas[usize::from(sh)].clone())?;
                    blocks.push(if verify {
                        v.verify_block(seg, block)?
                    } else {
                        SegmentBlock::new(sh, block)
                    });
                }
                out.extend(
                    decode_segment(&ueb, &cap.key, &metas[0].crypttext_hashes, seg, blocks)?
                        .into_vec(),
                );
            }
            Ok::<_, VerifyError>(out)
        };
        for a in 0..4u8 {
            for b in (a + 1)..4u8 {
                assert_eq!(
                    decode([a, b], true, &shares).unwrap(),
                    data,
                    "shares {a},{b}"
                );
            }
        }
        let mut bad = shares[1].to_vec();
        bad[bs + 5] ^= 0x10; // segment 1 of share 1
        let damaged = [shares[0], &bad[..], shares[2], shares[3]];
        assert!(matches!(
            decode([0, 1], true, &damaged),
            Err(VerifyError::BadBlock {
                shnum: 1,
                segment: 1
            })
        ));
        assert!(matches!(
            decode([0, 1], false, &damaged),
            Err(VerifyError::CrypttextMismatch { segment: 1 })
        ));
    }

    #[test]
    fn metadata_and_ueb_round_trip() {
        let data = vec![5u8; 10_000];
        let (file, _) = encode_all(&data, params(3, 10, 1024));
        for m in &file.share_metas {
            assert_eq!(&ShareMeta::from_bytes(&m.to_bytes(), 1 << 20).unwrap(), m);
        }
        assert_eq!(
            UriExtension::from_bytes(&file.ueb.to_bytes()).unwrap(),
            file.ueb
        );
        assert_eq!(file.ueb.num_segments, 10);
        assert_eq!(file.ueb.tail_segment_size, 10_000 - 9 * 1024);
        assert!(matches!(
            ShareMeta::from_bytes(&file.share_metas[0].to_bytes(), 10),
            Err(FormatError::TooLong { .. })
        ));
    }

    /// The uploader reads each data piece from the file by its offset: pieces tile each
    /// segment in order and none starts past the file's end, even when a short tail leaves
    /// the last blocks all padding (a tail of 1 byte in 3 blocks, 56 bytes in 20).
    #[test]
    fn data_pieces_tile_each_segment_and_stay_inside_the_file() {
        let tails = [
            1025,
            1024 * 2 + 1,
            1024 * 3 + 19,
            2048 * 3 + 1,
            2048 * 3 + 5,
            3000,
        ];
        for (k, seg) in [(1u8, 1024u32), (2, 1024), (3, 2048), (4, 1024), (20, 1024)] {
            for len in (56u64..300).chain(tails) {
                let enc = FileEncoder::new(Key([1; 32]), params(k, k, seg), len).unwrap();
                for i in 0..enc.num_segments() {
                    let start = u64::from(i) * u64::from(seg);
                    let (end, bs) = (start + enc.segment_len(i) as u64, enc.block_size(i));
                    let mut at = start;
                    for (offset, real) in enc.data_pieces(i) {
                        assert_eq!(
                            (offset, offset <= len),
                            (at, true),
                            "k {k} len {len} seg {i}"
                        );
                        assert!(real as u64 <= bs);
                        at += real as u64;
                    }
                    assert_eq!(at, end, "k {k} len {len} segment {i}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(crate::prop::cases(32))]
        /// The uploader reads each segment straight into reused block buffers: stale bytes
        /// past the segment's end and in the parity buffers must not change a single block.
        #[test]
        fn segments_encoded_in_stale_buffers_equal_fresh_ones(len in 56usize..10_000, k in 1u8..5, extra in 0u8..6, junk in any::<u8>()) {
            let n = k + extra;
            let enc = FileEncoder::new(Key([9; 32]), params(k, n, 2048), len as u64).unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for i in 0..enc.num_segments() {
                let start = i as usize * 2048;
                let plain = &data[start..start + enc.segment_len(i)];
                let fresh = enc.encode_segment(i, plain).unwrap();
                let bs = enc.block_size(i) as usize;
                // filled as the uploader does: each data piece read from the whole file
                let mut blocks = vec![vec![junk; bs]; usize::from(n)];
                for (b, (offset, real)) in blocks.iter_mut().zip(enc.data_pieces(i)) {
                    b[..real].copy_from_slice(&data[offset as usize..offset as usize + real]);
                }
                let reused = enc.encode_segment_blocks(i, blocks).unwrap();
                prop_assert_eq!(&reused.blocks, &fresh.blocks);
                prop_assert_eq!(&reused.block_hashes, &fresh.block_hashes);
                prop_assert_eq!(reused.crypttext_hash, fresh.crypttext_hash);
            }
            // wrong shapes are errors, not panics
            prop_assert!(enc.encode_segment_blocks(0, vec![vec![0; 3]; usize::from(n)]).is_err());
            prop_assert!(enc.encode_segment_blocks(0, Vec::new()).is_err());
            prop_assert!(enc.encode_segment_blocks(enc.num_segments(), Vec::new()).is_err());
        }
    }

    #[test]
    fn too_small_and_bad_segments_are_errors() {
        let p = EncodingParams::default();
        assert!(matches!(
            FileEncoder::new(Key([0; 32]), p, 55),
            Err(EncodeError::TooSmall)
        ));
        let enc = FileEncoder::new(Key([0; 32]), params(3, 10, 1024), 3000).unwrap();
        assert_eq!(enc.num_segments(), 3);
        assert_eq!(enc.share_data_len(), 342 + 342 + 318);
        assert!(enc.encode_segment(3, &[0; 10]).is_err());
        assert!(enc.encode_segment(0, &[0; 10]).is_err());
        assert!(
            EncodingParams {
                needed: 4,
                happy: 3,
                total: 10,
                segment_size: 1 << 20
            }
            .validate()
            .is_err()
        );
    }
}
