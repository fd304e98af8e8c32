//! One message in or out of a client connection, on `holden::sys::socket`.
//!
//! Clients never send fds to the agent: every fd that arrives is closed at once, and counted
//! so that the caller can refuse the message. Sends are non-blocking (`MSG_DONTWAIT`) and
//! never raise SIGPIPE (`MSG_NOSIGNAL`).

use std::io;
use std::os::fd::BorrowedFd;

use holden::sys::socket;

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
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], packet: bool) -> io::Result<Recv> {
    let Some(received) = socket::recv_with_fds(fd, buf, true, packet)? else {
        return Ok(Recv::WouldBlock);
    };
    if received.empty {
        return Ok(Recv::Closed);
    }
    // Dropping the received fds closes them.
    Ok(Recv::Data(Received {
        len: received.len,
        truncated: received.truncated,
        fds: received.fds.len(),
        fds_truncated: received.fds_truncated,
    }))
}

/// Sends `data` in one message, with `pass_fd` in SCM_RIGHTS if given.
/// Returns the bytes sent (a stream socket may take fewer).
pub fn send(fd: BorrowedFd<'_>, data: &[u8], pass_fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    socket::send_with_fd(fd, data, pass_fd)
}
