//! SHA-256 tagged hashes: every hash kith computes is domain-separated by a tag, as in
//! Tahoe-LAFS's `hashutil` (there SHA-256d over a netstring tag), so a value hashed for one purpose
//! can never be passed off as another.
//!
//! `tagged_hash(tag, parts)` = SHA-256( netstring(tag) || for each part: u64-LE length || part ).
//! Length-prefixing every part makes the encoding injective. Tags start with `kith:` and end with a
//! version (`:v1`); they are constants next to the code that uses them.

use sha2::{Digest, Sha256};

fn netstring(h: &mut Sha256, tag: &str) {
    h.update(tag.len().to_string().as_bytes());
    h.update(b":");
    h.update(tag.as_bytes());
    h.update(b",");
}

/// The tagged hash of `parts`.
pub fn tagged_hash(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    netstring(&mut h, tag);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The tagged hash of one part given in pieces: `tagged_hash(tag, &[&pieces.concat()])`,
/// without joining them.
pub fn tagged_hash_of_pieces<P: AsRef<[u8]>>(tag: &str, pieces: &[P]) -> [u8; 32] {
    let mut h = Sha256::new();
    netstring(&mut h, tag);
    let len: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
    h.update((len as u64).to_le_bytes());
    for p in pieces {
        h.update(p);
    }
    h.finalize().into()
}

/// A streaming tagged hash over one part whose bytes arrive in pieces (no length prefix: the
/// caller hashes exactly one stream per hasher).
#[derive(Clone)]
pub struct TaggedHasher(Sha256);

impl TaggedHasher {
    /// A hasher for `tag`.
    pub fn new(tag: &str) -> Self {
        let mut h = Sha256::new();
        netstring(&mut h, tag);
        Self(h)
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash.
    pub fn finalize(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_part_boundaries_separate_domains() {
        assert_ne!(
            tagged_hash("kith:a:v1", &[b"x"]),
            tagged_hash("kith:b:v1", &[b"x"])
        );
        assert_ne!(
            tagged_hash("t", &[b"ab", b"c"]),
            tagged_hash("t", &[b"a", b"bc"])
        );
        assert_ne!(
            tagged_hash("t", &[b"abc"]),
            tagged_hash("t", &[b"abc", b""])
        );
        let mut s = TaggedHasher::new("t");
        s.update(b"ab");
        s.update(b"c");
        let mut one = TaggedHasher::new("t");
        one.update(b"abc");
        assert_eq!(s.finalize(), one.finalize());
        // One part in pieces hashes as the part joined, however it is cut.
        for cut in [
            vec![&b"abc"[..]],
            vec![b"a", b"bc"],
            vec![b"", b"ab", b"c", b""],
        ] {
            assert_eq!(
                tagged_hash_of_pieces("t", &cut),
                tagged_hash("t", &[b"abc"])
            );
        }
        assert_eq!(
            tagged_hash_of_pieces::<&[u8]>("t", &[]),
            tagged_hash("t", &[b""])
        );
    }
}
