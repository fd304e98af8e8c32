//! Hostile input on the v1 socket: garbage, truncated, oversized, unknown
//! kind, wrong version, reply kinds, unknown flags, attached fds. Each gets
//! an Error (or the packet is refused), never a spawn; the agent keeps
//! serving. "Never a spawn" is observable: every hostile packet is derived
//! from a valid Start of a program that creates a marker file.

mod common;

use std::os::fd::{AsFd, AsRawFd};

use common::*;
use holden::wire::v1::{self, header_offset, ErrorStage};

#[test]
fn hostile_frames_get_errors_and_never_spawn() {
    let dir = TempDir::new("hostile");
    let agent = Agent::start(&dir, &[]);
    let marker = dir.join("spawned");
    let script = format!("echo > {}", marker.display());
    let argv: [&[u8]; 3] = [b"/bin/sh", b"-c", script.as_bytes()];
    let valid = start_frame(77, &argv, &[], None);
    let client = V1Client::connect(&agent.socket);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()));
    cases.push(("zeros", vec![0u8; 64]));
    for cut in [1, 10, 16, 23, 24, 30, valid.len() - 1] {
        cases.push(("truncated", valid[..cut].to_vec()));
    }
    let mut longer = valid.clone();
    longer.push(0);
    cases.push(("trailing byte", longer));
    let mut kind = valid.clone();
    kind[header_offset::KIND] = 42;
    cases.push(("unknown kind", kind));
    let mut version = valid.clone();
    version[header_offset::VERSION_MAJOR] = 2;
    cases.push(("wrong version", version));
    let mut magic = valid.clone();
    magic[0] = b'X';
    cases.push(("bad magic", magic));
    let mut len = valid.clone();
    len[header_offset::PAYLOAD_LEN] ^= 1;
    cases.push(("payload length mismatch", len));
    let mut flags = valid.clone();
    flags[v1::HEADER_LEN + 3] = 0x80; // unknown Start flag bit 31
    cases.push(("unknown flags", flags));
    let mut started = valid.clone();
    started[header_offset::KIND] = v1::FrameKind::Started as u8;
    cases.push(("reply kind", started));
    let mut argc = valid.clone();
    // argc field (u16 at payload offset 14): claim one more argv entry.
    argc[v1::HEADER_LEN + 14] += 1;
    cases.push(("argc beyond payload", argc));

    for (name, packet) in &cases {
        client.send(packet);
        let reply = client.recv();
        assert!(!reply.bytes.is_empty(), "{name}: connection dropped");
        let id = v1::peek_request_id(&reply.bytes).unwrap();
        let (stage, errno, text) = parse_reply(reply, id).error();
        assert!(errno > 0, "{name}: errno {errno}");
        assert!(
            matches!(
                stage,
                ErrorStage::Decode | ErrorStage::Version | ErrorStage::Limit
            ),
            "{name}: stage {stage:?} ({text})"
        );
        if *name == "wrong version" {
            assert_eq!((id, stage), (77, ErrorStage::Version), "{text}");
        }
    }

    // Oversized: larger than a frame (truncated by the kernel, refused).
    let mut big = valid.clone();
    big.resize(v1::FRAME_LEN_MAX + 100, b'A');
    client.send(&big);
    let (stage, errno, _) = client.outcome(77).error();
    assert_eq!((stage, errno), (ErrorStage::Limit, libc::EMSGSIZE));

    // A valid Start carrying fds: refused, and the fds are closed by the agent.
    let (pipe_r, pipe_w) = pipe();
    send_with_fds(
        client.fd.as_raw_fd(),
        &valid,
        &[pipe_w.as_raw_fd(), pipe_w.as_raw_fd()],
    )
    .unwrap();
    drop(pipe_w);
    let (stage, errno, text) = client.outcome(77).error();
    assert_eq!(
        (stage, errno),
        (ErrorStage::Decode, libc::EBADMSG),
        "{text}"
    );
    // Our write end and both copies in the agent are closed: EOF.
    let mut byte = [0u8; 1];
    // SAFETY: read into a one-byte stack buffer.
    let n = unsafe { libc::read(pipe_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 0, "agent kept a received fd open");

    // Still serving, on this connection and a new one; nothing was spawned.
    assert!(matches!(client.ping(5), Outcome::Pong { .. }));
    let other = V1Client::connect(&agent.socket);
    let (_, pidfd) = other.start(6, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    assert!(!marker.exists(), "a hostile frame started a process");
    // The valid frame itself does spawn (the marker test is meaningful).
    client.send(&valid);
    let (_, pidfd) = client.outcome(77).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    assert!(marker.exists());
}

/// SOCK_SEQPACKET carries empty packets, and `recvmsg` returns 0 for them as at the end of
/// the connection: the agent tells them apart and answers an empty packet like any packet
/// shorter than 16 bytes (`TooShort`: stage decode, `EPROTO`, request id 0).
#[test]
fn an_empty_packet_is_too_short_and_the_connection_stays() {
    let dir = TempDir::new("empty");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    // Before any valid frame, and twice in a row (a second empty packet is not an EOF).
    for _ in 0..2 {
        client.send(&[]);
    }
    for _ in 0..2 {
        let reply = client.recv();
        assert!(
            !reply.bytes.is_empty(),
            "empty packet closed the connection"
        );
        let (stage, errno, text) = parse_reply(reply, 0).error();
        assert_eq!((stage, errno), (ErrorStage::Decode, libc::EPROTO), "{text}");
        assert!(text.contains("0 bytes"), "{text}");
    }
    assert!(matches!(client.ping(3), Outcome::Pong { .. }));
    // After a valid frame too.
    client.send(&[]);
    let (stage, _, _) = client.outcome(0).error();
    assert_eq!(stage, ErrorStage::Decode);
    let (_, pidfd) = client.start(4, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    // The end of the connection is still the end: after our sending side is shut down, the
    // agent closes. (The empty packet just before may or may not be answered: if the agent
    // reads it only after the shutdown, it does not answer a peer that is leaving.)
    client.send(&[]);
    // SAFETY: shutdown of our own socket.
    let rc = unsafe { libc::shutdown(client.fd.as_raw_fd(), libc::SHUT_WR) };
    assert_eq!(rc, 0);
    let mut answered = 0;
    loop {
        let reply = client.recv();
        if reply.bytes.is_empty() {
            break;
        }
        let (stage, _, _) = parse_reply(reply, 0).error();
        assert_eq!(stage, ErrorStage::Decode);
        answered += 1;
        assert_eq!(answered, 1, "more answers than packets");
    }
    // And the agent goes on serving others.
    let other = V1Client::connect(&agent.socket);
    assert!(matches!(other.ping(5), Outcome::Pong { .. }));
}

#[test]
fn random_bytes_never_crash_the_agent() {
    let dir = TempDir::new("fuzzish");
    let mut agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let valid = start_frame(1, &[b"/nonexistent/x"], &[b"A=1"], Some(b"/"));
    // Deterministic xorshift: mutate valid frames and send random blobs.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2000 {
        let packet = if round % 2 == 0 {
            let mut p = valid.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            p
        } else {
            let len = (next() % 200) as usize + 1;
            (0..len).map(|_| next() as u8).collect()
        };
        client.send(&packet);
        let reply = client.recv();
        assert!(!reply.bytes.is_empty(), "round {round}: connection dropped");
        // A mutation may still be a valid Start; its program never exists, so
        // the answer is an Error either way: at once, or (gated exec) after a
        // Started with the pidfd of a process that exits 127 without running.
        let id = holden::wire::v1::peek_request_id(&reply.bytes).unwrap_or(0);
        if let Outcome::Started { pid, pidfd } = parse_reply(reply, id) {
            let (stage, errno, _) = client.after_started(id, pid, pidfd).error();
            assert_eq!(
                (stage, errno),
                (ErrorStage::Exec, libc::ENOENT),
                "round {round}"
            );
        }
    }
    assert!(matches!(client.ping(9), Outcome::Pong { .. }));
    assert!(agent.child.try_wait().unwrap().is_none(), "agent exited");
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}
