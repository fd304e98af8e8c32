//! AF_UNIX sockets: addresses, the one listener binder, connect, accept, messages with
//! SCM_RIGHTS, peer credentials.

use super::{check, check_size, owned, retry};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Most fds one received message may carry into the caller's array; more are closed.
pub const RECV_FDS_MAX: usize = 8;

/// Control-message space for [`RECV_FDS_MAX`] fds (CMSG_SPACE(8 * 4) = 48 on 64-bit) and
/// one `SCM_CREDENTIALS` (CMSG_SPACE(12) = 32).
const CONTROL_BYTES: usize = 96;

/// Aligned control buffer.
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_BYTES]);

/// The kind of socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_SEQPACKET`: holden wire v1 and the control protocol.
    Seqpacket,
    /// `SOCK_STREAM`: holden v0.2.
    Stream,
    /// `SOCK_DGRAM`: sd_notify.
    Datagram,
}

impl Kind {
    fn raw(self) -> libc::c_int {
        match self {
            Kind::Seqpacket => libc::SOCK_SEQPACKET,
            Kind::Stream => libc::SOCK_STREAM,
            Kind::Datagram => libc::SOCK_DGRAM,
        }
    }
}

/// The address of an AF_UNIX socket: a filesystem path, or an abstract name written `@name`
/// (as systemd writes `NOTIFY_SOCKET`). The one checked builder for every socket holden binds,
/// connects or sends to.
#[derive(Clone, Copy)]
pub struct UnixAddr {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl UnixAddr {
    /// `/path` (or a relative path) as is, with its NUL; `@name` as an abstract socket (leading
    /// NUL, no terminator). Refuses an empty name, a NUL inside, and a name that does not fit
    /// `sun_path`.
    pub fn new(name: &[u8]) -> io::Result<UnixAddr> {
        // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let room = addr.sun_path.len();
        let invalid = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket address {:?}: {why}", String::from_utf8_lossy(name)),
            )
        };
        let Some(&first) = name.first() else {
            return Err(invalid("empty".into()));
        };
        if name.contains(&0) {
            return Err(invalid("contains a NUL byte".into()));
        }
        let abstract_name = first == b'@';
        // A path needs its terminating NUL; an abstract name does not.
        let len = name.len() + usize::from(!abstract_name);
        if len > room {
            return Err(invalid(format!(
                "longer than the {} bytes allowed",
                room - 1
            )));
        }
        for (dst, &src) in addr.sun_path.iter_mut().zip(name) {
            *dst = src as libc::c_char;
        }
        if abstract_name {
            addr.sun_path[0] = 0;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + len;
        Ok(UnixAddr {
            addr,
            len: len as libc::socklen_t,
        })
    }

    /// The name as given (`@` for an abstract name), without a NUL.
    pub fn name(&self, buf: &mut [u8; 108]) -> usize {
        let len = self.len as usize - std::mem::size_of::<libc::sa_family_t>();
        let mut n = 0;
        for (i, &c) in self.addr.sun_path.iter().take(len).enumerate() {
            let b = c as u8;
            if b == 0 && i == 0 {
                buf[n] = b'@';
            } else if b == 0 {
                break;
            } else {
                buf[n] = b;
            }
            n += 1;
        }
        n
    }

    fn ptr(&self) -> *const libc::sockaddr {
        (&self.addr as *const libc::sockaddr_un).cast()
    }
}

impl fmt::Debug for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 108];
        let n = self.name(&mut buf);
        write!(f, "UnixAddr({:?})", String::from_utf8_lossy(&buf[..n]))
    }
}

/// A new AF_UNIX socket (close-on-exec; non-blocking if asked).
pub fn socket(kind: Kind, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket() takes integers and returns a new fd or -1.
    owned(unsafe { libc::socket(libc::AF_UNIX, kind.raw() | flags, 0) })
}

/// Connects `fd` to `addr` (EINTR retried). On a non-blocking AF_UNIX socket this completes
/// at once or fails (EAGAIN: the listener's backlog is full).
pub fn connect(fd: BorrowedFd<'_>, addr: &UnixAddr) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    retry(|| check(unsafe { libc::connect(fd.as_raw_fd(), addr.ptr(), addr.len) })).map(|_| ())
}

/// A new socket of `kind` connected to `addr`.
pub fn connect_new(addr: &UnixAddr, kind: Kind, nonblocking: bool) -> io::Result<OwnedFd> {
    let fd = socket(kind, nonblocking)?;
    connect(fd.as_fd(), addr)?;
    Ok(fd)
}

/// A connected pair (close-on-exec).
pub fn pair(kind: Kind) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: the kernel fills the two ints of `fds`.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind.raw() | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((owned(fds[0])?, owned(fds[1])?))
}

/// Accepts one connection (close-on-exec, non-blocking if asked); `Ok(None)` when none waits.
pub fn accept(listener: BorrowedFd<'_>, nonblocking: bool) -> io::Result<Option<OwnedFd>> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let accepted = retry(|| {
        // SAFETY: accept4 with no address buffer returns a new fd or -1.
        owned(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
            )
        })
    });
    match accepted {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `send(2)` of one message with `MSG_NOSIGNAL` (a closed peer is EPIPE) and, with
/// `dontwait`, `MSG_DONTWAIT`; the bytes sent.
pub fn send(fd: BorrowedFd<'_>, data: &[u8], dontwait: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if dontwait { libc::MSG_DONTWAIT } else { 0 };
    retry(|| {
        // SAFETY: the kernel reads at most `data.len()` bytes from `data`.
        let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) };
        check_size(n)
    })
}

/// `sendto(2)` of one datagram to `addr`, never blocking, never raising SIGPIPE.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], addr: &UnixAddr) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `data` is valid for its length; `addr` is a valid sockaddr_un of `len` bytes.
        check_size(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                addr.ptr(),
                addr.len,
            )
        })
    })
}

/// Sends `data` in one message with `pass_fd` in SCM_RIGHTS if given, never blocking, never
/// raising SIGPIPE; the bytes sent (a stream socket may take fewer).
pub fn send_with_fd(
    fd: BorrowedFd<'_>,
    data: &[u8],
    pass_fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    send_msg(fd, data, pass_fd, None)
}

/// [`send_with_fd`] to `to`, on an unconnected datagram socket (sd_notify with an fd).
pub fn send_to_with_fd(
    fd: BorrowedFd<'_>,
    data: &[u8],
    pass_fd: Option<BorrowedFd<'_>>,
    to: &UnixAddr,
) -> io::Result<usize> {
    send_msg(fd, data, pass_fd, Some(to))
}

fn send_msg(
    fd: BorrowedFd<'_>,
    data: &[u8],
    pass_fd: Option<BorrowedFd<'_>>,
    to: Option<&UnixAddr>,
) -> io::Result<usize> {
    let mut control = ControlBuf([0; CONTROL_BYTES]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(to) = to {
        msg.msg_name = to.ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len;
    }
    if let Some(passed) = pass_fd {
        // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA address our aligned control buffer, which
        // has room for one cmsghdr and one c_int.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                passed.as_raw_fd(),
            );
        }
    }
    retry(|| {
        // SAFETY: `msg` points to `iov` (the caller's bytes), `control` and the caller's
        // address, all valid for the call; the kernel only reads them.
        check_size(unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        })
    })
}

/// One received message.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The kernel reported the whole message length (`MSG_TRUNC` on a datagram or seqpacket
    /// socket): longer than the buffer, the rest is lost.
    pub truncated: bool,
    /// The fds that came with the message, in order (close-on-exec).
    pub fds: arrayvec::ArrayVec<OwnedFd, RECV_FDS_MAX>,
    /// Some fds were lost: the control data was truncated (MSG_CTRUNC) or held more than
    /// [`RECV_FDS_MAX`] (the surplus was closed).
    pub fds_truncated: bool,
    /// The message was empty and carried no fds: on a stream, the peer closed it.
    pub empty: bool,
    /// The sender's pid, as the kernel wrote it (`SCM_CREDENTIALS`, on a socket with
    /// [`set_pass_credentials`]).
    pub sender_pid: Option<i32>,
}

/// Receives one message into `buf`, with its fds. `dontwait`: `Ok(None)` when nothing waits.
/// With `trunc` (datagram and seqpacket sockets) an oversized message is reported.
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    dontwait: bool,
    trunc: bool,
) -> io::Result<Option<Received>> {
    let flags = libc::MSG_CMSG_CLOEXEC
        | if dontwait { libc::MSG_DONTWAIT } else { 0 }
        | if trunc { libc::MSG_TRUNC } else { 0 };
    let mut control = ControlBuf([0; CONTROL_BYTES]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_BYTES as _;
    // SAFETY: `msg` points to `iov` (the caller's buffer) and `control`, both valid for the call.
    let received = retry(|| check_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) }));
    let n = match received {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && dontwait => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Received {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0 || n > buf.len(),
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        ..Received::default()
    };
    take_control(&msg, &mut out);
    out.empty = n == 0 && out.fds.is_empty() && !out.fds_truncated;
    Ok(Some(out))
}

/// Moves every SCM_RIGHTS fd of `msg` into `out` (up to [`RECV_FDS_MAX`]), closing the rest,
/// and reads the sender's pid from an SCM_CREDENTIALS message.
fn take_control(msg: &libc::msghdr, out: &mut Received) {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // `msg_controllen`; each SCM_RIGHTS payload holds whole c_ints, each a new fd that the
    // kernel installed for us and nobody else owns; an SCM_CREDENTIALS payload is one ucred.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            #[allow(clippy::unnecessary_cast)]
            let whole = header.cmsg_len as usize
                >= libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
            if header.cmsg_level == libc::SOL_SOCKET
                && header.cmsg_type == libc::SCM_CREDENTIALS
                && whole
            {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                out.sender_pid = Some(cred.pid);
            }
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                #[allow(clippy::unnecessary_cast)]
                let payload = (header.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                    let fd: RawFd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    if fd < 0 {
                        continue;
                    }
                    let fd = OwnedFd::from_raw_fd(fd);
                    if out.fds.try_push(fd).is_err() {
                        out.fds_truncated = true;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// Asks the kernel to attach the sender's credentials to every message received on `fd`
/// (`SO_PASSCRED`; an sd_notify socket).
pub fn set_pass_credentials(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from our stack.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// `recv(2)` into `buf`; with `trunc` the whole length of an oversized packet is returned.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], trunc: bool, dontwait: bool) -> io::Result<usize> {
    let flags =
        if trunc { libc::MSG_TRUNC } else { 0 } | if dontwait { libc::MSG_DONTWAIT } else { 0 };
    retry(|| {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        check_size(n)
    })
}

/// Sets `SO_RCVTIMEO` (a blocking client's bound on every receive).
pub fn set_receive_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    // SAFETY: setsockopt reads one timeval from our stack.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// An integer socket option (`SO_TYPE`, `SO_DOMAIN`, `SO_ACCEPTCONN`).
pub fn option_int(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (one c_int) into `value`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Whether `fd` is a listening AF_UNIX socket, and of which kind.
pub fn listening_kind(fd: BorrowedFd<'_>) -> io::Result<Option<Kind>> {
    let domain = option_int(fd, libc::SO_DOMAIN)?;
    let kind = option_int(fd, libc::SO_TYPE)?;
    let accepting = option_int(fd, libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || accepting == 0 {
        return Ok(None);
    }
    Ok(match kind {
        libc::SOCK_SEQPACKET => Some(Kind::Seqpacket),
        libc::SOCK_STREAM => Some(Kind::Stream),
        _ => None,
    })
}

/// Who is on the other end of a connected AF_UNIX socket, as the kernel recorded it at
/// connect (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Supplementary groups read with `SO_PEERGROUPS` (more: only these are checked).
pub const PEER_GROUPS_MAX: usize = 64;

impl PeerCred {
    /// `SO_PEERCRED` of `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
        // SAFETY: ucred is plain data; all-zero is a valid value.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// Whether the peer of `fd` (with these credentials) is in group `gid`: primary group, or
    /// one of its first [`PEER_GROUPS_MAX`] supplementary groups (`SO_PEERGROUPS`).
    pub fn in_group(&self, fd: BorrowedFd<'_>, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let mut groups = [0u32; PEER_GROUPS_MAX];
        let mut len = std::mem::size_of_val(&groups) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = (len as usize / 4).min(PEER_GROUPS_MAX);
        rc == 0 && groups[..count].contains(&gid)
    }
}

/// A listening socket bound by [`Listener::bind`]; its socket file is removed by
/// [`Listener::remove_file`] only if it is still the one bound here.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    /// The socket file created here.
    file: Option<SocketFile>,
}

/// A socket file a [`Listener`] created: its path, device and inode.
#[derive(Debug)]
pub struct SocketFile {
    path: CString,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the file if it is still the one created here (a successor's socket is left
    /// alone).
    pub fn remove(&self) {
        if let Ok(Some(st)) = super::fd::lstat(&self.path) {
            if st.dev == self.dev && st.ino == self.ino {
                let _ = super::fd::unlink(&self.path);
            }
        }
    }
}

/// Why [`Listener::bind`] refused or failed.
#[derive(Debug)]
pub enum BindError {
    /// The path is not usable as a socket address (empty, NUL, too long).
    Address(io::Error),
    /// Something that is not a socket is at the path: never replaced.
    NotASocket,
    /// A live listener answers at the path (another instance): never taken over.
    Live,
    /// A system call failed (`what` names it).
    Io(&'static str, io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Address(e) => write!(f, "{e}"),
            BindError::NotASocket => {
                f.write_str("the path exists and is not a socket; refusing to replace it")
            }
            BindError::Live => f.write_str("another process is listening there"),
            BindError::Io(what, e) => {
                let hint = match (e.raw_os_error(), *what) {
                    (Some(libc::ENOENT), "bind") => " (does the directory exist?)",
                    (Some(libc::EACCES), "bind") => " (may this user write to the directory?)",
                    _ => "",
                };
                write!(f, "{what}: {e}{hint}")
            }
        }
    }
}

impl std::error::Error for BindError {}

impl Listener {
    /// Binds a non-blocking listener of `kind` at `path` with `backlog` (a datagram socket is
    /// bound only: it has no backlog), created with `mode`
    /// (and group `gid` if given) with no window at a wider mode. A socket file already there is probed first:
    /// if a listener answers (connect succeeds, or fails with EPROTOTYPE for the other socket
    /// type, or EAGAIN for a full backlog) it is live and the bind is refused; if it refuses
    /// (ECONNREFUSED) it is stale and is replaced. Anything else at the path is never touched.
    /// Returns whether a stale file was removed.
    pub fn bind(
        path: &[u8],
        kind: Kind,
        mode: u32,
        gid: Option<u32>,
        backlog: i32,
    ) -> Result<(Listener, bool), BindError> {
        let addr = UnixAddr::new(path).map_err(BindError::Address)?;
        let cpath = CString::new(path).map_err(|e| BindError::Address(e.into()))?;
        let stale = Listener::clear_stale(&cpath, &addr, kind)?;
        let fd = socket(kind, true).map_err(|e| BindError::Io("socket", e))?;
        let bound = super::fd::with_umask(0o777 & !mode, || {
            // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
            check(unsafe { libc::bind(fd.as_raw_fd(), addr.ptr(), addr.len) })
        });
        bound.map_err(|e| BindError::Io("bind", e))?;
        let undo = |what: &'static str, e: io::Error| {
            let _ = super::fd::unlink(&cpath);
            BindError::Io(what, e)
        };
        if let Some(gid) = gid {
            // SAFETY: `cpath` is NUL-terminated; uid -1 keeps the owner.
            check(unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) })
                .map_err(|e| undo("chown", e))?;
        }
        // The umask already gave `mode`; chmod makes it exact whatever the mask.
        // SAFETY: `cpath` is NUL-terminated.
        check(unsafe { libc::chmod(cpath.as_ptr(), mode as libc::mode_t) })
            .map_err(|e| undo("chmod", e))?;
        if kind != Kind::Datagram {
            // SAFETY: listen on our bound socket.
            check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })
                .map_err(|e| undo("listen", e))?;
        }
        let st = match super::fd::lstat(&cpath) {
            Ok(Some(st)) => st,
            Ok(None) => return Err(undo("stat", io::Error::from_raw_os_error(libc::ENOENT))),
            Err(e) => return Err(undo("stat", e)),
        };
        let file = Some(SocketFile {
            path: cpath,
            dev: st.dev,
            ino: st.ino,
        });
        Ok((Listener { fd, file }, stale))
    }

    /// The listener a previous instance of this process bound at `path` and kept across its
    /// re-exec: still listening (connections made meanwhile wait in its backlog), and its file
    /// ours to remove. Refused unless `fd` is a socket and `path` still a socket file.
    pub fn inherited(fd: OwnedFd, path: &[u8]) -> Result<Listener, BindError> {
        let cpath = CString::new(path).map_err(|e| BindError::Address(e.into()))?;
        let is_socket = super::fd::fstat(fd.as_fd()).map_err(|e| BindError::Io("fstat", e))?;
        if !is_socket.is_socket() {
            return Err(BindError::NotASocket);
        }
        let st = match super::fd::lstat(&cpath) {
            Ok(Some(st)) if st.is_socket() => st,
            Ok(_) => return Err(BindError::NotASocket),
            Err(e) => return Err(BindError::Io("stat", e)),
        };
        super::fd::set_cloexec(fd.as_fd(), true).map_err(|e| BindError::Io("fcntl", e))?;
        let file = Some(SocketFile {
            path: cpath,
            dev: st.dev,
            ino: st.ino,
        });
        Ok(Listener { fd, file })
    }

    /// A listener passed in by someone else (systemd): its file is not ours to remove.
    pub fn adopt(fd: OwnedFd) -> Listener {
        Listener { fd, file: None }
    }

    /// `Ok(true)` when a stale socket file was removed.
    fn clear_stale(cpath: &CString, addr: &UnixAddr, kind: Kind) -> Result<bool, BindError> {
        match super::fd::lstat(cpath) {
            Ok(None) => return Ok(false),
            Ok(Some(st)) if !st.is_socket() => return Err(BindError::NotASocket),
            Ok(Some(_)) => {}
            Err(e) => return Err(BindError::Io("stat", e)),
        }
        let probe = socket(kind, true).map_err(|e| BindError::Io("socket", e))?;
        match connect(probe.as_fd(), addr) {
            Ok(()) => Err(BindError::Live),
            Err(e) => match e.raw_os_error() {
                Some(libc::EPROTOTYPE) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                    Err(BindError::Live)
                }
                Some(libc::ECONNREFUSED) => match super::fd::unlink(cpath) {
                    Ok(()) => Ok(true),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                    Err(e) => Err(BindError::Io("unlink of the stale socket", e)),
                },
                Some(libc::ENOENT) => Ok(false),
                _ => Err(BindError::Io("connect (probing for a live listener)", e)),
            },
        }
    }

    /// Removes the socket file if this listener created it and it is still the same file (a
    /// successor's socket is left alone).
    pub fn remove_file(&self) {
        if let Some(file) = &self.file {
            file.remove();
        }
    }

    /// The socket and the file it created (to give the socket to a ring slot).
    pub fn into_parts(self) -> (OwnedFd, Option<SocketFile>) {
        (self.fd, self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_keeps_its_nul_and_an_abstract_name_starts_with_one() {
        let addr = UnixAddr::new(b"/run/holden/x.sock").unwrap();
        let mut buf = [0u8; 108];
        let n = addr.name(&mut buf);
        assert_eq!(&buf[..n], b"/run/holden/x.sock");
        assert_eq!(addr.len as usize, 2 + 19);
        let addr = UnixAddr::new(b"@holden").unwrap();
        let n = addr.name(&mut buf);
        assert_eq!(&buf[..n], b"@holden");
        assert_eq!(addr.addr.sun_path[0], 0);
        assert_eq!(addr.len as usize, 2 + 7);
    }

    #[test]
    fn empty_nul_and_overlong_names_are_refused() {
        assert!(UnixAddr::new(b"").is_err());
        assert!(UnixAddr::new(b"/a\0b").is_err());
        let room = 108;
        assert!(UnixAddr::new(&vec![b'a'; room - 1]).is_ok());
        assert!(UnixAddr::new(&vec![b'a'; room]).is_err());
        let mut abstract_name = vec![b'a'; room];
        abstract_name[0] = b'@';
        assert!(UnixAddr::new(&abstract_name).is_ok());
        let err = UnixAddr::new(&vec![b'a'; room]).unwrap_err().to_string();
        assert!(err.contains("longer than the 107 bytes"), "{err}");
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "holden-sys-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_binder_replaces_a_stale_socket_but_never_a_live_one() {
        use std::os::unix::ffi::OsStrExt;
        let dir = temp_path("bind");
        let path = dir.join("s.sock");
        let bytes = path.as_os_str().as_bytes();
        let (first, stale) = Listener::bind(bytes, Kind::Seqpacket, 0o600, None, 4).unwrap();
        assert!(!stale);
        // Live, same kind and other kind: refused, and the file stays the first one's.
        for kind in [Kind::Seqpacket, Kind::Stream] {
            match Listener::bind(bytes, kind, 0o600, None, 4) {
                Err(BindError::Live) => {}
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        let client = connect_new(&UnixAddr::new(bytes).unwrap(), Kind::Seqpacket, true);
        assert!(client.is_ok(), "the first listener must still be reachable");
        drop(client);
        // Closed: stale, replaced. (A child that another test is forking may hold a copy of
        // the listener until its execve: live until then, so the bind is retried a while.)
        drop(first);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (second, stale) = loop {
            match Listener::bind(bytes, Kind::Seqpacket, 0o600, None, 4) {
                Err(BindError::Live) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        assert!(stale);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        second.remove_file();
        assert!(std::fs::symlink_metadata(&path).is_err());
        // Not a socket: never touched.
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            Listener::bind(bytes, Kind::Seqpacket, 0o600, None, 4),
            Err(BindError::NotASocket)
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fds_travel_with_a_message_and_the_surplus_is_closed() {
        let (a, b) = pair(Kind::Seqpacket).unwrap();
        let (r, _w) = super::super::fd::pipe().unwrap();
        assert_eq!(
            send_with_fd(a.as_fd(), b"hello", Some(r.as_fd())).unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf, true, true)
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated && !got.fds_truncated && !got.empty);
        assert!(recv_with_fds(b.as_fd(), &mut buf, true, true)
            .unwrap()
            .is_none());
        // An oversized packet is reported as truncated.
        send_with_fd(a.as_fd(), &[7u8; 32], None).unwrap();
        let got = recv_with_fds(b.as_fd(), &mut buf, true, true)
            .unwrap()
            .unwrap();
        assert!(got.truncated);
        let cred = PeerCred::of(a.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
    }
}
