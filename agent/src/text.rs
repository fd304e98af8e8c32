//! Fixed-size text formatting: log lines and error texts are built in stack
//! buffers, never on the heap, and cut (not failed) when too long.

use std::fmt;

/// A fixed-capacity byte buffer implementing `fmt::Write`; writes beyond the
/// capacity are dropped and remembered as truncation.
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FixedBuf<N> {
    pub fn new() -> Self {
        FixedBuf {
            bytes: [0; N],
            len: 0,
            truncated: false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The valid UTF-8 prefix (all of it when only `fmt::Write` filled it,
    /// unless a cut fell inside a character).
    pub fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Appends raw bytes, as many as fit.
    pub fn push_bytes(&mut self, data: &[u8]) {
        let room = N - self.len;
        let take = data.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        if take < data.len() {
            self.truncated = true;
        }
    }

    /// Shortens the buffer to `len` bytes (no-op if already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Displays bytes as text: printable ASCII as is, everything else as `\xNN`,
/// so that log lines stay one line and valid UTF-8 whatever a client sends.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"' {
                fmt::Write::write_char(f, b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// `strerror` of an errno, without allocating: "No such file or directory".
pub use holden::sys::errno::Strerror as Errno;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn fixed_buf_cuts_and_remembers() {
        let mut buf = FixedBuf::<8>::new();
        write!(buf, "0123456789").unwrap();
        assert_eq!(buf.as_bytes(), b"01234567");
        assert!(buf.is_truncated());
    }

    #[test]
    fn escaped_keeps_lines_single_and_ascii() {
        let text = format!("{}", Escaped(b"a b\n\xff\"\\"));
        assert_eq!(text, "a b\\x0a\\xff\\x22\\x5c");
    }

    #[test]
    fn errno_text_is_strerror() {
        assert_eq!(Errno(libc::ENOENT).to_string(), "No such file or directory");
    }
}
