//! Any byte string as a re-exec handoff: decoding must not panic, and a handoff it accepts
//! encodes back to text that decodes to the same handoff, within its bounds.
#![no_main]

use holden::handoff::{decode, size_max};
use libfuzzer_sys::fuzz_target;

const SERVICES_MAX: usize = 8;

fuzz_target!(|bytes: &[u8]| {
    let Ok(handoff) = decode(bytes, SERVICES_MAX) else {
        return;
    };
    assert!(handoff.outputs.len() <= 2 * SERVICES_MAX);
    assert!(handoff.processes.len() <= SERVICES_MAX);
    let mut buf = vec![0u8; size_max(SERVICES_MAX)];
    let len = handoff.encode(&mut buf).expect("an accepted handoff encodes");
    assert_eq!(decode(&buf[..len], SERVICES_MAX).as_ref(), Ok(&handoff));
});
