//! Signal set-up: children auto-reaped, SIGPIPE ignored, termination signals
//! read from a signalfd by the event loop.
//!
//! SIGCHLD is ignored, so the kernel reaps every child as soon as it exits:
//! no zombie ever accumulates, however many processes the agent starts, and
//! the exit status becomes readable to the pidfd holder through
//! `PIDFD_GET_INFO`/`PIDFD_INFO_EXIT` (Linux 6.15+). The agent never waits for
//! its children itself: it is stateless.

use holden::sys::signal::{set_disposition, Disposition, SignalFd};
use std::io;

/// Signals that end the agent cleanly (read through the signalfd).
pub const TERMINATING: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Signals read through the signalfd and only logged.
pub const IGNORED: [libc::c_int; 1] = [libc::SIGHUP];

/// Ignores SIGCHLD (auto-reap) and SIGPIPE, and blocks [`TERMINATING`] and [`IGNORED`] into
/// a signalfd. Call before any thread is started (the mask is per thread and inherited).
pub fn install() -> io::Result<SignalFd> {
    set_disposition(libc::SIGCHLD, Disposition::Ignore)?;
    set_disposition(libc::SIGPIPE, Disposition::Ignore)?;
    let mut handled = [0; TERMINATING.len() + IGNORED.len()];
    handled[..TERMINATING.len()].copy_from_slice(&TERMINATING);
    handled[TERMINATING.len()..].copy_from_slice(&IGNORED);
    SignalFd::block(&handled)
}

/// Puts `/dev/null` on any of fds 0–2 that is closed, so that sockets and
/// pipes opened later never land there (and children inherit sane stdio).
pub fn ensure_standard_fds() {
    holden::sys::fd::ensure_standard_fds();
}
