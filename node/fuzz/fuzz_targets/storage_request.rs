//! Storage-protocol frames from peers: decoding must never panic.
#![no_main]
use kith_node::protocol::{Request, Response, decode_body, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_body::<Request>(data);
    let _ = decode_body::<Response>(data);
    let _ = decode_frame::<Request>(data);
    let _ = decode_frame::<Response>(data);
});
