//! Shared helpers of the holden-agent integration tests: a unique temp dir,
//! the real agent binary (started, awaited through sd_notify, killed at the
//! end), a v1 client with SCM_RIGHTS, and /proc probes.
#![allow(dead_code)]

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use holden::wire::v1::{
    self, decode, encode_ping, encode_start, Body, ErrorStage, StartFlags, StartRef,
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_holden-agent");

/// Generous bound on any single wait, only so that a broken agent cannot
/// hang the test run.
pub const WAIT: Duration = Duration::from_secs(30);

/// A unique directory under /tmp (short: socket paths must fit 107 bytes),
/// removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/hat-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The agent under test. Killed (SIGKILL) and reaped on drop if still running.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub log_path: PathBuf,
}

impl Agent {
    /// Starts `holden-agent --socket DIR/agent.sock ARGS...` and waits for READY=1.
    pub fn start(dir: &TempDir, args: &[&str]) -> Agent {
        let socket = dir.join("agent.sock");
        Agent::start_at(dir, &socket, args)
    }

    pub fn start_at(dir: &TempDir, socket: &Path, args: &[&str]) -> Agent {
        let mut command = Command::new(AGENT);
        command.arg("--socket").arg(socket).args(args);
        Agent::launch(dir, command, socket)
    }

    /// Runs a prepared command (the agent or a wrapper around it) with
    /// NOTIFY_SOCKET set, and waits until the agent says READY=1.
    pub fn launch(dir: &TempDir, mut command: Command, socket: &Path) -> Agent {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let notify_path = dir.join(&format!("notify-{n}.sock"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(WAIT)).unwrap();
        let log_path = dir.join(&format!("agent-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        command
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().unwrap();
        let mut agent = Agent {
            child,
            socket: socket.to_path_buf(),
            log_path,
        };
        let mut buf = [0u8; 512];
        let received = loop {
            match notify.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match received {
            Ok(len) => {
                let text = String::from_utf8_lossy(&buf[..len]);
                assert!(text.starts_with("READY=1"), "notify message: {text:?}");
            }
            Err(error) => {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                panic!("agent never sent READY=1 ({error}); log:\n{}", agent.log());
            }
        }
        let _ = std::fs::remove_file(&notify_path);
        agent
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own, unreaped child.
        unsafe { libc::kill(self.pid(), signal) };
        wait_child(&mut self.child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) for a std child to exit.
pub fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "child {} did not exit",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Processes started through the agent, killed through their pidfds on drop.
#[derive(Default)]
pub struct Procs(pub Vec<OwnedFd>);

impl Procs {
    pub fn keep(&mut self, pidfd: OwnedFd) -> BorrowedFd<'_> {
        self.0.push(pidfd);
        self.0.last().unwrap().as_fd()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for pidfd in &self.0 {
            let _ = holden::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
    }
}

/// One received packet and the fds that came with it.
pub struct Reply {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// What a v1 request produced.
#[derive(Debug)]
pub enum Outcome {
    Started {
        pid: i32,
        pidfd: OwnedFd,
    },
    Error {
        stage: ErrorStage,
        errno: i32,
        text: String,
    },
    Pong {
        capabilities: v1::Capabilities,
    },
}

impl Outcome {
    pub fn started(self) -> (i32, OwnedFd) {
        match self {
            Outcome::Started { pid, pidfd } => (pid, pidfd),
            other => panic!("expected Started, got {other:?}"),
        }
    }

    pub fn error(self) -> (ErrorStage, i32, String) {
        match self {
            Outcome::Error { stage, errno, text } => (stage, errno, text),
            other => panic!("expected Error, got {other:?}"),
        }
    }
}

fn seqpacket_socket() -> OwnedFd {
    // SAFETY: plain socket creation, owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn sockaddr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (slot, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    (addr, len as libc::socklen_t)
}

/// Connects a socket of `socket_type` to `path`.
pub fn connect(path: &Path, socket_type: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, socket_type | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(path);
    // SAFETY: connect reads `addr` for `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    set_timeouts(fd.as_raw_fd(), WAIT);
    Ok(fd)
}

pub fn set_timeouts(fd: RawFd, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt reads one timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// Sends `bytes` in one message, with `fds` in SCM_RIGHTS.
pub fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    #[repr(C, align(8))]
    struct Control([u8; 256]);
    let mut control = Control([0; 256]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; CMSG macros stay inside `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = (fds.len() * 4) as u32;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, &f) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), f);
            }
        }
        loop {
            let n = libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

/// Receives one message (blocking, bounded by SO_RCVTIMEO) and its fds.
pub fn recv_with_fds(fd: RawFd, capacity: usize) -> io::Result<Reply> {
    #[repr(C, align(8))]
    struct Control([u8; 256]);
    let mut control = Control([0; 256]);
    let mut bytes = vec![0u8; capacity];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: msghdr points at our buffers; CMSG macros stay within the
    // control length the kernel reports.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        let n = loop {
            let n = libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        assert_eq!(
            msg.msg_flags & libc::MSG_CTRUNC,
            0,
            "control data truncated"
        );
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        bytes.truncate(n as usize);
    }
    Ok(Reply { bytes, fds })
}

/// A blocking v1 client on a SOCK_SEQPACKET connection.
pub struct V1Client {
    pub fd: OwnedFd,
}

impl V1Client {
    pub fn connect(path: &Path) -> V1Client {
        let fd = connect(path, libc::SOCK_SEQPACKET)
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        V1Client { fd }
    }

    pub fn send(&self, bytes: &[u8]) {
        send_with_fds(self.fd.as_raw_fd(), bytes, &[]).unwrap();
    }

    pub fn recv(&self) -> Reply {
        recv_with_fds(self.fd.as_raw_fd(), v1::FRAME_LEN_MAX).unwrap()
    }

    /// Receives the reply to a request and checks its request id and the fd rule. A `Started`
    /// (gated exec, wire 1.1) is followed by `Running` — the outcome is `Started` — or by
    /// `Error` stage `exec`: then the process must have exited with status 127 without running
    /// its program, and the outcome is that `Error`.
    pub fn outcome(&self, request_id: u64) -> Outcome {
        let reply = self.recv();
        assert!(!reply.bytes.is_empty(), "agent closed the connection");
        match parse_reply(reply, request_id) {
            Outcome::Started { pid, pidfd } => self.after_started(request_id, pid, pidfd),
            other => other,
        }
    }

    /// Reads what follows a `Started`: `Running` or `Error` (exec).
    pub fn after_started(&self, request_id: u64, pid: i32, pidfd: OwnedFd) -> Outcome {
        let reply = self.recv();
        assert!(
            !reply.bytes.is_empty(),
            "agent closed the connection after Started"
        );
        assert!(
            reply.fds.is_empty(),
            "Running/Error after Started carried fds"
        );
        let frame = decode(&reply.bytes).unwrap_or_else(|e| panic!("undecodable reply: {e}"));
        assert_eq!(frame.request_id(), request_id, "reply to another request");
        match frame.body {
            Body::Running => Outcome::Started { pid, pidfd },
            Body::Error(error) => {
                assert_eq!(
                    error.stage,
                    ErrorStage::Exec,
                    "Error after Started: {error:?}"
                );
                if let Some(status) = exit_status(pidfd.as_fd()) {
                    assert_eq!(status, holden::pidfd::WaitStatus::Exited(127));
                }
                Outcome::Error {
                    stage: error.stage,
                    errno: error.errno,
                    text: String::from_utf8_lossy(error.text).into_owned(),
                }
            }
            other => panic!("expected Running or Error after Started, got {other:?}"),
        }
    }

    /// Receives the replies to pipelined requests `ids`, which may come in any order (a
    /// gated `Started` is followed by its `Running` or `Error` whenever the exec is confirmed,
    /// possibly after replies to later requests), and checks each request's sequence: one
    /// `Started` then one `Running` or `Error` (exec), or one lone `Error`/`Pong`.
    pub fn outcomes(&self, ids: &[u64]) -> Vec<(u64, Outcome)> {
        let mut started: Vec<(u64, i32, OwnedFd)> = Vec::new();
        let mut done: Vec<(u64, Outcome)> = Vec::new();
        while done.len() < ids.len() {
            let reply = self.recv();
            assert!(!reply.bytes.is_empty(), "agent closed the connection");
            let frame = decode(&reply.bytes).unwrap_or_else(|e| panic!("undecodable reply: {e}"));
            let id = frame.request_id();
            assert!(ids.contains(&id), "reply to unknown request {id}");
            assert!(
                !done.iter().any(|(d, _)| *d == id),
                "reply to request {id} after its last one"
            );
            let held = started.iter().position(|(s, _, _)| *s == id);
            match (frame.body, held) {
                (Body::Running, Some(at)) => {
                    assert!(reply.fds.is_empty(), "Running carried fds");
                    let (_, pid, pidfd) = started.remove(at);
                    done.push((id, Outcome::Started { pid, pidfd }));
                }
                (Body::Error(error), Some(at)) => {
                    assert!(reply.fds.is_empty(), "Error carried fds");
                    assert_eq!(error.stage, ErrorStage::Exec, "Error after Started");
                    started.remove(at);
                    done.push((
                        id,
                        Outcome::Error {
                            stage: error.stage,
                            errno: error.errno,
                            text: String::from_utf8_lossy(error.text).into_owned(),
                        },
                    ));
                }
                (_, Some(_)) => panic!("request {id}: a second Started, or a Pong, after Started"),
                (_, None) => match parse_reply(reply, id) {
                    Outcome::Started { pid, pidfd } => started.push((id, pid, pidfd)),
                    other => done.push((id, other)),
                },
            }
        }
        done
    }

    pub fn start(&self, request_id: u64, argv: &[&[u8]]) -> Outcome {
        self.send(&start_frame(request_id, argv, &[], None));
        self.outcome(request_id)
    }

    pub fn ping(&self, request_id: u64) -> Outcome {
        let mut buf = [0u8; v1::HEADER_LEN];
        let len = encode_ping(&mut buf, request_id).unwrap();
        self.send(&buf[..len]);
        self.outcome(request_id)
    }

    /// True when the agent closed the connection (EOF), false on a packet or
    /// when nothing arrives within the socket's receive timeout.
    pub fn closed_by_agent(&self) -> bool {
        match recv_with_fds(self.fd.as_raw_fd(), v1::FRAME_LEN_MAX) {
            Ok(reply) => reply.bytes.is_empty(),
            Err(e) => e.raw_os_error() == Some(libc::ECONNRESET),
        }
    }
}

pub fn parse_reply(reply: Reply, request_id: u64) -> Outcome {
    let frame = decode(&reply.bytes).unwrap_or_else(|e| panic!("undecodable reply: {e}"));
    assert_eq!(frame.request_id(), request_id, "reply to another request");
    let mut fds = reply.fds;
    match frame.body {
        Body::Started(started) => {
            assert_eq!(fds.len(), 1, "Started must carry exactly one fd");
            let pidfd = fds.pop().unwrap();
            assert!(
                holden::pidfd::is_pidfd(pidfd.as_fd()),
                "the fd is not a pidfd"
            );
            Outcome::Started {
                pid: started.pid,
                pidfd,
            }
        }
        Body::Error(error) => {
            assert!(fds.is_empty(), "Error carried fds");
            Outcome::Error {
                stage: error.stage,
                errno: error.errno,
                text: String::from_utf8_lossy(error.text).into_owned(),
            }
        }
        Body::Pong(pong) => {
            assert!(fds.is_empty(), "Pong carried fds");
            assert_eq!(pong.version_major, v1::VERSION_MAJOR);
            Outcome::Pong {
                capabilities: pong.capabilities,
            }
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

pub fn start_frame(request_id: u64, argv: &[&[u8]], env: &[&[u8]], cwd: Option<&[u8]>) -> Vec<u8> {
    start_frame_full(request_id, argv, env, cwd, None, None, StartFlags::empty())
}

pub fn start_frame_full(
    request_id: u64,
    argv: &[&[u8]],
    env: &[&[u8]],
    cwd: Option<&[u8]>,
    uid: Option<u32>,
    gid: Option<u32>,
    flags: StartFlags,
) -> Vec<u8> {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let start = StartRef {
        argv,
        env,
        cwd,
        uid,
        gid,
        flags,
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    };
    let len = encode_start(&mut buf, request_id, &start).unwrap();
    buf.truncate(len);
    buf
}

/// Polls `fd` for POLLIN up to `timeout`.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc == 1 && pfd.revents & libc::POLLIN != 0
}

/// Waits for the process behind `pidfd` to exit and be reaped, and returns
/// its status from PIDFD_GET_INFO (6.15+); `None` where the kernel cannot say.
pub fn exit_status(pidfd: BorrowedFd<'_>) -> Option<holden::pidfd::WaitStatus> {
    assert!(poll_readable(pidfd, WAIT), "process did not exit");
    let deadline = Instant::now() + WAIT;
    loop {
        match holden::pidfd::exit_info(pidfd) {
            holden::pidfd::ExitInfo::Status(status) => return Some(status),
            holden::pidfd::ExitInfo::Unavailable => return None,
            holden::pidfd::ExitInfo::NotYet => {
                assert!(Instant::now() < deadline, "never reaped");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `VmRSS` of `pid` in kB.
pub fn vm_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// (pid, state) of every process whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut stat = String::new();
        let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if file.read_to_string(&mut stat).is_err() {
            continue;
        }
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim_start()) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        if ppid == parent {
            found.push((pid, state));
        }
    }
    found
}

/// Waits (bounded) until `condition` holds.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
