//! Focused tests of each policy rule of the supervision core, one scenario each.

use holden::supervise::{
    Action, Backoff, Command, Event, ExitStatus, MonoTime, Partition, Pid, Reason, Refusal,
    Restart, ServiceId, ServicePolicy, StartFailure, StartLimit, StartStage, State, Supervisor,
    TimerToken,
};
use std::time::Duration;

const MS: u64 = 1_000_000;

fn policy(restart: Restart) -> ServicePolicy {
    ServicePolicy {
        partition: Partition::Local,
        restart,
        restart_delay: Duration::from_millis(100),
        backoff: Backoff::NONE,
        start_limit: StartLimit::NONE,
        stop_signal: libc::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        readiness: holden::supervise::Readiness::SIMPLE,
    }
}

/// A supervisor plus the clock and the actions of the last step.
struct Harness {
    core: Supervisor,
    now_ns: u64,
    next_pid: i32,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            core: Supervisor::new(4),
            now_ns: 0,
            next_pid: 1000,
        }
    }

    fn at(&mut self, now_ms: u64) -> &mut Harness {
        assert!(now_ms * MS >= self.now_ns, "time goes forward");
        self.now_ns = now_ms * MS;
        self
    }

    fn now(&self) -> MonoTime {
        MonoTime::from_nanos(self.now_ns)
    }

    fn event(&mut self, event: Event) -> Vec<Action> {
        self.core.handle(self.now(), event).expect("event accepted");
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn command(&mut self, service: ServiceId, command: Command) -> Vec<Action> {
        self.event(Event::Command { service, command })
    }

    fn spawned(&mut self, service: ServiceId) -> (Pid, Vec<Action>) {
        self.next_pid += 1;
        let pid = Pid(self.next_pid);
        (pid, self.event(Event::Spawned { service, pid }))
    }

    fn exited(&mut self, service: ServiceId, status: ExitStatus) -> Vec<Action> {
        self.event(Event::Exited { service, status })
    }

    fn state(&self, service: ServiceId) -> State {
        self.core.status(service).expect("service exists").state
    }

    /// Adds and starts a local service, reports it spawned; returns its id and pid.
    fn running(&mut self, policy: ServicePolicy) -> (ServiceId, Pid) {
        let id = self.core.add(policy).expect("slot free");
        let actions = self.command(id, Command::Start);
        assert!(
            actions.contains(&Action::SpawnLocal { service: id }),
            "{actions:?}"
        );
        let (pid, _) = self.spawned(id);
        assert_eq!(self.state(id), State::Running);
        (id, pid)
    }
}

fn timer_of(actions: &[Action]) -> (MonoTime, TimerToken) {
    actions
        .iter()
        .find_map(|action| match action {
            Action::ArmTimer {
                deadline, token, ..
            } => Some((*deadline, *token)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no timer armed in {actions:?}"))
}

fn spawns(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::SpawnLocal { .. } | Action::SpawnAgent { .. }))
        .count()
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

#[test]
fn always_restarts_a_clean_exit_after_the_restart_delay() {
    let mut h = Harness::new();
    let (id, pid) = h.running(policy(Restart::Always));
    let actions = h.at(50).exited(id, ExitStatus::Code(0));
    assert!(actions.contains(&Action::Release { service: id, pid }));
    assert_eq!(h.state(id), State::Backoff);
    let (deadline, token) = timer_of(&actions);
    assert_eq!(deadline, MonoTime::from_nanos(150 * MS));
    assert_eq!(h.core.status(id).unwrap().next_restart, Some(deadline));
    assert_eq!(
        h.core.status(id).unwrap().last_exit,
        Some(ExitStatus::Code(0))
    );
    let actions = h.at(150).event(Event::TimerFired { service: id, token });
    assert_eq!(spawns(&actions), 1);
    assert_eq!(h.state(id), State::Starting);
    assert_eq!(h.core.status(id).unwrap().restarts, 1);
}

#[test]
fn on_failure_restarts_failures_and_unknown_status_but_not_clean_exits() {
    for (status, restarted) in [
        (ExitStatus::Code(0), false),
        (ExitStatus::Code(3), true),
        (ExitStatus::Signal(libc::SIGSEGV), true),
        (ExitStatus::Unknown, true),
    ] {
        let mut h = Harness::new();
        let (id, _) = h.running(policy(Restart::OnFailure));
        h.at(10).exited(id, status);
        let expected = if restarted {
            State::Backoff
        } else {
            State::Stopped
        };
        assert_eq!(h.state(id), expected, "{status:?}");
    }
}

#[test]
fn never_ends_in_stopped_or_failed() {
    let mut h = Harness::new();
    let (clean, _) = h.running(policy(Restart::Never));
    let (crash, _) = h.running(policy(Restart::Never));
    h.exited(clean, ExitStatus::Code(0));
    h.exited(crash, ExitStatus::Code(1));
    assert_eq!(h.state(clean), State::Stopped);
    assert_eq!(h.state(crash), State::Failed);
    // A failed spawn is a failure too.
    let id = h.core.add(policy(Restart::Never)).unwrap();
    h.command(id, Command::Start);
    let error = StartFailure {
        errno: libc::ENOENT,
        stage: StartStage::Exec,
    };
    let actions = h.event(Event::SpawnFailed { service: id, error });
    assert_eq!(h.state(id), State::Failed);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Log(t) if t.reason == Reason::SpawnFailed(error))));
}

#[test]
fn backoff_grows_to_its_cap_and_resets_after_a_stable_run() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::ZERO;
    p.backoff = Backoff {
        initial: Duration::from_millis(100),
        factor_milli: 2000,
        max: Duration::from_millis(500),
        reset_after: Duration::from_secs(10),
    };
    let mut h = Harness::new();
    let (id, _) = h.running(p);
    let mut delays_ms = Vec::new();
    let mut now_ms = 0;
    for _ in 0..6 {
        now_ms += 1; // crashes after 1 ms: not stable
        let actions = h.at(now_ms).exited(id, ExitStatus::Code(1));
        let (deadline, token) = timer_of(&actions);
        delays_ms.push(deadline.as_nanos() / MS - now_ms);
        now_ms = deadline.as_nanos() / MS;
        h.at(now_ms).event(Event::TimerFired { service: id, token });
        h.spawned(id);
    }
    assert_eq!(delays_ms, [100, 200, 400, 500, 500, 500]);
    // Up for 10 s: the next crash starts from the initial delay again.
    now_ms += 10_000;
    let actions = h.at(now_ms).exited(id, ExitStatus::Code(1));
    let (deadline, _) = timer_of(&actions);
    assert_eq!(deadline.as_nanos() / MS - now_ms, 100);
}

#[test]
fn zero_delay_restarts_at_once_without_a_timer() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::ZERO;
    let mut h = Harness::new();
    let (id, _) = h.running(p);
    let actions = h.at(1).exited(id, ExitStatus::Code(1));
    assert_eq!(spawns(&actions), 1);
    assert!(!actions.iter().any(|a| matches!(a, Action::ArmTimer { .. })));
    assert_eq!(h.state(id), State::Starting);
}

#[test]
fn a_failed_spawn_is_retried_through_a_timer_even_with_zero_delay() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::ZERO;
    let mut h = Harness::new();
    let id = h.core.add(p).unwrap();
    h.command(id, Command::Start);
    let error = StartFailure {
        errno: libc::ENOENT,
        stage: StartStage::Exec,
    };
    let actions = h.at(5).event(Event::SpawnFailed { service: id, error });
    assert_eq!(spawns(&actions), 0, "no retry inside the same step");
    let (deadline, token) = timer_of(&actions);
    let floor_ns = holden::supervise::SPAWN_FAILED_DELAY_MIN.as_nanos() as u64;
    assert_eq!(deadline, MonoTime::from_nanos(5_000_000 + floor_ns));
    assert_eq!(h.state(id), State::Backoff);
    // The status says why it backs off, until a start succeeds.
    let status = h.core.status(id).unwrap();
    assert_eq!(status.last_spawn_error, Some(error));
    assert!(!status.start_limit_hit);
    let actions = h.at(15).event(Event::TimerFired { service: id, token });
    assert_eq!(spawns(&actions), 1);
    assert_eq!(h.core.status(id).unwrap().last_spawn_error, Some(error));
    h.spawned(id);
    assert_eq!(h.core.status(id).unwrap().last_spawn_error, None);
}

#[test]
fn start_limit_sends_the_service_to_failed_until_asked() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::ZERO;
    p.start_limit = StartLimit {
        burst: 3,
        interval: Duration::from_secs(10),
    };
    let mut h = Harness::new();
    let (id, _) = h.running(p); // start 1 at 0 ms
    h.at(1).exited(id, ExitStatus::Code(1)); // start 2
    h.spawned(id);
    h.at(2).exited(id, ExitStatus::Code(1)); // start 3
    h.spawned(id);
    let actions = h.at(3).exited(id, ExitStatus::Code(1)); // a 4th within 10 s: refused
    assert_eq!(spawns(&actions), 0);
    assert_eq!(h.state(id), State::Failed);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Log(t) if t.reason == Reason::StartLimit)));
    assert!(h.core.status(id).unwrap().start_limit_hit);
    // It stays failed: nothing is armed, a stop does not change it.
    h.command(id, Command::Stop);
    assert_eq!(h.state(id), State::Failed);
    assert!(
        h.core.status(id).unwrap().start_limit_hit,
        "still the cause"
    );
    // reset-failed: stopped; start: runs again with a fresh history.
    h.command(id, Command::ResetFailed);
    assert_eq!(h.state(id), State::Stopped);
    assert!(!h.core.status(id).unwrap().start_limit_hit);
    let actions = h.at(4).command(id, Command::Start);
    assert_eq!(spawns(&actions), 1);
}

#[test]
fn start_limit_window_slides() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::from_secs(4);
    p.start_limit = StartLimit {
        burst: 2,
        interval: Duration::from_secs(10),
    };
    let mut h = Harness::new();
    let (id, _) = h.running(p); // start at 0 s
    let mut now_ms = 0;
    // Each run crashes after 2 s, the delay is 4 s: starts at 0, 6, 12, 18 s: never two
    // others within 10 s before a start, so it never fails.
    for _ in 0..5 {
        now_ms += 2_000;
        let actions = h.at(now_ms).exited(id, ExitStatus::Code(1));
        let (deadline, token) = timer_of(&actions);
        now_ms = deadline.as_nanos() / MS;
        let actions = h.at(now_ms).event(Event::TimerFired { service: id, token });
        assert_eq!(spawns(&actions), 1, "at {now_ms} ms");
        h.spawned(id);
    }
    // Crashing at once now: the start at 34 s is the second within 10 s (allowed); one at
    // 38 s would be the third (30, 34, 38).
    now_ms += 1;
    let (_, token) = timer_of(&h.at(now_ms).exited(id, ExitStatus::Code(1)));
    now_ms += 4_000;
    let actions = h.at(now_ms).event(Event::TimerFired { service: id, token });
    assert_eq!(spawns(&actions), 1);
    h.spawned(id);
    now_ms += 1;
    let (_, token) = timer_of(&h.at(now_ms).exited(id, ExitStatus::Code(1)));
    now_ms += 4_000;
    let actions = h.at(now_ms).event(Event::TimerFired { service: id, token });
    assert_eq!(spawns(&actions), 0);
    assert_eq!(h.state(id), State::Failed);
}

#[test]
fn stop_sends_the_stop_signal_then_sigkill_after_the_timeout() {
    let mut p = policy(Restart::Always);
    p.stop_signal = libc::SIGINT;
    let mut h = Harness::new();
    let (id, pid) = h.running(p);
    let actions = h.at(10).command(id, Command::Stop);
    assert_eq!(signals(&actions), [libc::SIGINT]);
    assert!(actions.contains(&Action::Signal {
        service: id,
        pid,
        signal: libc::SIGINT
    }));
    assert_eq!(h.state(id), State::Stopping);
    let (deadline, token) = timer_of(&actions);
    assert_eq!(deadline, MonoTime::from_nanos(1010 * MS));
    let actions = h.at(1010).event(Event::TimerFired { service: id, token });
    assert_eq!(signals(&actions), [libc::SIGKILL]);
    let actions = h.at(1011).exited(id, ExitStatus::Signal(libc::SIGKILL));
    assert!(actions.contains(&Action::Release { service: id, pid }));
    assert_eq!(
        h.state(id),
        State::Stopped,
        "no restart after a stop, even with restart=always"
    );
    assert_eq!(spawns(&actions), 0);
}

#[test]
fn stop_during_a_spawn_stops_the_process_when_it_arrives() {
    let mut h = Harness::new();
    let id = h.core.add(policy(Restart::Always)).unwrap();
    h.command(id, Command::Start);
    let actions = h.command(id, Command::Stop);
    assert!(signals(&actions).is_empty(), "no process to signal yet");
    assert_eq!(h.state(id), State::Stopping);
    let (pid, actions) = h.spawned(id);
    assert!(actions.contains(&Action::Signal {
        service: id,
        pid,
        signal: libc::SIGTERM
    }));
    h.exited(id, ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(h.state(id), State::Stopped);
    // And when the spawn fails instead, the service is simply stopped.
    h.command(id, Command::Start);
    h.command(id, Command::Stop);
    let error = StartFailure {
        errno: libc::EACCES,
        stage: StartStage::Exec,
    };
    let actions = h.event(Event::SpawnFailed { service: id, error });
    assert_eq!(h.state(id), State::Stopped);
    assert_eq!(spawns(&actions), 0);
}

#[test]
fn stale_timer_tokens_are_ignored() {
    let mut h = Harness::new();
    let (id, _) = h.running(policy(Restart::Always));
    let (_, token) = timer_of(&h.at(5).exited(id, ExitStatus::Code(1)));
    let actions = h.command(id, Command::Stop);
    assert!(actions.contains(&Action::CancelTimer { service: id }));
    assert_eq!(h.state(id), State::Stopped);
    let actions = h.at(500).event(Event::TimerFired { service: id, token });
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(h.state(id), State::Stopped);
}

#[test]
fn restart_command_stops_then_starts_with_fresh_counters() {
    let mut p = policy(Restart::Always);
    p.restart_delay = Duration::ZERO;
    let mut h = Harness::new();
    let (id, _) = h.running(p);
    h.at(1).exited(id, ExitStatus::Code(1));
    let (pid, _) = h.spawned(id);
    assert_eq!(h.core.status(id).unwrap().restarts, 1);
    let actions = h.at(2).command(id, Command::Restart);
    assert_eq!(signals(&actions), [libc::SIGTERM]);
    let actions = h.at(3).exited(id, ExitStatus::Signal(libc::SIGTERM));
    assert!(actions.contains(&Action::Release { service: id, pid }));
    assert_eq!(spawns(&actions), 1);
    assert_eq!(h.state(id), State::Starting);
    assert_eq!(h.core.status(id).unwrap().restarts, 0);
    // A stop while restarting wins.
    h.spawned(id);
    h.command(id, Command::Restart);
    h.command(id, Command::Stop);
    let actions = h.exited(id, ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(spawns(&actions), 0);
    assert_eq!(h.state(id), State::Stopped);
}

#[test]
fn kill_signals_the_process_and_the_policy_decides_what_follows() {
    let mut h = Harness::new();
    let (id, pid) = h.running(policy(Restart::OnFailure));
    let actions = h.command(id, Command::Kill(libc::SIGUSR1));
    assert_eq!(
        actions,
        [Action::Signal {
            service: id,
            pid,
            signal: libc::SIGUSR1
        }]
    );
    h.exited(id, ExitStatus::Signal(libc::SIGUSR1));
    assert_eq!(h.state(id), State::Backoff);
    let refused = h.core.handle(
        h.now(),
        Event::Command {
            service: id,
            command: Command::Kill(libc::SIGTERM),
        },
    );
    assert_eq!(refused, Err(Refusal::NoProcess(id)));
}

#[test]
fn qm_services_wait_for_the_agent_and_survive_its_loss() {
    let mut p = policy(Restart::Always);
    p.partition = Partition::Qm;
    let mut h = Harness::new();
    let a = h.core.add(p).unwrap();
    let b = h.core.add(p).unwrap();
    h.command(a, Command::Start);
    h.command(b, Command::Start);
    assert_eq!(h.state(a), State::WaitingForAgent);
    let actions = h.event(Event::AgentUp);
    assert!(actions.contains(&Action::SpawnAgent { service: a }));
    assert!(actions.contains(&Action::SpawnAgent { service: b }));
    h.spawned(a);
    // The agent goes down: the running QM process stays running; the spawn in flight fails.
    h.event(Event::AgentDown);
    let error = StartFailure {
        errno: libc::ECONNRESET,
        stage: StartStage::Agent,
    };
    let actions = h.event(Event::SpawnFailed { service: b, error });
    assert_eq!(h.state(a), State::Running);
    assert_eq!(h.state(b), State::Backoff);
    let (deadline, token) = timer_of(&actions);
    h.at(deadline.as_nanos() / MS)
        .event(Event::TimerFired { service: b, token });
    assert_eq!(h.state(b), State::WaitingForAgent);
    let actions = h.event(Event::AgentUp);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::SpawnAgent { .. }))
            .count(),
        1
    );
    assert_eq!(h.state(b), State::Starting);
}

#[test]
fn an_agent_stage_failure_marks_the_agent_down() {
    let mut p = policy(Restart::Always);
    p.partition = Partition::Qm;
    p.restart_delay = Duration::ZERO;
    let mut h = Harness::new();
    let id = h.core.add(p).unwrap();
    h.event(Event::AgentUp);
    h.command(id, Command::Start);
    let error = StartFailure {
        errno: libc::ETIMEDOUT,
        stage: StartStage::Agent,
    };
    let actions = h.event(Event::SpawnFailed { service: id, error });
    assert_eq!(spawns(&actions), 0, "no second request to a dead agent");
    assert_eq!(h.state(id), State::WaitingForAgent);
    assert!(!h.core.agent_up());
}

#[test]
fn shutdown_stops_everything_and_a_second_one_kills() {
    let mut h = Harness::new();
    let (a, pa) = h.running(policy(Restart::Always));
    let (b, pb) = h.running(policy(Restart::Always));
    let c = h.core.add(policy(Restart::Always)).unwrap();
    h.command(c, Command::Start); // spawn in flight
    let (_, token) = timer_of(&h.at(1).exited(b, ExitStatus::Code(1))); // b in backoff
    let _ = pb;
    let actions = h.at(2).event(Event::Shutdown);
    assert_eq!(signals(&actions), [libc::SIGTERM]);
    assert_eq!(h.state(b), State::Stopped);
    assert_eq!(h.state(c), State::Stopping);
    assert!(!actions.contains(&Action::ShutdownComplete));
    let refused = h.core.handle(
        h.now(),
        Event::Command {
            service: b,
            command: Command::Start,
        },
    );
    assert_eq!(refused, Err(Refusal::ShuttingDown));
    assert!(
        h.event(Event::TimerFired { service: b, token }).is_empty(),
        "cancelled restart"
    );
    // Second request: SIGKILL at once, also to the process still being spawned.
    let actions = h.at(3).event(Event::Shutdown);
    assert_eq!(
        actions
            .iter()
            .filter(|x| **x
                == Action::Signal {
                    service: a,
                    pid: pa,
                    signal: libc::SIGKILL
                })
            .count(),
        1
    );
    let (_, actions) = h.spawned(c);
    assert_eq!(signals(&actions), [libc::SIGKILL]);
    let actions = h.exited(a, ExitStatus::Signal(libc::SIGKILL));
    assert!(!actions.contains(&Action::ShutdownComplete));
    let actions = h.exited(c, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(
        actions
            .iter()
            .filter(|x| **x == Action::ShutdownComplete)
            .count(),
        1
    );
    assert!(h.core.services().all(|id| h.state(id) == State::Stopped));
}

#[test]
fn shutdown_with_nothing_running_completes_at_once() {
    let mut h = Harness::new();
    h.core.add(policy(Restart::Always)).unwrap();
    assert_eq!(
        h.event(Event::Shutdown).last(),
        Some(&Action::ShutdownComplete)
    );
}

#[test]
fn remove_stops_a_running_service_then_frees_its_slot() {
    let mut h = Harness::new();
    let (id, pid) = h.running(policy(Restart::Always));
    h.core.remove(h.now(), id).unwrap();
    let actions = h.drain();
    assert!(actions.contains(&Action::Signal {
        service: id,
        pid,
        signal: libc::SIGTERM
    }));
    let refused = h.core.handle(
        h.now(),
        Event::Command {
            service: id,
            command: Command::Start,
        },
    );
    assert_eq!(refused, Err(Refusal::Removing(id)));
    let actions = h.exited(id, ExitStatus::Signal(libc::SIGTERM));
    assert!(actions.contains(&Action::Removed { service: id }));
    assert!(h.core.status(id).is_none());
    assert_eq!(
        h.core.add(policy(Restart::Never)),
        Ok(id),
        "the slot is reused"
    );
}

#[test]
fn replace_restarts_a_running_service_under_the_new_policy() {
    let mut h = Harness::new();
    let (id, _) = h.running(policy(Restart::Always));
    assert_eq!(
        h.core.replace(h.now(), id, policy(Restart::Always)),
        Ok(false)
    );
    assert!(h.drain().is_empty());
    let mut new = policy(Restart::Never);
    new.stop_timeout = Duration::from_millis(5);
    assert_eq!(h.core.replace(h.now(), id, new), Ok(true));
    let actions = h.drain();
    assert_eq!(signals(&actions), [libc::SIGTERM]);
    let actions = h.exited(id, ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(spawns(&actions), 1);
    assert_eq!(h.core.policy(id), Some(new));
    // An idle service just takes the new policy.
    let idle = h.core.add(policy(Restart::Always)).unwrap();
    assert_eq!(h.core.replace(h.now(), idle, new), Ok(true));
    assert!(h.drain().is_empty());
    assert_eq!(h.core.policy(idle), Some(new));
}

#[test]
fn contract_violations_are_refused_not_panicked() {
    let mut h = Harness::new();
    let id = h.core.add(policy(Restart::Always)).unwrap();
    let now = h.now();
    assert_eq!(
        h.core.handle(
            now,
            Event::Spawned {
                service: id,
                pid: Pid(1)
            }
        ),
        Err(Refusal::NoSpawnInFlight(id))
    );
    assert_eq!(
        h.core.handle(
            now,
            Event::Exited {
                service: id,
                status: ExitStatus::Unknown
            }
        ),
        Err(Refusal::NoProcess(id))
    );
    let ghost = ServiceId(3);
    assert_eq!(
        h.core.handle(
            now,
            Event::Command {
                service: ghost,
                command: Command::Start
            }
        ),
        Err(Refusal::UnknownService(ghost))
    );
    assert_eq!(
        h.core.handle(
            now,
            Event::Command {
                service: ServiceId(99),
                command: Command::Start
            }
        ),
        Err(Refusal::UnknownService(ServiceId(99)))
    );
    // Actions not drained: the next event is refused until they are.
    h.core
        .handle(
            now,
            Event::Command {
                service: id,
                command: Command::Start,
            },
        )
        .unwrap();
    assert_eq!(
        h.core.handle(now, Event::AgentUp),
        Err(Refusal::ActionsPending)
    );
    h.drain();
    assert_eq!(h.core.handle(now, Event::AgentUp), Ok(()));
    // Capacity and policy bounds.
    for _ in 0..3 {
        h.core.add(policy(Restart::Never)).unwrap();
    }
    assert_eq!(h.core.add(policy(Restart::Never)), Err(Refusal::Full));
    let mut too_bursty = policy(Restart::Never);
    too_bursty.start_limit = StartLimit {
        burst: 17,
        interval: Duration::from_secs(1),
    };
    assert_eq!(
        h.core.replace(now, id, too_bursty),
        Err(Refusal::InvalidPolicy)
    );
}
