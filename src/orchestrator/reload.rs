//! Reload, planned: re-read the configuration file and work out how the running set of
//! services must change. The event loop applies the plan.
//!
//! The new file is read and validated whole, and every new or changed local service's spawn
//! spec is prepared, before anything changes: an invalid file (or one that needs more service
//! slots than exist) changes nothing and its error goes back to the caller. Applying it:
//! removed services stop (their slots are freed when they have stopped), changed ones are
//! updated and restarted if they run, and added ones start if `enabled`. Settings that are
//! fixed at start-up (slots, `[agent]`, `[control]`) are reported as needing a restart of the
//! orchestrator; `log_level` and `[shutdown]` apply at once.
//!
//! Unlike the event loop, a reload allocates (it parses a file): it runs only when an operator
//! asks, never on a supervision path.

use super::services::{prepare_spec, Services};
use super::spec::{ServiceDef, Settings};
use crate::config::Config;
use crate::control::FailCode;
use crate::spawn::SpawnSpec;
use crate::supervise::Partition;
use std::path::Path;
use std::sync::Arc;

/// What a reload changes.
pub(crate) struct Plan {
    pub settings: Settings,
    pub added: Vec<(ServiceDef, Option<Arc<SpawnSpec>>)>,
    pub removed: Vec<usize>,
    pub changed: Vec<(usize, ServiceDef, Option<Arc<SpawnSpec>>)>,
    pub same: Vec<(usize, ServiceDef)>,
    /// Settings that changed but apply only after a restart, comma-separated.
    pub needs_restart: String,
}

impl Plan {
    /// Added, removed, changed, unchanged.
    pub fn counts(&self) -> [u16; 4] {
        [
            self.added.len() as u16,
            self.removed.len() as u16,
            self.changed.len() as u16,
            self.same.len() as u16,
        ]
    }
}

/// Whether a service must be restarted for the new definition to apply.
fn differs(old: &ServiceDef, new: &ServiceDef) -> bool {
    old.argv != new.argv
        || old.env != new.env
        || old.cwd != new.cwd
        || old.uid != new.uid
        || old.gid != new.gid
        || old.inherit_env != new.inherit_env
        || old.policy != new.policy
        || old.stdout != new.stdout
        || old.stderr != new.stderr
        || old.exec != new.exec
        || old.cgroup_limits != new.cgroup_limits
}

/// The names of settings that changed but apply only after a restart.
fn fixed_changes(old: &Settings, new: &Settings) -> String {
    let mut list: Vec<&str> = Vec::new();
    if old.slots != new.slots {
        list.push("slots");
    }
    if old.agent_socket != new.agent_socket {
        list.push("agent.socket");
    }
    if old.agent_protocol != new.agent_protocol {
        list.push("agent.protocol");
    }
    if old.agent_request_timeout != new.agent_request_timeout {
        list.push("agent.request_timeout");
    }
    if old.agent_reconnect_initial != new.agent_reconnect_initial
        || old.agent_reconnect_max != new.agent_reconnect_max
    {
        list.push("agent.reconnect_initial/reconnect_max");
    }
    if old.control.socket != new.control.socket {
        list.push("control.socket");
    }
    if old.control.group != new.control.group {
        list.push("control.group");
    }
    if old.control.read_group != new.control.read_group {
        list.push("control.read_group");
    }
    if old.journal_socket != new.journal_socket {
        list.push("log.journal_socket");
    }
    if old.own_lines != new.own_lines {
        list.push("log.journal");
    }
    if old.history_bytes != new.history_bytes {
        list.push("log.history_bytes");
    }
    if old.cgroup_root != new.cgroup_root {
        list.push("cgroup.root");
    }
    list.join(", ")
}

fn prepare(
    def: &ServiceDef,
    services: &Services,
) -> Result<Option<Arc<SpawnSpec>>, (FailCode, String)> {
    match def.policy.partition {
        Partition::Local => prepare_spec(def)
            .and_then(|spec| services.with_cgroup(def, spec))
            .map(Some)
            .map_err(|e| (FailCode::ReloadFailed, e)),
        Partition::Qm => Ok(None),
    }
}

/// Reads `path` and plans the reload against the running `services`.
pub(crate) fn plan(
    path: &Path,
    settings: &Settings,
    services: &Services,
    capacity: usize,
) -> Result<Plan, (FailCode, String)> {
    let config = Config::load(path).map_err(|e| (FailCode::ReloadFailed, e.to_string()))?;
    let mut new_settings = Settings::from_config(&config);
    new_settings.config_path = settings.config_path.clone();
    // The runtime directory is this instance's (its lock, given by the file or by
    // --runtime-dir): it stays.
    new_settings.runtime_dir = settings.runtime_dir.clone();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut same = Vec::new();
    for mut def in ServiceDef::all_from_config(&config) {
        let socket = (settings.runtime_dir.as_ref()).map(|d| d.join(super::notify::SOCKET_NAME));
        if let Some(dir) = &settings.runtime_dir {
            super::runtime::tag(&mut def, dir);
        }
        super::notify::service_env(&mut def, socket.as_deref());
        match services.by_name(&def.name) {
            None => added.push(def),
            Some(index) if differs(&services.list[index].def, &def) => changed.push((index, def)),
            Some(index) => same.push((index, def)),
        }
    }
    let removed: Vec<usize> = (0..services.list.len())
        .filter(|&i| {
            let s = &services.list[i];
            s.active
                && !s.removing
                && !changed.iter().any(|(c, _)| *c == i)
                && !same.iter().any(|(k, _)| *k == i)
        })
        .collect();
    let total = same.len() + changed.len() + added.len();
    if total > capacity {
        return Err((
            FailCode::ReloadFailed,
            format!(
                "{}: {total} services do not fit the {capacity} service slots this orchestrator \
                 started with (slots changes need a restart): nothing changed",
                path.display(),
            ),
        ));
    }
    let added = added
        .into_iter()
        .map(|def| prepare(&def, services).map(|spec| (def, spec)))
        .collect::<Result<Vec<_>, _>>()?;
    let changed = changed
        .into_iter()
        .map(|(i, def)| prepare(&def, services).map(|spec| (i, def, spec)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        needs_restart: fixed_changes(settings, &new_settings),
        settings: new_settings,
        added,
        removed,
        changed,
        same,
    })
}
