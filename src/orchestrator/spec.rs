//! What the event loop is given at start-up: global settings and one definition per service.
//!
//! These are plain owned values, built from the configuration file (or the v0.2 command line)
//! before the loop starts; the loop turns them into prepared spawn specs and encoded requests
//! once, and never allocates again.

use crate::supervise::ServicePolicy;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use super::log::Priority;

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
}

/// Global settings of the event loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The agent's socket (v1: SOCK_SEQPACKET; v0.2: SOCK_STREAM).
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
}

impl Settings {
    /// Defaults for a given agent socket.
    pub fn new(agent_socket: PathBuf) -> Settings {
        Settings {
            agent_socket,
            agent_protocol: AgentProtocol::Auto,
            slots: 64,
            log_level: Priority::Info,
            agent_request_timeout: Duration::from_secs(5),
            agent_reconnect_initial: Duration::from_millis(100),
            agent_reconnect_max: Duration::from_secs(5),
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
