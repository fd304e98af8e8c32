//! Arbitrary owned frames: a valid one must round-trip (decode(encode(x)) == x); an invalid one
//! (empty argv, NUL in a string, a limit exceeded, unknown start flags, pid <= 0 ...) must be
//! refused by the encoder with an error, never a panic. Encoding into a too-small buffer must
//! fail cleanly too.
#![no_main]

use holden::wire::v1::{decode, EncodeError, OwnedFrame, FRAME_LEN_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (OwnedFrame, u16)| {
    let (frame, short_len) = input;
    let mut buf = [0u8; FRAME_LEN_MAX];
    match frame.encode(&mut buf) {
        Ok(len) => {
            let decoded = decode(&buf[..len]).expect("an encoded frame decodes");
            assert_eq!(decoded.to_owned_frame(), frame);
            // The same frame into a buffer one byte short, or shorter, is refused.
            let short = usize::from(short_len) % len;
            let mut small = vec![0u8; short];
            assert_eq!(
                frame.encode(&mut small),
                Err(EncodeError::BufferTooSmall {
                    needed: len,
                    available: short
                })
            );
        }
        Err(EncodeError::BufferTooSmall { .. }) => {
            panic!("a full-size buffer is never too small")
        }
        Err(_) => {}
    }
});
