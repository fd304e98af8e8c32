//! A QM process's exit status is published by the kernel when its parent (the agent) reaps it,
//! not when it exits. The orchestrator waits for the reap (its pidfd polls `POLLHUP`, 6.9+) and
//! reads the status once, then; a process left unreaped is reported with an unknown status
//! after 200 ms. Shown with a fake agent in this test, which is the parent of the process whose
//! pidfd it sends and reaps it when the test says so.

mod orchestrator_support;
mod reliability_support;

use holden::wire::v1;
use orchestrator_support::*;
use reliability_support::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn frame_started(id: u64, pid: i32) -> Vec<u8> {
    let mut out = [0u8; 64];
    let len = v1::encode_started(&mut out, id, pid).unwrap();
    out[..len].to_vec()
}

/// The fake agent's side of one connection: answers the `Ping` (no gated exec: `Started` alone
/// answers a `Start`) and returns the id of the next `Start`.
fn handshake_then_start(conn: &OwnedFd) -> u64 {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    loop {
        let n = recv(conn, &mut buf);
        assert!(n > 0, "the orchestrator hung up");
        let frame = v1::decode(&buf[..n]).expect("a valid frame");
        match frame.body {
            v1::Body::Ping => {
                let mut out = [0u8; 64];
                let pong = v1::Pong::ours(v1::Capabilities::EXIT_STATUS_VIA_PIDFD);
                let len = v1::encode_pong(&mut out, frame.request_id(), pong).unwrap();
                assert!(send(conn, &out[..len], &[]));
            }
            v1::Body::Start(_) => return frame.request_id(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A child of this test process that exits with 3 once its stdin is closed, and its pidfd.
fn exits_on_eof() -> (Child, OwnedFd) {
    let child = Command::new("/bin/sh")
        .args(["-c", "read x; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SAFETY: pidfd_open on our own unreaped child; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) } as i32;
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd.
    (child, unsafe { OwnedFd::from_raw_fd(fd) })
}

fn state_of(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// Runs the orchestrator with one QM service (`restart = "never"`) against the fake agent,
/// lets the process exit, keeps it unreaped for `unreaped`, then reaps it. Returns the
/// orchestrator's exit line, whether it was logged while the process was still unreaped, and
/// how long after the process was seen a zombie the test saw it.
fn exit_reaped_after(tag: &str, unreaped: Duration) -> (String, bool, Duration) {
    let dir = TempDir::new(tag);
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let mut cfg = config_header(&socket);
    cfg += &service("late", "qm", &["/bin/true"], "restart = \"never\"");
    let mut orch = Orch::start(&dir, &cfg);
    let conn = accept(&listener);
    let id = handshake_then_start(&conn);
    let (mut child, pidfd) = exits_on_eof();
    assert!(send(
        &conn,
        &frame_started(id, child.id() as i32),
        &[pidfd.as_raw_fd()]
    ));
    orch.wait_lines(&["service=late ", "reason=spawned"], 1);

    // Exit: the pidfd polls readable (the orchestrator's copy as ours); the status is not
    // published until the reap.
    drop(child.stdin.take());
    assert!(readable(&pidfd, WAIT), "the child did not exit");
    let zombie = Instant::now();
    assert_eq!(state_of(child.id()), 'Z');
    let mut early = None;
    while zombie.elapsed() < unreaped {
        if let Some(line) = orch.lines_with(&["service=late ", "reason=exited"]).pop() {
            early = Some((line, zombie.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap();
    let result = match early {
        Some((line, after)) => (line, true, after),
        None => {
            let line = wait_until("the exit line", || {
                orch.lines_with(&["service=late ", "reason=exited"]).pop()
            });
            (line, false, zombie.elapsed())
        }
    };
    orch.stop(libc::SIGTERM);
    result
}

#[test]
fn a_late_reap_is_waited_for_and_its_status_reported() {
    let caps = holden::pidfd::Capabilities::probe();
    let (line, early, after) = exit_reaped_after("reap-late", Duration::from_millis(20));
    if caps.exit_info {
        assert!(!early, "reported before the reap: {line}");
        assert!(line.contains("reason=exited code=3"), "{line}");
        // The reap itself woke the orchestrator: it did not wait out the bound (200 ms after
        // the exit), after which it would have read the status as well.
        assert!(
            after < Duration::from_millis(190),
            "after {after:?}: {line}"
        );
    } else {
        // Nothing to wait for: the status is unknown at once.
        assert!(line.contains("status=unknown"), "{line}");
    }
}

#[test]
fn a_process_left_unreaped_is_reported_unknown_after_the_bound() {
    let caps = holden::pidfd::Capabilities::probe();
    let (line, early, after) = exit_reaped_after("reap-never", Duration::from_secs(5));
    // Reported while still a zombie: the wait for the reap is bounded (200 ms).
    assert!(
        early,
        "not reported while the process stayed unreaped: {line}"
    );
    assert!(line.contains("status=unknown"), "{line}");
    if caps.exit_info {
        // Not given up before the bound (less what this test's look at /proc lagged behind).
        assert!(
            after >= Duration::from_millis(150),
            "after {after:?}: {line}"
        );
    }
}
