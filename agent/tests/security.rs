//! Access control: SO_PEERCRED allow-list, socket mode, and credential
//! requests from non-root peers. The "other user" client is this very test
//! binary, re-executed as uid/gid 65534 with `client_as_other_user` selected.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use holden::wire::v1::{ErrorStage, StartFlags};

const NOBODY: u32 = 65534;
const CLIENT_ENV: &str = "HOLDEN_TEST_CLIENT_SOCKET";
const MODE_ENV: &str = "HOLDEN_TEST_CLIENT_MODE";

/// Not a test of its own: the body of the client re-executed as another
/// user. Prints one `RESULT ...` line.
#[test]
fn client_as_other_user() {
    let Some(socket) = std::env::var_os(CLIENT_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    let client = V1Client::connect(Path::new(&socket));
    let (id, frame) = match mode.as_str() {
        "ping" => {
            let mut buf = [0u8; holden::wire::v1::HEADER_LEN];
            let len = holden::wire::v1::encode_ping(&mut buf, 1).unwrap();
            (1, buf[..len].to_vec())
        }
        "start-as-root" => {
            let argv: [&[u8]; 1] = [b"/bin/true"];
            (
                2,
                start_frame_full(2, &argv, &[], None, Some(0), None, StartFlags::empty()),
            )
        }
        "start" => (3, start_frame(3, &[b"/bin/true"], &[], None)),
        other => panic!("unknown mode {other}"),
    };
    // A refused peer may find the connection already closed when it sends
    // (EPIPE); the reason is still waiting in its receive queue.
    let _ = send_with_fds(std::os::fd::AsRawFd::as_raw_fd(&client.fd), &frame, &[]);
    // Connection-level refusals carry request id 0.
    let reply = client.recv();
    let reply_id = holden::wire::v1::peek_request_id(&reply.bytes).expect("no reply");
    assert!(reply_id == id || reply_id == 0, "reply id {reply_id}");
    let outcome = parse_reply(reply, reply_id);
    let line = match outcome {
        Outcome::Pong { .. } => "RESULT pong".to_string(),
        Outcome::Started { pid, .. } => format!("RESULT started {pid}"),
        Outcome::Error { stage, errno, text } => {
            format!("RESULT error {} {errno} {text}", stage.name())
        }
    };
    set_timeouts(
        std::os::fd::AsRawFd::as_raw_fd(&client.fd),
        std::time::Duration::from_millis(300),
    );
    let closed = client.closed_by_agent();
    println!("\n{line}\nCLOSED {closed}");
}

/// Runs `client_as_other_user` as uid/gid 65534; returns its RESULT and
/// CLOSED lines. The test binary runs from a copy in the socket's directory,
/// which [`open_to_nobody`] made reachable (the build directory may not be,
/// e.g. in a clone under a private `mktemp -d`).
fn run_as_nobody(socket: &Path, mode: &str) -> (String, String) {
    let copy = socket
        .parent()
        .expect("socket in a test dir")
        .join("client");
    if !copy.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &copy).expect("copy the test binary");
    }
    let mut cmd = Command::new(&copy);
    cmd.args([
        "--exact",
        "client_as_other_user",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CLIENT_ENV, socket)
    .env(MODE_ENV, mode)
    .uid(NOBODY)
    .gid(NOBODY);
    // Another test's fork may briefly hold a copy of the descriptor the copy was written
    // through (until that child's exec closes it): ETXTBSY then, so try again for a while.
    let mut tries = 0;
    let output = loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let find = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no {prefix} line; stdout:\n{stdout}\nstderr:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
            .to_string()
    };
    (find("RESULT"), find("CLOSED"))
}

/// Lets uid/gid 65534 reach the socket: traverse the directory and be in
/// the socket's group (the socket stays 0660).
fn open_to_nobody(dir: &TempDir, socket: &Path) {
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(socket, None, Some(NOBODY)).unwrap();
}

#[test]
fn socket_file_is_0660() {
    let dir = TempDir::new("mode");
    let agent = Agent::start(&dir, &[]);
    let meta = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
}

#[test]
fn peer_not_on_the_allow_list_is_told_why_and_disconnected() {
    let dir = TempDir::new("refuse");
    let agent = Agent::start(&dir, &[]);
    open_to_nobody(&dir, &agent.socket);
    let (result, closed) = run_as_nobody(&agent.socket, "ping");
    assert!(
        result.starts_with("RESULT error permission 13 uid 65534 may not use"),
        "{result}"
    );
    assert_eq!(closed, "CLOSED true");
    let (result, _) = run_as_nobody(&agent.socket, "start");
    assert!(result.starts_with("RESULT error permission 13"), "{result}");
    assert!(agent
        .log()
        .contains("refused: uid 65534 is not on the allow-list"));
}

#[test]
fn allow_uid_admits_a_peer_but_not_to_other_users() {
    let dir = TempDir::new("allow");
    let agent = Agent::start(&dir, &["--allow-uid", "65534"]);
    open_to_nobody(&dir, &agent.socket);
    let (result, closed) = run_as_nobody(&agent.socket, "ping");
    assert_eq!(result, "RESULT pong");
    assert_eq!(closed, "CLOSED false");
    // An allowed non-root peer may not ask a root agent for a root process.
    let (result, _) = run_as_nobody(&agent.socket, "start-as-root");
    assert!(result.starts_with("RESULT error permission 1 "), "{result}");
    let (result, _) = run_as_nobody(&agent.socket, "start");
    assert!(result.starts_with("RESULT started "), "{result}");
}

#[test]
fn root_may_request_another_user() {
    let dir = TempDir::new("rootcred");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let argv: [&[u8]; 3] = [b"/bin/sh", b"-c", b"exit $(id -u)"];
    let frame = start_frame_full(
        1,
        &argv,
        &[b"PATH=/usr/bin:/bin"],
        None,
        Some(42),
        Some(42),
        StartFlags::empty(),
    );
    client.send(&frame);
    let (_, pidfd) = client.outcome(1).started();
    if let Some(status) = exit_status(std::os::fd::AsFd::as_fd(&pidfd)) {
        assert_eq!(status, holden::pidfd::WaitStatus::Exited(42));
    }
    // The working directory is entered after the credential change, and a
    // failure there is a set-up error.
    let frame = start_frame_full(
        2,
        &[b"/bin/true"],
        &[],
        Some(b"/nonexistent-holden"),
        Some(42),
        None,
        StartFlags::empty(),
    );
    client.send(&frame);
    let (stage, errno, _) = client.outcome(2).error();
    assert_eq!((stage, errno), (ErrorStage::Setup, libc::ENOENT));
}
