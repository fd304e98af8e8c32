//! Frames of the control protocol, their codes and limits.

/// The four magic bytes that open every control frame.
pub const MAGIC: [u8; 4] = *b"HCTL";
/// Protocol version; a frame of another version is refused. Version 2 added why a service
/// failed (`Service`: result and spawn error; `Event`: the stage of a failed spawn); version 5
/// the time to ready (`Service`: `ready_ms`).
pub const VERSION: u8 = 5;
/// Length of the header.
pub const HEADER_LEN: usize = 16;
/// Largest frame (one packet).
pub const FRAME_LEN_MAX: usize = 4096;
/// Largest payload.
pub const PAYLOAD_LEN_MAX: usize = FRAME_LEN_MAX - HEADER_LEN;
/// Longest service name (as `docs/config.md`).
pub const NAME_LEN_MAX: usize = 64;
/// Longest text (error messages, socket paths, reload notes); longer texts are cut on encode.
pub const TEXT_LEN_MAX: usize = 2048;
/// Sentinel for "no value" in u64 millisecond fields.
pub const NONE_MS: u64 = u64::MAX;

const _: () = assert!(HEADER_LEN + 40 + 2 + TEXT_LEN_MAX <= FRAME_LEN_MAX);

/// A service state (as `supervise::State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum StateCode {
    Stopped = 0,
    Starting = 1,
    Running = 2,
    Backoff = 3,
    Stopping = 4,
    Failed = 5,
    WaitingForAgent = 6,
}

impl StateCode {
    const ALL: [StateCode; 7] = [
        StateCode::Stopped,
        StateCode::Starting,
        StateCode::Running,
        StateCode::Backoff,
        StateCode::Stopping,
        StateCode::Failed,
        StateCode::WaitingForAgent,
    ];

    /// The code for a byte, `None` when unknown.
    pub fn from_u8(value: u8) -> Option<StateCode> {
        StateCode::ALL.get(value as usize).copied()
    }

    /// The name used in logs and output.
    pub fn as_str(self) -> &'static str {
        self.to_state().as_str()
    }

    /// The core's state.
    pub fn to_state(self) -> crate::supervise::State {
        use crate::supervise::State;
        match self {
            StateCode::Stopped => State::Stopped,
            StateCode::Starting => State::Starting,
            StateCode::Running => State::Running,
            StateCode::Backoff => State::Backoff,
            StateCode::Stopping => State::Stopping,
            StateCode::Failed => State::Failed,
            StateCode::WaitingForAgent => State::WaitingForAgent,
        }
    }

    /// The code of a core state.
    pub fn of(state: crate::supervise::State) -> StateCode {
        use crate::supervise::State;
        match state {
            State::Stopped => StateCode::Stopped,
            State::Starting => StateCode::Starting,
            State::Running => StateCode::Running,
            State::Backoff => StateCode::Backoff,
            State::Stopping => StateCode::Stopping,
            State::Failed => StateCode::Failed,
            State::WaitingForAgent => StateCode::WaitingForAgent,
        }
    }
}

/// Where a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum PartitionCode {
    Local = 0,
    Qm = 1,
}

impl PartitionCode {
    /// The code for a byte.
    pub fn from_u8(value: u8) -> Option<PartitionCode> {
        match value {
            0 => Some(PartitionCode::Local),
            1 => Some(PartitionCode::Qm),
            _ => None,
        }
    }

    /// `local` or `qm`.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionCode::Local => "local",
            PartitionCode::Qm => "qm",
        }
    }
}

/// A service's `type` (when it counts as started).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum TypeCode {
    Simple = 0,
    Exec = 1,
    Notify = 2,
    Oneshot = 3,
}

impl TypeCode {
    /// The code for a byte.
    pub fn from_u8(value: u8) -> Option<TypeCode> {
        match value {
            0 => Some(TypeCode::Simple),
            1 => Some(TypeCode::Exec),
            2 => Some(TypeCode::Notify),
            3 => Some(TypeCode::Oneshot),
            _ => None,
        }
    }

    /// As in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeCode::Simple => "simple",
            TypeCode::Exec => "exec",
            TypeCode::Notify => "notify",
            TypeCode::Oneshot => "oneshot",
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Exit {
    /// Exit code.
    Code(i32),
    /// Ended by this signal.
    Signal(i32),
    /// The kernel could not tell (QM process without `PIDFD_INFO_EXIT`).
    Unknown,
}

/// Where a start failed (as `supervise::StartStage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum SpawnStage {
    /// Before exec: clone3, chdir, setuid, environment.
    Setup = 1,
    /// execve itself (ENOENT, EACCES, ...).
    Exec = 2,
    /// The agent could not be asked or did not answer.
    Agent = 3,
    /// The agent answered, but what it sent was refused.
    Refused = 4,
}

impl SpawnStage {
    /// The code for a byte (0 is "no error" and not a stage).
    pub fn from_u8(value: u8) -> Option<SpawnStage> {
        match value {
            1 => Some(SpawnStage::Setup),
            2 => Some(SpawnStage::Exec),
            3 => Some(SpawnStage::Agent),
            4 => Some(SpawnStage::Refused),
            _ => None,
        }
    }

    /// `setup`, `exec`, `agent` or `refused` (as `stage=` in the log).
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnStage::Setup => "setup",
            SpawnStage::Exec => "exec",
            SpawnStage::Agent => "agent",
            SpawnStage::Refused => "refused",
        }
    }
}

/// Why a start failed: the stage and the errno (0 when there is none, e.g. a timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SpawnError {
    pub stage: SpawnStage,
    pub errno: i32,
}

/// An operator command for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    Start,
    Stop,
    Restart,
    /// Send a signal (1..=64).
    Kill(u8),
    ResetFailed,
}

/// Why a state changed (monitor events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Why {
    Added,
    Operator,
    RestartDue,
    /// Process created, with its pid in the orchestrator's PID namespace; 0 when the process
    /// was gone before its pid could be read (a QM process that exited at once).
    Spawned(i32),
    /// Spawn failed at this stage with this errno.
    SpawnFailed(SpawnError),
    Exited(Exit),
    StartLimit,
    Agent,
    StopTimeout,
    Shutdown,
    Removed,
    /// A live process of a previous orchestrator instance was taken over (its pid).
    Adopted(i32),
    /// The state of a previous orchestrator instance was carried over.
    Resumed,
    /// A `notify` service said it is ready.
    Ready,
    /// Not ready (or done) within its start timeout.
    StartTimeout,
    /// Its watchdog was not pinged in time.
    Watchdog,
}

impl Why {
    /// Short name for output (`reason=` in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Added => "added",
            Why::Operator => "operator",
            Why::RestartDue => "restart-due",
            Why::Spawned(_) => "spawned",
            Why::SpawnFailed(_) => "spawn-failed",
            Why::Exited(_) => "exited",
            Why::StartLimit => "start-limit",
            Why::Agent => "agent",
            Why::StopTimeout => "stop-timeout",
            Why::Shutdown => "shutdown",
            Why::Removed => "removed",
            Why::Adopted(_) => "adopted",
            Why::Resumed => "resumed",
            Why::Ready => "ready",
            Why::StartTimeout => "start-timeout",
            Why::Watchdog => "watchdog",
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum FailCode {
    /// No service of that name.
    UnknownService = 1,
    /// The orchestrator refused the command (shutting down, being removed, ...).
    Refused = 2,
    /// The request could not be decoded or is not a request.
    BadRequest = 3,
    /// Every control connection slot is in use.
    TooManyClients = 4,
    /// The peer is neither root nor in the control group.
    PermissionDenied = 5,
    /// The new configuration is invalid; nothing changed.
    ReloadFailed = 6,
    /// The orchestrator was not started from a configuration file.
    ReloadUnavailable = 7,
    /// The peer is in the read group only: it may query, not command.
    ReadOnly = 8,
    /// A re-exec could not be done; the orchestrator runs on as it was.
    ReexecFailed = 9,
}

impl FailCode {
    const ALL: [FailCode; 9] = [
        FailCode::UnknownService,
        FailCode::Refused,
        FailCode::BadRequest,
        FailCode::TooManyClients,
        FailCode::PermissionDenied,
        FailCode::ReloadFailed,
        FailCode::ReloadUnavailable,
        FailCode::ReadOnly,
        FailCode::ReexecFailed,
    ];

    /// The code for a byte.
    pub fn from_u8(value: u8) -> Option<FailCode> {
        FailCode::ALL.iter().copied().find(|c| *c as u8 == value)
    }

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailCode::UnknownService => "unknown-service",
            FailCode::Refused => "refused",
            FailCode::BadRequest => "bad-request",
            FailCode::TooManyClients => "too-many-clients",
            FailCode::PermissionDenied => "permission-denied",
            FailCode::ReloadFailed => "reload-failed",
            FailCode::ReloadUnavailable => "reload-unavailable",
            FailCode::ReadOnly => "read-only",
            FailCode::ReexecFailed => "reexec-failed",
        }
    }
}

/// The state of the agent link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum LinkCode {
    /// No QM service: the agent is not contacted.
    NotNeeded = 0,
    /// Connecting, handshaking or waiting to retry.
    Down = 1,
    /// Connected and handshake done.
    Up = 2,
}

impl LinkCode {
    /// The code for a byte.
    pub fn from_u8(value: u8) -> Option<LinkCode> {
        match value {
            0 => Some(LinkCode::NotNeeded),
            1 => Some(LinkCode::Down),
            2 => Some(LinkCode::Up),
            _ => None,
        }
    }

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkCode::NotNeeded => "not-needed",
            LinkCode::Down => "down",
            LinkCode::Up => "up",
        }
    }
}

/// One service's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceInfo<'a> {
    pub name: &'a str,
    pub partition: PartitionCode,
    pub state: StateCode,
    /// Pid of the live process (orchestrator's PID namespace).
    pub pid: Option<i32>,
    /// How long the live process has run.
    pub uptime_ms: Option<u64>,
    /// Automatic restarts since the last operator start.
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    /// Time until the next automatic restart (state backoff).
    pub next_restart_ms: Option<u64>,
    /// Why the last start failed; `None` once a start succeeded.
    pub spawn_error: Option<SpawnError>,
    /// In state failed because it hit its start limit.
    pub start_limit_hit: bool,
    /// What the service last said in sd_notify's `STATUS=` (empty: nothing), at most
    /// [`STATUS_TEXT_MAX`] bytes.
    pub status: &'a str,
    /// Its `type`.
    pub kind: TypeCode,
    /// How long its live process took from its spawn to `running` (0: running at its
    /// spawn; `None`: not ready yet, no process, or taken over without its spawn).
    pub ready_ms: Option<u64>,
}

/// Longest `STATUS=` text in a `Service` frame.
pub const STATUS_TEXT_MAX: usize = 256;

/// One state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EventInfo<'a> {
    pub name: &'a str,
    pub partition: PartitionCode,
    pub from: StateCode,
    pub to: StateCode,
    pub why: Why,
    pub restarts: u32,
    /// Pid of the service's last process, if any.
    pub pid: Option<i32>,
    /// Delay until the next restart when `to` is backoff.
    pub next_delay_ms: Option<u64>,
}

/// The agent link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AgentInfo<'a> {
    pub link: LinkCode,
    /// `v1`, `v0.2` or `auto` (not yet decided).
    pub protocol: &'a str,
    /// Version of the connected agent (v1 `Pong`), `(0, 0)` when unknown.
    pub version: (u8, u8),
    /// Capability bits of the connected agent (v1).
    pub capabilities: u32,
    /// Handshakes that succeeded since start.
    pub connects: u64,
    /// Connections dropped since start.
    pub drops: u64,
    pub socket: &'a str,
}

/// What a reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReloadInfo<'a> {
    pub added: u16,
    pub removed: u16,
    pub changed: u16,
    pub unchanged: u16,
    /// Settings that changed in the file but take effect only after a restart of the
    /// orchestrator (empty when none).
    pub needs_restart: &'a str,
}

/// What a live re-exec did (sent by the new instance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReexecInfo {
    /// Re-execs since the orchestrator started, this one included.
    pub generation: u32,
    /// The pause: from the old instance leaving its loop for the re-exec (the configuration
    /// check, the record write, the exec) to the new instance entering its loop with every
    /// service carried on, in µs.
    pub took_us: u64,
    /// Services whose process the new instance took over.
    pub adopted: u32,
}

/// The orchestrator's own figures since start-up (`holdenctl stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StatsInfo<'a> {
    /// Processes started locally, and through the agent.
    pub spawned_local: u64,
    pub spawned_qm: u64,
    /// Process ends seen.
    pub exited: u64,
    /// Starts that failed (local and QM).
    pub spawn_failed: u64,
    /// Log lines dropped because the log stream did not keep up.
    pub log_dropped: u64,
    /// The longest time the event loop spent on one completion, ns.
    pub stall_max_ns: u64,
    /// The histogram of those times: [`crate::histogram::BUCKETS`] counts, `u64`
    /// little-endian each ([`STALL_BUCKETS_BYTES`] bytes).
    pub stall_buckets: &'a [u8],
}

/// Bytes of [`StatsInfo::stall_buckets`].
pub const STALL_BUCKETS_BYTES: usize = crate::histogram::BUCKETS * 8;

impl StatsInfo<'_> {
    /// The stall histogram's counts.
    pub fn stall_counts(&self) -> impl Iterator<Item = u64> + Clone + '_ {
        self.stall_buckets
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }
}

/// Longest text of a [`LogLineInfo`] (a service's output line, as kept).
pub const LOG_TEXT_LEN_MAX: usize = 1024;

const _: () = assert!(HEADER_LEN + 16 + LOG_TEXT_LEN_MAX <= FRAME_LEN_MAX);

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum StreamCode {
    Stdout = 0,
    Stderr = 1,
}

impl StreamCode {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamCode::Stdout => "stdout",
            StreamCode::Stderr => "stderr",
        }
    }
}

/// One line of a service's output (`holdenctl logs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LogLineInfo<'a> {
    /// The line's number among all the service's lines (from 0).
    pub seq: u64,
    pub stream: StreamCode,
    /// Syslog priority 0–7 (its `<N>` prefix, else 6 for stdout and 3 for stderr).
    pub priority: u8,
    /// Cut at its bound (or ended without a newline).
    pub truncated: bool,
    /// The bytes as the service wrote them (not necessarily UTF-8), at most
    /// [`LOG_TEXT_LEN_MAX`].
    pub text: &'a [u8],
}

/// A service's output figures, the first answer to [`Body::Logs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LogStatsInfo {
    /// Lines read from its stdout and stderr since it was added.
    pub lines: u64,
    /// Lines not forwarded (over its rate limit, or a full journal socket).
    pub dropped: u64,
    /// The oldest line its history still holds (`seq`), and the next line's number.
    pub first_seq: u64,
    pub next_seq: u64,
}

/// The body of a frame: requests (client to orchestrator) and replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Body<'a> {
    /// Request: the status of one service (`Some`) or of all (`None`); answered by `Service`
    /// frames and an `End`.
    Status(Option<&'a str>),
    /// Request: a command for one service; answered by `Done` or `Failure`.
    Command { op: Op, name: &'a str },
    /// Request: the agent link; answered by `Agent`.
    AgentStatus,
    /// Request: subscribe to state changes; answered by `Done`, then `Event` and `Dropped`
    /// frames until the connection closes.
    Monitor,
    /// Request: re-read the configuration file; answered by `Reloaded` or `Failure`.
    Reload,
    /// Request: the orchestrator's own figures; answered by `Stats`.
    StatsRequest,
    /// Request: `execve` the orchestrator's binary again, keeping every service; answered by
    /// `Reexecuted` (from the new instance) or `Failure`.
    Reexec,
    /// Request: the last `lines` lines of a local service's output; answered by `LogStats`,
    /// `LogLine` frames (a `Dropped` where lines were lost before they could be sent) and an
    /// `End`; with `follow`, by no `End` but every new line until the connection closes.
    Logs {
        name: &'a str,
        lines: u32,
        follow: bool,
    },
    /// Reply: one service.
    Service(ServiceInfo<'a>),
    /// Reply: end of a listing, with the number of items sent.
    End(u32),
    /// Reply: the request was carried out; the service's state right after (or `Stopped`
    /// for requests about no service).
    Done(StateCode),
    /// Reply: the request failed.
    Failure { code: FailCode, text: &'a str },
    /// Reply: the agent link.
    Agent(AgentInfo<'a>),
    /// Reply: a state change (monitor).
    Event(EventInfo<'a>),
    /// Reply: this many events were not sent because the client did not keep up (monitor).
    Dropped(u64),
    /// Reply: the configuration was reloaded.
    Reloaded(ReloadInfo<'a>),
    /// Reply: the orchestrator's own figures.
    Stats(StatsInfo<'a>),
    /// Reply: one line of a service's output.
    LogLine(LogLineInfo<'a>),
    /// Reply: a service's output figures.
    LogStats(LogStatsInfo),
    /// Reply: the orchestrator re-executed.
    Reexecuted(ReexecInfo),
}

impl Body<'_> {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Body::Status(_) => 1,
            Body::Command { .. } => 2,
            Body::AgentStatus => 3,
            Body::Monitor => 4,
            Body::Reload => 5,
            Body::StatsRequest => 6,
            Body::Logs { .. } => 7,
            Body::Reexec => 8,
            Body::Service(_) => 16,
            Body::End(_) => 17,
            Body::Done(_) => 18,
            Body::Failure { .. } => 19,
            Body::Agent(_) => 20,
            Body::Event(_) => 21,
            Body::Dropped(_) => 22,
            Body::Reloaded(_) => 23,
            Body::Stats(_) => 24,
            Body::LogLine(_) => 25,
            Body::LogStats(_) => 26,
            Body::Reexecuted(_) => 27,
        }
    }

    /// Whether a client may send it.
    pub fn is_request(&self) -> bool {
        self.kind() < 16
    }
}

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame<'a> {
    /// Chosen by the client, echoed in every reply to that request (0 for events).
    pub id: u32,
    pub body: Body<'a>,
}
