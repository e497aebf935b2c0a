//! The ledger: per-account accounting state, changed only by [`Event`]s.
//!
//! An account is a peer's identity, its ed25519 public key ([`AccountId`]). For each account the
//! ledger keeps:
//!
//! - what the peer stores **here**: bytes and shares under lease, bucketed by lease expiry (so
//!   the earliest expiry is known and removals are exact);
//! - what **we** placed on its node (bytes, shares);
//! - the owner's explicit decision ([`Access::Granted`] with a quota, [`Access::Revoked`] with a
//!   grace end, [`Access::Pending`]), or none, in which case the [`Policy`] decides;
//! - what the peer grants us (from its signed record; the reciprocal policy reads it);
//! - its audit [`Reputation`] as a holder of our shares, and when it was last audited.
//!
//! [`Ledger::apply`] is the only mutation and is atomic: an event that does not fit the state (a
//! lease removal with no matching lease, a count that would overflow) returns an [`EventError`]
//! and changes nothing. The redb store (`store` module) applies the same transition to its
//! tables in the caller's write transaction, so a ledger loaded from the database equals the
//! ledger that applied the committed events.
//!
//! Queries: [`Ledger::check_write`] (may this peer write `n` more bytes?), [`Ledger::access`]
//! (effective access after the policy), [`Ledger::collectable`] (revoked accounts whose grace
//! ended and which still hold shares).
//!
//! A lease renewal is [`Event::LeaseRenewed`] (moves the lease to its new expiry bucket); the
//! node calls [`Ledger::check_write`] with `new_bytes = 0` first, so a revoked peer cannot renew.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{Access, Policy, PolicyChange, PolicyError, Quota, human_size},
    reputation::{Outcome, Reputation},
};

/// An account: the peer's ed25519 public key, which is its identity on the grid.
pub type AccountId = [u8; 32];

/// A short, readable form of an account id for messages: the first 8 bytes in hex.
pub fn short_id(id: &AccountId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes and shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of share data.
    pub bytes: u64,
    /// Number of shares.
    pub shares: u64,
}

impl Usage {
    fn checked_add(self, bytes: u64, shares: u64) -> Option<Usage> {
        Some(Usage {
            bytes: self.bytes.checked_add(bytes)?,
            shares: self.shares.checked_add(shares)?,
        })
    }

    fn checked_sub(self, bytes: u64, shares: u64) -> Option<Usage> {
        Some(Usage {
            bytes: self.bytes.checked_sub(bytes)?,
            shares: self.shares.checked_sub(shares)?,
        })
    }

    fn is_zero(self) -> bool {
        self == Usage::default()
    }
}

/// A change to the ledger. The node emits lease events from its share store (in the same redb
/// transaction as the lease itself), placement events from its uploader, access events from the
/// owner (CLI, panel), `TheyGrant` from gossip, and audit events from its auditor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// `who` leased `shares` shares of `bytes` bytes here, expiring at `expiry` (unix seconds).
    LeaseAdded {
        /// The uploader (authenticated peer of the connection).
        who: AccountId,
        /// Share bytes.
        bytes: u64,
        /// Number of shares (at least 1).
        shares: u64,
        /// Lease expiry, unix seconds.
        expiry: u64,
    },
    /// A lease added with exactly these values ended (expired and collected, cancelled, or
    /// collected after a revocation).
    LeaseRemoved {
        /// The lease holder.
        who: AccountId,
        /// Share bytes.
        bytes: u64,
        /// Number of shares.
        shares: u64,
        /// The lease's expiry.
        expiry: u64,
    },
    /// A lease was renewed: it moves from expiry `from` to expiry `to`.
    LeaseRenewed {
        /// The lease holder.
        who: AccountId,
        /// Share bytes.
        bytes: u64,
        /// Number of shares.
        shares: u64,
        /// The old expiry.
        from: u64,
        /// The new expiry.
        to: u64,
    },
    /// We placed `shares` shares of `bytes` bytes on `on`'s node.
    Placed {
        /// The storage server.
        on: AccountId,
        /// Share bytes.
        bytes: u64,
        /// Number of shares.
        shares: u64,
    },
    /// Shares we had placed on `on`'s node are gone (our lease ended, or we removed them).
    Unplaced {
        /// The storage server.
        on: AccountId,
        /// Share bytes.
        bytes: u64,
        /// Number of shares.
        shares: u64,
    },
    /// The owner grants `who` storage up to `quota` (also lifts a revocation).
    Granted {
        /// The friend.
        who: AccountId,
        /// The quota.
        quota: Quota,
    },
    /// The owner revokes `who`: no new writes from now on; its shares are kept until
    /// `grace_end` (unix seconds), then collectable.
    Revoked {
        /// The friend.
        who: AccountId,
        /// End of the grace period, unix seconds.
        grace_end: u64,
    },
    /// `who` awaits the owner's decision (invite-only policy): recorded so the panel lists it.
    Pending {
        /// The member.
        who: AccountId,
    },
    /// The owner's explicit decision for `who` is withdrawn: the policy decides again.
    Cleared {
        /// The member.
        who: AccountId,
    },
    /// What `who` grants us, from its latest signed record (`None`: unknown or withdrawn).
    TheyGrant {
        /// The peer.
        who: AccountId,
        /// Its grant to us.
        grant: Option<Quota>,
    },
    /// We audited `peer` at `at` (unix seconds).
    Audit {
        /// The peer holding our shares.
        peer: AccountId,
        /// When, unix seconds.
        at: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// The owner changed the grant policy.
    Policy(PolicyChange),
}

impl Event {
    /// The account this event changes (`None` for a policy change).
    pub fn account(&self) -> Option<AccountId> {
        match *self {
            Event::LeaseAdded { who, .. }
            | Event::LeaseRemoved { who, .. }
            | Event::LeaseRenewed { who, .. }
            | Event::Granted { who, .. }
            | Event::Revoked { who, .. }
            | Event::Pending { who }
            | Event::Cleared { who }
            | Event::TheyGrant { who, .. } => Some(who),
            Event::Placed { on, .. } | Event::Unplaced { on, .. } => Some(on),
            Event::Audit { peer, .. } => Some(peer),
            Event::Policy(_) => None,
        }
    }

    /// The lease-expiry buckets this event reads and writes (0, 1 or 2, distinct).
    pub(crate) fn buckets(&self) -> Vec<u64> {
        match *self {
            Event::LeaseAdded { expiry, .. } | Event::LeaseRemoved { expiry, .. } => vec![expiry],
            Event::LeaseRenewed { from, to, .. } if from == to => vec![from],
            Event::LeaseRenewed { from, to, .. } => vec![from, to],
            _ => Vec::new(),
        }
    }
}

/// An event that does not fit the ledger's state; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A lease event with zero shares.
    #[error("a lease must cover at least one share")]
    EmptyLease,
    /// No lease (or not enough) with this expiry to remove or renew.
    #[error(
        "account {account}: no lease of {shares} shares ({bytes} bytes) expiring at {expiry} to remove"
    )]
    NoSuchLease {
        /// The account, shortened.
        account: String,
        /// Its expiry.
        expiry: u64,
        /// Bytes asked for.
        bytes: u64,
        /// Shares asked for.
        shares: u64,
    },
    /// Fewer shares or bytes placed on the peer than the event removes.
    #[error("account {account}: fewer shares placed there than {shares} shares ({bytes} bytes)")]
    NotPlaced {
        /// The account, shortened.
        account: String,
        /// Bytes asked for.
        bytes: u64,
        /// Shares asked for.
        shares: u64,
    },
    /// A counter would overflow.
    #[error("account {account}: usage counter overflow")]
    Overflow {
        /// The account, shortened.
        account: String,
    },
    /// The policy change is invalid.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
}

/// The part of an account kept in one row: everything except the lease buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Row {
    pub(crate) stored: Usage,
    pub(crate) placed: Usage,
    pub(crate) access: Option<Access>,
    pub(crate) their_grant: Option<Quota>,
    pub(crate) reputation: Reputation,
    pub(crate) last_audit: Option<u64>,
}

impl Row {
    /// Nothing worth keeping: the account is dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.stored.is_zero()
            && self.placed.is_zero()
            && self.access.is_none()
            && self.their_grant.is_none()
            && self.reputation.is_fresh()
            && self.last_audit.is_none()
    }
}

/// The transition function shared by [`Ledger::apply`] and the store: `row` is the account's
/// current row, `buckets` the current lease buckets named by [`Event::buckets`] (updated in
/// place), and the result the new row. Validates before changing anything.
pub(crate) fn step(
    who: &AccountId,
    row: Row,
    buckets: &mut [(u64, Option<Usage>)],
    event: &Event,
) -> Result<Row, EventError> {
    let account = || short_id(who);
    let overflow = || EventError::Overflow { account: account() };
    let mut next = row;
    match *event {
        Event::LeaseAdded { bytes, shares, .. } => {
            if shares == 0 {
                return Err(EventError::EmptyLease);
            }
            next.stored = row.stored.checked_add(bytes, shares).ok_or_else(overflow)?;
            let b = buckets[0].1.unwrap_or_default();
            buckets[0].1 = Some(b.checked_add(bytes, shares).ok_or_else(overflow)?);
        }
        Event::LeaseRemoved {
            bytes,
            shares,
            expiry,
            ..
        } => {
            if shares == 0 {
                return Err(EventError::EmptyLease);
            }
            let no_lease = || EventError::NoSuchLease {
                account: account(),
                expiry,
                bytes,
                shares,
            };
            let left = remove_from(buckets[0].1, bytes, shares).ok_or_else(no_lease)?;
            next.stored = row.stored.checked_sub(bytes, shares).ok_or_else(no_lease)?;
            buckets[0].1 = left;
        }
        Event::LeaseRenewed {
            bytes,
            shares,
            from,
            to,
            ..
        } => {
            if shares == 0 {
                return Err(EventError::EmptyLease);
            }
            let no_lease = || EventError::NoSuchLease {
                account: account(),
                expiry: from,
                bytes,
                shares,
            };
            if from != to {
                let left = remove_from(buckets[0].1, bytes, shares).ok_or_else(no_lease)?;
                let moved = buckets[1]
                    .1
                    .unwrap_or_default()
                    .checked_add(bytes, shares)
                    .ok_or_else(overflow)?;
                buckets[0].1 = left;
                buckets[1].1 = Some(moved);
            } else {
                // Renewing to the same expiry: only check the lease exists.
                remove_from(buckets[0].1, bytes, shares).ok_or_else(no_lease)?;
            }
        }
        Event::Placed { bytes, shares, .. } => {
            next.placed = row.placed.checked_add(bytes, shares).ok_or_else(overflow)?;
        }
        Event::Unplaced { bytes, shares, .. } => {
            next.placed =
                row.placed
                    .checked_sub(bytes, shares)
                    .ok_or_else(|| EventError::NotPlaced {
                        account: account(),
                        bytes,
                        shares,
                    })?;
        }
        Event::Granted { quota, .. } => next.access = Some(Access::Granted(quota)),
        Event::Revoked { grace_end, .. } => next.access = Some(Access::Revoked { grace_end }),
        Event::Pending { .. } => next.access = Some(Access::Pending),
        Event::Cleared { .. } => next.access = None,
        Event::TheyGrant { grant, .. } => next.their_grant = grant,
        Event::Audit { at, outcome, .. } => {
            next.reputation.update(outcome);
            next.last_audit = Some(row.last_audit.map_or(at, |t| t.max(at)));
        }
        Event::Policy(_) => {}
    }
    Ok(next)
}

/// What is left of a bucket after removing a lease from it: `None` when the lease is not there
/// (too few shares or bytes, or no shares left but bytes left), `Some(None)` when
/// the bucket empties (its last share and last byte removed), `Some(Some(left))` otherwise.
fn remove_from(bucket: Option<Usage>, bytes: u64, shares: u64) -> Option<Option<Usage>> {
    let left = bucket?.checked_sub(bytes, shares)?;
    match (left.shares, left.bytes) {
        (0, 0) => Some(None),
        (0, _) => None,
        _ => Some(Some(left)),
    }
}

/// Why a write (allocate or lease renewal) is refused. Shown to the uploader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No grant: the owner has not granted this peer storage and no policy does.
    #[error("no storage grant: this node's owner has not granted you storage")]
    NoGrant,
    /// Invite-only node: the owner has not decided yet.
    #[error(
        "storage grant pending: this node is invite-only and its owner has not granted you storage yet"
    )]
    Pending,
    /// The owner revoked this peer's access.
    #[error(
        "storage access revoked by this node's owner: no new writes or lease renewals; shares already stored are kept until {} and then deleted",
        format_unix(*grace_end)
    )]
    Revoked {
        /// End of the grace period, unix seconds.
        grace_end: u64,
    },
    /// The write would exceed the peer's quota.
    #[error(
        "over quota: {} of your {} quota used here, {} more requested",
        human_size(*used),
        human_size(*quota),
        human_size(*requested)
    )]
    OverQuota {
        /// The quota, bytes.
        quota: u64,
        /// Bytes already leased.
        used: u64,
        /// Bytes the write adds.
        requested: u64,
    },
}

/// `2026-12-01 13:05 UTC` for unix seconds (proleptic Gregorian calendar).
pub fn format_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

/// The decision shared by [`Ledger::check_write`] and the store's transactional check.
pub(crate) fn check(policy: &Policy, row: Option<&Row>, new_bytes: u64) -> Result<(), Refusal> {
    let access =
        policy.effective_grant(row.and_then(|r| r.access), row.and_then(|r| r.their_grant));
    let used = row.map_or(0, |r| r.stored.bytes);
    match access {
        Access::NoGrant => Err(Refusal::NoGrant),
        Access::Pending => Err(Refusal::Pending),
        Access::Revoked { grace_end } => Err(Refusal::Revoked { grace_end }),
        Access::Granted(quota) => {
            // A renewal adds nothing: a quota lowered below the usage stops growth, not the
            // renewal of what is already stored.
            if new_bytes == 0 || quota.allows(used, new_bytes) {
                Ok(())
            } else {
                Err(Refusal::OverQuota {
                    quota: match quota {
                        Quota::Bytes(q) => q,
                        Quota::Unlimited => u64::MAX,
                    },
                    used,
                    requested: new_bytes,
                })
            }
        }
    }
}

/// One account's state. See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Account {
    pub(crate) row: Row,
    /// Lease buckets: expiry -> usage. Invariant: they sum to `row.stored`, none is empty.
    pub(crate) leases: BTreeMap<u64, Usage>,
}

impl Account {
    /// What the peer stores here (sum of its leases).
    pub fn stored(&self) -> Usage {
        self.row.stored
    }

    /// What we placed on the peer's node.
    pub fn placed(&self) -> Usage {
        self.row.placed
    }

    /// The owner's explicit decision, if any (the policy decides otherwise; see
    /// [`Ledger::access`]).
    pub fn explicit_access(&self) -> Option<Access> {
        self.row.access
    }

    /// What the peer grants us, from its record.
    pub fn their_grant(&self) -> Option<Quota> {
        self.row.their_grant
    }

    /// Its audit reputation as a holder of our shares.
    pub fn reputation(&self) -> &Reputation {
        &self.row.reputation
    }

    /// When it was last audited, unix seconds.
    pub fn last_audit(&self) -> Option<u64> {
        self.row.last_audit
    }

    /// The earliest expiry of its leases here.
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.leases.keys().next().copied()
    }

    /// Its leases here grouped by expiry, earliest first.
    pub fn leases(&self) -> impl Iterator<Item = (u64, Usage)> + '_ {
        self.leases.iter().map(|(e, u)| (*e, *u))
    }
}

/// All accounts and the grant policy. See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    policy: Policy,
    accounts: BTreeMap<AccountId, Account>,
}

impl Ledger {
    /// An empty ledger with this policy.
    pub fn new(policy: Policy) -> Self {
        Ledger {
            policy,
            accounts: BTreeMap::new(),
        }
    }

    #[cfg(feature = "store")]
    pub(crate) fn from_parts(policy: Policy, accounts: BTreeMap<AccountId, Account>) -> Self {
        Ledger { policy, accounts }
    }

    /// The grant policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// One account (`None`: nothing known about it).
    pub fn account(&self, who: &AccountId) -> Option<&Account> {
        self.accounts.get(who)
    }

    /// Every known account, in id order.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// Applies one event atomically: on error nothing changed.
    pub fn apply(&mut self, event: &Event) -> Result<(), EventError> {
        let Some(who) = event.account() else {
            if let Event::Policy(change) = event {
                self.policy.apply(change)?;
            }
            return Ok(());
        };
        let (row, leases) = match self.accounts.get(&who) {
            Some(a) => (a.row, Some(&a.leases)),
            None => (Row::default(), None),
        };
        let mut buckets: Vec<(u64, Option<Usage>)> = event
            .buckets()
            .into_iter()
            .map(|e| (e, leases.and_then(|l| l.get(&e).copied())))
            .collect();
        let next = step(&who, row, &mut buckets, event)?;
        let account = self.accounts.entry(who).or_default();
        account.row = next;
        for (expiry, usage) in buckets {
            match usage {
                Some(u) => account.leases.insert(expiry, u),
                None => account.leases.remove(&expiry),
            };
        }
        if next.is_empty() {
            self.accounts.remove(&who);
        }
        Ok(())
    }

    /// The access `who` effectively has: the owner's decision, else the policy.
    pub fn access(&self, who: &AccountId) -> Access {
        let row = self.accounts.get(who).map(|a| &a.row);
        self.policy
            .effective_grant(row.and_then(|r| r.access), row.and_then(|r| r.their_grant))
    }

    /// May `who` write `new_bytes` more bytes here? The storage server asks on every allocate
    /// (`new_bytes` = the share's size) and every lease renewal (`new_bytes` = 0, so only the
    /// access state counts), keyed by the authenticated peer id of the connection.
    ///
    /// The quota counts every leased byte, expired or not, until the collector removes it. A
    /// renewal (`new_bytes = 0`) of a granted account always passes, even when the owner lowered
    /// the quota below its usage: a quota limits growth; to take storage back, revoke.
    /// `now` (unix seconds) is taken so time-dependent rules stay pure; the current rules
    /// (revocation refuses at once, whatever the grace end) do not depend on it.
    pub fn check_write(&self, who: &AccountId, new_bytes: u64, now: u64) -> Result<(), Refusal> {
        let _ = now;
        check(
            &self.policy,
            self.accounts.get(who).map(|a| &a.row),
            new_bytes,
        )
    }

    /// Revoked accounts whose grace period has ended by `now` and which still hold leases here:
    /// their shares may be garbage-collected (each removal is a [`Event::LeaseRemoved`]).
    pub fn collectable(&self, now: u64) -> Vec<AccountId> {
        self.accounts
            .iter()
            .filter(|(_, a)| {
                matches!(a.row.access, Some(Access::Revoked { grace_end }) if grace_end <= now)
                    && a.row.stored.shares > 0
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Accounts whose audit score is below the suspect threshold.
    pub fn suspects(&self) -> Vec<AccountId> {
        self.accounts
            .iter()
            .filter(|(_, a)| a.row.reputation.suspect())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Totals over all accounts: (stored here, placed elsewhere).
    pub fn totals(&self) -> (Usage, Usage) {
        let mut here = Usage::default();
        let mut there = Usage::default();
        for a in self.accounts.values() {
            here.bytes = here.bytes.saturating_add(a.row.stored.bytes);
            here.shares = here.shares.saturating_add(a.row.stored.shares);
            there.bytes = there.bytes.saturating_add(a.row.placed.bytes);
            there.shares = there.shares.saturating_add(a.row.placed.shares);
        }
        (here, there)
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {} shares", human_size(self.bytes), self.shares)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    const A: AccountId = [1; 32];
    const B: AccountId = [2; 32];

    fn lease(who: AccountId, bytes: u64, expiry: u64) -> Event {
        Event::LeaseAdded {
            who,
            bytes,
            shares: 1,
            expiry,
        }
    }

    #[test]
    fn default_policy_lets_members_write() {
        let l = Ledger::default();
        assert_eq!(l.check_write(&A, 1 << 40, 0), Ok(()));
        assert_eq!(l.access(&A), Access::Granted(Quota::Unlimited));
        assert!(l.account(&A).is_none());
    }

    #[test]
    fn quota_is_enforced() {
        let mut l = Ledger::default();
        l.apply(&Event::Granted {
            who: A,
            quota: Quota::Bytes(100),
        })
        .unwrap();
        l.apply(&lease(A, 60, 10)).unwrap();
        assert_eq!(l.check_write(&A, 40, 0), Ok(()));
        let refusal = l.check_write(&A, 41, 0).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::OverQuota {
                quota: 100,
                used: 60,
                requested: 41
            }
        );
        assert!(refusal.to_string().contains("over quota"), "{refusal}");
        // Renewals (0 new bytes) still pass at the quota, and above a lowered one.
        l.apply(&lease(A, 40, 10)).unwrap();
        assert_eq!(l.check_write(&A, 0, 0), Ok(()));
        l.apply(&Event::Granted {
            who: A,
            quota: Quota::Bytes(50),
        })
        .unwrap();
        assert_eq!(l.check_write(&A, 0, 0), Ok(()));
        assert!(l.check_write(&A, 1, 0).is_err());
        // B is unaffected.
        assert_eq!(l.check_write(&B, 1000, 0), Ok(()));
    }

    #[test]
    fn revocation_stops_writes_then_collects() {
        let mut l = Ledger::default();
        l.apply(&lease(A, 10, 1_000)).unwrap();
        l.apply(&Event::Revoked {
            who: A,
            grace_end: 500,
        })
        .unwrap();
        let refusal = l.check_write(&A, 0, 100).unwrap_err();
        assert_eq!(refusal, Refusal::Revoked { grace_end: 500 });
        let msg = refusal.to_string();
        assert!(msg.contains("revoked"), "{msg}");
        assert!(msg.contains("1970-01-01 00:08 UTC"), "{msg}");
        assert!(l.collectable(499).is_empty());
        assert_eq!(l.collectable(500), vec![A]);
        l.apply(&Event::LeaseRemoved {
            who: A,
            bytes: 10,
            shares: 1,
            expiry: 1_000,
        })
        .unwrap();
        assert!(l.collectable(10_000).is_empty());
        // Granting again lifts the revocation.
        l.apply(&Event::Granted {
            who: A,
            quota: Quota::Unlimited,
        })
        .unwrap();
        assert_eq!(l.check_write(&A, 5, 0), Ok(()));
    }

    #[test]
    fn invite_only_and_no_grant() {
        let mut l = Ledger::default();
        l.apply(&Event::Policy(PolicyChange::InviteOnly(true)))
            .unwrap();
        assert_eq!(l.check_write(&A, 1, 0), Err(Refusal::Pending));
        l.apply(&Event::Pending { who: A }).unwrap();
        assert_eq!(
            l.account(&A).unwrap().explicit_access(),
            Some(Access::Pending)
        );
        l.apply(&Event::Granted {
            who: A,
            quota: Quota::Bytes(5),
        })
        .unwrap();
        assert_eq!(l.check_write(&A, 5, 0), Ok(()));
        l.apply(&Event::Cleared { who: A }).unwrap();
        assert!(
            l.account(&A).is_none(),
            "an account with nothing left is dropped"
        );
        l.apply(&Event::Policy(PolicyChange::InviteOnly(false)))
            .unwrap();
        l.apply(&Event::Policy(PolicyChange::DefaultGrant(None)))
            .unwrap();
        let r = l.check_write(&A, 1, 0).unwrap_err();
        assert_eq!(r, Refusal::NoGrant);
        assert!(r.to_string().contains("no storage grant"));
    }

    #[test]
    fn reciprocal_reads_their_grant() {
        let mut l = Ledger::default();
        l.apply(&Event::Policy(PolicyChange::DefaultGrant(Some(
            Quota::Bytes(10),
        ))))
        .unwrap();
        l.apply(&Event::Policy(PolicyChange::Reciprocal(Some(1.0))))
            .unwrap();
        assert_eq!(l.access(&A), Access::Granted(Quota::Bytes(10)));
        l.apply(&Event::TheyGrant {
            who: A,
            grant: Some(Quota::Bytes(1_000)),
        })
        .unwrap();
        assert_eq!(l.access(&A), Access::Granted(Quota::Bytes(1_000)));
        assert_eq!(l.check_write(&A, 1_000, 0), Ok(()));
        assert!(l.check_write(&A, 1_001, 0).is_err());
        assert!(
            l.apply(&Event::Policy(PolicyChange::Reciprocal(Some(-1.0))))
                .is_err()
        );
    }

    #[test]
    fn leases_track_earliest_expiry() {
        let mut l = Ledger::default();
        l.apply(&lease(A, 10, 300)).unwrap();
        l.apply(&lease(A, 20, 100)).unwrap();
        l.apply(&lease(A, 30, 100)).unwrap();
        let a = l.account(&A).unwrap();
        assert_eq!(a.earliest_expiry(), Some(100));
        assert_eq!(
            a.stored(),
            Usage {
                bytes: 60,
                shares: 3
            }
        );
        l.apply(&Event::LeaseRenewed {
            who: A,
            bytes: 20,
            shares: 1,
            from: 100,
            to: 400,
        })
        .unwrap();
        assert_eq!(l.account(&A).unwrap().earliest_expiry(), Some(100));
        l.apply(&Event::LeaseRemoved {
            who: A,
            bytes: 30,
            shares: 1,
            expiry: 100,
        })
        .unwrap();
        let a = l.account(&A).unwrap();
        assert_eq!(a.earliest_expiry(), Some(300));
        assert_eq!(
            a.stored(),
            Usage {
                bytes: 30,
                shares: 2
            }
        );
        assert_eq!(a.leases().collect::<Vec<_>>().len(), 2);
    }

    #[test]
    fn bad_events_change_nothing() {
        let mut l = Ledger::default();
        l.apply(&lease(A, 10, 100)).unwrap();
        l.apply(&Event::Placed {
            on: B,
            bytes: 5,
            shares: 1,
        })
        .unwrap();
        let before = l.clone();
        for bad in [
            Event::LeaseRemoved {
                who: A,
                bytes: 10,
                shares: 1,
                expiry: 101,
            },
            Event::LeaseRemoved {
                who: A,
                bytes: 11,
                shares: 1,
                expiry: 100,
            },
            Event::LeaseRemoved {
                who: A,
                bytes: 9,
                shares: 1,
                expiry: 100,
            },
            Event::LeaseRemoved {
                who: B,
                bytes: 0,
                shares: 1,
                expiry: 100,
            },
            Event::LeaseRenewed {
                who: A,
                bytes: 10,
                shares: 2,
                from: 100,
                to: 200,
            },
            lease(A, u64::MAX, 100),
            Event::LeaseAdded {
                who: A,
                bytes: 1,
                shares: 0,
                expiry: 1,
            },
            Event::Unplaced {
                on: B,
                bytes: 6,
                shares: 1,
            },
            Event::Policy(PolicyChange::Reciprocal(Some(f64::INFINITY))),
        ] {
            assert!(l.apply(&bad).is_err(), "{bad:?}");
            assert_eq!(l, before, "{bad:?}");
        }
    }

    #[test]
    fn audits_update_reputation() {
        let mut l = Ledger::default();
        for at in 0..3 {
            l.apply(&Event::Audit {
                peer: B,
                at,
                outcome: Outcome::Fail,
            })
            .unwrap();
        }
        l.apply(&Event::Audit {
            peer: A,
            at: 5,
            outcome: Outcome::Offline,
        })
        .unwrap();
        assert_eq!(l.suspects(), vec![B]);
        assert_eq!(l.account(&B).unwrap().last_audit(), Some(2));
        assert_eq!(l.account(&A).unwrap().reputation().offline, 1);
    }

    #[test]
    fn dates() {
        assert_eq!(format_unix(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00 UTC");
        assert!(format_unix(u64::MAX).ends_with("UTC"));
    }

    /// Random events over two accounts, lease removals mostly of existing leases.
    fn events() -> impl Strategy<Value = Vec<(u8, u8, u64, u64)>> {
        proptest::collection::vec((0u8..8, 0u8..2, 0u64..50, 0u64..4), 0..60)
    }

    proptest! {
        #[test]
        fn usage_equals_sum_of_leases(ops in events()) {
            let mut l = Ledger::default();
            let mut live: Vec<(AccountId, u64, u64)> = Vec::new();
            for (kind, acct, bytes, expiry) in ops {
                let who = if acct == 0 { A } else { B };
                let ev = match kind {
                    0..=2 => lease(who, bytes, expiry),
                    3 | 4 if !live.is_empty() => {
                        let (w, b, e) = live[(bytes as usize) % live.len()];
                        if kind == 3 {
                            Event::LeaseRemoved { who: w, bytes: b, shares: 1, expiry: e }
                        } else {
                            Event::LeaseRenewed { who: w, bytes: b, shares: 1, from: e, to: expiry }
                        }
                    }
                    // A lease that was never added: always refused.
                    5 => Event::LeaseRemoved { who, bytes, shares: 1, expiry: 1_000 + expiry },
                    6 => Event::Revoked { who, grace_end: expiry },
                    _ => Event::Granted { who, quota: Quota::Bytes(bytes) },
                };
                let before = l.clone();
                match l.apply(&ev) {
                    Ok(()) => match ev {
                        Event::LeaseAdded { who, bytes, expiry, .. } => live.push((who, bytes, expiry)),
                        Event::LeaseRemoved { who, bytes, expiry, .. } => {
                            let i = live.iter().position(|x| *x == (who, bytes, expiry)).unwrap();
                            live.swap_remove(i);
                        }
                        Event::LeaseRenewed { who, bytes, from, to, .. } => {
                            let i = live.iter().position(|x| *x == (who, bytes, from)).unwrap();
                            live[i].2 = to;
                        }
                        _ => {}
                    },
                    Err(_) => prop_assert_eq!(&l, &before),
                }
                for id in [A, B] {
                    let mine: Vec<_> = live.iter().filter(|x| x.0 == id).collect();
                    let stored = l.account(&id).map(|a| a.stored()).unwrap_or_default();
                    prop_assert_eq!(stored.bytes, mine.iter().map(|x| x.1).sum::<u64>());
                    prop_assert_eq!(stored.shares, mine.len() as u64);
                    let earliest = l.account(&id).and_then(|a| a.earliest_expiry());
                    prop_assert_eq!(earliest, mine.iter().map(|x| x.2).min());
                }
            }
        }
    }
}
