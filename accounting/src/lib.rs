//! kith-accounting: per-public-key accounting, grants, quotas, leases and audits.
//!
//! This crate will hold the accounting issue's work: a pure ledger state machine with a redb
//! store, grant policies (default grant, reciprocal, explicit quotas, invite-only), and audit
//! scores that feed placement.
//!
//! Today the crate is an empty skeleton: the storage server in `kith-node` already keys every
//! lease by the uploader's authenticated peer id and refuses writes past its capacity and disk
//! reserve, but it grants every connected peer.
