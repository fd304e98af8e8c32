//! A local service's process tree: its cgroup v2 (`docs/config.md`, `[cgroup]`).
//!
//! Every process a local service starts stays in the service's cgroup (it is created there:
//! `CLONE_INTO_CGROUP`), so the tree is what the cgroup holds, double forks and `setsid`
//! included. What that changes (the rule of `docs/orchestrator.md`, systemd's
//! `KillMode=control-group`):
//!
//! - every signal the orchestrator sends to the service (the stop signal, SIGKILL, `holdenctl
//!   signal`) goes to every process in the cgroup; SIGKILL through `cgroup.kill` (5.14+),
//!   race-free against forks, or on an older kernel by freezing the cgroup, killing what
//!   `cgroup.procs` lists and thawing it, again at every look until it is empty;
//! - when the main process exits while other processes remain, they get the service's stop
//!   signal at once and SIGKILL after its `stop_timeout`; the exit is reported to the
//!   supervision core (which decides the restart) only once the cgroup is empty. A cgroup
//!   still populated another `stop_timeout` after the SIGKILL (a process stuck in the kernel)
//!   is reported with a warning, so that a service is never held forever.
//!
//! The wait for the empty cgroup is a `POLLPRI` poll on its `cgroup.events` (kernfs wakes
//! pollers when `populated` changes; reading the file re-arms it) in the service's own ring
//! slot: the pidfd of the reaped main process is parked meanwhile and attached again before
//! the exit is reported, so the rest of the shell sees the slot as before. When the poll
//! cannot be armed, the file is read every [`LOOK_INTERVAL`] instead. Nothing here allocates.

use super::services::Service;
use crate::log::{ErrnoText, Logger, Priority};
use crate::pidfd::{self, WaitStatus};
use crate::supervise::MonoTime;
use ring::{OpTag, Ring, Timeout};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// How often a cgroup whose `cgroup.events` cannot be polled is looked at.
pub(crate) const LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// A service's tree while its main process is gone and its cgroup is not empty yet.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    drain: Option<Drain>,
    /// A `cgroup.kill` went to the cgroup since it was made: it is renewed before the exit is
    /// reported ([`crate::cgroup::Hierarchy::renew`]).
    killed: std::cell::Cell<bool>,
}

#[derive(Debug)]
struct Drain {
    /// The main process's status, reported once the cgroup is empty.
    status: WaitStatus,
    /// The main process's pidfd (reaped), out of the slot while it holds `cgroup.events`.
    parked: OwnedFd,
    /// `POLLPRI` on `cgroup.events` is what wakes us; else a look every [`LOOK_INTERVAL`].
    watched: bool,
    /// When the rest gets SIGKILL, and whether it got it.
    kill_at: MonoTime,
    killed: bool,
    /// When the exit is reported even though the cgroup is still populated.
    give_up_at: MonoTime,
    /// The give-up came while a poll was outstanding: it is cancelled, and its completion
    /// reports.
    giving_up: bool,
}

impl Tree {
    /// True while the exit of the main process waits for the cgroup to empty.
    pub(crate) fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// A `cgroup.kill` went to the cgroup outside [`signal`].
    pub(crate) fn mark_killed(&self) {
        self.killed.set(true);
    }
}

/// Sends `signal` to every process of the cgroup `dir`; the number of processes signalled
/// (SIGKILL: through `cgroup.kill`, which does not count them: 0).
pub(crate) fn signal(tree: &Tree, dir: BorrowedFd<'_>, signal: i32) -> io::Result<usize> {
    if signal == libc::SIGKILL {
        tree.killed.set(true);
        return kill(dir).map(|()| 0);
    }
    crate::sys::cgroup::for_each_proc(dir, |pid| {
        let _ = crate::sys::cgroup::signal_pid(pid, signal);
    })
}

/// SIGKILL to the whole cgroup: `cgroup.kill`, or (before 5.14) freeze, kill each process,
/// thaw.
pub(crate) fn kill(dir: BorrowedFd<'_>) -> io::Result<()> {
    match crate::sys::cgroup::kill(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let frozen = crate::sys::cgroup::freeze(dir, true);
            let result = crate::sys::cgroup::for_each_proc(dir, |pid| {
                let _ = crate::sys::cgroup::signal_pid(pid, libc::SIGKILL);
            });
            if frozen.is_ok() {
                let _ = crate::sys::cgroup::freeze(dir, false);
            }
            result.map(|_| ())
        }
        other => other,
    }
}

/// What the shell does with a local exit: report it now, or later (the tree drains).
pub(crate) enum Exit {
    Report(WaitStatus),
    Held,
}

/// The main process of `entry` exited with `status` (reaped). If its cgroup still has
/// processes, they get the stop signal and the exit is held until the cgroup is empty.
pub(crate) fn main_exited(
    entry: &mut Service,
    ring: &mut Ring,
    log: &Logger,
    now: MonoTime,
    status: WaitStatus,
) -> Exit {
    let Some(dir) = entry.spec.as_ref().and_then(|s| s.cgroup()) else {
        return Exit::Report(status);
    };
    if !matches!(crate::sys::cgroup::populated(dir), Ok(true)) {
        return Exit::Report(status);
    }
    let name = &entry.def.name;
    let stop_signal = entry.def.policy.stop_signal;
    let stop_timeout = entry.def.policy.stop_timeout;
    let signalled = signal(&entry.tree, dir, stop_signal);
    log.line(
        Priority::Notice,
        format_args!(
            "service={name} partition=local event=tree-remains action=signal signal={} procs={} kill_after_ms={}",
            pidfd::signal_name(stop_signal),
            signalled.as_ref().map_or(0, |n| *n),
            stop_timeout.as_millis()
        ),
    );
    let parked = match ring.detach(entry.slot) {
        Ok(fd) => fd,
        // The slot's pidfd is busy or gone (not expected): report now rather than hold.
        Err(_) => return Exit::Report(status),
    };
    let kill_at = now.saturating_add(stop_timeout);
    let mut drain = Drain {
        status,
        parked,
        watched: false,
        kill_at,
        killed: false,
        give_up_at: kill_at.saturating_add(stop_timeout),
        giving_up: false,
    };
    match watch(ring, entry.slot, dir) {
        Ok(Some(true)) => drain.watched = true,
        // Emptied meanwhile.
        Ok(Some(false)) => {
            entry.tree.drain = Some(drain);
            return finish(entry, ring);
        }
        Ok(None) | Err(_) => {
            log.line(
                Priority::Warning,
                format_args!(
                    "service={name} partition=local event=tree-watch-failed fallback=look interval_ms={}",
                    LOOK_INTERVAL.as_millis()
                ),
            );
        }
    }
    let at = if drain.watched {
        kill_at
    } else {
        now.saturating_add(LOOK_INTERVAL).min(kill_at)
    };
    let _ = ring.timeout(entry.slot, Timeout::At(at.as_nanos()));
    entry.tree.drain = Some(drain);
    Exit::Held
}

/// Opens `cgroup.events`, reads it (which arms its `POLLPRI`), attaches it to the slot and
/// polls it. `Some(true)`: watched; `Some(false)`: already empty (nothing attached); `None`:
/// cannot be watched (nothing attached).
fn watch(ring: &mut Ring, slot: ring::SlotId, dir: BorrowedFd<'_>) -> io::Result<Option<bool>> {
    let events = crate::sys::cgroup::open_events(dir)?;
    if !crate::sys::cgroup::read_populated(events.as_fd())? {
        return Ok(Some(false));
    }
    if ring.attach(slot, events).is_err() {
        return Ok(None);
    }
    if ring.poll_add(slot, libc::POLLPRI as u32).is_err() {
        let _ = ring.detach(slot);
        return Ok(None);
    }
    Ok(Some(true))
}

/// The exit to report, if any, after `cgroup.events` polled (or its poll ended).
pub(crate) fn on_poll(entry: &mut Service, ring: &mut Ring, log: &Logger) -> Option<WaitStatus> {
    let drain = entry.tree.drain.as_ref()?;
    let giving_up = drain.giving_up;
    let populated = ring.fd(entry.slot).map(crate::sys::cgroup::read_populated);
    match populated {
        Some(Ok(false)) => {}
        _ if giving_up => give_up_line(entry, log),
        Some(Ok(true)) => {
            // Still populated (or the poll was interrupted): watch on.
            if ring.poll_add(entry.slot, libc::POLLPRI as u32).is_ok() {
                return None;
            }
            return unwatched(entry, ring, log);
        }
        _ => return unwatched(entry, ring, log),
    }
    let _ = ring.cancel_op(entry.slot, OpTag::Timeout);
    report(entry, ring)
}

/// The poll failed: fall back to looking (the events fd goes back out of the slot).
fn unwatched(entry: &mut Service, ring: &mut Ring, log: &Logger) -> Option<WaitStatus> {
    let _ = ring.detach(entry.slot);
    let drain = entry.tree.drain.as_mut()?;
    drain.watched = false;
    log.line(
        Priority::Warning,
        format_args!(
            "service={} partition=local event=tree-watch-failed fallback=look interval_ms={}",
            entry.def.name,
            LOOK_INTERVAL.as_millis()
        ),
    );
    // The outstanding timeout (the SIGKILL) may be later than the next look: bring it forward.
    let _ = ring.cancel_op(entry.slot, OpTag::Timeout);
    None
}

/// The service's slot timer fired (`Ok`) or was cancelled: SIGKILL at `kill_at`, looks when
/// unwatched, give up at `give_up_at`. The exit to report, if any.
pub(crate) fn on_timeout(
    entry: &mut Service,
    ring: &mut Ring,
    log: &Logger,
    now: MonoTime,
) -> Option<WaitStatus> {
    let slot = entry.slot;
    let dir_populated = entry
        .spec
        .as_ref()
        .and_then(|s| s.cgroup())
        .map(crate::sys::cgroup::populated);
    let drain = entry.tree.drain.as_mut()?;
    if ring.is_pending(slot, OpTag::Timeout) {
        return None;
    }
    if !drain.watched && matches!(dir_populated, Some(Ok(false)) | None) {
        return report(entry, ring);
    }
    if now >= drain.kill_at && !drain.killed {
        drain.killed = true;
        entry.tree.killed.set(true);
        if let Some(dir) = entry.spec.as_ref().and_then(|s| s.cgroup()) {
            let killed = kill(dir);
            log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=local event=tree-kill signal=SIGKILL reason=stop-timeout{}",
                    entry.def.name,
                    KillResult(&killed)
                ),
            );
        }
    } else if drain.killed && !drain.watched {
        // Before 5.14 the freeze-and-kill may miss a process that was forking: again.
        if let Some(dir) = entry.spec.as_ref().and_then(|s| s.cgroup()) {
            let _ = kill(dir);
        }
    }
    let drain = entry.tree.drain.as_mut()?;
    if now >= drain.give_up_at {
        if drain.watched && ring.is_pending(slot, OpTag::Poll) {
            drain.giving_up = true;
            let _ = ring.cancel_op(slot, OpTag::Poll);
            return None;
        }
        give_up_line(entry, log);
        return report(entry, ring);
    }
    let next = if drain.killed {
        drain.give_up_at
    } else {
        drain.kill_at
    };
    let next = if drain.watched {
        next
    } else {
        now.saturating_add(LOOK_INTERVAL).min(next)
    };
    let _ = ring.timeout(slot, Timeout::At(next.as_nanos()));
    None
}

/// Before an exit is reported: a cgroup that got a `cgroup.kill` is made anew (see
/// [`crate::cgroup::Hierarchy::renew`]), so that the next process can be created in it.
pub(crate) fn renew_if_killed(
    entry: &mut Service,
    cgroups: Option<&crate::cgroup::Hierarchy>,
    log: &Logger,
) {
    if !entry.tree.killed.get() || entry.tree.drain.is_some() {
        return;
    }
    let (Some(cgroups), Some(spec)) = (cgroups, entry.spec.as_mut()) else {
        return;
    };
    let Some(spec) = std::sync::Arc::get_mut(spec) else {
        return;
    };
    match cgroups.renew(&entry.def.name) {
        Ok(dir) => {
            if let Err((limit, e)) =
                super::services::apply_limits(&entry.def.cgroup_limits, dir.as_fd())
            {
                log.line(
                    Priority::Err,
                    format_args!(
                        "service={} partition=local event=cgroup-limit-failed key={} error=\"{}\"",
                        entry.def.name,
                        limit.key,
                        ErrnoText(crate::sys::errno::of(&e))
                    ),
                );
            }
            spec.set_cgroup(Some(dir));
            entry.tree.killed.set(false);
        }
        Err(e) => log.line(
            Priority::Warning,
            format_args!(
                "service={} partition=local event=cgroup-renew-failed error=\"{}\"",
                entry.def.name,
                ErrnoText(crate::sys::errno::of(&e))
            ),
        ),
    }
}

fn give_up_line(entry: &Service, log: &Logger) {
    log.line(
        Priority::Warning,
        format_args!(
            "service={} partition=local event=tree-stuck detail=\"processes remain in the cgroup after SIGKILL\" action=report-exit",
            entry.def.name
        ),
    );
}

/// Ends the drain of a tree found empty before anything was attached.
fn finish(entry: &mut Service, ring: &mut Ring) -> Exit {
    match report(entry, ring) {
        Some(status) => Exit::Report(status),
        None => Exit::Held,
    }
}

/// The tree is empty (or given up): the events fd leaves the slot, the main's pidfd comes
/// back, and its status is reported.
fn report(entry: &mut Service, ring: &mut Ring) -> Option<WaitStatus> {
    let drain = entry.tree.drain.take()?;
    if !ring.is_pending(entry.slot, OpTag::Poll) {
        let _ = ring.detach(entry.slot);
    }
    let _ = ring.attach(entry.slot, drain.parked);
    Some(drain.status)
}

struct KillResult<'a>(&'a io::Result<()>);

impl std::fmt::Display for KillResult<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ok(()) => Ok(()),
            Err(e) => write!(f, " error=\"{}\"", ErrnoText(crate::sys::errno::of(e))),
        }
    }
}

/// `statfs.f_type` of cgroup v2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where local services' cgroups are, from `[cgroup] root` (logged once): `None` for no
/// cgroups. An explicit root is created if missing and must be on a cgroup2 file system;
/// `"auto"` is [`crate::cgroup::resolve_auto`].
pub(crate) fn resolve(
    root: &crate::config::CgroupRoot,
    log: &Logger,
) -> Result<Option<crate::cgroup::Hierarchy>, super::Error> {
    use crate::config::CgroupRoot;
    use crate::log::Quoted;
    let hierarchy = match root {
        CgroupRoot::Off => {
            log.line(
                Priority::Info,
                format_args!("event=cgroups state=off reason=\"cgroup.root = off\""),
            );
            return Ok(None);
        }
        CgroupRoot::Path(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                super::Error::Service(format!("cgroup.root {}: {e}", path.display()))
            };
            std::fs::create_dir_all(path).map_err(|e| bad(&e))?;
            let dir =
                std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
                    .map_err(|e| bad(&e))?;
            let dir = crate::sys::cgroup::open_dir(&dir).map_err(|e| bad(&e))?;
            let fs = crate::sys::fd::fs_type(dir.as_fd()).map_err(|e| bad(&e))?;
            if fs != CGROUP2_SUPER_MAGIC {
                return Err(bad(&"not a directory of a cgroup2 file system"));
            }
            let mut hierarchy = crate::cgroup::Hierarchy::at(path.clone());
            hierarchy.open_root().map_err(|e| bad(&e))?;
            hierarchy
        }
        CgroupRoot::Auto => match crate::cgroup::resolve_auto() {
            crate::cgroup::Auto::At {
                mut hierarchy,
                moved,
            } => {
                hierarchy.open_root().map_err(|e| {
                    super::Error::Service(format!("cgroup {}: {e}", hierarchy.root().display()))
                })?;
                if moved {
                    log.line(
                        Priority::Notice,
                        format_args!(
                            "event=cgroup-moved leaf={}",
                            Quoted(crate::cgroup::ORCHESTRATOR_LEAF)
                        ),
                    );
                }
                hierarchy
            }
            crate::cgroup::Auto::Off(reason) => {
                log.line(
                    Priority::Info,
                    format_args!("event=cgroups state=off reason={}", Quoted(&reason)),
                );
                return Ok(None);
            }
        },
    };
    let fallback = if crate::spawn::into_cgroup_fallback_active() {
        " clone_into_cgroup=no"
    } else {
        ""
    };
    log.line(
        Priority::Notice,
        format_args!(
            "event=cgroups state=on root={}{fallback}",
            Quoted(hierarchy.root().display())
        ),
    );
    Ok(Some(hierarchy))
}
