//! kith-gossip: grid membership and discovery without an introducer.
//!
//! A grid is identified by its founder's ed25519 key. Members admit friends with invitation
//! codes ([`invite`]); a joiner proves the code's secret over a connection authenticated as its
//! peer id and receives a certificate signed by the inviter; every member publishes a signed,
//! sequence-numbered node record carrying its certificate chain; expulsions signed by the
//! founder or the inviter remove a member grid-wide ([`membership`]). Records and expulsions are
//! disseminated by a sans-IO gossip core ([`core`]) and reconciled by digest anti-entropy
//! ([`index`]), over messages with a bounded decoder ([`message`]).
//!
//! # Why our own core (and not gossipsub or iroh-gossip)
//!
//! The architecture weighed libp2p-gossipsub and iroh-gossip's `proto` module. Gossipsub is a
//! topic pub/sub mesh inside a `NetworkBehaviour`: not sans-IO, so it cannot be simulated at
//! 10 000 peers deterministically, and it has no notion of a set to reconcile, so late joiners
//! would still need a separate anti-entropy layer. iroh-gossip's `proto` is sans-IO HyParView +
//! Plumtree, but its HyParView peer sampling solves a problem a grid does not have: every member
//! already knows every other member (membership *is* what is gossiped), so a neighbour set can
//! be drawn uniformly from the validated records instead of by shuffles, and its message
//! framing, ids and timers would have to be bridged to ours. What remains is small: Plumtree's
//! eager/lazy tree (about 300 lines here) next to the digest anti-entropy and the validation we
//! need anyway, all in one state machine the simulator drives directly. Measured results are in
//! the README (`cargo run --release -p kith-simulations --bin gossip-sim`).
//!
//! # Purity
//!
//! Nothing in this crate does IO, reads a clock or uses a global RNG: times and RNGs are passed
//! in, the item store is a trait ([`core::Store`]); the node's libp2p shell and the simulator
//! drive the same code.

pub mod core;
pub mod index;
pub mod invite;
pub mod membership;
pub mod message;

pub use crate::core::{Config, Gossip, Input, Inserted, Millis, Output, Reject, Stats, Store};
pub use index::{BUCKETS, Digest, Index, ItemKey, Meta};
pub use invite::{CodeError, Invitation};
pub use membership::{
    Certificate, Change, Expulsion, ExpulsionBody, GrantView, GridId, GridItem, Kind, NodeRecord,
    PublicKey, RecordBody, Registry, Signer,
};
pub use message::{Announce, DecodeError, Message};
