//! SENDMSG/RECVMSG with SCM_RIGHTS over a SEQPACKET socketpair: fds arrive intact, several per
//! message, and truncated control data leaks nothing.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use common::*;
use ring::{Limits, OpTag, Ring};

/// fd-count assertions need exclusive use of the process's fd table among these tests.
static FD_TABLE: Mutex<()> = Mutex::new(());

fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: fstat writes one stat struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on an open fd.
    unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

/// Sends `data` with `fds` in one SCM_RIGHTS message using plain sendmsg(2).
fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) {
    let mut control = [0u64; 16];
    // SAFETY: builds a msghdr over local buffers; control has room for up to 8 fds.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        assert_eq!(
            n,
            data.len() as isize,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn ring_with_fds(fds_per_msg_max: u32) -> Ring {
    Ring::new(Limits {
        slots: 4,
        buffered_slots: 4,
        fds_per_msg_max,
        ..Limits::small()
    })
    .unwrap()
}

#[test]
fn one_fd_round_trip_through_the_ring() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring_with_fds(4);
    let (a, b) = seqpacket_pair();
    let passed = eventfd();
    let sender = ring.insert().unwrap();
    let receiver = ring.insert().unwrap();
    ring.attach(sender, a).unwrap();
    ring.attach(receiver, b).unwrap();
    ring.recvmsg(receiver).unwrap();
    ring.sendmsg(sender, b"x-with-pidfd", Some(passed.as_fd()))
        .unwrap();
    let mut seen = [false; 2];
    for _ in 0..2 {
        let c = next(&mut ring);
        match c.op {
            OpTag::SendMsg => assert_eq!((c.slot, c.result), (sender, Ok(12))),
            OpTag::RecvMsg => assert_eq!((c.slot, c.result), (receiver, Ok(12))),
            other => panic!("unexpected {other:?}"),
        }
        seen[(c.op == OpTag::RecvMsg) as usize] = true;
    }
    assert_eq!(seen, [true, true]);
    assert_eq!(ring.received(receiver), Some(&b"x-with-pidfd"[..]));
    let fds = ring.take_fds(receiver);
    assert!(!fds.truncated);
    assert_eq!(fds.fds.len(), 1);
    assert_eq!(
        identity(fds.fds[0].as_raw_fd()),
        identity(passed.as_raw_fd())
    );
    assert!(
        cloexec(fds.fds[0].as_raw_fd()),
        "received fd must be close-on-exec"
    );
    assert_ne!(fds.fds[0].as_raw_fd(), passed.as_raw_fd());
    // A second take yields nothing: the fds moved out.
    assert!(ring.take_fds(receiver).fds.is_empty());
}

#[test]
fn several_fds_arrive_in_order() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring_with_fds(4);
    let (a, b) = seqpacket_pair();
    let passed = [eventfd(), eventfd(), eventfd()];
    let raw: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    ring.recvmsg(id).unwrap();
    send_with_fds(&a, b"three", &raw);
    let c = next(&mut ring);
    assert_eq!((c.op, c.result), (OpTag::RecvMsg, Ok(5)));
    let fds = ring.take_fds(id);
    assert!(!fds.truncated);
    let got: Vec<_> = fds.fds.iter().map(|f| identity(f.as_raw_fd())).collect();
    let want: Vec<_> = raw.iter().map(|f| identity(*f)).collect();
    assert_eq!(got, want);
}

#[test]
fn ctrunc_reports_truncation_and_leaks_nothing() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring_with_fds(2);
    let (a, b) = seqpacket_pair();
    let passed = [
        eventfd(),
        eventfd(),
        eventfd(),
        eventfd(),
        eventfd(),
        eventfd(),
    ];
    let raw: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    let before = open_fd_count();
    ring.recvmsg(id).unwrap();
    send_with_fds(&a, b"six", &raw);
    let c = next(&mut ring);
    assert_eq!((c.op, c.result), (OpTag::RecvMsg, Ok(3)));
    let fds = ring.take_fds(id);
    assert!(
        fds.truncated,
        "six fds into room for two must be reported truncated"
    );
    assert_eq!(fds.fds.len(), 2);
    assert_eq!(identity(fds.fds[0].as_raw_fd()), identity(raw[0]));
    assert_eq!(
        open_fd_count(),
        before + 2,
        "only the two handed-over fds may be open"
    );
    drop(fds);
    assert_eq!(open_fd_count(), before);
}

#[test]
fn more_fds_than_the_limit_but_within_the_space_are_closed() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    // CMSG_SPACE(4) has room for two fds on 64-bit; the limit of one must still hold.
    let mut ring = ring_with_fds(1);
    let (a, b) = seqpacket_pair();
    let passed = [eventfd(), eventfd()];
    let raw: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    let before = open_fd_count();
    ring.recvmsg(id).unwrap();
    send_with_fds(&a, b"2", &raw);
    next(&mut ring);
    let fds = ring.take_fds(id);
    assert!(fds.truncated);
    assert_eq!(fds.fds.len(), 1);
    assert_eq!(open_fd_count(), before + 1);
}

#[test]
fn untaken_fds_are_closed_by_the_next_receive_and_by_remove() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring_with_fds(4);
    let (a, b) = seqpacket_pair();
    let passed = eventfd();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    let before = open_fd_count();
    for _ in 0..3 {
        ring.recvmsg(id).unwrap();
        send_with_fds(&a, b"p", &[passed.as_raw_fd()]);
        next(&mut ring);
        assert_eq!(open_fd_count(), before + 1);
    }
    ring.remove(id).unwrap();
    // The untaken fd and the attached `b` (nothing outstanding: closed at once).
    assert_eq!(open_fd_count(), before - 1);
}

#[test]
fn truncated_data_is_reported() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = Ring::new(Limits {
        slots: 2,
        buffered_slots: 2,
        recv_len: 4,
        ..Limits::small()
    })
    .unwrap();
    let (a, b) = seqpacket_pair();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    ring.recvmsg(id).unwrap();
    send_with_fds(&a, b"longer than four", &[]);
    let c = next(&mut ring);
    assert_eq!(c.result, Ok(4));
    assert_eq!(ring.received(id), Some(&b"long"[..]));
    assert!(ring.recv_truncated(id));
}

#[test]
fn fds_of_a_receive_completed_after_remove_are_closed() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = ring_with_fds(4);
    let (a, b) = seqpacket_pair();
    let passed = [eventfd(), eventfd()];
    let raw: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    let before = open_fd_count();
    ring.recvmsg(id).unwrap();
    ring.submit_and_wait(0, None).unwrap();
    send_with_fds(&a, b"late", &raw);
    // The completion (with two installed fds) is in the queue; the owner removes the slot.
    ring.submit_and_wait(1, Some(WAIT_ROUND)).unwrap();
    ring.remove(id).unwrap();
    for _ in 0..WAIT_ROUNDS_MAX {
        if ring.in_flight() == 0 {
            break;
        }
        assert_eq!(poll_now(&mut ring), None);
    }
    assert_eq!(ring.in_flight(), 0);
    // The two received fds and the attached `b` are closed.
    assert_eq!(open_fd_count(), before - 1, "fds of a removed slot leaked");
}

#[test]
fn dropping_the_ring_with_operations_outstanding_leaks_nothing() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let before = open_fd_count();
    let (a, b) = seqpacket_pair();
    let idle = eventfd();
    let mut ring = ring_with_fds(4);
    let receiver = ring.insert().unwrap();
    let poller = ring.insert().unwrap();
    let sender = ring.insert().unwrap();
    ring.attach(receiver, b).unwrap();
    ring.attach(poller, idle.try_clone().unwrap()).unwrap();
    ring.attach(sender, a).unwrap();
    ring.recvmsg(receiver).unwrap();
    ring.poll_add(poller, libc::POLLIN as u32).unwrap();
    ring.timeout(
        receiver,
        ring::Timeout::After(std::time::Duration::from_secs(3600)),
    )
    .unwrap();
    ring.sendmsg(sender, b"bye", Some(idle.as_fd())).unwrap();
    ring.submit_and_wait(0, None).unwrap();
    drop(ring);
    drop(idle);
    // The ring's own fd, the fds attached to its slots and the dup it made for the send are
    // closed.
    assert_eq!(
        open_fd_count(),
        before,
        "ring fd, an attached fd or a dup leaked"
    );
}
