//! Zero heap allocations after start-up: the real event loop, in this process, under a
//! counting global allocator, through at least 10,000 restart cycles of a local crash-looping
//! service and QM crash-looping services through a real holden-agent, while a control client
//! asks for status and the agent link, a monitor connection receives every event and a
//! follower (`holdenctl logs -f`) the output of a local service that prints while it restarts,
//! and the state record's writer writes what changes.
//!
//! While the loop runs, this test's main thread only sleeps and reads atomics, and the control
//! client uses only libc and stack buffers, so every allocation counted during the measured
//! window is the loop's.

mod orchestrator_support;

use holden::config::OutputTarget;
use holden::orchestrator::{Options, Orchestrator, ServiceDef, Settings};
use holden::supervise::{Backoff, Partition, Restart, ServicePolicy, StartLimit};
use orchestrator_support::{qm_in, Qm, TempDir, TestCgroup};
use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
        exec: Default::default(),
        cgroup_limits: Default::default(),
        notify_fd: None,
        after: Vec::new(),
        requires: Vec::new(),
        wants: Vec::new(),
        policy: ServicePolicy {
            partition,
            restart: Restart::Always,
            restart_delay: Duration::ZERO,
            backoff: Backoff::NONE,
            start_limit: StartLimit::NONE,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            readiness: holden::supervise::Readiness::SIMPLE,
        },
        start_at_boot: true,
        stdout: OutputTarget::Journal,
        stderr: OutputTarget::Journal,
    }
}

/// A local service that prints on both streams (a line with a priority prefix, one to escape,
/// a last one without a newline) and exits, restarted at once: its output flows through the
/// pipes, the line assembler, the history ring and the journal stand-in while it restarts.
fn printer(name: &str) -> ServiceDef {
    let mut def = crash_loop(name, Partition::Local);
    def.argv = vec![
        b"/bin/sh".to_vec(),
        b"-c".to_vec(),
        b"echo \"out $$\"; echo '<3>err \"quoted\"' >&2; printf 'no newline'".to_vec(),
    ];
    def
}

/// A control client that allocates nothing in its loop (libc and stack buffers only): one
/// connection asks for the status of every service, the agent link and kills nothing; another
/// is a monitor that reads events (slowly, so that some are dropped and counted).
fn control_client(
    path: &std::path::Path,
    stop: &AtomicBool,
    replies: &AtomicU64,
    events: &AtomicU64,
    log_lines: &AtomicU64,
) {
    use holden::control::{decode, encode, Body, FRAME_LEN_MAX};
    use std::os::unix::ffi::OsStrExt;
    let connect = || -> i32 {
        // SAFETY: plain libc calls on a socket we own; addr is a valid sockaddr_un.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as u32;
            assert_eq!(
                libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len),
                0
            );
            fd
        }
    };
    let mut out = [0u8; FRAME_LEN_MAX];
    let mut buf = [0u8; FRAME_LEN_MAX];
    let send = |fd: i32, out: &mut [u8], body: &Body<'_>| {
        let len = encode(out, 1, body).unwrap();
        // SAFETY: out[..len] is valid.
        let sent = unsafe { libc::send(fd, out.as_ptr().cast(), len, 0) };
        assert_eq!(sent, len as isize);
    };
    let monitor = connect();
    send(monitor, &mut out, &Body::Monitor);
    // A follower of the printer's output (`holdenctl logs -f`), read like the monitor.
    let follower = connect();
    send(
        follower,
        &mut out,
        &Body::Logs {
            name: "local-printer",
            lines: 5,
            follow: true,
        },
    );
    let fd = connect();
    while !stop.load(Ordering::Relaxed) {
        send(fd, &mut out, &Body::Status(None));
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "status reply");
            match decode(&buf[..n as usize]).unwrap().body {
                Body::Service(_) => {}
                Body::End(count) => {
                    assert_eq!(count, 4);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        send(fd, &mut out, &Body::AgentStatus);
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(matches!(
            decode(&buf[..n.max(0) as usize]).unwrap().body,
            Body::Agent(_)
        ));
        replies.fetch_add(1, Ordering::Relaxed);
        // Drain some of the monitor stream and of the follower without waiting.
        let counted = drain(monitor, &mut buf, |body| {
            matches!(body, Body::Event(_) | Body::Dropped(_))
        });
        events.fetch_add(counted, Ordering::Relaxed);
        let counted = drain(follower, &mut buf, |body| {
            matches!(body, Body::LogLine(_) | Body::Dropped(_))
        });
        log_lines.fetch_add(counted, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fd);
        libc::close(monitor);
        libc::close(follower);
    }
}

/// Sleeps until `done()` (no allocation: no formatting, no collections).
/// Receives what `fd` holds (at most 64 messages) without waiting, into `buf`; returns how
/// many of them `counts` accepts.
fn drain(fd: i32, buf: &mut [u8], counts: impl Fn(&holden::control::Body<'_>) -> bool) -> u64 {
    let mut counted = 0;
    for _ in 0..64 {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        if counts(&holden::control::decode(&buf[..n as usize]).unwrap().body) {
            counted += 1;
        }
    }
    counted
}

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
    // Local services in cgroups of their own, and QM ones in the agent's (`[agent] cgroup`),
    // where this host has a writable cgroup2 mount: their spawn and release paths are measured
    // too. Declared before the agent so that they are removed after it.
    let local_cgroups = TestCgroup::new("alloc-local");
    let qm_cgroup = TestCgroup::new("alloc-qm");
    let qm = match &qm_cgroup {
        Some(cgroup) => qm_in(&dir, cgroup),
        None => Qm::start(&dir, ""),
    };
    let log_path = dir.path("orchestrator.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut settings = Settings::new(qm.socket.clone());
    settings.slots = 8;
    let control_socket = dir.path("control.sock");
    settings.control.socket = Some(control_socket.clone());
    // A stand-in journal: taken while its receive queue has room, then the sends find it full
    // (both paths run during the measured window; nothing reads it).
    let journal_socket = dir.path("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&journal_socket).unwrap();
    settings.journal_socket = journal_socket;
    // The state record is written all along (its writer thread counts too).
    settings.runtime_dir = Some(dir.path("run"));
    if let Some(root) = &local_cgroups {
        settings.cgroup_root = holden::config::CgroupRoot::Path(root.0.clone());
    }
    settings.agent_cgroup = qm_cgroup.as_ref().map(|cgroup| cgroup.service("services"));
    let defs = vec![
        crash_loop("local-true", Partition::Local),
        printer("local-printer"),
        crash_loop("qm-true-a", Partition::Qm),
        crash_loop("qm-true-b", Partition::Qm),
    ];
    let options = Options {
        log_fd: log_file.as_raw_fd(),
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

    // A control client runs through the measured window (its thread is started before).
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let log_lines = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, replies, events, log_lines) = (
            stop.clone(),
            replies.clone(),
            events.clone(),
            log_lines.clone(),
        );
        std::thread::spawn(move || {
            control_client(&control_socket, &stop, &replies, &events, &log_lines)
        })
    };
    assert!(
        wait(60, || replies.load(Ordering::Relaxed) >= 10),
        "control client started"
    );

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let replies_start = replies.load(Ordering::Relaxed);
    let log_lines_start = log_lines.load(Ordering::Relaxed);
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
    let control_replies = replies.load(Ordering::Relaxed) - replies_start;
    stop.store(true, Ordering::Relaxed);
    client.join().expect("control client");
    let (local_cycles, qm_cycles) = (local() - local_start, qm_spawns() - qm_start);

    // The cgroup paths ran: each service's cgroup was made (they go at shutdown).
    if let Some(root) = &local_cgroups {
        assert!(root.service("local-true").is_dir());
    }
    if let Some(cgroup) = &qm_cgroup {
        assert!(cgroup.service("services/qm-true-a").is_dir());
    }
    shutdown.request();
    let result = runner.join().expect("loop thread");
    assert!(finished, "cycles: local {local_cycles}, qm {qm_cycles}");
    assert_eq!(result, Ok(()));
    assert_eq!(
        after - before,
        0,
        "heap allocations during {local_cycles} local and {qm_cycles} QM restart cycles \
         and {control_replies} control status and agent requests"
    );
    assert!(
        control_replies > 0,
        "control requests were served while measuring"
    );
    assert!(
        events.load(Ordering::Relaxed) > 0,
        "monitor events were sent"
    );
    assert!(
        log_lines.load(Ordering::Relaxed) > log_lines_start,
        "output lines were followed while measuring"
    );
    assert!(
        counters.agent_dropped.load(Ordering::Relaxed) == 0,
        "the agent connection stayed up"
    );
    // No QM process was refused its cgroup.
    let log = std::fs::read_to_string(&log_path).unwrap();
    if qm_cgroup.is_some() {
        assert!(log.contains("event=qm-cgroups state=on"), "{log}");
        assert!(!log.contains("qm-cgroup-refused"), "{log}");
    }
    drop(qm);
    // The printer's lines reached the journal stand-in.
    journal.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let n = journal.recv(&mut buf).expect("a journal entry");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("SYSLOG_IDENTIFIER=local-printer\n"), "{text}");
}
