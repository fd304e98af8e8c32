//! The whole orchestrator's logic without I/O: the supervision core, the agent link, the one
//! live process per service and the core's timers, glued together.
//!
//! The [`Engine`] is driven by the ring shell in production and by the whole-orchestrator
//! simulation (`tests/orchestrator_sim.rs`) in tests; both see exactly this code. The shell
//! feeds inputs (a local spawn's result, a process's exit, what happened on an agent
//! connection, the time) and drains [`Output`]s until there are none. Every input runs the
//! engine to a fixed point before it returns: the core's actions are carried out, the link's
//! events become core events, and so on until both are quiet.
//!
//! The handle type `H` stands for a pidfd: `OwnedFd` in the shell, a tracked token in the
//! simulation. The engine never holds the handle of a supervised process: it hands it to
//! the shell with [`Output::Watch`] and asks for it to be closed with [`Output::Release`];
//! the link holds a QM pidfd only while a gated exec waits for `Running`.

use super::timers::Timers;
use crate::link::{self, Conn, Cx, Fds, Link};
use crate::pidfd::{Identity, NsPid};
use crate::queue::Fifo;
use crate::supervise::{
    Action, Command, Event, ExitStatus, MonoTime, Partition, Pid, Refusal, ServiceId,
    ServicePolicy, StartFailure, StartStage, Supervisor, Transition,
};

/// A live process of a service, as the engine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    /// Its pid in our PID namespace (0 when it was gone before it could be asked).
    pub pid: i32,
    pub identity: Identity,
    /// Its end was reported to the core (waiting for the release).
    pub exited: bool,
}

/// The engine's side of one service.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceProcs {
    /// The live process, from `Watch` to `Release`.
    pub proc: Option<Proc>,
    /// The pid of the last process (our namespace; 0 if unknown), for log lines after it is
    /// gone.
    pub last_pid: i32,
    /// QM: the pid of the last process as the agent sees it (its PID namespace).
    pub qm_pid: i32,
}

/// What the shell must do. Drain with [`Engine::poll_output`] after every input.
#[derive(Debug)]
pub enum Output<H> {
    /// Spawn the service's process in the host partition; answer with [`Engine::spawned`] or
    /// [`Engine::spawn_failed`].
    SpawnLocal {
        service: ServiceId,
    },
    /// Supervise this process: watch its handle until it exits, then answer with
    /// [`Engine::exited`].
    Watch {
        service: ServiceId,
        handle: H,
    },
    /// Send `signal` to the service's process.
    Signal {
        service: ServiceId,
        pid: Pid,
        signal: i32,
    },
    /// The service's process ended and was accounted for: close its handle (exactly once).
    Release {
        service: ServiceId,
    },
    /// Work on the agent connection (connect, close, kill a late process).
    Link(link::Io<H>),
    /// A state change (a log line, the monitor stream).
    Transition(Transition),
    /// Something about the agent link worth a log line.
    Note(link::Note),
    /// The agent came up or went down (the shell's status line).
    AgentUp,
    AgentDown,
    /// A QM process sent an sd_notify datagram (the text: [`Link::notify_text`], until the
    /// next input): `service` is the one whose live process has `qm_pid` in the agent's PID
    /// namespace, `None` when no service's has.
    Notified {
        service: Option<ServiceId>,
        qm_pid: i32,
    },
    /// A removed service has stopped; its slot is free.
    Removed {
        service: ServiceId,
    },
    /// Shutdown requested and every service stopped.
    ShutdownComplete,
    /// The core refused an event the engine fed it: a bug in the glue, logged loudly.
    Refused {
        refusal: Refusal,
        event: Event,
    },
}

/// Counters of the engine (the shell publishes them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// QM processes taken over from the agent.
    pub spawned_qm: u64,
    /// QM spawns that failed (local failures are counted by the shell, which sees them).
    pub spawn_failed_qm: u64,
}

/// See the module documentation.
pub struct Engine<H> {
    core: Supervisor,
    link: Link<H>,
    procs: Box<[ServiceProcs]>,
    partitions: Box<[Partition]>,
    timers: Timers,
    events: Fifo<Event>,
    outputs: Fifo<Output<H>>,
    stats: Stats,
}

/// Whether `identity` is the process of some service (the link refuses a second pidfd for
/// it).
fn supervises(procs: &[ServiceProcs], identity: &Identity) -> bool {
    procs.iter().filter_map(|s| s.proc.as_ref()).any(|p| {
        p.identity.same_process(identity)
            || (identity.pid > 0 && p.pid == identity.pid && !p.exited)
    })
}

impl<H> Engine<H> {
    /// An engine for `capacity` services and an agent link with `link_config`, which starts
    /// out needed (connecting at [`Engine::start`]) when `agent_needed`.
    pub fn new(capacity: usize, link_config: link::Config, agent_needed: bool) -> Engine<H> {
        let capacity = capacity.max(1);
        Engine {
            core: Supervisor::new(capacity),
            link: Link::new(
                link::Config {
                    services: capacity,
                    ..link_config
                },
                agent_needed,
            ),
            procs: vec![ServiceProcs::default(); capacity].into_boxed_slice(),
            partitions: vec![Partition::Local; capacity].into_boxed_slice(),
            timers: Timers::new(capacity),
            // Every service may have an answer pending, plus the link-wide events.
            events: Fifo::with_capacity(capacity * 4 + 16),
            // One input may touch every service (shutdown, a dropped agent connection), each
            // with a handful of outputs.
            outputs: Fifo::with_capacity(capacity * 8 + 64),
            stats: Stats::default(),
        }
    }

    // --- reading --------------------------------------------------------------------

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output<H>> {
        self.outputs.pop()
    }

    /// When [`Engine::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        let at = match (self.timers.next(), self.link.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        at.map(MonoTime::from_nanos)
    }

    /// The next frame for the agent, written into `buf` (see [`Link::poll_transmit`]).
    pub fn poll_transmit(
        &mut self,
        now: MonoTime,
        buf: &mut [u8],
        requests: &dyn link::Requests,
    ) -> Option<(Conn, usize)> {
        let sent = self.link.poll_transmit(buf, requests);
        // An encoding failure fails the request: let the core hear of it.
        self.pump(now);
        sent
    }

    /// The supervision core (status queries).
    pub fn core(&self) -> &Supervisor {
        &self.core
    }

    /// The agent link (status queries).
    pub fn link(&self) -> &Link<H> {
        &self.link
    }

    /// The process bookkeeping of `service`.
    pub fn procs(&self, service: ServiceId) -> ServiceProcs {
        self.procs.get(service.index()).copied().unwrap_or_default()
    }

    /// Whether a process with `identity` is supervised by some service.
    pub fn supervises(&self, identity: &Identity) -> bool {
        supervises(&self.procs, identity)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Fixed capacities of every table and queue (for "no growth" checks).
    pub fn capacities(&self) -> [usize; 8] {
        let l = self.link.capacities();
        [
            self.procs.len(),
            self.timers.capacity(),
            self.events.capacity(),
            self.outputs.capacity(),
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }

    /// Timers armed (for invariant checks).
    pub fn timers_armed(&self) -> usize {
        self.timers.len()
    }

    // --- services ---------------------------------------------------------------------

    /// Adds a service (start-up, reload).
    pub fn add(&mut self, policy: ServicePolicy) -> Result<ServiceId, Refusal> {
        let id = self.core.add(policy)?;
        self.procs[id.index()] = ServiceProcs::default();
        self.partitions[id.index()] = policy.partition;
        Ok(id)
    }

    /// Removes a service: it stops, and [`Output::Removed`] follows.
    pub fn remove(&mut self, now: MonoTime, service: ServiceId) -> Result<(), Refusal> {
        let result = self.core.remove(now, service);
        self.pump(now);
        result
    }

    /// Replaces a service's policy (reload); restarts it if it runs.
    pub fn replace(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        policy: ServicePolicy,
    ) -> Result<(), Refusal> {
        let result = self.core.replace(now, service, policy).map(|_| ());
        if result.is_ok() {
            self.partitions[service.index()] = policy.partition;
        }
        self.pump(now);
        result
    }

    /// An operator command; the core's refusal is returned.
    pub fn command(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        command: Command,
    ) -> Result<(), Refusal> {
        let result = self.core.handle(now, Event::Command { service, command });
        self.pump(now);
        result
    }

    /// What a service said over sd_notify that the core acts on (`Ready`, `WatchdogPing`,
    /// `WatchdogTrigger`, `ExtendStartTimeout`); ignored by the core when it does not apply.
    pub fn notified(&mut self, now: MonoTime, event: Event) {
        debug_assert!(matches!(
            event,
            Event::Ready { .. }
                | Event::WatchdogPing { .. }
                | Event::WatchdogTrigger { .. }
                | Event::ExtendStartTimeout { .. }
        ));
        self.events.push(event);
        self.pump(now);
    }

    /// Stop everything (a second call: SIGKILL what is left at once).
    pub fn shutdown(&mut self, now: MonoTime) {
        self.events.push(Event::Shutdown);
        self.pump(now);
    }

    // --- the agent link ----------------------------------------------------------------

    /// Start-up: connect to the agent if a QM service needs it.
    pub fn start(&mut self, now: MonoTime) {
        self.link.start();
        self.pump(now);
    }

    /// A QM service appeared (reload).
    pub fn enable_agent(&mut self, now: MonoTime) {
        self.link.enable();
        self.pump(now);
    }

    /// Exit: close the agent connection.
    pub fn close_agent(&mut self) {
        self.link.close();
        while let Some(io) = self.link.poll_io() {
            self.outputs.push(Output::Link(io));
        }
    }

    pub fn link_connected(&mut self, now: MonoTime, conn: Conn, peer: Option<NsPid>) {
        self.with_link(now, |link, cx| link.connected(cx, conn, peer));
    }

    pub fn link_connect_failed(&mut self, now: MonoTime, conn: Conn, errno: i32) {
        self.with_link(now, |link, cx| link.connect_failed(cx, conn, errno));
    }

    pub fn link_received(
        &mut self,
        now: MonoTime,
        conn: Conn,
        data: &[u8],
        oversized: bool,
        fds: Fds<H>,
    ) {
        self.with_link(now, |link, cx| {
            link.received(cx, conn, data, oversized, fds)
        });
    }

    pub fn link_closed(&mut self, now: MonoTime, conn: Conn) {
        self.with_link(now, |link, cx| link.closed(cx, conn));
    }

    pub fn link_receive_failed(&mut self, now: MonoTime, conn: Conn, errno: i32) {
        self.with_link(now, |link, cx| link.receive_failed(cx, conn, errno));
    }

    pub fn link_sent(&mut self, now: MonoTime, conn: Conn) {
        self.link.sent(conn);
        self.pump(now);
    }

    pub fn link_send_failed(&mut self, now: MonoTime, conn: Conn, errno: i32) {
        self.with_link(now, |link, cx| link.send_failed(cx, conn, errno));
    }

    pub fn link_shell_failed(&mut self, now: MonoTime, conn: Conn, what: &'static str) {
        self.with_link(now, |link, cx| link.shell_failed(cx, conn, what));
    }

    // --- processes ---------------------------------------------------------------------

    /// A local spawn succeeded.
    pub fn spawned(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        handle: H,
        pid: i32,
        identity: Identity,
    ) {
        self.watch(service, handle, pid, identity);
        self.pump(now);
    }

    /// Carries on with a service of a previous orchestrator instance (see
    /// [`Supervisor::resume`]); `live` is the process found alive for it and checked by the
    /// shell: its handle, pid, identity and (QM) pid inside QM.
    pub fn resume(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        carried: &crate::supervise::Carried,
        live: Option<(H, i32, Identity, i32)>,
    ) -> Result<(), Refusal> {
        let pid = live.as_ref().map(|(_, pid, _, _)| Pid(*pid));
        let result = self.core.resume(now, service, carried, pid);
        if let (Ok(()), Some((handle, pid, identity, qm_pid))) = (&result, live) {
            let slot = &mut self.procs[service.index()];
            slot.proc = Some(Proc {
                pid,
                identity,
                exited: false,
            });
            slot.last_pid = pid;
            slot.qm_pid = qm_pid;
            self.outputs.push(Output::Watch { service, handle });
        }
        self.pump(now);
        result
    }

    /// A local spawn failed.
    pub fn spawn_failed(&mut self, now: MonoTime, service: ServiceId, error: StartFailure) {
        self.events.push(Event::SpawnFailed { service, error });
        self.pump(now);
    }

    /// The service's process ended with `status`.
    pub fn exited(&mut self, now: MonoTime, service: ServiceId, status: ExitStatus) {
        let Some(proc) = self
            .procs
            .get_mut(service.index())
            .and_then(|s| s.proc.as_mut())
        else {
            return;
        };
        if proc.exited {
            return;
        }
        proc.exited = true;
        self.events.push(Event::Exited { service, status });
        self.pump(now);
    }

    /// Time passed: fire due core timers and the link's deadlines.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        while let Some((service, token)) = self.timers.pop_due(now.as_nanos()) {
            self.events.push(Event::TimerFired { service, token });
        }
        self.with_link(now, |link, cx| link.handle_timeout(cx));
    }

    // --- the glue ----------------------------------------------------------------------

    fn with_link(&mut self, now: MonoTime, f: impl FnOnce(&mut Link<H>, &Cx<'_>)) {
        let procs = &self.procs;
        let supervised = |identity: &Identity| supervises(procs, identity);
        let cx = Cx {
            now_ns: now.as_nanos(),
            supervised: &supervised,
        };
        f(&mut self.link, &cx);
        self.pump(now);
    }

    /// Takes a process into supervision: the shell watches its handle.
    fn watch(&mut self, service: ServiceId, handle: H, pid: i32, identity: Identity) {
        let slot = &mut self.procs[service.index()];
        debug_assert!(slot.proc.is_none(), "one live process per service");
        slot.proc = Some(Proc {
            pid,
            identity,
            exited: false,
        });
        slot.last_pid = pid;
        self.outputs.push(Output::Watch { service, handle });
        self.events.push(Event::Spawned {
            service,
            pid: Pid(pid),
        });
    }

    /// Runs until the core, the link and the event queue are all quiet.
    fn pump(&mut self, now: MonoTime) {
        loop {
            while let Some(action) = self.core.poll_action() {
                self.act(now, action);
            }
            let mut moved = false;
            while let Some(event) = self.link.poll_event() {
                self.on_link_event(event);
                moved = true;
            }
            while let Some(io) = self.link.poll_io() {
                self.outputs.push(Output::Link(io));
            }
            match self.events.pop() {
                Some(event) => {
                    if let Err(refusal) = self.core.handle(now, event) {
                        self.outputs.push(Output::Refused { refusal, event });
                    }
                }
                None if !moved => return,
                None => {}
            }
        }
    }

    fn act(&mut self, now: MonoTime, action: Action) {
        match action {
            Action::SpawnLocal { service } => self.outputs.push(Output::SpawnLocal { service }),
            Action::SpawnAgent { service } => {
                let procs = &self.procs;
                let supervised = |identity: &Identity| supervises(procs, identity);
                let cx = Cx {
                    now_ns: now.as_nanos(),
                    supervised: &supervised,
                };
                self.link.request(&cx, service.index());
            }
            Action::Signal {
                service,
                pid,
                signal,
            } => {
                let live = self.procs[service.index()].proc.is_some_and(|p| !p.exited);
                if live {
                    self.outputs.push(Output::Signal {
                        service,
                        pid,
                        signal,
                    });
                }
            }
            Action::ArmTimer {
                service,
                deadline,
                token,
            } => self.timers.set(service, deadline.as_nanos(), token),
            Action::CancelTimer { service } => self.timers.clear(service),
            Action::Release { service, .. } => {
                if self.procs[service.index()].proc.take().is_some() {
                    self.outputs.push(Output::Release { service });
                }
            }
            Action::Log(transition) => self.outputs.push(Output::Transition(transition)),
            Action::Removed { service } => {
                self.timers.clear(service);
                self.outputs.push(Output::Removed { service });
            }
            Action::ShutdownComplete => self.outputs.push(Output::ShutdownComplete),
        }
    }

    fn on_link_event(&mut self, event: link::Event<H>) {
        match event {
            link::Event::Up => {
                self.events.push(Event::AgentUp);
                self.outputs.push(Output::AgentUp);
            }
            link::Event::Down => {
                self.events.push(Event::AgentDown);
                self.outputs.push(Output::AgentDown);
            }
            link::Event::Started {
                service,
                handle,
                identity,
                qm_pid,
            } => {
                let id = ServiceId(service as u32);
                self.stats.spawned_qm += 1;
                self.procs[service].qm_pid = qm_pid;
                // Our PID namespace's pid; 0 when the process was already reaped (only the
                // agent's view of it is left, logged as qm_pid).
                self.watch(id, handle, identity.pid.max(0), identity);
            }
            link::Event::Failed {
                service,
                errno,
                stage,
            } => {
                self.stats.spawn_failed_qm += 1;
                self.events.push(Event::SpawnFailed {
                    service: ServiceId(service as u32),
                    error: StartFailure { errno, stage },
                });
            }
            link::Event::Notify { qm_pid } => {
                let service = self
                    .procs
                    .iter()
                    .position(|p| p.qm_pid == qm_pid && p.proc.is_some_and(|p| !p.exited))
                    .map(|index| ServiceId(index as u32));
                self.outputs.push(Output::Notified { service, qm_pid });
            }
            link::Event::Note(note) => self.outputs.push(Output::Note(note)),
        }
    }
}

/// The stage a local spawn failure counts as for the core: the exec itself, or the set-up.
pub fn local_failure(stage: crate::spawn::SpawnStage, errno: i32) -> StartFailure {
    StartFailure {
        errno,
        stage: match stage {
            crate::spawn::SpawnStage::Exec => StartStage::Exec,
            _ => StartStage::Setup,
        },
    }
}
