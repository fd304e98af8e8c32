//! Error types. Every message says what failed and, where there is one, what to do.

use std::fmt;

use crate::OpTag;

/// A raw `errno` value (from a completion's negative result or a failed system call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The operation was cancelled (by [`crate::Ring::cancel`] or [`crate::Ring::remove`]).
    pub const CANCELED: Errno = Errno(libc::ECANCELED);
    /// The operation was interrupted; re-arm it.
    pub const INTR: Errno = Errno(libc::EINTR);

    pub(crate) fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    pub(crate) fn from_io(error: &std::io::Error) -> Errno {
        Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display only runs on error paths; io::Error's message lookup may allocate there.
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// Every slot is in use (or still draining the completions of a removed owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// The capacity that ran out: [`crate::Limits::slots`], or
    /// [`crate::Limits::buffered_slots`] when `buffered`.
    pub slots: u32,
    /// A buffered slot was asked for and every buffer set is taken.
    pub buffered: bool,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, limit) = match self.buffered {
            true => ("buffered slots", "buffered_slots"),
            false => ("slots", "slots"),
        };
        write!(
            f,
            "ring: all {} {what} are in use (raise Limits::{limit} or remove finished slots)",
            self.slots
        )
    }
}

impl std::error::Error for Full {}

/// Why an operation could not be queued. Nothing was queued when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The slot id is stale (the slot was removed, maybe reused) or was never valid.
    Stale,
    /// An operation of this kind is already outstanding on this slot (at most one per tag);
    /// from [`crate::Ring::detach`]: this operation still names the slot's fd.
    Busy(OpTag),
    /// The slot was removed and is waiting for its last completions.
    Removed,
    /// `sendmsg` data longer than [`crate::Limits::send_len`].
    TooLong {
        /// Bytes the caller asked to send.
        len: usize,
        /// The slot's send buffer size.
        send_len: u32,
    },
    /// The submission queue was full and submitting it to the kernel failed.
    Submit(Errno),
    /// Duplicating the fd to pass (so that it stays open until the kernel sent it) failed.
    DupFd(Errno),
    /// RECVMSG, SENDMSG or READ on a bare slot ([`crate::Ring::insert_bare`]), which owns no
    /// buffers.
    NoBuffers(OpTag),
    /// An operation on a file, or [`crate::Ring::detach`], on a slot without an attached fd
    /// ([`crate::Ring::attach`]).
    NoFd,
    /// [`crate::Ring::attach`] on a slot that already owns an fd (a slot owns at most one).
    FdAttached,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Stale => write!(f, "ring: stale slot id (slot was removed)"),
            OpError::Busy(tag) => {
                write!(
                    f,
                    "ring: a {tag:?} operation is already outstanding on this slot"
                )
            }
            OpError::Removed => write!(f, "ring: slot was removed and is draining"),
            OpError::TooLong { len, send_len } => {
                write!(
                    f,
                    "ring: sendmsg of {len} bytes exceeds the slot's {send_len}-byte send buffer"
                )
            }
            OpError::Submit(e) => write!(f, "ring: io_uring_enter (submit) failed: {e}"),
            OpError::DupFd(e) => write!(f, "ring: sendmsg: dup of the fd to pass failed: {e}"),
            OpError::NoBuffers(tag) => {
                write!(f, "ring: {tag:?} needs a buffered slot (this one is bare)")
            }
            OpError::NoFd => write!(f, "ring: the slot has no fd attached (Ring::attach)"),
            OpError::FdAttached => write!(
                f,
                "ring: the slot already owns an fd (detach it first, or use another slot)"
            ),
        }
    }
}

impl std::error::Error for OpError {}

/// `io_uring_enter` failed in a way the ring could not absorb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterError {
    /// The system call failed (not EINTR, EBUSY, EAGAIN or ETIME, which are handled inside).
    Enter(Errno),
    /// The kernel dropped completions (the CQ overflow counter rose). Some operation will never
    /// complete: the ring's bookkeeping can no longer be trusted; rebuild the event loop.
    CqOverflow {
        /// The kernel's overflow counter.
        dropped: u32,
    },
}

impl fmt::Display for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnterError::Enter(e) => write!(f, "ring: io_uring_enter failed: {e}"),
            EnterError::CqOverflow { dropped } => write!(
                f,
                "ring: the kernel dropped {dropped} completions (CQ overflow); this is a bug in \
                 the CQ sizing, restart the event loop"
            ),
        }
    }
}

impl std::error::Error for EnterError {}

/// Why [`crate::Ring::new`] failed, with the cause and the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// A limit is out of range; the message names it.
    Limits(&'static str),
    /// `io_uring_setup` returned EPERM and `kernel.io_uring_disabled` is 1 or 2.
    Disabled {
        /// Value of `/proc/sys/kernel/io_uring_disabled`.
        sysctl: u32,
        /// Value of `/proc/sys/kernel/io_uring_group` (-1: no group), if readable.
        group: Option<i64>,
    },
    /// `io_uring_setup` returned EPERM while the sysctl allows io_uring: most likely a seccomp
    /// filter (container runtime default profile) or an LSM denies it.
    NotPermitted,
    /// `io_uring_setup` returned ENOSYS: kernel built without io_uring, or a seccomp filter
    /// answering ENOSYS.
    NotImplemented,
    /// ENOMEM: on kernels before 5.12 the ring counts against `RLIMIT_MEMLOCK`.
    NoMemory,
    /// Any other failure of `io_uring_setup` or of probing.
    Setup(Errno),
    /// The kernel lacks an opcode holden needs (name as in `IORING_OP_*`).
    MissingOpcode(&'static str),
    /// The kernel lacks a ring feature holden needs (name, and the kernel that added it).
    MissingFeature(&'static str),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Limits(what) => write!(f, "ring: invalid limits: {what}"),
            SetupError::Disabled { sysctl, group } => {
                write!(f, "ring: io_uring_setup: EPERM: io_uring is disabled by sysctl kernel.io_uring_disabled={sysctl}")?;
                match (sysctl, group) {
                    (1, Some(g)) if *g >= 0 => write!(
                        f,
                        " (only members of group {g} (kernel.io_uring_group) may use it: run \
                         holden as root or in that group, or set kernel.io_uring_disabled=0)"
                    ),
                    _ => write!(
                        f,
                        " (set kernel.io_uring_disabled=0, e.g. in /etc/sysctl.d/)"
                    ),
                }
            }
            SetupError::NotPermitted => write!(
                f,
                "ring: io_uring_setup: EPERM although kernel.io_uring_disabled=0: a seccomp filter \
                 or LSM policy blocks io_uring (in a container, allow io_uring_setup, \
                 io_uring_enter and io_uring_register in the seccomp profile)"
            ),
            SetupError::NotImplemented => write!(
                f,
                "ring: io_uring_setup: ENOSYS: the kernel has no io_uring (CONFIG_IO_URING) or a \
                 seccomp filter hides it (allow io_uring_setup/enter/register)"
            ),
            SetupError::NoMemory => write!(
                f,
                "ring: io_uring_setup: ENOMEM: on kernels before 5.12 rings count against \
                 RLIMIT_MEMLOCK: raise it (LimitMEMLOCK= in the unit) or use fewer slots"
            ),
            SetupError::Setup(e) => write!(f, "ring: io_uring_setup failed: {e}"),
            SetupError::MissingOpcode(name) => write!(
                f,
                "ring: the kernel does not support IORING_OP_{name} (probe): holden needs \
                 Linux 5.11 or newer"
            ),
            SetupError::MissingFeature(name) => {
                write!(
                    f,
                    "ring: the kernel lacks io_uring feature {name}: upgrade the kernel"
                )
            }
        }
    }
}

impl std::error::Error for SetupError {}
