//! Mutable slot shares come from storage servers: decoding and verifying must never panic, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]
use kith_node::mutable::{MutableShare, peek_seqnum, verify_share};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peek_seqnum(data);
    if let Ok(share) = MutableShare::from_bytes(data) {
        assert_eq!(share.to_bytes(), data);
    }
    let _ = verify_share(&[0; 16], &[0; 32], data);
});
