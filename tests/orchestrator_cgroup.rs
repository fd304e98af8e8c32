//! Local services in their own cgroup v2 (`[cgroup] root`): created inside it, stopped and
//! shut down as a whole tree, and a main process that exits before its children.
//!
//! Each test uses its own cgroup root under the cgroup2 mount (`/sys/fs/cgroup/unified` on
//! this hybrid host, `/sys/fs/cgroup` on a pure v2 one) and removes it afterwards; its
//! processes are found by a marker unique to the test (in every process's command line), and
//! whatever a failing test leaves is killed by pid. A host without a writable cgroup2 mount
//! skips these tests (they say so on stderr).

mod orchestrator_support;

use orchestrator_support::*;
use std::path::Path;
use std::process::Command;

/// Live processes whose command line contains `marker` anywhere (scripts carry it in their
/// text, `sleep` as its argument).
fn marked(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let needle = marker.as_bytes();
        if cmdline.windows(needle.len()).any(|w| w == needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills by pid whatever of a test's processes is left (a failing test), then asserts none was.
struct Marked(String);

impl Drop for Marked {
    fn drop(&mut self) {
        for pid in marked(&self.0) {
            kill(pid, libc::SIGKILL);
        }
    }
}

fn cgroup_line(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_default()
        .to_string()
}

/// The path of `dir` relative to the cgroup2 mount, as `/proc/PID/cgroup` shows it.
fn relative(dir: &Path) -> String {
    let mount = holden::cgroup::mount_point().unwrap();
    format!("/{}", dir.strip_prefix(&mount).unwrap().display())
}

/// A script that builds a tree of 50 processes, every one with `m` in its command line: 15
/// `sleep` children, 10 double-forked `setsid sleep`s, 5 `sh` with 3 `sleep`s each, a
/// double-forked `setsid sh` with 2 `sleep`s, and the main loop with its `sleep`.
fn tree_script(m: &str) -> String {
    format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do sleep {m} & done; \
         for i in 1 2 3 4 5 6 7 8 9 10; do (setsid sleep {m} &); done; \
         for i in 1 2 3 4 5; do sh -c 'sleep {m} & sleep {m} & sleep {m} & wait; : {m}' & done; \
         (setsid sh -c 'sleep {m} & sleep {m} & wait; : {m}' &); \
         while :; do sleep {m}; done"
    )
}

#[test]
fn a_service_is_created_inside_its_cgroup() {
    let Some(root) = TestCgroup::new("inside") else {
        return;
    };
    let dir = TempDir::new("cg-inside");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service("inside", "local", &["/bin/sleep", &marker], "")
    );
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["service=inside ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "inside");
    assert_eq!(
        cgroup_line(pid),
        format!("0::{}", relative(&root.service("inside")))
    );
    let procs = std::fs::read_to_string(root.service("inside").join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());
    assert!(orch.stop(libc::SIGTERM).success());
    // A clean shutdown removes the (empty) service cgroup.
    assert!(!root.service("inside").exists());
}

#[test]
fn stop_ends_a_tree_of_50_processes_with_double_forks_and_setsid() {
    let Some(root) = TestCgroup::new("stop") else {
        return;
    };
    let dir = TempDir::new("cg-stop");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let script = tree_script(&marker);
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service(
            "tree",
            "local",
            &["/bin/sh", "-c", &script],
            "restart = \"never\"\nstop_timeout = \"20s\""
        )
    );
    let mut orch = Orch::start(&dir, &config);
    let tree = wait_until("50 processes of the tree", || {
        let pids = marked(&marker);
        (pids.len() >= 50).then_some(pids)
    });
    let setsid = tree
        .iter()
        .filter(|&&pid| ppid(pid) == Some(1) || ppid(pid).is_some_and(|p| !tree.contains(&p)))
        .count();
    assert!(
        setsid >= 10,
        "double-forked processes: {setsid} of {tree:?}"
    );
    let out = holdenctl(&dir.path("control.sock"), &["stop", "tree"]);
    assert!(out.status.success(), "{out:?}");
    orch.wait_lines(&["service=tree ", "state=stopped"], 1);
    // The exit is reported once the cgroup is empty: nothing of the tree is left.
    assert_eq!(marked(&marker), Vec::<i32>::new());
    // The stop signal went to every process of the cgroup (all die of it: no SIGKILL).
    let signal = orch.lines_with(&["service=tree ", "event=signal", "signal=SIGTERM"]);
    let procs: usize = signal
        .first()
        .and_then(|l| field(l, "procs"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("stop signal to the cgroup: {signal:?}"));
    assert!(procs >= 50, "{signal:?}");
    assert!(orch
        .lines_with(&["service=tree ", "event=tree-kill"])
        .is_empty());
    let procs = std::fs::read_to_string(root.service("tree").join("cgroup.procs")).unwrap();
    assert_eq!(procs, "");
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn shutdown_leaves_nothing_of_the_tree_behind() {
    let Some(root) = TestCgroup::new("shutdown") else {
        return;
    };
    let dir = TempDir::new("cg-shutdown");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    // The measured bug: the `sleep` of a `sh -c` loop outlived the orchestrator with PPID 1.
    let script = format!("(setsid sleep {marker} &); while :; do sleep {marker}; done");
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service("loop", "local", &["/bin/sh", "-c", &script], "")
    );
    let mut orch = Orch::start(&dir, &config);
    wait_until("the loop and its sleeps", || {
        (marked(&marker).len() >= 3).then_some(())
    });
    assert!(orch.stop(libc::SIGTERM).success());
    assert_eq!(marked(&marker), Vec::<i32>::new());
    let signal = orch.lines_with(&["service=loop ", "event=signal", "target=cgroup"]);
    assert_eq!(signal.len(), 1, "{}", orch.log());
}

#[test]
fn a_main_exit_signals_what_remains_and_is_reported_once_the_cgroup_is_empty() {
    let Some(root) = TestCgroup::new("main-exit") else {
        return;
    };
    let dir = TempDir::new("cg-main-exit");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    // `dies`: its child dies of the stop signal. `stays`: its child ignores SIGTERM, so it
    // gets SIGKILL after stop_timeout.
    let dies = format!("sleep {marker} & echo child=$!; exit 7");
    let stays = format!("trap '' TERM; sleep {marker} & echo child=$!; exit 7");
    let config = format!(
        "{}{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service(
            "dies",
            "local",
            &["/bin/sh", "-c", &dies],
            "restart = \"never\"\nstop_timeout = \"60s\""
        ),
        service(
            "stays",
            "local",
            &["/bin/sh", "-c", &stays],
            "restart = \"never\"\nstop_timeout = \"1s\""
        )
    );
    let mut orch = Orch::start(&dir, &config);
    for (name, kill_line) in [("dies", false), ("stays", true)] {
        let exited = orch.wait_lines(&[&format!("service={name} "), "reason=exited", "code=7"], 1);
        let log = orch.log();
        let child: i32 = log
            .lines()
            .find(|l| l.contains(&format!("service={name} ")) && l.contains("child="))
            .and_then(|l| l.split("child=").nth(1))
            .and_then(|p| p.trim().trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("{name}: child pid in {log}"));
        // Reported only once the cgroup was empty: the child is gone.
        assert!(
            !alive(child),
            "{name}: child {child} alive after {exited:?}"
        );
        let remains = log.lines().position(|l| {
            l.contains(&format!("service={name} ")) && l.contains("event=tree-remains")
        });
        let killed = log
            .lines()
            .position(|l| l.contains(&format!("service={name} ")) && l.contains("event=tree-kill"));
        let reported = log
            .lines()
            .position(|l| l.contains(&format!("service={name} ")) && l.contains("reason=exited"));
        assert!(remains.is_some() && remains < reported, "{name}: {log}");
        if kill_line {
            assert!(killed.is_some() && killed < reported, "{name}: {log}");
        } else {
            assert_eq!(killed, None, "{name}: {log}");
        }
    }
    assert!(orch.stop(libc::SIGTERM).success());
    assert_eq!(marked(&marker), Vec::<i32>::new());
}

/// kill -9 of the orchestrator while a forking service runs, then a new instance on the same
/// runtime directory: the new one takes the service over with its whole tree (the cgroup is
/// neither made anew nor killed, no process of the tree is taken for a second process of the
/// service), and a stop then ends every process of the tree, by the pids recorded before.
#[test]
fn a_restart_after_kill_9_takes_over_the_whole_tree_and_stop_ends_it() {
    let Some(root) = TestCgroup::new("adopt") else {
        return;
    };
    let dir = TempDir::new("cg-adopt");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let script = tree_script(&marker);
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service(
            "tree",
            "local",
            &["/bin/sh", "-c", &script],
            "restart = \"never\"\nstop_timeout = \"20s\""
        )
    );
    std::fs::write(dir.path("o.toml"), &config).unwrap();
    let start = |name: &str| {
        let mut cmd = Command::new(orchestrator_bin());
        cmd.arg("--config")
            .arg(dir.path("o.toml"))
            .env_remove("NOTIFY_SOCKET");
        Orch::spawn_logged(&dir, cmd, name)
    };
    let first = start("first");
    let main = {
        first.wait_lines(&["service=tree ", "reason=spawned"], 1);
        last_spawned_pid(&first, "tree")
    };
    let tree = wait_until("50 processes of the tree", || {
        let pids = marked(&marker);
        (pids.len() >= 50).then_some(pids)
    });
    assert!(tree.contains(&main), "main {main} in {tree:?}");
    // Taken over from the record, not found by its tag.
    wait_until("the record of the running service", || {
        let text = std::fs::read_to_string(dir.path("run").join("state")).ok()?;
        text.lines()
            .any(|l| l.starts_with("service tree ") && l.contains(&format!(" pid={main} ")))
            .then_some(())
    });
    let cgroup = root.service("tree");
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let cgroup_inode = inode(&cgroup);
    first.kill_9();

    let mut second = start("second");
    second.wait_lines(&["event=carried-over"], 1);
    let carried = second.lines_with(&["event=carried-over"]);
    assert!(
        carried[0].contains("adopted=1") && carried[0].contains("second_processes_ended=0"),
        "{}",
        second.log()
    );
    // Nothing of the tree was ended or moved by the take-over: the same cgroup holds it all.
    let dead: Vec<i32> = tree.iter().copied().filter(|&p| !alive(p)).collect();
    assert_eq!(dead, Vec::<i32>::new(), "{}", second.log());
    assert_eq!(inode(&cgroup), cgroup_inode, "the cgroup was made anew");
    for &pid in &tree {
        assert_eq!(
            cgroup_line(pid),
            format!("0::{}", relative(&cgroup)),
            "pid {pid}"
        );
    }
    let out = holdenctl(&dir.path("control.sock"), &["stop", "tree"]);
    assert!(out.status.success(), "{out:?}");
    second.wait_lines(&["service=tree ", "state=stopped"], 1);
    let left: Vec<i32> = tree.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(left, Vec::<i32>::new(), "{}", second.log());
    assert_eq!(marked(&marker), Vec::<i32>::new());
    assert!(second.stop(libc::SIGTERM).success());
}

/// kill -9 of the orchestrator, then of the service's main process, while its tree runs: the
/// next instance finds the tree without its main in the cgroup, ends it before anything starts
/// there again, and the service restarts in a cgroup made anew (after the `cgroup.kill` a
/// CLONE_INTO_CGROUP child of the old one could be killed at once on 6.18).
#[test]
fn a_restart_ends_a_tree_whose_main_died_meanwhile_and_starts_the_service_again() {
    let Some(root) = TestCgroup::new("orphan") else {
        return;
    };
    let dir = TempDir::new("cg-orphan");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let script = format!(
        "sleep {marker} & sleep {marker} & (setsid sleep {marker} &); \
         while :; do sleep {marker}; done"
    );
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service("orphan", "local", &["/bin/sh", "-c", &script], "")
    );
    std::fs::write(dir.path("o.toml"), &config).unwrap();
    let start = |name: &str| {
        let mut cmd = Command::new(orchestrator_bin());
        cmd.arg("--config")
            .arg(dir.path("o.toml"))
            .env_remove("NOTIFY_SOCKET");
        Orch::spawn_logged(&dir, cmd, name)
    };
    let first = start("first");
    first.wait_lines(&["service=orphan ", "reason=spawned"], 1);
    let main = last_spawned_pid(&first, "orphan");
    let tree = wait_until("the tree", || {
        let pids = marked(&marker);
        (pids.len() >= 4).then_some(pids)
    });
    wait_until("the record of the running service", || {
        let text = std::fs::read_to_string(dir.path("run").join("state")).ok()?;
        text.lines()
            .any(|l| l.starts_with("service orphan ") && l.contains(&format!(" pid={main} ")))
            .then_some(())
    });
    first.kill_9();
    kill(main, libc::SIGKILL);
    // Reaped by its new parent (not a zombie, which would be taken over and then reported).
    wait_until("the main process reaped", || {
        (!Path::new(&format!("/proc/{main}")).exists()).then_some(())
    });

    let mut second = start("second");
    let ended = second.wait_lines(&["service=orphan ", "event=orphan-tree-ended"], 1);
    assert!(ended[0].contains("empty=yes"), "{}", second.log());
    let left: Vec<i32> = tree.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(left, Vec::<i32>::new(), "{}", second.log());
    // Started again, and it stays: the new cgroup has no kill behind it.
    let spawned = second.wait_lines(&["service=orphan ", "reason=spawned"], 1);
    let new_main: i32 = field(&spawned[0], "spawned_pid").unwrap().parse().unwrap();
    wait_until("the new tree", || {
        (marked(&marker).len() >= 4).then_some(())
    });
    assert!(alive(new_main), "{}", second.log());
    assert_eq!(
        cgroup_line(new_main),
        format!("0::{}", relative(&root.service("orphan")))
    );
    let out = holdenctl(&dir.path("control.sock"), &["stop", "orphan"]);
    assert!(out.status.success(), "{out:?}");
    second.wait_lines(&["service=orphan ", "state=stopped"], 1);
    assert_eq!(marked(&marker), Vec::<i32>::new());
    assert!(second.stop(libc::SIGTERM).success());
}

/// A cgroup limit whose controller the services' cgroups cannot have (this hybrid host: the
/// unified hierarchy offers only `hugetlb`) is an error at `--check` and at start, naming the
/// controller, with the key's place in the file; nothing is started. With `root = "off"` a
/// limit is refused too: there would be no cgroup to hold it.
#[test]
fn a_cgroup_limit_without_its_controller_is_refused_at_check_and_at_start() {
    limits_without_their_controller_are_refused("local");
}

/// The same for a QM service, whose limits the agent would write into `<[agent] cgroup>/<name>`:
/// the controllers are looked for there (or in its nearest existing ancestor, QM's cgroup).
#[test]
fn a_qm_cgroup_limit_without_its_controller_is_refused_at_check_and_at_start() {
    limits_without_their_controller_are_refused("qm");
}

fn limits_without_their_controller_are_refused(partition: &str) {
    let Some(root) = TestCgroup::new("limits") else {
        return;
    };
    let offered = std::fs::read_to_string(root.0.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    if missing.len() < 2 {
        eprintln!("skipped: {} offers {offered:?}", root.0.display());
        return;
    }
    let dir = TempDir::new("cg-limits");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let plain = config_header(&dir.path("agent.sock"));
    // Where the service's cgroup would be: under [cgroup] root, or under [agent] cgroup.
    let header = match partition {
        "local" => format!("{plain}{}", root.toml()),
        _ => qm_config(&dir, &root.0.join("services"), ""),
    };
    let limited = service(
        "hog",
        partition,
        &["/bin/sleep", &marker],
        "memory_max = \"32M\"\npids_max = 64",
    );
    let text = format!("{header}{limited}");
    let memory_line = text
        .lines()
        .position(|l| l.starts_with("memory_max"))
        .unwrap()
        + 1;
    let path = dir.path("limits.toml");
    std::fs::write(&path, &text).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(orchestrator_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .arg("--runtime-dir")
            .arg(dir.path("run"))
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [&["--check"][..], &[][..]] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for (key, controller, line) in [
            ("memory_max", "memory", memory_line),
            ("pids_max", "pids", memory_line + 1),
        ] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(&format!("{}:{line}:", path.display()))
                        && l.contains(&format!("`service.hog.{key}`"))
                        && l.contains(&format!("controller `{controller}`"))),
                "{args:?} {key}: {stderr}"
            );
        }
        assert_eq!(marked(&marker), Vec::<i32>::new(), "{args:?}: started");
    }
    // Without cgroups there is nothing to hold a limit.
    let (without, reason) = match partition {
        "local" => (
            format!("{plain}[cgroup]\nroot = \"off\"\n\n{limited}"),
            "services get no cgroup",
        ),
        _ => (format!("{plain}{limited}"), "[agent] cgroup is not set"),
    };
    std::fs::write(&path, without).unwrap();
    let (code, stderr) = run(&["--check"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("`service.hog.memory_max`") && stderr.contains(reason),
        "{stderr}"
    );
}

/// A live re-exec (`holdenctl reexec`) with a forking service in its cgroup: the new instance
/// carries the whole tree on (nothing of it ended or moved, the cgroup not made anew), and a
/// stop after the re-exec ends every process of it.
#[test]
fn a_reexec_keeps_the_whole_tree_and_stop_ends_it() {
    let Some(root) = TestCgroup::new("reexec") else {
        return;
    };
    let dir = TempDir::new("cg-reexec");
    let marker = sleep_marker("3600");
    let _left = Marked(marker.clone());
    let script = tree_script(&marker);
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        service(
            "tree",
            "local",
            &["/bin/sh", "-c", &script],
            "restart = \"never\"\nstop_timeout = \"20s\""
        )
    );
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["service=tree ", "reason=spawned"], 1);
    let main = last_spawned_pid(&orch, "tree");
    let tree = wait_until("50 processes of the tree", || {
        let pids = marked(&marker);
        (pids.len() >= 50).then_some(pids)
    });
    let cgroup = root.service("tree");
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let cgroup_inode = inode(&cgroup);
    let (code, text) = holdenctl_text(&dir.path("control.sock"), &["reexec"]);
    assert_eq!(code, 0, "{text}");
    orch.wait_lines(&["event=reexec-done"], 1);
    let dead: Vec<i32> = tree.iter().copied().filter(|&p| !alive(p)).collect();
    assert_eq!(dead, Vec::<i32>::new(), "{}", orch.log());
    assert_eq!(inode(&cgroup), cgroup_inode, "the cgroup was made anew");
    assert!(orch
        .lines_with(&["service=tree ", "event=second-process-ended"])
        .is_empty());
    assert_eq!(
        orch.lines_with(&["service=tree ", "reason=spawned"]).len(),
        1
    );
    assert!(alive(main));
    let out = holdenctl(&dir.path("control.sock"), &["stop", "tree"]);
    assert!(out.status.success(), "{out:?}");
    orch.wait_lines(&["service=tree ", "state=stopped"], 1);
    let left: Vec<i32> = tree.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(left, Vec::<i32>::new(), "{}", orch.log());
    assert_eq!(marked(&marker), Vec::<i32>::new());
    assert!(orch.stop(libc::SIGTERM).success());
}

/// `systemd-notify --ready` run by the service's script (a process of its tree, not its main
/// process, which sends and exits at once) makes the service ready: the sender is found by
/// its cgroup. Five services, so that a reap before the orchestrator's look would show
/// (systemd 252's `systemd-notify` does not wait for an answer).
#[test]
fn systemd_notify_from_a_services_script_counts_for_the_service() {
    if !Path::new("/usr/bin/systemd-notify").exists() {
        // `cargo xtask ci` installs systemd; a bare `cargo test` elsewhere may not have it.
        eprintln!("skipped: no /usr/bin/systemd-notify");
        return;
    }
    let Some(root) = TestCgroup::new("sdnotify") else {
        return;
    };
    let dir = TempDir::new("cg-sdnotify");
    let marker = sleep_marker("3601");
    let _left = Marked(marker.clone());
    // From a subshell that does not exec it (`; true`): systemd-notify sends with its
    // parent's pid (as root it may), which is then the subshell's, not the main process's.
    let script = format!(
        "(sleep 0.2; systemd-notify --ready --status=script-ready; true); exec /bin/sleep {marker}"
    );
    let mut services = String::new();
    for i in 0..5 {
        services += &service(
            &format!("sdn{i}"),
            "local",
            &["/bin/sh", "-c", &script],
            "type = \"notify\"\nstart_timeout = \"20s\"",
        );
    }
    let config = format!(
        "{}{}{}",
        config_header(&dir.path("agent.sock")),
        root.toml(),
        services
    );
    let mut orch = Orch::start(&dir, &config);
    for i in 0..5 {
        let ready = orch
            .wait_lines(&[&format!("service=sdn{i} "), "reason=ready"], 1)
            .remove(0);
        assert!(ready.contains("state=running"), "{ready}");
    }
    let (_, table) = holdenctl_text(&dir.path("control.sock"), &["status", "sdn0"]);
    assert!(table.contains("script-ready"), "{table}");
    assert!(orch.stop(libc::SIGTERM).success());
}

/// A QM tree (a sleep in the background, one in a new session, the main process) is created
/// in its own cgroup `<agent cgroup>/<name>` by the agent; a stop signals the whole cgroup,
/// and when the main process is killed alone the rest of its tree ends with it.
#[test]
fn a_qm_service_has_its_own_cgroup_and_its_tree_ends_with_it() {
    let Some(root) = TestCgroup::new("qm") else {
        return;
    };
    let dir = TempDir::new("cg-qm");
    let _qm = qm_in(&dir, &root);
    let marker = sleep_marker("3602");
    let _left = Marked(marker.clone());
    let script =
        format!("sleep 3600 {marker} & setsid sleep 3600 {marker} & exec sleep 3600 {marker}");
    let config = qm_tree_config(&dir, &root.0.join("services"), &script);
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["service=tree ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "tree");
    let expected = format!("0::{}", relative(&root.0.join("services").join("tree")));
    assert_eq!(cgroup_line(pid), expected);
    wait_until_ok(|| marked(&marker).len() == 3);
    assert!(orch.lines_with(&["event=qm-cgroup-refused"]).is_empty());
    // Stop: the whole cgroup gets SIGTERM.
    let (code, out) = holdenctl_text(&dir.path("control.sock"), &["stop", "tree"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until_ok(|| marked(&marker).is_empty()),
        "left: {:?}",
        marked(&marker)
    );
    let signalled = orch.wait_lines(&["service=tree ", "event=signal", "target=cgroup"], 1);
    assert!(signalled[0].contains("procs=3"), "{}", signalled[0]);
    // Started again, its main process killed alone: the rest goes with it.
    let (code, out) = holdenctl_text(&dir.path("control.sock"), &["start", "tree"]);
    assert_eq!(code, 0, "{out}");
    orch.wait_lines(&["service=tree ", "reason=spawned"], 2);
    wait_until_ok(|| marked(&marker).len() == 3);
    kill(last_spawned_pid(&orch, "tree"), libc::SIGKILL);
    assert!(
        wait_until_ok(|| marked(&marker).is_empty()),
        "left: {:?}",
        marked(&marker)
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

/// The agent placed the process somewhere else than `<agent cgroup>/<name>` (here: the
/// orchestrator is told another cgroup than the one the agent has, as an agent that lies
/// would do): refused and logged, and nothing is signalled through a cgroup.
#[test]
fn a_qm_process_outside_its_cgroup_is_refused_and_only_it_is_signalled() {
    let (Some(root), Some(other)) = (TestCgroup::new("qm-real"), TestCgroup::new("qm-told")) else {
        return;
    };
    let dir = TempDir::new("cg-qm-lie");
    let _qm = qm_in(&dir, &root);
    let marker = sleep_marker("3603");
    let _left = Marked(marker.clone());
    let script = format!("sleep 3600 {marker} & exec sleep 3600 {marker}");
    let config = qm_tree_config(&dir, &other.0.join("services"), &script);
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["service=tree ", "reason=spawned"], 1);
    let refused = orch
        .wait_lines(&["service=tree ", "event=qm-cgroup-refused"], 1)
        .remove(0);
    assert!(refused.contains("qm-real"), "{refused}");
    wait_until_ok(|| marked(&marker).len() == 2);
    let main = last_spawned_pid(&orch, "tree");
    let (code, out) = holdenctl_text(&dir.path("control.sock"), &["stop", "tree"]);
    assert_eq!(code, 0, "{out}");
    orch.wait_lines(&["service=tree ", "state=stopped"], 1);
    // The main process was signalled alone; the other sleep of its tree was not touched.
    assert!(orch
        .lines_with(&["service=tree ", "target=cgroup"])
        .is_empty());
    let left = marked(&marker);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left.contains(&main));
    assert!(orch.stop(libc::SIGTERM).success());
}

/// The configuration of the QM tests' one service, `tree`: `script` under `sh -c` in QM,
/// never restarted, with `[agent] cgroup = cgroup`.
fn qm_tree_config(dir: &TempDir, cgroup: &Path, script: &str) -> String {
    qm_config(
        dir,
        cgroup,
        &service(
            "tree",
            "qm",
            &["/bin/sh", "-c", script],
            "restart = \"never\"",
        ),
    )
}

/// The test's configuration with `[agent] cgroup = cgroup` and `services`.
fn qm_config(dir: &TempDir, cgroup: &Path, services: &str) -> String {
    let header = config_header(&dir.path("agent.sock")).replacen(
        "[agent]\n",
        &format!("[agent]\ncgroup = {:?}\n", cgroup.display().to_string()),
        1,
    );
    header + services
}

/// The library's own guard, for a caller that builds its definitions without `--check`: a QM
/// limit without `[agent] cgroup` stops `Orchestrator::new` with an error naming the key.
#[test]
fn the_library_refuses_a_qm_limit_without_an_agent_cgroup() {
    use holden::orchestrator::{Options, Orchestrator, ServiceDef, Settings};
    let dir = TempDir::new("cg-qm-lib");
    let def = ServiceDef::from_spec(
        &holden::config::Config::parse(
            "[[service]]\nname = \"hog\"\npartition = \"qm\"\nargv = [\"/bin/true\"]\nmemory_max = \"32M\"\n",
            "hog.toml",
        )
        .unwrap()
        .services[0],
    );
    let mut settings = Settings::new(dir.path("agent.sock"));
    settings.runtime_dir = Some(dir.path("run"));
    let log = std::fs::File::create(dir.path("log")).unwrap();
    let options = Options {
        log_fd: std::os::fd::AsRawFd::as_raw_fd(&log),
        signals: false,
        notify: false,
    };
    let error = Orchestrator::new(settings, vec![def], options)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("`memory_max`") && error.contains("[agent] cgroup is not set"),
        "{error}"
    );
}
