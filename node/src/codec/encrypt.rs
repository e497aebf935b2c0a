//! AES-256-CTR with the keystream position equal to the byte offset in the file (zero IV,
//! 128-bit big-endian counter), so segments encrypt and decrypt independently and in parallel;
//! and the convergent key: a tagged SHA-256 of the node's convergence secret, the encoding
//! parameters and the plaintext (Tahoe-LAFS's convergent encryption with a per-node secret, which
//! limits confirmation-of-a-file attacks to holders of the same secret).

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
// hash would not match them.
const CONVERGENT_TAG: &str = "kith:convergent-key:v2";

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
pub struct ConvergentKeyHasher(TaggedHasher);

impl ConvergentKeyHasher {
    /// Starts with the node's secret and the encoding parameters.
    pub fn new(convergence_secret: &[u8; 32], params: &EncodingParams) -> Self {
        let mut h = TaggedHasher::new(CONVERGENT_TAG);
        h.update(convergence_secret);
        h.update(&[params.needed, params.total]);
        h.update(&params.segment_size.to_le_bytes());
        Self(h)
    }

    /// Feeds plaintext.
    pub fn update(&mut self, plaintext: &[u8]) {
        self.0.update(plaintext);
    }

    /// The key.
    pub fn finalize(self) -> Key {
        Key(self.0.finalize())
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
}
