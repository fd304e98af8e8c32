//! Any byte string as one control packet: decode must not panic, and a frame it accepts must
//! re-encode to exactly the same bytes (one encoding per frame).
#![no_main]

use holden::control::{decode, encode, FRAME_LEN_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    let Ok(frame) = decode(packet) else {
        return;
    };
    let mut buf = [0u8; FRAME_LEN_MAX];
    let len = encode(&mut buf, frame.id, &frame.body).expect("a decoded frame re-encodes");
    assert_eq!(&buf[..len], packet);
});
