//! holden-orchestrator with QM services: holden-agent in its own PID namespace (under a small
//! init), the real orchestrator binary in ours, real processes compared with the kernel's view.

mod orchestrator_support;

use orchestrator_support::*;

fn marker() -> String {
    sleep_marker("9999")
}

/// The pid as seen from inside its namespace (last NSpid entry), to show it runs in QM.
fn ns_depth(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map_or(0, |l| l.split_whitespace().count() - 1)
}

#[test]
fn qm_crash_restarts_with_the_exit_status_from_the_kernel() {
    let dir = TempDir::new("qm-crash");
    let qm = Qm::start(&dir, "");
    let mut cfg = config_header(&qm.socket);
    cfg += &service(
        "qm-crasher",
        "qm",
        &["/bin/sh", "-c", "exit 4"],
        "restart = \"always\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 16, interval = \"1s\" }",
    );
    cfg += &service(
        "qm-never",
        "qm",
        &["/bin/sh", "-c", "exit 5"],
        "restart = \"never\"",
    );
    cfg += &service(
        "qm-clean",
        "qm",
        &["/bin/sh", "-c", "exit 0"],
        "restart = \"on-failure\"",
    );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["event=agent-up", "protocol=v1"], 1);
    let exits = orch.wait_lines(&["service=qm-crasher ", "partition=qm", "reason=exited"], 4);
    let caps = holden::pidfd::Capabilities::probe();
    for line in &exits {
        if caps.exit_info {
            assert!(line.contains("reason=exited code=4"), "{line}");
        } else {
            assert!(line.contains("status=unknown"), "{line}");
        }
    }
    if caps.exit_info {
        orch.wait_lines(
            &["service=qm-never ", "state=failed", "reason=exited code=5"],
            1,
        );
        orch.wait_lines(
            &["service=qm-clean ", "state=stopped", "reason=exited code=0"],
            1,
        );
    }
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);
}

#[test]
fn agent_killed_and_restarted_loses_and_duplicates_nothing() {
    let dir = TempDir::new("qm-agent-kill");
    let qm = Qm::start(&dir, "");
    let mut cfg = config_header(&qm.socket);
    let markers: Vec<String> = (0..3).map(|_| marker()).collect();
    for (i, m) in markers.iter().enumerate() {
        cfg += &service(
            &format!("qm{i}"),
            "qm",
            &["/bin/sleep", m],
            "restart = \"always\"\nrestart_delay = \"0s\"",
        );
    }
    let local_marker = marker();
    cfg += &service(
        "local0",
        "local",
        &["/bin/sleep", &local_marker],
        "restart = \"always\"",
    );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["partition=qm", "reason=spawned"], 3);
    let before: Vec<i32> = (0..3)
        .map(|i| last_spawned_pid(&orch, &format!("qm{i}")))
        .collect();
    for (pid, m) in before.iter().zip(&markers) {
        assert_eq!(pids_with(m), vec![*pid], "kernel and orchestrator agree");
        assert_eq!(ns_depth(*pid), 2, "runs in the QM PID namespace");
    }

    let old_agent = qm.kill_agent();
    orch.wait_lines(&["event=agent-down"], 1);
    let reconnected = orch.wait_lines(&["event=agent-up"], 2);
    assert_eq!(reconnected.len(), 2);
    assert_ne!(qm.agent_pid(), Some(old_agent));
    // Nothing was restarted: the pidfds never depended on the agent.
    assert_eq!(
        orch.lines_with(&["partition=qm", "reason=spawned"]).len(),
        3
    );
    for (pid, m) in before.iter().zip(&markers) {
        assert!(alive(*pid));
        assert_eq!(pids_with(m), vec![*pid]);
    }

    // A QM process dies after the reconnect: seen through its old pidfd, restarted through the
    // new agent, still exactly one process.
    kill(before[1], libc::SIGKILL);
    let restarted = wait_until("qm1 restarted", || {
        let pid = last_spawned_pid(&orch, "qm1");
        (pid != before[1]).then_some(pid)
    });
    assert!(orch
        .lines_with(&["service=qm1 ", "reason=exited"])
        .iter()
        .any(|l| l.contains("signal=SIGKILL") || l.contains("status=unknown")));
    assert_eq!(pids_with(&markers[1]), vec![restarted]);

    // Kill the agent again and every QM process at once: each is restarted exactly once
    // when the agent is back.
    qm.kill_agent();
    for m in &markers {
        for pid in pids_with(m) {
            kill(pid, libc::SIGKILL);
        }
    }
    orch.wait_lines(&["event=agent-up"], 3);
    let now: Vec<i32> = wait_until("every QM service running again", || {
        let pids: Vec<Vec<i32>> = markers.iter().map(|m| pids_with(m)).collect();
        let views: Vec<i32> = (0..3)
            .map(|i| last_spawned_pid(&orch, &format!("qm{i}")))
            .collect();
        let agree = pids
            .iter()
            .zip(&views)
            .all(|(k, v)| k.len() == 1 && k[0] == *v);
        agree.then_some(views)
    });
    for (pid, m) in now.iter().zip(&markers) {
        assert_eq!(
            pids_with(m),
            vec![*pid],
            "exactly one process, the one the orchestrator holds"
        );
    }
    assert_eq!(
        pids_with(&local_marker).len(),
        1,
        "the local service was untouched"
    );
    assert_eq!(
        orch.lines_with(&["service=local0 ", "reason=spawned"])
            .len(),
        1
    );

    assert!(orch.stop(libc::SIGTERM).success());
    for m in markers.iter().chain([&local_marker]) {
        assert!(pids_with(m).is_empty(), "{m} left running");
    }
}

#[test]
fn shutdown_stops_local_and_qm_services() {
    let dir = TempDir::new("qm-shutdown");
    let qm = Qm::start(&dir, "");
    let mut cfg = config_header(&qm.socket);
    let markers: Vec<String> = (0..4).map(|_| marker()).collect();
    for (i, m) in markers.iter().enumerate() {
        let partition = if i % 2 == 0 { "qm" } else { "local" };
        cfg += &service(&format!("s{i}"), partition, &["/bin/sleep", m], "");
    }
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["reason=spawned"], 4);
    for m in &markers {
        assert_eq!(pids_with(m).len(), 1);
    }
    let status = orch.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    for m in &markers {
        assert!(pids_with(m).is_empty(), "{m} left running:\n{}", orch.log());
    }
    assert_eq!(
        orch.lines_with(&["state=stopped", "reason=exited"]).len(),
        4,
        "{}",
        orch.log()
    );
}

#[test]
fn qm_services_wait_for_the_agent_and_start_when_it_comes() {
    let dir = TempDir::new("qm-late");
    let socket = dir.path("agent.sock");
    let m = marker();
    let cfg = config_header(&socket) + &service("late", "qm", &["/bin/sleep", &m], "");
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["event=agent-connect-failed"], 1);
    let qm = Qm::start(&dir, "");
    assert_eq!(qm.socket, socket);
    orch.wait_lines(&["service=late ", "reason=spawned"], 1);
    assert_eq!(pids_with(&m).len(), 1);
    assert_eq!(
        orch.lines_with(&["event=agent-connect-failed"]).len(),
        1,
        "repeated failures are not logged again"
    );
    assert!(orch.stop(libc::SIGTERM).success());
    assert!(pids_with(&m).is_empty());
}

#[test]
fn qm_policies_backoff_start_limit_and_stop_timeout() {
    let dir = TempDir::new("qm-policy");
    let qm = Qm::start(&dir, "");
    let mut cfg = config_header(&qm.socket);
    cfg += &service(
        "qm-backoff",
        "qm",
        &["/bin/sh", "-c", "exit 2"],
        "restart = \"always\"\nrestart_delay = \"0s\"\nbackoff = { initial = \"10ms\", factor = 2.0, max = \"40ms\", reset_after = \"10s\" }\nstart_limit = { burst = 5, interval = \"60s\" }",
    );
    cfg += &service(
        "qm-stubborn",
        "qm",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; exec /usr/bin/tail -f /dev/null",
        ],
        "stop_timeout = \"300ms\"",
    );
    let mut orch = Orch::start(&dir, &cfg);
    let failed = orch.wait_lines(
        &["service=qm-backoff ", "state=failed", "reason=start-limit"],
        1,
    );
    assert!(failed[0].starts_with("<3>"));
    let delays: Vec<u64> = orch
        .lines_with(&["service=qm-backoff ", "state=backoff"])
        .iter()
        .map(|l| field(l, "next_delay_ms").unwrap().parse().unwrap())
        .collect();
    assert_eq!(delays, vec![10, 20, 40, 40, 40], "{}", orch.log());
    assert_eq!(
        orch.lines_with(&["service=qm-backoff ", "reason=spawned"])
            .len(),
        5
    );

    let pid = last_spawned_pid(&orch, "qm-stubborn");
    wait_until("tail exec'd in QM", || {
        cmdline(pid).filter(|c| c.contains("tail"))
    });
    assert_eq!(ns_depth(pid), 2);
    assert!(orch.stop(libc::SIGTERM).success());
    assert_eq!(
        orch.lines_with(&["service=qm-stubborn ", "reason=stop-timeout"])
            .len(),
        1,
        "{}",
        orch.log()
    );
    let end = orch.lines_with(&["service=qm-stubborn ", "state=stopped"]);
    assert_eq!(end.len(), 1);
    if holden::pidfd::Capabilities::probe().exit_info {
        assert!(end[0].contains("signal=SIGKILL"), "{end:?}");
    }
    assert!(!alive(pid));
    drop(qm);
}

#[test]
fn agent_killed_repeatedly_during_a_spawn_storm() {
    let dir = TempDir::new("qm-storm");
    let qm = Qm::start(&dir, "");
    let mut cfg = config_header(&qm.socket);
    let markers: Vec<String> = (0..12).map(|_| marker()).collect();
    for (i, m) in markers.iter().enumerate() {
        cfg += &service(
            &format!("sleeper{i}"),
            "qm",
            &["/bin/sleep", m],
            "restart = \"always\"\nrestart_delay = \"0s\"",
        );
    }
    for i in 0..4 {
        cfg += &service(
            &format!("looper{i}"),
            "qm",
            &["/bin/true"],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        );
    }
    let mut orch = Orch::start(&dir, &cfg);
    for round in 1..=3 {
        orch.wait_lines(&["event=agent-up"], round);
        // Let the loopers spin, kill the agent mid-storm, then some sleepers while it is
        // down. (Sleepers are not killed while their spawn may be in flight: a process the
        // agent forked but never reported would be a known, documented orphan.)
        orch.wait_lines(&["service=looper0 ", "reason=spawned"], 5 * round);
        wait_sleepers_settled(&orch, &markers);
        qm.kill_agent();
        orch.wait_lines(&["event=agent-down"], round);
        for m in markers.iter().step_by(3) {
            for pid in pids_with(m) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
    orch.wait_lines(&["event=agent-up"], 4);
    // Every sleeper ends with exactly one process, the one the orchestrator holds.
    wait_sleepers_settled(&orch, &markers);
    assert!(orch.stop(libc::SIGTERM).success());
    for m in &markers {
        assert!(pids_with(m).is_empty(), "{m} left running");
    }
}

/// Waits until every sleeper has exactly one process and it is the one the orchestrator holds.
fn wait_sleepers_settled(orch: &Orch, markers: &[String]) {
    wait_until("one process per sleeper, matching the orchestrator", || {
        markers
            .iter()
            .enumerate()
            .all(|(i, m)| {
                let kernel = pids_with(m);
                kernel.len() == 1 && kernel[0] == last_spawned_pid(orch, &format!("sleeper{i}"))
            })
            .then_some(())
    });
}
