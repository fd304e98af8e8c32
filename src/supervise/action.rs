//! Actions the core asks of the shell, and the fixed-capacity queue that holds them.

use super::event::{ExitStatus, Pid, StartFailure, TimerToken};
use super::{MonoTime, ServiceId, State};
use std::time::Duration;

/// Why a service changed state (for logs and the control plane's monitor stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The service was added to the core.
    Added,
    /// An operator command.
    Operator,
    /// The restart delay elapsed.
    RestartDue,
    /// The process was created.
    Spawned(Pid),
    /// The spawn failed.
    SpawnFailed(StartFailure),
    /// The process exited.
    Exited(ExitStatus),
    /// The start limit was reached.
    StartLimit,
    /// The agent went down (service waits) or came up (service starts).
    Agent,
    /// The stop timeout elapsed: SIGKILL was sent.
    StopTimeout,
    /// Orchestrator shutdown.
    Shutdown,
    /// The service is removed (reload).
    Removed,
    /// A process found alive after an orchestrator restart or re-exec was taken over.
    Adopted(Pid),
    /// The state of a previous orchestrator instance was carried over (no live process).
    Resumed,
    /// A `notify` service said `READY=1`.
    Ready,
    /// A `notify` or `oneshot` service was not ready (or done) within its `start_timeout`.
    StartTimeout,
    /// A ready `notify` service sent no `WATCHDOG=1` within its watchdog interval (or asked
    /// for the watchdog with `WATCHDOG=trigger`).
    Watchdog,
}

/// A state change, one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The service.
    pub service: ServiceId,
    /// State before.
    pub from: State,
    /// State after (may equal `from`, e.g. SIGKILL after the stop timeout).
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// Automatic restarts since the last operator start.
    pub restarts: u32,
    /// The delay until the next restart when `to` is `backoff`.
    pub next_delay: Option<Duration>,
}

/// One thing the shell must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Spawn the service's argv in the host partition (answer: `Spawned` or `SpawnFailed`).
    SpawnLocal { service: ServiceId },
    /// Ask the agent to spawn the service in QM (answer: `Spawned` or `SpawnFailed`).
    SpawnAgent { service: ServiceId },
    /// Send `signal` through the service's pidfd.
    Signal {
        service: ServiceId,
        pid: Pid,
        signal: i32,
    },
    /// Arm the service's only timer (replacing any armed one).
    ArmTimer {
        service: ServiceId,
        deadline: MonoTime,
        token: TimerToken,
    },
    /// Disarm the service's timer.
    CancelTimer { service: ServiceId },
    /// The process has exited and was accounted for: close its pidfd (exactly once).
    Release { service: ServiceId, pid: Pid },
    /// Log a state change.
    Log(Transition),
    /// A removed service has stopped; its slot is free (the shell drops its spec).
    Removed { service: ServiceId },
    /// Shutdown requested and every service is stopped: the shell may exit.
    ShutdownComplete,
}
