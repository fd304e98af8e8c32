//! The agent in its own PID and mount namespace (`unshare`), as a stand-in
//! for the QM container: a small init (sh) as PID 1 with the agent beneath
//! it, a client in the parent namespace.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::Duration;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;
use holden::pidfd::WaitStatus;

/// `NSpid:` of a pidfd, as this namespace sees it: our pid first, then the
/// pid in each nested namespace.
fn nspid(pidfd: &impl AsRawFd) -> Vec<i32> {
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().map(|p| p.parse().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn agent_in_its_own_pid_namespace_hands_out_working_pidfds() {
    let dir = TempDir::new("pidns");
    let socket = dir.join("agent.sock");
    let mut command = Command::new("unshare");
    // --kill-child: if the test (and so unshare) dies, the namespace's init
    // dies and the kernel kills everything in the namespace.
    command.args(["--pid", "--mount-proc", "--kill-child", "/bin/sh", "-c"]);
    command.arg("\"$0\" --socket \"$1\" & wait");
    command.arg(AGENT).arg(&socket);
    let agent = Agent::launch(&dir, command, &socket);
    let client = V1Client::connect(&socket);
    assert!(matches!(client.ping(1), Outcome::Pong { .. }));

    let mut procs = Procs::default();
    let (inner_pid, pidfd) = client.start(2, &[b"/bin/sleep", b"1000"]).started();
    let pidfd = procs.keep(pidfd);
    let ns = nspid(&pidfd.as_raw_fd());
    assert_eq!(ns.len(), 2, "process not in a nested PID namespace: {ns:?}");
    assert_eq!(
        ns[1], inner_pid,
        "Started carries the pid as the agent sees it"
    );
    assert_ne!(ns[0], inner_pid);
    // Our view of it works: signal 0, then SIGTERM; it polls readable, and the
    // agent (its parent in there) reaped it so the status is readable here.
    pidfd_send_signal(pidfd, 0).unwrap();
    assert!(!poll_readable(pidfd, Duration::ZERO));
    pidfd_send_signal(pidfd, libc::SIGTERM).unwrap();
    if let Some(status) = exit_status(pidfd) {
        assert_eq!(
            status,
            WaitStatus::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false
            }
        );
    }
    // Fast-exiting processes too (the race v0.2 lost).
    for id in 10..60 {
        let (_, pidfd) = client.start(id, &[b"/bin/sh", b"-c", b"exit 3"]).started();
        if let Some(status) = exit_status(pidfd.as_fd()) {
            assert_eq!(status, WaitStatus::Exited(3));
        }
    }
    // Tear-down: killing unshare kills the namespace's init, and with it the
    // agent (found through SO_PEERCRED, in our pid namespace).
    let agent_pid = peer_pid(&client);
    assert_ne!(agent_pid, agent.pid());
    drop(agent);
    wait_until("the namespace to be gone", || {
        !std::path::Path::new(&format!("/proc/{agent_pid}")).exists()
    });
}

fn peer_pid(client: &V1Client) -> i32 {
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = libc::getsockopt(
            client.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        assert_eq!(rc, 0);
        cred.pid
    }
}

/// A credential failure names the id it failed on. The agent runs as root of a user namespace
/// that maps only root and denies `setgroups` (`unshare --map-root-user`): a start as another
/// user fails in the child at `setgroups`, and the text says which group list.
#[test]
fn credential_failures_name_the_ids() {
    let dir = TempDir::new("userns");
    let socket = dir.join("agent.sock");
    let mut command = Command::new("unshare");
    // unshare execs the agent (no fork): dropping the Agent kills it.
    command.args(["--user", "--map-root-user"]);
    command.arg(AGENT).arg("--socket").arg(&socket);
    let agent = Agent::launch(&dir, command, &socket);
    let client = V1Client::connect(&socket);
    let frame = start_frame_full(
        1,
        &[b"/bin/true"],
        &[],
        None,
        Some(65534),
        Some(65533),
        holden::wire::v1::StartFlags::empty(),
    );
    client.send(&frame);
    let (stage, errno, text) = client.outcome(1).error();
    assert_eq!(
        (stage, errno),
        (holden::wire::v1::ErrorStage::Permission, libc::EPERM),
        "{text}"
    );
    assert_eq!(
        text,
        "setgroups [65533] for \"/bin/true\": Operation not permitted"
    );
    assert!(matches!(client.ping(2), Outcome::Pong { .. }));
    drop(agent);
}
