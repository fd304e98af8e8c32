//! File descriptors and files.

use super::{check, check_size, owned, retry};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Opens `path` (always `O_CLOEXEC`). Through `openat(AT_FDCWD)`, which every libc passes
/// straight to the kernel: musl's `open` follows an `O_CLOEXEC` open with an
/// `fcntl(F_SETFD)` for kernels older than 2.6.23, one system call more per open (per received
/// pidfd: its fdinfo).
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; openat returns a new fd or -1.
    retry(|| owned(unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags | libc::O_CLOEXEC) }))
}

/// Grows this process's fd table to hold every number below `count` now, while it has one
/// thread: the kernel grows a table that threads share only after an RCU grace period (5–8 ms
/// at each doubling, measured), which later, under the spawner threads, would stall the loop.
/// A table never shrinks. Best effort: a number beyond `RLIMIT_NOFILE` is an error.
pub fn reserve_table(count: u64) -> io::Result<()> {
    let top = count.saturating_sub(1).min(libc::c_int::MAX as u64) as libc::c_int;
    let probe = open(c"/dev/null", libc::O_RDONLY)?;
    // SAFETY: duplicates our own fd onto the lowest free number from `top`; the copy is
    // closed at once (an OwnedFd).
    let high = owned(unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) })?;
    drop(high);
    Ok(())
}

/// Opens `path` with `O_CREAT` and `mode` for a new file (always `O_CLOEXEC`).
pub fn open_create(path: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    retry(|| {
        // SAFETY: `path` is NUL-terminated; openat with O_CREAT takes the mode as its fourth
        // argument and returns a new fd or -1.
        owned(unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                flags | libc::O_CREAT | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })
    })
}

/// One `read(2)` into `buf` (EINTR retried); 0 at end of file.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    retry(|| check_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }))
}

/// Reads until `buf` is full or end of file; the bytes read.
pub fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let n = read(fd, &mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

/// One `write(2)` of `buf` (EINTR retried); the bytes written.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    retry(|| check_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) }))
}

/// Writes all of `buf` (a log line: errors end the attempt, there is nowhere to report them).
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf)? {
            0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Writes to an fd number the caller does not own (a logger's stderr): all of `buf`.
pub fn write_all_raw(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: the borrow lives for this call only; a closed number fails with EBADF.
    write_all(unsafe { BorrowedFd::borrow_raw(fd) }, buf)
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a duplicate at `min` or above.
pub fn dup_cloexec(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1; no memory is passed.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })
}

/// Makes the number of `dst` refer to what `src` refers to (`dup3`, close-on-exec); what
/// `dst` referred to before is closed. `dst` stays the owner of its number.
pub fn dup_onto(src: BorrowedFd<'_>, dst: &OwnedFd) -> io::Result<()> {
    // SAFETY: dup3 onto a number we own; the kernel closes the file it referred to.
    retry(|| check(unsafe { libc::dup3(src.as_raw_fd(), dst.as_raw_fd(), libc::O_CLOEXEC) }))
        .map(|_| ())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: the kernel fills the two ints of `fds`.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0])?, owned(fds[1])?))
}

/// Sets a pipe's capacity (`F_SETPIPE_SZ`; the kernel rounds up to a power-of-two number of
/// pages).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes =
        libc::c_int::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an int; no memory is passed.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) }).map(|_| ())
}

/// A non-blocking, close-on-exec eventfd starting at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes integers and returns a new fd or -1.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Reads and resets an eventfd's counter; `None` when it is 0 (non-blocking).
pub fn eventfd_read(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut value = [0u8; 8];
    match read(fd, &mut value) {
        Ok(8) => Ok(Some(u64::from_ne_bytes(value))),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Adds `value` to an eventfd's counter.
pub fn eventfd_add(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    write(fd, &value.to_ne_bytes()).map(|_| ())
}

/// Whether the fd number is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Takes ownership of an fd this process inherited at start (systemd's `LISTEN_FDS`), if it
/// is open. Call only at start-up, for numbers that nothing in the process has opened or
/// claimed yet.
pub fn claim_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 || !is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the number is open and, by this function's contract, owned by nothing else in
    // the process: it was passed to us by our parent.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Sets or clears an fd's close-on-exec flag (cleared: the fd is kept across a re-exec).
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD changes only the descriptor's flags; no memory.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flag) }).map(|_| ())
}

/// An anonymous memory file kept across exec (`memfd_create` without `MFD_CLOEXEC`): the
/// handoff of a re-exec.
pub fn memfd_kept(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the kernel returns a new fd or -1.
    owned(unsafe { libc::memfd_create(name.as_ptr(), 0) })
}

/// Reads from `offset` without moving the file position (`pread`).
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    retry(|| {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        })
    })
}

/// Makes an fd non-blocking and close-on-exec (an fd inherited from systemd).
pub fn set_nonblock_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl flag queries and changes on a descriptor the caller owns; no memory.
    unsafe {
        let flags = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
        check(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Puts `/dev/null` on any of fds 0–2 that is closed, so that sockets and pipes opened later
/// never land there and children inherit sane stdio. Best effort (start-up only).
pub fn ensure_standard_fds() {
    for fd in 0..3 {
        if is_open(fd) {
            continue;
        }
        let Ok(null) = open(c"/dev/null", libc::O_RDWR) else {
            return;
        };
        if null.as_raw_fd() != fd {
            // SAFETY: dup2 onto a standard fd number that is closed (checked above); `null`
            // stays owned and is closed when dropped.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
            // dup2 cleared close-on-exec on the copy: stdio is meant to be inherited.
        } else {
            // The lowest free number was this standard fd: keep it open (and inheritable).
            let fd = std::os::fd::IntoRawFd::into_raw_fd(null);
            // SAFETY: F_SETFD on the fd we just released from its OwnedFd.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
    }
}

/// What `fstat`/`lstat` tell about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

impl FileStat {
    fn of(st: &libc::stat) -> FileStat {
        #[allow(clippy::unnecessary_cast)]
        FileStat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
        }
    }

    /// A socket file.
    pub fn is_fifo(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFIFO
    }

    pub fn is_socket(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// `fstat(2)` of an fd number the caller does not own (a logger's stderr).
pub fn fstat_raw(fd: RawFd) -> io::Result<FileStat> {
    // SAFETY: the borrow lives for this call only; a closed number fails with EBADF.
    fstat(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable for the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(FileStat::of(&st))
}

/// `lstat(2)`; `Ok(None)` when nothing is there (ENOENT).
pub fn lstat(path: &CStr) -> io::Result<Option<FileStat>> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; `st` is valid and writable.
    match check(unsafe { libc::lstat(path.as_ptr(), &mut st) }) {
        Ok(_) => Ok(Some(FileStat::of(&st))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `statfs.f_type` of the file system `fd` is on.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable for the call.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// `readlink(2)` into `buf`; the length of the target (cut at `buf.len()`).
pub fn readlink(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; the kernel writes at most `buf.len()` bytes.
    check_size(unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on our open fd.
    match retry(|| check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `ftruncate(2)` to `len` bytes.
pub fn truncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: ftruncate on our open fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(|_| ())
}

/// `rename(2)`: replaces `to` atomically.
pub fn rename(from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated.
    check(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) }).map(|_| ())
}

/// `unlink(2)`.
pub fn unlink(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::unlink(path.as_ptr()) }).map(|_| ())
}

/// Runs `f` with the process's file-creation mask set to `mask`, then restores it (for
/// creating a socket file with no window at a wider mode; start-up only).
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only changes the process's file-creation mask.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let result = f();
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    result
}

/// Formats `/proc/<pid or self>/<rest>` with a NUL into `buf`, without allocating.
pub struct ProcPath {
    buf: [u8; 64],
    len: usize,
}

impl ProcPath {
    /// `/proc/self/<dir>/<fd>` (`fd`, `fdinfo`).
    pub fn self_fd(dir: &str, fd: RawFd) -> ProcPath {
        let mut path = ProcPath::start(b"/proc/self/");
        path.push(dir.as_bytes());
        path.push(b"/");
        path.push_number(fd.max(0) as u32);
        path
    }

    /// `/proc/<pid>/<file>`.
    pub fn pid_file(pid: i32, file: &str) -> ProcPath {
        let mut path = ProcPath::start(b"/proc/");
        path.push_number(pid.max(0) as u32);
        path.push(b"/");
        path.push(file.as_bytes());
        path
    }

    fn start(prefix: &[u8]) -> ProcPath {
        let mut path = ProcPath {
            buf: [0; 64],
            len: 0,
        };
        path.push(prefix);
        path
    }

    /// Appends what fits, always leaving room for the NUL.
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - 1 - self.len;
        let take = bytes.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    fn push_number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[d..]);
    }

    /// The path, NUL-terminated.
    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf[..=self.len]).unwrap_or(c"/proc/")
    }
}

/// Reads a small file (a `/proc` text) into `buf` without allocating; the bytes read.
pub fn read_small_file(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let file = open(path, libc::O_RDONLY)?;
    read_full(std::os::fd::AsFd::as_fd(&file), buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reserve_table_grows_the_fd_table_and_leaves_no_fd() {
        let fd_size = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("FDSize:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap()
        };
        let want = fd_size() * 4 + 100;
        reserve_table(want).unwrap();
        assert!(fd_size() >= want, "FDSize {} < {want}", fd_size());
        // The number it took is free again.
        assert!(!std::path::Path::new(&format!("/proc/self/fd/{}", want - 1)).exists());
    }

    #[test]
    fn proc_paths_are_formatted_with_their_nul() {
        assert_eq!(
            ProcPath::self_fd("fdinfo", 17).as_cstr(),
            c"/proc/self/fdinfo/17"
        );
        assert_eq!(
            ProcPath::pid_file(4242, "status").as_cstr(),
            c"/proc/4242/status"
        );
        assert_eq!(ProcPath::pid_file(0, "stat").as_cstr(), c"/proc/0/stat");
    }

    #[test]
    fn open_reads_a_file_and_sets_close_on_exec() {
        let fd = open(c"/proc/self/status", libc::O_RDONLY).unwrap();
        // SAFETY: F_GETFD only queries the descriptor table.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let mut buf = [0u8; 16];
        assert!(read(fd.as_fd(), &mut buf).unwrap() > 0);
        assert_eq!(
            open(c"/nonexistent/holden", libc::O_RDONLY)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn a_pipe_carries_bytes_and_an_eventfd_counts() {
        let (r, w) = pipe().unwrap();
        write_all(w.as_fd(), b"abc").unwrap();
        drop(w);
        let mut buf = [0u8; 8];
        assert_eq!(read_full(r.as_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        let e = eventfd().unwrap();
        assert_eq!(eventfd_read(e.as_fd()).unwrap(), None);
        eventfd_add(e.as_fd(), 2).unwrap();
        eventfd_add(e.as_fd(), 1).unwrap();
        assert_eq!(eventfd_read(e.as_fd()).unwrap(), Some(3));
    }
}
