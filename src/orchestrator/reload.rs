//! Reload: re-read the configuration file and bring the running set of services in line.
//!
//! The new file is read and validated whole, and every new or changed local service's spawn
//! spec is prepared, before anything changes: an invalid file (or one that needs more service
//! slots than are free) changes nothing and its error goes back to the caller. Then removed
//! services stop (their slots are freed when they have stopped), changed ones are updated and
//! restarted if they run, and added ones start if `enabled`. Settings that are fixed at
//! start-up (slots, `[agent]`, `[control]`) are reported as needing a restart of the
//! orchestrator; `log_level` and `[shutdown]` apply at once.
//!
//! Unlike the event loop, a reload allocates (it parses a file): it runs only when an operator
//! asks, never on a supervision path.

use super::event_loop::{now, Orchestrator, Owner, ServiceRt};
use super::spec::{ServiceDef, Settings};
use crate::config::Config;
use crate::control::FailCode;
use crate::log::{LineBuf, Priority};
use crate::supervise::{Command, Event, Partition, ServiceId};

/// Counts of a reload: added, removed, changed, unchanged.
pub(crate) type ReloadCounts = [u16; 4];

/// Whether a service must be restarted for the new definition to apply.
fn differs(old: &ServiceDef, new: &ServiceDef) -> bool {
    old.argv != new.argv
        || old.env != new.env
        || old.cwd != new.cwd
        || old.uid != new.uid
        || old.gid != new.gid
        || old.inherit_env != new.inherit_env
        || old.policy != new.policy
}

/// Writes the names of settings that changed but apply only after a restart.
fn fixed_changes(old: &Settings, new: &Settings, out: &mut impl std::fmt::Write) {
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
    let _ = write!(out, "{}", list.join(", "));
}

impl Orchestrator {
    /// Re-reads the configuration file. On success returns the counts and the length of the
    /// "needs a restart" note written into `notes`; on failure nothing has changed.
    pub(crate) fn reload(
        &mut self,
        notes: &mut [u8],
    ) -> Result<(ReloadCounts, usize), (FailCode, String)> {
        let result = self.reload_inner(notes);
        match &result {
            Ok((c, len)) => self.log.line(
                Priority::Notice,
                format_args!(
                    "event=reload added={} removed={} changed={} unchanged={} needs_restart=\"{}\"",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    std::str::from_utf8(&notes[..*len]).unwrap_or("")
                ),
            ),
            Err((_, message)) => self.log.line(
                Priority::Err,
                format_args!("event=reload-failed error=\"{message}\" action=nothing changed"),
            ),
        }
        result
    }

    fn reload_inner(
        &mut self,
        notes: &mut [u8],
    ) -> Result<(ReloadCounts, usize), (FailCode, String)> {
        let Some(path) = self.config_path.clone() else {
            return Err((
                FailCode::ReloadUnavailable,
                "this orchestrator was started without a configuration file (the v0.2 command \
                 line): there is nothing to reload"
                    .to_string(),
            ));
        };
        if self.core.shutting_down() {
            return Err((
                FailCode::Refused,
                "the orchestrator is shutting down".to_string(),
            ));
        }
        let config = Config::load(&path).map_err(|e| (FailCode::ReloadFailed, e.to_string()))?;
        let mut new_settings = Settings::from_config(&config);
        new_settings.config_path = self.settings.config_path.clone();
        let defs = ServiceDef::all_from_config(&config);

        // Plan everything first.
        let mut added: Vec<ServiceDef> = Vec::new();
        let mut changed: Vec<(usize, ServiceDef)> = Vec::new();
        let mut same: Vec<(usize, ServiceDef)> = Vec::new();
        for def in defs {
            match self.service_by_name(&def.name) {
                None => added.push(def),
                Some(index) if differs(&self.services[index].def, &def) => {
                    changed.push((index, def))
                }
                Some(index) => same.push((index, def)),
            }
        }
        let removed: Vec<usize> = (0..self.services.len())
            .filter(|&i| {
                let rt = &self.services[i];
                rt.active
                    && !rt.removing
                    && !changed.iter().any(|(c, _)| *c == i)
                    && !same.iter().any(|(s, _)| *s == i)
            })
            .collect();
        if !self.pending_adds.is_empty() {
            return Err((
                FailCode::Refused,
                "the previous reload still waits for removed services to stop: retry".to_string(),
            ));
        }
        let total = same.len() + changed.len() + added.len();
        if total > self.core.capacity() {
            return Err((
                FailCode::ReloadFailed,
                format!(
                    "{}: {total} services do not fit the {} service slots this orchestrator \
                     started with (slots changes need a restart): nothing changed",
                    path.display(),
                    self.core.capacity()
                ),
            ));
        }
        let mut specs_added = Vec::with_capacity(added.len());
        for def in &added {
            specs_added.push(match def.policy.partition {
                Partition::Local => Some(
                    super::event_loop::prepare_spec(def)
                        .map_err(|e| (FailCode::ReloadFailed, e.to_string()))?,
                ),
                Partition::Qm => None,
            });
        }
        let mut specs_changed = Vec::with_capacity(changed.len());
        for (_, def) in &changed {
            specs_changed.push(match def.policy.partition {
                Partition::Local => Some(
                    super::event_loop::prepare_spec(def)
                        .map_err(|e| (FailCode::ReloadFailed, e.to_string()))?,
                ),
                Partition::Qm => None,
            });
        }

        // Apply.
        let mut line = LineBuf::new();
        fixed_changes(&self.settings, &new_settings, &mut line);
        let note = line.as_bytes();
        let note_len = note.len().min(notes.len());
        notes[..note_len].copy_from_slice(&note[..note_len]);
        self.log = self.log.with_max(new_settings.log_level);
        self.shutdown_stop_services = new_settings.shutdown_stop_services;
        self.shutdown_timeout = new_settings.shutdown_timeout;
        self.settings.log_level = new_settings.log_level;
        self.settings.shutdown_stop_services = new_settings.shutdown_stop_services;
        self.settings.shutdown_timeout = new_settings.shutdown_timeout;

        let counts = [
            added.len() as u16,
            removed.len() as u16,
            changed.len() as u16,
            same.len() as u16,
        ];
        for index in removed {
            self.services[index].removing = true;
            let service = self.services[index].id;
            if let Err(refusal) = self.core.remove(now(), service) {
                self.log.line(
                    Priority::Err,
                    format_args!("event=core-refused detail=\"{refusal}\" input=remove"),
                );
            }
            self.drain_actions();
            self.pump();
        }
        for ((index, def), spec) in changed.into_iter().zip(specs_changed) {
            let service = self.services[index].id;
            let policy_changed = self.services[index].def.policy != def.policy;
            let running = self
                .core
                .status(service)
                .is_some_and(|s| s.pid.is_some() || s.state == crate::supervise::State::Starting);
            let rt = &mut self.services[index];
            rt.def = def;
            rt.spec = spec;
            let result = if policy_changed {
                self.core
                    .replace(now(), service, self.services[index].def.policy)
                    .map(|_| ())
            } else if running {
                self.core.handle(
                    now(),
                    Event::Command {
                        service,
                        command: Command::Restart,
                    },
                )
            } else {
                Ok(())
            };
            if let Err(refusal) = result {
                self.log.line(
                    Priority::Err,
                    format_args!("event=core-refused detail=\"{refusal}\" input=replace"),
                );
            }
            self.drain_actions();
            self.pump();
        }
        for (index, def) in same {
            // Only `enabled` may differ: it matters at the next start of the orchestrator.
            self.services[index].def.start_at_boot = def.start_at_boot;
        }
        // Services that need the slot of a removed one wait until it has stopped.
        self.pending_adds.extend(added.into_iter().zip(specs_added));
        self.reload_pending();
        self.qm_services = self.qm_service_count();
        if self.qm_services > 0 {
            self.agent_enable();
        }
        Ok((counts, note_len))
    }

    /// Adds the services of a reload that were waiting for a free service and ring slot.
    pub(crate) fn reload_pending(&mut self) {
        while !self.pending_adds.is_empty()
            && self.core.services().count() < self.core.capacity()
            && self.ring.len() < self.ring.limits().slots as usize
        {
            let (def, spec) = self.pending_adds.remove(0);
            self.add_service(def, spec);
        }
    }

    fn add_service(&mut self, def: ServiceDef, spec: Option<crate::spawn::SpawnSpec>) {
        let id = match self.core.add(def.policy) {
            Ok(id) => id,
            Err(refusal) => {
                // Checked before applying: not expected.
                self.log.line(
                    Priority::Err,
                    format_args!("service={} event=add-failed detail=\"{refusal}\"", def.name),
                );
                return;
            }
        };
        let legacy_possible = self.agent.protocol != super::spec::AgentProtocol::V1;
        let slot = match super::event_loop::slot_insert(&mut self.ring, legacy_possible) {
            Ok(slot) => slot,
            Err(e) => {
                self.log.line(
                    Priority::Err,
                    format_args!("service={} event=add-failed detail=\"ring: {e}\"", def.name),
                );
                let _ = self.core.remove(now(), id);
                self.drain_actions();
                return;
            }
        };
        self.owners[slot.index()] = Owner::Service(id.0);
        let start = def.start_at_boot;
        let rt = ServiceRt::new(def, id, slot, spec);
        if id.index() < self.services.len() {
            self.services[id.index()] = rt;
        } else {
            debug_assert_eq!(id.index(), self.services.len());
            let mut services = std::mem::take(&mut self.services).into_vec();
            services.push(rt);
            self.services = services.into_boxed_slice();
        }
        self.log.line(
            Priority::Notice,
            format_args!(
                "service={} partition={} event=added",
                self.services[id.index()].def.name,
                self.services[id.index()].def.policy.partition.as_str()
            ),
        );
        if start {
            self.push_event(Event::Command {
                service: id,
                command: Command::Start,
            });
            self.pump();
        }
    }

    /// The core has removed a service: free its ring slot and its entry.
    pub(crate) fn on_removed(&mut self, service: ServiceId) {
        let rt = &mut self.services[service.index()];
        rt.active = false;
        rt.removing = false;
        rt.spec = None;
        rt.proc = None;
        rt.timer = None;
        let slot = rt.slot;
        let _ = self.ring.remove(slot);
        self.owners[slot.index()] = Owner::Free;
        self.log.line(
            Priority::Notice,
            format_args!(
                "service={} event=removed",
                self.services[service.index()].def.name
            ),
        );
    }
}
