//! Any byte string as a v0.2 stream: decode frames one after another until the buffer is used
//! up, needs more, or is refused. No panic, `consumed` stays in bounds, and every decoded frame
//! re-encodes to bytes that decode to the same frame.
#![no_main]

use holden::wire::v02::{decode, decode_pidfd_marker, Decoded, FRAME_LEN_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|stream: &[u8]| {
    let _ = decode_pidfd_marker(stream);
    let mut rest = stream;
    // Every frame consumes at least the 8-byte header, so this loop is bounded by the input.
    while !rest.is_empty() {
        match decode(rest) {
            Err(_) => return,
            Ok(Decoded::NeedMore { bytes }) => {
                assert!(bytes > 0 && rest.len() + bytes <= FRAME_LEN_MAX);
                return;
            }
            Ok(Decoded::Done { value, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                let owned = value.to_owned_frame();
                let mut buf = [0u8; FRAME_LEN_MAX];
                let len = owned.encode(&mut buf).expect("a decoded frame re-encodes");
                match decode(&buf[..len]) {
                    Ok(Decoded::Done {
                        value: again,
                        consumed,
                    }) => {
                        assert_eq!(consumed, len);
                        assert_eq!(again.to_owned_frame(), owned);
                    }
                    other => panic!("re-encoded frame does not decode: {other:?}"),
                }
                rest = &rest[consumed..];
            }
        }
    }
});
