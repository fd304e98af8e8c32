//! Signal set-up: children auto-reaped, SIGPIPE ignored, termination signals
//! read from a signalfd by the event loop.
//!
//! SIGCHLD is ignored, so the kernel reaps every child as soon as it exits:
//! no zombie ever accumulates, however many processes the agent starts, and
//! the exit status becomes readable to the pidfd holder through
//! `PIDFD_GET_INFO`/`PIDFD_INFO_EXIT` (Linux 6.15+). The agent never waits for
//! its children itself: it is stateless.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Signals that end the agent cleanly (read through the signalfd).
pub const TERMINATING: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Signals read through the signalfd and only logged.
pub const IGNORED: [libc::c_int; 1] = [libc::SIGHUP];

/// The signalfd for [`TERMINATING`] and [`IGNORED`] (blocked in the process).
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Installs the dispositions and opens the signalfd. Call before any
    /// thread is started (the mask is per thread and inherited).
    pub fn install() -> io::Result<SignalFd> {
        ignore(libc::SIGCHLD)?;
        ignore(libc::SIGPIPE)?;
        // SAFETY: sigset_t is plain data initialised by sigemptyset; the
        // calls only read/write the set on our stack.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in TERMINATING.iter().chain(IGNORED.iter()) {
                libc::sigaddset(&mut set, *signal);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    pub fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = libc::read(
                self.raw(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            );
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                return Err(error);
            }
            if n as usize != size {
                return Ok(None);
            }
            Ok(Some(info.ssi_signo as i32))
        }
    }
}

fn ignore(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: installs SIG_IGN with an empty mask; `action` lives on our stack.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts `/dev/null` on any of fds 0–2 that is closed, so that sockets and
/// pipes opened later never land there (and children inherit sane stdio).
pub fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD probes an fd number; open/dup2 of a constant path
        // onto a closed standard fd.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) >= 0 {
                continue;
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 && null != fd {
                libc::dup2(null, fd);
                libc::close(null);
            }
        }
    }
}
