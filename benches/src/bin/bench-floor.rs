//! bench-floor: the physical floor of a restart, and holden v0.2's pattern.
//!
//! `bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S]`
//!
//! A loop with nothing else in it: spawn the probe race-free through `holden::spawn::spawn`
//! (the very code path the orchestrator uses for local services: `clone3(CLONE_PIDFD)`, the
//! exec-report pipe, the same environment (none) and working directory (`/`)), block in
//! `poll(2)` on its pidfd, reap it with `waitid(P_PIDFD)`, and spawn again — `N` times, or
//! until `S` seconds have passed. With `--sleep-ms 100` it sleeps after every exit as holden
//! v0.2's event loop does (`usleep(100000)` per event).
//!
//! The probe writes the timestamps; this program prints one summary line on stdout:
//! `spawned=N cpu_ns=C wall_ns=W` (its own CPU time, CLOCK_PROCESS_CPUTIME_ID, which includes
//! the fork done on its behalf). Exit status 0, or 1 on a failure (message on stderr), 2 for
//! misuse.

use holden::pidfd;
use holden::spawn::{self, SpawnSpec};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Most restarts one run may ask for.
const COUNT_MAX: u64 = 100_000_000;
/// Longest sleep per event.
const SLEEP_MS_MAX: u64 = 10_000;
/// Default and longest time bound of a run.
const SECONDS_MAX_DEFAULT: u64 = 600;
const SECONDS_MAX_LIMIT: u64 = 86_400;

struct Args {
    probe: String,
    records: String,
    count: u64,
    sleep_ms: u64,
    seconds_max: u64,
}

const USAGE: &str =
    "usage: bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S]";

fn parse_args() -> Result<Args, String> {
    let mut probe = None;
    let mut records = None;
    let mut count = None;
    let mut sleep_ms = 0;
    let mut seconds_max = SECONDS_MAX_DEFAULT;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--probe" => probe = Some(value()?),
            "--records" => records = Some(value()?),
            "--count" => count = Some(number(&arg, &value()?, 1, COUNT_MAX)?),
            "--sleep-ms" => sleep_ms = number(&arg, &value()?, 0, SLEEP_MS_MAX)?,
            "--seconds-max" => seconds_max = number(&arg, &value()?, 1, SECONDS_MAX_LIMIT)?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        probe: probe.ok_or("--probe is required")?,
        records: records.ok_or("--records is required")?,
        count: count.ok_or("--count is required")?,
        sleep_ms,
        seconds_max,
    })
}

fn number(option: &str, text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{option}: {text:?} is not a number in {min}..={max}")),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-floor: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let argv: [&[u8]; 4] = [
        args.probe.as_bytes(),
        args.records.as_bytes(),
        b"0",
        b"exit",
    ];
    let env: [&[u8]; 0] = [];
    let spec = SpawnSpec::new(&argv, &env, Some(b"/")).map_err(|e| format!("spec: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let wall_start = Instant::now();
    let cpu_start = cpu_ns();
    let mut spawned = 0u64;
    while spawned < args.count && Instant::now() < deadline {
        let child = spawn::spawn(&spec).map_err(|e| format!("spawn {}: {e}", args.probe))?;
        spawned += 1;
        wait_readable(child.pidfd.as_raw_fd())?;
        match pidfd::wait_child(child.pidfd.as_fd()) {
            Ok(Some(status)) if status.is_success() => {}
            Ok(Some(status)) => return Err(format!("probe ended with {status:?}")),
            Ok(None) => return Err("pidfd polled readable but the probe is running".into()),
            Err(e) => return Err(format!("waitid: {e}")),
        }
        if args.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.sleep_ms));
        }
    }
    println!(
        "spawned={spawned} cpu_ns={} wall_ns={}",
        cpu_ns() - cpu_start,
        wall_start.elapsed().as_nanos()
    );
    Ok(())
}

/// Blocks until the pidfd polls readable (the process exited).
fn wait_readable(fd: i32) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polls one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc > 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if rc < 0 && e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("poll pidfd: {e}"));
        }
    }
}

/// CPU time of this process (all threads), in ns.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
