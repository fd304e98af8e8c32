//! The start times a service's start limit looks at: a fixed ring, no allocation.

use super::policy::{StartLimit, START_LIMIT_BURST_MAX};
use super::MonoTime;

const HISTORY_LEN: usize = START_LIMIT_BURST_MAX as usize;

/// The most recent starts of one service (at most [`START_LIMIT_BURST_MAX`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StartHistory {
    times: [MonoTime; HISTORY_LEN],
    /// Index of the next write.
    next: usize,
    len: usize,
}

impl StartHistory {
    pub(crate) const EMPTY: StartHistory = StartHistory {
        times: [MonoTime::ZERO; HISTORY_LEN],
        next: 0,
        len: 0,
    };

    pub(crate) fn clear(&mut self) {
        *self = StartHistory::EMPTY;
    }

    /// The recorded start times, oldest first.
    pub(crate) fn oldest_first(&self) -> impl Iterator<Item = MonoTime> + '_ {
        let first = (self.next + HISTORY_LEN - self.len) % HISTORY_LEN;
        (0..self.len).map(move |i| self.times[(first + i) % HISTORY_LEN])
    }

    /// A history of `times`, oldest first (the most recent [`HISTORY_LEN`] are kept).
    pub(crate) fn of(times: &[MonoTime]) -> StartHistory {
        let mut history = StartHistory::EMPTY;
        for &time in times {
            history.record(time);
        }
        history
    }

    pub(crate) fn record(&mut self, now: MonoTime) {
        self.times[self.next] = now;
        self.next = (self.next + 1) % HISTORY_LEN;
        self.len = (self.len + 1).min(HISTORY_LEN);
    }

    /// Whether one more start at `now` would exceed the limit: it would if the
    /// `burst`-th most recent start lies within `interval` before `now`.
    pub(crate) fn would_exceed(&self, limit: StartLimit, now: MonoTime) -> bool {
        let burst = limit.burst as usize;
        if burst == 0 || self.len < burst {
            return false;
        }
        debug_assert!(burst <= HISTORY_LEN);
        let index = (self.next + HISTORY_LEN - burst) % HISTORY_LEN;
        now.saturating_since(self.times[index]) < limit.interval
    }
}
