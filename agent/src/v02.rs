//! holden v0.2 on a SOCK_STREAM connection, byte for byte as v0.2 spoke it:
//! `PROCESS_STARTED {host_pid, container_pid}` followed by a separate
//! one-byte `'x'` message carrying the pidfd; `PROCESS_ERROR` with its
//! 512-byte text; `PONG` for `PING`; "Unknown message type: N" for anything
//! else.
//!
//! Unlike v0.2: the pidfd comes from `clone3(CLONE_PIDFD)` (no reuse window,
//! no ESRCH for a fast-exiting child), `length` is never trusted (the codec
//! refuses a wrong or oversized one and the connection is closed, since a
//! stream cannot be resynchronised), reassembly uses a fixed per-slot buffer,
//! and a connection that stalls mid-frame or idles is dropped after the read
//! timeout.
//!
//! `host_pid` and `container_pid` both carry the pid as the agent sees it:
//! inside QM the agent cannot know its children's pids in the host PID
//! namespace (the orchestrator learns them from the pidfd).

use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use holden::pidfd::send_signal;
use holden::wire::v02::{self, Decoded, Frame};

use crate::fdpass::{self, Recv};
use crate::limits::V02_FRAMES_PER_WAKE_MAX;
use crate::log::warning;
use crate::request::{fill_v02, FailureText, Subject};
use crate::server::{Next, Server};
use crate::text::{Errno, Escaped, FixedBuf};

impl Server {
    pub(crate) fn v02_readable(&mut self, slot: usize) -> Next {
        let Some(conn) = self.conns[slot].as_ref() else {
            return Next::Close;
        };
        let filled = conn.v02_len;
        // Take the slot's buffer out so that frames can borrow it while the
        // handlers use `self` (no allocation: an empty box is a dangling ptr).
        let mut buf = std::mem::take(&mut self.v02_bufs[slot]);
        let received = fdpass::recv(conn.fd.as_fd(), &mut buf[filled..], false);
        let next = match received {
            Ok(Recv::Data(received)) if received.fds > 0 || received.fds_truncated => {
                self.v02_fail(
                    slot,
                    b"holden-agent: v0.2 requests carry no file descriptors",
                );
                Next::Close
            }
            Ok(Recv::Data(received)) => {
                let filled = filled + received.len;
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.deadline = Some(Instant::now() + self.settings.read_timeout);
                }
                self.v02_frames(slot, &mut buf, filled)
            }
            Ok(Recv::WouldBlock) => Next::Keep,
            Ok(Recv::Closed) => Next::Close,
            Err(error) => {
                self.log_conn(slot, format_args!("recv: {error}; closing"));
                Next::Close
            }
        };
        self.v02_bufs[slot] = buf;
        next
    }

    /// Handles every complete frame in `buf[..filled]`, keeps the rest.
    fn v02_frames(&mut self, slot: usize, buf: &mut [u8], mut filled: usize) -> Next {
        for _ in 0..V02_FRAMES_PER_WAKE_MAX {
            let consumed = match v02::decode(&buf[..filled]) {
                Ok(Decoded::NeedMore { .. }) => break,
                Ok(Decoded::Done { value, consumed }) => {
                    if self.v02_frame(slot, value) == Next::Close {
                        return Next::Close;
                    }
                    consumed
                }
                Err(error) => {
                    let mut text = FixedBuf::<{ v02::ERROR_TEXT_LEN_MAX }>::new();
                    let _ = write!(text, "holden-agent: {error}");
                    if let Some(conn) = self.conns[slot].as_ref() {
                        warning!("{}: refused: {error}; closing", conn.label());
                    }
                    self.v02_fail(slot, text.as_bytes());
                    return Next::Close;
                }
            };
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
        if let Some(conn) = self.conns[slot].as_mut() {
            conn.v02_len = filled;
        }
        Next::Keep
    }

    fn v02_frame(&mut self, slot: usize, frame: Frame<'_>) -> Next {
        match frame {
            Frame::Ping => {
                self.log_conn(slot, format_args!("ping -> pong"));
                let len = v02::encode_pong(&mut self.send_buf).unwrap_or(0);
                self.v02_send(slot, len, None)
            }
            Frame::Start(start) => {
                if let Err(error) = fill_v02(&mut self.spec, &start, &self.inherited) {
                    let mut text = FixedBuf::<{ v02::ERROR_TEXT_LEN_MAX }>::new();
                    let _ = write!(text, "holden-agent: {error}");
                    return self.v02_error(slot, text.as_bytes());
                }
                self.v02_start(slot)
            }
            Frame::Started { .. }
            | Frame::Error { .. }
            | Frame::Pong
            | Frame::Other { .. }
            | Frame::Unknown { .. } => {
                let msg_type = match frame {
                    Frame::Started { .. } => v02::MessageType::ProcessStarted as u32,
                    Frame::Error { .. } => v02::MessageType::ProcessError as u32,
                    Frame::Pong => v02::MessageType::Pong as u32,
                    Frame::Other { msg_type, .. } => msg_type as u32,
                    Frame::Unknown { msg_type, .. } => msg_type,
                    Frame::Ping | Frame::Start(_) => 0,
                };
                self.log_conn(
                    slot,
                    format_args!("message type {msg_type} -> unknown message type"),
                );
                let len = v02::encode_unknown_type_error(&mut self.send_buf, msg_type).unwrap_or(0);
                self.v02_send(slot, len, None)
            }
        }
    }

    fn v02_start(&mut self, slot: usize) -> Next {
        let mut what = FixedBuf::<200>::new();
        let _ = write!(
            what,
            "start \"{}\" argc {}",
            Escaped(self.spec.program().unwrap_or(b"")),
            self.spec.args_count()
        );
        match self.spawn_from_spec() {
            Ok(spawned) => {
                let pid = spawned.pid;
                self.log_conn(slot, format_args!("{} -> started pid {pid}", what.as_str()));
                let len = v02::encode_started(&mut self.send_buf, pid, pid).unwrap_or(0);
                let mut next = self.v02_send(slot, len, None);
                if next == Next::Keep {
                    let len = v02::encode_pidfd_marker(&mut self.send_buf).unwrap_or(0);
                    next = self.v02_send(slot, len, Some(spawned.pidfd.as_fd()));
                }
                if next == Next::Close {
                    let _ = send_signal(spawned.pidfd.as_fd(), libc::SIGKILL);
                    self.log_conn(
                        slot,
                        format_args!("pid {pid} killed: the reply could not be sent"),
                    );
                }
                next
            }
            Err(error) => {
                let errno = error.errno;
                let mut text = FixedBuf::<{ v02::ERROR_TEXT_LEN_MAX }>::new();
                let failure = FailureText {
                    error,
                    subject: Subject::of(&self.spec),
                };
                let _ = write!(text, "{failure} (errno {errno})");
                self.log_conn(
                    slot,
                    format_args!(
                        "{} -> error {}: {} (errno {errno})",
                        what.as_str(),
                        error.stage,
                        Errno(errno)
                    ),
                );
                self.v02_error(slot, text.as_bytes())
            }
        }
    }

    /// Replies PROCESS_ERROR and keeps the connection.
    fn v02_error(&mut self, slot: usize, text: &[u8]) -> Next {
        let len = v02::encode_error(&mut self.send_buf, text).unwrap_or(0);
        self.v02_send(slot, len, None)
    }

    /// Replies PROCESS_ERROR on a connection about to be closed.
    fn v02_fail(&mut self, slot: usize, text: &[u8]) {
        let _ = self.v02_error(slot, text);
    }

    /// Sends `send_buf[..len]`; a short or failed send drops the connection
    /// (a stream reply must arrive whole; the agent keeps no queue).
    fn v02_send(&mut self, slot: usize, len: usize, pidfd: Option<BorrowedFd<'_>>) -> Next {
        let Some(conn) = self.conns[slot].as_ref() else {
            return Next::Close;
        };
        if len == 0 {
            return Next::Close;
        }
        match fdpass::send(conn.fd.as_fd(), &self.send_buf[..len], pidfd) {
            Ok(sent) if sent == len => Next::Keep,
            Ok(_) => Next::Close,
            Err(error) => {
                self.log_conn(slot, format_args!("send: {error}; closing"));
                Next::Close
            }
        }
    }
}
