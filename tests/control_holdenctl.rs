//! holdenctl against the real orchestrator binary, with local services and QM services
//! through a real holden-agent in its own PID namespace.

mod orchestrator_support;

use orchestrator_support::*;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn holdenctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_holdenctl"))
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(socket: &Path, args: &[&str]) -> Out {
    run_ctl(&holdenctl(), socket, args, |_| {})
}

/// Runs holdenctl set up by `tweak`, as another user: from a copy in the socket's directory,
/// which the test makes reachable for that user (the build directory may not be, e.g. in a
/// clone under a private `mktemp -d`).
fn ctl_cmd(socket: &Path, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Out {
    let copy = socket
        .parent()
        .expect("socket in a test dir")
        .join("holdenctl");
    if !copy.exists() {
        std::fs::copy(holdenctl(), &copy).expect("copy holdenctl");
    }
    run_ctl(&copy, socket, args, tweak)
}

fn run_ctl(program: &Path, socket: &Path, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Out {
    let mut cmd = Command::new(program);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1");
    tweak(&mut cmd);
    // A copy just written (`ctl_cmd`): another test's fork may briefly hold a copy of the
    // descriptor it was written through (until that child's exec closes it), and the exec
    // fails with ETXTBSY meanwhile; try again for a while.
    let mut tries = 0;
    let out = loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.expect("run holdenctl"),
        }
    };
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config: `slots`, the agent (if any), the control socket, then the services.
fn config(
    dir: &TempDir,
    agent: Option<&Path>,
    slots: u32,
    extra_control: &str,
    services: &str,
) -> String {
    let agent = agent.map_or_else(|| dir.path("no-agent.sock"), Path::to_path_buf);
    format!(
        "slots = {slots}\n{}[control]\nsocket = {:?}\n{extra_control}\n\n{services}",
        agent_section(&agent),
        dir.path("control.sock").display().to_string()
    )
}

/// The status row of `name` as (state, pid) from `status --json`.
fn state_of(socket: &Path, name: &str) -> (String, Option<i32>) {
    let out = ctl(socket, &["status", name, "--json"]);
    assert_eq!(out.code, 0, "status {name}: {}", out.stderr);
    parse_state(&out.stdout)
}

fn parse_state(json: &str) -> (String, Option<i32>) {
    let state = json_field(json, "state").expect("state");
    let pid = json_field(json, "pid").and_then(|p| p.parse().ok());
    (state, pid)
}

/// A field of the first object in a flat JSON text (enough for holdenctl's output).
fn json_field(text: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let start = text.find(&needle)? + needle.len();
    let rest = &text[start..];
    let value = if let Some(stripped) = rest.strip_prefix('"') {
        stripped.split('"').next()?
    } else {
        rest.split([',', '}']).next()?
    };
    Some(value.to_string())
}

fn wait_state(socket: &Path, name: &str, state: &str) -> Option<i32> {
    // The orchestrator may not listen yet (exit 4) or not have the service yet (exit 3).
    wait_until(&format!("{name} {state}"), || {
        let out = ctl(socket, &["status", name, "--json"]);
        if out.code != 0 {
            return None;
        }
        let (s, pid) = parse_state(&out.stdout);
        (s == state).then_some(pid)
    })
}

fn sleeper(name: &str, partition: &str, extra: &str) -> String {
    service(name, partition, &["/bin/sleep", "1000"], extra)
}

#[test]
fn every_command_against_local_and_qm_services() {
    let dir = TempDir::new("ctl-cmds");
    let qm = Qm::start(&dir, "");
    let socket = dir.path("control.sock");
    let mut services = sleeper(
        "loc",
        "local",
        "restart = \"always\"\nrestart_delay = \"0\"",
    );
    services += &sleeper("qmsvc", "qm", "restart = \"always\"\nrestart_delay = \"0\"");
    services += &service(
        "oneshot",
        "local",
        &["/bin/sh", "-c", "exit 7"],
        "restart = \"never\"",
    );
    let mut orch = Orch::start(&dir, &config(&dir, Some(&qm.socket), 8, "", &services));
    let loc = wait_state(&socket, "loc", "running").unwrap();
    let qmpid = wait_state(&socket, "qmsvc", "running").unwrap();
    assert!(alive(loc) && alive(qmpid));
    wait_state(&socket, "oneshot", "failed");

    // status: a table with every service, aligned.
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAST EXIT"),
        "{}",
        out.stdout
    );
    let col = lines[0].find("STATE").unwrap();
    for (name, partition, state) in [
        ("loc", "local", "running"),
        ("qmsvc", "qm", "running"),
        ("oneshot", "local", "failed"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .expect(name);
        assert!(line.contains(partition), "{line}");
        assert_eq!(&line[col..col + state.len()], state, "{}", out.stdout);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("oneshot") && l.contains("code 7")),
        "{}",
        out.stdout
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("loc") && l.contains(&loc.to_string())));

    // stop --wait: the process is gone when holdenctl returns.
    let out = ctl(&socket, &["stop", "loc", "qmsvc", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(state_of(&socket, "loc").0, "stopped");
    assert_eq!(state_of(&socket, "qmsvc").0, "stopped");
    wait_until("stopped processes gone", || {
        (!alive(loc) && !alive(qmpid)).then_some(())
    });

    // start --wait: running with a new process.
    let out = ctl(
        &socket,
        &["start", "loc", "qmsvc", "--wait", "--timeout", "20s"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (state, loc2) = state_of(&socket, "loc");
    assert_eq!(state, "running");
    let loc2 = loc2.unwrap();
    assert!(loc2 != loc && alive(loc2));
    let qm2 = state_of(&socket, "qmsvc").1.unwrap();
    assert!(qm2 != qmpid && alive(qm2));

    // restart --wait: another new process, the old one ended.
    let out = ctl(&socket, &["restart", "qmsvc", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let qm3 = state_of(&socket, "qmsvc").1.unwrap();
    assert!(qm3 != qm2 && alive(qm3));
    wait_until("old QM process gone", || (!alive(qm2)).then_some(()));

    // kill -s KILL --wait: the process dies by SIGKILL and restart = always brings a new one.
    let out = ctl(&socket, &["kill", "-s", "KILL", "loc", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_until("killed process gone", || (!alive(loc2)).then_some(()));
    let loc3 = wait_until("loc restarted", || {
        let (s, pid) = state_of(&socket, "loc");
        (s == "running" && pid != Some(loc2)).then_some(pid)
    });
    assert!(loc3.is_some());
    let out = ctl(&socket, &["status", "loc", "--json"]);
    assert!(
        out.stdout
            .contains("\"last_exit\":{\"signal\":\"SIGKILL\"}"),
        "{}",
        out.stdout
    );

    // reset-failed --wait: failed -> stopped.
    let out = ctl(&socket, &["reset-failed", "oneshot", "--wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(state_of(&socket, "oneshot").0, "stopped");

    // agent: up, v1, one connection so far.
    let out = ctl(&socket, &["agent", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        json_field(&out.stdout, "state").as_deref(),
        Some("up"),
        "{}",
        out.stdout
    );
    assert_eq!(json_field(&out.stdout, "protocol").as_deref(), Some("v1"));
    assert_eq!(json_field(&out.stdout, "version").as_deref(), Some("1.2"));
    assert_eq!(json_field(&out.stdout, "reconnects").as_deref(), Some("0"));
    let out = ctl(&socket, &["agent"]);
    assert!(
        out.stdout.contains(&qm.socket.display().to_string()),
        "{}",
        out.stdout
    );

    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
    assert!(!socket.exists(), "control socket removed on exit");
}

#[test]
fn unknown_names_usage_errors_and_no_orchestrator() {
    let dir = TempDir::new("ctl-errors");
    let socket = dir.path("control.sock");
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.code, 4, "no orchestrator: {}", out.stderr);
    assert!(
        out.stderr.contains("is holden-orchestrator running?"),
        "{}",
        out.stderr
    );

    let _orch = Orch::start(&dir, &config(&dir, None, 4, "", &sleeper("a", "local", "")));
    let pid = wait_state(&socket, "a", "running");
    for args in [
        &["status", "nope"][..],
        &["start", "nope"],
        &["kill", "nope"],
        &["restart", "a", "nope", "--wait"],
        &["stop", "nope", "a"],
        &["monitor", "nope"],
        &["monitor", "a", "nope", "--json"],
    ] {
        let started = std::time::Instant::now();
        let out = ctl(&socket, args);
        assert_eq!(out.code, 3, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("no service named \"nope\""),
            "{args:?}: {}",
            out.stderr
        );
        // Refused at once: nothing done, nothing printed, no waiting (monitor included).
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    // Nothing was done to "a" by the commands that also named an unknown service.
    assert_eq!(state_of(&socket, "a"), ("running".to_string(), pid));
    // Every unknown name is reported, from one listing; the known ones are not printed.
    let out = ctl(&socket, &["status", "b", "a", "c", "b", "d"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "holdenctl: no service named \"b\"\nholdenctl: no service named \"c\"\nholdenctl: no service named \"d\"\n"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    // Known names: in the order given, each once.
    let out = ctl(&socket, &["status", "a", "a", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.matches("\"name\":\"a\"").count(),
        1,
        "{}",
        out.stdout
    );
    for args in [
        &[][..],
        &["frobnicate"],
        &["start"],
        &["kill", "-s", "NOPE", "a"],
        &["status", "--bogus"],
        &["start", "a", "--timeout", "5parsecs"],
        &["kill", "a", "b"],
    ] {
        let out = ctl(&socket, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        // One line and a pointer to --help, not the whole help.
        assert!(
            out.stderr.starts_with("holdenctl: ")
                && out.stderr.ends_with(" (see holdenctl --help)\n")
                && out.stderr.lines().count() == 1,
            "{args:?}: {}",
            out.stderr
        );
    }
    for command in [
        "status",
        "start",
        "stop",
        "restart",
        "kill",
        "reset-failed",
        "monitor",
        "agent",
        "reload",
    ] {
        let out = ctl(&socket, &[command, "--help"]);
        assert_eq!(out.code, 0, "{command} --help");
        assert!(out.stdout.contains("usage: holdenctl"), "{command}");
    }
    // The form the demo uses.
    let out = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Runs holdenctl with exactly `args` (no `--socket` added).
fn ctl_raw(args: &[&OsStr]) -> Out {
    let out = Command::new(holdenctl())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("HOLDEN_CONTROL_SOCKET")
        .output()
        .expect("run holdenctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn version_is_printed_like_the_other_binaries_do() {
    for flag in ["--version", "-V"] {
        let out = ctl_raw(&[OsStr::new(flag)]);
        assert_eq!(out.code, 0, "{flag}: {}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("holdenctl {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    let help = ctl_raw(&[OsStr::new("--help")]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("--version"), "{}", help.stdout);
}

/// `--opt=VALUE` and `-sVALUE`, `--` before a dash-leading NAME, and a control socket path
/// that is not UTF-8 (a symlink to the orchestrator's socket), against a real orchestrator.
#[test]
fn joined_values_double_dash_and_a_non_utf8_socket_path() {
    let dir = TempDir::new("ctl-cli");
    let socket = dir.path("control.sock");
    let services = sleeper("a", "local", "restart = \"always\"\nrestart_delay = \"0\"");
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &services));
    let pid = wait_state(&socket, "a", "running").unwrap();

    let link = dir.0.join(OsStr::from_bytes(b"ctl-\xff.sock"));
    std::os::unix::fs::symlink(&socket, &link).unwrap();
    let mut joined = OsString::from("--socket=");
    joined.push(&link);
    for args in [
        vec![
            joined.as_os_str(),
            OsStr::new("status"),
            OsStr::new("--json"),
        ],
        vec![
            OsStr::new("status"),
            OsStr::new("--json"),
            OsStr::new("--socket"),
            link.as_os_str(),
        ],
    ] {
        let out = ctl_raw(&args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert_eq!(parse_state(&out.stdout), ("running".into(), Some(pid)));
    }

    // After `--`, a dash-leading word is a NAME: unknown (3), not an unknown option (2).
    let out = ctl(&socket, &["status", "--", "-nope"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("no service named \"-nope\""),
        "{}",
        out.stderr
    );

    // -sVALUE, --timeout=DUR: the signal ends the process, the policy restarts it.
    let out = ctl(&socket, &["kill", "-sKILL", "a", "--wait", "--timeout=20s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_until("a killed", || (!alive(pid)).then_some(()));
    let pid2 = wait_state(&socket, "a", "running").unwrap();
    assert_ne!(pid, pid2);
    let out = ctl_raw(&[
        joined.as_os_str(),
        OsStr::new("kill"),
        OsStr::new("a"),
        OsStr::new("--signal=TERM"),
        OsStr::new("--wait"),
        OsStr::new("--timeout"),
        OsStr::new("20s"),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_until("a terminated", || (!alive(pid2)).then_some(()));

    // A value that must be text, given as bytes that are not UTF-8: named in the error.
    let out = ctl_raw(&[
        joined.as_os_str(),
        OsStr::new("start"),
        OsStr::new("a"),
        OsStr::new("--timeout"),
        OsStr::from_bytes(b"5\xffs"),
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--timeout") && out.stderr.contains("not UTF-8"),
        "{}",
        out.stderr
    );
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn wait_times_out_and_a_failing_start_is_reported() {
    let dir = TempDir::new("ctl-wait");
    let socket = dir.path("control.sock");
    let mut services = service(
        "stubborn",
        "local",
        &["/bin/sh", "-c", "trap '' TERM; exec /bin/sleep 1000"],
        "stop_timeout = \"1s\"",
    );
    services += &service(
        "broken",
        "local",
        &["/nonexistent/program"],
        "enabled = false\nrestart_delay = \"0\"\nstart_limit = { burst = 2, interval = \"10s\" }",
    );
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &services));
    let pid = wait_state(&socket, "stubborn", "running").unwrap();
    // SIGTERM is ignored: the stop takes stop_timeout (1 s), longer than the wait.
    let out = ctl(
        &socket,
        &["stop", "stubborn", "--wait", "--timeout", "100ms"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("timed out") && out.stderr.contains("state stopping"),
        "{}",
        out.stderr
    );
    wait_until("SIGKILL after stop_timeout", || (!alive(pid)).then_some(()));
    wait_state(&socket, "stubborn", "stopped");

    // A refusal names the service, never the orchestrator's internal slot number.
    let out = ctl(&socket, &["kill", "broken"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "holdenctl: broken has no process to signal (it is stopped)\n"
    );
    let out = ctl(&socket, &["start", "broken", "--wait", "--timeout", "20s"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("broken failed"), "{}", out.stderr);
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

/// The cause of a failure — the stage and errno of a failed start, the start limit — is in
/// the table, in `--json`, in the monitor and in `restart --wait`, for local and QM services.
#[test]
fn why_a_service_failed_is_shown() {
    let dir = TempDir::new("ctl-why");
    let qm = Qm::start(&dir, "");
    let socket = dir.path("control.sock");
    let limit = "restart_delay = \"0\"\nstart_limit = { burst = 2, interval = \"60s\" }";
    let mut services = service("broken", "local", &["/nonexistent/holden-why"], limit);
    services += &service("qm-broken", "qm", &["/nonexistent/holden-why-qm"], limit);
    services += &service(
        "flaky",
        "local",
        &["/nonexistent/holden-why-2"],
        "restart_delay = \"1h\"",
    );
    services += &service(
        "oneshot",
        "local",
        &["/bin/sh", "-c", "exit 7"],
        "restart = \"never\"",
    );
    let mut orch = Orch::start(&dir, &config(&dir, Some(&qm.socket), 8, "", &services));
    for name in ["broken", "qm-broken", "oneshot"] {
        wait_state(&socket, name, "failed");
    }
    wait_state(&socket, "flaky", "backoff");

    let out = ctl(&socket, &["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains(" CAUSE ") && lines[0].ends_with("STATUS"),
        "{}",
        out.stdout
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .copied()
            .unwrap_or_else(|| panic!("{name}: {}", out.stdout))
            // Without the last column (STATUS: nothing said, "-").
            .strip_suffix('-')
            .unwrap_or_else(|| panic!("{name}: no STATUS= said: {}", out.stdout))
            .trim_end()
    };
    assert!(
        row("broken").ends_with("start-limit after exec ENOENT"),
        "{}",
        out.stdout
    );
    assert!(
        row("qm-broken").ends_with("start-limit after exec ENOENT"),
        "{}",
        out.stdout
    );
    assert!(row("flaky").ends_with(" exec ENOENT"), "{}", out.stdout);
    assert!(
        row("oneshot").contains("code 7") && row("oneshot").ends_with(" -"),
        "{}",
        out.stdout
    );

    let out = ctl(&socket, &["status", "broken", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"result\":\"start-limit\",\"spawn_error\":{\"stage\":\"exec\",\"errno\":2,\"errno_name\":\"ENOENT\",\"error\":\"No such file or directory\"}"),
        "{}",
        out.stdout
    );
    let out = ctl(&socket, &["status", "oneshot", "--json"]);
    assert!(
        out.stdout.contains("\"last_exit\":{\"code\":7}")
            && out.stdout.contains("\"result\":null,\"spawn_error\":null"),
        "{}",
        out.stdout
    );

    // restart --wait says why, for both partitions; the monitor shows the stage and errno.
    let mut monitor = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .args(["monitor", "qm-broken", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events = collect_lines(&mut monitor);
    for name in ["broken", "qm-broken"] {
        let out = ctl(&socket, &["restart", name, "--wait", "--timeout", "20s"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert_eq!(
            out.stderr,
            format!("holdenctl: {name} failed: it hit its start limit; its last start failed: exec ENOENT (No such file or directory)\n")
        );
    }
    let out = ctl(
        &socket,
        &["restart", "flaky", "--wait", "--timeout", "300ms"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.ends_with(
            "(state backoff; its last start failed: exec ENOENT (No such file or directory))\n"
        ),
        "{}",
        out.stderr
    );
    wait_until("monitor shows the failed start", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|l| {
                l.contains(
                    "\"reason\":\"spawn-failed\",\"spawn_error\":{\"stage\":\"exec\",\"errno\":2",
                )
            })
            .then_some(())
    });
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

/// Reads a child's stdout lines into a shared vector from a thread.
fn collect_lines(child: &mut std::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn monitor_sees_a_crash_and_its_restart() {
    let dir = TempDir::new("ctl-monitor");
    let qm = Qm::start(&dir, "");
    let socket = dir.path("control.sock");
    let mut services = sleeper(
        "victim",
        "qm",
        "restart = \"always\"\nrestart_delay = \"50ms\"",
    );
    services += &sleeper("other", "local", "");
    let _orch = Orch::start(&dir, &config(&dir, Some(&qm.socket), 4, "", &services));
    let pid = wait_state(&socket, "victim", "running").unwrap();
    wait_state(&socket, "other", "running");

    let mut json = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .args(["monitor", "victim", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .args(["monitor"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let json_lines = collect_lines(&mut json);
    let text_lines = collect_lines(&mut text);
    // Both subscribed: a restart of `other` shows on the unfiltered one only.
    let out = ctl(&socket, &["restart", "other", "--wait"]);
    assert_eq!(out.code, 0);
    wait_until("text monitor sees other", || {
        text_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("other (local) starting -> running"))
            .then_some(())
    });

    kill(pid, libc::SIGKILL);
    let seen = wait_until("crash and restart in the stream", || {
        let lines = json_lines.lock().unwrap().clone();
        let crash = lines.iter().position(|l| {
            l.contains("\"from\":\"running\",\"to\":\"backoff\"")
                && l.contains("\"exit\":{\"signal\":\"SIGKILL\"}")
        })?;
        let restart = lines[crash..].iter().position(|l| {
            l.contains("\"to\":\"running\"") && l.contains("\"reason\":\"spawned\"")
        })?;
        Some(lines[crash + restart].clone())
    });
    let new_pid: i32 = json_field(&seen, "spawned_pid").unwrap().parse().unwrap();
    assert!(new_pid != pid && alive(new_pid), "{seen}");
    assert!(json_lines
        .lock()
        .unwrap()
        .iter()
        .all(|l| l.contains("\"name\":\"victim\"")));
    wait_until("text monitor sees the crash", || {
        text_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("victim (qm) running -> backoff  exited signal SIGKILL"))
            .then_some(())
    });
    for mut child in [json, text] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn reload_with_a_broken_file_changes_nothing() {
    let dir = TempDir::new("ctl-reload-bad");
    let socket = dir.path("control.sock");
    let good = config(&dir, None, 4, "", &sleeper("a", "local", ""));
    let mut orch = Orch::start(&dir, &good);
    let pid = wait_state(&socket, "a", "running").unwrap();
    let broken = format!(
        "{good}\n{}",
        sleeper("b", "local", "stop_timeout = \"5sec\"")
    );
    std::fs::write(dir.path("orchestrator.toml"), &broken).unwrap();
    let out = ctl(&socket, &["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let path = dir.path("orchestrator.toml").display().to_string();
    assert!(out.stderr.contains(&format!("{path}:")), "{}", out.stderr);
    assert!(
        out.stderr.contains("service.b.stop_timeout"),
        "{}",
        out.stderr
    );
    // Nothing changed: same process, no service b.
    assert_eq!(state_of(&socket, "a"), ("running".to_string(), Some(pid)));
    assert_eq!(ctl(&socket, &["status", "b"]).code, 3);
    assert_eq!(orch.lines_with(&["event=reload-failed"]).len(), 1);
    // SIGHUP with the same broken file: logged, nothing changes.
    kill(orch.pid(), libc::SIGHUP);
    orch.wait_lines(&["event=reload-failed"], 2);
    assert_eq!(state_of(&socket, "a"), ("running".to_string(), Some(pid)));
    // SIGHUP with a valid file: the added service starts, `a` is untouched.
    std::fs::write(
        dir.path("orchestrator.toml"),
        format!("{good}\n{}", sleeper("b", "local", "")),
    )
    .unwrap();
    kill(orch.pid(), libc::SIGHUP);
    orch.wait_lines(&["event=reload ", "added=1"], 1);
    let b = wait_state(&socket, "b", "running").unwrap();
    assert!(alive(b));
    assert_eq!(state_of(&socket, "a"), ("running".to_string(), Some(pid)));
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn reload_adds_removes_and_changes_services() {
    let dir = TempDir::new("ctl-reload");
    let qm = Qm::start(&dir, "");
    let socket = dir.path("control.sock");
    let mut before = sleeper("keep", "local", "");
    before += &sleeper("gone", "local", "");
    before += &sleeper("qmchange", "qm", "");
    let mut orch = Orch::start(&dir, &config(&dir, Some(&qm.socket), 4, "", &before));
    let keep = wait_state(&socket, "keep", "running").unwrap();
    let gone = wait_state(&socket, "gone", "running").unwrap();
    let qm1 = wait_state(&socket, "qmchange", "running").unwrap();

    let mut after = sleeper("keep", "local", "");
    after += &service("qmchange", "qm", &["/bin/sleep", "999"], "");
    after += &sleeper("new", "local", "");
    after += &sleeper("newqm", "qm", "");
    // slots cannot change at run time: reported, not applied.
    std::fs::write(
        dir.path("orchestrator.toml"),
        config(&dir, Some(&qm.socket), 5, "", &after),
    )
    .unwrap();
    let out = ctl(&socket, &["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("reloaded: 2 added, 1 removed, 1 changed, 1 unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("after a restart of the orchestrator: slots"),
        "{}",
        out.stdout
    );

    wait_until("removed service's process ends", || {
        (!alive(gone)).then_some(())
    });
    wait_until("removed service leaves", || {
        (ctl(&socket, &["status", "gone"]).code == 3).then_some(())
    });
    let new = wait_state(&socket, "new", "running").unwrap();
    let newqm = wait_state(&socket, "newqm", "running").unwrap();
    assert!(alive(new) && alive(newqm));
    let qm2 = wait_until("changed QM service restarted", || {
        let (s, pid) = state_of(&socket, "qmchange");
        (s == "running" && pid != Some(qm1)).then_some(pid.unwrap())
    });
    assert!(
        cmdline(qm2).is_some_and(|c| c.contains("999")),
        "{:?}",
        cmdline(qm2)
    );
    wait_until("old QM process gone", || (!alive(qm1)).then_some(()));
    assert_eq!(
        state_of(&socket, "keep").1,
        Some(keep),
        "unchanged service untouched"
    );

    // The freed slot can be used again: add one more (4 slots: keep, qmchange, new, newqm).
    let mut again = after.clone();
    again += &sleeper("fifth", "local", "");
    std::fs::write(
        dir.path("orchestrator.toml"),
        config(&dir, Some(&qm.socket), 5, "", &again),
    )
    .unwrap();
    let out = ctl(&socket, &["reload"]);
    assert_eq!(
        out.code, 1,
        "a fifth service does not fit 4 slots: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("5 services do not fit the 4 service slots"),
        "{}",
        out.stderr
    );
    assert_eq!(ctl(&socket, &["status", "fifth"]).code, 3);
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

/// A raw control connection (SOCK_SEQPACKET), for clients holdenctl would never be.
fn raw_connect(socket: &Path) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket() call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: we own the new fd.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(socket.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a valid sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    fd
}

/// Receives one packet with a timeout; `None` on timeout, empty on close.
fn raw_recv(fd: &std::os::fd::OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return None;
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: buf is valid for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    buf.truncate(n.max(0) as usize);
    Some(buf)
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout_and_supervision_goes_on() {
    let dir = TempDir::new("ctl-silent");
    let socket = dir.path("control.sock");
    let services = service("looper", "local", &["/bin/true"], "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"0\" }");
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &services));
    wait_until("listening", || {
        (ctl(&socket, &["status"]).code == 0).then_some(())
    });
    let silent = raw_connect(&socket);
    let spawned_before = orch
        .wait_lines(&["service=looper ", "reason=spawned"], 1)
        .len();
    // While the silent client holds its slot, supervision and other clients go on.
    let out = ctl(&socket, &["status", "looper"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    orch.wait_lines(&["service=looper ", "reason=spawned"], spawned_before + 20);
    // The orchestrator closes it after its idle timeout: the client sees end-of-file.
    let got = raw_recv(
        &silent,
        holden::orchestrator::CONTROL_IDLE_TIMEOUT + Duration::from_secs(20),
    );
    assert_eq!(got, Some(vec![]), "closed without a reply");
    orch.wait_lines(&["event=control-timeout"], 1);
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn too_many_clients_get_a_reason() {
    let dir = TempDir::new("ctl-many");
    let socket = dir.path("control.sock");
    let _orch = Orch::start(&dir, &config(&dir, None, 4, "", &sleeper("a", "local", "")));
    wait_state(&socket, "a", "running");
    let held: Vec<_> = (0..holden::orchestrator::CONTROL_CONNECTIONS_MAX)
        .map(|_| raw_connect(&socket))
        .collect();
    let extra = raw_connect(&socket);
    let reply = raw_recv(&extra, Duration::from_secs(20)).expect("a refusal");
    let frame = holden::control::decode(&reply).expect("a control frame");
    assert!(
        matches!(
            frame.body,
            holden::control::Body::Failure {
                code: holden::control::FailCode::TooManyClients,
                ..
            }
        ),
        "{frame:?}"
    );
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("too many control clients"),
        "{}",
        out.stderr
    );
    drop(held);
    wait_until("a slot is free again", || {
        (ctl(&socket, &["status"]).code == 0).then_some(())
    });
}

#[test]
fn peers_other_than_root_and_the_group_are_refused() {
    let dir = TempDir::new("ctl-peer");
    // SAFETY: chmod of our own directory so that uid 65534 can reach the socket inside it.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path("control.sock");
    // A stale socket file from an earlier run is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    let _orch = Orch::start(
        &dir,
        &config(
            &dir,
            None,
            4,
            "group = \"nogroup\"",
            &sleeper("a", "local", ""),
        ),
    );
    wait_state(&socket, "a", "running");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    // In the group: allowed.
    let out = ctl_cmd(&socket, &["status"], |c| {
        c.uid(65534).gid(65534);
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Neither root nor in the group: the file mode already refuses...
    let out = ctl_cmd(&socket, &["status"], |c| {
        c.uid(65534).gid(4242);
    });
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    // ...and with the file opened up, the peer credentials check does.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = ctl_cmd(&socket, &["status"], |c| {
        c.uid(65534).gid(4242);
    });
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("permission denied: the control socket is for root"),
        "{}",
        out.stderr
    );
}

/// `[control] read_group`: its members may look (status, agent, stats, monitor) but not command;
/// the socket file belongs to it, so members of `group` must be in it too. Every command
/// is logged with the uid and pid that sent it.
/// A number field of a flat JSON object.
fn json_u64(text: &str, key: &str) -> Option<u64> {
    json_field(text, key)?.parse().ok()
}

#[test]
fn stats_give_the_loops_stall_histogram_and_its_counts() {
    let dir = TempDir::new("ctl-stats");
    let socket = dir.path("control.sock");
    let services = service(
        "crasher",
        "local",
        &["/bin/true"],
        "restart = \"always\"\nrestart_delay = \"0\"\nstart_limit = { burst = 0, interval = \"0s\" }",
    ) + &service(
        "broken",
        "local",
        &["/nonexistent/program"],
        "restart = \"never\"",
    );
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &services));
    orch.wait_lines(&["service=crasher ", "reason=exited code=0"], 50);
    wait_state(&socket, "broken", "failed");
    let out = ctl(&socket, &["stats", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j = &out.stdout;
    let field = |k| json_u64(j, k).unwrap_or_else(|| panic!("{k} in {j}"));
    let completions = field("completions");
    let spawned = field("spawned_local");
    // Every spawn took at least two completions: its outcome, and the process's end.
    assert!(spawned >= 50 && field("exited") >= 49, "{j}");
    assert!(completions >= 2 * field("exited"), "{j}");
    assert_eq!(field("spawn_failed"), 1, "{j}");
    assert_eq!(field("log_dropped"), 0, "{j}");
    let (p50, p99, p999, max) = (
        field("stall_p50_ns"),
        field("stall_p99_ns"),
        field("stall_p999_ns"),
        field("stall_max_ns"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{j}");
    // The buckets hold every completion counted.
    let at = j.find("\"stall_buckets\":[").unwrap() + 16;
    let buckets = &j[at..at + j[at..].find("]]").unwrap() + 1];
    let counted: u64 = buckets
        .split("],[")
        .map(|pair| {
            let pair = pair.trim_matches(['[', ']']);
            pair.split(',').nth(1).unwrap().parse::<u64>().unwrap()
        })
        .sum();
    // The stats request is itself a completion, counted after the answer went out.
    assert!(
        (completions..=completions + 2).contains(&counted),
        "{counted} vs {j}"
    );
    // The histogram is the orchestrator's: it grows while the service crash-loops.
    let later = ctl(&socket, &["stats", "--json"]);
    assert!(json_u64(&later.stdout, "completions").unwrap() > completions);
    let text = ctl(&socket, &["stats"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("loop stall:        p50 ") && text.stdout.contains("1 failed"),
        "{}",
        text.stdout
    );
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn a_read_group_may_query_but_not_command() {
    let dir = TempDir::new("ctl-read");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path("control.sock");
    let orch = Orch::start(
        &dir,
        &config(
            &dir,
            None,
            4,
            "group = \"staff\"\nread_group = \"nogroup\"",
            &sleeper("a", "local", ""),
        ),
    );
    let pid = wait_state(&socket, "a", "running");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534));
    let reader = |c: &mut Command| {
        c.uid(65534).gid(65534);
    };
    // Queries work.
    for args in [
        &["status"][..],
        &["status", "a", "--json"],
        &["agent"],
        &["stats"],
    ] {
        let out = ctl_cmd(&socket, args, reader);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    // Commands and reload are refused (exit 1), and change nothing.
    for args in [
        &["stop", "a"][..],
        &["kill", "-s", "KILL", "a"],
        &["reload"],
    ] {
        let out = ctl_cmd(&socket, args, reader);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("permission denied: uid 65534 is in the control read group"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(state_of(&socket, "a"), ("running".to_string(), pid));
    orch.wait_lines(
        &["event=control-refused", "reason=read-only", "command=stop"],
        1,
    );
    // In both groups: commands work, and the log says who sent them.
    let out = ctl_cmd(&socket, &["restart", "a", "--wait"], |c| {
        // SAFETY: in the child before exec, only async-signal-safe calls: the supplementary
        // group (staff) first, then gid and uid (setgroups needs the privilege setuid drops).
        unsafe {
            c.pre_exec(|| {
                let groups = [50 as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = orch.wait_lines(
        &["service=a ", "event=control-command", "command=restart"],
        1,
    );
    assert!(
        lines[0].contains(" uid=65534 pid="),
        "who sent it: {}",
        lines[0]
    );
    let lines = orch.lines_with(&["event=control-command"]);
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" uid=") && l.contains(" pid=")),
        "{lines:?}"
    );
}

#[test]
fn without_a_group_the_socket_is_root_only() {
    let dir = TempDir::new("ctl-mode");
    let socket = dir.path("control.sock");
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &sleeper("a", "local", "")));
    wait_state(&socket, "a", "running");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = ctl_cmd(&socket, &["status"], |c| {
        c.uid(65534).gid(65534);
    });
    assert_eq!(out.code, 4, "{}", out.stderr);
    orch.wait_lines(
        &[
            "event=control-refused",
            "uid=65534",
            "reason=permission-denied",
        ],
        1,
    );
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
    assert!(!socket.exists());
}

#[test]
fn a_monitor_that_does_not_keep_up_gets_a_dropped_count() {
    use holden::control::{decode, encode, Body};
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("ctl-dropped");
    let socket = dir.path("control.sock");
    let services = service(
        "looper",
        "local",
        &["/bin/true"],
        // About 200 restarts a second: fast enough to fill the socket within a second, slow
        // enough that the log stays small to read while the test waits on it (a full monitor
        // is dropped after 5 s).
        "restart = \"always\"\nrestart_delay = \"5ms\"\nstart_limit = { burst = 0, interval = \"0\" }",
    );
    let mut orch = Orch::start(&dir, &config(&dir, None, 4, "", &services));
    wait_until("listening", || {
        (ctl(&socket, &["status"]).code == 0).then_some(())
    });
    let fd = raw_connect(&socket);
    let mut out = [0u8; 64];
    let len = encode(&mut out, 9, &Body::Monitor).unwrap();
    // SAFETY: out[..len] is valid.
    let sent = unsafe { libc::send(fd.as_raw_fd(), out.as_ptr().cast(), len, 0) };
    assert_eq!(sent, len as isize);
    let done = raw_recv(&fd, Duration::from_secs(20)).expect("Done");
    assert!(matches!(decode(&done).unwrap().body, Body::Done(_)));
    // Do not read while the crash loop produces about 750 events (three per restart): the
    // socket fills up (about 280 fit in the default send buffer).
    let spawned = orch
        .lines_with(&["service=looper ", "reason=spawned"])
        .len();
    orch.wait_lines(&["service=looper ", "reason=spawned"], spawned + 250);
    // Now read, without pausing (a full monitor is dropped 5 s after it filled): events, then
    // the count of those that did not fit, then events again.
    let mut events_before = 0;
    let dropped = loop {
        let packet = raw_recv(&fd, Duration::from_secs(20)).expect("a frame");
        assert!(
            !packet.is_empty(),
            "the monitor connection stays open: {:?}",
            orch.lines_with(&["event=control-"])
        );
        match decode(&packet).unwrap().body {
            Body::Event(_) => events_before += 1,
            Body::Dropped(n) => break n,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        dropped > 0 && events_before > 0,
        "{events_before} events, {dropped} dropped"
    );
    let after = raw_recv(&fd, Duration::from_secs(20)).expect("events go on");
    assert!(matches!(decode(&after).unwrap().body, Body::Event(_)));
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
}

#[test]
fn an_undecodable_request_gets_a_reason_and_the_connection_stays_usable() {
    use holden::control::{decode, encode, Body, FailCode};
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("ctl-garbage");
    let socket = dir.path("control.sock");
    let _orch = Orch::start(&dir, &config(&dir, None, 4, "", &sleeper("a", "local", "")));
    wait_state(&socket, "a", "running");
    let fd = raw_connect(&socket);
    let send = |bytes: &[u8]| {
        // SAFETY: bytes is valid.
        let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(n, bytes.len() as isize);
    };
    let mut out = [0u8; 64];
    let end = encode(&mut out, 3, &Body::End(1)).unwrap();
    let reply_as_request = out[..end].to_vec();
    for packet in [
        &b"HCTL\x01\x63garbage"[..],
        b"not a frame at all",
        &reply_as_request,
    ] {
        send(packet);
        let reply = raw_recv(&fd, Duration::from_secs(20)).expect("a reply");
        match decode(&reply).unwrap().body {
            Body::Failure {
                code: FailCode::BadRequest,
                text,
            } => assert!(!text.is_empty()),
            other => panic!("{packet:?}: {other:?}"),
        }
    }
    let len = encode(&mut out, 4, &Body::Status(Some("a"))).unwrap();
    send(&out[..len]);
    let reply = raw_recv(&fd, Duration::from_secs(20)).expect("a reply");
    let frame = decode(&reply).unwrap();
    assert_eq!(frame.id, 4);
    assert!(
        matches!(frame.body, Body::Service(s) if s.name == "a"),
        "{frame:?}"
    );
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = TempDir::new("ctl-colour");
    let socket = dir.path("control.sock");
    let _orch = Orch::start(&dir, &config(&dir, None, 4, "", &sleeper("a", "local", "")));
    wait_state(&socket, "a", "running");
    let command = format!(
        "{} --socket {} status",
        holdenctl().display(),
        socket.display()
    );
    // `script` runs holdenctl on a pseudo-terminal.
    let on_tty = |no_color: Option<&str>| -> String {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &command, "/dev/null"])
            .env_remove("NO_COLOR");
        if let Some(value) = no_color {
            cmd.env("NO_COLOR", value);
        }
        let out = cmd
            .output()
            .expect("script (util-linux) runs holdenctl on a pty");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        on_tty(None).contains("\x1b[32mrunning\x1b[0m"),
        "{:?}",
        on_tty(None)
    );
    assert!(!on_tty(Some("1")).contains('\x1b'));
    let piped = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&piped.stdout).contains('\x1b'));
}

#[test]
fn a_second_orchestrator_never_takes_over_a_live_control_socket() {
    let dir = TempDir::new("ctl-second");
    let socket = dir.path("control.sock");
    let _first = Orch::start(
        &dir,
        &config(&dir, None, 4, "", &sleeper("first", "local", "")),
    );
    wait_state(&socket, "first", "running");
    // A second orchestrator with its own directory, configured for the same control socket.
    let other = TempDir::new("ctl-second-b");
    let text = config(&other, None, 4, "", &sleeper("second", "local", "")).replace(
        &other.path("control.sock").display().to_string(),
        &socket.display().to_string(),
    );
    let mut second = Orch::start(&other, &text);
    second.wait_lines(
        &["event=control-unavailable", "another process is listening"],
        1,
    );
    // holdenctl still reaches the first one, also after the second has gone.
    let out = ctl(&socket, &["status"]);
    assert!(
        out.stdout.contains("first") && !out.stdout.contains("second"),
        "{}",
        out.stdout
    );
    second.stop(libc::SIGTERM);
    let out = ctl(&socket, &["status", "first"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A QM process that is gone before the orchestrator could read its pid is reported as
/// spawned with an unknown pid (`null`), never as pid 1: every pid the monitor shows is one
/// the orchestrator logged for that service.
#[test]
fn the_monitor_never_invents_a_pid() {
    let dir = TempDir::new("ctl-nopid");
    let qm = Qm::start(&dir, "");
    let socket = dir.path("control.sock");
    let services = service(
        "blink",
        "qm",
        &["/bin/true"],
        "restart = \"always\"\nrestart_delay = \"5ms\"\nstart_limit = { burst = 0, interval = \"0\" }",
    );
    let mut orch = Orch::start(&dir, &config(&dir, Some(&qm.socket), 4, "", &services));
    wait_until("control socket", || socket.exists().then_some(()));
    let mut monitor = Command::new(holdenctl())
        .arg("--socket")
        .arg(&socket)
        .args(["monitor", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events = collect_lines(&mut monitor);
    let spawned = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("\"reason\":\"spawned\""))
            .map(|l| json_field(l, "spawned_pid").expect("spawned_pid"))
            .collect::<Vec<String>>()
    };
    wait_until("200 spawns seen by the monitor", || {
        (spawned(&events.lock().unwrap()).len() >= 200).then_some(())
    });
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(orch.stop(libc::SIGTERM).code(), Some(0));
    let logged: Vec<String> = orch
        .lines_with(&["service=blink ", "reason=spawned"])
        .iter()
        .map(|l| field(l, "spawned_pid").unwrap().to_string())
        .collect();
    for pid in spawned(&events.lock().unwrap()) {
        assert_ne!(pid, "1", "a pid was invented");
        if pid == "null" {
            assert!(logged.iter().any(|p| p == "0"), "{logged:?}");
        } else {
            assert!(logged.contains(&pid), "{pid} not logged: {logged:?}");
        }
    }
}
