//! The control socket: `holdenctl`'s connections, served on the orchestrator's ring.
//!
//! Ring slots (fixed at start-up): one for the listening socket (its `ACCEPT`, and a retry
//! `TIMEOUT` after an accept error) and [`CONNECTIONS_MAX`] for connections, each with its
//! one `RECVMSG`, one `SENDMSG` and one deadline `TIMEOUT`. A connection past the limit, or
//! from a peer that is neither root nor in the configured group, gets one `Failure` frame
//! (sent non-blocking on a fresh socket, so it cannot wait) and is closed.
//!
//! A connection waits for one request at a time and answers it before reading the next;
//! listings go out one packet per item, the next sent when the previous send completed, so
//! the reply to any request fits one slot's send buffer whatever the number of services.
//! Whenever the orchestrator waits for the client (a request, or a send the client does not
//! drain), a deadline of [`IDLE_TIMEOUT`] runs; when it passes the connection is closed. A
//! monitor connection gets its frames by non-blocking `send` (the socket's send buffer is the
//! only queue, so they keep their order); when it is full, events are counted, a `POLL_ADD`
//! for `POLLOUT` waits for room, and a `Dropped` frame with the count goes out first. An idle
//! monitor has no deadline; a full one has. Nothing here allocates after start-up.

use super::event_loop::{now, Error, Orchestrator, Owner};
use crate::control::{
    self as proto, AgentInfo, Body, EventInfo, Exit, FailCode, LinkCode, Op, PartitionCode,
    ServiceInfo, StateCode, Why,
};
use crate::log::{Escaped, Priority};
use crate::supervise::{self, Command, Event, Partition, Reason, ServiceId, Transition};
use crate::sys::socket::{self, Listener, PeerCred};
use ring::{Completion, OpTag, Ring, SlotId, Timeout};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Control connections served at once.
pub const CONNECTIONS_MAX: usize = 8;
/// Ring slots of the control plane: the listener and the connections.
pub const CONTROL_SLOTS: usize = 1 + CONNECTIONS_MAX;
/// How long the orchestrator waits for a client's request, or for a client to take a reply.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before accepting again after an accept error (EMFILE, ...), so that a persistent
/// error cannot spin the loop.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Listen backlog.
const BACKLOG: i32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No client; the slot is available.
    Free,
    /// Waiting for a request.
    Reading,
    /// Sending a listing: next service index to look at, items sent.
    Listing { next: usize, sent: u32 },
    /// One reply in flight; then back to `Reading`.
    Replying,
    /// Subscribed to events.
    Monitor,
    /// Closed: waiting for its operations' completions before the slot is free again.
    Closing,
}

struct Conn {
    slot: SlotId,
    fd: Option<OwnedFd>,
    phase: Phase,
    /// Id of the request being answered (echoed in replies).
    request: u32,
    /// CLOCK_MONOTONIC ns by which the client must make progress.
    deadline_ns: Option<u64>,
    /// Status listing of one service only.
    only: Option<ServiceId>,
    /// Monitor: events not sent since the last successful send.
    dropped: u64,
}

/// Control settings given at start-up.
#[derive(Clone, Debug, Default)]
pub struct ControlSettings {
    /// The socket path; `None`: no control socket.
    pub socket: Option<PathBuf>,
    /// Group whose members may connect besides root.
    pub group: Option<String>,
}

/// The control plane's state, allocated in [`ControlServer::new`].
pub(crate) struct ControlServer {
    path: Option<PathBuf>,
    listener: Option<Listener>,
    listen_slot: SlotId,
    group_gid: Option<u32>,
    conns: Box<[Conn]>,
}

impl ControlServer {
    /// Resolves the group (getgrnam, at start-up only) and takes the ring slots. The socket
    /// itself is bound in [`Orchestrator::control_start`].
    pub(crate) fn new(
        settings: &ControlSettings,
        ring: &mut Ring,
        owners: &mut [Owner],
    ) -> Result<ControlServer, Error> {
        let group_gid = match &settings.group {
            Some(name) => Some(group_id(name)?),
            None => None,
        };
        let mut take = |owner: Owner| -> Result<SlotId, Error> {
            let id = ring
                .insert()
                .map_err(|e| Error::Service(format!("ring: {e}")))?;
            owners[id.index()] = owner;
            Ok(id)
        };
        let listen_slot = take(Owner::ControlListen)?;
        let mut conns = Vec::with_capacity(CONNECTIONS_MAX);
        for k in 0..CONNECTIONS_MAX {
            conns.push(Conn {
                slot: take(Owner::ControlConn(k as u8))?,
                fd: None,
                phase: Phase::Free,
                request: 0,
                deadline_ns: None,
                only: None,
                dropped: 0,
            });
        }
        if ring.limits().send_len < proto::FRAME_LEN_MAX as u32 {
            return Err(Error::Service(format!(
                "ring send buffer {} bytes is smaller than a control frame ({})",
                ring.limits().send_len,
                proto::FRAME_LEN_MAX
            )));
        }
        Ok(ControlServer {
            path: settings.socket.clone(),
            listener: None,
            listen_slot,
            group_gid,
            conns: conns.into_boxed_slice(),
        })
    }
}

/// The gid of a group name.
fn group_id(name: &str) -> Result<u32, Error> {
    match crate::sys::user::group_id(name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(Error::Service(format!(
            "control.group: no group named {name:?} (create it, or remove control.group)"
        ))),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(Error::Service(format!(
            "control.group {name:?}: contains NUL"
        ))),
        Err(e) => Err(Error::Io("control.group: getgrnam", e)),
    }
}

/// The peer's uid and whether it may use the socket: root, or a member of the group.
fn peer_allowed(fd: &OwnedFd, group: Option<u32>) -> (bool, u32) {
    let Ok(cred) = PeerCred::of(fd.as_fd()) else {
        return (false, u32::MAX);
    };
    if cred.uid == 0 {
        return (true, 0);
    }
    let allowed = group.is_some_and(|gid| cred.in_group(fd.as_fd(), gid));
    (allowed, cred.uid)
}

/// Sends one packet without waiting; the errno when it could not.
fn try_send(fd: &OwnedFd, bytes: &[u8]) -> Result<(), i32> {
    match socket::send(fd.as_fd(), bytes, true) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(libc::EMSGSIZE),
        Err(e) => Err(crate::sys::errno::of(&e)),
    }
}

/// Sends one frame on a fresh connection without waiting (refusals).
fn send_now(fd: &OwnedFd, body: &Body<'_>) {
    let mut buf = [0u8; 512];
    if let Ok(len) = proto::encode(&mut buf, 0, body) {
        let _ = socket::send(fd.as_fd(), &buf[..len], true);
    }
}

fn why_of(reason: Reason) -> Why {
    match reason {
        Reason::Added => Why::Added,
        Reason::Operator => Why::Operator,
        Reason::RestartDue => Why::RestartDue,
        Reason::Spawned(pid) => Why::Spawned(pid.0),
        Reason::SpawnFailed(e) => Why::SpawnFailed(e.errno),
        Reason::Exited(status) => Why::Exited(exit_of(status)),
        Reason::StartLimit => Why::StartLimit,
        Reason::Agent => Why::Agent,
        Reason::StopTimeout => Why::StopTimeout,
        Reason::Shutdown => Why::Shutdown,
        Reason::Removed => Why::Removed,
    }
}

fn exit_of(status: supervise::ExitStatus) -> Exit {
    match status {
        supervise::ExitStatus::Code(code) => Exit::Code(code),
        supervise::ExitStatus::Signal(sig) => Exit::Signal(sig),
        supervise::ExitStatus::Unknown => Exit::Unknown,
    }
}

fn partition_of(partition: Partition) -> PartitionCode {
    match partition {
        Partition::Local => PartitionCode::Local,
        Partition::Qm => PartitionCode::Qm,
    }
}

impl Orchestrator {
    /// Binds the control socket and starts accepting. A failure is logged and supervision
    /// goes on without a control socket: the control plane is not safety-relevant.
    pub(crate) fn control_start(&mut self) {
        let Some(path) = self.control.path.clone() else {
            return;
        };
        let mode = if self.control.group_gid.is_some() {
            0o660
        } else {
            0o600
        };
        match Listener::bind(
            path.as_os_str().as_bytes(),
            socket::Kind::Seqpacket,
            mode,
            self.control.group_gid,
            BACKLOG,
        ) {
            Ok((listener, _stale)) => {
                let _ = self.ring.accept(self.control.listen_slot, listener.fd.as_fd());
                self.control.listener = Some(listener);
                self.log.line(
                    Priority::Info,
                    format_args!(
                        "event=control-listening socket={} mode={} connections_max={CONNECTIONS_MAX}",
                        Escaped(path.as_os_str().as_bytes()),
                        if self.control.group_gid.is_some() { "0660" } else { "0600" }
                    ),
                );
            }
            Err(e) => self.log.line(
                Priority::Err,
                format_args!(
                    "event=control-unavailable socket={} error=\"{e}\" (holdenctl cannot reach this orchestrator; supervision goes on)",
                    Escaped(path.as_os_str().as_bytes())
                ),
            ),
        }
    }

    /// Closes every connection and the listener, and removes the socket file if it is still
    /// the one we created.
    pub(crate) fn control_close(&mut self) {
        for k in 0..CONNECTIONS_MAX {
            let conn = &mut self.control.conns[k];
            if conn.fd.is_some() {
                let _ = self.ring.cancel(conn.slot);
            }
        }
        let _ = self.ring.cancel(self.control.listen_slot);
        if let Some(listener) = self.control.listener.take() {
            listener.remove_file();
        }
    }

    pub(crate) fn control_on_listen(&mut self, c: Completion) {
        match c.op {
            OpTag::Accept => {}
            OpTag::Timeout => {
                if let Some(listener) = &self.control.listener {
                    let _ = self
                        .ring
                        .accept(self.control.listen_slot, listener.fd.as_fd());
                }
                return;
            }
            _ => return,
        }
        let accepted = self.ring.take_accepted(self.control.listen_slot);
        let Some(listener) = self.control.listener.as_ref().map(|l| &l.fd) else {
            return;
        };
        match c.result {
            Ok(_) => {
                let _ = self.ring.accept(self.control.listen_slot, listener.as_fd());
            }
            Err(ring::Errno(libc::EINTR)) | Err(ring::Errno(libc::ECANCELED)) => {
                let _ = self.ring.accept(self.control.listen_slot, listener.as_fd());
            }
            Err(e) => {
                self.log.line(
                    Priority::Warning,
                    format_args!("event=control-accept-failed error=\"{e}\""),
                );
                let _ = self
                    .ring
                    .timeout(self.control.listen_slot, Timeout::After(ACCEPT_RETRY_DELAY));
            }
        }
        if let Some(fd) = accepted {
            self.control_admit(fd);
        }
    }

    fn control_admit(&mut self, fd: OwnedFd) {
        let (allowed, uid) = peer_allowed(&fd, self.control.group_gid);
        if !allowed {
            self.log.line(
                Priority::Warning,
                format_args!("event=control-refused uid={uid} reason=permission-denied"),
            );
            send_now(
                &fd,
                &Body::Failure {
                    code: FailCode::PermissionDenied,
                    text: "permission denied: the control socket is for root and the control group",
                },
            );
            return;
        }
        let Some(k) = self
            .control
            .conns
            .iter()
            .position(|c| c.phase == Phase::Free)
        else {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=control-refused uid={uid} reason=too-many-clients connections_max={CONNECTIONS_MAX}"
                ),
            );
            send_now(
                &fd,
                &Body::Failure {
                    code: FailCode::TooManyClients,
                    text: "too many control clients: every connection slot is in use, try again",
                },
            );
            return;
        };
        self.log.line(
            Priority::Debug,
            format_args!("event=control-connected uid={uid} connection={k}"),
        );
        self.control.conns[k].fd = Some(fd);
        self.control.conns[k].dropped = 0;
        self.control_read(k);
    }

    /// Waits for the next request.
    fn control_read(&mut self, k: usize) {
        let conn = &mut self.control.conns[k];
        conn.phase = Phase::Reading;
        let Some(fd) = &conn.fd else { return };
        if self.ring.recvmsg(conn.slot, fd.as_fd()).is_err() {
            self.control_drop(k, "recvmsg");
            return;
        }
        self.control_deadline(k, true);
    }

    /// Sets (or clears) the connection's deadline and makes sure a ring timeout will fire.
    fn control_deadline(&mut self, k: usize, on: bool) {
        let conn = &mut self.control.conns[k];
        conn.deadline_ns = on.then(|| ring::now_ns() + IDLE_TIMEOUT.as_nanos() as u64);
        if let Some(at) = conn.deadline_ns {
            if !self.ring.is_pending(conn.slot, OpTag::Timeout) {
                let _ = self.ring.timeout(conn.slot, Timeout::At(at));
            }
        }
    }

    /// Closes a connection; its slot is free once its operations have completed.
    fn control_drop(&mut self, k: usize, why: &str) {
        let conn = &mut self.control.conns[k];
        if matches!(conn.phase, Phase::Free | Phase::Closing) {
            return;
        }
        self.log.line(
            Priority::Debug,
            format_args!("event=control-closed connection={k} why={why}"),
        );
        conn.phase = Phase::Closing;
        conn.deadline_ns = None;
        let _ = self.ring.cancel(conn.slot);
        self.control_reap(k);
    }

    /// A closing connection whose operations have all completed becomes free.
    fn control_reap(&mut self, k: usize) {
        let conn = &mut self.control.conns[k];
        if conn.phase != Phase::Closing {
            return;
        }
        if OpTag::ALL
            .iter()
            .any(|op| self.ring.is_pending(conn.slot, *op))
        {
            return;
        }
        conn.fd = None;
        conn.phase = Phase::Free;
        conn.only = None;
    }

    pub(crate) fn control_on_conn(&mut self, k: usize, c: Completion) {
        if self.control.conns[k].phase == Phase::Closing {
            self.control_reap(k);
            return;
        }
        match (c.op, c.result) {
            (OpTag::Timeout, _) => {
                let conn = &mut self.control.conns[k];
                match conn.deadline_ns {
                    Some(at) if ring::now_ns() >= at => {
                        self.log.line(
                            Priority::Warning,
                            format_args!(
                                "event=control-timeout connection={k} timeout_ms={} action=closed",
                                IDLE_TIMEOUT.as_millis()
                            ),
                        );
                        self.control_drop(k, "timeout");
                    }
                    Some(at) => {
                        let _ = self.ring.timeout(conn.slot, Timeout::At(at));
                    }
                    None => {}
                }
            }
            (OpTag::RecvMsg, Ok(0)) => self.control_drop(k, "closed-by-client"),
            (OpTag::RecvMsg, Ok(_)) if self.control.conns[k].phase == Phase::Monitor => {
                // A monitor connection takes no further requests: ignore, keep watching.
                let conn = &self.control.conns[k];
                if let Some(fd) = &conn.fd {
                    let _ = self.ring.recvmsg(conn.slot, fd.as_fd());
                }
            }
            (OpTag::Poll, Ok(_)) => self.control_on_writable(k),
            (OpTag::RecvMsg, Ok(_)) => self.control_on_request(k),
            (OpTag::RecvMsg, Err(ring::Errno(libc::EINTR))) => {
                let conn = &self.control.conns[k];
                if let Some(fd) = &conn.fd {
                    let _ = self.ring.recvmsg(conn.slot, fd.as_fd());
                }
            }
            (OpTag::SendMsg, Ok(_)) => self.control_on_sent(k),
            (_, Err(_)) => self.control_drop(k, "error"),
            _ => {}
        }
    }

    /// Encodes and sends one frame on connection `k` (its send must be idle).
    fn control_send(&mut self, k: usize, body: &Body<'_>) -> bool {
        let conn = &self.control.conns[k];
        let mut buf = [0u8; proto::FRAME_LEN_MAX];
        let Ok(len) = proto::encode(&mut buf, conn.request, body) else {
            return false;
        };
        let Some(fd) = &conn.fd else { return false };
        self.ring
            .sendmsg(conn.slot, fd.as_fd(), &buf[..len], None)
            .is_ok()
    }

    /// Sends a single reply, then reads the next request.
    fn control_reply(&mut self, k: usize, body: &Body<'_>) {
        self.control.conns[k].phase = Phase::Replying;
        if !self.control_send(k, body) {
            self.control_drop(k, "send");
            return;
        }
        self.control_deadline(k, true);
    }

    fn control_on_request(&mut self, k: usize) {
        let slot = self.control.conns[k].slot;
        if self.ring.recv_truncated(slot) {
            self.control_fail(
                k,
                FailCode::BadRequest,
                "request longer than a control frame",
            );
            return;
        }
        let mut packet = [0u8; proto::FRAME_LEN_MAX];
        let len = {
            let data = self.ring.received(slot).unwrap_or(&[]);
            let len = data.len().min(packet.len());
            packet[..len].copy_from_slice(&data[..len]);
            len
        };
        let frame = match proto::decode(&packet[..len]) {
            Ok(frame) if frame.body.is_request() => frame,
            Ok(_) => {
                self.control_fail(
                    k,
                    FailCode::BadRequest,
                    "that frame is a reply, not a request",
                );
                return;
            }
            Err(e) => {
                let mut text = crate::log::LineBuf::new();
                use std::fmt::Write as _;
                let _ = write!(text, "undecodable request: {e}");
                let text = std::str::from_utf8(text.as_bytes()).unwrap_or("undecodable request");
                self.control_fail(k, FailCode::BadRequest, text);
                return;
            }
        };
        self.control.conns[k].request = frame.id;
        match frame.body {
            Body::Status(None) => self.control_list(k, None),
            Body::Status(Some(name)) => match self.service_by_name(name) {
                Some(index) => self.control_list(k, Some(ServiceId(index as u32))),
                None => self.control_unknown(k, name),
            },
            Body::Command { op, name } => self.control_command(k, op, name),
            Body::AgentStatus => self.control_agent(k),
            Body::Monitor => {
                let conn = &mut self.control.conns[k];
                conn.phase = Phase::Monitor;
                conn.dropped = 0;
                // Monitor frames go out with non-blocking sends (the socket's send buffer is
                // the only queue), so that they keep their order; the first always fits.
                let mut buf = [0u8; 64];
                let sent = proto::encode(&mut buf, conn.request, &Body::Done(StateCode::Stopped))
                    .map_err(|_| libc::EINVAL)
                    .and_then(|len| {
                        conn.fd
                            .as_ref()
                            .map_or(Err(libc::EBADF), |fd| try_send(fd, &buf[..len]))
                    });
                if sent.is_err() {
                    self.control_drop(k, "send");
                    return;
                }
                self.control_deadline(k, false);
                // Keep a receive posted to see the client close.
                let conn = &self.control.conns[k];
                if let Some(fd) = &conn.fd {
                    let _ = self.ring.recvmsg(conn.slot, fd.as_fd());
                }
            }
            Body::Reload => self.control_reload(k),
            _ => self.control_fail(k, FailCode::BadRequest, "not a request"),
        }
    }

    fn control_fail(&mut self, k: usize, code: FailCode, text: &str) {
        self.control_reply(k, &Body::Failure { code, text });
    }

    fn control_unknown(&mut self, k: usize, name: &str) {
        let mut line = crate::log::LineBuf::new();
        use std::fmt::Write as _;
        let _ = write!(line, "no service named \"{name}\"");
        let text = std::str::from_utf8(line.as_bytes()).unwrap_or("no such service");
        self.control_fail(k, FailCode::UnknownService, text);
    }

    /// Index of the live service with this name.
    pub(crate) fn service_by_name(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|rt| rt.active && rt.def.name == name)
    }

    fn control_list(&mut self, k: usize, only: Option<ServiceId>) {
        let conn = &mut self.control.conns[k];
        conn.only = only;
        conn.phase = Phase::Listing {
            next: only.map_or(0, |id| id.index()),
            sent: 0,
        };
        self.control_list_next(k);
    }

    /// Sends the next item of a listing, or its `End`.
    fn control_list_next(&mut self, k: usize) {
        let Phase::Listing { next, sent } = self.control.conns[k].phase else {
            return;
        };
        let only = self.control.conns[k].only;
        let mut index = next;
        while index < self.services.len() && !self.services[index].active {
            index += 1;
        }
        let done = index >= self.services.len() || (only.is_some() && sent == 1);
        if done {
            self.control.conns[k].only = None;
            self.control_reply(k, &Body::End(sent));
            return;
        }
        let rt = &self.services[index];
        let Some(st) = self.core.status(rt.id) else {
            self.control.conns[k].phase = Phase::Listing {
                next: index + 1,
                sent,
            };
            return self.control_list_next(k);
        };
        let now = now();
        let info = ServiceInfo {
            name: &rt.def.name,
            partition: partition_of(st.partition),
            state: StateCode::of(st.state),
            pid: st.pid.map(|p| p.0),
            uptime_ms: st
                .running_since
                .map(|t| now.saturating_since(t).as_millis() as u64),
            restarts: st.restarts,
            last_exit: st.last_exit.map(exit_of),
            next_restart_ms: st
                .next_restart
                .map(|t| t.saturating_since(now).as_millis() as u64),
        };
        let mut buf = [0u8; proto::FRAME_LEN_MAX];
        let conn = &self.control.conns[k];
        let Ok(len) = proto::encode(&mut buf, conn.request, &Body::Service(info)) else {
            self.control_drop(k, "encode");
            return;
        };
        let ok = match &conn.fd {
            Some(fd) => self
                .ring
                .sendmsg(conn.slot, fd.as_fd(), &buf[..len], None)
                .is_ok(),
            None => false,
        };
        if !ok {
            self.control_drop(k, "send");
            return;
        }
        self.control.conns[k].phase = Phase::Listing {
            next: index + 1,
            sent: sent + 1,
        };
        self.control_deadline(k, true);
    }

    fn control_on_sent(&mut self, k: usize) {
        match self.control.conns[k].phase {
            Phase::Listing { .. } => self.control_list_next(k),
            Phase::Replying => self.control_read(k),
            _ => {}
        }
    }

    fn control_command(&mut self, k: usize, op: Op, name: &str) {
        let Some(index) = self.service_by_name(name) else {
            return self.control_unknown(k, name);
        };
        let service = self.services[index].id;
        let command = match op {
            Op::Start => Command::Start,
            Op::Stop => Command::Stop,
            Op::Restart => Command::Restart,
            Op::Kill(signal) => Command::Kill(signal as i32),
            Op::ResetFailed => Command::ResetFailed,
        };
        self.log.line(
            Priority::Notice,
            format_args!(
                "service={} event=control-command command={}",
                self.services[index].def.name,
                match op {
                    Op::Start => "start",
                    Op::Stop => "stop",
                    Op::Restart => "restart",
                    Op::Kill(_) => "kill",
                    Op::ResetFailed => "reset-failed",
                }
            ),
        );
        // Straight to the core (the event queue is empty between completions), so that a
        // refusal is the caller's answer rather than a log line.
        let result = self.core.handle(now(), Event::Command { service, command });
        self.drain_actions();
        self.pump();
        match result {
            Ok(()) => {
                let state = self
                    .core
                    .status(service)
                    .map_or(StateCode::Stopped, |s| StateCode::of(s.state));
                self.control_reply(k, &Body::Done(state));
            }
            Err(refusal) => {
                let mut line = crate::log::LineBuf::new();
                use std::fmt::Write as _;
                let _ = write!(line, "{}: {refusal}", self.services[index].def.name);
                let text = std::str::from_utf8(line.as_bytes()).unwrap_or("refused");
                self.control_fail(k, FailCode::Refused, text);
            }
        }
    }

    fn control_agent(&mut self, k: usize) {
        let link = if self.qm_service_count() == 0 {
            LinkCode::NotNeeded
        } else if self.agent.is_up() {
            LinkCode::Up
        } else {
            LinkCode::Down
        };
        let protocol = match self.agent.protocol {
            super::AgentProtocol::V1 => "v1",
            super::AgentProtocol::V02 => "v0.2",
            super::AgentProtocol::Auto => "auto",
        };
        let version = if link == LinkCode::Up {
            self.agent.version
        } else {
            (0, 0)
        };
        let mut path = [0u8; 108];
        let n = self.agent.addr.name(&mut path);
        let socket = std::str::from_utf8(&path[..n]).unwrap_or("(not UTF-8)");
        let info = AgentInfo {
            link,
            protocol,
            version,
            capabilities: self.agent.capabilities.bits(),
            connects: self.counters.agent_connected.load(Ordering::Relaxed),
            drops: self.counters.agent_dropped.load(Ordering::Relaxed),
            socket,
        };
        self.control_reply(k, &Body::Agent(info));
    }

    /// A state change: one `Event` frame to every monitor connection that can take it now;
    /// the others count it as dropped.
    pub(crate) fn control_on_transition(&mut self, t: Transition) {
        if !self.control.conns.iter().any(|c| c.phase == Phase::Monitor) {
            return;
        }
        let rt = &self.services[t.service.index()];
        let info = EventInfo {
            name: &rt.def.name,
            partition: partition_of(rt.def.policy.partition),
            from: StateCode::of(t.from),
            to: StateCode::of(t.to),
            why: why_of(t.reason),
            restarts: t.restarts,
            pid: (rt.last_pid > 0).then_some(rt.last_pid),
            next_delay_ms: t.next_delay.map(|d| d.as_millis() as u64),
        };
        let mut buf = [0u8; proto::FRAME_LEN_MAX];
        let Ok(len) = proto::encode(&mut buf, 0, &Body::Event(info)) else {
            return;
        };
        for k in 0..CONNECTIONS_MAX {
            let conn = &mut self.control.conns[k];
            if conn.phase != Phase::Monitor {
                continue;
            }
            let Some(fd) = &conn.fd else { continue };
            if conn.dropped > 0 {
                conn.dropped += 1;
                continue;
            }
            match try_send(fd, &buf[..len]) {
                Ok(()) => {}
                Err(libc::EAGAIN) | Err(libc::ENOBUFS) => {
                    // Full: count from here, and send the count when it drains (POLLOUT).
                    conn.dropped = 1;
                    if !self.ring.is_pending(conn.slot, OpTag::Poll) {
                        let _ = self
                            .ring
                            .poll_add(conn.slot, fd.as_fd(), libc::POLLOUT as u32);
                    }
                    self.control_deadline(k, true);
                }
                Err(_) => self.control_drop(k, "send"),
            }
        }
    }

    /// A monitor connection that was full can take data again: send the `Dropped` count.
    fn control_on_writable(&mut self, k: usize) {
        let conn = &mut self.control.conns[k];
        if conn.phase != Phase::Monitor || conn.dropped == 0 {
            return;
        }
        let Some(fd) = &conn.fd else { return };
        let mut buf = [0u8; 64];
        let Ok(len) = proto::encode(&mut buf, 0, &Body::Dropped(conn.dropped)) else {
            return;
        };
        match try_send(fd, &buf[..len]) {
            Ok(()) => {
                conn.dropped = 0;
                self.control_deadline(k, false);
            }
            Err(libc::EAGAIN) | Err(libc::ENOBUFS) => {
                let _ = self
                    .ring
                    .poll_add(conn.slot, fd.as_fd(), libc::POLLOUT as u32);
            }
            Err(_) => self.control_drop(k, "send"),
        }
    }

    /// Sends a reload's result to connection `k`.
    fn control_reload(&mut self, k: usize) {
        let mut notes = [0u8; proto::TEXT_LEN_MAX];
        match self.reload(&mut notes) {
            Ok((counts, len)) => {
                let text = std::str::from_utf8(&notes[..len]).unwrap_or("");
                self.control_reply(
                    k,
                    &Body::Reloaded(proto::ReloadInfo {
                        added: counts[0],
                        removed: counts[1],
                        changed: counts[2],
                        unchanged: counts[3],
                        needs_restart: text,
                    }),
                );
            }
            Err((code, message)) => self.control_fail(k, code, &message),
        }
    }

    /// QM services currently configured.
    pub(crate) fn qm_service_count(&self) -> usize {
        self.services
            .iter()
            .filter(|rt| rt.active && rt.def.policy.partition == Partition::Qm)
            .count()
    }
}
