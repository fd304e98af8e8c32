//! Readiness and liveness of local services over the real sd_notify protocol: services that
//! call holden's own libsystemd-free client (`examples/notify_service.rs`) through the
//! orchestrator's notify socket, a real orchestrator, real processes.

mod orchestrator_support;

use orchestrator_support::{
    crash_loop_service, field, kill, line_index, measure_flood, notify_service, service,
    sleep_marker, MarkerReaper, Orch, TempDir,
};
use std::os::unix::net::UnixDatagram;
use std::process::Command;

/// A notify service is `starting` with its process until it says READY=1, then `running`
/// (reason ready); a simple service beside it is running at its spawn.
#[test]
fn a_notify_service_is_running_only_once_it_said_ready() {
    let dir = TempDir::new("notify-ready");
    let marker = sleep_marker("1300");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = notify_service(
        "n",
        &["ready-after", "400", "status", "serving"],
        &marker,
        "",
    ) + &service("s", "local", &["/bin/sleep", &marker], "");
    let mut orch = Orch::start_services(&dir, &services);
    let spawned = orch
        .wait_lines(&["service=n ", "reason=spawned"], 1)
        .remove(0);
    assert!(spawned.contains("state=starting"), "{spawned}");
    let pid: i32 = field(&spawned, "spawned_pid").unwrap().parse().unwrap();
    let status = orchestrator_support::holdenctl(&dir.path("control.sock"), &["status", "n"]);
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        shown.contains("starting") && shown.contains(&pid.to_string()),
        "{shown}"
    );
    let ready = orch
        .wait_lines(&["service=n ", "reason=ready"], 1)
        .remove(0);
    assert!(
        ready.contains("state=running") && ready.contains(&format!("pid={pid} ")),
        "{ready}"
    );
    // What it said in STATUS= is shown, in the table and in --json.
    let control = dir.path("control.sock");
    let (_, table) = orchestrator_support::holdenctl_text(&control, &["status", "n"]);
    assert!(
        table.contains("STATUS") && table.contains("serving"),
        "{table}"
    );
    let (_, json) = orchestrator_support::holdenctl_text(&control, &["status", "n", "--json"]);
    assert!(json.contains("\"status\":\"serving\""), "{json}");
    // Its time to ready is the 400 ms it waited before READY=1, less however late its spawn
    // was reported (the clock starts at the report): clearly not 0, as the simple one's is.
    let ready_ms: u64 = json
        .split("\"ready_ms\":")
        .nth(1)
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{json}"));
    assert!((100..5_000).contains(&ready_ms), "{json}");
    let (_, json) = orchestrator_support::holdenctl_text(&control, &["status", "s", "--json"]);
    assert!(json.contains("\"ready_ms\":0,"), "{json}");
    assert!(table.contains("READY IN"), "{table}");
    // The simple service was running at its spawn.
    assert!(!orch
        .lines_with(&["service=s ", "state=running", "reason=spawned"])
        .is_empty());
    let log = orch.log();
    assert!(
        line_index(&log, &["service=n ", "reason=spawned"])
            < line_index(&log, &["service=n ", "reason=ready"])
    );
    orch.stop(libc::SIGTERM);
}

/// Never ready: after `start_timeout` it is stopped (reason start-timeout) and restarted by
/// its policy, as a failed start.
#[test]
fn the_start_timeout_restarts_a_service_that_never_says_ready() {
    let dir = TempDir::new("notify-timeout");
    let marker = sleep_marker("1301");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = notify_service(
        "n",
        &[],
        &marker,
        "start_timeout = \"300ms\"\nrestart = \"on-failure\"\nrestart_delay = \"0\"",
    );
    let mut orch = Orch::start_services(&dir, &services);
    let timeout = orch.wait_lines(&["service=n ", "reason=start-timeout"], 2);
    assert!(timeout[0].contains("state=stopping"), "{}", timeout[0]);
    let spawns = orch.lines_with(&["service=n ", "reason=spawned"]);
    assert!(spawns.len() >= 2, "restarted after the timeout: {spawns:?}");
    assert!(orch.lines_with(&["service=n ", "reason=ready"]).is_empty());
    orch.stop(libc::SIGTERM);
}

/// The watchdog: a service that pings keeps running; one that stops pinging, and one that
/// is SIGSTOPped, get the watchdog signal (SIGABRT; the stopped one SIGKILL after
/// stop_timeout) and are restarted.
#[test]
fn the_watchdog_restarts_a_silent_or_stopped_service_and_keeps_a_pinging_one() {
    let dir = TempDir::new("notify-watchdog");
    let marker = sleep_marker("1302");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let wd = "watchdog = \"100ms\"\nrestart = \"always\"\nrestart_delay = \"0\"\nstop_timeout = \"300ms\"";
    let services = notify_service(
        "healthy",
        &["ready-after", "0", "ping-every", "20"],
        &marker,
        wd,
    ) + &notify_service(
        "silent",
        &["ready-after", "0", "ping-every", "20", "pings", "10"],
        &marker,
        wd,
    ) + &notify_service(
        "frozen",
        &["ready-after", "0", "ping-every", "20"],
        &marker,
        wd,
    );
    let mut orch = Orch::start_services(&dir, &services);
    for name in ["healthy", "silent", "frozen"] {
        orch.wait_lines(&[&format!("service={name} "), "reason=ready"], 1);
    }
    // As systemd sets them: the interval, and the service's own pid.
    let healthy = orchestrator_support::last_spawned_pid(&orch, "healthy");
    let environ = std::fs::read(format!("/proc/{healthy}/environ")).unwrap();
    let entries: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(entries.contains(&b"WATCHDOG_USEC=100000".as_slice()));
    assert!(entries.contains(&format!("WATCHDOG_PID={healthy}").as_bytes()));
    let frozen = orchestrator_support::last_spawned_pid(&orch, "frozen");
    kill(frozen, libc::SIGSTOP);
    let missed = orch
        .wait_lines(&["service=silent ", "reason=watchdog"], 1)
        .remove(0);
    assert!(missed.contains("state=stopping"), "{missed}");
    orch.wait_lines(&["service=silent ", "reason=exited", "signal=SIGABRT"], 1);
    orch.wait_lines(&["service=frozen ", "reason=watchdog"], 1);
    // Stopped: SIGABRT waits; SIGKILL after stop_timeout ends it.
    orch.wait_lines(&["service=frozen ", "reason=exited", "signal=SIGKILL"], 1);
    orch.wait_lines(&["service=frozen ", "reason=ready"], 2);
    orch.wait_lines(&["service=silent ", "reason=ready"], 2);
    // Meanwhile (well over 10 intervals) the healthy one was never missed.
    assert!(orch
        .lines_with(&["service=healthy ", "reason=watchdog"])
        .is_empty());
    assert_eq!(
        orch.lines_with(&["service=healthy ", "reason=spawned"])
            .len(),
        1
    );
    orch.stop(libc::SIGTERM);
}

/// A datagram from a process that is not a service's counts for nothing (dropped, counted,
/// logged); MAINPID= naming another process is refused; the service stays waiting.
#[test]
fn notifications_from_other_processes_are_dropped_and_counted() {
    let dir = TempDir::new("notify-forged");
    let marker = sleep_marker("1303");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = notify_service("n", &[], &marker, "start_timeout = \"0\"")
        + &notify_service(
            "liar",
            &["ready-after", "0", "main-pid", "1"],
            &marker,
            "start_timeout = \"0\"",
        );
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["service=n ", "reason=spawned"], 1);
    orch.wait_lines(&["service=liar ", "reason=ready"], 1);
    let socket = dir.path("run").join("notify.sock");
    let forger = UnixDatagram::unbound().unwrap();
    // Drops are said at most once a second: forge until ours is said.
    let ours = format!("sender_pid={} ", std::process::id());
    let mut said = false;
    for _ in 0..100 {
        for _ in 0..10 {
            forger.send_to(b"READY=1\nSTATUS=forged", &socket).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !orch.lines_with(&["event=notify-dropped", &ours]).is_empty() {
            said = true;
            break;
        }
    }
    assert!(said, "{}", orch.log());
    let refused = orch.lines_with(&["event=notify-dropped", "MAINPID"]);
    assert!(!refused.is_empty(), "{}", orch.log());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(orch.lines_with(&["service=n ", "reason=ready"]).is_empty());
    orch.stop(libc::SIGTERM);
}

/// A oneshot is `starting` while it runs and `stopped` after exit 0, and is not restarted.
#[test]
fn a_oneshot_is_done_when_it_exits_0() {
    let dir = TempDir::new("notify-oneshot");
    let marker = sleep_marker("1304");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = service(
        "once",
        "local",
        &["/bin/sh", "-c", "sleep 0.2", &marker],
        "type = \"oneshot\"\nrestart = \"on-failure\"",
    );
    let mut orch = Orch::start_services(&dir, &services);
    let spawned = orch
        .wait_lines(&["service=once ", "reason=spawned"], 1)
        .remove(0);
    assert!(spawned.contains("state=starting"), "{spawned}");
    let done = orch
        .wait_lines(&["service=once ", "reason=exited", "code=0"], 1)
        .remove(0);
    assert!(done.contains("state=stopped"), "{done}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        orch.lines_with(&["service=once ", "reason=spawned"]).len(),
        1
    );
    // Started again and waited for: `start --wait` returns 0 once it is done.
    let control = dir.path("control.sock");
    let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "once", "--wait"]);
    assert_eq!(code, 0, "{text}");
    let (_, after) = orchestrator_support::holdenctl_text(&control, &["status", "once", "--json"]);
    assert!(
        after.contains("\"state\":\"stopped\"") && after.contains("\"last_exit\":{\"code\":0}"),
        "--wait returned before it was done: {after}"
    );
    // It had exited 0 when --wait returned (the status said so; the log follows).
    orch.wait_lines(&["service=once ", "reason=exited", "code=0"], 2);
    assert_eq!(
        orch.lines_with(&["service=once ", "reason=spawned"]).len(),
        2
    );
    let (_, json) = orchestrator_support::holdenctl_text(&control, &["status", "once", "--json"]);
    assert!(json.contains("\"type\":\"oneshot\""), "{json}");
    orch.stop(libc::SIGTERM);
}

/// A hostile notify service floods its own notifications (readiness, status, pings, a
/// `MAINPID=` lie, junk) as fast as it can, and a process that is no service floods the socket
/// too: the orchestrator's memory does not grow, the lies and the strangers are counted, and a
/// local crash loop keeps its rate (the reliability suite's method: at least half of the
/// baseline measured in the same run).
#[test]
fn a_notification_flood_is_contained_and_a_crash_loop_keeps_its_rate() {
    use std::time::Duration;
    let dir = TempDir::new("notify-flood");
    let marker = sleep_marker("1305");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = crash_loop_service(&marker)
        + &notify_service(
            "flooder",
            &["flood"],
            &marker,
            "enabled = false\nstart_timeout = \"0\"",
        );
    let mut orch = Orch::start_services(&dir, &services);
    let control = dir.path("control.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flood, stranger) = measure_flood(&mut orch, |_| {
        let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "flooder"]);
        assert_eq!(code, 0, "{text}");
        let (stop, socket) = (
            std::sync::Arc::clone(&stop),
            dir.path("run").join("notify.sock"),
        );
        std::thread::spawn(move || {
            let s = UnixDatagram::unbound().unwrap();
            s.set_nonblocking(true).unwrap();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match s.send_to(b"READY=1\nWATCHDOG=trigger", &socket) {
                    Ok(_) => sent += 1,
                    // Full: the orchestrator reads no faster; do not spin a CPU away from it.
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            sent
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stranger_sent = stranger.join().unwrap();
    let flooder = orchestrator_support::last_spawned_pid(&orch, "flooder");
    orch.stop(libc::SIGTERM);
    let log = orch.log();
    eprintln!(
        "notify flood: local restarts/s {:.1} -> {:.1}, VmRSS {} -> {} kB, {stranger_sent} \
         datagrams from a stranger",
        flood.base_rate, flood.flood_rate, flood.rss_before, flood.rss_after
    );
    assert!(
        stranger_sent > 1000,
        "the stranger flooded: {stranger_sent}"
    );
    flood.assert_contained();
    // Counted, and said at most once a second (not per datagram).
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=notify-dropped"))
        .collect();
    assert!(!dropped.is_empty());
    assert!(
        dropped.len() <= 10,
        "{} lines: not rate-limited",
        dropped.len()
    );
    let total: u64 = dropped
        .last()
        .and_then(|l| field(l, "dropped_total"))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(total > 1000, "dropped_total={total}");
    assert!(log.contains(&format!("pid={flooder} ")) && log.contains("service=flooder "));
    // The flooder was ready once (READY=1 again changes nothing) and never restarted.
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("service=flooder ") && l.contains("reason=ready"))
            .count(),
        1
    );
}

/// `holdenctl monitor --json` shows a notify service's way to ready: spawned while starting,
/// then running with reason ready.
#[test]
fn monitor_shows_the_way_to_ready() {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;
    let dir = TempDir::new("notify-monitor");
    let marker = sleep_marker("1306");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = notify_service("n", &["ready-after", "200"], &marker, "enabled = false")
        + &service("sync", "local", &["/bin/sleep", &marker], "enabled = false");
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["event=control-listening"], 1);
    let control = dir.path("control.sock");
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_holdenctl"))
        .arg("--socket")
        .arg(&control)
        .args(["monitor", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Subscribed once it shows an event: restart `sync` until one comes.
    let mut subscribed = false;
    for _ in 0..50 {
        orchestrator_support::holdenctl_text(&control, &["restart", "sync"]);
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            subscribed = true;
            break;
        }
    }
    assert!(subscribed, "the monitor showed nothing");
    let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "n"]);
    assert_eq!(code, 0, "{text}");
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let ready = line.contains("\"name\":\"n\"") && line.contains("\"reason\":\"ready\"");
        if line.contains("\"name\":\"n\"") {
            seen.push(line);
        }
        if ready {
            break;
        }
    }
    kill(monitor.id() as i32, libc::SIGTERM);
    let _ = monitor.wait();
    let spawned = seen
        .iter()
        .position(|l| l.contains("\"reason\":\"spawned\"") && l.contains("\"to\":\"starting\""))
        .unwrap_or_else(|| panic!("{seen:?}"));
    let ready = seen
        .iter()
        .position(|l| l.contains("\"reason\":\"ready\"") && l.contains("\"to\":\"running\""))
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert!(spawned < ready, "{seen:?}");
    orch.stop(libc::SIGTERM);
}

/// s6's convention: with `notify_fd = N` a service is ready once it writes a newline on fd N
/// (3, a number the orchestrator's spawner itself uses, and 7); one that writes nothing there
/// stays `starting`; an assignment written there is no newline readiness.
#[test]
fn a_newline_on_notify_fd_makes_a_service_ready() {
    let dir = TempDir::new("notify-fd");
    let marker = sleep_marker("1306");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let script = |n: u32, what: &str| format!("sleep 0.2; {what} >&{n}; exec /bin/sleep {marker}");
    let extra = |n: u32| format!("type = \"notify\"\nnotify_fd = {n}\nstart_timeout = \"0\"");
    let services = service(
        "s6-3",
        "local",
        &["/bin/sh", "-c", &script(3, "echo")],
        &extra(3),
    ) + &service(
        "s6-7",
        "local",
        &["/bin/sh", "-c", &script(7, "echo")],
        &extra(7),
    ) + &service(
        "silent",
        "local",
        &["/bin/sh", "-c", &script(5, "true")],
        &extra(5),
    ) + &service(
        "assigns",
        "local",
        &["/bin/sh", "-c", &script(4, "printf 'X=1\\n'")],
        &extra(4),
    );
    let mut orch = Orch::start_services(&dir, &services);
    for name in ["s6-3", "s6-7"] {
        let ready = orch
            .wait_lines(&[&format!("service={name} "), "reason=ready"], 1)
            .remove(0);
        assert!(ready.contains("state=running"), "{ready}");
    }
    // The other two were spawned with the others and, a while later, still wait.
    orch.wait_lines(&["service=silent ", "reason=spawned"], 1);
    orch.wait_lines(&["service=assigns ", "reason=spawned"], 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    for name in ["silent", "assigns"] {
        assert!(orch
            .lines_with(&[&format!("service={name} "), "reason=ready"])
            .is_empty());
        let (_, json) = orchestrator_support::holdenctl_text(
            &dir.path("control.sock"),
            &["status", name, "--json"],
        );
        assert!(json.contains("\"state\":\"starting\""), "{json}");
    }
    orch.stop(libc::SIGTERM);
}
