//! Fixed-size text formatting (holden's, shared with the orchestrator): log lines and error
//! texts are built in stack buffers, never on the heap, and cut (not failed) when too long.

pub use holden::log::{Escaped, FixedBuf};

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
