//! Measurement (ignored by default): restart rate of a crash-looping local service
//! (`/bin/true`, restart delay 0, no backoff, no start limit) through the real event loop,
//! against the physical floor measured in the same run: a bare loop of race-free spawn,
//! `poll` on the pidfd, `waitid(P_PIDFD)`.
//!
//! ```text
//! cargo test --release -p holden --test orchestrator_restart_rate -- --ignored --nocapture
//! ```
//! `HOLDEN_BENCH_SECONDS` sets the time spent on each side (default 10), in 5 alternating rounds.

use holden::orchestrator::{Options, Orchestrator, ServiceDef, Settings};
use holden::spawn::{spawn, SpawnSpec};
use holden::supervise::{Backoff, Partition, Restart, ServicePolicy, StartLimit};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn seconds() -> Duration {
    let s = std::env::var("HOLDEN_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(s)
}

/// The floor: spawn, wait for the pidfd to poll readable, reap; nothing else.
fn bare_loop(duration: Duration) -> f64 {
    let spec = SpawnSpec::new(&["/bin/true"], &[] as &[&str], None).unwrap();
    let start = Instant::now();
    let mut cycles = 0u64;
    while start.elapsed() < duration {
        let child = spawn(&spec).expect("spawn /bin/true");
        let mut pfd = libc::pollfd {
            fd: child.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        while unsafe { libc::poll(&mut pfd, 1, -1) } != 1 {}
        holden::pidfd::wait_child(child.pidfd.as_fd())
            .unwrap()
            .expect("exited");
        cycles += 1;
    }
    cycles as f64 / start.elapsed().as_secs_f64()
}

fn orchestrator_loop(duration: Duration) -> f64 {
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut settings = Settings::new("/nonexistent/holden-bench.sock".into());
    settings.slots = 4;
    let def = ServiceDef {
        name: "true".into(),
        argv: vec![b"/bin/true".to_vec()],
        env: vec![],
        inherit_env: false,
        cwd: None,
        uid: None,
        gid: None,
        policy: ServicePolicy {
            partition: Partition::Local,
            restart: Restart::Always,
            restart_delay: Duration::ZERO,
            backoff: Backoff::NONE,
            start_limit: StartLimit::NONE,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(5),
        },
        start_at_boot: true,
    };
    let options = Options {
        log_fd: devnull.as_raw_fd(),
        signals: false,
        notify: false,
    };
    let mut orch = Orchestrator::new(settings, vec![def], options).unwrap();
    let shutdown = orch.shutdown_handle();
    let counters = orch.counters();
    let runner = std::thread::spawn(move || orch.run().map_err(|e| e.to_string()));
    std::thread::sleep(Duration::from_millis(200));
    let (start, first) = (
        Instant::now(),
        counters.spawned_local.load(Ordering::Relaxed),
    );
    std::thread::sleep(duration);
    let cycles = counters.spawned_local.load(Ordering::Relaxed) - first;
    let rate = cycles as f64 / start.elapsed().as_secs_f64();
    shutdown.request();
    assert_eq!(runner.join().unwrap(), Ok(()));
    rate
}

/// Rounds of alternating halves, so that load from other processes on the machine hits both
/// sides alike.
const ROUNDS: u32 = 5;

#[test]
#[ignore = "measurement: run with --ignored --nocapture (takes 2 x HOLDEN_BENCH_SECONDS)"]
fn restart_rate_against_the_bare_spawn_loop() {
    let half = seconds() / ROUNDS;
    let (mut bare, mut orch) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        bare += bare_loop(half) / ROUNDS as f64;
        orch += orchestrator_loop(half) / ROUNDS as f64;
    }
    println!(
        "restart rate over {} s each, {ROUNDS} alternating rounds: bare spawn+pidfd-poll+waitid loop {bare:.0}/s, holden-orchestrator event loop {orch:.0}/s, ratio {:.2}",
        seconds().as_secs(),
        orch / bare
    );
    assert!(orch > 0.0 && bare > 0.0);
}
