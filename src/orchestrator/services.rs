//! The services sub-shell: each service's definition, its prepared spawn spec, and the ring
//! slot that owns the pidfd of its live process.
//!
//! One bare ring slot per service, for its whole life: the engine's `Watch` attaches the
//! pidfd to it and polls for the exit, `Release` detaches and closes it. The exit status is
//! read here — `waitid` for our own children, `PIDFD_INFO_EXIT` for QM processes — and handed
//! to the engine.
//!
//! A QM process's status is published by the kernel when the agent reaps it, a little after
//! the exit that made its pidfd poll readable. It is asked once when the pidfd polls readable
//! (by then the reap has nearly always happened); if it is not there yet, the pidfd is polled
//! again for `POLLHUP`, which comes with the reap, for at most [`REAP_WAIT_MAX`], and asked once
//! more after the reap. Only on a kernel whose pidfds do not poll `POLLHUP` at the reap
//! (`Capabilities::reap_hup`) is it asked every 1 ms instead. Either way a process still
//! unreaped after 200 ms is reported with an unknown status.

use super::counters::Counters;
use super::engine::{local_failure, Engine};
use super::output::Outputs;
use super::spawner::{Done, Spawner};
use super::spec::ServiceDef;
use crate::log::{ErrnoText, Logger, Priority, Quoted};
use crate::pidfd::{self, Capabilities, ExitInfo, Identity, WaitStatus};
use crate::spawn::{self, SpawnError, SpawnSpec, SpawnStage};
use crate::supervise::{ExitStatus, MonoTime, Partition, Pid, ServiceId};
use crate::wire::v1;
use ring::{Completion, Ring, SlotId, Timeout};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Time between two looks at a QM process that polled readable before its exit status was
/// published (the window between exit and reap), on a kernel without `POLLHUP` at the reap.
const EXIT_INFO_RETRY_INTERVAL: Duration = Duration::from_millis(1);
/// Looks before a QM exit status is reported as unknown.
const EXIT_INFO_RETRIES_MAX: u16 = 200;
/// How long a restarted orchestrator waits, at start-up, for an orphaned tree it killed to be
/// gone from its cgroup ([`Services::end_orphan_tree`]).
pub(crate) const ORPHAN_TREE_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the reap of a QM process that exited (`POLLIN`) before its status is
/// reported as unknown: the same bound as the looks above.
pub(crate) const REAP_WAIT_MAX: Duration = Duration::from_millis(200);

/// Where a QM process's exit status stands once its pidfd polled readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExitWait {
    /// Not waiting: alive, or local, or reported.
    None,
    /// Exited but not reaped: the pidfd is polled for `POLLHUP` (the reap) until `deadline`.
    Reap { deadline: MonoTime },
    /// The reap did not come by its deadline: the `POLLHUP` poll is being cancelled, and its
    /// completion reports the exit (with the status if it was published meanwhile).
    Overdue,
    /// Looking every [`EXIT_INFO_RETRY_INTERVAL`], `left` more times.
    Retry { left: u16 },
}

/// One service of the shell.
pub(crate) struct Service {
    pub def: ServiceDef,
    pub id: ServiceId,
    /// Bare ring slot; holds the live process's pidfd while it is supervised.
    pub slot: SlotId,
    /// Prepared once for local services.
    pub spec: Option<Arc<SpawnSpec>>,
    /// QM: waiting for the exit status after the pidfd polled readable.
    exit_wait: ExitWait,
    /// In the core (false once a reload removed it and it stopped: the entry is unused).
    pub active: bool,
    /// A reload removed it; it is stopping and leaves when the engine says `Removed`.
    pub removing: bool,
    /// A local spawn is with the spawner threads (its pid is not known yet).
    pub spawning: bool,
    /// Local, with a cgroup: the tree that outlived its main process.
    pub(crate) tree: super::tree::Tree,
    /// Its live process is not our child (a local process taken over from a previous
    /// instance, reparented when that one died): `waitid` cannot read its exit status, which
    /// is read as for QM, through `PIDFD_INFO_EXIT` once its new parent has reaped it.
    pub reaped_elsewhere: bool,
    /// Its live process's identity for the state record on a kernel without pidfs.
    pub start_identity: crate::record::Identity,
    /// What it last said in `STATUS=` (sd_notify).
    pub status_text: arrayvec::ArrayString<{ crate::service_notify::STATUS_BYTES_MAX }>,
    /// QM, with `[agent] cgroup`: its live process's own cgroup, once checked to be
    /// `<agent cgroup>/<name>` (`Services::check_qm_cgroup`).
    pub(crate) qm_cgroup: Option<OwnedFd>,
    /// QM: the execution environment its `Start` carries (`None`: the agent's own).
    qm_exec: Option<spawn::ExecEnv>,
}

/// Where holden-agent puts its processes' own cgroups (`[agent] cgroup`).
pub(crate) struct QmCgroups {
    /// As a path of the host's cgroup2 mount (made once at start-up: the check opens it by
    /// this path, allocating nothing, so that a `services` directory the agent made anew is
    /// the one found).
    pub host: std::ffi::CString,
    /// As `/proc/PID/cgroup` shows it (relative to the mount, from `/`).
    pub in_proc: String,
}

/// Every service, indexed by the core's service index.
pub(crate) struct Services {
    pub list: Vec<Service>,
    /// The one timer of every QM exit wait: the next 1 ms look, or the earliest reap deadline.
    exit_retry_slot: SlotId,
    /// When the timer on `exit_retry_slot` fires, while one is outstanding.
    exit_timer_at: Option<MonoTime>,
    caps: Capabilities,
    /// Local spawns that failed (the engine counts QM ones).
    pub local_spawn_failures: u64,
    /// Where local services' cgroups are (`None`: no cgroups).
    pub(crate) cgroups: Option<crate::cgroup::Hierarchy>,
    /// A datagram socket connected to the services' notify socket: what a service with
    /// `notify_fd` gets on that number (`None` without the notify socket).
    pub(crate) notify_fd_socket: Option<Arc<OwnedFd>>,
    /// QM services' own cgroups (`None`: QM processes stay in the agent's).
    pub(crate) qm_cgroups: Option<QmCgroups>,
}

impl Services {
    pub(crate) fn new(capacity: usize, exit_retry_slot: SlotId, caps: Capabilities) -> Services {
        Services {
            list: Vec::with_capacity(capacity),
            exit_retry_slot,
            exit_timer_at: None,
            caps,
            local_spawn_failures: 0,
            cgroups: None,
            notify_fd_socket: None,
            qm_cgroups: None,
        }
    }

    /// Gives a local service's fresh spec its cgroup (created if needed, its directory opened
    /// now, once: spawns use the fd). Without cgroups the spec is returned as it is.
    pub(crate) fn with_cgroup(
        &self,
        def: &ServiceDef,
        mut spec: Arc<SpawnSpec>,
    ) -> Result<Arc<SpawnSpec>, String> {
        let Some(cgroups) = &self.cgroups else {
            if let Some(limit) = def.cgroup_limits.limits.first() {
                // Never ignored (docs/config.md): a limit needs the service's own cgroup.
                return Err(format!(
                    "service {}: `{}` needs the service's own cgroup, and services get none \
                     here (see the event=cgroups line)",
                    def.name, limit.key
                ));
            }
            return Ok(spec);
        };
        let path = cgroups.path_of(&def.name).unwrap_or_default();
        for controller in def.cgroup_limits.controllers() {
            cgroups.enable(controller).map_err(|e| {
                let keys: Vec<&str> = def
                    .cgroup_limits
                    .limits
                    .iter()
                    .filter(|l| l.controller == controller)
                    .map(|l| l.key)
                    .collect();
                format!("service {}: {} needs it: {e}", def.name, keys.join(", "))
            })?;
        }
        let dir = cgroups
            .create(&def.name)
            .map_err(|e| format!("service {}: cgroup {}: {e}", def.name, path.display()))?;
        apply_limits(&def.cgroup_limits, dir.as_fd()).map_err(|(limit, e)| {
            format!(
                "service {}: `{}` ({} = {}) in {}: {e}",
                def.name,
                limit.key,
                limit.file.to_string_lossy(),
                limit.value,
                path.display()
            )
        })?;
        match Arc::get_mut(&mut spec) {
            Some(spec) => spec.set_cgroup(Some(dir)),
            None => return Err(format!("service {}: spec is shared", def.name)),
        }
        Ok(spec)
    }

    /// Removes the cgroup of a service that is gone (reload) or of every service (shutdown),
    /// if it is empty; a populated one stays.
    pub(crate) fn remove_cgroup(&self, log: &Logger, name: &str) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        match cgroups.remove(name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => log.line(
                Priority::Warning,
                format_args!(
                    "service={name} event=cgroup-remove-failed error=\"{}\"",
                    ErrnoText(crate::sys::errno::of(&e))
                ),
            ),
        }
    }

    /// Start-up only (it waits): ends the tree of `index` whose main process is gone (found
    /// so by a restarted orchestrator in its cgroup), waits up to [`ORPHAN_TREE_WAIT`] for the
    /// cgroup to empty and makes it anew (a `cgroup.kill` is behind it). Logged.
    pub(crate) fn end_orphan_tree(&mut self, log: &Logger, index: usize, procs: usize) {
        let Some(entry) = self.list.get_mut(index) else {
            return;
        };
        let Some(dir) = entry.spec.as_ref().and_then(|s| s.cgroup()) else {
            return;
        };
        let name = &entry.def.name;
        let killed = super::tree::kill(dir);
        let deadline = std::time::Instant::now() + ORPHAN_TREE_WAIT;
        let mut empty = false;
        while std::time::Instant::now() < deadline {
            if matches!(crate::sys::cgroup::populated(dir), Ok(false)) {
                empty = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        log.line(
            if empty {
                Priority::Notice
            } else {
                Priority::Warning
            },
            format_args!(
                "service={name} partition=local event=orphan-tree-ended procs={procs} signal=SIGKILL \
                 empty={} reason=\"its main process is gone\"{}",
                if empty { "yes" } else { "no" },
                match &killed {
                    Ok(()) => String::new(),
                    Err(e) => format!(" error=\"{}\"", ErrnoText(crate::sys::errno::of(e))),
                }
            ),
        );
        entry.tree.mark_killed();
        super::tree::renew_if_killed(entry, self.cgroups.as_ref(), log);
    }

    /// The service's slot timer (its tree's SIGKILL deadline or next look) completed.
    pub(crate) fn on_tree_timeout(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        counters: &Counters,
        now: MonoTime,
        index: usize,
    ) {
        let Some(entry) = self.list.get_mut(index) else {
            return;
        };
        if let Some(status) = super::tree::on_timeout(entry, ring, log, now) {
            super::tree::renew_if_killed(entry, self.cgroups.as_ref(), log);
            Self::report_exit(entry, engine, counters, now, status);
        }
    }

    pub(crate) fn get(&self, id: ServiceId) -> Option<&Service> {
        self.list.get(id.index())
    }

    /// The name of a service, for log lines.
    pub(crate) fn name(&self, index: usize) -> &str {
        self.list.get(index).map_or("?", |s| s.def.name.as_str())
    }

    /// The live service with this name.
    pub(crate) fn by_name(&self, name: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|s| s.active && s.def.name == name)
    }

    /// Puts a service (new, or into a free entry of a removed one).
    pub(crate) fn put(
        &mut self,
        def: ServiceDef,
        id: ServiceId,
        slot: SlotId,
        spec: Option<Arc<SpawnSpec>>,
    ) {
        let qm_exec = (def.policy.partition == Partition::Qm)
            .then(|| exec_env_of(&def))
            .filter(|exec| *exec != spawn::ExecEnv::default());
        let service = Service {
            qm_exec,
            def,
            id,
            slot,
            spec,
            exit_wait: ExitWait::None,
            active: true,
            removing: false,
            spawning: false,
            tree: Default::default(),
            reaped_elsewhere: false,
            start_identity: crate::record::Identity::None,
            status_text: arrayvec::ArrayString::new(),
            qm_cgroup: None,
        };
        match self.list.get_mut(id.index()) {
            Some(entry) => *entry = service,
            None => {
                debug_assert_eq!(id.index(), self.list.len());
                self.list.push(service);
            }
        }
    }

    /// A QM service's process was taken into supervision: with `[agent] cgroup`, finds its
    /// cgroup as the kernel shows it (`/proc/PID/cgroup` of its pid in our namespace: nothing
    /// the agent says) and keeps it only if it is exactly `<agent cgroup>/<name>`, the one the
    /// agent was asked to make. Anything else (the agent's own, another service's, a cgroup
    /// outside QM) is refused and logged, and the service's signals go to its process alone.
    pub(crate) fn check_qm_cgroup(&mut self, log: &Logger, service: ServiceId, pid: i32) {
        let Some(qm) = &self.qm_cgroups else {
            return;
        };
        let Some(entry) = self.list.get_mut(service.index()) else {
            return;
        };
        entry.qm_cgroup = None;
        // Gone already (its exit comes next): nothing to signal, nothing to say.
        let Some(read) = crate::cgroup::ProcCgroup::read(pid) else {
            return;
        };
        let seen = crate::cgroup::parse_own_cgroup(read.text());
        let name = entry.def.name.as_str();
        let ours = seen.is_some_and(|p| {
            p.strip_prefix(qm.in_proc.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                == Some(name)
        });
        if !ours {
            log.line(
                Priority::Warning,
                format_args!(
                    "service={name} partition=qm pid={pid} event=qm-cgroup-refused cgroup={} expected={} effect=\"signals go to its process only\"",
                    Quoted(seen.unwrap_or("(unknown)")),
                    Quoted(format_args!("{}/{name}", qm.in_proc))
                ),
            );
            return;
        }
        let opened = crate::sys::cgroup::open_dir(&qm.host)
            .and_then(|host| crate::cgroup::open_component(host.as_fd(), name));
        match opened {
            Ok(fd) => entry.qm_cgroup = Some(fd),
            Err(e) => log.line(
                Priority::Warning,
                format_args!(
                    "service={name} partition=qm pid={pid} event=qm-cgroup-refused cgroup={} error={} effect=\"signals go to its process only\"",
                    Quoted(format_args!("{}/{name}", qm.host.to_string_lossy())),
                    Quoted(&e)
                ),
            ),
        }
    }

    /// Keeps what a service said in `STATUS=` (cut to fit, at a character boundary).
    pub(crate) fn set_status_text(&mut self, id: ServiceId, text: &str) {
        if let Some(entry) = self.list.get_mut(id.index()) {
            entry.status_text.clear();
            let mut end = text.len().min(entry.status_text.capacity());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            entry.status_text.push_str(&text[..end]);
        }
    }

    /// QM services currently configured.
    pub(crate) fn qm_count(&self) -> usize {
        self.list
            .iter()
            .filter(|s| s.active && s.def.policy.partition == Partition::Qm)
            .count()
    }

    /// The engine wants a local process: the spawner threads start it, and its outcome comes
    /// back through [`Services::spawn_done`].
    pub(crate) fn spawn_local(
        &mut self,
        engine: &mut Engine<OwnedFd>,
        spawner: &Spawner,
        outputs: &Outputs,
        log: &Logger,
        now: MonoTime,
        service: ServiceId,
    ) {
        let Some(entry) = self.list.get(service.index()) else {
            return;
        };
        let output = outputs.get(service.index());
        let submitted = match (&entry.spec, output.and_then(|o| o.open_error)) {
            // An output file that could not be opened: the spawn fails, and says why.
            (Some(_), Some(errno)) => Err(SpawnError::new(SpawnStage::Stdio, errno)),
            (Some(spec), None) => spawner.submit(
                service,
                Arc::clone(spec),
                output.map_or([None, None], |o| o.child.clone()),
                entry
                    .def
                    .notify_fd
                    .zip(self.notify_fd_socket.clone())
                    .map(|(n, fd)| (fd, n)),
            ),
            (None, _) => Err(SpawnError::new(SpawnStage::Prepare, libc::EINVAL)),
        };
        match submitted {
            Ok(()) => self.list[service.index()].spawning = true,
            Err(e) => self.spawn_failed(engine, log, now, service, e),
        }
    }

    /// A local spawn finished.
    pub(crate) fn spawn_done(
        &mut self,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        counters: &Counters,
        now: MonoTime,
        done: Done,
    ) {
        if let Some(entry) = self.list.get_mut(done.service.index()) {
            entry.spawning = false;
            entry.reaped_elsewhere = false;
        }
        match done.result {
            Ok(child) => {
                counters.spawned_local.fetch_add(1, Ordering::Relaxed);
                let inode = if self.caps.pidfs {
                    pidfd::pidfs_inode(child.pidfd.as_fd()).unwrap_or(0)
                } else {
                    0
                };
                let identity = Identity {
                    inode,
                    pid: child.pid,
                };
                engine.spawned(now, done.service, child.pidfd, child.pid, identity);
            }
            Err(e) => self.spawn_failed(engine, log, now, done.service, e),
        }
    }

    fn spawn_failed(
        &mut self,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        now: MonoTime,
        service: ServiceId,
        e: SpawnError,
    ) {
        self.local_spawn_failures += 1;
        log.line(
            Priority::Warning,
            format_args!(
                "service={} partition=local event=spawn-failed stage={}{}{} errno={} error=\"{}\"",
                self.name(service.index()),
                e.stage,
                match (e.resource(), e.capability()) {
                    (Some(_), _) => " resource=",
                    (None, Some(_)) => " capability=",
                    (None, None) => "",
                },
                e.resource().or(e.capability()).unwrap_or(""),
                e.errno,
                ErrnoText(e.errno)
            ),
        );
        engine.spawn_failed(now, service, local_failure(e.stage, e.errno));
    }

    /// Supervise a process: its pidfd goes to the service's slot, polled for the exit.
    pub(crate) fn watch(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        service: ServiceId,
        pidfd: OwnedFd,
    ) {
        let Some(entry) = self.list.get(service.index()) else {
            return;
        };
        let watched = ring
            .attach(entry.slot, pidfd)
            .and_then(|()| ring.poll_add(entry.slot, libc::POLLIN as u32));
        if let Err(e) = watched {
            // Only possible with a pidfd still attached or a poll outstanding (a bug): say so.
            log.line(
                Priority::Err,
                format_args!("service={} event=poll-failed error=\"{e}\"", entry.def.name),
            );
        }
    }

    /// Signals the service's live process.
    pub(crate) fn signal(
        &self,
        ring: &Ring,
        log: &Logger,
        service: ServiceId,
        pid: Pid,
        signal: i32,
    ) {
        let Some(entry) = self.list.get(service.index()) else {
            return;
        };
        let name = &entry.def.name;
        let cgroup = entry.spec.as_ref().and_then(|s| s.cgroup());
        if let Some(dir) = cgroup.or(entry.qm_cgroup.as_ref().map(AsFd::as_fd)) {
            // The whole tree (docs/orchestrator.md): every process of the service's cgroup.
            match super::tree::signal(&entry.tree, dir, signal) {
                Ok(procs) => log.line(
                    Priority::Info,
                    format_args!(
                        "service={name} partition={} pid={} event=signal signal={} target=cgroup procs={procs}",
                        entry.def.policy.partition.as_str(),
                        pid.0,
                        pidfd::signal_name(signal)
                    ),
                ),
                Err(e) => log.line(
                    Priority::Warning,
                    format_args!(
                        "service={name} pid={} event=signal-failed signal={} target=cgroup error=\"{}\"",
                        pid.0,
                        pidfd::signal_name(signal),
                        ErrnoText(crate::sys::errno::of(&e))
                    ),
                ),
            }
            return;
        }
        let Some(fd) = ring.fd(entry.slot) else {
            return;
        };
        match pidfd::send_signal(fd, signal) {
            Ok(()) => log.line(
                Priority::Info,
                format_args!(
                    "service={name} partition={} pid={} event=signal signal={}",
                    entry.def.policy.partition.as_str(),
                    pid.0,
                    pidfd::signal_name(signal)
                ),
            ),
            // ESRCH: it has exited already; its pidfd will poll readable.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => log.line(
                Priority::Warning,
                format_args!(
                    "service={name} pid={} event=signal-failed signal={} error=\"{}\"",
                    pid.0,
                    pidfd::signal_name(signal),
                    ErrnoText(crate::sys::errno::of(&e))
                ),
            ),
        }
    }

    /// The process was accounted for: close its pidfd.
    pub(crate) fn release(&mut self, ring: &mut Ring, log: &Logger, service: ServiceId) {
        let Some(entry) = self.list.get_mut(service.index()) else {
            return;
        };
        entry.exit_wait = ExitWait::None;
        // QM: what its main process left behind in its cgroup ends with it.
        if let Some(dir) = entry.qm_cgroup.take() {
            if let Err(e) = super::tree::kill(dir.as_fd()) {
                log.line(
                    Priority::Warning,
                    format_args!(
                        "service={} partition=qm event=tree-kill-failed error={}",
                        entry.def.name,
                        Quoted(&e)
                    ),
                );
            }
        }
        match ring.detach(entry.slot) {
            Ok(pidfd) => drop(pidfd),
            Err(ring::OpError::NoFd) => {}
            Err(e) => log.line(
                Priority::Err,
                format_args!(
                    "service={} event=release-failed error=\"{e}\"",
                    entry.def.name
                ),
            ),
        }
    }

    /// The pidfd of a service polled readable (or the poll ended).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_poll(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        counters: &Counters,
        now: MonoTime,
        index: usize,
        c: Completion,
    ) {
        let Some(entry) = self.list.get_mut(index) else {
            return;
        };
        if entry.tree.draining() {
            // The slot holds the cgroup's `cgroup.events`: the tree may be empty now.
            if let Some(status) = super::tree::on_poll(entry, ring, log) {
                super::tree::renew_if_killed(entry, self.cgroups.as_ref(), log);
                Self::report_exit(entry, engine, counters, now, status);
            }
            return;
        }
        let slot = entry.slot;
        if ring.fd(slot).is_none() {
            return;
        }
        match c.result {
            Ok(_) => {}
            // The reap did not come in time and its poll is cancelled: report now.
            Err(_) if entry.exit_wait == ExitWait::Overdue => {}
            Err(_) => {
                // EINTR/ECANCELED: watch again, for what was watched.
                let events = match entry.exit_wait {
                    ExitWait::Reap { .. } => libc::POLLHUP,
                    _ => libc::POLLIN,
                };
                let _ = ring.poll_add(entry.slot, events as u32);
                return;
            }
        }
        let status = match entry.def.policy.partition {
            Partition::Local if !entry.reaped_elsewhere => {
                match ring.fd(slot).map(pidfd::wait_child) {
                    Some(Ok(Some(status))) => status,
                    Some(Ok(None)) => {
                        let _ = ring.poll_add(slot, libc::POLLIN as u32);
                        return;
                    }
                    _ => WaitStatus::Unknown,
                }
            }
            _ if !self.caps.exit_info => WaitStatus::Unknown,
            _ => {
                // Asked at once even without POLLHUP in the poll's answer: that answer was
                // taken in the kernel right at the exit, and the agent's reap (the kernel's,
                // SIGCHLD being ignored) has nearly always happened by now.
                let status = ring.fd(slot).map(pidfd::exit_info);
                let waiting = entry.exit_wait;
                match status {
                    Some(ExitInfo::Status(status)) => status,
                    Some(ExitInfo::NotYet) if waiting == ExitWait::None => {
                        if self.caps.reap_hup && ring.poll_add(slot, libc::POLLHUP as u32).is_ok() {
                            // Exited, not reaped yet: the status comes with the reap, which
                            // polls POLLHUP. Asking again before would only fail.
                            let deadline = now.saturating_add(REAP_WAIT_MAX);
                            entry.exit_wait = ExitWait::Reap { deadline };
                            wake_at(
                                ring,
                                self.exit_retry_slot,
                                &mut self.exit_timer_at,
                                deadline,
                            );
                        } else {
                            // A kernel without POLLHUP at the reap: look again shortly.
                            entry.exit_wait = ExitWait::Retry {
                                left: EXIT_INFO_RETRIES_MAX,
                            };
                            let at = now.saturating_add(EXIT_INFO_RETRY_INTERVAL);
                            wake_at(ring, self.exit_retry_slot, &mut self.exit_timer_at, at);
                        }
                        return;
                    }
                    Some(ExitInfo::NotYet) if waiting != ExitWait::Overdue => {
                        // Polled POLLHUP, yet not published (should not happen): look again
                        // every 1 ms within the same bound.
                        entry.exit_wait = ExitWait::Retry {
                            left: EXIT_INFO_RETRIES_MAX,
                        };
                        let at = now.saturating_add(EXIT_INFO_RETRY_INTERVAL);
                        wake_at(ring, self.exit_retry_slot, &mut self.exit_timer_at, at);
                        return;
                    }
                    _ => WaitStatus::Unknown,
                }
            }
        };
        Self::exited(
            entry,
            ring,
            engine,
            log,
            counters,
            now,
            status,
            self.cgroups.as_ref(),
        );
    }

    /// The main process of `entry` is gone with `status`: reported now, or once its cgroup is
    /// empty (a local service with a cgroup whose tree remains, [`super::tree::main_exited`]).
    #[allow(clippy::too_many_arguments)]
    fn exited(
        entry: &mut Service,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        counters: &Counters,
        now: MonoTime,
        status: WaitStatus,
        cgroups: Option<&crate::cgroup::Hierarchy>,
    ) {
        let status = match entry.def.policy.partition {
            Partition::Local => match super::tree::main_exited(entry, ring, log, now, status) {
                super::tree::Exit::Held => {
                    // The slot holds `cgroup.events` now; no exit wait looks at it.
                    entry.exit_wait = ExitWait::None;
                    return;
                }
                super::tree::Exit::Report(status) => {
                    super::tree::renew_if_killed(entry, cgroups, log);
                    status
                }
            },
            Partition::Qm => status,
        };
        Self::report_exit(entry, engine, counters, now, status);
    }

    fn report_exit(
        entry: &mut Service,
        engine: &mut Engine<OwnedFd>,
        counters: &Counters,
        now: MonoTime,
        status: WaitStatus,
    ) {
        entry.exit_wait = ExitWait::None;
        counters.exited.fetch_add(1, Ordering::Relaxed);
        let status = match status {
            WaitStatus::Exited(code) => ExitStatus::Code(code),
            WaitStatus::Signaled { signal, .. } => ExitStatus::Signal(signal),
            WaitStatus::Unknown => ExitStatus::Unknown,
        };
        engine.exited(now, entry.id, status);
    }

    /// The exit-wait timer fired (or was cancelled to fire earlier): looks again at every QM
    /// process waiting for its status every 1 ms, gives up the reap waits past their deadline,
    /// and arms the timer for the next of both.
    pub(crate) fn on_exit_retry(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        counters: &Counters,
        now: MonoTime,
    ) {
        self.exit_timer_at = None;
        let mut next: Option<MonoTime> = None;
        let mut wake = |at: MonoTime| next = Some(next.map_or(at, |n| n.min(at)));
        for entry in self.list.iter_mut() {
            match entry.exit_wait {
                ExitWait::None | ExitWait::Overdue => {}
                ExitWait::Reap { deadline } if deadline > now => wake(deadline),
                ExitWait::Reap { .. } => {
                    if ring.is_pending(entry.slot, ring::OpTag::Poll) {
                        // Its completion reports the exit.
                        entry.exit_wait = ExitWait::Overdue;
                        let _ = ring.cancel_op(entry.slot, ring::OpTag::Poll);
                    } else {
                        // No poll to wait for (cannot happen): report what is known.
                        let status = match ring.fd(entry.slot).map(pidfd::exit_info) {
                            Some(ExitInfo::Status(status)) => status,
                            _ => WaitStatus::Unknown,
                        };
                        let cgroups = self.cgroups.as_ref();
                        Self::exited(entry, ring, engine, log, counters, now, status, cgroups);
                    }
                }
                ExitWait::Retry { left } => {
                    let Some(fd) = ring.fd(entry.slot) else {
                        entry.exit_wait = ExitWait::None;
                        continue;
                    };
                    let status = match pidfd::exit_info(fd) {
                        ExitInfo::Status(status) => status,
                        ExitInfo::NotYet if left > 1 => {
                            entry.exit_wait = ExitWait::Retry { left: left - 1 };
                            wake(now.saturating_add(EXIT_INFO_RETRY_INTERVAL));
                            continue;
                        }
                        _ => WaitStatus::Unknown,
                    };
                    let cgroups = self.cgroups.as_ref();
                    Self::exited(entry, ring, engine, log, counters, now, status, cgroups);
                }
            }
        }
        if let Some(at) = next {
            wake_at(ring, self.exit_retry_slot, &mut self.exit_timer_at, at);
        }
    }
}

/// Makes the exit-wait timer on `slot` fire at `at` or earlier: arms it, or cancels one that
/// fires later (its completion, in [`Services::on_exit_retry`], re-arms it for the earliest
/// wait). `armed_at` is when the outstanding one fires.
fn wake_at(ring: &mut Ring, slot: SlotId, armed_at: &mut Option<MonoTime>, at: MonoTime) {
    match *armed_at {
        None => {
            if ring.timeout(slot, Timeout::At(at.as_nanos())).is_ok() {
                *armed_at = Some(at);
            }
        }
        Some(armed) if armed > at => {
            let _ = ring.cancel_op(slot, ring::OpTag::Timeout);
        }
        Some(_) => {}
    }
}

/// The `Start` of each QM service, as the agent link asks for it when it can send.
pub(crate) struct Starts<'a>(pub &'a Services);

impl crate::link::Requests for Starts<'_> {
    fn start(&self, index: usize) -> Option<v1::StartRef<'_, Vec<u8>, Vec<u8>>> {
        let entry = self.0.list.get(index).filter(|s| s.active)?;
        let def = &entry.def;
        let mut flags = v1::StartFlags::NEW_SESSION;
        if def.inherit_env {
            flags |= v1::StartFlags::INHERIT_ENV;
        }
        if def.policy.readiness.kind == crate::supervise::Kind::Notify {
            flags |= v1::StartFlags::NOTIFY;
        }
        // Its own cgroup, named after it (the link drops the request for an agent that does
        // not offer `CGROUPS`).
        let cgroup = self.0.qm_cgroups.as_ref().map(|_| def.name.as_bytes());
        if cgroup.is_some() {
            flags |= v1::StartFlags::CGROUP;
        }
        // Its execution environment, which the agent applies (the link fails the start at once
        // with an agent that cannot).
        let exec = entry.qm_exec.as_ref();
        if exec.is_some() {
            flags |= v1::StartFlags::EXEC_ENV;
        }
        // Its cgroup's limits, which the agent writes (the configuration allows them only with
        // `[agent] cgroup`; the link fails the start with an agent that has no cgroups).
        let cgroup_limits = Some(&def.cgroup_limits).filter(|l| cgroup.is_some() && !l.is_empty());
        if cgroup_limits.is_some() {
            flags |= v1::StartFlags::CGROUP_LIMITS;
        }
        Some(v1::StartRef {
            argv: def.argv.as_slice(),
            env: def.env.as_slice(),
            cwd: def.cwd.as_deref(),
            uid: def.uid,
            gid: def.gid,
            flags,
            cgroup,
            exec,
            cgroup_limits,
        })
    }
}

/// What systemd (or a re-exec) gave the orchestrator itself, which a service that inherits
/// the environment must not take for its own.
const ORCHESTRATOR_ONLY_ENV: [&str; 9] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "FDSTORE",
    "INVOCATION_ID",
    crate::handoff::ENV,
];

/// Prepares the reusable spawn spec of a local service. With `inherit_env`, the
/// orchestrator's environment comes first, minus the names the service sets itself.
pub(crate) fn prepare_spec(def: &ServiceDef) -> Result<Arc<SpawnSpec>, String> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |what: &dyn std::fmt::Display| format!("service {}: {what}", def.name);
    if def.argv.is_empty() {
        return Err(bad(&"argv is empty"));
    }
    let name_of = |entry: &[u8]| entry.split(|&b| b == b'=').next().unwrap_or(&[]).to_vec();
    let own_names: Vec<Vec<u8>> = def.env.iter().map(|e| name_of(e)).collect();
    let mut env: Vec<Vec<u8>> = Vec::new();
    if def.inherit_env {
        for (key, value) in std::env::vars_os() {
            if own_names.iter().any(|n| n.as_slice() == key.as_bytes())
                || ORCHESTRATOR_ONLY_ENV
                    .iter()
                    .any(|n| key.as_bytes() == n.as_bytes())
            {
                continue;
            }
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            env.push(entry);
        }
    }
    env.extend(def.env.iter().cloned());
    let strings_bytes_max = def
        .argv
        .iter()
        .chain(env.iter())
        .map(|s| s.len() + 1)
        .sum::<usize>()
        + def.cwd.as_ref().map_or(0, |c| c.len() + 1);
    let mut spec = SpawnSpec::with_limits(spawn::SpawnLimits {
        args_count_max: def.argv.len(),
        env_count_max: env.len(),
        strings_bytes_max,
    });
    let mut w = spec.writer();
    for arg in &def.argv {
        w.arg(arg).map_err(|e| bad(&e))?;
    }
    for entry in &env {
        w.env(entry).map_err(|e| bad(&e))?;
    }
    if let Some(cwd) = &def.cwd {
        w.cwd(cwd).map_err(|e| bad(&e))?;
    }
    w.uid(def.uid);
    w.gid(def.gid);
    w.finish();
    spec.set_exec_env(exec_env_of(def));
    Ok(Arc::new(spec))
}

/// The execution environment a service is spawned with: its configured one, with
/// `WATCHDOG_PID` for a watchdog. A local service also gets every limit it does not configure
/// at the value the orchestrator was started with when the orchestrator's own differs (it
/// raises its soft `RLIMIT_NOFILE`: a service gets the 1,024 programs expect back, not the
/// orchestrator's 524,288); a QM one keeps the agent's (which raises none). Start-up and
/// reload only.
pub(crate) fn exec_env_of(def: &ServiceDef) -> spawn::ExecEnv {
    let mut exec = def.exec;
    exec.watchdog_pid = def.policy.readiness.kind == crate::supervise::Kind::Notify
        && !def.policy.readiness.watchdog.is_zero();
    if def.policy.partition == Partition::Qm {
        return exec;
    }
    if let Some(starting) = crate::sys::process::starting_limits() {
        for (resource, limit) in exec.rlimits.iter_mut().enumerate() {
            let now = crate::sys::process::rlimit(resource).ok();
            if limit.is_none() && now != Some(starting[resource]) {
                *limit = Some(starting[resource]);
            }
        }
    }
    exec
}

/// Writes a service's cgroup limits into its cgroup `dir`; allocation-free (a renewed cgroup
/// gets them again on the event loop). The first that fails, with its error.
pub(crate) fn apply_limits<'l>(
    limits: &'l crate::config::CgroupLimits,
    dir: std::os::fd::BorrowedFd<'_>,
) -> Result<(), (&'l crate::config::CgroupLimit, std::io::Error)> {
    for limit in &limits.limits {
        crate::sys::cgroup::write_file(dir, limit.file, limit.value.as_bytes())
            .map_err(|e| (limit, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits' plumbing against a plain directory standing in for a cgroup (the files
    /// exist, as the kernel's do; nothing is created): each value lands in its file.
    #[test]
    fn limits_are_written_into_their_cgroup_files() {
        let text = "[[service]]\nname = \"hog\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n\
                    memory_max = \"32M\"\nmemory_high = 1000\ncpu_weight = 50\ncpu_max = \"50%\"\n\
                    pids_max = \"max\"\nio_weight = 200\n";
        let config = crate::config::Config::parse(text, "t.toml").unwrap();
        let limits = &config.services[0].cgroup_limits;
        let dir = std::env::temp_dir().join(format!("holden-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            "memory.max",
            "memory.high",
            "cpu.weight",
            "cpu.max",
            "pids.max",
            "io.weight",
        ];
        for file in files {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let fd = std::fs::File::open(&dir).unwrap();
        let fd = OwnedFd::from(fd);
        apply_limits(limits, fd.as_fd())
            .map_err(|(l, e)| (l.key, e))
            .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            files.map(read),
            [
                "33554432",
                "1000",
                "50",
                "50000 100000",
                "max",
                "default 200"
            ]
        );
        assert_eq!(limits.controllers(), vec!["memory", "cpu", "pids", "io"]);
        // A file that is not there (a controller not enabled): the first failing limit.
        std::fs::remove_file(dir.join("cpu.weight")).unwrap();
        let (limit, e) = apply_limits(limits, fd.as_fd()).unwrap_err();
        assert_eq!(
            (limit.key, e.raw_os_error()),
            ("cpu_weight", Some(libc::ENOENT))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
