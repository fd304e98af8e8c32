//! `sendmsg`/`recvmsg` on AF_UNIX sockets, with SCM_RIGHTS.
//!
//! Clients never send fds to the agent: every fd that arrives is closed at
//! once, and counted so that the caller can refuse the message. Sends are
//! non-blocking (`MSG_DONTWAIT`) and never raise SIGPIPE (`MSG_NOSIGNAL`).

use std::io;
use std::os::fd::RawFd;

use crate::limits::RECV_FDS_MAX;

/// Control buffer large enough for `RECV_FDS_MAX` fds, aligned for cmsghdr.
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

const _: () = assert!(16 + RECV_FDS_MAX * 4 <= 128);

/// One received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The packet was longer than the buffer (SEQPACKET: the rest is lost).
    pub truncated: bool,
    /// Fds that came with the message (all closed already), or that the
    /// kernel discarded for lack of control space (`fds_truncated`).
    pub fds: usize,
    pub fds_truncated: bool,
}

/// Outcome of a receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    Data(Received),
    /// The peer closed the connection (or sent an empty packet).
    Closed,
    /// Nothing to read now.
    WouldBlock,
}

/// Receives one message into `buf` without blocking; closes any fds. With
/// `packet` (SOCK_SEQPACKET) the length of an oversized packet is detected
/// (`MSG_TRUNC`); on a stream it is simply the next bytes.
pub fn recv(fd: RawFd, buf: &mut [u8], packet: bool) -> io::Result<Recv> {
    let flags =
        libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | if packet { libc::MSG_TRUNC } else { 0 };
    let mut control = ControlBuf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before we set fields.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    let n = loop {
        // SAFETY: `msg` points to `iov` (our buffer) and `control`, both valid
        // for the whole call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(Recv::WouldBlock),
            _ => return Err(error),
        }
    };
    let fds = close_received_fds(&msg);
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0 || n > buf.len();
    if n == 0 && fds == 0 {
        return Ok(Recv::Closed);
    }
    Ok(Recv::Data(Received {
        len: n.min(buf.len()),
        truncated,
        fds,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

/// Closes every fd in the SCM_RIGHTS messages of `msg`; returns how many.
fn close_received_fds(msg: &libc::msghdr) -> usize {
    let mut count = 0;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within `msg_controllen`; each SCM_RIGHTS payload holds whole c_ints.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let payload = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    libc::close(fd);
                    count += 1;
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    count
}

/// Sends `data` in one message, with `pass_fd` in SCM_RIGHTS if given.
/// Returns the bytes sent (a stream socket may take fewer).
pub fn send(fd: RawFd, data: &[u8], pass_fd: Option<RawFd>) -> io::Result<usize> {
    let mut control = ControlBuf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before we set fields.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(passed) = pass_fd {
        // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA address our aligned
        // control buffer, which has room for one cmsghdr and one c_int.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), passed);
        }
    }
    loop {
        // SAFETY: `msg` points to `iov` (the caller's bytes) and `control`,
        // valid for the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}
