//! cgroup v2 files: a cgroup's directory fd (for `CLONE_INTO_CGROUP` and `openat`), its
//! `cgroup.procs`, `cgroup.events`, `cgroup.kill` and `cgroup.freeze`, and `mkdir`/`rmdir`.
//!
//! Every read is bounded by the caller's buffer and every parse here is of the kernel's own
//! decimal text; odd content is skipped, never a panic. Allocation-free: the event loop calls
//! these on its path.

use super::{check, check_size, owned, retry};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Most pids [`for_each_proc`] hands out from one `cgroup.procs` (a bound on a file that has
/// one line per process: the kernel's `pid_max` is at most 2^22).
pub const PROCS_MAX: usize = 1 << 22;

/// Opens a cgroup directory (`O_RDONLY | O_DIRECTORY`, close-on-exec): the fd
/// `CLONE_INTO_CGROUP` takes and the base of every other call here.
pub fn open_dir(path: &CStr) -> io::Result<OwnedFd> {
    super::fd::open(path, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Opens `name` inside the cgroup directory `dir` (close-on-exec).
pub fn open_in(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    retry(|| {
        // SAFETY: `name` is NUL-terminated; openat returns a new fd or -1.
        owned(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        })
    })
}

/// `mkdir(path, 0755)`; `Ok(false)` when it exists already.
pub fn mkdir(path: &CStr) -> io::Result<bool> {
    // SAFETY: `path` is NUL-terminated; mkdir reads only it.
    match check(unsafe { libc::mkdir(path.as_ptr(), 0o755) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `rmdir(path)`: removes an empty cgroup (`EBUSY` while it has processes or children).
pub fn rmdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; rmdir reads only it.
    check(unsafe { libc::rmdir(path.as_ptr()) }).map(|_| ())
}

/// `mkdirat(dir, name, 0755)`: creates the cgroup `name` under `dir`.
pub fn mkdir_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; mkdirat reads only it.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }).map(|_| ())
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes the empty cgroup `name` under `dir`.
pub fn rmdir_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; unlinkat reads only it.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
}

/// Reads from offset 0 until `buf` is full or end of file (`pread`: a kernfs file is read
/// again from its start each time, and a read re-arms its `POLLPRI`).
pub fn read_from_start(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let rest = &mut buf[len..];
        let n = retry(|| {
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
            check_size(unsafe {
                libc::pread(
                    fd.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    len as libc::off_t,
                )
            })
        })?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

/// The `populated` field of a `cgroup.events` text: `Some(true)` while the cgroup or a
/// descendant has a process, `None` when the text has no such line.
pub fn parse_populated(text: &[u8]) -> Option<bool> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"populated ")?;
        match value {
            b"0" => Some(false),
            b"1" => Some(true),
            _ => None,
        }
    })
}

/// Reads `populated` from an open `cgroup.events` (and re-arms its `POLLPRI`).
pub fn read_populated(events: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 128];
    let len = read_from_start(events, &mut buf)?;
    parse_populated(&buf[..len]).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens the `cgroup.events` of the cgroup `dir` (for [`read_populated`] and a `POLLPRI` poll).
pub fn open_events(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_in(dir, c"cgroup.events", libc::O_RDONLY)
}

/// Whether the cgroup `dir` (or a descendant) has a process now.
pub fn populated(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let events = open_events(dir)?;
    read_populated(events.as_fd())
}

fn write_control(dir: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let file = open_in(dir, name, libc::O_WRONLY)?;
    let written = super::fd::write(file.as_fd(), value)?;
    if written == value.len() {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

/// Writes `value` to the file `name` of the cgroup `dir` (a limit such as `memory.max`,
/// `cgroup.subtree_control`): allocation-free.
pub fn write_file(dir: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    write_control(dir, name, value)
}

/// Writes `1` to `cgroup.kill` (5.14+): SIGKILL to every process of the cgroup and its
/// descendants, race-free against forks. `ENOENT` on an older kernel.
pub fn kill(dir: BorrowedFd<'_>) -> io::Result<()> {
    write_control(dir, c"cgroup.kill", b"1")
}

/// Writes `1` (freeze) or `0` (thaw) to `cgroup.freeze` (5.2+).
pub fn freeze(dir: BorrowedFd<'_>, frozen: bool) -> io::Result<()> {
    write_control(dir, c"cgroup.freeze", if frozen { b"1" } else { b"0" })
}

/// Calls `f` with every pid listed in the `cgroup.procs` of `dir` (this cgroup only, not its
/// descendants), at most [`PROCS_MAX`]; returns how many. Reads in fixed chunks; a token that
/// is not a positive decimal pid is skipped.
pub fn for_each_proc(dir: BorrowedFd<'_>, mut f: impl FnMut(i32)) -> io::Result<usize> {
    let procs = open_in(dir, c"cgroup.procs", libc::O_RDONLY)?;
    let mut buf = [0u8; 512];
    // The number being read, carried across chunks; `None` after a bad byte until a newline.
    let mut current: Option<u64> = Some(0);
    let mut digits = 0usize;
    let mut count = 0usize;
    let mut emit = |current: Option<u64>, digits: usize, count: &mut usize| {
        if let Some(pid) = current.filter(|_| digits > 0) {
            if pid > 0 && pid <= i32::MAX as u64 && *count < PROCS_MAX {
                f(pid as i32);
                *count += 1;
            }
        }
    };
    loop {
        let n = super::fd::read(procs.as_fd(), &mut buf)?;
        if n == 0 {
            break;
        }
        for &byte in &buf[..n] {
            match byte {
                b'0'..=b'9' => {
                    current = current
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                        .filter(|&v| v <= i32::MAX as u64);
                    digits += 1;
                }
                b'\n' => {
                    emit(current, digits, &mut count);
                    current = Some(0);
                    digits = 0;
                }
                _ => current = None,
            }
        }
        if count >= PROCS_MAX {
            return Ok(count);
        }
    }
    emit(current, digits, &mut count);
    Ok(count)
}

/// `kill(pid, signal)`, for a pid read from `cgroup.procs` (`ESRCH`: it exited meanwhile).
pub fn signal_pid(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers; no memory is passed.
    check(unsafe { libc::kill(pid, signal) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_is_read_from_the_events_text() {
        assert_eq!(parse_populated(b"populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated(b"populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated(b"frozen 0\npopulated 0"), Some(false));
        assert_eq!(parse_populated(b""), None);
        assert_eq!(parse_populated(b"populated 2\n"), None);
        assert_eq!(parse_populated(b"populated\n\xff\x00"), None);
    }

    #[test]
    fn procs_of_our_own_cgroup_include_us() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        let Some(mount) = crate::cgroup::mount_point() else {
            return;
        };
        let full = format!("{}{}\0", mount.display(), path.trim_end_matches('/'));
        let Ok(dir) = open_dir(CStr::from_bytes_with_nul(full.as_bytes()).unwrap()) else {
            return;
        };
        let me = super::super::process::getpid();
        let mut found = false;
        for_each_proc(dir.as_fd(), |pid| found |= pid == me).unwrap();
        assert!(found, "{me} not in {full}");
    }
}
