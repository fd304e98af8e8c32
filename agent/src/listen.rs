//! Listening sockets: bound by the agent (through holden's one listener binder, which
//! replaces a stale socket file and never a live one) or passed by systemd socket activation
//! (`LISTEN_FDS`).

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use holden::sys::socket::{self, BindError, Kind};

/// First fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Most fds accepted from systemd (one v1 socket, one v0.2 socket).
const LISTEN_FDS_MAX: usize = 2;

/// Mode of the socket files the agent creates: owner and group only.
pub const SOCKET_MODE: u32 = 0o660;

/// The two socket types the agent listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// holden wire v1: SOCK_SEQPACKET.
    V1,
    /// holden v0.2: SOCK_STREAM.
    V02,
}

impl Flavor {
    pub fn socket_kind(self) -> Kind {
        match self {
            Flavor::V1 => Kind::Seqpacket,
            Flavor::V02 => Kind::Stream,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::V1 => "v1",
            Flavor::V02 => "v0.2",
        }
    }
}

/// A listening socket. A socket file the agent created is removed by
/// [`Listener::remove_file`] on a clean exit, if it is still ours.
pub struct Listener {
    socket: socket::Listener,
    pub flavor: Flavor,
    pub description: String,
}

/// Why a listener could not be set up.
#[derive(Debug)]
pub struct ListenError {
    pub what: String,
    pub error: Option<std::io::Error>,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}: {}", self.what, e),
            None => f.write_str(&self.what),
        }
    }
}

fn fail(what: String, error: std::io::Error) -> ListenError {
    ListenError {
        what,
        error: Some(error),
    }
}

impl Listener {
    /// Binds `path`: removes a stale socket file, refuses when an agent is
    /// live there or the path is not a socket, creates it with mode 0660.
    pub fn bind(path: &Path, flavor: Flavor) -> Result<Listener, ListenError> {
        let shown = path.display();
        let name = flavor.name();
        let bound = socket::Listener::bind(
            path.as_os_str().as_bytes(),
            flavor.socket_kind(),
            SOCKET_MODE,
            None,
            crate::limits::LISTEN_BACKLOG,
        );
        let (listener, stale) = bound.map_err(|e| {
            let what = match &e {
                BindError::Live => format!(
                    "{name} socket {shown}: another process is listening there (is holden-agent \
                     already running?); refusing to start"
                ),
                BindError::Io("bind", error) => {
                    let hint = match error.raw_os_error() {
                        Some(libc::ENOENT) => {
                            " (does the directory exist? the tmpfiles.d entry creates /run/holden)"
                        }
                        Some(libc::EACCES) => " (may the agent's user write to the directory?)",
                        _ => "",
                    };
                    format!("{name} socket {shown}: bind: {error}{hint}")
                }
                other => format!("{name} socket {shown}: {other}"),
            };
            ListenError { what, error: None }
        })?;
        if stale {
            crate::log::notice!("{name} socket {shown}: removed a stale socket file");
        }
        Ok(Listener {
            socket: listener,
            flavor,
            description: format!("{name} socket {shown}"),
        })
    }

    /// The listening fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.fd.as_fd()
    }

    /// Removes the socket file if the agent created it and it is still the
    /// same file (a successor agent's socket is left alone).
    pub fn remove_file(&self) {
        self.socket.remove_file();
    }
}

/// Sockets passed by systemd: `LISTEN_PID` must be our pid; each fd must be
/// a listening AF_UNIX socket, SOCK_SEQPACKET (v1) or SOCK_STREAM (v0.2).
/// The variables are removed from the environment so that no child sees them.
pub fn from_systemd(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
) -> Result<Vec<Listener>, ListenError> {
    let (Some(pid), Some(count)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let parse = |v: &OsStr| v.to_str().and_then(|s| s.parse::<u64>().ok());
    if parse(pid) != Some(u64::from(std::process::id())) {
        // Meant for another process (e.g. our parent): not ours.
        return Ok(Vec::new());
    }
    let count = parse(count).ok_or_else(|| ListenError {
        what: format!("LISTEN_FDS={:?} is not a number", count.to_string_lossy()),
        error: None,
    })? as usize;
    if count > LISTEN_FDS_MAX {
        return Err(ListenError {
            what: format!(
                "systemd passed {count} sockets; the agent takes at most {LISTEN_FDS_MAX}"
            ),
            error: None,
        });
    }
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let fd = LISTEN_FDS_START + i as RawFd;
        let owned = holden::sys::fd::claim_inherited(fd)
            .map_err(|e| fail(format!("systemd socket fd {fd}: not open"), e))?;
        let flavor = check_activated(owned.as_fd(), fd)?;
        if listeners.iter().any(|l: &Listener| l.flavor == flavor) {
            return Err(ListenError {
                what: format!("systemd passed two {} sockets", flavor.name()),
                error: None,
            });
        }
        listeners.push(Listener {
            socket: socket::Listener::adopt(owned),
            flavor,
            description: format!("{} socket fd {fd} (systemd)", flavor.name()),
        });
    }
    Ok(listeners)
}

/// Checks a systemd-passed fd and makes it non-blocking and close-on-exec.
fn check_activated(owned: BorrowedFd<'_>, fd: RawFd) -> Result<Flavor, ListenError> {
    let what = |text: &str| format!("systemd socket fd {fd}: {text}");
    let kind = socket::listening_kind(owned).map_err(|e| fail(what("not a socket"), e))?;
    let flavor = match kind {
        Some(Kind::Seqpacket) => Flavor::V1,
        Some(Kind::Stream) => Flavor::V02,
        _ => {
            return Err(ListenError {
                what: what("not a listening AF_UNIX SOCK_SEQPACKET or SOCK_STREAM socket"),
                error: None,
            })
        }
    };
    holden::sys::fd::set_nonblock_cloexec(owned).map_err(|e| fail(what("fcntl"), e))?;
    Ok(flavor)
}
