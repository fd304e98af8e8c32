//! Faults: the agent killed during a storm of 1,000 QM spawns, an impostor on the agent's
//! socket, the orchestrator out of file descriptors, services that fork and exit or die of
//! every signal, and SIGKILL of the orchestrator itself. Real binaries, real processes; the
//! orchestrator's view (its log) is compared with the kernel's (`/proc`).

mod orchestrator_support;
mod reliability_support;

use orchestrator_support::*;
use reliability_support::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn marker() -> String {
    sleep_marker("7777")
}

/// The pid of every service with a live process, as `holdenctl status --json` says it (the
/// orchestrator's own view: the log may drop lines under load, its state does not).
fn status_view(control: &std::path::Path) -> BTreeMap<String, i32> {
    let out = Command::new(env!("CARGO_BIN_EXE_holdenctl"))
        .arg("--socket")
        .arg(control)
        .args(["status", "--json"])
        .output()
        .expect("run holdenctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut view = BTreeMap::new();
    for item in text.split("{\"name\":\"").skip(1) {
        let name = item.split('"').next().unwrap_or_default();
        let pid = item
            .split("\"pid\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if let Some(pid) = pid {
            view.insert(name.to_string(), pid);
        }
    }
    view
}

/// Connections to the agent the orchestrator dropped so far (`holdenctl agent --json`).
fn agent_drops(control: &std::path::Path) -> Option<u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_holdenctl"))
        .arg("--socket")
        .arg(control)
        .args(["agent", "--json"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("\"drops\":")
        .nth(1)?
        .split([',', '}'])
        .next()?
        .parse()
        .ok()
}

/// The last `spawned_pid` the orchestrator logged for each service.
fn orchestrator_view(orch: &Orch) -> BTreeMap<String, i32> {
    let mut view = BTreeMap::new();
    for line in orch.lines_with(&["reason=spawned"]) {
        let (Some(name), Some(pid)) = (field(&line, "service"), field(&line, "spawned_pid")) else {
            continue;
        };
        view.insert(name.to_string(), pid.parse().unwrap());
    }
    view
}

const STORM_SERVICES: usize = 1000;
/// Agent kills during the storm.
const STORM_KILLS: usize = 2;

/// `kill -9` of the agent twice while 1,000 QM services are being spawned. Afterwards every
/// service has exactly one live process — none lost, none duplicated — and it is the one the
/// orchestrator holds (its pids equal the kernel's). The gated exec (docs/wire.md §8a) makes
/// this exact: a process whose `Started` the orchestrator did not receive never execs its
/// program (its gate closes with the agent: exit 125), and one whose `Started` it received is
/// held and adopted even if its `Running` never comes.
#[test]
fn agent_killed_during_a_storm_of_1000_qm_spawns() {
    let dir = TempDir::new("rel-storm");
    let qm = Qm::start(&dir, "");
    let prefix = format!("8888.{}", std::process::id());
    let mut cfg = format!("slots = {}\n", STORM_SERVICES + 8) + &config_header(&qm.socket);
    for i in 0..STORM_SERVICES {
        cfg += &service(
            &format!("s{i}"),
            "qm",
            &["/bin/sleep", &format!("{prefix}{i:04}")],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        );
    }
    let mut orch = Orch::start(&dir, &cfg);
    let control = qm.socket.with_file_name("control.sock");
    for kill_round in 1..=STORM_KILLS {
        let at = kill_round * STORM_SERVICES / (STORM_KILLS + 1);
        orch.wait_lines(&["partition=qm", "reason=spawned"], at);
        qm.kill_agent();
        // The orchestrator's own count: under load the log may drop the agent-down line (it
        // says so, `event=log-dropped`), the count it keeps cannot.
        wait_until("the agent connection dropped", || {
            agent_drops(&control).filter(|&d| d >= kill_round as u64)
        });
    }
    // Every service has exactly one live process, and it is the one the orchestrator holds.
    let (view, kernel) = wait_until("every QM service running exactly once", || {
        let view = status_view(&control);
        if view.len() < STORM_SERVICES {
            return None;
        }
        let kernel = pids_by_argument_prefix(&prefix);
        let settled = (0..STORM_SERVICES).all(|i| {
            let held = view[&format!("s{i}")];
            kernel
                .get(&format!("{prefix}{i:04}"))
                .is_some_and(|pids| pids.contains(&held))
        });
        settled.then_some((view, kernel))
    });
    let mut extra = Vec::new();
    for i in 0..STORM_SERVICES {
        let held = view[&format!("s{i}")];
        let pids = &kernel[&format!("{prefix}{i:04}")];
        assert!(alive(held), "s{i}: the held process {held} is alive");
        extra.extend(pids.iter().filter(|&&p| p != held).map(|&p| (i, p)));
    }
    let spawned = count(&orch, &["partition=qm", "reason=spawned"]);
    let adopted = count(&orch, &["event=held-pidfd-adopted"]);
    eprintln!(
        "storm: {STORM_SERVICES} services, {spawned} QM spawns, {STORM_KILLS} agent kills, \
         {adopted} held pidfds adopted without Running, {} duplicates {extra:?}",
        extra.len()
    );
    assert!(
        extra.is_empty(),
        "duplicated QM processes (service, pid): {extra:?}"
    );
    assert_eq!(
        kernel.len(),
        STORM_SERVICES,
        "a process for every service, no other"
    );
    // The orchestrator's view equals the kernel's: same pid set.
    let held: std::collections::BTreeSet<i32> = view.values().copied().collect();
    let running: std::collections::BTreeSet<i32> = kernel.values().flatten().copied().collect();
    assert_eq!(held, running);
    assert!(orch.stop(libc::SIGTERM).success());
    for (name, pids) in &kernel {
        for pid in pids {
            assert!(!alive(*pid), "{name}: {pid} left running after the stop");
        }
    }
    drop(qm);
}

/// Runs a fake "agent" that accepts connections and answers each with `reply` (after reading
/// what the orchestrator sent, if `read_first`) until the orchestrator has tried `tries` times.
fn impostor(listener: std::os::fd::OwnedFd, reply: &'static [u8], read_first: bool, tries: usize) {
    for _ in 0..tries {
        let conn = accept(&listener);
        if read_first {
            let mut buf = vec![0u8; 65536];
            recv(&conn, &mut buf);
        }
        send(&conn, reply, &[]);
        // Hold the connection until the orchestrator hangs up.
        let mut buf = vec![0u8; 65536];
        while recv(&conn, &mut buf) > 0 {}
    }
}

fn impostor_config(socket: &std::path::Path, protocol: &str, marker: &str) -> String {
    config_header(socket).replace("[agent]\n", &format!("[agent]\nprotocol = {protocol:?}\n"))
        + &service("qm-victim", "qm", &["/bin/sleep", marker], "")
        + &service("local0", "local", &["/bin/sleep", marker], "")
}

/// No spawn was believed: nothing QM ran, the agent never came up; the local service runs.
fn assert_no_qm_spawn(orch: &Orch) {
    assert!(
        orch.lines_with(&["event=agent-up"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(
        orch.lines_with(&["partition=qm", "state=running"])
            .is_empty(),
        "{}",
        orch.log()
    );
    assert_eq!(count(orch, &["service=local0 ", "state=running"]), 1);
}

#[test]
fn impostor_seqpacket_server_answering_garbage_is_refused() {
    let dir = TempDir::new("rel-impostor-garbage");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let m = marker();
    let mut orch = Orch::start(&dir, &impostor_config(&socket, "v1", &m));
    impostor(listener, b"220 smtp.example ESMTP ready\r\n", true, 3);
    let lines = orch.wait_lines(&["event=agent-misbehaved", "undecodable frame"], 1);
    assert!(
        lines[0].contains(&socket.display().to_string()),
        "{lines:?}"
    );
    assert_no_qm_spawn(&orch);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn impostor_sending_an_http_banner_at_once_is_refused() {
    let dir = TempDir::new("rel-impostor-http");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let m = marker();
    let mut orch = Orch::start(&dir, &impostor_config(&socket, "v1", &m));
    impostor(
        listener,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        false,
        3,
    );
    orch.wait_lines(&["event=agent-misbehaved", "undecodable frame"], 1);
    assert_no_qm_spawn(&orch);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn impostor_stream_server_is_refused_with_a_clear_error() {
    let dir = TempDir::new("rel-impostor-stream");
    let socket = dir.path("agent.sock");
    let _listener = listener(&socket, libc::SOCK_STREAM);
    let m = marker();
    let cfg = "log_level = \"debug\"\n".to_string() + &impostor_config(&socket, "v1", &m);
    let mut orch = Orch::start(&dir, &cfg);
    let lines = orch.wait_lines(&["event=agent-connect-failed"], 1);
    assert!(
        lines[0].contains("Protocol wrong type for socket") && lines[0].contains("v0.2 agent?"),
        "{lines:?}"
    );
    // Retried with growing delays (50 ms doubling to 500 ms), logged once.
    let retries = orch.wait_lines(&["event=agent-retry"], 5);
    let delays: Vec<u64> = retries
        .iter()
        .filter_map(|l| field(l, "delay_ms")?.parse().ok())
        .collect();
    assert_eq!(&delays[..5], &[50, 100, 200, 400, 500], "{delays:?}");
    assert_eq!(count(&orch, &["event=agent-connect-failed"]), 1);
    assert_no_qm_spawn(&orch);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn impostor_stream_server_in_auto_mode_is_refused_as_a_v02_agent() {
    let dir = TempDir::new("rel-impostor-auto");
    let socket = dir.path("agent.sock");
    let listener = listener(&socket, libc::SOCK_STREAM);
    let m = marker();
    let cfg = "log_level = \"debug\"\n".to_string() + &impostor_config(&socket, "auto", &m);
    let mut orch = Orch::start(&dir, &cfg);
    // auto: EPROTOTYPE → v0.2: a probe connection (closed at once), then one connection per
    // request. Every request connection gets an HTTP answer, until 4 retries were scheduled.
    while count(&orch, &["event=agent-retry"]) < 4 {
        let Some(conn) = accept_within(&listener, Duration::from_millis(100)) else {
            continue;
        };
        let mut buf = vec![0u8; 65536];
        if recv(&conn, &mut buf) > 0 {
            send(
                &conn,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                &[],
            );
            while recv(&conn, &mut buf) > 0 {}
        }
    }
    let lines = orch.wait_lines(&["event=agent-misbehaved", "protocol=v0.2"], 1);
    assert!(lines[0].contains("v0.2 message"), "{lines:?}");
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    let delays: Vec<u64> = orch
        .lines_with(&["event=agent-retry"])
        .iter()
        .filter_map(|l| field(l, "delay_ms")?.parse().ok())
        .collect();
    assert_eq!(
        &delays[..4],
        &[50, 100, 200, 400],
        "retried ever more slowly"
    );
    assert!(
        orch.lines_with(&["partition=qm", "state=running"])
            .is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

/// Open fds of a process.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn prlimit_nofile(pid: i32, soft: u64, hard: u64) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// RLIMIT_NOFILE of the running orchestrator lowered below its open fds: every spawn fails
/// with EMFILE, reported per service, with backoff; raised again, the services recover; the
/// orchestrator never dies.
#[test]
fn out_of_file_descriptors_fails_spawns_then_recovers() {
    let dir = TempDir::new("rel-nofile");
    let qm = Qm::start(&dir, "");
    let cfg = config_header(&qm.socket)
        + &service(
            "local-loop",
            "local",
            &["/bin/true"],
            "restart = \"always\"\nrestart_delay = \"10ms\"\nbackoff = { initial = \"10ms\", max = \"200ms\" }\nstart_limit = { burst = 0, interval = \"0s\" }",
        )
        + &service(
            "qm-loop",
            "qm",
            &["/bin/true"],
            "restart = \"always\"\nrestart_delay = \"10ms\"\nbackoff = { initial = \"10ms\", max = \"200ms\" }\nstart_limit = { burst = 0, interval = \"0s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["service=local-loop ", "reason=spawned"], 3);
    orch.wait_lines(&["service=qm-loop ", "reason=spawned"], 3);
    let pid = orch.pid();
    let open = fd_count(pid) as u64;
    // No new fd can be had: every fd number is >= 3.
    prlimit_nofile(pid, 3, 4096);
    let failed = orch.wait_lines(
        &["service=local-loop ", "event=spawn-failed", "errno=24"],
        3,
    );
    eprintln!("{} fds open; first failure: {}", open, failed[0]);
    orch.wait_lines(&["service=local-loop ", "state=backoff"], 3);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        orch.child.try_wait().unwrap().is_none(),
        "orchestrator died"
    );
    let qm_lines: Vec<String> = orch
        .log()
        .lines()
        .filter(|l| l.contains("qm-loop") || l.contains("event=agent"))
        .rev()
        .take(6)
        .map(str::to_string)
        .collect();
    eprintln!("QM side while out of fds: {qm_lines:#?}");
    // The orchestrator's own shortage is not blamed on the agent: the connection stays, the
    // request fails with EMFILE, the process whose pidfd was lost is logged.
    assert!(
        orch.lines_with(&["event=agent-misbehaved"]).is_empty(),
        "{}",
        orch.log()
    );
    let lost = orch.lines_with(&["service=qm-loop ", "event=pidfd-lost"]);
    let refused = orch.lines_with(&["event=agent-connect-failed", "errno 24"]);
    assert!(!lost.is_empty() || !refused.is_empty(), "{}", orch.log());
    // Raise it again: both services recover.
    let local_before = count(&orch, &["service=local-loop ", "reason=spawned"]);
    let qm_before = count(&orch, &["service=qm-loop ", "reason=spawned"]);
    prlimit_nofile(pid, 1024, 4096);
    orch.wait_lines(&["service=local-loop ", "reason=spawned"], local_before + 5);
    orch.wait_lines(&["service=qm-loop ", "reason=spawned"], qm_before + 5);
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);
}

/// A service that forks a child and exits: holden supervises the process, not the tree. The
/// exit is logged with its status; the grandchild is reparented and keeps running, also after
/// the orchestrator stops the service and shuts down.
#[test]
fn a_service_that_forks_and_exits_leaves_its_child_unsupervised() {
    let dir = TempDir::new("rel-fork");
    let qm = Qm::start(&dir, "");
    let (ml, mq) = (marker(), marker());
    let cfg = config_header(&qm.socket)
        + &service(
            "forker-local",
            "local",
            &["/bin/sh", "-c", &format!("/bin/sleep {ml} & exit 0")],
            "restart = \"on-failure\"",
        )
        + &service(
            "forker-qm",
            "qm",
            &["/bin/sh", "-c", &format!("/bin/sleep {mq} & exit 0")],
            "restart = \"on-failure\"",
        );
    let mut orch = Orch::start(&dir, &cfg);
    for name in ["forker-local", "forker-qm"] {
        let line = orch.wait_lines(&[&format!("service={name} "), "state=stopped"], 1);
        assert!(line[0].contains("reason=exited code=0"), "{line:?}");
    }
    let local_child = wait_until("local grandchild", || pids_with(&ml).first().copied());
    let qm_child = wait_until("QM grandchild", || pids_with(&mq).first().copied());
    assert_ne!(
        ppid(local_child),
        Some(orch.pid()),
        "reparented away from holden"
    );
    assert_eq!(ppid(qm_child), Some(qm.init_pid), "reparented to QM's init");
    assert_eq!(
        count(&orch, &["reason=spawned"]),
        2,
        "no restart after code 0"
    );
    assert!(orch.stop(libc::SIGTERM).success());
    assert!(
        alive(local_child) && alive(qm_child),
        "grandchildren outlive holden"
    );
    kill(local_child, libc::SIGKILL);
    drop(qm);
}

/// Signals whose default action ends the process (with or without a core dump), by number
/// (dash does not know every name); `RTMIN` is logged by number.
const TERMINATING: [(&str, i32); 24] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
    ("RTMIN", 34),
];
/// Signals whose default action is to ignore them: the process goes on.
const IGNORED: [(&str, i32); 4] = [
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("URG", libc::SIGURG),
    ("WINCH", libc::SIGWINCH),
];

/// One service per signal, locally and in QM: each sends the signal to itself (`kill -s`),
/// with core dumps off. A terminating signal ends it in `failed` with `signal=SIG<NAME>`
/// (real-time signals by number); an ignored one lets it go on to exit 0 (`stopped`).
#[test]
fn a_service_dying_of_every_signal_is_reported_with_that_signal() {
    let dir = TempDir::new("rel-signals");
    let qm = Qm::start(&dir, "");
    let exit_info = holden::pidfd::Capabilities::probe().exit_info;
    let mut cfg = "slots = 128\n".to_string() + &config_header(&qm.socket);
    for partition in ["local", "qm"] {
        for (sig, number) in TERMINATING.iter().chain(&IGNORED) {
            cfg += &service(
                &format!("{partition}-{sig}"),
                partition,
                &[
                    "/bin/sh",
                    "-c",
                    &format!("ulimit -c 0; kill -{number} $$; exit 0"),
                ],
                "restart = \"never\"",
            );
        }
    }
    let mut orch = Orch::start(&dir, &cfg);
    let services = 2 * (TERMINATING.len() + IGNORED.len());
    wait_until("every service ended", || {
        let ended = count(&orch, &["state=failed"]) + count(&orch, &["state=stopped"]);
        (ended >= services).then_some(())
    });
    for partition in ["local", "qm"] {
        for (sig, number) in TERMINATING {
            let lines = orch.lines_with(&[&format!("service={partition}-{sig} "), "reason=exited"]);
            assert_eq!(lines.len(), 1, "{partition}-{sig}: {lines:?}");
            let expected = if sig == "RTMIN" {
                format!("signal={number}")
            } else {
                format!("signal=SIG{sig}")
            };
            let known = partition == "local" || exit_info;
            if known {
                assert!(
                    lines[0].contains("state=failed") && lines[0].contains(&expected),
                    "{partition}-{sig}: {}",
                    lines[0]
                );
            } else {
                assert!(lines[0].contains("status=unknown"), "{}", lines[0]);
            }
        }
        for (sig, _) in IGNORED {
            let lines = orch.lines_with(&[&format!("service={partition}-{sig} "), "reason=exited"]);
            assert_eq!(lines.len(), 1, "{partition}-{sig}: {lines:?}");
            if partition == "local" || exit_info {
                assert!(
                    lines[0].contains("state=stopped") && lines[0].contains("code=0"),
                    "{partition}-{sig}: {}",
                    lines[0]
                );
            }
        }
    }
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);
}

/// SIGKILL of the orchestrator: nothing stops its services. The local one is reparented and
/// keeps running, the QM one keeps running in QM. An orchestrator on *another* runtime
/// directory is another orchestrator: it takes nothing over and starts its own (the one on the
/// same directory takes them over: tests/orchestrator_adoption.rs).
#[test]
fn sigkill_of_the_orchestrator_leaves_services_running_and_another_runtime_dir_starts_its_own() {
    let dir = TempDir::new("rel-orch-kill");
    let qm = Qm::start(&dir, "");
    let (ml, mq) = (marker(), marker());
    let cfg = config_header(&qm.socket)
        + &service(
            "local0",
            "local",
            &["/bin/sleep", &ml],
            "restart = \"always\"",
        )
        + &service("qm0", "qm", &["/bin/sleep", &mq], "restart = \"always\"");
    let mut first = Orch::start(&dir, &cfg);
    first.wait_lines(&["reason=spawned"], 2);
    let view = orchestrator_view(&first);
    let (local_pid, qm_pid) = (view["local0"], view["qm0"]);
    assert_eq!(ppid(local_pid), Some(first.pid()));
    kill(first.pid(), libc::SIGKILL);
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(local_pid), "the local service survives");
    assert!(alive(qm_pid), "the QM service survives");
    assert_ne!(ppid(local_pid), Some(first.pid()), "reparented");
    assert_eq!(
        ppid(qm_pid),
        qm.agent_pid(),
        "still the agent's child in QM"
    );

    let dir2 = TempDir::new("rel-orch-kill-2");
    let mut second = Orch::start(&dir2, &cfg);
    second.wait_lines(&["reason=spawned"], 2);
    let view2 = orchestrator_view(&second);
    assert_eq!(pids_with(&ml), sorted(vec![local_pid, view2["local0"]]));
    assert_eq!(pids_with(&mq), sorted(vec![qm_pid, view2["qm0"]]));
    assert!(second.stop(libc::SIGTERM).success());
    // The second orchestrator stopped its own; the first one's are still there.
    assert_eq!(pids_with(&ml), vec![local_pid]);
    assert_eq!(pids_with(&mq), vec![qm_pid]);
    kill(local_pid, libc::SIGKILL);
    drop(qm);
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort();
    v
}

/// A slow agent: the first `Start` gets no answer in time, but the liveness `Ping` that
/// follows the timeout is answered. The connection stays, the request fails alone, and the
/// service is started again on the same connection (it must not wait for an `AgentUp` that
/// never comes).
#[test]
fn a_slow_agent_that_answers_the_liveness_ping_keeps_serving() {
    use holden::wire::v1;
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("rel-slow-agent");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let m = marker();
    let cfg = config_header(&socket).replace("\"5s\"", "\"300ms\"")
        + &service("qm0", "qm", &["/bin/sleep", &m], "restart_delay = \"0s\"");
    let mut orch = Orch::start(&dir, &cfg);
    let conn = accept(&listener);
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let mut out = [0u8; 64];
    let mut next = |conn: &std::os::fd::OwnedFd| {
        let n = recv(conn, &mut buf);
        let frame = v1::decode(&buf[..n]).expect("frame");
        (frame.request_id(), matches!(frame.body, v1::Body::Start(_)))
    };
    let pong = |out: &mut [u8; 64], id| {
        let len = v1::encode_pong(out, id, v1::Pong::ours(v1::Capabilities::empty())).unwrap();
        out[..len].to_vec()
    };
    let (ping, _) = next(&conn);
    send(&conn, &pong(&mut out, ping), &[]);
    let (first, is_start) = next(&conn);
    assert!(is_start);
    // Say nothing until the liveness Ping, then answer it.
    let (probe, is_start) = next(&conn);
    assert!(!is_start, "a liveness Ping after the timeout");
    send(&conn, &pong(&mut out, probe), &[]);
    orch.wait_lines(&["service=qm0 ", "event=agent-request-timeout"], 1);
    // The service asks again on the same connection; this time it is served.
    let (second, is_start) = next(&conn);
    assert!(is_start && second != first);
    let (child, pidfd) = sleeper(&m);
    let _reaper = Reaper(vec![child]);
    let pid = _reaper.0[0].id() as i32;
    let len = v1::encode_started(&mut out, second, pid).unwrap();
    send(&conn, &out[..len], &[pidfd.as_raw_fd()]);
    orch.wait_lines(
        &[
            "service=qm0 ",
            "state=running",
            &format!("spawned_pid={pid}"),
        ],
        1,
    );
    assert!(
        orch.lines_with(&["event=agent-down"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
}
