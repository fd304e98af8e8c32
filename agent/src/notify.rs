//! The agent's notify socket (wire 1.2): one `AF_UNIX` datagram socket that started
//! processes of `type = "notify"` services (`StartFlags::NOTIFY`) find in `NOTIFY_SOCKET`.
//! Each datagram goes out unparsed as a `Notify` frame, with the sender's pid as the kernel
//! attested it (`SO_PASSCRED`), to every v1 connection that spoke minor 2 or higher. The
//! agent keeps no state about the senders: the orchestrator, which knows which QM pid is
//! which service's, decides.
//!
//! Bounded: at most [`READS_PER_WAKE_MAX`] datagrams per wake-up (the rest wait in the
//! socket's queue, whose overflow the kernel refuses to the sender), and at most
//! [`FORWARD_PER_SEC`] a second after a burst of [`FORWARD_BURST`]: beyond that a datagram is
//! read and dropped, so that a flooding process neither blocks the others' `sd_notify` nor
//! costs the orchestrator more than a fixed rate. Dropped: over the rate, no sender pid (a
//! process outside the agent's PID namespace), fds passed along (closed), longer than
//! `NOTIFY_TEXT_LEN_MAX`, or a NUL byte. Drops are counted and said at most once a second.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use holden::rate::TokenBucket;
use holden::sys::socket::{self, BindError, Kind};
use holden::wire::v1;

use crate::log::{notice, warning};

/// Most datagrams read per wake-up.
pub const READS_PER_WAKE_MAX: usize = 64;
/// Most datagrams forwarded per second, after a burst of [`FORWARD_BURST`]. Half what
/// holden-orchestrator takes from one agent (`holden::link::NOTIFY_PER_SEC`).
pub const FORWARD_PER_SEC: u64 = 512;
pub const FORWARD_BURST: u64 = 64;
/// Mode of the socket file: processes under any uid in QM may send (what one sends counts
/// only for its own service, by its pid).
const SOCKET_MODE: u32 = 0o666;

/// The socket file's name beside the v1 socket when `--notify-socket` is not given.
pub const DEFAULT_NAME: &str = "qm_notify.sock";

/// The socket, its name for `NOTIFY_SOCKET`, and the drop counters.
pub struct NotifySocket {
    socket: socket::Listener,
    path: PathBuf,
    /// `NOTIFY_SOCKET=PATH`, as the children get it.
    env_entry: Vec<u8>,
    budget: TokenBucket,
    started: Instant,
    dropped: u64,
    dropped_said: u64,
    said_at: Option<Instant>,
}

/// What became of one datagram read.
pub enum Datagram<'a> {
    /// Forward this frame.
    Forward(&'a [u8]),
    /// Dropped (counted).
    Dropped,
}

impl NotifySocket {
    /// Binds `path` (a stale socket file is replaced, a live one refused).
    pub fn bind(path: &Path) -> Result<NotifySocket, String> {
        let shown = path.display();
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let (listener, stale) = socket::Listener::bind(bytes, Kind::Datagram, SOCKET_MODE, None, 0)
            .map_err(|e| match e {
                BindError::Live => format!(
                    "notify socket {shown}: another process is bound there (is holden-agent \
                     already running?)"
                ),
                other => format!("notify socket {shown}: {other}"),
            })?;
        socket::set_pass_credentials(listener.fd.as_fd())
            .map_err(|e| format!("notify socket {shown}: SO_PASSCRED: {e}"))?;
        if stale {
            notice!("notify socket {shown}: removed a stale socket file");
        }
        let mut env_entry = b"NOTIFY_SOCKET=".to_vec();
        env_entry.extend_from_slice(bytes);
        let started = Instant::now();
        Ok(NotifySocket {
            socket: listener,
            path: path.to_path_buf(),
            env_entry,
            budget: TokenBucket::new(FORWARD_PER_SEC, FORWARD_BURST, 0),
            started,
            dropped: 0,
            dropped_said: 0,
            said_at: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The child's `NOTIFY_SOCKET=PATH` entry.
    pub fn env_entry(&self) -> &[u8] {
        &self.env_entry
    }

    /// Reads the next datagram into `recv` and, if it is to be forwarded, encodes its
    /// `Notify` into `frame`. `None`: nothing waits.
    pub fn next<'f>(&mut self, recv: &mut [u8], frame: &'f mut [u8]) -> Option<Datagram<'f>> {
        let len = v1::NOTIFY_TEXT_LEN_MAX.min(recv.len());
        let buf = &mut recv[..len];
        let got = match socket::recv_with_fds(self.socket.fd.as_fd(), buf, true, true) {
            Ok(Some(got)) => got,
            Ok(None) => return None,
            Err(error) => {
                warning!("notify socket {}: recvmsg: {error}", self.path.display());
                return None;
            }
        };
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let sender = got.sender_pid.filter(|&p| p > 0);
        let clean = !got.truncated && got.fds.is_empty() && !got.fds_truncated;
        let forwarded = match sender {
            Some(pid) if clean && self.budget.take(now_ns) => {
                v1::encode_notify(frame, pid, &buf[..got.len]).ok()
            }
            _ => None,
        };
        // Fds that came along are closed here (dropped with `got`).
        drop(got);
        match forwarded {
            Some(len) => Some(Datagram::Forward(&frame[..len])),
            None => {
                self.dropped += 1;
                Some(Datagram::Dropped)
            }
        }
    }

    /// Says how many were dropped since the last time, at most once a second.
    pub fn say_drops(&mut self) {
        if self.dropped == self.dropped_said {
            return;
        }
        let now = Instant::now();
        if self
            .said_at
            .is_some_and(|t| now.duration_since(t).as_secs() < 1)
        {
            return;
        }
        warning!(
            "notify socket: dropped {} datagrams (over {FORWARD_PER_SEC}/s, without a sender \
             in our PID namespace, with fds, too long or with a NUL; {} in all)",
            self.dropped - self.dropped_said,
            self.dropped
        );
        self.dropped_said = self.dropped;
        self.said_at = Some(now);
    }

    /// Removes the socket file if it is still ours (clean exit).
    pub fn remove_file(&self) {
        self.socket.remove_file();
    }
}
