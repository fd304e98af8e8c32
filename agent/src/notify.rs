//! `sd_notify` without libsystemd: one datagram to `$NOTIFY_SOCKET`.
//!
//! The address is a filesystem path, or an abstract socket when it starts
//! with `@` (as systemd documents). Nothing is sent when the variable is not
//! set. Failures are returned for logging, never fatal.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

/// Name of the environment variable systemd sets for `Type=notify` units.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `message` (e.g. `READY=1`) to the socket named by `address`.
/// Returns `Ok(false)` when `address` is `None` (not under systemd).
pub fn notify(address: Option<&OsStr>, message: &[u8]) -> io::Result<bool> {
    let Some(address) = address else {
        return Ok(false);
    };
    let (addr, addr_len) = sockaddr(address.as_bytes())?;
    // SAFETY: a fresh datagram socket, closed below; sendto reads `message`
    // and `addr`, both valid for the given lengths.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sent = libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_un).cast(),
            addr_len,
        );
        let error = io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error);
        }
    }
    Ok(true)
}

/// Builds the `sockaddr_un` for a path or an `@abstract` name.
pub fn sockaddr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path_room = addr.sun_path.len();
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
    if name.is_empty() {
        return Err(invalid("socket address is empty"));
    }
    let abstract_name = name[0] == b'@';
    // An abstract name needs no terminator; a path needs its NUL.
    if name.len() + usize::from(!abstract_name) > path_room || name.contains(&0) {
        return Err(invalid("socket address is too long or contains NUL"));
    }
    for (slot, &byte) in addr.sun_path.iter_mut().zip(name) {
        *slot = byte as libc::c_char;
    }
    if abstract_name {
        addr.sun_path[0] = 0;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = base + name.len() + usize::from(!abstract_name);
    Ok((addr, len as libc::socklen_t))
}
