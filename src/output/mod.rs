//! Service output, sans-IO: what the orchestrator does with the bytes a local service writes
//! on its stdout and stderr pipes, without any I/O or clock of its own.
//!
//! - [`lines`]: bytes in, complete lines out (a bound on a line's length, the `<N>` priority
//!   prefix parsed off);
//! - [`history`]: a fixed byte ring per service holding its last lines (`holdenctl logs`);
//! - [`journal`]: the encoder of journald's native protocol (one datagram per entry);
//! - [`RateLimit`]: how many lines of a service are forwarded per second (time injected), so
//!   that a service that floods its output costs a bounded amount; the rest is counted.
//!
//! The I/O shell is `orchestrator::output`.

pub mod history;
pub mod journal;
pub mod lines;

use std::time::Duration;

/// Which of a service's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The syslog priority of a line without a `<N>` prefix: 6 (info) on stdout, 3 (err) on
    /// stderr.
    pub fn default_priority(self) -> u8 {
        match self {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
        }
    }

    /// The stream of an index (0 stdout, anything else stderr).
    pub fn from_index(index: usize) -> Stream {
        if index == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        }
    }
}

/// Lines of one service forwarded per window at most.
pub const LINES_PER_WINDOW_MAX: u32 = 1000;
/// Bytes of one service read per window at most: past them its pipes are not read until the
/// window ends (its writes block), so that a flood costs the loop a bounded amount.
pub const READ_BYTES_PER_WINDOW_MAX: u64 = 1024 * 1024;
/// The window of [`LINES_PER_WINDOW_MAX`].
pub const WINDOW: Duration = Duration::from_secs(1);

/// A fixed budget of lines per window for one service. Time is injected (ns of any monotonic
/// clock).
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimit {
    window_start_ns: u64,
    used: u32,
    /// Bytes read in this window.
    read: u64,
    /// Lines refused since the last [`RateLimit::take_unreported`].
    unreported: u64,
    /// Lines refused in all.
    dropped: u64,
}

impl RateLimit {
    /// Starts a new window if the current one is over.
    fn roll(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.window_start_ns) >= WINDOW.as_nanos() as u64 {
            self.window_start_ns = now_ns;
            self.used = 0;
            self.read = 0;
        }
    }

    /// Bytes that may still be read in the window of `now_ns`.
    pub fn read_budget(&mut self, now_ns: u64) -> u64 {
        self.roll(now_ns);
        READ_BYTES_PER_WINDOW_MAX - self.read
    }

    /// Counts bytes read.
    pub fn count_read(&mut self, bytes: u64) {
        self.read = (self.read + bytes).min(READ_BYTES_PER_WINDOW_MAX);
    }

    /// When the current window ends (ns).
    pub fn window_end_ns(&self) -> u64 {
        self.window_start_ns
            .saturating_add(WINDOW.as_nanos() as u64)
    }

    /// Whether one more line may be forwarded at `now_ns`; a refused line is counted.
    pub fn admit(&mut self, now_ns: u64) -> bool {
        self.roll(now_ns);
        if self.used < LINES_PER_WINDOW_MAX {
            self.used += 1;
            true
        } else {
            self.count_drop();
            false
        }
    }

    /// Counts a line that could not be forwarded for another reason (a full journal socket).
    pub fn count_drop(&mut self) {
        self.unreported += 1;
        self.dropped += 1;
    }

    /// Lines dropped since the last call (to be reported in the stream).
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    /// Lines dropped in all.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_budget_then_counts_drops() {
        let mut limit = RateLimit::default();
        let t0 = 5_000_000_000;
        for _ in 0..LINES_PER_WINDOW_MAX {
            assert!(limit.admit(t0));
        }
        assert!(!limit.admit(t0 + 1));
        assert!(!limit.admit(t0 + 999_999_999));
        assert_eq!(limit.dropped(), 2);
        assert_eq!(limit.take_unreported(), 2);
        assert_eq!(limit.take_unreported(), 0);
        // The next window starts afresh.
        assert!(limit.admit(t0 + 1_000_000_000));
        limit.count_drop();
        assert_eq!(limit.dropped(), 3);
        assert_eq!(limit.take_unreported(), 1);
    }

    #[test]
    fn reads_have_a_byte_budget_per_window() {
        let mut limit = RateLimit::default();
        let t0 = 7_000_000_000;
        assert_eq!(limit.read_budget(t0), READ_BYTES_PER_WINDOW_MAX);
        limit.count_read(READ_BYTES_PER_WINDOW_MAX - 10);
        assert_eq!(limit.read_budget(t0 + 5), 10);
        limit.count_read(100);
        assert_eq!(limit.read_budget(t0 + 6), 0);
        assert_eq!(limit.window_end_ns(), t0 + 1_000_000_000);
        assert_eq!(
            limit.read_budget(limit.window_end_ns()),
            READ_BYTES_PER_WINDOW_MAX
        );
    }
}
