//! Live re-exec (`holdenctl reexec`, SIGUSR2): the orchestrator execs its binary again and
//! keeps every service. Real orchestrators, real crash loops, a real agent in its own PID
//! namespace; what is checked is read from the orchestrator's log (one stream across the
//! execs) and from `/proc`.

mod orchestrator_support;

use orchestrator_support::{
    alive, config_header, field, holdenctl, holdenctl_text, kill, pids_with, service, sleep_marker,
    wait_until, MarkerReaper, Orch, Qm, TempDir,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn start(dir: &TempDir, config: &Path, name: &str) -> Orch {
    let mut cmd = Command::new(orchestrator_support::orchestrator_bin());
    cmd.arg("--config").arg(config).env_remove("NOTIFY_SOCKET");
    Orch::spawn_logged(dir, cmd, name)
}

/// The backoff term before restart `k` (1-based) of the services below.
fn backoff_ms(k: u32) -> u64 {
    (5u64 << (k - 1).min(4)).min(80)
}

fn number(line: &str, key: &str) -> u64 {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {line}"))
}

/// 16 services (12 local, 4 QM) in a crash loop with an exponential backoff; five re-execs
/// while they loop, then a shutdown. Every process spawned has exactly one exit reported,
/// local exits with their real status (still the orchestrator's children: `waitid`), no
/// process is started twice or left behind, and each service's restart counter and backoff
/// step run on across the re-execs as if there had been none.
#[test]
fn reexec_during_a_crash_loop_reports_every_exit_once_and_carries_the_counters() {
    let dir = TempDir::new("reexec-loop");
    let marker = sleep_marker("1100");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let qm = Qm::start(&dir, "");
    let mut config = format!(
        "runtime_dir = {:?}\n{}",
        dir.path("run").display().to_string(),
        config_header(&qm.socket)
    );
    let policy = "restart = \"always\"\nrestart_delay = \"0\"\n\
                  backoff = { initial = \"5ms\", factor = 2.0, max = \"80ms\", reset_after = \"60s\" }\n\
                  start_limit = { burst = 0, interval = \"1s\" }\n";
    let mut names = Vec::new();
    for i in 0..16 {
        let (name, partition) = if i < 12 {
            (format!("l{i}"), "local")
        } else {
            (format!("q{i}"), "qm")
        };
        let starts = dir.path(&format!("starts-{name}"));
        // Each process writes its pid, lives 30 ms and exits 7; its $0 is the marker, so that
        // anything left over is found.
        let script = format!("echo $$ >> '{}'; sleep 0.03; exit 7", starts.display());
        config += &service(
            &name,
            partition,
            &["/bin/sh", "-c", &script, &marker],
            policy,
        );
        names.push((name, partition));
    }
    let path = dir.path("o.toml");
    std::fs::write(&path, config).unwrap();
    let control = dir.path("control.sock");
    let mut orch = start(&dir, &path, "orch");
    let pid = orch.pid();
    orch.wait_lines(&["reason=spawned"], 64);
    let mut generations = Vec::new();
    for round in 1..=5u32 {
        std::thread::sleep(Duration::from_millis(300));
        let (code, text) = holdenctl_text(&control, &["reexec"]);
        assert_eq!(code, 0, "reexec {round}: {text}");
        assert!(text.starts_with("re-executed in "), "{text}");
        assert!(text.contains(&format!("(re-exec {round} of")), "{text}");
        generations.push(round);
        assert!(alive(pid), "the orchestrator kept its pid");
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = orch.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", orch.log());
    let log = orch.log();
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=reexec-done"))
        .collect();
    assert_eq!(done.len(), 5, "{log}");
    for (line, generation) in done.iter().zip(&generations) {
        assert_eq!(number(line, "generation"), u64::from(*generation), "{line}");
    }
    for (name, partition) in &names {
        let tag = format!("service={name} ");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.split_once('>')
                    .is_some_and(|(_, rest)| rest.starts_with(&tag))
            })
            .collect();
        // Spawned, or (a spawn still in flight when a re-exec could wait no longer) found by
        // its tag by the new instance.
        let spawned: Vec<i32> = lines
            .iter()
            .filter_map(|l| {
                if l.contains("reason=spawned") {
                    Some(number(l, "spawned_pid") as i32)
                } else if l.contains("event=found-by-tag") {
                    Some(number(l, "pid") as i32)
                } else {
                    None
                }
            })
            .collect();
        let unique: BTreeSet<i32> = spawned.iter().copied().collect();
        assert_eq!(unique.len(), spawned.len(), "{name}: a pid spawned twice");
        assert!(spawned.len() >= 10, "{name}: only {} spawns", spawned.len());
        let mut exits: BTreeMap<i32, u32> = BTreeMap::new();
        let mut restarts_seen = 0u64;
        for line in lines.iter().filter(|l| l.contains("reason=exited")) {
            let pid = number(line, "pid") as i32;
            *exits.entry(pid).or_default() += 1;
            if line.contains("state=backoff") {
                // An exit of the crash loop: the restart counter moves by one, the backoff
                // term follows it, and a local exit has its status.
                let restarts = number(line, "restarts");
                assert_eq!(restarts, restarts_seen + 1, "{name}: {line}");
                restarts_seen = restarts;
                assert_eq!(
                    number(line, "next_delay_ms"),
                    backoff_ms(restarts as u32),
                    "{name}: the backoff step did not carry over: {line}"
                );
                if *partition == "local" {
                    assert_eq!(field(line, "code"), Some("7"), "{name}: {line}");
                }
            }
        }
        for pid in &spawned {
            assert_eq!(
                exits.get(pid),
                Some(&1),
                "{name}: pid {pid} spawned, exits reported: {:?}\n{log}",
                exits.get(pid)
            );
        }
        assert_eq!(
            exits.len(),
            spawned.len(),
            "{name}: an exit of a pid never spawned"
        );
        if *partition == "local" {
            let written = std::fs::read_to_string(dir.path(&format!("starts-{name}"))).unwrap();
            for pid in written.lines() {
                let pid: i32 = pid.parse().unwrap();
                assert!(
                    unique.contains(&pid),
                    "{name}: pid {pid} ran but was never spawned by the orchestrator"
                );
            }
        }
    }
    assert!(
        log.contains("code=7") && !log.contains("effect=\"exit with status unknown\""),
        "{log}"
    );
    wait_until("every process ended", || {
        pids_with(&marker).is_empty().then_some(())
    });
    drop(qm);
}

/// A re-exec that the new instance could not survive is not done: with a configuration file
/// that no longer loads, the orchestrator says why and runs on as it was.
#[test]
fn a_reexec_the_new_instance_would_not_survive_is_refused_and_nothing_changes() {
    let dir = TempDir::new("reexec-refused");
    let marker = sleep_marker("1101");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let path = dir.path("o.toml");
    std::fs::write(
        &path,
        config_header(&dir.path("agent.sock"))
            + &service("s", "local", &["/bin/sleep", &marker], ""),
    )
    .unwrap();
    let control = dir.path("control.sock");
    let mut orch = start(&dir, &path, "orch");
    orch.wait_lines(&["service=s ", "reason=spawned"], 1);
    let pid = wait_until("s", || pids_with(&marker).first().copied());
    // The configuration becomes invalid: the new instance would refuse it, so no exec.
    std::fs::write(&path, "this is not toml [").unwrap();
    let (code, text) = holdenctl_text(&control, &["reexec"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("configuration file is invalid now"), "{text}");
    assert!(orch.log().contains("event=reexec-failed"), "{}", orch.log());
    assert!(!orch.log().contains("event=reexec-done"));
    // The same instance answers, with the same process.
    let out = holdenctl(&control, &["status", "s"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pid.to_string()));
    assert!(alive(pid));
    orch.stop(libc::SIGTERM);
    assert!(!alive(pid));
}

/// SIGUSR2 re-execs too. A service keeps its process, and its output pipe: every line it
/// writes across three re-execs reaches the log, none is lost and it never sees a closed pipe
/// (it would die of SIGPIPE and be restarted). The control socket is the same socket
/// throughout (kept, never bound anew), and a QM service keeps its process.
#[test]
fn sigusr2_reexecs_and_a_service_keeps_its_process_its_output_and_the_control_socket() {
    let dir = TempDir::new("reexec-keep");
    let marker = sleep_marker("1102");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let qm = Qm::start(&dir, "");
    let talker = "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.01; done";
    let config = format!(
        "runtime_dir = {:?}\n{}{}{}",
        dir.path("run").display().to_string(),
        config_header(&qm.socket),
        service(
            "talk",
            "local",
            &["/bin/sh", "-c", talker, &marker],
            "stdout = \"log\""
        ),
        service("rest", "qm", &["/bin/sleep", &marker], "")
    );
    let path = dir.path("o.toml");
    std::fs::write(&path, config).unwrap();
    let control = dir.path("control.sock");
    let mut orch = start(&dir, &path, "orch");
    orch.wait_lines(&["service=rest ", "reason=spawned"], 1);
    orch.wait_lines(&["service=talk ", "event=output"], 5);
    // The socket file's inode and change time: a socket bound anew is a new file (its inode
    // number may be reused, its change time is later).
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.ctime(), m.ctime_nsec())
    };
    let socket_before = inode(&control);
    let pids = |orch: &Orch| {
        ["talk", "rest"].map(|name| orchestrator_support::last_spawned_pid(orch, name))
    };
    let before = pids(&orch);
    for round in 1..=3 {
        kill(orch.pid(), libc::SIGUSR2);
        orch.wait_lines(&["event=reexec-done"], round);
        // Answered by the new instance, on the same socket.
        let out = holdenctl(&control, &["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for pid in before {
            assert!(text.contains(&format!("\"pid\":{pid}")), "{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reexecs = orch.lines_with(&["event=reexec-done"]).len();
    orch.wait_lines(&["service=talk ", "event=output"], 40);
    assert_eq!(
        inode(&control),
        socket_before,
        "the control socket was bound anew"
    );
    assert_eq!(pids(&orch), before, "a service was started again");
    orch.stop(libc::SIGTERM);
    let log = orch.log();
    assert_eq!(reexecs, 3, "{log}");
    assert_eq!(log.matches("event=reexec binary=").count(), 3, "{log}");
    let numbers: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("service=talk ") && l.contains("event=output"))
        .map(|l| {
            assert!(l.contains(&format!("pid={} ", before[0])), "{l}");
            let text = l.split("text=\"line ").nth(1).expect(l);
            text.trim_end_matches('"').parse().expect(l)
        })
        .collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "lines lost or doubled across the re-execs"
    );
    wait_until("every process ended", || {
        pids_with(&marker).is_empty().then_some(())
    });
    drop(qm);
}
