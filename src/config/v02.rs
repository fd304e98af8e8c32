//! The v0.2 command line: `holden-orchestrator 'LOCAL CMD' 'QM CMD'`.
//!
//! v0.2 split each command on whitespace into a program name and at most 32 arguments of
//! at most 255 bytes (its wire frame is `char name[256]; char args[32][256]`), with no
//! quoting. We do the same, with the same bounds, and resolve a program given without a
//! `/` against `PATH` (the v0.2 agent used `execvp`). A relative local program with a `/`
//! (`bin/prog`) is resolved against the current directory, and the local service runs in it,
//! as v0.2's children inherited its working directory.

use super::error::{ConfigError, ConfigErrorKind};
use super::service::{OutputTarget, ServiceName, ServiceSpec};
use super::{AgentConfig, AgentProtocol, Config, ControlConfig, LogLevel, ShutdownConfig};
use super::{CONTROL_SOCKET_DEFAULT, SLOTS_DEFAULT, SOCKET_PATH_LEN_MAX};
use crate::supervise::{Partition, Restart, ServicePolicy, StartLimit};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The agent socket of v0.2 when `HOLDEN_SOCKET_PATH` is not set.
pub const LEGACY_SOCKET_DEFAULT: &str = "/tmp/process_orchestrator.sock";

/// The v0.2 agent socket: the value of `HOLDEN_SOCKET_PATH` if set, else v0.2's default.
pub fn legacy_socket_path(holden_socket_path: Option<&std::ffi::OsStr>) -> PathBuf {
    holden_socket_path.map_or_else(|| PathBuf::from(LEGACY_SOCKET_DEFAULT), PathBuf::from)
}

/// Most arguments after the program in a v0.2 command.
pub const LEGACY_ARGS_MAX: usize = 32;
/// Longest program name or argument in a v0.2 command (the C arrays hold 256 with the NUL).
pub const LEGACY_ARG_LEN_MAX: usize = 255;

pub(crate) fn from_legacy_args(
    local_cmd: &str,
    qm_cmd: &str,
    socket_path: &Path,
) -> Result<Config, ConfigError> {
    let socket_text = socket_path.to_string_lossy();
    if !socket_text.starts_with('/') || socket_text.len() > SOCKET_PATH_LEN_MAX {
        return Err(ConfigError::unplaced(
            "HOLDEN_SOCKET_PATH",
            ConfigErrorKind::BadValue,
            "agent.socket",
            format!("bad socket path {socket_text:?}: expected an absolute path of at most {SOCKET_PATH_LEN_MAX} bytes"),
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| {
        ConfigError::unplaced(
            "LOCAL CMD",
            ConfigErrorKind::Io,
            "service.local.working_directory",
            format!("the current directory: {e}"),
        )
    })?;
    let services = vec![
        legacy_service("local", Partition::Local, local_cmd, "LOCAL CMD", &cwd)?,
        legacy_service("qm", Partition::Qm, qm_cmd, "QM CMD", &cwd)?,
    ];
    let defaults = super::validate::AGENT_REQUEST_TIMEOUT_DEFAULT;
    Ok(Config {
        slots: SLOTS_DEFAULT,
        log_level: LogLevel::Info,
        runtime_dir: std::path::PathBuf::from(super::RUNTIME_DIR_DEFAULT),
        agent: AgentConfig {
            socket: socket_path.to_path_buf(),
            protocol: AgentProtocol::Auto,
            request_timeout: defaults,
            reconnect_initial: super::validate::AGENT_RECONNECT_INITIAL_DEFAULT,
            reconnect_max: super::validate::AGENT_RECONNECT_MAX_DEFAULT,
            cgroup: None,
        },
        shutdown: ShutdownConfig {
            stop_services: true,
            timeout: super::validate::SHUTDOWN_TIMEOUT_DEFAULT,
        },
        control: ControlConfig {
            socket: PathBuf::from(CONTROL_SOCKET_DEFAULT),
            group: None,
            read_group: None,
        },
        log: super::LogConfig::default(),
        // The v0.2 command line's services are what they were: in the orchestrator's cgroup.
        cgroup: super::CgroupConfig {
            root: super::CgroupRoot::Off,
        },
        services,
    })
}

fn legacy_service(
    name: &str,
    partition: Partition,
    command: &str,
    argument: &str,
    cwd: &Path,
) -> Result<ServiceSpec, ConfigError> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bad = |message: String| {
        ConfigError::unplaced(
            argument,
            ConfigErrorKind::BadValue,
            &format!("service.{name}.argv"),
            message,
        )
    };
    let words: Vec<&str> = command.split_ascii_whitespace().collect();
    let Some((program, args)) = words.split_first() else {
        return Err(bad(
            "empty command: expected a program and its arguments".to_string()
        ));
    };
    if args.len() > LEGACY_ARGS_MAX {
        return Err(bad(format!(
            "{} arguments: v0.2 allows at most {LEGACY_ARGS_MAX}",
            args.len()
        )));
    }
    if let Some(long) = words.iter().find(|word| word.len() > LEGACY_ARG_LEN_MAX) {
        return Err(bad(format!(
            "word of {} bytes: v0.2 allows at most {LEGACY_ARG_LEN_MAX}",
            long.len()
        )));
    }
    if words.iter().any(|word| word.contains('\0')) {
        return Err(bad("contains a NUL character".to_string()));
    }
    let program: Vec<u8> = if partition == Partition::Qm || program.starts_with('/') {
        // A QM program lives in the QM partition: its PATH and working directory are not
        // ours, so it goes to the agent as v0.2 sent it (the agent resolves it).
        program.as_bytes().to_vec()
    } else if program.contains('/') {
        // v0.2 ran `bin/prog` from its own working directory.
        cwd.join(program).into_os_string().into_vec()
    } else {
        resolve_in_path(program)
            .ok_or_else(|| bad(format!("program {program:?} not found in PATH")))?
            .into_bytes()
    };
    let mut argv = vec![CString::new(program).map_err(|_| bad("contains a NUL character".into()))?];
    argv.extend(
        args.iter()
            .map(|arg| CString::new(*arg).expect("checked: no NUL")),
    );
    // v0.2's children ran in its working directory (a QM child in the agent's).
    let working_directory = match partition {
        Partition::Local => CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| bad("the current directory contains a NUL character".into()))?,
        Partition::Qm => CString::new("/").expect("no NUL"),
    };
    let mut policy = ServicePolicy::default_for(partition);
    policy.restart = Restart::Always;
    // v0.2 restarted forever, about every 100 ms: keep the delay, drop the start limit.
    policy.start_limit = StartLimit::NONE;
    Ok(ServiceSpec {
        name: ServiceName::new(name).expect("valid literal"),
        argv,
        env: Vec::new(),
        working_directory,
        uid: None,
        gid: None,
        enabled: true,
        policy,
        // v0.2's children wrote on its own stdout and stderr.
        stdout: OutputTarget::Inherit,
        stderr: OutputTarget::Inherit,
        exec: Default::default(),
        cgroup_limits: Default::default(),
        notify_fd: None,
        after: Vec::new(),
        requires: Vec::new(),
        wants: Vec::new(),
    })
}

/// The first executable regular file called `program` in the directories of `PATH`.
fn resolve_in_path(program: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .map(|candidate| candidate.to_string_lossy().into_owned())
}
