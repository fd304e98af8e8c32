//! bench-floor: the physical floor of a restart, and holden v0.2's pattern.
//!
//! `bench-floor --probe PATH --records FILE --count N [--sleep-ms MS] [--seconds-max S]
//!  [--spawn holden|posix|shared-files] [--ballast-kib K] [--ballast-fds F]`
//!
//! A loop with nothing else in it: spawn the probe race-free through `holden::spawn::spawn`
//! (the very code path the orchestrator uses for local services: `clone3(CLONE_PIDFD)`, the
//! exec-report pipe, the same environment (none) and working directory (`/`)), block in
//! `poll(2)` on its pidfd, reap it with `waitid(P_PIDFD)`, and spawn again — `N` times, or
//! until `S` seconds have passed. With `--sleep-ms 100` it sleeps after every exit as holden
//! v0.2's event loop does (`usleep(100000)` per event).
//!
//! Three variants exist for the analysis of the gap between holden and the floor (they are
//! not the floor):
//! - `--spawn posix` starts the probe with `posix_spawn(3)` (musl and glibc use
//!   `clone(CLONE_VM | CLONE_VFORK)`: no page-table copy, no copy-on-write faults
//!   afterwards), asking for the same child set-up as holden's spawn where it can (new
//!   session, every signal to its default, empty mask, stdin on /dev/null), and opens the
//!   pidfd with `pidfd_open` (race-free here: the child is ours and not reaped until
//!   `waitid`);
//! - `--spawn shared-files` clones with `CLONE_FILES | CLONE_PIDFD` (the child starts on the
//!   parent's fd table instead of a copy of it) and the child calls
//!   `close_range(3, ~0, CLOSE_RANGE_UNSHARE)`, which gives it a fresh table holding only
//!   fds 0-2 — no per-fd copy or close — then `execve`s (a minimal child: no session, signal
//!   or stdin set-up, no exec-error report);
//! - `--ballast-kib K` first allocates and touches K KiB of heap, so that a fork has as much
//!   anonymous memory to copy as a bigger process (the orchestrator);
//! - `--ballast-fds F` first opens F close-on-exec fds, as the orchestrator holds one pidfd
//!   per live service: fork copies the fd table and the child closes them all.
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
    /// `holden::spawn::spawn`: the floor.
    Holden,
    /// `posix_spawn` + `pidfd_open` (analysis).
    Posix,
    /// `clone(CLONE_FILES)` + `close_range(CLOSE_RANGE_UNSHARE)` (analysis).
    SharedFiles,
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
     [--spawn holden|posix|shared-files] [--ballast-kib K] [--ballast-fds F]";

fn parse_args() -> Result<Args, String> {
    let mut probe = None;
    let mut records = None;
    let mut count = None;
    let mut sleep_ms = 0;
    let mut seconds_max = SECONDS_MAX_DEFAULT;
    let mut spawn = SpawnKind::Holden;
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
                    "holden" => SpawnKind::Holden,
                    "posix" => SpawnKind::Posix,
                    "shared-files" => SpawnKind::SharedFiles,
                    other => {
                        return Err(format!(
                            "--spawn: {other:?} is not holden, posix or shared-files"
                        ))
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
        .then(|| PosixSpawn::new(&argv))
        .transpose()?;
    let shared = (args.spawn == SpawnKind::SharedFiles)
        .then(|| CArgv::new(&argv))
        .transpose()?;
    let ballast = ballast(args.ballast_kib);
    let ballast_fds = ballast_fds(args.ballast_fds)?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let wall_start = Instant::now();
    let cpu_start = holden_bench::process_cpu_ns();
    let mut spawned = 0u64;
    while spawned < args.count && Instant::now() < deadline {
        let child = match (&posix, &shared) {
            (Some(p), _) => p.spawn()?,
            (_, Some(a)) => spawn_shared_files(a)?,
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

/// argv (and an empty environment) as C pointers, prepared once.
struct CArgv {
    strings: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    envp: [*const libc::c_char; 1],
}

impl CArgv {
    fn new(argv: &[&[u8]]) -> Result<CArgv, String> {
        let strings = argv
            .iter()
            .map(|a| std::ffi::CString::new(*a).map_err(|_| "NUL in argv".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(CArgv {
            strings,
            argv: ptrs,
            envp: [std::ptr::null()],
        })
    }
}

/// `clone(CLONE_FILES | CLONE_PIDFD | SIGCHLD)`; the child swaps the shared fd table for a
/// fresh one with fds 0-2 only (`close_range(3, ~0, CLOSE_RANGE_UNSHARE)`) and execs.
fn spawn_shared_files(a: &CArgv) -> Result<spawn::Spawned, String> {
    let mut pidfd: libc::c_int = -1;
    let flags = (libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, so the child runs on its own copy of our
    // memory and stack); the kernel writes the pidfd into `pidfd`. Stack, child tid and tls
    // are 0 (unused without CLONE_VM, CLONE_CHILD_SETTID, CLONE_SETTLS).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child, only raw system calls on data prepared before the clone;
        // `_exit` if exec fails.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            );
            libc::execve(a.strings[0].as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: the kernel stored a new pidfd that nothing else owns.
    let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd) };
    Ok(spawn::Spawned {
        pid: pid as libc::pid_t,
        pidfd,
    })
}
