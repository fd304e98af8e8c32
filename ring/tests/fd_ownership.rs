//! A slot owns the fd its operations name: whatever the owner does, that fd stays open until the
//! last of those operations completed, so its number cannot be reused by a new fd meanwhile.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use ring::{Errno, OpError, OpTag, Ring, Timeout};

/// These tests count fds and rely on the kernel handing out the lowest free number, so they
/// need the process's fd table to themselves among the tests of this file.
static FD_TABLE: Mutex<()> = Mutex::new(());

fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: stat is plain data; fstat writes one into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number; the result is checked.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    assert_eq!(rc, 0, "fstat({fd}): {}", std::io::Error::last_os_error());
    (st.st_dev, st.st_ino)
}

fn send_now(fd: BorrowedFd<'_>, data: &[u8]) {
    // SAFETY: send from a borrowed buffer on an open fd.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(
        n,
        data.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// One message, without waiting: `Ok(bytes)` (empty: EOF) or `Err(errno)`.
fn recv_now(fd: BorrowedFd<'_>) -> Result<Vec<u8>, i32> {
    let mut buf = [0u8; 64];
    // SAFETY: recv into a local buffer on an open fd.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match n {
        n if n >= 0 => Ok(buf[..n as usize].to_vec()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

fn revents(fd: BorrowedFd<'_>) -> i16 {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one local pollfd, without waiting.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    pfd.revents
}

fn drain_removed(ring: &mut Ring) {
    for _ in 0..WAIT_ROUNDS_MAX {
        if ring.in_flight() == 0 {
            break;
        }
        assert_eq!(
            poll_now(ring),
            None,
            "a completion of a removed slot was delivered"
        );
    }
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn queued_ops_of_a_removed_slot_never_reach_the_fds_opened_after() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring(4);
    let baseline = open_fd_count();
    let (conn, peer) = seqpacket_pair();
    let conn_raw = conn.as_raw_fd();
    let conn_file = identity(conn_raw);
    let id = ring.insert().unwrap();
    ring.attach(id, conn).unwrap();
    ring.sendmsg(id, b"for the old peer", None).unwrap();
    ring.recvmsg(id).unwrap();
    // Given up before any submit: the queued entries hold nothing but the number `conn_raw`.
    ring.remove(id).unwrap();
    assert!(ring.fd(id).is_none());
    // New fds take the lowest free numbers: `conn_raw` first, had it been closed.
    let fresh: Vec<(OwnedFd, OwnedFd)> = (0..4).map(|_| seqpacket_pair()).collect();
    for (x, y) in &fresh {
        assert_ne!(x.as_raw_fd(), conn_raw, "the slot's fd was closed early");
        assert_ne!(y.as_raw_fd(), conn_raw, "the slot's fd was closed early");
        // One message each way: a stray RECVMSG would consume one, a stray SENDMSG add one.
        send_now(x.as_fd(), b"x");
        send_now(y.as_fd(), b"y");
    }
    assert_eq!(identity(conn_raw), conn_file);

    drain_removed(&mut ring);
    assert!(ring.is_empty());
    assert_eq!(ring.stats().removed_dropped, 2);

    for (x, y) in &fresh {
        assert_eq!(recv_now(y.as_fd()), Ok(b"x".to_vec()));
        assert_eq!(recv_now(y.as_fd()), Err(libc::EAGAIN));
        assert_eq!(recv_now(x.as_fd()), Ok(b"y".to_vec()));
        assert_eq!(recv_now(x.as_fd()), Err(libc::EAGAIN));
    }
    // The SENDMSG reached the original peer (or was cancelled); the original fd is closed.
    assert!(
        revents(peer.as_fd()) & libc::POLLHUP != 0,
        "original fd still open"
    );
    match recv_now(peer.as_fd()) {
        Ok(data) if data == b"for the old peer" => assert_eq!(recv_now(peer.as_fd()), Ok(vec![])),
        other => assert_eq!(other, Ok(vec![]), "unexpected data at the original peer"),
    }
    assert_eq!(open_fd_count(), baseline + 1 + 2 * fresh.len());
    // The number is free now, and the next new fd takes it.
    let next_fd = eventfd();
    assert_eq!(next_fd.as_raw_fd(), conn_raw);
    drop((next_fd, fresh, peer));
    assert_eq!(open_fd_count(), baseline);
}

#[test]
fn remove_closes_the_fd_only_when_the_cancelled_op_completed() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring(2);
    let baseline = open_fd_count();
    let (conn, peer) = seqpacket_pair();
    let id = ring.insert().unwrap();
    ring.attach(id, conn).unwrap();
    ring.recvmsg(id).unwrap();
    ring.submit_and_wait(0, None).unwrap(); // in the kernel now
    ring.remove(id).unwrap();
    // The cancel is only queued: the fd is still open.
    assert_eq!(revents(peer.as_fd()) & libc::POLLHUP, 0);
    assert_eq!(open_fd_count(), baseline + 2);
    drain_removed(&mut ring);
    assert!(revents(peer.as_fd()) & libc::POLLHUP != 0);
    assert_eq!(open_fd_count(), baseline + 1);
    drop(peer);
    assert_eq!(open_fd_count(), baseline);
}

#[test]
fn detach_is_refused_while_an_op_names_the_fd_and_succeeds_after_its_completion() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring(2);
    let baseline = open_fd_count();
    let efd = eventfd();
    let (raw, file) = (efd.as_raw_fd(), identity(efd.as_raw_fd()));
    let id = ring.insert().unwrap();
    ring.attach(id, efd).unwrap();
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    // A timeout names no fd: it does not hold the fd.
    ring.timeout(id, Timeout::After(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(
        ring.detach(id).err(),
        Some(OpError::Busy(OpTag::Poll)),
        "queued"
    );
    ring.submit_and_wait(0, None).unwrap();
    assert_eq!(
        ring.detach(id).err(),
        Some(OpError::Busy(OpTag::Poll)),
        "in the kernel"
    );
    signal_eventfd_raw(ring.fd(id).unwrap());
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (id, OpTag::Poll));
    assert!(c.result.unwrap() & libc::POLLIN as u32 != 0);
    let efd = ring.detach(id).expect("no op names the fd any more");
    assert_eq!((efd.as_raw_fd(), identity(efd.as_raw_fd())), (raw, file));
    assert!(ring.fd(id).is_none());
    assert_eq!(ring.detach(id).err(), Some(OpError::NoFd));
    assert!(ring.is_pending(id, OpTag::Timeout));

    // A cancelled op holds the fd until its own completion.
    ring.attach(id, eventfd()).unwrap();
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    ring.submit_and_wait(0, None).unwrap();
    ring.cancel_op(id, OpTag::Poll).unwrap();
    assert_eq!(ring.detach(id).err(), Some(OpError::Busy(OpTag::Poll)));
    let c = next(&mut ring);
    assert_eq!((c.op, c.result), (OpTag::Poll, Err(Errno::CANCELED)));
    drop(ring.detach(id).unwrap());

    // Every fd-naming op blocks detach, not just the poll.
    let (a, b) = seqpacket_pair();
    ring.attach(id, a).unwrap();
    ring.recvmsg(id).unwrap();
    assert_eq!(ring.detach(id).err(), Some(OpError::Busy(OpTag::RecvMsg)));
    send_now(b.as_fd(), b"m");
    let c = next(&mut ring);
    assert_eq!((c.op, c.result), (OpTag::RecvMsg, Ok(1)));
    drop(ring.detach(id).unwrap());
    ring.remove(id).unwrap();
    drop((efd, b));
    drain_removed(&mut ring);
    assert_eq!(open_fd_count(), baseline);
}

fn signal_eventfd_raw(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local to an open eventfd.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

#[test]
fn operations_on_a_slot_without_an_fd_return_no_fd() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring(2);
    let passed = eventfd();
    let baseline = open_fd_count();
    let id = ring.insert().unwrap();
    assert!(ring.fd(id).is_none());
    assert_eq!(ring.poll_add(id, libc::POLLIN as u32), Err(OpError::NoFd));
    assert_eq!(ring.recvmsg(id), Err(OpError::NoFd));
    assert_eq!(ring.sendmsg(id, b"x", None), Err(OpError::NoFd));
    assert_eq!(
        ring.sendmsg(id, b"x", Some(passed.as_fd())),
        Err(OpError::NoFd)
    );
    assert_eq!(ring.accept(id), Err(OpError::NoFd));
    assert_eq!(ring.read(id), Err(OpError::NoFd));
    // Nothing was queued, no duplicate of `passed` was kept.
    assert_eq!(ring.in_flight(), 0);
    assert!(OpTag::ALL.iter().all(|op| !ring.is_pending(id, *op)));
    assert_eq!(open_fd_count(), baseline);
    // A timeout needs no fd.
    ring.timeout(id, Timeout::After(Duration::from_millis(1)))
        .unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (id, OpTag::Timeout, Ok(0)));
    // A bare slot without an fd: buffers are checked first.
    let bare = ring.insert_bare().unwrap();
    assert_eq!(ring.recvmsg(bare), Err(OpError::NoBuffers(OpTag::RecvMsg)));
    assert_eq!(ring.accept(bare), Err(OpError::NoFd));
    ring.timeout(bare, Timeout::After(Duration::from_millis(1)))
        .unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (bare, OpTag::Timeout, Ok(0)));
}

#[test]
fn a_slot_owns_one_fd_and_lends_it_through_fd() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring(2);
    let baseline = open_fd_count();
    let (a, b) = seqpacket_pair();
    let a_raw = a.as_raw_fd();
    let id = ring.insert().unwrap();
    ring.attach(id, a).unwrap();
    let lent = ring.fd(id).expect("attached");
    assert_eq!(lent.as_raw_fd(), a_raw);
    // The owner's own system call on it.
    send_now(lent, b"direct");
    assert_eq!(recv_now(b.as_fd()), Ok(b"direct".to_vec()));
    // A second attach is refused; the refused fd is closed, the first one stays.
    let extra = eventfd();
    assert_eq!(open_fd_count(), baseline + 3);
    assert_eq!(ring.attach(id, extra), Err(OpError::FdAttached));
    assert_eq!(open_fd_count(), baseline + 2);
    assert_eq!(ring.fd(id).map(|fd| fd.as_raw_fd()), Some(a_raw));
    // Remove with nothing outstanding closes it at once.
    ring.remove(id).unwrap();
    assert!(ring.fd(id).is_none());
    assert!(revents(b.as_fd()) & libc::POLLHUP != 0);
    assert_eq!(recv_now(b.as_fd()), Ok(vec![]));
    drop(b);
    assert_eq!(open_fd_count(), baseline);
}
