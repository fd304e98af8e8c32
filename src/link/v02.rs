//! holden v0.2 (SOCK_STREAM), one connection per request, as v0.2 itself did — with v1's
//! checks and bounds.
//!
//! Per request: connect, send `START_PROCESS`, receive `PROCESS_STARTED` then the one-byte
//! `'x'` message carrying the pidfd (or `PROCESS_ERROR`), close. Replies are reassembled in a
//! small fixed buffer per service, since the only valid replies are short. The request
//! deadline is the same as v1's.
//!
//! Liveness: the agent counts as up after a successful connect; a request whose connect
//! fails, times out, or gets a malformed or unexpected reply marks the agent down (every
//! request in flight fails, QM services wait) and the link probes again with backoff.

use super::{
    Conn, Cx, DownReason, EncodeFailure, Event, Fds, Link, Note, Protocol, Requests, State, What,
};
use crate::supervise::StartStage;
use crate::wire::v02::{self as wire, Decoded, Frame};

/// Longest reply accepted: `PROCESS_ERROR` (8 + 512) and the marker byte.
pub(super) const REPLY_BYTES_MAX: usize = wire::HEADER_LEN + wire::ERROR_PAYLOAD_LEN + 1;

/// One request's connection. The reply buffer is inline on purpose: the states live in the
/// link's fixed per-service table, allocated once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub(super) enum ConnState {
    Closed,
    /// `Io::Connect` issued.
    Connecting,
    Open(Open),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Open {
    /// The agent's place in the PID namespaces (SO_PEERCRED of this connection).
    peer_ns: Option<crate::pidfd::NsPid>,
    start_sent: bool,
    rx: [u8; REPLY_BYTES_MAX],
    len: usize,
    /// `PROCESS_STARTED` seen: (host_pid, container_pid).
    started: Option<(i32, i32)>,
}

impl<H> Link<H> {
    pub(super) fn v02_open(&self, index: usize) -> bool {
        self.slots
            .get(index)
            .is_some_and(|s| matches!(s.v02, ConnState::Open(_) | ConnState::Connecting))
    }

    /// The link is v0.2 and a connect succeeded (probe or request): the agent is up.
    pub(super) fn v02_up(&mut self) {
        if self.is_up() {
            return;
        }
        self.state = State::Up;
        self.connect_failures = 0;
        self.stats.connected += 1;
        self.note(Note::Up {
            protocol: Protocol::V02,
            version: (0, 2),
            capabilities: 0,
        });
        self.events.push(Event::Up);
    }

    pub(super) fn v02_request(&mut self, cx: &Cx<'_>, service: usize) {
        let id = self.next_id(service as u64);
        let deadline = self.deadline(cx.now_ns);
        self.open_request(service, id, deadline, true);
        self.slots[service].v02 = ConnState::Connecting;
        self.io.push(super::Io::Connect {
            conn: Conn::Request(service as u32),
            kind: super::SocketKind::Stream,
        });
    }

    pub(super) fn v02_connected(&mut self, index: usize, peer: Option<crate::pidfd::NsPid>) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.v02 != ConnState::Connecting {
            return;
        }
        slot.v02 = ConnState::Open(Open {
            peer_ns: peer,
            start_sent: false,
            rx: [0; REPLY_BYTES_MAX],
            len: 0,
            started: None,
        });
    }

    pub(super) fn v02_connect_failed(&mut self, cx: &Cx<'_>, index: usize, errno: i32) {
        if index >= self.slots.len() || self.slots[index].v02 != ConnState::Connecting {
            return;
        }
        self.slots[index].v02 = ConnState::Closed;
        if self.close_request(index).is_some() {
            self.fail(index, errno, StartStage::Agent);
        }
        self.v02_down(cx, DownReason::Connect(errno));
    }

    pub(super) fn v02_transmit(
        &mut self,
        buf: &mut [u8],
        requests: &dyn Requests,
    ) -> Option<(Conn, usize)> {
        for index in 0..self.slots.len() {
            let ConnState::Open(open) = &self.slots[index].v02 else {
                continue;
            };
            if open.start_sent {
                continue;
            }
            let encoded = match requests.start(index) {
                // A v0.2 agent announces nothing.
                Some(start) => match super::unmet(start.flags, |_| false) {
                    Some(failure) => Err(failure),
                    None => wire::encode_start(buf, start.argv).map_err(EncodeFailure::V02),
                },
                None => Err(EncodeFailure::NoStart),
            };
            match encoded {
                Ok(len) => {
                    if let ConnState::Open(open) = &mut self.slots[index].v02 {
                        open.start_sent = true;
                    }
                    return Some((Conn::Request(index as u32), len));
                }
                Err(error) => {
                    let errno = error.errno();
                    self.note(Note::EncodeFailed {
                        protocol: Protocol::V02,
                        service: index,
                        error,
                    });
                    self.v02_finish(index, Some((errno, StartStage::Setup)));
                }
            }
        }
        None
    }

    /// Closes the service's connection; with `failure`, answers its request with it.
    pub(super) fn v02_finish(&mut self, index: usize, failure: Option<(i32, StartStage)>) {
        if self.slots[index].v02 != ConnState::Closed {
            self.slots[index].v02 = ConnState::Closed;
            self.io.push(super::Io::Close {
                conn: Conn::Request(index as u32),
            });
        }
        if self.close_request(index).is_some() {
            if let Some((errno, stage)) = failure {
                self.fail(index, errno, stage);
            }
        }
    }

    /// The v0.2 agent is unreachable or misbehaved: fail every request in flight, tell the
    /// core, probe again with backoff.
    pub(super) fn v02_down(&mut self, cx: &Cx<'_>, reason: DownReason) {
        let was_up = self.is_up();
        if !std::mem::take(&mut self.quiet) {
            self.note(Note::Down {
                protocol: Protocol::V02,
                reason,
            });
        }
        self.stats.dropped += 1;
        for index in 0..self.slots.len() {
            if self.slots[index].v02 != ConnState::Closed || self.slots[index].request.is_some() {
                self.v02_finish(index, Some((libc::ECONNRESET, StartStage::Agent)));
            }
        }
        if was_up {
            self.events.push(Event::Down);
        }
        self.schedule_retry(cx);
    }

    /// A request passed its deadline.
    pub(super) fn v02_timeout(&mut self, cx: &Cx<'_>, index: usize) {
        let ms = self.timeout_ms();
        self.note(Note::RequestTimeout {
            protocol: Protocol::V02,
            service: index,
            timeout_ms: ms,
        });
        self.v02_down(cx, DownReason::NoAnswer(ms));
    }

    pub(super) fn v02_received(&mut self, cx: &Cx<'_>, index: usize, data: &[u8], fds: Fds<H>) {
        if !matches!(
            self.slots.get(index).map(|s| &s.v02),
            Some(ConnState::Open(_))
        ) || self.slots[index].request.is_none()
        {
            return; // a late completion of a finished request
        }
        if let Err(what) = self.v02_data(cx, index, data, fds) {
            self.note_misbehaviour(cx.now_ns, what);
            self.v02_finish(index, Some((libc::EBADMSG, StartStage::Refused)));
            self.v02_down(cx, DownReason::Misbehaved);
        }
    }

    /// Appends received bytes and handles complete replies.
    fn v02_data(
        &mut self,
        cx: &Cx<'_>,
        index: usize,
        data: &[u8],
        mut fds: Fds<H>,
    ) -> Result<(), What> {
        let ConnState::Open(open) = &mut self.slots[index].v02 else {
            return Ok(());
        };
        if data.len() > open.rx.len() - open.len {
            return Err(What::Said("reply longer than any v0.2 answer"));
        }
        open.rx[open.len..open.len + data.len()].copy_from_slice(data);
        open.len += data.len();
        if fds.truncated || fds.fds.len() > 1 {
            return Err(What::Said("more than one file descriptor"));
        }
        let mut pidfd = fds.fds.pop();
        loop {
            let ConnState::Open(open) = &mut self.slots[index].v02 else {
                return Ok(());
            };
            let buf = &open.rx[..open.len];
            if let Some((host_pid, container_pid)) = open.started {
                // After PROCESS_STARTED only the marker byte with the pidfd may come.
                return match wire::decode_pidfd_marker(buf) {
                    Ok(Decoded::NeedMore { .. }) if pidfd.is_some() => {
                        Err(What::Said("file descriptor without its marker byte"))
                    }
                    Ok(Decoded::NeedMore { .. }) => Ok(()),
                    Ok(Decoded::Done { consumed, .. }) => {
                        if open.len != consumed {
                            return Err(What::Said("bytes after the pidfd marker"));
                        }
                        let peer_ns = open.peer_ns;
                        let Some(fd) = pidfd.take() else {
                            return Err(What::Said("pidfd marker without a file descriptor"));
                        };
                        // v0.2's pid fields are not checked against the pidfd (their meaning
                        // varied between v0.2 agents); the namespace is.
                        self.check_pidfd(cx, &fd.class)?;
                        Self::check_namespace(&fd.class, peer_ns, None)?;
                        self.note(Note::V02Started {
                            service: index,
                            host_pid,
                            container_pid,
                        });
                        let qm_pid = if container_pid > 0 {
                            container_pid
                        } else {
                            host_pid
                        };
                        self.v02_finish(index, None);
                        self.adopt(index, fd, qm_pid);
                        self.reconnect_delay = self.config.reconnect_initial;
                        Ok(())
                    }
                    Err(_) => Err(What::Said("bad pidfd marker byte")),
                };
            }
            match wire::decode(buf) {
                Ok(Decoded::NeedMore { .. }) if pidfd.is_some() => {
                    return Err(What::Said("file descriptor before PROCESS_STARTED"))
                }
                Ok(Decoded::NeedMore { .. }) => return Ok(()),
                Ok(Decoded::Done { value, consumed }) => {
                    match value {
                        Frame::Started {
                            host_pid,
                            container_pid,
                        } => open.started = Some((host_pid, container_pid)),
                        Frame::Error { text } => {
                            if pidfd.is_some() {
                                return Err(What::Said("file descriptor with PROCESS_ERROR"));
                            }
                            self.agent_text.set(text);
                            self.note(Note::V02SpawnError { service: index });
                            self.v02_finish(index, Some((0, StartStage::Exec)));
                            self.reconnect_delay = self.config.reconnect_initial;
                            return Ok(());
                        }
                        _ => return Err(What::Said("unexpected v0.2 message")),
                    }
                    let ConnState::Open(open) = &mut self.slots[index].v02 else {
                        return Ok(());
                    };
                    open.rx.copy_within(consumed..open.len, 0);
                    open.len -= consumed;
                }
                Err(_) => return Err(What::Said("undecodable v0.2 message")),
            }
        }
    }
}
