//! pidfd helpers: the few kernel calls the orchestrator makes on process file descriptors.
//!
//! A pidfd refers to one process and is immune to PID reuse. The orchestrator holds one for
//! every process it supervises, local (its own child, from `clone3(CLONE_PIDFD)`) or QM (received
//! from the agent over SCM_RIGHTS). This module wraps:
//!
//! - [`send_signal`]: `pidfd_send_signal(2)` (5.1+);
//! - [`wait_child`]: `waitid(P_PIDFD, WEXITED | WNOHANG)` (5.4+), which reaps a process and
//!   returns its status, but only for the caller's own children;
//! - [`exit_info`]: the `PIDFD_GET_INFO` ioctl with `PIDFD_INFO_EXIT` (6.15+), the only way to
//!   learn the exit status of a process that is not our child, and only after it has been
//!   reaped by its parent. Between exit (the pidfd polls readable) and reap there is a window in
//!   which the status is not yet there: [`ExitInfo::NotYet`] says so. On 6.9+ the reap makes
//!   the pidfd poll `POLLHUP` ([`Capabilities::reap_hup`]): the caller waits for that instead of
//!   asking too early;
//! - [`is_pidfd`]: whether an fd received from a less trusted peer really is a pidfd;
//! - [`identity`]: which process a pidfd refers to, to refuse a second pidfd for a process that
//!   is already supervised;
//! - [`examine`]: all of that for a received fd in one look (one `fstatfs`, one read of its
//!   `/proc/self/fdinfo` entry): pidfd or not, which process, which PID namespace;
//! - [`Capabilities::probe`]: what this kernel offers, probed once at start-up.
//!
//! None of these functions allocate; the ones that read `/proc` use stack buffers.

use crate::sys::fd::{self as sysfd, ProcPath};
use crate::sys::process::{self, PIDFD_INFO_EXIT, PIDFD_INFO_PID};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// `statfs.f_type` of pidfs (`PID_FS_MAGIC`, `include/uapi/linux/magic.h`), 6.9+.
pub const PID_FS_MAGIC: i64 = 0x5049_4446;

/// The name `readlink(/proc/self/fd/N)` returns for a pidfd on every kernel since 5.3 (pidfs
/// keeps it for compatibility).
const PIDFD_LINK_NAME: &[u8] = b"anon_inode:[pidfd]";

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStatus {
    /// `exit(code)` or return from main.
    Exited(i32),
    /// Killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// The kernel cannot tell us (not our child and no `PIDFD_INFO_EXIT`, or not visible from
    /// here). Never invented.
    Unknown,
}

impl WaitStatus {
    /// Decodes a wait(2)-style status word (as `PIDFD_INFO_EXIT` reports it).
    pub fn from_wait_status(status: i32) -> WaitStatus {
        if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            WaitStatus::Unknown
        }
    }

    /// Whether this counts as a clean exit (code 0). `Unknown` is not a success.
    pub fn is_success(self) -> bool {
        self == WaitStatus::Exited(0)
    }
}

/// Result of [`exit_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    /// The process was reaped and the kernel recorded this status.
    Status(WaitStatus),
    /// The kernel supports exit information but the process has not been reaped yet (it is
    /// still running, or a zombie its parent has not collected): ask again later.
    NotYet,
    /// This kernel, or this namespace, cannot report it: EREMOTE (process not visible in our
    /// PID namespace), ENOTTY/EINVAL (no `PIDFD_GET_INFO` / no `PIDFD_INFO_EXIT`), ESRCH on a
    /// kernel that reaps information away.
    Unavailable,
}

/// Opens a pidfd for `pid` (`pidfd_open(2)`, close-on-exec). Racy for anything but the
/// caller's own unreaped children; used for probes and tests only.
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    process::pidfd_open(pid)
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`).
///
/// ESRCH means the process has already exited (the caller will see the pidfd poll readable);
/// EINVAL for a process in a PID namespace that is not ours or a descendant.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    process::pidfd_send_signal(pidfd, signal)
}

/// Reaps our own child behind `pidfd` if it has exited: `Ok(Some(status))`; `Ok(None)` if it is
/// still running. ECHILD if it is not our child (or was already reaped).
pub fn wait_child(pidfd: BorrowedFd<'_>) -> io::Result<Option<WaitStatus>> {
    let Some(waited) = process::wait_pidfd(pidfd, false)? else {
        return Ok(None);
    };
    Ok(Some(match waited.code {
        libc::CLD_EXITED => WaitStatus::Exited(waited.status),
        libc::CLD_KILLED => WaitStatus::Signaled {
            signal: waited.status,
            core_dumped: false,
        },
        libc::CLD_DUMPED => WaitStatus::Signaled {
            signal: waited.status,
            core_dumped: true,
        },
        _ => WaitStatus::Unknown,
    }))
}

/// Whether the process behind `pidfd` is a child of ours (see
/// [`process::pidfd_is_child`]): its exit status is then read with [`wait_child`].
pub fn is_child(pidfd: BorrowedFd<'_>) -> bool {
    process::pidfd_is_child(pidfd)
}

/// Whether the process behind `pidfd` has ended (its pidfd is readable).
pub fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [crate::sys::poll::PollFd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
        events: libc::POLLIN,
        revents: 0,
    }];
    crate::sys::poll::poll(&mut fds, 0).is_ok_and(|n| n > 0)
}

/// Reads the exit status of any process behind `pidfd` (not only our children) through
/// `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`. Needs 6.15+, and the process reaped.
pub fn exit_info(pidfd: BorrowedFd<'_>) -> ExitInfo {
    match process::pidfd_get_info(pidfd, PIDFD_INFO_EXIT) {
        Ok(info) if info.mask & PIDFD_INFO_EXIT != 0 => {
            ExitInfo::Status(WaitStatus::from_wait_status(info.exit_code))
        }
        // The ioctl works but says nothing about exit: either the process is still there (alive
        // or a zombie), or this kernel predates PIDFD_INFO_EXIT (6.13/6.14). The caller knows
        // which from `Capabilities::exit_info`.
        Ok(_) => ExitInfo::NotYet,
        Err(_) => ExitInfo::Unavailable,
    }
}

/// Which process a pidfd refers to, as far as this kernel lets us tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// pidfs inode number (6.9+): unique per process for the life of the system on 64-bit, so
    /// two pidfds with the same inode refer to the same process. 0 when not on pidfs.
    pub inode: u64,
    /// The pid in our PID namespace; -1 if the process has exited, 0 if not visible here.
    pub pid: i32,
}

impl Identity {
    /// Whether two pidfds certainly refer to the same process.
    pub fn same_process(&self, other: &Identity) -> bool {
        if self.inode != 0 && other.inode != 0 {
            return self.inode == other.inode;
        }
        self.pid > 0 && self.pid == other.pid
    }
}

/// Identifies the process behind `pidfd`: pidfs inode (if on pidfs) and pid (see
/// [`examine`]). EBADF for an fd that is not a pidfd or whose process cannot be identified.
pub fn identity(pidfd: BorrowedFd<'_>) -> io::Result<Identity> {
    match examine(pidfd) {
        Examined::Pidfd { identity, .. } => Ok(identity),
        Examined::NotPidfd | Examined::NoIdentity => Err(io::Error::from_raw_os_error(libc::EBADF)),
    }
}

/// What one look at an fd found: see [`examine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Examined {
    /// Not a pidfd (pipe, socket, file, eventfd, other anonymous inode ...).
    NotPidfd,
    /// A pidfd whose process could not be identified.
    NoIdentity,
    /// A pidfd: which process, and where it sits in the PID namespaces (`None` once it has
    /// exited, when it is not visible from here, or when `/proc` cannot be read).
    Pidfd {
        identity: Identity,
        ns: Option<NsPid>,
    },
}

/// Looks once at an fd received from a less trusted peer: whether it is a pidfd (one
/// `fstatfs`: `PID_FS_MAGIC` on 6.9+; before pidfs, `readlink` of `/proc/self/fd/N`), and for a
/// pidfd its identity and namespace position from one read of `/proc/self/fdinfo/N`, whose
/// `ino:`, `Pid:` and `NSpid:` lines say it all (`ino` is the inode `fstat` reports; `Pid` is
/// -1 once the process is gone and 0 when it is not visible in our PID namespace). Without a
/// readable fdinfo (no `/proc`) the pid comes from `PIDFD_GET_INFO` and the inode from `fstat`,
/// and the namespace position is unknown.
pub fn examine(fd: BorrowedFd<'_>) -> Examined {
    let Some(on_pidfs) = pidfd_kind(fd) else {
        return Examined::NotPidfd;
    };
    let mut buf = [0u8; PROC_TEXT_BYTES_MAX];
    let Ok(len) = read_fdinfo(fd.as_raw_fd(), &mut buf) else {
        return match identity_without_proc(fd, on_pidfs) {
            Some(identity) => Examined::Pidfd { identity, ns: None },
            None => Examined::NoIdentity,
        };
    };
    let text = &buf[..len];
    let Some(pid) = parse_fdinfo_pid(text) else {
        return Examined::NoIdentity;
    };
    let inode = match (on_pidfs, parse_fdinfo_ino(text)) {
        (false, _) => 0,
        (true, Some(ino)) => ino,
        // A kernel whose fdinfo has no `ino:` line.
        (true, None) => match sysfd::fstat(fd) {
            Ok(st) => st.ino,
            Err(_) => return Examined::NoIdentity,
        },
    };
    let ns = if pid > 0 { parse_ns_pid(text) } else { None };
    Examined::Pidfd {
        identity: Identity { inode, pid },
        ns,
    }
}

/// The identity of a pidfd without `/proc`: inode from `fstat`, pid from `PIDFD_GET_INFO`
/// (6.13+; ESRCH: the process is gone). `None` when neither works.
fn identity_without_proc(fd: BorrowedFd<'_>, on_pidfs: bool) -> Option<Identity> {
    let inode = if on_pidfs {
        sysfd::fstat(fd).ok()?.ino
    } else {
        0
    };
    let pid = match process::pidfd_get_info(fd, PIDFD_INFO_PID) {
        Ok(info) if info.mask & PIDFD_INFO_PID != 0 => info.pid as i32,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => -1,
        _ => return None,
    };
    Some(Identity { inode, pid })
}

/// Longest `/proc` text read here (fdinfo of a pidfd, `/proc/<pid>/status`).
const PROC_TEXT_BYTES_MAX: usize = 4096;

/// Reads `/proc/self/fdinfo/<fd>` into `buf`. A pidfd's entry ends with its `NSpid:` line: once
/// that line is complete the text is whole, and the read that would return end of file is
/// saved (one `read` instead of two). Other texts are read to their end.
fn read_fdinfo(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let file = sysfd::open(ProcPath::self_fd("fdinfo", fd).as_cstr(), libc::O_RDONLY)?;
    let mut len = 0;
    while len < buf.len() {
        let n = sysfd::read(file.as_fd(), &mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if has_complete_line(&buf[..len], b"NSpid:") {
            break;
        }
    }
    Ok(len)
}

/// Whether `text` has a line starting with `prefix` that ends with a newline.
fn has_complete_line(text: &[u8], prefix: &[u8]) -> bool {
    let mut rest = text;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        if rest[..end].starts_with(prefix) {
            return true;
        }
        rest = &rest[end + 1..];
    }
    false
}

/// Where a process sits in the PID namespace hierarchy: how many PID namespaces it is in
/// (1 = only the initial one) and its pid in the innermost one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsPid {
    /// Number of `NSpid:` entries.
    pub depth: usize,
    /// The last entry: the pid in the process's own PID namespace.
    pub innermost: i32,
}

/// Parses the `NSpid:` line (the pids of a process in each PID namespace, outermost first).
fn parse_ns_pid(text: &[u8]) -> Option<NsPid> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"NSpid:"))?;
    let line = std::str::from_utf8(line).ok()?;
    let mut depth = 0;
    let mut innermost = 0;
    for word in line.split_whitespace() {
        innermost = word.parse().ok()?;
        depth += 1;
    }
    (depth > 0).then_some(NsPid { depth, innermost })
}

/// The namespace position of the process behind `pidfd` (from its fdinfo, seen from our
/// `/proc`); `Ok(None)` once it has exited (the kernel no longer lists it).
pub fn ns_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<NsPid>> {
    let mut buf = [0u8; PROC_TEXT_BYTES_MAX];
    let len = read_fdinfo(pidfd.as_raw_fd(), &mut buf)?;
    if parse_fdinfo_pid(&buf[..len]).is_some_and(|pid| pid <= 0) {
        return Ok(None);
    }
    Ok(parse_ns_pid(&buf[..len]))
}

/// The namespace position of the process `pid` (in our PID namespace), from
/// `/proc/<pid>/status`.
pub fn ns_pid_of(pid: i32) -> io::Result<Option<NsPid>> {
    let mut buf = [0u8; PROC_TEXT_BYTES_MAX];
    let text_len = sysfd::read_small_file(ProcPath::pid_file(pid, "status").as_cstr(), &mut buf)?;
    Ok(parse_ns_pid(&buf[..text_len]))
}

/// Finds `Pid:\t<n>` in fdinfo text.
fn parse_fdinfo_pid(text: &[u8]) -> Option<i32> {
    fdinfo_field(text, b"Pid:")?.parse().ok()
}

/// Finds `ino:\t<n>` in fdinfo text (the file's inode number, as `fstat` reports it).
fn parse_fdinfo_ino(text: &[u8]) -> Option<u64> {
    fdinfo_field(text, b"ino:")?.parse().ok()
}

/// The value of the first line starting with `name`, trimmed.
fn fdinfo_field<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a str> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(name))?;
    Some(std::str::from_utf8(line).ok()?.trim())
}

/// The pidfs inode number of a pidfd (6.9+; `fstatfs` and `fstat` only, no `/proc`): what
/// [`Identity::inode`] holds. `None` before pidfs.
pub fn pidfs_inode(pidfd: BorrowedFd<'_>) -> Option<u64> {
    match sysfd::fs_type(pidfd) {
        Ok(PID_FS_MAGIC) => sysfd::fstat(pidfd).ok().map(|st| st.ino),
        _ => None,
    }
}

/// Whether `fd` is a pidfd. On pidfs kernels (6.9+) `fstatfs` reports `PID_FS_MAGIC`; before
/// that a pidfd is an anonymous inode named `anon_inode:[pidfd]`, which `readlink` on
/// `/proc/self/fd/N` shows (needs `/proc`). Anything else — pipes, sockets, eventfds, regular
/// files, other anonymous inodes — is not a pidfd.
pub fn is_pidfd(fd: BorrowedFd<'_>) -> bool {
    pidfd_kind(fd).is_some()
}

/// `Some(true)`: a pidfd on pidfs; `Some(false)`: an anonymous-inode pidfd (before 6.9);
/// `None`: not a pidfd.
fn pidfd_kind(fd: BorrowedFd<'_>) -> Option<bool> {
    match sysfd::fs_type(fd) {
        Ok(PID_FS_MAGIC) => return Some(true),
        Ok(_) => {}
        Err(_) => return None,
    }
    let mut link = [0u8; 64];
    match sysfd::readlink(ProcPath::self_fd("fd", fd.as_raw_fd()).as_cstr(), &mut link) {
        Ok(n) if link.get(..n) == Some(PIDFD_LINK_NAME) => Some(false),
        _ => None,
    }
}

/// What the running kernel offers, probed once at start-up and logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Kernel release, e.g. (6, 18).
    pub kernel: (u32, u32),
    /// pidfds live on pidfs (6.9+): `is_pidfd` by magic, identity by inode.
    pub pidfs: bool,
    /// `PIDFD_GET_INFO` works (6.13+).
    pub get_info: bool,
    /// `PIDFD_INFO_EXIT` works (6.15+): exit status of QM processes is knowable.
    pub exit_info: bool,
    /// A pidfd polls `POLLHUP` once its process is reaped, not before (6.9+: the same kernel
    /// change also wakes the pidfd's pollers at the reap). The exit status, which
    /// `PIDFD_INFO_EXIT` publishes at the reap, is then there when the poll says `POLLHUP`.
    pub reap_hup: bool,
}

impl Capabilities {
    /// Probes the kernel: a pidfd on ourselves for pidfs and `PIDFD_GET_INFO`, and a child
    /// that exits at once (forked, reaped) for `PIDFD_INFO_EXIT`. Costs one fork.
    pub fn probe() -> Capabilities {
        let mut caps = Capabilities {
            kernel: process::kernel_release(),
            ..Capabilities::default()
        };
        let me = match open(process::getpid()) {
            Ok(fd) => fd,
            Err(_) => return caps,
        };
        caps.pidfs = matches!(sysfd::fs_type(me.as_fd()), Ok(PID_FS_MAGIC));
        caps.get_info = process::pidfd_get_info(me.as_fd(), PIDFD_INFO_PID).is_ok();
        (caps.exit_info, caps.reap_hup) = probe_exit();
        if !caps.get_info {
            caps.exit_info = false;
        }
        caps
    }
}

/// A child that exits 7: `(PIDFD_INFO_EXIT reads 7 back after the reap, its pidfd polled
/// POLLIN without POLLHUP as a zombie and POLLHUP once reaped)`.
fn probe_exit() -> (bool, bool) {
    let Ok(pid) = process::fork_exiting(7) else {
        return (false, false);
    };
    // Our unreaped child: its pid cannot be reused before we wait for it.
    let fd = open(pid);
    let zombie = fd
        .as_ref()
        .ok()
        .map(|fd| poll_events(fd.as_fd(), PROBE_EXIT_WAIT_MS));
    let reaped = process::waitpid(pid).is_ok();
    let Ok(fd) = fd else {
        return (false, false);
    };
    let exit = reaped && exit_info(fd.as_fd()) == ExitInfo::Status(WaitStatus::Exited(7));
    let hup = libc::POLLHUP as u32;
    let reap_hup = reaped
        && zombie.is_some_and(|e| e & libc::POLLIN as u32 != 0 && e & hup == 0)
        && poll_events(fd.as_fd(), 0) & hup != 0;
    (exit, reap_hup)
}

/// Longest wait of the probe for its child's exit.
const PROBE_EXIT_WAIT_MS: i32 = 5000;

/// What `poll(POLLIN)` on `fd` reports within `timeout_ms` (0 if nothing).
fn poll_events(fd: BorrowedFd<'_>, timeout_ms: i32) -> u32 {
    let mut entry = [crate::sys::poll::PollFd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    match crate::sys::poll::poll(&mut entry, timeout_ms) {
        Ok(_) => entry[0].revents as u16 as u32,
        Err(_) => 0,
    }
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel={}.{} pidfs={} pidfd_get_info={} pidfd_info_exit={} pidfd_reap_hup={}{}",
            self.kernel.0,
            self.kernel.1,
            yes_no(self.pidfs),
            yes_no(self.get_info),
            yes_no(self.exit_info),
            yes_no(self.reap_hup),
            if self.exit_info {
                ""
            } else {
                " note=\"exit status of QM processes will be reported as unknown\""
            }
        )
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl std::fmt::Display for WaitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WaitStatus::Exited(code) => write!(f, "exited code={code}"),
            WaitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed signal={}", signal_name(signal))?;
                if core_dumped {
                    f.write_str(" core-dumped")?;
                }
                Ok(())
            }
            WaitStatus::Unknown => f.write_str("status=unknown"),
        }
    }
}

/// The conventional name of a signal number (`SIGTERM`), or `SIG<n>`-less number text.
pub fn signal_name(signal: i32) -> SignalName {
    SignalName(signal)
}

/// Display wrapper for a signal number.
#[derive(Clone, Copy, Debug)]
pub struct SignalName(pub i32);

impl std::fmt::Display for SignalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::sys::signal::name(self.0) {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_fdinfo_pid_line() {
        let text =
            b"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n";
        assert_eq!(parse_fdinfo_pid(text), Some(4242));
        assert_eq!(parse_fdinfo_pid(b"pos:\t0\nPid:\t-1\n"), Some(-1));
        assert_eq!(parse_fdinfo_pid(b"pos:\t0\n"), None);
        assert_eq!(parse_fdinfo_pid(b"Pid:\tx\n"), None);
    }

    #[test]
    fn parses_nspid_lines() {
        assert_eq!(
            parse_ns_pid(b"Pid:\t5\nNSpid:\t4242\t7\n"),
            Some(NsPid {
                depth: 2,
                innermost: 7
            })
        );
        assert_eq!(
            parse_ns_pid(b"NSpid:\t12\n"),
            Some(NsPid {
                depth: 1,
                innermost: 12
            })
        );
        assert_eq!(parse_ns_pid(b"NSpid:\n"), None);
        assert_eq!(parse_ns_pid(b"NSpid:\tx\n"), None);
    }

    #[test]
    fn ns_pid_of_a_child_and_of_ourselves() {
        let (mut child, fd) = sleeper();
        let ours = ns_pid_of(std::process::id() as i32).unwrap().unwrap();
        let theirs = ns_pid(fd.as_fd()).unwrap().unwrap();
        assert_eq!(theirs.depth, ours.depth);
        assert_eq!(theirs.innermost, child.id() as i32);
        assert_eq!(ns_pid_of(child.id() as i32).unwrap(), Some(theirs));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(ns_pid(fd.as_fd()).unwrap(), None, "gone once reaped");
    }

    #[test]
    fn decodes_wait_status_words() {
        assert_eq!(WaitStatus::from_wait_status(3 << 8), WaitStatus::Exited(3));
        assert_eq!(
            WaitStatus::from_wait_status(9),
            WaitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            WaitStatus::from_wait_status(11 | 0x80),
            WaitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(
            WaitStatus::Signaled {
                signal: 15,
                core_dumped: false
            }
            .to_string(),
            "killed signal=SIGTERM"
        );
    }

    /// A child that sleeps; killed and reaped by the test.
    fn sleeper() -> (std::process::Child, OwnedFd) {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = open(child.id() as i32).expect("pidfd_open");
        (child, fd)
    }

    #[test]
    fn signal_then_wait_reports_the_signal() {
        let (child, fd) = sleeper();
        assert!(is_pidfd(fd.as_fd()));
        assert_eq!(wait_child(fd.as_fd()).unwrap(), None, "still running");
        send_signal(fd.as_fd(), libc::SIGTERM).unwrap();
        let mut status = None;
        for _ in 0..5000 {
            status = wait_child(fd.as_fd()).unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            status,
            Some(WaitStatus::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false
            })
        );
        // Reaped: a second signal finds no process.
        assert_eq!(
            send_signal(fd.as_fd(), libc::SIGTERM)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ESRCH)
        );
        drop(child);
    }

    #[test]
    // The child is reaped through its pidfd (waitid(P_PIDFD)), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn wait_reports_exit_code_and_refuses_non_children() {
        let child = Command::new("sh").args(["-c", "exit 42"]).spawn().unwrap();
        let fd = open(child.id() as i32).unwrap();
        let mut status = None;
        for _ in 0..5000 {
            status = wait_child(fd.as_fd()).unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(status, Some(WaitStatus::Exited(42)));
        // pid 1 is not our child.
        let init = open(1).unwrap();
        assert_eq!(
            wait_child(init.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ECHILD)
        );
    }

    #[test]
    fn exit_info_after_reap_when_the_kernel_has_it() {
        let caps = Capabilities::probe();
        let (mut child, fd) = sleeper();
        // Alive: no exit information yet.
        if caps.get_info {
            assert_eq!(exit_info(fd.as_fd()), ExitInfo::NotYet);
        }
        send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        child.wait().unwrap();
        let info = exit_info(fd.as_fd());
        if caps.exit_info {
            assert_eq!(
                info,
                ExitInfo::Status(WaitStatus::Signaled {
                    signal: libc::SIGKILL,
                    core_dumped: false
                })
            );
        } else {
            assert_ne!(
                info,
                ExitInfo::Status(WaitStatus::Exited(0)),
                "never invented"
            );
        }
    }

    #[test]
    fn other_fds_are_not_pidfds() {
        let (r, w) = sysfd::pipe().unwrap();
        assert!(!is_pidfd(r.as_fd()));
        assert!(!is_pidfd(w.as_fd()));
        let ev = sysfd::eventfd().unwrap();
        assert!(!is_pidfd(ev.as_fd()));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!is_pidfd(file.as_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_pidfd(a.as_fd()));
    }

    #[test]
    fn examine_agrees_with_the_separate_looks() {
        let (mut child, fd) = sleeper();
        let Examined::Pidfd { identity, ns } = examine(fd.as_fd()) else {
            panic!("a pidfd not taken for one");
        };
        assert_eq!(identity.pid, child.id() as i32);
        if matches!(sysfd::fs_type(fd.as_fd()), Ok(PID_FS_MAGIC)) {
            assert_eq!(identity.inode, sysfd::fstat(fd.as_fd()).unwrap().ino);
            assert_ne!(identity.inode, 0);
        } else {
            assert_eq!(identity.inode, 0);
        }
        assert_eq!(ns, ns_pid(fd.as_fd()).unwrap());
        assert_eq!(ns, ns_pid_of(child.id() as i32).unwrap());
        // The same answer as the ioctl's, where the kernel has it.
        if let Some(other) = identity_without_proc(fd.as_fd(), identity.inode != 0) {
            assert_eq!(other, identity);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: no pid, no namespace position, the same inode.
        assert_eq!(
            examine(fd.as_fd()),
            Examined::Pidfd {
                identity: Identity {
                    inode: identity.inode,
                    pid: -1
                },
                ns: None
            }
        );
    }

    #[test]
    fn examine_refuses_other_fds() {
        let (r, w) = sysfd::pipe().unwrap();
        let ev = sysfd::eventfd().unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for fd in [r.as_fd(), w.as_fd(), ev.as_fd(), file.as_fd(), a.as_fd()] {
            assert_eq!(examine(fd), Examined::NotPidfd);
            assert!(identity(fd).is_err());
        }
    }

    #[test]
    fn examine_sees_a_process_in_a_child_pid_namespace() {
        // `unshare --fork` makes its child PID 1 of a new PID namespace.
        let Ok(mut unshare) = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "30"])
            .spawn()
        else {
            eprintln!("no unshare: skipping");
            return;
        };
        let children = format!("/proc/{}/task/{}/children", unshare.id(), unshare.id());
        let mut inner = None;
        for _ in 0..5000 {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            inner = text
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok());
            if inner.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let examined = inner
            .and_then(|pid| open(pid).ok())
            .map(|fd| examine(fd.as_fd()));
        // --kill-child: the namespace's process dies with unshare.
        unshare.kill().unwrap();
        unshare.wait().unwrap();
        let Some(Examined::Pidfd { identity, ns }) = examined else {
            panic!("no pidfd of unshare's child ({inner:?}): {examined:?}");
        };
        let ours = ns_pid_of(std::process::id() as i32).unwrap().unwrap();
        assert_eq!(identity.pid, inner.unwrap());
        assert_eq!(
            ns,
            Some(NsPid {
                depth: ours.depth + 1,
                innermost: 1
            })
        );
    }

    #[test]
    fn fdinfo_is_read_whole_in_one_read() {
        let (mut child, fd) = sleeper();
        let mut one = [0u8; PROC_TEXT_BYTES_MAX];
        let len = read_fdinfo(fd.as_raw_fd(), &mut one).unwrap();
        let mut all = [0u8; PROC_TEXT_BYTES_MAX];
        let path = ProcPath::self_fd("fdinfo", fd.as_raw_fd());
        let all_len = sysfd::read_small_file(path.as_cstr(), &mut all).unwrap();
        assert_eq!(&one[..len], &all[..all_len]);
        child.kill().unwrap();
        child.wait().unwrap();
        // Other fds' entries have no NSpid line: read to their end.
        let (r, _w) = sysfd::pipe().unwrap();
        let len = read_fdinfo(r.as_raw_fd(), &mut one).unwrap();
        let path = ProcPath::self_fd("fdinfo", r.as_raw_fd());
        let all_len = sysfd::read_small_file(path.as_cstr(), &mut all).unwrap();
        assert_eq!(&one[..len], &all[..all_len]);
    }

    #[test]
    fn complete_lines_and_fields() {
        assert!(has_complete_line(b"Pid:\t1\nNSpid:\t1\t2\n", b"NSpid:"));
        assert!(!has_complete_line(b"Pid:\t1\nNSpid:\t1\t2", b"NSpid:"));
        assert!(!has_complete_line(b"Pid:\t1\n", b"NSpid:"));
        assert!(!has_complete_line(b"xNSpid:\t1\n", b"NSpid:"));
        let text =
            b"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n";
        assert_eq!(parse_fdinfo_ino(text), Some(1057));
        assert_eq!(parse_fdinfo_ino(b"pos:\t0\n"), None);
        assert_eq!(parse_fdinfo_pid(text), Some(4242));
    }

    #[test]
    fn identity_tells_processes_apart() {
        let (mut c1, fd1) = sleeper();
        let (mut c2, fd2) = sleeper();
        let fd1_again = open(c1.id() as i32).unwrap();
        let id1 = identity(fd1.as_fd()).unwrap();
        let id1b = identity(fd1_again.as_fd()).unwrap();
        let id2 = identity(fd2.as_fd()).unwrap();
        assert_eq!(id1.pid, c1.id() as i32);
        assert_eq!(id2.pid, c2.id() as i32);
        assert!(id1.same_process(&id1b));
        assert!(!id1.same_process(&id2));
        c1.kill().unwrap();
        c2.kill().unwrap();
        c1.wait().unwrap();
        c2.wait().unwrap();
        // Reaped: the pid is gone but the inode (on pidfs) still identifies it.
        let gone = identity(fd1.as_fd()).unwrap();
        assert_eq!(gone.pid, -1);
    }

    #[test]
    fn probe_matches_the_running_kernel() {
        let caps = Capabilities::probe();
        assert!(caps.kernel.0 >= 5);
        let at_least = |maj: u32, min: u32| caps.kernel >= (maj, min);
        // A released kernel newer than the feature has it (backports can only add).
        if at_least(6, 9) {
            assert!(caps.pidfs);
        }
        if at_least(6, 15) {
            assert!(caps.exit_info);
        }
        if at_least(6, 9) {
            assert!(caps.reap_hup);
        }
        assert!(!caps.to_string().is_empty());
    }
}
