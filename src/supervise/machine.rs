//! The supervisor: a fixed table of services driven by events, emitting actions.

use super::action::{Action, Reason, Transition};
use super::carried::{Carried, CARRIED_STARTS_MAX};
use super::event::{Command, Event, ExitStatus, Pid, StartFailure, StartStage, TimerToken};
use super::policy::{Kind, Partition, Readiness, Restart, ServicePolicy, START_LIMIT_BURST_MAX};
use super::start_history::StartHistory;
use super::status::{ServiceStatus, State};
use super::MonoTime;
use crate::queue::Fifo;
use std::time::Duration;

/// Index of a service slot in the supervisor's fixed table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

impl ServiceId {
    /// The slot index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Largest number of service slots a supervisor can have.
pub const SERVICES_MAX: usize = 65536;

/// Actions one event can produce per service (log, cancel, signal, arm, release, spawn).
const ACTIONS_PER_SERVICE_MAX: usize = 6;
/// Actions an event can produce that belong to no service (shutdown complete, removed).
const ACTIONS_GLOBAL_MAX: usize = 8;

/// Why the core refused an event or a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No service in that slot.
    UnknownService(ServiceId),
    /// The shell did not drain the actions of the previous event.
    ActionsPending,
    /// `Spawned`/`SpawnFailed` without a spawn in flight (a shell bug).
    NoSpawnInFlight(ServiceId),
    /// `Exited` without a live process (a shell bug).
    NoProcess(ServiceId),
    /// A start during shutdown.
    ShuttingDown,
    /// A command for a service that is being removed.
    Removing(ServiceId),
    /// Every slot is in use.
    Full,
    /// The policy is out of the core's bounds (start-limit burst).
    InvalidPolicy,
    /// `resume` of a service that is not freshly added (a shell bug).
    NotFresh(ServiceId),
}

impl Refusal {
    /// The service the refusal is about, if any (its name is the shell's to show: the core
    /// knows only slot indices, which mean nothing to an operator).
    pub fn service(&self) -> Option<ServiceId> {
        match *self {
            Refusal::UnknownService(id)
            | Refusal::NoSpawnInFlight(id)
            | Refusal::NotFresh(id)
            | Refusal::NoProcess(id)
            | Refusal::Removing(id) => Some(id),
            _ => None,
        }
    }
}

/// What was refused, without the slot index (see [`Refusal::service`]).
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownService(_) => f.write_str("no such service"),
            Refusal::ActionsPending => f.write_str("actions of the previous event not drained"),
            Refusal::NoSpawnInFlight(_) => f.write_str("no spawn in flight"),
            Refusal::NoProcess(_) => f.write_str("no live process"),
            Refusal::ShuttingDown => f.write_str("orchestrator is shutting down"),
            Refusal::Removing(_) => f.write_str("being removed by a reload"),
            Refusal::Full => f.write_str("every service slot is in use"),
            Refusal::InvalidPolicy => write!(f, "start limit burst above {START_LIMIT_BURST_MAX}"),
            Refusal::NotFresh(_) => f.write_str("state carried over to a service already in use"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What happens once a stopping service has no process left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterStop {
    Stay,
    Start,
    Remove,
    /// A stop the service brought on itself (start timeout, watchdog): then as after a failed
    /// run, the restart policy decides (`restart = "never"`: `failed`).
    Recover,
}

/// What the service's one timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerPurpose {
    Restart,
    Kill,
    /// `starting` with a process: not ready in time.
    StartTimeout,
    /// `running` with a watchdog: no ping in time.
    Watchdog,
}

#[derive(Clone, Copy, Debug)]
struct Timer {
    token: TimerToken,
    purpose: TimerPurpose,
}

/// One service slot.
#[derive(Clone, Copy, Debug)]
struct Slot {
    in_use: bool,
    policy: ServicePolicy,
    /// Applied at the next start (a replaced running service).
    policy_next: Option<ServicePolicy>,
    state: State,
    pid: Option<Pid>,
    spawn_in_flight: bool,
    running_since: Option<MonoTime>,
    /// How long its live process took from its spawn to `running` (ready).
    ready_after: Option<Duration>,
    restarts: u32,
    /// Consecutive restarts without a stable run: the backoff exponent.
    backoff_step: u32,
    last_exit: Option<ExitStatus>,
    next_restart: Option<MonoTime>,
    /// Why the last start failed; cleared when a start succeeds.
    last_spawn_error: Option<StartFailure>,
    /// In `failed` because of the start limit.
    start_limit_hit: bool,
    timer: Option<Timer>,
    /// `stopping`: when the kill timer fires.
    kill_at: Option<MonoTime>,
    kill_sent: bool,
    after_stop: AfterStop,
    starts: StartHistory,
    /// `starting` with a process: when the start timeout fires.
    start_deadline: Option<MonoTime>,
}

/// Consecutive restarts beyond which the backoff exponent stops counting.
const BACKOFF_STEP_MAX: u32 = 64;
/// Shortest wait before retrying a spawn that failed (exec error, EMFILE ...), whatever the
/// policy says. A restart after an exit is paced by the process's own life; a spawn that fails
/// at once is not, and with `restart_delay = "0"` and no start limit it would be retried in a
/// tight loop that floods the log and, without this floor, never lets the shell look at its
/// ring (signals, other services) again.
pub const SPAWN_FAILED_DELAY_MIN: Duration = Duration::from_millis(10);

impl Slot {
    const FREE: Slot = Slot {
        in_use: false,
        policy: ServicePolicy {
            partition: Partition::Local,
            restart: Restart::Never,
            restart_delay: Duration::ZERO,
            backoff: super::policy::Backoff::NONE,
            start_limit: super::policy::StartLimit::NONE,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::ZERO,
            readiness: Readiness::SIMPLE,
        },
        policy_next: None,
        state: State::Stopped,
        pid: None,
        spawn_in_flight: false,
        running_since: None,
        ready_after: None,
        restarts: 0,
        backoff_step: 0,
        last_exit: None,
        next_restart: None,
        last_spawn_error: None,
        start_limit_hit: false,
        timer: None,
        kill_at: None,
        kill_sent: false,
        after_stop: AfterStop::Stay,
        starts: StartHistory::EMPTY,
        start_deadline: None,
    };

    fn is_idle(&self) -> bool {
        self.pid.is_none()
            && !self.spawn_in_flight
            && matches!(self.state, State::Stopped | State::Failed)
    }
}

/// The sans-IO supervision core.
///
/// Feed events with [`Supervisor::handle`], then drain every action with
/// [`Supervisor::poll_action`] before the next event. Memory is allocated in
/// [`Supervisor::new`] only.
pub struct Supervisor {
    slots: Box<[Slot]>,
    actions: Fifo<Action>,
    agent_up: bool,
    shutting_down: bool,
    shutdown_forced: bool,
    shutdown_reported: bool,
    next_token: u64,
}

impl Supervisor {
    /// A supervisor with `capacity` service slots (1..=[`SERVICES_MAX`]); the agent is
    /// considered down until `AgentUp`.
    pub fn new(capacity: usize) -> Supervisor {
        assert!(
            (1..=SERVICES_MAX).contains(&capacity),
            "supervise: capacity {capacity}"
        );
        Supervisor {
            slots: vec![Slot::FREE; capacity].into_boxed_slice(),
            actions: Fifo::with_capacity(capacity * ACTIONS_PER_SERVICE_MAX + ACTIONS_GLOBAL_MAX),
            agent_up: false,
            shutting_down: false,
            shutdown_forced: false,
            shutdown_reported: false,
            next_token: 1,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Adds a service in state `stopped` (start it with `Command::Start`).
    pub fn add(&mut self, policy: ServicePolicy) -> Result<ServiceId, Refusal> {
        if policy.start_limit.burst > START_LIMIT_BURST_MAX {
            return Err(Refusal::InvalidPolicy);
        }
        let index = self
            .slots
            .iter()
            .position(|slot| !slot.in_use)
            .ok_or(Refusal::Full)?;
        let slot = &mut self.slots[index];
        *slot = Slot::FREE;
        slot.in_use = true;
        slot.policy = policy;
        Ok(ServiceId(index as u32))
    }

    /// Removes a service: at once when it is idle, otherwise after it has stopped.
    /// Either way `Action::Removed` tells the shell when the slot is free.
    pub fn remove(&mut self, now: MonoTime, service: ServiceId) -> Result<(), Refusal> {
        self.check_drained()?;
        self.slot(service)?;
        self.stop(now, service, AfterStop::Remove, Reason::Removed);
        self.check_shutdown_complete();
        Ok(())
    }

    /// Replaces a service's policy. Returns whether it changed. A service with a process
    /// (or a spawn in flight) is restarted under the new policy; otherwise the new policy
    /// applies from the next start.
    pub fn replace(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        policy: ServicePolicy,
    ) -> Result<bool, Refusal> {
        self.check_drained()?;
        if policy.start_limit.burst > START_LIMIT_BURST_MAX {
            return Err(Refusal::InvalidPolicy);
        }
        let slot = self.slot(service)?;
        if slot.after_stop == AfterStop::Remove {
            return Err(Refusal::Removing(service));
        }
        let current = slot.policy_next.unwrap_or(slot.policy);
        if current == policy {
            return Ok(false);
        }
        let busy = slot.pid.is_some() || slot.spawn_in_flight;
        let slot = &mut self.slots[service.index()];
        if busy {
            slot.policy_next = Some(policy);
            self.stop(now, service, AfterStop::Start, Reason::Operator);
        } else {
            slot.policy = policy;
            slot.policy_next = None;
        }
        Ok(true)
    }

    /// Handles one event. Refused when the actions of the previous event were not drained,
    /// or when the event contradicts the contract (see [`Event`]).
    pub fn handle(&mut self, now: MonoTime, event: Event) -> Result<(), Refusal> {
        self.check_drained()?;
        match event {
            Event::Spawned { service, pid } => self.on_spawned(now, service, pid),
            Event::SpawnFailed { service, error } => self.on_spawn_failed(now, service, error),
            Event::Exited { service, status } => self.on_exited(now, service, status),
            Event::TimerFired { service, token } => self.on_timer(now, service, token),
            Event::AgentUp => {
                self.on_agent_up(now);
                Ok(())
            }
            Event::AgentDown => {
                self.agent_up = false;
                Ok(())
            }
            Event::Command { service, command } => self.on_command(now, service, command),
            Event::Shutdown => {
                self.on_shutdown(now);
                Ok(())
            }
            Event::Ready { service } => self.on_ready(now, service),
            Event::WatchdogPing { service } => self.on_watchdog_ping(now, service),
            Event::WatchdogTrigger { service } => {
                let slot = self.slot(service)?;
                if slot.state == State::Running && slot.pid.is_some() {
                    self.watchdog_missed(now, service);
                }
                Ok(())
            }
            Event::ExtendStartTimeout { service, by } => {
                let slot = self.slot(service)?;
                let at = now.saturating_add(by);
                let later = slot.start_deadline.is_some_and(|d| at > d);
                if slot.state == State::Starting && slot.pid.is_some() && later {
                    self.slots[service.index()].start_deadline = Some(at);
                    self.arm_timer(service, at, TimerPurpose::StartTimeout);
                }
                Ok(())
            }
        }
    }

    /// The next action for the shell, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }

    /// A service's status, `None` for a free slot.
    pub fn status(&self, service: ServiceId) -> Option<ServiceStatus> {
        let slot = self.slots.get(service.index()).filter(|slot| slot.in_use)?;
        Some(ServiceStatus {
            partition: slot.policy.partition,
            state: slot.state,
            pid: slot.pid,
            running_since: slot.running_since,
            ready_after: slot.ready_after,
            restarts: slot.restarts,
            last_exit: slot.last_exit,
            next_restart: slot.next_restart,
            last_spawn_error: slot.last_spawn_error,
            start_limit_hit: slot.start_limit_hit,
            spawn_in_flight: slot.spawn_in_flight,
        })
    }

    /// A service's policy (the one in force), `None` for a free slot.
    pub fn policy(&self, service: ServiceId) -> Option<ServicePolicy> {
        let slot = self.slots.get(service.index()).filter(|slot| slot.in_use)?;
        Some(slot.policy)
    }

    /// The slots in use, in index order.
    pub fn services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.in_use)
            .map(|(index, _)| ServiceId(index as u32))
    }

    /// Whether the agent is up (as last reported).
    pub fn agent_up(&self) -> bool {
        self.agent_up
    }

    /// Whether a shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether `ShutdownComplete` has been emitted.
    pub fn shutdown_complete(&self) -> bool {
        self.shutdown_reported
    }

    /// What of `service` the next orchestrator instance carries on with (`None`: free slot).
    pub fn carried(&self, service: ServiceId) -> Option<Carried> {
        let slot = self.slots.get(service.index()).filter(|slot| slot.in_use)?;
        let mut starts = [MonoTime::ZERO; CARRIED_STARTS_MAX];
        let mut starts_len = 0u8;
        for (place, time) in starts.iter_mut().zip(slot.starts.oldest_first()) {
            *place = time;
            starts_len += 1;
        }
        Some(Carried {
            state: slot.state,
            pid: slot.pid,
            running_since: slot.running_since,
            restarts: slot.restarts,
            backoff_step: slot.backoff_step,
            last_exit: slot.last_exit,
            next_restart: slot.next_restart,
            kill_at: slot.kill_at,
            kill_sent: slot.kill_sent,
            start_after_stop: slot.after_stop == AfterStop::Start,
            start_limit_hit: slot.start_limit_hit,
            starts,
            starts_len,
        })
    }

    /// Carries on with a service of a previous orchestrator instance: `carried` is what that
    /// instance had, `live` the process found alive for it (checked by the shell: the same
    /// process, not a reused pid), if any. The service must be freshly added (`stopped`, never
    /// started).
    ///
    /// - A live process is taken over (`Adopted`): `running`, or `stopping` with the kill
    ///   timer at the carried deadline. A live process of a service that should have none
    ///   (recorded `stopped`, found anyway) is taken over and stopped.
    /// - A recorded process that is gone (or not the same process) is handled as an exit with
    ///   status unknown: the restart policy decides.
    /// - `backoff` keeps its restart deadline; `starting` and `waiting-for-agent` start again;
    ///   `stopped` and `failed` stay.
    pub fn resume(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        carried: &Carried,
        live: Option<Pid>,
    ) -> Result<(), Refusal> {
        self.check_drained()?;
        let slot = self.slot_mut(service)?;
        if !slot.is_idle() || slot.state != State::Stopped || slot.starts.oldest_first().count() > 0
        {
            return Err(Refusal::NotFresh(service));
        }
        slot.restarts = carried.restarts;
        slot.backoff_step = carried.backoff_step.min(BACKOFF_STEP_MAX);
        slot.last_exit = carried.last_exit;
        slot.starts = StartHistory::of(carried.starts());
        if carried.start_after_stop {
            slot.after_stop = AfterStop::Start;
        }
        if let Some(pid) = live {
            slot.pid = Some(pid);
            slot.running_since = Some(carried.running_since.unwrap_or(now));
            match carried.state {
                State::Stopping => {
                    slot.kill_sent = carried.kill_sent;
                    self.transition(service, State::Stopping, Reason::Adopted(pid), None);
                    if !carried.kill_sent {
                        self.arm_kill_timer(service, carried.kill_at.unwrap_or(now));
                    }
                }
                State::Starting if slot.policy.readiness.kind.waits() => {
                    // Not ready (or done) yet: it waits on, with a start timeout from now.
                    let timeout = slot.policy.readiness.start_timeout;
                    self.transition(service, State::Starting, Reason::Adopted(pid), None);
                    if !timeout.is_zero() {
                        let at = now.saturating_add(timeout);
                        self.slots[service.index()].start_deadline = Some(at);
                        self.arm_timer(service, at, TimerPurpose::StartTimeout);
                    }
                }
                State::Running | State::Starting | State::WaitingForAgent | State::Backoff => {
                    let readiness = slot.policy.readiness;
                    self.transition(service, State::Running, Reason::Adopted(pid), None);
                    if readiness.kind == Kind::Notify && !readiness.watchdog.is_zero() {
                        // Its watchdog runs on, from now.
                        let at = now.saturating_add(readiness.watchdog);
                        self.arm_timer(service, at, TimerPurpose::Watchdog);
                    }
                }
                State::Stopped | State::Failed => {
                    self.transition(service, State::Running, Reason::Adopted(pid), None);
                    self.stop(now, service, AfterStop::Stay, Reason::Resumed);
                }
            }
            return Ok(());
        }
        match carried.state {
            State::Running | State::Stopping if carried.pid.is_some() => {
                // Gone while no orchestrator watched it: an exit whose status nobody read.
                slot.pid = carried.pid;
                slot.running_since = Some(carried.running_since.unwrap_or(now));
                slot.state = carried.state;
                self.on_exited(now, service, ExitStatus::Unknown)?;
            }
            State::Running | State::Stopping => {
                // A stop of a spawn in flight: nothing came of it.
                slot.state = State::Stopping;
                self.finish_stop(now, service, Reason::Resumed);
            }
            State::Starting | State::WaitingForAgent => {
                self.begin_start(now, service, Reason::Resumed)
            }
            State::Backoff => {
                let at = carried.next_restart.unwrap_or(now);
                slot.next_restart = Some(at);
                self.transition(service, State::Backoff, Reason::Resumed, None);
                self.arm_timer(service, at, TimerPurpose::Restart);
            }
            State::Stopped | State::Failed => {
                // `transition` keeps the mark for `failed` and clears it for `stopped`.
                slot.start_limit_hit = carried.start_limit_hit;
                self.transition(service, carried.state, Reason::Resumed, None);
            }
        }
        Ok(())
    }

    // ----- events -----

    fn on_spawned(&mut self, now: MonoTime, service: ServiceId, pid: Pid) -> Result<(), Refusal> {
        let slot = self.slot_mut(service)?;
        if !slot.spawn_in_flight {
            return Err(Refusal::NoSpawnInFlight(service));
        }
        slot.spawn_in_flight = false;
        slot.pid = Some(pid);
        slot.running_since = Some(now);
        slot.ready_after = None;
        slot.last_spawn_error = None;
        let readiness = slot.policy.readiness;
        match slot.state {
            State::Starting if readiness.kind.waits() => {
                // Started once it says so (notify) or once it is done (oneshot).
                self.transition(service, State::Starting, Reason::Spawned(pid), None);
                if !readiness.start_timeout.is_zero() {
                    let at = now.saturating_add(readiness.start_timeout);
                    self.slots[service.index()].start_deadline = Some(at);
                    self.arm_timer(service, at, TimerPurpose::StartTimeout);
                }
            }
            State::Starting => {
                self.slots[service.index()].ready_after = Some(Duration::ZERO);
                self.transition(service, State::Running, Reason::Spawned(pid), None)
            }
            State::Stopping => self.signal_stop(now, service),
            other => unreachable!("spawn in flight in state {other}"),
        }
        Ok(())
    }

    fn on_ready(&mut self, now: MonoTime, service: ServiceId) -> Result<(), Refusal> {
        self.slot(service)?;
        let slot = &mut self.slots[service.index()];
        let readiness = slot.policy.readiness;
        if slot.state != State::Starting || slot.pid.is_none() || readiness.kind != Kind::Notify {
            return Ok(());
        }
        slot.start_deadline = None;
        slot.ready_after = slot.running_since.map(|t| now.saturating_since(t));
        Self::cancel_timer(&mut self.actions, service, slot);
        self.transition(service, State::Running, Reason::Ready, None);
        if !readiness.watchdog.is_zero() {
            self.arm_timer(
                service,
                now.saturating_add(readiness.watchdog),
                TimerPurpose::Watchdog,
            );
        }
        Ok(())
    }

    fn on_watchdog_ping(&mut self, now: MonoTime, service: ServiceId) -> Result<(), Refusal> {
        let slot = self.slot(service)?;
        let watched = slot
            .timer
            .is_some_and(|t| t.purpose == TimerPurpose::Watchdog);
        if slot.state == State::Running && watched {
            let at = now.saturating_add(slot.policy.readiness.watchdog);
            self.arm_timer(service, at, TimerPurpose::Watchdog);
        }
        Ok(())
    }

    /// The watchdog interval passed without a ping (or the service triggered it): the
    /// watchdog signal, SIGKILL after `stop_timeout`, then the restart policy.
    fn watchdog_missed(&mut self, now: MonoTime, service: ServiceId) {
        let slot = &mut self.slots[service.index()];
        Self::cancel_timer(&mut self.actions, service, slot);
        slot.after_stop = AfterStop::Recover;
        let signal = slot.policy.readiness.watchdog_signal;
        self.transition(service, State::Stopping, Reason::Watchdog, None);
        self.signal_stop_with(now, service, signal);
    }

    fn on_spawn_failed(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        error: StartFailure,
    ) -> Result<(), Refusal> {
        let slot = self.slot_mut(service)?;
        if !slot.spawn_in_flight {
            return Err(Refusal::NoSpawnInFlight(service));
        }
        slot.spawn_in_flight = false;
        slot.last_spawn_error = Some(error);
        if error.stage == StartStage::Agent {
            // The agent connection is gone: asking again before `AgentUp` would fail the same way.
            self.agent_up = false;
        }
        let slot = &mut self.slots[service.index()];
        match slot.state {
            State::Starting => {
                let reason = Reason::SpawnFailed(error);
                if slot.policy.restart == Restart::Never {
                    self.transition(service, State::Failed, reason, None);
                } else {
                    self.schedule_restart(now, service, reason);
                }
            }
            State::Stopping => self.finish_stop(now, service, Reason::SpawnFailed(error)),
            other => unreachable!("spawn in flight in state {other}"),
        }
        self.check_shutdown_complete();
        Ok(())
    }

    fn on_exited(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        status: ExitStatus,
    ) -> Result<(), Refusal> {
        self.slot(service)?;
        let slot = &mut self.slots[service.index()];
        let Some(pid) = slot.pid.take() else {
            return Err(Refusal::NoProcess(service));
        };
        let started = slot.running_since.take().unwrap_or(now);
        slot.ready_after = None;
        slot.last_exit = Some(status);
        if now.saturating_since(started) >= slot.policy.backoff.reset_after {
            slot.backoff_step = 0;
        }
        let restart = match slot.policy.restart {
            Restart::Always => true,
            Restart::OnFailure => !status.is_success(),
            Restart::Never => false,
        };
        let state = slot.state;
        let kind = slot.policy.readiness.kind;
        if matches!(state, State::Starting | State::Running) {
            // Its start timeout or watchdog.
            slot.start_deadline = None;
            Self::cancel_timer(&mut self.actions, service, slot);
        }
        let slot = &self.slots[service.index()];
        self.actions.push(Action::Release { service, pid });
        let reason = Reason::Exited(status);
        match state {
            // A oneshot is done.
            State::Starting if kind == Kind::Oneshot && status.is_success() => {
                self.transition(service, State::Stopped, reason, None)
            }
            // Ended before it was ready (or done): a failed start.
            State::Starting if slot.policy.restart == Restart::Never => {
                self.transition(service, State::Failed, reason, None)
            }
            State::Starting => self.schedule_restart(now, service, reason),
            State::Running if restart => self.schedule_restart(now, service, reason),
            State::Running if status.is_success() => {
                self.transition(service, State::Stopped, reason, None)
            }
            State::Running => self.transition(service, State::Failed, reason, None),
            State::Stopping => self.finish_stop(now, service, reason),
            other => unreachable!("live process in state {other}"),
        }
        self.check_shutdown_complete();
        Ok(())
    }

    fn on_timer(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        token: TimerToken,
    ) -> Result<(), Refusal> {
        let slot = self.slot_mut(service)?;
        let Some(timer) = slot.timer.filter(|timer| timer.token == token) else {
            return Ok(()); // stale: cancelled or replaced
        };
        slot.timer = None;
        match timer.purpose {
            TimerPurpose::Restart => {
                debug_assert_eq!(slot.state, State::Backoff);
                slot.next_restart = None;
                self.begin_start(now, service, Reason::RestartDue);
            }
            TimerPurpose::Kill => {
                debug_assert_eq!(slot.state, State::Stopping);
                slot.kill_at = None;
                self.send_kill(service, Reason::StopTimeout);
            }
            TimerPurpose::StartTimeout => {
                debug_assert_eq!(slot.state, State::Starting);
                slot.start_deadline = None;
                slot.after_stop = AfterStop::Recover;
                self.transition(service, State::Stopping, Reason::StartTimeout, None);
                self.signal_stop(now, service);
            }
            TimerPurpose::Watchdog => {
                debug_assert_eq!(slot.state, State::Running);
                self.watchdog_missed(now, service);
            }
        }
        Ok(())
    }

    fn on_agent_up(&mut self, now: MonoTime) {
        self.agent_up = true;
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.in_use && slot.state == State::WaitingForAgent {
                self.begin_start(now, ServiceId(index as u32), Reason::Agent);
            }
        }
    }

    fn on_command(
        &mut self,
        now: MonoTime,
        service: ServiceId,
        command: Command,
    ) -> Result<(), Refusal> {
        let slot = self.slot(service)?;
        if slot.after_stop == AfterStop::Remove {
            return Err(Refusal::Removing(service));
        }
        let starts = matches!(command, Command::Start | Command::Restart);
        if starts && self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        match command {
            Command::Start => self.command_start(now, service),
            Command::Stop => self.stop(now, service, AfterStop::Stay, Reason::Operator),
            Command::Restart => {
                let slot = &self.slots[service.index()];
                if slot.pid.is_some() || slot.spawn_in_flight {
                    self.stop(now, service, AfterStop::Start, Reason::Operator);
                } else {
                    self.command_start(now, service);
                }
            }
            Command::Kill(signal) => {
                let slot = &mut self.slots[service.index()];
                let pid = slot.pid.ok_or(Refusal::NoProcess(service))?;
                if signal == libc::SIGKILL && slot.state == State::Stopping {
                    slot.kill_sent = true;
                }
                self.actions.push(Action::Signal {
                    service,
                    pid,
                    signal,
                });
            }
            Command::ShutdownStop => self.stop(now, service, AfterStop::Stay, Reason::Shutdown),
            Command::ResetFailed => {
                let slot = &mut self.slots[service.index()];
                if slot.state == State::Failed {
                    slot.starts.clear();
                    slot.backoff_step = 0;
                    slot.last_spawn_error = None;
                    self.transition(service, State::Stopped, Reason::Operator, None);
                }
            }
        }
        Ok(())
    }

    fn on_shutdown(&mut self, now: MonoTime) {
        if self.shutting_down {
            self.shutdown_forced = true;
            for index in 0..self.slots.len() {
                let slot = &self.slots[index];
                if slot.in_use && slot.pid.is_some() && !slot.kill_sent {
                    self.send_kill(ServiceId(index as u32), Reason::Shutdown);
                }
            }
            return;
        }
        self.shutting_down = true;
        for index in 0..self.slots.len() {
            if self.slots[index].in_use {
                let service = ServiceId(index as u32);
                let after = match self.slots[index].after_stop {
                    AfterStop::Remove => AfterStop::Remove,
                    _ => AfterStop::Stay,
                };
                self.stop(now, service, after, Reason::Shutdown);
            }
        }
        self.check_shutdown_complete();
    }

    // ----- transitions -----

    fn command_start(&mut self, now: MonoTime, service: ServiceId) {
        let slot = &mut self.slots[service.index()];
        match slot.state {
            State::Stopped | State::Failed | State::Backoff => {
                Self::cancel_timer(&mut self.actions, service, slot);
                slot.next_restart = None;
                slot.starts.clear();
                slot.backoff_step = 0;
                slot.restarts = 0;
                self.begin_start(now, service, Reason::Operator);
            }
            State::Stopping => slot.after_stop = AfterStop::Start,
            State::Starting | State::Running | State::WaitingForAgent => {}
        }
    }

    /// The service should get a process now: spawn, wait for the agent, or fail on the
    /// start limit.
    fn begin_start(&mut self, now: MonoTime, service: ServiceId, reason: Reason) {
        let agent_up = self.agent_up;
        let slot = &mut self.slots[service.index()];
        debug_assert!(slot.pid.is_none() && !slot.spawn_in_flight && slot.timer.is_none());
        if let Some(policy) = slot.policy_next.take() {
            slot.policy = policy;
        }
        if slot.policy.partition == Partition::Qm && !agent_up {
            self.transition(service, State::WaitingForAgent, reason, None);
            return;
        }
        if slot.starts.would_exceed(slot.policy.start_limit, now) {
            self.transition(service, State::Failed, Reason::StartLimit, None);
            return;
        }
        slot.starts.record(now);
        slot.spawn_in_flight = true;
        let spawn = match slot.policy.partition {
            Partition::Local => Action::SpawnLocal { service },
            Partition::Qm => Action::SpawnAgent { service },
        };
        self.transition(service, State::Starting, reason, None);
        self.actions.push(spawn);
    }

    /// After an exit or a failed spawn that the policy restarts.
    fn schedule_restart(&mut self, now: MonoTime, service: ServiceId, reason: Reason) {
        let slot = &mut self.slots[service.index()];
        let mut delay = slot.policy.restart_delay_at(slot.backoff_step);
        // (An agent-stage failure needs no floor: the service then waits for `AgentUp`, which
        // the shell paces with its reconnect backoff.)
        if matches!(reason, Reason::SpawnFailed(e) if e.stage != StartStage::Agent) {
            delay = delay.max(SPAWN_FAILED_DELAY_MIN);
        }
        slot.backoff_step = (slot.backoff_step + 1).min(BACKOFF_STEP_MAX);
        slot.restarts = slot.restarts.saturating_add(1);
        let deadline = now.saturating_add(delay);
        slot.next_restart = Some(deadline);
        self.transition(service, State::Backoff, reason, Some(delay));
        if delay.is_zero() {
            let slot = &mut self.slots[service.index()];
            slot.next_restart = None;
            self.begin_start(now, service, Reason::RestartDue);
        } else {
            self.arm_timer(service, deadline, TimerPurpose::Restart);
        }
    }

    /// Stops the service; `after` says what follows once it has no process.
    fn stop(&mut self, now: MonoTime, service: ServiceId, after: AfterStop, reason: Reason) {
        let slot = &mut self.slots[service.index()];
        if slot.after_stop != AfterStop::Remove {
            slot.after_stop = after;
        }
        match slot.state {
            State::Stopped | State::Failed => {
                if slot.after_stop == AfterStop::Remove {
                    self.finish_stop(now, service, reason);
                } else {
                    slot.after_stop = AfterStop::Stay;
                }
            }
            State::Backoff | State::WaitingForAgent => self.finish_stop(now, service, reason),
            State::Starting if slot.pid.is_some() => {
                // Spawned, not yet ready (or done): its process is stopped like a running one.
                slot.start_deadline = None;
                self.transition(service, State::Stopping, reason, None);
                self.signal_stop(now, service);
            }
            State::Starting => self.transition(service, State::Stopping, reason, None),
            State::Running => {
                self.transition(service, State::Stopping, reason, None);
                self.signal_stop(now, service);
            }
            State::Stopping => {}
        }
    }

    /// Sends the stop signal to the live process and arms the kill timer
    /// (SIGKILL at once during a forced shutdown).
    fn signal_stop(&mut self, now: MonoTime, service: ServiceId) {
        let signal = self.slots[service.index()].policy.stop_signal;
        self.signal_stop_with(now, service, signal);
    }

    /// [`Supervisor::signal_stop`] with `signal` instead of the stop signal.
    fn signal_stop_with(&mut self, now: MonoTime, service: ServiceId, signal: i32) {
        let slot = &mut self.slots[service.index()];
        let pid = slot.pid.expect("signal_stop without a process");
        if self.shutdown_forced || signal == libc::SIGKILL {
            slot.kill_sent = true;
            self.actions.push(Action::Signal {
                service,
                pid,
                signal: libc::SIGKILL,
            });
            return;
        }
        let deadline = now.saturating_add(slot.policy.stop_timeout);
        self.actions.push(Action::Signal {
            service,
            pid,
            signal,
        });
        self.arm_kill_timer(service, deadline);
    }

    fn send_kill(&mut self, service: ServiceId, reason: Reason) {
        let slot = &mut self.slots[service.index()];
        Self::cancel_timer(&mut self.actions, service, slot);
        slot.kill_sent = true;
        if let Some(pid) = slot.pid {
            self.actions.push(Action::Signal {
                service,
                pid,
                signal: libc::SIGKILL,
            });
            self.transition(service, State::Stopping, reason, None);
        }
    }

    /// The stopping service has no process and no spawn in flight.
    fn finish_stop(&mut self, now: MonoTime, service: ServiceId, reason: Reason) {
        let slot = &mut self.slots[service.index()];
        debug_assert!(slot.pid.is_none() && !slot.spawn_in_flight);
        Self::cancel_timer(&mut self.actions, service, slot);
        slot.kill_sent = false;
        slot.next_restart = None;
        let after = slot.after_stop;
        slot.after_stop = AfterStop::Stay;
        match after {
            AfterStop::Stay => {
                let to = if slot.state == State::Failed {
                    State::Failed
                } else {
                    State::Stopped
                };
                self.transition(service, to, reason, None);
            }
            AfterStop::Start if self.shutting_down => {
                self.transition(service, State::Stopped, reason, None);
            }
            AfterStop::Start => {
                self.transition(service, State::Stopped, reason, None);
                let slot = &mut self.slots[service.index()];
                slot.starts.clear();
                slot.backoff_step = 0;
                slot.restarts = 0;
                self.begin_start(now, service, Reason::Operator);
            }
            AfterStop::Remove => {
                self.transition(service, State::Stopped, Reason::Removed, None);
                self.slots[service.index()] = Slot::FREE;
                self.actions.push(Action::Removed { service });
            }
            AfterStop::Recover if self.shutting_down => {
                self.transition(service, State::Stopped, reason, None);
            }
            AfterStop::Recover if slot.policy.restart == Restart::Never => {
                self.transition(service, State::Failed, reason, None);
            }
            AfterStop::Recover => self.schedule_restart(now, service, reason),
        }
    }

    fn check_shutdown_complete(&mut self) {
        if !self.shutting_down || self.shutdown_reported {
            return;
        }
        if self.slots.iter().all(|slot| !slot.in_use || slot.is_idle()) {
            self.shutdown_reported = true;
            self.actions.push(Action::ShutdownComplete);
        }
    }

    // ----- helpers -----

    fn transition(
        &mut self,
        service: ServiceId,
        to: State,
        reason: Reason,
        next_delay: Option<Duration>,
    ) {
        let slot = &mut self.slots[service.index()];
        let from = slot.state;
        slot.state = to;
        if to != State::Failed {
            slot.start_limit_hit = false;
        } else if reason == Reason::StartLimit {
            slot.start_limit_hit = true;
        }
        let restarts = slot.restarts;
        self.actions.push(Action::Log(Transition {
            service,
            from,
            to,
            reason,
            restarts,
            next_delay,
        }));
    }

    fn arm_timer(&mut self, service: ServiceId, deadline: MonoTime, purpose: TimerPurpose) {
        let token = TimerToken(self.next_token);
        self.next_token += 1;
        self.slots[service.index()].timer = Some(Timer { token, purpose });
        self.actions.push(Action::ArmTimer {
            service,
            deadline,
            token,
        });
    }

    /// Arms the kill timer of a stopping service (SIGKILL at `at`).
    fn arm_kill_timer(&mut self, service: ServiceId, at: MonoTime) {
        self.slots[service.index()].kill_at = Some(at);
        self.arm_timer(service, at, TimerPurpose::Kill);
    }

    fn cancel_timer(actions: &mut Fifo<Action>, service: ServiceId, slot: &mut Slot) {
        slot.kill_at = None;
        if slot.timer.take().is_some() {
            actions.push(Action::CancelTimer { service });
        }
    }

    fn check_drained(&self) -> Result<(), Refusal> {
        if !self.actions.is_empty() {
            return Err(Refusal::ActionsPending);
        }
        Ok(())
    }

    fn slot(&self, service: ServiceId) -> Result<&Slot, Refusal> {
        self.slots
            .get(service.index())
            .filter(|slot| slot.in_use)
            .ok_or(Refusal::UnknownService(service))
    }

    fn slot_mut(&mut self, service: ServiceId) -> Result<&mut Slot, Refusal> {
        self.slots
            .get_mut(service.index())
            .filter(|slot| slot.in_use)
            .ok_or(Refusal::UnknownService(service))
    }
}
