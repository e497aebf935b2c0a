//! URI extension blocks returned by storage servers: decoding must never panic.
#![no_main]
use kith_node::codec::UriExtension;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = UriExtension::from_bytes(data);
});
