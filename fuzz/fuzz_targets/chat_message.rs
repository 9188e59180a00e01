//! Chat DataChannel messages (client → SFU), as the core validates them.
#![no_main]

use sfu_core::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0, 10, 4096] {
        if let Ok(sfu_core::ChannelRequest::Chat(c)) = parse_request(data, max) {
            assert!(c.text.len() <= max, "text over the limit accepted");
            assert!(!c.text.trim().is_empty(), "empty text accepted");
        }
    }
});
