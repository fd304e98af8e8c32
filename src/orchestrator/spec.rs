//! What the event loop is given at start-up: global settings and one definition per service.
//!
//! These are plain owned values, built from the configuration file (or the v0.2 command line)
//! before the loop starts; the loop turns them into prepared spawn specs and encoded requests
//! once, and never allocates again.

pub use crate::config::OutputTarget;
use crate::config::{self, Config, OwnLines, ServiceSpec};
use crate::supervise::ServicePolicy;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::log::Priority;

/// Which protocol the agent speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentProtocol {
    /// holden wire v1 over SOCK_SEQPACKET; falls back to v0.2 when the socket turns out to be
    /// a stream socket (connect fails with EPROTOTYPE).
    Auto,
    /// holden wire v1 only.
    V1,
    /// The holden v0.2 C protocol (SOCK_STREAM), one connection per request.
    V02,
}

/// One service to supervise.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    /// Unique name, used in every log line.
    pub name: String,
    /// argv; `argv[0]` is the program (searched in `PATH` when it has no `/`).
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries added to the environment.
    pub env: Vec<Vec<u8>>,
    /// Start from the orchestrator's (local) or agent's (QM) environment and add `env`;
    /// otherwise the environment is exactly `env`.
    pub inherit_env: bool,
    /// Working directory.
    pub cwd: Option<Vec<u8>>,
    /// Run as this uid / gid.
    pub uid: Option<u32>,
    /// Run as this gid.
    pub gid: Option<u32>,
    /// Restart, backoff, start limit, stop signal and timeout, partition.
    pub policy: ServicePolicy,
    /// Started when the orchestrator starts.
    pub start_at_boot: bool,
    /// Where a local service's stdout goes.
    pub stdout: OutputTarget,
    /// Where a local service's stderr goes.
    pub stderr: OutputTarget,
    /// A local service's execution environment (limits, scheduling, …); a limit left unset
    /// is restored to the orchestrator's starting one.
    pub exec: crate::spawn::ExecEnv,
    /// The service's cgroup limits, written into its cgroup when it is made (a QM service's by
    /// the agent, `[agent] cgroup`).
    pub cgroup_limits: crate::config::CgroupLimits,
    /// The fd number on which it writes a newline once ready (s6's notification fd).
    pub notify_fd: Option<i32>,
    /// Started only once these are ready (names).
    pub after: Vec<String>,
    /// Started with it; it stops when one of these fails or stops (names).
    pub requires: Vec<String>,
    /// Started with it, whatever becomes of them (names).
    pub wants: Vec<String>,
}

/// Global settings of the event loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The agent's socket (v1: SOCK_SEQPACKET; v0.2: SOCK_STREAM).
    /// Where holden-agent puts its processes' own cgroups (host path; `[agent] cgroup`).
    pub agent_cgroup: Option<PathBuf>,
    pub agent_socket: PathBuf,
    /// The agent's protocol.
    pub agent_protocol: AgentProtocol,
    /// Service slots (at least the number of services; room for services added by reload).
    pub slots: usize,
    /// Most important priority that is still logged.
    pub log_level: Priority,
    /// How long one request to the agent (and the handshake) may take.
    pub agent_request_timeout: Duration,
    /// First delay before reconnecting to the agent; doubles up to `agent_reconnect_max`.
    pub agent_reconnect_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub agent_reconnect_max: Duration,
    /// SIGTERM/SIGINT stop every service before the orchestrator exits (else they are left
    /// running).
    pub shutdown_stop_services: bool,
    /// How long a shutdown waits for services to stop before it SIGKILLs what remains.
    pub shutdown_timeout: Duration,
    /// The control socket (`None` path: no control socket).
    pub control: super::ControlSettings,
    /// The configuration file, re-read by `holdenctl reload` and SIGHUP (`None`: reload is
    /// refused, e.g. for the v0.2 command line).
    pub config_path: Option<PathBuf>,
    /// journald's native socket.
    pub journal_socket: PathBuf,
    /// Where the orchestrator's own lines go.
    pub own_lines: OwnLines,
    /// Bytes of each local service's output history.
    pub history_bytes: usize,
    /// Where local services' cgroups live (`[cgroup] root`).
    pub cgroup_root: config::CgroupRoot,
    /// The runtime directory: the one-instance lock and the state record (`None`: neither,
    /// for an orchestrator embedded in a test that runs several side by side).
    pub runtime_dir: Option<PathBuf>,
}

impl Settings {
    /// The settings of a validated configuration.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            agent_socket: config.agent.socket.clone(),
            agent_cgroup: config.agent.cgroup.clone(),
            agent_protocol: match config.agent.protocol {
                config::AgentProtocol::V1 => AgentProtocol::V1,
                config::AgentProtocol::V0_2 => AgentProtocol::V02,
                config::AgentProtocol::Auto => AgentProtocol::Auto,
            },
            slots: config.slots as usize,
            log_level: match config.log_level {
                config::LogLevel::Error => Priority::Err,
                config::LogLevel::Warn => Priority::Warning,
                config::LogLevel::Info => Priority::Info,
                config::LogLevel::Debug => Priority::Debug,
            },
            agent_request_timeout: config.agent.request_timeout,
            agent_reconnect_initial: config.agent.reconnect_initial,
            agent_reconnect_max: config.agent.reconnect_max,
            shutdown_stop_services: config.shutdown.stop_services,
            shutdown_timeout: config.shutdown.timeout,
            control: super::ControlSettings {
                socket: Some(config.control.socket.clone()),
                group: config.control.group.clone(),
                read_group: config.control.read_group.clone(),
            },
            config_path: None,
            journal_socket: config.log.journal_socket.clone(),
            own_lines: config.log.own_lines,
            history_bytes: config.log.history_bytes as usize,
            cgroup_root: config.cgroup.root.clone(),
            runtime_dir: Some(config.runtime_dir.clone()),
        }
    }
}

impl ServiceDef {
    /// The definition of a validated service.
    pub fn from_spec(spec: &ServiceSpec) -> ServiceDef {
        let cwd = spec.working_directory.as_bytes();
        ServiceDef {
            name: spec.name.as_str().to_string(),
            argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: spec.envp().into_iter().map(|e| e.into_bytes()).collect(),
            inherit_env: false,
            cwd: (!cwd.is_empty()).then(|| cwd.to_vec()),
            uid: spec.uid,
            gid: spec.gid,
            policy: spec.policy,
            start_at_boot: spec.enabled,
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
            exec: spec.exec,
            cgroup_limits: spec.cgroup_limits.clone(),
            notify_fd: spec.notify_fd,
            after: spec.after.iter().map(|n| n.as_str().to_string()).collect(),
            requires: spec
                .requires
                .iter()
                .map(|n| n.as_str().to_string())
                .collect(),
            wants: spec.wants.iter().map(|n| n.as_str().to_string()).collect(),
        }
    }

    /// Every service of a validated configuration.
    pub fn all_from_config(config: &Config) -> Vec<ServiceDef> {
        config.services.iter().map(ServiceDef::from_spec).collect()
    }
}

impl Settings {
    /// Defaults for a given agent socket.
    pub fn new(agent_socket: PathBuf) -> Settings {
        Settings {
            agent_socket,
            agent_cgroup: None,
            agent_protocol: AgentProtocol::Auto,
            slots: 64,
            log_level: Priority::Info,
            agent_request_timeout: Duration::from_secs(5),
            agent_reconnect_initial: Duration::from_millis(100),
            agent_reconnect_max: Duration::from_secs(5),
            shutdown_stop_services: true,
            shutdown_timeout: Duration::from_secs(30),
            control: super::ControlSettings::default(),
            config_path: None,
            journal_socket: PathBuf::from(config::JOURNAL_SOCKET_DEFAULT),
            own_lines: OwnLines::Auto,
            history_bytes: config::HISTORY_BYTES_DEFAULT as usize,
            cgroup_root: config::CgroupRoot::Auto,
            runtime_dir: None,
        }
    }
}

/// How the loop talks to its surroundings (differs between the binary and in-process tests).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Where log lines go (stderr in the binary).
    pub log_fd: RawFd,
    /// Handle SIGTERM/SIGINT/SIGHUP through a signalfd (the binary; tests use a
    /// [`super::ShutdownHandle`] instead).
    pub signals: bool,
    /// Send sd_notify messages when `NOTIFY_SOCKET` is set.
    pub notify: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_fd: libc::STDERR_FILENO,
            signals: true,
            notify: true,
        }
    }
}
