//! Creating a child race-free: `clone3(CLONE_PIDFD)` (fallback `clone(CLONE_PIDFD)`), and
//! what the child does before `execve` (in [`child`], which cannot panic).
//!
//! The caller (`crate::spawn`) prepares an [`ExecPlan`]: NUL-terminated strings back to back
//! and NULL-terminated address arrays for `argv` and `envp`. [`clone_child`] validates that
//! every address lies inside the strings, blocks every signal around the clone (so no parent
//! handler can run in the child), and returns the child's pid and pidfd in the parent; the
//! child runs [`child::main`] and never returns.

mod child;
mod exec_env;

pub use exec_env::{
    capability_number, CpuSet, ExecEnv, Groups, OomScoreAdj, Rlimit, SchedPolicy, CAPABILITY_NAMES,
    CPU_MAX, CPU_SET_WORDS, GROUPS_MAX, RLIMIT_COUNT, RLIMIT_NAMES, RLIM_INFINITY,
};

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `clone3` answered `ENOSYS`; later spawns go straight to `clone`.
static CLONE3_UNAVAILABLE: AtomicBool = AtomicBool::new(false);
/// Set once `clone3` refused the version-2 `clone_args` with `CLONE_INTO_CGROUP` (`E2BIG`: a
/// kernel older than 5.7); later children join their cgroup themselves (`cgroup.procs`).
static INTO_CGROUP_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Size of `clone_args` version 0 (64 bytes): what every kernel with clone3 accepts.
const CLONE_ARGS_SIZE_VER0: usize = 64;
/// Size of `clone_args` version 2 (88 bytes, with `set_tid` and `cgroup`): Linux 5.7+.
const CLONE_ARGS_SIZE_VER2: usize = 88;
const _: () = assert!(std::mem::size_of::<libc::clone_args>() >= CLONE_ARGS_SIZE_VER2);

/// Exit status of a child whose set-up or exec failed (as the shells use).
pub const CHILD_FAILURE_EXIT_STATUS: i32 = 127;

/// Exit status of a gated child whose gate closed without the go-ahead: it ends *without*
/// calling `execve`, so the requested program never ran.
pub const GATE_CLOSED_EXIT_STATUS: i32 = 125;

/// The one byte that opens a child's gate.
pub const GATE_GO_BYTE: u8 = b'g';

/// Size of the child's report on the pipe: `u32` stage, `i32` errno.
pub const REPORT_BYTES: usize = 8;

/// The report a gated child writes when its set-up is done and it waits at the gate: stage 0
/// is no [`SpawnStage`], so it cannot be mistaken for an error.
pub const GATE_READY_REPORT: [u8; REPORT_BYTES] = [0; REPORT_BYTES];

/// Where a spawn failed. The numeric values travel through the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SpawnStage {
    /// The spec was incomplete (no argv, or a builder error was ignored).
    Prepare = 1,
    /// `pipe2` for the exec report failed (in the parent).
    Pipe = 2,
    /// `clone3`/`clone` failed (in the parent), e.g. `EAGAIN`, `ENOMEM`.
    Clone = 3,
    /// Moving the report pipe above fd 2 failed (in the child).
    ReportFd = 4,
    /// `setsid` failed (in the child).
    Setsid = 5,
    /// Closing inherited fds failed (in the child).
    CloseFds = 6,
    /// Putting `/dev/null` on stdin (and stdout/stderr if asked) failed (in the child).
    Stdin = 7,
    /// `setgroups` failed (in the child).
    Setgroups = 8,
    /// `setgid` failed (in the child).
    Setgid = 9,
    /// `setuid` failed (in the child).
    Setuid = 10,
    /// `chdir` to the requested working directory failed (in the child).
    Chdir = 11,
    /// `execve` failed (in the child): `ENOENT`, `EACCES`, `ENOEXEC`…
    Exec = 12,
    /// Reading the child's report failed, or it was malformed (in the parent).
    Report = 13,
    /// A gated child was gone before its go-ahead could be given (in the parent; typically
    /// `EPIPE`: it was killed at the gate).
    Gate = 14,
    /// Putting the given fds on stdout/stderr, or the notification fd on its number (`dup2`),
    /// failed (in the child).
    Stdio = 15,
    /// Joining the service's cgroup failed: the child's write of its pid to `cgroup.procs`, on
    /// a kernel without `CLONE_INTO_CGROUP` (in the child; a failed `clone3` into the cgroup is
    /// [`SpawnStage::Clone`]).
    Cgroup = 16,
    /// `prlimit64` of a configured or restored resource limit failed (in the child).
    Rlimit = 17,
    /// `setpriority` (nice) failed (in the child).
    Nice = 18,
    /// `sched_setscheduler` failed (in the child), e.g. `EPERM` for a real-time policy
    /// without `CAP_SYS_NICE` or `RLIMIT_RTPRIO`.
    Sched = 19,
    /// `sched_setaffinity` failed (in the child): `EINVAL` when no CPU of the set is online.
    Affinity = 20,
    /// Writing `/proc/self/oom_score_adj` failed (in the child): `EACCES` lowering it
    /// without `CAP_SYS_RESOURCE`.
    OomScoreAdj = 21,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed (in the child).
    NoNewPrivs = 22,
    /// Dropping a capability from the bounding set failed (in the child; `EPERM` without
    /// `CAP_SETPCAP`).
    CapBounding = 23,
    /// Keeping or setting the capabilities for the ambient set failed (`PR_SET_KEEPCAPS`,
    /// `capset`; in the child).
    Capabilities = 24,
    /// Raising an ambient capability failed (in the child; `EINVAL` before 4.3, or a
    /// capability not permitted).
    Ambient = 25,
}

impl SpawnStage {
    /// Every stage, for exhaustive tests and decoders.
    pub const ALL: [SpawnStage; 25] = [
        SpawnStage::Prepare,
        SpawnStage::Pipe,
        SpawnStage::Clone,
        SpawnStage::ReportFd,
        SpawnStage::Setsid,
        SpawnStage::CloseFds,
        SpawnStage::Stdin,
        SpawnStage::Setgroups,
        SpawnStage::Setgid,
        SpawnStage::Setuid,
        SpawnStage::Chdir,
        SpawnStage::Exec,
        SpawnStage::Report,
        SpawnStage::Gate,
        SpawnStage::Stdio,
        SpawnStage::Cgroup,
        SpawnStage::Rlimit,
        SpawnStage::Nice,
        SpawnStage::Sched,
        SpawnStage::Affinity,
        SpawnStage::OomScoreAdj,
        SpawnStage::NoNewPrivs,
        SpawnStage::CapBounding,
        SpawnStage::Capabilities,
        SpawnStage::Ambient,
    ];

    /// Short lower-case name, as used in logs and error texts.
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnStage::Prepare => "prepare",
            SpawnStage::Pipe => "pipe",
            SpawnStage::Clone => "clone",
            SpawnStage::ReportFd => "report-fd",
            SpawnStage::Setsid => "setsid",
            SpawnStage::CloseFds => "close-fds",
            SpawnStage::Stdin => "stdin",
            SpawnStage::Setgroups => "setgroups",
            SpawnStage::Setgid => "setgid",
            SpawnStage::Setuid => "setuid",
            SpawnStage::Chdir => "chdir",
            SpawnStage::Exec => "exec",
            SpawnStage::Report => "report",
            SpawnStage::Gate => "gate",
            SpawnStage::Stdio => "stdio",
            SpawnStage::Cgroup => "cgroup",
            SpawnStage::Rlimit => "rlimit",
            SpawnStage::Nice => "nice",
            SpawnStage::Sched => "sched",
            SpawnStage::Affinity => "affinity",
            SpawnStage::OomScoreAdj => "oom-score-adj",
            SpawnStage::NoNewPrivs => "no-new-privs",
            SpawnStage::CapBounding => "cap-bounding",
            SpawnStage::Capabilities => "capabilities",
            SpawnStage::Ambient => "ambient",
        }
    }

    /// True for stages that run in the child after the clone succeeded.
    pub fn is_in_child(self) -> bool {
        !matches!(
            self,
            SpawnStage::Prepare
                | SpawnStage::Pipe
                | SpawnStage::Clone
                | SpawnStage::Report
                | SpawnStage::Gate
        )
    }

    /// True for the credential stages (the caller may map them to "permission").
    pub fn is_credentials(self) -> bool {
        matches!(
            self,
            SpawnStage::Setgroups | SpawnStage::Setgid | SpawnStage::Setuid
        )
    }

    /// The stage with this report number.
    pub fn from_u32(value: u32) -> Option<SpawnStage> {
        SpawnStage::ALL.iter().copied().find(|s| *s as u32 == value)
    }
}

impl fmt::Display for SpawnStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed spawn: the stage that failed and the `errno` it failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnError {
    pub stage: SpawnStage,
    pub errno: i32,
    /// What the stage was about, when it has several: for [`SpawnStage::Rlimit`], the
    /// resource (the kernel's number, [`RLIMIT_NAMES`]); for [`SpawnStage::CapBounding`] and
    /// [`SpawnStage::Ambient`], the capability; else 0.
    pub detail: u16,
}

impl SpawnError {
    /// A failure at `stage` with `errno`.
    pub fn new(stage: SpawnStage, errno: i32) -> SpawnError {
        SpawnError {
            stage,
            errno,
            detail: 0,
        }
    }

    /// A failure at `stage` about `detail` (see [`SpawnError::detail`]).
    pub fn with_detail(stage: SpawnStage, errno: i32, detail: u16) -> SpawnError {
        SpawnError {
            stage,
            errno,
            detail,
        }
    }

    /// The resource a [`SpawnStage::Rlimit`] failure was about (`"nofile"`), else `None`.
    pub fn resource(&self) -> Option<&'static str> {
        (self.stage == SpawnStage::Rlimit)
            .then(|| RLIMIT_NAMES.get(usize::from(self.detail)).copied())
            .flatten()
    }

    /// The capability a [`SpawnStage::CapBounding`] or [`SpawnStage::Ambient`] failure was
    /// about (`"net_bind_service"`), else `None`.
    pub fn capability(&self) -> Option<&'static str> {
        matches!(self.stage, SpawnStage::CapBounding | SpawnStage::Ambient)
            .then(|| CAPABILITY_NAMES.get(usize::from(self.detail)).copied())
            .flatten()
    }

    /// Encodes it as the child's report: the stage in the low 16 bits of the first word, the
    /// detail in the high ones.
    pub fn to_report(self) -> [u8; REPORT_BYTES] {
        let mut buf = [0u8; REPORT_BYTES];
        let (stage, errno) = buf.split_at_mut(4);
        let word = (self.stage as u32) | (u32::from(self.detail) << 16);
        stage.copy_from_slice(&word.to_ne_bytes());
        errno.copy_from_slice(&self.errno.to_ne_bytes());
        buf
    }

    /// Decodes a child's report (an unknown stage reads as [`SpawnStage::Report`]).
    pub fn from_report(buf: [u8; REPORT_BYTES]) -> SpawnError {
        let word = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        match SpawnStage::from_u32(word & 0xffff) {
            Some(stage) => SpawnError::with_detail(stage, errno, (word >> 16) as u16),
            None => SpawnError::new(SpawnStage::Report, errno),
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        match self.resource().or(self.capability()) {
            Some(what) => write!(f, "spawn failed at {} ({what}): {}", self.stage, os),
            None => write!(f, "spawn failed at {}: {}", self.stage, os),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Everything the child needs, prepared before the clone. Addresses are `usize` (the caller
/// keeps no raw pointers): each must lie inside `strings`, which holds NUL-terminated strings
/// back to back and ends with a NUL; [`clone_child`] checks that before it clones.
#[derive(Clone, Copy, Debug)]
pub struct ExecPlan<'a> {
    /// Every string, each NUL-terminated.
    pub strings: &'a [u8],
    /// Addresses of the argv strings, then 0.
    pub argv: &'a [usize],
    /// Addresses of the environment strings, then 0.
    pub envp: &'a [usize],
    /// Address of the program to execute.
    pub program: usize,
    /// The program's bytes (without NUL): searched in `search_path` unless it has a `/`.
    pub program_name: &'a [u8],
    /// `:`-separated directories to search.
    pub search_path: &'a [u8],
    /// Address of the working directory, if one is set.
    pub cwd: Option<usize>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Put stdout and stderr on `/dev/null` too (stdin always is).
    pub stdio_null: bool,
    /// An fd (above 2) the child puts on its stdout, and one for its stderr; -1 leaves the
    /// inherited one. With [`clone_vm`] they must be numbers in `3..first`.
    pub stdout_fd: libc::c_int,
    pub stderr_fd: libc::c_int,
    /// An fd the child gets on its own number `extra_target` (s6's notification fd), or -1;
    /// as the output fds, a number in `3..first` with [`clone_vm`]. `extra_target` is above 2.
    pub extra_fd: libc::c_int,
    pub extra_target: libc::c_int,
    /// Signals the child sets to `SIG_DFL` before `execve`, one bit each
    /// (`1 << (signal - 1)`): those that are not at their default in this process
    /// ([`signals_to_reset`]). The others are already default in the child, which inherits
    /// them.
    pub reset_signals: u64,
    /// A cgroup v2 directory fd the child is created in (`CLONE_INTO_CGROUP`), or joins as its
    /// first step on a kernel without it; -1: the spawner's cgroup.
    pub cgroup_fd: libc::c_int,
    /// Limits, scheduling, affinity, OOM score, umask, groups, `no_new_privs`.
    pub exec: &'a ExecEnv,
}

/// The signals whose disposition in this process is not `SIG_DFL` (ignored, or with a
/// handler), one bit each as in [`ExecPlan::reset_signals`]; a signal the kernel does not
/// answer for counts as not default. 62 `rt_sigaction` queries: spawns take it from
/// [`signals_to_reset`], which looks again only after a change.
pub fn dispositions_not_default() -> u64 {
    let mut which = 0u64;
    for signal in 1..=child::SIGNAL_NUMBER_MAX {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let mut old = child::KernelSigaction::default();
        // SAFETY: rt_sigaction with no new action only writes the current one into `old`, a
        // kernel sigaction on our stack.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal as libc::c_long,
                std::ptr::null::<child::KernelSigaction>(),
                &mut old as *mut child::KernelSigaction,
                child::KERNEL_SIGSET_BYTES,
            )
        };
        if rc != 0 || old.handler != 0 {
            which |= 1u64 << (signal - 1);
        }
    }
    which
}

/// [`ExecPlan::reset_signals`] for a spawn now: [`dispositions_not_default`], looked up again
/// only when [`super::signal::disposition_changes`] moved since the last look (one answer for
/// the whole process, shared by every spawning thread). A child then makes one
/// `rt_sigaction` per signal that is not at its default (SIGPIPE, ignored by the Rust
/// runtime: usually that one) instead of 62.
pub fn signals_to_reset() -> u64 {
    // (disposition changes when looked, the answer then); `None` before the first spawn.
    static LAST: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);
    // Read before the look: a change during it makes the next spawn look again.
    let changes = super::signal::disposition_changes();
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match *last {
        Some((at, which)) if at == changes => which,
        _ => {
            let which = dispositions_not_default();
            *last = Some((changes, which));
            which
        }
    }
}

impl ExecPlan<'_> {
    fn inside(&self, address: usize) -> bool {
        let base = self.strings.as_ptr() as usize;
        address >= base && address < base + self.strings.len()
    }

    fn terminated_inside(&self, list: &[usize]) -> bool {
        match list.split_last() {
            Some((&0, addresses)) => addresses.iter().all(|&a| self.inside(a)),
            _ => false,
        }
    }

    /// Every address points into `strings`, which ends with a NUL, and argv is not empty.
    fn is_valid(&self) -> bool {
        self.strings.last() == Some(&0)
            && self.argv.len() > 1
            && self.terminated_inside(self.argv)
            && self.terminated_inside(self.envp)
            && self.inside(self.program)
            && self.cwd.is_none_or(|c| self.inside(c))
    }
}

/// True once `clone3` answered `ENOSYS` (typically a seccomp profile that predates it) and
/// spawns use `clone(CLONE_PIDFD)` instead. Equally race-free.
pub fn clone3_fallback_active() -> bool {
    CLONE3_UNAVAILABLE.load(Ordering::Relaxed)
}

/// True once a child could not be created inside its cgroup (no `clone3`, or a kernel older
/// than 5.7 without `CLONE_INTO_CGROUP`): children then write their pid to `cgroup.procs`
/// before anything else, so they spend their first system calls in the spawner's cgroup.
pub fn into_cgroup_fallback_active() -> bool {
    CLONE3_UNAVAILABLE.load(Ordering::Relaxed) || INTO_CGROUP_UNAVAILABLE.load(Ordering::Relaxed)
}

/// Blocks every signal in the calling thread until dropped, so that no handler of the parent
/// can run in the child before it resets them.
struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write the sets they
        // are given, which live on this stack frame.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
            SignalsBlocked { previous }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`, a valid sigset_t.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

/// Creates the child described by `plan`. The child writes a report to `report` (the write
/// end of a close-on-exec pipe) when a step fails, and with `gate` (its end of a socket pair)
/// stops before `execve` until it reads [`GATE_GO_BYTE`]. Returns the child's pid and pidfd
/// in the parent only. Allocation-free.
pub fn clone_child(
    plan: &ExecPlan<'_>,
    report: BorrowedFd<'_>,
    gate: Option<BorrowedFd<'_>>,
) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    if !plan.is_valid() {
        return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
    }
    clone_child_with(plan, report, gate, false)
}

/// [`clone_child`] through the `clone(CLONE_PIDFD)` fallback (tests of that path).
#[cfg(test)]
pub(crate) fn clone_child_legacy(
    plan: &ExecPlan<'_>,
    report: BorrowedFd<'_>,
    gate: Option<BorrowedFd<'_>>,
) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    if !plan.is_valid() {
        return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
    }
    clone_child_with(plan, report, gate, true)
}

fn clone_child_with(
    plan: &ExecPlan<'_>,
    report: BorrowedFd<'_>,
    gate: Option<BorrowedFd<'_>>,
    legacy: bool,
) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    let report_fd = report.as_raw_fd();
    let gate_fd = gate.map_or(-1, |g| g.as_raw_fd());
    let blocked = SignalsBlocked::new();
    let cloned = if legacy {
        clone_legacy_pidfd().map(|c| (c, false))
    } else {
        clone_with_pidfd(plan.cgroup_fd)
    };
    match cloned {
        Ok((None, placed)) => {
            let join = if placed { -1 } else { plan.cgroup_fd };
            child::main(plan, report_fd, gate_fd, join)
        }
        Ok((Some(parent), _)) => {
            drop(blocked);
            Ok(parent)
        }
        Err(errno) => {
            drop(blocked);
            Err(SpawnError::new(SpawnStage::Clone, errno))
        }
    }
}

/// A pidfd clone's outcome (`None` in the child), and whether the kernel placed the child in
/// the requested cgroup (`false`: none was requested, or the child must join it itself).
type Cloned = (Option<(libc::pid_t, OwnedFd)>, bool);

/// `Ok(None)` in the child, `Ok(Some((pid, pidfd)))` in the parent; with `cgroup` >= 0 inside
/// that cgroup when the kernel can (`CLONE_INTO_CGROUP`).
fn clone_with_pidfd(cgroup: libc::c_int) -> Result<Cloned, i32> {
    if !CLONE3_UNAVAILABLE.load(Ordering::Relaxed) {
        let into = cgroup >= 0 && !INTO_CGROUP_UNAVAILABLE.load(Ordering::Relaxed);
        match clone3_pidfd(if into { cgroup } else { -1 }) {
            Err(libc::ENOSYS) => CLONE3_UNAVAILABLE.store(true, Ordering::Relaxed),
            // A kernel before 5.7 knows only the smaller clone_args: join in the child.
            Err(libc::E2BIG) if into => {
                INTO_CGROUP_UNAVAILABLE.store(true, Ordering::Relaxed);
                return clone3_pidfd(-1).map(|c| (c, false));
            }
            other => return other.map(|c| (c, into)),
        }
    }
    clone_legacy_pidfd().map(|c| (c, false))
}

fn clone3_pidfd(cgroup: libc::c_int) -> Result<Option<(libc::pid_t, OwnedFd)>, i32> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain data; all-zero is a valid value.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = libc::CLONE_PIDFD as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    let size = if cgroup >= 0 {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup as u64;
        CLONE_ARGS_SIZE_VER2
    } else {
        CLONE_ARGS_SIZE_VER0
    };
    // SAFETY: clone3 without CLONE_VM and with no stack behaves like fork: the child gets a
    // copy of this address space and returns here with 0. `args` and `pidfd` outlive the
    // call. The child only runs `child::main`, which makes raw system calls and never returns.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, size) };
    clone_outcome(rc, pidfd)
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), as the kernel's uapi defines it.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone_legacy_pidfd() -> Result<Option<(libc::pid_t, OwnedFd)>, i32> {
    let mut pidfd: libc::c_int = -1;
    let flags = (libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_long;
    // SAFETY: clone(CLONE_PIDFD | SIGCHLD) with a NULL stack behaves like fork. With
    // CLONE_PIDFD the kernel stores the pidfd through the third argument (parent_tid) on every
    // architecture; child_tid and tls are unused.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0 as libc::c_long,
            &mut pidfd as *mut libc::c_int,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    clone_outcome(rc, pidfd)
}

fn clone_outcome(
    rc: libc::c_long,
    pidfd: libc::c_int,
) -> Result<Option<(libc::pid_t, OwnedFd)>, i32> {
    if rc < 0 {
        return Err(super::errno::last());
    }
    if rc == 0 {
        return Ok(None);
    }
    if pidfd < 0 {
        // A kernel older than 5.2 ignored CLONE_PIDFD. Unsupported: we cannot track the child
        // race-free, so kill it by pid while it is certainly unreaped.
        // SAFETY: `rc` is the pid of our own, unreaped child.
        unsafe { libc::kill(rc as libc::pid_t, libc::SIGKILL) };
        return Err(libc::ENOSYS);
    }
    // SAFETY: the kernel just created this pidfd for us; nobody else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Some((rc as libc::pid_t, pidfd)))
}

/// A stack for a child that shares its parent's memory: mapped once, with an inaccessible
/// guard page below it, so that an overflow faults instead of writing into the parent.
#[derive(Debug)]
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; it is only used by the thread that holds
// the `ChildStack` (`&mut` in `clone_vm`).
unsafe impl Send for ChildStack {}

/// Page size assumed for the guard (the largest of x86_64 and aarch64's usual 4 KiB, 16 KiB
/// and 64 KiB is used, so the guard covers at least one page on each).
const GUARD_BYTES: usize = 64 * 1024;

impl ChildStack {
    /// A stack of `bytes` (rounded up to the guard size) plus the guard.
    pub fn new(bytes: usize) -> io::Result<ChildStack> {
        let usable = bytes.div_ceil(GUARD_BYTES) * GUARD_BYTES;
        let len = usable + GUARD_BYTES;
        // SAFETY: an anonymous private mapping at an address the kernel chooses.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page(s) of our own mapping become inaccessible: the guard.
        if unsafe { libc::mprotect(base, GUARD_BYTES, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The usable part above the guard: (lowest address, bytes), for `clone3`, whose child's
    /// stack pointer starts at their sum (a multiple of the guard size, so 16-byte aligned).
    fn usable(&mut self) -> (usize, usize) {
        (self.base as usize + GUARD_BYTES, self.len - GUARD_BYTES)
    }

    /// The highest address, 16-byte aligned (stacks grow down on x86_64 and aarch64).
    fn top(&mut self) -> *mut libc::c_void {
        let end = self.base as usize + self.len;
        (end & !15) as *mut libc::c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no child runs on it any more
        // (`clone_vm` returns only once its child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Whether this kernel has `close_range` (5.9+), which [`clone_vm`] needs.
pub fn shared_table_supported() -> bool {
    // SAFETY: closes nothing (an empty range beyond any fd); only asks whether the call exists.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    rc == 0 || super::errno::last() != libc::ENOSYS
}

/// Creates the child described by `plan` the way `posix_spawn` does, and more cheaply still:
/// `CLONE_VM | CLONE_VFORK` (no copy of the page tables, no copy-on-write afterwards, whatever
/// the size of the process) and `CLONE_FILES` (no copy of the fd table: the child's first step
/// is `close_range(first, ~0, CLOSE_RANGE_UNSHARE)`, which gives it a private table of the fds
/// below `first` only). The calling thread is suspended until the child has exec'd or exited;
/// the other threads run on. `report_fd` must be the write end of the report pipe, placed at
/// a number in `3..first`; every other fd in `3..first` is closed in the child. Needs
/// [`shared_table_supported`]. Returns the child's pid and pidfd. Allocation-free.
pub fn clone_vm(
    plan: &ExecPlan<'_>,
    report_fd: libc::c_int,
    first: libc::c_int,
    stack: &mut ChildStack,
) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    if !plan.is_valid() || report_fd < 3 || report_fd >= first {
        return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
    }
    let mut args = child::VmArgs {
        plan,
        report_fd,
        first,
        join_cgroup: -1,
    };
    let flags =
        libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD;
    let mut pidfd: libc::c_int = -1;
    let blocked = SignalsBlocked::new();
    let mut rc: libc::c_long = -1;
    let mut errno = libc::ENOSYS;
    let mut cloned = false;
    if plan.cgroup_fd >= 0
        && CLONE3_VM_SUPPORTED
        && !CLONE3_UNAVAILABLE.load(Ordering::Relaxed)
        && !INTO_CGROUP_UNAVAILABLE.load(Ordering::Relaxed)
    {
        // SAFETY: clone_args is plain data; all-zero is a valid value.
        let mut cargs: libc::clone_args = unsafe { std::mem::zeroed() };
        cargs.flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD)
            as u64
            | CLONE_INTO_CGROUP;
        cargs.pidfd = &mut pidfd as *mut libc::c_int as u64;
        cargs.exit_signal = libc::SIGCHLD as u64;
        let (low, size) = stack.usable();
        cargs.stack = low as u64;
        cargs.stack_size = size as u64;
        cargs.cgroup = plan.cgroup_fd as u64;
        // SAFETY: as for `libc::clone` below: the child runs `vm_entry` on `stack` (its top is
        // `stack + stack_size`, 16-byte aligned), with `args` on this thread's stack, which
        // CLONE_VFORK keeps untouched until the child has exec'd or exited; `cargs` and
        // `pidfd` outlive the call.
        rc = unsafe {
            clone3_vm(
                &mut cargs,
                CLONE_ARGS_SIZE_VER2,
                child::vm_entry,
                &args as *const child::VmArgs<'_> as *mut libc::c_void,
            )
        };
        if rc < 0 {
            errno = (-rc) as i32;
            match errno {
                libc::ENOSYS => CLONE3_UNAVAILABLE.store(true, Ordering::Relaxed),
                libc::E2BIG => INTO_CGROUP_UNAVAILABLE.store(true, Ordering::Relaxed),
                _ => cloned = true,
            }
        } else {
            cloned = true;
        }
    }
    if !cloned {
        // Without CLONE_INTO_CGROUP the child joins its cgroup itself, first of all.
        args.join_cgroup = plan.cgroup_fd;
        // SAFETY: the child runs `vm_entry` on `stack`, a mapping of ours that nothing else
        // uses, with `args` on this thread's stack; CLONE_VFORK suspends this thread until the
        // child has exec'd or exited, so both stay valid while it runs. The child makes raw
        // system calls only, touches no memory but its stack and `args`, and unshares the fd
        // table before it changes any fd (its one exception, joining a cgroup, opens and
        // closes one close-on-exec fd). With CLONE_PIDFD the kernel stores the pidfd through
        // the parent-tid argument.
        rc = unsafe {
            libc::clone(
                child::vm_entry,
                stack.top(),
                flags,
                &args as *const child::VmArgs<'_> as *mut libc::c_void,
                &mut pidfd as *mut libc::c_int,
            )
        } as libc::c_long;
        errno = super::errno::last();
    }
    drop(blocked);
    if rc < 0 {
        return Err(SpawnError::new(SpawnStage::Clone, errno));
    }
    clone_outcome(rc, pidfd)
        .map_err(|errno| SpawnError::new(SpawnStage::Clone, errno))?
        .ok_or(SpawnError::new(SpawnStage::Clone, libc::EIO))
}

/// Whether [`clone3_vm`] exists for this architecture (else a child that shares our memory is
/// made with `clone` and joins its cgroup itself).
const CLONE3_VM_SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// `clone3(args, size)` for a child on its own stack (`args.stack`, `args.stack_size`): the
/// child calls `entry(arg)` there and exits with its return value; it never returns into
/// Rust code, which is why this is a few instructions of assembly (as in the C libraries'
/// `clone`). Returns the child's pid, or `-errno`, in the parent.
///
/// # Safety
/// `args` must be valid and name a stack that nothing else uses while the child runs, and
/// `entry` must be safe to run on it with `arg` (with `CLONE_VM`, in our memory).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vm(
    args: *mut libc::clone_args,
    size: usize,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let rc: libc::c_long;
    // SAFETY: the caller's contract. In the parent the syscall clobbers rax, rcx and r11 only.
    // The child starts with rsp at the top of its stack (16-byte aligned, so the `call` leaves
    // it as the ABI wants at `entry`), runs `entry` and exits with its result; it never comes
    // back to the code after this block.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => rc,
            in("rdi") args,
            in("rsi") size,
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    rc
}

/// See the x86_64 version.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_vm(
    args: *mut libc::clone_args,
    size: usize,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let rc: libc::c_long;
    // SAFETY: the caller's contract. In the parent `svc` changes x0 only. The child starts with
    // sp at the top of its stack (16-byte aligned), runs `entry` and exits with its result; it
    // never comes back to the code after this block.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x20",
            "blr x21",
            "mov x8, #{exit}",
            "svc 0",
            "brk #1",
            "2:",
            exit = const libc::SYS_exit,
            in("x8") libc::SYS_clone3,
            inlateout("x0") args => rc,
            in("x1") size,
            in("x20") arg,
            in("x21") entry,
            options(nostack)
        );
    }
    rc
}

/// Never called: [`CLONE3_VM_SUPPORTED`] is false here.
///
/// # Safety
/// None needed.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone3_vm(
    _args: *mut libc::clone_args,
    _size: usize,
    _entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> libc::c_long {
    -(libc::ENOSYS as libc::c_long)
}

/// The close-on-exec report pipe of one spawn: (read end, write end).
pub fn report_pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    super::fd::pipe().map_err(|e| SpawnError::new(SpawnStage::Pipe, super::errno::of(&e)))
}

/// The gate of a gated spawn: a close-on-exec `SOCK_STREAM` pair (a write to a dead child is
/// `EPIPE` with `MSG_NOSIGNAL`, never SIGPIPE): (the spawner's end, the child's end).
pub fn gate_pair() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    super::socket::pair(super::socket::Kind::Stream)
        .map_err(|e| SpawnError::new(SpawnStage::Pipe, super::errno::of(&e)))
}

/// Opens a child's gate; `Err(errno)` when the child is gone (`EPIPE`).
pub fn gate_send_go(go: BorrowedFd<'_>) -> Result<(), i32> {
    match super::socket::send(go, &[GATE_GO_BYTE], false) {
        Ok(1) => Ok(()),
        Ok(_) => Err(libc::EIO),
        Err(e) => Err(super::errno::of(&e)),
    }
}

/// Takes the go-ahead back if the child has not read it yet: reads the go byte out of the
/// child's end of the gate (`gate`, the spawner's second reference to it), without waiting.
/// `true`: the byte was still queued and is gone now, so the child can never pass its gate;
/// `false`: the child took it (or nothing was sent). Exactly one reader gets a queued byte, so
/// the answer is race-free.
pub fn gate_take_back(gate: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    matches!(super::socket::recv(gate, &mut byte, false, true), Ok(1))
}

/// Whether the report pipe has something to read now (a report, or end of file), so that
/// [`read_report`] returns without blocking. Never waits.
pub fn report_ready(report: BorrowedFd<'_>) -> bool {
    let mut entry = [super::poll::PollFd {
        fd: report.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // A pipe whose writers are gone polls POLLHUP (and POLLIN only while data is left).
    matches!(super::poll::poll(&mut entry, 0), Ok(1)) && entry[0].revents != 0
}

/// Reads one report (exactly [`REPORT_BYTES`]) or end of file (`None`).
pub fn read_report(report: BorrowedFd<'_>) -> Result<Option<[u8; REPORT_BYTES]>, SpawnError> {
    let mut buf = [0u8; REPORT_BYTES];
    let filled = super::fd::read_full(report, &mut buf)
        .map_err(|e| SpawnError::new(SpawnStage::Report, super::errno::of(&e)))?;
    match filled {
        0 => Ok(None),
        REPORT_BYTES => Ok(Some(buf)),
        _ => Err(SpawnError::new(SpawnStage::Report, libc::EIO)),
    }
}
