//! The orchestrator's own signals, delivered through a signalfd watched on the ring.
//!
//! SIGTERM and SIGINT ask for a clean shutdown (a second one forces SIGKILL of everything);
//! SIGHUP reloads the configuration; SIGUSR2 re-execs the orchestrator (`holdenctl reexec`). SIGCHLD is not needed: every child's end is seen on its
//! pidfd. These signals are blocked in the calling thread (and so in threads it creates later);
//! children get an empty mask from the spawner. SIGPIPE is ignored so that a write to a dead
//! agent returns EPIPE.

use crate::sys::signal::{set_disposition, Disposition, SignalFd};
use std::io;

/// The signals read through the signalfd.
pub const HANDLED: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

/// Resets SIGCHLD to its default (an inherited SIG_IGN would auto-reap our children and hide
/// their exit status), ignores SIGPIPE, and blocks [`HANDLED`] into a signalfd.
pub fn install() -> io::Result<SignalFd> {
    set_disposition(libc::SIGCHLD, Disposition::Default)?;
    set_disposition(libc::SIGPIPE, Disposition::Ignore)?;
    SignalFd::block(&HANDLED)
}
