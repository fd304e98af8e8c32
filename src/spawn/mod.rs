//! Race-free process spawning: the pidfd comes atomically with the fork.
//!
//! Both the orchestrator (local services) and `holden-agent` (QM services) start
//! processes through [`spawn`]. The design goals, in order:
//!
//! 1. **No PID-reuse window.** The child is created with `clone3(CLONE_PIDFD)`,
//!    so the pidfd exists before anyone could reap the child. When `clone3` is
//!    not available (`ENOSYS`, typically a container seccomp profile that predates
//!    it) we fall back to `clone(CLONE_PIDFD | SIGCHLD)` (Linux 5.2), which gives
//!    the same guarantee. Kernels older than 5.2 are not supported.
//! 2. **Exec failures are errors, not instant exits.** A `pipe2(O_CLOEXEC)` is
//!    created before the clone. The child writes `(stage, errno)` into it when
//!    anything between fork and exec fails, then `_exit(127)`. On success the
//!    `execve` closes the write end (close-on-exec). The parent reads until EOF:
//!    zero bytes means the exec happened, eight bytes are a [`SpawnError`].
//!    *Cost*: one `pipe2`, two `close`s and one `read` per spawn (about four
//!    syscalls), and the parent waits until the child has either exec'd or
//!    failed: the spawn latency includes the child's set-up and the `execve`
//!    itself (not the new program's start-up). A failed child is reaped before
//!    [`spawn`] returns, so it never lingers as a zombie.
//! 3. **Allocation-free and async-signal-safe.** Everything the child needs —
//!    NUL-terminated strings and the `argv`/`envp` pointer arrays — is prepared
//!    in a [`SpawnSpec`] before the clone. [`spawn`] allocates nothing, and the
//!    child only makes raw system calls. That makes [`spawn`] safe to call from a
//!    multi-threaded process (the clone copies only the calling thread; locks
//!    held by other threads, e.g. in `malloc`, are never touched by the child).
//!    Credentials are changed with raw `setgroups`/`setgid`/`setuid` system
//!    calls on purpose: the libc wrappers would try to synchronise the parent's
//!    other threads, which do not exist in the child, and could deadlock.
//!
//! The child, between clone and exec:
//! - gets its own session (`setsid`);
//! - has every signal disposition reset to the default and an empty signal
//!   mask (the parent blocks all signals in the calling thread around the clone,
//!   so no parent handler can ever run in the child);
//! - has every fd but 0–2 closed (`close_range`, with a brute-force fallback up
//!   to `RLIMIT_NOFILE` on kernels older than 5.9), stdin on `/dev/null`,
//!   stdout and stderr inherited (or on `/dev/null` with [`SpecWriter::stdio_null`]);
//! - optionally changes groups, gid and uid (then the working directory, so a
//!   directory only the target user may enter works);
//! - gets no parent-death signal: spawned processes outlive their spawner.
//!
//! Program lookup: when the program (by default `argv[0]`) contains a `/` it is
//! executed as given; otherwise it is searched in the `PATH` entry of the
//! spec's environment, or in [`DEFAULT_SEARCH_PATH`] when the environment has
//! none. `ENOEXEC` is reported, never retried through `/bin/sh`.
//!
//! **Gated spawns** ([`spawn_gated`]): the child does all of the above and then
//! waits at a gate (one `socketpair`) just before `execve`. [`Gated::open`]
//! gives it the go-ahead without waiting and returns a [`Released`] child whose
//! report pipe the caller polls ([`Released::try_finish`], or
//! [`Released::withdraw`] at a deadline: the go-ahead is taken back if the child
//! has not read it yet); [`Gated::release`] does the same but blocks until the
//! exec's outcome. If the gate closes without the go-ahead (the spawner died,
//! or [`Gated::abort`]) the child exits with [`GATE_CLOSED_EXIT_STATUS`] and the
//! program never runs. holden-agent uses it to hand the pidfd to the
//! orchestrator *before* the program runs, so an agent killed at any moment
//! never leaves a process running that nobody supervises.
//!
//! What "exec'd" means here: the report pipe reaches end of file when the
//! kernel closes the child's close-on-exec fds, which `execve` does only after
//! its point of no return, once the new program's image has replaced the old one
//! (`/proc/PID/exe` already names the new program). The kernel may still be
//! finishing the exec at that moment: `/proc/PID/comm` and the `comm` field of
//! `/proc/PID/stat` can show the old name and `/proc/PID/cmdline` can be empty
//! for a few microseconds more; a failure after that point (e.g. the ELF loader
//! running out of memory) kills the process, which shows as its exit status.
//!
//! The caller should keep fds 0–2 open (on `/dev/null` if nothing else): the
//! child inherits stdout and stderr as they are.
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

pub use crate::sys::spawn::{
    capability_number, clone3_fallback_active, into_cgroup_fallback_active, CpuSet, ExecEnv,
    Groups, OomScoreAdj, Rlimit, SchedPolicy, SpawnError, SpawnStage, CAPABILITY_NAMES, CPU_MAX,
    CPU_SET_WORDS, GATE_CLOSED_EXIT_STATUS, GROUPS_MAX, RLIMIT_COUNT, RLIMIT_NAMES, RLIM_INFINITY,
};
use crate::sys::spawn::{ExecPlan, GATE_READY_REPORT};

/// Directories searched for a program name without `/` when the spec's
/// environment has no `PATH` entry.
pub const DEFAULT_SEARCH_PATH: &[u8] =
    b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running child: its pid (in the spawner's PID namespace) and its pidfd.
///
/// The pidfd is close-on-exec. The caller owns it; dropping it closes it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Capacity of a [`SpawnSpec`], fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnLimits {
    /// Most argv entries (argv[0] included).
    pub args_count_max: usize,
    /// Most environment entries (`KEY=VALUE`).
    pub env_count_max: usize,
    /// Total bytes of every string, each with its terminating NUL: argv,
    /// environment, working directory and program path.
    pub strings_bytes_max: usize,
}

/// Why a string could not be added to a [`SpawnSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecError {
    /// The string contains a NUL byte.
    InteriorNul,
    /// More argv entries than `args_count_max`.
    TooManyArgs,
    /// More environment entries than `env_count_max`.
    TooManyEnv,
    /// The strings no longer fit in `strings_bytes_max`.
    StringsTooLong,
    /// An environment entry has no `=`, or an empty name.
    EnvNotKeyValue,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecError::InteriorNul => "string contains a NUL byte",
            SpecError::TooManyArgs => "too many argv entries",
            SpecError::TooManyEnv => "too many environment entries",
            SpecError::StringsTooLong => "argv, environment and paths are too long",
            SpecError::EnvNotKeyValue => "environment entry is not NAME=VALUE",
        })
    }
}

impl std::error::Error for SpecError {}

/// A prepared, reusable description of a process to start.
///
/// It owns NUL-terminated copies of argv, the environment, the working
/// directory and the program path, and the `argv`/`envp` pointer arrays
/// `execve` wants, in storage allocated once by [`SpawnSpec::with_limits`].
/// Refilling it through [`SpawnSpec::writer`] and spawning from it allocate
/// nothing. The environment is exactly what was pushed: nothing is inherited
/// implicitly (see [`SpecWriter::inherit_env`]).
pub struct SpawnSpec {
    limits: SpawnLimits,
    /// Every string back to back, each NUL-terminated. Never grows beyond its
    /// initial capacity, so it is never reallocated.
    strings: Vec<u8>,
    arg_offsets: Vec<usize>,
    env_offsets: Vec<usize>,
    /// `argv` for execve: the address of each entry of `arg_offsets`, then 0 (addresses, not
    /// pointers: the spec holds no raw pointer; `sys::spawn` checks them before it clones).
    argv_addrs: Vec<usize>,
    /// `envp` for execve: the address of each entry of `env_offsets`, then 0.
    envp_addrs: Vec<usize>,
    program: Option<usize>,
    cwd: Option<usize>,
    /// Offset and length (without NUL) of the value of `PATH=` in `strings`.
    search_path: Option<(usize, usize)>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// Put stdout and stderr on `/dev/null` too (stdin always is).
    stdio_null: bool,
    /// Set by a writer that finished without error.
    complete: bool,
    /// The cgroup v2 directory the child is created in ([`SpawnSpec::set_cgroup`]).
    cgroup: Option<OwnedFd>,
    /// Limits, scheduling, affinity… ([`SpawnSpec::set_exec_env`]).
    exec: ExecEnv,
}

impl fmt::Debug for SpawnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment is deliberately not printed: it may hold secrets.
        f.debug_struct("SpawnSpec")
            .field("argc", &self.arg_offsets.len())
            .field("envc", &self.env_offsets.len())
            .field("program", &self.program().map(String::from_utf8_lossy))
            .field("cwd", &self.cwd().map(String::from_utf8_lossy))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("stdio_null", &self.stdio_null)
            .field("complete", &self.complete)
            .finish()
    }
}

impl SpawnSpec {
    /// Allocates storage for `limits` once. The spec starts empty (not
    /// spawnable until a writer has pushed at least argv[0]).
    pub fn with_limits(limits: SpawnLimits) -> SpawnSpec {
        SpawnSpec {
            limits,
            strings: Vec::with_capacity(limits.strings_bytes_max),
            arg_offsets: Vec::with_capacity(limits.args_count_max),
            env_offsets: Vec::with_capacity(limits.env_count_max),
            argv_addrs: Vec::with_capacity(limits.args_count_max + 1),
            envp_addrs: Vec::with_capacity(limits.env_count_max + 1),
            program: None,
            cwd: None,
            search_path: None,
            uid: None,
            gid: None,
            stdio_null: false,
            complete: false,
            cgroup: None,
            exec: ExecEnv::default(),
        }
    }

    /// Builds a spec sized exactly for the given argv, environment
    /// (`KEY=VALUE` entries) and working directory.
    pub fn new<A, E>(argv: &[A], env: &[E], cwd: Option<&[u8]>) -> Result<SpawnSpec, SpecError>
    where
        A: AsRef<[u8]>,
        E: AsRef<[u8]>,
    {
        let bytes = |items: &[&[u8]]| items.iter().map(|s| s.len() + 1).sum::<usize>();
        let argv_refs: Vec<&[u8]> = argv.iter().map(AsRef::as_ref).collect();
        let env_refs: Vec<&[u8]> = env.iter().map(AsRef::as_ref).collect();
        let limits = SpawnLimits {
            args_count_max: argv.len(),
            env_count_max: env.len(),
            strings_bytes_max: bytes(&argv_refs)
                + bytes(&env_refs)
                + cwd.map_or(0, |c| c.len() + 1),
        };
        let mut spec = SpawnSpec::with_limits(limits);
        let mut writer = spec.writer();
        for arg in &argv_refs {
            writer.arg(arg)?;
        }
        for entry in &env_refs {
            writer.env(entry)?;
        }
        if let Some(dir) = cwd {
            writer.cwd(dir)?;
        }
        writer.finish();
        Ok(spec)
    }

    /// Clears the spec (its execution environment too, not its cgroup) and returns a writer
    /// to fill it. The pointer arrays are rebuilt once when the writer is finished or dropped.
    pub fn writer(&mut self) -> SpecWriter<'_> {
        self.exec = ExecEnv::default();
        self.strings.clear();
        self.arg_offsets.clear();
        self.env_offsets.clear();
        self.program = None;
        self.cwd = None;
        self.search_path = None;
        self.uid = None;
        self.gid = None;
        self.stdio_null = false;
        self.complete = false;
        SpecWriter {
            spec: self,
            failed: false,
        }
    }

    /// Creates the child directly inside the cgroup v2 whose directory `dir` is open
    /// (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7+; on an older kernel, or without
    /// `clone3`, the child writes its pid to the cgroup's `cgroup.procs` as its first step).
    /// `None`: in the spawner's cgroup. Kept by [`SpawnSpec::writer`].
    pub fn set_cgroup(&mut self, dir: Option<OwnedFd>) {
        self.cgroup = dir;
    }

    /// The child's execution environment (limits, scheduling, affinity, OOM score, umask,
    /// supplementary groups, `no_new_privs`), applied in the child before the credentials
    /// change. Kept by [`SpawnSpec::writer`].
    pub fn set_exec_env(&mut self, exec: ExecEnv) {
        self.exec = exec;
    }

    /// The execution environment set by [`SpawnSpec::set_exec_env`].
    pub fn exec_env(&self) -> &ExecEnv {
        &self.exec
    }

    /// The cgroup directory set by [`SpawnSpec::set_cgroup`].
    pub fn cgroup(&self) -> Option<BorrowedFd<'_>> {
        self.cgroup.as_ref().map(AsFd::as_fd)
    }

    /// The capacity this spec was created with.
    pub fn limits(&self) -> SpawnLimits {
        self.limits
    }

    /// Number of argv entries.
    pub fn args_count(&self) -> usize {
        self.arg_offsets.len()
    }

    /// Number of environment entries.
    pub fn env_count(&self) -> usize {
        self.env_offsets.len()
    }

    /// argv entry `index`, without its NUL.
    pub fn arg(&self, index: usize) -> Option<&[u8]> {
        self.arg_offsets.get(index).map(|&o| self.string_at(o))
    }

    /// Environment entry `index`, without its NUL.
    pub fn env_entry(&self, index: usize) -> Option<&[u8]> {
        self.env_offsets.get(index).map(|&o| self.string_at(o))
    }

    /// The program that will be executed: the explicit one, else argv[0].
    pub fn program(&self) -> Option<&[u8]> {
        match self.program {
            Some(offset) => Some(self.string_at(offset)),
            None => self.arg(0),
        }
    }

    /// The working directory, if one was set.
    pub fn cwd(&self) -> Option<&[u8]> {
        self.cwd.map(|o| self.string_at(o))
    }

    /// The requested uid and gid.
    pub fn credentials(&self) -> (Option<u32>, Option<u32>) {
        (self.uid, self.gid)
    }

    /// True when a writer finished without error and argv is not empty.
    pub fn is_complete(&self) -> bool {
        self.complete && !self.arg_offsets.is_empty()
    }

    fn string_at(&self, offset: usize) -> &[u8] {
        let tail = self.strings.get(offset..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }

    fn push_string(&mut self, parts: &[&[u8]]) -> Result<usize, SpecError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if parts.iter().any(|p| p.contains(&0)) {
            return Err(SpecError::InteriorNul);
        }
        if self.strings.len() + len + 1 > self.limits.strings_bytes_max {
            return Err(SpecError::StringsTooLong);
        }
        let offset = self.strings.len();
        for part in parts {
            self.strings.extend_from_slice(part);
        }
        self.strings.push(0);
        Ok(offset)
    }

    fn rebuild_pointers(&mut self) {
        let base = self.strings.as_ptr() as usize;
        self.argv_addrs.clear();
        self.envp_addrs.clear();
        for &offset in &self.arg_offsets {
            self.argv_addrs.push(base + offset);
        }
        self.argv_addrs.push(0);
        for &offset in &self.env_offsets {
            self.envp_addrs.push(base + offset);
        }
        self.envp_addrs.push(0);
    }

    fn search_path_bytes(&self) -> &[u8] {
        match self.search_path {
            Some((offset, len)) => self.strings.get(offset..offset + len).unwrap_or(&[]),
            None => DEFAULT_SEARCH_PATH,
        }
    }

    /// What the child needs, as `sys::spawn` takes it.
    fn plan(&self) -> ExecPlan<'_> {
        let base = self.strings.as_ptr() as usize;
        let first = self.arg_offsets.first().copied().unwrap_or(0);
        let program = self.program.unwrap_or(first);
        ExecPlan {
            strings: &self.strings,
            argv: &self.argv_addrs,
            envp: &self.envp_addrs,
            program: base + program,
            program_name: self.program().unwrap_or(&[]),
            search_path: self.search_path_bytes(),
            cwd: self.cwd.map(|offset| base + offset),
            uid: self.uid,
            gid: self.gid,
            stdio_null: self.stdio_null,
            stdout_fd: -1,
            stderr_fd: -1,
            extra_fd: -1,
            extra_target: -1,
            reset_signals: crate::sys::spawn::signals_to_reset(),
            cgroup_fd: self.cgroup.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            exec: &self.exec,
        }
    }
}

/// Fills a [`SpawnSpec`]; obtained from [`SpawnSpec::writer`]. Every method
/// checks the spec's limits and never reallocates. A writer that saw an error
/// leaves the spec incomplete, so [`spawn`] refuses it.
pub struct SpecWriter<'a> {
    spec: &'a mut SpawnSpec,
    failed: bool,
}

impl SpecWriter<'_> {
    fn track<T>(&mut self, result: Result<T, SpecError>) -> Result<T, SpecError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Appends one argv entry (argv[0] first).
    pub fn arg(&mut self, arg: &[u8]) -> Result<(), SpecError> {
        let result = if self.spec.arg_offsets.len() >= self.spec.limits.args_count_max {
            Err(SpecError::TooManyArgs)
        } else {
            self.spec
                .push_string(&[arg])
                .map(|offset| self.spec.arg_offsets.push(offset))
        };
        self.track(result)
    }

    /// Appends one environment entry `NAME=VALUE`.
    pub fn env(&mut self, entry: &[u8]) -> Result<(), SpecError> {
        match entry.iter().position(|&b| b == b'=') {
            Some(eq) if eq > 0 => self.env_pair(&entry[..eq], &entry[eq + 1..]),
            _ => self.track(Err(SpecError::EnvNotKeyValue)),
        }
    }

    /// Appends one environment entry from its name and value.
    pub fn env_pair(&mut self, name: &[u8], value: &[u8]) -> Result<(), SpecError> {
        let result = if name.is_empty() || name.contains(&b'=') {
            Err(SpecError::EnvNotKeyValue)
        } else if self.spec.env_offsets.len() >= self.spec.limits.env_count_max {
            Err(SpecError::TooManyEnv)
        } else {
            self.spec.push_string(&[name, b"=", value]).map(|offset| {
                self.spec.env_offsets.push(offset);
                if name == b"PATH" {
                    self.spec.search_path = Some((offset + name.len() + 1, value.len()));
                }
            })
        };
        self.track(result)
    }

    /// Copies the calling process's environment (allocates while iterating it;
    /// meant for building specs at start-up, not on a hot path).
    pub fn inherit_env(&mut self) -> Result<(), SpecError> {
        use std::os::unix::ffi::OsStrExt;
        for (name, value) in std::env::vars_os() {
            self.env_pair(name.as_bytes(), value.as_bytes())?;
        }
        Ok(())
    }

    /// Sets the working directory of the child.
    pub fn cwd(&mut self, dir: &[u8]) -> Result<(), SpecError> {
        let result = self
            .spec
            .push_string(&[dir])
            .map(|o| self.spec.cwd = Some(o));
        self.track(result)
    }

    /// Executes `path` instead of argv[0] (argv[0] is still passed as given).
    pub fn program(&mut self, path: &[u8]) -> Result<(), SpecError> {
        let result = self
            .spec
            .push_string(&[path])
            .map(|o| self.spec.program = Some(o));
        self.track(result)
    }

    /// Runs the child as `uid` (`setuid` after `setgroups`/`setgid`).
    pub fn uid(&mut self, uid: Option<u32>) {
        self.spec.uid = uid;
    }

    /// Runs the child with primary group `gid` (and only that group as its
    /// supplementary group list when the spawner is privileged).
    pub fn gid(&mut self, gid: Option<u32>) {
        self.spec.gid = gid;
    }

    /// Also puts stdout and stderr on `/dev/null` (default: inherited).
    pub fn stdio_null(&mut self, null: bool) {
        self.spec.stdio_null = null;
    }

    /// Ends the writing (same as dropping the writer).
    pub fn finish(self) {}
}

impl Drop for SpecWriter<'_> {
    fn drop(&mut self) {
        self.spec.rebuild_pointers();
        self.spec.complete = !self.failed && !self.spec.arg_offsets.is_empty();
    }
}

/// Starts the process described by `spec`; see the module documentation.
///
/// Allocation-free. Blocks until the child has exec'd or failed.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    spawn_with(spec, Output::default())
}

/// Where a child's stdout and stderr go, when not inherited: an fd of the caller's (a pipe's
/// write end, a file, `/dev/null`), put on 1 or 2 in the child. Fds must be above 2. `extra`:
/// an fd of the caller's the child gets on a number of its own, above 2 (s6's notification
/// fd).
#[derive(Clone, Copy, Debug, Default)]
pub struct Output<'a> {
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
    pub extra: Option<(BorrowedFd<'a>, std::os::fd::RawFd)>,
}

/// [`spawn`] with the child's stdout and stderr on the given fds.
pub fn spawn_with(spec: &SpawnSpec, output: Output<'_>) -> Result<Spawned, SpawnError> {
    if !spec.is_complete() {
        return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
    }
    let (report_read, report_write) = crate::sys::spawn::report_pipe()?;
    let mut plan = spec.plan();
    plan.stdout_fd = output.stdout.map_or(-1, |fd| fd.as_raw_fd());
    plan.stderr_fd = output.stderr.map_or(-1, |fd| fd.as_raw_fd());
    if let Some((fd, target)) = output.extra.filter(|&(_, target)| target > 2) {
        plan.extra_fd = fd.as_raw_fd();
        plan.extra_target = target;
    }
    let (pid, pidfd) = crate::sys::spawn::clone_child(&plan, report_write.as_fd(), None)?;
    drop(report_write);
    match crate::sys::spawn::read_report(report_read.as_fd()) {
        Ok(None) => Ok(Spawned { pid, pidfd }),
        Ok(Some(bytes)) => Err(fail_child(&pidfd, Ok(SpawnError::from_report(bytes)))),
        Err(error) => Err(fail_child(&pidfd, Err(error))),
    }
}

/// Spawns without copying anything of the spawning process: page tables, fd table, memory
/// (see [`crate::sys::spawn::clone_vm`]). Its cost does not grow with the size or the fd count
/// of the process, which is what the orchestrator needs: it holds a pidfd per service. The
/// calling thread is suspended until the child has exec'd; other threads run on, so the
/// orchestrator calls it from spawner threads, never from its event loop.
///
/// Made in sets by [`Launcher::set`]: each launcher owns a reserved fd number (in a low range
/// shared by the set) where its report pipe goes during a spawn, and its child's stack.
#[derive(Debug)]
pub struct Launcher {
    /// The reserved number: `/dev/null` between spawns, the report pipe's write end during one.
    reserved: OwnedFd,
    /// Reserved numbers for the child's stdout, stderr and extra fds during a spawn that gives
    /// them.
    reserved_out: [OwnedFd; 3],
    /// Every reserved number of the set is below this.
    first: std::os::fd::RawFd,
    devnull: OwnedFd,
    stack: crate::sys::spawn::ChildStack,
}

/// The child's stack: the child's steps use a few KiB (the `PATH` search buffer is 4 KiB).
const LAUNCHER_STACK_BYTES: usize = 128 * 1024;

impl Launcher {
    /// `count` launchers, for `count` threads. `None` when the kernel lacks what they need
    /// (`close_range`, 5.9): then spawn with [`spawn`].
    pub fn set(count: usize) -> std::io::Result<Option<Vec<Launcher>>> {
        if !crate::sys::spawn::shared_table_supported() {
            return Ok(None);
        }
        let devnull = || crate::sys::fd::open(c"/dev/null", libc::O_RDWR);
        let mut reserved = Vec::with_capacity(count);
        for _ in 0..count {
            reserved.push((devnull()?, [devnull()?, devnull()?, devnull()?]));
        }
        let first = reserved
            .iter()
            .flat_map(|(fd, out)| [fd, &out[0], &out[1], &out[2]])
            .map(|fd| fd.as_raw_fd())
            .max()
            .unwrap_or(2)
            + 1;
        let mut set = Vec::with_capacity(count);
        for (fd, reserved_out) in reserved {
            set.push(Launcher {
                reserved: fd,
                reserved_out,
                first,
                devnull: crate::sys::fd::open(c"/dev/null", libc::O_RDWR)?,
                stack: crate::sys::spawn::ChildStack::new(LAUNCHER_STACK_BYTES)?,
            });
        }
        Ok(Some(set))
    }

    /// Starts the process described by `spec`, like [`spawn`]. Allocation-free.
    pub fn spawn(&mut self, spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
        self.spawn_with(spec, Output::default())
    }

    /// [`Launcher::spawn`] with the child's stdout and stderr on the given fds (each costs a
    /// `dup3` onto a reserved number before the clone and one after).
    pub fn spawn_with(
        &mut self,
        spec: &SpawnSpec,
        output: Output<'_>,
    ) -> Result<Spawned, SpawnError> {
        if !spec.is_complete() {
            return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
        }
        let (report_read, report_write) = crate::sys::spawn::report_pipe()?;
        let pipe_error =
            |e: std::io::Error| SpawnError::new(SpawnStage::Pipe, crate::sys::errno::of(&e));
        crate::sys::fd::dup_onto(report_write.as_fd(), &self.reserved).map_err(pipe_error)?;
        drop(report_write);
        // The child resets only the signals that are not default here (`plan`), handlers
        // included: it shares our memory until `execve`.
        let mut plan = spec.plan();
        let stdio_error =
            |e: std::io::Error| SpawnError::new(SpawnStage::Stdio, crate::sys::errno::of(&e));
        let extra = output.extra.filter(|&(_, target)| target > 2);
        let given = [output.stdout, output.stderr, extra.map(|(fd, _)| fd)];
        let mut placed = [-1; 3];
        for (i, fd) in given.iter().enumerate() {
            if let Some(fd) = fd {
                if let Err(e) = crate::sys::fd::dup_onto(*fd, &self.reserved_out[i]) {
                    self.release_reserved(&placed);
                    let _ = crate::sys::fd::dup_onto(self.devnull.as_fd(), &self.reserved);
                    return Err(stdio_error(e));
                }
                placed[i] = self.reserved_out[i].as_raw_fd();
            }
        }
        plan.stdout_fd = placed[0];
        plan.stderr_fd = placed[1];
        plan.extra_fd = placed[2];
        plan.extra_target = extra.map_or(-1, |(_, target)| target);
        let cloned = crate::sys::spawn::clone_vm(
            &plan,
            self.reserved.as_raw_fd(),
            self.first,
            &mut self.stack,
        );
        // Our copy of the write end goes: the report reads EOF once the child has exec'd.
        crate::sys::fd::dup_onto(self.devnull.as_fd(), &self.reserved).map_err(pipe_error)?;
        // And our copies of the output fds (the caller keeps its own).
        self.release_reserved(&placed);
        let (pid, pidfd) = cloned?;
        match crate::sys::spawn::read_report(report_read.as_fd()) {
            Ok(None) => Ok(Spawned { pid, pidfd }),
            Ok(Some(bytes)) => Err(fail_child(&pidfd, Ok(SpawnError::from_report(bytes)))),
            Err(error) => Err(fail_child(&pidfd, Err(error))),
        }
    }
}

impl Launcher {
    /// Puts `/dev/null` back on the reserved output numbers that held an fd.
    fn release_reserved(&self, placed: &[libc::c_int; 3]) {
        for (i, &fd) in placed.iter().enumerate() {
            if fd >= 0 {
                let _ = crate::sys::fd::dup_onto(self.devnull.as_fd(), &self.reserved_out[i]);
            }
        }
    }
}

/// A child that finished its set-up (session, fds, stdio, credentials,
/// working directory, signals) and waits at a gate just before `execve`.
///
/// Made by [`spawn_gated`]. The child execs only after [`Gated::open`] (or
/// [`Gated::release`]) wrote the go-ahead byte. If the gate closes without it —
/// [`Gated::abort`], dropping the `Gated`, or the spawner dying, since the
/// kernel closes its fds then — the child `_exit`s with
/// [`GATE_CLOSED_EXIT_STATUS`] without ever calling `execve`. So a spawner can
/// hand the pidfd to someone else first (holden-agent sends it to the
/// orchestrator) and let the program run only once that succeeded: the program
/// never runs unsupervised.
///
/// Dropping a `Gated` closes the gate (the child exits 125) but does not reap
/// the child; [`Gated::abort`] also reaps it.
#[derive(Debug)]
pub struct Gated {
    pub pid: libc::pid_t,
    pidfd: OwnedFd,
    /// The parent's end of the gate.
    go: OwnedFd,
    /// A second reference to the child's end of the gate: the go byte can be read back out
    /// of it as long as the child has not read it ([`Released::withdraw`]).
    gate: OwnedFd,
    /// The read end of the report pipe; EOF once the child exec'd.
    report: OwnedFd,
}

impl Gated {
    /// The child's pidfd (close-on-exec), e.g. to send it before the release.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Opens the gate and waits until the child has exec'd (`Ok`) or failed
    /// (`Err`, stage [`SpawnStage::Exec`] with the `execve` errno; the child
    /// exits 127 and is reaped here, or by the kernel with SIGCHLD ignored).
    /// The same as [`Gated::open`] then [`Released::wait`]: it blocks for as
    /// long as the child takes, which is forever if someone stopped it at the
    /// gate; an event loop uses [`Gated::open`] and polls instead.
    pub fn release(self) -> Result<(), SpawnError> {
        self.open()?.wait()
    }

    /// Gives the go-ahead without waiting for the exec: writes the go byte and
    /// returns the [`Released`] child, whose [`Released::report_fd`] polls
    /// readable once the outcome is known. Allocation-free, never blocks.
    ///
    /// `Err` (stage [`SpawnStage::Gate`]) only when the byte could not be
    /// written: the child is then killed (it never got the go-ahead, so it
    /// cannot have exec'd) and reaped if it is already gone.
    pub fn open(self) -> Result<Released, SpawnError> {
        let sent = crate::sys::spawn::gate_send_go(self.go.as_fd());
        // The byte, if sent, stays readable for the child after this close; without it the
        // child reads end of file and exits 125.
        drop(self.go);
        match sent {
            Ok(()) => Ok(Released {
                pid: self.pid,
                pidfd: self.pidfd,
                gate: self.gate,
                report: self.report,
            }),
            Err(errno) => {
                let _ = crate::sys::process::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
                reap_if_exited(&self.pidfd);
                Err(SpawnError::new(SpawnStage::Gate, errno))
            }
        }
    }

    /// Closes the gate without the go-ahead: the child exits with
    /// [`GATE_CLOSED_EXIT_STATUS`] without exec; waits until it is gone.
    pub fn abort(self) {
        drop(self.go);
        reap_failed_child(&self.pidfd);
    }
}

/// A gated child that got its go-ahead ([`Gated::open`]) and whose exec has
/// not been confirmed yet.
///
/// Its report pipe ([`Released::report_fd`]) polls readable (`POLLIN` or
/// `POLLHUP`) once the outcome is known: end of file when `execve` passed its
/// point of no return (the pipe's write end is close-on-exec, and the kernel
/// closes such fds only after it has replaced the old image), or the child's
/// 8-byte failure report. [`Released::try_finish`] then tells which without
/// blocking; [`Released::wait`] blocks for it; [`Released::withdraw`] gives up
/// on it (a deadline).
///
/// Dropping a `Released` forgets the child: it keeps its go-ahead and execs.
#[derive(Debug)]
pub struct Released {
    pub pid: libc::pid_t,
    pidfd: OwnedFd,
    gate: OwnedFd,
    report: OwnedFd,
}

/// What [`Released::try_finish`] found.
#[derive(Debug)]
pub enum Finish {
    /// Nothing yet: the child has not reached the end of `execve` (it may be
    /// stopped at its gate or on its way).
    Pending(Released),
    /// `Ok`: `execve` passed its point of no return. `Err`: stage
    /// [`SpawnStage::Exec`] with the `execve` errno (the child exits 127), or
    /// [`SpawnStage::Gate`] with `EPIPE` when the child died at its gate
    /// without ever reading the go-ahead (someone killed it), or
    /// [`SpawnStage::Report`].
    Done(Result<(), SpawnError>),
}

/// How [`Released::withdraw`] ended a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    /// The go-ahead was still unread: it was taken back, so the child could
    /// never pass its gate, and it was killed there. The program did not run.
    AtGate,
    /// The child had read the go-ahead but not finished `execve`: it was
    /// killed on its way (SIGKILL; no instruction of the new program runs
    /// after the kill is queued).
    PastGate,
}

impl Released {
    /// The child's pidfd.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The fd to poll for the outcome (`POLLIN`; end of file shows as `POLLHUP`).
    pub fn report_fd(&self) -> BorrowedFd<'_> {
        self.report.as_fd()
    }

    /// The outcome if it is known now, without blocking. A failed child is
    /// reaped if it has exited already; one that is about to `_exit(127)` is
    /// not waited for (reap it through the pidfd, or ignore SIGCHLD as
    /// holden-agent does), and a caller's own wait may find it reaped.
    /// Allocation-free.
    pub fn try_finish(self) -> Finish {
        if !crate::sys::spawn::report_ready(self.report.as_fd()) {
            return Finish::Pending(self);
        }
        let report = crate::sys::spawn::read_report(self.report.as_fd());
        Finish::Done(self.conclude(report, false))
    }

    /// Blocks until the outcome is known (see [`Finish::Done`]); a failed
    /// child is reaped before it returns.
    pub fn wait(self) -> Result<(), SpawnError> {
        let report = crate::sys::spawn::read_report(self.report.as_fd());
        self.conclude(report, true)
    }

    fn conclude(
        self,
        report: Result<Option<[u8; crate::sys::spawn::REPORT_BYTES]>, SpawnError>,
        block: bool,
    ) -> Result<(), SpawnError> {
        let reap = |pidfd: &OwnedFd| {
            if block {
                reap_failed_child(pidfd)
            } else {
                reap_if_exited(pidfd)
            }
        };
        match report {
            // End of file: execve closed the write end, or the child died. A go byte still
            // queued means it died at the gate without reading it, so it never exec'd.
            Ok(None) if crate::sys::spawn::gate_take_back(self.gate.as_fd()) => {
                reap(&self.pidfd);
                Err(SpawnError::new(SpawnStage::Gate, libc::EPIPE))
            }
            Ok(None) => Ok(()),
            Ok(Some(bytes)) => {
                reap(&self.pidfd);
                Err(SpawnError::from_report(bytes))
            }
            Err(error) => {
                let _ = crate::sys::process::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
                reap(&self.pidfd);
                Err(error)
            }
        }
    }

    /// Gives up on the child (the caller's deadline passed): takes the
    /// go-ahead back if it is still unread, and kills the child with SIGKILL
    /// either way (a stopped child dies on SIGKILL too). Says which. Call it
    /// after [`Released::try_finish`] said `Pending`. Never blocks: the child
    /// is reaped here only if it has died already; otherwise reaping is left
    /// to the caller (holden-agent ignores SIGCHLD, so the kernel reaps it),
    /// and a caller's own wait may find it reaped (ECHILD; its status stays
    /// readable through `PIDFD_INFO_EXIT` on Linux 6.15+).
    pub fn withdraw(self) -> Withdrawn {
        let taken_back = crate::sys::spawn::gate_take_back(self.gate.as_fd());
        let _ = crate::sys::process::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        reap_if_exited(&self.pidfd);
        if taken_back {
            Withdrawn::AtGate
        } else {
            Withdrawn::PastGate
        }
    }
}

/// Like [`spawn`], but the child stops at a gate just before `execve`; see
/// [`Gated`]. Returns once the child's set-up is done: every set-up failure
/// (session, fds, stdio, credentials, working directory) is an `Err` here, as
/// with [`spawn`]; only the `execve` itself is left to [`Gated::release`].
///
/// Allocation-free. Costs one `socketpair` and one extra pipe read over [`spawn`].
pub fn spawn_gated(spec: &SpawnSpec) -> Result<Gated, SpawnError> {
    if !spec.is_complete() {
        return Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL));
    }
    let (report_read, report_write) = crate::sys::spawn::report_pipe()?;
    let (go, gate_child) = crate::sys::spawn::gate_pair()?;
    let (pid, pidfd) = crate::sys::spawn::clone_child(
        &spec.plan(),
        report_write.as_fd(),
        Some(gate_child.as_fd()),
    )?;
    drop(report_write);
    match crate::sys::spawn::read_report(report_read.as_fd()) {
        Ok(Some(GATE_READY_REPORT)) => Ok(Gated {
            pid,
            pidfd,
            go,
            gate: gate_child,
            report: report_read,
        }),
        Ok(Some(bytes)) => Err(fail_child(&pidfd, Ok(SpawnError::from_report(bytes)))),
        // EOF before the ready report: the child died without a word (it cannot
        // have exec'd: its gate never opened).
        Ok(None) => Err(fail_child(
            &pidfd,
            Err(SpawnError::new(SpawnStage::Report, libc::EIO)),
        )),
        Err(error) => Err(fail_child(&pidfd, Err(error))),
    }
}

/// Ends a failed child and returns its error: `Ok(error)` is a failure the
/// child reported (it is about to `_exit`: reap it); `Err(error)` means we do
/// not know what the child did, so it is killed first.
fn fail_child(pidfd: &OwnedFd, error: Result<SpawnError, SpawnError>) -> SpawnError {
    let error = match error {
        Ok(reported) => reported,
        Err(unknown) => {
            let _ = crate::sys::process::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            unknown
        }
    };
    reap_failed_child(pidfd);
    error
}

/// Reaps the child if it has exited already (never waits).
fn reap_if_exited(pidfd: &OwnedFd) {
    let _ = crate::sys::process::wait_pidfd(pidfd.as_fd(), false);
}

/// Waits for a child that reported failure and is about to `_exit`, so it
/// does not stay a zombie. With SIGCHLD ignored (auto-reap) the wait ends with
/// ECHILD once the kernel reaped it; either way it returns promptly.
fn reap_failed_child(pidfd: &OwnedFd) {
    let _ = crate::sys::process::wait_pidfd(pidfd.as_fd(), true);
}

#[cfg(test)]
mod tests;
