//! What a service's process gets besides its program, arguments, environment and
//! credentials: resource limits, scheduling, CPU affinity, OOM score, umask, supplementary
//! groups, `no_new_privs` (`docs/config.md`). Plain data, fixed-size, prepared in the parent:
//! the child ([`super::child`]) only makes a system call per set field, allocating nothing.

/// `RLIMIT_NLIMITS`: the resources `prlimit64` knows, numbered as the kernel numbers them
/// (`RLIMIT_CPU` = 0 … `RLIMIT_RTTIME` = 15).
pub const RLIMIT_COUNT: usize = 16;
/// `RLIM_INFINITY` as the kernel's 64-bit `struct rlimit64` has it.
pub const RLIM_INFINITY: u64 = u64::MAX;
/// Most supplementary groups of a service.
pub const GROUPS_MAX: usize = 64;
/// Words of a CPU set: CPUs 0..1024.
pub const CPU_SET_WORDS: usize = 16;
/// Highest CPU number an affinity can name.
pub const CPU_MAX: usize = CPU_SET_WORDS * 64 - 1;

/// One resource limit, soft and hard ([`RLIM_INFINITY`]: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

/// A scheduling policy a service can be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedPolicy {
    /// `SCHED_OTHER` (priority 0).
    Other,
    /// `SCHED_FIFO` (priority 1..=99).
    Fifo,
    /// `SCHED_RR` (priority 1..=99).
    Rr,
}

impl SchedPolicy {
    /// The kernel's number for it.
    pub fn number(self) -> libc::c_int {
        match self {
            SchedPolicy::Other => libc::SCHED_OTHER,
            SchedPolicy::Fifo => libc::SCHED_FIFO,
            SchedPolicy::Rr => libc::SCHED_RR,
        }
    }

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedPolicy::Other => "other",
            SchedPolicy::Fifo => "fifo",
            SchedPolicy::Rr => "rr",
        }
    }
}

/// An `oom_score_adj` (-1000..=1000) with its decimal text, as the child writes it to
/// `/proc/self/oom_score_adj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OomScoreAdj {
    value: i16,
    text: [u8; 5],
    len: u8,
}

impl OomScoreAdj {
    /// `None` outside -1000..=1000.
    pub fn new(value: i32) -> Option<OomScoreAdj> {
        if !(-1000..=1000).contains(&value) {
            return None;
        }
        // The decimal text, written without allocating (the wire decoder makes these too).
        let mut text = [0u8; 5];
        let mut len = 0;
        if value < 0 {
            *text.get_mut(0)? = b'-';
            len = 1;
        }
        let magnitude = value.unsigned_abs();
        let mut started = false;
        for divisor in [1000, 100, 10, 1] {
            let digit = (magnitude / divisor % 10) as u8;
            if digit != 0 || started || divisor == 1 {
                started = true;
                *text.get_mut(len)? = b'0' + digit;
                len += 1;
            }
        }
        Some(OomScoreAdj {
            value: value as i16,
            text,
            len: len as u8,
        })
    }

    pub fn value(self) -> i32 {
        i32::from(self.value)
    }

    /// The decimal text (no newline).
    pub fn text(&self) -> &[u8] {
        self.text.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// A set of CPUs (0..=[`CPU_MAX`]), as `sched_setaffinity` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    words: [u64; CPU_SET_WORDS],
}

impl CpuSet {
    /// Adds `cpu`; `false` when it is above [`CPU_MAX`].
    pub fn add(&mut self, cpu: usize) -> bool {
        match self.words.get_mut(cpu / 64) {
            Some(word) => {
                *word |= 1 << (cpu % 64);
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, cpu: usize) -> bool {
        self.words
            .get(cpu / 64)
            .is_some_and(|word| word & (1 << (cpu % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The mask as the kernel reads it.
    pub fn words(&self) -> &[u64; CPU_SET_WORDS] {
        &self.words
    }
}

/// Supplementary groups, besides the primary one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Groups {
    gids: [u32; GROUPS_MAX],
    len: u8,
}

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            gids: [0; GROUPS_MAX],
            len: 0,
        }
    }
}

impl Groups {
    /// `None` with more than [`GROUPS_MAX`].
    pub fn new(gids: &[u32]) -> Option<Groups> {
        let mut groups = Groups::default();
        groups.gids.get_mut(..gids.len())?.copy_from_slice(gids);
        groups.len = gids.len() as u8;
        Some(groups)
    }

    pub fn as_slice(&self) -> &[u32] {
        self.gids.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// The execution environment of a spawn. The default changes nothing: the child keeps what it
/// inherits (limits, scheduling at `SCHED_OTHER` nice 0 thanks to `SCHED_RESET_ON_FORK` in the
/// orchestrator, affinity, OOM score, umask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecEnv {
    /// Per resource (index = the kernel's number), the limits to set.
    pub rlimits: [Option<Rlimit>; RLIMIT_COUNT],
    pub umask: Option<u32>,
    pub oom_score_adj: Option<OomScoreAdj>,
    /// `setpriority(PRIO_PROCESS)`: -20..=19.
    pub nice: Option<i8>,
    /// Policy and priority for `sched_setscheduler`.
    pub sched: Option<(SchedPolicy, u8)>,
    pub cpu_affinity: Option<CpuSet>,
    pub no_new_privs: bool,
    /// Supplementary groups (with the primary one, they make the `setgroups` list).
    pub groups: Option<Groups>,
    /// Capabilities kept in the bounding set (one bit per capability number); every other
    /// is dropped (`PR_CAPBSET_DROP`).
    pub cap_bounding: Option<u64>,
    /// Ambient capabilities (4.3+): kept across the change to a non-root user and raised
    /// into the ambient set, so the program runs with them.
    pub cap_ambient: Option<u64>,
    /// The child adds `WATCHDOG_PID=<its pid>` to its environment (in place of any other),
    /// as systemd does for a service with a watchdog: `sd_watchdog_enabled()` is then true in
    /// the service's main process only, not in the processes it starts.
    pub watchdog_pid: bool,
}

impl ExecEnv {
    /// [`ExecEnv::default`] as a constant: changes nothing.
    pub const DEFAULT: ExecEnv = ExecEnv {
        rlimits: [None; RLIMIT_COUNT],
        umask: None,
        oom_score_adj: None,
        nice: None,
        sched: None,
        cpu_affinity: None,
        no_new_privs: false,
        groups: None,
        cap_bounding: None,
        cap_ambient: None,
        watchdog_pid: false,
    };

    /// The kernel's name of resource `index` (`RLIMIT_NOFILE` → "nofile").
    pub fn rlimit_name(index: usize) -> &'static str {
        RLIMIT_NAMES.get(index).copied().unwrap_or("?")
    }
}

/// Lower-case names of the resources, by number (as `prlimit(1)` names them).
pub const RLIMIT_NAMES: [&str; RLIMIT_COUNT] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];
const _: () = assert!(libc::RLIMIT_NOFILE as usize == 7 && libc::RLIMIT_RTTIME as usize == 15);
const _: () = assert!(libc::RLIMIT_MEMLOCK as usize == 8 && libc::RLIMIT_CORE as usize == 4);

/// Capability names by number (`capabilities(7)`), lower case without `CAP_`; Linux 5.9 has
/// 41 (`checkpoint_restore` = 40).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The number of capability `name` (`"CAP_NET_BIND_SERVICE"`, `"net_bind_service"`, any case).
pub fn capability_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_score_adj_has_its_decimal_text() {
        for value in -1000..=1000 {
            let adj = OomScoreAdj::new(value).unwrap();
            assert_eq!(adj.text(), value.to_string().as_bytes());
            assert_eq!(adj.value(), value);
        }
        assert!(OomScoreAdj::new(1001).is_none());
        assert!(OomScoreAdj::new(-1001).is_none());
    }
}
