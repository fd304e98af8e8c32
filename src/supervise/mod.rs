//! The sans-IO supervision core.
//!
//! A pure state machine: the shell feeds [`Event`]s (process spawned or exited, timer fired,
//! agent up or down, operator commands, shutdown) together with the current [`MonoTime`],
//! and drains [`Action`]s (spawn, signal, arm or cancel the service's one timer, release a
//! process handle, log a transition). No I/O, no clock, no allocation after
//! [`Supervisor::new`]: the service table and the action queue are sized there.
//!
//! Contract with the shell:
//! - drain every action with [`Supervisor::poll_action`] before the next event;
//! - answer every `SpawnLocal`/`SpawnAgent` with exactly one `Spawned` or `SpawnFailed`;
//! - report every spawned process's end with exactly one `Exited`; close its pidfd on the
//!   `Release` action that follows (never before);
//! - keep one timer per service: `ArmTimer` replaces the armed one, `CancelTimer` disarms it,
//!   and a `TimerFired` whose token is stale is ignored by the core;
//! - when the agent connection is lost, report `AgentDown` and fail every QM spawn in flight
//!   with `StartStage::Agent` (either order: such a failure also marks the agent down);
//! - for a shutdown timeout, send `Event::Shutdown` a second time: everything still alive gets
//!   SIGKILL at once, and `ShutdownComplete` follows the last exit;
//! - after `Action::Removed` the slot may be reused by [`Supervisor::add`].
//!
//! Policy in short (details on [`ServicePolicy`] and in `docs/config.md`): the delay before the
//! k-th consecutive automatic restart is `restart_delay + min(initial * factor^k, max)`, k back
//! to 0 after a run of `reset_after`; more than `burst` starts within any `interval` window ends
//! in `failed` until an operator `Start`/`Restart` (which clear the history) or `ResetFailed`;
//! a stop sends the stop signal, SIGKILL after `stop_timeout`, and never restarts.

mod action;
mod carried;
mod event;
mod machine;
mod policy;
mod start_history;
mod status;
mod time;

pub use action::{Action, Reason, Transition};
pub use carried::{Carried, CARRIED_STARTS_MAX};
pub use event::{Command, Event, ExitStatus, Pid, StartFailure, StartStage, TimerToken};
pub use machine::{Refusal, ServiceId, Supervisor, SERVICES_MAX, SPAWN_FAILED_DELAY_MIN};
pub use policy::{
    Backoff, Kind, Partition, Readiness, Restart, ServicePolicy, StartLimit, START_LIMIT_BURST_MAX,
};
pub use status::{ServiceStatus, State};
pub use time::MonoTime;
