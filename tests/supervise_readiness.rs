//! Readiness and liveness in the supervision core: `type = "notify"` (started on `READY=1`,
//! start timeout, watchdog), `type = "oneshot"` (done on a clean exit), one scenario each.

use holden::supervise::{
    Action, Backoff, Command, Event, ExitStatus, Kind, MonoTime, Partition, Pid, Readiness, Reason,
    Restart, ServiceId, ServicePolicy, StartLimit, State, Supervisor, TimerToken, Transition,
};
use std::time::Duration;

const MS: u64 = 1_000_000;

fn policy(kind: Kind, restart: Restart) -> ServicePolicy {
    ServicePolicy {
        partition: Partition::Local,
        restart,
        restart_delay: Duration::from_millis(100),
        backoff: Backoff::NONE,
        start_limit: StartLimit::NONE,
        stop_signal: libc::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        readiness: Readiness {
            kind,
            start_timeout: Duration::from_millis(500),
            watchdog: Duration::from_millis(20),
            watchdog_signal: libc::SIGABRT,
        },
    }
}

struct Harness {
    core: Supervisor,
    now_ns: u64,
    next_pid: i32,
    /// The one armed timer of each service (as the shell keeps it: `ArmTimer` replaces).
    timers: Vec<Option<(MonoTime, TimerToken)>>,
    log: Vec<Transition>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            core: Supervisor::new(4),
            now_ns: 0,
            next_pid: 1000,
            timers: vec![None; 4],
            log: Vec::new(),
        }
    }

    fn now(&self) -> MonoTime {
        MonoTime::from_nanos(self.now_ns)
    }

    fn event(&mut self, event: Event) -> Vec<Action> {
        self.core.handle(self.now(), event).expect("event accepted");
        let actions: Vec<Action> = std::iter::from_fn(|| self.core.poll_action()).collect();
        for action in &actions {
            match *action {
                Action::ArmTimer {
                    service,
                    deadline,
                    token,
                } => self.timers[service.index()] = Some((deadline, token)),
                Action::CancelTimer { service } => self.timers[service.index()] = None,
                Action::Log(t) => self.log.push(t),
                _ => {}
            }
        }
        actions
    }

    /// Moves the clock to `ms`, firing each timer that falls due on the way.
    fn advance_to(&mut self, ms: u64) -> Vec<Action> {
        let mut all = Vec::new();
        loop {
            let due = self
                .timers
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.map(|(at, token)| (at, i, token)))
                .filter(|(at, _, _)| at.as_nanos() <= ms * MS)
                .min();
            let Some((at, index, token)) = due else { break };
            self.now_ns = self.now_ns.max(at.as_nanos());
            self.timers[index] = None;
            all.extend(self.event(Event::TimerFired {
                service: ServiceId(index as u32),
                token,
            }));
        }
        self.now_ns = ms * MS;
        all
    }

    fn start(&mut self, policy: ServicePolicy) -> (ServiceId, Pid) {
        let id = self.core.add(policy).expect("slot free");
        let actions = self.event(Event::Command {
            service: id,
            command: Command::Start,
        });
        assert!(actions.contains(&Action::SpawnLocal { service: id }));
        (id, self.spawned(id))
    }

    fn spawned(&mut self, id: ServiceId) -> Pid {
        self.next_pid += 1;
        let pid = Pid(self.next_pid);
        self.event(Event::Spawned { service: id, pid });
        pid
    }

    fn state(&self, id: ServiceId) -> State {
        self.core.status(id).unwrap().state
    }

    fn reasons(&self, id: ServiceId) -> Vec<(State, Reason)> {
        self.log
            .iter()
            .filter(|t| t.service == id)
            .map(|t| (t.to, t.reason))
            .collect()
    }
}

fn signals(actions: &[Action]) -> Vec<i32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { signal, .. } => Some(*signal),
            _ => None,
        })
        .collect()
}

/// A notify service is `starting` with its process until `READY=1`, then `running`.
#[test]
fn a_notify_service_is_started_when_it_says_ready() {
    let mut h = Harness::new();
    let (id, pid) = h.start(policy(Kind::Notify, Restart::OnFailure));
    assert_eq!(h.state(id), State::Starting);
    let status = h.core.status(id).unwrap();
    assert_eq!(status.pid, Some(pid));
    assert!(!status.spawn_in_flight);
    h.now_ns = 100 * MS;
    h.event(Event::Ready { service: id });
    assert_eq!(h.state(id), State::Running);
    assert_eq!(h.reasons(id).last(), Some(&(State::Running, Reason::Ready)));
    // A second READY=1 (after a reload, say) changes nothing.
    assert!(h.event(Event::Ready { service: id }).is_empty());
    assert_eq!(h.state(id), State::Running);
}

/// A simple service ignores READY=1: it is running from its spawn.
#[test]
fn ready_means_nothing_to_a_simple_service() {
    let mut h = Harness::new();
    let mut p = policy(Kind::Simple, Restart::OnFailure);
    p.readiness.watchdog = Duration::ZERO;
    let (id, _) = h.start(p);
    assert_eq!(h.state(id), State::Running);
    assert!(h.event(Event::Ready { service: id }).is_empty());
    assert_eq!(h.timers[id.index()], None);
}

/// Not ready within `start_timeout`: stopped (stop signal, SIGKILL after stop_timeout), then
/// handled as a failed start: the restart policy restarts it, with reason start-timeout.
#[test]
fn the_start_timeout_stops_it_and_the_policy_restarts_it() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::OnFailure));
    let actions = h.advance_to(499);
    assert!(actions.is_empty(), "{actions:?}");
    let actions = h.advance_to(500);
    assert_eq!(signals(&actions), vec![libc::SIGTERM]);
    assert_eq!(h.state(id), State::Stopping);
    assert!(h
        .reasons(id)
        .contains(&(State::Stopping, Reason::StartTimeout)));
    // It ignores SIGTERM: SIGKILL after stop_timeout.
    let actions = h.advance_to(1500);
    assert_eq!(signals(&actions), vec![libc::SIGKILL]);
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Signal(libc::SIGKILL),
    });
    assert_eq!(h.state(id), State::Backoff);
    let actions = h.advance_to(1600);
    assert!(actions.contains(&Action::SpawnLocal { service: id }));
    assert_eq!(h.core.status(id).unwrap().restarts, 1);
}

/// With `restart = "never"` a start timeout ends in `failed`.
#[test]
fn a_start_timeout_without_restarts_is_failed() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::Never));
    h.advance_to(500);
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Signal(libc::SIGTERM),
    });
    assert_eq!(h.state(id), State::Failed);
}

/// EXTEND_TIMEOUT_USEC pushes the start timeout out, never in.
#[test]
fn extend_timeout_pushes_the_start_timeout_out() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::OnFailure));
    h.now_ns = 400 * MS;
    h.event(Event::ExtendStartTimeout {
        service: id,
        by: Duration::from_millis(300),
    });
    assert!(signals(&h.advance_to(699)).is_empty());
    assert_eq!(h.state(id), State::Starting);
    // A shorter extension than what is left changes nothing.
    h.event(Event::ExtendStartTimeout {
        service: id,
        by: Duration::from_millis(1),
    });
    assert!(signals(&h.advance_to(699)).is_empty());
    assert_eq!(signals(&h.advance_to(700)), vec![libc::SIGTERM]);
}

/// A process that ends before READY=1 is a failed start, even with exit 0.
#[test]
fn an_exit_before_ready_is_a_failed_start() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::OnFailure));
    h.now_ns = 10 * MS;
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Code(0),
    });
    assert_eq!(h.state(id), State::Backoff);
    // Its start timeout went with it.
    assert!(matches!(h.timers[id.index()], Some((at, _)) if at.as_nanos() == 110 * MS));
}

/// The watchdog: pings within the interval keep it running over 1,000 intervals; a missed
/// one sends the watchdog signal (SIGABRT), SIGKILL after stop_timeout, and the policy
/// restarts it.
#[test]
fn the_watchdog_keeps_a_pinging_service_and_restarts_a_silent_one() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::OnFailure));
    h.event(Event::Ready { service: id });
    for i in 1..=1000u64 {
        // A ping every 19 ms against a 20 ms interval.
        let actions = h.advance_to(i * 19);
        assert!(signals(&actions).is_empty(), "interval {i}: {actions:?}");
        h.event(Event::WatchdogPing { service: id });
    }
    assert_eq!(h.state(id), State::Running);
    let last = 1000 * 19;
    assert!(signals(&h.advance_to(last + 19)).is_empty());
    let actions = h.advance_to(last + 20);
    assert_eq!(signals(&actions), vec![libc::SIGABRT]);
    assert!(h.reasons(id).contains(&(State::Stopping, Reason::Watchdog)));
    let actions = h.advance_to(last + 20 + 1000);
    assert_eq!(signals(&actions), vec![libc::SIGKILL]);
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Signal(libc::SIGKILL),
    });
    assert_eq!(h.state(id), State::Backoff);
}

/// WATCHDOG=trigger is a miss at once; a ping from a service that is not running (or has
/// no watchdog) arms nothing.
#[test]
fn watchdog_trigger_is_a_miss_now() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::Always));
    // Not ready yet: a ping arms nothing (the start timeout stays).
    let before = h.timers[id.index()];
    h.event(Event::WatchdogPing { service: id });
    assert_eq!(h.timers[id.index()], before);
    h.event(Event::Ready { service: id });
    let actions = h.event(Event::WatchdogTrigger { service: id });
    assert_eq!(signals(&actions), vec![libc::SIGABRT]);
    assert_eq!(h.state(id), State::Stopping);
}

/// An operator stop of a service waiting for READY=1 signals its process; no restart follows.
#[test]
fn a_stop_before_ready_signals_the_process() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::Always));
    let actions = h.event(Event::Command {
        service: id,
        command: Command::Stop,
    });
    assert_eq!(signals(&actions), vec![libc::SIGTERM]);
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Signal(libc::SIGTERM),
    });
    assert_eq!(h.state(id), State::Stopped);
    // The start timeout went with the stop: nothing fires later.
    assert!(h.advance_to(5000).is_empty());
}

/// A oneshot is `starting` while it runs and `stopped` (done) after exit 0, never restarted
/// even with `restart = "always"`; a failing one follows the policy.
#[test]
fn a_oneshot_is_done_on_a_clean_exit() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Oneshot, Restart::Always));
    assert_eq!(h.state(id), State::Starting);
    h.event(Event::Ready { service: id });
    assert_eq!(
        h.state(id),
        State::Starting,
        "READY=1 does not end a oneshot"
    );
    h.now_ns = 50 * MS;
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Code(0),
    });
    assert_eq!(h.state(id), State::Stopped);
    assert_eq!(
        h.reasons(id).last(),
        Some(&(State::Stopped, Reason::Exited(ExitStatus::Code(0))))
    );
    assert!(h.advance_to(10_000).is_empty());

    let (failing, _) = h.start(policy(Kind::Oneshot, Restart::OnFailure));
    h.event(Event::Exited {
        service: failing,
        status: ExitStatus::Code(2),
    });
    assert_eq!(h.state(failing), State::Backoff);
}

/// A shutdown while a watchdog stop is under way does not restart the service.
#[test]
fn a_shutdown_during_a_watchdog_stop_does_not_restart() {
    let mut h = Harness::new();
    let (id, _) = h.start(policy(Kind::Notify, Restart::Always));
    h.event(Event::Ready { service: id });
    h.advance_to(20);
    assert_eq!(h.state(id), State::Stopping);
    h.event(Event::Shutdown);
    h.event(Event::Exited {
        service: id,
        status: ExitStatus::Signal(libc::SIGABRT),
    });
    assert_eq!(h.state(id), State::Stopped);
    assert!(h.core.shutdown_complete());
}
