//! Injected monotonic time: the core never reads a clock.

use std::time::Duration;

/// A point on the shell's monotonic clock, in nanoseconds since an arbitrary origin
/// (the shell uses `CLOCK_MONOTONIC`; the simulation uses its own counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The origin of the clock.
    pub const ZERO: MonoTime = MonoTime(0);

    /// A time `ns` nanoseconds after the origin.
    pub const fn from_nanos(ns: u64) -> MonoTime {
        MonoTime(ns)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + delta`, saturating at the end of time (585 years: never reached in practice).
    pub fn saturating_add(self, delta: Duration) -> MonoTime {
        let delta_ns = u64::try_from(delta.as_nanos()).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_add(delta_ns))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}
