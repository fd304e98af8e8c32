//! The child, between clone and exec: raw system calls only, no allocation, no locks, and no
//! panics by construction. The lints below reject indexing, slicing, unchecked arithmetic,
//! `unwrap`/`expect` and explicit panics in this module: a panic here would run the parent's
//! panic machinery in a copy of its address space.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use super::{
    ExecEnv, ExecPlan, SpawnError, SpawnStage, CHILD_FAILURE_EXIT_STATUS, GATE_CLOSED_EXIT_STATUS,
    GATE_GO_BYTE, GATE_READY_REPORT,
};
use libc::{c_char, c_int, c_long, c_void};

/// Highest signal number on Linux (`_NSIG`); the child resets 1..=this.
pub(super) const SIGNAL_NUMBER_MAX: c_int = 64;

/// Size of the kernel's `sigset_t` (64 signals), passed to `rt_sig*` calls.
pub(super) const KERNEL_SIGSET_BYTES: usize = 8;

/// Longest path the child can build while searching `PATH` (stack buffer).
const SEARCH_PATH_BYTES_MAX: usize = 4096;

/// The kernel's `struct sigaction` for `rt_sigaction` (x86_64 and aarch64 both have
/// `sa_restorer`). All zero means `SIG_DFL`, no flags, empty mask.
#[repr(C)]
pub(super) struct KernelSigaction {
    pub(super) handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

impl KernelSigaction {
    pub(super) const fn default() -> KernelSigaction {
        KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        }
    }
}

fn last_errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

fn fail(stage: SpawnStage) -> SpawnError {
    SpawnError::new(stage, last_errno())
}

/// What a child that shares its parent's memory and fd table is given (on the parent's
/// stack, which stays untouched while the parent is suspended by `CLONE_VFORK`).
pub(super) struct VmArgs<'a> {
    pub plan: &'a ExecPlan<'a>,
    /// The report pipe's write end, below `first`.
    pub report_fd: c_int,
    /// Every fd from here up is left behind when the table is unshared.
    pub first: c_int,
    /// A cgroup directory fd the child joins first of all (it could not be created in it), or
    /// -1.
    pub join_cgroup: c_int,
}

/// The entry of a child created with `CLONE_VM | CLONE_VFORK | CLONE_FILES`, on its own
/// stack. Its fd table is still the parent's: the first step makes it private, keeping only
/// the fds below `first`, so nothing the child does can touch the parent's fds.
pub(super) extern "C" fn vm_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `VmArgs` that `clone_vm` put on its stack; the parent is suspended
    // until this child execs or exits, so it stays valid and unchanged.
    let args = unsafe { &*(arg as *const VmArgs<'_>) };
    // Before the table is unshared: the cgroup fd lies above `first`.
    if let Err(error) = join_cgroup(args.join_cgroup) {
        report(args.report_fd, error);
    }
    // SAFETY: close_range with CLOSE_RANGE_UNSHARE gives this child a private copy of the
    // table holding only the fds below `first`; no memory is passed.
    let unshared = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            args.first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if unshared != 0 {
        // Still on the parent's table: write the report (a write changes no table) and go.
        report(args.report_fd, fail(SpawnStage::CloseFds));
    }
    if let Err(error) = redirect_output(args.plan) {
        report(args.report_fd, error);
    }
    let (mut report_fd, mut no_gate) = (args.report_fd, -1);
    if let Err(error) = place_extra(args.plan, &mut report_fd, &mut no_gate, args.first) {
        report(report_fd, error);
    }
    // The other reserved fds (other spawns' report pipes, /dev/null, the output fds just put
    // on 1 and 2, the extra fd just put on its number): not this child's.
    for fd in 3..args.first {
        if fd != report_fd && fd != args.plan.extra_target {
            // SAFETY: closes an fd of this child's private table.
            unsafe { libc::close(fd) };
        }
    }
    steps_and_exec(args.plan, report_fd, -1, false)
}

/// Puts the plan's extra fd on its number (s6's notification fd). The report pipe or the gate
/// on that very number moves first, to the lowest free number from `lowest` (close-on-exec
/// still); `dup2` clears the new number's close-on-exec flag.
fn place_extra(
    plan: &ExecPlan<'_>,
    report_fd: &mut c_int,
    gate_fd: &mut c_int,
    lowest: c_int,
) -> Result<(), SpawnError> {
    let (source, target) = (plan.extra_fd, plan.extra_target);
    if source < 0 || target <= 2 {
        return Ok(());
    }
    for fd in [report_fd, gate_fd] {
        if *fd == target {
            // SAFETY: duplicates an fd of this child's own table.
            let moved = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, lowest) };
            if moved < 0 {
                return Err(fail(SpawnStage::Stdio));
            }
            *fd = moved;
        }
    }
    // SAFETY: dup2/fcntl act on fds of this child's own table only.
    let placed = unsafe {
        if source == target {
            libc::fcntl(target, libc::F_SETFD, 0)
        } else {
            libc::dup2(source, target)
        }
    };
    if placed < 0 {
        return Err(fail(SpawnStage::Stdio));
    }
    Ok(())
}

/// Runs the child's steps, then `execve`; never returns.
pub(super) fn main(plan: &ExecPlan<'_>, report_fd: c_int, gate_fd: c_int, join: c_int) -> ! {
    let report_fd = match fd_above_stdio(report_fd) {
        Ok(fd) => fd,
        // Without a report pipe above fd 2 the failure cannot be told apart from the exec;
        // the parent sees EOF, the pidfd shows exit 127.
        Err(_) => exit(CHILD_FAILURE_EXIT_STATUS),
    };
    if let Err(error) = join_cgroup(join) {
        report(report_fd, error);
    }
    let gate_fd = if gate_fd < 0 {
        -1
    } else {
        match fd_above_stdio(gate_fd) {
            Ok(fd) => fd,
            Err(error) => report(report_fd, error),
        }
    };
    steps_and_exec(plan, report_fd, gate_fd, true)
}

/// The child's steps from signals to `execve` (closing inherited fds when `close` is set).
fn steps_and_exec(plan: &ExecPlan<'_>, report_fd: c_int, gate_fd: c_int, close: bool) -> ! {
    let (mut report_fd, mut gate_fd) = (report_fd, gate_fd);
    let result = reset_signals(plan.reset_signals)
        .and_then(|()| setsid())
        .and_then(|()| {
            if close {
                redirect_output(plan)?;
                place_extra(plan, &mut report_fd, &mut gate_fd, 3)?;
                close_fds([report_fd, gate_fd, plan.extra_target])
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdio_devnull(plan.stdio_null))
        // After the fds are closed (the brute-force close reads RLIMIT_NOFILE) and before
        // the credentials change (raising a limit, a real-time policy or a lower OOM score
        // may need the spawner's privileges).
        .and_then(|()| exec_env(plan.exec))
        // Needs CAP_SETPCAP, which a change to a non-root user takes away.
        .and_then(|()| cap_bounding(plan.exec))
        .and_then(|()| keep_caps(plan))
        .and_then(|()| credentials(plan))
        .and_then(|()| ambient(plan))
        .and_then(|()| no_new_privs(plan.exec))
        .and_then(|()| chdir(plan))
        .and_then(|()| unblock_signals());
    if let Err(error) = result {
        report(report_fd, error);
    }
    if gate_fd >= 0 {
        wait_at_gate(report_fd, gate_fd);
    }
    let error = exec(plan);
    report(report_fd, error)
}

/// Says "set-up done" through the report pipe, then blocks until the parent sends the
/// go-ahead byte. Anything else — EOF because every copy of the parent's end closed (abort, or
/// the parent died), a wrong byte, an error — ends the child with `GATE_CLOSED_EXIT_STATUS`
/// without exec. Signals are already default and unblocked here, so a SIGTERM ends a child at
/// the gate.
fn wait_at_gate(report_fd: c_int, gate_fd: c_int) {
    // SAFETY: writes 8 bytes from a constant; atomic (< PIPE_BUF).
    let written = unsafe {
        libc::write(
            report_fd,
            GATE_READY_REPORT.as_ptr().cast::<c_void>(),
            GATE_READY_REPORT.len(),
        )
    };
    if written != GATE_READY_REPORT.len() as isize {
        exit(GATE_CLOSED_EXIT_STATUS);
    }
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads at most one byte into our stack buffer.
        let n = unsafe { libc::read(gate_fd, byte.as_mut_ptr().cast::<c_void>(), 1) };
        if n == 1 && byte == [GATE_GO_BYTE] {
            return;
        }
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        exit(GATE_CLOSED_EXIT_STATUS);
    }
}

/// Moves this child into the cgroup whose directory is `dir` (nothing for -1): writes `0`
/// (the writer itself) to its `cgroup.procs`. Used only where `CLONE_INTO_CGROUP` could not
/// create the child there.
fn join_cgroup(dir: c_int) -> Result<(), SpawnError> {
    if dir < 0 {
        return Ok(());
    }
    // SAFETY: the name is a NUL-terminated constant; openat returns a new fd or -1.
    let procs = unsafe {
        libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if procs < 0 {
        return Err(fail(SpawnStage::Cgroup));
    }
    // SAFETY: writes one byte from a constant.
    let written = unsafe { libc::write(procs, b"0".as_ptr().cast::<c_void>(), 1) };
    let result = if written == 1 {
        Ok(())
    } else {
        Err(fail(SpawnStage::Cgroup))
    };
    // SAFETY: closes the fd opened above, which nothing else knows.
    unsafe { libc::close(procs) };
    result
}

fn exit(status: c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(status) }
}

fn report(report_fd: c_int, error: SpawnError) -> ! {
    let buf = error.to_report();
    // SAFETY: writes 8 bytes from our stack buffer; a pipe write of less than PIPE_BUF bytes
    // is atomic, so the parent reads all or nothing.
    unsafe { libc::write(report_fd, buf.as_ptr().cast::<c_void>(), buf.len()) };
    exit(CHILD_FAILURE_EXIT_STATUS)
}

/// Moves a pipe/socket the child keeps above fd 2 if the parent had 0–2 closed.
fn fd_above_stdio(fd: c_int) -> Result<c_int, SpawnError> {
    if fd > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we own onto the lowest free fd >= 3; no memory
    // is passed.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(fail(SpawnStage::ReportFd));
    }
    Ok(moved)
}

/// Sets to `SIG_DFL` every signal whose bit (`1 << (signal - 1)`) is in `which`.
fn reset_signals(which: u64) -> Result<(), SpawnError> {
    let default = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=SIGNAL_NUMBER_MAX {
        if signal == libc::SIGKILL
            || signal == libc::SIGSTOP
            || which & 1u64.wrapping_shl((signal as u32).wrapping_sub(1)) == 0
        {
            continue;
        }
        // SAFETY: rt_sigaction reads `default`, a valid kernel sigaction on our stack; the old
        // action is not requested. Errors are ignored: a signal the kernel refuses to change
        // has nothing to reset.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal as c_long,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                KERNEL_SIGSET_BYTES,
            )
        };
    }
    // SAFETY: PR_SET_PDEATHSIG 0 clears the parent-death signal (already clear after a clone;
    // explicit because spawned processes must outlive us).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong) };
    Ok(())
}

fn unblock_signals() -> Result<(), SpawnError> {
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads our 8-byte empty set; no old set requested. It cannot fail
    // with these arguments; the result is ignored.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as c_long,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    Ok(())
}

fn setsid() -> Result<(), SpawnError> {
    // SAFETY: setsid takes no arguments; the fresh child is never a group leader, so it
    // succeeds.
    if unsafe { libc::setsid() } < 0 {
        return Err(fail(SpawnStage::Setsid));
    }
    Ok(())
}

fn close_range(first: c_int, last: c_int) -> Result<(), i32> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range closes fds of this (single-threaded) child only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// Closes every fd above 2 except those in `keep` (-1 or a number up to 2: none).
fn close_fds(mut keep: [c_int; 3]) -> Result<(), SpawnError> {
    keep.sort_unstable();
    let mut from: c_int = 3;
    let mut ranged = Ok(());
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        if ranged.is_ok() && fd > from {
            ranged = close_range(from, fd.saturating_sub(1));
        }
        from = from.max(fd.saturating_add(1));
    }
    let ranged = ranged.and_then(|()| close_range(from, c_int::MAX));
    match ranged {
        Ok(()) => Ok(()),
        Err(libc::ENOSYS) => close_fds_brute(keep),
        Err(errno) => Err(SpawnError::new(SpawnStage::CloseFds, errno)),
    }
}

/// Fallback for kernels before 5.9: close every fd up to the soft `RLIMIT_NOFILE` limit one by
/// one (slow with a large limit, but correct for every fd the process could have opened under
/// that limit).
fn close_fds_brute(keep: [c_int; 3]) -> Result<(), SpawnError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills our rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(fail(SpawnStage::CloseFds));
    }
    let last = limit.rlim_cur.min(c_int::MAX as libc::rlim_t) as c_int;
    for fd in 3..last {
        if !keep.contains(&fd) {
            // SAFETY: closing an fd number in our own fd table; EBADF for numbers that are not
            // open is expected and ignored.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Puts the plan's output fds on stdout and stderr (`dup2` clears their close-on-exec flag).
fn redirect_output(plan: &ExecPlan<'_>) -> Result<(), SpawnError> {
    for (fd, target) in [(plan.stdout_fd, 1), (plan.stderr_fd, 2)] {
        // SAFETY: dup2 acts on fds of this child's own table only.
        if fd > 2 && unsafe { libc::dup2(fd, target) } < 0 {
            return Err(fail(SpawnStage::Stdio));
        }
    }
    Ok(())
}

/// Puts `/dev/null` on stdin, and on stdout and stderr when `all` is set.
fn stdio_devnull(all: bool) -> Result<(), SpawnError> {
    let targets: &[c_int] = if all { &[0, 1, 2] } else { &[0] };
    // SAFETY: opens a constant NUL-terminated path; dup2/close act on our own fds.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd < 0 {
            return Err(fail(SpawnStage::Stdin));
        }
        for &target in targets {
            if fd != target && libc::dup2(fd, target) < 0 {
                return Err(fail(SpawnStage::Stdin));
            }
        }
        if fd > 2 {
            libc::close(fd);
        }
    }
    Ok(())
}

/// The kernel's `struct rlimit64`.
#[repr(C)]
struct KernelRlimit {
    cur: u64,
    max: u64,
}

/// Limits, nice, scheduling, affinity, OOM score and umask, in that order; each only when set.
fn exec_env(env: &ExecEnv) -> Result<(), SpawnError> {
    for (resource, limit) in env.rlimits.iter().enumerate() {
        let Some(limit) = limit else {
            continue;
        };
        let value = KernelRlimit {
            cur: limit.soft,
            max: limit.hard,
        };
        // SAFETY: prlimit64 on this process (pid 0) reads one rlimit64 from our stack; the
        // old value is not asked for.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0 as c_long,
                resource as c_long,
                &value as *const KernelRlimit,
                std::ptr::null_mut::<KernelRlimit>(),
            )
        };
        if rc != 0 {
            let resource = u16::try_from(resource).unwrap_or(u16::MAX);
            return Err(SpawnError::with_detail(
                SpawnStage::Rlimit,
                last_errno(),
                resource,
            ));
        }
    }
    if let Some(nice) = env.nice {
        // SAFETY: setpriority with integer arguments, for this process only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setpriority,
                libc::PRIO_PROCESS as c_long,
                0 as c_long,
                c_long::from(nice),
            )
        };
        if rc != 0 {
            return Err(fail(SpawnStage::Nice));
        }
    }
    if let Some((policy, priority)) = env.sched {
        let param: [c_int; 1] = [c_int::from(priority)];
        // SAFETY: sched_setscheduler on this thread (0) reads the kernel's one-int
        // sched_param from our stack.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0 as c_long,
                c_long::from(policy.number()),
                param.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(fail(SpawnStage::Sched));
        }
    }
    if let Some(cpus) = &env.cpu_affinity {
        let words = cpus.words();
        // SAFETY: sched_setaffinity on this thread (0) reads `size_of_val(words)` bytes of
        // the mask from the plan, which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                0 as c_long,
                std::mem::size_of_val(words),
                words.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(fail(SpawnStage::Affinity));
        }
    }
    if let Some(adj) = &env.oom_score_adj {
        oom_score_adj(adj.text())?;
    }
    if let Some(mask) = env.umask {
        // SAFETY: umask takes an integer and cannot fail; this child has its own fs_struct
        // (no CLONE_FS), so the spawner's umask is unchanged.
        unsafe { libc::syscall(libc::SYS_umask, mask as c_long) };
    }
    Ok(())
}

/// Writes `text` to `/proc/self/oom_score_adj`. A child that shares the spawner's memory
/// (`CLONE_VM | CLONE_VFORK`) changes only its own score: the kernel leaves the other users of
/// the mm alone for a vfork child.
fn oom_score_adj(text: &[u8]) -> Result<(), SpawnError> {
    // SAFETY: opens a constant NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(fail(SpawnStage::OomScoreAdj));
    }
    // SAFETY: writes `text` (a slice of the plan) to the fd opened above.
    let written = unsafe { libc::write(fd, text.as_ptr().cast::<c_void>(), text.len()) };
    let result = if written == text.len() as isize {
        Ok(())
    } else {
        Err(fail(SpawnStage::OomScoreAdj))
    };
    // SAFETY: closes the fd opened above, which nothing else knows.
    unsafe { libc::close(fd) };
    result
}

/// Drops every capability not in `cap_bounding` from the bounding set, up to the last one
/// the kernel knows (`EINVAL` past it).
fn cap_bounding(env: &ExecEnv) -> Result<(), SpawnError> {
    let Some(keep) = env.cap_bounding else {
        return Ok(());
    };
    for cap in 0u32..64 {
        if keep & 1u64.wrapping_shl(cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments; changes this thread's bounding set.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            let errno = last_errno();
            if errno == libc::EINVAL {
                break;
            }
            return Err(SpawnError::with_detail(
                SpawnStage::CapBounding,
                errno,
                cap as u16,
            ));
        }
    }
    Ok(())
}

/// With ambient capabilities and a change to a non-root user: keep the permitted set across
/// the `setresuid` (`PR_SET_KEEPCAPS`, cleared again by `execve`).
fn keep_caps(plan: &ExecPlan<'_>) -> Result<(), SpawnError> {
    if plan.exec.cap_ambient.is_none() || plan.uid.is_none() {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments; sets a flag of this thread.
    if unsafe {
        libc::prctl(
            libc::PR_SET_KEEPCAPS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0
    {
        return Err(fail(SpawnStage::Capabilities));
    }
    Ok(())
}

/// The kernel's `__user_cap_header_struct` and `__user_cap_data_struct` (version 3: two).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Puts the ambient capabilities into the inheritable set (and, for a non-root user, makes
/// them the whole permitted and effective sets), then raises each into the ambient set.
fn ambient(plan: &ExecPlan<'_>) -> Result<(), SpawnError> {
    let Some(caps) = plan.exec.cap_ambient else {
        return Ok(());
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let empty = CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let mut data = [empty; 2];
    // SAFETY: capget fills two cap data structs on our stack for this thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(fail(SpawnStage::Capabilities));
    }
    let halves = [caps as u32, (caps >> 32) as u32];
    let non_root = plan.uid.is_some_and(|uid| uid != 0);
    for (word, half) in data.iter_mut().zip(halves) {
        word.inheritable |= half;
        if non_root {
            word.permitted = half;
            word.effective = half;
        }
    }
    // SAFETY: capset reads the header and two cap data structs from our stack.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(fail(SpawnStage::Capabilities));
    }
    for cap in 0u32..64 {
        if caps & 1u64.wrapping_shl(cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments; changes this thread's ambient set.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(SpawnError::with_detail(
                SpawnStage::Ambient,
                last_errno(),
                cap as u16,
            ));
        }
    }
    Ok(())
}

fn no_new_privs(env: &ExecEnv) -> Result<(), SpawnError> {
    if !env.no_new_privs {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments; sets a flag of this thread.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(fail(SpawnStage::NoNewPrivs));
    }
    Ok(())
}

fn credentials(plan: &ExecPlan<'_>) -> Result<(), SpawnError> {
    let supplementary = plan.exec.groups.as_ref();
    if plan.uid.is_none() && plan.gid.is_none() && supplementary.is_none() {
        return Ok(());
    }
    // SAFETY: geteuid/getegid take no arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // The primary group, then the supplementary ones: set as root, and always when some are
    // configured (an unprivileged spawner then fails with EPERM, reported).
    if euid == 0 || supplementary.is_some() {
        let mut groups: [libc::gid_t; super::GROUPS_MAX + 1] = [0; super::GROUPS_MAX + 1];
        let extra = supplementary.map_or(&[][..], |g| g.as_slice());
        let mut count: usize = 0;
        let list = std::iter::once(plan.gid.unwrap_or(egid)).chain(extra.iter().copied());
        for (slot, gid) in groups.iter_mut().zip(list) {
            *slot = gid;
            count = count.saturating_add(1);
        }
        // SAFETY: raw setgroups (thread-local in the kernel; the libc wrapper would try to
        // signal threads that do not exist in this child). Reads `count` gids from our
        // stack (at most its length, by the zip above).
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, count as c_long, groups.as_ptr()) };
        if rc != 0 {
            return Err(fail(SpawnStage::Setgroups));
        }
    }
    if let Some(gid) = plan.gid {
        // SAFETY: raw setresgid with integer arguments (see setgroups).
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        if rc != 0 {
            return Err(fail(SpawnStage::Setgid));
        }
    }
    if let Some(uid) = plan.uid {
        // SAFETY: raw setresuid with integer arguments (see setgroups).
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if rc != 0 {
            return Err(fail(SpawnStage::Setuid));
        }
    }
    Ok(())
}

fn chdir(plan: &ExecPlan<'_>) -> Result<(), SpawnError> {
    let Some(address) = plan.cwd else {
        return Ok(());
    };
    // SAFETY: `address` points to a NUL-terminated string inside `plan.strings` (checked by
    // `ExecPlan::is_valid` before the clone).
    if unsafe { libc::chdir(address as *const c_char) } != 0 {
        return Err(fail(SpawnStage::Chdir));
    }
    Ok(())
}

/// Executes the program; returns only on failure, with the error to report.
fn exec(plan: &ExecPlan<'_>) -> SpawnError {
    // With `watchdog_pid` the environment is the plan's plus our own entry, on this stack:
    // the plan's memory may be the parent's (`CLONE_VM`) and is never written.
    let mut own_envp = [0usize; PID_ENV_ENTRIES_MAX + 2];
    let mut own_entry = [0u8; 40];
    let envp = if plan.exec.watchdog_pid {
        match with_watchdog_pid(plan, &mut own_envp, &mut own_entry) {
            Ok(()) => &own_envp[..],
            Err(error) => return error,
        }
    } else {
        plan.envp
    };
    if plan.program_name.contains(&b'/') {
        execve(plan.program as *const c_char, plan, envp);
        return fail(SpawnStage::Exec);
    }
    SpawnError::new(SpawnStage::Exec, exec_search(plan, envp))
}

/// Most environment entries of a child that adds `WATCHDOG_PID` (its envp is copied onto its
/// stack); more is `E2BIG` at the exec.
pub(super) const PID_ENV_ENTRIES_MAX: usize = 1024;

/// Fills `envp` with the plan's entries but a `WATCHDOG_PID=` one, then `entry` written as
/// `WATCHDOG_PID=<our pid>`, then 0 (the rest of `envp` is 0 already). Panic-free, like every
/// step of the child.
fn with_watchdog_pid(
    plan: &ExecPlan<'_>,
    envp: &mut [usize; PID_ENV_ENTRIES_MAX + 2],
    entry: &mut [u8; 40],
) -> Result<(), SpawnError> {
    const NAME: &[u8] = b"WATCHDOG_PID=";
    let too_many = SpawnError::new(SpawnStage::Exec, libc::E2BIG);
    let base = plan.strings.as_ptr() as usize;
    let kept = plan
        .envp
        .iter()
        .take_while(|&&addr| addr != 0)
        .filter(|&&addr| {
            !plan
                .strings
                .get(addr.wrapping_sub(base)..)
                .is_some_and(|s| s.starts_with(NAME))
        });
    // Two slots stay: our entry and the terminating 0.
    let mut slots = envp.iter_mut().take(PID_ENV_ENTRIES_MAX);
    for &addr in kept {
        *slots.next().ok_or(too_many)? = addr;
    }
    let ours = slots.next().ok_or(too_many)?;
    // SAFETY: getpid takes nothing; the raw call, as this child may share memory with its
    // parent (a cached pid would be the parent's).
    let pid = unsafe { libc::syscall(libc::SYS_getpid) } as u64;
    let mut digits = [0u8; 20];
    let mut rest = pid;
    let mut len = 0usize;
    for slot in digits.iter_mut().rev() {
        *slot = b'0'.wrapping_add(rest.wrapping_rem(10) as u8);
        rest = rest.wrapping_div(10);
        len = len.wrapping_add(1);
        if rest == 0 {
            break;
        }
    }
    let number = digits.get(digits.len().wrapping_sub(len)..).unwrap_or(&[]);
    let text = NAME.iter().chain(number).chain(&[0u8]);
    for (slot, &byte) in entry.iter_mut().zip(text) {
        *slot = byte;
    }
    *ours = entry.as_ptr() as usize;
    Ok(())
}

fn execve(path: *const c_char, plan: &ExecPlan<'_>, envp: &[usize]) {
    // SAFETY: `path` is NUL-terminated (a plan string or our search buffer); argv and envp are
    // NULL-terminated arrays of addresses of NUL-terminated strings inside `plan.strings` or
    // this child's stack (checked by `ExecPlan::is_valid`, written by `with_watchdog_pid`),
    // laid out as `*const c_char` (same size as usize).
    unsafe {
        libc::execve(
            path,
            plan.argv.as_ptr().cast::<*const c_char>(),
            envp.as_ptr().cast::<*const c_char>(),
        );
    }
}

/// Writes `dir/name` and a NUL into `buf`; `false` when it does not fit.
fn join_path(buf: &mut [u8; SEARCH_PATH_BYTES_MAX], dir: &[u8], name: &[u8]) -> bool {
    let mut slots = buf.iter_mut();
    for &byte in dir.iter().chain(b"/").chain(name).chain(&[0u8]) {
        match slots.next() {
            Some(slot) => *slot = byte,
            None => return false,
        }
    }
    true
}

/// Searches the program name in the plan's search path, like `execvpe` but without the
/// `/bin/sh` retry on ENOEXEC. Returns the errno to report: EACCES if some candidate was not
/// executable and none ran, else the last "not found" error, or at once any other error (the
/// file exists but cannot run).
fn exec_search(plan: &ExecPlan<'_>, envp: &[usize]) -> i32 {
    let name = plan.program_name;
    if name.is_empty() {
        return libc::ENOENT;
    }
    let mut buf = [0u8; SEARCH_PATH_BYTES_MAX];
    let mut saw_eacces = false;
    let mut last = libc::ENOENT;
    for dir in plan.search_path.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        if !join_path(&mut buf, dir, name) {
            last = libc::ENAMETOOLONG;
            continue;
        }
        execve(buf.as_ptr().cast(), plan, envp);
        match last_errno() {
            libc::EACCES => saw_eacces = true,
            errno @ (libc::ENOENT
            | libc::ENOTDIR
            | libc::ESTALE
            | libc::ENODEV
            | libc::ETIMEDOUT) => last = errno,
            errno => return errno,
        }
    }
    if saw_eacces {
        libc::EACCES
    } else {
        last
    }
}
