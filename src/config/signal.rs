//! Signal names and numbers for `stop_signal`.

/// Signals a stop signal may name (with or without the `SIG` prefix).
const SIGNALS: [(&str, i32); 11] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("WINCH", libc::SIGWINCH),
];

/// Largest signal number accepted (SIGRTMAX on Linux).
pub const SIGNAL_NUMBER_MAX: i64 = 64;

/// A signal by name ("SIGTERM", "TERM", case-insensitive).
pub fn signal_from_name(name: &str) -> Result<i32, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, number)| *number)
        .ok_or_else(|| {
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
    SIGNALS
        .iter()
        .find(|(_, known)| *known == number)
        .map_or_else(|| format!("SIG{number}"), |(name, _)| format!("SIG{name}"))
}

fn signal_names() -> String {
    SIGNALS
        .iter()
        .map(|(name, _)| format!("SIG{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}
