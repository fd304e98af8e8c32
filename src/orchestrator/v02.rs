//! Driving a holden v0.2 agent: SOCK_STREAM, the legacy codec, one connection per request,
//! as v0.2 itself did — with v1's checks and bounds.
//!
//! Per request: connect, send START_PROCESS, receive PROCESS_STARTED then the one-byte `'x'`
//! message carrying the pidfd (or PROCESS_ERROR), close. The connection's operations run on
//! the service's own ring slot (its RECVMSG and SENDMSG tags are otherwise unused); replies
//! are reassembled in a small fixed buffer per service, since the only valid replies are short.
//! The request deadline is the same as v1's (the agent timer).
//!
//! Liveness: the agent counts as up after a successful connect; a request whose connect fails,
//! times out, or gets a malformed or unexpected reply marks the agent down (every request in
//! flight fails, QM services wait) and the link probes again with backoff.

use super::event_loop::Orchestrator;
use crate::log::{ErrnoText, Escaped, Priority};
use crate::supervise::{Event, ServiceId, StartFailure, StartStage};
use crate::wire::v02::{self, Decoded, Frame};
use ring::{Completion, OpTag};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

/// Longest reply we accept: PROCESS_ERROR (8 + 512) and the marker byte.
pub(crate) const LEGACY_REPLY_BYTES_MAX: usize = v02::HEADER_LEN + v02::ERROR_PAYLOAD_LEN + 1;

/// One in-flight v0.2 request of a service.
pub(crate) struct LegacyConn {
    pub fd: Option<OwnedFd>,
    rx: [u8; LEGACY_REPLY_BYTES_MAX],
    len: usize,
    /// PROCESS_STARTED seen: (host_pid, container_pid).
    started: Option<(i32, i32)>,
    /// The agent's place in the PID namespaces (SO_PEERCRED of this connection).
    peer_ns: Option<crate::pidfd::NsPid>,
}

impl LegacyConn {
    pub(crate) const fn new() -> LegacyConn {
        LegacyConn {
            fd: None,
            rx: [0; LEGACY_REPLY_BYTES_MAX],
            len: 0,
            started: None,
            peer_ns: None,
        }
    }

    fn reset(&mut self) {
        self.fd = None;
        self.len = 0;
        self.started = None;
    }
}

/// How a request ended badly.
enum Failure {
    /// The agent did something the protocol forbids: the request fails and the agent counts
    /// as down.
    Violation(&'static str),
}

impl Orchestrator {
    /// The link is v0.2 and a connect succeeded (probe or request): the agent is up.
    pub(crate) fn agent_legacy_up(&mut self) {
        if self.agent.is_up() {
            return;
        }
        self.agent.mark_up();
        self.counters
            .agent_connected
            .fetch_add(1, Ordering::Relaxed);
        self.log.line(
            Priority::Notice,
            format_args!("event=agent-up socket={} protocol=v0.2", self.agent_path()),
        );
        self.push_event(Event::AgentUp);
        self.update_status("up (v0.2)");
    }

    /// One QM spawn over a fresh v0.2 connection (the agent is up and no request of this
    /// service is outstanding: checked by `agent_request`).
    pub(crate) fn legacy_request(&mut self, service: ServiceId) {
        let index = service.index();
        let kind = crate::sys::socket::Kind::Stream;
        let fd = match super::agent::connect_unix(&self.agent.addr, kind) {
            Ok(fd) => fd,
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                self.push_event(Event::SpawnFailed {
                    service,
                    error: StartFailure {
                        errno,
                        stage: StartStage::Agent,
                    },
                });
                self.legacy_down(format_args!("connect: {}", ErrnoText(errno)));
                return;
            }
        };
        let len = match v02::encode_start(&mut self.agent.tx, &self.services[index].def.argv) {
            Ok(len) => len,
            Err(e) => {
                self.log.line(
                    Priority::Err,
                    format_args!("service={} partition=qm event=spawn-failed stage=encode protocol=v0.2 error=\"{e}\"", self.services[index].def.name),
                );
                self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                self.push_event(Event::SpawnFailed {
                    service,
                    error: StartFailure {
                        errno: libc::E2BIG,
                        stage: StartStage::Setup,
                    },
                });
                return;
            }
        };
        let rt = &mut self.services[index];
        let queued = self
            .ring
            .sendmsg(rt.slot, fd.as_fd(), &self.agent.tx[..len], None)
            .and_then(|()| self.ring.recvmsg(rt.slot, fd.as_fd()));
        rt.legacy.reset();
        rt.legacy.peer_ns = super::agent::peer_ns(&fd);
        rt.legacy.fd = Some(fd);
        let id = self.agent.next_legacy_id(index as u64);
        let deadline_ns =
            ring::now_ns().saturating_add(self.agent.request_timeout.as_nanos() as u64);
        rt.request = Some(super::agent::Request {
            id,
            deadline_ns,
            sent: true,
        });
        if let Err(e) = queued {
            self.legacy_finish(
                index,
                Some(StartFailure {
                    errno: libc::EIO,
                    stage: StartStage::Agent,
                }),
            );
            self.log.line(
                Priority::Err,
                format_args!("event=agent-request-failed protocol=v0.2 error=\"ring: {e}\""),
            );
            return;
        }
        self.agent_sync_timer();
    }

    /// Closes the service's v0.2 connection; with `failure`, answers its request with it.
    fn legacy_finish(&mut self, index: usize, failure: Option<StartFailure>) {
        let rt = &mut self.services[index];
        if self.ring.is_pending(rt.slot, OpTag::SendMsg) {
            let _ = self.ring.cancel_op(rt.slot, OpTag::SendMsg);
        }
        if self.ring.is_pending(rt.slot, OpTag::RecvMsg) {
            let _ = self.ring.cancel_op(rt.slot, OpTag::RecvMsg);
        }
        rt.legacy.reset();
        if rt.request.take().is_some() {
            if let Some(error) = failure {
                let service = rt.id;
                self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                self.push_event(Event::SpawnFailed { service, error });
            }
        }
    }

    /// The v0.2 agent is unreachable or misbehaved: fail every request in flight, tell the core,
    /// probe again with backoff.
    pub(crate) fn legacy_down(&mut self, why: std::fmt::Arguments<'_>) {
        let was_up = self.agent.is_up();
        if !self.agent.take_drop_quiet() {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=agent-down socket={} protocol=v0.2 reason=\"{why}\"",
                    self.agent_path()
                ),
            );
        }
        self.counters.agent_dropped.fetch_add(1, Ordering::Relaxed);
        for index in 0..self.services.len() {
            if self.services[index].legacy.fd.is_some() || self.services[index].request.is_some() {
                self.legacy_finish(
                    index,
                    Some(StartFailure {
                        errno: libc::ECONNRESET,
                        stage: StartStage::Agent,
                    }),
                );
            }
        }
        if was_up {
            self.push_event(Event::AgentDown);
            self.update_status("down");
        }
        self.agent_schedule_retry();
    }

    /// A request passed its deadline.
    pub(crate) fn legacy_timeout(&mut self, index: usize) {
        let ms = self.agent.request_timeout.as_millis();
        self.log.line(
            Priority::Warning,
            format_args!(
                "service={} partition=qm event=agent-request-timeout protocol=v0.2 timeout_ms={ms}",
                self.services[index].def.name
            ),
        );
        self.legacy_down(format_args!("a request got no answer within {ms} ms"));
    }

    /// A RECVMSG or SENDMSG of a service's v0.2 connection completed.
    pub(crate) fn legacy_on_completion(&mut self, index: usize, c: Completion) {
        let rt = &self.services[index];
        if rt.legacy.fd.is_none() || rt.request.is_none() {
            return; // a cancelled op of a finished request
        }
        match (c.op, c.result) {
            (OpTag::SendMsg, Ok(_)) => {}
            (OpTag::SendMsg, Err(e)) | (OpTag::RecvMsg, Err(e)) if e != ring::Errno::CANCELED => {
                self.legacy_down(format_args!(
                    "request {}: {}",
                    if c.op == OpTag::SendMsg {
                        "send"
                    } else {
                        "receive"
                    },
                    ErrnoText(e.0)
                ));
            }
            (OpTag::RecvMsg, Ok(0)) => {
                self.legacy_down(format_args!(
                    "the agent closed the connection before answering"
                ));
            }
            (OpTag::RecvMsg, Ok(_)) => {
                match self.legacy_on_data(index) {
                    Ok(true) => {}
                    Ok(false) => {
                        let rt = &self.services[index];
                        if let Some(fd) = rt.legacy.fd.as_ref() {
                            if let Err(e) = self.ring.recvmsg(rt.slot, fd.as_fd()) {
                                self.log.line(Priority::Err, format_args!("event=agent-request-failed protocol=v0.2 error=\"ring: {e}\""));
                                self.legacy_finish(
                                    index,
                                    Some(StartFailure {
                                        errno: libc::EIO,
                                        stage: StartStage::Agent,
                                    }),
                                );
                            }
                        }
                    }
                    Err(Failure::Violation(what)) => {
                        // Rate-limited like v1 (MISBEHAVIOUR_LOG_INTERVAL).
                        if let Some(suppressed) = self.agent.misbehaviour_log_due(ring::now_ns()) {
                            self.log.line(
                                Priority::Err,
                                format_args!(
                                    "event=agent-misbehaved socket={} protocol=v0.2 what=\"{what}\" suppressed={suppressed}",
                                    self.agent_path(),
                                ),
                            );
                        }
                        self.legacy_finish(
                            index,
                            Some(StartFailure {
                                errno: libc::EBADMSG,
                                stage: StartStage::Refused,
                            }),
                        );
                        self.legacy_down(format_args!("misbehaved"));
                    }
                }
            }
            _ => {}
        }
    }

    /// Appends received bytes and handles complete replies. `Ok(true)`: the request is done.
    fn legacy_on_data(&mut self, index: usize) -> Result<bool, Failure> {
        let slot = self.services[index].slot;
        let mut fds = self.ring.take_fds(slot);
        let data = self.ring.received(slot).unwrap_or(&[]);
        let conn = &mut self.services[index].legacy;
        if data.len() > conn.rx.len() - conn.len {
            return Err(Failure::Violation("reply longer than any v0.2 answer"));
        }
        conn.rx[conn.len..conn.len + data.len()].copy_from_slice(data);
        conn.len += data.len();
        if fds.truncated || fds.fds.len() > 1 {
            return Err(Failure::Violation("more than one file descriptor"));
        }
        let mut pidfd = fds.fds.pop();
        loop {
            let conn = &mut self.services[index].legacy;
            let buf = &conn.rx[..conn.len];
            if let Some((host_pid, container_pid)) = conn.started {
                // After PROCESS_STARTED only the marker byte with the pidfd may come.
                match v02::decode_pidfd_marker(buf) {
                    Ok(Decoded::NeedMore { .. }) => {
                        return if pidfd.is_some() {
                            Err(Failure::Violation(
                                "file descriptor without its marker byte",
                            ))
                        } else {
                            Ok(false)
                        };
                    }
                    Ok(Decoded::Done { consumed, .. }) => {
                        if conn.len != consumed {
                            return Err(Failure::Violation("bytes after the pidfd marker"));
                        }
                        let Some(fd) = pidfd.take() else {
                            return Err(Failure::Violation(
                                "pidfd marker without a file descriptor",
                            ));
                        };
                        self.legacy_started(index, fd, host_pid, container_pid)?;
                        return Ok(true);
                    }
                    Err(_) => return Err(Failure::Violation("bad pidfd marker byte")),
                }
            }
            match v02::decode(buf) {
                Ok(Decoded::NeedMore { .. }) => {
                    return if pidfd.is_some() {
                        Err(Failure::Violation("file descriptor before PROCESS_STARTED"))
                    } else {
                        Ok(false)
                    };
                }
                Ok(Decoded::Done { value, consumed }) => {
                    match value {
                        Frame::Started {
                            host_pid,
                            container_pid,
                        } => {
                            conn.started = Some((host_pid, container_pid));
                        }
                        Frame::Error { text } => {
                            if pidfd.is_some() {
                                return Err(Failure::Violation(
                                    "file descriptor with PROCESS_ERROR",
                                ));
                            }
                            let name = &self.services[index].def.name;
                            self.log.line(
                                Priority::Warning,
                                format_args!("service={name} partition=qm event=spawn-failed protocol=v0.2 agent_text=\"{}\"", Escaped(text)),
                            );
                            self.legacy_finish(
                                index,
                                Some(StartFailure {
                                    errno: 0,
                                    stage: StartStage::Exec,
                                }),
                            );
                            self.agent.mark_healthy();
                            return Ok(true);
                        }
                        _ => return Err(Failure::Violation("unexpected v0.2 message")),
                    }
                    let conn = &mut self.services[index].legacy;
                    conn.rx.copy_within(consumed..conn.len, 0);
                    conn.len -= consumed;
                }
                Err(_) => return Err(Failure::Violation("undecodable v0.2 message")),
            }
        }
    }

    fn legacy_started(
        &mut self,
        index: usize,
        fd: OwnedFd,
        host_pid: i32,
        container_pid: i32,
    ) -> Result<(), Failure> {
        // v0.2's pid fields are not checked against the pidfd (their meaning varied between
        // v0.2 agents); the namespace is.
        let peer_ns = self.services[index].legacy.peer_ns;
        if let Err(v) = self
            .check_received_pidfd(&fd)
            .and_then(|()| super::agent::check_namespace(&fd, peer_ns, None))
        {
            return Err(Failure::Violation(v.0));
        }
        let identity = crate::pidfd::identity(fd.as_fd())
            .unwrap_or(crate::pidfd::Identity { inode: 0, pid: -1 });
        self.log.line(
            Priority::Debug,
            format_args!(
                "service={} partition=qm event=started protocol=v0.2 agent_host_pid={host_pid} agent_container_pid={container_pid}",
                self.services[index].def.name
            ),
        );
        let rt = &mut self.services[index];
        rt.qm_pid = if container_pid > 0 {
            container_pid
        } else {
            host_pid
        };
        rt.request = None;
        rt.legacy.reset();
        let service = rt.id;
        self.counters.spawned_qm.fetch_add(1, Ordering::Relaxed);
        self.adopt(service, fd, identity.pid.max(0), identity);
        self.agent.mark_healthy();
        Ok(())
    }
}
