//! Reed-Solomon k-of-n over GF(2^8) (reed-solomon-erasure, SIMD kernel): a crypttext segment is
//! zero-padded to a multiple of k, cut into k data blocks and extended with n-k parity blocks; any
//! k blocks rebuild it.

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Erasure-coding errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    /// k or n out of range.
    #[error("invalid erasure parameters k={needed} n={total} (need 1 <= k <= n <= 255)")]
    Params {
        /// k.
        needed: u8,
        /// n.
        total: u8,
    },
    /// Too few or inconsistent blocks to decode.
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// A k-of-n coder.
#[derive(Debug)]
pub struct Erasure {
    needed: usize,
    total: usize,
    rs: Option<ReedSolomon>,
}

impl Erasure {
    /// A coder for k = `needed`, n = `total`.
    pub fn new(needed: u8, total: u8) -> Result<Self, ErasureError> {
        if needed == 0 || needed > total {
            return Err(ErasureError::Params { needed, total });
        }
        let parity = usize::from(total - needed);
        let rs = if parity == 0 {
            None
        } else {
            Some(
                ReedSolomon::new(usize::from(needed), parity)
                    .map_err(|_| ErasureError::Params { needed, total })?,
            )
        };
        Ok(Self {
            needed: usize::from(needed),
            total: usize::from(total),
            rs,
        })
    }

    /// Block size for a segment of `len` bytes.
    pub fn block_size(&self, len: usize) -> usize {
        len.div_ceil(self.needed).max(1)
    }

    /// The n blocks of `segment`.
    pub fn encode(&self, segment: &[u8]) -> Vec<Vec<u8>> {
        let mut blocks = self.split(segment);
        self.encode_blocks(&mut blocks);
        blocks
    }

    /// `segment` cut into k zero-padded data blocks, followed by n-k zeroed parity blocks: the
    /// shape [`Self::encode_blocks`] takes.
    pub fn split(&self, segment: &[u8]) -> Vec<Vec<u8>> {
        let bs = self.block_size(segment.len());
        let mut blocks = vec![vec![0; bs]; self.total];
        // At most k pieces: bs is the segment's length over k, rounded up.
        for (b, piece) in blocks.iter_mut().zip(segment.chunks(bs)) {
            b[..piece.len()].copy_from_slice(piece);
        }
        blocks
    }

    /// Computes the parity blocks in place: `blocks` are the n blocks of one segment, all of
    /// the same length; the first k hold the segment's bytes (cut in k, zero-padded) and the
    /// others are overwritten whatever they held. Anything else is left as it is (the callers
    /// build the blocks to this shape).
    pub fn encode_blocks(&self, blocks: &mut [Vec<u8>]) {
        if let Some(rs) = &self.rs {
            // Fails only on a wrong count or unequal lengths, which callers rule out.
            let _ = rs.encode(blocks);
        }
    }

    /// Rebuilds a segment of `segment_len` bytes from any k present blocks (`blocks[i]` is block
    /// i or `None`).
    pub fn decode(
        &self,
        blocks: Vec<Option<Vec<u8>>>,
        segment_len: usize,
    ) -> Result<Vec<u8>, ErasureError> {
        Ok(join_data_blocks(
            self.reconstruct(blocks, segment_len)?,
            segment_len,
        ))
    }

    /// The k data blocks (zero-padded, as encoded) of a segment of `segment_len` bytes, from any
    /// k present blocks (`blocks[i]` is block i or `None`). Present data blocks are returned as
    /// given; only missing ones are computed.
    pub fn reconstruct(
        &self,
        mut blocks: Vec<Option<Vec<u8>>>,
        segment_len: usize,
    ) -> Result<Vec<Vec<u8>>, ErasureError> {
        if blocks.len() != self.total {
            return Err(ErasureError::Decode(format!(
                "{} block slots, expected {}",
                blocks.len(),
                self.total
            )));
        }
        let bs = self.block_size(segment_len);
        let present = blocks.iter().flatten().count();
        if present < self.needed {
            return Err(ErasureError::Decode(format!(
                "{present} blocks, need {}",
                self.needed
            )));
        }
        if blocks.iter().flatten().any(|b| b.len() != bs) {
            return Err(ErasureError::Decode("blocks of the wrong size".into()));
        }
        if blocks[..self.needed].iter().any(Option::is_none) {
            match &self.rs {
                Some(rs) => rs
                    .reconstruct_data(&mut blocks)
                    .map_err(|e| ErasureError::Decode(format!("{e:?}")))?,
                None => return Err(ErasureError::Decode("missing data block".into())),
            }
        }
        blocks.truncate(self.needed);
        blocks
            .into_iter()
            .map(|b| b.ok_or_else(|| ErasureError::Decode("missing data block".into())))
            .collect()
    }
}

/// A segment of `segment_len` bytes as its k data blocks with the padding cut: each block keeps
/// the segment's bytes it holds, in order, and blocks holding none are dropped. Nothing is
/// copied: a downloader hands these buffers on as they are.
pub fn trim_data_blocks(data_blocks: Vec<Vec<u8>>, segment_len: usize) -> Vec<Vec<u8>> {
    let mut left = segment_len;
    data_blocks
        .into_iter()
        .filter_map(|mut b| {
            let keep = b.len().min(left);
            left -= keep;
            b.truncate(keep);
            (keep > 0).then_some(b)
        })
        .collect()
}

/// A segment of `segment_len` bytes from its k data blocks (padding dropped), in one buffer.
pub fn join_data_blocks(data_blocks: Vec<Vec<u8>>, segment_len: usize) -> Vec<u8> {
    join_pieces(trim_data_blocks(data_blocks, segment_len))
}

/// Pieces in one buffer: the first one's, grown (a realloc, often in place for blocks this
/// large), with the others appended.
pub fn join_pieces(pieces: Vec<Vec<u8>>) -> Vec<u8> {
    let len = pieces.iter().map(Vec::len).sum::<usize>();
    let mut pieces = pieces.into_iter();
    let mut out = pieces.next().unwrap_or_default();
    out.reserve(len - out.len());
    for p in pieces {
        out.extend_from_slice(&p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::prop::cases(64))]
        #[test]
        fn any_k_of_n_blocks_rebuild(k in 1u8..8, extra in 0u8..8, len in 1usize..3000, seed in any::<u64>()) {
            let n = k + extra;
            let e = Erasure::new(k, n).unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1) as u8).collect();
            let blocks = e.encode(&data);
            prop_assert_eq!(blocks.len(), usize::from(n));
            // keep a pseudo-random subset of exactly k blocks
            let mut idx: Vec<usize> = (0..usize::from(n)).collect();
            let mut s = seed;
            for i in (1..idx.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (s >> 33) as usize % (i + 1));
            }
            let keep: Vec<usize> = idx[..usize::from(k)].to_vec();
            let partial: Vec<Option<Vec<u8>>> = blocks.iter().enumerate().map(|(i, b)| keep.contains(&i).then(|| b.clone())).collect();
            prop_assert_eq!(e.decode(partial, len).unwrap(), data);
        }
    }

    #[test]
    fn parity_overwrites_whatever_its_buffers_held() {
        let e = Erasure::new(3, 10).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let fresh = e.encode(&data);
        let mut reused = fresh.clone();
        for b in &mut reused[3..] {
            b.fill(0xa5);
        }
        e.encode_blocks(&mut reused);
        assert_eq!(reused, fresh);
    }

    #[test]
    fn too_few_blocks_is_an_error() {
        let e = Erasure::new(3, 5).unwrap();
        let blocks = e.encode(b"hello world");
        let partial = vec![
            Some(blocks[0].clone()),
            None,
            None,
            None,
            Some(blocks[4].clone()),
        ];
        assert!(e.decode(partial, 11).is_err());
        assert!(Erasure::new(0, 3).is_err());
        assert!(Erasure::new(4, 3).is_err());
    }
}
