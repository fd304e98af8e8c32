//! What the core carries from one orchestrator instance to the next: `Supervisor::carried` on
//! the old core, `Supervisor::resume` on a new one, for each state a service can be in.

use holden::supervise::{
    Action, Backoff, Carried, Command, Event, ExitStatus, MonoTime, Partition, Pid, Reason,
    Refusal, Restart, ServiceId, ServicePolicy, StartLimit, State, Supervisor, TimerToken,
};
use std::time::Duration;

fn policy() -> ServicePolicy {
    ServicePolicy {
        partition: Partition::Local,
        restart: Restart::Always,
        restart_delay: Duration::from_millis(100),
        backoff: Backoff::NONE,
        start_limit: StartLimit {
            burst: 3,
            interval: Duration::from_secs(10),
        },
        stop_signal: libc::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        readiness: holden::supervise::Readiness::SIMPLE,
    }
}

fn at(ms: u64) -> MonoTime {
    MonoTime::from_nanos(ms * 1_000_000)
}

fn drain(core: &mut Supervisor) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

/// Feeds `event` at `ms` and drains the actions.
fn step(core: &mut Supervisor, ms: u64, event: Event) -> Vec<Action> {
    core.handle(at(ms), event).expect("event accepted");
    drain(core)
}

/// An old core with one service started at 0 ms, spawned as pid 700.
fn running() -> (Supervisor, ServiceId) {
    let mut core = Supervisor::new(2);
    let id = core.add(policy()).unwrap();
    step(
        &mut core,
        0,
        Event::Command {
            service: id,
            command: Command::Start,
        },
    );
    step(
        &mut core,
        0,
        Event::Spawned {
            service: id,
            pid: Pid(700),
        },
    );
    (core, id)
}

/// A new core with the same service, resumed with `carried` at `now_ms`.
fn resumed(
    carried: &Carried,
    live: Option<Pid>,
    now_ms: u64,
) -> (Supervisor, ServiceId, Vec<Action>) {
    let mut core = Supervisor::new(2);
    let id = core.add(policy()).unwrap();
    core.resume(at(now_ms), id, carried, live).unwrap();
    let actions = drain(&mut core);
    (core, id, actions)
}

/// The token of the timer armed by `actions`.
fn timer_token(actions: &[Action]) -> TimerToken {
    actions
        .iter()
        .find_map(|a| match a {
            Action::ArmTimer { token, .. } => Some(*token),
            _ => None,
        })
        .expect("a timer armed")
}

fn timer_deadline(actions: &[Action]) -> Option<MonoTime> {
    actions.iter().find_map(|a| match a {
        Action::ArmTimer { deadline, .. } => Some(*deadline),
        _ => None,
    })
}

#[test]
fn a_live_running_process_is_adopted_with_its_counters() {
    let (mut old, id) = running();
    let actions = step(
        &mut old,
        50,
        Event::Exited {
            service: id,
            status: ExitStatus::Code(3),
        },
    );
    // The restart is due at 150 ms; the new process is pid 701.
    step(
        &mut old,
        150,
        Event::TimerFired {
            service: id,
            token: timer_token(&actions),
        },
    );
    step(
        &mut old,
        150,
        Event::Spawned {
            service: id,
            pid: Pid(701),
        },
    );
    let carried = old.carried(id).unwrap();
    assert_eq!(
        (carried.state, carried.pid, carried.restarts),
        (State::Running, Some(Pid(701)), 1)
    );
    assert_eq!(carried.starts(), [at(0), at(150)]);

    let (mut new, id, actions) = resumed(&carried, Some(Pid(701)), 400);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Log(t) if t.to == State::Running && t.reason == Reason::Adopted(Pid(701)))));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SpawnLocal { .. })),
        "{actions:?}"
    );
    let status = new.status(id).unwrap();
    assert_eq!(status.pid, Some(Pid(701)));
    assert_eq!(status.restarts, 1);
    assert_eq!(status.running_since, Some(at(150)));
    assert_eq!(status.last_exit, Some(ExitStatus::Code(3)));
    // The start history came along: two carried starts and one more reach the burst of 3.
    let actions = step(
        &mut new,
        500,
        Event::Exited {
            service: id,
            status: ExitStatus::Code(1),
        },
    );
    step(
        &mut new,
        600,
        Event::TimerFired {
            service: id,
            token: timer_token(&actions),
        },
    );
    step(
        &mut new,
        600,
        Event::Spawned {
            service: id,
            pid: Pid(702),
        },
    );
    let actions = step(
        &mut new,
        650,
        Event::Exited {
            service: id,
            status: ExitStatus::Code(1),
        },
    );
    step(
        &mut new,
        750,
        Event::TimerFired {
            service: id,
            token: timer_token(&actions),
        },
    );
    assert_eq!(new.status(id).unwrap().state, State::Failed);
    assert!(new.status(id).unwrap().start_limit_hit);
}

#[test]
fn a_stopping_process_keeps_its_kill_deadline() {
    let (mut old, id) = running();
    step(
        &mut old,
        100,
        Event::Command {
            service: id,
            command: Command::Restart,
        },
    );
    let carried = old.carried(id).unwrap();
    assert_eq!(
        (carried.state, carried.kill_at),
        (State::Stopping, Some(at(1100)))
    );
    assert!(carried.start_after_stop);

    let (mut new, id, actions) = resumed(&carried, Some(Pid(700)), 300);
    assert_eq!(timer_deadline(&actions), Some(at(1100)));
    assert_eq!(new.status(id).unwrap().state, State::Stopping);
    // Once it has stopped, the restart it was stopping for follows.
    let actions = step(
        &mut new,
        400,
        Event::Exited {
            service: id,
            status: ExitStatus::Signal(15),
        },
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::SpawnLocal { .. })),
        "{actions:?}"
    );
}

#[test]
fn a_recorded_process_that_is_gone_is_an_exit_with_status_unknown() {
    let (old, id) = running();
    let carried = old.carried(id).unwrap();
    let (new, id, actions) = resumed(&carried, None, 300);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Log(t) if t.reason == Reason::Exited(ExitStatus::Unknown) && t.to == State::Backoff)));
    let status = new.status(id).unwrap();
    assert_eq!((status.state, status.pid), (State::Backoff, None));
    assert_eq!(status.last_exit, Some(ExitStatus::Unknown));
}

#[test]
fn backoff_keeps_its_deadline_and_stopped_and_failed_stay() {
    let (mut old, id) = running();
    step(
        &mut old,
        50,
        Event::Exited {
            service: id,
            status: ExitStatus::Code(3),
        },
    );
    let carried = old.carried(id).unwrap();
    assert_eq!(
        (carried.state, carried.next_restart),
        (State::Backoff, Some(at(150)))
    );
    let (new, id, actions) = resumed(&carried, None, 100);
    assert_eq!(timer_deadline(&actions), Some(at(150)));
    assert_eq!(new.status(id).unwrap().state, State::Backoff);

    let mut failed = Carried {
        state: State::Failed,
        start_limit_hit: true,
        ..Carried::STOPPED
    };
    let (new, id, actions) = resumed(&failed, None, 100);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::SpawnLocal { .. })));
    let status = new.status(id).unwrap();
    assert_eq!(
        (status.state, status.start_limit_hit),
        (State::Failed, true)
    );
    failed.state = State::Stopped;
    let (new, id, _) = resumed(&failed, None, 100);
    let status = new.status(id).unwrap();
    assert_eq!(
        (status.state, status.start_limit_hit),
        (State::Stopped, false)
    );
}

#[test]
fn only_a_fresh_service_is_resumed() {
    let (mut core, id) = running();
    let carried = core.carried(id).unwrap();
    assert_eq!(
        core.resume(at(10), id, &carried, Some(Pid(700))),
        Err(Refusal::NotFresh(id))
    );
}
