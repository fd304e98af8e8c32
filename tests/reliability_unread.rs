//! A pidfd the orchestrator never read: when it gives up an agent connection (here: the
//! agent misbehaved), an answer still queued behind the bad packet carries the pidfd of a
//! process the agent already let run. The orchestrator reads what is left before it closes
//! the connection and kills every process whose pidfd it finds: nothing runs unsupervised.
//!
//! The orchestrator is stopped (SIGSTOP) while the fake agent queues both packets, so that
//! the order of events is fixed.

mod orchestrator_support;
mod reliability_support;

use holden::wire::v1;
use orchestrator_support::*;
use reliability_support::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

fn next_frame(conn: &std::os::fd::OwnedFd) -> (u64, bool) {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let n = recv(conn, &mut buf);
    assert!(n > 0, "the orchestrator hung up");
    let frame = v1::decode(&buf[..n]).expect("the orchestrator sends valid frames");
    (frame.request_id(), matches!(frame.body, v1::Body::Start(_)))
}

#[test]
fn an_unread_started_is_killed_when_the_connection_is_given_up() {
    let dir = TempDir::new("rel-unread");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let marker = format!("6668.{}", std::process::id());
    let cfg = config_header(&socket) + &service("victim", "qm", &["/bin/sleep", &marker], "");
    let orch = Orch::start(&dir, &cfg);
    let mut children = Reaper::default();

    let conn = accept(&listener);
    let (ping, _) = next_frame(&conn);
    let mut out = [0u8; 64];
    let len = v1::encode_pong(&mut out, ping, v1::Pong::ours(v1::Capabilities::empty())).unwrap();
    send(&conn, &out[..len], &[]);
    let (id, is_start) = next_frame(&conn);
    assert!(is_start);

    let (child, pidfd) = sleeper(&marker);
    let pid = child.id() as i32;
    children.0.push(child);
    kill(orch.pid(), libc::SIGSTOP);
    assert!(send(&conn, b"garbage, not a frame", &[]));
    let len = v1::encode_started(&mut out, id, pid).unwrap();
    assert!(send(&conn, &out[..len], &[pidfd.as_raw_fd()]));
    kill(orch.pid(), libc::SIGCONT);

    orch.wait_lines(&["event=agent-misbehaved", "undecodable frame"], 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = children.0[0].try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the process of the unread Started still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        orch.lines_with(&["service=victim", "state=running"])
            .is_empty(),
        "the unread answer was not adopted"
    );
}
