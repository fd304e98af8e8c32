//! The link to holden-agent: one persistent SOCK_SEQPACKET connection speaking wire v1.
//!
//! States: `Idle` (no QM service), `Down` (waiting to reconnect, with backoff), `Handshaking`
//! (connected, `Ping` sent, waiting for a `Pong` with major version 1), `Up`.
//!
//! Requests are pipelined: each QM spawn gets a request id `(sequence << 20) | service index`,
//! so an answer maps back to its service in O(1) and a stale or invented id is recognised.
//! One `SENDMSG` is in flight at a time (the ring allows one per slot); the others wait in a
//! fixed queue. Every request has a deadline; the agent timer is armed for the earliest one.
//!
//! Everything the agent sends is checked. Any misbehaviour — undecodable or oversized packet,
//! unknown request id, a frame the agent must not send, an fd where none belongs, no fd or
//! two fds with `Started`, an fd that is not a pidfd, a pidfd of a process already supervised,
//! a request or handshake timeout — drops the connection: requests in flight fail (the core
//! backs off), the agent counts as down, and the link reconnects with exponential backoff.
//! Running QM processes are not affected: their pidfds do not depend on the connection.
//! The first misbehaviour of each connection is logged; repeats are counted, not logged.
//!
//! **Gated exec** (an agent announcing minor 1 and `GATED_EXEC`): the agent answers `Start`
//! with `Started` + pidfd *before* the process execs, and lets it exec only once that packet is
//! sent; `Running` or `Error` (stage `exec`) follows. The pidfd is *held* per service
//! ([`AgentLink`]'s gate slots) and the request stays open until then: on `Running` the process
//! is adopted (core `Spawned`); on `Error` the held pidfd is killed (harmless: the child already
//! exited 127) and closed, and the core sees `SpawnFailed { Exec, errno }` exactly as from an
//! ungated agent, so start limits and backoff treat exec failures the same in both partitions.
//! If `Running` does not come — the request times out, or the connection drops (the agent was
//! killed) — the held pidfd is adopted anyway: the process is supervised whether or not it got
//! the go-ahead (without it, it exits 125 and is restarted like any exit). Hence a QM process
//! the orchestrator did not receive the pidfd of never runs its program, and a held one is never
//! lost: exactly one process per service, whatever the agent does or when it dies. A timeout of
//! `Running` does not drop the link by itself (the liveness `Ping` decides); a `Running` after
//! it, for an unknown id, twice, or with an fd, is a violation and drops the link.
//! Across connections, misbehaviour is rate-limited too: at most one `agent-misbehaved` line
//! (and its `agent-down`) per [`MISBEHAVIOUR_LOG_INTERVAL`], the next one saying how many were
//! suppressed. The reconnect delay is reset only when a connection that answered a request
//! correctly ends without misbehaving (not by a mere handshake), so an agent that handshakes
//! and then misbehaves is retried with a growing delay.

use super::event_loop::{Error, Orchestrator, Owner};
use super::spec::{AgentProtocol, Settings};
use crate::log::{ErrnoText, Escaped, Priority};
use crate::pidfd;
use crate::supervise::{Event, Partition, ServiceId, StartFailure, StartStage};
use crate::wire::v1;
use ring::{Completion, Errno, OpTag, SlotId, Timeout};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Bits of a request id that hold the service index.
const REQUEST_INDEX_BITS: u32 = 20;
const REQUEST_INDEX_MASK: u64 = (1 << REQUEST_INDEX_BITS) - 1;
/// The index part of the handshake `Ping`'s id (no service has it).
const PING_INDEX: u64 = REQUEST_INDEX_MASK;

const _: () = assert!(crate::supervise::SERVICES_MAX as u64 <= PING_INDEX);

/// At most one misbehaviour is logged per interval (the others are counted).
pub(crate) const MISBEHAVIOUR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A `Started` of a gated agent whose `Running` (or `Error`) has not come yet: its request id
/// and the held pidfd (`None` when the kernel could not give it to us: the answer is then only
/// awaited, to be ignored).
pub(crate) struct Gate {
    id: u64,
    pidfd: Option<OwnedFd>,
}

/// An outstanding request of one service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub id: u64,
    pub deadline_ns: u64,
    pub sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// No QM service: never connect.
    Idle,
    /// Not connected; reconnect at this time.
    Down { retry_at_ns: u64 },
    /// Connected, `Ping` sent.
    Handshaking { ping_id: u64, deadline_ns: u64 },
    /// Handshake done.
    Up,
}

/// A fixed-capacity FIFO of service indices waiting to be sent.
struct SendQueue {
    items: Box<[u32]>,
    head: usize,
    len: usize,
}

impl SendQueue {
    fn new(capacity: usize) -> SendQueue {
        SendQueue {
            items: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, index: u32) {
        assert!(
            self.len < self.items.len(),
            "orchestrator: agent send queue overflow"
        );
        let at = (self.head + self.len) % self.items.len();
        self.items[at] = index;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let index = self.items[self.head];
        self.head = (self.head + 1) % self.items.len();
        self.len -= 1;
        Some(index)
    }
    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// The agent link's state and buffers (allocated once).
pub(crate) struct AgentLink {
    pub(crate) addr: crate::sys::socket::UnixAddr,
    pub(crate) protocol: AgentProtocol,
    state: LinkState,
    conn: Option<(OwnedFd, SlotId)>,
    timer_slot: SlotId,
    timer_op_at: Option<u64>,
    queue: SendQueue,
    rx: Box<[u8]>,
    pub(crate) tx: Box<[u8]>,
    sequence: u64,
    pub(crate) request_timeout: Duration,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    reconnect_delay: Duration,
    /// Misbehaviours on the current connection (only the first is logged).
    violations: u32,
    /// Consecutive failed connection attempts (only the first of a run is logged).
    connect_failures: u32,
    /// This connection answered a request correctly (a `Started` adopted or an `Error`).
    answered: bool,
    /// When a misbehaviour was last logged, and how many were not logged since.
    misbehaviour_logged_at_ns: Option<u64>,
    misbehaviour_suppressed: u32,
    /// The current misbehaviour was not logged: neither is the drop it causes.
    misbehaviour_quiet: bool,
    pub(crate) capabilities: v1::Capabilities,
    /// Version from the agent's last `Pong` (major, minor); for `holdenctl agent`.
    pub(crate) version: (u8, u8),
    /// Where the agent sits in the PID namespace hierarchy (from SO_PEERCRED at connect):
    /// a process it started must sit at the same depth.
    pub(crate) peer_ns: Option<pidfd::NsPid>,
    /// Liveness probe after a request timed out: the `Ping`'s id and deadline, and whether it
    /// still waits for the send slot.
    probe: Option<(u64, u64)>,
    probe_unsent: bool,
    /// The agent announced minor 1+ and `GATED_EXEC`: `Started` precedes `Running`/`Error`.
    gated: bool,
    /// Per service: a `Started` waiting for its `Running` (allocated once, one per service).
    gates: Box<[Option<Gate>]>,
}

impl AgentLink {
    pub(crate) fn new(
        settings: &Settings,
        services: usize,
        timer_slot: SlotId,
        needed: bool,
    ) -> Result<AgentLink, Error> {
        let addr = crate::sys::socket::UnixAddr::new(settings.agent_socket.as_os_str().as_bytes())
            .map_err(|e| Error::Io("agent socket path", e))?;
        Ok(AgentLink {
            addr,
            protocol: settings.agent_protocol,
            state: if needed {
                LinkState::Down { retry_at_ns: 0 }
            } else {
                LinkState::Idle
            },
            conn: None,
            timer_slot,
            timer_op_at: None,
            queue: SendQueue::new(services),
            rx: vec![0; v1::FRAME_LEN_MAX].into_boxed_slice(),
            tx: vec![0; v1::FRAME_LEN_MAX].into_boxed_slice(),
            sequence: 0,
            request_timeout: settings.agent_request_timeout,
            reconnect_initial: settings.agent_reconnect_initial,
            reconnect_max: settings.agent_reconnect_max,
            reconnect_delay: settings.agent_reconnect_initial,
            violations: 0,
            connect_failures: 0,
            answered: false,
            misbehaviour_logged_at_ns: None,
            misbehaviour_suppressed: 0,
            misbehaviour_quiet: false,
            capabilities: v1::Capabilities::empty(),
            version: (0, 0),
            peer_ns: None,
            probe: None,
            probe_unsent: false,
            gated: false,
            gates: (0..services).map(|_| None).collect(),
        })
    }

    fn next_id(&mut self, index: u64) -> u64 {
        self.sequence = self.sequence.wrapping_add(1) & ((1 << (64 - REQUEST_INDEX_BITS)) - 1);
        (self.sequence << REQUEST_INDEX_BITS) | index
    }

    /// A request id for a v0.2 request (kept only to share the deadline bookkeeping).
    pub(crate) fn next_legacy_id(&mut self, index: u64) -> u64 {
        self.next_id(index)
    }

    /// v0.2: a connect succeeded.
    pub(crate) fn mark_up(&mut self) {
        self.state = LinkState::Up;
        self.connect_failures = 0;
    }

    /// The agent answered a request correctly on this connection.
    pub(crate) fn mark_answered(&mut self) {
        self.answered = true;
    }

    /// v0.2 (one connection per request): a request was answered correctly, so the reconnect
    /// delay starts over.
    pub(crate) fn mark_healthy(&mut self) {
        self.reconnect_delay = self.reconnect_initial;
    }

    /// Rate limit of misbehaviour lines: `Some(suppressed)` when this one is to be logged
    /// (with the count of those not logged since the last), `None` when it is only counted.
    pub(crate) fn misbehaviour_log_due(&mut self, now_ns: u64) -> Option<u32> {
        let interval_ns = MISBEHAVIOUR_LOG_INTERVAL.as_nanos() as u64;
        let due = self
            .misbehaviour_logged_at_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= interval_ns);
        if due {
            self.misbehaviour_logged_at_ns = Some(now_ns);
            self.misbehaviour_quiet = false;
            Some(std::mem::take(&mut self.misbehaviour_suppressed))
        } else {
            self.misbehaviour_suppressed = self.misbehaviour_suppressed.saturating_add(1);
            self.misbehaviour_quiet = true;
            None
        }
    }

    /// Whether the drop that follows the current misbehaviour is logged (reset by reading).
    pub(crate) fn take_drop_quiet(&mut self) -> bool {
        std::mem::take(&mut self.misbehaviour_quiet)
    }

    /// Whether the handshake is done.
    pub(crate) fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }
}

/// The namespace position of the process at the other end of a Unix socket (SO_PEERCRED).
pub(crate) fn peer_ns(fd: &OwnedFd) -> Option<pidfd::NsPid> {
    let cred = crate::sys::socket::PeerCred::of(fd.as_fd()).ok()?;
    if cred.pid <= 0 {
        return None;
    }
    pidfd::ns_pid_of(cred.pid).ok().flatten()
}

/// Checks that a received pidfd's process sits where a child of the agent must: in the
/// agent's PID namespace (same depth) and, when `claimed_pid` is given, with the pid the agent
/// reported. A process that has already exited is not checked (it can do no harm: its end is
/// reported at once).
pub(crate) fn check_namespace(
    fd: &OwnedFd,
    agent: Option<pidfd::NsPid>,
    claimed_pid: Option<i32>,
) -> Result<(), Violation> {
    let Some(agent) = agent else { return Ok(()) };
    match pidfd::ns_pid(fd.as_fd()) {
        Ok(Some(p)) if p.depth != agent.depth => Err(Violation(
            "pidfd of a process outside the agent's PID namespace",
        )),
        Ok(Some(p)) if claimed_pid.is_some_and(|c| c != p.innermost) => Err(Violation(
            "pidfd of a process other than the one the agent reported",
        )),
        _ => Ok(()),
    }
}

/// Connects a socket of `kind` to `addr` (non-blocking, close-on-exec).
pub(crate) fn connect_unix(
    addr: &crate::sys::socket::UnixAddr,
    kind: crate::sys::socket::Kind,
) -> io::Result<OwnedFd> {
    crate::sys::socket::connect_new(addr, kind, true)
}

impl Orchestrator {
    /// At start-up: connect at once if any QM service exists.
    /// A reload added the first QM service: leave `Idle` and connect.
    pub(crate) fn agent_enable(&mut self) {
        if self.agent.state == LinkState::Idle {
            self.agent.state = LinkState::Down { retry_at_ns: 0 };
            self.agent_connect();
        }
    }

    pub(crate) fn agent_start(&mut self) {
        if self.agent.state != LinkState::Idle {
            self.agent_connect();
        }
    }

    pub(crate) fn agent_path(&self) -> AgentPath {
        let mut path = AgentPath([0; 108], 0);
        path.1 = self.agent.addr.name(&mut path.0);
        path
    }

    fn agent_connect(&mut self) {
        let kind = if self.agent.protocol == AgentProtocol::V02 {
            crate::sys::socket::Kind::Stream
        } else {
            crate::sys::socket::Kind::Seqpacket
        };
        if self.agent.protocol == AgentProtocol::V02 {
            // One connection per request: a successful connect is the probe; close it.
            match connect_unix(&self.agent.addr, kind) {
                Ok(probe) => {
                    drop(probe);
                    self.agent_legacy_up();
                }
                Err(e) => self.agent_connect_failed(e),
            }
            return;
        }
        match connect_unix(&self.agent.addr, kind) {
            Ok(fd) => self.agent_connected(fd),
            Err(e)
                if e.raw_os_error() == Some(libc::EPROTOTYPE)
                    && self.agent.protocol == AgentProtocol::Auto =>
            {
                self.log.line(
                    Priority::Notice,
                    format_args!("event=agent-protocol socket={} protocol=v0.2 reason=\"stream socket (EPROTOTYPE): a holden v0.2 agent\"", self.agent_path()),
                );
                self.agent.protocol = AgentProtocol::V02;
                self.agent_legacy_up();
            }
            Err(e) => self.agent_connect_failed(e),
        }
    }

    /// A connection attempt failed: log the first of a run, retry with backoff.
    fn agent_connect_failed(&mut self, e: io::Error) {
        if self.agent.connect_failures == 0 {
            let hint = match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                    " (is holden-agent running in the QM partition?)"
                }
                Some(libc::EPROTOTYPE) if self.agent.protocol == AgentProtocol::V02 => {
                    " (not a stream socket: a v1 agent? set agent.protocol = \"v1\" or \"auto\")"
                }
                Some(libc::EPROTOTYPE) => {
                    " (a stream socket: a v0.2 agent? set agent.protocol = \"v0.2\" or \"auto\")"
                }
                Some(libc::EACCES) => " (permissions of the socket file)",
                _ => "",
            };
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=agent-connect-failed socket={} error=\"{}\"{hint}",
                    self.agent_path(),
                    ErrnoText(e.raw_os_error().unwrap_or(0))
                ),
            );
        }
        self.agent.connect_failures += 1;
        self.agent_schedule_retry();
    }

    pub(crate) fn agent_schedule_retry(&mut self) {
        let delay = self.agent.reconnect_delay;
        self.agent.reconnect_delay = (delay * 2)
            .min(self.agent.reconnect_max)
            .max(self.agent.reconnect_initial);
        let retry_at_ns = ring::now_ns().saturating_add(delay.as_nanos() as u64);
        self.agent.state = LinkState::Down { retry_at_ns };
        self.log.line(
            Priority::Debug,
            format_args!("event=agent-retry delay_ms={}", delay.as_millis()),
        );
        self.agent_sync_timer();
    }

    fn agent_connected(&mut self, fd: OwnedFd) {
        let slot = match self.ring.insert() {
            Ok(slot) => slot,
            Err(e) => {
                self.log.line(
                    Priority::Err,
                    format_args!("event=agent-connect-failed error=\"ring: {e}\""),
                );
                self.agent_schedule_retry();
                return;
            }
        };
        self.owners[slot.index()] = Owner::AgentConn;
        let ping_id = self.agent.next_id(PING_INDEX);
        let len = v1::encode_ping(&mut self.agent.tx, ping_id).expect("a Ping always fits");
        let queued = self.ring.recvmsg(slot, fd.as_fd()).and_then(|()| {
            self.ring
                .sendmsg(slot, fd.as_fd(), &self.agent.tx[..len], None)
        });
        self.agent.peer_ns = peer_ns(&fd);
        self.agent.conn = Some((fd, slot));
        self.agent.violations = 0;
        self.agent.answered = false;
        if let Err(e) = queued {
            self.agent_drop(format_args!("ring: {e}"));
            return;
        }
        let deadline_ns =
            ring::now_ns().saturating_add(self.agent.request_timeout.as_nanos() as u64);
        self.agent.state = LinkState::Handshaking {
            ping_id,
            deadline_ns,
        };
        self.agent_sync_timer();
    }

    /// Closes the connection, fails every request in flight, and schedules a reconnect.
    pub(crate) fn agent_drop(&mut self, why: std::fmt::Arguments<'_>) {
        let was_up = self.agent.state == LinkState::Up;
        if !self.agent.take_drop_quiet() {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "event=agent-down socket={} reason=\"{why}\"",
                    self.agent_path()
                ),
            );
        }
        self.counters.agent_dropped.fetch_add(1, Ordering::Relaxed);
        if let Some((fd, slot)) = self.agent.conn.take() {
            let _ = self.ring.remove(slot);
            self.owners[slot.index()] = Owner::Free;
            drop(fd);
        }
        self.agent.queue.clear();
        if self.agent.violations == 0 && self.agent.answered {
            // A healthy connection ended (e.g. the agent restarted): reconnect quickly.
            self.agent.reconnect_delay = self.agent.reconnect_initial;
        }
        self.agent.answered = false;
        self.agent_fail_all();
        if was_up {
            self.push_event(Event::AgentDown);
            self.update_status("down");
        }
        self.agent_schedule_retry();
    }

    /// Answers every request in flight with `SpawnFailed { stage: Agent }`.
    fn agent_fail_all(&mut self) {
        self.agent.probe = None;
        self.agent.probe_unsent = false;
        for index in 0..self.services.len() {
            self.services[index].abandoned = None;
            let gate = self.agent.gates.get_mut(index).and_then(Option::take);
            let request = self.services[index].request.take();
            if let Some(request) = request {
                if let Some(pidfd) = gate.filter(|g| g.id == request.id).and_then(|g| g.pidfd) {
                    // `Started` came, `Running` not: the process exists (it execs only if the
                    // agent sent the go-ahead). Supervise it rather than start another.
                    if self
                        .agent_adopt_held(index, pidfd, "connection-lost")
                        .is_ok()
                    {
                        continue;
                    }
                }
                let service = self.services[index].id;
                self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                self.push_event(Event::SpawnFailed {
                    service,
                    error: StartFailure {
                        errno: libc::ECONNRESET,
                        stage: StartStage::Agent,
                    },
                });
            }
        }
    }

    /// Closes the connection for good (shutdown).
    pub(crate) fn agent_close(&mut self) {
        if let Some((fd, slot)) = self.agent.conn.take() {
            let _ = self.ring.remove(slot);
            self.owners[slot.index()] = Owner::Free;
            drop(fd);
        }
        self.agent.state = LinkState::Idle;
    }

    /// A protocol violation: log the first of this connection, then drop it.
    fn agent_violation(&mut self, what: std::fmt::Arguments<'_>) {
        self.agent.violations += 1;
        if self.agent.violations == 1 {
            if let Some(suppressed) = self.agent.misbehaviour_log_due(ring::now_ns()) {
                self.log.line(
                    Priority::Err,
                    format_args!(
                        "event=agent-misbehaved socket={} what=\"{what}\" suppressed={suppressed}",
                        self.agent_path(),
                    ),
                );
            }
        }
        self.agent_drop(format_args!("misbehaved"));
    }

    /// The core wants a QM process.
    pub(crate) fn agent_request(&mut self, service: ServiceId) {
        let index = service.index();
        if !self.agent.is_up() || self.services[index].request.is_some() {
            self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
            self.push_event(Event::SpawnFailed {
                service,
                error: StartFailure {
                    errno: libc::ENOTCONN,
                    stage: StartStage::Agent,
                },
            });
            return;
        }
        if self.agent.protocol == AgentProtocol::V02 {
            self.legacy_request(service);
            return;
        }
        let id = self.agent.next_id(index as u64);
        let deadline_ns =
            ring::now_ns().saturating_add(self.agent.request_timeout.as_nanos() as u64);
        self.services[index].request = Some(Request {
            id,
            deadline_ns,
            sent: false,
        });
        self.agent.queue.push(index as u32);
        self.agent_kick_send();
        self.agent_sync_timer();
    }

    /// Sends the first `len` bytes of the agent link's transmit buffer on the connection
    /// (nothing when there is none); a refused send drops the link.
    fn agent_send_tx(&mut self, slot: SlotId, len: usize) {
        let sent = match self.agent.conn.as_ref() {
            Some((fd, _)) => self
                .ring
                .sendmsg(slot, fd.as_fd(), &self.agent.tx[..len], None),
            None => Ok(()),
        };
        if let Err(e) = sent {
            self.agent_drop(format_args!("ring sendmsg: {e}"));
        }
    }

    /// Sends the next queued request if no send is in flight.
    fn agent_kick_send(&mut self) {
        let Some((_, slot)) = self.agent.conn.as_ref() else {
            return;
        };
        let slot = *slot;
        if self.ring.is_pending(slot, OpTag::SendMsg) {
            return;
        }
        if self.agent.probe_unsent {
            if let Some((id, _)) = self.agent.probe {
                self.agent.probe_unsent = false;
                let len = v1::encode_ping(&mut self.agent.tx, id).expect("a Ping always fits");
                self.agent_send_tx(slot, len);
                return;
            }
        }
        while let Some(index) = self.agent.queue.pop() {
            let rt = &mut self.services[index as usize];
            let Some(request) = rt.request.as_mut() else {
                continue;
            };
            let def = &rt.def;
            let mut flags = v1::StartFlags::NEW_SESSION;
            if def.inherit_env {
                flags |= v1::StartFlags::INHERIT_ENV;
            }
            let start = v1::StartRef {
                argv: def.argv.as_slice(),
                env: def.env.as_slice(),
                cwd: def.cwd.as_deref(),
                uid: def.uid,
                gid: def.gid,
                flags,
            };
            match v1::encode_start(&mut self.agent.tx, request.id, &start) {
                Ok(len) => {
                    request.sent = true;
                    self.agent_send_tx(slot, len);
                    return;
                }
                Err(e) => {
                    rt.request = None;
                    let service = rt.id;
                    self.log.line(
                        Priority::Err,
                        format_args!("service={} partition=qm event=spawn-failed stage=encode error=\"{e:?}\"", rt.def.name),
                    );
                    self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
                    self.push_event(Event::SpawnFailed {
                        service,
                        error: StartFailure {
                            errno: libc::E2BIG,
                            stage: StartStage::Setup,
                        },
                    });
                }
            }
        }
    }

    /// The earliest deadline of the link: reconnect, handshake or oldest request.
    fn agent_deadline(&self) -> Option<u64> {
        match self.agent.state {
            LinkState::Idle => None,
            LinkState::Down { retry_at_ns } => Some(retry_at_ns),
            LinkState::Handshaking { deadline_ns, .. } => Some(deadline_ns),
            LinkState::Up => self
                .services
                .iter()
                .filter(|rt| rt.def.policy.partition == Partition::Qm)
                .filter_map(|rt| rt.request.map(|r| r.deadline_ns))
                .chain(self.agent.probe.map(|(_, deadline)| deadline))
                .min(),
        }
    }

    pub(crate) fn agent_sync_timer(&mut self) {
        let slot = self.agent.timer_slot;
        let wanted = self.agent_deadline();
        let pending = self.ring.is_pending(slot, OpTag::Timeout);
        match (wanted, pending) {
            (Some(at), false) => {
                if self.ring.timeout(slot, Timeout::At(at)).is_ok() {
                    self.agent.timer_op_at = Some(at);
                }
            }
            (Some(at), true) => {
                if self.agent.timer_op_at.is_some_and(|armed| armed > at) {
                    let _ = self.ring.cancel_op(slot, OpTag::Timeout);
                }
            }
            (None, _) => {}
        }
    }

    pub(crate) fn agent_on_timer(&mut self, _c: Completion) {
        self.agent.timer_op_at = None;
        let now_ns = ring::now_ns();
        match self.agent.state {
            LinkState::Idle => {}
            LinkState::Down { retry_at_ns } => {
                if now_ns >= retry_at_ns {
                    self.agent_connect();
                }
            }
            LinkState::Handshaking { deadline_ns, .. } => {
                if now_ns >= deadline_ns {
                    self.agent_violation(format_args!(
                        "no Pong within {} ms",
                        self.agent.request_timeout.as_millis()
                    ));
                }
            }
            LinkState::Up => {
                let expired = self
                    .services
                    .iter()
                    .find(|rt| rt.request.is_some_and(|r| now_ns >= r.deadline_ns));
                if let Some(index) = expired
                    .map(|rt| rt.id.index())
                    .filter(|_| self.agent.protocol == AgentProtocol::V02)
                {
                    self.legacy_timeout(index);
                } else if self
                    .agent
                    .probe
                    .is_some_and(|(_, deadline)| now_ns >= deadline)
                {
                    let ms = self.agent.request_timeout.as_millis();
                    self.agent_violation(format_args!("no Pong to a liveness Ping within {ms} ms"));
                } else if expired.is_some() {
                    self.agent_expire_requests(now_ns);
                }
            }
        }
        self.agent_sync_timer();
    }

    /// Requests past their deadline fail (the core backs off). Their ids are remembered: a late
    /// `Started` is then killed instead of leaving an unsupervised process in QM. A `Ping`
    /// checks that the agent still answers at all; no `Pong` in time drops the connection.
    fn agent_expire_requests(&mut self, now_ns: u64) {
        let ms = self.agent.request_timeout.as_millis();
        for index in 0..self.services.len() {
            let rt = &mut self.services[index];
            let Some(request) = rt.request.filter(|r| now_ns >= r.deadline_ns) else {
                continue;
            };
            rt.request = None;
            rt.abandoned = Some(request.id);
            let held = match self.agent.gates.get_mut(index) {
                Some(gate) if gate.as_ref().is_some_and(|g| g.id == request.id) => {
                    gate.take().and_then(|g| g.pidfd)
                }
                _ => None,
            };
            if let Some(pidfd) = held {
                // `Started` came but `Running` did not: the process is held, not dropped.
                let _ = self.agent_adopt_held(index, pidfd, "running-timeout");
                continue;
            }
            let rt = &mut self.services[index];
            let service = rt.id;
            self.log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=agent-request-timeout timeout_ms={ms}",
                    rt.def.name
                ),
            );
            self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
            self.push_event(Event::SpawnFailed {
                service,
                error: StartFailure {
                    errno: libc::ETIMEDOUT,
                    stage: StartStage::Agent,
                },
            });
        }
        if self.agent.probe.is_none() {
            let id = self.agent.next_id(PING_INDEX);
            let deadline = now_ns.saturating_add(self.agent.request_timeout.as_nanos() as u64);
            self.agent.probe = Some((id, deadline));
            self.agent.probe_unsent = true;
            self.agent_kick_send();
        }
    }

    /// A late answer to a request that timed out: kill the process it reports (after the same
    /// checks as any pidfd), then treat the lateness as misbehaviour.
    fn agent_late_answer(
        &mut self,
        index: usize,
        fds: &mut ring::ReceivedFds,
        claimed_pid: Option<i32>,
    ) -> Violation {
        self.services[index].abandoned = None;
        if let Some(fd) = fds.fds.pop() {
            let checked = self
                .check_received_pidfd(&fd)
                .and_then(|()| check_namespace(&fd, self.agent.peer_ns, claimed_pid));
            if checked.is_ok() && fds.fds.is_empty() {
                let killed = pidfd::send_signal(fd.as_fd(), libc::SIGKILL).is_ok();
                self.log.line(
                    Priority::Warning,
                    format_args!(
                        "service={} partition=qm event=agent-late-answer qm_pid={} action={}",
                        self.services[index].def.name,
                        claimed_pid.unwrap_or(0),
                        if killed {
                            "SIGKILL"
                        } else {
                            "none (already gone)"
                        }
                    ),
                );
            }
        }
        Violation("answer after the request timed out")
    }

    pub(crate) fn agent_on_conn(&mut self, c: Completion) {
        let Some((_, slot)) = self.agent.conn.as_ref() else {
            return;
        };
        let slot = *slot;
        if c.slot != slot {
            return;
        }
        match c.op {
            OpTag::SendMsg => match c.result {
                Ok(_) => self.agent_kick_send(),
                Err(e) => self.agent_drop(format_args!("send: {}", ErrnoText(e.0))),
            },
            OpTag::RecvMsg => match c.result {
                Ok(0) => self.agent_drop(format_args!("the agent closed the connection")),
                Ok(_) => self.agent_on_packet(slot),
                Err(Errno::INTR) => {
                    if let Some((fd, slot)) = self.agent.conn.as_ref() {
                        let _ = self.ring.recvmsg(*slot, fd.as_fd());
                    }
                }
                Err(e) => self.agent_drop(format_args!("receive: {}", ErrnoText(e.0))),
            },
            _ => {}
        }
    }

    fn agent_on_packet(&mut self, slot: SlotId) {
        let truncated = self.ring.recv_truncated(slot);
        let len = match self.ring.received(slot) {
            Some(data) => {
                let len = data.len().min(self.agent.rx.len());
                self.agent.rx[..len].copy_from_slice(&data[..len]);
                len
            }
            None => 0,
        };
        let mut fds = self.ring.take_fds(slot);
        if truncated {
            return self.agent_violation(format_args!(
                "packet larger than {} bytes",
                v1::FRAME_LEN_MAX
            ));
        }
        let rx = std::mem::take(&mut self.agent.rx);
        let outcome = self.agent_on_frame(&rx[..len], &mut fds);
        self.agent.rx = rx;
        drop(fds);
        match outcome {
            Ok(()) => {
                if let Some((fd, slot)) = self.agent.conn.as_ref() {
                    if let Err(e) = self.ring.recvmsg(*slot, fd.as_fd()) {
                        self.agent_drop(format_args!("ring recvmsg: {e}"));
                    }
                }
            }
            Err(Violation(what)) => self.agent_violation(format_args!("{what}")),
        }
    }

    fn agent_on_frame(
        &mut self,
        packet: &[u8],
        fds: &mut ring::ReceivedFds,
    ) -> Result<(), Violation> {
        let frame = match v1::decode(packet) {
            Ok(frame) => frame,
            Err(e) => {
                self.log.line(
                    Priority::Debug,
                    format_args!("event=agent-garbage error=\"{e}\""),
                );
                return Err(Violation("undecodable frame"));
            }
        };
        let id = frame.request_id();
        if fds.truncated && fds.fds.len() < self.ring.limits().fds_per_msg_max as usize {
            // Fewer fds than the control buffer holds, yet truncated: the kernel could not
            // install one here (EMFILE/ENFILE). Our shortage, not the agent's fault.
            if let v1::Body::Started(started) = frame.body {
                if let Ok(Answer::OnTime(index)) = self.agent_take_request(id) {
                    if self.agent.gated {
                        // Its `Running`/`Error` is still to come: expect it, then ignore it.
                        self.agent.gates[index] = Some(Gate { id, pidfd: None });
                    }
                    self.agent_pidfd_lost(index, started.pid);
                    self.agent.mark_answered();
                    return Ok(());
                }
            }
        }
        if fds.truncated {
            return Err(Violation("more file descriptors than allowed"));
        }
        match frame.body {
            v1::Body::Pong(_) if self.agent.is_up() => match self.agent.probe {
                Some((probe_id, _))
                    if probe_id == id && !self.agent.probe_unsent && fds.fds.is_empty() =>
                {
                    self.agent.probe = None;
                    // The timed-out request told the core the agent was down; it answers, so
                    // it is up again (else QM services would wait for an AgentUp that never
                    // comes while the connection stays).
                    self.push_event(Event::AgentUp);
                    Ok(())
                }
                _ => Err(Violation("unexpected Pong")),
            },
            v1::Body::Pong(pong) => {
                let LinkState::Handshaking { ping_id, .. } = self.agent.state else {
                    return Err(Violation("unexpected Pong"));
                };
                if id != ping_id {
                    return Err(Violation("Pong with an unknown request id"));
                }
                if !fds.fds.is_empty() {
                    return Err(Violation("file descriptor with a Pong"));
                }
                if pong.version_major != v1::VERSION_MAJOR {
                    return Err(Violation("agent speaks another major version"));
                }
                self.agent.state = LinkState::Up;
                self.agent.capabilities = pong.capabilities;
                self.agent.gated = pong.version_minor >= 1
                    && pong.capabilities.contains(v1::Capabilities::GATED_EXEC);
                self.agent.version = (pong.version_major, pong.version_minor);
                // The reconnect delay is not reset here: only a valid answer to a request
                // (`mark_answered`, applied when the connection ends) does, so a hostile agent
                // cannot force fast reconnects.
                self.agent.connect_failures = 0;
                self.counters
                    .agent_connected
                    .fetch_add(1, Ordering::Relaxed);
                self.log.line(
                    Priority::Notice,
                    format_args!(
                        "event=agent-up socket={} protocol=v1 version={}.{} capabilities={:#x}",
                        self.agent_path(),
                        pong.version_major,
                        pong.version_minor,
                        pong.capabilities.bits()
                    ),
                );
                self.push_event(Event::AgentUp);
                self.update_status("up");
                Ok(())
            }
            v1::Body::Started(_) if self.agent_gate_index(id).is_some() => {
                Err(Violation("a second Started for one request"))
            }
            v1::Body::Started(started) if self.agent.gated => {
                let index = self.agent_check_started(id, fds, started.pid)?;
                let Some(pidfd) = fds.fds.pop() else {
                    return Err(Violation("Started without exactly one file descriptor"));
                };
                self.services[index].qm_pid = started.pid;
                self.log.line(
                    Priority::Debug,
                    format_args!(
                        "service={} partition=qm event=started-gated agent_pid={}",
                        self.services[index].def.name, started.pid
                    ),
                );
                self.agent.gates[index] = Some(Gate {
                    id,
                    pidfd: Some(pidfd),
                });
                Ok(())
            }
            v1::Body::Running if !fds.fds.is_empty() => {
                Err(Violation("file descriptor with a Running"))
            }
            v1::Body::Running => {
                let Some(index) = self.agent_gate_index(id) else {
                    return match self.agent_take_request(id)? {
                        Answer::Late(index) => Err(self.agent_late_answer(index, fds, None)),
                        Answer::OnTime(index) => {
                            self.agent_fail_request(index, libc::EBADMSG);
                            Err(Violation("Running before Started"))
                        }
                    };
                };
                let gate = self.agent.gates[index].take().expect("gate checked");
                let Some(pidfd) = gate.pidfd else {
                    // The pidfd was lost (EMFILE); the failure is already reported.
                    return Ok(());
                };
                self.services[index].request = None;
                self.agent_adopt_held(index, pidfd, "running")?;
                self.agent.mark_answered();
                Ok(())
            }
            v1::Body::Error(error) if self.agent_gate_index(id).is_some() => {
                let index = self.agent_gate_index(id).expect("gate checked");
                let gate = self.agent.gates[index].take().expect("gate checked");
                if !fds.fds.is_empty() {
                    if let Some(pidfd) = gate.pidfd {
                        self.services[index].request = None;
                        let _ = self.agent_adopt_held(index, pidfd, "bad-error");
                    }
                    return Err(Violation("file descriptor with an Error"));
                }
                let Some(pidfd) = gate.pidfd else {
                    return Ok(());
                };
                // The agent says the program did not run (the child exited 127 and was reaped).
                // Kill it anyway, so that a lying agent cannot leave a process behind.
                let _ = pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
                drop(pidfd);
                self.services[index].request = None;
                self.agent_spawn_error(index, &error);
                self.agent.mark_answered();
                Ok(())
            }
            v1::Body::Started(started) => {
                let index = self.agent_check_started(id, fds, started.pid)?;
                let Some(pidfd) = fds.fds.pop() else {
                    return Err(Violation("Started without exactly one file descriptor"));
                };
                self.services[index].request = None;
                self.agent_adopt(index, pidfd, started.pid);
                self.agent.mark_answered();
                Ok(())
            }
            v1::Body::Error(error) => {
                let index = match self.agent_take_request(id)? {
                    Answer::OnTime(index) => index,
                    Answer::Late(index) => return Err(self.agent_late_answer(index, fds, None)),
                };
                if !fds.fds.is_empty() {
                    self.agent_fail_request(index, libc::EBADMSG);
                    return Err(Violation("file descriptor with an Error"));
                }
                self.agent_spawn_error(index, &error);
                self.agent.mark_answered();
                Ok(())
            }
            v1::Body::Start(_) | v1::Body::Ping => {
                Err(Violation("a frame only the orchestrator sends"))
            }
        }
    }

    /// Finds and clears the request with this id (sent on this connection). `Late(index)`: the
    /// id of a request that already timed out.
    fn agent_take_request(&mut self, id: u64) -> Result<Answer, Violation> {
        if self.agent.state != LinkState::Up {
            return Err(Violation("answer before the handshake"));
        }
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let rt = self
            .services
            .get_mut(index)
            .ok_or(Violation("unknown request id"))?;
        match rt.request {
            Some(r) if r.id == id && r.sent => {
                rt.request = None;
                Ok(Answer::OnTime(index))
            }
            _ if rt.abandoned == Some(id) => Ok(Answer::Late(index)),
            _ => Err(Violation("unknown request id")),
        }
    }

    /// The service whose gate waits for `Running`/`Error` of this request id.
    fn agent_gate_index(&self, id: u64) -> Option<usize> {
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let waiting = self.agent.gates.get(index)?.as_ref()?.id == id;
        let open = self
            .services
            .get(index)?
            .request
            .is_some_and(|r| r.id == id);
        (waiting && (open || self.agent.gates[index].as_ref()?.pidfd.is_none())).then_some(index)
    }

    /// A gated `Started`: the request must be open and sent, the packet must carry exactly one
    /// pidfd of a process no service has, in the agent's PID namespace. The request stays open.
    fn agent_check_started(
        &mut self,
        id: u64,
        fds: &mut ring::ReceivedFds,
        qm_pid: i32,
    ) -> Result<usize, Violation> {
        if self.agent.state != LinkState::Up {
            return Err(Violation("answer before the handshake"));
        }
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let rt = self
            .services
            .get(index)
            .ok_or(Violation("unknown request id"))?;
        match rt.request {
            Some(r) if r.id == id && r.sent => {}
            _ if rt.abandoned == Some(id) => {
                return Err(self.agent_late_answer(index, fds, Some(qm_pid)));
            }
            _ => return Err(Violation("unknown request id")),
        }
        if fds.fds.len() != v1::STARTED_FD_COUNT {
            self.services[index].request = None;
            self.agent_fail_request(index, libc::EBADMSG);
            return Err(Violation("Started without exactly one file descriptor"));
        }
        let checked = self
            .check_received_pidfd(&fds.fds[0])
            .and_then(|()| check_namespace(&fds.fds[0], self.agent.peer_ns, Some(qm_pid)));
        if let Err(what) = checked {
            self.services[index].request = None;
            self.agent_fail_request(index, libc::EBADF);
            return Err(what);
        }
        Ok(index)
    }

    /// Supervises a held pidfd (after `Running`, a timeout or a lost connection), after checking
    /// once more that no service has its process (a hostile agent could send one pidfd twice).
    fn agent_adopt_held(
        &mut self,
        index: usize,
        pidfd: OwnedFd,
        how: &'static str,
    ) -> Result<(), Violation> {
        if let Err(what) = self.check_received_pidfd(&pidfd) {
            self.agent_fail_request(index, libc::EBADF);
            return Err(what);
        }
        if how != "running" {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "service={} partition=qm event=held-pidfd-adopted qm_pid={} why={how}",
                    self.services[index].def.name, self.services[index].qm_pid
                ),
            );
        }
        let qm_pid = self.services[index].qm_pid;
        self.agent_adopt(index, pidfd, qm_pid);
        Ok(())
    }

    /// Hands a checked pidfd to the core: the process is supervised from now on.
    fn agent_adopt(&mut self, index: usize, pidfd: OwnedFd, qm_pid: i32) {
        let identity =
            pidfd::identity(pidfd.as_fd()).unwrap_or(pidfd::Identity { inode: 0, pid: -1 });
        // Our PID namespace's pid; 0 when the process was already reaped (only the agent's
        // view of it is left, logged as qm_pid).
        let pid = identity.pid.max(0);
        self.services[index].qm_pid = qm_pid;
        self.counters.spawned_qm.fetch_add(1, Ordering::Relaxed);
        self.log.line(
            Priority::Debug,
            format_args!(
                "service={} partition=qm event=started pid={pid} agent_pid={qm_pid}",
                self.services[index].def.name
            ),
        );
        let service = self.services[index].id;
        self.adopt(service, pidfd, pid, identity);
    }

    /// An `Error` answering a request: logged, and the core backs off.
    fn agent_spawn_error(&mut self, index: usize, error: &v1::ErrorFrame<'_>) {
        let stage = match error.stage {
            v1::ErrorStage::Exec => StartStage::Exec,
            _ => StartStage::Setup,
        };
        self.log.line(
            Priority::Warning,
            format_args!(
                "service={} partition=qm event=spawn-failed stage={} errno={} error=\"{}\" agent_text=\"{}\"",
                self.services[index].def.name,
                error.stage.name(),
                error.errno,
                ErrnoText(error.errno),
                Escaped(error.text)
            ),
        );
        let service = self.services[index].id;
        self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
        self.push_event(Event::SpawnFailed {
            service,
            error: StartFailure {
                errno: error.errno,
                stage,
            },
        });
    }

    /// A `Started` whose pidfd the kernel could not give us (we are out of fds): the process
    /// runs in QM and nobody holds it. Logged as such; the request fails with EMFILE (stage
    /// `Refused`: the agent is not down), so the service backs off like a local spawn that hit
    /// the same limit.
    fn agent_pidfd_lost(&mut self, index: usize, qm_pid: i32) {
        self.log.line(
            Priority::Err,
            format_args!(
                "service={} partition=qm event=pidfd-lost qm_pid={qm_pid} error=\"the pidfd could not be received (out of file descriptors?): the process runs unsupervised in QM\"",
                self.services[index].def.name
            ),
        );
        let service = self.services[index].id;
        self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
        self.push_event(Event::SpawnFailed {
            service,
            error: StartFailure {
                errno: libc::EMFILE,
                stage: StartStage::Refused,
            },
        });
    }

    fn agent_fail_request(&mut self, index: usize, errno: i32) {
        let service = self.services[index].id;
        self.counters.spawn_failed.fetch_add(1, Ordering::Relaxed);
        self.push_event(Event::SpawnFailed {
            service,
            error: StartFailure {
                errno,
                stage: StartStage::Refused,
            },
        });
    }

    /// An fd that claims to be a new QM process: it must be a pidfd, of a process no service
    /// already has.
    pub(crate) fn check_received_pidfd(&self, fd: &OwnedFd) -> Result<(), Violation> {
        if !pidfd::is_pidfd(fd.as_fd()) {
            return Err(Violation("file descriptor is not a pidfd"));
        }
        let identity =
            pidfd::identity(fd.as_fd()).map_err(|_| Violation("pidfd without identity"))?;
        let duplicate = self
            .services
            .iter()
            .filter_map(|rt| rt.proc.as_ref())
            .any(|p| {
                p.identity.same_process(&identity)
                    || (identity.pid > 0 && p.pid == identity.pid && !p.exited)
            });
        if duplicate {
            return Err(Violation("pidfd of a process already supervised"));
        }
        Ok(())
    }
}

/// Which request an answer belongs to.
enum Answer {
    /// An outstanding request of this service.
    OnTime(usize),
    /// A request of this service that already timed out.
    Late(usize),
}

/// What the agent did wrong (static text: logged once, never allocated).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Violation(pub &'static str);

/// The agent socket's name, for log lines (escaped like any outside bytes).
pub(crate) struct AgentPath([u8; 108], usize);

impl std::fmt::Display for AgentPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Escaped(&self.0[..self.1]))
    }
}
