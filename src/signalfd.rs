//! Signals as events: block them in the calling thread and read them from a signalfd that an
//! event loop (the orchestrator's ring, the agent's poll) watches for POLLIN. Also the one
//! place that sets a signal's disposition.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec signalfd for a fixed set of signals.
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread (and so in threads it creates later) and opens
    /// the signalfd that receives them. Call before starting threads.
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t on our stack.
        unsafe {
            libc::sigemptyset(&mut set);
            for &signal in signals {
                if libc::sigaddset(&mut set, signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
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
    pub fn read(&self) -> io::Result<Option<libc::c_int>> {
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
                return Ok(Some(info.ssi_signo as libc::c_int));
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

/// What the process does on a signal that is not blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// `SIG_DFL`.
    Default,
    /// `SIG_IGN` (for SIGCHLD: children are reaped by the kernel at once).
    Ignore,
}

/// Sets the disposition of `signal` (with an empty handler mask).
pub fn set_disposition(signal: libc::c_int, disposition: Disposition) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is valid before the fields are set.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = match disposition {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
    };
    // SAFETY: `action` lives on our stack; installing SIG_DFL/SIG_IGN runs no code of ours.
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_arrives_on_the_fd() {
        // Only this thread blocks SIGURG; a thread-directed signal stays with it.
        std::thread::spawn(|| {
            let sfd = SignalFd::block(&[libc::SIGURG]).unwrap();
            assert_eq!(sfd.read().unwrap(), None);
            // SAFETY: signals the current thread with a blocked signal.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGURG) };
            assert_eq!(sfd.read().unwrap(), Some(libc::SIGURG));
            assert_eq!(sfd.read().unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
