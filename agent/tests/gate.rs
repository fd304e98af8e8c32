//! Gated exec (wire 1.1) when the exec does not come: the agent confirms each exec without
//! blocking its loop, so a child stuck before `execve` delays nobody; a stuck child ends with
//! `Error` stage `exec`, `ETIMEDOUT` after `--exec-timeout-ms`; gated starts waiting for their exec
//! are bounded per connection and in total.
//!
//! A child is held *inside* `execve`, deterministically, by a write lease (`F_SETLEASE`) that
//! the test takes on a copy of `/bin/sleep`: the kernel's open of the binary waits in
//! `__break_lease` until the lease is given up (or the process is killed). That is after the
//! child read its go-ahead and before the exec's point of no return. A child stopped *at* its
//! gate needs a `SIGSTOP` that lands before the child reads the go-ahead, which is a race the
//! test can only try to win: it tries until it does (bounded).

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;
use holden::pidfd::WaitStatus;
use holden::wire::v1::{decode, Body, ErrorStage};

/// A copy of `/bin/sleep` under a write lease: exec'ing it blocks until the lease is dropped.
struct LeasedProgram {
    path: PathBuf,
    lease: Option<OwnedFd>,
}

impl LeasedProgram {
    /// `None` when this kernel or file system refuses leases (the caller skips).
    fn new(dir: &TempDir) -> Option<LeasedProgram> {
        let path = dir.join("leased-sleep");
        std::fs::copy("/bin/sleep", &path).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fd = OwnedFd::from(file);
        // The lease-break notice goes to us as SIGWINCH (ignored by default), not SIGIO
        // (which would end the test process).
        // F_SETSIG (10 on Linux; not in the libc crate).
        const F_SETSIG: libc::c_int = 10;
        // SAFETY: fcntl on our own fd with integer arguments.
        unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, libc::SIGWINCH) };
        // A write lease needs the file open nowhere else. Another test's fork may briefly hold a
        // copy of the descriptor `copy` wrote through (until that child's exec closes it): EAGAIN
        // then, so try again for a while.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            // SAFETY: fcntl on our own fd with integer arguments.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EAGAIN) || std::time::Instant::now() > deadline {
                eprintln!("F_SETLEASE refused ({error}): skipping");
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Some(LeasedProgram {
            path,
            lease: Some(fd),
        })
    }

    fn path(&self) -> &[u8] {
        self.path.as_os_str().as_bytes()
    }

    /// Gives the lease up: every exec waiting for it goes on.
    fn release(&mut self) {
        self.lease = None;
    }
}

/// The executable a process runs now (`/proc/PID/exe`).
fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

fn state_of(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

fn assert_killed(pidfd: BorrowedFd<'_>) {
    if let Some(status) = exit_status(pidfd) {
        assert_eq!(
            status,
            WaitStatus::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            }
        );
    }
}

/// The next reply on `client` is `Running` for one of `ids`; returns that id.
fn expect_running(client: &V1Client, ids: &[u64]) -> u64 {
    let reply = client.recv();
    assert!(!reply.bytes.is_empty(), "agent closed the connection");
    assert!(reply.fds.is_empty());
    let frame = decode(&reply.bytes).unwrap();
    assert_eq!(frame.body, Body::Running, "{frame:?}");
    let id = frame.request_id();
    assert!(ids.contains(&id), "Running for unexpected request {id}");
    id
}

#[test]
fn a_child_stuck_in_exec_delays_nobody_and_ends_with_etimedout() {
    let dir = TempDir::new("stuck");
    let Some(program) = LeasedProgram::new(&dir) else {
        return;
    };
    let agent = Agent::start(&dir, &["--exec-timeout-ms", "4000"]);
    let agent_exe = exe_of(agent.pid());
    let first = V1Client::connect(&agent.socket);
    let second = V1Client::connect(&agent.socket);
    assert!(matches!(first.ping(1), Outcome::Pong { .. }));
    assert!(matches!(second.ping(1), Outcome::Pong { .. }));
    let fds_before = fd_count(agent.pid());

    first.send(&start_frame(2, &[program.path(), b"1000"], &[], None));
    let (pid, pidfd) = parse_reply(first.recv(), 2).started();
    // It now waits in the kernel for the lease (`/proc/PID/wchan`: `__break_lease` on 6.18).
    // Meanwhile the agent serves the other client: starts get Started and Running, pings Pong.
    let mut procs = Procs::default();
    for id in 10..15 {
        let (_, other) = second.start(id, &[b"/bin/sleep", b"1000"]).started();
        procs.keep(other);
    }
    assert!(matches!(second.ping(15), Outcome::Pong { .. }));
    // ... while the first child is still in its execve, not exec'd, not killed.
    assert!(!poll_readable(pidfd.as_fd(), std::time::Duration::ZERO));
    assert_eq!(exe_of(pid), agent_exe);

    // At the deadline: Error stage exec, ETIMEDOUT; the process was killed before it ran.
    let (stage, errno, text) = parse_reply(first.recv(), 2).error();
    assert_eq!(
        (stage, errno),
        (ErrorStage::Exec, libc::ETIMEDOUT),
        "{text}"
    );
    let expected = format!(
        "exec \"{}\": execve did not complete",
        program.path.display()
    );
    assert!(text.starts_with(&expected), "{text}");
    assert_killed(pidfd.as_fd());
    // The connection goes on.
    assert!(matches!(first.ping(3), Outcome::Pong { .. }));
    drop(procs);
    wait_until("the agent to have no children", || {
        children_of(agent.pid()).is_empty()
    });
    assert_eq!(fd_count(agent.pid()), fds_before, "the agent leaked fds");
    assert!(
        agent.log().contains("Connection timed out"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_child_stopped_at_its_gate_ends_with_etimedout_and_never_runs() {
    let dir = TempDir::new("stopped");
    let agent = Agent::start(&dir, &["--exec-timeout-ms", "300"]);
    let agent_exe = exe_of(agent.pid());
    let client = V1Client::connect(&agent.socket);
    let other = V1Client::connect(&agent.socket);
    assert!(matches!(other.ping(1), Outcome::Pong { .. }));
    let fds_before = fd_count(agent.pid());
    let mut caught = 0;
    for attempt in 0..200u64 {
        let marker = dir.join(&format!("ran-{attempt}"));
        let script = format!("echo > {}; exec sleep 1000", marker.display());
        let id = attempt + 100;
        client.send(&start_frame(
            id,
            &[b"/bin/sh", b"-c", script.as_bytes()],
            &[],
            None,
        ));
        let (pid, pidfd) = parse_reply(client.recv(), id).started();
        pidfd_send_signal(pidfd.as_fd(), libc::SIGSTOP).unwrap();
        // A stop takes effect at the child's next return to user space: before execve (at the
        // gate, or just past it), or after the exec has completed — never inside it.
        wait_until("the child to stop", || state_of(pid) == 'T');
        if exe_of(pid) != agent_exe {
            // Lost the race: it exec'd first; Running comes as usual.
            assert_eq!(expect_running(&client, &[id]), id);
            pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
            continue;
        }
        // Stopped before execve. The other client is served meanwhile.
        let (_, started) = other.start(id, &[b"/bin/true"]).started();
        assert!(poll_readable(started.as_fd(), WAIT));
        let (stage, errno, text) = parse_reply(client.recv(), id).error();
        assert_eq!(
            (stage, errno),
            (ErrorStage::Exec, libc::ETIMEDOUT),
            "{text}"
        );
        assert!(
            text.starts_with("gate of \"/bin/sh\": the process did not take its go-ahead")
                || text.starts_with("exec \"/bin/sh\": execve did not complete"),
            "{text}"
        );
        assert_killed(pidfd.as_fd());
        assert!(!marker.exists(), "the program ran after an Error");
        eprintln!("attempt {attempt}: {text}");
        caught += 1;
        if caught == 3 {
            break;
        }
    }
    eprintln!("SIGSTOP landed before execve {caught} times");
    if caught == 0 {
        eprintln!("no SIGSTOP landed before execve in 200 attempts: the stall path was not run");
    }
    wait_until("the agent to have no children", || {
        children_of(agent.pid()).is_empty()
    });
    assert_eq!(fd_count(agent.pid()), fds_before, "the agent leaked fds");
}

#[test]
fn gated_starts_waiting_for_their_exec_are_bounded() {
    let dir = TempDir::new("bounded");
    let Some(mut program) = LeasedProgram::new(&dir) else {
        return;
    };
    // No deadline gets in the way: the lease decides when the execs complete.
    let agent = Agent::start(&dir, &["--exec-timeout-ms", "3600000"]);
    let clients: Vec<V1Client> = (0..5).map(|_| V1Client::connect(&agent.socket)).collect();
    for client in &clients {
        assert!(matches!(client.ping(1), Outcome::Pong { .. }));
    }
    let fds_before = fd_count(agent.pid());
    let mut procs = Procs::default();
    let argv: [&[u8]; 2] = [program.path(), b"1000"];
    // 16 per connection; the 17th is refused, and nothing is started for it.
    for id in 1..=17 {
        clients[0].send(&start_frame(id, &argv, &[], None));
    }
    for id in 1..=16 {
        let (_, pidfd) = parse_reply(clients[0].recv(), id).started();
        procs.keep(pidfd);
    }
    let (stage, errno, text) = parse_reply(clients[0].recv(), 17).error();
    assert_eq!((stage, errno), (ErrorStage::Limit, libc::EAGAIN), "{text}");
    assert!(text.contains("per connection"), "{text}");
    // 64 in the agent: three more connections fill it, a fifth is refused.
    for client in &clients[1..4] {
        for id in 1..=16 {
            client.send(&start_frame(id, &argv, &[], None));
            let (_, pidfd) = parse_reply(client.recv(), id).started();
            procs.keep(pidfd);
        }
    }
    let (stage, errno, text) = clients[4].start(1, &argv).error();
    assert_eq!((stage, errno), (ErrorStage::Limit, libc::EAGAIN), "{text}");
    assert!(text.contains("in the agent"), "{text}");
    // Refused, not stuck: pings and ungated work go on.
    assert!(matches!(clients[4].ping(2), Outcome::Pong { .. }));
    assert_eq!(children_of(agent.pid()).len(), 64);
    // The lease goes: all 64 exec, and each gets its Running.
    program.release();
    let ids: Vec<u64> = (1..=16).collect();
    for client in &clients[..4] {
        let mut seen: Vec<u64> = (0..16).map(|_| expect_running(client, &ids)).collect();
        seen.sort_unstable();
        assert_eq!(seen, ids);
    }
    // Room again.
    let (_, pidfd) = clients[4].start(3, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    drop(procs);
    wait_until("the agent to have no children", || {
        children_of(agent.pid()).is_empty()
    });
    assert_eq!(fd_count(agent.pid()), fds_before, "the agent leaked fds");
}
