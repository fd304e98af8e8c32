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
    }
}
