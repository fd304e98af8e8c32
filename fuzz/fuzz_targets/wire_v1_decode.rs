//! Any byte string as one v1 packet: decode must not panic, and a frame it accepts (from our
//! own minor version) must re-encode to exactly the same bytes (one encoding per frame).
#![no_main]

use holden::wire::v1::{decode, peek_request_id, FRAME_LEN_MAX, VERSION_MINOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    let _ = peek_request_id(packet);
    let Ok(frame) = decode(packet) else {
        return;
    };
    if let holden::wire::v1::Body::Start(start) = frame.body {
        // The borrowed lists must yield exactly their validated counts.
        assert_eq!(start.argv.iter().count(), start.argv.len());
        assert_eq!(start.env.iter().count(), start.env.len());
    }
    if frame.header.version_minor == VERSION_MINOR {
        let mut buf = [0u8; FRAME_LEN_MAX];
        let len = frame
            .to_owned_frame()
            .encode(&mut buf)
            .expect("a decoded frame re-encodes");
        assert_eq!(&buf[..len], packet);
    }
});
