//! The redb store against the pure ledger: random event sequences in random transactions, some
//! committed, some dropped (aborted). After every transaction the ledger loaded from the database
//! must equal the ledger that applied only the committed events, and every account's usage must
//! equal the sum of its committed leases; after reopening the file, too.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use kith_accounting::{
    AccountId, Event, Ledger, Outcome, PolicyChange, Quota,
    store::{self, StoreError},
};
use proptest::prelude::*;
use redb::{Database, ReadableDatabase};

#[derive(Clone, Debug)]
enum Op {
    Add {
        acct: u8,
        bytes: u64,
        expiry: u64,
    },
    Remove {
        pick: usize,
    },
    Renew {
        pick: usize,
        to: u64,
    },
    /// Removes a lease that was never added (must be refused by both, changing nothing).
    BadRemove {
        acct: u8,
        bytes: u64,
    },
    Place {
        acct: u8,
        bytes: u64,
    },
    Unplace {
        acct: u8,
        bytes: u64,
    },
    Grant {
        acct: u8,
        quota: Option<u64>,
    },
    Revoke {
        acct: u8,
        grace: u64,
    },
    Clear {
        acct: u8,
    },
    TheyGrant {
        acct: u8,
        quota: Option<u64>,
    },
    Audit {
        acct: u8,
        outcome: Outcome,
    },
    Policy(PolicyChange),
    Check {
        acct: u8,
        bytes: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let acct = 0u8..3;
    let outcome = prop_oneof![
        Just(Outcome::Pass),
        Just(Outcome::Fail),
        Just(Outcome::Offline)
    ];
    let change = prop_oneof![
        proptest::option::of(0u64..1000)
            .prop_map(|q| PolicyChange::DefaultGrant(q.map(Quota::Bytes))),
        proptest::option::of(0.0f64..3.0).prop_map(PolicyChange::Reciprocal),
        any::<bool>().prop_map(PolicyChange::InviteOnly),
    ];
    prop_oneof![
        6 => (acct.clone(), 0u64..500, 0u64..6).prop_map(|(acct, bytes, expiry)| Op::Add { acct, bytes, expiry }),
        3 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        2 => (any::<usize>(), 0u64..8).prop_map(|(pick, to)| Op::Renew { pick, to }),
        1 => (acct.clone(), 0u64..500).prop_map(|(acct, bytes)| Op::BadRemove { acct, bytes }),
        2 => (acct.clone(), 0u64..500).prop_map(|(acct, bytes)| Op::Place { acct, bytes }),
        1 => (acct.clone(), 0u64..500).prop_map(|(acct, bytes)| Op::Unplace { acct, bytes }),
        1 => (acct.clone(), proptest::option::of(0u64..2000)).prop_map(|(acct, quota)| Op::Grant { acct, quota }),
        1 => (acct.clone(), 0u64..100).prop_map(|(acct, grace)| Op::Revoke { acct, grace }),
        1 => acct.clone().prop_map(|acct| Op::Clear { acct }),
        1 => (acct.clone(), proptest::option::of(0u64..2000)).prop_map(|(acct, quota)| Op::TheyGrant { acct, quota }),
        2 => (acct.clone(), outcome).prop_map(|(acct, outcome)| Op::Audit { acct, outcome }),
        1 => change.prop_map(Op::Policy),
        2 => (acct, 0u64..1500).prop_map(|(acct, bytes)| Op::Check { acct, bytes }),
    ]
}

fn id(acct: u8) -> AccountId {
    [acct + 1; 32]
}

fn quota(q: Option<u64>) -> Quota {
    q.map_or(Quota::Unlimited, Quota::Bytes)
}

/// The test's own record of live leases: (account, bytes, expiry), one share each.
type Leases = Vec<(AccountId, u64, u64)>;

/// Turns an op into an event against the current leases (`None`: nothing to do).
fn event(op: &Op, leases: &Leases, clock: u64) -> Option<Event> {
    Some(match *op {
        Op::Add {
            acct,
            bytes,
            expiry,
        } => Event::LeaseAdded {
            who: id(acct),
            bytes,
            shares: 1,
            expiry,
        },
        Op::Remove { pick } => {
            let (who, bytes, expiry) = *leases.get(pick % leases.len().max(1))?;
            Event::LeaseRemoved {
                who,
                bytes,
                shares: 1,
                expiry,
            }
        }
        Op::Renew { pick, to } => {
            let (who, bytes, from) = *leases.get(pick % leases.len().max(1))?;
            Event::LeaseRenewed {
                who,
                bytes,
                shares: 1,
                from,
                to,
            }
        }
        Op::BadRemove { acct, bytes } => Event::LeaseRemoved {
            who: id(acct),
            bytes,
            shares: 1,
            expiry: 1_000_000,
        },
        Op::Place { acct, bytes } => Event::Placed {
            on: id(acct),
            bytes,
            shares: 1,
        },
        Op::Unplace { acct, bytes } => Event::Unplaced {
            on: id(acct),
            bytes,
            shares: 1,
        },
        Op::Grant { acct, quota: q } => Event::Granted {
            who: id(acct),
            quota: quota(q),
        },
        Op::Revoke { acct, grace } => Event::Revoked {
            who: id(acct),
            grace_end: clock + grace,
        },
        Op::Clear { acct } => Event::Cleared { who: id(acct) },
        Op::TheyGrant { acct, quota: q } => Event::TheyGrant {
            who: id(acct),
            grant: Some(quota(q)),
        },
        Op::Audit { acct, outcome } => Event::Audit {
            peer: id(acct),
            at: clock,
            outcome,
        },
        Op::Policy(change) => Event::Policy(change),
        Op::Check { .. } => return None,
    })
}

fn track(ev: &Event, leases: &mut Leases) {
    match *ev {
        Event::LeaseAdded {
            who, bytes, expiry, ..
        } => leases.push((who, bytes, expiry)),
        Event::LeaseRemoved {
            who, bytes, expiry, ..
        } => {
            let i = leases
                .iter()
                .position(|l| *l == (who, bytes, expiry))
                .unwrap();
            leases.swap_remove(i);
        }
        Event::LeaseRenewed {
            who,
            bytes,
            from,
            to,
            ..
        } => {
            let i = leases
                .iter()
                .position(|l| *l == (who, bytes, from))
                .unwrap();
            leases[i].2 = to;
        }
        _ => {}
    }
}

fn check_usage(ledger: &Ledger, leases: &Leases) -> Result<(), TestCaseError> {
    let mut sums: BTreeMap<AccountId, (u64, u64, Option<u64>)> = BTreeMap::new();
    for &(who, bytes, expiry) in leases {
        let s = sums.entry(who).or_insert((0, 0, None));
        s.0 += bytes;
        s.1 += 1;
        s.2 = Some(s.2.map_or(expiry, |e: u64| e.min(expiry)));
    }
    for acct in 0..3 {
        let who = id(acct);
        let (bytes, shares, earliest) = sums.get(&who).copied().unwrap_or((0, 0, None));
        let account = ledger.account(&who);
        let stored = account.map(|a| a.stored()).unwrap_or_default();
        prop_assert_eq!(stored.bytes, bytes, "bytes of account {}", acct);
        prop_assert_eq!(stored.shares, shares, "shares of account {}", acct);
        prop_assert_eq!(account.and_then(|a| a.earliest_expiry()), earliest);
    }
    Ok(())
}

fn run(txns: Vec<(Vec<Op>, bool)>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let database = Database::create(&path).unwrap();
    {
        let tx = database.begin_write().unwrap();
        store::init(&tx).unwrap();
        tx.commit().unwrap();
    }
    let mut committed = Ledger::default();
    let mut committed_leases: Leases = Vec::new();
    let mut clock = 0;
    for (ops, commit) in txns {
        let mut ledger = committed.clone();
        let mut leases = committed_leases.clone();
        let tx = database.begin_write().unwrap();
        for op in &ops {
            clock += 1;
            if let Op::Check { acct, bytes } = *op {
                let in_tx = store::check_write(&tx, &id(acct), bytes, clock).unwrap();
                prop_assert_eq!(in_tx, ledger.check_write(&id(acct), bytes, clock));
                continue;
            }
            let Some(ev) = event(op, &leases, clock) else {
                continue;
            };
            let pure = ledger.apply(&ev);
            let stored = store::apply(&tx, &ev);
            match (&pure, &stored) {
                (Ok(()), Ok(())) => track(&ev, &mut leases),
                (Err(a), Err(StoreError::Event(b))) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "{ev:?}: ledger {pure:?}, store {stored:?}"),
            }
        }
        // The write transaction sees its own changes.
        prop_assert_eq!(&store::load_from(&tx).unwrap(), &ledger);
        if commit {
            tx.commit().unwrap();
            committed = ledger;
            committed_leases = leases;
        } else {
            drop(tx);
        }
        let loaded = store::load(&database).unwrap();
        prop_assert_eq!(&loaded, &committed);
        check_usage(&loaded, &committed_leases)?;
        for who in [id(0), id(1), id(2)] {
            let read = database.begin_read().unwrap();
            let account = store::account(&read, &who).unwrap();
            prop_assert_eq!(account.as_ref(), committed.account(&who));
        }
        prop_assert_eq!(
            store::policy(&database.begin_read().unwrap()).unwrap(),
            committed.policy().clone()
        );
    }
    drop(database);
    let reopened = Database::create(&path).unwrap();
    let loaded = store::load(&reopened).unwrap();
    prop_assert_eq!(&loaded, &committed);
    check_usage(&loaded, &committed_leases)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_ledger_of_committed_events(
        txns in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..12), proptest::bool::weighted(0.7)),
            1..10,
        )
    ) {
        run(txns)?;
    }
}

#[test]
fn revoked_then_collected_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let bob = id(1);
    {
        let database = Database::create(&path).unwrap();
        let tx = database.begin_write().unwrap();
        store::init(&tx).unwrap();
        for (bytes, expiry) in [(100, 50), (200, 60)] {
            assert_eq!(store::check_write(&tx, &bob, bytes, 0).unwrap(), Ok(()));
            store::apply(
                &tx,
                &Event::LeaseAdded {
                    who: bob,
                    bytes,
                    shares: 1,
                    expiry,
                },
            )
            .unwrap();
        }
        store::apply(
            &tx,
            &Event::Revoked {
                who: bob,
                grace_end: 1_000,
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let database = Database::create(&path).unwrap();
    let ledger = store::load(&database).unwrap();
    let refusal = ledger.check_write(&bob, 1, 10).unwrap_err();
    assert!(refusal.to_string().contains("revoked"), "{refusal}");
    assert!(ledger.collectable(999).is_empty());
    assert_eq!(ledger.collectable(1_000), vec![bob]);
    let account = ledger.account(&bob).unwrap();
    assert_eq!(account.stored().bytes, 300);
    assert_eq!(account.earliest_expiry(), Some(50));
    // The collector removes Bob's leases.
    let tx = database.begin_write().unwrap();
    for (expiry, usage) in account.leases() {
        store::apply(
            &tx,
            &Event::LeaseRemoved {
                who: bob,
                bytes: usage.bytes,
                shares: usage.shares,
                expiry,
            },
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let ledger = store::load(&database).unwrap();
    assert!(ledger.collectable(2_000).is_empty());
    assert_eq!(ledger.account(&bob).unwrap().stored().bytes, 0);
}
