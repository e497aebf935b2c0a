//! Gossiped items (records, expulsions): decoding and validation must never panic.
#![no_main]
use kith_gossip::{GridItem, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = GridItem::decode(data) {
        let _ = item.verify(&[7; 32], 1_800_000_000, &|_| false);
    }
    let mut r = Registry::new([7; 32]);
    let _ = r.insert(data, 1_800_000_000);
});
