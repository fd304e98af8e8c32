//! Helpers shared by the ring tests: real fds from the kernel, a bounded wait loop.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ring::{Completion, Limits, Ring};

/// A generous bound so that a broken test fails instead of hanging; never a timing assertion.
pub const WAIT_ROUNDS_MAX: u32 = 500;
pub const WAIT_ROUND: Duration = Duration::from_millis(20);

pub fn ring(slots: u32) -> Ring {
    Ring::new(Limits {
        slots,
        buffered_slots: slots,
        ..Limits::small()
    })
    .expect("io_uring setup")
}

/// Waits for the next delivered completion (fails the test after WAIT_ROUNDS_MAX rounds).
pub fn next(ring: &mut Ring) -> Completion {
    for _ in 0..WAIT_ROUNDS_MAX {
        if let Some(c) = ring.next_completion() {
            return c;
        }
        ring.submit_and_wait(1, Some(WAIT_ROUND))
            .expect("submit_and_wait");
    }
    panic!("no completion within {WAIT_ROUNDS_MAX} rounds");
}

/// Submits and collects what is ready without waiting long (for "not yet" checks).
pub fn poll_now(ring: &mut Ring) -> Option<Completion> {
    ring.submit_and_wait(0, Some(Duration::from_millis(1)))
        .expect("submit");
    ring.next_completion()
}

pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn signal_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Number of open fds of this process.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
