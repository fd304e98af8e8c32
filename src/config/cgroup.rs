//! The `[cgroup]` table: where local services' cgroups live (`docs/config.md`).

use std::path::PathBuf;

/// `[cgroup] root`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CgroupRoot {
    /// The orchestrator's own cgroup when it is delegated to it (systemd's `Delegate=yes`),
    /// otherwise no cgroups (logged once at start).
    #[default]
    Auto,
    /// No cgroups: services run in the orchestrator's cgroup, and stop and kill signal the
    /// main process only.
    Off,
    /// Services' cgroups under this directory of a cgroup v2 mount, which must exist.
    Path(PathBuf),
}

/// The `[cgroup]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupConfig {
    pub root: CgroupRoot,
}
