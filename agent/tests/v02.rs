//! The v0.2 listener, driven by a client written from the BRIEF's layout
//! (host-endian C structs over SOCK_STREAM), not from holden's codec.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;

// BRIEF §3: header {u32 type; u32 length}.
const START_PROCESS: u32 = 1;
const PROCESS_STARTED: u32 = 2;
const PROCESS_ERROR: u32 = 3;
const PING: u32 = 11;
const PONG: u32 = 12;
// START payload: char name[256]; char args[32][256]; int32 arg_count.
const START_LEN: usize = 256 + 32 * 256 + 4;

fn header(msg_type: u32, length: u32) -> Vec<u8> {
    let mut h = msg_type.to_ne_bytes().to_vec();
    h.extend_from_slice(&length.to_ne_bytes());
    h
}

fn start_message(name: &str, args: &[&str]) -> Vec<u8> {
    let mut m = header(START_PROCESS, START_LEN as u32);
    let mut payload = vec![0u8; START_LEN];
    payload[..name.len()].copy_from_slice(name.as_bytes());
    for (i, a) in args.iter().enumerate() {
        let off = 256 + i * 256;
        payload[off..off + a.len()].copy_from_slice(a.as_bytes());
    }
    payload[256 + 32 * 256..].copy_from_slice(&(args.len() as i32).to_ne_bytes());
    m.extend_from_slice(&payload);
    m
}

/// Reads exactly `n` bytes from a stream (the reply may arrive in pieces).
fn read_exact(fd: &OwnedFd, n: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    while bytes.len() < n {
        let reply = recv_with_fds(fd.as_raw_fd(), n - bytes.len()).unwrap();
        assert!(
            !reply.bytes.is_empty(),
            "agent closed after {} of {n} bytes",
            bytes.len()
        );
        bytes.extend_from_slice(&reply.bytes);
        fds.extend(reply.fds);
    }
    (bytes, fds)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

/// Reads one reply frame: (type, payload).
fn read_frame(fd: &OwnedFd) -> (u32, Vec<u8>) {
    let (h, fds) = read_exact(fd, 8);
    assert!(fds.is_empty());
    let (t, len) = (u32_at(&h, 0), u32_at(&h, 4) as usize);
    let (payload, fds) = read_exact(fd, len);
    assert!(fds.is_empty(), "fd attached to the frame itself");
    (t, payload)
}

fn error_text(payload: &[u8]) -> String {
    assert_eq!(payload.len(), 512);
    let end = payload.iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

#[test]
fn legacy_client_from_the_brief_layout_is_served() {
    let dir = TempDir::new("legacy");
    let legacy = dir.join("legacy.sock");
    let agent = Agent::start(&dir, &["--legacy-socket", legacy.to_str().unwrap()]);
    match V1Client::connect(&agent.socket).ping(1) {
        Outcome::Pong { capabilities } => {
            assert!(capabilities.contains(holden::wire::v1::Capabilities::LEGACY_LISTENER))
        }
        other => panic!("{other:?}"),
    }
    // A v1 (seqpacket) client on the v0.2 socket fails at once: EPROTOTYPE.
    let wrong = connect(&legacy, libc::SOCK_SEQPACKET).unwrap_err();
    assert_eq!(wrong.raw_os_error(), Some(libc::EPROTOTYPE));

    let mut procs = Procs::default();
    // One connection per request, as v0.2 does.
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    send_with_fds(conn.as_raw_fd(), &start_message("sleep", &["1000"]), &[]).unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_STARTED);
    assert_eq!(payload.len(), 8);
    let host_pid = u32_at(&payload, 0) as i32;
    let container_pid = u32_at(&payload, 4) as i32;
    assert!(host_pid > 0 && container_pid == host_pid);
    // Then a separate one-byte 'x' message with the pidfd.
    let marker = recv_with_fds(conn.as_raw_fd(), 1).unwrap();
    assert_eq!(marker.bytes, b"x");
    assert_eq!(marker.fds.len(), 1);
    let pidfd = procs.keep(marker.fds.into_iter().next().unwrap());
    assert!(holden::pidfd::is_pidfd(pidfd));
    pidfd_send_signal(pidfd, 0).unwrap();
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");
    drop(conn);

    // PING -> PONG (length 0), on one connection with further requests.
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    send_with_fds(conn.as_raw_fd(), &header(PING, 0), &[]).unwrap();
    assert_eq!(read_frame(&conn), (PONG, Vec::new()));
    // Unknown type -> PROCESS_ERROR "Unknown message type: N".
    send_with_fds(conn.as_raw_fd(), &header(99, 0), &[]).unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_ERROR);
    assert_eq!(error_text(&payload), "Unknown message type: 99");
    // An exec failure is a PROCESS_ERROR, not a PROCESS_STARTED.
    send_with_fds(
        conn.as_raw_fd(),
        &start_message("/nonexistent/holden", &[]),
        &[],
    )
    .unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_ERROR);
    let text = error_text(&payload);
    assert!(text.contains("No such file or directory"), "{text}");
    // Byte-at-a-time delivery is reassembled.
    let ping = header(PING, 0);
    for b in &ping {
        send_with_fds(conn.as_raw_fd(), std::slice::from_ref(b), &[]).unwrap();
    }
    assert_eq!(read_frame(&conn), (PONG, Vec::new()));
}

#[test]
fn legacy_length_is_never_trusted() {
    let dir = TempDir::new("legacylen");
    let legacy = dir.join("legacy.sock");
    let agent = Agent::start(&dir, &["--legacy-socket", legacy.to_str().unwrap()]);
    // v0.2's receiver read past its buffer for such a length.
    for (msg_type, length) in [(START_PROCESS, 100_000u32), (99, u32::MAX), (PING, 4)] {
        let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
        send_with_fds(conn.as_raw_fd(), &header(msg_type, length), &[]).unwrap();
        let (t, payload) = read_frame(&conn);
        assert_eq!(t, PROCESS_ERROR);
        assert!(
            error_text(&payload).contains("length"),
            "{}",
            error_text(&payload)
        );
        let eof = recv_with_fds(conn.as_raw_fd(), 16).unwrap();
        assert!(eof.bytes.is_empty(), "connection kept after a bad length");
    }
    // arg_count out of range.
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    let mut m = start_message("/bin/true", &[]);
    let off = 8 + 256 + 32 * 256;
    m[off..off + 4].copy_from_slice(&33i32.to_ne_bytes());
    send_with_fds(conn.as_raw_fd(), &m, &[]).unwrap();
    let (t, _) = read_frame(&conn);
    assert_eq!(t, PROCESS_ERROR);
    // Still serving.
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    send_with_fds(conn.as_raw_fd(), &header(PING, 0), &[]).unwrap();
    assert_eq!(read_frame(&conn), (PONG, Vec::new()));
    let _ = agent.pid();
}

/// v0.2's message union is 16,904 bytes (`sizeof(message_t)` = 16,912 with the header; the
/// process list is its largest member): a message of that size is a valid v0.2 message, and
/// gets v0.2's answer to a type the agent does not handle, on a connection that stays up.
/// One byte more is what v0.2's receiver would have read past its buffer.
#[test]
fn legacy_messages_up_to_the_real_union_size_are_accepted() {
    const PROCESS_LIST: u32 = 6;
    const UNION_LEN: usize = 16_904;
    let dir = TempDir::new("legacyunion");
    let legacy = dir.join("legacy.sock");
    let _agent = Agent::start(&dir, &["--legacy-socket", legacy.to_str().unwrap()]);
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    let mut m = header(PROCESS_LIST, UNION_LEN as u32);
    m.extend(std::iter::repeat_n(0x5a, UNION_LEN));
    send_with_fds(conn.as_raw_fd(), &m, &[]).unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_ERROR);
    assert_eq!(error_text(&payload), "Unknown message type: 6");
    send_with_fds(conn.as_raw_fd(), &header(PING, 0), &[]).unwrap();
    assert_eq!(read_frame(&conn), (PONG, Vec::new()), "same connection");
    let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
    send_with_fds(
        conn.as_raw_fd(),
        &header(PROCESS_LIST, UNION_LEN as u32 + 1),
        &[],
    )
    .unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_ERROR);
    assert!(
        error_text(&payload).contains("length"),
        "{}",
        error_text(&payload)
    );
}

#[test]
fn legacy_spawns_are_race_free_for_instantly_exiting_children() {
    // v0.2 reaped before pidfd_open and failed with ESRCH; here every fast
    // exit still yields a pidfd that polls readable.
    let dir = TempDir::new("legacyfast");
    let legacy = dir.join("legacy.sock");
    let _agent = Agent::start(&dir, &["--legacy-socket", legacy.to_str().unwrap()]);
    for _ in 0..200 {
        let conn = connect(&legacy, libc::SOCK_STREAM).unwrap();
        send_with_fds(conn.as_raw_fd(), &start_message("/bin/true", &[]), &[]).unwrap();
        let (t, _) = read_frame(&conn);
        assert_eq!(t, PROCESS_STARTED);
        let marker = recv_with_fds(conn.as_raw_fd(), 1).unwrap();
        assert_eq!(marker.fds.len(), 1);
        assert!(poll_readable(marker.fds[0].as_fd(), WAIT));
    }
}

/// Started the v0.2 way — `HOLDEN_SOCKET_PATH` and no option — holden-agent is a drop-in for
/// the v0.2 agent: a v0.2 orchestrator (a stream client, as v0.2's) is served on that path;
/// there is no v1 socket, and a v1 (seqpacket) client gets EPROTOTYPE at once, which
/// holden-orchestrator's `agent.protocol = "auto"` takes for a v0.2 agent.
#[test]
fn started_the_v02_way_it_is_a_v02_agent() {
    let dir = TempDir::new("legacyenv");
    let socket = dir.join("process_orchestrator.sock");
    let mut command = std::process::Command::new(AGENT);
    command.env("HOLDEN_SOCKET_PATH", &socket);
    let agent = Agent::launch(&dir, command, &socket);
    assert!(
        agent.log().contains("started the v0.2 way"),
        "{}",
        agent.log()
    );
    let wrong = connect(&socket, libc::SOCK_SEQPACKET).unwrap_err();
    assert_eq!(wrong.raw_os_error(), Some(libc::EPROTOTYPE));
    let mut procs = Procs::default();
    let conn = connect(&socket, libc::SOCK_STREAM).unwrap();
    send_with_fds(conn.as_raw_fd(), &start_message("sleep", &["1000"]), &[]).unwrap();
    let (t, payload) = read_frame(&conn);
    assert_eq!(t, PROCESS_STARTED);
    let pid = u32_at(&payload, 0) as i32;
    let marker = recv_with_fds(conn.as_raw_fd(), 1).unwrap();
    assert_eq!(marker.bytes, b"x");
    let pidfd = procs.keep(marker.fds.into_iter().next().expect("the pidfd"));
    pidfd_send_signal(pidfd, 0).unwrap();
    assert!(pid > 0);
    let conn = connect(&socket, libc::SOCK_STREAM).unwrap();
    send_with_fds(conn.as_raw_fd(), &header(PING, 0), &[]).unwrap();
    assert_eq!(read_frame(&conn), (PONG, Vec::new()));
}
