//! Zero heap allocations after construction, counted by a global allocator, across >= 100,000
//! submit/complete cycles of every operation kind; and capacity without growth.
//!
//! The counter is per thread, so the test harness's own threads cannot disturb it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use ring::{Errno, Limits, OpError, OpTag, Ring, Timeout};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local
// (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

#[test]
fn the_counter_counts() {
    let before = allocations();
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(allocations(), before + 1);
}

const CYCLES: u32 = 100_000;

/// The fd-count check needs the process's fd table to itself among these tests.
static FD_TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for exactly one completion without allocating (asserts the op and slot).
fn one(ring: &mut Ring, op: OpTag) -> Result<u32, Errno> {
    for _ in 0..WAIT_ROUNDS_MAX {
        if let Some(c) = ring.next_completion() {
            assert_eq!(c.op, op);
            return c.result;
        }
        ring.submit_and_wait(1, Some(WAIT_ROUND))
            .expect("submit_and_wait");
    }
    panic!("no completion");
}

fn listener(name: &[u8]) -> (OwnedFd, libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: plain socket calls on fresh fds and a locally built abstract address.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, byte) in name.iter().enumerate() {
            addr.sun_path[i + 1] = *byte as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 64), 0);
        (OwnedFd::from_raw_fd(fd), addr, len)
    }
}

/// Connects without allocating; the fd is closed when dropped.
fn connect(addr: &libc::sockaddr_un, len: libc::socklen_t) -> OwnedFd {
    // SAFETY: socket/connect on a fresh fd.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        assert_eq!(
            libc::connect(fd, (addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn no_allocation_after_construction_across_every_op_kind() {
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let fd_count_before = open_fd_count();
    let name = format!("holden-ring-noalloc-{}", std::process::id());
    let (listen, addr, addr_len) = listener(name.as_bytes());
    let (a, b) = seqpacket_pair();
    let ready = eventfd();
    signal_eventfd(&ready); // stays readable: polls complete at once
    let idle = eventfd(); // never signalled: polls only end by cancel
    let passed = eventfd();
    let mut ring = Ring::new(Limits {
        slots: 16,
        buffered_slots: 16,
        ..Limits::small()
    })
    .unwrap();
    // The fds go back and forth between the test and fresh slots: attach, detach, attach ...
    let mut fds = [Some(ready), Some(idle), Some(a), Some(b), Some(listen)];
    const READY: usize = 0;
    const IDLE: usize = 1;
    const A: usize = 2;
    const B: usize = 3;
    const LISTEN: usize = 4;

    let start = allocations();
    for cycle in 0..CYCLES {
        let id = ring.insert().unwrap();
        // POLL_ADD
        ring.attach(id, fds[READY].take().unwrap()).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        assert!(one(&mut ring, OpTag::Poll).unwrap() & libc::POLLIN as u32 != 0);
        fds[READY] = Some(ring.detach(id).unwrap());
        // TIMEOUT (relative 0 and absolute now), on a slot without an fd
        let when = if cycle % 2 == 0 {
            Timeout::After(Duration::ZERO)
        } else {
            Timeout::At(ring::now_ns())
        };
        ring.timeout(id, when).unwrap();
        assert_eq!(one(&mut ring, OpTag::Timeout), Ok(0));
        // SENDMSG with an fd + RECVMSG, each on a slot of its own
        let (tx, rx) = (ring.insert().unwrap(), ring.insert().unwrap());
        ring.attach(tx, fds[A].take().unwrap()).unwrap();
        ring.attach(rx, fds[B].take().unwrap()).unwrap();
        ring.recvmsg(rx).unwrap();
        ring.sendmsg(tx, b"frame", Some(passed.as_fd())).unwrap();
        let mut results = [None, None];
        for _ in 0..2 {
            for _ in 0..WAIT_ROUNDS_MAX {
                if let Some(c) = ring.next_completion() {
                    assert_eq!(c.slot, if c.op == OpTag::RecvMsg { rx } else { tx });
                    results[(c.op == OpTag::RecvMsg) as usize] = Some(c.result);
                    break;
                }
                ring.submit_and_wait(1, Some(WAIT_ROUND)).unwrap();
            }
        }
        assert_eq!(results, [Some(Ok(5)), Some(Ok(5))]);
        assert_eq!(ring.received(rx), Some(&b"frame"[..]));
        let received = ring.take_fds(rx);
        assert_eq!(received.fds.len(), 1);
        drop(received);
        fds[A] = Some(ring.detach(tx).unwrap());
        fds[B] = Some(ring.detach(rx).unwrap());
        ring.remove(tx).unwrap();
        ring.remove(rx).unwrap();
        // ACCEPT
        let listening = ring.insert().unwrap();
        ring.attach(listening, fds[LISTEN].take().unwrap()).unwrap();
        ring.accept(listening).unwrap();
        let client = connect(&addr, addr_len);
        assert!(one(&mut ring, OpTag::Accept).is_ok());
        let conn = ring.take_accepted(listening).unwrap();
        fds[LISTEN] = Some(ring.detach(listening).unwrap());
        ring.remove(listening).unwrap();
        // READ on the accepted connection, owned by its slot
        let reader = ring.insert().unwrap();
        ring.attach(reader, conn).unwrap();
        // SAFETY: send from a static buffer.
        let sent = unsafe { libc::send(client.as_raw_fd(), b"r".as_ptr().cast(), 1, 0) };
        assert_eq!(sent, 1);
        ring.read(reader).unwrap();
        assert_eq!(one(&mut ring, OpTag::Read), Ok(1));
        assert_eq!(ring.read_data(reader), Some(&b"r"[..]));
        // REMOVE with a READ outstanding: the connection closes when its cancel completed
        ring.read(reader).unwrap();
        ring.remove(reader).unwrap();
        drop(client);
        // CANCEL of an outstanding poll
        ring.attach(id, fds[IDLE].take().unwrap()).unwrap();
        ring.poll_add(id, libc::POLLIN as u32).unwrap();
        ring.cancel(id).unwrap();
        assert_eq!(ring.detach(id).err(), Some(OpError::Busy(OpTag::Poll)));
        assert_eq!(one(&mut ring, OpTag::Poll), Err(Errno::CANCELED));
        fds[IDLE] = Some(ring.detach(id).unwrap());
        // REMOVE with an outstanding timeout (cancel inside, completion swallowed)
        ring.timeout(id, Timeout::After(Duration::from_secs(3600)))
            .unwrap();
        ring.remove(id).unwrap();
        assert_eq!(allocations(), start, "allocation in cycle {cycle}");
    }
    for _ in 0..WAIT_ROUNDS_MAX {
        if ring.in_flight() == 0 {
            break;
        }
        ring.submit_and_wait(1, Some(WAIT_ROUND)).unwrap();
        assert_eq!(ring.next_completion(), None);
    }
    assert_eq!(allocations(), start);
    assert_eq!(ring.in_flight(), 0);
    assert!(ring.is_empty());
    drop(ring);
    drop((fds, passed));
    assert_eq!(open_fd_count(), fd_count_before, "fds leaked");
}

#[test]
fn capacity_fills_exactly_and_never_grows() {
    const SLOTS: u32 = 256;
    let _guard = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = Ring::new(Limits {
        slots: SLOTS,
        buffered_slots: SLOTS / 2,
        ..Limits::small()
    })
    .unwrap();
    let mut ids = [None; SLOTS as usize];
    let start = allocations();
    for round in 0..3 {
        // Half buffered, half bare, interleaved.
        for (i, slot) in ids.iter_mut().enumerate() {
            let id = match i % 2 {
                0 => ring.insert(),
                _ => ring.insert_bare(),
            };
            *slot = Some(id.expect("free slot"));
        }
        assert_eq!(ring.len(), SLOTS as usize);
        let full = ring.insert_bare().unwrap_err();
        assert_eq!(full.slots, SLOTS);
        assert_eq!(ring.insert().unwrap_err().slots, SLOTS);
        assert_eq!(
            allocations(),
            start,
            "allocation while filling, round {round}"
        );
        for slot in ids.iter_mut() {
            ring.remove(slot.take().unwrap()).unwrap();
        }
        assert!(ring.is_empty());
    }
    assert_eq!(allocations(), start);
}
