//! Log lines on stderr with journald priority prefixes (`<6>` info...).
//!
//! Each line is formatted into a fixed stack buffer and written with one
//! `write(2)`, so lines from the agent never interleave and logging allocates
//! nothing. Lines longer than [`LOG_LINE_BYTES_MAX`] are cut and end in `…`.
//! Callers never log environment values (only counts) and escape client bytes
//! with [`crate::text::Escaped`].

use std::fmt::{self, Write as _};

use crate::limits::LOG_LINE_BYTES_MAX;
use crate::text::FixedBuf;

/// syslog priorities, as journald reads them from a `<N>` line prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// Writes one line: `<N>holden-agent: ` + message + newline.
pub fn line(priority: Priority, args: fmt::Arguments<'_>) {
    const ELLIPSIS: &[u8] = "…\n".as_bytes();
    let mut buf = FixedBuf::<LOG_LINE_BYTES_MAX>::new();
    let _ = write!(buf, "<{}>holden-agent: ", priority as u8);
    let _ = buf.write_fmt(args);
    if buf.is_truncated() || buf.len() + 1 > LOG_LINE_BYTES_MAX {
        buf.truncate(LOG_LINE_BYTES_MAX - ELLIPSIS.len());
        buf.push_bytes(ELLIPSIS);
    } else {
        buf.push_bytes(b"\n");
    }
    let bytes = buf.as_bytes();
    // A failed write of a log line is ignored (there is nowhere else to report it).
    let _ = holden::sys::fd::write_all_raw(2, bytes);
}

macro_rules! err {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Err, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Warning, format_args!($($arg)*)) };
}
macro_rules! notice {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Notice, format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Info, format_args!($($arg)*)) };
}
pub(crate) use {err, info, notice, warning};
