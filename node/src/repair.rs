//! The repair planner for immutable (CHK) files: pure, no IO, no clocks.
//!
//! Two parts, both driven by [`crate::checker`] (the IO):
//!
//! - [`plan_repair`] decides where regenerated shares go: servers of happiness over the current
//!   candidates ([`placement::plan`]) with the verified holdings fixed, then moved off any server
//!   that holds a *corrupt* copy of the same share (that server would answer "already have" to
//!   an allocation, so the share could never be replaced there).
//! - [`Regenerator`] rebuilds missing shares from the verify cap alone, segment by segment
//!   (Tahoe-LAFS's repairer, which downloads crypttext and re-uploads it): k verified blocks are
//!   decoded to the segment's crypttext and checked against its crypttext hash
//!   ([`codec::decode_crypttext`]), re-encoded into all n blocks ([`codec::reencode_crypttext`]),
//!   the regenerated blocks of shares whose metadata is known are checked against their block
//!   hashes, and only the blocks of the wanted shares are handed back. At the end
//!   [`Regenerator::finish`] recomputes all n block-tree roots and refuses to produce metadata
//!   unless their Merkle root is the UEB's share root, so a repairer never writes a share that a
//!   downloader would reject.
//!
//! Memory: the regenerator keeps 32 bytes per (share, segment) for the hash trees, as the
//! uploader does; blocks pass through one segment at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::{
    codec::{
        self, SegmentBlock, ShareMeta, UriExtension, VerifiedShare, VerifyError,
        merkle::{merkle_proof, merkle_root},
    },
    placement,
};

/// Where regenerated shares go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan<S> {
    /// Shares to regenerate and write: share number -> server.
    pub place: BTreeMap<u8, S>,
    /// Servers of happiness once every placement succeeds.
    pub happiness: usize,
    /// Distinct shares once every placement succeeds.
    pub distinct: usize,
}

/// Why no repair can be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Fewer than k distinct good shares exist: the file cannot be rebuilt from this grid.
    #[error("only {found} good shares of the {needed} needed to rebuild the file")]
    NotEnoughShares {
        /// Distinct good shares found.
        found: usize,
        /// k.
        needed: u8,
    },
}

/// Whether `good` holdings make a healthy file: all `total` shares present and servers of
/// happiness at least `happy`.
pub fn is_healthy<S: Ord>(good: &BTreeMap<S, BTreeSet<u8>>, total: u8, happy: u8) -> bool {
    distinct_shares(good) == usize::from(total) && placement::happiness(good) >= usize::from(happy)
}

/// Number of distinct share numbers held.
pub fn distinct_shares<S>(holdings: &BTreeMap<S, BTreeSet<u8>>) -> usize {
    holdings.values().flatten().collect::<BTreeSet<_>>().len()
}

/// Plans where to place regenerated shares of file `storage_index` among `candidates`,
/// keeping the `good` holdings and never giving a server a share it holds a `corrupt` copy of.
/// A healthy file gets an empty plan. Happiness below `happy` is not an error: the plan does
/// the best the candidates allow and says what it reaches.
pub fn plan_repair<S: Ord + Clone + AsRef<[u8]>>(
    storage_index: &[u8; 16],
    candidates: &[S],
    good: &BTreeMap<S, BTreeSet<u8>>,
    corrupt: &BTreeMap<S, BTreeSet<u8>>,
    needed: u8,
    total: u8,
    happy: u8,
) -> Result<RepairPlan<S>, PlanError> {
    let good: BTreeMap<S, BTreeSet<u8>> = good
        .iter()
        .map(|(s, sh)| {
            (
                s.clone(),
                sh.iter().copied().filter(|&x| x < total).collect(),
            )
        })
        .filter(|(_, sh): &(S, BTreeSet<u8>)| !sh.is_empty())
        .collect();
    let found = distinct_shares(&good);
    if found < usize::from(needed) {
        return Err(PlanError::NotEnoughShares { found, needed });
    }
    if is_healthy(&good, total, happy) {
        return Ok(RepairPlan {
            place: BTreeMap::new(),
            happiness: placement::happiness(&good),
            distinct: found,
        });
    }
    let blocked = |s: &S, sh: u8| corrupt.get(s).is_some_and(|c| c.contains(&sh));
    let holds = |s: &S, sh: u8| good.get(s).is_some_and(|h| h.contains(&sh));
    // happy = 0: the placement core never refuses; this planner judges the result itself.
    let Ok(base) = placement::plan(storage_index, candidates, &good, total, 0) else {
        return Ok(RepairPlan {
            place: BTreeMap::new(),
            happiness: placement::happiness(&good),
            distinct: found,
        });
    };
    let mut place: BTreeMap<u8, S> = base
        .assignments
        .into_iter()
        .filter(|(sh, s)| !holds(s, *sh))
        .collect();
    // Move shares off servers holding a corrupt copy: swap with another assignment when that
    // suits both, else the least loaded allowed server in ring order, else leave it out.
    let conflicts: Vec<u8> = place
        .iter()
        .filter(|(sh, s)| blocked(s, **sh))
        .map(|(sh, _)| *sh)
        .collect();
    let ring = placement::permuted_ring(storage_index, candidates);
    for sh in conflicts {
        let Some(s) = place.get(&sh).cloned() else {
            continue;
        };
        if !blocked(&s, sh) {
            continue; // fixed by an earlier swap
        }
        let swap = place
            .iter()
            .find(|(sh2, s2)| {
                **sh2 != sh
                    && !blocked(s2, sh)
                    && !holds(s2, sh)
                    && !blocked(&s, **sh2)
                    && !holds(&s, **sh2)
            })
            .map(|(sh2, s2)| (*sh2, s2.clone()));
        if let Some((sh2, s2)) = swap {
            place.insert(sh, s2);
            place.insert(sh2, s);
            continue;
        }
        let load = |x: &S| {
            good.get(x).map_or(0, BTreeSet::len) + place.values().filter(|p| *p == x).count()
        };
        let alt = ring
            .iter()
            .filter(|x| !blocked(x, sh) && !holds(x, sh))
            .min_by_key(|x| load(x))
            .cloned();
        match alt {
            Some(x) => {
                place.insert(sh, x);
            }
            None => {
                place.remove(&sh);
            }
        }
    }
    let mut after = good.clone();
    for (&sh, s) in &place {
        after.entry(s.clone()).or_default().insert(sh);
    }
    Ok(RepairPlan {
        happiness: placement::happiness(&after),
        distinct: distinct_shares(&after),
        place,
    })
}

/// Why regeneration failed. Every variant means the shares found disagree with the verify cap
/// or with each other; nothing regenerated may be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegenError {
    /// Decoding or re-encoding a segment failed (too few blocks, wrong crypttext).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Segments must be given in order, each once.
    #[error("segment {got} given, expected segment {expected}")]
    OutOfOrder {
        /// The next segment expected.
        expected: u32,
        /// The one given.
        got: u32,
    },
    /// The crypttext hashes do not chain to the UEB.
    #[error("the crypttext hashes do not match the UEB")]
    BadCrypttextHashes,
    /// A regenerated block of a share whose metadata is known does not hash to its block hash.
    #[error("regenerated block {segment} of share {shnum} does not match its block hash")]
    KnownShareMismatch {
        /// The share.
        shnum: u8,
        /// The segment.
        segment: u32,
    },
    /// The regenerated block-tree roots do not hash to the UEB's share root.
    #[error("the regenerated shares do not match the UEB's share root")]
    ShareRootMismatch,
    /// `finish` before every segment was given.
    #[error("only {done} of {total} segments regenerated")]
    Incomplete {
        /// Segments given.
        done: u32,
        /// Segments in the file.
        total: u32,
    },
}

/// Regenerates shares from k verified blocks per segment, without the decryption key.
#[derive(Debug)]
pub struct Regenerator {
    ueb: UriExtension,
    crypttext_hashes: Vec<[u8; 32]>,
    known: Vec<Arc<VerifiedShare>>,
    wanted: BTreeSet<u8>,
    /// Per share, per segment so far: the block hashes (leaves of each block tree).
    block_hashes: Vec<Vec<[u8; 32]>>,
    next: u32,
}

impl Regenerator {
    /// A regenerator for the `wanted` shares of the file whose verified UEB is `ueb`;
    /// `crypttext_hashes` come from any verified share's metadata and `known` are the verified
    /// shares whose regenerated blocks are checked against their block hashes.
    pub fn new(
        ueb: UriExtension,
        crypttext_hashes: Vec<[u8; 32]>,
        known: Vec<Arc<VerifiedShare>>,
        wanted: BTreeSet<u8>,
    ) -> Result<Self, RegenError> {
        if crypttext_hashes.len() != ueb.num_segments as usize
            || merkle_root(&crypttext_hashes) != ueb.crypttext_root
        {
            return Err(RegenError::BadCrypttextHashes);
        }
        let wanted = wanted.into_iter().filter(|&sh| sh < ueb.total).collect();
        let n = usize::from(ueb.total);
        let segs = ueb.num_segments as usize;
        Ok(Self {
            block_hashes: (0..n).map(|_| Vec::with_capacity(segs)).collect(),
            ueb,
            crypttext_hashes,
            known,
            wanted,
            next: 0,
        })
    }

    /// The next segment to give to [`segment`](Self::segment) (`None` when all were given).
    pub fn next_segment(&self) -> Option<u32> {
        (self.next < self.ueb.num_segments).then_some(self.next)
    }

    /// Rebuilds segment `segment` from at least k verified blocks `(shnum, block)` and returns
    /// the wanted shares' blocks of it.
    pub fn segment(
        &mut self,
        segment: u32,
        blocks: Vec<SegmentBlock>,
    ) -> Result<BTreeMap<u8, Vec<u8>>, RegenError> {
        if segment != self.next {
            return Err(RegenError::OutOfOrder {
                expected: self.next,
                got: segment,
            });
        }
        let crypttext =
            codec::decode_crypttext(&self.ueb, &self.crypttext_hashes, segment, blocks)?.into_vec();
        let (blocks, hashes) = codec::reencode_crypttext(&self.ueb, segment, &crypttext)?;
        for share in &self.known {
            let shnum = share.shnum();
            let block = blocks
                .get(usize::from(shnum))
                .ok_or(RegenError::KnownShareMismatch { shnum, segment })?;
            if share.check_block(segment, block).is_err() {
                return Err(RegenError::KnownShareMismatch { shnum, segment });
            }
        }
        for (leaves, h) in self.block_hashes.iter_mut().zip(hashes) {
            leaves.push(h);
        }
        self.next += 1;
        Ok(blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let sh = u8::try_from(i).ok()?;
                self.wanted.contains(&sh).then_some((sh, b))
            })
            .collect())
    }

    /// After every segment: checks the regenerated share roots against the UEB and returns
    /// each wanted share's metadata.
    pub fn finish(self) -> Result<BTreeMap<u8, ShareMeta>, RegenError> {
        if self.next != self.ueb.num_segments {
            return Err(RegenError::Incomplete {
                done: self.next,
                total: self.ueb.num_segments,
            });
        }
        let roots: Vec<[u8; 32]> = self.block_hashes.iter().map(|l| merkle_root(l)).collect();
        if merkle_root(&roots) != self.ueb.share_root {
            return Err(RegenError::ShareRootMismatch);
        }
        let ueb_bytes = self.ueb.to_bytes();
        let mut out = BTreeMap::new();
        for sh in self.wanted {
            let (Some(leaves), Some(proof)) = (
                self.block_hashes.get(usize::from(sh)),
                merkle_proof(&roots, usize::from(sh)),
            ) else {
                continue;
            };
            out.insert(
                sh,
                ShareMeta {
                    shnum: sh,
                    ueb: ueb_bytes.clone(),
                    block_hashes: leaves.clone(),
                    share_hash_proof: proof,
                    crypttext_hashes: self.crypttext_hashes.clone(),
                },
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{
        ConvergentKeyHasher, EncodedFile, EncodedSegment, EncodingParams, FileEncoder,
        SegmentHashes, verify_ueb,
    };
    use proptest::prelude::*;

    fn servers(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 4]).collect()
    }

    fn holdings(pairs: &[(usize, u8)], s: &[Vec<u8>]) -> BTreeMap<Vec<u8>, BTreeSet<u8>> {
        let mut m: BTreeMap<Vec<u8>, BTreeSet<u8>> = BTreeMap::new();
        for &(i, sh) in pairs {
            m.entry(s[i].clone()).or_default().insert(sh);
        }
        m
    }

    #[test]
    fn a_healthy_file_gets_an_empty_plan() {
        let s = servers(10);
        let good = holdings(&(0..10).map(|i| (i, i as u8)).collect::<Vec<_>>(), &s);
        let p = plan_repair(&[1; 16], &s, &good, &BTreeMap::new(), 3, 10, 7).unwrap();
        assert!(p.place.is_empty());
        assert_eq!((p.happiness, p.distinct), (10, 10));
    }

    #[test]
    fn five_missing_shares_go_to_the_five_empty_servers() {
        let s = servers(10);
        let good = holdings(&(0..5).map(|i| (i, i as u8)).collect::<Vec<_>>(), &s);
        let p = plan_repair(&[1; 16], &s, &good, &BTreeMap::new(), 3, 10, 7).unwrap();
        assert_eq!(
            p.place.keys().copied().collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
        let targets: BTreeSet<_> = p.place.values().collect();
        assert_eq!(targets.len(), 5);
        assert!(targets.iter().all(|t| !good.contains_key(*t)));
        assert_eq!((p.happiness, p.distinct), (10, 10));
    }

    #[test]
    fn a_corrupt_copy_is_never_replaced_on_its_own_server() {
        let s = servers(10);
        // Server 7 holds a corrupt share 7 and nothing good; the other nine hold one each.
        let good = holdings(
            &(0..10)
                .filter(|&i| i != 7)
                .map(|i| (i, i as u8))
                .collect::<Vec<_>>(),
            &s,
        );
        let corrupt = holdings(&[(7, 7)], &s);
        for si in 0..20u8 {
            let p = plan_repair(&[si; 16], &s, &good, &corrupt, 3, 10, 7).unwrap();
            assert!(p.place.contains_key(&7), "{p:?}");
            assert_ne!(p.place.get(&7), Some(&s[7]), "{p:?}");
            assert_eq!(p.distinct, 10);
        }
    }

    #[test]
    fn fewer_than_k_good_shares_cannot_be_repaired() {
        let s = servers(10);
        let good = holdings(&[(0, 0), (1, 1), (2, 1)], &s);
        assert_eq!(
            plan_repair(&[1; 16], &s, &good, &BTreeMap::new(), 3, 10, 7),
            Err(PlanError::NotEnoughShares {
                found: 2,
                needed: 3
            })
        );
    }

    #[test]
    fn all_shares_on_too_few_servers_are_spread() {
        let s = servers(10);
        // All ten shares, but on two servers: happiness 2.
        let good = holdings(&(0..10).map(|i| (i % 2, i as u8)).collect::<Vec<_>>(), &s);
        let p = plan_repair(&[3; 16], &s, &good, &BTreeMap::new(), 3, 10, 7).unwrap();
        assert!(p.happiness >= 7, "{p:?}");
        assert!(p.place.values().all(|t| *t != s[0] && *t != s[1]));
    }

    proptest! {
        #[test]
        fn plans_never_place_on_blocked_or_holding_servers(
            n_servers in 1usize..14,
            total in 1u8..12,
            k in 1u8..4,
            held in proptest::collection::vec((0usize..14, 0u8..12), 0..20),
            bad in proptest::collection::vec((0usize..14, 0u8..12), 0..6),
            si in any::<[u8; 16]>(),
        ) {
            let needed = k.min(total);
            let happy = total.min(n_servers as u8).max(needed);
            let s = servers(n_servers);
            let good = holdings(&held.iter().copied().filter(|(i, sh)| *i < n_servers && *sh < total).collect::<Vec<_>>(), &s);
            let corrupt = holdings(&bad.iter().copied().filter(|(i, sh)| *i < n_servers && *sh < total && !good.get(&s[*i]).is_some_and(|g| g.contains(sh))).collect::<Vec<_>>(), &s);
            match plan_repair(&si, &s, &good, &corrupt, needed, total, happy) {
                Ok(p) => {
                    let mut after = good.clone();
                    for (&sh, t) in &p.place {
                        prop_assert!(!corrupt.get(t).is_some_and(|c| c.contains(&sh)));
                        prop_assert!(!good.get(t).is_some_and(|g| g.contains(&sh)));
                        prop_assert!(s.contains(t));
                        after.entry(t.clone()).or_default().insert(sh);
                    }
                    prop_assert_eq!(p.happiness, placement::happiness(&after));
                    prop_assert_eq!(p.distinct, distinct_shares(&after));
                    prop_assert!(p.happiness >= placement::happiness(&good));
                    // Every missing share finds a home when some server has no corrupt copy of it.
                    for sh in 0..total {
                        let placeable = s.iter().any(|x| !corrupt.get(x).is_some_and(|c| c.contains(&sh)));
                        let present = after.values().any(|h| h.contains(&sh));
                        prop_assert!(present || !placeable, "share {} left out: {:?}", sh, p);
                    }
                }
                Err(PlanError::NotEnoughShares { found, .. }) => {
                    prop_assert!(found < usize::from(needed));
                }
            }
        }
    }

    fn encode_all(data: &[u8], params: EncodingParams) -> (EncodedFile, Vec<EncodedSegment>) {
        let mut h = ConvergentKeyHasher::new(&[7; 32], &params);
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

    /// Shuffles `0..n` with a seeded LCG.
    fn shuffled(n: u8, seed: u64) -> Vec<u8> {
        let mut v: Vec<u8> = (0..n).collect();
        let mut s = seed;
        for i in (1..v.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (s >> 33) as usize % (i + 1));
        }
        v
    }

    proptest! {
        #![proptest_config(crate::prop::cases(48))]
        #[test]
        fn regenerated_share_metas_equal_the_originals_for_any_deleted_subset(
            len in 56usize..30_000,
            k in 1u8..5,
            extra in 0u8..7,
            keep_extra in 0u8..7,
            seed in any::<u64>(),
        ) {
            let n = k + extra;
            let params = EncodingParams { needed: k, happy: k, total: n, segment_size: 4096 };
            let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed).wrapping_mul(0x9E37_79B9) as u8).collect();
            let (file, segs) = encode_all(&data, params);
            let order = shuffled(n, seed);
            // Keep at least k shares; every other one is deleted.
            let keep = usize::from(k + keep_extra.min(extra));
            let (kept, deleted) = order.split_at(keep);
            let verify_cap = file.cap.verify_cap();
            let ueb = codec::verify_ueb_with_verify_cap(&verify_cap, &file.share_metas[usize::from(kept[0])].ueb).unwrap();
            let known: Vec<Arc<VerifiedShare>> = kept
                .iter()
                .map(|&sh| Arc::new(VerifiedShare::new(&ueb, file.share_metas[usize::from(sh)].clone()).unwrap()))
                .collect();
            let ct = file.share_metas[usize::from(kept[0])].crypttext_hashes.clone();
            let wanted: BTreeSet<u8> = deleted.iter().copied().collect();
            let mut regen = Regenerator::new(ueb.clone(), ct, known, wanted.clone()).unwrap();
            while let Some(seg) = regen.next_segment() {
                // Any k of the kept shares, rotating with the segment.
                let blocks: Vec<SegmentBlock> = (0..usize::from(k))
                    .map(|j| kept[(j + seg as usize) % kept.len()])
                    .map(|sh| SegmentBlock::new(sh, segs[seg as usize].blocks[usize::from(sh)].clone()))
                    .collect();
                let out = regen.segment(seg, blocks).unwrap();
                prop_assert_eq!(out.keys().copied().collect::<BTreeSet<_>>(), wanted.clone());
                for (sh, b) in out {
                    prop_assert!(b == segs[seg as usize].blocks[usize::from(sh)], "block {} of share {} differs", seg, sh);
                }
            }
            let metas = regen.finish().unwrap();
            prop_assert_eq!(metas.len(), deleted.len());
            for (sh, meta) in metas {
                prop_assert_eq!(&meta, &file.share_metas[usize::from(sh)]);
                // ...and a downloader holding the read cap accepts it.
                let ueb = verify_ueb(&file.cap, &meta.ueb).unwrap();
                prop_assert!(VerifiedShare::new(&ueb, meta).is_ok());
            }
        }
    }

    #[test]
    fn inconsistent_inputs_are_refused() {
        let params = EncodingParams {
            needed: 2,
            happy: 2,
            total: 4,
            segment_size: 1024,
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let (file, segs) = encode_all(&data, params);
        let ct = file.share_metas[0].crypttext_hashes.clone();

        // Crypttext hashes that do not chain to the UEB.
        let mut bad_ct = ct.clone();
        bad_ct[1][0] ^= 1;
        assert_eq!(
            Regenerator::new(file.ueb.clone(), bad_ct, vec![], BTreeSet::from([3])).unwrap_err(),
            RegenError::BadCrypttextHashes
        );

        // A wrong block is caught by the crypttext hash.
        let mut regen =
            Regenerator::new(file.ueb.clone(), ct.clone(), vec![], BTreeSet::from([3])).unwrap();
        let mut b0 = segs[0].blocks[0].clone();
        b0[0] ^= 1;
        let err = regen
            .segment(
                0,
                vec![
                    SegmentBlock::new(0, b0),
                    SegmentBlock::new(1, segs[0].blocks[1].clone()),
                ],
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegenError::Verify(VerifyError::CrypttextMismatch { .. })
            ),
            "{err}"
        );
        assert!(matches!(
            regen.segment(1, vec![]),
            Err(RegenError::OutOfOrder {
                expected: 0,
                got: 1
            })
        ));

        // A UEB whose share root is not what the blocks give (a lying uploader): no metadata.
        let mut ueb = file.ueb.clone();
        ueb.share_root[0] ^= 1;
        let mut regen = Regenerator::new(ueb, ct.clone(), vec![], BTreeSet::from([3])).unwrap();
        while let Some(seg) = regen.next_segment() {
            let blocks = vec![
                SegmentBlock::new(0, segs[seg as usize].blocks[0].clone()),
                SegmentBlock::new(2, segs[seg as usize].blocks[2].clone()),
            ];
            regen.segment(seg, blocks).unwrap();
        }
        assert_eq!(regen.finish().unwrap_err(), RegenError::ShareRootMismatch);

        // Finishing early is an error.
        let regen = Regenerator::new(file.ueb.clone(), ct, vec![], BTreeSet::from([3])).unwrap();
        assert!(matches!(
            regen.finish(),
            Err(RegenError::Incomplete { done: 0, .. })
        ));
    }
}
