//! Capability strings pasted by users or sent by peers: parsing must never panic.
#![no_main]
use kith_node::caps::{Cap, ReadCap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(cap) = s.parse::<Cap>() {
            assert_eq!(cap.to_string().parse::<Cap>().ok(), Some(cap.clone()));
            let _ = cap.attenuate();
        }
        if let Ok(cap) = s.parse::<ReadCap>() {
            assert_eq!(cap.to_string().parse::<ReadCap>().map(|c| c.to_string()).ok(), Some(cap.to_string()));
        }
    }
});
