//! The event loop: the supervision core driven by io_uring completions.
//!
//! One thread, one [`Ring`]. Ring slots (fixed at start-up):
//! - one per service: `POLL_ADD` on the pidfd of its live process and the service's one
//!   `TIMEOUT` (the core's timer);
//! - the signalfd, the shutdown eventfd, the watchdog timer, the QM exit-status retry timer,
//!   the agent timer (reconnect, handshake and request deadlines), and the agent connection
//!   (plus one spare, because a dropped connection's slot drains before it is free).
//!
//! Timers are reconciled rather than trusted: the wanted deadline lives in our tables, a ring
//! timeout is only a wake-up, and a wake-up before the deadline re-arms. So replacing a timer
//! never needs more than one outstanding `TIMEOUT` per slot.
//!
//! The core requires its actions to be drained before the next event; events that actions
//! produce (a local spawn's result, the answers for requests lost with the agent) go through a
//! fixed-capacity queue.

use super::agent::AgentLink;
use super::spec::{Options, ServiceDef, Settings};
use crate::log::{Logger, Priority};
use crate::pidfd::{self, Capabilities, ExitInfo, Identity};
use crate::sd_notify::Notifier;
use crate::spawn::{self, SpawnSpec};
use crate::supervise::{
    self, Action, Command, Event, MonoTime, Partition, Pid, Reason, ServiceId, StartFailure,
    StartStage, State, Supervisor, TimerToken, Transition,
};
use crate::sys::signal::SignalFd;
use ring::{Completion, Limits, OpTag, Ring, SlotId, Timeout};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ring slots that belong to no service: signalfd, shutdown eventfd, watchdog, exit retry,
/// agent timer, agent connection and its spare.
pub const FIXED_SLOTS: usize = 7;
/// Of those, the ones that need buffers: the agent connection and its spare (a connection
/// slot that is still draining when the next connection starts).
const FIXED_BUFFERED_SLOTS: usize = 2;
/// Time between two looks at a QM process that polled readable before its exit status was
/// published (the window between exit and reap).
const EXIT_INFO_RETRY_INTERVAL: Duration = Duration::from_millis(1);
/// Looks before a QM exit status is reported as unknown.
const EXIT_INFO_RETRIES_MAX: u16 = 200;
/// Buffers of a buffered ring slot (connections): one wire v1 frame each way. Service, timer
/// and signal slots are bare (a poll and a timer); signalfd reads are done directly.
const SLOT_BUF_BYTES: u32 = crate::wire::v1::FRAME_LEN_MAX as u32;

/// What a ring slot is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Free,
    Service(u32),
    Signals,
    Shutdown,
    Watchdog,
    ExitRetry,
    AgentTimer,
    AgentConn,
    ControlListen,
    ControlConn(u8),
}

/// Counters readable from another thread (tests, benchmarks).
#[derive(Debug, Default)]
pub struct Counters {
    /// Processes started locally.
    pub spawned_local: AtomicU64,
    /// Processes started through the agent.
    pub spawned_qm: AtomicU64,
    /// Processes whose end was seen.
    pub exited: AtomicU64,
    /// Spawn failures (local and QM).
    pub spawn_failed: AtomicU64,
    /// Agent handshakes that succeeded.
    pub agent_connected: AtomicU64,
    /// Agent connections dropped (closed, refused, misbehaving, timed out).
    pub agent_dropped: AtomicU64,
    /// Loop iterations.
    pub iterations: AtomicU64,
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

/// A live process of a service.
pub(crate) struct Proc {
    pub pidfd: OwnedFd,
    pub pid: i32,
    pub identity: Identity,
    /// Its end was reported to the core (waiting for `Release`).
    pub exited: bool,
}

/// The shell's side of one service.
pub(crate) struct ServiceRt {
    pub def: ServiceDef,
    pub id: ServiceId,
    pub slot: SlotId,
    /// Prepared once for local services.
    pub spec: Option<SpawnSpec>,
    pub proc: Option<Proc>,
    /// Pid of the last process (in our PID namespace; 0 when it was gone before we could
    /// ask), for log lines after it is gone.
    pub last_pid: i32,
    /// QM: the pid of the last process as the agent sees it (in the QM PID namespace).
    pub qm_pid: i32,
    /// The core's timer: deadline (CLOCK_MONOTONIC ns) and token.
    pub timer: Option<(u64, TimerToken)>,
    /// Deadline of the outstanding ring TIMEOUT, if any.
    pub timer_op_at: Option<u64>,
    /// QM: looks left before the exit status is given up as unknown; 0 when not waiting.
    pub exit_retries_left: u16,
    /// QM: the outstanding request id to the agent.
    pub request: Option<super::agent::Request>,
    /// QM: the id of a request that timed out on the current connection (a late answer is
    /// killed, not adopted).
    pub abandoned: Option<u64>,
    /// QM with a v0.2 agent: the request's connection.
    pub legacy: super::v02::LegacyConn,
    /// In the core (false once a reload removed it and it stopped: the entry is unused).
    pub active: bool,
    /// A reload removed it; it is stopping and leaves when the core says `Removed`.
    pub removing: bool,
}

impl ServiceRt {
    /// A service just added to the core, with no process yet.
    pub fn new(def: ServiceDef, id: ServiceId, slot: SlotId, spec: Option<SpawnSpec>) -> ServiceRt {
        ServiceRt {
            def,
            id,
            slot,
            spec,
            proc: None,
            last_pid: 0,
            qm_pid: 0,
            timer: None,
            timer_op_at: None,
            exit_retries_left: 0,
            request: None,
            abandoned: None,
            legacy: super::v02::LegacyConn::new(),
            active: true,
            removing: false,
        }
    }
}

/// A fixed-capacity FIFO of events for the core.
struct EventQueue {
    items: Box<[Option<Event>]>,
    head: usize,
    len: usize,
}

impl EventQueue {
    fn new(capacity: usize) -> EventQueue {
        EventQueue {
            items: vec![None; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, event: Event) {
        // Sized for every service having a pending answer plus the agent events: overflow is a
        // bug in the loop.
        assert!(
            self.len < self.items.len(),
            "orchestrator: event queue overflow"
        );
        let index = (self.head + self.len) % self.items.len();
        self.items[index] = Some(event);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Event> {
        if self.len == 0 {
            return None;
        }
        let event = self.items[self.head].take();
        self.head = (self.head + 1) % self.items.len();
        self.len -= 1;
        event
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
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "io_uring: {e}"),
            Error::Enter(e) => write!(f, "io_uring_enter: {e}"),
            Error::Service(e) => f.write_str(e),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The orchestrator: everything allocated in [`Orchestrator::new`], nothing after.
pub struct Orchestrator {
    pub(crate) ring: Ring,
    pub(crate) core: Supervisor,
    pub(crate) log: Logger,
    pub(crate) notify: Notifier,
    pub(crate) caps: Capabilities,
    /// Indexed by core service index (a reload that adds past the end rebuilds it).
    pub(crate) services: Box<[ServiceRt]>,
    pub(crate) owners: Box<[Owner]>,
    events: EventQueue,
    signals: Option<(SignalFd, SlotId)>,
    shutdown_fd: Arc<OwnedFd>,
    shutdown_slot: SlotId,
    watchdog: Option<(SlotId, Duration)>,
    exit_retry_slot: SlotId,
    pub(crate) agent: AgentLink,
    shutdown_requests: u32,
    done: bool,
    pub(crate) counters: Arc<Counters>,
    running: usize,
    pub(crate) qm_services: usize,
    pub(crate) shutdown_stop_services: bool,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) control: super::control::ControlServer,
    /// The configuration file to re-read on reload (`None`: the v0.2 command line).
    pub(crate) config_path: Option<std::path::PathBuf>,
    /// The settings in force (reload reports changes that need a restart).
    pub(crate) settings: Settings,
    /// Services a reload added that wait for a removed service's slot (empty otherwise).
    pub(crate) pending_adds: Vec<(ServiceDef, Option<SpawnSpec>)>,
}

/// The current time for the core and for absolute ring timeouts.
pub(crate) fn now() -> MonoTime {
    MonoTime::from_nanos(ring::now_ns())
}

impl Orchestrator {
    /// Builds the loop: the ring, the core with every service added, prepared spawn specs,
    /// the signalfd (if `options.signals`), and the agent link. Starts nothing yet.
    pub fn new(
        settings: Settings,
        defs: Vec<ServiceDef>,
        options: Options,
    ) -> Result<Orchestrator, Error> {
        let log = Logger::new(options.log_fd, settings.log_level);
        let capacity = settings.slots.max(defs.len()).max(1);
        if capacity > supervise::SERVICES_MAX {
            return Err(Error::Service(format!(
                "slots: {capacity} is more than {}",
                supervise::SERVICES_MAX
            )));
        }
        let slots = capacity + FIXED_SLOTS + super::control::CONTROL_SLOTS;
        // A v0.2 agent is driven with one connection per request on the service's own slot.
        let legacy_possible = settings.agent_protocol != super::spec::AgentProtocol::V1;
        let service_buffered = if legacy_possible { capacity } else { 0 };
        let buffered = service_buffered + FIXED_BUFFERED_SLOTS + super::control::CONTROL_SLOTS;
        let limits = Limits {
            slots: slots as u32,
            buffered_slots: buffered as u32,
            sq_entries: (slots as u32 * 2).next_power_of_two().min(4096),
            cq_entries: 0,
            recv_len: SLOT_BUF_BYTES,
            send_len: SLOT_BUF_BYTES,
            read_len: 64,
            fds_per_msg_max: 2,
            completions_per_wait_max: 1024,
        };
        let mut ring = Ring::new(limits).map_err(Error::Ring)?;
        let mut owners = vec![Owner::Free; slots].into_boxed_slice();
        let mut take_slot = |ring: &mut Ring, owner: Owner| -> Result<SlotId, Error> {
            let buffered = match owner {
                Owner::Service(_) => legacy_possible,
                _ => false,
            };
            let id =
                slot_insert(ring, buffered).map_err(|e| Error::Service(format!("ring: {e}")))?;
            owners[id.index()] = owner;
            Ok(id)
        };
        let mut core = Supervisor::new(capacity);
        let mut services = Vec::with_capacity(capacity);
        let mut qm_services = 0;
        for (index, def) in defs.into_iter().enumerate() {
            let id = core
                .add(def.policy)
                .map_err(|e| Error::Service(format!("service {}: {e}", def.name)))?;
            debug_assert_eq!(id.index(), index);
            let spec = match def.policy.partition {
                Partition::Local => Some(prepare_spec(&def)?),
                Partition::Qm => {
                    qm_services += 1;
                    None
                }
            };
            let slot = take_slot(&mut ring, Owner::Service(index as u32))?;
            services.push(ServiceRt::new(def, id, slot, spec));
        }
        let signals = if options.signals {
            let sfd = super::signals::install().map_err(|e| Error::Io("signalfd", e))?;
            let slot = take_slot(&mut ring, Owner::Signals)?;
            Some((sfd, slot))
        } else {
            None
        };
        let shutdown_fd = Arc::new(crate::sys::fd::eventfd().map_err(|e| Error::Io("eventfd", e))?);
        let shutdown_slot = take_slot(&mut ring, Owner::Shutdown)?;
        let notify = if options.notify {
            Notifier::from_env().map_err(|e| Error::Io("sd_notify", e))?
        } else {
            Notifier::disabled()
        };
        let watchdog = match notify.watchdog_interval() {
            Some(interval) => Some((take_slot(&mut ring, Owner::Watchdog)?, interval)),
            None => None,
        };
        let exit_retry_slot = take_slot(&mut ring, Owner::ExitRetry)?;
        let agent_timer = take_slot(&mut ring, Owner::AgentTimer)?;
        let agent = AgentLink::new(&settings, capacity, agent_timer, qm_services > 0)?;
        let control =
            super::control::ControlServer::new(&settings.control, &mut ring, &mut owners)?;
        let caps = Capabilities::probe();
        Ok(Orchestrator {
            ring,
            core,
            log,
            notify,
            caps,
            services: services.into_boxed_slice(),
            owners,
            events: EventQueue::new(capacity * 4 + 16),
            signals,
            shutdown_fd,
            shutdown_slot,
            watchdog,
            exit_retry_slot,
            agent,
            shutdown_requests: 0,
            done: false,
            counters: Arc::new(Counters::default()),
            running: 0,
            qm_services,
            shutdown_stop_services: settings.shutdown_stop_services,
            shutdown_timeout: settings.shutdown_timeout,
            control,
            config_path: settings.config_path.clone(),
            settings,
            pending_adds: Vec::new(),
        })
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
    /// clean shutdown.
    pub fn run(&mut self) -> Result<(), Error> {
        self.start_up()?;
        while !self.done {
            self.counters.iterations.fetch_add(1, Ordering::Relaxed);
            self.ring.submit_and_wait(1, None).map_err(Error::Enter)?;
            while let Some(completion) = self.ring.next_completion() {
                self.on_completion(completion);
                self.pump();
            }
            self.pump();
            if !self.pending_adds.is_empty() {
                self.reload_pending();
            }
        }
        self.agent_close();
        self.control_close();
        self.log.line(
            Priority::Notice,
            format_args!("event=shutdown-complete services={}", self.services.len()),
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
        if let Some((sfd, slot)) = &self.signals {
            self.ring
                .poll_add(*slot, sfd.fd(), libc::POLLIN as u32)
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
        }
        self.ring
            .poll_add(
                self.shutdown_slot,
                self.shutdown_fd.as_fd(),
                libc::POLLIN as u32,
            )
            .map_err(|e| Error::Service(format!("ring: {e}")))?;
        if let Some((slot, interval)) = self.watchdog {
            let _ = self.notify.send(b"WATCHDOG=1");
            let _ = self.ring.timeout(slot, Timeout::After(interval));
        }
        self.agent_start();
        self.control_start();
        for index in 0..self.services.len() {
            if self.services[index].def.start_at_boot {
                let service = self.services[index].id;
                self.events.push(Event::Command {
                    service,
                    command: Command::Start,
                });
                self.pump();
            }
        }
        let _ = self.notify.send(b"READY=1");
        self.update_status(if self.qm_services == 0 {
            "not needed"
        } else if self.agent.is_up() {
            "up"
        } else {
            "connecting"
        });
        Ok(())
    }

    /// Feeds queued events to the core and carries out every action, until both are empty.
    pub(crate) fn pump(&mut self) {
        while let Some(event) = self.events.pop() {
            if let Err(refusal) = self.core.handle(now(), event) {
                self.log.line(
                    Priority::Err,
                    format_args!("event=core-refused detail=\"{refusal}\" input={event:?}"),
                );
            }
            self.drain_actions();
        }
    }

    /// Carries out every action the core has queued.
    pub(crate) fn drain_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            self.act(action);
        }
    }

    pub(crate) fn push_event(&mut self, event: Event) {
        self.events.push(event);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::SpawnLocal { service } => self.spawn_local(service),
            Action::SpawnAgent { service } => self.agent_request(service),
            Action::Signal {
                service,
                pid,
                signal,
            } => self.signal(service, pid, signal),
            Action::ArmTimer {
                service,
                deadline,
                token,
            } => {
                let rt = &mut self.services[service.index()];
                rt.timer = Some((deadline.as_nanos(), token));
                self.sync_timer(service.index());
            }
            Action::CancelTimer { service } => {
                self.services[service.index()].timer = None;
                self.sync_timer(service.index());
            }
            Action::Release { service, .. } => {
                let rt = &mut self.services[service.index()];
                rt.proc = None;
                rt.exit_retries_left = 0;
            }
            Action::Log(transition) => {
                self.control_on_transition(transition);
                self.log_transition(transition);
            }
            Action::Removed { service } => self.on_removed(service),
            Action::ShutdownComplete => self.done = true,
        }
    }

    fn spawn_local(&mut self, service: ServiceId) {
        let rt = &mut self.services[service.index()];
        let spec = rt.spec.as_ref().expect("local service has a spawn spec");
        match spawn::spawn(spec) {
            Ok(child) => {
                self.counters.spawned_local.fetch_add(1, Ordering::Relaxed);
                let identity = Identity {
                    inode: 0,
                    pid: child.pid,
                };
                self.adopt(service, child.pidfd, child.pid, identity);
            }
            Err(e) => {
                self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                let stage = match e.stage {
                    spawn::SpawnStage::Exec => StartStage::Exec,
                    _ => StartStage::Setup,
                };
                self.log.line(
                    Priority::Warning,
                    format_args!(
                        "service={} partition=local event=spawn-failed stage={} errno={} error=\"{}\"",
                        rt.def.name,
                        e.stage,
                        e.errno,
                        crate::log::ErrnoText(e.errno)
                    ),
                );
                self.events.push(Event::SpawnFailed {
                    service,
                    error: StartFailure {
                        errno: e.errno,
                        stage,
                    },
                });
            }
        }
    }

    /// Takes over a process (local child or QM pidfd from the agent): watch its pidfd and tell
    /// the core.
    pub(crate) fn adopt(
        &mut self,
        service: ServiceId,
        pidfd: OwnedFd,
        pid: i32,
        identity: Identity,
    ) {
        let rt = &mut self.services[service.index()];
        debug_assert!(rt.proc.is_none(), "one live process per service");
        if let Err(e) = self
            .ring
            .poll_add(rt.slot, pidfd.as_fd(), libc::POLLIN as u32)
        {
            // Only possible if a poll is still outstanding on the slot (a bug): say so loudly.
            self.log.line(
                Priority::Err,
                format_args!("service={} event=poll-failed error=\"{e}\"", rt.def.name),
            );
        }
        rt.proc = Some(Proc {
            pidfd,
            pid,
            identity,
            exited: false,
        });
        rt.last_pid = pid;
        self.events.push(Event::Spawned {
            service,
            pid: Pid(pid),
        });
    }

    fn signal(&mut self, service: ServiceId, pid: Pid, signal: i32) {
        let rt = &self.services[service.index()];
        let Some(proc) = rt.proc.as_ref().filter(|p| !p.exited) else {
            return;
        };
        match pidfd::send_signal(proc.pidfd.as_fd(), signal) {
            Ok(()) => self.log.line(
                Priority::Info,
                format_args!(
                    "service={} partition={} pid={} event=signal signal={}",
                    rt.def.name,
                    rt.def.policy.partition.as_str(),
                    pid.0,
                    pidfd::signal_name(signal)
                ),
            ),
            // ESRCH: it has exited already; its pidfd will poll readable.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => self.log.line(
                Priority::Warning,
                format_args!(
                    "service={} pid={} event=signal-failed signal={} error=\"{}\"",
                    rt.def.name,
                    pid.0,
                    pidfd::signal_name(signal),
                    crate::log::ErrnoText(e.raw_os_error().unwrap_or(0))
                ),
            ),
        }
    }

    /// Makes the ring's TIMEOUT on the service's slot match the wanted deadline.
    fn sync_timer(&mut self, index: usize) {
        let rt = &mut self.services[index];
        let pending = self.ring.is_pending(rt.slot, OpTag::Timeout);
        match (rt.timer, pending) {
            (Some((deadline, _)), false) => {
                if self.ring.timeout(rt.slot, Timeout::At(deadline)).is_ok() {
                    rt.timer_op_at = Some(deadline);
                }
            }
            (Some((deadline, _)), true) => {
                if rt.timer_op_at.is_some_and(|at| at > deadline) {
                    let _ = self.ring.cancel_op(rt.slot, OpTag::Timeout);
                }
            }
            (None, true) => {
                let _ = self.ring.cancel_op(rt.slot, OpTag::Timeout);
            }
            (None, false) => {}
        }
    }

    fn on_completion(&mut self, c: Completion) {
        match self.owners[c.slot.index()] {
            Owner::Service(index) => self.on_service_completion(index as usize, c),
            Owner::Signals => self.on_signals(),
            Owner::Shutdown if c.op == OpTag::Timeout => {
                if !self.done {
                    self.log.line(
                        Priority::Warning,
                        format_args!(
                            "event=shutdown-timeout timeout_ms={} action=SIGKILL every process",
                            self.shutdown_timeout.as_millis()
                        ),
                    );
                    self.events.push(Event::Shutdown);
                }
            }
            Owner::Shutdown => self.on_shutdown_handle(),
            Owner::Watchdog => {
                let _ = self.notify.send(b"WATCHDOG=1");
                if let Some((slot, interval)) = self.watchdog {
                    let _ = self.ring.timeout(slot, Timeout::After(interval));
                }
            }
            Owner::ExitRetry => self.on_exit_retry(),
            Owner::AgentTimer => self.agent_on_timer(c),
            Owner::AgentConn => self.agent_on_conn(c),
            Owner::ControlListen => self.control_on_listen(c),
            Owner::ControlConn(k) => self.control_on_conn(k as usize, c),
            Owner::Free => {}
        }
    }

    fn on_service_completion(&mut self, index: usize, c: Completion) {
        match c.op {
            OpTag::Timeout => {
                let rt = &mut self.services[index];
                rt.timer_op_at = None;
                if let Some((deadline, token)) = rt.timer {
                    if ring::now_ns() >= deadline {
                        rt.timer = None;
                        let service = rt.id;
                        self.events.push(Event::TimerFired { service, token });
                    }
                }
                self.sync_timer(index);
            }
            OpTag::Poll => self.on_pidfd_readable(index, c),
            OpTag::RecvMsg | OpTag::SendMsg => self.legacy_on_completion(index, c),
            _ => {}
        }
    }

    fn on_pidfd_readable(&mut self, index: usize, c: Completion) {
        let rt = &mut self.services[index];
        let Some(proc) = rt.proc.as_mut().filter(|p| !p.exited) else {
            return;
        };
        if c.result.is_err() {
            // EINTR/ECANCELED: watch again.
            let _ = self
                .ring
                .poll_add(rt.slot, proc.pidfd.as_fd(), libc::POLLIN as u32);
            return;
        }
        let status = match rt.def.policy.partition {
            Partition::Local => match pidfd::wait_child(proc.pidfd.as_fd()) {
                Ok(Some(status)) => status,
                Ok(None) => {
                    let _ = self
                        .ring
                        .poll_add(rt.slot, proc.pidfd.as_fd(), libc::POLLIN as u32);
                    return;
                }
                Err(_) => pidfd::WaitStatus::Unknown,
            },
            Partition::Qm => {
                if !self.caps.exit_info {
                    pidfd::WaitStatus::Unknown
                } else {
                    match pidfd::exit_info(proc.pidfd.as_fd()) {
                        ExitInfo::Status(status) => status,
                        ExitInfo::Unavailable => pidfd::WaitStatus::Unknown,
                        ExitInfo::NotYet => {
                            // Exited but not yet reaped by the agent: look again shortly.
                            rt.exit_retries_left = EXIT_INFO_RETRIES_MAX;
                            if !self.ring.is_pending(self.exit_retry_slot, OpTag::Timeout) {
                                let _ = self.ring.timeout(
                                    self.exit_retry_slot,
                                    Timeout::After(EXIT_INFO_RETRY_INTERVAL),
                                );
                            }
                            return;
                        }
                    }
                }
            }
        };
        self.report_exit(index, status);
    }

    fn report_exit(&mut self, index: usize, status: pidfd::WaitStatus) {
        let rt = &mut self.services[index];
        if let Some(proc) = rt.proc.as_mut() {
            proc.exited = true;
        }
        rt.exit_retries_left = 0;
        self.counters.exited.fetch_add(1, Ordering::Relaxed);
        let status = match status {
            pidfd::WaitStatus::Exited(code) => supervise::ExitStatus::Code(code),
            pidfd::WaitStatus::Signaled { signal, .. } => supervise::ExitStatus::Signal(signal),
            pidfd::WaitStatus::Unknown => supervise::ExitStatus::Unknown,
        };
        let service = rt.id;
        self.events.push(Event::Exited { service, status });
    }

    fn on_exit_retry(&mut self) {
        let mut waiting = false;
        for index in 0..self.services.len() {
            let rt = &mut self.services[index];
            if rt.exit_retries_left == 0 {
                continue;
            }
            let Some(proc) = rt.proc.as_ref() else {
                rt.exit_retries_left = 0;
                continue;
            };
            match pidfd::exit_info(proc.pidfd.as_fd()) {
                ExitInfo::Status(status) => self.report_exit(index, status),
                ExitInfo::Unavailable => self.report_exit(index, pidfd::WaitStatus::Unknown),
                ExitInfo::NotYet if rt.exit_retries_left == 1 => {
                    self.report_exit(index, pidfd::WaitStatus::Unknown)
                }
                ExitInfo::NotYet => {
                    rt.exit_retries_left -= 1;
                    waiting = true;
                }
            }
        }
        if waiting {
            let _ = self.ring.timeout(
                self.exit_retry_slot,
                Timeout::After(EXIT_INFO_RETRY_INTERVAL),
            );
        }
    }

    fn on_signals(&mut self) {
        let Some((sfd, slot)) = &self.signals else {
            return;
        };
        let slot = *slot;
        let mut got = [0i32; 8];
        let mut n = 0;
        while n < got.len() {
            match sfd.read() {
                Ok(Some(sig)) => {
                    got[n] = sig;
                    n += 1;
                }
                _ => break,
            }
        }
        if let Some((sfd, _)) = &self.signals {
            let _ = self.ring.poll_add(slot, sfd.fd(), libc::POLLIN as u32);
        }
        for &sig in &got[..n] {
            if sig == libc::SIGHUP {
                self.log.line(
                    Priority::Notice,
                    format_args!("event=signal signal=SIGHUP action=reload"),
                );
                let mut notes = [0u8; crate::control::TEXT_LEN_MAX];
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
        let value = crate::sys::fd::eventfd_read(self.shutdown_fd.as_fd())
            .ok()
            .flatten();
        let _ = self.ring.poll_add(
            self.shutdown_slot,
            self.shutdown_fd.as_fd(),
            libc::POLLIN as u32,
        );
        if let Some(value) = value {
            for _ in 0..value.min(2) {
                self.log
                    .line(Priority::Notice, format_args!("event=shutdown-requested"));
                self.request_shutdown();
            }
        }
    }

    fn request_shutdown(&mut self) {
        self.shutdown_requests += 1;
        if self.shutdown_requests == 1 {
            let _ = self.notify.send(b"STOPPING=1");
            if !self.shutdown_stop_services {
                self.log.line(
                    Priority::Notice,
                    format_args!(
                        "event=shutdown services=left-running (shutdown.stop_services = false)"
                    ),
                );
                self.done = true;
                return;
            }
            let _ = self.notify.status(format_args!("stopping every service"));
            let _ = self
                .ring
                .timeout(self.shutdown_slot, Timeout::After(self.shutdown_timeout));
        } else {
            self.log.line(
                Priority::Warning,
                format_args!("event=shutdown-forced action=SIGKILL every process"),
            );
        }
        self.events.push(Event::Shutdown);
    }

    /// Sends `STATUS=` with the agent's state (on start-up and agent changes only: a
    /// notification per restart would cost a datagram per cycle).
    pub(crate) fn update_status(&self, agent: &str) {
        let _ = self.notify.status(format_args!(
            "supervising {} services ({} in QM); agent {agent}",
            self.services.iter().filter(|rt| rt.active).count(),
            self.qm_services
        ));
    }

    fn log_transition(&mut self, t: Transition) {
        let rt = &self.services[t.service.index()];
        if t.from != State::Running && t.to == State::Running {
            self.running += 1;
        } else if t.from == State::Running && t.to != State::Running {
            self.running = self.running.saturating_sub(1);
        }
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
        let mut line = crate::log::LineBuf::new();
        use std::fmt::Write as _;
        let _ = write!(
            line,
            "service={} partition={} state={} from={}",
            rt.def.name,
            rt.def.policy.partition.as_str(),
            t.to,
            t.from,
        );
        if rt.last_pid > 0 {
            let _ = write!(line, " pid={}", rt.last_pid);
        }
        if rt.qm_pid > 0 {
            let _ = write!(line, " qm_pid={}", rt.qm_pid);
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
        };
        if let Some(delay) = t.next_delay {
            let _ = write!(line, " next_delay_ms={}", delay.as_millis());
        }
        let text = line.as_bytes();
        // SAFETY-free: LineBuf only holds what `write!` put in, which is UTF-8.
        let text = std::str::from_utf8(text).unwrap_or("(log line not UTF-8)");
        self.log.line(priority, format_args!("{text}"));
    }
}

/// Prepares the reusable spawn spec of a local service. With `inherit_env`, the
/// orchestrator's environment comes first, minus the names the service sets itself.
pub(crate) fn prepare_spec(def: &ServiceDef) -> Result<SpawnSpec, Error> {
    use std::os::unix::ffi::OsStrExt;
    let bad =
        |what: &dyn std::fmt::Display| Error::Service(format!("service {}: {what}", def.name));
    if def.argv.is_empty() {
        return Err(bad(&"argv is empty"));
    }
    let name_of = |entry: &[u8]| entry.split(|&b| b == b'=').next().unwrap_or(&[]).to_vec();
    let own_names: Vec<Vec<u8>> = def.env.iter().map(|e| name_of(e)).collect();
    let mut env: Vec<Vec<u8>> = Vec::new();
    if def.inherit_env {
        for (key, value) in std::env::vars_os() {
            if own_names.iter().any(|n| n.as_slice() == key.as_bytes()) {
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
    Ok(spec)
}

/// A ring slot for a service or a timer: bare (a pidfd poll and a timer need no buffers)
/// unless `buffered` (the service may talk to a v0.2 agent on its own connection).
pub(crate) fn slot_insert(ring: &mut Ring, buffered: bool) -> Result<SlotId, ring::Full> {
    match buffered {
        true => ring.insert(),
        false => ring.insert_bare(),
    }
}
