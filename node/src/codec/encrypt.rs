//! AES-256-CTR with the keystream position equal to the byte offset in the file (zero IV,
//! 128-bit big-endian counter), so segments encrypt and decrypt independently and in parallel;
//! and the convergent key: a tagged SHA-256 of the node's convergence secret, the encoding
//! parameters and the plaintext (Tahoe-LAFS's convergent encryption with a per-node secret, which
//! limits confirmation-of-a-file attacks to holders of the same secret). The plaintext goes in
//! as the tagged hashes of its [`KEY_PIECE`]-byte pieces, then its length: a file on disk is
//! hashed on every core ([`ConvergentKeyHasher::piece_digest`]), a body arriving over HTTP
//! piece by piece as it comes, and both give the same key. Collision resistance is SHA-256's,
//! as for one hash over the whole file.

use aes::Aes256;
use ctr::{
    Ctr128BE,
    cipher::{KeyIvInit, StreamCipher, StreamCipherSeek},
};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::EncodingParams;
use crate::hash::TaggedHasher;

// v2 since version-2 UEBs: a re-upload of a file stored with a version-1 UEB must not count
// the old shares (same key, same storage index) as already placed, because the new cap's UEB
// hash would not match them. v3: the plaintext enters as digests of its pieces.
const CONVERGENT_TAG: &str = "kith:convergent-key:v3";
const KEY_PIECE_TAG: &str = "kith:convergent-piece:v1";

/// The convergent key hashes the plaintext in pieces of this many bytes (the last may be
/// shorter), each on its own, so that the pieces of a file can be hashed in parallel.
pub const KEY_PIECE: usize = 1 << 20;

/// A 256-bit file key. Zeroed on drop; `Debug` never prints it.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Key {}

/// XORs the keystream at byte `offset` into `buf` (encrypts or decrypts).
pub fn apply_keystream(key: &Key, offset: u64, buf: &mut [u8]) {
    let mut c = Ctr128BE::<Aes256>::new(&key.0.into(), &[0u8; 16].into());
    c.seek(offset);
    c.apply_keystream(buf);
}

/// A fresh random key.
pub fn random_key(rng: &mut impl rand::RngCore) -> Key {
    let mut k = [0u8; 32];
    rng.fill_bytes(&mut k);
    Key(k)
}

/// Hashes the plaintext into its convergent key.
pub struct ConvergentKeyHasher {
    outer: TaggedHasher,
    /// The piece being hashed and how many of its bytes came.
    piece: TaggedHasher,
    filled: usize,
    len: u64,
}

impl ConvergentKeyHasher {
    /// Starts with the node's secret and the encoding parameters.
    pub fn new(convergence_secret: &[u8; 32], params: &EncodingParams) -> Self {
        let mut h = TaggedHasher::new(CONVERGENT_TAG);
        h.update(convergence_secret);
        h.update(&[params.needed, params.total]);
        h.update(&params.segment_size.to_le_bytes());
        Self {
            outer: h,
            piece: TaggedHasher::new(KEY_PIECE_TAG),
            filled: 0,
            len: 0,
        }
    }

    /// Feeds plaintext, in pieces of any size.
    pub fn update(&mut self, mut plaintext: &[u8]) {
        while !plaintext.is_empty() {
            let n = plaintext.len().min(KEY_PIECE - self.filled);
            let (now, rest) = plaintext.split_at(n);
            self.piece.update(now);
            self.filled += n;
            self.len += n as u64;
            plaintext = rest;
            if self.filled == KEY_PIECE {
                let piece = std::mem::replace(&mut self.piece, TaggedHasher::new(KEY_PIECE_TAG));
                self.outer.update(&piece.finalize());
                self.filled = 0;
            }
        }
    }

    /// The digest of one whole piece (the `i`-th [`KEY_PIECE`] bytes of a file, or its
    /// shorter last piece), to hash pieces in parallel and add them in order with
    /// [`add_piece`](Self::add_piece).
    pub fn piece_digest(piece: &[u8]) -> [u8; 32] {
        Self::piece_digest_of([piece])
    }

    /// [`piece_digest`](Self::piece_digest) of a piece given in parts.
    pub fn piece_digest_of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
        let mut h = TaggedHasher::new(KEY_PIECE_TAG);
        for p in parts {
            h.update(p);
        }
        h.finalize()
    }

    /// Adds the next piece by its digest and length. Only at a piece boundary: after whole
    /// pieces, never after [`update`](Self::update) left part of one.
    pub fn add_piece(&mut self, digest: &[u8; 32], len: usize) {
        debug_assert!(self.filled == 0 && len <= KEY_PIECE);
        self.outer.update(digest);
        self.len += len as u64;
    }

    /// The key.
    pub fn finalize(mut self) -> Key {
        if self.filled > 0 {
            self.outer.update(&self.piece.finalize());
        }
        self.outer.update(&self.len.to_le_bytes());
        Key(self.outer.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypting_at_offsets_equals_encrypting_all() {
        let key = Key([9; 32]);
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut all = data.clone();
        apply_keystream(&key, 0, &mut all);
        for (start, end) in [(0, 1), (15, 17), (16, 32), (1000, 4999), (4999, 5000)] {
            let mut part = data[start..end].to_vec();
            apply_keystream(&key, start as u64, &mut part);
            assert_eq!(part, &all[start..end]);
        }
        apply_keystream(&key, 0, &mut all);
        assert_eq!(all, data);
        assert!(!format!("{key:?}").contains('9'));
    }

    #[test]
    fn convergent_keys_depend_on_secret_params_and_plaintext() {
        let p = EncodingParams::default();
        let k = |secret: [u8; 32], p: &EncodingParams, data: &[u8]| {
            let mut h = ConvergentKeyHasher::new(&secret, p);
            h.update(data);
            h.finalize()
        };
        let base = k([1; 32], &p, b"hello");
        assert_eq!(base, k([1; 32], &p, b"hello"));
        assert_ne!(base, k([2; 32], &p, b"hello"));
        assert_ne!(base, k([1; 32], &p, b"hellp"));
        let q = EncodingParams { needed: 2, ..p };
        assert_ne!(base, k([1; 32], &q, b"hello"));
    }

    #[test]
    fn pieces_hashed_apart_give_the_key_of_the_stream_fed_in_any_chunks() {
        let p = EncodingParams::default();
        let data: Vec<u8> = (0..(2 * KEY_PIECE + 12_345) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for len in [
            1,
            KEY_PIECE - 1,
            KEY_PIECE,
            KEY_PIECE + 1,
            2 * KEY_PIECE,
            data.len(),
        ] {
            let data = &data[..len];
            let mut whole = ConvergentKeyHasher::new(&[5; 32], &p);
            whole.update(data);
            let mut odd = ConvergentKeyHasher::new(&[5; 32], &p);
            for c in data.chunks(65_537) {
                odd.update(c);
            }
            let mut pieces = ConvergentKeyHasher::new(&[5; 32], &p);
            for c in data.chunks(KEY_PIECE) {
                pieces.add_piece(&ConvergentKeyHasher::piece_digest(c), c.len());
            }
            let key = whole.finalize();
            assert_eq!(key, odd.finalize(), "len {len}");
            assert_eq!(key, pieces.finalize(), "len {len}");
        }
        // One zero byte more is another key.
        let k = |d: &[u8]| {
            let mut h = ConvergentKeyHasher::new(&[5; 32], &p);
            h.update(d);
            h.finalize()
        };
        let mut longer = data[..KEY_PIECE].to_vec();
        longer.push(0);
        assert_ne!(k(&data[..KEY_PIECE]), k(&longer));
    }
}
