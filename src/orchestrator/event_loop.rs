//! The event loop: one thread, one [`Ring`], the [`Engine`] driven by its completions.
//!
//! Data flow (`docs/architecture.md`): a kernel event completes a ring operation; the loop
//! hands the completion to the sub-shell that owns its slot (services, agent, control, or
//! its own signal, shutdown and timer slots); the sub-shell turns it into an engine input
//! (a process exited, a packet arrived); the engine runs the supervision core and the agent
//! link to a fixed point and leaves [`Output`]s; the loop carries each out through the
//! sub-shell it belongs to, which queues ring operations; then it derives the one ring
//! timeout from the engine's next deadline, and waits again.
//!
//! Ring slots (fixed at start-up): one bare slot per service (its live process's pidfd),
//! the signalfd, the shutdown eventfd, the watchdog timer, the engine's timer, the QM
//! exit-status retry timer, the spawner threads' eventfd (local spawns finished); buffered slots for the agent connection (and a spare, because a
//! dropped connection's slot drains before it is free), for v0.2 request connections when
//! the agent may speak v0.2, and for the control plane. Nothing is allocated after
//! [`Orchestrator::new`] except by a reload.

use super::agent_io::AgentIo;
use super::control::{self, ControlServer, Request, View};
use super::counters::Counters;
use super::deps::{Deps, Standing};
use super::engine::{Engine, Output};
use super::notify::{self, NotifySocket};
use super::output::Outputs;
use super::reexec::{Inherited, Program};
use super::reload;
use super::runtime::{self, Found, Recorder, RuntimeDir, RuntimeError};
use super::services::{prepare_spec, Services};
use super::spawner::Spawner;
use super::spec::{AgentProtocol, Options, ServiceDef, Settings};
use crate::control::{FailCode, ReloadInfo, TEXT_LEN_MAX};
use crate::histogram::Histogram;
use crate::link::{self, Protocol};
use crate::log::{self, LineBuf, Logger, Priority, Quoted};
use crate::pidfd::{self, Capabilities};
use crate::sd_notify::Notifier;
use crate::spawn::SpawnSpec;
use crate::supervise::{self, Command, MonoTime, Partition, Reason, ServiceId, State, Transition};
use crate::sys::socket::UnixAddr;
use ring::{Completion, Limits, OpTag, Ring, SlotId, Timeout};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Ring slots that belong to no service: signalfd, shutdown eventfd, watchdog, engine timer,
/// exit retry, spawner eventfd, fd store retry, services' notify socket, agent connection and
/// its spare.
pub const FIXED_SLOTS: usize = 10;
/// How soon a message systemd did not take (its notify socket full: an fd store entry, `READY=1`,
/// `STOPPING=1`, `STATUS=`, `WATCHDOG=1`) is tried again.
const FD_STORE_RETRY: Duration = Duration::from_millis(20);
/// Of those, the ones with buffers: the agent connection and its spare.
const FIXED_BUFFERED_SLOTS: usize = 2;
/// v0.2 request connections beyond one per service, for slots still draining.
const V02_SPARE_SLOTS: usize = 4;
/// How long a re-exec waits for the spawns in flight to finish before it execs anyway (a spawn
/// still in flight then is found by its tag, or started again, by the next instance).
const REEXEC_DRAIN_MAX_NS: u64 = 1_000_000_000;
/// How often the loop looks again while a re-exec waits for spawns in flight.
const REEXEC_POLL: Duration = Duration::from_millis(5);
/// Buffers of a buffered ring slot (connections): one wire v1 frame each way.
const SLOT_BUF_BYTES: u32 = crate::wire::v1::FRAME_LEN_MAX as u32;

/// What a ring slot is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Service(u32),
    Signals,
    Shutdown,
    Watchdog,
    Timer,
    ExitRetry,
    FdStoreRetry,
    Notify,
    Spawner,
    Agent,
    Control,
    /// A captured output stream of a service (index, stream 0 stdout / 1 stderr).
    Output(u32, u8),
}

/// Asks a running loop to shut down, like SIGTERM (a second request forces SIGKILL). Safe to
/// use from another thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    fd: Arc<OwnedFd>,
}

impl ShutdownHandle {
    /// Requests shutdown.
    pub fn request(&self) {
        let _ = crate::sys::fd::eventfd_add(self.fd.as_fd(), 1);
    }
}

/// Why the loop could not start or had to stop.
#[derive(Debug)]
pub enum Error {
    /// io_uring could not be set up (the message names the cause and the fix).
    Ring(ring::SetupError),
    /// io_uring_enter failed in a way the loop cannot survive.
    Enter(ring::EnterError),
    /// A service could not be prepared.
    Service(String),
    /// A system call during start-up failed.
    Io(&'static str, io::Error),
    /// The runtime directory is locked by another instance, or unusable.
    Runtime(RuntimeError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "io_uring: {e}"),
            Error::Enter(e) => write!(f, "io_uring_enter: {e}"),
            Error::Service(e) => f.write_str(e),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Ring slots for captured output streams: two per service, as far as the ring's bounds allow
/// (its slot count, and a completion queue that covers every operation in flight). A service
/// whose stream finds no slot keeps the orchestrator's (`event=output-unavailable`).
fn output_slots(base_slots: usize, buffered: usize, capacity: usize) -> usize {
    let bare = base_slots.saturating_sub(buffered);
    let cq_needed =
        (buffered * ring::OP_TAG_COUNT as usize + bare * ring::BARE_OP_TAG_COUNT as usize) * 2;
    let cq_room = (ring::CQ_ENTRIES_MAX as usize).saturating_sub(cq_needed)
        / (2 * ring::BARE_OP_TAG_COUNT as usize);
    let slot_room = (ring::SLOTS_MAX as usize).saturating_sub(base_slots);
    (2 * capacity).min(cq_room).min(slot_room)
}

/// The output of one service (QM services: nothing, their output stays in QM).
fn put_output(
    outputs: &mut Outputs,
    ring: &mut Ring,
    log: &Logger,
    index: usize,
    def: &ServiceDef,
    kept: [Option<(OwnedFd, OwnedFd)>; 2],
) -> [Option<SlotId>; 2] {
    use crate::config::OutputTarget;
    let targets = match def.policy.partition {
        Partition::Local => [&def.stdout, &def.stderr],
        Partition::Qm => [&OutputTarget::Inherit, &OutputTarget::Inherit],
    };
    outputs.put(ring, log, index, &def.name, targets, kept)
}

/// journald's socket for the orchestrator's own lines: `[log] journal = "always"`, or
/// `"auto"` when the log fd is the stream `JOURNAL_STREAM` names (systemd's rule for a service
/// whose stderr is the journal); `None` (stderr) otherwise, or when journald is not there.
fn own_lines_journal(
    settings: &Settings,
    log_fd: std::os::fd::RawFd,
) -> Option<log::background::JournalSink> {
    use crate::config::OwnLines;
    let wanted = match settings.own_lines {
        OwnLines::Stderr => false,
        OwnLines::Journal => true,
        OwnLines::Auto => log::journal::fd_is_journal_stream(log_fd),
    };
    if !wanted {
        return None;
    }
    let path = settings.journal_socket.as_os_str().as_bytes();
    log::background::JournalSink::connect(path, "holden-orchestrator").ok()
}

/// The current time for the engine and for absolute ring timeouts.
fn now() -> MonoTime {
    MonoTime::from_nanos(ring::now_ns())
}

/// The orchestrator: everything allocated in [`Orchestrator::new`], nothing after.
pub struct Orchestrator {
    ring: Ring,
    engine: Engine<OwnedFd>,
    services: Services,
    /// Local services' stdout and stderr.
    outputs: Outputs,
    spawner: Spawner,
    spawner_slot: SlotId,
    agent: AgentIo,
    control: ControlServer,
    owners: Box<[Owner]>,
    log: Logger,
    /// Writes `log`'s lines, so that a full log stream never blocks the loop.
    log_writer: log::Background,
    /// How long the loop spent on each completion (handling it and everything it caused).
    stall: Histogram,
    notify: Notifier,
    caps: Capabilities,
    signals: Option<SlotId>,
    shutdown_fd: Arc<OwnedFd>,
    shutdown_slot: SlotId,
    watchdog: Option<(SlotId, Duration)>,
    timer_slot: SlotId,
    /// Deadline of the outstanding engine TIMEOUT, if any.
    timer_at: Option<u64>,
    shutdown_requests: u32,
    done: bool,
    counters: Arc<Counters>,
    qm_services: usize,
    /// The settings in force (reload reports changes that need a restart).
    settings: Settings,
    /// Services a reload added that wait for a removed service's slot (empty otherwise).
    pending_adds: Vec<(ServiceDef, Option<Arc<SpawnSpec>>)>,
    /// The agent's state as the `STATUS=` line last said it.
    agent_status: &'static str,
    /// Writes the state record (`None` without a runtime directory).
    recorder: Option<Recorder>,
    /// The previous instance's record, until start-up has carried on with it.
    carried_over: Option<crate::record::Record>,
    /// What a re-exec runs (`None` if this process's program could not be read).
    program: Option<Program>,
    /// Re-execs before this instance.
    generation: u32,
    /// A re-exec asked for and not yet done: when, and the control connection that asked.
    reexec: Option<(u64, Option<usize>)>,
    /// What the previous instance handed over (after a re-exec), until start-up used it.
    inherited: Option<Inherited>,
    /// Services' pidfds systemd's fd store passed (`LISTEN_FDS`), until start-up used them.
    stored: Vec<(String, OwnedFd)>,
    /// Services whose entries in systemd's fd store may be wrong (a message it did not take):
    /// sent again from the retry timer until they are right.
    fd_store_dirty: Box<[bool]>,
    /// The fd store retry timer's slot (with a store), and whether it is armed.
    fd_store_retry: Option<(SlotId, bool)>,
    /// A message to systemd's fd store failed (said once).
    fd_store_failed: bool,
    /// `READY=1` or `STOPPING=1` that the notify socket did not take (full: every message is
    /// sent without blocking), sent again from the retry timer before anything else; until it
    /// is taken the fd store waits. Lost, `READY=1` would leave the unit `activating` until
    /// systemd's start timeout killed it.
    notify_pending: Option<&'static [u8]>,
    /// A `WATCHDOG=1` the socket did not take, sent again from the retry timer.
    watchdog_pending: bool,
    /// A `STATUS=` the socket did not take: the retry timer sends the current one (it is
    /// sent on changes only, so a lost one would stay wrong until the next change).
    status_pending: bool,
    /// `READY=1` was sent (or is pending) at start-up: until then the fd store is not
    /// written (start-up writes every service's entries after it), so that the burst a
    /// restart's take-over makes cannot fill the socket before `READY=1`.
    announced: bool,
    /// The services' sd_notify socket (with a runtime directory).
    notify_socket: Option<NotifySocket>,
    /// Datagrams on it that were not counted (not from a service's process), and when that was
    /// last said in the log.
    notify_dropped: u64,
    notify_dropped_said_ns: u64,
    /// Datagrams whose sender's spawn was not reported yet (capacity fixed at start-up).
    notify_held: Vec<notify::Held>,
    /// The services' cgroup root as `/proc/PID/cgroup` shows it (notifications from a
    /// service's tree).
    cgroup_root_in_proc: Option<String>,
    /// `after` and `requires` between services, and the starts that wait for them.
    deps: Deps,
    /// A shutdown stopping services in reverse dependency order, before the core's shutdown.
    ordered_shutdown: bool,
}

/// What systemd's fd store passed at start (`LISTEN_FDS`): the services' pidfds and output
/// pipes, by their names (`crate::fd_store::Stored`); other fds passed are closed. A malformed
/// `LISTEN_*` is said in the returned lines, for the log. Called before anything opens an fd:
/// the numbers systemd passed are the lowest.
fn stored_fds() -> (Vec<(String, OwnedFd)>, Vec<String>) {
    let mut said = Vec::new();
    let var = |name: &str| std::env::var(name).ok();
    let passed = crate::fd_store::listen_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        crate::sys::process::getpid(),
    );
    let passed = match passed {
        Ok(passed) => passed,
        Err(e) => {
            said.push(format!(
                "event=listen-fds-unusable error={} consequence=\"processes are taken over \
                 from the state record\"",
                Quoted(&e.0)
            ));
            return (Vec::new(), said);
        }
    };
    let mut stored = Vec::new();
    for (number, name) in passed {
        let Ok(fd) = crate::sys::fd::claim_inherited(number) else {
            continue;
        };
        let _ = crate::sys::fd::set_cloexec(fd.as_fd(), true);
        let usable = match crate::fd_store::Stored::of(&name) {
            Some(crate::fd_store::Stored::Pidfd { .. }) => pidfd::is_pidfd(fd.as_fd()),
            Some(crate::fd_store::Stored::Pipe { .. }) => {
                crate::sys::fd::fstat(fd.as_fd()).is_ok_and(|st| st.is_fifo())
            }
            None => false,
        };
        if usable {
            stored.push((name, fd));
        } else {
            said.push(format!(
                "event=listen-fd-unused fd={number} name={} effect=closed",
                Quoted(&name)
            ));
        }
    }
    (stored, said)
}

/// Takes the stored fd named by `what` out of `stored`.
fn take_stored(
    stored: &mut Vec<(String, OwnedFd)>,
    what: crate::fd_store::Stored<'_>,
) -> Option<OwnedFd> {
    let name = what.to_string();
    let i = stored.iter().position(|(n, _)| *n == name)?;
    Some(stored.swap_remove(i).1)
}

impl Drop for Orchestrator {
    /// Ends the log writer thread once it has written what is queued (the spawner threads end
    /// with their own handle).
    fn drop(&mut self) {
        self.log_writer.stop(log::background::FLUSH_TIMEOUT);
    }
}

impl Orchestrator {
    /// Builds the loop: the ring, the engine with every service added, prepared spawn specs,
    /// the signalfd (if `options.signals`), the agent link and the control plane. Starts
    /// nothing yet.
    pub fn new(
        settings: Settings,
        defs: Vec<ServiceDef>,
        options: Options,
    ) -> Result<Orchestrator, Error> {
        // First of all, what systemd's fd store passed (the lowest fd numbers).
        let (mut stored, stored_said) = if options.notify {
            stored_fds()
        } else {
            (Vec::new(), Vec::new())
        };
        // After a re-exec: what the previous instance kept open for this one.
        let (mut inherited, handoff_error) =
            match Inherited::from_env(settings.slots.max(defs.len())) {
                Ok(inherited) => (inherited, None),
                Err(e) => (None, Some(e)),
            };
        // Before anything starts: one orchestrator per runtime directory.
        let runtime = match &settings.runtime_dir {
            Some(dir) => {
                let kept = inherited.as_mut().and_then(|i| {
                    let fd = i.handoff.lock;
                    i.take(fd)
                });
                Some(RuntimeDir::lock(dir, kept).map_err(Error::Runtime)?)
            }
            None => None,
        };
        let journal = own_lines_journal(&settings, options.log_fd);
        let log_writer = log::Background::start_with_journal(
            options.log_fd,
            log::background::RING_BYTES,
            "",
            journal,
        )
        .map_err(|e| Error::Io("log writer thread", e))?;
        let log = Logger::new(options.log_fd, settings.log_level).in_background(log_writer.clone());
        for line in &stored_said {
            log.line(Priority::Warning, format_args!("{line}"));
        }
        if let Some(e) = handoff_error {
            log.line(
                Priority::Err,
                format_args!(
                    "event=handoff-unusable error={} consequence=\"started as after a crash: \
                     processes are taken over from the state record, the control socket and \
                     output pipes are made anew\"",
                    Quoted(&e)
                ),
            );
        }
        let capacity = settings.slots.max(defs.len()).max(1);
        if capacity > supervise::SERVICES_MAX {
            return Err(Error::Service(format!(
                "slots: {capacity} is more than {}",
                supervise::SERVICES_MAX
            )));
        }
        // First of all the fds: the spawner threads' Launchers reserve the lowest numbers, and
        // a child starts on a copy of every fd below them (`close_range(CLOSE_RANGE_UNSHARE)`),
        // so they must come before the pidfds, pipes and sockets that grow with the services.
        let (spawner, spawns_done) =
            Spawner::start(capacity).map_err(|e| Error::Io("spawner threads", e))?;
        let v02_possible = settings.agent_protocol != AgentProtocol::V1;
        let v02_slots = if v02_possible {
            capacity + V02_SPARE_SLOTS
        } else {
            0
        };
        let buffered = FIXED_BUFFERED_SLOTS + v02_slots + control::CONTROL_SLOTS;
        let base_slots = capacity + (FIXED_SLOTS - FIXED_BUFFERED_SLOTS) + buffered;
        let slots = base_slots + output_slots(base_slots, buffered, capacity);
        let limits = Limits {
            slots: slots as u32,
            buffered_slots: buffered as u32,
            sq_entries: (slots as u32 * 2).next_power_of_two().min(4096),
            cq_entries: 0,
            recv_len: SLOT_BUF_BYTES,
            send_len: SLOT_BUF_BYTES,
            read_len: 64,
            fds_per_msg_max: link::FDS_MAX as u32,
            completions_per_wait_max: 1024,
        };
        let mut ring = Ring::new(limits).map_err(Error::Ring)?;
        let mut owners = vec![Owner::Free; slots].into_boxed_slice();
        let mut take_bare = |ring: &mut Ring, owner: Owner| -> Result<SlotId, Error> {
            let id = ring
                .insert_bare()
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
            owners[id.index()] = owner;
            Ok(id)
        };
        let caps = Capabilities::probe();
        let qm_services = defs
            .iter()
            .filter(|d| d.policy.partition == Partition::Qm)
            .count();
        let link_config = link::Config {
            protocol: match settings.agent_protocol {
                AgentProtocol::Auto => Protocol::Auto,
                AgentProtocol::V1 => Protocol::V1,
                AgentProtocol::V02 => Protocol::V02,
            },
            request_timeout: settings.agent_request_timeout,
            reconnect_initial: settings.agent_reconnect_initial,
            reconnect_max: settings.agent_reconnect_max,
            services: capacity,
        };
        let mut engine = Engine::new(capacity, link_config, qm_services > 0);
        let exit_retry_slot = take_bare(&mut ring, Owner::ExitRetry)?;
        let mut services = Services::new(capacity, exit_retry_slot, caps);
        services.cgroups = super::tree::resolve(&settings.cgroup_root, &log)?;
        let mount = crate::cgroup::mount_point();
        let cgroup_root_in_proc = services
            .cgroups
            .as_ref()
            .and_then(|h| h.root_in_proc(mount.as_deref()?));
        if let Some(host) = &settings.agent_cgroup {
            let in_proc = mount
                .as_deref()
                .and_then(|m| crate::cgroup::Hierarchy::at(host.clone()).root_in_proc(m));
            let host_c = std::ffi::CString::new(host.as_os_str().as_bytes()).ok();
            match in_proc.zip(host_c) {
                Some((in_proc, host_c)) => {
                    log.line(
                        Priority::Info,
                        format_args!(
                            "event=qm-cgroups state=on cgroup={}",
                            Quoted(host.display())
                        ),
                    );
                    services.qm_cgroups = Some(super::services::QmCgroups {
                        host: host_c,
                        in_proc,
                    });
                }
                None => {
                    return Err(Error::Service(format!(
                        "agent.cgroup {}: not under this host's cgroup2 mount ({})",
                        host.display(),
                        mount
                            .as_deref()
                            .map_or("none".into(), |m| m.display().to_string())
                    )))
                }
            }
        }
        let mut outputs = Outputs::new(capacity, &settings.journal_socket, settings.history_bytes);
        let mut output_owners = Vec::with_capacity(2 * defs.len());
        for (index, mut def) in defs.into_iter().enumerate() {
            let socket = settings
                .runtime_dir
                .as_ref()
                .map(|d| d.join(notify::SOCKET_NAME));
            if let Some(dir) = &settings.runtime_dir {
                runtime::tag(&mut def, dir);
            }
            notify::service_env(&mut def, socket.as_deref());
            let id = engine
                .add(def.policy)
                .map_err(|e| Error::Service(format!("service {}: {e}", def.name)))?;
            debug_assert_eq!(id.index(), index);
            let spec = match def.policy.partition {
                Partition::Local => Some(
                    services
                        .with_cgroup(&def, prepare_spec(&def).map_err(Error::Service)?)
                        .map_err(Error::Service)?,
                ),
                Partition::Qm => {
                    if let Some(limit) = def.cgroup_limits.limits.first() {
                        if services.qm_cgroups.is_none() {
                            // Never ignored (docs/config.md): a limit needs the service's own
                            // cgroup, which the agent makes only with `[agent] cgroup`.
                            return Err(Error::Service(format!(
                                "service {}: `{}` needs the service's own cgroup in QM, and [agent] cgroup is not set",
                                def.name, limit.key
                            )));
                        }
                    }
                    None
                }
            };
            let slot = take_bare(&mut ring, Owner::Service(index as u32))?;
            // A re-exec's pipes, else the ones systemd's fd store kept.
            let kept =
                [crate::output::Stream::Stdout, crate::output::Stream::Stderr].map(|stream| {
                    if def.policy.partition != Partition::Local {
                        return None;
                    }
                    if let Some(pipe) = inherited
                        .as_mut()
                        .and_then(|i| i.take_output(&def.name, stream))
                    {
                        return Some(pipe);
                    }
                    let end = |write| crate::fd_store::Stored::Pipe {
                        service: &def.name,
                        stream,
                        write,
                    };
                    let read = take_stored(&mut stored, end(false));
                    let write = take_stored(&mut stored, end(true));
                    read.zip(write)
                });
            let taken = put_output(&mut outputs, &mut ring, &log, index, &def, kept);
            for (stream, slot) in taken.iter().enumerate() {
                if let Some(slot) = slot {
                    output_owners.push((slot.index(), Owner::Output(index as u32, stream as u8)));
                }
            }
            services.put(def, id, slot, spec);
        }
        let signals = if options.signals {
            let sfd = super::signals::install().map_err(|e| Error::Io("signalfd", e))?;
            let slot = take_bare(&mut ring, Owner::Signals)?;
            ring.attach(slot, sfd.into_fd())
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
            Some(slot)
        } else {
            None
        };
        let shutdown_fd = Arc::new(crate::sys::fd::eventfd().map_err(|e| Error::Io("eventfd", e))?);
        let shutdown_slot = take_bare(&mut ring, Owner::Shutdown)?;
        // The slot owns a duplicate; the handles other threads hold keep the original.
        let watched = crate::sys::fd::dup_cloexec(shutdown_fd.as_fd(), 0)
            .map_err(|e| Error::Io("eventfd dup", e))?;
        ring.attach(shutdown_slot, watched)
            .map_err(|e| Error::Service(format!("ring: {e}")))?;
        let notify = if options.notify {
            Notifier::from_env().map_err(|e| Error::Io("sd_notify", e))?
        } else {
            Notifier::disabled()
        };
        let watchdog = match notify.watchdog_interval() {
            Some(interval) => Some((take_bare(&mut ring, Owner::Watchdog)?, interval)),
            None => None,
        };
        let deps = Deps::build(&services, capacity);
        let notify_socket = match &settings.runtime_dir {
            Some(dir) => {
                let slot = take_bare(&mut ring, Owner::Notify)?;
                let kept = inherited.as_mut().and_then(|i| {
                    let fd = i.handoff.notify;
                    i.take(fd)
                });
                match NotifySocket::bind(dir, &mut ring, slot, kept) {
                    Ok(socket) => Some(socket),
                    Err(e) => {
                        log.line(
                            Priority::Err,
                            format_args!(
                                "event=notify-socket-unavailable error={} consequence=\"type = \
                                 notify services cannot say they are ready: their start \
                                 timeout ends them\"",
                                Quoted(&e)
                            ),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        // One socket for every service with `notify_fd` (also those a reload adds): what
        // arrives counts by its sender's pid, as on the notify socket itself.
        if let (Some(socket), Some(dir)) = (&notify_socket, &settings.runtime_dir) {
            match socket.connected_socket(dir) {
                Ok(fd) => services.notify_fd_socket = Some(std::sync::Arc::new(fd)),
                Err(e) => log.line(
                    Priority::Err,
                    format_args!(
                        "event=notify-fd-unavailable error={} consequence=\"services with \
                         notify_fd get no fd there: their start timeout ends them\"",
                        Quoted(&e)
                    ),
                ),
            }
        }
        let fd_store_retry = if notify.enabled() {
            Some((take_bare(&mut ring, Owner::FdStoreRetry)?, false))
        } else {
            None
        };
        let timer_slot = take_bare(&mut ring, Owner::Timer)?;
        let spawner_slot = take_bare(&mut ring, Owner::Spawner)?;
        ring.attach(spawner_slot, spawns_done)
            .map_err(|e| Error::Service(format!("ring: {e}")))?;
        let addr = UnixAddr::new(settings.agent_socket.as_os_str().as_bytes())
            .map_err(|e| Error::Io("agent socket path", e))?;
        let agent = AgentIo::new(addr, capacity, link::FDS_MAX);
        let control = ControlServer::new(&settings.control, &mut ring).map_err(|e| match e {
            control::SetupError::Group(text) | control::SetupError::Ring(text) => {
                Error::Service(text)
            }
        })?;
        for slot in control.slots() {
            owners[slot.index()] = Owner::Control;
        }
        for (index, owner) in output_owners {
            owners[index] = owner;
        }
        let (recorder, carried_over) = match runtime {
            Some(runtime) => {
                let boot = runtime::boot_id();
                let carried_over = match runtime.read_record(capacity, &boot) {
                    Ok(record) => record,
                    Err(e) => {
                        log.line(
                            Priority::Err,
                            format_args!(
                                "event=record-unreadable error={} consequence=\"no process of \
                                 the previous instance is taken over; services start afresh\"",
                                Quoted(&e)
                            ),
                        );
                        None
                    }
                };
                let recorder = Recorder::start(runtime, capacity, boot, log.clone())
                    .map_err(|e| Error::Io("state record thread", e))?;
                (Some(recorder), carried_over)
            }
            None => (None, None),
        };
        Ok(Orchestrator {
            ring,
            engine,
            services,
            outputs,
            spawner,
            spawner_slot,
            agent,
            control,
            owners,
            log,
            log_writer,
            stall: Histogram::default(),
            notify,
            caps,
            signals,
            shutdown_fd,
            shutdown_slot,
            watchdog,
            timer_slot,
            timer_at: None,
            shutdown_requests: 0,
            done: false,
            counters: Arc::new(Counters::default()),
            qm_services,
            settings,
            pending_adds: Vec::new(),
            // (A service that fails during start-up's take-over sends STATUS= before
            // start-up's own: with no QM service it must not say "agent connecting".)
            agent_status: if qm_services == 0 {
                "not needed"
            } else {
                "connecting"
            },
            recorder,
            carried_over,
            program: Program::of_this_process().ok(),
            generation: inherited.as_ref().map_or(0, |i| i.handoff.generation),
            reexec: None,
            inherited,
            stored,
            fd_store_dirty: vec![false; capacity].into_boxed_slice(),
            fd_store_retry,
            fd_store_failed: false,
            notify_pending: None,
            watchdog_pending: false,
            status_pending: false,
            announced: false,
            notify_socket,
            notify_dropped: 0,
            notify_dropped_said_ns: 0,
            notify_held: Vec::with_capacity(notify::HELD_MAX),
            cgroup_root_in_proc,
            deps,
            ordered_shutdown: false,
        })
    }

    /// Log lines dropped so far because the log stream did not keep up.
    pub fn log_dropped(&self) -> u64 {
        self.log_writer.dropped()
    }

    /// A handle that asks the loop to shut down (usable from another thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            fd: Arc::clone(&self.shutdown_fd),
        }
    }

    /// Counters readable while the loop runs.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The kernel capabilities probed at start-up.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Runs until a shutdown (signal or handle) has stopped every service. Returns `Ok` after a
    /// clean shutdown. The log lines are written when it returns (unless the log stream has
    /// not taken them within [`log::background::FLUSH_TIMEOUT`]).
    pub fn run(&mut self) -> Result<(), Error> {
        let result = self.run_until_done();
        self.log_writer.flush(log::background::FLUSH_TIMEOUT);
        result
    }

    fn run_until_done(&mut self) -> Result<(), Error> {
        self.start_up()?;
        while !self.done {
            self.counters.iterations.fetch_add(1, Ordering::Relaxed);
            // While a re-exec waits for spawns in flight, look again every few ms.
            let wait = self.reexec.map(|_| REEXEC_POLL);
            self.ring.submit_and_wait(1, wait).map_err(Error::Enter)?;
            while let Some(completion) = self.ring.next_completion() {
                let started = ring::now_ns();
                self.on_completion(completion);
                self.settle();
                self.stall.record(ring::now_ns().saturating_sub(started));
            }
            self.settle();
            if !self.pending_adds.is_empty() {
                self.reload_pending();
            }
            if self.reexec.is_some() {
                self.try_reexec();
            }
        }
        self.engine.close_agent();
        self.drain_outputs();
        self.control.close(&mut self.ring);
        if let Some(socket) = &mut self.notify_socket {
            socket.close();
        }
        self.spawner.stop();
        let all_stopped = self.engine.core().shutdown_complete();
        if let Some(recorder) = &mut self.recorder {
            // Every service stopped: nothing for a next instance to take over. Left running
            // (`shutdown.stop_services = false`): the record lets the next one take them over.
            recorder.stop(all_stopped);
        }
        if all_stopped {
            // A cgroup of a service left running holds its tree for the next instance.
            for service in &self.services.list {
                self.services.remove_cgroup(&self.log, &service.def.name);
            }
        }
        self.log.line(
            Priority::Notice,
            format_args!(
                "event=shutdown-complete services={}",
                self.services.list.len()
            ),
        );
        let _ = self.notify.status(format_args!("stopped"));
        Ok(())
    }

    fn start_up(&mut self) -> Result<(), Error> {
        self.log.line(
            Priority::Notice,
            format_args!(
                "event=start version={} {}",
                env!("CARGO_PKG_VERSION"),
                self.caps
            ),
        );
        if let Some(slot) = self.signals {
            self.ring
                .poll_add(slot, libc::POLLIN as u32)
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
        }
        for slot in [self.shutdown_slot, self.spawner_slot] {
            self.ring
                .poll_add(slot, libc::POLLIN as u32)
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
        }
        if let Some((slot, interval)) = self.watchdog {
            self.notify_watchdog();
            let _ = self.ring.timeout(slot, Timeout::After(interval));
        }
        self.engine.start(now());
        self.settle();
        let listener = self.inherited.as_mut().and_then(|i| {
            let fd = i.handoff.control;
            i.take(fd)
        });
        self.control.start(&mut self.ring, &self.log, listener);
        // A re-exec's handoff first, then what systemd's fd store kept.
        let mut handed = self
            .inherited
            .as_mut()
            .map(Inherited::take_processes)
            .unwrap_or_default();
        for (name, fd) in std::mem::take(&mut self.stored) {
            let Some(crate::fd_store::Stored::Pidfd { service }) =
                crate::fd_store::Stored::of(&name)
            else {
                continue;
            };
            // Two by one name (a removal systemd did not get): the live process's.
            let live = |fd: &OwnedFd| pidfd::identity(fd.as_fd()).is_ok_and(|i| i.pid > 0);
            match handed.iter().position(|(n, _)| n == service) {
                None => handed.push((service.to_string(), fd)),
                Some(i) if !live(&handed[i].1) && live(&fd) => handed[i].1 = fd,
                Some(_) => {}
            }
        }
        let resumed = self.carry_on(handed);
        // Every boot start is asked for first, then those whose `after` dependencies are
        // not on their way start (in parallel); the others when theirs are ready.
        for index in 0..self.services.list.len() {
            if self.services.list[index].def.start_at_boot && !resumed.contains(&index) {
                self.want_started(index);
            }
        }
        self.start_unblocked();
        self.settle();
        let store = self.notify.fd_store();
        let needed = self.services.list.len() * crate::fd_store::FDS_PER_SERVICE_MAX;
        if store > 0 && store < needed {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=fd-store-small fd_store={store} services={} needed={needed} \
                     consequence=\"what does not fit is not kept by systemd: those services \
                     are taken over from the state record, their output pipes made anew\" \
                     hint=\"FileDescriptorStoreMax= of 5 per service (a pidfd and two pipes)\"",
                    self.services.list.len()
                ),
            );
        }
        self.notify_state(b"READY=1");
        self.announced = true;
        self.update_status(if self.qm_services == 0 {
            "not needed"
        } else if self.engine.link().is_up() {
            "up"
        } else {
            "connecting"
        });
        // After READY=1 and STATUS=, which must not wait behind these (the socket takes few
        // at once): what the store holds from before (a lost message, a reload) is replaced
        // by what is.
        for index in 0..self.services.list.len() {
            self.fd_store_sync(index);
        }
        // After a re-exec: the pause ends here, as the loop begins.
        if let Some(mut inherited) = self.inherited.take() {
            let handoff = &inherited.handoff;
            let took_us = ring::now_ns().saturating_sub(handoff.began_ns) / 1_000;
            let adopted = self.engine.core().services().filter(|&id| {
                self.engine
                    .core()
                    .status(id)
                    .is_some_and(|s| s.pid.is_some())
            });
            let adopted = adopted.count() as u32;
            self.log.line(
                Priority::Notice,
                format_args!(
                    "event=reexec-done generation={} took_us={took_us} services_with_a_process={adopted}",
                    self.generation
                ),
            );
            let reply = handoff.reply;
            if let Some((fd, request)) = reply {
                if let Some(fd) = inherited.take(Some(fd)) {
                    control::answer_handed_over(
                        fd,
                        request,
                        crate::control::ReexecInfo {
                            generation: self.generation,
                            took_us,
                            adopted,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Carries out the engine's outputs and sends what the agent link has to send, until
    /// neither has anything left; then derives the ring timeout from the engine's deadline.
    fn settle(&mut self) {
        loop {
            self.drain_outputs();
            let sent = self
                .agent
                .transmit(&mut self.ring, &mut self.engine, &self.services, now());
            if !sent {
                break;
            }
        }
        self.drain_outputs();
        self.publish();
        self.sync_timer();
    }

    /// The engine's and the link's counters, for other threads.
    fn publish(&self) {
        let stats = self.engine.stats();
        let link = self.engine.link().stats();
        self.counters
            .spawned_qm
            .store(stats.spawned_qm, Ordering::Relaxed);
        self.counters.spawn_failed.store(
            stats.spawn_failed_qm + self.services.local_spawn_failures,
            Ordering::Relaxed,
        );
        self.counters
            .agent_connected
            .store(link.connected, Ordering::Relaxed);
        self.counters
            .agent_dropped
            .store(link.dropped, Ordering::Relaxed);
    }

    fn drain_outputs(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            self.carry_out(output);
        }
    }

    fn carry_out(&mut self, output: Output<OwnedFd>) {
        match output {
            Output::SpawnLocal { service } => self.services.spawn_local(
                &mut self.engine,
                &self.spawner,
                &self.outputs,
                &self.log,
                now(),
                service,
            ),
            Output::Watch { service, handle } => {
                let procs = self.engine.procs(service);
                if self
                    .services
                    .get(service)
                    .is_some_and(|s| s.def.policy.partition == Partition::Qm)
                {
                    self.log.line(
                        Priority::Debug,
                        format_args!(
                            "service={} partition=qm event=started pid={} agent_pid={}",
                            self.services.name(service.index()),
                            procs.last_pid,
                            procs.qm_pid
                        ),
                    );
                }
                if !self.caps.pidfs {
                    if let Some(entry) = self.services.list.get_mut(service.index()) {
                        entry.start_identity = runtime::start_time_identity(procs.last_pid)
                            .unwrap_or(crate::record::Identity::None);
                    }
                }
                if procs.qm_pid > 0 {
                    self.services
                        .check_qm_cgroup(&self.log, service, procs.last_pid);
                }
                self.services
                    .watch(&mut self.ring, &self.log, service, handle);
                self.fd_store_sync(service.index());
            }
            Output::Signal {
                service,
                pid,
                signal,
            } => self
                .services
                .signal(&self.ring, &self.log, service, pid, signal),
            Output::Release { service } => {
                self.services.release(&mut self.ring, &self.log, service);
                self.fd_store_sync(service.index());
                // Its last line without a newline, if it left one.
                let pid = self.engine.procs(service).last_pid;
                self.outputs.on_exit(
                    &self.log,
                    self.services.name(service.index()),
                    pid,
                    ring::now_ns(),
                    service.index(),
                );
            }
            Output::Link(io) => {
                let created = self.agent.on_io(
                    &mut self.ring,
                    &mut self.engine,
                    &self.log,
                    &self.services,
                    now(),
                    io,
                );
                if let Some(slot) = created {
                    self.owners[slot.index()] = Owner::Agent;
                }
            }
            Output::Transition(t) => {
                self.record(t.service);
                self.deps_on_transition(t);
                if self.control.monitoring() {
                    if let Some(service) = self.services.get(t.service) {
                        let info = control::event_info(
                            &t,
                            &service.def.name,
                            service.def.policy.partition,
                            self.engine.procs(t.service).last_pid,
                        );
                        self.control.on_transition(&mut self.ring, &self.log, info);
                    }
                }
                self.log_transition(t);
                if (t.to == State::Failed) != (t.from == State::Failed) {
                    self.update_status(self.agent_status);
                }
            }
            Output::Notified { service, qm_pid } => {
                let text = self.engine.link().notify_text();
                let message = notify::Owned::of(&crate::service_notify::decode(text), false);
                match service {
                    Some(service) => self.on_notified(service, &message, qm_pid),
                    None => self.notify_dropped(
                        Some(qm_pid),
                        "QM pid of no service's live process (forwarded by the agent)",
                    ),
                }
            }
            Output::Note(note) => {
                let text = self.engine.link().agent_text();
                self.agent.log_note(&self.log, &self.services, text, note)
            }
            Output::AgentUp => {
                self.update_status(if self.engine.link().protocol() == Protocol::V02 {
                    "up (v0.2)"
                } else {
                    "up"
                })
            }
            Output::AgentDown => self.update_status("down"),
            Output::Removed { service } => {
                if let Some(recorder) = &self.recorder {
                    recorder.put(service.index(), None);
                }
                self.on_removed(service)
            }
            Output::ShutdownComplete => self.done = true,
            Output::Refused { refusal, event } => self.log.line(
                Priority::Err,
                format_args!(
                    "event=core-refused service={} detail={} input={}",
                    refusal
                        .service()
                        .map_or("-", |s| self.services.name(s.index())),
                    Quoted(refusal),
                    Quoted(format_args!("{event:?}"))
                ),
            ),
        }
    }

    /// Makes the ring's one engine TIMEOUT match the engine's next deadline.
    fn sync_timer(&mut self) {
        let Some(wanted) = self.engine.poll_timeout().map(|t| t.as_nanos()) else {
            return;
        };
        if !self.ring.is_pending(self.timer_slot, OpTag::Timeout) {
            if self
                .ring
                .timeout(self.timer_slot, Timeout::At(wanted))
                .is_ok()
            {
                self.timer_at = Some(wanted);
            }
        } else if self.timer_at.is_some_and(|at| at > wanted) {
            // Earlier than armed: the cancel's completion re-arms.
            let _ = self.ring.cancel_op(self.timer_slot, OpTag::Timeout);
        }
    }

    fn on_completion(&mut self, c: Completion) {
        match self.owners[c.slot.index()] {
            Owner::Service(index) if c.op == OpTag::Poll => self.services.on_poll(
                &mut self.ring,
                &mut self.engine,
                &self.log,
                &self.counters,
                now(),
                index as usize,
                c,
            ),
            Owner::Service(index) if c.op == OpTag::Timeout => self.services.on_tree_timeout(
                &mut self.ring,
                &mut self.engine,
                &self.log,
                &self.counters,
                now(),
                index as usize,
            ),
            Owner::Service(_) => {}
            Owner::Output(index, stream) => {
                let stream = crate::output::Stream::from_index(stream as usize);
                // A child may write before its spawner thread has handed back its pid: its
                // lines wait for it, so that they carry its pid.
                let spawning = self
                    .services
                    .list
                    .get(index as usize)
                    .is_some_and(|s| s.spawning);
                if spawning && c.op == OpTag::Poll && c.result.is_ok() {
                    self.outputs.hold(index as usize, stream);
                    return;
                }
                let service = ServiceId(index);
                let pid = self.engine.procs(service).last_pid;
                let lines = self.outputs.on_readable(
                    &mut self.ring,
                    &self.log,
                    self.services.name(index as usize),
                    pid,
                    ring::now_ns(),
                    index as usize,
                    stream,
                    c,
                );
                if lines && self.control.following() {
                    self.control.on_output(
                        &mut self.ring,
                        &self.log,
                        &self.outputs,
                        index as usize,
                    );
                }
            }
            Owner::Timer => {
                self.timer_at = None;
                self.engine.handle_timeout(now());
            }
            Owner::ExitRetry => self.services.on_exit_retry(
                &mut self.ring,
                &mut self.engine,
                &self.log,
                &self.counters,
                now(),
            ),
            Owner::Spawner => self.on_spawns_done(),
            Owner::Notify => self.on_notify(),
            Owner::Agent => {
                if let Some(conn) = self.agent.conn_of(c.slot) {
                    self.agent
                        .on_completion(&mut self.ring, &mut self.engine, now(), conn, c);
                }
            }
            Owner::Control => self.on_control(c),
            Owner::Signals => self.on_signals(),
            Owner::Shutdown if c.op == OpTag::Timeout => {
                if !self.done {
                    self.log.line(
                        Priority::Warning,
                        format_args!(
                            "event=shutdown-timeout timeout_ms={} action=SIGKILL target=every-process",
                            self.settings.shutdown_timeout.as_millis()
                        ),
                    );
                    self.engine.shutdown(now());
                }
            }
            Owner::Shutdown => self.on_shutdown_handle(),
            Owner::FdStoreRetry => {
                if let Some((_, armed)) = &mut self.fd_store_retry {
                    *armed = false;
                }
                if self.watchdog_pending {
                    self.notify_watchdog();
                }
                if let Some(message) = self.notify_pending.take() {
                    self.notify_state(message);
                    if self.notify_pending.is_some() {
                        return;
                    }
                }
                if self.status_pending {
                    self.update_status(self.agent_status);
                }
                for index in 0..self.services.list.len() {
                    if self.fd_store_dirty.get(index) == Some(&true) {
                        self.fd_store_sync(index);
                    }
                }
            }
            Owner::Watchdog => {
                self.notify_watchdog();
                if let Some((slot, interval)) = self.watchdog {
                    let _ = self.ring.timeout(slot, Timeout::After(interval));
                }
            }
            Owner::Free => {}
        }
    }

    fn on_control(&mut self, c: Completion) {
        let Some(slot) = self.control.slot_of(c.slot) else {
            return;
        };
        let view = View {
            services: &self.services,
            outputs: &self.outputs,
            engine: &self.engine,
            agent: &self.agent,
            counters: &self.counters,
            stall: &self.stall,
            log_dropped: self.log_writer.dropped(),
            now: now(),
        };
        let request = self
            .control
            .on_completion(&mut self.ring, &self.log, &view, slot, c);
        match request {
            None => {}
            Some(Request::Command {
                conn,
                service,
                command,
            }) => {
                let index = service.index();
                let has_deps = !(self.deps.after(index).is_empty()
                    && self.deps.requires(index).is_empty()
                    && self.deps.wants(index).is_empty());
                let starts = matches!(command, Command::Start | Command::Restart);
                let result = if starts && self.ordered_shutdown {
                    // The core is not shutting down yet in an ordered shutdown: refuse here.
                    Err(supervise::Refusal::ShuttingDown)
                } else if command != Command::Start || !has_deps {
                    self.engine.command(now(), service, command)
                } else if self.engine.core().shutting_down() {
                    Err(supervise::Refusal::ShuttingDown)
                } else {
                    // What it requires (or wants) starts too; it waits for what it comes after.
                    self.want_started(index);
                    self.start_unblocked();
                    Ok(())
                };
                // Let everything the command caused happen first: the answer is the state
                // after it.
                self.settle();
                let view = View {
                    services: &self.services,
                    outputs: &self.outputs,
                    engine: &self.engine,
                    agent: &self.agent,
                    counters: &self.counters,
                    stall: &self.stall,
                    log_dropped: self.log_writer.dropped(),
                    now: now(),
                };
                self.control
                    .command_done(&mut self.ring, &self.log, &view, conn, service, result);
            }
            Some(Request::Reexec { conn }) => self.request_reexec(Some(conn)),
            Some(Request::Reload { conn }) => {
                let mut notes = [0u8; TEXT_LEN_MAX];
                let result = self.reload(&mut notes);
                self.settle();
                let result = result.map(|(c, len)| ReloadInfo {
                    added: c[0],
                    removed: c[1],
                    changed: c[2],
                    unchanged: c[3],
                    needs_restart: std::str::from_utf8(&notes[..len]).unwrap_or(""),
                });
                self.control
                    .reload_done(&mut self.ring, &self.log, conn, result);
            }
        }
    }

    fn on_signals(&mut self) {
        let Some(slot) = self.signals else {
            return;
        };
        let mut got = [0i32; 8];
        let mut n = 0;
        if let Some(fd) = self.ring.fd(slot) {
            while n < got.len() {
                match crate::sys::signal::read_signalfd(fd) {
                    Ok(Some(sig)) => {
                        got[n] = sig;
                        n += 1;
                    }
                    _ => break,
                }
            }
        }
        let _ = self.ring.poll_add(slot, libc::POLLIN as u32);
        for &sig in &got[..n] {
            if sig == libc::SIGUSR2 {
                self.log.line(
                    Priority::Notice,
                    format_args!("event=signal signal=SIGUSR2 action=reexec"),
                );
                self.request_reexec(None);
                continue;
            }
            if sig == libc::SIGHUP {
                self.log.line(
                    Priority::Notice,
                    format_args!("event=signal signal=SIGHUP action=reload"),
                );
                let mut notes = [0u8; TEXT_LEN_MAX];
                // The outcome is logged by `reload` itself.
                let _ = self.reload(&mut notes);
                continue;
            }
            self.log.line(
                Priority::Notice,
                format_args!("event=signal signal={}", pidfd::signal_name(sig)),
            );
            self.request_shutdown();
        }
    }

    fn on_shutdown_handle(&mut self) {
        let value = self
            .ring
            .fd(self.shutdown_slot)
            .and_then(|fd| crate::sys::fd::eventfd_read(fd).ok().flatten());
        let _ = self.ring.poll_add(self.shutdown_slot, libc::POLLIN as u32);
        if let Some(value) = value {
            for _ in 0..value.min(2) {
                self.log
                    .line(Priority::Notice, format_args!("event=shutdown-requested"));
                self.request_shutdown();
            }
        }
    }

    /// Datagrams on the services' notify socket: at most [`notify::READS_PER_WAKE_MAX`] per
    /// wake-up, each counted only when its sender is a service's live process. One whose
    /// sender is not known while a local spawn is being reported is held (at most
    /// [`notify::HELD_MAX`]) and looked at again once the spawns are in.
    fn on_notify(&mut self) {
        let Some(mut socket) = self.notify_socket.take() else {
            return;
        };
        // Spawns already reported first: their pids are then known.
        self.take_spawns();
        for _ in 0..notify::READS_PER_WAKE_MAX {
            let Some(datagram) = socket.read(&self.ring) else {
                break;
            };
            let message = notify::Owned::of_datagram(socket.bytes(datagram.len), datagram.had_fds);
            match datagram.sender.filter(|&p| p > 0) {
                Some(sender) => self.notified_by(sender, message),
                None => self.notify_dropped(None, "no sender credentials"),
            }
        }
        socket.rearm(&mut self.ring);
        self.notify_socket = Some(socket);
    }

    /// The service whose live process is `pid`.
    fn service_of_pid(&self, pid: i32) -> Option<ServiceId> {
        let core = self.engine.core();
        core.services()
            .find(|&id| core.status(id).and_then(|s| s.pid) == Some(supervise::Pid(pid)))
    }

    /// The local service whose cgroup holds `pid` (one of its tree, such as `systemd-notify`
    /// run by its script), if it has a live process. Needs cgroups; a process already reaped
    /// has no `/proc` entry left and is not found.
    fn service_of_tree(&self, pid: i32) -> Option<ServiceId> {
        let root = self.cgroup_root_in_proc.as_deref()?;
        let read = crate::cgroup::ProcCgroup::read(pid)?;
        let name = crate::cgroup::service_in(read.text(), root)?;
        let index = self.services.by_name(name)?;
        let id = self.services.list[index].id;
        let status = self.engine.core().status(id)?;
        (status.partition == supervise::Partition::Local && status.pid.is_some()).then_some(id)
    }

    /// A datagram from `sender`: for its service, held while spawns are reported, or dropped.
    fn notified_by(&mut self, sender: i32, message: notify::Owned) {
        if let Some(service) = self.service_of_pid(sender) {
            self.on_notified(service, &message, sender);
            return;
        }
        if let Some(service) = self.service_of_tree(sender) {
            let main = self.engine.core().status(service).and_then(|s| s.pid);
            self.on_notified(service, &message, main.map_or(0, |p| p.0));
            return;
        }
        let spawning = self.services.list.iter().any(|s| s.spawning);
        if spawning && self.notify_held.len() < notify::HELD_MAX {
            self.notify_held.push(notify::Held { sender, message });
            return;
        }
        self.notify_dropped(Some(sender), "not a service's process");
    }

    /// After spawns were reported: the held datagrams again (those still without a service
    /// stay while spawns are being reported, and are dropped after).
    fn notify_retry_held(&mut self) {
        let spawning = self.services.list.iter().any(|s| s.spawning);
        let mut i = 0;
        while i < self.notify_held.len() {
            let held = self.notify_held[i];
            match self.service_of_pid(held.sender) {
                Some(service) => {
                    self.notify_held.swap_remove(i);
                    self.on_notified(service, &held.message, held.sender);
                }
                None if !spawning => {
                    self.notify_held.swap_remove(i);
                    self.notify_dropped(Some(held.sender), "not a service's process");
                }
                None => i += 1,
            }
        }
    }

    /// What a service said; `main` is its main process's pid in the sender's PID namespace
    /// (QM's for a QM service), which is all a `MAINPID=` may name.
    fn on_notified(&mut self, service: ServiceId, m: &notify::Owned, main: i32) {
        use crate::service_notify::Watchdog;
        let kind = self
            .services
            .get(service)
            .map(|s| s.def.policy.readiness.kind);
        if kind != Some(supervise::Kind::Notify) {
            // As systemd's NotifyAccess=none for a unit not of Type=notify: what it says
            // changes nothing (a `WATCHDOG=trigger` must not stop a service without a
            // watchdog, nor STATUS= overwrite what it never set).
            self.notify_dropped(Some(main), "from a service that is not type = \"notify\"");
            return;
        }
        {
            let name = self.services.name(service.index());
            if let Some(text) = &m.status {
                self.log.line(
                    Priority::Debug,
                    format_args!("service={name} event=status text={}", Quoted(text.as_str())),
                );
            }
            if m.stopping {
                self.log.line(
                    Priority::Info,
                    format_args!("service={name} event=stopping-notified"),
                );
            }
            if let Some(errno) = m.errno {
                self.log.line(
                    Priority::Info,
                    format_args!("service={name} event=errno-notified errno={errno}"),
                );
            }
        }
        if let Some(text) = &m.status {
            self.services.set_status_text(service, text);
        }
        let notify_fd = self
            .services
            .get(service)
            .is_some_and(|s| s.def.notify_fd.is_some());
        if m.ready || (m.newline && notify_fd) {
            self.engine
                .notified(now(), supervise::Event::Ready { service });
        }
        match m.watchdog {
            Some(Watchdog::Ping) => self
                .engine
                .notified(now(), supervise::Event::WatchdogPing { service }),
            Some(Watchdog::Trigger) => self
                .engine
                .notified(now(), supervise::Event::WatchdogTrigger { service }),
            None => {}
        }
        if let Some(usec) = m.extend_timeout_usec {
            self.engine.notified(
                now(),
                supervise::Event::ExtendStartTimeout {
                    service,
                    by: Duration::from_micros(usec),
                },
            );
        }
        if m.main_pid.is_some_and(|p| p != main) {
            self.notify_dropped(m.main_pid, "MAINPID= of another process: refused");
        }
        if m.had_fds {
            self.notify_dropped(Some(main), "fds passed with a notification: closed");
        }
        self.settle();
    }

    /// Counts a notification not taken; says so at most once a second, with the count.
    fn notify_dropped(&mut self, sender: Option<i32>, why: &str) {
        self.notify_dropped += 1;
        let now_ns = ring::now_ns();
        if self.notify_dropped_said_ns == 0 || now_ns - self.notify_dropped_said_ns >= 1_000_000_000
        {
            self.notify_dropped_said_ns = now_ns;
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=notify-dropped sender_pid={} reason={} dropped_total={}",
                    sender.unwrap_or(0),
                    Quoted(why),
                    self.notify_dropped
                ),
            );
        }
    }

    /// Spawner threads finished spawns: hand each outcome to the engine.
    fn on_spawns_done(&mut self) {
        if let Some(fd) = self.ring.fd(self.spawner_slot) {
            let _ = crate::sys::fd::eventfd_read(fd);
        }
        let _ = self.ring.poll_add(self.spawner_slot, libc::POLLIN as u32);
        self.take_spawns();
    }

    /// Hands every finished spawn to the engine, then looks again at notifications held for
    /// want of their sender's pid.
    fn take_spawns(&mut self) {
        while let Some(done) = self.spawner.take() {
            let index = done.service.index();
            self.services
                .spawn_done(&mut self.engine, &self.log, &self.counters, now(), done);
            self.outputs.resume(&mut self.ring, index);
            self.settle();
        }
        self.notify_retry_held();
    }

    /// Asks for `index` to start: marks it (and, at once, what it requires) as waiting for
    /// [`Orchestrator::start_unblocked`]. A service already on its way is left as it is.
    fn want_started(&mut self, index: usize) {
        if self.deps.waiting.get(index) != Some(&false) {
            return;
        }
        let Some(entry) = self.services.list.get(index).filter(|s| s.active) else {
            return;
        };
        let on_its_way = self
            .engine
            .core()
            .status(entry.id)
            .is_some_and(|s| !matches!(s.state, State::Stopped | State::Failed));
        if on_its_way {
            return;
        }
        self.deps.waiting[index] = true;
        // By position: nothing is allocated on the loop.
        for k in 0..self.deps.requires(index).len() {
            let r = self.deps.requires(index)[k];
            self.want_started(r);
        }
        for k in 0..self.deps.wants(index).len() {
            let w = self.deps.wants(index)[k];
            self.want_started(w);
        }
    }

    /// Where service `index` stands for a start that comes after it.
    fn standing(&self, index: usize) -> Standing {
        if self.deps.waiting.get(index) == Some(&true) {
            return Standing::Coming;
        }
        let Some(entry) = self.services.list.get(index).filter(|s| s.active) else {
            return Standing::Absent;
        };
        let Some(status) = self.engine.core().status(entry.id) else {
            return Standing::Absent;
        };
        let oneshot = entry.def.policy.readiness.kind == supervise::Kind::Oneshot;
        match status.state {
            State::Running => Standing::Ready,
            State::Stopped
                if oneshot && status.last_exit == Some(supervise::ExitStatus::Code(0)) =>
            {
                Standing::Ready
            }
            State::Starting | State::Backoff | State::WaitingForAgent | State::Stopping => {
                Standing::Coming
            }
            State::Stopped | State::Failed => Standing::Absent,
        }
    }

    /// Starts each waiting service whose `after` dependencies are no longer on their way.
    fn start_unblocked(&mut self) {
        if !self.deps.any_waiting() {
            return;
        }
        for index in 0..self.deps.waiting.len() {
            self.start_if_unblocked(index);
        }
    }

    /// [`Orchestrator::start_unblocked`] for what comes after `changed` (or needs it): only
    /// they can be unblocked by its transition (a pass over every service on every transition
    /// was quadratic in a boot: 25 ms of CPU for 1,024 services).
    fn start_unblocked_after(&mut self, changed: usize) {
        for k in 0..self.deps.dependents(changed).len() {
            let d = self.deps.dependents(changed)[k];
            self.start_if_unblocked(d);
        }
    }

    /// Starts `index` if it waits and its `after` dependencies are no longer on their way.
    fn start_if_unblocked(&mut self, index: usize) {
        if self.deps.waiting.get(index) != Some(&true)
            || self.deps.blocked(index, |d| self.standing(d))
        {
            return;
        }
        self.deps.waiting[index] = false;
        let Some(id) = self.services.list.get(index).map(|s| s.id) else {
            return;
        };
        if let Err(refusal) = self.engine.command(now(), id, Command::Start) {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "service={} event=start-refused detail={}",
                    self.services.name(index),
                    Quoted(refusal)
                ),
            );
        }
    }

    /// A service changed state: starts that waited for it may go; what requires it stops
    /// when it failed or stopped (not during a shutdown, which stops everything anyway).
    fn deps_on_transition(&mut self, t: Transition) {
        let index = t.service.index();
        let oneshot_done = t.to == State::Stopped
            && matches!(t.reason, Reason::Exited(supervise::ExitStatus::Code(0)))
            && self
                .services
                .get(t.service)
                .is_some_and(|s| s.def.policy.readiness.kind == supervise::Kind::Oneshot);
        if self.ordered_shutdown {
            self.stop_in_order();
            return;
        }
        let gone = matches!(t.to, State::Failed | State::Stopped) && !oneshot_done;
        if gone && t.from != t.to && !self.engine.core().shutting_down() {
            for k in 0..self.deps.dependents(index).len() {
                let d = self.deps.dependents(index)[k];
                if !self.deps.requires(d).contains(&index) {
                    continue;
                }
                let waiting = std::mem::replace(&mut self.deps.waiting[d], false);
                let Some(dependent) = self.services.list.get(d).filter(|s| s.active) else {
                    continue;
                };
                let id = dependent.id;
                let active = self.engine.core().status(id).is_some_and(|s| {
                    !matches!(s.state, State::Stopped | State::Failed | State::Stopping)
                });
                if waiting || active {
                    self.log.line(
                        Priority::Warning,
                        format_args!(
                            "service={} event=dependency-gone dependency={} dependency_state={} \
                             effect={}",
                            dependent.def.name,
                            self.services.name(index),
                            t.to.as_str(),
                            if active { "stopped" } else { "\"not started\"" }
                        ),
                    );
                }
                if active {
                    let _ = self.engine.command(now(), id, Command::Stop);
                }
            }
        }
        self.start_unblocked_after(index);
    }

    /// Makes systemd's fd store hold what service `index` has now: `FDSTOREREMOVE` of its
    /// names (every entry by that name, so one left by a lost message goes too), then
    /// `FDSTORE` of its process's pidfd, if it has one, and of both ends of its captured output
    /// pipes. A message the store's socket did not take (full: these are sent without
    /// blocking) leaves the service marked, and the retry timer sends it all again.
    fn fd_store_sync(&mut self, index: usize) {
        if self.notify.fd_store() == 0 || index >= self.services.list.len() {
            return;
        }
        if !self.announced || self.notify_pending.is_some() {
            // Behind READY=1 (start-up sends every service's entries after it), or behind a
            // state message the socket did not take yet (the retry timer sends it first).
            if let Some(dirty) = self.fd_store_dirty.get_mut(index) {
                *dirty = true;
            }
            if self.announced {
                self.arm_notify_retry();
            }
            return;
        }
        use crate::fd_store::Stored;
        let entry = &self.services.list[index];
        let name = entry.def.name.as_str();
        let mut result = self.notify.remove_fd(Stored::Pidfd { service: name });
        if result.is_ok() && entry.active && self.engine.procs(entry.id).proc.is_some() {
            if let Some(fd) = self.ring.fd(entry.slot) {
                result = self.notify.store_fd(Stored::Pidfd { service: name }, fd);
            }
        }
        for (i, pipe) in self.outputs.pipes(index).into_iter().enumerate() {
            let stream = crate::output::Stream::from_index(i);
            for write in [false, true] {
                let what = Stored::Pipe {
                    service: name,
                    stream,
                    write,
                };
                if result.is_err() {
                    break;
                }
                result = self.notify.remove_fd(what);
                let fd = match (&pipe, write) {
                    (Some((_, w)), true) => Some(w.as_fd()),
                    (Some((slot, _)), false) => self.ring.fd(*slot),
                    (None, _) => None,
                };
                if let (Ok(()), Some(fd), true) = (&result, fd, entry.active) {
                    result = self.notify.store_fd(what, fd);
                }
            }
        }
        if let Some(dirty) = self.fd_store_dirty.get_mut(index) {
            *dirty = result.is_err();
        }
        let Err(e) = result else {
            return;
        };
        if !self.fd_store_failed {
            self.fd_store_failed = true;
            self.log.line(
                Priority::Warning,
                format_args!(
                    "service={name} event=fd-store-retry error={} effect=\"sent again every \
                     {} ms until systemd takes it; meanwhile a restarted orchestrator takes \
                     this service over from the state record\" note=\"said once\"",
                    Quoted(&e.to_string()),
                    FD_STORE_RETRY.as_millis()
                ),
            );
        }
        self.arm_notify_retry();
    }

    /// Arms the retry timer (fd store entries, a state message or a watchdog ping the notify
    /// socket did not take), unless it is armed.
    fn arm_notify_retry(&mut self) {
        if let Some((slot, armed)) = &mut self.fd_store_retry {
            if !*armed
                && self
                    .ring
                    .timeout(*slot, Timeout::After(FD_STORE_RETRY))
                    .is_ok()
            {
                *armed = true;
            }
        }
    }

    /// Sends a state message (`READY=1`, `STOPPING=1`); one the socket did not take replaces
    /// any pending one and is sent again from the retry timer.
    fn notify_state(&mut self, message: &'static [u8]) {
        if self.notify.send(message).is_err() && self.notify.enabled() {
            self.notify_pending = Some(message);
            self.arm_notify_retry();
        } else if self.notify_pending.is_some() {
            // Taken: it supersedes the one still pending.
            self.notify_pending = None;
        }
    }

    /// Sends `WATCHDOG=1`; one the socket did not take is sent again from the retry timer.
    fn notify_watchdog(&mut self) {
        self.watchdog_pending = self.notify.send(b"WATCHDOG=1").is_err();
        if self.watchdog_pending {
            self.arm_notify_retry();
        }
    }

    /// Asks for a re-exec (`conn`: the control connection to answer). Done by
    /// [`Orchestrator::try_reexec`] once no spawn is in flight.
    fn request_reexec(&mut self, conn: Option<usize>) {
        if self.reexec.is_some() || self.engine.core().shutting_down() {
            let text = if self.reexec.is_some() {
                "a re-exec is already under way"
            } else {
                "the orchestrator is shutting down"
            };
            if let Some(k) = conn {
                self.control
                    .reexec_failed(&mut self.ring, &self.log, k, text);
            }
            return;
        }
        self.reexec = Some((ring::now_ns(), conn));
        self.try_reexec();
    }

    /// Whether a spawn is in flight (a local one in a spawner thread, or a QM request).
    fn spawning(&self) -> bool {
        let core = self.engine.core();
        self.engine.link().requests_outstanding() > 0
            || core
                .services()
                .any(|id| core.status(id).is_some_and(|s| s.spawn_in_flight))
    }

    /// Re-execs if nothing is in flight, or once [`REEXEC_DRAIN_MAX_NS`] has passed.
    fn try_reexec(&mut self) {
        let Some((asked_at, conn)) = self.reexec else {
            return;
        };
        if self.engine.core().shutting_down() {
            self.reexec = None;
            if let Some(k) = conn {
                let text = "the orchestrator began shutting down";
                self.control
                    .reexec_failed(&mut self.ring, &self.log, k, text);
            }
            return;
        }
        let spawning = self.spawning();
        if spawning && ring::now_ns() < asked_at + REEXEC_DRAIN_MAX_NS {
            return;
        }
        self.reexec = None;
        let error = self.reexec_now(conn, spawning);
        self.log.line(
            Priority::Err,
            format_args!(
                "event=reexec-failed error={} effect=\"runs on as it was\"",
                Quoted(&error)
            ),
        );
        self.notify_state(b"READY=1");
        if let Some(k) = conn {
            self.control
                .reexec_failed(&mut self.ring, &self.log, k, &error);
        }
    }

    /// Writes the state record, hands over the fds and execs; returns only on failure.
    fn reexec_now(&mut self, conn: Option<usize>, spawning: bool) -> String {
        // The pause starts here: from now on nothing is supervised until the new instance
        // has carried on.
        let began_ns = ring::now_ns();
        let Some(program) = &self.program else {
            return "this process's program (/proc/self/exe) could not be read at start-up".into();
        };
        let Some(recorder) = &self.recorder else {
            return "no runtime directory (runtime_dir): nothing would carry the services' \
                    state across"
                .into();
        };
        // The new instance reads the configuration file again: one it would refuse must
        // not end this one.
        if let Some(path) = &self.settings.config_path {
            if let Err(e) = crate::config::Config::load(path) {
                return format!(
                    "the configuration file is invalid now, and the new instance would not \
                     start: {e}"
                );
            }
        }
        // Replies already queued (the last answers before the exec) go out first.
        let _ = self.ring.submit_and_wait(0, None);
        if let Err(e) = recorder.write_now() {
            recorder.resume_writing();
            return format!("writing the state record: {e}");
        }
        let mut handoff = crate::handoff::Handoff {
            generation: self.generation + 1,
            began_ns,
            spawning,
            ..Default::default()
        };
        let mut kept = vec![recorder.lock_fd()];
        handoff.lock = Some(recorder.lock_fd().as_raw_fd());
        if let Some(fd) = self.control.listener(&self.ring) {
            handoff.control = Some(fd.as_raw_fd());
            kept.push(fd);
        }
        if let Some(fd) = self.notify_socket.as_ref().and_then(|s| s.fd(&self.ring)) {
            handoff.notify = Some(fd.as_raw_fd());
            kept.push(fd);
        }
        if let Some((fd, request)) = conn.and_then(|k| self.control.waiting_conn(&self.ring, k)) {
            handoff.reply = Some((fd.as_raw_fd(), request));
            kept.push(fd);
        }
        for (index, service) in self.services.list.iter().enumerate() {
            let Ok(name) = arrayvec::ArrayString::from(service.def.name.as_str()) else {
                continue;
            };
            if self.engine.procs(service.id).proc.is_some() {
                if let Some(pidfd) = self.ring.fd(service.slot) {
                    handoff.processes.push((name, pidfd.as_raw_fd()));
                    kept.push(pidfd);
                }
            }
            for (stream, pipe) in self.outputs.pipes(index).into_iter().enumerate() {
                let Some((slot, write)) = pipe else { continue };
                let Some(read) = self.ring.fd(slot) else {
                    continue;
                };
                handoff.outputs.push(crate::handoff::OutputFds {
                    service: name,
                    stream: crate::output::Stream::from_index(stream),
                    read: read.as_raw_fd(),
                    write: write.as_raw_fd(),
                });
                kept.push(read);
                kept.push(write.as_fd());
            }
        }
        let _ = self.notify.reloading(ring::now_ns() / 1_000);
        self.log.line(
            Priority::Notice,
            format_args!(
                "event=reexec binary={} generation={} fds_kept={} spawns_in_flight={spawning}",
                Quoted(&program.path().to_string_lossy()),
                handoff.generation,
                kept.len()
            ),
        );
        self.log_writer.flush(log::background::FLUSH_TIMEOUT);
        let error = program.exec(&handoff, &kept);
        recorder.resume_writing();
        format!("execve {}: {error}", program.path().to_string_lossy())
    }

    /// Carries on with the services of the previous instance. Its state record says what each
    /// had; a recorded process found alive and proven the same process (pidfs inode, or start
    /// time with executable and command line) is taken over instead of started again; one that
    /// is gone, or whose pid another process has now (which is left alone), counts as an exit
    /// with status unknown. A process of a service that the record does not name (a spawn in
    /// flight at the crash) is found by its tag (`runtime::tagged_processes`) and taken over
    /// too; a second one of the same service is ended (SIGKILL): one process per service.
    /// Returns the indices of the services carried on with (not started at boot).
    ///
    /// After a re-exec `handed` are the services' pidfds that the previous instance kept open:
    /// the recorded process is that one, nothing needs to be looked up or checked.
    fn carry_on(&mut self, mut handed: Vec<(String, OwnedFd)>) -> Vec<usize> {
        let entries = self
            .carried_over
            .take()
            .map(|r| r.entries)
            .unwrap_or_default();
        // After a re-exec with no spawn in flight every process is known by its kept pidfd:
        // no need to look through /proc.
        let drained = self.inherited.as_ref().is_some_and(|i| !i.handoff.spawning);
        // First what a dead instance left half-spawned (no tag to find it by yet).
        let half_spawned = if drained {
            0
        } else {
            runtime::end_half_spawned()
        };
        if half_spawned > 0 {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=half-spawned-ended count={half_spawned} signal=SIGKILL \
                     reason=\"cloned by the previous instance for a spawn that had not \
                     executed the service yet; its service is started again\""
                ),
            );
        }
        let mut tagged = match &self.settings.runtime_dir {
            Some(dir) if !drained => runtime::tagged_processes(dir),
            _ => Default::default(),
        };
        if entries.is_empty() && tagged.is_empty() && handed.is_empty() {
            return Vec::new();
        }
        for entry in &entries {
            let configured = self
                .services
                .by_name(entry.name.as_str())
                .is_some_and(|i| self.services.list[i].def.policy.partition == entry.partition);
            if !configured && entry.carried.pid.is_some() {
                self.log.line(
                    Priority::Warning,
                    format_args!(
                        "service={} partition={} pid={} event=not-taken-over \
                         reason=\"no such service in this configuration (or another partition)\" \
                         consequence=\"its process, if still there, is left alone\"",
                        entry.name,
                        entry.partition.as_str(),
                        entry.carried.pid.map_or(0, |p| p.0)
                    ),
                );
            }
        }
        let mut resumed = Vec::new();
        let (mut adopted, mut found, mut gone, mut refused, mut ended, mut by_pidfd) =
            (0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
        for index in 0..self.services.list.len() {
            let def = &self.services.list[index].def;
            let (name, partition) = (def.name.clone(), def.policy.partition);
            let entry = entries
                .iter()
                .find(|e| e.name.as_str() == name && e.partition == partition);
            let mut candidates = tagged.remove(&name).unwrap_or_default();
            // A local service with a cgroup: what the cgroup holds is its tree, the processes
            // of one spawn (a main's exit is reported only once its cgroup is empty), never
            // second processes; a double-forked one is a tagged root too, and is left alone.
            let in_cgroup: Vec<i32> = match (partition, &self.services.cgroups) {
                (Partition::Local, Some(cgroups)) => cgroups.procs(&name).unwrap_or_default(),
                _ => Vec::new(),
            };
            // Oldest first: the first is the tree's main process while it lives.
            let (tree_roots, outside): (Vec<i32>, Vec<i32>) =
                candidates.iter().partition(|p| in_cgroup.contains(p));
            candidates = outside;
            let mut live = None;
            let mut kept = handed
                .iter()
                .position(|(n, _)| *n == name)
                .map(|i| handed.swap_remove(i).1);
            if let (Some(fd), false) = (&kept, candidates.is_empty()) {
                let pid = pidfd::identity(fd.as_fd()).map_or(-1, |i| i.pid);
                candidates.retain(|&p| p != pid);
            }
            if let Some(entry) = entry {
                if let Some(pid) = entry.carried.pid {
                    candidates.retain(|&p| p != pid.0);
                    // A kept pidfd is the process (the record may lag it), unless that process
                    // has ended while the recorded pid still runs: then the record is newer.
                    let ended = |fd: &OwnedFd| pidfd::has_exited(fd.as_fd());
                    if kept.as_ref().is_some_and(ended)
                        && runtime::find(pid.0, entry.identity).is_same()
                    {
                        kept = None;
                    }
                    // A kept pidfd names its process: its pid and identity are the pidfd's
                    // (the record's may be of the process before, if it lagged).
                    let mut taken = (pid.0, entry.identity);
                    let found = match kept.take() {
                        Some(fd) => {
                            by_pidfd += 1;
                            if let Ok(id) = pidfd::identity(fd.as_fd()) {
                                if id.pid > 0 {
                                    taken.0 = id.pid;
                                }
                                if id.inode != 0 {
                                    taken.1 = crate::record::Identity::Pidfs(id.inode);
                                }
                            }
                            Found::Same(fd)
                        }
                        None => runtime::find(pid.0, entry.identity),
                    };
                    match found {
                        Found::Same(fd) => {
                            adopted += 1;
                            live = Some((fd, taken.0, taken.1, entry.qm_pid));
                        }
                        Found::Gone => {
                            gone += 1;
                            self.log.line(
                                Priority::Notice,
                                format_args!(
                                    "service={name} partition={} pid={} event=process-gone \
                                     effect=\"exit with status unknown\"",
                                    partition.as_str(),
                                    pid.0
                                ),
                            );
                        }
                        Found::Other => {
                            refused += 1;
                            self.log.line(
                                Priority::Warning,
                                format_args!(
                                    "service={name} partition={} pid={} event=pid-reused \
                                     effect=\"exit with status unknown; the process now at that \
                                     pid is not ours and is left alone\"",
                                    partition.as_str(),
                                    pid.0
                                ),
                            );
                        }
                    }
                }
            }
            // A pidfd kept for a service the record does not name (no record, or a process
            // started within its lag): that process, whatever its pid.
            if let Some(fd) = kept.take() {
                let id = pidfd::identity(fd.as_fd()).ok();
                if let Some(id) = id.filter(|id| id.pid > 0) {
                    by_pidfd += 1;
                    self.log.line(
                        Priority::Notice,
                        format_args!(
                            "service={name} partition={} pid={} event=found-by-pidfd \
                             effect=\"taken over: its pidfd was kept for this instance\"",
                            partition.as_str(),
                            id.pid
                        ),
                    );
                    let identity = match id.inode {
                        0 => runtime::start_time_identity(id.pid)
                            .unwrap_or(crate::record::Identity::None),
                        inode => crate::record::Identity::Pidfs(inode),
                    };
                    live = Some((fd, id.pid, identity, 0));
                }
            }
            // The newest tagged process (the last of them) is the last spawn: take it over if
            // nothing else was.
            if live.is_none() {
                // In a cgroup, the oldest of the tree (its main process) when the record
                // names no process (a spawn in flight at the crash); a recorded main that is
                // gone left the rest orphaned (a new spawn waits for an empty cgroup). Else
                // the newest tagged process outside it.
                let recorded = entry.is_some_and(|e| e.carried.pid.is_some());
                let mut order = tree_roots.iter().copied().take(usize::from(!recorded));
                while let Some(pid) = order.next().or_else(|| candidates.pop()) {
                    let Ok(fd) = pidfd::open(pid) else {
                        continue;
                    };
                    let identity = match pidfd::pidfs_inode(fd.as_fd()) {
                        Some(inode) => crate::record::Identity::Pidfs(inode),
                        None => runtime::start_time_identity(pid)
                            .unwrap_or(crate::record::Identity::None),
                    };
                    found += 1;
                    self.log.line(
                        Priority::Notice,
                        format_args!(
                            "service={name} partition={} pid={pid} event=found-by-tag \
                             effect=\"taken over: started by the previous instance, not yet \
                             in its record\"",
                            partition.as_str()
                        ),
                    );
                    live = Some((fd, pid, identity, 0));
                    break;
                }
            }
            for pid in candidates {
                if let Ok(fd) = pidfd::open(pid) {
                    if pidfd::send_signal(fd.as_fd(), libc::SIGKILL).is_ok() {
                        ended += 1;
                        self.log.line(
                            Priority::Warning,
                            format_args!(
                                "service={name} partition={} pid={pid} event=second-process-ended \
                                 signal=SIGKILL reason=\"one process per service\"",
                                partition.as_str()
                            ),
                        );
                    }
                }
            }
            if live.is_none() && !in_cgroup.is_empty() {
                // The main process is gone and its tree is not: what is left of a spawn of
                // the previous instance, ended before anything starts in that cgroup again.
                self.services
                    .end_orphan_tree(&self.log, index, in_cgroup.len());
            }
            let carried = match (entry, &live) {
                (Some(entry), _) => entry.carried,
                (None, Some(_)) => supervise::Carried {
                    state: State::Running,
                    ..supervise::Carried::STOPPED
                },
                (None, None) => continue,
            };
            let service = &mut self.services.list[index];
            let id = service.id;
            // After a crash the previous instance's children were reparented: their exit
            // status is read through PIDFD_INFO_EXIT, as for QM.
            // After a re-exec they are still ours: exit statuses through waitid, as before.
            service.reaped_elsewhere = live
                .as_ref()
                .is_some_and(|(fd, _, _, _)| !pidfd::is_child(fd.as_fd()));
            let live = live.map(|(fd, pid, identity, qm_pid)| {
                service.start_identity = identity;
                let inode = match identity {
                    crate::record::Identity::Pidfs(inode) => inode,
                    _ => 0,
                };
                (fd, pid, pidfd::Identity { inode, pid }, qm_pid)
            });
            if let Err(refusal) = self.engine.resume(now(), id, &carried, live) {
                self.log.line(
                    Priority::Err,
                    format_args!(
                        "service={name} event=resume-refused detail={}",
                        Quoted(refusal)
                    ),
                );
                continue;
            }
            resumed.push(index);
            self.settle();
        }
        self.log.line(
            Priority::Notice,
            format_args!(
                "event=carried-over services={} adopted={adopted} found_by_tag={found} \
                 gone={gone} pid_reused={refused} second_processes_ended={ended} \
                 by_kept_pidfd={by_pidfd}",
                resumed.len()
            ),
        );
        resumed
    }

    /// Puts a service's current state into the state record.
    fn record(&self, service: ServiceId) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let (Some(carried), Some(entry)) = (
            self.engine.core().carried(service),
            self.services.get(service),
        ) else {
            return;
        };
        let Ok(name) = arrayvec::ArrayString::from(entry.def.name.as_str()) else {
            return;
        };
        let procs = self.engine.procs(service);
        let identity = match procs.proc {
            Some(p) if p.identity.inode != 0 => crate::record::Identity::Pidfs(p.identity.inode),
            Some(_) => entry.start_identity,
            None => crate::record::Identity::None,
        };
        recorder.put(
            service.index(),
            Some(crate::record::Entry {
                name,
                partition: entry.def.policy.partition,
                qm_pid: if procs.proc.is_some() {
                    procs.qm_pid
                } else {
                    0
                },
                identity,
                carried,
            }),
        );
    }

    fn request_shutdown(&mut self) {
        self.shutdown_requests += 1;
        if self.shutdown_requests == 1 {
            self.notify_state(b"STOPPING=1");
            if !self.settings.shutdown_stop_services {
                self.log.line(
                    Priority::Notice,
                    format_args!(
                        "event=shutdown services=left-running reason=\"shutdown.stop_services = false\""
                    ),
                );
                self.done = true;
                return;
            }
            let _ = self.notify.status(format_args!("stopping every service"));
            self.status_pending = false;
            let _ = self.ring.timeout(
                self.shutdown_slot,
                Timeout::After(self.settings.shutdown_timeout),
            );
            if self.deps.any_dependency() {
                // Reverse dependency order: a service stops once nothing that comes after it
                // or needs it runs; the core's shutdown follows once everything stopped.
                self.ordered_shutdown = true;
                self.deps.waiting.iter_mut().for_each(|w| *w = false);
                self.stop_in_order();
                return;
            }
        } else {
            self.log.line(
                Priority::Warning,
                format_args!("event=shutdown-forced action=SIGKILL target=every-process"),
            );
            if std::mem::replace(&mut self.ordered_shutdown, false) {
                // The order is given up: the core stops what is left, and kills it now.
                self.engine.shutdown(now());
            }
        }
        self.engine.shutdown(now());
    }

    /// An ordered shutdown: stops every service that nothing running depends on; once all
    /// have stopped, the core's shutdown completes it.
    fn stop_in_order(&mut self) {
        let settled = |s: State| matches!(s, State::Stopped | State::Failed);
        let state = |o: &Self, i: usize| {
            o.services
                .list
                .get(i)
                .filter(|s| s.active)
                .and_then(|s| o.engine.core().status(s.id))
                .map(|st| st.state)
        };
        let mut all_settled = true;
        for i in 0..self.services.list.len() {
            let Some(st) = state(self, i) else { continue };
            if settled(st) {
                continue;
            }
            all_settled = false;
            if st == State::Stopping {
                continue;
            }
            let held = self
                .deps
                .dependents(i)
                .iter()
                .any(|&d| state(self, d).is_some_and(|s| !settled(s)));
            if !held {
                let id = self.services.list[i].id;
                let _ = self.engine.command(now(), id, Command::ShutdownStop);
            }
        }
        if all_settled {
            self.ordered_shutdown = false;
            self.engine.shutdown(now());
        }
    }

    /// Sends `STATUS=` (services, the failed ones by name, the agent's state): on start-up,
    /// agent changes, a service entering or leaving `failed`, and reloads only (a notification
    /// per restart would cost a datagram per cycle).
    fn update_status(&mut self, agent: &'static str) {
        self.agent_status = agent;
        let line = super::status_line::StatusLine {
            services: &self.services,
            core: self.engine.core(),
            qm: self.qm_services,
            agent,
        };
        self.status_pending = self.notify.status(format_args!("{line}")).is_err();
        if self.status_pending {
            self.arm_notify_retry();
        }
    }

    fn log_transition(&self, t: Transition) {
        let Some(service) = self.services.get(t.service) else {
            return;
        };
        let procs = self.engine.procs(t.service);
        let priority = match (t.to, t.reason) {
            (State::Failed, _) => Priority::Err,
            // The end of a process we asked to stop is no crash.
            (_, Reason::Exited(_)) if t.from == State::Stopping => Priority::Info,
            (_, Reason::Exited(status)) if !status.is_success() => Priority::Warning,
            (_, Reason::SpawnFailed(_)) | (_, Reason::StopTimeout) => Priority::Warning,
            _ => Priority::Info,
        };
        if !self.log.enabled(priority) {
            return;
        }
        let mut line = LineBuf::new();
        use std::fmt::Write as _;
        let _ = write!(
            line,
            "service={} partition={} state={} from={}",
            service.def.name,
            service.def.policy.partition.as_str(),
            t.to,
            t.from,
        );
        if procs.last_pid > 0 {
            let _ = write!(line, " pid={}", procs.last_pid);
        }
        if procs.qm_pid > 0 {
            let _ = write!(line, " qm_pid={}", procs.qm_pid);
        }
        let _ = write!(line, " restarts={}", t.restarts);
        let _ = match t.reason {
            Reason::Added => write!(line, " reason=added"),
            Reason::Operator => write!(line, " reason=operator"),
            Reason::RestartDue => write!(line, " reason=restart-due"),
            Reason::Spawned(pid) => write!(line, " reason=spawned spawned_pid={}", pid.0),
            Reason::SpawnFailed(e) => write!(
                line,
                " reason=spawn-failed stage={} errno={}",
                e.stage.as_str(),
                e.errno
            ),
            Reason::Exited(status) => match status {
                supervise::ExitStatus::Code(code) => write!(line, " reason=exited code={code}"),
                supervise::ExitStatus::Signal(sig) => {
                    write!(line, " reason=exited signal={}", pidfd::signal_name(sig))
                }
                supervise::ExitStatus::Unknown => write!(line, " reason=exited status=unknown"),
            },
            Reason::StartLimit => write!(line, " reason=start-limit"),
            Reason::Agent => write!(line, " reason=agent"),
            Reason::StopTimeout => write!(line, " reason=stop-timeout action=SIGKILL"),
            Reason::Shutdown => write!(line, " reason=shutdown"),
            Reason::Removed => write!(line, " reason=removed"),
            Reason::Adopted(pid) => write!(line, " reason=adopted adopted_pid={}", pid.0),
            Reason::Resumed => write!(line, " reason=resumed"),
            Reason::Ready => write!(line, " reason=ready"),
            Reason::StartTimeout => write!(line, " reason=start-timeout"),
            Reason::Watchdog => write!(line, " reason=watchdog"),
        };
        if let Some(delay) = t.next_delay {
            let _ = write!(line, " next_delay_ms={}", delay.as_millis());
        }
        let text = std::str::from_utf8(line.as_bytes()).unwrap_or("(log line not UTF-8)");
        self.log.line(priority, format_args!("{text}"));
    }

    // --- reload ---------------------------------------------------------------------------

    /// Re-reads the configuration file. On success returns the counts and the length of the
    /// "needs a restart" note written into `notes`; on failure nothing has changed.
    fn reload(&mut self, notes: &mut [u8]) -> Result<([u16; 4], usize), (FailCode, String)> {
        // systemd: RELOADING=1 (with the time, systemd 253+) now, READY=1 when done, so that
        // `systemctl reload` waits for the reload and not only for ExecReload.
        let _ = self.notify.reloading(ring::now_ns() / 1_000);
        let result = self.reload_apply(notes);
        if result.is_ok() {
            self.rebuild_deps();
            self.start_unblocked();
        }
        self.settle();
        self.notify_state(b"READY=1");
        self.update_status(self.agent_status);
        match &result {
            Ok((c, len)) => self.log.line(
                Priority::Notice,
                format_args!(
                    "event=reload added={} removed={} changed={} unchanged={} needs_restart={}",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    Quoted(std::str::from_utf8(&notes[..*len]).unwrap_or(""))
                ),
            ),
            Err((_, message)) => self.log.line(
                Priority::Err,
                format_args!("event=reload-failed error={} action=none", Quoted(message)),
            ),
        }
        result
    }

    fn reload_apply(&mut self, notes: &mut [u8]) -> Result<([u16; 4], usize), (FailCode, String)> {
        let Some(path) = self.settings.config_path.clone() else {
            return Err((
                FailCode::ReloadUnavailable,
                "this orchestrator was started without a configuration file (the v0.2 command \
                 line): there is nothing to reload"
                    .to_string(),
            ));
        };
        if self.engine.core().shutting_down() {
            return Err((
                FailCode::Refused,
                "the orchestrator is shutting down".to_string(),
            ));
        }
        let capacity = self.engine.core().capacity();
        let plan = reload::plan(&path, &self.settings, &self.services, capacity)?;
        if !self.pending_adds.is_empty() {
            return Err((
                FailCode::Refused,
                "the previous reload still waits for removed services to stop: retry".to_string(),
            ));
        }
        let counts = plan.counts();
        let note = plan.needs_restart.as_bytes();
        let note_len = note.len().min(notes.len());
        notes[..note_len].copy_from_slice(&note[..note_len]);
        let new = &plan.settings;
        self.log = self.log.clone().with_max(new.log_level);
        self.settings.log_level = new.log_level;
        self.settings.shutdown_stop_services = new.shutdown_stop_services;
        self.settings.shutdown_timeout = new.shutdown_timeout;

        for index in plan.removed {
            self.services.list[index].removing = true;
            let service = self.services.list[index].id;
            if let Err(refusal) = self.engine.remove(now(), service) {
                self.log.line(
                    Priority::Err,
                    format_args!("event=core-refused detail={} input=remove", Quoted(refusal)),
                );
            }
            self.settle();
        }
        for (index, def, spec) in plan.changed {
            let service = self.services.list[index].id;
            let policy_changed = self.services.list[index].def.policy != def.policy;
            let running = self
                .engine
                .core()
                .status(service)
                .is_some_and(|s| s.pid.is_some() || s.state == State::Starting);
            let policy = def.policy;
            let output_changed = {
                let old = &self.services.list[index].def;
                old.stdout != def.stdout || old.stderr != def.stderr
            };
            if output_changed {
                self.put_output(index, &def);
            }
            let entry = &mut self.services.list[index];
            entry.def = def;
            entry.spec = spec;
            let result = if policy_changed {
                self.engine.replace(now(), service, policy)
            } else if running {
                self.engine.command(now(), service, Command::Restart)
            } else {
                Ok(())
            };
            if let Err(refusal) = result {
                self.log.line(
                    Priority::Err,
                    format_args!(
                        "event=core-refused detail={} input=replace",
                        Quoted(refusal)
                    ),
                );
            }
            self.settle();
        }
        for (index, def) in plan.same {
            // Only `enabled` may differ: it matters at the next start of the orchestrator.
            self.services.list[index].def.start_at_boot = def.start_at_boot;
        }
        // Services that need the slot of a removed one wait until it has stopped.
        self.pending_adds.extend(plan.added);
        self.reload_pending();
        self.qm_services = self.services.qm_count();
        if self.qm_services > 0 {
            self.engine.enable_agent(now());
            self.settle();
        }
        Ok((counts, note_len))
    }

    /// The graph of the services as they are now (after a reload, or a service it added), for
    /// the starts from now on: a start that waits, waits on (allocates, as a reload does).
    fn rebuild_deps(&mut self) {
        let waiting = std::mem::take(&mut self.deps.waiting);
        self.deps = Deps::build(&self.services, waiting.len());
        for (i, w) in waiting.into_iter().enumerate() {
            if let Some(place) = self.deps.waiting.get_mut(i) {
                *place = w;
            }
        }
    }

    /// Adds the services of a reload that were waiting for a free service and ring slot.
    fn reload_pending(&mut self) {
        while !self.pending_adds.is_empty()
            && self.engine.core().services().count() < self.engine.core().capacity()
            && self.ring.len() < self.ring.limits().slots as usize
        {
            let (def, spec) = self.pending_adds.remove(0);
            self.add_service(def, spec);
        }
    }

    fn add_service(&mut self, def: ServiceDef, spec: Option<Arc<SpawnSpec>>) {
        let id = match self.engine.add(def.policy) {
            Ok(id) => id,
            Err(refusal) => {
                // Checked before applying: not expected.
                self.log.line(
                    Priority::Err,
                    format_args!(
                        "service={} event=add-failed detail={}",
                        def.name,
                        Quoted(refusal)
                    ),
                );
                return;
            }
        };
        let slot = match self.ring.insert_bare() {
            Ok(slot) => slot,
            Err(e) => {
                self.log.line(
                    Priority::Err,
                    format_args!(
                        "service={} event=add-failed detail={}",
                        def.name,
                        Quoted(format_args!("ring: {e}"))
                    ),
                );
                let _ = self.engine.remove(now(), id);
                self.settle();
                return;
            }
        };
        self.owners[slot.index()] = Owner::Service(id.0);
        self.put_output(id.index(), &def);
        let start = def.start_at_boot;
        self.log.line(
            Priority::Notice,
            format_args!(
                "service={} partition={} event=added",
                def.name,
                def.policy.partition.as_str()
            ),
        );
        self.services.put(def, id, slot, spec);
        if start {
            // As at boot: it (and what it requires) starts once its `after` ones are ready.
            self.rebuild_deps();
            self.want_started(id.index());
            self.start_unblocked();
            self.settle();
        }
    }

    /// (Re)makes the output of service `index` (reload), keeping the slot owners right.
    fn put_output(&mut self, index: usize, def: &ServiceDef) {
        for freed in self
            .outputs
            .release(&mut self.ring, index)
            .into_iter()
            .flatten()
        {
            self.owners[freed.index()] = Owner::Free;
        }
        let taken = put_output(
            &mut self.outputs,
            &mut self.ring,
            &self.log,
            index,
            def,
            [None, None],
        );
        for (stream, slot) in taken.iter().enumerate() {
            if let Some(slot) = slot {
                self.owners[slot.index()] = Owner::Output(index as u32, stream as u8);
            }
        }
        self.fd_store_sync(index);
    }

    /// The engine has removed a service: free its ring slot and its entry.
    fn on_removed(&mut self, service: ServiceId) {
        let Some(entry) = self.services.list.get_mut(service.index()) else {
            return;
        };
        entry.active = false;
        entry.removing = false;
        entry.spec = None;
        let slot = entry.slot;
        let _ = self.ring.remove(slot);
        self.owners[slot.index()] = Owner::Free;
        for freed in self
            .outputs
            .release(&mut self.ring, service.index())
            .into_iter()
            .flatten()
        {
            self.owners[freed.index()] = Owner::Free;
        }
        self.log.line(
            Priority::Notice,
            format_args!(
                "service={} event=removed",
                self.services.name(service.index())
            ),
        );
        self.services
            .remove_cgroup(&self.log, &self.services.list[service.index()].def.name);
        // Inactive now: its entries leave the store.
        self.fd_store_sync(service.index());
    }
}
