//! What a service says over the sd_notify protocol (`sd_notify(3)`), unmodified: one datagram
//! of newline-separated `KEY=VALUE` assignments. Sans-IO: decoding of one datagram; the
//! socket, the sender's credentials and what follows are the shell's
//! (`src/orchestrator/notify.rs`). The sending side, for the orchestrator itself, is
//! [`crate::sd_notify`].
//!
//! Understood: `READY=1`, `STATUS=…`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`,
//! `WATCHDOG=trigger`, `EXTEND_TIMEOUT_USEC=…`, `ERRNO=…`, `MAINPID=…`. Any other assignment
//! (`FDSTORE=1`, `MONOTONIC_USEC=`, custom ones) is counted and otherwise ignored, as systemd
//! ignores what it does not know; a value that does not parse is an error for that key only.

/// Longest datagram read (systemd reads up to 4096 bytes, `PIPE_BUF`).
pub const DATAGRAM_BYTES_MAX: usize = 4096;
/// Longest `STATUS=` text kept; the rest is cut at a character boundary.
pub const STATUS_BYTES_MAX: usize = 256;

/// `WATCHDOG=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// `WATCHDOG=1`: alive.
    Ping,
    /// `WATCHDOG=trigger`: handle as a missed watchdog now.
    Trigger,
}

/// One decoded datagram. A key given twice takes its last value, as systemd does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message<'a> {
    pub ready: bool,
    pub stopping: bool,
    pub reloading: bool,
    pub watchdog: Option<Watchdog>,
    /// `STATUS=` (UTF-8, at most [`STATUS_BYTES_MAX`] bytes).
    pub status: Option<&'a str>,
    pub errno: Option<i32>,
    pub main_pid: Option<i32>,
    pub extend_timeout_usec: Option<u64>,
    /// Assignments not understood (unknown keys, values that do not parse, lines without
    /// `=`, a `STATUS=` that is not UTF-8).
    pub ignored: u32,
}

impl Message<'_> {
    /// Whether it asks for anything.
    pub fn is_empty(&self) -> bool {
        !self.ready
            && !self.stopping
            && !self.reloading
            && self.watchdog.is_none()
            && self.status.is_none()
            && self.errno.is_none()
            && self.main_pid.is_none()
            && self.extend_timeout_usec.is_none()
    }
}

/// Decodes one datagram (never panics, never allocates). Bytes past
/// [`DATAGRAM_BYTES_MAX`] are not looked at.
pub fn decode(datagram: &[u8]) -> Message<'_> {
    let datagram = &datagram[..datagram.len().min(DATAGRAM_BYTES_MAX)];
    let mut m = Message::default();
    for line in datagram.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            m.ignored += 1;
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let understood = match key {
            b"READY" => flag(value).map(|on| m.ready = on),
            b"STOPPING" => flag(value).map(|on| m.stopping = on),
            b"RELOADING" => flag(value).map(|on| m.reloading = on),
            b"WATCHDOG" => match value {
                b"1" => Some(Watchdog::Ping),
                b"trigger" => Some(Watchdog::Trigger),
                _ => None,
            }
            .map(|w| m.watchdog = Some(w)),
            b"STATUS" => std::str::from_utf8(value)
                .ok()
                .map(|text| m.status = Some(cut(text, STATUS_BYTES_MAX))),
            b"ERRNO" => number(value)
                .and_then(|n| i32::try_from(n).ok())
                .map(|n| m.errno = Some(n)),
            b"MAINPID" => number(value)
                .and_then(|n| i32::try_from(n).ok())
                .filter(|&n| n > 0)
                .map(|n| m.main_pid = Some(n)),
            b"EXTEND_TIMEOUT_USEC" => number(value).map(|n| m.extend_timeout_usec = Some(n)),
            _ => None,
        };
        if understood.is_none() {
            m.ignored += 1;
        }
    }
    m
}

/// `1` (on) or `0` (off); anything else is not understood.
fn flag(value: &[u8]) -> Option<bool> {
    match value {
        b"1" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// A decimal number of at most 19 digits.
fn number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_sd_notify_sends() {
        let m = decode(b"READY=1\nSTATUS=Processing requests\nMAINPID=4211\n");
        assert!(m.ready);
        assert_eq!(m.status, Some("Processing requests"));
        assert_eq!(m.main_pid, Some(4211));
        assert_eq!(m.ignored, 0);
        assert_eq!(decode(b"WATCHDOG=1").watchdog, Some(Watchdog::Ping));
        assert_eq!(
            decode(b"WATCHDOG=trigger").watchdog,
            Some(Watchdog::Trigger)
        );
        assert_eq!(
            decode(b"EXTEND_TIMEOUT_USEC=5000000").extend_timeout_usec,
            Some(5_000_000)
        );
        assert_eq!(decode(b"ERRNO=2").errno, Some(2));
        let m = decode(b"STOPPING=1\nRELOADING=1\nMONOTONIC_USEC=12");
        assert!(m.stopping && m.reloading);
        assert_eq!(m.ignored, 1);
        assert!(decode(b"").is_empty() && decode(b"\n\n").is_empty());
    }

    #[test]
    fn what_does_not_parse_is_counted_not_taken() {
        let m = decode(
            b"READY=yes\nMAINPID=0\nMAINPID=-3\nERRNO=9999999999\nWATCHDOG=2\nnokey\nSTATUS=\xff",
        );
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(m.ignored, 7);
        // The last of a key wins; a long status is cut at a character boundary.
        let m = decode(b"READY=1\nREADY=0");
        assert!(!m.ready);
        let long = format!("STATUS={}", "é".repeat(200));
        let m = decode(long.as_bytes());
        assert_eq!(m.status.unwrap().len(), 256);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = [0u8; 600];
        for _ in 0..20_000 {
            let len = (x % 600) as usize;
            for b in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = b"READY=1\nSTATUSWATCHDOG=trigger0\xff"[(x % 32) as usize];
            }
            let _ = decode(&buf[..len]);
        }
        let _ = decode(&[b'A'; 10_000]);
    }
}
