//! The configuration file (TOML, documented in `docs/config.md`) and the validated,
//! immutable service specification it yields.
//!
//! [`Config::load`] / [`Config::parse`] either return a complete, valid [`Config`] or every
//! error of the file ([`ConfigErrors`], up to [`ConfigErrors::SHOWN_MAX`]), each with
//! `file:line:column`, the field and what was expected: the shell starts nothing unless the
//! whole file is valid. [`Config::check`] and [`Config::load_checked`] also look at the machine
//! (`--check`): the groups, local programs and working directories the file names.

mod accounts;
mod cgroup;
mod duration;
mod error;
mod host;
mod service;
mod signal;
mod v02;
mod validate;

pub use cgroup::{
    parse_bytes, parse_cpu_max, CgroupConfig, CgroupLimit, CgroupLimits, CgroupRoot,
    CGROUP_LIMIT_KEYS,
};
pub use duration::{format_duration, parse_duration, DURATION_MAX};
pub use error::{ConfigError, ConfigErrorKind, ConfigErrors};
pub use host::{Host, ThisMachine};
pub use service::{
    OutputTarget, ServiceName, ServiceSpec, ARGV_COUNT_MAX, ARG_LEN_MAX, ENV_COUNT_MAX,
    ENV_LEN_MAX, SERVICE_NAME_LEN_MAX,
};
pub use signal::{signal_from_name, signal_from_number, signal_name, SIGNAL_NUMBER_MAX};
pub use v02::{legacy_socket_path, LEGACY_ARGS_MAX, LEGACY_ARG_LEN_MAX, LEGACY_SOCKET_DEFAULT};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is read from when `--config` is not given.
pub const CONFIG_PATH_DEFAULT: &str = "/etc/holden/orchestrator.toml";
/// Default agent socket (the AutoSD demo's path).
pub const AGENT_SOCKET_DEFAULT: &str = "/run/holden/qm_orchestrator.sock";
/// Default control socket.
pub const CONTROL_SOCKET_DEFAULT: &str = "/run/holden/control.sock";
/// Default runtime directory: the one-instance lock and the state record.
pub const RUNTIME_DIR_DEFAULT: &str = "/run/holden";
/// Default number of process slots.
pub const SLOTS_DEFAULT: u32 = 64;
/// Largest number of process slots. The orchestrator's ring needs one slot per service plus a
/// few of its own (signals, agent, control connections), within the ring's own bound.
pub const SLOTS_MAX: u32 = 8192;
const _: () = assert!(SLOTS_MAX + 256 <= ring::SLOTS_MAX);
/// Largest configuration file read.
pub const CONFIG_FILE_SIZE_MAX: u64 = 4 * 1024 * 1024;
/// Longest path accepted (PATH_MAX minus the NUL; a Unix socket path is shorter still).
pub const PATH_LEN_MAX: usize = 4095;
/// Longest Unix socket path (`sun_path` minus the NUL).
pub const SOCKET_PATH_LEN_MAX: usize = 107;

/// Which protocol the orchestrator speaks to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentProtocol {
    /// holden v1: one persistent SEQPACKET connection, pipelined requests.
    V1,
    /// holden v0.2: legacy stream codec, one connection per request.
    V0_2,
    /// v1, falling back to v0.2 when the socket turns out to be a stream socket.
    Auto,
}

/// How much the orchestrator logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Every state change (the default).
    Info,
    /// Everything.
    Debug,
}

/// The `[agent]` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentConfig {
    /// Path of the agent's socket.
    pub socket: PathBuf,
    /// Protocol spoken on it.
    pub protocol: AgentProtocol,
    /// Time allowed for one request (e.g. a spawn) before it fails and the connection drops.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles on each failure up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Where holden-agent puts its processes' own cgroups, as a path in this (the host's)
    /// cgroup2 mount (`<the agent's delegated cgroup>/services`; key `cgroup`). `None`: QM
    /// services get no cgroup of their own.
    pub cgroup: Option<PathBuf>,
}

/// Default path of journald's native socket.
pub const JOURNAL_SOCKET_DEFAULT: &str = "/run/systemd/journal/socket";

/// Where the orchestrator's own log lines go (`[log] journal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnLines {
    /// To journald with native fields when stderr is the journal (`JOURNAL_STREAM` names
    /// stderr's device and inode, as systemd sets it), else to stderr (the default).
    Auto,
    /// Always to journald with native fields (stderr when the journal socket is not there).
    Journal,
    /// Always to stderr.
    Stderr,
}

/// The `[log]` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogConfig {
    /// journald's native socket (service output, and the orchestrator's own lines).
    pub journal_socket: PathBuf,
    /// Where the orchestrator's own lines go.
    pub own_lines: OwnLines,
    /// Bytes of each local service's history ring (`holdenctl logs`).
    pub history_bytes: u32,
}

/// Default of `[log] history_bytes`.
pub const HISTORY_BYTES_DEFAULT: u32 = 16 * 1024;
/// Least and most of `[log] history_bytes`.
pub const HISTORY_BYTES_MIN: u32 = 1024;
pub const HISTORY_BYTES_MAX: u32 = 1024 * 1024;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            journal_socket: PathBuf::from(JOURNAL_SOCKET_DEFAULT),
            own_lines: OwnLines::Auto,
            history_bytes: HISTORY_BYTES_DEFAULT,
        }
    }
}

/// The `[shutdown]` table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShutdownConfig {
    /// Whether SIGTERM/SIGINT to the orchestrator stops every service before it exits.
    pub stop_services: bool,
    /// Time the orchestrator waits for services to stop before it kills what remains and exits.
    pub timeout: Duration,
}

/// The `[control]` table (control socket of issue 6).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ControlConfig {
    /// Path of the control socket.
    pub socket: PathBuf,
    /// Group allowed to use it besides root (socket mode 0660 then, else 0600).
    pub group: Option<String>,
    /// Group allowed to query (status, agent, stats, monitor) but not to command; the socket file
    /// then belongs to this group.
    pub read_group: Option<String>,
}

/// A valid configuration and what the machine checks found.
#[derive(Clone, Debug)]
pub struct Checked {
    pub config: Config,
    /// Problems with the machine that start-up does not refuse (a missing local program, a
    /// missing working directory: the spawn fails then): errors for `--check`.
    pub missing: Vec<ConfigError>,
    /// What is probably a mistake (a file without services).
    pub warnings: Vec<ConfigError>,
    /// What `--check` cannot know: a QM service's paths are inside the QM partition.
    pub unchecked: Vec<ConfigError>,
}

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Number of process slots (bounds the number of services).
    pub slots: u32,
    /// Log level.
    pub log_level: LogLevel,
    /// Where the one-instance lock and the state record live.
    pub runtime_dir: PathBuf,
    /// Agent connection.
    pub agent: AgentConfig,
    /// Orchestrator shutdown.
    pub shutdown: ShutdownConfig,
    /// Control socket.
    pub control: ControlConfig,
    /// Service output and where the log goes.
    pub log: LogConfig,
    /// Local services' cgroups.
    pub cgroup: CgroupConfig,
    /// The services, in file order; names are unique.
    pub services: Vec<ServiceSpec>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (shown, text) = read_text(path)?;
        Config::parse(&text, &shown)
    }

    /// Validates `text`; errors name `path_for_messages`.
    pub fn parse(text: &str, path_for_messages: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text, path_for_messages).map(|(config, _)| config)
    }

    /// Validates `text` and looks at `host`: an unknown `control.group` or `read_group` is an
    /// error (start-up refuses it), a missing local program or working directory is reported
    /// in [`Checked::missing`], what cannot be checked in [`Checked::warnings`].
    pub fn check(
        text: &str,
        path_for_messages: &str,
        host: &dyn Host,
    ) -> Result<Checked, ConfigErrors> {
        let (config, spans) = validate::parse(text, path_for_messages)?;
        let source = host::Source {
            path: path_for_messages,
            text,
            spans: Some(&spans),
        };
        Checked::of(config, &source, host)
    }

    /// Reads the file at `path` and [`Config::check`]s it.
    pub fn load_checked(path: &Path, host: &dyn Host) -> Result<Checked, ConfigErrors> {
        let (shown, text) = read_text(path)?;
        Config::check(&text, &shown, host)
    }

    /// The host checks of a configuration that has no file (the v0.2 command line): its
    /// problems name `source`.
    pub fn check_host(self, source: &str, host: &dyn Host) -> Result<Checked, ConfigErrors> {
        let source = host::Source {
            path: source,
            text: "",
            spans: None,
        };
        Checked::of(self, &source, host)
    }

    /// The v0.2 command line `holden-orchestrator 'LOCAL CMD' 'QM CMD'`: two services `local`
    /// and `qm`, restart always, each command split on ASCII whitespace within v0.2's bounds,
    /// agent protocol `auto` on `socket_path` (see [`legacy_socket_path`]).
    pub fn from_legacy_args(
        local_cmd: &str,
        qm_cmd: &str,
        socket_path: &Path,
    ) -> Result<Config, ConfigError> {
        v02::from_legacy_args(local_cmd, qm_cmd, socket_path)
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|spec| spec.name.as_str() == name)
    }
}

impl Checked {
    fn of(
        config: Config,
        source: &host::Source<'_>,
        host: &dyn Host,
    ) -> Result<Checked, ConfigErrors> {
        let (problems, notes) = host::check(&config, source, host);
        let (unchecked, warnings): (Vec<_>, Vec<_>) =
            notes.into_iter().partition(|e| !e.field.is_empty());
        let (missing, errors): (Vec<_>, Vec<_>) = problems
            .into_iter()
            .partition(|e| e.kind == ConfigErrorKind::Missing);
        if let Some(errors) = ConfigErrors::of(errors) {
            return Err(errors);
        }
        Ok(Checked {
            config,
            missing,
            warnings,
            unchecked,
        })
    }
}

/// The file's name for messages and its text.
fn read_text(path: &Path) -> Result<(String, String), ConfigErrors> {
    let shown = path.display().to_string();
    let bytes = read_bounded(path)
        .map_err(|message| ConfigError::unplaced(&shown, ConfigErrorKind::Io, "", message))?;
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = error.utf8_error().valid_up_to();
        let prefix = std::str::from_utf8(&error.as_bytes()[..valid]).unwrap_or_default();
        let message = "invalid UTF-8: expected a UTF-8 text file";
        ConfigError::at(&shown, prefix, valid, ConfigErrorKind::Syntax, "", message)
    })?;
    Ok((shown, text))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| format!("open: {error}"))?;
    let mut bytes = Vec::new();
    file.take(CONFIG_FILE_SIZE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("read: {error}"))?;
    if bytes.len() as u64 > CONFIG_FILE_SIZE_MAX {
        return Err(format!(
            "larger than {CONFIG_FILE_SIZE_MAX} bytes: expected a configuration file, not this"
        ));
    }
    Ok(bytes)
}
