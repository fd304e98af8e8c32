//! Signals: dispositions, a signalfd for blocked signals.

use super::{check, owned};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The conventional names of Linux's standard signals (without the `SIG` prefix): the one
/// table for configuration, command lines and log lines. Real-time signals have no name here
/// and are shown by number.
pub const NAMES: [(&str, libc::c_int); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The name of a standard signal, without `SIG` (`TERM`).
pub fn name(signal: libc::c_int) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(_, n)| *n == signal)
        .map(|(name, _)| *name)
}

/// A standard signal by name: `SIGTERM` or `TERM`, any case.
pub fn by_name(name: &str) -> Option<libc::c_int> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, n)| *n)
}

/// What the process does on a signal that is not blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// `SIG_DFL`.
    Default,
    /// `SIG_IGN` (for SIGCHLD: children are reaped by the kernel at once).
    Ignore,
}

/// Counts the disposition changes made through [`set_disposition`]: a cached view of the
/// dispositions (the spawn `Launcher`'s) is stale when it moved. Nothing else in holden
/// changes a disposition (the `unsafe` that could is only in this module).
static DISPOSITION_CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`DISPOSITION_CHANGES`].
pub fn disposition_changes() -> u64 {
    DISPOSITION_CHANGES.load(std::sync::atomic::Ordering::Acquire)
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
    let result = check(unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    });
    // Counted after the change: a cache that read the count before it looks again next time,
    // one that read it after saw the change.
    DISPOSITION_CHANGES.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    result.map(|_| ())
}

/// A non-blocking, close-on-exec signalfd for a fixed set of signals.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread (and so in threads it creates later) and opens
    /// the signalfd that receives them. Call before starting threads.
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t on our stack.
        unsafe { libc::sigemptyset(&mut set) };
        for &signal in signals {
            // SAFETY: as above; an invalid number fails with EINVAL.
            check(unsafe { libc::sigaddset(&mut set, signal) })?;
        }
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd =
            owned(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
        Ok(SignalFd { fd })
    }

    /// The fd to watch for POLLIN.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads one pending signal, if any.
    pub fn read(&self) -> io::Result<Option<libc::c_int>> {
        read_signalfd(self.fd.as_fd())
    }

    /// The signalfd itself (to hand to a ring slot).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// Reads one pending signal from a non-blocking signalfd, if any.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<libc::c_int>> {
    const SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut buf = [0u8; SIZE];
    match super::fd::read(fd, &mut buf) {
        Ok(SIZE) => {
            // ssi_signo is the first field: a u32.
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            Ok(Some(signo as libc::c_int))
        }
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Starts a thread with every signal blocked (a helper thread must never take a signal meant
/// for the event loop's signalfd, nor be killed by one): the caller blocks them all while it
/// creates the thread, which inherits that mask, then restores its own.
pub fn spawn_thread_blocking_signals<F>(
    builder: std::thread::Builder,
    f: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets live on our stack; sigfillset and pthread_sigmask only write them.
    let rc = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old)
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let spawned = builder.spawn(f);
    // SAFETY: `old` was filled by the call above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned
}

/// Sends `signal` to the calling thread (tests of blocked signals).
pub fn raise_in_thread(signal: libc::c_int) {
    // SAFETY: signals the current thread; no memory is passed.
    unsafe { libc::pthread_kill(libc::pthread_self(), signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_map_both_ways() {
        assert_eq!(by_name("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(by_name(" term"), Some(libc::SIGTERM));
        assert_eq!(by_name("sigrtmin"), None);
        assert_eq!(name(libc::SIGKILL), Some("KILL"));
        assert_eq!(name(34), None);
        for (n, (name_a, a)) in NAMES.iter().enumerate() {
            assert!(NAMES[n + 1..]
                .iter()
                .all(|(name_b, b)| a != b && name_a != name_b));
        }
    }

    #[test]
    fn a_blocked_signal_arrives_on_the_fd() {
        // Only this thread blocks SIGURG; a thread-directed signal stays with it.
        std::thread::spawn(|| {
            let sfd = SignalFd::block(&[libc::SIGURG]).unwrap();
            assert_eq!(sfd.read().unwrap(), None);
            raise_in_thread(libc::SIGURG);
            assert_eq!(sfd.read().unwrap(), Some(libc::SIGURG));
            assert_eq!(sfd.read().unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
