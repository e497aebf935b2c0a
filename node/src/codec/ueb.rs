//! The URI extension block (UEB, as in Tahoe-LAFS's CHK format): the file's sizes, encoding
//! parameters, the root of the share hash tree and the root of the crypttext hash tree. Every
//! share carries a copy; its tagged hash is in the read and verify caps, so one verified UEB
//! anchors the verification of every block.
//!
//! Encoding (91 bytes, little-endian): `b"KUEB"`, version, size u64, segment_size u32,
//! needed u8, total u8, num_segments u32, tail_segment_size u32, share_root, crypttext_root.
//!
//! The version says what a leaf of the crypttext hash tree is: in version 1 the tagged hash of
//! the segment's crypttext, in version 2 (what uploads make now) the tagged hash of the
//! segment's k primary block hashes (see [`super::crypttext_leaf`]). Both decode.

use super::{
    MAX_SEGMENT_SIZE,
    wire::{FormatError, Reader},
};
use crate::hash::tagged_hash;

const MAGIC: &[u8; 4] = b"KUEB";
/// Crypttext-tree leaves hash each segment's crypttext (uploads before November 2026).
pub const UEB_V1: u8 = 1;
/// Crypttext-tree leaves hash each segment's primary block hashes.
pub const UEB_V2: u8 = 2;
const UEB_TAG: &str = "kith:ueb:v1";
/// Encoded length.
pub const UEB_LEN: usize = 91;

/// The URI extension block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriExtension {
    /// Format version ([`UEB_V1`] or [`UEB_V2`]): what the crypttext tree's leaves hash.
    pub version: u8,
    /// File size in bytes.
    pub size: u64,
    /// Segment size.
    pub segment_size: u32,
    /// k.
    pub needed: u8,
    /// n.
    pub total: u8,
    /// Number of segments.
    pub num_segments: u32,
    /// Size of the last segment.
    pub tail_segment_size: u32,
    /// Root of the share hash tree (leaves: each share's block-tree root).
    pub share_root: [u8; 32],
    /// Root of the crypttext hash tree (leaves: each segment's crypttext hash).
    pub crypttext_root: [u8; 32],
}

impl UriExtension {
    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(UEB_LEN);
        v.extend_from_slice(MAGIC);
        v.push(self.version);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.segment_size.to_le_bytes());
        v.push(self.needed);
        v.push(self.total);
        v.extend_from_slice(&self.num_segments.to_le_bytes());
        v.extend_from_slice(&self.tail_segment_size.to_le_bytes());
        v.extend_from_slice(&self.share_root);
        v.extend_from_slice(&self.crypttext_root);
        v
    }

    /// Decodes and checks internal consistency.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > UEB_LEN {
            return Err(FormatError::TooLong {
                len: bytes.len(),
                max: UEB_LEN,
            });
        }
        let mut r = Reader::new(bytes, "UEB");
        let magic = r.take(4)?;
        let version = r.u8()?;
        if magic != MAGIC || !(UEB_V1..=UEB_V2).contains(&version) {
            return Err(FormatError::BadHeader {
                what: "UEB",
                version,
            });
        }
        let ueb = UriExtension {
            version,
            size: r.u64()?,
            segment_size: r.u32()?,
            needed: r.u8()?,
            total: r.u8()?,
            num_segments: r.u32()?,
            tail_segment_size: r.u32()?,
            share_root: r.hash()?,
            crypttext_root: r.hash()?,
        };
        r.finish()?;
        ueb.check()?;
        Ok(ueb)
    }

    fn check(&self) -> Result<(), FormatError> {
        let bad = |why: String| Err(FormatError::Invalid { what: "UEB", why });
        if self.segment_size == 0 || self.segment_size > MAX_SEGMENT_SIZE {
            return bad(format!("segment size {}", self.segment_size));
        }
        if self.needed == 0 || self.needed > self.total {
            return bad(format!("k={} n={}", self.needed, self.total));
        }
        let seg = u64::from(self.segment_size);
        if self.size == 0 || u64::from(self.num_segments) != self.size.div_ceil(seg) {
            return bad(format!(
                "{} segments for {} bytes",
                self.num_segments, self.size
            ));
        }
        let tail = self.size - (u64::from(self.num_segments) - 1) * seg;
        if u64::from(self.tail_segment_size) != tail {
            return bad(format!("tail segment {} != {tail}", self.tail_segment_size));
        }
        Ok(())
    }

    /// The hash that goes into caps.
    pub fn hash(&self) -> [u8; 32] {
        tagged_hash(UEB_TAG, &[&self.to_bytes()])
    }

    /// Plaintext length of segment `i`.
    pub fn segment_len(&self, i: u32) -> u64 {
        if i + 1 == self.num_segments {
            u64::from(self.tail_segment_size)
        } else {
            u64::from(self.segment_size)
        }
    }
}
