//! One message in or out of a client connection, on `holden::sys::socket`.
//!
//! Clients never send fds to the agent: every fd that arrives is closed at once, and counted
//! so that the caller can refuse the message. Sends are non-blocking (`MSG_DONTWAIT`) and
//! never raise SIGPIPE (`MSG_NOSIGNAL`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use holden::sys::poll::{self, PollFd};
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
    /// One message (on SOCK_SEQPACKET possibly an empty packet: `len` 0).
    Data(Received),
    /// The peer closed the connection (or shut down its sending side).
    Closed,
    /// Nothing to read now.
    WouldBlock,
}

/// Receives one message into `buf` without blocking; closes any fds. With
/// `packet` (SOCK_SEQPACKET) the length of an oversized packet is detected
/// (`MSG_TRUNC`) and an empty packet is told apart from the end of the
/// connection; on a stream it is simply the next bytes, and 0 bytes is the end.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], packet: bool) -> io::Result<Recv> {
    let Some(received) = socket::recv_with_fds(fd, buf, true, packet)? else {
        return Ok(Recv::WouldBlock);
    };
    if received.empty && (!packet || peer_shut_down(fd)) {
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

/// After a 0-byte read on SOCK_SEQPACKET: `recvmsg` returns 0 both for an
/// empty packet and at the end of the connection, and a second read cannot
/// tell them apart either (the next packet may be empty too). The socket's
/// shutdown state can: once the peer closed its socket or shut down its
/// sending side, the kernel reports `POLLRDHUP` (and `POLLHUP` when closed);
/// a peer that merely sent an empty packet leaves both clear. A 0-byte read
/// with the peer shut down is taken as the end (replies could no longer
/// matter to a peer that is gone; one that only shut down its sending side
/// sees the connection close).
fn peer_shut_down(fd: BorrowedFd<'_>) -> bool {
    let mut entry = [PollFd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    match poll::poll(&mut entry, 0) {
        Ok(_) => entry[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0,
        // Cannot tell: treat it as the end, as before.
        Err(_) => true,
    }
}
