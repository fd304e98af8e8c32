//! Readiness and liveness of QM services (wire 1.2): a real holden-agent in its own PID
//! namespace gives a `type = "notify"` service its notify socket, forwards what the service
//! says as `Notify` frames, and the orchestrator counts it for that service; a flooding QM
//! service is held to the agent's rate while a local crash loop keeps its rate. Also: what a
//! service that is not `type = "notify"` says changes nothing.

mod orchestrator_support;

use orchestrator_support::{
    crash_loop_service, field, kill, last_spawned_pid, measure_flood, notify_service_bin, service,
    sleep_marker, MarkerReaper, Orch, Qm, TempDir,
};
use std::time::Duration;

/// `examples/notify_service.rs ARGS...` as a QM `type = "notify"` service.
fn qm_notify_service(name: &str, args: &[&str], marker: &str, extra: &str) -> String {
    let bin = notify_service_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["marker", marker]);
    service(name, "qm", &argv, &format!("type = \"notify\"\n{extra}"))
}

/// Starting until READY=1 comes through the agent; then running, its STATUS= shown; a
/// SIGSTOP is caught by its watchdog (SIGABRT waits, SIGKILL after stop_timeout) and it is
/// restarted and ready again; a healthy neighbour is never missed.
#[test]
fn a_qm_notify_service_is_ready_through_the_agent_and_its_watchdog_catches_a_sigstop() {
    let dir = TempDir::new("notify-qm");
    let qm = Qm::start(&dir, "");
    let marker = sleep_marker("1320");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let wd =
        "watchdog = \"200ms\"\nrestart = \"always\"\nrestart_delay = \"0\"\nstop_timeout = \"300ms\"";
    let services = qm_notify_service(
        "qn",
        &[
            "ready-after",
            "300",
            "status",
            "qm-serving",
            "ping-every",
            "40",
        ],
        &marker,
        wd,
    ) + &qm_notify_service(
        "healthy",
        &["ready-after", "0", "ping-every", "40"],
        &marker,
        wd,
    );
    let mut orch = Orch::start_services(&dir, &services);
    let spawned = orch
        .wait_lines(&["service=qn ", "reason=spawned"], 1)
        .remove(0);
    assert!(spawned.contains("state=starting"), "{spawned}");
    let ready = orch
        .wait_lines(&["service=qn ", "reason=ready"], 1)
        .remove(0);
    assert!(ready.contains("state=running"), "{ready}");
    let control = dir.path("control.sock");
    let (_, table) = orchestrator_support::holdenctl_text(&control, &["status", "qn"]);
    assert!(table.contains("qm-serving"), "{table}");
    // The agent gave it its own socket, not the orchestrator's.
    let pid = last_spawned_pid(&orch, "qn");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let expected = format!("NOTIFY_SOCKET={}", dir.path("qm_notify.sock").display());
    assert!(
        environ.split(|&b| b == 0).any(|e| e == expected.as_bytes()),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    assert!(environ
        .split(|&b| b == 0)
        .any(|e| e == b"WATCHDOG_USEC=200000"));
    // And WATCHDOG_PID with its own pid as QM sees it (wire 1.2's exec section), as systemd
    // sets it: sd_watchdog_enabled() is true in that process only.
    let qm_pid = field(&spawned, "qm_pid").expect("a QM pid");
    let expected = format!("WATCHDOG_PID={qm_pid}");
    assert!(
        environ.split(|&b| b == 0).any(|e| e == expected.as_bytes()),
        "{}",
        String::from_utf8_lossy(&environ)
    );

    kill(pid, libc::SIGSTOP);
    orch.wait_lines(&["service=qn ", "reason=watchdog"], 1);
    orch.wait_lines(&["service=qn ", "reason=exited"], 1);
    orch.wait_lines(&["service=qn ", "reason=ready"], 2);
    assert_ne!(last_spawned_pid(&orch, "qn"), pid);
    assert!(orch
        .lines_with(&["service=healthy ", "reason=watchdog"])
        .is_empty());
    assert_eq!(
        orch.lines_with(&["service=healthy ", "reason=spawned"])
            .len(),
        1
    );
    assert!(orch.lines_with(&["event=agent-misbehaved"]).is_empty());
    orch.stop(libc::SIGTERM);
    drop(qm);
}

/// A QM service floods its notifications as fast as its socket takes them: the agent
/// forwards at most its rate and says how many it dropped, the orchestrator takes them all
/// without calling the agent a misbehaver, its memory does not grow, and a local crash loop
/// keeps at least half its rate (the reliability suite's method).
#[test]
fn a_flooding_qm_service_is_held_to_the_agents_rate_and_a_local_crash_loop_keeps_its_rate() {
    let dir = TempDir::new("notify-qm-flood");
    let qm = Qm::start(&dir, "");
    let marker = sleep_marker("1321");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = crash_loop_service(&marker)
        + &qm_notify_service(
            "flooder",
            &["flood"],
            &marker,
            "enabled = false\nstart_timeout = \"0\"",
        );
    let mut orch = Orch::start_services(&dir, &services);
    let control = dir.path("control.sock");
    let (flood, ()) = measure_flood(&mut orch, |orch| {
        let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "flooder"]);
        assert_eq!(code, 0, "{text}");
        orch.wait_lines(&["service=flooder ", "reason=ready"], 1);
    });
    // The agent said, at most once a second, how many it dropped.
    let drops = orchestrator_support::wait_until("the agent's drop count", || {
        let log = Qm::agent_log(&dir);
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("notify socket: dropped"))
            .map(str::to_owned)
            .collect();
        (!lines.is_empty()).then_some(lines)
    });
    orch.stop(libc::SIGTERM);
    let log = orch.log();
    let total: u64 = drops
        .last()
        .and_then(|l| l.split(" in all").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{drops:?}"));
    eprintln!(
        "QM notify flood: local restarts/s {:.1} -> {:.1}, VmRSS {} -> {} kB, the agent \
         dropped {total} datagrams",
        flood.base_rate, flood.flood_rate, flood.rss_before, flood.rss_after
    );
    assert!(total > 1000, "{drops:?}");
    assert!(drops.len() <= 10, "{} lines: not rate-limited", drops.len());
    flood.assert_contained();
    // What the agent forwarded is within the orchestrator's rate: no misbehaviour, one
    // connection all along; the flooder's MAINPID= lie was refused and counted.
    assert!(!log.contains("event=agent-misbehaved"), "{log}");
    assert_eq!(log.matches("event=agent-up").count(), 1, "{log}");
    let refused = log
        .lines()
        .find(|l| l.contains("event=notify-dropped") && l.contains("MAINPID"));
    assert!(refused.is_some(), "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("service=flooder ") && l.contains("reason=ready"))
            .count(),
        1
    );
    drop(qm);
}

/// A local service that is not `type = "notify"` finds the socket and says WATCHDOG=trigger,
/// STOPPING=1 and STATUS=: dropped and counted, and nothing changes (systemd's
/// `NotifyAccess=none`).
#[test]
fn what_a_service_that_is_not_notify_says_changes_nothing() {
    let dir = TempDir::new("notify-simple");
    let marker = sleep_marker("1322");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let socket = dir.path("run").join("notify.sock");
    let bin = notify_service_bin();
    let services = service(
        "plain",
        "local",
        &[
            bin.to_str().unwrap(),
            "say",
            "WATCHDOG=trigger\nSTOPPING=1\nSTATUS=lie",
            "to",
            socket.to_str().unwrap(),
            "marker",
            &marker,
        ],
        "restart = \"always\"\nrestart_delay = \"0\"",
    );
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["service=plain ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "plain");
    let dropped = orch
        .wait_lines(&["event=notify-dropped", "not type"], 1)
        .remove(0);
    assert_eq!(
        field(&dropped, "sender_pid"),
        Some(pid.to_string().as_str())
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(orch
        .lines_with(&["service=plain ", "reason=watchdog"])
        .is_empty());
    assert_eq!(
        orch.lines_with(&["service=plain ", "reason=spawned"]).len(),
        1
    );
    let (_, table) =
        orchestrator_support::holdenctl_text(&dir.path("control.sock"), &["status", "plain"]);
    assert!(!table.contains("lie"), "{table}");
    orch.stop(libc::SIGTERM);
}
