//! Signal names and numbers for `stop_signal` (the names: `sys::signal::NAMES`).

use crate::sys::signal::{self as names, NAMES};

/// Largest signal number accepted (SIGRTMAX on Linux).
pub const SIGNAL_NUMBER_MAX: i64 = 64;

/// A signal by name ("SIGTERM", "TERM", case-insensitive).
pub fn signal_from_name(name: &str) -> Result<i32, String> {
    names::by_name(name).ok_or_else(|| {
        format!(
            "unknown signal {name:?}: expected one of {}, or a number 1..={SIGNAL_NUMBER_MAX}",
            signal_names()
        )
    })
}

/// A signal by number (1..=64).
pub fn signal_from_number(number: i64) -> Result<i32, String> {
    if (1..=SIGNAL_NUMBER_MAX).contains(&number) {
        Ok(number as i32)
    } else {
        Err(format!(
            "signal number {number} out of range: expected 1..={SIGNAL_NUMBER_MAX}"
        ))
    }
}

/// The name of a signal number, `SIG<n>` if it has none here.
pub fn signal_name(number: i32) -> String {
    names::name(number).map_or_else(|| format!("SIG{number}"), |name| format!("SIG{name}"))
}

fn signal_names() -> String {
    NAMES
        .iter()
        .map(|(name, _)| format!("SIG{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}
