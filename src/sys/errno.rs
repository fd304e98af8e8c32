//! errno values and their text.

use std::fmt;

/// The calling thread's errno after a failed call (EIO if there is none).
pub fn last() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The errno of an `io::Error` (EIO for errors that did not come from the kernel).
pub fn of(error: &std::io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

/// `strerror_r(errno)` into `buf`; the text, or `None` for an unknown errno.
pub fn text(errno: i32, buf: &mut [u8; 128]) -> Option<&str> {
    // SAFETY: the XSI strerror_r (what the libc crate binds) writes at most `buf.len()` bytes,
    // NUL-terminated, into `buf`.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if rc != 0 || len == 0 {
        return None;
    }
    std::str::from_utf8(&buf[..len]).ok()
}

/// The symbolic names of the errno values a spawn, a socket or the agent link can report,
/// for operators (`exec ENOENT`); the values are the platform's own.
const NAMES: [(i32, &str); 41] = [
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::ESRCH, "ESRCH"),
    (libc::EINTR, "EINTR"),
    (libc::EIO, "EIO"),
    (libc::ENXIO, "ENXIO"),
    (libc::E2BIG, "E2BIG"),
    (libc::ENOEXEC, "ENOEXEC"),
    (libc::EBADF, "EBADF"),
    (libc::ECHILD, "ECHILD"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EFAULT, "EFAULT"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::ENODEV, "ENODEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENFILE, "ENFILE"),
    (libc::EMFILE, "EMFILE"),
    (libc::ETXTBSY, "ETXTBSY"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EROFS, "EROFS"),
    (libc::EPIPE, "EPIPE"),
    (libc::ENAMETOOLONG, "ENAMETOOLONG"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ELOOP, "ELOOP"),
    (libc::EPROTO, "EPROTO"),
    (libc::EMSGSIZE, "EMSGSIZE"),
    (libc::EPROTOTYPE, "EPROTOTYPE"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::ENOTCONN, "ENOTCONN"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::ECANCELED, "ECANCELED"),
    (libc::ELIBBAD, "ELIBBAD"),
];

/// The symbolic name of `errno` (`ENOENT`), `None` when it is not one holden names.
pub fn name(errno: i32) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| *name)
}

/// An errno as `strerror` text with its number, formatted without allocating
/// (`io::Error`'s `Display` allocates): `No such file or directory (errno 2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrnoText(pub i32);

impl fmt::Display for ErrnoText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 128];
        match text(self.0, &mut buf) {
            Some(text) => write!(f, "{text} (errno {})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// An errno as bare `strerror` text: `No such file or directory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strerror(pub i32);

impl fmt::Display for Strerror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 128];
        match text(self.0, &mut buf) {
            Some(text) => f.write_str(text),
            None => write!(f, "errno {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_reads_like_strerror() {
        assert_eq!(
            ErrnoText(libc::ENOENT).to_string(),
            "No such file or directory (errno 2)"
        );
        assert_eq!(
            Strerror(libc::ENOENT).to_string(),
            "No such file or directory"
        );
        assert!(ErrnoText(99999).to_string().contains("99999"));
        assert_eq!(name(libc::ENOENT), Some("ENOENT"));
        assert_eq!(name(libc::ETIMEDOUT), Some("ETIMEDOUT"));
        assert_eq!(name(0), None);
        for (n, _) in NAMES {
            assert_eq!(
                NAMES.iter().filter(|(m, _)| *m == n).count(),
                1,
                "{n} twice"
            );
        }
    }
}
