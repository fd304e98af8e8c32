//! The control sub-shell: `holdenctl`'s connections, served on the orchestrator's ring.
//!
//! Ring slots (fixed at start-up): one for the listening socket (its `ACCEPT`, and a retry
//! `TIMEOUT` after an accept error) and [`CONNECTIONS_MAX`] for connections, each owning its
//! socket, with one `RECVMSG`, one `SENDMSG` and one deadline `TIMEOUT`. A connection past the
//! limit, or from a peer that is neither root nor in the configured group, gets one `Failure`
//! frame (sent non-blocking on a fresh socket, so it cannot wait) and is closed.
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
//!
//! What changes services — a command, a reload — is not done here: it is handed to the event
//! loop as a [`Request`], which answers through [`ControlServer::command_done`] and
//! [`ControlServer::reload_done`] once the engine has acted.

use super::agent_io::AgentIo;
use super::counters::Counters;
use super::engine::Engine;
use super::output::Outputs;
use super::services::Services;
use crate::control::{
    self as proto, AgentInfo, Body, EventInfo, Exit, FailCode, LinkCode, Op, PartitionCode,
    ServiceInfo, SpawnError, SpawnStage, StateCode, StatsInfo, Why,
};
use crate::histogram::Histogram;
use crate::log::{Escaped, FixedBuf, Logger, Priority, Quoted, Value};
use crate::output::history::{Cursor, Read};
use crate::supervise::{
    self, Command, MonoTime, Partition, Reason, Refusal, ServiceId, Transition,
};
use crate::sys::socket::{self, Listener, PeerCred, SocketFile};
use ring::{Completion, OpTag, Ring, SlotId, Timeout};
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
/// Looks again at a control socket that still answers at start-up (see `ControlServer::start`):
/// up to 2 s in all.
const LIVE_RETRIES: u32 = 40;
const LIVE_RETRY_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No client; the slot is available.
    Free,
    /// Waiting for a request.
    Reading,
    /// A command or reload is with the event loop.
    Waiting,
    /// Sending a listing: next service index to look at, items sent.
    Listing { next: usize, sent: u32 },
    /// One reply in flight; then back to `Reading`.
    Replying,
    /// Subscribed to events.
    Monitor,
    /// Sending a service's output lines (one frame in flight): its index, whether it goes on
    /// following, lines sent, and (not following) the line number it ends before: the end of
    /// the history when the request came, so that a service writing faster than the client
    /// reads cannot make the answer endless.
    Logs {
        index: usize,
        follow: bool,
        sent: u32,
        until: u64,
    },
    /// Following a service's output, every line sent: waiting for new ones.
    Following { index: usize, sent: u32 },
    /// Closed: waiting for its operations' completions before the slot is free again.
    Closing,
}

struct Conn {
    /// Owns the client's socket while the phase is not `Free`.
    slot: SlotId,
    phase: Phase,
    /// Id of the request being answered (echoed in replies).
    request: u32,
    /// CLOCK_MONOTONIC ns by which the client must make progress.
    deadline_ns: Option<u64>,
    /// Status listing of one service only.
    only: Option<ServiceId>,
    /// Monitor: events not sent since the last successful send.
    dropped: u64,
    /// Logs: the next line to send.
    cursor: Option<Cursor>,
    /// The client (SO_PEERCRED at accept), for log lines.
    peer: Peer,
}

/// Who a connection is, and what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    uid: u32,
    pid: i32,
    /// In `[control] read_group` only: status, agent and monitor, no command.
    read_only: bool,
}

impl Peer {
    const NONE: Peer = Peer {
        uid: u32::MAX,
        pid: 0,
        read_only: true,
    };
}

/// Control settings given at start-up.
#[derive(Clone, Debug, Default)]
pub struct ControlSettings {
    /// The socket path; `None`: no control socket.
    pub socket: Option<PathBuf>,
    /// Group whose members may connect besides root.
    pub group: Option<String>,
    /// Group whose members may query (status, agent, stats, monitor) but not command.
    pub read_group: Option<String>,
}

/// What the control plane asks of the event loop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Request {
    /// Run an operator command; answer with [`ControlServer::command_done`].
    Command {
        conn: usize,
        service: ServiceId,
        command: Command,
    },
    /// Re-read the configuration; answer with [`ControlServer::reload_done`].
    Reload { conn: usize },
    /// Re-exec the orchestrator; the new instance answers on the connection handed over
    /// ([`ControlServer::waiting_conn`]), or [`ControlServer::reexec_failed`].
    Reexec { conn: usize },
}

/// What the control plane may look at to answer.
pub(crate) struct View<'a> {
    pub services: &'a Services,
    /// Local services' output (`holdenctl logs`).
    pub outputs: &'a Outputs,
    pub engine: &'a Engine<OwnedFd>,
    pub agent: &'a AgentIo,
    pub counters: &'a Counters,
    /// How long the loop spent on each completion.
    pub stall: &'a Histogram,
    pub log_dropped: u64,
    pub now: MonoTime,
}

/// Which of its slots a completion is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Listen,
    Conn(usize),
}

/// The control plane's state, allocated in [`ControlServer::new`].
pub(crate) struct ControlServer {
    path: Option<PathBuf>,
    /// The socket file we created (removed on exit only if still ours).
    file: Option<SocketFile>,
    listening: bool,
    listen_slot: SlotId,
    group_gid: Option<u32>,
    read_gid: Option<u32>,
    conns: Box<[Conn]>,
}

/// Answers the `holdenctl reexec` request `request` on `fd`, a connection the previous
/// instance handed over; the connection is closed afterwards.
pub(crate) fn answer_handed_over(fd: OwnedFd, request: u32, info: proto::ReexecInfo) {
    let mut buf = [0u8; 64];
    if let Ok(len) = proto::encode(&mut buf, request, &Body::Reexecuted(info)) {
        let _ = try_send(fd.as_fd(), &buf[..len]);
    }
}

/// Why the control plane could not be set up.
pub(crate) enum SetupError {
    Group(String),
    Ring(String),
}

impl ControlServer {
    /// Resolves the group (getgrnam, at start-up only) and takes the ring slots. The socket
    /// itself is bound in [`ControlServer::start`].
    pub(crate) fn new(
        settings: &ControlSettings,
        ring: &mut Ring,
    ) -> Result<ControlServer, SetupError> {
        let group_gid = match &settings.group {
            Some(name) => Some(group_id("control.group", name).map_err(SetupError::Group)?),
            None => None,
        };
        let read_gid = match &settings.read_group {
            Some(name) => Some(group_id("control.read_group", name).map_err(SetupError::Group)?),
            None => None,
        };
        let mut take = || {
            ring.insert()
                .map_err(|e| SetupError::Ring(format!("ring: {e}")))
        };
        let listen_slot = take()?;
        let mut conns = Vec::with_capacity(CONNECTIONS_MAX);
        for _ in 0..CONNECTIONS_MAX {
            conns.push(Conn {
                slot: take()?,
                phase: Phase::Free,
                request: 0,
                deadline_ns: None,
                only: None,
                dropped: 0,
                cursor: None,
                peer: Peer::NONE,
            });
        }
        if ring.limits().send_len < proto::FRAME_LEN_MAX as u32 {
            return Err(SetupError::Ring(format!(
                "ring send buffer {} bytes is smaller than a control frame ({})",
                ring.limits().send_len,
                proto::FRAME_LEN_MAX
            )));
        }
        Ok(ControlServer {
            path: settings.socket.clone(),
            file: None,
            listening: false,
            listen_slot,
            group_gid,
            read_gid,
            conns: conns.into_boxed_slice(),
        })
    }

    /// Every ring slot of the control plane.
    pub(crate) fn slots(&self) -> impl Iterator<Item = SlotId> + '_ {
        std::iter::once(self.listen_slot).chain(self.conns.iter().map(|c| c.slot))
    }

    /// Which of the control plane's slots `slot` is.
    pub(crate) fn slot_of(&self, slot: SlotId) -> Option<Slot> {
        if slot == self.listen_slot {
            return Some(Slot::Listen);
        }
        self.conns
            .iter()
            .position(|c| c.slot == slot)
            .map(Slot::Conn)
    }

    /// Binds the control socket and starts accepting. A failure is logged and supervision
    /// goes on without a control socket: the control plane is not safety-relevant.
    ///
    /// `inherited` is the listener of the instance before a re-exec: it is used if it is still
    /// the socket at the path, so that no client is refused during the re-exec.
    pub(crate) fn start(&mut self, ring: &mut Ring, log: &Logger, inherited: Option<OwnedFd>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let shown = Value(Escaped(path.as_os_str().as_bytes()));
        // The file belongs to the group that may connect at all: the read group when there
        // is one (members of the command group must be in it too), else the command group.
        let file_gid = self.read_gid.or(self.group_gid);
        let mode = if file_gid.is_some() { 0o660 } else { 0o600 };
        let bind = || {
            Listener::bind(
                path.as_os_str().as_bytes(),
                socket::Kind::Seqpacket,
                mode,
                file_gid,
                BACKLOG,
            )
        };
        // A listener that still answers right after the previous instance died (we hold the
        // runtime directory's lock, so it is dead) is its io_uring being torn down, which
        // holds the socket for a moment: wait for it (start-up only). Never unlinked while
        // it answers.
        let kept = inherited.map(|fd| Listener::inherited(fd, path.as_os_str().as_bytes()));
        if let Some(Err(e)) = &kept {
            log.line(
                Priority::Warning,
                format_args!(
                    "event=control-not-kept socket={shown} error={} effect=\"bound anew\"",
                    Quoted(e)
                ),
            );
        }
        let mut bound = match kept {
            Some(Ok(listener)) => Ok((listener, false)),
            _ => bind(),
        };
        for _ in 0..LIVE_RETRIES {
            if !matches!(bound, Err(socket::BindError::Live)) {
                break;
            }
            std::thread::sleep(LIVE_RETRY_INTERVAL);
            bound = bind();
        }
        match bound {
            Ok((listener, _stale)) => {
                let (fd, file) = listener.into_parts();
                self.file = file;
                if ring.attach(self.listen_slot, fd).is_ok() {
                    self.listening = true;
                    let _ = ring.accept(self.listen_slot);
                }
                log.line(
                    Priority::Info,
                    format_args!(
                        "event=control-listening socket={shown} mode={} connections_max={CONNECTIONS_MAX}",
                        if file_gid.is_some() { "0660" } else { "0600" }
                    ),
                );
            }
            Err(e) => log.line(
                Priority::Err,
                format_args!(
                    "event=control-unavailable socket={shown} error={} consequence=\"holdenctl cannot reach this orchestrator; supervision goes on\"",
                    Quoted(&e)
                ),
            ),
        }
    }

    /// Closes every connection and the listener, and removes the socket file if it is still
    /// the one we created.
    pub(crate) fn close(&mut self, ring: &mut Ring) {
        for conn in self.conns.iter() {
            let _ = ring.cancel(conn.slot);
        }
        let _ = ring.cancel(self.listen_slot);
        self.listening = false;
        if let Some(file) = self.file.take() {
            file.remove();
        }
    }

    /// A completion on one of the control plane's slots.
    pub(crate) fn on_completion(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        slot: Slot,
        c: Completion,
    ) -> Option<Request> {
        match slot {
            Slot::Listen => {
                self.on_listen(ring, log, c);
                None
            }
            Slot::Conn(k) => self.on_conn(ring, log, view, k, c),
        }
    }

    fn on_listen(&mut self, ring: &mut Ring, log: &Logger, c: Completion) {
        match c.op {
            OpTag::Accept => {}
            OpTag::Timeout => {
                if self.listening {
                    let _ = ring.accept(self.listen_slot);
                }
                return;
            }
            _ => return,
        }
        let accepted = ring.take_accepted(self.listen_slot);
        if !self.listening {
            return;
        }
        match c.result {
            Ok(_) | Err(ring::Errno(libc::EINTR)) | Err(ring::Errno(libc::ECANCELED)) => {
                let _ = ring.accept(self.listen_slot);
            }
            Err(e) => {
                log.line(
                    Priority::Warning,
                    format_args!("event=control-accept-failed error={}", Quoted(e)),
                );
                let _ = ring.timeout(self.listen_slot, Timeout::After(ACCEPT_RETRY_DELAY));
            }
        }
        if let Some(fd) = accepted {
            self.admit(ring, log, fd);
        }
    }

    fn admit(&mut self, ring: &mut Ring, log: &Logger, fd: OwnedFd) {
        let (peer, allowed) = peer_of(fd.as_fd(), self.group_gid, self.read_gid);
        let (uid, pid) = (peer.uid, peer.pid);
        if !allowed {
            log.line(
                Priority::Warning,
                format_args!("event=control-refused uid={uid} pid={pid} reason=permission-denied"),
            );
            send_now(
                fd.as_fd(),
                &Body::Failure {
                    code: FailCode::PermissionDenied,
                    text: "permission denied: the control socket is for root and the control group",
                },
            );
            return;
        }
        let Some(k) = self.conns.iter().position(|c| c.phase == Phase::Free) else {
            log.line(
                Priority::Warning,
                format_args!(
                    "event=control-refused uid={uid} pid={pid} reason=too-many-clients connections_max={CONNECTIONS_MAX}"
                ),
            );
            send_now(
                fd.as_fd(),
                &Body::Failure {
                    code: FailCode::TooManyClients,
                    text: "too many control clients: every connection slot is in use, try again",
                },
            );
            return;
        };
        if ring.attach(self.conns[k].slot, fd).is_err() {
            return;
        }
        log.line(
            Priority::Debug,
            format_args!(
                "event=control-connected uid={uid} pid={pid} connection={k} access={}",
                if peer.read_only { "read-only" } else { "full" }
            ),
        );
        self.conns[k].dropped = 0;
        self.conns[k].peer = peer;
        self.read(ring, log, k);
    }

    /// Waits for the next request.
    fn read(&mut self, ring: &mut Ring, log: &Logger, k: usize) {
        self.conns[k].phase = Phase::Reading;
        if ring.recvmsg(self.conns[k].slot).is_err() {
            self.drop_conn(ring, log, k, "recvmsg");
            return;
        }
        self.deadline(ring, k, true);
    }

    /// Sets (or clears) the connection's deadline and makes sure a ring timeout will fire.
    fn deadline(&mut self, ring: &mut Ring, k: usize, on: bool) {
        let conn = &mut self.conns[k];
        conn.deadline_ns = on.then(|| ring::now_ns() + IDLE_TIMEOUT.as_nanos() as u64);
        if let Some(at) = conn.deadline_ns {
            if !ring.is_pending(conn.slot, OpTag::Timeout) {
                let _ = ring.timeout(conn.slot, Timeout::At(at));
            }
        }
    }

    /// Closes a connection; its slot is free once its operations have completed.
    fn drop_conn(&mut self, ring: &mut Ring, log: &Logger, k: usize, why: &str) {
        let conn = &mut self.conns[k];
        if matches!(conn.phase, Phase::Free | Phase::Closing) {
            return;
        }
        log.line(
            Priority::Debug,
            format_args!("event=control-closed connection={k} why={why}"),
        );
        conn.phase = Phase::Closing;
        conn.deadline_ns = None;
        let _ = ring.cancel(conn.slot);
        self.reap(ring, k);
    }

    /// A closing connection whose operations have all completed becomes free (its socket
    /// closed).
    fn reap(&mut self, ring: &mut Ring, k: usize) {
        let conn = &mut self.conns[k];
        if conn.phase != Phase::Closing {
            return;
        }
        if OpTag::ALL.iter().any(|op| ring.is_pending(conn.slot, *op)) {
            return;
        }
        if let Ok(fd) = ring.detach(conn.slot) {
            drop(fd);
        }
        conn.phase = Phase::Free;
        conn.only = None;
        conn.cursor = None;
        conn.peer = Peer::NONE;
    }

    fn on_conn(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
        c: Completion,
    ) -> Option<Request> {
        if self.conns[k].phase == Phase::Closing {
            self.reap(ring, k);
            return None;
        }
        match (c.op, c.result) {
            (OpTag::Timeout, _) => {
                let conn = &mut self.conns[k];
                match conn.deadline_ns {
                    Some(at) if ring::now_ns() >= at => {
                        log.line(
                            Priority::Warning,
                            format_args!(
                                "event=control-timeout connection={k} timeout_ms={} action=closed",
                                IDLE_TIMEOUT.as_millis()
                            ),
                        );
                        self.drop_conn(ring, log, k, "timeout");
                    }
                    Some(at) => {
                        let _ = ring.timeout(conn.slot, Timeout::At(at));
                    }
                    None => {}
                }
                None
            }
            (OpTag::RecvMsg, Ok(0)) => {
                self.drop_conn(ring, log, k, "closed-by-client");
                None
            }
            (OpTag::RecvMsg, Ok(_))
                if matches!(
                    self.conns[k].phase,
                    Phase::Monitor | Phase::Following { .. } | Phase::Logs { follow: true, .. }
                ) =>
            {
                // A monitor or follower takes no further requests: ignore, keep watching.
                let _ = ring.recvmsg(self.conns[k].slot);
                None
            }
            (OpTag::Poll, Ok(_)) => {
                self.on_writable(ring, log, k);
                None
            }
            (OpTag::RecvMsg, Ok(_)) => self.on_request(ring, log, view, k),
            (OpTag::RecvMsg, Err(ring::Errno(libc::EINTR))) => {
                let _ = ring.recvmsg(self.conns[k].slot);
                None
            }
            (OpTag::SendMsg, Ok(_)) => {
                self.on_sent(ring, log, view, k);
                None
            }
            (_, Err(_)) => {
                self.drop_conn(ring, log, k, "error");
                None
            }
            _ => None,
        }
    }

    /// Encodes and sends one frame on connection `k` (its send must be idle).
    fn send(&mut self, ring: &mut Ring, k: usize, body: &Body<'_>) -> bool {
        let conn = &self.conns[k];
        let mut buf = [0u8; proto::FRAME_LEN_MAX];
        let Ok(len) = proto::encode(&mut buf, conn.request, body) else {
            return false;
        };
        ring.sendmsg(conn.slot, &buf[..len], None).is_ok()
    }

    /// Sends a single reply, then reads the next request.
    fn reply(&mut self, ring: &mut Ring, log: &Logger, k: usize, body: &Body<'_>) {
        self.conns[k].phase = Phase::Replying;
        if !self.send(ring, k, body) {
            self.drop_conn(ring, log, k, "send");
            return;
        }
        self.deadline(ring, k, true);
    }

    fn fail(&mut self, ring: &mut Ring, log: &Logger, k: usize, code: FailCode, text: &str) {
        self.reply(ring, log, k, &Body::Failure { code, text });
    }

    fn unknown(&mut self, ring: &mut Ring, log: &Logger, k: usize, name: &str) {
        let mut line = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
        let _ = write!(line, "no service named \"{name}\"");
        self.fail(ring, log, k, FailCode::UnknownService, line.as_str());
    }

    fn on_request(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
    ) -> Option<Request> {
        let slot = self.conns[k].slot;
        if ring.recv_truncated(slot) {
            self.fail(
                ring,
                log,
                k,
                FailCode::BadRequest,
                "request longer than a control frame",
            );
            return None;
        }
        let mut packet = [0u8; proto::FRAME_LEN_MAX];
        let len = {
            let data = ring.received(slot).unwrap_or(&[]);
            let len = data.len().min(packet.len());
            packet[..len].copy_from_slice(&data[..len]);
            len
        };
        let frame = match proto::decode(&packet[..len]) {
            Ok(frame) if frame.body.is_request() => frame,
            Ok(_) => {
                self.fail(
                    ring,
                    log,
                    k,
                    FailCode::BadRequest,
                    "that frame is a reply, not a request",
                );
                return None;
            }
            Err(e) => {
                let mut text = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
                let _ = write!(text, "undecodable request: {e}");
                self.fail(ring, log, k, FailCode::BadRequest, text.as_str());
                return None;
            }
        };
        self.conns[k].request = frame.id;
        let peer = self.conns[k].peer;
        if peer.read_only
            && matches!(
                frame.body,
                Body::Command { .. } | Body::Reload | Body::Reexec
            )
        {
            let command = match frame.body {
                Body::Command { op, .. } => op_name(op),
                Body::Reexec => "reexec",
                _ => "reload",
            };
            log.line(
                Priority::Warning,
                format_args!(
                    "event=control-refused uid={} pid={} reason=read-only command={command}",
                    peer.uid, peer.pid
                ),
            );
            let mut text = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
            let _ = write!(
                text,
                "permission denied: uid {} is in the control read group: it may look \
                 (status, agent, stats, monitor, logs), not {command}",
                peer.uid
            );
            self.fail(ring, log, k, FailCode::ReadOnly, text.as_str());
            return None;
        }
        match frame.body {
            Body::Status(None) => self.list(ring, log, view, k, None),
            Body::Status(Some(name)) => match view.services.by_name(name) {
                Some(index) => self.list(ring, log, view, k, Some(ServiceId(index as u32))),
                None => self.unknown(ring, log, k, name),
            },
            Body::Command { op, name } => return self.command(ring, log, view, k, op, name),
            Body::AgentStatus => self.agent(ring, log, view, k),
            Body::StatsRequest => self.stats(ring, log, view, k),
            Body::Monitor => self.monitor(ring, log, k),
            Body::Logs {
                name,
                lines,
                follow,
            } => self.logs(ring, log, view, k, name, lines, follow),
            Body::Reload => {
                log.line(
                    Priority::Notice,
                    format_args!(
                        "event=control-command command=reload uid={} pid={}",
                        peer.uid, peer.pid
                    ),
                );
                self.conns[k].phase = Phase::Waiting;
                return Some(Request::Reload { conn: k });
            }
            Body::Reexec => {
                log.line(
                    Priority::Notice,
                    format_args!(
                        "event=control-command command=reexec uid={} pid={}",
                        peer.uid, peer.pid
                    ),
                );
                self.conns[k].phase = Phase::Waiting;
                return Some(Request::Reexec { conn: k });
            }
            _ => self.fail(ring, log, k, FailCode::BadRequest, "not a request"),
        }
        None
    }

    fn monitor(&mut self, ring: &mut Ring, log: &Logger, k: usize) {
        let conn = &mut self.conns[k];
        conn.phase = Phase::Monitor;
        conn.dropped = 0;
        // Monitor frames go out with non-blocking sends (the socket's send buffer is the only
        // queue), so that they keep their order; the first always fits.
        let mut buf = [0u8; 64];
        let sent = proto::encode(&mut buf, conn.request, &Body::Done(StateCode::Stopped))
            .map_err(|_| libc::EINVAL)
            .and_then(|len| {
                ring.fd(conn.slot)
                    .map_or(Err(libc::EBADF), |fd| try_send(fd, &buf[..len]))
            });
        if sent.is_err() {
            self.drop_conn(ring, log, k, "send");
            return;
        }
        self.deadline(ring, k, false);
        // Keep a receive posted to see the client close.
        let _ = ring.recvmsg(self.conns[k].slot);
    }

    fn list(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
        only: Option<ServiceId>,
    ) {
        let conn = &mut self.conns[k];
        conn.only = only;
        conn.phase = Phase::Listing {
            next: only.map_or(0, |id| id.index()),
            sent: 0,
        };
        self.list_next(ring, log, view, k);
    }

    /// Sends the next item of a listing, or its `End`.
    fn list_next(&mut self, ring: &mut Ring, log: &Logger, view: &View<'_>, k: usize) {
        loop {
            let Phase::Listing { next, sent } = self.conns[k].phase else {
                return;
            };
            let only = self.conns[k].only;
            let list = &view.services.list;
            let mut index = next;
            while index < list.len() && !list[index].active {
                index += 1;
            }
            if index >= list.len() || (only.is_some() && sent == 1) {
                self.conns[k].only = None;
                self.reply(ring, log, k, &Body::End(sent));
                return;
            }
            let service = &list[index];
            let Some(st) = view.engine.core().status(service.id) else {
                self.conns[k].phase = Phase::Listing {
                    next: index + 1,
                    sent,
                };
                continue;
            };
            let now = view.now;
            let info = ServiceInfo {
                name: &service.def.name,
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
                spawn_error: st.last_spawn_error.map(spawn_error_of),
                start_limit_hit: st.start_limit_hit,
                status: service.status_text.as_str(),
                kind: match service.def.policy.readiness.kind {
                    supervise::Kind::Simple => crate::control::TypeCode::Simple,
                    supervise::Kind::Exec => crate::control::TypeCode::Exec,
                    supervise::Kind::Notify => crate::control::TypeCode::Notify,
                    supervise::Kind::Oneshot => crate::control::TypeCode::Oneshot,
                },
                ready_ms: st.ready_after.map(|d| d.as_millis() as u64),
            };
            if !self.send(ring, k, &Body::Service(info)) {
                self.drop_conn(ring, log, k, "send");
                return;
            }
            self.conns[k].phase = Phase::Listing {
                next: index + 1,
                sent: sent + 1,
            };
            self.deadline(ring, k, true);
            return;
        }
    }

    /// A `Logs` request: the service's figures, then its lines one frame at a time.
    #[allow(clippy::too_many_arguments)]
    fn logs(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
        name: &str,
        lines: u32,
        follow: bool,
    ) {
        let Some(index) = view.services.by_name(name) else {
            return self.unknown(ring, log, k, name);
        };
        let Some(output) = view.outputs.get(index) else {
            return self.unknown(ring, log, k, name);
        };
        let Some(history) = output.history() else {
            let mut text = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
            let _ = write!(
                text,
                "service \"{name}\": its output is not captured, so the orchestrator keeps none \
                 (stdout and stderr are \"inherit\", \"null\" or \"file:...\"; a QM service's \
                 output stays in the QM partition)"
            );
            return self.fail(ring, log, k, FailCode::Refused, text.as_str());
        };
        let (read, dropped) = output.counts();
        let stats = proto::LogStatsInfo {
            lines: read,
            dropped,
            first_seq: history.first_seq(),
            next_seq: history.next_seq(),
        };
        let conn = &mut self.conns[k];
        conn.cursor = Some(if lines == 0 {
            history.end()
        } else {
            history.last(u64::from(lines))
        });
        conn.phase = Phase::Logs {
            index,
            follow,
            sent: 0,
            until: if follow { u64::MAX } else { stats.next_seq },
        };
        if !self.send(ring, k, &Body::LogStats(stats)) {
            return self.drop_conn(ring, log, k, "send");
        }
        self.deadline(ring, k, true);
        if follow {
            // Keep a receive posted to see the client close.
            let _ = ring.recvmsg(self.conns[k].slot);
        }
    }

    /// The next frame of a `Logs` answer: a line, a count of lines lost, or the end.
    fn logs_next(&mut self, ring: &mut Ring, log: &Logger, outputs: &Outputs, k: usize) {
        let Phase::Logs {
            index,
            follow,
            sent,
            until,
        } = self.conns[k].phase
        else {
            return;
        };
        let history = outputs.get(index).and_then(|o| o.history());
        let (Some(history), Some(mut cursor)) = (history, self.conns[k].cursor) else {
            // The service went away (reload).
            self.conns[k].cursor = None;
            return self.reply(ring, log, k, &Body::End(sent));
        };
        if cursor.seq >= until {
            self.conns[k].cursor = None;
            return self.reply(ring, log, k, &Body::End(sent));
        }
        let mut text = [0u8; proto::LOG_TEXT_LEN_MAX];
        let body = match history.read(&mut cursor, &mut text) {
            Read::Record(r) => Body::LogLine(proto::LogLineInfo {
                seq: r.seq,
                stream: match r.stream {
                    crate::output::Stream::Stdout => proto::StreamCode::Stdout,
                    crate::output::Stream::Stderr => proto::StreamCode::Stderr,
                },
                priority: r.priority.min(7),
                truncated: r.truncated,
                text: r.text,
            }),
            Read::Missed(n) => Body::Dropped(n),
            Read::End if follow => {
                self.conns[k].phase = Phase::Following { index, sent };
                self.deadline(ring, k, false);
                return;
            }
            Read::End => {
                self.conns[k].cursor = None;
                return self.reply(ring, log, k, &Body::End(sent));
            }
        };
        self.conns[k].cursor = Some(cursor);
        if !self.send(ring, k, &body) {
            return self.drop_conn(ring, log, k, "send");
        }
        let sent = sent + u32::from(matches!(body, Body::LogLine(_)));
        self.conns[k].phase = Phase::Logs {
            index,
            follow,
            sent,
            until,
        };
        self.deadline(ring, k, true);
    }

    /// Whether some connection follows a service's output.
    pub(crate) fn following(&self) -> bool {
        self.conns
            .iter()
            .any(|c| matches!(c.phase, Phase::Following { .. }))
    }

    /// New lines of service `index`: followers that were waiting get them.
    pub(crate) fn on_output(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        outputs: &Outputs,
        index: usize,
    ) {
        for k in 0..CONNECTIONS_MAX {
            if let Phase::Following { index: i, sent } = self.conns[k].phase {
                if i == index {
                    self.conns[k].phase = Phase::Logs {
                        index,
                        follow: true,
                        sent,
                        until: u64::MAX,
                    };
                    self.logs_next(ring, log, outputs, k);
                }
            }
        }
    }

    fn on_sent(&mut self, ring: &mut Ring, log: &Logger, view: &View<'_>, k: usize) {
        match self.conns[k].phase {
            Phase::Listing { .. } => self.list_next(ring, log, view, k),
            Phase::Logs { .. } => self.logs_next(ring, log, view.outputs, k),
            Phase::Replying => self.read(ring, log, k),
            _ => {}
        }
    }

    fn command(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
        op: Op,
        name: &str,
    ) -> Option<Request> {
        let Some(index) = view.services.by_name(name) else {
            self.unknown(ring, log, k, name);
            return None;
        };
        let command = match op {
            Op::Start => Command::Start,
            Op::Stop => Command::Stop,
            Op::Restart => Command::Restart,
            Op::Kill(signal) => Command::Kill(signal as i32),
            Op::ResetFailed => Command::ResetFailed,
        };
        let peer = self.conns[k].peer;
        log.line(
            Priority::Notice,
            format_args!(
                "service={name} event=control-command command={}{} uid={} pid={}",
                op_name(op),
                SignalField(op),
                peer.uid,
                peer.pid
            ),
        );
        self.conns[k].phase = Phase::Waiting;
        Some(Request::Command {
            conn: k,
            service: ServiceId(index as u32),
            command,
        })
    }

    /// The event loop ran the command of connection `k` (and everything it caused): a
    /// refusal is the caller's answer, else the service's state now.
    pub(crate) fn command_done(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        view: &View<'_>,
        k: usize,
        service: ServiceId,
        result: Result<(), Refusal>,
    ) {
        if self.conns[k].phase != Phase::Waiting {
            return;
        }
        match result {
            Ok(()) => {
                let state = view
                    .engine
                    .core()
                    .status(service)
                    .map_or(StateCode::Stopped, |s| StateCode::of(s.state));
                self.reply(ring, log, k, &Body::Done(state));
            }
            Err(refusal) => {
                let mut line = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
                let name = view.services.name(service.index());
                let state = view.engine.core().status(service).map(|s| s.state);
                let _ = match (refusal, state) {
                    (Refusal::NoProcess(_), Some(state)) => {
                        write!(line, "{name} has no process to signal (it is {state})")
                    }
                    (Refusal::ShuttingDown, _) => write!(
                        line,
                        "{name} is not started: the orchestrator is shutting down"
                    ),
                    _ => write!(line, "{name}: {refusal}"),
                };
                self.fail(ring, log, k, FailCode::Refused, line.as_str());
            }
        }
    }

    /// The event loop ran the reload of connection `k`.
    pub(crate) fn reload_done(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        k: usize,
        result: Result<proto::ReloadInfo<'_>, (FailCode, String)>,
    ) {
        if self.conns[k].phase != Phase::Waiting {
            return;
        }
        match result {
            Ok(info) => self.reply(ring, log, k, &Body::Reloaded(info)),
            Err((code, message)) => self.fail(ring, log, k, code, &message),
        }
    }

    /// A re-exec asked for on connection `k` could not be done.
    pub(crate) fn reexec_failed(&mut self, ring: &mut Ring, log: &Logger, k: usize, text: &str) {
        if self.conns[k].phase == Phase::Waiting {
            self.fail(ring, log, k, FailCode::ReexecFailed, text);
        }
    }

    /// Connection `k`'s socket and request id, if it still waits for its answer (a re-exec
    /// hands it to the next instance).
    pub(crate) fn waiting_conn<'r>(
        &self,
        ring: &'r Ring,
        k: usize,
    ) -> Option<(BorrowedFd<'r>, u32)> {
        let conn = self.conns.get(k).filter(|c| c.phase == Phase::Waiting)?;
        Some((ring.fd(conn.slot)?, conn.request))
    }

    /// The listening socket, while listening (a re-exec keeps it).
    pub(crate) fn listener<'r>(&self, ring: &'r Ring) -> Option<BorrowedFd<'r>> {
        if !self.listening {
            return None;
        }
        ring.fd(self.listen_slot)
    }

    fn stats(&mut self, ring: &mut Ring, log: &Logger, view: &View<'_>, k: usize) {
        let mut buckets = [0u8; proto::STALL_BUCKETS_BYTES];
        for (out, count) in buckets.chunks_exact_mut(8).zip(view.stall.counts()) {
            out.copy_from_slice(&count.to_le_bytes());
        }
        let c = view.counters;
        let info = StatsInfo {
            spawned_local: c.spawned_local.load(Ordering::Relaxed),
            spawned_qm: c.spawned_qm.load(Ordering::Relaxed),
            exited: c.exited.load(Ordering::Relaxed),
            spawn_failed: c.spawn_failed.load(Ordering::Relaxed),
            log_dropped: view.log_dropped,
            stall_max_ns: view.stall.max(),
            stall_buckets: &buckets,
        };
        self.reply(ring, log, k, &Body::Stats(info));
    }

    fn agent(&mut self, ring: &mut Ring, log: &Logger, view: &View<'_>, k: usize) {
        let link = view.engine.link();
        let state = if view.services.qm_count() == 0 {
            LinkCode::NotNeeded
        } else if link.is_up() {
            LinkCode::Up
        } else {
            LinkCode::Down
        };
        let ((major, minor), capabilities) = link.agent_version();
        let version = if state == LinkCode::Up && link.protocol() != crate::link::Protocol::V02 {
            (major, minor)
        } else {
            (0, 0)
        };
        let mut path = FixedBuf::<{ proto::TEXT_LEN_MAX }>::new();
        let _ = write!(path, "{}", view.agent.socket_name());
        let info = AgentInfo {
            link: state,
            protocol: link.protocol().as_str(),
            version,
            capabilities: capabilities.bits(),
            connects: view.counters.agent_connected.load(Ordering::Relaxed),
            drops: view.counters.agent_dropped.load(Ordering::Relaxed),
            socket: path.as_str(),
        };
        self.reply(ring, log, k, &Body::Agent(info));
    }

    /// Whether some connection monitors events (the event loop skips building them if not).
    pub(crate) fn monitoring(&self) -> bool {
        self.conns.iter().any(|c| c.phase == Phase::Monitor)
    }

    /// A state change: one `Event` frame to every monitor connection that can take it now;
    /// the others count it as dropped.
    pub(crate) fn on_transition(&mut self, ring: &mut Ring, log: &Logger, info: EventInfo<'_>) {
        let mut buf = [0u8; proto::FRAME_LEN_MAX];
        let Ok(len) = proto::encode(&mut buf, 0, &Body::Event(info)) else {
            return;
        };
        for k in 0..CONNECTIONS_MAX {
            let conn = &mut self.conns[k];
            if conn.phase != Phase::Monitor {
                continue;
            }
            if conn.dropped > 0 {
                conn.dropped += 1;
                continue;
            }
            let Some(fd) = ring.fd(conn.slot) else {
                continue;
            };
            match try_send(fd, &buf[..len]) {
                Ok(()) => {}
                Err(libc::EAGAIN) | Err(libc::ENOBUFS) => {
                    // Full: count from here, and send the count when it drains (POLLOUT).
                    conn.dropped = 1;
                    if !ring.is_pending(conn.slot, OpTag::Poll) {
                        let _ = ring.poll_add(conn.slot, libc::POLLOUT as u32);
                    }
                    self.deadline(ring, k, true);
                }
                Err(_) => self.drop_conn(ring, log, k, "send"),
            }
        }
    }

    /// A monitor connection that was full can take data again: send the `Dropped` count.
    fn on_writable(&mut self, ring: &mut Ring, log: &Logger, k: usize) {
        let conn = &mut self.conns[k];
        if conn.phase != Phase::Monitor || conn.dropped == 0 {
            return;
        }
        let mut buf = [0u8; 64];
        let Ok(len) = proto::encode(&mut buf, 0, &Body::Dropped(conn.dropped)) else {
            return;
        };
        let Some(fd) = ring.fd(conn.slot) else { return };
        match try_send(fd, &buf[..len]) {
            Ok(()) => {
                conn.dropped = 0;
                self.deadline(ring, k, false);
            }
            Err(libc::EAGAIN) | Err(libc::ENOBUFS) => {
                let _ = ring.poll_add(conn.slot, libc::POLLOUT as u32);
            }
            Err(_) => self.drop_conn(ring, log, k, "send"),
        }
    }
}

/// The gid of a group name (`key` names the setting in the error).
fn group_id(key: &str, name: &str) -> Result<u32, String> {
    match crate::sys::user::group_id(name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!(
            "{key}: no group named {name:?} (create it, or remove {key})"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Err(format!("{key} {name:?}: contains NUL"))
        }
        Err(e) => Err(format!("{key}: getgrnam: {e}")),
    }
}

/// Who the peer is, what it may do, and whether it may connect at all: root and members of
/// the command group everything, members of the read group only queries, others nothing (so
/// also a peer whose credentials cannot be read).
fn peer_of(fd: BorrowedFd<'_>, group: Option<u32>, read_group: Option<u32>) -> (Peer, bool) {
    let Ok(cred) = PeerCred::of(fd) else {
        return (Peer::NONE, false);
    };
    let full = cred.uid == 0 || group.is_some_and(|gid| cred.in_group(fd, gid));
    let read = !full && read_group.is_some_and(|gid| cred.in_group(fd, gid));
    let peer = Peer {
        uid: cred.uid,
        pid: cred.pid,
        read_only: !full,
    };
    (peer, full || read)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Stop => "stop",
        Op::Restart => "restart",
        Op::Kill(_) => "kill",
        Op::ResetFailed => "reset-failed",
    }
}

/// ` signal=NAME` for a kill, nothing otherwise.
struct SignalField(Op);

impl std::fmt::Display for SignalField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Op::Kill(signal) => write!(
                f,
                " signal={}",
                crate::pidfd::signal_name(i32::from(signal))
            ),
            _ => Ok(()),
        }
    }
}

/// Sends one packet without waiting; the errno when it could not.
fn try_send(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<(), i32> {
    match socket::send(fd, bytes, true) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(libc::EMSGSIZE),
        Err(e) => Err(crate::sys::errno::of(&e)),
    }
}

/// Sends one frame on a fresh connection without waiting (refusals).
fn send_now(fd: BorrowedFd<'_>, body: &Body<'_>) {
    let mut buf = [0u8; 512];
    if let Ok(len) = proto::encode(&mut buf, 0, body) {
        let _ = socket::send(fd, &buf[..len], true);
    }
}

/// The monitor stream's view of a state change.
pub(crate) fn event_info<'a>(
    t: &Transition,
    name: &'a str,
    partition: Partition,
    last_pid: i32,
) -> EventInfo<'a> {
    EventInfo {
        name,
        partition: partition_of(partition),
        from: StateCode::of(t.from),
        to: StateCode::of(t.to),
        why: why_of(t.reason),
        restarts: t.restarts,
        pid: (last_pid > 0).then_some(last_pid),
        next_delay_ms: t.next_delay.map(|d| d.as_millis() as u64),
    }
}

fn why_of(reason: Reason) -> Why {
    match reason {
        Reason::Added => Why::Added,
        Reason::Operator => Why::Operator,
        Reason::RestartDue => Why::RestartDue,
        Reason::Spawned(pid) => Why::Spawned(pid.0),
        Reason::SpawnFailed(e) => Why::SpawnFailed(spawn_error_of(e)),
        Reason::Exited(status) => Why::Exited(exit_of(status)),
        Reason::StartLimit => Why::StartLimit,
        Reason::Agent => Why::Agent,
        Reason::StopTimeout => Why::StopTimeout,
        Reason::Shutdown => Why::Shutdown,
        Reason::Removed => Why::Removed,
        Reason::Adopted(pid) => Why::Adopted(pid.0),
        Reason::Resumed => Why::Resumed,
        Reason::Ready => Why::Ready,
        Reason::StartTimeout => Why::StartTimeout,
        Reason::Watchdog => Why::Watchdog,
    }
}

fn spawn_error_of(e: supervise::StartFailure) -> SpawnError {
    SpawnError {
        stage: match e.stage {
            supervise::StartStage::Setup => SpawnStage::Setup,
            supervise::StartStage::Exec => SpawnStage::Exec,
            supervise::StartStage::Agent => SpawnStage::Agent,
            supervise::StartStage::Refused => SpawnStage::Refused,
        },
        errno: e.errno,
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
