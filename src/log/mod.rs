//! The one logger of holden's binaries: one line per event on stderr, with a journald priority
//! prefix (`<3>` … `<7>`), and the fixed-size text helpers the lines are built with.
//!
//! systemd's journal reads the `<N>` prefix of each stderr line as the syslog priority
//! (`SyslogLevelPrefix=yes`, the default). Lines are formatted into a fixed stack buffer and
//! written with one `write(2)`, so logging allocates nothing and lines from one process never
//! interleave. A line longer than [`LINE_BYTES_MAX`] is cut and ends in `...`. The orchestrator
//! writes bare lines; the agent tags each with `holden-agent: ` ([`Logger::stderr_tagged`]).
//!
//! The orchestrator's logger hands its lines to a writer thread ([`Logger::in_background`],
//! module [`background`]), so that its event loop never waits for the log stream.

pub mod background;

pub use background::Background;

use std::fmt::{self, Write as _};
use std::os::fd::RawFd;

/// Longest log line, newline included.
pub const LINE_BYTES_MAX: usize = 1024;

/// syslog priorities used by the orchestrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// `<3>`: something failed that needs an operator (service failed, agent refused).
    Err = 3,
    /// `<4>`: something went wrong and is being handled (crash, reconnect, timeout).
    Warning = 4,
    /// `<5>`: normal but significant (start-up, shutdown, agent up).
    Notice = 5,
    /// `<6>`: routine events (spawned, exited, restart scheduled).
    Info = 6,
    /// `<7>`: detail for debugging.
    Debug = 7,
}

impl Priority {
    /// Parses a configured level name (`err`/`error`, `warning`/`warn`, `notice`, `info`,
    /// `debug`).
    pub fn parse(name: &str) -> Option<Priority> {
        Some(match name {
            "err" | "error" => Priority::Err,
            "warning" | "warn" => Priority::Warning,
            "notice" => Priority::Notice,
            "info" => Priority::Info,
            "debug" => Priority::Debug,
            _ => return None,
        })
    }
}

/// Writes log lines to one fd (stderr by default), itself or through a [`Background`] writer.
#[derive(Clone, Debug)]
pub struct Logger {
    fd: RawFd,
    max: Priority,
    /// Written after the priority prefix of every line.
    tag: &'static str,
    background: Option<Background>,
}

impl Logger {
    /// A logger that writes lines at `max` priority or more important to `fd`.
    pub const fn new(fd: RawFd, max: Priority) -> Logger {
        Logger {
            fd,
            max,
            tag: "",
            background: None,
        }
    }

    /// A logger on stderr with `tag` after every line's priority prefix.
    pub const fn stderr_tagged(max: Priority, tag: &'static str) -> Logger {
        Logger {
            fd: libc::STDERR_FILENO,
            max,
            tag,
            background: None,
        }
    }

    /// The same logger, its lines written by `background` (which should write to the same fd).
    pub fn in_background(self, background: Background) -> Logger {
        Logger {
            background: Some(background),
            ..self
        }
    }

    /// A logger on stderr.
    pub const fn stderr(max: Priority) -> Logger {
        Logger::new(libc::STDERR_FILENO, max)
    }

    /// The same logger with another level (reload).
    pub fn with_max(self, max: Priority) -> Logger {
        Logger { max, ..self }
    }

    /// Whether lines at `priority` are written.
    pub fn enabled(&self, priority: Priority) -> bool {
        priority <= self.max
    }

    /// Writes one line; errors writing the log are ignored (there is nowhere to report them).
    pub fn line(&self, priority: Priority, args: fmt::Arguments<'_>) {
        if !self.enabled(priority) {
            return;
        }
        let mut line = LineBuf::new();
        let _ = write!(line, "<{}>{}", priority as u8, self.tag);
        let _ = line.write_fmt(args);
        let bytes = line.finish();
        match &self.background {
            Some(background) => background.push(bytes),
            None => {
                let _ = crate::sys::fd::write_all_raw(self.fd, bytes);
            }
        }
    }
}

/// A fixed buffer that silently cuts what does not fit (keeping room for `...\n`).
pub struct LineBuf {
    buf: [u8; LINE_BYTES_MAX],
    len: usize,
    cut: bool,
}

impl LineBuf {
    const TAIL: &'static [u8] = b"...\n";

    /// An empty line.
    pub fn new() -> LineBuf {
        LineBuf {
            buf: [0; LINE_BYTES_MAX],
            len: 0,
            cut: false,
        }
    }

    /// The text so far (without the final newline).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line with `\n` (or `...\n` if it was cut) and returns it.
    pub fn finish(&mut self) -> &[u8] {
        let tail: &[u8] = if self.cut { Self::TAIL } else { b"\n" };
        self.buf[self.len..self.len + tail.len()].copy_from_slice(tail);
        &self.buf[..self.len + tail.len()]
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        LineBuf::new()
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_BYTES_MAX - Self::TAIL.len() - self.len;
        let mut bytes = s.as_bytes();
        if bytes.len() > room {
            self.cut = true;
            bytes = &bytes[..room];
        }
        // Newlines inside a field would split one event over two journal entries.
        for (dst, &src) in self.buf[self.len..self.len + bytes.len()]
            .iter_mut()
            .zip(bytes)
        {
            *dst = if src == b'\n' { b' ' } else { src };
        }
        self.len += bytes.len();
        Ok(())
    }
}

/// A fixed-capacity byte buffer implementing `fmt::Write`; writes beyond the
/// capacity are dropped and remembered as truncation.
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FixedBuf<N> {
    #[allow(clippy::new_without_default)]
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

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

/// Writes `bytes` as text safe for one log line and for a `key="value"` field: printable
/// ASCII as is, everything else (and `\\` and `"`) as `\xNN`. Used for argv and messages
/// that came from outside.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

pub use crate::sys::errno::ErrnoText;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn lines_carry_priority_and_end_in_newline() {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let log = Logger::new(w.as_raw_fd(), Priority::Info);
        log.line(Priority::Warning, format_args!("service={} pid={}", "a", 7));
        log.line(Priority::Debug, format_args!("hidden"));
        log.line(Priority::Info, format_args!("two\nlines"));
        drop(w);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "<4>service=a pid=7\n<6>two lines\n");
    }

    #[test]
    fn long_lines_are_cut_not_grown() {
        let mut line = LineBuf::new();
        for _ in 0..LINE_BYTES_MAX {
            let _ = line.write_str("xy");
        }
        let out = line.finish();
        assert_eq!(out.len(), LINE_BYTES_MAX);
        assert!(out.ends_with(b"...\n"));
    }

    #[test]
    fn escapes_outside_bytes() {
        assert_eq!(Escaped(b"a b\n\xff\\").to_string(), "a b\\x0a\\xff\\x5c");
        assert_eq!(Escaped(b"say \"hi\"").to_string(), "say \\x22hi\\x22");
        assert_eq!(Priority::parse("warn"), Some(Priority::Warning));
        assert_eq!(Priority::parse("loud"), None);
    }
}
