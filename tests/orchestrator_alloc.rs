//! Zero heap allocations after start-up: the real event loop, in this process, under a
//! counting global allocator, through at least 10,000 restart cycles of a local crash-looping
//! service and QM crash-looping services through a real holden-agent.
//!
//! While the loop runs, this test's main thread only sleeps and reads atomics, so every
//! allocation counted during the measured window is the loop's.

mod orchestrator_support;

use holden::orchestrator::{Options, Orchestrator, ServiceDef, Settings};
use holden::supervise::{Backoff, Partition, Restart, ServicePolicy, StartLimit};
use orchestrator_support::{Qm, TempDir};
use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn crash_loop(name: &str, partition: Partition) -> ServiceDef {
    ServiceDef {
        name: name.to_string(),
        argv: vec![b"/bin/true".to_vec()],
        env: vec![],
        inherit_env: false,
        cwd: None,
        uid: None,
        gid: None,
        policy: ServicePolicy {
            partition,
            restart: Restart::Always,
            restart_delay: Duration::ZERO,
            backoff: Backoff::NONE,
            start_limit: StartLimit::NONE,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(5),
        },
        start_at_boot: true,
    }
}

/// Sleeps until `done()` (no allocation: no formatting, no collections).
fn wait(deadline_s: u64, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(deadline_s) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn the_event_loop_allocates_nothing_after_start_up() {
    const WARM_UP_CYCLES: u64 = 300;
    const MEASURED_LOCAL_CYCLES: u64 = 10_000;
    const MEASURED_QM_CYCLES: u64 = 1_000;

    let dir = TempDir::new("alloc");
    let qm = Qm::start(&dir, "");
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut settings = Settings::new(qm.socket.clone());
    settings.slots = 8;
    let defs = vec![
        crash_loop("local-true", Partition::Local),
        crash_loop("qm-true-a", Partition::Qm),
        crash_loop("qm-true-b", Partition::Qm),
    ];
    let options = Options {
        log_fd: devnull.as_raw_fd(),
        signals: false,
        notify: false,
    };
    let mut orch = Orchestrator::new(settings, defs, options).expect("orchestrator");
    let shutdown = orch.shutdown_handle();
    let counters = orch.counters();
    let runner = std::thread::spawn(move || orch.run().map_err(|e| e.to_string()));

    let local = || counters.spawned_local.load(Ordering::Relaxed);
    let qm_spawns = || counters.spawned_qm.load(Ordering::Relaxed);
    assert!(
        wait(60, || local() >= WARM_UP_CYCLES
            && qm_spawns() >= WARM_UP_CYCLES),
        "warm-up did not finish"
    );

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the counting allocator counts (start-up allocates)"
    );
    let local_start = local();
    let qm_start = qm_spawns();
    let finished = wait(300, || {
        local() >= local_start + MEASURED_LOCAL_CYCLES
            && qm_spawns() >= qm_start + MEASURED_QM_CYCLES
    });
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    let (local_cycles, qm_cycles) = (local() - local_start, qm_spawns() - qm_start);

    shutdown.request();
    let result = runner.join().expect("loop thread");
    assert!(finished, "cycles: local {local_cycles}, qm {qm_cycles}");
    assert_eq!(result, Ok(()));
    assert_eq!(
        after - before,
        0,
        "heap allocations during {local_cycles} local and {qm_cycles} QM restart cycles"
    );
    assert!(
        counters.agent_dropped.load(Ordering::Relaxed) == 0,
        "the agent connection stayed up"
    );
    drop(qm);
}
