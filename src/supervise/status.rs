//! States and the per-service status the control plane reads.

use super::event::{ExitStatus, Pid, StartFailure};
use super::{MonoTime, Partition};

/// The state of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running and not wanted.
    Stopped,
    /// A spawn was requested; the process does not exist yet.
    Starting,
    /// Its process runs.
    Running,
    /// Waiting for the restart delay to elapse.
    Backoff,
    /// Stop signal (or SIGKILL) sent, or a spawn in flight that will be stopped on arrival.
    Stopping,
    /// Start limit reached, or an unclean exit with `restart = never`: stays until asked.
    Failed,
    /// A QM service that should start while the agent is unreachable.
    WaitingForAgent,
}

impl State {
    /// The name used in logs and by holdenctl.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::WaitingForAgent => "waiting-for-agent",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one service for the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceStatus {
    /// Where it runs.
    pub partition: Partition,
    /// Its state.
    pub state: State,
    /// Its live process, if any.
    pub pid: Option<Pid>,
    /// When its live process was spawned.
    pub running_since: Option<MonoTime>,
    /// How long its live process took from its spawn to `running`: 0 for one that is running
    /// at its spawn, the wait for `READY=1` for a notify one; `None` before that, or for a
    /// process taken over (adoption, re-exec) whose spawn this instance did not see.
    pub ready_after: Option<std::time::Duration>,
    /// Automatic restarts since the last operator start.
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<ExitStatus>,
    /// When the next automatic restart is due (state `backoff`).
    pub next_restart: Option<MonoTime>,
    /// Why the last start failed (stage and errno); `None` once a start succeeded.
    pub last_spawn_error: Option<StartFailure>,
    /// The service is `failed` because it hit its start limit.
    pub start_limit_hit: bool,
    /// A spawn was asked for and not yet answered (`starting` without a process).
    pub spawn_in_flight: bool,
}
