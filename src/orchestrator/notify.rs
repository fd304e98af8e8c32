//! The services' sd_notify socket: one `AF_UNIX` datagram socket in the runtime directory
//! (`DIR/notify.sock`), named to `type = "notify"` services in `NOTIFY_SOCKET`. The kernel
//! attaches each sender's pid (`SO_PASSCRED`); a datagram counts only when that pid is the
//! live process of a service, and is dropped and counted otherwise. The socket's fd sits on a
//! bare ring slot polled for `POLLIN`; a completion reads at most [`READS_PER_WAKE_MAX`]
//! datagrams, so a flood costs the loop a bounded amount of work per wake-up and the rest
//! waits in the socket's queue (whose overflow the kernel drops). Decoding is
//! [`crate::service_notify`]'s.

use super::spec::ServiceDef;
use crate::service_notify::{self, Message};
use crate::sys::socket::{self, Kind, Listener, SocketFile};
use ring::{Ring, SlotId};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Most datagrams read per wake-up.
pub(crate) const READS_PER_WAKE_MAX: usize = 64;
/// Datagrams kept while their sender's spawn is still being reported (a service that says
/// READY=1 at once can be faster than its spawner thread's report of its pid).
pub(crate) const HELD_MAX: usize = 32;

/// A datagram decoded and kept, with its sender.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub sender: i32,
    pub message: Owned,
}

/// [`Message`] with its status text copied.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Owned {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: Option<service_notify::Watchdog>,
    pub status: Option<arrayvec::ArrayString<{ service_notify::STATUS_BYTES_MAX }>>,
    pub errno: Option<i32>,
    pub main_pid: Option<i32>,
    pub extend_timeout_usec: Option<u64>,
    pub had_fds: bool,
    /// A newline and no assignment: s6's readiness, what a service writes on its `notify_fd`.
    pub newline: bool,
}

impl Owned {
    pub(crate) fn of(m: &Message<'_>, had_fds: bool) -> Owned {
        Owned {
            ready: m.ready,
            stopping: m.stopping,
            watchdog: m.watchdog,
            status: m.status.and_then(|s| arrayvec::ArrayString::from(s).ok()),
            errno: m.errno,
            main_pid: m.main_pid,
            extend_timeout_usec: m.extend_timeout_usec,
            had_fds,
            newline: false,
        }
    }

    /// A local datagram, decoded; also whether it is s6's readiness newline.
    pub(crate) fn of_datagram(bytes: &[u8], had_fds: bool) -> Owned {
        Owned {
            newline: bytes.contains(&b'\n') && !bytes.contains(&b'='),
            ..Owned::of(&service_notify::decode(bytes), had_fds)
        }
    }
}
/// The socket's name in the runtime directory.
pub(crate) const SOCKET_NAME: &str = "notify.sock";

/// The variables a `type = "notify"` service gets: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` with
/// a watchdog (as systemd sets them; `WATCHDOG_PID`, the child's own pid, is added by the
/// child itself: `ExecEnv::watchdog_pid`). A local service's socket is ours
/// (`socket`, in the runtime directory); a QM service's is the agent's, which the agent names
/// itself (`StartFlags::NOTIFY`).
pub(crate) fn service_env(def: &mut ServiceDef, socket: Option<&Path>) {
    use crate::supervise::{Kind, Partition};
    def.env
        .retain(|e| !e.starts_with(b"NOTIFY_SOCKET=") && !e.starts_with(b"WATCHDOG_USEC="));
    let readiness = def.policy.readiness;
    if readiness.kind != Kind::Notify {
        return;
    }
    match (def.policy.partition, socket) {
        (Partition::Local, Some(socket)) => {
            let mut entry = b"NOTIFY_SOCKET=".to_vec();
            entry.extend_from_slice(socket.as_os_str().as_bytes());
            def.env.push(entry);
        }
        (Partition::Local, None) => return,
        (Partition::Qm, _) => {}
    }
    if !readiness.watchdog.is_zero() {
        def.env
            .push(format!("WATCHDOG_USEC={}", readiness.watchdog.as_micros()).into_bytes());
    }
}

/// The socket and its ring slot.
pub(crate) struct NotifySocket {
    slot: SlotId,
    file: Option<SocketFile>,
    buf: Box<[u8]>,
}

/// One datagram read: who sent it (pid in our namespace) and how long it is.
pub(crate) struct Datagram {
    pub sender: Option<i32>,
    pub len: usize,
    /// It carried fds (refused and closed: a service's fd store is not kept here).
    pub had_fds: bool,
}

impl NotifySocket {
    /// Binds `DIR/notify.sock` (mode 0666: services under any uid may send; what they send
    /// counts only for their own service) and polls it on `slot`. After a re-exec `kept` is
    /// the previous instance's socket: datagrams sent during the exec wait in it.
    pub(crate) fn bind(
        runtime_dir: &Path,
        ring: &mut Ring,
        slot: SlotId,
        kept: Option<OwnedFd>,
    ) -> Result<NotifySocket, String> {
        let path = runtime_dir.join(SOCKET_NAME);
        let bytes = path.as_os_str().as_bytes();
        let listener = match kept.map(|fd| Listener::inherited(fd, bytes)) {
            Some(Ok(listener)) => listener,
            _ => {
                Listener::bind(bytes, Kind::Datagram, 0o666, None, 0)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .0
            }
        };
        let (fd, file) = listener.into_parts();
        socket::set_pass_credentials(fd.as_fd()).map_err(|e| format!("SO_PASSCRED: {e}"))?;
        ring.attach(slot, fd)
            .and_then(|()| ring.poll_add(slot, libc::POLLIN as u32))
            .map_err(|e| format!("ring: {e}"))?;
        Ok(NotifySocket {
            slot,
            file,
            buf: vec![0u8; service_notify::DATAGRAM_BYTES_MAX].into_boxed_slice(),
        })
    }

    /// The next waiting datagram, `None` when none waits.
    pub(crate) fn read(&mut self, ring: &Ring) -> Option<Datagram> {
        let fd = ring.fd(self.slot)?;
        let got = socket::recv_with_fds(fd, &mut self.buf, true, true).ok()??;
        Some(Datagram {
            sender: got.sender_pid,
            len: got.len,
            had_fds: !got.fds.is_empty() || got.fds_truncated,
        })
    }

    /// The datagram just read.
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }

    /// A socket connected to this one, for services' `notify_fd` (blocking: the service's
    /// write waits while the queue is full rather than fail).
    pub(crate) fn connected_socket(&self, runtime_dir: &Path) -> std::io::Result<OwnedFd> {
        let path = runtime_dir.join(SOCKET_NAME);
        let addr = socket::UnixAddr::new(path.as_os_str().as_bytes())?;
        socket::connect_new(&addr, Kind::Datagram, false)
    }

    /// Polls for the next datagrams.
    pub(crate) fn rearm(&self, ring: &mut Ring) {
        let _ = ring.poll_add(self.slot, libc::POLLIN as u32);
    }

    /// The socket (a re-exec keeps it).
    pub(crate) fn fd<'r>(&self, ring: &'r Ring) -> Option<BorrowedFd<'r>> {
        ring.fd(self.slot)
    }

    /// At exit: the socket file goes (if it is still ours).
    pub(crate) fn close(&mut self) {
        if let Some(file) = self.file.take() {
            file.remove();
        }
    }
}
