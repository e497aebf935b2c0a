//! Share metadata returned by storage servers: decoding must never panic.
#![no_main]
use kith_node::codec::ShareMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = ShareMeta::from_bytes(data, 8 << 20) {
        assert_eq!(ShareMeta::from_bytes(&meta.to_bytes(), 8 << 20).ok(), Some(meta));
    }
});
