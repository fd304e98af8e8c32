//! The transport claims of docs/wire.md, checked on real sockets: SOCK_SEQPACKET keeps one frame
//! per packet, a `Started` and its pidfd arrive together in one `recvmsg`, an oversized packet is
//! seen as `MSG_TRUNC`, and a SEQPACKET client cannot connect to a v0.2 STREAM listener
//! (`EPROTOTYPE`). And a peer written in Python from docs/wire.md alone interoperates with this
//! codec: it answers Ping, decodes Starts, starts the processes and sends their pidfds back.

use holden::wire::v1::{
    decode, encode_error, encode_ping, encode_start, encode_started, Body, Capabilities,
    ErrorStage, Pong, StartFlags, StartRef, FRAME_LEN_MAX, STARTED_FD_COUNT,
};
use std::io;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the 2-element array we pass.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sends one packet, with `fd` in SCM_RIGHTS when given.
fn send_packet(sock: &OwnedFd, packet: &[u8], fd: Option<RawFd>) {
    let mut iov = libc::iovec {
        iov_base: packet.as_ptr() as *mut libc::c_void,
        iov_len: packet.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        assert!(space <= std::mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is large enough for one header with one fd (checked above)
        // and suitably aligned (u64 array); CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg points at live buffers (packet, iov, control) for the duration of the call.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        sent,
        packet.len() as isize,
        "sendmsg: {}",
        io::Error::last_os_error()
    );
}

struct Received {
    len: usize,
    flags: i32,
    fds: Vec<OwnedFd>,
}

/// Receives one packet into `buf` with MSG_CMSG_CLOEXEC, collecting every fd that came with it.
fn recv_packet(sock: &OwnedFd, buf: &mut [u8]) -> Received {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers (buf, iov, control) for the duration of the call.
    let got = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(got >= 0, "recvmsg: {}", io::Error::last_os_error());
    assert_eq!(
        msg.msg_flags & libc::MSG_CTRUNC,
        0,
        "control data truncated"
    );
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, as bounded by
    // msg_controllen; each SCM_RIGHTS payload is an array of fds now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Received {
        len: got as usize,
        flags: msg.msg_flags,
        fds,
    }
}

fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags only reads its arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A child killed and reaped on drop, whatever the test did.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn seqpacket_keeps_one_frame_per_packet() {
    let (a, b) = seqpacket_pair();
    let mut out = vec![0u8; FRAME_LEN_MAX];
    let argv: &[&[u8]] = &[b"/bin/true"];
    let env: &[&[u8]] = &[b"A=1"];
    let start = StartRef {
        argv,
        env,
        cwd: None,
        uid: None,
        gid: None,
        flags: StartFlags::empty(),
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    };
    let mut sent = Vec::new();
    for id in 1..=3u64 {
        let len = match id {
            1 => encode_ping(&mut out, id),
            2 => encode_start(&mut out, id, &start),
            _ => encode_error(&mut out, id, libc::EPERM, ErrorStage::Permission, b"no"),
        }
        .unwrap();
        send_packet(&a, &out[..len], None);
        sent.push(out[..len].to_vec());
    }
    let mut buf = vec![0u8; FRAME_LEN_MAX];
    for (id, packet) in (1..=3u64).zip(sent) {
        let got = recv_packet(&b, &mut buf);
        assert_eq!(got.flags & libc::MSG_TRUNC, 0);
        assert!(got.fds.is_empty());
        assert_eq!(&buf[..got.len], &packet[..]);
        assert_eq!(decode(&buf[..got.len]).unwrap().request_id(), id);
    }
}

#[test]
fn started_and_its_pidfd_arrive_in_one_recvmsg() {
    let child = Sleeper(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = child.0.id();
    let pidfd = pidfd_open(pid);
    let (agent, orchestrator) = seqpacket_pair();

    let mut out = vec![0u8; FRAME_LEN_MAX];
    let len = encode_started(&mut out, 77, pid as i32).unwrap();
    send_packet(&agent, &out[..len], Some(pidfd.as_raw_fd()));
    drop(pidfd); // the agent closes its copy after sending

    let mut buf = vec![0u8; FRAME_LEN_MAX];
    let got = recv_packet(&orchestrator, &mut buf);
    let frame = decode(&buf[..got.len]).unwrap();
    assert_eq!(frame.request_id(), 77);
    let Body::Started(started) = frame.body else {
        panic!("not Started: {frame:?}")
    };
    assert_eq!(started.pid, pid as i32);
    assert_eq!(got.fds.len(), STARTED_FD_COUNT);
    // The received fd is a pidfd of that very process: signal 0 succeeds, SIGKILL ends it.
    let received = &got.fds[0];
    pidfd_send_signal(received, 0).expect("received fd is a live pidfd");
    pidfd_send_signal(received, libc::SIGKILL).expect("kill through the received pidfd");
    let mut child = child;
    let status = child.0.wait().expect("wait sleep");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Not a pidfd: the documented check tells the difference.
    let (x, _y) = seqpacket_pair();
    assert_eq!(
        pidfd_send_signal(&x, 0).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
}

#[test]
fn oversized_packet_is_seen_as_truncated() {
    let (a, b) = seqpacket_pair();
    let mut out = vec![0u8; FRAME_LEN_MAX + 1];
    let len = encode_ping(&mut out, 5).unwrap();
    // A peer that sends more than FRAME_LEN_MAX bytes in one packet.
    out[len..].fill(0xEE);
    send_packet(&a, &out, None);
    let mut buf = vec![0u8; FRAME_LEN_MAX];
    let got = recv_packet(&b, &mut buf);
    assert_ne!(got.flags & libc::MSG_TRUNC, 0);
    assert_eq!(got.len, FRAME_LEN_MAX);
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("holden-wire-transport-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A SEQPACKET socket connected to `path`, or the connect error.
fn connect_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers and returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: the fd was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_un is plain data; all-zero is valid before filling it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: addr is a valid, NUL-terminated sockaddr_un of the size passed.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(sock)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[test]
fn seqpacket_client_on_a_stream_listener_fails_with_eprototype() {
    let dir = TempDir::new();
    let path = dir.0.join("legacy.sock");
    let _listener = UnixListener::bind(&path).expect("bind stream listener");
    let err = connect_seqpacket(&path).expect_err("connect must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EPROTOTYPE));
}

/// A holden wire v1 agent written from docs/wire.md alone (sections 1-10), in Python: it checks
/// every header rule, decodes `Start` field by field, and starts the process with the gated exec
/// of version 1.1 (section 8a): the child waits at a gate before `execve`, the peer sends
/// `Started` + pidfd (SCM_RIGHTS), then opens the gate and sends `Running` once `execve`
/// succeeded, or `Error` stage `exec` with its errno. Children are auto-reaped (SIGCHLD ignored).
const PYTHON_PEER: &str = r#"
import os, signal, socket, struct, sys

HEADER = struct.Struct("<4sBBBBQII")           # section 4: 24 bytes
START_FIXED = struct.Struct("<IIIBBHHH")       # section 5: 20 bytes
MAGIC, KIND_START, KIND_STARTED, KIND_ERROR, KIND_PING, KIND_PONG = b"HLDN", 1, 2, 3, 4, 5
KIND_RUNNING = 6
STAGE_EXEC, STAGE_DECODE = 2, 5
EXIT_STATUS_VIA_PIDFD, GATED_EXEC = 1 << 0, 1 << 3

def frame(kind, request_id, payload):
    return HEADER.pack(MAGIC, 1, 1, kind, 0, request_id, len(payload), 0) + payload

def error(request_id, errno, stage, text):
    return frame(KIND_ERROR, request_id, struct.pack("<iBBH", errno, stage, 0, len(text)) + text)

def strings(payload, offset, count):
    out = []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", payload, offset)
        value = payload[offset + 2 : offset + 2 + length]
        assert len(value) == length and b"\0" not in value
        out.append(value)
        offset += 2 + length
    return out, offset

def start(conn, request_id, payload):
    flags, uid, gid, present, reserved, argc, envc, cwd_len = START_FIXED.unpack_from(payload)
    assert reserved == 0 and present & ~3 == 0 and flags & ~7 == 0 and 1 <= argc <= 256
    cwd = payload[20 : 20 + cwd_len]
    argv, offset = strings(payload, 20 + cwd_len, argc)
    env, offset = strings(payload, offset, envc)
    assert offset == len(payload), "trailing bytes"
    environ = dict(entry.split(b"=", 1) for entry in env)
    # The child reports an exec failure through a close-on-exec pipe; EOF means exec happened.
    # It waits at a gate (a pipe) until the Started frame with its pidfd has been sent; a gate
    # closed without the go-ahead byte ends it with status 125, without exec.
    report_r, report_w = os.pipe()
    gate_r, gate_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.close(gate_w)
            if cwd:
                os.chdir(cwd)
            if os.read(gate_r, 1) != b"g":
                os._exit(125)
            os.close(gate_r)
            os.execve(argv[0], argv, environ)
        except OSError as e:
            os.write(report_w, struct.pack("<i", e.errno))
        finally:
            os._exit(127)
    os.close(report_w)
    os.close(gate_r)
    pidfd = os.pidfd_open(pid)
    socket.send_fds(conn, [frame(KIND_STARTED, request_id, struct.pack("<i", pid))], [pidfd])
    os.close(pidfd)
    os.write(gate_w, b"g")
    os.close(gate_w)
    report = os.read(report_r, 4)
    os.close(report_r)
    if report:
        (errno,) = struct.unpack("<i", report)
        conn.send(error(request_id, errno, STAGE_EXEC, b"execve " + argv[0] + b" failed"))
    else:
        conn.send(frame(KIND_RUNNING, request_id, b""))

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sys.argv[1])
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
while True:
    data, fds, msg_flags, _ = socket.recv_fds(conn, 16384, 1)
    for fd in fds:
        os.close(fd)
    if not data:
        break
    magic, major, minor, kind, reserved, request_id, payload_len, reserved2 = HEADER.unpack_from(data)
    assert magic == MAGIC and reserved == 0 and reserved2 == 0
    assert payload_len == len(data) - HEADER.size
    if major != 1:
        conn.send(error(request_id, 93, 6, b"unsupported version"))
    elif kind == KIND_PING:
        caps = EXIT_STATUS_VIA_PIDFD | GATED_EXEC
        conn.send(frame(KIND_PONG, request_id, struct.pack("<BBHI", 1, 1, 0, caps)))
    elif kind == KIND_START:
        start(conn, request_id, data[HEADER.size :])
    else:
        conn.send(error(request_id, 71, STAGE_DECODE, b"not a request"))
"#;

/// The Python peer, killed and reaped on drop.
struct PythonPeer(Child);

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process known by its pidfd, killed on drop (also when an assertion fails first).
struct KillOnDrop(OwnedFd);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = pidfd_send_signal(&self.0, libc::SIGKILL);
    }
}

fn request(sock: &OwnedFd, packet: &[u8], buf: &mut [u8]) -> Received {
    send_packet(sock, packet, None);
    recv_packet(sock, buf)
}

#[test]
fn a_python_peer_written_from_the_docs_interoperates() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 is not installed: cannot run the docs-only peer; skipping");
        return;
    }
    let dir = TempDir::new();
    let script = dir.0.join("peer.py");
    std::fs::write(&script, PYTHON_PEER).expect("write peer.py");
    let path = dir.0.join("agent.sock");
    let mut peer = PythonPeer(
        Command::new("python3")
            .arg(&script)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3"),
    );
    let mut ready = String::new();
    BufReader::new(peer.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .expect("read the peer's ready line");
    assert_eq!(ready.trim(), "ready");
    let sock = connect_seqpacket(&path).expect("connect to the python peer");
    let mut out = vec![0u8; FRAME_LEN_MAX];
    let mut buf = vec![0u8; FRAME_LEN_MAX];

    let len = encode_ping(&mut out, 1).unwrap();
    let got = request(&sock, &out[..len], &mut buf);
    let frame = decode(&buf[..got.len]).unwrap();
    assert_eq!(frame.request_id(), 1);
    // The peer is a 1.1 agent (no NOTIFY_FORWARD): what a 1.2 orchestrator still serves.
    assert_eq!(
        frame.body,
        Body::Pong(Pong {
            version_major: 1,
            version_minor: 1,
            capabilities: Capabilities::EXIT_STATUS_VIA_PIDFD | Capabilities::GATED_EXEC
        })
    );

    let argv: &[&[u8]] = &[b"/bin/sleep", b"30"];
    let env: &[&[u8]] = &[b"A=1", b"B=x=y"];
    let start = StartRef {
        argv,
        env,
        cwd: Some(b"/"),
        uid: None,
        gid: None,
        flags: StartFlags::empty(),
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    };
    let len = encode_start(&mut out, 2, &start).unwrap();
    let got = request(&sock, &out[..len], &mut buf);
    let frame = decode(&buf[..got.len]).unwrap();
    assert_eq!(frame.request_id(), 2);
    let Body::Started(started) = frame.body else {
        panic!("expected Started, got {frame:?}")
    };
    assert_eq!(got.fds.len(), STARTED_FD_COUNT);
    let pidfd = KillOnDrop(got.fds.into_iter().next().unwrap());
    let pidfd = &pidfd.0;
    let got = recv_packet(&sock, &mut buf);
    assert!(got.fds.is_empty());
    let frame = decode(&buf[..got.len]).unwrap();
    assert_eq!((frame.request_id(), frame.body), (2, Body::Running));
    pidfd_send_signal(pidfd, 0).expect("the pidfd refers to a live process");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", started.pid)).expect("cmdline");
    assert_eq!(cmdline, b"/bin/sleep\x0030\x00");
    pidfd_send_signal(pidfd, libc::SIGKILL).expect("kill through the pidfd");

    let missing: &[&[u8]] = &[b"/nonexistent/holden-test-binary"];
    let start = StartRef {
        argv: missing,
        ..start
    };
    let len = encode_start(&mut out, 3, &start).unwrap();
    let got = request(&sock, &out[..len], &mut buf);
    let frame = decode(&buf[..got.len]).unwrap();
    assert!(matches!(frame.body, Body::Started(_)), "{frame:?}");
    assert_eq!(got.fds.len(), STARTED_FD_COUNT);
    let failed = KillOnDrop(got.fds.into_iter().next().unwrap());
    let got = recv_packet(&sock, &mut buf);
    assert!(got.fds.is_empty());
    let frame = decode(&buf[..got.len]).unwrap();
    assert_eq!(frame.request_id(), 3);
    let Body::Error(error) = frame.body else {
        panic!("expected Error, got {frame:?}")
    };
    assert_eq!((error.errno, error.stage), (libc::ENOENT, ErrorStage::Exec));
    // The process whose exec failed is gone (exit 127): its pidfd polls readable.
    let mut pfd = libc::pollfd {
        fd: failed.0.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);

    drop(sock);
    let status = peer.0.wait().expect("wait for the python peer");
    assert!(status.success(), "python peer failed: {status}");
}
