//! Services outlive the orchestrator: one instance per runtime directory, and a restarted
//! orchestrator takes over the processes of the one before it (its state record) instead of
//! starting them a second time. Real orchestrators, real processes, a real agent in its own
//! PID namespace, `kill -9` at random points.

mod orchestrator_support;

use orchestrator_support::{
    alive, config_header, field, holdenctl, kill, pids_with, service, sleep_marker, wait_until,
    MarkerReaper, Orch, Qm, TempDir,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `holdenctl status --json`: name → (state, pid).
fn status(socket: &Path) -> BTreeMap<String, (String, Option<i32>)> {
    try_status(socket).expect("holdenctl status")
}

/// `status`, `None` while the orchestrator does not answer yet.
fn try_status(socket: &Path) -> Option<BTreeMap<String, (String, Option<i32>)>> {
    let out = holdenctl(socket, &["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&out.stdout);
    let mut services = BTreeMap::new();
    for object in out.split("{\"name\":").skip(1) {
        let name = object.split('"').nth(1).unwrap().to_string();
        let state = object.split("\"state\":\"").nth(1).unwrap();
        let state = state.split('"').next().unwrap().to_string();
        let pid = object.split("\"pid\":").nth(1).unwrap();
        let pid = pid.split([',', '}']).next().unwrap().parse().ok();
        services.insert(name, (state, pid));
    }
    Some(services)
}

/// Starts an orchestrator whose log is `DIR/NAME.log` (each instance its own log, so that one
/// instance's clean-up never takes another's processes for its own).
fn start(dir: &TempDir, config: &Path, name: &str) -> Orch {
    let mut cmd = Command::new(orchestrator_support::orchestrator_bin());
    cmd.arg("--config").arg(config).env_remove("NOTIFY_SOCKET");
    Orch::spawn_logged(dir, cmd, name)
}

/// A second orchestrator on the same runtime directory (and the same control socket) is
/// refused at once, names the lock and the holder's pid, and leaves the first one reachable
/// and unchanged.
#[test]
fn a_second_orchestrator_is_refused_and_the_first_stays_reachable() {
    let dir = TempDir::new("adopt-lock");
    let marker = sleep_marker("1000");
    let config = dir.path("o.toml");
    std::fs::write(
        &config,
        config_header(&dir.path("agent.sock"))
            + &service("s", "local", &["/bin/sleep", &marker], ""),
    )
    .unwrap();
    let control = dir.path("control.sock");
    let mut first = start(&dir, &config, "first");
    first.wait_lines(&["service=s ", "reason=spawned"], 1);
    let before = status(&control);
    let socket_inode = std::fs::metadata(&control).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });

    let out = Command::new(orchestrator_support::orchestrator_bin())
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(dir.path("run"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lock = dir.path("run").join("lock");
    assert!(
        stderr.contains(&format!(
            "another holden-orchestrator (pid {}) holds the lock {}",
            first.pid(),
            lock.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was started"), "{stderr}");
    assert_eq!(
        pids_with(&marker).len(),
        1,
        "the refused one started nothing"
    );

    // The first is unchanged and reachable, on the same socket file.
    assert_eq!(status(&control), before);
    let after_inode = std::fs::metadata(&control).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(socket_inode.ok(), after_inode.ok());
    assert!(first.stop(libc::SIGTERM).success());
    // A lock left by a dead process blocks nobody: the file is there, its holder gone.
    assert!(lock.exists());
    let mut again = start(&dir, &config, "again");
    again.wait_lines(&["service=s ", "reason=spawned"], 1);
    assert!(again.stop(libc::SIGTERM).success());
}

/// The state record names a pid that another, unrelated process has now: the identity check
/// refuses it, the process is not signalled, and the service starts afresh. A recorded pid
/// that no process has is an exit with status unknown.
#[test]
fn a_reused_pid_is_refused_and_the_process_behind_it_is_left_alone() {
    let dir = TempDir::new("adopt-reuse");
    let run = dir.path("run");
    let config = dir.path("o.toml");
    let (mark_a, mark_b) = (sleep_marker("1000"), sleep_marker("1000"));
    let _reaper = MarkerReaper(vec![mark_a.clone(), mark_b.clone()]);
    std::fs::write(
        &config,
        config_header(&dir.path("agent.sock"))
            + &service("a", "local", &["/bin/sleep", &mark_a], "")
            + &service("b", "local", &["/bin/sleep", &mark_b], ""),
    )
    .unwrap();
    // A record as the previous instance would have left it, written by a real one.
    let first = start(&dir, &config, "first");
    first.wait_lines(&["reason=spawned"], 2);
    let record = wait_until("record of both", || {
        let text = std::fs::read_to_string(run.join("state")).ok()?;
        (text.matches("state=running").count() == 2).then_some(text)
    });
    first.kill_9();
    for marker in [&mark_a, &mark_b] {
        for pid in pids_with(marker) {
            kill(pid, libc::SIGKILL);
        }
    }
    // `a`'s pid now belongs to an unrelated process (its identity differs), `b`'s to none.
    let mut unrelated = Command::new("/bin/sleep").arg("1000").spawn().unwrap();
    let unrelated_pid = unrelated.id() as i32;
    let line_of = |name: &str| {
        record
            .lines()
            .find(|l| l.starts_with(&format!("service {name} ")))
            .unwrap()
            .to_string()
    };
    let (a, b) = (line_of("a"), line_of("b"));
    let pid_a = field(&a, "pid").unwrap().to_string();
    let pid_b = field(&b, "pid").unwrap().to_string();
    let forged = record
        .replace(
            &a,
            &a.replace(&format!("pid={pid_a} "), &format!("pid={unrelated_pid} ")),
        )
        .replace(&b, &b.replace(&format!("pid={pid_b} "), "pid=4194000 "));
    std::fs::write(run.join("state"), forged).unwrap();

    let mut second = start(&dir, &config, "second");
    second.wait_lines(&["event=carried-over"], 1);
    let log = second.log();
    assert!(
        log.contains(&format!(
            "service=a partition=local pid={unrelated_pid} event=pid-reused"
        )),
        "{log}"
    );
    assert!(
        log.contains("service=b partition=local pid=4194000 event=process-gone"),
        "{log}"
    );
    assert!(
        log.contains("event=carried-over services=2 adopted=0 found_by_tag=0 gone=1 pid_reused=1"),
        "{log}"
    );
    // Both count as exits with status unknown, and restart = always starts them afresh.
    second.wait_lines(&["reason=exited status=unknown"], 2);
    let a_pid = wait_until("a restarted", || pids_with(&mark_a).first().copied());
    assert_ne!(a_pid, unrelated_pid);
    assert_eq!(pids_with(&mark_b).len(), 1);
    // The unrelated process was never signalled.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        unrelated.try_wait().unwrap(),
        None,
        "the unrelated process was signalled"
    );
    assert!(!log.contains(&format!("pid={unrelated_pid} event=signal")));
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
    assert!(second.stop(libc::SIGTERM).success());
}

/// 32 local and 32 QM services are restarted all at once (a storm of spawns), and the orchestrator
/// is killed with SIGKILL at a random point of it, `HOLDEN_ADOPT_RUNS` times (default 20) and
/// then on until 1,000 spawns have happened (an early kill can come before any restart was
/// asked for, so how many spawns a run makes is chance); after each kill a new orchestrator
/// starts on the same runtime directory. Afterwards every
/// service has exactly one live process, and `holdenctl status --json` names the very pid
/// that `/proc` shows. Every second run also kills the agent at the same moment.
#[test]
fn kill_9_during_a_spawn_storm_then_a_restart_leaves_one_process_per_service() {
    // 64 services: 20 runs ask for up to 1,280 restarts; the runs go on (at most three times as
    // many) until the storm has made 1,000 spawns, the figure.
    const SERVICES: usize = 32;
    const STORM: usize = 1_000;
    let runs: usize = std::env::var("HOLDEN_ADOPT_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("adopt-storm");
    let qm = Qm::start(&dir, "");
    let mut markers = BTreeMap::new();
    let mut text = format!("slots = {}\n", 2 * SERVICES) + &config_header(&qm.socket);
    for i in 0..SERVICES {
        for partition in ["local", "qm"] {
            let name = format!("{partition}{i}");
            let marker = sleep_marker("1000");
            text += &service(
                &name,
                partition,
                &["/bin/sleep", &marker],
                "stop_timeout = \"2s\"",
            );
            markers.insert(name, marker);
        }
    }
    let config = dir.path("o.toml");
    std::fs::write(&config, text).unwrap();
    let _reaper = MarkerReaper(markers.values().cloned().collect());
    let control = dir.path("control.sock");
    let mut seed = std::process::id() as u64 | 1;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let settled = |orch: &Orch| {
        wait_until("every service running", || {
            let status = try_status(&control)?;
            assert!(orch.lines_with(&["event=core-refused"]).is_empty());
            let all = status.len() == markers.len()
                && status
                    .values()
                    .all(|(state, pid)| state == "running" && pid.is_some());
            all.then_some(status)
        })
    };
    let mut orch = start(&dir, &config, "run0");
    settled(&orch);
    let (mut spawns, mut duplicates, mut lost, mut mismatched) = (0usize, 0usize, 0usize, 0usize);
    // Every spawn of the storm, by the instance killed in it or by the next one finishing it.
    let spawns_in = |k: usize| {
        std::fs::read_to_string(dir.path(&format!("run{k}.log")))
            .unwrap_or_default()
            .matches("reason=spawned")
            .count()
    };
    let spawns_all = |last: usize| (0..=last).map(spawns_in).sum::<usize>();
    let started = Instant::now();
    let mut run = 0;
    while run < runs || (runs >= 20 && spawns_all(run) < STORM && run < 3 * runs) {
        run += 1;
        // The storm: every service restarts (a stop, then a spawn), asked for without waiting.
        let names: Vec<&str> = markers.keys().map(String::as_str).collect();
        let mut restart = Command::new(env!("CARGO_BIN_EXE_holdenctl"));
        restart
            .arg("--socket")
            .arg(&control)
            .arg("restart")
            .args(&names);
        let mut restart = restart.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(random(80_000)));
        let spawned = orch.lines_with(&["reason=spawned"]).len();
        orch.kill_9();
        if run % 2 == 0 {
            qm.kill_agent();
        }
        let _ = restart.wait();
        spawns += spawned;
        orch = start(&dir, &config, &format!("run{run}"));
        settled(&orch);
        // Let anything spawned twice show itself, and a process taken over as it was dying
        // (a zombie of the stop the storm asked for) be reported and restarted: wait until
        // every service shows one live process whose pid holdenctl names, or 10 s.
        std::thread::sleep(Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = try_status(&control).unwrap_or_default();
            let consistent = markers.iter().all(|(name, marker)| {
                let pids: Vec<i32> = pids_with(marker)
                    .into_iter()
                    .filter(|&p| alive(p))
                    .collect();
                pids.len() == 1 && status.get(name).and_then(|s| s.1) == Some(pids[0])
            });
            if consistent || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for (name, marker) in &markers {
            let pids: Vec<i32> = pids_with(marker)
                .into_iter()
                .filter(|&p| alive(p))
                .collect();
            match pids.len() {
                0 => {
                    lost += 1;
                    let shown = status.get(name).and_then(|s| s.1);
                    eprintln!(
                        "lost: {name} shown as {shown:?} ({:?}); log: {:?}",
                        shown.and_then(orchestrator_support::cmdline),
                        orch.lines_with(&[&format!("service={name} ")])
                    );
                }
                1 => {}
                n => duplicates += n - 1,
            }
            let shown = status.get(name).and_then(|s| s.1);
            if pids.len() == 1 && shown != Some(pids[0]) {
                mismatched += 1;
            }
            // Whatever happened, end the extra processes so that the next run starts clean.
            for &pid in pids.iter().filter(|&&p| Some(p) != shown) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
    let spawns_all = spawns_all(run);
    eprintln!(
        "adoption storm: {run} runs x {} services, {spawns_all} spawns in all, {spawns} logged \
         before the kills, \
         {duplicates} duplicates, {lost} lost, {mismatched} status/proc mismatches ({:.1} s)",
        markers.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(orch.stop(libc::SIGTERM).success());
    for marker in markers.values() {
        assert!(
            pids_with(marker).is_empty(),
            "a process outlived the shutdown"
        );
    }
    assert_eq!((duplicates, lost, mismatched), (0, 0, 0));
    if runs >= 20 {
        assert!(spawns_all >= STORM, "a storm of {spawns_all} spawns only");
    }
}
