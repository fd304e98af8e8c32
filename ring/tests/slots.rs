//! Slot lifecycle: removal with outstanding operations, reuse without stale completions,
//! accept and read.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use ring::{Errno, OpError, OpTag, Timeout};

#[test]
fn removed_slot_drains_before_reuse_and_never_delivers() {
    let mut ring = ring(1);
    let efd = eventfd();
    let old = ring.insert().unwrap();
    ring.attach(old, efd.try_clone().unwrap()).unwrap();
    ring.poll_add(old, libc::POLLIN as u32).unwrap();
    ring.timeout(old, Timeout::After(Duration::from_secs(3600)))
        .unwrap();
    ring.submit_and_wait(0, None).unwrap();
    ring.remove(old).unwrap();
    // The only slot is still draining: no reuse yet.
    assert!(
        ring.insert().is_err(),
        "a draining slot must not be handed out"
    );
    assert_eq!(ring.poll_add(old, 1), Err(OpError::Removed));
    assert_eq!(ring.attach(old, eventfd()), Err(OpError::Removed));
    assert!(ring.fd(old).is_none());
    // The cancelled completions arrive and are consumed inside.
    for _ in 0..WAIT_ROUNDS_MAX {
        if ring.in_flight() == 0 {
            break;
        }
        assert_eq!(
            poll_now(&mut ring),
            None,
            "a removed slot's completion was delivered"
        );
    }
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().removed_dropped, 2);
    let new = ring
        .insert()
        .expect("slot free after its completions arrived");
    assert_eq!(new.index(), old.index());
    assert_ne!(new.generation(), old.generation());
    // The old id is stale for every call.
    assert_eq!(ring.poll_add(old, 1), Err(OpError::Stale));
    assert_eq!(ring.remove(old), Err(OpError::Stale));
    assert_eq!(ring.attach(old, eventfd()), Err(OpError::Stale));
    assert_eq!(ring.detach(old).err(), Some(OpError::Stale));
    assert_eq!(ring.received(old), None);
    // The new owner sees only its own completions.
    signal_eventfd(&efd);
    assert!(ring.fd(new).is_none(), "a reused slot starts without an fd");
    ring.attach(new, efd).unwrap();
    ring.poll_add(new, libc::POLLIN as u32).unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (new, OpTag::Poll));
    assert_eq!(poll_now(&mut ring), None);
}

#[test]
fn reuse_churn_never_delivers_to_the_wrong_generation() {
    const ROUNDS: usize = 2000;
    let mut ring = ring(4);
    let efd = eventfd();
    signal_eventfd(&efd); // readable: every poll completes at once
    let mut delivered = 0;
    for round in 0..ROUNDS {
        let id = ring.insert().unwrap();
        ring.attach(id, efd.try_clone().unwrap()).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        if round % 2 == 0 {
            // Removed with the poll possibly already complete in the CQ: must be dropped.
            ring.remove(id).unwrap();
            ring.submit_and_wait(0, None).unwrap();
            assert_eq!(
                ring.next_completion(),
                None,
                "completion delivered for a removed slot"
            );
        } else {
            let c = next(&mut ring);
            assert_eq!((c.slot, c.op), (id, OpTag::Poll));
            delivered += 1;
            ring.remove(id).unwrap();
        }
    }
    assert_eq!(delivered, ROUNDS / 2);
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().stale_dropped, 0);
}

#[test]
fn recvmsg_of_removed_slot_keeps_buffers_until_cancelled() {
    let mut ring = ring(2);
    let (a, b) = seqpacket_pair();
    let id = ring.insert().unwrap();
    ring.attach(id, b.try_clone().unwrap()).unwrap();
    ring.recvmsg(id).unwrap();
    ring.submit_and_wait(0, None).unwrap();
    assert_eq!(
        ring.received(id),
        None,
        "buffer of an outstanding RECVMSG is not readable"
    );
    ring.remove(id).unwrap();
    for _ in 0..WAIT_ROUNDS_MAX {
        if ring.in_flight() == 0 {
            break;
        }
        assert_eq!(poll_now(&mut ring), None);
    }
    assert_eq!(ring.in_flight(), 0);
    // The socket still works and a fresh slot receives normally.
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    ring.recvmsg(id).unwrap();
    // SAFETY: send from a local buffer.
    let n = unsafe { libc::send(a.as_raw_fd(), b"ok".as_ptr().cast(), 2, 0) };
    assert_eq!(n, 2);
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (id, OpTag::RecvMsg, Ok(2)));
    assert_eq!(ring.received(id), Some(&b"ok"[..]));
}

#[test]
fn cancel_of_recvmsg_yields_one_canceled_and_slot_stays_usable() {
    let mut ring = ring(2);
    let (a, b) = seqpacket_pair();
    let id = ring.insert().unwrap();
    ring.attach(id, b).unwrap();
    ring.recvmsg(id).unwrap();
    ring.submit_and_wait(0, None).unwrap();
    ring.cancel_op(id, OpTag::RecvMsg).unwrap();
    let c = next(&mut ring);
    assert_eq!(
        (c.slot, c.op, c.result),
        (id, OpTag::RecvMsg, Err(Errno::CANCELED))
    );
    assert_eq!(poll_now(&mut ring), None);
    assert_eq!(ring.received(id), Some(&b""[..]));
    let sender = ring.insert().unwrap();
    ring.attach(sender, a).unwrap();
    ring.sendmsg(sender, b"again", None).unwrap();
    ring.recvmsg(id).unwrap();
    let mut done = [next(&mut ring), next(&mut ring)].map(|c| (c.slot, c.op));
    done.sort_by_key(|(_, op)| *op as u8);
    assert_eq!(done, [(id, OpTag::RecvMsg), (sender, OpTag::SendMsg)]);
    assert_eq!(ring.received(id), Some(&b"again"[..]));
}

#[test]
fn sendmsg_longer_than_the_buffer_is_refused() {
    let mut ring = ring(1);
    let (a, _b) = seqpacket_pair();
    let id = ring.insert().unwrap();
    ring.attach(id, a).unwrap();
    let big = vec![0u8; ring.limits().send_len as usize + 1];
    assert!(matches!(
        ring.sendmsg(id, &big, None),
        Err(OpError::TooLong { .. })
    ));
    assert!(!ring.is_pending(id, OpTag::SendMsg));
}

#[test]
fn sendmsg_to_closed_peer_is_epipe_not_sigpipe() {
    let mut ring = ring(1);
    let (a, b) = seqpacket_pair();
    drop(b);
    let id = ring.insert().unwrap();
    ring.attach(id, a).unwrap();
    ring.sendmsg(id, b"x", None).unwrap();
    let c = next(&mut ring);
    assert_eq!(c.result, Err(Errno(libc::EPIPE)));
}

fn listener(name: &[u8]) -> OwnedFd {
    // SAFETY: socket/bind/listen on a fresh fd with an abstract address built locally.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let (addr, len) = abstract_addr(name);
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 16), 0);
        owned
    }
}

fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, byte) in name.iter().enumerate() {
        addr.sun_path[i + 1] = *byte as libc::c_char;
    }
    (
        addr,
        (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t,
    )
}

fn connect(name: &[u8]) -> OwnedFd {
    // SAFETY: socket/connect on a fresh fd with an abstract address built locally.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let (addr, len) = abstract_addr(name);
        assert_eq!(
            libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        owned
    }
}

#[test]
fn accept_hands_over_a_cloexec_connection_and_read_reads() {
    let name = format!("holden-ring-test-{}-accept", std::process::id());
    let listen = listener(name.as_bytes());
    let mut ring = ring(2);
    let id = ring.insert_bare().unwrap();
    ring.attach(id, listen).unwrap();
    ring.accept(id).unwrap();
    assert_eq!(poll_now(&mut ring), None);
    let client = connect(name.as_bytes());
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (id, OpTag::Accept));
    let conn = ring.take_accepted(id).expect("accepted fd");
    assert_eq!(c.result, Ok(conn.as_raw_fd() as u32));
    // SAFETY: F_GETFD on an open fd.
    assert!(unsafe { libc::fcntl(conn.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC != 0);
    // The connection gets a slot of its own.
    let conn_slot = ring.insert().unwrap();
    ring.attach(conn_slot, conn).unwrap();
    ring.read(conn_slot).unwrap();
    // SAFETY: send from a local buffer.
    let sent = unsafe { libc::send(client.as_raw_fd(), b"hello".as_ptr().cast(), 5, 0) };
    assert_eq!(sent, 5);
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (conn_slot, OpTag::Read, Ok(5)));
    assert_eq!(ring.read_data(conn_slot), Some(&b"hello"[..]));
}

#[test]
fn cancel_after_rearm_while_an_earlier_cancel_is_in_flight_still_cancels() {
    const ROUNDS: usize = 200;
    let mut ring = ring(1);
    let ready = eventfd();
    // The slot owns one fd at a time: `ready` (a duplicate) for op1, `idle` for op2.
    let mut ready_dup = Some(ready.try_clone().unwrap());
    let mut idle = Some(eventfd());
    let id = ring.insert().unwrap();
    for round in 0..ROUNDS {
        // op1 completes by itself (its CQE waits in the queue) ...
        ring.attach(id, ready_dup.take().unwrap()).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        ring.submit_and_wait(0, None).unwrap();
        signal_eventfd(&ready);
        ring.submit_and_wait(1, Some(WAIT_ROUND)).unwrap();
        // ... while a cancel for it is asked (still pending from the ring's view).
        ring.cancel(id).unwrap();
        let c = next(&mut ring);
        assert_eq!(
            (c.op, c.result.is_ok()),
            (OpTag::Poll, true),
            "round {round}"
        );
        // Detach is allowed: op1 completed, although cancel #1 is still queued.
        ready_dup = Some(ring.detach(id).unwrap());
        // op2 re-armed (on another fd) and cancelled before cancel #1 has even been submitted.
        ring.attach(id, idle.take().unwrap()).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        ring.cancel(id).unwrap();
        let c = next(&mut ring);
        assert_eq!(
            (c.slot, c.op, c.result),
            (id, OpTag::Poll, Err(Errno::CANCELED)),
            "round {round}"
        );
        idle = Some(ring.detach(id).unwrap());
        // Drain the eventfd so that the next op1 waits again.
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a local.
        let n = unsafe { libc::read(ready.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
    }
    assert_eq!(poll_now(&mut ring), None);
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().cancel_failed, 0);
}

/// A ring of `slots` slots of which `buffered` own buffers.
fn mixed_ring(slots: u32, buffered: u32) -> ring::Ring {
    ring::Ring::new(ring::Limits {
        slots,
        buffered_slots: buffered,
        ..ring::Limits::small()
    })
    .expect("io_uring setup")
}

#[test]
fn a_bare_slot_polls_and_times_out_but_owns_no_buffers() {
    let mut ring = mixed_ring(2, 0);
    let efd = eventfd();
    let id = ring.insert_bare().unwrap();
    ring.attach(id, efd.try_clone().unwrap()).unwrap();
    assert_eq!(ring.recvmsg(id), Err(OpError::NoBuffers(OpTag::RecvMsg)));
    assert_eq!(
        ring.sendmsg(id, b"x", None),
        Err(OpError::NoBuffers(OpTag::SendMsg))
    );
    assert_eq!(ring.read(id), Err(OpError::NoBuffers(OpTag::Read)));
    assert_eq!(ring.received(id), None);
    assert_eq!(ring.read_data(id), None);
    // A refused operation left nothing outstanding.
    assert_eq!(ring.in_flight(), 0);
    ring.timeout(id, Timeout::After(Duration::from_millis(1)))
        .unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (id, OpTag::Timeout, Ok(0)));
    signal_eventfd(&efd);
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (id, OpTag::Poll));
    assert!(c.result.is_ok());
}

#[test]
fn buffered_slots_run_out_before_bare_ones_and_come_back_when_freed() {
    let mut ring = mixed_ring(4, 2);
    let first = ring.insert().unwrap();
    let second = ring.insert().unwrap();
    let full = ring.insert().unwrap_err();
    assert!(full.buffered && full.slots == 2, "{full}");
    // Bare slots are still there, up to the total.
    let bare = [ring.insert_bare().unwrap(), ring.insert_bare().unwrap()];
    let full = ring.insert_bare().unwrap_err();
    assert!(!full.buffered && full.slots == 4, "{full}");
    // Freeing a bare slot does not give a buffer set.
    ring.remove(bare[0]).unwrap();
    assert!(ring.insert().unwrap_err().buffered);
    // Freeing a buffered slot does, and the new owner's buffers work.
    ring.remove(first).unwrap();
    let again = ring.insert().unwrap();
    let (a, b) = seqpacket_pair();
    ring.attach(again, b).unwrap();
    ring.recvmsg(again).unwrap();
    let sent = send_packet(&a, b"hello");
    assert_eq!(sent, 5);
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (again, OpTag::RecvMsg, Ok(5)));
    assert_eq!(ring.received(again), Some(&b"hello"[..]));
    assert!(ring.received(second).is_some_and(|d| d.is_empty()));
}

#[test]
fn limits_refuse_more_buffered_slots_than_slots() {
    let err = ring::Ring::new(ring::Limits {
        slots: 2,
        buffered_slots: 3,
        ..ring::Limits::small()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("buffered_slots"), "{err}");
}

/// `send(2)` of one packet on a connected SEQPACKET socket.
fn send_packet(fd: &OwnedFd, data: &[u8]) -> usize {
    std::os::unix::net::UnixDatagram::from(fd.try_clone().unwrap())
        .send(data)
        .unwrap()
}
