//! Restart and stop policy of one service: the parameters the core needs, nothing else.

use std::time::Duration;

/// When a process that exited on its own is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    /// After every exit, clean or not.
    Always,
    /// After an exit with a non-zero code, a signal, or an unknown status.
    OnFailure,
    /// Never: a clean exit ends in `stopped`, an unclean one in `failed`.
    Never,
}

/// Where a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Partition {
    /// Spawned by the orchestrator itself (host / safety partition).
    Local,
    /// Spawned by holden-agent inside the QM partition.
    Qm,
}

impl Partition {
    /// The name used in the configuration and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Local => "local",
            Partition::Qm => "qm",
        }
    }
}

/// Exponential backoff added to the restart delay.
///
/// The delay before the k-th consecutive automatic restart (k = 0, 1, ...) is
/// `restart_delay + min(initial * factor^k, max)`; k returns to 0 once a process
/// has stayed up for `reset_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// The backoff term of the first restart.
    pub initial: Duration,
    /// Growth per consecutive restart, in thousandths (2000 = doubling; 1000 = constant).
    pub factor_milli: u32,
    /// Cap of the backoff term.
    pub max: Duration,
    /// Uptime after which a process counts as stable and k returns to 0.
    pub reset_after: Duration,
}

impl Backoff {
    /// No backoff: every restart waits exactly the restart delay.
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        factor_milli: 1000,
        max: Duration::ZERO,
        reset_after: Duration::ZERO,
    };

    /// The backoff term after `step` consecutive restarts (integer arithmetic, saturating).
    pub fn term(&self, step: u32) -> Duration {
        let max_ns = self.max.as_nanos();
        let mut term_ns = self.initial.as_nanos().min(max_ns);
        // Bounded loop: once the term reaches the cap it stays there.
        for _ in 0..step {
            if term_ns >= max_ns {
                break;
            }
            term_ns = (term_ns * u128::from(self.factor_milli) / 1000).min(max_ns);
        }
        Duration::from_nanos(u64::try_from(term_ns).unwrap_or(u64::MAX))
    }
}

/// More than `burst` starts within `interval` send the service to `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StartLimit {
    /// Starts allowed within one interval (1..=[`START_LIMIT_BURST_MAX`]); 0 = no limit.
    pub burst: u32,
    /// The sliding window.
    pub interval: Duration,
}

/// Largest start-limit burst: the core keeps that many start times per service.
pub const START_LIMIT_BURST_MAX: u32 = 16;

impl StartLimit {
    /// No start limit.
    pub const NONE: StartLimit = StartLimit {
        burst: 0,
        interval: Duration::ZERO,
    };
}

/// When a started service counts as started (`type` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Started once the spawn is reported (today's behaviour).
    Simple,
    /// Started once its program was executed (the spawn reports after the exec: as `Simple`).
    Exec,
    /// Started when it says `READY=1` ([`crate::supervise::Event::Ready`]).
    Notify,
    /// Done when it exits 0: `starting` while it runs, `stopped` after a clean exit.
    Oneshot,
}

impl Kind {
    /// The name used in the configuration and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Simple => "simple",
            Kind::Exec => "exec",
            Kind::Notify => "notify",
            Kind::Oneshot => "oneshot",
        }
    }

    /// Whether a spawned process stays `starting` until something more happens.
    pub fn waits(self) -> bool {
        matches!(self, Kind::Notify | Kind::Oneshot)
    }
}

/// Readiness and liveness of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Readiness {
    pub kind: Kind,
    /// A `notify` or `oneshot` service not ready (or not done) this long after its spawn is
    /// stopped and handled as a failed start (`start-timeout`); zero: no limit.
    pub start_timeout: Duration,
    /// A ready `notify` service must send `WATCHDOG=1` within every interval; zero: off.
    pub watchdog: Duration,
    /// Sent when the watchdog interval passes without a ping (SIGKILL after `stop_timeout`).
    pub watchdog_signal: i32,
}

impl Readiness {
    /// `simple`, no start timeout, no watchdog.
    pub const SIMPLE: Readiness = Readiness {
        kind: Kind::Simple,
        start_timeout: Duration::ZERO,
        watchdog: Duration::ZERO,
        watchdog_signal: libc::SIGABRT,
    };
}

/// Everything the supervision core needs to know about one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServicePolicy {
    /// Where it runs (decides `SpawnLocal` or `SpawnAgent`, and whether it waits for the agent).
    pub partition: Partition,
    /// When it is restarted.
    pub restart: Restart,
    /// Fixed delay before every automatic restart.
    pub restart_delay: Duration,
    /// Exponential backoff on top of the delay.
    pub backoff: Backoff,
    /// Start limit.
    pub start_limit: StartLimit,
    /// Signal number sent first when the service is stopped.
    pub stop_signal: i32,
    /// Time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// When it counts as started, and its watchdog.
    pub readiness: Readiness,
}

impl ServicePolicy {
    /// Defaults of the configuration file, for the given partition.
    pub fn default_for(partition: Partition) -> ServicePolicy {
        ServicePolicy {
            partition,
            restart: Restart::OnFailure,
            restart_delay: Duration::from_millis(100),
            backoff: Backoff::NONE,
            start_limit: StartLimit {
                burst: 5,
                interval: Duration::from_secs(10),
            },
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            readiness: Readiness::SIMPLE,
        }
    }

    /// The delay before the restart that follows `step` consecutive restarts.
    pub fn restart_delay_at(&self, step: u32) -> Duration {
        self.restart_delay.saturating_add(self.backoff.term(step))
    }
}
