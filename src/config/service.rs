//! The validated, immutable specification of one service.

use crate::supervise::{Partition, ServicePolicy};
use std::ffi::CString;
use std::fmt;

/// Longest service name.
pub const SERVICE_NAME_LEN_MAX: usize = 64;
/// Most argv entries (`argv[0]` included).
pub const ARGV_COUNT_MAX: usize = 256;
/// Longest single argv entry, in bytes.
pub const ARG_LEN_MAX: usize = 4096;
/// Most environment variables per service.
pub const ENV_COUNT_MAX: usize = 256;
/// Longest `KEY=value`, in bytes.
pub const ENV_LEN_MAX: usize = 4096;

/// A service name: 1..=64 characters of `[A-Za-z0-9_.@-]`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates a name; the error says what was expected.
    pub fn new(name: &str) -> Result<ServiceName, String> {
        let expected =
            "expected 1 to 64 characters of A-Z a-z 0-9 _ . @ -, starting with a letter or digit";
        if name.is_empty() || name.len() > SERVICE_NAME_LEN_MAX {
            return Err(format!(
                "bad service name {name:?} ({} bytes): {expected}",
                name.len()
            ));
        }
        let first_ok = name.as_bytes()[0].is_ascii_alphanumeric();
        let chars_ok = name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'@' | b'-'));
        if !first_ok || !chars_ok {
            return Err(format!("bad service name {name:?}: {expected}"));
        }
        Ok(ServiceName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One service, validated. Identity is the name; two specs with the same name but any other
/// difference (`!=`) mean the service changed (a reload restarts it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: ServiceName,
    /// argv; no entry holds a NUL. `argv[0]` is an absolute path, except for the `qm` service
    /// of the v0.2 command line, where it may be a bare name for the agent to resolve.
    pub argv: Vec<CString>,
    /// Environment of the process, exactly these variables, sorted by key; keys are
    /// non-empty and hold no `=`.
    pub env: Vec<(CString, CString)>,
    /// Working directory (absolute); `/` when not given.
    pub working_directory: CString,
    /// User id to run as (both partitions; for `qm` it is a QM user id); `None` = as spawner.
    pub uid: Option<u32>,
    /// Group id to run as; `None` = as spawner.
    pub gid: Option<u32>,
    /// Whether it starts when the orchestrator starts (key `enabled`).
    pub enabled: bool,
    /// What the supervision core needs: partition, restart, delays, limits, stop.
    pub policy: ServicePolicy,
    /// Where a local service's stdout goes (keys `stdout`; QM services: always
    /// [`OutputTarget::Inherit`], their output stays in QM).
    pub stdout: OutputTarget,
    /// Where a local service's stderr goes (key `stderr`).
    pub stderr: OutputTarget,
    /// A local service's limits, scheduling, affinity, OOM score, umask, supplementary
    /// groups and `no_new_privs` (keys `limits`, `nice`, `sched_policy`, …; default: none).
    pub exec: crate::spawn::ExecEnv,
    /// A local service's cgroup limits (`memory_max`, `cpu_weight`, …; default: none).
    pub cgroup_limits: super::CgroupLimits,
    /// s6's readiness convention (key `notify_fd`): the fd number (3..=1023) on which the
    /// service writes a newline once it is ready; only with `type = "notify"`, local.
    pub notify_fd: Option<i32>,
    /// Services it starts only once they are ready (key `after`).
    pub after: Vec<ServiceName>,
    /// Services it needs: started with it, and it is stopped when one of them fails or stops
    /// (key `requires`).
    pub requires: Vec<ServiceName>,
    /// Services started with it, whatever becomes of them later (key `wants`).
    pub wants: Vec<ServiceName>,
}

/// Where a local service's stdout or stderr goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OutputTarget {
    /// The orchestrator's own stdout or stderr (`"inherit"`): unattributed, as before 0.3.
    Inherit,
    /// `/dev/null` (`"null"`).
    Null,
    /// Captured on a pipe (`"journal"`, the default): each line to journald with its native
    /// protocol while the journal socket takes it, else as an escaped `event=output` line in
    /// the orchestrator's log.
    Journal,
    /// Captured on a pipe, each line as an escaped `event=output` line in the orchestrator's
    /// log (`"log"`), even when journald is there.
    Log,
    /// Appended to this file (`"file:/path"`), opened by the orchestrator.
    File(CString),
}

impl OutputTarget {
    /// The default of a partition's services.
    pub fn default_for(partition: Partition) -> OutputTarget {
        match partition {
            Partition::Local => OutputTarget::Journal,
            Partition::Qm => OutputTarget::Inherit,
        }
    }

    /// Whether the orchestrator reads it from a pipe.
    pub fn is_captured(&self) -> bool {
        matches!(self, OutputTarget::Journal | OutputTarget::Log)
    }
}

impl fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputTarget::Inherit => f.write_str("inherit"),
            OutputTarget::Null => f.write_str("null"),
            OutputTarget::Journal => f.write_str("journal"),
            OutputTarget::Log => f.write_str("log"),
            OutputTarget::File(path) => write!(f, "file:{}", path.to_string_lossy()),
        }
    }
}

impl ServiceSpec {
    /// Where it runs.
    pub fn partition(&self) -> Partition {
        self.policy.partition
    }

    /// The environment as `KEY=value` strings for `execve`.
    pub fn envp(&self) -> Vec<CString> {
        self.env
            .iter()
            .map(|(key, value)| {
                let mut joined = key.as_bytes().to_vec();
                joined.push(b'=');
                joined.extend_from_slice(value.as_bytes());
                CString::new(joined).expect("validated: no NUL")
            })
            .collect()
    }
}
