//! Listening sockets: bound by the agent (with stale-socket handling) or
//! passed by systemd socket activation (`LISTEN_FDS`).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::limits::LISTEN_BACKLOG;
use holden::sockaddr::unix as sockaddr;

/// First fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Most fds accepted from systemd (one v1 socket, one legacy socket).
const LISTEN_FDS_MAX: usize = 2;

/// Mode of the socket files the agent creates: owner and group only.
pub const SOCKET_MODE: u32 = 0o660;

/// The two socket types the agent listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// holden wire v1: SOCK_SEQPACKET.
    V1,
    /// holden v0.2: SOCK_STREAM.
    Legacy,
}

impl Flavor {
    pub fn socket_type(self) -> libc::c_int {
        match self {
            Flavor::V1 => libc::SOCK_SEQPACKET,
            Flavor::Legacy => libc::SOCK_STREAM,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::V1 => "v1",
            Flavor::Legacy => "v0.2",
        }
    }
}

/// A listening socket. A socket file the agent created is removed by
/// [`Listener::remove_file`] on a clean exit, if it is still ours.
pub struct Listener {
    pub fd: OwnedFd,
    pub flavor: Flavor,
    /// Path, device and inode of the socket file we bound (None when systemd
    /// passed the socket: the file is systemd's).
    owned_file: Option<(PathBuf, u64, u64)>,
    pub description: String,
}

/// Why a listener could not be set up.
#[derive(Debug)]
pub struct ListenError {
    pub what: String,
    pub error: Option<io::Error>,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}: {}", self.what, e),
            None => f.write_str(&self.what),
        }
    }
}

fn fail(what: String, error: io::Error) -> ListenError {
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
        clear_stale(path, flavor)?;
        let fd = new_socket(flavor.socket_type())
            .map_err(|e| fail(format!("{} socket {shown}: socket", flavor.name()), e))?;
        let (addr, len) = sockaddr(path.as_os_str().as_bytes())
            .map_err(|e| fail(format!("{} socket {shown}", flavor.name()), e))?;
        // SAFETY: umask only changes the process's file-creation mask; we set
        // it around bind (start-up is single-threaded) so that the socket file
        // is created 0660 with no window at a wider mode.
        let old_mask = unsafe { libc::umask(0o777 & !SOCKET_MODE) };
        // SAFETY: bind reads `addr` for `len` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        let bind_error = io::Error::last_os_error();
        // SAFETY: restores the previous mask.
        unsafe { libc::umask(old_mask) };
        if rc != 0 {
            let hint = match bind_error.raw_os_error() {
                Some(libc::ENOENT) => {
                    " (does the directory exist? the tmpfiles.d entry creates /run/holden)"
                }
                Some(libc::EACCES) => " (may the agent's user write to the directory?)",
                _ => "",
            };
            return Err(ListenError {
                what: format!("{} socket {shown}: bind: {bind_error}{hint}", flavor.name()),
                error: None,
            });
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| {
            fail(
                format!("{} socket {shown}: stat after bind", flavor.name()),
                e,
            )
        })?;
        // The umask already gave 0660; chmod makes it exact whatever the mask.
        std::fs::set_permissions(
            path,
            std::os::unix::fs::PermissionsExt::from_mode(SOCKET_MODE),
        )
        .map_err(|e| fail(format!("{} socket {shown}: chmod", flavor.name()), e))?;
        listen(&fd).map_err(|e| fail(format!("{} socket {shown}: listen", flavor.name()), e))?;
        Ok(Listener {
            fd,
            flavor,
            owned_file: Some((path.to_path_buf(), meta.dev(), meta.ino())),
            description: format!("{} socket {}", flavor.name(), shown),
        })
    }

    /// Removes the socket file if the agent created it and it is still the
    /// same file (a successor agent's socket is left alone).
    pub fn remove_file(&self) {
        let Some((path, dev, ino)) = &self.owned_file else {
            return;
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.dev() == *dev && meta.ino() == *ino => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
    }
}

/// Refuses a live agent or a non-socket at `path`; unlinks a stale socket.
fn clear_stale(path: &Path, flavor: Flavor) -> Result<(), ListenError> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(format!("{} socket {shown}: stat", flavor.name()), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError {
            what: format!(
                "{} socket {shown}: the path exists and is not a socket; refusing to replace it",
                flavor.name()
            ),
            error: None,
        });
    }
    match probe_live(path, flavor) {
        Ok(()) => Err(ListenError {
            what: format!(
                "{} socket {shown}: another process is listening there (is holden-agent \
                 already running?); refusing to start",
                flavor.name()
            ),
            error: None,
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(path).map_err(|e| {
                fail(
                    format!(
                        "{} socket {shown}: removing the stale socket",
                        flavor.name()
                    ),
                    e,
                )
            })?;
            crate::log::notice!(
                "{} socket {shown}: removed a stale socket file",
                flavor.name()
            );
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(fail(
            format!(
                "{} socket {shown}: checking for a live listener",
                flavor.name()
            ),
            e,
        )),
    }
}

/// Connects to `path`: Ok when something listens there. A listener of the
/// other socket type answers EPROTOTYPE, and a full backlog EAGAIN: both
/// mean "live".
fn probe_live(path: &Path, flavor: Flavor) -> io::Result<()> {
    let fd = new_socket(flavor.socket_type())?;
    let (addr, len) = sockaddr(path.as_os_str().as_bytes())?;
    // SAFETY: connect reads `addr` for `len` bytes; the fd is non-blocking.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPROTOTYPE) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(()),
        _ => Err(error),
    }
}

fn new_socket(socket_type: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            socket_type | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn listen(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: listen on our own socket.
    if unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        let flavor = check_activated(fd)?;
        if listeners.iter().any(|l: &Listener| l.flavor == flavor) {
            return Err(ListenError {
                what: format!("systemd passed two {} sockets", flavor.name()),
                error: None,
            });
        }
        // SAFETY: systemd passed this fd to us; nothing else in the agent
        // owns fds >= 3 at this point of start-up.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        listeners.push(Listener {
            fd: owned,
            flavor,
            owned_file: None,
            description: format!("{} socket fd {fd} (systemd)", flavor.name()),
        });
    }
    Ok(listeners)
}

/// Checks a systemd-passed fd and makes it non-blocking and close-on-exec.
fn check_activated(fd: RawFd) -> Result<Flavor, ListenError> {
    let option = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int into `value`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    };
    let what = |text: &str| format!("systemd socket fd {fd}: {text}");
    let domain = option(libc::SO_DOMAIN).map_err(|e| fail(what("not a socket"), e))?;
    let socket_type = option(libc::SO_TYPE).map_err(|e| fail(what("SO_TYPE"), e))?;
    let accepting = option(libc::SO_ACCEPTCONN).map_err(|e| fail(what("SO_ACCEPTCONN"), e))?;
    let flavor = match (domain, socket_type) {
        (libc::AF_UNIX, libc::SOCK_SEQPACKET) => Flavor::V1,
        (libc::AF_UNIX, libc::SOCK_STREAM) => Flavor::Legacy,
        _ => {
            return Err(ListenError {
                what: what("not an AF_UNIX SOCK_SEQPACKET or SOCK_STREAM socket"),
                error: None,
            })
        }
    };
    if accepting == 0 {
        return Err(ListenError {
            what: what("not listening"),
            error: None,
        });
    }
    // SAFETY: fcntl flag changes on an fd we now own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok(flavor)
}
