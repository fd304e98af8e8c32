//! holden-orchestrator with local services: real processes, the real binary, its log.

mod orchestrator_support;

use orchestrator_support::*;

fn header(dir: &TempDir) -> String {
    config_header(&dir.path("no-agent.sock"))
}

fn spawned_pids(orch: &Orch, name: &str) -> Vec<i32> {
    orch.lines_with(&[&format!("service={name} "), "reason=spawned"])
        .iter()
        .map(|l| field(l, "spawned_pid").unwrap().parse().unwrap())
        .collect()
}

#[test]
fn crash_restarts_with_a_new_process_each_time() {
    let dir = TempDir::new("crash");
    let cfg = header(&dir)
        + &service(
            "crasher",
            "local",
            &["/bin/sh", "-c", "exit 3"],
            "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 16, interval = \"1s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let exits = orch.wait_lines(&["service=crasher ", "reason=exited code=3"], 4);
    assert!(
        exits
            .iter()
            .all(|l| l.starts_with("<4>") && l.contains("partition=local")),
        "{exits:?}"
    );
    let pids = spawned_pids(&orch, "crasher");
    assert!(pids.len() >= 4);
    let mut unique = pids.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        pids.len(),
        "every restart is a new process: {pids:?}"
    );
    // restart counts rise one by one
    let counts: Vec<u32> = exits
        .iter()
        .map(|l| field(l, "restarts").unwrap().parse().unwrap())
        .collect();
    assert_eq!(&counts[..4], &[1, 2, 3, 4], "{exits:?}");
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn on_failure_and_never_are_honoured() {
    let dir = TempDir::new("policy");
    let mut cfg = header(&dir);
    cfg += &service(
        "clean-onfail",
        "local",
        &["/bin/sh", "-c", "exit 0"],
        "restart = \"on-failure\"",
    );
    cfg += &service(
        "dirty-never",
        "local",
        &["/bin/sh", "-c", "exit 1"],
        "restart = \"never\"",
    );
    cfg += &service(
        "clean-never",
        "local",
        &["/bin/sh", "-c", "exit 0"],
        "restart = \"never\"",
    );
    cfg += &service(
        "dirty-onfail",
        "local",
        &["/bin/sh", "-c", "exit 1"],
        "restart = \"on-failure\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 16, interval = \"1s\" }",
    );
    let mut orch = Orch::start(&dir, &cfg);
    // The restarting one goes round several times: by then the others had every chance.
    orch.wait_lines(&["service=dirty-onfail ", "reason=exited code=1"], 5);
    orch.wait_lines(
        &[
            "service=clean-onfail ",
            "state=stopped",
            "reason=exited code=0",
        ],
        1,
    );
    orch.wait_lines(
        &[
            "service=clean-never ",
            "state=stopped",
            "reason=exited code=0",
        ],
        1,
    );
    let failed = orch.wait_lines(
        &[
            "service=dirty-never ",
            "state=failed",
            "reason=exited code=1",
        ],
        1,
    );
    assert!(failed[0].starts_with("<3>"), "{failed:?}");
    assert_eq!(spawned_pids(&orch, "clean-onfail").len(), 1);
    assert_eq!(spawned_pids(&orch, "clean-never").len(), 1);
    assert_eq!(spawned_pids(&orch, "dirty-never").len(), 1);
    assert!(spawned_pids(&orch, "dirty-onfail").len() >= 5);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn backoff_grows_to_its_cap_and_resets_after_a_stable_run() {
    let dir = TempDir::new("backoff");
    let counter = dir.path("count");
    // Runs 1-5 crash at once; run 6 stays up longer than reset_after, then crashes.
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; if [ $n -eq 6 ]; then sleep 0.5; fi; exit 1",
        c = counter.display()
    );
    let cfg = header(&dir)
        + &service(
            "flappy",
            "local",
            &["/bin/sh", "-c", &script],
            "restart = \"always\"\nrestart_delay = \"0s\"\nbackoff = { initial = \"20ms\", factor = 2.0, max = \"80ms\", reset_after = \"200ms\" }\nstart_limit = { burst = 16, interval = \"10s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let lines = orch.wait_lines(
        &["service=flappy ", "state=backoff", "reason=exited code=1"],
        7,
    );
    let delays: Vec<u64> = lines
        .iter()
        .map(|l| field(l, "next_delay_ms").unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        &delays[..7],
        &[20, 40, 80, 80, 80, 20, 40],
        "grows, caps, resets after the stable 6th run: {lines:#?}"
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn start_limit_sends_the_service_to_failed() {
    let dir = TempDir::new("limit");
    let cfg = header(&dir)
        + &service(
            "burst",
            "local",
            &["/bin/sh", "-c", "exit 7"],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 3, interval = \"60s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let failed = orch.wait_lines(&["service=burst ", "state=failed", "reason=start-limit"], 1);
    assert!(failed[0].starts_with("<3>"));
    assert_eq!(spawned_pids(&orch, "burst").len(), 3, "{}", orch.log());
    assert!(orch.stop(libc::SIGTERM).success());
    assert_eq!(spawned_pids(&orch, "burst").len(), 3, "failed stays failed");
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let dir = TempDir::new("stubborn");
    let cfg = header(&dir)
        + &service(
            "stubborn",
            "local",
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; exec /usr/bin/tail -f /dev/null",
            ],
            "stop_timeout = \"300ms\"",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let pid = field(
        &orch.wait_lines(&["service=stubborn ", "reason=spawned"], 1)[0],
        "spawned_pid",
    )
    .unwrap()
    .parse()
    .unwrap();
    wait_until("tail exec'd", || {
        cmdline(pid).filter(|c| c.contains("tail"))
    });
    let status = orch.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!orch
        .lines_with(&["service=stubborn ", "signal=SIGTERM", "event=signal"])
        .is_empty());
    assert_eq!(
        orch.lines_with(&["service=stubborn ", "reason=stop-timeout"])
            .len(),
        1,
        "{}",
        orch.log()
    );
    assert_eq!(
        orch.lines_with(&["service=stubborn ", "state=stopped", "signal=SIGKILL"])
            .len(),
        1,
        "{}",
        orch.log()
    );
    assert!(!alive(pid));
}

#[test]
fn shutdown_stops_everything_and_a_second_signal_kills_at_once() {
    let dir = TempDir::new("shutdown");
    let mut cfg = header(&dir);
    for i in 0..4 {
        cfg += &service(&format!("sleeper{i}"), "local", &["/bin/sleep", "1000"], "");
    }
    cfg += &service(
        "stubborn",
        "local",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; exec /usr/bin/tail -f /dev/null",
        ],
        "stop_timeout = \"1h\"",
    );
    let mut orch = Orch::start(&dir, &cfg);
    let lines = orch.wait_lines(&["reason=spawned"], 5);
    let pids: Vec<i32> = lines
        .iter()
        .map(|l| field(l, "spawned_pid").unwrap().parse().unwrap())
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));
    kill(orch.pid(), libc::SIGTERM);
    orch.wait_lines(
        &[
            "service=sleeper",
            "state=stopped",
            "reason=exited signal=SIGTERM",
        ],
        4,
    );
    assert!(
        orch.child.try_wait().unwrap().is_none(),
        "still waiting for the stubborn one"
    );
    let status = orch.stop(libc::SIGINT);
    assert!(status.success(), "{status:?}");
    assert_eq!(orch.lines_with(&["event=shutdown-forced"]).len(), 1);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} left running");
    }
}

#[test]
fn exec_failure_is_an_error_not_an_exit() {
    let dir = TempDir::new("noexec");
    let cfg = header(&dir)
        + &service(
            "missing",
            "local",
            &["/nonexistent/holden-test-binary"],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 2, interval = \"60s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["service=missing ", "state=failed"], 1);
    let errors = orch.lines_with(&[
        "service=missing ",
        "event=spawn-failed",
        "stage=exec",
        "errno=2",
    ]);
    assert!(!errors.is_empty(), "{}", orch.log());
    assert!(orch
        .lines_with(&["service=missing ", "reason=exited"])
        .is_empty());
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn shutdown_timeout_kills_what_remains() {
    let dir = TempDir::new("shutdown-timeout");
    let cfg = format!("[shutdown]\ntimeout = \"300ms\"\n\n{}", header(&dir))
        + &service(
            "stubborn",
            "local",
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; exec /usr/bin/tail -f /dev/null",
            ],
            "stop_timeout = \"1h\"",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let pid: i32 = field(
        &orch.wait_lines(&["service=stubborn ", "reason=spawned"], 1)[0],
        "spawned_pid",
    )
    .unwrap()
    .parse()
    .unwrap();
    wait_until("tail exec'd", || {
        cmdline(pid).filter(|c| c.contains("tail"))
    });
    let status = orch.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        orch.lines_with(&["event=shutdown-timeout", "timeout_ms=300"])
            .len(),
        1,
        "{}",
        orch.log()
    );
    assert!(!alive(pid));
}

#[test]
fn stop_services_false_leaves_them_running() {
    let dir = TempDir::new("leave-running");
    let cfg = format!("[shutdown]\nstop_services = false\n\n{}", header(&dir))
        + &service("keeper", "local", &["/bin/sleep", "1000"], "");
    let mut orch = Orch::start(&dir, &cfg);
    let pid: i32 = field(
        &orch.wait_lines(&["service=keeper ", "reason=spawned"], 1)[0],
        "spawned_pid",
    )
    .unwrap()
    .parse()
    .unwrap();
    let status = orch.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        orch.lines_with(&["event=shutdown", "services=left-running"])
            .len(),
        1,
        "{}",
        orch.log()
    );
    let still = alive(pid);
    kill(pid, libc::SIGKILL);
    assert!(still, "the configuration said to leave it running");
}

/// A service whose spawn always fails, with `restart_delay = "0"` and no start limit, must not
/// take the event loop with it: the retries go through the ring (at least
/// SPAWN_FAILED_DELAY_MIN apart), so another service is still supervised and SIGTERM is still
/// answered. (Before, the retry ran inside the same loop iteration, forever.)
#[test]
fn a_spawn_that_always_fails_does_not_starve_the_loop() {
    let dir = TempDir::new("spawn-storm");
    let cfg = header(&dir)
        + &service(
            "missing",
            "local",
            &["/nonexistent/holden-test-binary"],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        )
        + &service(
            "crasher",
            "local",
            &["/bin/sh", "-c", "exit 3"],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["service=missing ", "event=spawn-failed"], 5);
    let exits = orch
        .lines_with(&["service=crasher ", "reason=exited"])
        .len();
    orch.wait_lines(&["service=crasher ", "reason=exited"], exits + 5);
    assert!(orch.stop(libc::SIGTERM).success(), "{}", orch.log());
}

/// The scheduling policy of a thread or process (`/proc/PID/stat` field 41: 0 SCHED_OTHER,
/// 1 SCHED_FIFO, 2 SCHED_RR).
fn sched_policy(stat_path: &str) -> u32 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_else(|e| panic!("{stat_path}: {e}"));
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

#[test]
fn started_under_a_real_time_policy_the_loop_keeps_it_and_no_service_inherits_it() {
    let dir = TempDir::new("realtime");
    let marker = sleep_marker("1000");
    let cfg = header(&dir) + &service("rt", "local", &["/bin/sleep", &marker], "");
    let config = dir.path("orchestrator.toml");
    std::fs::write(&config, cfg).unwrap();
    // What the shipped unit's CPUSchedulingPolicy=fifo does, but without its
    // CPUSchedulingResetOnFork=yes: the orchestrator must add the flag itself.
    let mut cmd = std::process::Command::new("chrt");
    cmd.args(["--fifo", "1"])
        .arg(orchestrator_bin())
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET");
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["event=sched-reset-on-fork policy=fifo priority=1"], 1);
    orch.wait_lines(&["service=rt ", "reason=spawned"], 1);
    let service = last_spawned_pid(&orch, "rt");
    let main = orch.pid();
    assert_eq!(sched_policy(&format!("/proc/{main}/stat")), 1, "the loop");
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{main}/task"))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|tid| *tid != main.to_string())
        .collect();
    assert!(!threads.is_empty(), "no helper threads");
    for tid in threads {
        let path = format!("/proc/{main}/task/{tid}/stat");
        assert_eq!(sched_policy(&path), 0, "helper thread {tid}");
    }
    assert_eq!(
        sched_policy(&format!("/proc/{service}/stat")),
        0,
        "the service"
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn the_spawners_reserved_fds_sit_below_every_fd_that_grows_with_the_services() {
    // A Launcher's child starts on a copy of every fd below the spawner threads' reserved
    // numbers (the /dev/null fds opened at start-up), so those must come before the pidfds and
    // output pipes: otherwise every spawn copies, and closes at exec, fds that grow with N.
    let dir = TempDir::new("fd-order");
    let mut cfg = header(&dir);
    for i in 0..16 {
        cfg += &service(
            &format!("s{i}"),
            "local",
            &["/bin/sleep", &sleep_marker("1000")],
            "",
        );
    }
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["reason=spawned"], 16);
    let mut devnull = Vec::new();
    let mut grows = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{}/fd", orch.pid())).unwrap() {
        let entry = entry.unwrap();
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if fd > 2 && target == "/dev/null" {
            devnull.push(fd);
        } else if target.starts_with("pipe:") || target.contains("pidfd") {
            grows.push(fd);
        }
    }
    assert!(orch.stop(libc::SIGTERM).success());
    // 4 launchers, each with its report number, two output numbers and a /dev/null.
    assert!(devnull.len() >= 16, "{devnull:?}");
    assert!(
        grows.len() >= 16 * 3,
        "16 pidfds and their output pipes: {grows:?}"
    );
    let reserved_top = devnull.iter().max().unwrap();
    let lowest_growing = grows.iter().min().unwrap();
    assert!(
        reserved_top < lowest_growing,
        "reserved {devnull:?} above service fds {grows:?}"
    );
}
