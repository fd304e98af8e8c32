//! `poll(2)` over a caller's fixed array.

use super::check;
use std::io;

pub use libc::pollfd as PollFd;

/// Waits for events on `fds` for at most `timeout_ms` (-1: no limit); the number of entries
/// with events. EINTR is returned as `Ok(0)` (the caller re-checks its state).
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of `len` pollfd entries for the kernel to update.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
        Err(e) => Err(e),
    }
}
