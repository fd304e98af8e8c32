//! bench-boot-service: a `type = "notify"` service of the boot benchmark (`cargo xtask bench`).
//!
//! `bench-boot-service RECORDS SERVICE_ID DELAY_MS`
//!
//! Reads CLOCK_MONOTONIC at the top of `main`, sleeps DELAY_MS (measured from that stamp),
//! reads the clock again and sends `READY=1` to `$NOTIFY_SOCKET` (a path, or an abstract name
//! after `@`) on a **blocking** datagram socket, as libsystemd's `sd_notify()` does: when the
//! orchestrator's socket queue is full (`net.unix.max_dgram_qlen`), the send waits for room
//! instead of failing. Then it appends one [`KIND_READY`] record (start: top of `main`, end:
//! just before the datagram was sent, so that no dependent can start before it) to RECORDS
//! and sleeps until a signal ends it (SIGTERM from the orchestrator's stop). A usage error
//! exits 2, a records-file error 3, no or a broken `NOTIFY_SOCKET` 4.

use holden_bench::{monotonic_ns, open_records, write_record, Record, KIND_READY};
use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

const EXIT_USAGE: i32 = 2;
const EXIT_RECORDS: i32 = 3;
const EXIT_NOTIFY: i32 = 4;
/// Longest delay accepted (a mistake beyond it, not a boot).
const DELAY_MS_MAX: u64 = 60_000;

fn main() {
    let start_ns = monotonic_ns();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: bench-boot-service RECORDS SERVICE_ID DELAY_MS");
        std::process::exit(EXIT_USAGE)
    };
    if args.len() != 3 {
        usage();
    }
    let number = |a: &std::ffi::OsString| a.to_str().and_then(|s| s.parse::<u64>().ok());
    let (Some(service), Some(delay_ms)) = (number(&args[1]), number(&args[2])) else {
        usage()
    };
    let (Ok(service), true) = (u32::try_from(service), delay_ms <= DELAY_MS_MAX) else {
        usage()
    };
    let Ok(path) = CString::new(args[0].clone().into_vec()) else {
        usage()
    };
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        eprintln!("bench-boot-service: no NOTIFY_SOCKET");
        std::process::exit(EXIT_NOTIFY)
    };
    let address = match notify_address(target.as_bytes()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-boot-service: NOTIFY_SOCKET: {e}");
            std::process::exit(EXIT_NOTIFY)
        }
    };
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-boot-service: socket: {e}");
            std::process::exit(EXIT_NOTIFY)
        }
    };
    let fd = match open_records(&path) {
        Ok(fd) => fd,
        Err(errno) => {
            eprintln!("bench-boot-service: open records: errno {errno}");
            std::process::exit(EXIT_RECORDS)
        }
    };
    let ready_at = start_ns + delay_ms * 1_000_000;
    let left = ready_at.saturating_sub(monotonic_ns());
    if left > 0 {
        std::thread::sleep(Duration::from_nanos(left));
    }
    let end_ns = monotonic_ns();
    if let Err(e) = socket.send_to_addr(b"READY=1", &address) {
        eprintln!("bench-boot-service: send READY=1: {e}");
        std::process::exit(EXIT_NOTIFY)
    }
    let record = Record {
        service,
        pid: std::process::id() as i32,
        kind: KIND_READY,
        start_ns,
        end_ns,
    };
    if let Err(errno) = write_record(fd, &record) {
        eprintln!("bench-boot-service: write record: errno {errno}");
        std::process::exit(EXIT_RECORDS)
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `NOTIFY_SOCKET` as an address: a path, or an abstract name after `@`.
fn notify_address(value: &[u8]) -> std::io::Result<SocketAddr> {
    match value.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)),
    }
}
