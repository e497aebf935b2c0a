//! Share placement: which server gets which share (pure, deterministic).
//!
//! Servers are ordered on a *permuted ring*: by the tagged SHA-256 of the storage index and the
//! server id, so each file sees its own order and load spreads evenly (Tahoe-LAFS's server
//! selection). Shares servers already hold are kept; each server without a share gets one, in
//! ring order; what is left goes round-robin.
//!
//! Success is judged by *servers of happiness* (Tahoe-LAFS's upload happiness, ticket #778):
//! the size of a maximum matching in the bipartite graph of servers and the share numbers they
//! hold, i.e. the largest number of distinct servers that each hold a distinct share. If it is at
//! least `happy`, any `k` of those servers rebuild the file.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::tagged_hash;

const PERMUTE_TAG: &str = "kith:permute:v1";

/// A placement plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement<S> {
    /// Shares to upload: share number -> server.
    pub assignments: BTreeMap<u8, S>,
    /// Shares some server already holds: share number -> server.
    pub already_placed: BTreeMap<u8, S>,
    /// Servers of happiness of the whole plan.
    pub happiness: usize,
}

/// Why no acceptable plan exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// Too few distinct servers.
    #[error(
        "upload needs shares on {happy} distinct servers (happy={happy}) but only {reachable_servers} storage servers were reachable"
    )]
    NotHappy {
        /// Wanted.
        happy: u8,
        /// Best possible with these servers.
        achievable: usize,
        /// Servers given.
        reachable_servers: usize,
    },
}

/// `servers` in the permuted-ring order of `storage_index`.
pub fn permuted_ring<S: Clone + AsRef<[u8]>>(storage_index: &[u8; 16], servers: &[S]) -> Vec<S> {
    let mut keyed: Vec<([u8; 32], S)> = servers
        .iter()
        .map(|s| {
            (
                tagged_hash(PERMUTE_TAG, &[storage_index, s.as_ref()]),
                s.clone(),
            )
        })
        .collect();
    keyed.sort_by_key(|k| k.0);
    keyed.into_iter().map(|(_, s)| s).collect()
}

/// Maximum matching between servers and the shares they hold (servers of happiness).
pub fn happiness<S: Ord>(holdings: &BTreeMap<S, BTreeSet<u8>>) -> usize {
    matching(holdings).len()
}

/// A maximum matching as share -> server index (Kuhn's augmenting paths; n <= 255).
fn matching<S: Ord>(holdings: &BTreeMap<S, BTreeSet<u8>>) -> BTreeMap<u8, usize> {
    let adj: Vec<Vec<u8>> = holdings
        .values()
        .map(|s| s.iter().copied().collect())
        .collect();
    let mut owner: BTreeMap<u8, usize> = BTreeMap::new();
    fn augment(
        u: usize,
        adj: &[Vec<u8>],
        seen: &mut BTreeSet<u8>,
        owner: &mut BTreeMap<u8, usize>,
    ) -> bool {
        for &sh in &adj[u] {
            if seen.insert(sh) {
                let free = match owner.get(&sh) {
                    None => true,
                    Some(&v) => augment(v, adj, seen, owner),
                };
                if free {
                    owner.insert(sh, u);
                    return true;
                }
            }
        }
        false
    }
    for u in 0..adj.len() {
        let mut seen = BTreeSet::new();
        augment(u, &adj, &mut seen, &mut owner);
    }
    owner
}

/// Plans where shares `0..total` go among `servers`, keeping what `existing` servers hold.
pub fn plan<S: Ord + Clone + AsRef<[u8]>>(
    storage_index: &[u8; 16],
    servers: &[S],
    existing: &BTreeMap<S, BTreeSet<u8>>,
    total: u8,
    happy: u8,
) -> Result<Placement<S>, PlacementError> {
    let ring = permuted_ring(storage_index, servers);
    let existing: BTreeMap<S, BTreeSet<u8>> = existing
        .iter()
        .map(|(s, sh)| {
            (
                s.clone(),
                sh.iter()
                    .copied()
                    .filter(|&x| x < total)
                    .collect::<BTreeSet<u8>>(),
            )
        })
        .filter(|(_, sh)| !sh.is_empty())
        .collect();
    // Keep the held shares a maximum matching spreads over distinct servers; other held copies
    // only count where no free server is left for them.
    let holders: Vec<&S> = existing.keys().collect();
    let mut already_placed: BTreeMap<u8, S> = matching(&existing)
        .into_iter()
        .map(|(sh, i)| (sh, holders[i].clone()))
        .collect();
    let busy: BTreeSet<S> = already_placed.values().cloned().collect();
    let mut free = ring.iter().filter(|s| !busy.contains(s));
    let mut assignments = BTreeMap::new();
    let mut rr = ring.iter().cycle();
    for sh in 0..total {
        if already_placed.contains_key(&sh) {
            continue;
        }
        if let Some(s) = free.next() {
            assignments.insert(sh, s.clone());
            continue;
        }
        let holder = ring
            .iter()
            .chain(existing.keys())
            .find(|s| existing.get(*s).is_some_and(|h| h.contains(&sh)));
        if let Some(h) = holder {
            already_placed.insert(sh, h.clone());
        } else if let Some(s) = rr.next() {
            assignments.insert(sh, s.clone());
        }
    }
    let mut holdings: BTreeMap<S, BTreeSet<u8>> = BTreeMap::new();
    for (&sh, s) in already_placed.iter().chain(assignments.iter()) {
        holdings.entry(s.clone()).or_default().insert(sh);
    }
    for (s, held) in &existing {
        holdings.entry(s.clone()).or_default().extend(held);
    }
    let achieved = happiness(&holdings);
    if achieved < usize::from(happy) {
        return Err(PlacementError::NotHappy {
            happy,
            achievable: achieved,
            reachable_servers: servers.len(),
        });
    }
    Ok(Placement {
        assignments,
        already_placed,
        happiness: achieved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn servers(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 4]).collect()
    }

    #[test]
    fn ten_servers_get_one_share_each() {
        let s = servers(10);
        let p = plan(&[1; 16], &s, &BTreeMap::new(), 10, 7).unwrap();
        assert_eq!(p.assignments.len(), 10);
        assert_eq!(p.happiness, 10);
        let distinct: BTreeSet<_> = p.assignments.values().collect();
        assert_eq!(distinct.len(), 10);
    }

    #[test]
    fn too_few_servers_is_not_happy_with_a_clear_message() {
        let err = plan(&[1; 16], &servers(2), &BTreeMap::new(), 10, 7).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NotHappy {
                happy: 7,
                achievable: 2,
                reachable_servers: 2
            }
        );
        assert!(err.to_string().contains("only 2 storage servers"));
    }

    #[test]
    fn existing_shares_are_kept() {
        let s = servers(5);
        let mut existing = BTreeMap::new();
        existing.insert(s[3].clone(), BTreeSet::from([0u8, 1]));
        let p = plan(&[2; 16], &s, &existing, 5, 5).unwrap();
        assert_eq!(p.already_placed.get(&0), Some(&s[3]));
        assert!(!p.assignments.contains_key(&0));
        assert_eq!(p.happiness, 5);
    }

    #[test]
    fn ring_order_depends_on_the_storage_index() {
        let s = servers(20);
        assert_ne!(permuted_ring(&[1; 16], &s), permuted_ring(&[2; 16], &s));
        assert_eq!(permuted_ring(&[1; 16], &s), permuted_ring(&[1; 16], &s));
    }

    proptest! {
        #[test]
        fn happiness_is_maximal_and_plans_never_panic(n_servers in 0usize..15, total in 1u8..15, happy in 1u8..15, held in proptest::collection::vec((0usize..15, 0u8..20), 0..20)) {
            let s = servers(n_servers);
            let mut existing: BTreeMap<Vec<u8>, BTreeSet<u8>> = BTreeMap::new();
            for (i, sh) in held {
                if i < n_servers { existing.entry(s[i].clone()).or_default().insert(sh); }
            }
            match plan(&[9; 16], &s, &existing, total, happy) {
                Ok(p) => {
                    prop_assert!(p.happiness >= usize::from(happy));
                    // Every share is placed somewhere.
                    for sh in 0..total {
                        prop_assert!(p.assignments.contains_key(&sh) || p.already_placed.contains_key(&sh));
                    }
                    // Upper bound: never more than min(servers, shares).
                    prop_assert!(p.happiness <= n_servers.min(usize::from(total)));
                }
                Err(PlacementError::NotHappy { achievable, .. }) => {
                    prop_assert!(achievable < usize::from(happy));
                    // With no existing shares the plan reaches min(servers, total).
                    if existing.is_empty() {
                        prop_assert_eq!(achievable, n_servers.min(usize::from(total)));
                    }
                }
            }
        }
    }
}
