//! Binary Merkle trees over 32-byte leaves (Tahoe-LAFS's `hashtree`, simplified): leaves are
//! padded to a power of two with a fixed empty-leaf hash; interior nodes are tagged hashes of
//! their two children. Used for the per-share block hash trees, the share hash tree and the
//! crypttext hash tree.

use crate::hash::tagged_hash;

const NODE_TAG: &str = "kith:merkle-node:v1";
const EMPTY_TAG: &str = "kith:merkle-empty:v1";

fn empty_leaf() -> [u8; 32] {
    tagged_hash(EMPTY_TAG, &[])
}

fn parent(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    tagged_hash(NODE_TAG, &[l, r])
}

fn padded(leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let width = leaves.len().max(1).next_power_of_two();
    let mut level = leaves.to_vec();
    level.resize(width, empty_leaf());
    level
}

/// The root of the tree over `leaves` (the empty tree's root is the empty-leaf hash).
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut level = padded(leaves);
    while level.len() > 1 {
        level = level.chunks(2).map(|p| parent(&p[0], &p[1])).collect();
    }
    level[0]
}

/// The sibling hashes from leaf `index` up to the root, or `None` when out of range.
pub fn merkle_proof(leaves: &[[u8; 32]], index: usize) -> Option<Vec<[u8; 32]>> {
    if index >= leaves.len() {
        return None;
    }
    let mut level = padded(leaves);
    let mut i = index;
    let mut proof = Vec::new();
    while level.len() > 1 {
        proof.push(level[i ^ 1]);
        level = level.chunks(2).map(|p| parent(&p[0], &p[1])).collect();
        i /= 2;
    }
    Some(proof)
}

/// Whether `proof` shows `leaf` at `index` in a tree of `num_leaves` leaves with root `root`.
pub fn verify_merkle_proof(
    root: &[u8; 32],
    index: u64,
    num_leaves: u64,
    leaf: &[u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if index >= num_leaves || num_leaves > (1 << 40) {
        return false;
    }
    let depth = num_leaves.max(1).next_power_of_two().trailing_zeros() as usize;
    if proof.len() != depth {
        return false;
    }
    let mut h = *leaf;
    let mut i = index;
    for sib in proof {
        h = if i & 1 == 0 {
            parent(&h, sib)
        } else {
            parent(sib, &h)
        };
        i >>= 1;
    }
    h == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| tagged_hash("leaf", &[&(i as u64).to_le_bytes()]))
            .collect()
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        for n in 1..40usize {
            let l = leaves(n);
            let root = merkle_root(&l);
            for i in 0..n {
                let p = merkle_proof(&l, i).unwrap();
                assert!(verify_merkle_proof(&root, i as u64, n as u64, &l[i], &p));
                let mut bad = l[i];
                bad[0] ^= 1;
                assert!(!verify_merkle_proof(&root, i as u64, n as u64, &bad, &p));
                if !p.is_empty() {
                    let mut bp = p.clone();
                    bp[0][31] ^= 0x80;
                    assert!(!verify_merkle_proof(&root, i as u64, n as u64, &l[i], &bp));
                    let short = &p[..p.len() - 1];
                    assert!(!verify_merkle_proof(
                        &root, i as u64, n as u64, &l[i], short
                    ));
                }
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(
                        !verify_merkle_proof(&root, j as u64, n as u64, &l[i], &p) || l[i] == l[j]
                    );
                }
            }
            assert!(merkle_proof(&l, n).is_none());
            assert!(!verify_merkle_proof(&root, n as u64, n as u64, &l[0], &[]));
        }
    }
}
