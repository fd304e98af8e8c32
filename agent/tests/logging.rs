//! The agent's log line about a gated start is written after the child's go-ahead: between
//! `Started` and the release there is nothing but the `sendmsg`. Shown with a log that cannot
//! be written (stderr a full pipe nobody reads): the agent blocks in its `write`, and yet the
//! child has been released and runs its program.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use holden::pidfd::WaitStatus;

/// A pipe: (read end, write end), both close-on-exec (the write end is given to the agent as
/// its stderr by `Stdio`, which makes its own inheritable copy).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two new fds we own from here on.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fills the pipe behind `write_end` until it takes no more. Writes through a second, non-blocking
/// open file description of the pipe (`/proc/self/fd/N`), so the agent's own stays blocking.
fn fill(write_end: &OwnedFd) {
    let path = format!("/proc/self/fd/{}\0", write_end.as_raw_fd());
    // SAFETY: a NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "reopen the pipe: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the new fd is ours.
    let writer = unsafe { OwnedFd::from_raw_fd(fd) };
    let junk = [b'.'; 4096];
    loop {
        // SAFETY: writes from a live buffer.
        let n = unsafe { libc::write(writer.as_raw_fd(), junk.as_ptr().cast(), junk.len()) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(error.raw_os_error(), Some(libc::EAGAIN), "{error}");
            break;
        }
    }
    // Smaller writes fill what a 4 KiB one could not.
    loop {
        // SAFETY: as above.
        if unsafe { libc::write(writer.as_raw_fd(), junk.as_ptr().cast(), 1) } < 0 {
            break;
        }
    }
}

#[test]
fn a_stalled_log_does_not_hold_a_gated_child_at_its_gate() {
    let dir = TempDir::new("logstall");
    let socket = dir.join("agent.sock");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let (log_read, log_write) = pipe();
    let stderr = log_write.try_clone().unwrap();
    let child = Command::new(AGENT)
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    // Killed and reaped on drop, like every agent of these tests.
    let agent = Agent {
        child,
        socket: socket.clone(),
        log_path: dir.join("unused.log"),
    };
    let mut ready = [0u8; 512];
    let len = notify.recv(&mut ready).expect("READY=1");
    assert!(ready[..len].starts_with(b"READY=1"));

    // Connect and ping first: those lines fit in the pipe.
    let client = V1Client::connect(&agent.socket);
    set_timeouts(client.fd.as_raw_fd(), Duration::from_secs(10));
    assert!(matches!(client.ping(1), Outcome::Pong { .. }));
    // From here on every write of the agent to its log blocks.
    fill(&log_write);

    client.send(&start_frame(2, &[b"/bin/sh", b"-c", b"exit 3"], &[], None));
    let reply = recv_with_fds(client.fd.as_raw_fd(), holden::wire::v1::FRAME_LEN_MAX)
        .expect("no Started while the log is stalled: the agent wrote its line before the reply");
    assert!(!reply.bytes.is_empty(), "agent closed the connection");
    let (pid, pidfd) = match parse_reply(reply, 2) {
        Outcome::Started { pid, pidfd } => (pid, pidfd),
        other => panic!("expected Started, got {other:?}"),
    };
    // Released before the agent blocked in its log write: the program runs and exits 3 (a child
    // still at its gate would wait there for as long as the agent is stuck).
    if let Some(status) = exit_status(pidfd.as_fd()) {
        assert_eq!(status, WaitStatus::Exited(3));
    }

    // Unblock the agent: read its log until the start's line is in it.
    let mut reader = std::fs::File::from(log_read);
    let mut text = Vec::new();
    let mut buf = [0u8; 65536];
    let wanted = format!("-> started pid {pid} (gated)");
    while !String::from_utf8_lossy(&text).contains(&wanted) {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "log ended without {wanted:?}");
        text.extend(buf[..n].iter().filter(|&&b| b != b'.'));
    }
    // And the exec is confirmed once the agent goes on.
    let reply = client.recv();
    let frame = holden::wire::v1::decode(&reply.bytes).unwrap();
    assert_eq!(frame.body, holden::wire::v1::Body::Running);
    drop(log_write);
    drop(agent);
}
