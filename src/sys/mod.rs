//! The one FFI layer: every call into the kernel or libc that holden makes outside `ring/`.
//!
//! Everything above this module is safe Rust: `src/lib.rs` denies `unsafe_code` and only this
//! module allows it; the binaries and the agent forbid it. Each function here is a thin, typed
//! wrapper around one system call (or a few that belong together), returns `io::Result` with
//! the kernel's errno, retries `EINTR` where a retry is the only sensible answer, and
//! allocates nothing, so the event loops can call it on their hot paths.
//!
//! Submodules by what they touch:
//! - [`fd`]: descriptors and files (read, write, pipes, eventfd, stat, `/proc` reads, umask);
//! - [`socket`]: AF_UNIX sockets: addresses, the one listener binder, connect, accept,
//!   messages with SCM_RIGHTS, peer credentials;
//! - [`process`]: pidfds (`pidfd_open`, `pidfd_send_signal`, `waitid`, `PIDFD_GET_INFO`),
//!   ids, limits, `uname`;
//! - [`signal`]: dispositions, blocking into a signalfd, reading it;
//! - [`poll`]: `poll(2)` over a caller's fixed array (the agent's loop);
//! - [`user`]: group lookup;
//! - [`spawn`]: `clone3`/`clone` with a pidfd and everything the child does before `execve`
//!   (lint-enforced free of panics);
//! - [`errno`]: errno values and their text.

#![allow(unsafe_code)]

pub mod cgroup;
pub mod errno;
pub mod fd;
pub mod poll;
pub mod process;
pub mod signal;
pub mod socket;
pub mod spawn;
pub mod user;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `Err(last_os_error)` for a negative return value of a libc call.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `check` for calls that return `ssize_t`.
fn check_size(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Takes ownership of an fd a successful system call just returned.
fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the kernel just created this descriptor for us and nothing else refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Retries `call` while it fails with EINTR.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}
