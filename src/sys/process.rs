//! Processes: pidfds, ids, limits.

use super::{check, owned, retry};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `pidfd_open(pid, 0)` (close-on-exec). Racy for anything but the caller's own unreaped
/// children.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes (pid, flags) by value and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int)
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`; signal 0 only checks.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: no memory is passed (info = NULL): the kernel fills in the SI_USER details.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(rc as libc::c_int).map(|_| ())
}

/// What `waitid` reported of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waited {
    /// `si_code`: `CLD_EXITED`, `CLD_KILLED`, `CLD_DUMPED`.
    pub code: i32,
    /// Exit code or signal number.
    pub status: i32,
}

/// `waitid(P_PIDFD, pidfd, flags)`: what the kernel wrote, `si_pid` 0 when nothing exited.
fn waitid_pidfd(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    retry(|| {
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        check(unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        })
    })?;
    Ok(info)
}

/// `waitid(P_PIDFD, pidfd, WEXITED | (WNOHANG unless `block`))`: reaps the caller's own child
/// behind `pidfd`. `Ok(None)`: still running (only without `block`). ECHILD if it is not our
/// child, or was reaped already (by us, or by the kernel with SIGCHLD ignored).
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<Waited>> {
    let info = waitid_pidfd(pidfd, libc::WEXITED | if block { 0 } else { libc::WNOHANG })?;
    // SAFETY: waitid filled `info` (or left si_pid 0 with WNOHANG when nothing exited); the
    // accessors read the fields of the SIGCHLD union member, which is what waitid writes.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(Waited { code, status }))
}

/// Whether the process behind `pidfd` is a child of this process (running or a zombie):
/// `waitid` with `WNOWAIT` reaps nothing, and refuses (ECHILD) anyone else's process.
pub fn pidfd_is_child(pidfd: BorrowedFd<'_>) -> bool {
    waitid_pidfd(pidfd, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT).is_ok()
}

/// `PIDFD_GET_INFO` (6.13+) asking for `mask` (`PIDFD_INFO_PID`, `PIDFD_INFO_EXIT`, ...):
/// the mask the kernel answered with, the pid in our PID namespace, and the wait(2)-style
/// exit status (valid when the answer holds `PIDFD_INFO_EXIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidfdInfo {
    pub mask: u64,
    pub pid: u32,
    pub exit_code: i32,
}

/// See [`PidfdInfo`]. The kernel treats the struct as extensible, sized by the ioctl number,
/// so libc's version-0 layout works on kernels whose struct has grown.
pub fn pidfd_get_info(pidfd: BorrowedFd<'_>, mask: u64) -> io::Result<PidfdInfo> {
    // SAFETY: pidfd_info is plain data; all-zero is a valid value.
    let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
    info.mask = mask;
    // SAFETY: PIDFD_GET_INFO reads `mask` and writes at most size_of::<pidfd_info>() bytes
    // (the size encoded in the request number) into `info`, which is valid and writable.
    check(unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            libc::PIDFD_GET_INFO as _,
            &mut info as *mut libc::pidfd_info,
        )
    })?;
    Ok(PidfdInfo {
        mask: info.mask,
        pid: info.pid,
        exit_code: info.exit_code,
    })
}

/// `PIDFD_INFO_PID` as a `u64` mask bit.
pub const PIDFD_INFO_PID: u64 = libc::PIDFD_INFO_PID as u64;
/// `PIDFD_INFO_EXIT` as a `u64` mask bit.
pub const PIDFD_INFO_EXIT: u64 = libc::PIDFD_INFO_EXIT as u64;

/// Replaces this process's program (`execve`): returns only on failure. Every other thread
/// ends with the exec; fds without close-on-exec, the pid, the children and the signal mask are
/// kept.
pub fn execve(
    path: &std::ffi::CStr,
    argv: &[&std::ffi::CStr],
    envp: &[&std::ffi::CStr],
) -> io::Error {
    let mut args: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    args.push(std::ptr::null());
    let mut env: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    // SAFETY: `path` and every entry are NUL-terminated strings that outlive the call; both
    // arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), args.as_ptr(), env.as_ptr()) };
    io::Error::last_os_error()
}

/// This process's pid.
pub fn getpid() -> i32 {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// The real uid.
pub fn getuid() -> u32 {
    // SAFETY: getuid takes no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// The real gid.
pub fn getgid() -> u32 {
    // SAFETY: getgid takes no arguments and cannot fail.
    unsafe { libc::getgid() }
}

/// The limits this process was started with ([`record_starting_limits`]).
static STARTING_LIMITS: std::sync::OnceLock<[crate::spawn::Rlimit; crate::spawn::RLIMIT_COUNT]> =
    std::sync::OnceLock::new();

/// The soft and hard limit of `resource` (the kernel's number).
pub fn rlimit(resource: usize) -> io::Result<crate::spawn::Rlimit> {
    let mut limit = [0u64; 2];
    // SAFETY: prlimit64 on this process writes one rlimit64 (two u64) into `limit`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::c_long,
            resource as libc::c_long,
            std::ptr::null::<[u64; 2]>(),
            limit.as_mut_ptr(),
        )
    };
    check(rc as libc::c_int)?;
    Ok(crate::spawn::Rlimit {
        soft: limit[0],
        hard: limit[1],
    })
}

/// Records every resource limit as it is now, before the orchestrator raises its own
/// (`RLIMIT_NOFILE`): what services get back ([`starting_limits`]). The first call counts.
pub fn record_starting_limits() -> io::Result<()> {
    let mut limits = [crate::spawn::Rlimit::default(); crate::spawn::RLIMIT_COUNT];
    for (resource, limit) in limits.iter_mut().enumerate() {
        *limit = rlimit(resource)?;
    }
    let _ = STARTING_LIMITS.set(limits);
    Ok(())
}

/// The limits recorded by [`record_starting_limits`] (`None`: not recorded, e.g. an
/// orchestrator embedded in a test).
pub fn starting_limits() -> Option<&'static [crate::spawn::Rlimit; crate::spawn::RLIMIT_COUNT]> {
    STARTING_LIMITS.get()
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    #[allow(clippy::unnecessary_cast)]
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Sets the soft `RLIMIT_NOFILE` (the hard one unchanged).
pub fn set_nofile_soft(soft: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one rlimit from our stack.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }).map(|_| ())
}

/// Keeps a real-time scheduling policy from passing to children: when the calling thread runs
/// under `SCHED_FIFO` or `SCHED_RR` without `SCHED_RESET_ON_FORK`, sets that flag (same policy
/// and priority), so that every thread and process created from it afterwards starts under
/// `SCHED_OTHER` at nice 0. `Ok(Some((policy, priority)))` when it set the flag, `Ok(None)`
/// when there was nothing to do (a normal policy, or the flag already set).
pub fn keep_realtime_from_children() -> io::Result<Option<(&'static str, i32)>> {
    // Raw system calls: musl's sched_getscheduler and friends only return ENOSYS (POSIX makes
    // them per process, Linux per thread).
    // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
    let policy = check(unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) } as libc::c_int)?;
    if policy & libc::SCHED_RESET_ON_FORK != 0 {
        return Ok(None);
    }
    let name = match policy {
        libc::SCHED_FIFO => "fifo",
        libc::SCHED_RR => "rr",
        _ => return Ok(None),
    };
    // SAFETY: sched_param is plain data (musl's has more fields than glibc's, the kernel's
    // only the priority, which comes first); all-zero is valid before the kernel fills it in.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: `param` is on our stack and at least as large as the kernel's sched_param.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getparam, 0, &mut param as *mut _) };
    check(rc as libc::c_int)?;
    let with_flag = (policy | libc::SCHED_RESET_ON_FORK) as libc::c_long;
    // SAFETY: `param` is a valid sched_param; a thread may always add SCHED_RESET_ON_FORK to
    // its own policy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            with_flag,
            &param as *const _,
        )
    };
    check(rc as libc::c_int)?;
    Ok(Some((name, param.sched_priority)))
}

/// The kernel release, e.g. (6, 18); (0, 0) if unreadable.
pub fn kernel_release() -> (u32, u32) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is valid and writable.
    if unsafe { libc::uname(&mut uts) } < 0 {
        return (0, 0);
    }
    let release: [u8; 65] = uts.release.map(|c| c as u8);
    let mut parts = release.split(|&b| b == b'.' || b == b'-' || b == 0);
    let num = |p: Option<&[u8]>| {
        p.and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .unwrap_or(0)
    };
    let major = num(parts.next());
    let minor = num(parts.next());
    (major, minor)
}

/// Forks a child that exits at once with `code` (a probe); its pid. Safe in a multi-threaded
/// process: the child only calls `_exit`.
pub fn fork_exiting(code: i32) -> io::Result<i32> {
    // SAFETY: the child calls only _exit (async-signal-safe) and touches no shared state.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: _exit ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// `waitpid(pid, 0)` for our own child (EINTR retried); its wait status.
pub fn waitpid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: reaps our own child; `status` is writable.
    retry(|| check(unsafe { libc::waitpid(pid, &mut status, 0) }))?;
    Ok(status)
}
