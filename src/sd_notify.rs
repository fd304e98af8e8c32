//! systemd notification (`sd_notify(3)`) written by hand, for the orchestrator and the agent: one datagram per message to the
//! `AF_UNIX` socket named by `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
//!
//! Read once at start-up ([`Notifier::from_env`]); afterwards sending allocates nothing.
//! `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID` is unset or ours) gives the watchdog
//! interval; the orchestrator pings at half of it from a ring timeout.

use crate::sys::socket::{self, Kind, UnixAddr};
use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// The variable systemd sets for `Type=notify` units.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Longest notification message.
pub const MESSAGE_BYTES_MAX: usize = 512;

/// The notification socket, if systemd gave us one.
pub struct Notifier {
    socket: Option<(OwnedFd, UnixAddr)>,
    watchdog: Option<Duration>,
    /// The size of systemd's fd store (`FDSTORE`, set by systemd 254+ when the unit has
    /// `FileDescriptorStoreMax=`); 0: no store.
    fd_store: usize,
}

impl Notifier {
    /// A notifier that sends nothing (not started by systemd, or in tests).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            fd_store: 0,
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A malformed `NOTIFY_SOCKET`
    /// is an error (systemd expects READY=1 and would time out the unit).
    pub fn from_env() -> io::Result<Notifier> {
        let watchdog = watchdog_from(
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
        );
        let mut notifier = Notifier::to(std::env::var_os(NOTIFY_SOCKET_ENV).as_deref())?;
        notifier.watchdog = watchdog;
        notifier.fd_store = std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(notifier)
    }

    /// A notifier for the socket named `address` (the value of `NOTIFY_SOCKET`, which the
    /// caller may have taken out of the environment), without a watchdog.
    pub fn to(address: Option<&OsStr>) -> io::Result<Notifier> {
        let Some(path) = address else {
            return Ok(Notifier::disabled());
        };
        let addr = socket_address(path.as_bytes())?;
        let fd = socket::socket(Kind::Datagram, false)?;
        Ok(Notifier {
            socket: Some((fd, addr)),
            watchdog: None,
            fd_store: 0,
        })
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Sends one message (e.g. `READY=1`); errors are returned for the caller to log once.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        let Some((fd, addr)) = &self.socket else {
            return Ok(());
        };
        socket::send_to(fd.as_fd(), message, addr).map(|_| ())
    }

    /// The size of systemd's fd store (0: none, or no systemd).
    pub fn fd_store(&self) -> usize {
        if self.enabled() {
            self.fd_store
        } else {
            0
        }
    }

    /// Stores `fd` in systemd's fd store as `what` (when there is a store).
    pub fn store_fd(
        &self,
        what: crate::fd_store::Stored<'_>,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let (Some((socket, addr)), true) = (&self.socket, self.fd_store > 0) else {
            return Ok(());
        };
        let mut buf = [0u8; crate::fd_store::MESSAGE_LEN_MAX];
        let len = crate::fd_store::store_message(&mut buf, what)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        socket::send_to_with_fd(socket.as_fd(), &buf[..len], Some(fd), addr).map(|_| ())
    }

    /// Removes `what` from systemd's fd store.
    pub fn remove_fd(&self, what: crate::fd_store::Stored<'_>) -> io::Result<()> {
        if self.fd_store == 0 {
            return Ok(());
        }
        let mut buf = [0u8; crate::fd_store::MESSAGE_LEN_MAX];
        let len = crate::fd_store::remove_message(&mut buf, what)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        self.send(&buf[..len])
    }

    /// Sends `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC in µs, which systemd 253+
    /// wants with it), at the start of a reload; `READY=1` ends it.
    pub fn reloading(&self, monotonic_usec: u64) -> io::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let mut msg = Message {
            buf: [0; MESSAGE_BYTES_MAX],
            len: 0,
        };
        let _ = write!(msg, "RELOADING=1\nMONOTONIC_USEC={monotonic_usec}");
        self.send(&msg.buf[..msg.len])
    }

    /// Sends `STATUS=<text>` formatted without allocation.
    pub fn status(&self, args: fmt::Arguments<'_>) -> io::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let mut msg = Message {
            buf: [0; MESSAGE_BYTES_MAX],
            len: 0,
        };
        let _ = msg.write_str("STATUS=");
        let _ = msg.write_fmt(args);
        self.send(&msg.buf[..msg.len])
    }
}

struct Message {
    buf: [u8; MESSAGE_BYTES_MAX],
    len: usize,
}

impl fmt::Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(MESSAGE_BYTES_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn watchdog_from(usec: Option<&OsStr>, pid: Option<&OsStr>) -> Option<Duration> {
    if let Some(pid) = pid {
        let pid: i32 = std::str::from_utf8(pid.as_bytes()).ok()?.parse().ok()?;
        if pid != crate::sys::process::getpid() {
            return None;
        }
    }
    let usec: u64 = std::str::from_utf8(usec?.as_bytes()).ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The `NOTIFY_SOCKET` address: an absolute path, or an abstract name (`@...`).
fn socket_address(path: &[u8]) -> io::Result<UnixAddr> {
    if !path.starts_with(b"/") && !path.starts_with(b"@") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET: neither an absolute path nor an abstract name (@...)",
        ));
    }
    UnixAddr::new(path).map_err(|e| io::Error::new(e.kind(), format!("NOTIFY_SOCKET: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("holden-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let addr = socket_address(path.as_os_str().as_bytes()).unwrap();
        let fd = socket::socket(Kind::Datagram, false).unwrap();
        let n = Notifier {
            socket: Some((fd, addr)),
            watchdog: None,
            fd_store: 0,
        };
        n.send(b"READY=1").unwrap();
        n.status(format_args!("{} services running", 3)).unwrap();
        let mut buf = [0u8; 64];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STATUS=3 services running");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("holden-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
        )
        .unwrap();
        let addr = socket_address(format!("@{name}").as_bytes()).unwrap();
        let fd = socket::socket(Kind::Datagram, false).unwrap();
        let n = Notifier {
            socket: Some((fd, addr)),
            watchdog: None,
            fd_store: 0,
        };
        n.send(b"WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }

    #[test]
    fn rejects_bad_addresses_and_reads_watchdog() {
        assert!(socket_address(b"").is_err());
        assert!(socket_address(b"relative").is_err());
        assert!(socket_address(&[b'/'; 200]).is_err());
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_from(Some(OsStr::new("2000000")), None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(Some(OsStr::new("2000000")), Some(OsStr::new(&me))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(Some(OsStr::new("2000000")), Some(OsStr::new("1"))),
            None
        );
        assert_eq!(watchdog_from(Some(OsStr::new("x")), None), None);
        assert_eq!(watchdog_from(Some(OsStr::new("0")), None), None);
        assert_eq!(watchdog_from(None, None), None);
    }
}
