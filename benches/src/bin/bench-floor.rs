//! bench-floor: the physical floor of a restart, and holden v0.2's pattern.
//!
//! `bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S]
//!  [--spawn posix|fork|launcher] [--ballast-kib K] [--ballast-fds F]`
//!
//! A loop with nothing else in it: spawn the probe, block in `poll(2)` on its pidfd, reap it
//! with `waitid(P_PIDFD)`, and spawn again — `N` times, or until `S` seconds have passed.
//! With `--sleep-ms 100` it sleeps after every exit as holden v0.2's event loop does
//! (`usleep(100000)` per event).
//!
//! The floor is `--spawn posix` (the default): `posix_spawn(3)` (musl and glibc use
//! `clone(CLONE_VM | CLONE_VFORK)`: no page-table copy, no copy-on-write faults afterwards),
//! asking for the same child set-up as holden's spawn where it can (new session, every signal
//! to its default, empty mask, stdin on /dev/null; the same environment: none), with the
//! pidfd from `pidfd_open` (race-free here: the child is ours and not reaped until `waitid`). The other variants are for the analysis:
//! - `--spawn fork`: `holden::spawn::spawn`, the fork-style spawn (`clone3(CLONE_PIDFD)` and
//!   the exec-report pipe) the orchestrator used before its spawner threads, and the floor
//!   of the benchmark before this one;
//! - `--spawn launcher`: `holden::spawn::Launcher`, the orchestrator's spawn path today
//!   (`CLONE_VM | CLONE_VFORK | CLONE_FILES`, `close_range(CLOSE_RANGE_UNSHARE)` in the
//!   child, the exec-report pipe), called from this loop as a spawner thread calls it;
//! - `--ballast-kib K` first allocates and touches K KiB of heap, so that a fork has as much
//!   anonymous memory to copy as a bigger process (the orchestrator);
//! - `--ballast-fds F` first opens F close-on-exec fds, as the orchestrator holds one pidfd
//!   per live service: fork copies the fd table and the child closes them all; posix_spawn's
//!   child shares the table and `execve` closes them; the Launcher's child drops them at
//!   once (`close_range` unshare copies only the fds below them).
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

/// How the loop starts the probe.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SpawnKind {
    /// `posix_spawn` + `pidfd_open`: the floor.
    Posix,
    /// `holden::spawn::spawn` (analysis).
    Fork,
    /// `holden::spawn::Launcher` (analysis).
    Launcher,
}

struct Args {
    probe: String,
    records: String,
    count: u64,
    sleep_ms: u64,
    seconds_max: u64,
    spawn: SpawnKind,
    ballast_kib: u64,
    ballast_fds: u64,
}

/// Most ballast fds (RLIMIT_NOFILE permitting).
const BALLAST_FDS_MAX: u64 = 65_536;
/// Fds kept free besides the ballast (stdio, pidfd, exec-report pipe, records).
const FDS_SPARE: u64 = 16;
/// Largest ballast (1 GiB).
const BALLAST_KIB_MAX: u64 = 1 << 20;

const USAGE: &str =
    "usage: bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S] \
     [--spawn posix|fork|launcher] [--ballast-kib K] [--ballast-fds F]";

fn parse_args() -> Result<Args, String> {
    let mut probe = None;
    let mut records = None;
    let mut count = None;
    let mut sleep_ms = 0;
    let mut seconds_max = SECONDS_MAX_DEFAULT;
    let mut spawn = SpawnKind::Posix;
    let mut ballast_kib = 0;
    let mut ballast_fds = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--probe" => probe = Some(value()?),
            "--records" => records = Some(value()?),
            "--count" => count = Some(holden_bench::number(&arg, &value()?, 1, COUNT_MAX)?),
            "--sleep-ms" => sleep_ms = holden_bench::number(&arg, &value()?, 0, SLEEP_MS_MAX)?,
            "--seconds-max" => {
                seconds_max = holden_bench::number(&arg, &value()?, 1, SECONDS_MAX_LIMIT)?
            }
            "--ballast-kib" => {
                ballast_kib = holden_bench::number(&arg, &value()?, 0, BALLAST_KIB_MAX)?
            }
            "--ballast-fds" => {
                ballast_fds = holden_bench::number(&arg, &value()?, 0, BALLAST_FDS_MAX)?
            }
            "--spawn" => {
                spawn = match value()?.as_str() {
                    "posix" => SpawnKind::Posix,
                    "fork" => SpawnKind::Fork,
                    "launcher" => SpawnKind::Launcher,
                    other => {
                        return Err(format!("--spawn: {other:?} is not posix, fork or launcher"))
                    }
                }
            }
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
        spawn,
        ballast_kib,
        ballast_fds,
    })
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
    let posix = (args.spawn == SpawnKind::Posix)
        .then(|| holden_bench::PosixSpawn::new(&argv))
        .transpose()?;
    let mut launcher = match args.spawn {
        SpawnKind::Launcher => Some(
            spawn::Launcher::set(1)
                .map_err(|e| format!("launcher: {e}"))?
                .and_then(|mut set| set.pop())
                .ok_or("launcher: this kernel lacks close_range (5.9)")?,
        ),
        _ => None,
    };
    let ballast = ballast(args.ballast_kib);
    let ballast_fds = ballast_fds(args.ballast_fds)?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let wall_start = Instant::now();
    let cpu_start = holden_bench::process_cpu_ns();
    let mut spawned = 0u64;
    while spawned < args.count && Instant::now() < deadline {
        let child = match (&posix, &mut launcher) {
            (Some(p), _) => p.spawn()?,
            (_, Some(l)) => l
                .spawn(&spec)
                .map_err(|e| format!("spawn {}: {e}", args.probe))?,
            _ => spawn::spawn(&spec).map_err(|e| format!("spawn {}: {e}", args.probe))?,
        };
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
    drop(ballast);
    drop(ballast_fds);
    println!(
        "spawned={spawned} cpu_ns={} wall_ns={}",
        holden_bench::process_cpu_ns() - cpu_start,
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

/// `count` close-on-exec fds on /dev/null (the soft fd limit is raised to the hard one first
/// if it is too low).
fn ballast_fds(count: u64) -> Result<Vec<std::fs::File>, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur < count + FDS_SPARE
            && limit.rlim_max > limit.rlim_cur
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    (0..count)
        .map(|_| {
            std::fs::File::open("/dev/null")
                .map_err(|e| format!("--ballast-fds: /dev/null: {e} (raise ulimit -n?)"))
        })
        .collect()
}

/// `K` KiB of heap, every page written once (so it is resident and anonymous).
fn ballast(kib: u64) -> Vec<u8> {
    let mut v = vec![0u8; (kib * 1024) as usize];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&mut v);
    v
}
