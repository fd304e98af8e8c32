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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A cgroup root of this test's own, removed (after killing what is left in it) on drop.
struct CgroupRoot(PathBuf);

impl CgroupRoot {
    fn new(tag: &str) -> Option<CgroupRoot> {
        static N: AtomicU32 = AtomicU32::new(0);
        let mount = holden::cgroup::mount_point()?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("holden-test-{tag}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => Some(CgroupRoot(path)),
            Err(e) => {
                eprintln!(
                    "skipped: cannot create a cgroup under {}: {e}",
                    mount.display()
                );
                None
            }
        }
    }

    fn service(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn toml(&self) -> String {
        format!("[cgroup]\nroot = {:?}\n\n", self.0.display().to_string())
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        let children: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        for child in &children {
            let _ = std::fs::write(child.join("cgroup.kill"), "1");
        }
        for child in children.iter().chain(std::iter::once(&self.0)) {
            let _ = wait_until_ok(|| std::fs::remove_dir(child).is_ok());
        }
    }
}

/// Polls `f` for a few seconds (clean-up only: the cgroup empties after its kill).
fn wait_until_ok(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

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

fn holdenctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_holdenctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run holdenctl")
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
    let Some(root) = CgroupRoot::new("inside") else {
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
    let Some(root) = CgroupRoot::new("stop") else {
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
    let Some(root) = CgroupRoot::new("shutdown") else {
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
    let Some(root) = CgroupRoot::new("main-exit") else {
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
