//! The ledger in redb: the crate's only IO.
//!
//! Every function takes the caller's transaction, so the node's share store applies the lease
//! event for a share **in the same write transaction** as the share row and the lease it inserts
//! or removes: the account's usage then always equals the sum of its leased share sizes, also
//! after a crash (a transaction commits whole or not at all). The usual sequence on an allocate:
//!
//! ```text
//! let tx = db.begin_write()?;
//! store::check_write(&tx, &who, size, now)??;   // refused: drop tx, answer the Refusal
//! /* … insert the share row and the lease in the node's tables … */
//! store::apply(&tx, &Event::LeaseAdded { who, bytes: size, shares: 1, expiry })?;
//! tx.commit()?;
//! ledger.apply(&event)?;                        // the in-memory mirror, after the commit
//! ```
//!
//! [`apply`] runs the same transition as [`Ledger::apply`]; on error (an event that does not fit
//! the state) it writes nothing, and the caller should abort the transaction (drop it) since its
//! own rows for the event no longer match. [`load`] rebuilds the [`Ledger`] from the tables and
//! checks that each account's usage equals the sum of its lease buckets.
//!
//! Tables (versioned names, like the node's `shares-0` and `leases-0`):
//!
//! | table | key | value (CBOR, with a version field `v`) |
//! |---|---|---|
//! | `accounts-0` | account id (32 bytes) | usage here and there, explicit access, their grant, reputation, last audit |
//! | `account-leases-0` | account id ‖ expiry (u64 BE) | bytes and shares of the leases with that expiry |
//! | `accounting-policy-0` | `"policy"` | the grant [`Policy`] |
//! | `audits-0` | account id ‖ sequence (u64 BE) | time and outcome of each audit, the last [`AUDIT_HISTORY`] per peer |
//!
//! Every value read back is decoded with a size bound and a nesting bound and then validated;
//! a damaged row is a [`StoreError::Corrupt`] naming the table, never a panic.

use std::collections::BTreeMap;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    ledger::{self, Account, AccountId, Event, EventError, Ledger, Refusal, Row, Usage, step},
    policy::{Access, Policy, Quota},
    reputation::{Outcome, Reputation},
};

const ACCOUNTS_NAME: &str = "accounts-0";
const LEASES_NAME: &str = "account-leases-0";
const POLICY_NAME: &str = "accounting-policy-0";
const AUDITS_NAME: &str = "audits-0";
const ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new(ACCOUNTS_NAME);
const LEASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new(LEASES_NAME);
const POLICY: TableDefinition<&str, &[u8]> = TableDefinition::new(POLICY_NAME);
const AUDITS: TableDefinition<&[u8], &[u8]> = TableDefinition::new(AUDITS_NAME);

/// The names of the store's tables (for diagnostics and migrations).
pub const TABLES: [&str; 4] = [ACCOUNTS_NAME, LEASES_NAME, POLICY_NAME, AUDITS_NAME];

const POLICY_KEY: &str = "policy";
/// Version of every record this module writes.
const RECORD_VERSION: u8 = 0;
/// Largest row value accepted on read.
const MAX_ROW: usize = 4096;
/// Deepest CBOR nesting accepted on read.
const MAX_DEPTH: usize = 8;

/// Audits kept per peer in `audits-0` (older ones are deleted as new ones arrive).
pub const AUDIT_HISTORY: u64 = 1024;

/// Errors of the accounting store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A row could not be decoded or breaks an invariant. The database is damaged (or was
    /// written by a newer kith); the message names the table.
    #[error("accounting table {table} is corrupt: {why}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The event does not fit the stored state; nothing was written.
    #[error("accounting event refused: {0}")]
    Event(#[from] EventError),
    /// redb failed.
    #[error("accounting store: {0}")]
    Db(#[from] redb::Error),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

fn corrupt(table: &'static str, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        why: why.into(),
    }
}

/// A read or a write transaction: the read functions take either (`(&tx).into()` is implicit
/// through `impl Into<Txn>`).
#[derive(Clone, Copy)]
pub enum Txn<'a> {
    /// A read transaction.
    Read(&'a ReadTransaction),
    /// A write transaction (reads see its uncommitted changes).
    Write(&'a WriteTransaction),
}

impl<'a> From<&'a ReadTransaction> for Txn<'a> {
    fn from(tx: &'a ReadTransaction) -> Self {
        Txn::Read(tx)
    }
}

impl<'a> From<&'a WriteTransaction> for Txn<'a> {
    fn from(tx: &'a WriteTransaction) -> Self {
        Txn::Write(tx)
    }
}

// ---- records ----------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct AccountRecord {
    v: u8,
    stored: Usage,
    placed: Usage,
    access: Option<Access>,
    their_grant: Option<Quota>,
    reputation: Reputation,
    last_audit: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct BucketRecord {
    v: u8,
    bytes: u64,
    shares: u64,
}

#[derive(Serialize, Deserialize)]
struct PolicyRecord {
    v: u8,
    policy: Policy,
}

#[derive(Serialize, Deserialize)]
struct AuditRecord {
    v: u8,
    at: u64,
    outcome: Outcome,
}

/// One audit from the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number of the audit for this peer (0 = its first).
    pub seq: u64,
    /// When, unix seconds.
    pub at: u64,
    /// What happened.
    pub outcome: Outcome,
}

trait Versioned {
    fn version(&self) -> u8;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u8 { self.v } })*};
}
versioned!(AccountRecord, BucketRecord, PolicyRecord, AuditRecord);

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

fn decode<T: DeserializeOwned + Versioned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    if bytes.len() > MAX_ROW {
        return Err(corrupt(
            table,
            format!("row of {} bytes (limit {MAX_ROW})", bytes.len()),
        ));
    }
    let rec: T = ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| corrupt(table, format!("undecodable row: {e}")))?;
    if rec.version() != RECORD_VERSION {
        return Err(corrupt(
            table,
            format!(
                "record version {} (this kith reads {RECORD_VERSION})",
                rec.version()
            ),
        ));
    }
    Ok(rec)
}

fn row_to_record(row: &Row) -> AccountRecord {
    AccountRecord {
        v: RECORD_VERSION,
        stored: row.stored,
        placed: row.placed,
        access: row.access,
        their_grant: row.their_grant,
        reputation: row.reputation,
        last_audit: row.last_audit,
    }
}

fn decode_row(bytes: &[u8]) -> Result<Row, StoreError> {
    let table = ACCOUNTS_NAME;
    let r: AccountRecord = decode(table, bytes)?;
    if !r.reputation.is_valid() {
        return Err(corrupt(table, "reputation is not finite and non-negative"));
    }
    if matches!(r.access, Some(Access::NoGrant)) {
        return Err(corrupt(table, "NoGrant is not an explicit decision"));
    }
    let row = Row {
        stored: r.stored,
        placed: r.placed,
        access: r.access,
        their_grant: r.their_grant,
        reputation: r.reputation,
        last_audit: r.last_audit,
    };
    if row.is_empty() {
        return Err(corrupt(table, "empty account row"));
    }
    Ok(row)
}

fn decode_bucket(bytes: &[u8]) -> Result<Usage, StoreError> {
    let r: BucketRecord = decode(LEASES_NAME, bytes)?;
    if r.shares == 0 {
        return Err(corrupt(LEASES_NAME, "lease bucket without shares"));
    }
    Ok(Usage {
        bytes: r.bytes,
        shares: r.shares,
    })
}

fn decode_policy(bytes: &[u8]) -> Result<Policy, StoreError> {
    let r: PolicyRecord = decode(POLICY_NAME, bytes)?;
    r.policy
        .validate()
        .map_err(|e| corrupt(POLICY_NAME, e.to_string()))?;
    Ok(r.policy)
}

fn account_key(table: &'static str, key: &[u8]) -> Result<AccountId, StoreError> {
    key.try_into()
        .map_err(|_| corrupt(table, format!("key of {} bytes, expected 32", key.len())))
}

fn pair_key(who: &AccountId, n: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(who);
    k[32..].copy_from_slice(&n.to_be_bytes());
    k
}

fn split_pair_key(table: &'static str, key: &[u8]) -> Result<(AccountId, u64), StoreError> {
    if key.len() != 40 {
        return Err(corrupt(
            table,
            format!("key of {} bytes, expected 40", key.len()),
        ));
    }
    let (who, n) = key.split_at(32);
    let who = account_key(table, who)?;
    let n = u64::from_be_bytes(
        n.try_into()
            .map_err(|_| corrupt(table, "key suffix is not 8 bytes"))?,
    );
    Ok((who, n))
}

// ---- generic reads over either transaction -----------------------------------------------------

/// Runs `f` on a table opened from either transaction kind; a table that does not exist yet
/// (read transaction before [`init`]) reads as empty (`f` is not called, `default` is returned).
macro_rules! with_table {
    ($txn:expr, $def:expr, $default:expr, |$t:ident| $body:expr) => {
        match $txn {
            Txn::Read(tx) => match tx.open_table($def) {
                Ok($t) => $body,
                Err(TableError::TableDoesNotExist(_)) => Ok($default),
                Err(e) => Err(db(e)),
            },
            Txn::Write(tx) => {
                let $t = tx.open_table($def).map_err(db)?;
                $body
            }
        }
    };
}

fn read_row<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    who: &AccountId,
) -> Result<Option<Row>, StoreError> {
    match t.get(who.as_slice()).map_err(db)? {
        Some(v) => decode_row(v.value()).map(Some),
        None => Ok(None),
    }
}

fn read_bucket<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    who: &AccountId,
    expiry: u64,
) -> Result<Option<Usage>, StoreError> {
    match t.get(pair_key(who, expiry).as_slice()).map_err(db)? {
        Some(v) => decode_bucket(v.value()).map(Some),
        None => Ok(None),
    }
}

fn read_buckets<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    who: &AccountId,
) -> Result<BTreeMap<u64, Usage>, StoreError> {
    let lo = pair_key(who, 0);
    let hi = pair_key(who, u64::MAX);
    let mut out = BTreeMap::new();
    for item in t.range(lo.as_slice()..=hi.as_slice()).map_err(db)? {
        let (k, v) = item.map_err(db)?;
        let (_, expiry) = split_pair_key(LEASES_NAME, k.value())?;
        out.insert(expiry, decode_bucket(v.value())?);
    }
    Ok(out)
}

fn read_policy<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<Policy, StoreError> {
    match t.get(POLICY_KEY).map_err(db)? {
        Some(v) => decode_policy(v.value()),
        None => Ok(Policy::default()),
    }
}

// ---- public API --------------------------------------------------------------------------------

/// Creates the tables (idempotent). Call once when the node opens its database, so read
/// transactions find them.
pub fn init(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(ACCOUNTS).map_err(db)?;
    tx.open_table(LEASES).map_err(db)?;
    tx.open_table(POLICY).map_err(db)?;
    tx.open_table(AUDITS).map_err(db)?;
    Ok(())
}

/// Applies one event in the caller's write transaction: the same transition as
/// [`Ledger::apply`]. On error nothing was written (see the module docs).
pub fn apply(tx: &WriteTransaction, event: &Event) -> Result<(), StoreError> {
    let Some(who) = event.account() else {
        if let Event::Policy(change) = event {
            let mut t = tx.open_table(POLICY).map_err(db)?;
            let mut policy = read_policy(&t)?;
            policy.apply(change).map_err(EventError::from)?;
            let rec = encode(&PolicyRecord {
                v: RECORD_VERSION,
                policy,
            });
            t.insert(POLICY_KEY, rec.as_slice()).map_err(db)?;
        }
        return Ok(());
    };
    let mut accounts = tx.open_table(ACCOUNTS).map_err(db)?;
    let mut leases = tx.open_table(LEASES).map_err(db)?;
    let row = read_row(&accounts, &who)?.unwrap_or_default();
    let mut buckets = Vec::new();
    for expiry in event.buckets() {
        buckets.push((expiry, read_bucket(&leases, &who, expiry)?));
    }
    let next = step(&who, row, &mut buckets, event)?;
    // Validated: write.
    for (expiry, usage) in buckets {
        let key = pair_key(&who, expiry);
        match usage {
            Some(u) => {
                let rec = encode(&BucketRecord {
                    v: RECORD_VERSION,
                    bytes: u.bytes,
                    shares: u.shares,
                });
                leases.insert(key.as_slice(), rec.as_slice()).map_err(db)?;
            }
            None => {
                leases.remove(key.as_slice()).map_err(db)?;
            }
        }
    }
    if next.is_empty() {
        accounts.remove(who.as_slice()).map_err(db)?;
    } else {
        let rec = encode(&row_to_record(&next));
        accounts
            .insert(who.as_slice(), rec.as_slice())
            .map_err(db)?;
    }
    if let Event::Audit { at, outcome, .. } = *event {
        let seq = row.reputation.audits();
        let mut audits = tx.open_table(AUDITS).map_err(db)?;
        let rec = encode(&AuditRecord {
            v: RECORD_VERSION,
            at,
            outcome,
        });
        audits
            .insert(pair_key(&who, seq).as_slice(), rec.as_slice())
            .map_err(db)?;
        if let Some(old) = seq.checked_sub(AUDIT_HISTORY) {
            audits.remove(pair_key(&who, old).as_slice()).map_err(db)?;
        }
    }
    Ok(())
}

/// Loads the whole ledger from a fresh read transaction.
pub fn load(database: &Database) -> Result<Ledger, StoreError> {
    let tx = database.begin_read().map_err(db)?;
    load_from(&tx)
}

/// Loads the whole ledger as seen by `tx`, checking that every account's usage equals the sum of
/// its lease buckets and that no bucket lacks its account.
pub fn load_from<'a>(tx: impl Into<Txn<'a>>) -> Result<Ledger, StoreError> {
    let tx = tx.into();
    let policy = with_table!(tx, POLICY, Policy::default(), |t| read_policy(&t))?;
    let mut accounts: BTreeMap<AccountId, Account> = BTreeMap::new();
    with_table!(tx, ACCOUNTS, (), |t| {
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let who = account_key(ACCOUNTS_NAME, k.value())?;
            let row = decode_row(v.value())?;
            accounts.insert(
                who,
                Account {
                    row,
                    leases: BTreeMap::new(),
                },
            );
        }
        Ok::<(), StoreError>(())
    })?;
    with_table!(tx, LEASES, (), |t| {
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let (who, expiry) = split_pair_key(LEASES_NAME, k.value())?;
            let usage = decode_bucket(v.value())?;
            let account = accounts.get_mut(&who).ok_or_else(|| {
                corrupt(
                    LEASES_NAME,
                    format!("leases of unknown account {}", ledger::short_id(&who)),
                )
            })?;
            account.leases.insert(expiry, usage);
        }
        Ok::<(), StoreError>(())
    })?;
    for (who, account) in &accounts {
        let mut sum = Usage::default();
        for u in account.leases.values() {
            sum.bytes = sum.bytes.checked_add(u.bytes).ok_or_else(|| {
                corrupt(LEASES_NAME, format!("{}: overflow", ledger::short_id(who)))
            })?;
            sum.shares = sum.shares.checked_add(u.shares).ok_or_else(|| {
                corrupt(LEASES_NAME, format!("{}: overflow", ledger::short_id(who)))
            })?;
        }
        if sum != account.row.stored {
            return Err(corrupt(
                ACCOUNTS_NAME,
                format!(
                    "account {} records {} bytes in {} shares but its leases sum to {} bytes in {} shares",
                    ledger::short_id(who),
                    account.row.stored.bytes,
                    account.row.stored.shares,
                    sum.bytes,
                    sum.shares
                ),
            ));
        }
    }
    Ok(Ledger::from_parts(policy, accounts))
}

/// One account as seen by `tx` (with its lease buckets).
pub fn account<'a>(tx: impl Into<Txn<'a>>, who: &AccountId) -> Result<Option<Account>, StoreError> {
    let tx = tx.into();
    let Some(row) = with_table!(tx, ACCOUNTS, None, |t| read_row(&t, who))? else {
        return Ok(None);
    };
    let leases = with_table!(tx, LEASES, BTreeMap::new(), |t| read_buckets(&t, who))?;
    Ok(Some(Account { row, leases }))
}

/// The grant policy as seen by `tx` (the default policy until one is set).
pub fn policy<'a>(tx: impl Into<Txn<'a>>) -> Result<Policy, StoreError> {
    with_table!(tx.into(), POLICY, Policy::default(), |t| read_policy(&t))
}

/// [`Ledger::check_write`] against the state seen by `tx`: the storage server can check and
/// insert the lease in one write transaction, so two concurrent allocations cannot both pass a
/// quota that fits only one. The outer error is the store's, the inner the refusal.
pub fn check_write<'a>(
    tx: impl Into<Txn<'a>>,
    who: &AccountId,
    new_bytes: u64,
    now: u64,
) -> Result<Result<(), Refusal>, StoreError> {
    let _ = now;
    let tx = tx.into();
    let policy = with_table!(tx, POLICY, Policy::default(), |t| read_policy(&t))?;
    let row = with_table!(tx, ACCOUNTS, None, |t| read_row(&t, who))?;
    Ok(ledger::check(&policy, row.as_ref(), new_bytes))
}

/// The last `limit` audits of `peer` (at most [`AUDIT_HISTORY`] are kept), newest first.
pub fn audit_history<'a>(
    tx: impl Into<Txn<'a>>,
    peer: &AccountId,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let lo = pair_key(peer, 0);
    let hi = pair_key(peer, u64::MAX);
    with_table!(tx.into(), AUDITS, Vec::new(), |t| {
        let mut out = Vec::new();
        for item in t.range(lo.as_slice()..=hi.as_slice()).map_err(db)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(db)?;
            let (_, seq) = split_pair_key(AUDITS_NAME, k.value())?;
            let rec: AuditRecord = decode(AUDITS_NAME, v.value())?;
            out.push(AuditEntry {
                seq,
                at: rec.at,
                outcome: rec.outcome,
            });
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use redb::Database;

    use super::*;
    use crate::policy::PolicyChange;

    const A: AccountId = [7; 32];

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("t.redb")).unwrap();
        let tx = database.begin_write().unwrap();
        init(&tx).unwrap();
        tx.commit().unwrap();
        (dir, database)
    }

    fn commit(database: &Database, events: &[Event]) {
        let tx = database.begin_write().unwrap();
        for e in events {
            apply(&tx, e).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn empty_database_loads_default() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("t.redb")).unwrap();
        // No init: tables are missing and read as empty.
        assert_eq!(load(&database).unwrap(), Ledger::default());
        let tx = database.begin_read().unwrap();
        assert_eq!(account(&tx, &A).unwrap(), None);
        assert_eq!(check_write(&tx, &A, 1, 0).unwrap(), Ok(()));
        assert!(audit_history(&tx, &A, 10).unwrap().is_empty());
    }

    #[test]
    fn reads_inside_the_write_transaction() {
        let (_dir, database) = db();
        let tx = database.begin_write().unwrap();
        apply(
            &tx,
            &Event::Granted {
                who: A,
                quota: Quota::Bytes(10),
            },
        )
        .unwrap();
        apply(
            &tx,
            &Event::LeaseAdded {
                who: A,
                bytes: 8,
                shares: 1,
                expiry: 5,
            },
        )
        .unwrap();
        let refusal = check_write(&tx, &A, 3, 0).unwrap().unwrap_err();
        assert!(refusal.to_string().contains("over quota"));
        let a = account(&tx, &A).unwrap().unwrap();
        assert_eq!(a.earliest_expiry(), Some(5));
        // Uncommitted: gone after the drop.
        drop(tx);
        assert_eq!(load(&database).unwrap(), Ledger::default());
    }

    #[test]
    fn audit_history_is_bounded() {
        let (_dir, database) = db();
        let tx = database.begin_write().unwrap();
        let n = AUDIT_HISTORY + 10;
        for at in 0..n {
            let outcome = if at % 3 == 0 {
                Outcome::Offline
            } else {
                Outcome::Pass
            };
            apply(
                &tx,
                &Event::Audit {
                    peer: A,
                    at,
                    outcome,
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let tx = database.begin_read().unwrap();
        let all = audit_history(&tx, &A, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, AUDIT_HISTORY);
        assert_eq!(all[0].seq, n - 1);
        assert_eq!(all[0].at, n - 1);
        assert_eq!(all.last().unwrap().seq, 10);
        assert_eq!(audit_history(&tx, &A, 3).unwrap().len(), 3);
        let l = load(&database).unwrap();
        assert_eq!(l.account(&A).unwrap().reputation().audits(), n);
    }

    #[test]
    fn policy_round_trips() {
        let (_dir, database) = db();
        commit(
            &database,
            &[
                Event::Policy(PolicyChange::DefaultGrant(Some(Quota::Bytes(10 << 30)))),
                Event::Policy(PolicyChange::Reciprocal(Some(0.1))),
                Event::Policy(PolicyChange::InviteOnly(true)),
            ],
        );
        let p = policy(&database.begin_read().unwrap()).unwrap();
        assert_eq!(p.reciprocal, Some(0.1));
        assert!(p.invite_only);
        let tx = database.begin_write().unwrap();
        let err = apply(
            &tx,
            &Event::Policy(PolicyChange::Reciprocal(Some(f64::NAN))),
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::Event(EventError::Policy(_))),
            "{err}"
        );
    }

    fn put_raw(database: &Database, def: TableDefinition<&[u8], &[u8]>, k: &[u8], v: &[u8]) {
        let tx = database.begin_write().unwrap();
        tx.open_table(def).unwrap().insert(k, v).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn corrupt_rows_name_their_table() {
        let good_row = encode(&row_to_record(&Row {
            their_grant: Some(Quota::Unlimited),
            ..Row::default()
        }));
        let mut bad_version = row_to_record(&Row {
            their_grant: Some(Quota::Unlimited),
            ..Row::default()
        });
        bad_version.v = 9;
        let mut bad_rep = row_to_record(&Row {
            their_grant: Some(Quota::Unlimited),
            ..Row::default()
        });
        bad_rep.reputation.alpha = f64::NAN;
        let deep = {
            // 10 000 nested arrays.
            let mut v = vec![0x81u8; 10_000];
            v.push(0);
            v
        };
        type Case = (
            TableDefinition<'static, &'static [u8], &'static [u8]>,
            Vec<u8>,
            Vec<u8>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                ACCOUNTS,
                A.to_vec(),
                b"\xff\x00garbage".to_vec(),
                "accounts-0",
            ),
            (ACCOUNTS, vec![1, 2, 3], good_row.clone(), "accounts-0"),
            (ACCOUNTS, A.to_vec(), encode(&bad_version), "accounts-0"),
            (ACCOUNTS, A.to_vec(), encode(&bad_rep), "accounts-0"),
            (ACCOUNTS, A.to_vec(), deep.clone(), "accounts-0"),
            (ACCOUNTS, A.to_vec(), vec![0u8; MAX_ROW + 1], "accounts-0"),
            (
                LEASES,
                pair_key(&A, 1).to_vec(),
                b"\x00".to_vec(),
                "account-leases-0",
            ),
            (LEASES, vec![9; 39], good_row.clone(), "account-leases-0"),
            (
                LEASES,
                pair_key(&A, 1).to_vec(),
                encode(&BucketRecord {
                    v: 0,
                    bytes: 1,
                    shares: 1,
                }),
                "account-leases-0",
            ),
        ];
        for (def, k, v, name) in cases {
            let (_dir, database) = db();
            put_raw(&database, def, &k, &v);
            let err = load(&database).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(name), "{err} should name {name}");
        }
        // Usage that disagrees with the leases.
        let (_dir, database) = db();
        put_raw(
            &database,
            ACCOUNTS,
            &A,
            &encode(&row_to_record(&Row {
                stored: Usage {
                    bytes: 5,
                    shares: 1,
                },
                ..Row::default()
            })),
        );
        let err = load(&database).unwrap_err();
        assert!(err.to_string().contains("accounts-0"), "{err}");
        assert!(err.to_string().contains("leases sum"), "{err}");
        // A corrupt policy.
        let (_dir, database) = db();
        let tx = database.begin_write().unwrap();
        tx.open_table(POLICY)
            .unwrap()
            .insert(POLICY_KEY, b"\x01\x02".as_slice())
            .unwrap();
        tx.commit().unwrap();
        let err = load(&database).unwrap_err();
        assert!(err.to_string().contains("accounting-policy-0"), "{err}");
        // A corrupt row met by apply is an error too, and nothing is written.
        let (_dir, database) = db();
        put_raw(&database, ACCOUNTS, &A, b"\xff");
        let tx = database.begin_write().unwrap();
        let err = apply(&tx, &Event::Pending { who: A }).unwrap_err();
        assert!(err.to_string().contains("accounts-0"), "{err}");
    }
}

#[cfg(test)]
mod golden {
    //! Records written by version 0 of this module, byte for byte: whatever the encoder becomes,
    //! these must keep decoding to the same values (or go through a tested migration).
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ACCOUNT_V0: &str = "a76176006673746f726564a265627974657319012c667368617265730266706c61636564a265627974657307667368617265730166616363657373a1675265766f6b6564a16967726163655f656e641903e86b74686569725f6772616e74a16542797465731b00000002800000006a72657075746174696f6ea565616c706861f93c006462657461f900006670617373657300656661696c7300676f66666c696e65006a6c6173745f617564697405";
    const POLICY_V0: &str = "a261760066706f6c696379a36d64656661756c745f6772616e7469556e6c696d697465646a7265636970726f63616cf66b696e766974655f6f6e6c79f4";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn v0_records_decode() {
        let row = Row {
            stored: Usage {
                bytes: 300,
                shares: 2,
            },
            placed: Usage {
                bytes: 7,
                shares: 1,
            },
            access: Some(Access::Revoked { grace_end: 1_000 }),
            their_grant: Some(Quota::Bytes(10 << 30)),
            reputation: Reputation::default(),
            last_audit: Some(5),
        };
        assert_eq!(decode_row(&unhex(ACCOUNT_V0)).unwrap(), row);
        assert_eq!(encode(&row_to_record(&row)), unhex(ACCOUNT_V0));
        assert_eq!(decode_policy(&unhex(POLICY_V0)).unwrap(), Policy::default());
    }
}
