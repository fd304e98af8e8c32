//! What of a service survives the orchestrator: its state, counters and start history, carried
//! to the next instance (after a crash through the state record, after a re-exec the same way)
//! and given back to the core with [`Supervisor::resume`](super::Supervisor::resume).

use super::event::{ExitStatus, Pid};
use super::{MonoTime, State};

/// Most start times carried (the start limit's history: [`super::START_LIMIT_BURST_MAX`]).
pub const CARRIED_STARTS_MAX: usize = super::START_LIMIT_BURST_MAX as usize;

/// One service's state as the core had it, in times of the shared monotonic clock
/// (`CLOCK_MONOTONIC` counts on across an orchestrator restart within one boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carried {
    pub state: State,
    /// The live process it had (`running`, `stopping`).
    pub pid: Option<Pid>,
    pub running_since: Option<MonoTime>,
    pub restarts: u32,
    /// Consecutive restarts without a stable run (the backoff exponent).
    pub backoff_step: u32,
    pub last_exit: Option<ExitStatus>,
    /// `backoff`: when the restart is due.
    pub next_restart: Option<MonoTime>,
    /// `stopping`: when SIGKILL follows the stop signal (`None` once SIGKILL was sent).
    pub kill_at: Option<MonoTime>,
    /// `stopping`: SIGKILL was sent.
    pub kill_sent: bool,
    /// `stopping`: started again once stopped (a restart).
    pub start_after_stop: bool,
    pub start_limit_hit: bool,
    /// Start times for the start limit, oldest first; `starts_len` of them are valid.
    pub starts: [MonoTime; CARRIED_STARTS_MAX],
    pub starts_len: u8,
}

impl Carried {
    /// A service that was stopped and had no history.
    pub const STOPPED: Carried = Carried {
        state: State::Stopped,
        pid: None,
        running_since: None,
        restarts: 0,
        backoff_step: 0,
        last_exit: None,
        next_restart: None,
        kill_at: None,
        kill_sent: false,
        start_after_stop: false,
        start_limit_hit: false,
        starts: [MonoTime::ZERO; CARRIED_STARTS_MAX],
        starts_len: 0,
    };

    /// The valid start times, oldest first.
    pub fn starts(&self) -> &[MonoTime] {
        &self.starts[..usize::from(self.starts_len).min(CARRIED_STARTS_MAX)]
    }

    /// Whether the service had a process, or was about to get one: what the next instance
    /// looks for.
    pub fn had_process(&self) -> bool {
        self.pid.is_some() || matches!(self.state, State::Starting | State::Stopping)
    }
}
