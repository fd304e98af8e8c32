//! The agent's log lines: holden's one logger ([`holden::log`]) on stderr, each line tagged
//! `holden-agent: ` after its journald priority prefix. Callers never log environment values
//! (only counts) and escape client bytes with [`crate::text::Escaped`].

use holden::log::{Logger, Priority};

/// Every line goes to stderr; the agent logs at info and above.
const LOGGER: Logger = Logger::stderr_tagged(Priority::Info, "holden-agent: ");

/// Writes one line: `<N>holden-agent: ` + message + newline.
pub fn line(priority: Priority, args: std::fmt::Arguments<'_>) {
    LOGGER.line(priority, args);
}

macro_rules! err {
    ($($arg:tt)*) => { $crate::log::line(holden::log::Priority::Err, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::line(holden::log::Priority::Warning, format_args!($($arg)*)) };
}
macro_rules! notice {
    ($($arg:tt)*) => { $crate::log::line(holden::log::Priority::Notice, format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(holden::log::Priority::Info, format_args!($($arg)*)) };
}
pub(crate) use {err, info, notice, warning};
