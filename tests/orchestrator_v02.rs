//! The v0.2 paths: the two-argument command line and `agent.protocol = "v0.2"`, against
//! holden-agent's legacy (SOCK_STREAM) listener in its own PID namespace.

mod orchestrator_support;

use orchestrator_support::*;
use std::process::Command;

fn marker() -> String {
    sleep_marker("8888")
}

#[test]
fn the_v02_two_argument_command_line_works_against_holden_agent() {
    let dir = TempDir::new("legacy-cli");
    let legacy_socket = dir.path("legacy.sock");
    let qm = Qm::start(
        &dir,
        &format!("--legacy-socket {}", legacy_socket.display()),
    );
    wait_until("legacy socket", || legacy_socket.exists().then_some(()));
    let (local_m, qm_m) = (marker(), marker());
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg(format!("/bin/sleep {local_m}"))
        .arg(format!("sleep {qm_m}"));
    cmd.env("HOLDEN_SOCKET_PATH", &legacy_socket)
        .env_remove("NOTIFY_SOCKET");
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["event=agent-protocol", "protocol=v0.2"], 1);
    orch.wait_lines(&["event=agent-up", "protocol=v0.2"], 1);
    orch.wait_lines(&["service=local ", "reason=spawned"], 1);
    orch.wait_lines(&["service=qm ", "partition=qm", "reason=spawned"], 1);
    let qm_pid = last_spawned_pid(&orch, "qm");
    assert_eq!(pids_with(&qm_m), vec![qm_pid], "{}", orch.log());
    assert_eq!(pids_with(&local_m), vec![last_spawned_pid(&orch, "local")]);

    // restart = always: a killed QM process comes back over a new v0.2 connection.
    kill(qm_pid, libc::SIGKILL);
    let again = wait_until("qm restarted", || {
        let pid = last_spawned_pid(&orch, "qm");
        (pid != qm_pid).then_some(pid)
    });
    assert_eq!(pids_with(&qm_m), vec![again], "{}", orch.log());

    assert!(orch.stop(libc::SIGTERM).success());
    assert!(
        pids_with(&qm_m).is_empty() && pids_with(&local_m).is_empty(),
        "{}",
        orch.log()
    );
    drop(qm);
}

#[test]
fn configured_v02_agent_reports_errors_and_statuses() {
    let dir = TempDir::new("legacy-cfg");
    let legacy_socket = dir.path("legacy.sock");
    let qm = Qm::start(
        &dir,
        &format!("--legacy-socket {}", legacy_socket.display()),
    );
    wait_until("legacy socket", || legacy_socket.exists().then_some(()));
    let mut cfg =
        config_header(&legacy_socket).replace("[agent]\n", "[agent]\nprotocol = \"v0.2\"\n");
    cfg += &service(
        "crasher",
        "qm",
        &["/bin/sh", "-c", "exit 6"],
        "restart = \"always\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 3, interval = \"60s\" }",
    );
    cfg += &service(
        "missing",
        "qm",
        &["/nonexistent/holden-legacy-test"],
        "restart = \"always\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 2, interval = \"60s\" }",
    );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(
        &["service=crasher ", "state=failed", "reason=start-limit"],
        1,
    );
    let exits = orch.lines_with(&["service=crasher ", "reason=exited"]);
    assert_eq!(exits.len(), 3, "{}", orch.log());
    if holden::pidfd::Capabilities::probe().exit_info {
        assert!(exits.iter().all(|l| l.contains("code=6")), "{exits:?}");
    }
    orch.wait_lines(&["service=missing ", "state=failed"], 1);
    assert!(
        !orch
            .lines_with(&["service=missing ", "event=spawn-failed", "protocol=v0.2"])
            .is_empty(),
        "{}",
        orch.log()
    );
    assert!(
        orch.lines_with(&["event=agent-misbehaved"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);
}

/// `cd DIR && holden-orchestrator 'bin/prog ARGS' 'QM CMD'`: v0.2 ran a relative local
/// program from its working directory, and its child ran there. So does holden: the program
/// is resolved against the current directory and the local service runs in it (relative
/// arguments work too); the QM command goes to the agent as given.
#[test]
fn a_relative_local_program_runs_from_the_current_directory() {
    let dir = TempDir::new("legacy-relative");
    std::fs::create_dir(dir.path("bin")).unwrap();
    std::os::unix::fs::symlink("/bin/sleep", dir.path("bin/prog")).unwrap();
    let local_m = marker();
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg(format!("bin/prog {local_m}"))
        .arg("sleep 1")
        .current_dir(&dir.0)
        // No agent: the QM service just waits for one.
        .env("HOLDEN_SOCKET_PATH", dir.path("no-agent.sock"))
        .env_remove("NOTIFY_SOCKET");
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["service=local ", "reason=spawned"], 1);
    let pid = last_spawned_pid(&orch, "local");
    assert_eq!(pids_with(&local_m), vec![pid], "{}", orch.log());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(
        cwd, dir.0,
        "the local service runs in the orchestrator's directory"
    );
    assert_eq!(
        cmdline(pid).unwrap(),
        format!("{} {local_m}", dir.path("bin/prog").display())
    );
    assert!(orch.stop(libc::SIGTERM).success());
    assert!(pids_with(&local_m).is_empty());
    // --check agrees, from the same directory; and a missing one is named.
    let check = Command::new(orchestrator_bin())
        .args(["--check", "bin/prog 1", "sleep 1"])
        .current_dir(&dir.0)
        .env("HOLDEN_SOCKET_PATH", dir.path("no-agent.sock"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let check = Command::new(orchestrator_bin())
        .args(["--check", "bin/nope 1", "sleep 1"])
        .current_dir(&dir.0)
        .env("HOLDEN_SOCKET_PATH", dir.path("no-agent.sock"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
}

/// `agent.protocol = "auto"` detects again at every reconnect: a v0.2 agent swapped for a
/// holden-agent (v1) under a running orchestrator, and back, strands no QM service. The v0.2
/// agent is holden-agent started the v0.2 way (`HOLDEN_SOCKET_PATH` only: a stream socket
/// speaking v0.2); which one runs is chosen by a file, read each time the agent restarts.
#[test]
fn auto_follows_an_agent_swapped_under_it() {
    let dir = TempDir::new("legacy-swap");
    let v1_flag = dir.path("serve-v1");
    let qm = Qm::start_with(
        &dir,
        &format!(
            "if [ -e '{}' ]; then \"$AGENT\" --socket \"$SOCKET\"; else HOLDEN_SOCKET_PATH=\"$SOCKET\" \"$AGENT\"; fi",
            v1_flag.display()
        ),
    );
    let m = marker();
    let cfg = config_header(&qm.socket).replace("[agent]\n", "[agent]\nprotocol = \"auto\"\n")
        + &service(
            "radio",
            "qm",
            &["/bin/sleep", &m],
            "restart = \"always\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 0, interval = \"0\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    orch.wait_lines(&["event=agent-up", "protocol=v0.2"], 1);
    orch.wait_lines(&["service=radio ", "reason=spawned"], 1);
    let first = last_spawned_pid(&orch, "radio");

    // Swap in a v1 agent, then end the QM process: its restart finds v1.
    std::fs::write(&v1_flag, "").unwrap();
    qm.kill_agent();
    wait_until("the v1 agent", || {
        qm.agent_pid()
            .filter(|&p| cmdline(p).is_some_and(|c| c.contains("--socket")))
    });
    kill(first, libc::SIGKILL);
    orch.wait_lines(&["event=agent-up", "protocol=v1"], 1);
    let second = wait_until("radio restarted through v1", || {
        let pid = last_spawned_pid(&orch, "radio");
        (pid != first && alive(pid)).then_some(pid)
    });
    assert_eq!(pids_with(&m), vec![second], "{}", orch.log());

    // And back to a v0.2 agent: the dropped v1 connection reconnects, detects v0.2 again,
    // and the next restart goes through it.
    std::fs::remove_file(&v1_flag).unwrap();
    qm.kill_agent();
    orch.wait_lines(&["event=agent-up", "protocol=v0.2"], 2);
    kill(second, libc::SIGKILL);
    let third = wait_until("radio restarted through v0.2 again", || {
        let pid = last_spawned_pid(&orch, "radio");
        (pid != second && alive(pid)).then_some(pid)
    });
    assert_eq!(pids_with(&m), vec![third], "{}", orch.log());
    assert!(orch.stop(libc::SIGTERM).success());
    assert!(pids_with(&m).is_empty(), "{}", orch.log());
    drop(qm);
}
