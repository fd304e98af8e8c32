//! Any byte string as one sd_notify datagram from a service: decoding must not panic, and
//! what it takes is within its bounds (a status is UTF-8, at most 256 bytes, and appears in
//! the datagram; a main pid is positive).
#![no_main]

use holden::service_notify::{decode, STATUS_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    let m = decode(datagram);
    if let Some(status) = m.status {
        assert!(status.len() <= STATUS_BYTES_MAX);
        assert!(datagram
            .windows(status.len().max(1))
            .any(|w| status.is_empty() || w == status.as_bytes()));
    }
    assert!(m.main_pid.is_none_or(|p| p > 0));
});
