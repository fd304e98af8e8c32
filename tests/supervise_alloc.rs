//! The supervision core allocates nothing after `Supervisor::new`: a counting allocator
//! watches 10,000 crash/restart cycles of local and QM services, stops, an agent flap and a
//! shutdown.

use holden::supervise::{
    Action, Backoff, Command, Event, ExitStatus, MonoTime, Partition, Pid, Restart, ServiceId,
    ServicePolicy, StartFailure, StartLimit, StartStage, Supervisor,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only this test's thread is counted (the harness allocates on its own threads).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CYCLES: u64 = 10_000;
const SERVICES: usize = 8;

/// Drains the actions into a fixed array; returns how many there were.
fn drain(core: &mut Supervisor, into: &mut [Option<Action>; 64]) -> usize {
    let mut count = 0;
    while let Some(action) = core.poll_action() {
        into[count] = Some(action);
        count += 1;
    }
    count
}

/// What the tiny event loop owes the core.
struct World {
    spawns_due: [bool; SERVICES],
    timers: [Option<(u64, holden::supervise::TimerToken)>; SERVICES],
    spawns: u64,
}

impl World {
    fn apply(&mut self, actions: &[Option<Action>]) {
        for action in actions.iter().flatten() {
            match *action {
                Action::SpawnLocal { service } | Action::SpawnAgent { service } => {
                    self.spawns_due[service.index()] = true;
                    self.spawns += 1;
                }
                Action::ArmTimer {
                    service,
                    deadline,
                    token,
                } => {
                    self.timers[service.index()] = Some((deadline.as_nanos(), token));
                }
                Action::CancelTimer { service } => self.timers[service.index()] = None,
                _ => {}
            }
        }
    }
}

#[test]
fn no_allocation_after_construction() {
    let mut core = Supervisor::new(SERVICES);
    let mut ids = [ServiceId(0); SERVICES];
    for (index, id) in ids.iter_mut().enumerate() {
        let partition = if index % 2 == 0 {
            Partition::Local
        } else {
            Partition::Qm
        };
        *id = core
            .add(ServicePolicy {
                partition,
                restart: Restart::Always,
                restart_delay: Duration::from_millis(index as u64),
                backoff: Backoff {
                    initial: Duration::from_millis(1),
                    factor_milli: 1500,
                    max: Duration::from_millis(50),
                    reset_after: Duration::from_millis(20),
                },
                start_limit: StartLimit {
                    burst: 16,
                    interval: Duration::from_millis(1),
                },
                stop_signal: libc::SIGTERM,
                stop_timeout: Duration::from_millis(5),
                readiness: holden::supervise::Readiness::SIMPLE,
            })
            .unwrap();
    }
    let mut buffer: [Option<Action>; 64] = [None; 64];
    let mut now_ns: u64 = 0;
    let mut pid = 1;
    let mut world = World {
        spawns_due: [false; SERVICES],
        timers: [None; SERVICES],
        spawns: 0,
    };
    let mut live = [false; SERVICES];

    COUNTING.with(|c| c.set(true));
    // The counter works: a box counts once.
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(
        ALLOCATIONS.swap(0, Ordering::Relaxed),
        1,
        "the counting allocator counts"
    );
    core.handle(MonoTime::from_nanos(now_ns), Event::AgentUp)
        .unwrap();
    let count = drain(&mut core, &mut buffer);
    world.apply(&buffer[..count]);
    for id in ids {
        core.handle(
            MonoTime::from_nanos(now_ns),
            Event::Command {
                service: id,
                command: Command::Start,
            },
        )
        .unwrap();
        let count = drain(&mut core, &mut buffer);
        world.apply(&buffer[..count]);
    }
    // A tiny event loop: answer spawns at once, crash every process after 1 ms, fire timers
    // at their deadlines.
    for cycle in 0..CYCLES {
        now_ns += 1_000_000;
        let now = MonoTime::from_nanos(now_ns);
        let service = ids[(cycle % SERVICES as u64) as usize];
        let slot = service.index();
        let event = if world.spawns_due[slot] {
            world.spawns_due[slot] = false;
            if cycle % 7 == 0 {
                Event::SpawnFailed {
                    service,
                    error: StartFailure {
                        errno: libc::ENOENT,
                        stage: StartStage::Exec,
                    },
                }
            } else {
                pid += 1;
                live[slot] = true;
                Event::Spawned {
                    service,
                    pid: Pid(pid),
                }
            }
        } else if live[slot] {
            live[slot] = false;
            Event::Exited {
                service,
                status: ExitStatus::Code(1),
            }
        } else if let Some((deadline, token)) = world.timers[slot] {
            now_ns = now_ns.max(deadline);
            world.timers[slot] = None;
            Event::TimerFired { service, token }
        } else if cycle % 1000 == 3 {
            Event::AgentDown
        } else if cycle % 1000 == 5 {
            Event::AgentUp
        } else {
            Event::Command {
                service,
                command: Command::Start,
            }
        };
        core.handle(MonoTime::from_nanos(now_ns.max(now.as_nanos())), event)
            .unwrap();
        let count = drain(&mut core, &mut buffer);
        world.apply(&buffer[..count]);
    }
    core.handle(MonoTime::from_nanos(now_ns), Event::Shutdown)
        .unwrap();
    drain(&mut core, &mut buffer);
    core.handle(MonoTime::from_nanos(now_ns), Event::Shutdown)
        .unwrap();
    drain(&mut core, &mut buffer);
    COUNTING.with(|c| c.set(false));

    assert!(
        world.spawns > 2_000,
        "the loop spawned only {} times",
        world.spawns
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "the core allocated after construction"
    );
}
