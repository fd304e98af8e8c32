//! A local service's execution environment (`docs/config.md`): limits, umask, OOM score,
//! nice, scheduling policy, CPU affinity, `no_new_privs`, user and groups by name. Each test
//! starts a real service and reads what it got back from `/proc/PID/…`; a setting the kernel
//! refuses is a spawn error naming the stage; an invalid one is refused by `--check` with the
//! file, line and column. Processes are ended by pid (the orchestrator's stop, and `Orch`'s
//! clean-up by the pids it logged).

mod orchestrator_support;

use orchestrator_support::*;
use std::process::Command;

fn proc_file(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{name}: {e}"))
}

/// The value of `key:` in `/proc/PID/status`.
fn status_field(pid: i32, key: &str) -> String {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The supplementary groups of `/proc/PID/status`, sorted.
fn groups(pid: i32) -> Vec<u32> {
    let mut groups: Vec<u32> = status_field(pid, "Groups")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    groups
}

/// The soft and hard limit of the `/proc/PID/limits` line that starts with `what`.
fn limit(pid: i32, what: &str) -> (String, String) {
    let text = proc_file(pid, "limits");
    let line = text
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {text}"));
    let mut values = line[what.len()..].split_whitespace();
    (
        values.next().unwrap().to_string(),
        values.next().unwrap().to_string(),
    )
}

/// Field `n` (1-based, as proc(5) numbers them) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> String {
    let stat = proc_file(pid, "stat");
    let rest = stat.rsplit_once(')').unwrap().1;
    // Fields 1 and 2 are before the ')'.
    rest.split_whitespace().nth(n - 3).unwrap().to_string()
}

fn orchestrator(dir: &TempDir, config: &str) -> Orch {
    Orch::start(dir, &(config_header(&dir.path("agent.sock")) + config))
}

#[test]
fn a_service_gets_its_limits_umask_oom_score_nice_affinity_groups_and_no_new_privs() {
    let dir = TempDir::new("exec-env");
    let marker = sleep_marker("3600");
    let cpu = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        1
    } else {
        0
    };
    let extra = format!(
        "restart = \"never\"\n\
         limits = {{ nofile = 1024, core = 0, memlock = {{ soft = 65536, hard = 131072 }}, nproc = {{ soft = 100, hard = 200 }} }}\n\
         umask = 0o027\n\
         oom_score_adj = 500\n\
         nice = 7\n\
         cpu_affinity = [{cpu}]\n\
         no_new_privs = true\n\
         user = \"daemon\"\n\
         supplementary_groups = [\"audio\", 44]\n"
    );
    let mut orch = orchestrator(
        &dir,
        &service("env", "local", &["/bin/sleep", &marker], &extra),
    );
    orch.wait_lines(&["service=env ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "env");
    assert!(has_argument(pid, &marker), "{}", orch.log());
    assert_eq!(limit(pid, "Max open files"), ("1024".into(), "1024".into()));
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    assert_eq!(
        limit(pid, "Max locked memory"),
        ("65536".into(), "131072".into())
    );
    assert_eq!(limit(pid, "Max processes"), ("100".into(), "200".into()));
    assert_eq!(status_field(pid, "Umask"), "0027");
    assert_eq!(proc_file(pid, "oom_score_adj").trim(), "500");
    assert_eq!(stat_field(pid, 19), "7", "nice");
    assert_eq!(status_field(pid, "Cpus_allowed_list"), cpu.to_string());
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // daemon is uid 1 with primary group 1 (in /etc/passwd), audio is 29 (/etc/group).
    assert!(status_field(pid, "Uid").starts_with("1\t1\t1"));
    assert!(status_field(pid, "Gid").starts_with("1\t1\t1"));
    assert_eq!(groups(pid), vec![1, 29, 44]);
    // The OOM score is the child's own, not the orchestrator's (which shares its memory
    // until the exec).
    assert_eq!(
        proc_file(orch.pid(), "oom_score_adj").trim(),
        proc_file(std::process::id() as i32, "oom_score_adj").trim()
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn a_real_time_policy_and_priority_are_set() {
    let dir = TempDir::new("exec-sched");
    let (fifo, rr, other) = (
        sleep_marker("3600"),
        sleep_marker("3600"),
        sleep_marker("3600"),
    );
    let config = service(
        "fifo",
        "local",
        &["/bin/sleep", &fifo],
        "sched_policy = \"fifo\"\nsched_priority = 10",
    ) + &service(
        "rr",
        "local",
        &["/bin/sleep", &rr],
        "sched_policy = \"rr\"\nsched_priority = 3",
    ) + &service(
        "other",
        "local",
        &["/bin/sleep", &other],
        "sched_policy = \"other\"\nnice = -3",
    );
    let mut orch = orchestrator(&dir, &config);
    // Without `nice` a service keeps the orchestrator's (the test may run under nice(1)).
    let inherited = stat_field(orch.pid(), 19);
    for (name, policy, rt_priority, nice) in [
        ("fifo", "1", "10", inherited.as_str()),
        ("rr", "2", "3", inherited.as_str()),
        ("other", "0", "0", "-3"),
    ] {
        orch.wait_lines(&[&format!("service={name} "), "reason=spawned"], 1);
        let pid = last_spawned_pid(&orch, name);
        // proc(5): field 40 rt_priority, 41 policy, 19 nice.
        assert_eq!(stat_field(pid, 41), policy, "{name} policy");
        assert_eq!(stat_field(pid, 40), rt_priority, "{name} rt_priority");
        assert_eq!(stat_field(pid, 19), nice, "{name} nice");
        let sched = proc_file(pid, "sched");
        let shown = sched
            .lines()
            .find(|l| l.starts_with("policy"))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim);
        assert_eq!(shown, Some(policy), "{name}: {sched}");
    }
    assert!(orch.stop(libc::SIGTERM).success());
}

/// The measured bug: services inherited the orchestrator's raised soft RLIMIT_NOFILE. Started
/// with soft 1024, the orchestrator raises its own to the hard limit; the service gets 1024.
#[test]
fn a_service_gets_the_nofile_limit_the_orchestrator_was_started_with() {
    let dir = TempDir::new("exec-nofile");
    let marker = sleep_marker("3600");
    let hard = limit(std::process::id() as i32, "Max open files").1;
    let config = dir.path("orchestrator.toml");
    std::fs::write(
        &config,
        config_header(&dir.path("agent.sock"))
            + &service("plain", "local", &["/bin/sleep", &marker], ""),
    )
    .unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile=1024:{hard}"))
        .arg(orchestrator_bin())
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET");
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["service=plain ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "plain");
    // prlimit execs the orchestrator: same pid.
    assert_eq!(
        limit(orch.pid(), "Max open files"),
        (hard.clone(), hard.clone())
    );
    assert_eq!(limit(pid, "Max open files"), ("1024".into(), hard));
    assert!(orch.stop(libc::SIGTERM).success());
}

/// What the kernel refuses is a spawn error with its stage and errno, never ignored: no CPU of
/// the set is online (EINVAL), a hard limit above `fs.nr_open` (EPERM).
#[test]
fn a_refused_setting_is_a_spawn_error_naming_its_stage() {
    let dir = TempDir::new("exec-refused");
    let once = "restart = \"never\"\n";
    let config = service(
        "affinity",
        "local",
        &["/bin/true"],
        &format!("{once}cpu_affinity = [1000]"),
    ) + &service(
        "rlimit",
        "local",
        &["/bin/true"],
        &format!("{once}limits = {{ nofile = {{ soft = 1024, hard = 4294967296 }} }}"),
    );
    let mut orch = orchestrator(&dir, &config);
    for (name, stage, errno) in [
        ("affinity", "affinity", libc::EINVAL),
        ("rlimit", "rlimit", libc::EPERM),
    ] {
        let lines = orch.wait_lines(
            &[
                &format!("service={name} "),
                "event=spawn-failed",
                &format!("stage={stage} "),
            ],
            1,
        );
        assert!(
            lines[0].contains(&format!("errno={errno}")),
            "{name}: {lines:?}"
        );
        if stage == "rlimit" {
            assert!(lines[0].contains(" resource=nofile "), "{lines:?}");
        }
        assert!(orch
            .lines_with(&[&format!("service={name} "), "reason=spawned"])
            .is_empty());
    }
    assert!(orch.stop(libc::SIGTERM).success());
}

/// `--check` refuses every invalid setting, each with file:line:col and the service's key.
#[test]
fn check_refuses_invalid_settings_with_their_place_in_the_file() {
    let dir = TempDir::new("exec-check");
    let path = dir.path("bad.toml");
    let body = [
        ("a", "user = \"no-such-user-holden\""),
        ("b", "group = \"no-such-group-holden\""),
        ("c", "sched_policy = \"fifo\""),
        ("d", "sched_priority = 5"),
        ("e", "nice = 20"),
        ("f", "umask = \"0999\""),
        ("g", "cpu_affinity = [4096]"),
        ("h", "limits = { nofil = 5 }"),
        ("i", "limits = { core = { soft = 10, hard = 5 } }"),
        ("j", "oom_score_adj = -1001"),
        ("k", "uid = 5\nuser = \"daemon\""),
        (
            "m",
            "ambient_capabilities = [\"CAP_NET_RAW\", \"CAP_NO_SUCH\"]",
        ),
        (
            "n",
            "capability_bounding_set = [\"CAP_KILL\"]\nambient_capabilities = [\"CAP_NET_RAW\"]",
        ),
        ("l", "supplementary_groups = [\"no-such-group-holden\"]"),
    ];
    let mut text = config_header(&dir.path("agent.sock"));
    let mut expected = Vec::new();
    for (name, extra) in body {
        let block = service(name, "local", &["/bin/true"], extra);
        // The key's line: the first line of `extra` lands after the four lines of the block.
        let line = text.lines().count() + 5 + extra.lines().count() - 1;
        expected.push((name, line));
        text += &block;
    }
    // A QM service takes the execution environment, but its groups only by number (a name
    // would be the host's).
    text += &service(
        "q",
        "qm",
        &["/bin/true"],
        "supplementary_groups = [\"audio\"]",
    );
    expected.push(("q", text.lines().count()));
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(orchestrator_bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (name, line) in expected {
        let place = format!("{}:{line}:", path.display());
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&place) && l.contains(&format!("service.{name}."))),
            "service {name} at {place}: {stderr}"
        );
    }
    // And a valid one passes.
    let good = dir.path("good.toml");
    std::fs::write(
        &good,
        config_header(&dir.path("agent.sock"))
            + &service(
                "ok",
                "local",
                &["/bin/true"],
                "user = \"daemon\"\ngroup = \"audio\"\nsupplementary_groups = [\"video\", 4]\n\
                 limits = { nofile = { soft = 1024, hard = \"infinity\" }, core = \"infinity\" }\n\
                 umask = \"0077\"\noom_score_adj = -100\nnice = -5\n\
                 sched_policy = \"rr\"\nsched_priority = 99\ncpu_affinity = [0, \"0-1\"]\nno_new_privs = true",
            ),
    )
    .unwrap();
    let out = Command::new(orchestrator_bin())
        .arg("--check")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Capabilities: a root service keeps only its bounding set (and so only those are
/// effective after its exec); a service run as another user keeps its ambient capabilities.
#[test]
fn capability_bounding_and_ambient_sets_are_set() {
    let dir = TempDir::new("exec-caps");
    let (bounded, ambient) = (sleep_marker("3600"), sleep_marker("3600"));
    // kill = 5, net_bind_service = 10 (capabilities(7)).
    let config = service(
        "bounded",
        "local",
        &["/bin/sleep", &bounded],
        "capability_bounding_set = [\"CAP_KILL\", \"net_bind_service\"]",
    ) + &service(
        "ambient",
        "local",
        &["/bin/sleep", &ambient],
        "user = \"daemon\"\ncapability_bounding_set = [\"CAP_KILL\", \"CAP_NET_BIND_SERVICE\"]\n\
         ambient_capabilities = [\"CAP_NET_BIND_SERVICE\"]",
    );
    let mut orch = orchestrator(&dir, &config);
    orch.wait_lines(&["reason=spawned"], 2);
    let bounded = last_spawned_pid(&orch, "bounded");
    assert_eq!(status_field(bounded, "CapBnd"), "0000000000000420");
    assert_eq!(status_field(bounded, "CapEff"), "0000000000000420");
    assert_eq!(status_field(bounded, "CapAmb"), "0000000000000000");
    let ambient = last_spawned_pid(&orch, "ambient");
    assert!(status_field(ambient, "Uid").starts_with("1\t"));
    assert_eq!(status_field(ambient, "CapBnd"), "0000000000000420");
    assert_eq!(status_field(ambient, "CapAmb"), "0000000000000400");
    assert_eq!(status_field(ambient, "CapPrm"), "0000000000000400");
    assert_eq!(status_field(ambient, "CapEff"), "0000000000000400");
    assert!(orch.stop(libc::SIGTERM).success());
}

/// A reload that changes only the execution environment restarts the service with the new
/// one (the old process ends, the new one has the new nice and NOFILE limit).
#[test]
fn a_reload_that_changes_the_environment_restarts_the_service() {
    let dir = TempDir::new("exec-reload");
    let marker = sleep_marker("3600");
    let block = |extra: &str| {
        config_header(&dir.path("agent.sock"))
            + &service("env", "local", &["/bin/sleep", &marker], extra)
    };
    let mut orch = Orch::start(&dir, &block("nice = 1\nlimits = { nofile = 512 }"));
    orch.wait_lines(&["service=env ", "reason=spawned"], 1);
    let first = last_spawned_pid(&orch, "env");
    assert_eq!(stat_field(first, 19), "1");
    std::fs::write(
        dir.path("orchestrator.toml"),
        block("nice = 2\nlimits = { nofile = 600 }"),
    )
    .unwrap();
    let out = holdenctl(&dir.path("control.sock"), &["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("1 changed"), "{stdout}");
    orch.wait_lines(&["service=env ", "reason=spawned"], 2);
    let second = last_spawned_pid(&orch, "env");
    assert_ne!(first, second);
    wait_until("the old process gone", || (!alive(first)).then_some(()));
    assert_eq!(stat_field(second, 19), "2");
    assert_eq!(
        limit(second, "Max open files"),
        ("600".into(), "600".into())
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

/// A QM service's execution environment goes to holden-agent in its `Start` (wire 1.2,
/// `EXEC_ENV`), and the agent applies it: read back from `/proc` of the process it started
/// (in our namespace), as for a local service.
#[test]
fn a_qm_service_gets_its_execution_environment_through_the_agent() {
    let dir = TempDir::new("exec-qm");
    let _qm = Qm::start(&dir, "");
    let marker = sleep_marker("3600");
    let _left = MarkerReaper(vec![marker.clone()]);
    let extra = "restart = \"never\"\n\
         limits = { nofile = { soft = 512, hard = 1024 }, core = 0 }\n\
         umask = 0o027\n\
         oom_score_adj = 300\n\
         nice = 6\n\
         sched_policy = \"rr\"\n\
         sched_priority = 4\n\
         cpu_affinity = [0]\n\
         no_new_privs = true\n\
         gid = 45\n\
         supplementary_groups = [44, 46]\n\
         capability_bounding_set = [\"CAP_KILL\", \"CAP_NET_BIND_SERVICE\"]\n";
    let mut orch = orchestrator(&dir, &service("env", "qm", &["/bin/sleep", &marker], extra));
    orch.wait_lines(&["service=env ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "env");
    assert!(has_argument(pid, &marker), "{}", orch.log());
    assert_eq!(limit(pid, "Max open files"), ("512".into(), "1024".into()));
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    assert_eq!(status_field(pid, "Umask"), "0027");
    assert_eq!(proc_file(pid, "oom_score_adj").trim(), "300");
    // proc(5): field 19 nice, 40 rt_priority, 41 policy (SCHED_RR = 2).
    assert_eq!(stat_field(pid, 19), "6", "nice");
    assert_eq!(stat_field(pid, 40), "4", "rt_priority");
    assert_eq!(stat_field(pid, 41), "2", "policy");
    assert_eq!(status_field(pid, "Cpus_allowed_list"), "0");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert!(status_field(pid, "Gid").starts_with("45\t45\t45"));
    assert_eq!(groups(pid), vec![44, 45, 46]);
    // CAP_KILL is 5, CAP_NET_BIND_SERVICE 10.
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000420");
    assert!(orch.stop(libc::SIGTERM).success());
}

/// Under a model of QM's seccomp profile (real-time scheduling denied), a QM service that asks
/// for `SCHED_FIFO` fails its start with a clear error: the stage, `EPERM`, and the agent's
/// text naming the step and the profile. It is not started without its policy, and the
/// agent serves the next start as before.
#[test]
fn qm_refusing_real_time_scheduling_is_a_clear_spawn_error() {
    let dir = TempDir::new("exec-qm-rt");
    let _qm = Qm::start_denying_sched(&dir);
    let marker = sleep_marker("3600");
    let _left = MarkerReaper(vec![marker.clone()]);
    let config = service(
        "rt",
        "qm",
        &["/bin/sleep", &marker],
        "restart = \"never\"\nsched_policy = \"fifo\"\nsched_priority = 10",
    ) + &service(
        "plain",
        "qm",
        &["/bin/sleep", &marker],
        "restart = \"never\"\nnice = 3",
    );
    let mut orch = orchestrator(&dir, &config);
    let lines = orch.wait_lines(&["service=rt ", "event=spawn-failed"], 1);
    let line = &lines[0];
    assert!(line.contains("stage=setup "), "{line}");
    assert!(line.contains(&format!("errno={} ", libc::EPERM)), "{line}");
    assert!(line.contains("scheduling policy for"), "{line}");
    assert!(line.contains("seccomp"), "{line}");
    assert!(orch
        .lines_with(&["service=rt ", "reason=spawned"])
        .is_empty());
    orch.wait_lines(&["service=plain ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "plain");
    assert!(has_argument(pid, &marker));
    assert_eq!(stat_field(pid, 19), "3", "nice");
    assert!(orch.stop(libc::SIGTERM).success());
}
