//! bench-launch: stamps the start of a program on the services' clock, then becomes it.
//!
//! `bench-launch RECORDS PROGRAM [ARG...]`
//!
//! Appends one [`KIND_LAUNCH`] record (service id [`LAUNCH_SERVICE`], both times the
//! CLOCK_MONOTONIC reading taken just before the exec) to RECORDS and execs PROGRAM with its
//! arguments: the same pid, so that whoever started `bench-launch` now holds PROGRAM. The
//! boot benchmark starts holden-orchestrator through it, so that the services' own records
//! (same clock, same file) can be read against the orchestrator's start. Exits 2 for misuse,
//! 3 when RECORDS cannot be written, 4 when the exec fails.

use holden_bench::{append_record, monotonic_ns, Record, KIND_LAUNCH, LAUNCH_SERVICE};
use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: bench-launch RECORDS PROGRAM [ARG...]");
        std::process::exit(2);
    }
    let Ok(path) = CString::new(args[0].clone().into_vec()) else {
        eprintln!("bench-launch: RECORDS contains a NUL byte");
        std::process::exit(2);
    };
    let mut command = std::process::Command::new(&args[1]);
    command.args(&args[2..]);
    let now = monotonic_ns();
    let record = Record {
        service: LAUNCH_SERVICE,
        pid: std::process::id() as i32,
        kind: KIND_LAUNCH,
        start_ns: now,
        end_ns: now,
    };
    if let Err(errno) = append_record(&path, &record) {
        eprintln!("bench-launch: records: errno {errno}");
        std::process::exit(3);
    }
    let e = command.exec();
    eprintln!("bench-launch: exec {}: {e}", args[1].to_string_lossy());
    std::process::exit(4);
}
