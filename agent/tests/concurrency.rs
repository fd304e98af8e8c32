//! Many clients at once: a storm of spawns, stalled and hostile clients that
//! must not delay the others, the read timeout, and the connection bound.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;
use holden::wire::v1::{self, ErrorStage};

const CLIENTS: usize = 8;
const SPAWNS_TOTAL: usize = 1000;

#[test]
fn thousand_spawns_from_eight_concurrent_clients_all_return_valid_pidfds() {
    let dir = TempDir::new("storm8");
    let agent = Agent::start(&dir, &[]);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let client = V1Client::connect(&socket);
                let mut pids = Vec::new();
                for i in 0..SPAWNS_TOTAL / CLIENTS {
                    let id = (c * 1_000_000 + i) as u64;
                    // sleep keeps the process alive while we check its pidfd.
                    let (pid, pidfd) = client.start(id, &[b"/bin/sleep", b"1000"]).started();
                    assert!(holden::pidfd::is_pidfd(pidfd.as_fd()));
                    pidfd_send_signal(pidfd.as_fd(), 0).unwrap();
                    let fdinfo =
                        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
                            .unwrap();
                    assert!(fdinfo.contains(&format!("\nPid:\t{pid}\n")), "{fdinfo}");
                    pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
                    assert!(poll_readable(pidfd.as_fd(), WAIT));
                    pids.push(pid);
                }
                pids
            })
        })
        .collect();
    let mut all: Vec<i32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), SPAWNS_TOTAL);
    all.sort_unstable();
    all.dedup();
    // PIDs may be reused after a process is reaped, so no uniqueness claim;
    // every one was a live, signalable process when its pidfd arrived.
    assert!(!all.is_empty());
}

#[test]
fn stalled_and_hostile_clients_do_not_delay_the_others() {
    let dir = TempDir::new("stall");
    let legacy = dir.join("legacy.sock");
    let agent = Agent::start(&dir, &["--legacy-socket", legacy.to_str().unwrap()]);
    // 1. connects and never sends anything;
    let _silent = V1Client::connect(&agent.socket);
    // 2. sends half of a v0.2 START frame and stalls;
    let half = connect(&legacy, libc::SOCK_STREAM).unwrap();
    let mut start = vec![0u8; 8 + 8452];
    start[..4].copy_from_slice(&1u32.to_ne_bytes());
    start[4..8].copy_from_slice(&8452u32.to_ne_bytes());
    send_with_fds(half.as_raw_fd(), &start[..4000], &[]).unwrap();
    // 3. sends an oversized packet and does not read the reply;
    let oversize = V1Client::connect(&agent.socket);
    oversize.send(&vec![0xAA; v1::FRAME_LEN_MAX * 2]);
    // 4. floods pings without reading, in a thread, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let socket = agent.socket.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = V1Client::connect(&socket);
            set_timeouts(client.fd.as_raw_fd(), std::time::Duration::from_millis(100));
            let mut buf = [0u8; v1::HEADER_LEN];
            let len = v1::encode_ping(&mut buf, 1).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if send_with_fds(client.fd.as_raw_fd(), &buf[..len], &[]).is_err() {
                    break; // the agent dropped us (full buffer): fine.
                }
            }
        })
    };
    // Meanwhile a well-behaved client gets every one of its spawns.
    let client = V1Client::connect(&agent.socket);
    for id in 0..200 {
        let (_, pidfd) = client.start(id, &[b"/bin/true"]).started();
        assert!(poll_readable(pidfd.as_fd(), WAIT));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    // The oversized packet got its Error; nothing was started for it.
    let (stage, errno, _) = oversize.outcome(0).error();
    assert_eq!((stage, errno), (ErrorStage::Limit, libc::EMSGSIZE));
}

#[test]
fn read_timeout_drops_silent_and_stalled_connections() {
    let dir = TempDir::new("timeout");
    let legacy = dir.join("legacy.sock");
    let agent = Agent::start(
        &dir,
        &[
            "--read-timeout-ms",
            "200",
            "--legacy-socket",
            legacy.to_str().unwrap(),
        ],
    );
    let silent = V1Client::connect(&agent.socket);
    let half = connect(&legacy, libc::SOCK_STREAM).unwrap();
    send_with_fds(half.as_raw_fd(), &[1, 0, 0], &[]).unwrap();
    // A v1 client that spoke once may stay idle past the timeout.
    let speaker = V1Client::connect(&agent.socket);
    assert!(matches!(speaker.ping(1), Outcome::Pong { .. }));
    assert!(silent.closed_by_agent(), "silent client not dropped");
    let eof = recv_with_fds(half.as_raw_fd(), 64).unwrap();
    assert!(eof.bytes.is_empty(), "stalled v0.2 client not dropped");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(matches!(speaker.ping(2), Outcome::Pong { .. }));
    assert!(agent.log().contains("read timeout"), "{}", agent.log());
}

#[test]
fn connections_beyond_the_bound_are_refused_with_a_reason() {
    let dir = TempDir::new("bound");
    let agent = Agent::start(&dir, &[]);
    // Fill every slot with a client that has spoken (so none times out).
    let clients: Vec<V1Client> = (0..64)
        .map(|i| {
            let c = V1Client::connect(&agent.socket);
            assert!(matches!(c.ping(i), Outcome::Pong { .. }));
            c
        })
        .collect();
    let extra = V1Client::connect(&agent.socket);
    let (stage, errno, text) = extra.outcome(0).error();
    assert_eq!((stage, errno), (ErrorStage::Limit, libc::EBUSY), "{text}");
    assert!(extra.closed_by_agent());
    // Freeing one slot admits a new client.
    drop(clients);
    // (Until the agent has seen the closes, a new client is still refused;
    // a refused client whose ping is unread may see ECONNRESET.)
    wait_until("a slot to free up", || {
        let c = V1Client::connect(&agent.socket);
        let mut ping = [0u8; v1::HEADER_LEN];
        let n = v1::encode_ping(&mut ping, 5).unwrap();
        c.send(&ping[..n]);
        match recv_with_fds(c.fd.as_raw_fd(), v1::FRAME_LEN_MAX) {
            // Request id 0: still refused (too many connections).
            Ok(reply) if v1::peek_request_id(&reply.bytes) == Some(5) => {
                matches!(parse_reply(reply, 5), Outcome::Pong { .. })
            }
            _ => false,
        }
    });
}
