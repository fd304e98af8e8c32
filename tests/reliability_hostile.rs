//! The orchestrator against a misbehaving agent (a fake one in this test, speaking wire v1):
//! each misbehaviour is logged, the connection is dropped and retried, nothing leaks, and a
//! local crash-looping service keeps being restarted. The second connection behaves, so the
//! QM service ends up running with the process the fake agent really started.

mod orchestrator_support;

use holden::wire::v1;
use orchestrator_support::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    Garbage,
    StartedWithoutFd,
    StartedWithMemfd,
    StartedWithTwoFds,
    UnknownRequestId,
    WrongPidClaimed,
    ErrorWithFd,
}

fn seqpacket_listener(path: &std::path::Path) -> OwnedFd {
    // SAFETY: plain socket/bind/listen calls on a sockaddr_un we build.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
            *d = s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 8), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

fn accept(listener: &OwnedFd) -> OwnedFd {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded wait so a test never hangs.
    let ready = unsafe { libc::poll(&mut pfd, 1, WAIT.as_millis() as i32) };
    assert_eq!(ready, 1, "the orchestrator did not (re)connect");
    // SAFETY: accept4 on our listener.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept");
    // SAFETY: the fd was just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn recv(conn: &OwnedFd, buf: &mut [u8]) -> usize {
    // SAFETY: reads into a valid buffer.
    let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    n.max(0) as usize
}

fn send(conn: &OwnedFd, data: &[u8], fds: &[RawFd]) {
    // SAFETY: builds a msghdr over valid buffers; the control buffer has room for 4 fds.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
        libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
    }
}

/// Answers the handshake; returns the request id of the first `Start`.
fn handshake_and_first_start(conn: &OwnedFd) -> u64 {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let n = recv(conn, &mut buf);
    let ping = v1::decode(&buf[..n]).expect("ping");
    let mut out = [0u8; 64];
    let len = v1::encode_pong(
        &mut out,
        ping.request_id(),
        v1::Pong::ours(v1::Capabilities::empty()),
    )
    .unwrap();
    send(conn, &out[..len], &[]);
    let n = recv(conn, &mut buf);
    let start = v1::decode(&buf[..n]).expect("start");
    assert!(matches!(start.body, v1::Body::Start(_)));
    start.request_id()
}

/// Kills its processes by pid when dropped, also when the test fails.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sleeper(marker: &str) -> (Child, OwnedFd) {
    let child = Command::new("/bin/sleep")
        .arg(marker)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fd = holden::pidfd::open(child.id() as i32).unwrap();
    (child, fd)
}

fn started(id: u64, pid: i32) -> Vec<u8> {
    let mut out = [0u8; 64];
    let len = v1::encode_started(&mut out, id, pid).unwrap();
    out[..len].to_vec()
}

fn run(behaviour: Misbehaviour, expected: &str) {
    let dir = TempDir::new("hostile");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let marker = format!("6666.{}{}", std::process::id(), behaviour as u32);
    let cfg = config_header(&socket)
        + &service("victim", "qm", &["/bin/sleep", &marker], "restart = \"always\"\nrestart_delay = \"0s\"")
        + &service(
            "local-loop",
            "local",
            &["/bin/sh", "-c", "exit 1"],
            "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 16, interval = \"100ms\" }",
        );
    let orch = Orch::start(&dir, &cfg);
    let mut children = Reaper(Vec::new());

    // First connection: misbehave once.
    let conn = accept(&listener);
    let id = handshake_and_first_start(&conn);
    let local_before = orch
        .lines_with(&["service=local-loop ", "reason=spawned"])
        .len();
    let (child, pidfd) = sleeper(&marker);
    let pid = child.id() as i32;
    children.0.push(child);
    match behaviour {
        Misbehaviour::Garbage => send(&conn, b"\x00\x01garbage that is no frame", &[]),
        Misbehaviour::StartedWithoutFd => send(&conn, &started(id, pid), &[]),
        Misbehaviour::StartedWithMemfd => {
            // A memfd: not a pidfd, and its name makes a leak visible in /proc/<pid>/fd.
            // SAFETY: memfd_create with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"holden-hostile".as_ptr(), libc::MFD_CLOEXEC) };
            send(&conn, &started(id, pid), &[fd]);
            // SAFETY: closing our copy.
            unsafe { libc::close(fd) };
        }
        Misbehaviour::StartedWithTwoFds => send(
            &conn,
            &started(id, pid),
            &[pidfd.as_raw_fd(), pidfd.as_raw_fd()],
        ),
        Misbehaviour::UnknownRequestId => {
            send(&conn, &started(id ^ 0x5555_0000, pid), &[pidfd.as_raw_fd()])
        }
        Misbehaviour::WrongPidClaimed => send(&conn, &started(id, pid + 1), &[pidfd.as_raw_fd()]),
        Misbehaviour::ErrorWithFd => {
            let mut out = [0u8; 512];
            let len =
                v1::encode_error(&mut out, id, libc::ENOENT, v1::ErrorStage::Exec, b"no").unwrap();
            send(&conn, &out[..len], &[pidfd.as_raw_fd()]);
        }
    }

    orch.wait_lines(&["event=agent-misbehaved", expected], 1);
    orch.wait_lines(&["event=agent-down"], 1);
    drop(conn);
    drop(pidfd);
    finish(orch, children, &marker, expected, local_before, listener);
}

fn finish(
    mut orch: Orch,
    mut children: Reaper,
    marker: &str,
    expected: &str,
    local_before: usize,
    listener: OwnedFd,
) {
    // Second connection: behave. The victim gets a real process.
    let conn = accept(&listener);
    let id = handshake_and_first_start(&conn);
    let (child, pidfd) = sleeper(marker);
    let pid = child.id() as i32;
    children.0.push(child);
    send(&conn, &started(id, pid), &[pidfd.as_raw_fd()]);
    let running = orch.wait_lines(
        &[
            "service=victim ",
            "state=running",
            &format!("spawned_pid={pid}"),
        ],
        1,
    );
    assert_eq!(running.len(), 1);
    assert_eq!(
        orch.lines_with(&["event=agent-misbehaved"]).len(),
        1,
        "logged once: {}",
        orch.log()
    );
    assert!(
        orch.lines_with(&["event=agent-misbehaved", expected]).len() == 1,
        "{}",
        orch.log()
    );
    // The local service kept going meanwhile.
    orch.wait_lines(&["service=local-loop ", "reason=spawned"], local_before + 3);
    // Nothing the agent sent is still open in the orchestrator except the victim's pidfd.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", orch.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !fds.iter().any(|l| l.contains("holden-hostile")),
        "a received fd leaked: {fds:?}"
    );
    let pidfds = fds.iter().filter(|l| l.contains("pidfd")).count();
    assert!(
        pidfds <= 2,
        "the victim's pidfd and at most the local one: {fds:?}"
    );
    assert!(orch.stop(libc::SIGTERM).success());
    drop(children);
    drop(conn);
}

#[test]
fn garbage_drops_the_connection() {
    run(Misbehaviour::Garbage, "undecodable frame");
}

#[test]
fn started_without_fd_is_refused() {
    run(
        Misbehaviour::StartedWithoutFd,
        "without exactly one file descriptor",
    );
}

#[test]
fn started_with_a_memfd_is_refused_and_the_fd_closed() {
    run(Misbehaviour::StartedWithMemfd, "not a pidfd");
}

#[test]
fn started_with_two_fds_is_refused() {
    run(
        Misbehaviour::StartedWithTwoFds,
        "without exactly one file descriptor",
    );
}

#[test]
fn unknown_request_id_is_refused() {
    run(Misbehaviour::UnknownRequestId, "unknown request id");
}

#[test]
fn a_pidfd_not_matching_the_reported_pid_is_refused() {
    run(
        Misbehaviour::WrongPidClaimed,
        "other than the one the agent reported",
    );
}

#[test]
fn error_with_an_fd_is_refused() {
    run(Misbehaviour::ErrorWithFd, "file descriptor with an Error");
}

#[test]
fn a_pidfd_of_a_process_already_supervised_is_refused() {
    let dir = TempDir::new("hostile-dup");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let (ma, mb) = (
        format!("6667.{}1", std::process::id()),
        format!("6667.{}2", std::process::id()),
    );
    let cfg = config_header(&socket)
        + &service("a", "qm", &["/bin/sleep", &ma], "")
        + &service("b", "qm", &["/bin/sleep", &mb], "restart_delay = \"0s\"");
    let mut orch = Orch::start(&dir, &cfg);
    let conn = accept(&listener);
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let first = handshake_and_first_start(&conn);
    let n = recv(&conn, &mut buf);
    let second = v1::decode(&buf[..n]).expect("second start").request_id();
    let (child_a, pidfd_a) = sleeper(&ma);
    let pid_a = child_a.id() as i32;
    let mut children = Reaper(vec![child_a]);
    // Which request is whose: the ids carry the service index (a = 0, b = 1) in the low bits.
    let (id_a, id_b) = if first & 0xfffff == 0 {
        (first, second)
    } else {
        (second, first)
    };
    send(&conn, &started(id_a, pid_a), &[pidfd_a.as_raw_fd()]);
    orch.wait_lines(
        &[
            "service=a ",
            "state=running",
            &format!("spawned_pid={pid_a}"),
        ],
        1,
    );
    // The same process again, for b.
    send(&conn, &started(id_b, pid_a), &[pidfd_a.as_raw_fd()]);
    orch.wait_lines(&["event=agent-misbehaved", "already supervised"], 1);
    orch.wait_lines(&["event=agent-down"], 1);
    drop(conn);
    // a keeps its process through the drop; b gets a real one on the next connection.
    let conn = accept(&listener);
    let id = handshake_and_first_start(&conn);
    let (child_b, pidfd_b) = sleeper(&mb);
    let pid_b = child_b.id();
    children.0.push(child_b);
    send(&conn, &started(id, pid_b as i32), &[pidfd_b.as_raw_fd()]);
    orch.wait_lines(
        &[
            "service=b ",
            "state=running",
            &format!("spawned_pid={pid_b}"),
        ],
        1,
    );
    assert_eq!(orch.lines_with(&["service=a ", "reason=spawned"]).len(), 1);
    assert!(
        orch.lines_with(&["service=a ", "reason=exited"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
    drop(children);
}

#[test]
fn a_late_answer_is_killed_not_adopted() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("hostile-late");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let marker = format!("6668.{}", std::process::id());
    let cfg = config_header(&socket)
        .replace("request_timeout = \"5s\"", "request_timeout = \"300ms\"")
        + &service(
            "victim",
            "qm",
            &["/bin/sleep", &marker],
            "restart = \"always\"\nrestart_delay = \"0s\"",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let mut children = Reaper(Vec::new());
    let conn = accept(&listener);
    let id = handshake_and_first_start(&conn);
    let (child, pidfd) = sleeper(&marker);
    let late_pid = child.id() as i32;
    children.0.push(child);
    orch.wait_lines(&["service=victim ", "event=agent-request-timeout"], 1);
    // The liveness probe: answer it, so the connection stays up for the late answer.
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let probe = loop {
        let n = recv(&conn, &mut buf);
        let frame = v1::decode(&buf[..n]).expect("frame");
        if matches!(frame.body, v1::Body::Ping) {
            break frame.request_id();
        }
    };
    let mut out = [0u8; 64];
    let len = v1::encode_pong(&mut out, probe, v1::Pong::ours(v1::Capabilities::empty())).unwrap();
    send(&conn, &out[..len], &[]);
    send(&conn, &started(id, late_pid), &[pidfd.as_raw_fd()]);
    orch.wait_lines(
        &[
            "service=victim ",
            "event=agent-late-answer",
            "action=SIGKILL",
        ],
        1,
    );
    orch.wait_lines(
        &[
            "event=agent-misbehaved",
            "answer after the request timed out",
        ],
        1,
    );
    let status = children.0[0].wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the late process was killed"
    );
    drop(conn);
    finish_with(&mut orch, &mut children, &marker, &listener);
}

/// The next connection behaves: the victim gets a real process and the orchestrator stops.
fn finish_with(orch: &mut Orch, children: &mut Reaper, marker: &str, listener: &OwnedFd) {
    let conn = accept(listener);
    let id = handshake_and_first_start(&conn);
    let (child, pidfd) = sleeper(marker);
    let pid = child.id();
    children.0.push(child);
    send(&conn, &started(id, pid as i32), &[pidfd.as_raw_fd()]);
    orch.wait_lines(
        &[
            "service=victim ",
            "state=running",
            &format!("spawned_pid={pid}"),
        ],
        1,
    );
    assert_eq!(
        orch.lines_with(&["service=victim ", "state=running"]).len(),
        1,
        "the late process was never adopted"
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn a_silent_agent_is_dropped_after_the_liveness_ping() {
    let dir = TempDir::new("hostile-silent");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let marker = format!("6669.{}", std::process::id());
    let cfg = config_header(&socket).replace("request_timeout = \"5s\"", "request_timeout = \"200ms\"")
        + &service("victim", "qm", &["/bin/sleep", &marker], "restart = \"always\"\nrestart_delay = \"0s\"")
        + &service(
            "local-loop",
            "local",
            &["/bin/sh", "-c", "exit 1"],
            "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 16, interval = \"100ms\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let mut children = Reaper(Vec::new());
    let conn = accept(&listener);
    let _ = handshake_and_first_start(&conn);
    // Say nothing more.
    orch.wait_lines(&["event=agent-misbehaved", "no Pong to a liveness Ping"], 1);
    orch.wait_lines(&["event=agent-down"], 1);
    let before = orch
        .lines_with(&["service=local-loop ", "reason=spawned"])
        .len();
    orch.wait_lines(&["service=local-loop ", "reason=spawned"], before + 3);
    drop(conn);
    finish_with(&mut orch, &mut children, &marker, &listener);
}
