//! bench-probe: the service program of `cargo xtask bench`.
//!
//! `bench-probe RECORDS SERVICE_ID exit|idle`
//!
//! It reads CLOCK_MONOTONIC as the first statement of `main` (no Rust runtime start-up runs
//! before it: `#![no_main]`, the C `main` is ours), then
//! - `exit`: opens RECORDS (`O_APPEND`), reads the clock again, writes one 32-byte record
//!   (see `holden_bench`) with one `write(2)` and calls `_exit(0)` at once;
//! - `idle`: writes a record with only the start time and sleeps in `pause()` until a
//!   signal ends it (SIGTERM from the orchestrator's stop).
//!
//! The time from one instance's end stamp to the next instance's start stamp is the restart
//! latency: process teardown, the supervisor's wake-up and decision, fork, exec and the
//! program's loading, all outside the supervisor's own accounting. Allocation-free; a usage
//! error prints one line and exits 2, a records-file error exits 3.
#![no_main]

use holden_bench::{monotonic_ns, open_records, write_record, Record, KIND_EXIT, KIND_IDLE};
use libc::{c_char, c_int};
use std::ffi::CStr;

/// Exit status for a command-line mistake.
const EXIT_USAGE: c_int = 2;
/// Exit status when the records file cannot be written.
const EXIT_RECORDS: c_int = 3;
/// Longest service id accepted, in decimal digits (u32).
const SERVICE_DIGITS_MAX: usize = 10;

/// The C entry point.
///
/// # Safety
///
/// Called by the C runtime only, with `argc` valid NUL-terminated strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let start_ns = monotonic_ns();
    if argc != 4 {
        fail(
            EXIT_USAGE,
            b"usage: bench-probe RECORDS SERVICE_ID exit|idle\n",
        );
    }
    // SAFETY: the C runtime passes `argc` valid NUL-terminated strings in `argv`; we checked
    // that there are four.
    let (path, service, mode) = unsafe {
        (
            CStr::from_ptr(*argv.add(1)),
            CStr::from_ptr(*argv.add(2)),
            CStr::from_ptr(*argv.add(3)),
        )
    };
    let Some(service) = parse_u32(service.to_bytes()) else {
        fail(EXIT_USAGE, b"bench-probe: SERVICE_ID is not a number\n");
    };
    let kind = match mode.to_bytes() {
        b"exit" => KIND_EXIT,
        b"idle" => KIND_IDLE,
        _ => fail(EXIT_USAGE, b"bench-probe: mode must be exit or idle\n"),
    };
    let Ok(fd) = open_records(path) else {
        fail(EXIT_RECORDS, b"bench-probe: cannot open the records file\n");
    };
    // SAFETY: getpid has no arguments and cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut record = Record {
        service,
        pid,
        kind,
        start_ns,
        end_ns: 0,
    };
    if kind == KIND_IDLE {
        if write_record(fd, &record).is_err() {
            fail(
                EXIT_RECORDS,
                b"bench-probe: cannot write the records file\n",
            );
        }
        loop {
            // SAFETY: pause only waits for a signal; the default action of SIGTERM ends us.
            unsafe { libc::pause() };
        }
    }
    record.end_ns = monotonic_ns();
    if write_record(fd, &record).is_err() {
        fail(
            EXIT_RECORDS,
            b"bench-probe: cannot write the records file\n",
        );
    }
    // SAFETY: _exit ends the process at once; nothing needs flushing (no buffered output).
    unsafe { libc::_exit(0) }
}

/// Parses a decimal u32 without allocating.
fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > SERVICE_DIGITS_MAX {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(d - b'0');
    }
    u32::try_from(value).ok()
}

/// Writes `message` to stderr and exits with `status`.
fn fail(status: c_int, message: &[u8]) -> ! {
    // SAFETY: writes a valid byte slice to fd 2 (ignored if it is closed), then _exit.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(status)
    }
}
