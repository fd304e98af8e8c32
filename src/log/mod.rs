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
pub mod journal;

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
        if self.enabled(priority) {
            self.line_at(priority as u8, args);
        }
    }
}

impl Logger {
    /// Writes one line at syslog priority `priority` (0–7), whatever the logger's level: a
    /// service's output line, whose priority is the service's, not the orchestrator's.
    pub fn line_at(&self, priority: u8, args: fmt::Arguments<'_>) {
        let mut line = LineBuf::new();
        let _ = write!(line, "<{}>{}", priority.min(7), self.tag);
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

/// A fixed buffer that silently cuts what does not fit (keeping room for `..."\n`). It
/// follows the quotes of `key="value"` fields, so that a line cut inside a quoted value still
/// closes it: a cut line stays parseable.
pub struct LineBuf {
    buf: [u8; LINE_BYTES_MAX],
    len: usize,
    cut: bool,
    /// Inside a quoted value (after an odd number of unescaped `"`).
    quoted: bool,
    /// The last byte written inside a quoted value was an escaping `\`.
    escape: bool,
}

impl LineBuf {
    const TAIL: &'static [u8] = b"...\n";
    const TAIL_QUOTED: &'static [u8] = b"...\"\n";

    /// An empty line.
    pub fn new() -> LineBuf {
        LineBuf {
            buf: [0; LINE_BYTES_MAX],
            len: 0,
            cut: false,
            quoted: false,
            escape: false,
        }
    }

    /// The text so far (without the final newline).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line with `\n` (or `...\n` if it was cut) and returns it.
    pub fn finish(&mut self) -> &[u8] {
        let tail: &[u8] = match (self.cut, self.quoted) {
            (false, _) => b"\n",
            (true, false) => Self::TAIL,
            (true, true) => Self::TAIL_QUOTED,
        };
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
        if self.cut {
            return Ok(());
        }
        let room = LINE_BYTES_MAX - Self::TAIL_QUOTED.len() - self.len;
        let bytes = s.as_bytes();
        let take = bytes.len().min(room);
        // Newlines inside a field would split one event over two journal entries.
        for &src in &bytes[..take] {
            self.buf[self.len] = if src == b'\n' { b' ' } else { src };
            self.len += 1;
            if self.quoted {
                if self.escape {
                    self.escape = false;
                } else if src == b'\\' {
                    self.escape = true;
                } else if src == b'"' {
                    self.quoted = false;
                }
            } else if src == b'"' {
                self.quoted = true;
            }
        }
        if take < bytes.len() {
            self.cut = true;
            if self.escape {
                // A cut after an escaping backslash would escape the closing quote.
                self.len -= 1;
                self.escape = false;
            }
        }
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

/// Writes what `T` displays as one quoted `key="value"` value: `"` around it, and inside
/// `\"` for a quote, `\\` for a backslash, `\n` for a newline and `\xNN` for every other
/// control character. So a value with spaces, quotes or newlines never breaks `key=value`
/// parsing of a log line (the grammar is in `docs/orchestrator.md`, "Log").
pub struct Quoted<T>(pub T);

impl<T: fmt::Display> fmt::Display for Quoted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write!(QuoteEscaper(f), "{}", self.0)?;
        f.write_char('"')
    }
}

/// Escapes what is written through it for the inside of a quoted value.
struct QuoteEscaper<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for QuoteEscaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                c if c.is_control() => write!(self.0, "\\x{:02x}", c as u32 & 0xff)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes bytes from outside (a service's output line) as one quoted `key="value"` value, as
/// [`Quoted`] does for text: `"` around it, `\"` for a quote, `\\` for a backslash, `\n` for a
/// newline, `\xNN` for every other control character (`\r`, `\t`, DEL, C1 controls) and for
/// every byte that is not part of valid UTF-8. So whatever a service prints, the line stays
/// one line and one field, and cannot be read as a holden event.
pub struct QuotedBytes<'a>(pub &'a [u8]);

impl fmt::Display for QuotedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c if c.is_control() => {
                        let mut utf8 = [0u8; 4];
                        for b in c.encode_utf8(&mut utf8).bytes() {
                            write!(f, "\\x{b:02x}")?;
                        }
                    }
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_char('"')
    }
}

/// Writes what `T` displays as a `key=value` value: bare when it is one non-empty word (no
/// space, quote, backslash or control character), else [`Quoted`]. For values that are
/// usually one word but need not be, such as socket paths. Values longer than
/// [`LINE_BYTES_MAX`] are quoted and cut.
pub struct Value<T>(pub T);

impl<T: fmt::Display> fmt::Display for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = FixedBuf::<LINE_BYTES_MAX>::new();
        let _ = write!(text, "{}", self.0);
        let word = !text.is_empty()
            && !text.is_truncated()
            && text
                .as_str()
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
        if word {
            f.write_str(text.as_str())
        } else {
            Quoted(text.as_str()).fmt(f)
        }
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
        assert!(out.len() <= LINE_BYTES_MAX);
        assert!(out.ends_with(b"...\n"));
        // Cut inside a quoted value: the value is still closed, also after a backslash.
        for filler in ["ab", "\\\\"] {
            let mut line = LineBuf::new();
            let _ = line.write_str("event=x error=\"");
            for _ in 0..LINE_BYTES_MAX {
                let _ = line.write_str(filler);
            }
            let out = line.finish().to_vec();
            assert!(out.len() <= LINE_BYTES_MAX);
            assert!(
                out.ends_with(b"...\"\n"),
                "{}",
                String::from_utf8_lossy(&out)
            );
            let body = &out[b"event=x error=\"".len()..out.len() - 5];
            assert_eq!(body.len() % filler.len(), 0, "no half escape");
        }
    }

    #[test]
    fn escapes_outside_bytes() {
        assert_eq!(Escaped(b"a b\n\xff\\").to_string(), "a b\\x0a\\xff\\x5c");
        assert_eq!(Escaped(b"say \"hi\"").to_string(), "say \\x22hi\\x22");
        assert_eq!(Priority::parse("warn"), Some(Priority::Warning));
        assert_eq!(Priority::parse("loud"), None);
    }

    #[test]
    fn outside_bytes_are_one_quoted_value() {
        assert_eq!(
            QuotedBytes(b"<3>service=radio state=failed").to_string(),
            "\"<3>service=radio state=failed\""
        );
        assert_eq!(
            QuotedBytes(b"a\"b\\c\nd\re\tf\x7f\xff\xc3\xa9\xc2\x85").to_string(),
            "\"a\\\"b\\\\c\\nd\\x0de\\x09f\\x7f\\xff\u{e9}\\xc2\\x85\""
        );
        assert_eq!(QuotedBytes(b"").to_string(), "\"\"");
    }

    #[test]
    fn values_with_spaces_or_quotes_are_quoted() {
        assert_eq!(Quoted("nothing changed").to_string(), "\"nothing changed\"");
        assert_eq!(
            Quoted("a \"b\" c\\d\ne\x01").to_string(),
            "\"a \\\"b\\\" c\\\\d\\ne\\x01\""
        );
        assert_eq!(
            Value("/run/holden/x.sock").to_string(),
            "/run/holden/x.sock"
        );
        assert_eq!(
            Value("/run/my dir/x.sock").to_string(),
            "\"/run/my dir/x.sock\""
        );
        assert_eq!(Value("").to_string(), "\"\"");
        assert_eq!(Value("a\"b").to_string(), "\"a\\\"b\"");
    }
}
