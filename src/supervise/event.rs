//! Events the shell feeds into the core.

use super::ServiceId;

/// A process id, for logs and status only: the shell acts on the pidfd it holds per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pid(pub i32);

/// Token of an armed timer; a fired timer whose token is no longer current is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerToken(pub u64);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// The kernel could not tell (QM process on a kernel without `PIDFD_INFO_EXIT`).
    Unknown,
}

impl ExitStatus {
    /// Whether the exit counts as a success for `restart = on-failure`.
    /// An unknown status counts as a failure: restarting a clean exit is cheaper
    /// than leaving a crashed service down.
    pub fn is_success(self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
            ExitStatus::Unknown => f.write_str("unknown"),
        }
    }
}

/// Where a spawn failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartStage {
    /// Before exec in the child or in the parent: clone3, chdir, setuid, environment.
    Setup,
    /// execve itself (ENOENT, EACCES, ...).
    Exec,
    /// The agent could not be asked or did not answer (connection lost, timeout). The core
    /// then considers the agent down until the next `AgentUp`.
    Agent,
    /// The agent answered but what it sent was refused (not a pidfd, duplicate, ...).
    Refused,
}

impl StartStage {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StartStage::Setup => "setup",
            StartStage::Exec => "exec",
            StartStage::Agent => "agent",
            StartStage::Refused => "refused",
        }
    }
}

/// Why a spawn failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StartFailure {
    /// The errno, 0 when there is none (e.g. a timeout).
    pub errno: i32,
    /// The stage.
    pub stage: StartStage,
}

/// What an operator (or the control plane) asks for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Start it if it is not running; also leaves `failed` and clears the start-limit history.
    Start,
    /// Stop it: stop signal, stop timeout, SIGKILL. No restart follows.
    Stop,
    /// Stop it if it runs, then start it again.
    Restart,
    /// Send a signal to its process (what follows is decided by the restart policy).
    Kill(i32),
    /// Leave `failed` for `stopped` and clear the start-limit history.
    ResetFailed,
    /// Stop it as part of a shutdown that stops services in dependency order (reason
    /// `shutdown`; no restart follows).
    ShutdownStop,
}

/// One event for the core. Contract with the shell: every `SpawnLocal`/`SpawnAgent` action is
/// answered by exactly one `Spawned` or `SpawnFailed`; every process reported `Spawned` is
/// answered by exactly one `Exited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The requested process exists; the shell holds its pidfd for this service.
    Spawned { service: ServiceId, pid: Pid },
    /// The requested process could not be created.
    SpawnFailed {
        service: ServiceId,
        error: StartFailure,
    },
    /// The service's process ended (pidfd readable and status read).
    Exited {
        service: ServiceId,
        status: ExitStatus,
    },
    /// The service's timer reached its deadline.
    TimerFired {
        service: ServiceId,
        token: TimerToken,
    },
    /// The agent connection is established: QM services may be spawned.
    AgentUp,
    /// The agent connection is lost. The shell also answers every QM spawn in flight with
    /// `SpawnFailed { stage: Agent }` (before or after this event). Running QM processes are
    /// not affected: their pidfds do not depend on the agent.
    AgentDown,
    /// An operator command for one service.
    Command {
        service: ServiceId,
        command: Command,
    },
    /// Stop everything and report `ShutdownComplete`; a second one kills at once.
    Shutdown,
    /// The service said `READY=1` (a `notify` service: it is started). Ignored for any other
    /// kind, or when it is not `starting` with a process.
    Ready { service: ServiceId },
    /// The service said `WATCHDOG=1`: its watchdog interval starts again (a ready `notify`
    /// service with a watchdog; ignored otherwise).
    WatchdogPing { service: ServiceId },
    /// The service said `WATCHDOG=trigger`: handled as a missed watchdog, now.
    WatchdogTrigger { service: ServiceId },
    /// The service said `EXTEND_TIMEOUT_USEC=`: a `starting` service's start timeout is
    /// pushed to `by` from now (never earlier than it was).
    ExtendStartTimeout {
        service: ServiceId,
        by: std::time::Duration,
    },
}
