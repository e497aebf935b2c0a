//! Invitation codes pasted by users: decoding must never panic.
#![no_main]
use kith_gossip::Invitation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(inv) = Invitation::decode(s) {
            assert_eq!(Invitation::decode(&inv.encode()).ok(), Some(inv));
        }
    }
});
