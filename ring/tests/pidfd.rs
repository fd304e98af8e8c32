//! POLL_ADD on a pidfd completes when the child exits, and not before.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use common::*;
use ring::OpTag;

fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn pidfd_poll_completes_on_exit_and_not_before() {
    let mut ring = ring(4);
    let mut child = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let id = ring.insert_bare().unwrap();
    ring.attach(id, pidfd_open(child.id())).unwrap();
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    // The child is alive: several submit rounds deliver nothing.
    for _ in 0..5 {
        assert_eq!(
            poll_now(&mut ring),
            None,
            "pidfd poll completed while the child runs"
        );
    }
    child.kill().expect("kill child");
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (id, OpTag::Poll));
    assert!(c.result.unwrap() & libc::POLLIN as u32 != 0);
    // The owner can ask the kernel about the child through the slot's pidfd.
    let pidfd = ring.fd(id).expect("attached pidfd");
    // SAFETY: siginfo_t is plain data; waitid writes one into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT; // WNOWAIT: `child.wait()` below reaps it
                                               // SAFETY: waitid on an open pidfd, writing into a local siginfo_t.
    let rc = unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as _, &mut info, flags) };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    // SAFETY: waitid filled in a child's siginfo.
    assert_eq!(unsafe { info.si_pid() }, child.id() as libc::pid_t);
    assert_eq!(info.si_code, libc::CLD_KILLED);
    let status = child.wait().expect("wait child");
    assert!(!status.success());
    ring.remove(id).unwrap();
    assert!(ring.is_empty());
}

#[test]
fn pidfd_polls_of_many_children_each_complete_once() {
    const CHILDREN: usize = 8;
    let mut ring = ring(CHILDREN as u32);
    let mut children = Vec::new();
    for _ in 0..CHILDREN {
        let child = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        let id = ring.insert_bare().unwrap();
        ring.attach(id, pidfd_open(child.id())).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        children.push((child, id));
    }
    assert_eq!(poll_now(&mut ring), None);
    // Kill in reverse order; each slot must complete exactly once.
    let mut completed = Vec::new();
    for (child, _) in children.iter_mut().rev() {
        child.kill().unwrap();
        let c = next(&mut ring);
        assert_eq!(c.op, OpTag::Poll);
        completed.push(c.slot);
    }
    for (child, _) in children.iter_mut() {
        child.wait().unwrap();
    }
    completed.sort_by_key(|id| id.index());
    let mut expected: Vec<_> = children.iter().map(|(_, id)| *id).collect();
    expected.sort_by_key(|id| id.index());
    assert_eq!(completed, expected);
    assert_eq!(poll_now(&mut ring), None);
}
