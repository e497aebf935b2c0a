//! Directory tables are written by whoever holds a directory's write cap and read by everyone
//! holding its read cap: decoding must never panic, and a decoded table re-encodes and decodes
//! to the same entries.
#![no_main]
use kith_node::dirnode::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, None);
    if let Ok(t) = decode(data, Some(&[7; 32])) {
        let bytes = encode(&t, Some(&[7; 32]), || [1; 16]).expect("a decoded table encodes");
        assert_eq!(decode(&bytes, Some(&[7; 32])).expect("and decodes"), t);
    }
});
