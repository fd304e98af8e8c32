//! bench-floor: the physical floor of a restart, and holden v0.2's pattern.
//!
//! `bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S]
//!  [--spawn holden|posix] [--ballast-kib K]`
//!
//! A loop with nothing else in it: spawn the probe race-free through `holden::spawn::spawn`
//! (the very code path the orchestrator uses for local services: `clone3(CLONE_PIDFD)`, the
//! exec-report pipe, the same environment (none) and working directory (`/`)), block in
//! `poll(2)` on its pidfd, reap it with `waitid(P_PIDFD)`, and spawn again — `N` times, or
//! until `S` seconds have passed. With `--sleep-ms 100` it sleeps after every exit as holden
//! v0.2's event loop does (`usleep(100000)` per event).
//!
//! Two variants exist for the analysis of the gap between holden and the floor (they are not
//! the floor): `--spawn posix` starts the probe with `posix_spawn(3)` (musl and glibc use
//! `clone(CLONE_VM | CLONE_VFORK)`: no page-table copy, no copy-on-write faults afterwards),
//! asking for the same child set-up as holden's spawn where it can (new session, every signal
//! to its default, empty mask, stdin on /dev/null), and opens the pidfd with `pidfd_open`
//! (race-free here: the child is ours and not reaped until `waitid`); `--ballast-kib K` first allocates and touches K KiB of heap, so that a
//! fork has as much anonymous memory to copy as a bigger process (the orchestrator).
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
    posix: bool,
    ballast_kib: u64,
}

/// Largest ballast (1 GiB).
const BALLAST_KIB_MAX: u64 = 1 << 20;

const USAGE: &str =
    "usage: bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S] \
     [--spawn holden|posix] [--ballast-kib K]";

fn parse_args() -> Result<Args, String> {
    let mut probe = None;
    let mut records = None;
    let mut count = None;
    let mut sleep_ms = 0;
    let mut seconds_max = SECONDS_MAX_DEFAULT;
    let mut posix = false;
    let mut ballast_kib = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--probe" => probe = Some(value()?),
            "--records" => records = Some(value()?),
            "--count" => count = Some(number(&arg, &value()?, 1, COUNT_MAX)?),
            "--sleep-ms" => sleep_ms = number(&arg, &value()?, 0, SLEEP_MS_MAX)?,
            "--seconds-max" => seconds_max = number(&arg, &value()?, 1, SECONDS_MAX_LIMIT)?,
            "--ballast-kib" => ballast_kib = number(&arg, &value()?, 0, BALLAST_KIB_MAX)?,
            "--spawn" => {
                posix = match value()?.as_str() {
                    "holden" => false,
                    "posix" => true,
                    other => return Err(format!("--spawn: {other:?} is not holden or posix")),
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
        posix,
        ballast_kib,
    })
}

fn number(option: &str, text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "{option}: {text:?} is not a number in {min}..={max}"
        )),
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
    let posix = args.posix.then(|| PosixSpawn::new(&argv)).transpose()?;
    let ballast = ballast(args.ballast_kib);
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let wall_start = Instant::now();
    let cpu_start = holden_bench::process_cpu_ns();
    let mut spawned = 0u64;
    while spawned < args.count && Instant::now() < deadline {
        let child = match &posix {
            None => spawn::spawn(&spec).map_err(|e| format!("spawn {}: {e}", args.probe))?,
            Some(p) => p.spawn()?,
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

/// `K` KiB of heap, every page written once (so it is resident and anonymous).
fn ballast(kib: u64) -> Vec<u8> {
    let mut v = vec![0u8; (kib * 1024) as usize];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&mut v);
    v
}

/// posix_spawn prepared once: argv as C strings, and the same child set-up as holden's
/// spawn where posix_spawn can express it (new session, every signal to its default action,
/// empty signal mask, stdin on /dev/null), so that the comparison is about fork against
/// `CLONE_VM | CLONE_VFORK`, not about work left out.
struct PosixSpawn {
    strings: Vec<std::ffi::CString>,
    argv: Vec<*mut libc::c_char>,
    envp: [*mut libc::c_char; 1],
    attr: Box<libc::posix_spawnattr_t>,
    actions: Box<libc::posix_spawn_file_actions_t>,
}

impl PosixSpawn {
    fn new(argv: &[&[u8]]) -> Result<PosixSpawn, String> {
        let strings = argv
            .iter()
            .map(|a| std::ffi::CString::new(*a).map_err(|_| "NUL in argv".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*mut libc::c_char> =
            strings.iter().map(|s| s.as_ptr() as *mut _).collect();
        ptrs.push(std::ptr::null_mut());
        // SAFETY: plain C structs, initialised by their init functions below before any use.
        let mut attr: Box<libc::posix_spawnattr_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: as above.
        let mut actions: Box<libc::posix_spawn_file_actions_t> =
            Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: every call gets valid pointers to the boxed structs (which never move) and
        // to local sigsets; the path is a NUL-terminated literal.
        let rc = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            let flags = libc::POSIX_SPAWN_SETSID
                | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short
                | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short;
            [
                libc::posix_spawnattr_init(&mut *attr),
                libc::posix_spawnattr_setflags(&mut *attr, flags),
                libc::posix_spawnattr_setsigdefault(&mut *attr, &all),
                libc::posix_spawnattr_setsigmask(&mut *attr, &none),
                libc::posix_spawn_file_actions_init(&mut *actions),
                libc::posix_spawn_file_actions_addopen(
                    &mut *actions,
                    0,
                    c"/dev/null".as_ptr(),
                    libc::O_RDONLY,
                    0,
                ),
            ]
            .into_iter()
            .find(|&rc| rc != 0)
        };
        if let Some(rc) = rc {
            return Err(format!(
                "posix_spawn attributes: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(PosixSpawn {
            strings,
            argv: ptrs,
            envp: [std::ptr::null_mut()],
            attr,
            actions,
        })
    }

    fn spawn(&self) -> Result<spawn::Spawned, String> {
        let mut pid: libc::pid_t = 0;
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers into `strings`,
        // which lives as long as `self`; `attr` and `actions` were initialised in `new`.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.strings[0].as_ptr(),
                &*self.actions,
                &*self.attr,
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "posix_spawn: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        // Race-free: the child is ours and stays a zombie until we reap it with waitid.
        let pidfd = pidfd::open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
        Ok(spawn::Spawned { pid, pidfd })
    }
}

impl Drop for PosixSpawn {
    fn drop(&mut self) {
        // SAFETY: destroys the structs initialised in `new`, once.
        unsafe {
            libc::posix_spawnattr_destroy(&mut *self.attr);
            libc::posix_spawn_file_actions_destroy(&mut *self.actions);
        }
    }
}
