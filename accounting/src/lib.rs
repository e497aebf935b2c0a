//! kith-accounting: who stores what on this node, who may, and how well the peers holding our
//! shares keep them.
//!
//! Tahoe-LAFS servers cannot tell who stores what. A kith storage server knows every uploader by
//! the public key its connection authenticated (Noise or QUIC TLS), so it keeps one **account
//! per peer key** ([`AccountId`], the peer's ed25519 public key) and its owner decides who gets
//! how much.
//!
//! # The model
//!
//! - [`ledger`]: the pure state machine. Per account: what the peer stores here (bytes, shares,
//!   leases by expiry), what we placed on its node, the owner's explicit decision (granted with a
//!   quota or unlimited / revoked with a grace end / pending), what the peer grants us, and its
//!   audit reputation. [`Event`]s are the only way in; [`Ledger::check_write`] and
//!   [`Ledger::collectable`] are the questions the storage server asks.
//! - [`policy`]: what an account gets when the owner has not decided for it: a default grant,
//!   reciprocal grants (`r ×` what the peer grants us), invite-only. Parses the CLI forms
//!   `default-grant 10GiB`, `reciprocal 1.0`, `invite-only`.
//! - [`reputation`]: a Storj-style beta reputation with forgetting, per peer holding our shares;
//!   offline is counted apart and never counts as a failure.
//! - [`audit`]: which shares to challenge each day (seeded RNG in, plan out) and the detection
//!   arithmetic behind the audit budget.
//! - `store` (feature `store`, on by default): the ledger in redb, versioned tables, applied in
//!   the caller's write transaction. The only IO in the crate; everything else is pure (no clock,
//!   no global RNG: `now` and the RNG are parameters) and builds with `--no-default-features`.
//!
//! # The default policy
//!
//! Every grid member gets storage, unlimited, up to the node's capacity (`storage.capacity` and
//! the disk reserve are enforced by the node's share store): the seeds' friendnet default, where
//! an invited member may store on every member's node. The owner can set a default quota
//! (`kith policy set default-grant 10GiB`), switch to reciprocity (`reciprocal 1.0`), or go
//! invite-only (`invite-only`: members are pending until granted); an explicit per-friend grant
//! or revocation always wins. See [`Policy::effective_grant`].
//!
//! # Enforcement points
//!
//! The storage server calls [`Ledger::check_write`] (or [`store::check_write`] inside its write
//! transaction) on **every allocate and every lease renewal**, keyed by the **authenticated peer
//! id of the connection**, never by a claim inside a message. A refusal is a typed [`Refusal`]
//! (`NoGrant`, `Pending`, `Revoked`, `OverQuota`) whose message the uploader shows: "revoked",
//! "over quota". The server's own capacity and disk-reserve checks stay in the node. The lease
//! event ([`Event::LeaseAdded`], `LeaseRemoved`, `LeaseRenewed`) is applied with
//! [`store::apply`] in the same redb transaction as the lease row, so an account's usage is
//! always the sum of its leased share sizes, also after a crash.
//!
//! # Revocation
//!
//! [`Event::Revoked`] with a grace end stops new writes and lease renewals **at once** (the next
//! `check_write` refuses). The peer's shares are kept until the grace end, so its files stay
//! readable while it moves them; after that [`Ledger::collectable`] lists the account and the
//! node's collector removes its shares (each removal a [`Event::LeaseRemoved`]). A later
//! [`Event::Granted`] lifts the revocation.

pub mod audit;
pub mod ledger;
pub mod policy;
pub mod reputation;
#[cfg(feature = "store")]
pub mod store;

pub use ledger::{Account, AccountId, Event, EventError, Ledger, Refusal, Usage};
pub use policy::{Access, Policy, PolicyChange, PolicyError, Quota};
pub use reputation::{Outcome, Reputation};
