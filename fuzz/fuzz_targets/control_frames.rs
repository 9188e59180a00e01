//! Control-protocol bytes (u32 length-prefixed JSON frames) split at arbitrary points, decoded as
//! both directions' messages. Oversized lengths must be refused before any allocation.
#![no_main]

use control::{FrameDecoder, FromDataplane, ToDataplane};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut dec = FrameDecoder::new(64 * 1024);
    for chunk in rest.chunks(step) {
        dec.extend(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let _ = control::decode::<ToDataplane>(&frame);
                    let _ = control::decode::<FromDataplane>(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(dec.buffered() <= 64 * 1024 + 4 + step, "the decoder never buffers past a frame");
    }
    // Whole payloads as one message too.
    let _ = control::decode::<ToDataplane>(rest);
    let _ = control::decode::<control::RpcEnvelope>(rest);
});
