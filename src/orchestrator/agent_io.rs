//! The agent sub-shell: the ring slots of the agent connections and what the link asks of
//! them, the classification of every fd the agent sends, and the log lines of the link's
//! notes.
//!
//! Each connection lives on its own buffered ring slot that owns the socket: closing a
//! connection removes the slot, so the socket is closed only after every operation queued on
//! it has completed (a send queued in the same batch cannot reach a reused fd number). The v1
//! connection has one slot (plus a spare while a dropped one drains); v0.2 takes a slot per
//! request from the same pool.

use super::engine::Engine;
use super::services::{Services, Starts};
use crate::link::{
    Conn, DownReason, EncodeFailure, FdClass, Fds, Io, Note, PeerFd, Protocol, SocketKind, What,
};
use crate::log::{ErrnoText, Escaped, Logger, Priority, Quoted, Value};
use crate::pidfd;
use crate::supervise::MonoTime;
use crate::sys::socket::{self, Kind, PeerCred, UnixAddr};
use crate::wire::v1;
use ring::{Completion, Errno, OpTag, Ring, SlotId};
use std::os::fd::{AsFd, OwnedFd};

/// Unread messages looked at when a connection is given up.
const UNREAD_MESSAGES_MAX: usize = 64;

/// The agent connections of the orchestrator.
pub(crate) struct AgentIo {
    addr: UnixAddr,
    /// The v1 connection's slot.
    main: Option<SlotId>,
    /// Per service: the slot of its v0.2 request's connection.
    requests: Box<[Option<SlotId>]>,
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    fds_per_msg_max: usize,
}

/// The agent socket's name for log lines.
pub(crate) struct SocketName {
    bytes: [u8; 108],
    len: usize,
}

impl std::fmt::Display for SocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Escaped(&self.bytes[..self.len]))
    }
}

impl AgentIo {
    pub(crate) fn new(addr: UnixAddr, services: usize, fds_per_msg_max: usize) -> AgentIo {
        AgentIo {
            addr,
            main: None,
            requests: vec![None; services.max(1)].into_boxed_slice(),
            rx: vec![0; v1::FRAME_LEN_MAX].into_boxed_slice(),
            tx: vec![0; v1::FRAME_LEN_MAX].into_boxed_slice(),
            fds_per_msg_max,
        }
    }

    /// The socket's name (for logs and `holdenctl agent`).
    pub(crate) fn socket_name(&self) -> SocketName {
        let mut name = SocketName {
            bytes: [0; 108],
            len: 0,
        };
        name.len = self.addr.name(&mut name.bytes);
        name
    }

    /// Which connection a ring slot carries.
    pub(crate) fn conn_of(&self, slot: SlotId) -> Option<Conn> {
        if self.main == Some(slot) {
            return Some(Conn::Main);
        }
        let index = self.requests.iter().position(|s| *s == Some(slot))?;
        Some(Conn::Request(index as u32))
    }

    fn slot_of(&self, conn: Conn) -> Option<SlotId> {
        match conn {
            Conn::Main => self.main,
            Conn::Request(index) => self.requests.get(index as usize).copied().flatten(),
            Conn::Probe => None,
        }
    }

    fn set_slot(&mut self, conn: Conn, slot: Option<SlotId>) {
        match conn {
            Conn::Main => self.main = slot,
            Conn::Request(index) => {
                if let Some(entry) = self.requests.get_mut(index as usize) {
                    *entry = slot;
                }
            }
            Conn::Probe => {}
        }
    }

    /// Carries out one thing the link asked for. Returns the slot of a new connection (the
    /// caller records its owner).
    pub(crate) fn on_io(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        log: &Logger,
        services: &Services,
        now: MonoTime,
        io: Io<OwnedFd>,
    ) -> Option<SlotId> {
        match io {
            Io::Connect { conn, kind } => self.connect(ring, engine, now, conn, kind),
            Io::Close { conn } => {
                if let Some(slot) = self.slot_of(conn) {
                    self.set_slot(conn, None);
                    self.kill_unread(ring, slot);
                    // The socket closes when every operation on it has completed.
                    let _ = ring.remove(slot);
                }
                None
            }
            Io::Kill {
                handle,
                service,
                qm_pid,
                late,
            } => {
                let killed = pidfd::send_signal(handle.as_fd(), libc::SIGKILL).is_ok();
                if late {
                    log.line(
                        Priority::Warning,
                        format_args!(
                            "service={} partition=qm event=agent-late-answer qm_pid={qm_pid} action={}",
                            services.name(service),
                            if killed { "SIGKILL" } else { "none reason=already-gone" }
                        ),
                    );
                }
                None
            }
        }
    }

    /// Before a connection is given up: reads what the agent sent and we never read (bounded)
    /// and SIGKILLs every process whose pidfd is in it. The agent let those run (a gated one
    /// execs once its `Started` is sent), and nobody will supervise them. A message the ring's
    /// own receive already took in this batch is closed by the ring, not killed (the one gap).
    fn kill_unread(&mut self, ring: &Ring, slot: SlotId) {
        let Some(fd) = ring.fd(slot) else {
            return;
        };
        for _ in 0..UNREAD_MESSAGES_MAX {
            match socket::recv_with_fds(fd, &mut self.rx, true, true) {
                Ok(Some(received)) if !received.empty => {
                    for pidfd in received.fds {
                        if pidfd::is_pidfd(pidfd.as_fd()) {
                            let _ = pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
                        }
                    }
                }
                _ => return,
            }
        }
    }

    fn connect(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        now: MonoTime,
        conn: Conn,
        kind: SocketKind,
    ) -> Option<SlotId> {
        let kind = match kind {
            SocketKind::Seqpacket => Kind::Seqpacket,
            SocketKind::Stream => Kind::Stream,
        };
        let fd = match socket::connect_new(&self.addr, kind, true) {
            Ok(fd) => fd,
            Err(e) => {
                engine.link_connect_failed(now, conn, crate::sys::errno::of(&e));
                return None;
            }
        };
        if conn == Conn::Probe {
            // A successful connect is the probe: close it.
            drop(fd);
            engine.link_connected(now, conn, None);
            return None;
        }
        let peer = PeerCred::of(fd.as_fd())
            .ok()
            .filter(|c| c.pid > 0)
            .and_then(|c| pidfd::ns_pid_of(c.pid).ok().flatten());
        let slot = match ring.insert() {
            Ok(slot) => slot,
            Err(_) => {
                engine.link_shell_failed(now, conn, "ring: no free connection slot");
                return None;
            }
        };
        let armed = ring.attach(slot, fd).and_then(|()| ring.recvmsg(slot));
        self.set_slot(conn, Some(slot));
        engine.link_connected(now, conn, peer);
        if armed.is_err() {
            engine.link_shell_failed(now, conn, "ring: cannot receive on the connection");
        }
        Some(slot)
    }

    /// Sends what the link has to send on connections whose send is idle; `true` if
    /// something was queued (the engine may have produced outputs meanwhile).
    pub(crate) fn transmit(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        services: &Services,
        now: MonoTime,
    ) -> bool {
        let mut any = false;
        while let Some((conn, len)) = engine.poll_transmit(now, &mut self.tx, &Starts(services)) {
            any = true;
            let Some(slot) = self.slot_of(conn) else {
                engine.link_shell_failed(now, conn, "ring: the connection has no slot");
                continue;
            };
            if ring.sendmsg(slot, &self.tx[..len], None).is_err() {
                engine.link_shell_failed(now, conn, "ring sendmsg: refused");
            }
        }
        any
    }

    /// A completion on one of the agent connections.
    pub(crate) fn on_completion(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        now: MonoTime,
        conn: Conn,
        c: Completion,
    ) {
        match (c.op, c.result) {
            (OpTag::SendMsg, Ok(_)) => engine.link_sent(now, conn),
            (OpTag::SendMsg, Err(e)) => engine.link_send_failed(now, conn, e.0),
            (OpTag::RecvMsg, Ok(0)) => engine.link_closed(now, conn),
            (OpTag::RecvMsg, Ok(_)) => self.on_packet(ring, engine, now, conn, c.slot),
            (OpTag::RecvMsg, Err(Errno::INTR)) => {
                let _ = ring.recvmsg(c.slot);
            }
            (OpTag::RecvMsg, Err(e)) => engine.link_receive_failed(now, conn, e.0),
            _ => {}
        }
    }

    fn on_packet(
        &mut self,
        ring: &mut Ring,
        engine: &mut Engine<OwnedFd>,
        now: MonoTime,
        conn: Conn,
        slot: SlotId,
    ) {
        let oversized = ring.recv_truncated(slot);
        let len = match ring.received(slot) {
            Some(data) => {
                let len = data.len().min(self.rx.len());
                self.rx[..len].copy_from_slice(&data[..len]);
                len
            }
            None => 0,
        };
        let received = ring.take_fds(slot);
        let mut fds = Fds::none();
        fds.truncated = received.truncated;
        fds.ours = received.truncated && received.fds.len() < self.fds_per_msg_max;
        for fd in received.fds {
            let class = classify(&fd);
            if fds.fds.try_push(PeerFd { handle: fd, class }).is_err() {
                fds.truncated = true;
            }
        }
        engine.link_received(now, conn, &self.rx[..len], oversized, fds);
        // Still open (the link did not close it): wait for the next message.
        if self.slot_of(conn) == Some(slot) && ring.recvmsg(slot).is_err() {
            engine.link_shell_failed(now, conn, "ring recvmsg: refused");
        }
    }

    /// Logs one of the link's notes.
    pub(crate) fn log_note(
        &self,
        log: &Logger,
        services: &Services,
        agent_text: &[u8],
        note: Note,
    ) {
        let socket = Value(self.socket_name());
        let v02 = |p: Protocol| {
            if p == Protocol::V02 {
                " protocol=v0.2"
            } else {
                ""
            }
        };
        match note {
            Note::Up {
                protocol: Protocol::V02,
                ..
            } => log.line(
                Priority::Notice,
                format_args!("event=agent-up socket={socket} protocol=v0.2"),
            ),
            Note::Up {
                version,
                capabilities,
                ..
            } => log.line(
                Priority::Notice,
                format_args!(
                    "event=agent-up socket={socket} protocol=v1 version={}.{} capabilities={capabilities:#x}",
                    version.0, version.1
                ),
            ),
            Note::Down { protocol, reason } => log.line(
                Priority::Warning,
                format_args!(
                    "event=agent-down socket={socket}{} reason={}",
                    v02(protocol),
                    Quoted(Reason(protocol, reason))
                ),
            ),
            Note::FellBackToV02 => log.line(
                Priority::Notice,
                format_args!(
                    "event=agent-protocol socket={socket} protocol=v0.2 reason=\"stream socket (EPROTOTYPE): a holden v0.2 agent\""
                ),
            ),
            Note::ConnectFailed { protocol, errno } => {
                let hint = match errno {
                    libc::ENOENT | libc::ECONNREFUSED => {
                        " hint=\"is holden-agent running in the QM partition?\""
                    }
                    libc::EPROTOTYPE if protocol == Protocol::V02 => {
                        " hint=\"not a stream socket: a v1 agent? set agent.protocol = v1 or auto\""
                    }
                    libc::EPROTOTYPE => {
                        " hint=\"a stream socket: a v0.2 agent? set agent.protocol = v0.2 or auto\""
                    }
                    libc::EACCES => " hint=\"permissions of the socket file\"",
                    _ => "",
                };
                log.line(
                    Priority::Warning,
                    format_args!(
                        "event=agent-connect-failed socket={socket} error={}{hint}",
                        Quoted(ErrnoText(errno))
                    ),
                );
            }
            Note::Retry { delay } => log.line(
                Priority::Debug,
                format_args!("event=agent-retry delay_ms={}", delay.as_millis()),
            ),
            Note::Misbehaved {
                protocol,
                what,
                suppressed,
            } => log.line(
                Priority::Err,
                format_args!(
                    "event=agent-misbehaved socket={socket}{} what={} suppressed={suppressed}",
                    v02(protocol),
                    Quoted(WhatText(what))
                ),
            ),
            Note::Garbage(error) => log.line(
                Priority::Debug,
                format_args!("event=agent-garbage error={}", Quoted(error)),
            ),
            Note::RequestTimeout {
                protocol,
                service,
                timeout_ms,
            } => log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=agent-request-timeout{} timeout_ms={timeout_ms}",
                    services.name(service),
                    v02(protocol)
                ),
            ),
            Note::StartedGated { service, qm_pid } => log.line(
                Priority::Debug,
                format_args!(
                    "service={} partition=qm event=started-gated agent_pid={qm_pid}",
                    services.name(service)
                ),
            ),
            Note::HeldAdopted {
                service,
                qm_pid,
                why,
            } => log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=held-pidfd-adopted qm_pid={qm_pid} why={}",
                    services.name(service),
                    Value(why)
                ),
            ),
            Note::PidfdLost { service, qm_pid } => log.line(
                Priority::Err,
                format_args!(
                    "service={} partition=qm event=pidfd-lost qm_pid={qm_pid} error=\"the pidfd could not be received (out of file descriptors?): the process runs unsupervised in QM\"",
                    services.name(service)
                ),
            ),
            Note::SpawnError {
                service,
                stage,
                errno,
            } => log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=spawn-failed stage={} errno={errno} error={} agent_text=\"{}\"",
                    services.name(service),
                    stage.name(),
                    Quoted(ErrnoText(errno)),
                    Escaped(agent_text)
                ),
            ),
            Note::V02SpawnError { service } => log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=spawn-failed protocol=v0.2 agent_text=\"{}\"",
                    services.name(service),
                    Escaped(agent_text)
                ),
            ),
            Note::V02Started {
                service,
                host_pid,
                container_pid,
            } => log.line(
                Priority::Debug,
                format_args!(
                    "service={} partition=qm event=started protocol=v0.2 agent_host_pid={host_pid} agent_container_pid={container_pid}",
                    services.name(service)
                ),
            ),
            Note::EncodeFailed {
                protocol,
                service,
                error,
            } => {
                let name = services.name(service);
                match error {
                    EncodeFailure::V1(e) => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=encode error={}",
                            Quoted(format_args!("{e:?}"))
                        ),
                    ),
                    EncodeFailure::V02(e) => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=encode{} error={}",
                            v02(protocol),
                            Quoted(e)
                        ),
                    ),
                    EncodeFailure::NoStart => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=encode error=\"no start\""
                        ),
                    ),
                    EncodeFailure::NoNotify => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=setup errno={} error=\"type = notify needs an agent that forwards sd_notify (wire 1.2 with NOTIFY_FORWARD); this agent does not\"{}",
                            libc::EOPNOTSUPP,
                            v02(protocol)
                        ),
                    ),
                    EncodeFailure::NoCgroupLimits => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=setup errno={} error=\"its cgroup limits need an agent with cgroups of its own (wire 1.2 with CGROUPS); this agent has none\"{}",
                            libc::EOPNOTSUPP,
                            v02(protocol)
                        ),
                    ),
                    EncodeFailure::NoExecEnv => log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} partition=qm event=spawn-failed stage=setup errno={} error=\"its execution environment (limits, scheduling, affinity, umask, capabilities ...) needs an agent that applies one (wire 1.2 with EXEC_ENV); this agent does not\"{}",
                            libc::EOPNOTSUPP,
                            v02(protocol)
                        ),
                    ),
                }
            }
        }
    }
}

/// What a received fd is: a pidfd (with its process's identity and namespace position) or
/// not. One look at the fd ([`pidfd::examine`]); the link carries the result.
fn classify(fd: &OwnedFd) -> FdClass {
    match pidfd::examine(fd.as_fd()) {
        pidfd::Examined::NotPidfd => FdClass::Other,
        pidfd::Examined::NoIdentity => FdClass::NoIdentity,
        pidfd::Examined::Pidfd { identity, ns } => FdClass::Pidfd { identity, ns },
    }
}

/// A `DownReason` as the log line's `reason="..."`.
struct Reason(Protocol, DownReason);

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let request = if self.0 == Protocol::V02 {
            "request "
        } else {
            ""
        };
        match self.1 {
            DownReason::Misbehaved => f.write_str("misbehaved"),
            DownReason::Closed => f.write_str("the agent closed the connection"),
            DownReason::ClosedBeforeAnswer => {
                f.write_str("the agent closed the connection before answering")
            }
            DownReason::Send(errno) => write!(f, "{request}send: {}", ErrnoText(errno)),
            DownReason::Receive(errno) => write!(f, "{request}receive: {}", ErrnoText(errno)),
            DownReason::Connect(errno) => write!(f, "connect: {}", ErrnoText(errno)),
            DownReason::NoAnswer(ms) => write!(f, "a request got no answer within {ms} ms"),
            DownReason::Shell(what) => f.write_str(what),
        }
    }
}

/// A misbehaviour as the log line's `what="..."`.
struct WhatText(What);

impl std::fmt::Display for WhatText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            What::Said(text) => f.write_str(text),
            What::Oversized => write!(f, "packet larger than {} bytes", v1::FRAME_LEN_MAX),
            What::NoPong(ms) => write!(f, "no Pong within {ms} ms"),
            What::NoProbePong(ms) => write!(f, "no Pong to a liveness Ping within {ms} ms"),
        }
    }
}
