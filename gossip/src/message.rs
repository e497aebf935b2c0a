//! The gossip wire messages and their bounded decoder.
//!
//! Messages are CBOR. [`Message::decode`] refuses anything over [`MAX_MESSAGE`] bytes before
//! parsing, then checks every list and item against its own limit, and returns a typed
//! [`DecodeError`]; it never panics on any input (see the proptest below and the fuzz target).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::index::{BUCKETS, Digest, ItemKey, Meta};

/// Largest encoded message accepted.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Largest single item (a signed record with its certificate chain).
pub const MAX_ITEM: usize = 8 * 1024;
/// Most announcements in one `IHave`.
pub const MAX_ANNOUNCES: usize = 1024;
/// Most keys in one `Graft` or `Want`.
pub const MAX_KEYS: usize = 1024;
/// Most entries in one `SyncEntries`.
pub const MAX_ENTRIES: usize = 4096;
/// Most items in one `Items`.
pub const MAX_ITEMS: usize = 128;

/// One "I have this" announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The item.
    pub key: ItemKey,
    /// Its version.
    pub meta: Meta,
    /// Hops from its origin.
    pub round: u16,
}

/// A gossip message between two members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Eager push of one item (Plumtree GOSSIP).
    Push {
        /// The item's canonical bytes.
        item: ByteBuf,
        /// Hops from its origin.
        round: u16,
    },
    /// Lazy announcements (Plumtree IHAVE).
    IHave(Vec<Announce>),
    /// "Send me these and push to me eagerly from now on" (Plumtree GRAFT).
    Graft(Vec<ItemKey>),
    /// "Stop pushing to me eagerly; announce instead" (Plumtree PRUNE).
    Prune,
    /// Anti-entropy, step 1: the sender's root digest.
    SyncRoot(Digest),
    /// Anti-entropy, step 2: the receiver's bucket digests (the roots differed).
    SyncBuckets(Vec<Digest>),
    /// Anti-entropy, step 3: every entry of the listed buckets.
    SyncEntries {
        /// The buckets listed in full.
        buckets: Vec<u8>,
        /// Their entries.
        entries: Vec<(ItemKey, Meta)>,
    },
    /// Anti-entropy, step 4: "send me these".
    Want(Vec<ItemKey>),
    /// Items sent outside the tree (anti-entropy answers).
    Items(Vec<ByteBuf>),
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE`].
    #[error("gossip message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid CBOR message.
    #[error("malformed gossip message: {0}")]
    Malformed(String),
    /// A list or item exceeds its limit.
    #[error("gossip message exceeds a limit: {0}")]
    Limit(&'static str),
}

impl Message {
    /// Canonical CBOR bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut out).expect("CBOR into a Vec");
        out
    }

    /// Bounded, checked decoding.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let msg: Message = ciborium::de::from_reader_with_recursion_limit(bytes, 16)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        msg.check()?;
        Ok(msg)
    }

    /// Checks every limit.
    pub fn check(&self) -> Result<(), DecodeError> {
        let ok = match self {
            Message::Push { item, .. } => item.len() <= MAX_ITEM,
            Message::IHave(a) => a.len() <= MAX_ANNOUNCES,
            Message::Graft(k) | Message::Want(k) => k.len() <= MAX_KEYS,
            Message::Prune | Message::SyncRoot(_) => true,
            Message::SyncBuckets(b) => b.len() == BUCKETS,
            Message::SyncEntries { buckets, entries } => {
                buckets.len() <= BUCKETS && entries.len() <= MAX_ENTRIES
            }
            Message::Items(items) => {
                items.len() <= MAX_ITEMS && items.iter().all(|i| i.len() <= MAX_ITEM)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(DecodeError::Limit(self.name()))
        }
    }

    /// The message's name (for counters and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Push { .. } => "push",
            Message::IHave(_) => "ihave",
            Message::Graft(_) => "graft",
            Message::Prune => "prune",
            Message::SyncRoot(_) => "sync-root",
            Message::SyncBuckets(_) => "sync-buckets",
            Message::SyncEntries { .. } => "sync-entries",
            Message::Want(_) => "want",
            Message::Items(_) => "items",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_limits() {
        let key = ItemKey {
            kind: 1,
            id: [7; 32],
        };
        let meta = Meta::of(3, b"x");
        let msgs = vec![
            Message::Push {
                item: ByteBuf::from(vec![1, 2, 3]),
                round: 4,
            },
            Message::IHave(vec![Announce {
                key,
                meta,
                round: 1,
            }]),
            Message::Graft(vec![key]),
            Message::Prune,
            Message::SyncRoot(Digest([5; 16])),
            Message::SyncBuckets(vec![Digest::default(); BUCKETS]),
            Message::SyncEntries {
                buckets: vec![7],
                entries: vec![(key, meta)],
            },
            Message::Want(vec![key]),
            Message::Items(vec![ByteBuf::from(vec![9; 10])]),
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
        let big = Message::Push {
            item: ByteBuf::from(vec![0; MAX_ITEM + 1]),
            round: 0,
        };
        assert_eq!(
            Message::decode(&big.encode()),
            Err(DecodeError::Limit("push"))
        );
        assert!(matches!(
            Message::decode(&vec![0u8; MAX_MESSAGE + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(
            Message::decode(&Message::SyncBuckets(vec![]).encode()),
            Err(DecodeError::Limit("sync-buckets"))
        );
        // An announce of a 33-byte key cut short is malformed, not a panic.
        assert!(matches!(
            Message::decode(&[0xa1, 0x65, b'G', b'r', b'a', b'f', b't', 0x81, 0xa2]),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(pos in 0usize..64, val in any::<u8>()) {
            let mut b = Message::IHave(vec![Announce {
                key: ItemKey { kind: 1, id: [3; 32] },
                meta: Meta::of(1, b"a"),
                round: 2,
            }])
            .encode();
            let i = pos % b.len();
            b[i] = val;
            let _ = Message::decode(&b);
        }
    }
}
