//! holden-agent over wire v1: spawn, ping, exec errors, what the child gets.

mod common;

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;
use holden::pidfd::WaitStatus;
use holden::wire::v1::{Capabilities, ErrorStage, StartFlags};

#[test]
fn spawn_and_ping() {
    let dir = TempDir::new("basic");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    match client.ping(1) {
        Outcome::Pong { capabilities } => {
            assert!(capabilities.contains(Capabilities::EXIT_STATUS_VIA_PIDFD));
            assert!(capabilities.contains(Capabilities::CLONE3_PIDFD));
            assert!(!capabilities.contains(Capabilities::LEGACY_LISTENER));
        }
        other => panic!("{other:?}"),
    }
    let mut procs = Procs::default();
    let (pid, pidfd) = client.start(2, &[b"/bin/sleep", b"1000"]).started();
    let pidfd = procs.keep(pidfd);
    assert!(pid > 0);
    // Alive: signal 0 works and the pidfd does not poll readable.
    pidfd_send_signal(pidfd, 0).unwrap();
    assert!(!poll_readable(pidfd, std::time::Duration::ZERO));
    // It is the agent's child (same PID namespace here).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, agent.pid());
    // Kill it through the pidfd: it polls readable, and the agent reaped it
    // so the exit status is readable here (6.15+).
    pidfd_send_signal(pidfd, libc::SIGTERM).unwrap();
    match exit_status(pidfd) {
        Some(status) => assert_eq!(
            status,
            WaitStatus::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false
            }
        ),
        None => eprintln!("kernel without PIDFD_INFO_EXIT: exit status unknown"),
    }
    assert!(agent
        .log()
        .contains("request 2: start \"/bin/sleep\" argc 2 envc 0 -> started pid"));
}

#[test]
fn exit_code_is_readable_by_the_pidfd_holder() {
    let dir = TempDir::new("exit");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let (_, pidfd) = client.start(1, &[b"/bin/sh", b"-c", b"exit 7"]).started();
    if let Some(status) = exit_status(pidfd.as_fd()) {
        assert_eq!(status, WaitStatus::Exited(7));
    }
}

#[test]
fn exec_failures_report_stage_and_errno() {
    let dir = TempDir::new("execerr");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let not_exec = dir.join("not-executable");
    std::fs::write(&not_exec, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"\x7fNOPE\x00\x01\x02\x03\x04\x05\x06").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    let missing = dir.join("missing");
    let cases: [(&[u8], i32); 5] = [
        (missing.as_os_str().as_bytes(), libc::ENOENT),
        (not_exec.as_os_str().as_bytes(), libc::EACCES),
        (garbage.as_os_str().as_bytes(), libc::ENOEXEC),
        // Linux reports EACCES for a directory (not a regular file).
        (dir.path.as_os_str().as_bytes(), libc::EACCES),
        (b"no-such-program-in-path", libc::ENOENT),
    ];
    for (i, (program, errno)) in cases.iter().enumerate() {
        let id = 10 + i as u64;
        let (stage, got, text) = client.start(id, &[program]).error();
        assert_eq!((stage, got), (ErrorStage::Exec, *errno), "{text}");
        assert!(text.starts_with("exec \""), "{text}");
    }
    // A missing working directory is a set-up failure, not an exec one.
    let frame = start_frame(
        20,
        &[b"/bin/true"],
        &[],
        Some(missing.as_os_str().as_bytes()),
    );
    client.send(&frame);
    let (stage, errno, text) = client.outcome(20).error();
    assert_eq!((stage, errno), (ErrorStage::Setup, libc::ENOENT), "{text}");
    // The text names the directory, not the program.
    assert_eq!(
        text,
        format!("chdir \"{}\": No such file or directory", missing.display())
    );
    // A working directory that is a file: ENOTDIR, named the same way.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    client.send(&start_frame(
        21,
        &[b"/bin/true"],
        &[],
        Some(file.as_os_str().as_bytes()),
    ));
    let (stage, errno, text) = client.outcome(21).error();
    assert_eq!((stage, errno), (ErrorStage::Setup, libc::ENOTDIR), "{text}");
    assert_eq!(
        text,
        format!("chdir \"{}\": Not a directory", file.display())
    );
    // Still serving.
    assert!(matches!(client.ping(22), Outcome::Pong { .. }));
}

#[test]
fn argv_env_cwd_and_isolation_arrive_in_the_child() {
    let dir = TempDir::new("child");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let argv: [&[u8]; 5] = [
        b"/bin/sh",
        b"-c",
        b"kill -STOP $$",
        b"two words",
        b"\xff raw",
    ];
    let env: [&[u8]; 2] = [b"A=1", b"SECRET=hunter2"];
    let cwd = dir.path.as_os_str().as_bytes();
    client.send(&start_frame(1, &argv, &env, Some(cwd)));
    let mut procs = Procs::default();
    let (pid, pidfd) = client.outcome(1).started();
    procs.keep(pidfd);
    wait_until("the shell to stop", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('T'))
            == Some(true)
    });
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        cmdline,
        argv.iter()
            .flat_map(|a| a.iter().copied().chain([0]))
            .collect::<Vec<u8>>()
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ, b"A=1\0SECRET=hunter2\0");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        dir.path
    );
    // Own session, stdin /dev/null, only fds 0-2, nothing blocked or ignored.
    // SAFETY: getsid takes a pid.
    assert_eq!(unsafe { libc::getsid(pid) }, pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    // Right after execve the program's dynamic loader holds its libraries open for a moment:
    // look again until only 0-2 are left (a leaked fd stays, and fails after 5 s).
    let only_stdio = |fds: &[String]| fds.iter().all(|f| ["0", "1", "2"].contains(&f.as_str()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let fds = loop {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if only_stdio(&fds) || std::time::Instant::now() > deadline {
            break fds;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(only_stdio(&fds), "{fds:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
    assert!(status.contains("SigIgn:\t0000000000000000"), "{status}");
    // The log names the request but never an environment value.
    let log = agent.log();
    assert!(log.contains("envc 2"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[test]
fn inherit_env_and_credentials() {
    let dir = TempDir::new("cred");
    let mut command = std::process::Command::new(AGENT);
    let socket = dir.join("agent.sock");
    command
        .arg("--socket")
        .arg(&socket)
        .env("HOLDEN_TEST_INHERITED", "from-agent");
    let agent = Agent::launch(&dir, command, &socket);
    let client = V1Client::connect(&agent.socket);
    let argv: [&[u8]; 3] = [b"/bin/sh", b"-c", b"kill -STOP $$"];
    let frame = start_frame_full(
        1,
        &argv,
        &[b"HOLDEN_TEST_OWN=1"],
        None,
        Some(65534),
        Some(65533),
        StartFlags::INHERIT_ENV | StartFlags::STDIO_NULL,
    );
    client.send(&frame);
    let mut procs = Procs::default();
    let (pid, pidfd) = client.outcome(1).started();
    procs.keep(pidfd);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(
        status.contains("Gid:\t65533\t65533\t65533\t65533"),
        "{status}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let entries: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(entries.contains(&b"HOLDEN_TEST_INHERITED=from-agent".as_slice()));
    assert!(entries.contains(&b"HOLDEN_TEST_OWN=1".as_slice()));
    assert!(
        !entries.iter().any(|e| e.starts_with(b"NOTIFY_SOCKET=")),
        "agent-private variable leaked"
    );
    for fd in 0..3 {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(link, std::path::Path::new("/dev/null"));
    }
}

#[test]
fn pipelined_requests_on_one_connection_match_by_id() {
    let dir = TempDir::new("pipe");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let ids = [7u64, 3, 99, 1 << 40];
    for id in ids {
        client.send(&start_frame(id, &[b"/bin/true"], &[], None));
    }
    // Gated (1.1): each Started is followed by its Running, but the replies to different
    // requests may interleave.
    let outcomes = client.outcomes(&ids);
    assert_eq!(outcomes.len(), ids.len());
    for (_, outcome) in outcomes {
        let (_, pidfd) = outcome.started();
        assert!(poll_readable(pidfd.as_fd(), WAIT));
    }
}

/// Wire 1.1 gated exec, frame by frame: `Started` + pidfd, then `Running`; an exec failure is
/// `Started` + pidfd, then `Error` stage exec with the errno, and the process exits 127.
#[test]
fn gated_exec_sends_started_then_running_or_error() {
    let dir = TempDir::new("gated");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    match client.ping(1) {
        Outcome::Pong { capabilities } => {
            assert!(capabilities.contains(Capabilities::GATED_EXEC))
        }
        other => panic!("{other:?}"),
    }
    let mut procs = Procs::default();
    let marker = dir.join("ran");
    let script = format!("echo ran > {}; exec sleep 1000", marker.display());
    client.send(&start_frame(
        2,
        &[b"/bin/sh", b"-c", script.as_bytes()],
        &[],
        None,
    ));
    let (pid, pidfd) = parse_reply(client.recv(), 2).started();
    let pidfd = procs.keep(pidfd);
    let reply = client.recv();
    assert!(reply.fds.is_empty());
    let frame = holden::wire::v1::decode(&reply.bytes).unwrap();
    assert_eq!(
        (frame.request_id(), frame.body),
        (2, holden::wire::v1::Body::Running)
    );
    wait_until("the program ran", || marker.exists());
    pidfd_send_signal(pidfd, 0).unwrap();
    assert!(pid > 0);

    let missing = dir.join("missing");
    client.send(&start_frame(
        3,
        &[missing.as_os_str().as_bytes()],
        &[],
        None,
    ));
    let (_, pidfd) = parse_reply(client.recv(), 3).started();
    let reply = client.recv();
    assert!(reply.fds.is_empty());
    let frame = holden::wire::v1::decode(&reply.bytes).unwrap();
    let holden::wire::v1::Body::Error(error) = frame.body else {
        panic!("expected Error after Started, got {frame:?}");
    };
    assert_eq!(frame.request_id(), 3);
    assert_eq!((error.stage, error.errno), (ErrorStage::Exec, libc::ENOENT));
    if let Some(status) = exit_status(pidfd.as_fd()) {
        assert_eq!(status, WaitStatus::Exited(127));
    }
}

/// A `Start` of minor 0 (a 1.0 orchestrator) gets the 1.0 sequence: an exec failure is a lone
/// `Error`, a success a lone `Started` after the exec, never a `Running`.
#[test]
fn a_minor_0_start_gets_the_ungated_sequence() {
    let dir = TempDir::new("minor0");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let minor0 = |mut frame: Vec<u8>| {
        frame[holden::wire::v1::header_offset::VERSION_MINOR] = 0;
        frame
    };
    client.send(&minor0(start_frame(1, &[b"/nonexistent/x"], &[], None)));
    let (stage, errno, _) = parse_reply(client.recv(), 1).error();
    assert_eq!((stage, errno), (ErrorStage::Exec, libc::ENOENT));
    let mut procs = Procs::default();
    client.send(&minor0(start_frame(
        2,
        &[b"/bin/sleep", b"1000"],
        &[],
        None,
    )));
    let (pid, pidfd) = parse_reply(client.recv(), 2).started();
    procs.keep(pidfd);
    // Already exec'd when Started came.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
    // Nothing follows: the next reply answers the next request.
    assert!(matches!(client.ping(3), Outcome::Pong { .. }));
}
