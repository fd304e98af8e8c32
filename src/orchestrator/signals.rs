//! The orchestrator's own signals, delivered through a signalfd watched on the ring.
//!
//! SIGTERM and SIGINT ask for a clean shutdown (a second one forces SIGKILL of everything);
//! SIGHUP is reserved for reload (logged and ignored until the control plane exists).
//! SIGCHLD is not needed: every child's end is seen on its pidfd. These signals are blocked in
//! the calling thread (and so in threads it creates later); children get an empty mask from the
//! spawner. SIGPIPE is ignored so that a write to a dead agent returns EPIPE.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The signals read through the signalfd.
pub const HANDLED: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A non-blocking signalfd for [`HANDLED`].
pub struct SignalFd {
    fd: OwnedFd,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

impl SignalFd {
    /// Blocks [`HANDLED`] in this thread, resets SIGCHLD to its default (an inherited SIG_IGN
    /// would auto-reap our children and hide their exit status), ignores SIGPIPE, and opens
    /// the signalfd.
    pub fn install() -> io::Result<SignalFd> {
        let set = handled_set();
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: installing SIG_DFL / SIG_IGN dispositions has no memory-safety requirement.
        unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: we own the fd just created.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd to watch for POLLIN.
    pub fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Reads one pending signal, if any.
    pub fn read(&self) -> io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: reads at most `size` bytes into `info`.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n == size as isize {
                return Ok(Some(info.ssi_signo as i32));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_arrives_on_the_fd() {
        // Only this thread blocks SIGHUP; a thread-directed signal stays with it.
        std::thread::spawn(|| {
            let sfd = SignalFd::install().unwrap();
            assert_eq!(sfd.read().unwrap(), None);
            // SAFETY: signals the current thread with a blocked signal.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(sfd.read().unwrap(), Some(libc::SIGHUP));
            assert_eq!(sfd.read().unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
