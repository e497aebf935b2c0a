//! Gossip messages from peers: decoding must never panic, and what decodes re-encodes to a
//! message that decodes to the same value.
#![no_main]
use kith_gossip::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()).ok(), Some(m));
    }
});
