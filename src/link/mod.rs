//! The orchestrator's side of the agent protocol as a sans-IO machine (quinn-proto's
//! `Connection` is the model): holden wire v1 over one SOCK_SEQPACKET connection, and holden
//! v0.2 (SOCK_STREAM, one connection per request).
//!
//! The [`Link`] does no I/O and reads no clock. The shell feeds it what happened — a connect
//! that succeeded or failed, a packet with the fds that came with it (already classified:
//! pidfd or not, the process's identity and PID-namespace position), a send that completed,
//! a closed connection, the time — together with the current time in a [`Cx`]. It gives
//! back:
//! - [`Io`] to carry out: open or close a connection, SIGKILL a process the agent reported
//!   too late ([`Link::poll_io`]);
//! - frames to send, at most one in flight per connection ([`Link::poll_transmit`]);
//! - its next deadline ([`Link::poll_timeout`]; call [`Link::handle_timeout`] when it
//!   passes);
//! - [`Event`]s for the supervision core (the agent is up or down, a process was started
//!   with its pidfd, a spawn failed) and [`Note`]s that are only logged
//!   ([`Link::poll_event`]).
//!
//! Everything it holds is sized in [`Link::new`]: a request slot per service, queues with a
//! capacity computed from the number of services. The shell's handle type `H` is an owned
//! pidfd in the orchestrator and a tracked token in the simulation; a handle the link does
//! not pass on is dropped (closed) when the link decides so, never kept.
//!
//! v1 in short (`docs/wire.md`): connect, `Ping`, the agent answers `Pong` with its version
//! and capabilities; then every QM spawn is a `Start` with request id
//! `(sequence << 20) | service index`, answered by `Started` + pidfd (or `Error`). With the
//! gated exec (minor 1+, `GATED_EXEC`) the pidfd comes before the exec and `Running` (or
//! `Error`) after it; the pidfd is held until then. Any misbehaviour drops the connection
//! (requests in flight fail; a held pidfd is supervised anyway) and the link reconnects with
//! exponential backoff. See `v1.rs` for each check, `v02.rs` for the v0.2 dialect.

mod order;
mod v02;
mod v1;

#[cfg(test)]
mod tests;

use crate::pidfd::{Identity, NsPid};
use crate::queue::Fifo;
use crate::supervise::StartStage;
use crate::wire::v1 as wire;
use std::time::Duration;

use order::Order;

/// Bits of a request id that hold the service index.
const REQUEST_INDEX_BITS: u32 = 20;
const REQUEST_INDEX_MASK: u64 = (1 << REQUEST_INDEX_BITS) - 1;
/// The index part of the ids of our own `Ping`s (no service has it).
const PING_INDEX: u64 = REQUEST_INDEX_MASK;

const _: () = assert!(crate::supervise::SERVICES_MAX as u64 <= PING_INDEX);

/// At most one misbehaviour is noted per interval (the others are counted).
pub const MISBEHAVIOUR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Most fds one received message can bring to the link.
pub const FDS_MAX: usize = 2;

/// Which protocol the agent speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Wire v1; falls back to v0.2 when the socket is a stream socket (connect: EPROTOTYPE).
    Auto,
    /// Wire v1 only.
    V1,
    /// holden v0.2, one connection per request.
    V02,
}

impl Protocol {
    /// As configured and shown (`auto`, `v1`, `v0.2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::V1 => "v1",
            Protocol::V02 => "v0.2",
        }
    }
}

/// The link's fixed settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub protocol: Protocol,
    /// How long a request (and the handshake, and a liveness probe) may take.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Service slots (request ids carry the index).
    pub services: usize,
}

/// A connection the shell holds for the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conn {
    /// The v1 connection.
    Main,
    /// The v0.2 connection of one request (by service index).
    Request(u32),
    /// A v0.2 liveness probe: connect, then close at once.
    Probe,
}

/// The socket type of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    Seqpacket,
    Stream,
}

/// What the shell must carry out.
#[derive(Debug)]
pub enum Io<H> {
    /// Connect a non-blocking socket of `kind` to the agent's address; answer with
    /// [`Link::connected`] or [`Link::connect_failed`] (at once or later). After a connect,
    /// keep one receive posted on the connection until it is closed (not for a `Probe`: close
    /// it right after connecting).
    Connect { conn: Conn, kind: SocketKind },
    /// Close the connection. Operations still queued on it must not reach a reused fd number.
    Close { conn: Conn },
    /// SIGKILL the process behind `handle`, then close it: nobody will supervise it. `late`:
    /// the agent reported it after its request timed out (worth a log line); otherwise the
    /// agent said it did not run (`Error` after a gated `Started`).
    Kill {
        handle: H,
        service: usize,
        qm_pid: i32,
        late: bool,
    },
}

/// What the link tells the supervision core.
#[derive(Debug)]
pub enum Event<H> {
    /// QM services may be spawned.
    Up,
    /// The agent was lost; every request in flight was failed before this event.
    Down,
    /// A QM process for `service` exists: supervise it through `handle`.
    Started {
        service: usize,
        handle: H,
        identity: Identity,
        /// The pid the agent reported (in its PID namespace).
        qm_pid: i32,
    },
    /// (v1.2) A process in QM sent an sd_notify datagram to the agent's notify socket: `qm_pid`
    /// as the agent sees it, the bytes in [`Link::notify_text`] until the next input.
    Notify { qm_pid: i32 },
    /// The spawn for `service` failed.
    Failed {
        service: usize,
        errno: i32,
        stage: StartStage,
    },
    /// Something only worth a log line.
    Note(Note),
}

/// Why the agent connection went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// It misbehaved (the misbehaviour is noted separately).
    Misbehaved,
    /// The agent closed the connection.
    Closed,
    /// v0.2: the agent closed a request's connection before answering it.
    ClosedBeforeAnswer,
    /// A send failed with this errno.
    Send(i32),
    /// A receive failed with this errno.
    Receive(i32),
    /// v0.2: connecting for a request failed with this errno.
    Connect(i32),
    /// v0.2: a request got no answer within this many ms.
    NoAnswer(u64),
    /// The shell could not carry out an operation (a bug in the shell's sizing).
    Shell(&'static str),
}

/// What the agent did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// A fixed description (the texts are part of the log format: tests and operators match
    /// them).
    Said(&'static str),
    /// A packet longer than a v1 frame.
    Oversized,
    /// No `Pong` to the handshake within this many ms.
    NoPong(u64),
    /// No `Pong` to a liveness probe within this many ms.
    NoProbePong(u64),
}

/// The agent's own words in its last `Error` (or v0.2 `PROCESS_ERROR`), copied out of the
/// packet into the link's one buffer: [`Link::agent_text`] reads it. One packet brings at most
/// one, and the shell logs the note before it feeds the link another packet.
struct AgentText {
    bytes: [u8; crate::wire::v02::ERROR_TEXT_LEN_MAX],
    len: usize,
}

/// Most `Notify` frames taken per second from one agent, and at once: twice the rate
/// holden-agent forwards at most, four times its burst, so that only an agent that breaks
/// the protocol's limit goes over. More is misbehaviour: the connection is dropped, so a
/// flood costs the loop at most a burst per reconnect delay.
pub const NOTIFY_PER_SEC: u64 = 1024;
pub const NOTIFY_BURST: u64 = 256;

impl AgentText {
    fn set(&mut self, text: &[u8]) {
        let len = text.len().min(self.bytes.len());
        self.bytes[..len].copy_from_slice(&text[..len]);
        self.len = len;
    }
}

/// Things that are only logged; the shell formats them.
#[derive(Clone, Copy, Debug)]
pub enum Note {
    /// Handshake done (v1), or a connect succeeded (v0.2).
    Up {
        protocol: Protocol,
        version: (u8, u8),
        capabilities: u32,
    },
    /// The agent connection went down (not noted when the misbehaviour that caused it was
    /// rate-limited).
    Down {
        protocol: Protocol,
        reason: DownReason,
    },
    /// `Auto` found a stream socket: the agent speaks v0.2.
    FellBackToV02,
    /// A connection attempt failed (only the first of a run is noted).
    ConnectFailed { protocol: Protocol, errno: i32 },
    /// The next attempt is in `delay`.
    Retry { delay: Duration },
    /// The agent misbehaved; `suppressed` misbehaviours were not noted since the last one.
    Misbehaved {
        protocol: Protocol,
        what: What,
        suppressed: u32,
    },
    /// A packet did not decode (detail for debugging; a `Misbehaved` follows).
    Garbage(wire::DecodeError),
    /// A request of `service` timed out.
    RequestTimeout {
        protocol: Protocol,
        service: usize,
        timeout_ms: u64,
    },
    /// A gated `Started` came: the pidfd is held until `Running`.
    StartedGated { service: usize, qm_pid: i32 },
    /// A held pidfd was supervised without its `Running` (timeout, lost connection, bad
    /// `Error`).
    HeldAdopted {
        service: usize,
        qm_pid: i32,
        why: &'static str,
    },
    /// The kernel could not give us the pidfd of a started process (out of fds).
    PidfdLost { service: usize, qm_pid: i32 },
    /// The agent could not spawn (v1 `Error`); its text: [`Link::agent_text`].
    SpawnError {
        service: usize,
        stage: wire::ErrorStage,
        errno: i32,
    },
    /// The agent could not spawn (v0.2 `PROCESS_ERROR`); its text: [`Link::agent_text`].
    V02SpawnError { service: usize },
    /// v0.2 `PROCESS_STARTED` with the pids the agent reported.
    V02Started {
        service: usize,
        host_pid: i32,
        container_pid: i32,
    },
    /// A `Start` could not be encoded (the service's argv or environment break a wire limit).
    EncodeFailed {
        protocol: Protocol,
        service: usize,
        error: EncodeFailure,
    },
}

/// Why a `Start` could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeFailure {
    V1(wire::EncodeError),
    V02(crate::wire::v02::EncodeError),
    /// The shell has no start for the service (removed meanwhile).
    NoStart,
    /// A `type = "notify"` service, and the agent does not forward notifications (it did not
    /// announce minor 2 and `NOTIFY_FORWARD`, or speaks v0.2).
    NoNotify,
    /// A service with an execution environment (limits, scheduling …), and the agent cannot
    /// apply one (it did not announce minor 2 and `EXEC_ENV`, or speaks v0.2).
    NoExecEnv,
    /// A service with cgroup limits, and the agent has no cgroups (it did not announce minor 2
    /// and `CGROUPS`, or speaks v0.2).
    NoCgroupLimits,
}

/// What each wire 1.2 `Start` flag needs the agent to have announced, and the failure of a
/// start that has the flag when the agent did not.
const ANNOUNCED_FOR: [(wire::StartFlags, wire::Capabilities, EncodeFailure); 3] = [
    (
        wire::StartFlags::NOTIFY,
        wire::Capabilities::NOTIFY_FORWARD,
        EncodeFailure::NoNotify,
    ),
    (
        wire::StartFlags::EXEC_ENV,
        wire::Capabilities::EXEC_ENV,
        EncodeFailure::NoExecEnv,
    ),
    (
        wire::StartFlags::CGROUP_LIMITS,
        wire::Capabilities::CGROUPS,
        EncodeFailure::NoCgroupLimits,
    ),
];

/// Why a start with `flags` cannot go to an agent whose announced capabilities `announced`
/// tells: the first flag it needs and the agent lacks.
fn unmet(
    flags: wire::StartFlags,
    announced: impl Fn(wire::Capabilities) -> bool,
) -> Option<EncodeFailure> {
    ANNOUNCED_FOR
        .iter()
        .find(|(flag, capability, _)| flags.contains(*flag) && !announced(*capability))
        .map(|(_, _, failure)| *failure)
}

impl EncodeFailure {
    /// The errno the failed start is reported with.
    fn errno(&self) -> i32 {
        match self {
            EncodeFailure::NoNotify | EncodeFailure::NoExecEnv | EncodeFailure::NoCgroupLimits => {
                libc::EOPNOTSUPP
            }
            _ => libc::E2BIG,
        }
    }
}

/// What the shell found out about a received fd before handing it to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdClass {
    /// Not a pidfd (pipe, socket, file, eventfd, memfd...).
    Other,
    /// A pidfd whose process could not be identified.
    NoIdentity,
    /// A pidfd: which process, and where it sits in the PID namespaces (`None` once it has
    /// exited or when it cannot be read: not checked then).
    Pidfd {
        identity: Identity,
        ns: Option<NsPid>,
    },
}

/// A received fd and what it is.
#[derive(Debug)]
pub struct PeerFd<H> {
    pub handle: H,
    pub class: FdClass,
}

/// The fds of one received message.
#[derive(Debug)]
pub struct Fds<H> {
    pub fds: arrayvec::ArrayVec<PeerFd<H>, FDS_MAX>,
    /// Some fds were lost (control data truncated, or more than [`FDS_MAX`]).
    pub truncated: bool,
    /// They were lost on our side: fewer arrived than the control buffer holds, yet it was
    /// truncated, so the kernel could not install one here (EMFILE/ENFILE).
    pub ours: bool,
}

impl<H> Fds<H> {
    /// No fds.
    pub fn none() -> Fds<H> {
        Fds {
            fds: arrayvec::ArrayVec::new(),
            truncated: false,
            ours: false,
        }
    }
}

/// What the link is given with every input: the time and a view of what is supervised.
pub struct Cx<'a> {
    /// CLOCK_MONOTONIC, in nanoseconds.
    pub now_ns: u64,
    /// Whether a process with this identity is already supervised (by any service).
    pub supervised: &'a dyn Fn(&Identity) -> bool,
}

/// Where the link gets the `Start` of a service from when it is time to send it.
pub trait Requests {
    /// The `Start` of service `index`; `None` if it has none (then the request fails).
    fn start(&self, index: usize) -> Option<wire::StartRef<'_, Vec<u8>, Vec<u8>>>;
}

/// The state of the link as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No QM service: never connect.
    Idle,
    /// Not connected; the next attempt is at this time.
    Down { retry_at_ns: u64 },
    /// A connect is under way (`Io::Connect` issued, no answer yet).
    Connecting,
    /// v1: connected, `Ping` sent, waiting for the `Pong`.
    Handshaking { ping_id: u64, deadline_ns: u64 },
    /// Requests can be made.
    Up,
}

/// A liveness `Ping` after a request timed out.
#[derive(Clone, Copy, Debug)]
struct Probe {
    id: u64,
    deadline_ns: u64,
    unsent: bool,
}

/// An outstanding request of one service.
#[derive(Clone, Copy, Debug)]
struct Request {
    id: u64,
    deadline_ns: u64,
    /// v1: the `Start` went out (or is being sent); v0.2: always.
    sent: bool,
}

/// A gated `Started` whose `Running` (or `Error`) has not come yet.
struct Gate<H> {
    id: u64,
    /// `None` when the kernel could not give us the pidfd (its answer is then only awaited,
    /// to be ignored).
    fd: Option<PeerFd<H>>,
}

/// The link's side of one service.
struct Slot<H> {
    request: Option<Request>,
    /// The id of a request that timed out on the current connection (a late answer is killed,
    /// not adopted).
    abandoned: Option<u64>,
    gate: Option<Gate<H>>,
    /// The pid the agent reported for the last process (its PID namespace).
    qm_pid: i32,
    /// v0.2: the request's connection.
    v02: v02::ConnState,
}

/// The orchestrator's agent link. See the module documentation.
pub struct Link<H> {
    config: Config,
    /// The protocol in use (`Auto` until a connect tells; with `auto` configured, again at
    /// every reconnect).
    protocol: Protocol,
    state: State,
    /// v1: the connection is open (between `connected` and our `Close`).
    main_open: bool,
    /// v1: a send is in flight on the connection.
    sending: bool,
    /// v1: the handshake `Ping` is still to be sent.
    ping_unsent: bool,
    /// Where the agent sits in the PID namespaces (SO_PEERCRED at connect): a process it
    /// started must sit at the same depth.
    peer_ns: Option<NsPid>,
    probe: Option<Probe>,
    sequence: u64,
    reconnect_delay: Duration,
    /// Misbehaviours on the current connection (only the first is noted).
    violations: u32,
    /// Consecutive failed connection attempts (only the first of a run is noted).
    connect_failures: u32,
    /// This connection answered a request correctly.
    answered: bool,
    misbehaviour_noted_at_ns: Option<u64>,
    misbehaviour_suppressed: u32,
    /// The current misbehaviour was not noted: neither is the drop it causes.
    quiet: bool,
    capabilities: wire::Capabilities,
    version: (u8, u8),
    /// The agent announced minor 1+ and `GATED_EXEC`.
    gated: bool,
    notify_budget: crate::rate::TokenBucket,
    /// The bytes of the last `Notify` ([`Link::notify_text`]).
    notify_text: Box<[u8]>,
    notify_len: usize,
    slots: Box<[Slot<H>]>,
    agent_text: AgentText,
    /// v1: services whose `Start` waits for the connection's send.
    send_queue: Fifo<u32>,
    /// Outstanding requests, oldest first (all have the same timeout, so the oldest has the
    /// earliest deadline).
    order: Order,
    events: Fifo<Event<H>>,
    io: Fifo<Io<H>>,
    stats: Stats,
}

/// Counters of the link (for `holdenctl agent` and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handshakes that succeeded (v0.2: connects after being down).
    pub connected: u64,
    /// Connections dropped (closed, refused, misbehaving, timed out).
    pub dropped: u64,
}

impl<H> Link<H> {
    /// A link for `config.services` services, down (connecting at [`Link::start`]) when
    /// `needed`, idle otherwise. Allocates everything it will use.
    pub fn new(config: Config, needed: bool) -> Link<H> {
        let services = config.services.max(1);
        Link {
            config,
            protocol: config.protocol,
            state: if needed {
                State::Down { retry_at_ns: 0 }
            } else {
                State::Idle
            },
            main_open: false,
            sending: false,
            ping_unsent: false,
            peer_ns: None,
            probe: None,
            sequence: 0,
            reconnect_delay: config.reconnect_initial,
            violations: 0,
            connect_failures: 0,
            answered: false,
            misbehaviour_noted_at_ns: None,
            misbehaviour_suppressed: 0,
            quiet: false,
            capabilities: wire::Capabilities::empty(),
            version: (0, 0),
            gated: false,
            notify_budget: crate::rate::TokenBucket::new(NOTIFY_PER_SEC, NOTIFY_BURST, 0),
            notify_text: vec![0; wire::NOTIFY_TEXT_LEN_MAX].into_boxed_slice(),
            notify_len: 0,
            slots: (0..services)
                .map(|_| Slot {
                    request: None,
                    abandoned: None,
                    gate: None,
                    qm_pid: 0,
                    v02: v02::ConnState::Closed,
                })
                .collect(),
            agent_text: AgentText {
                bytes: [0; crate::wire::v02::ERROR_TEXT_LEN_MAX],
                len: 0,
            },
            send_queue: Fifo::with_capacity(services),
            order: Order::new(services),
            // Per input: a failure per service and a few link-wide events and notes.
            events: Fifo::with_capacity(services * 3 + 16),
            // Per input: a close and a connect per service (v0.2), kills of late answers.
            io: Fifo::with_capacity(services * 2 + 8),
            stats: Stats::default(),
        }
    }

    // --- what the shell reads ---------------------------------------------------------

    /// The next thing to carry out.
    pub fn poll_io(&mut self) -> Option<Io<H>> {
        self.io.pop()
    }

    /// The next event for the core (or note for the log).
    pub fn poll_event(&mut self) -> Option<Event<H>> {
        self.events.pop()
    }

    /// When [`Link::handle_timeout`] is due next (CLOCK_MONOTONIC ns).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Idle | State::Connecting => None,
            State::Down { retry_at_ns } => Some(retry_at_ns),
            State::Handshaking { deadline_ns, .. } => Some(deadline_ns),
            State::Up => {
                let oldest = self
                    .order
                    .oldest()
                    .and_then(|index| self.slots[index].request.map(|r| r.deadline_ns));
                let probe = self.probe.map(|p| p.deadline_ns);
                match (oldest, probe) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// The next frame to send: `(connection, length)` written into `buf` (at least one v1
    /// frame long). At most one send is in flight per connection: call again after
    /// [`Link::sent`].
    pub fn poll_transmit(
        &mut self,
        buf: &mut [u8],
        requests: &dyn Requests,
    ) -> Option<(Conn, usize)> {
        match self.protocol {
            Protocol::V02 => self.v02_transmit(buf, requests),
            _ => self.v1_transmit(buf, requests),
        }
    }

    /// The text of the agent's last `Error` (see [`Note::SpawnError`]); outside bytes, escape
    /// them before showing them.
    pub fn agent_text(&self) -> &[u8] {
        &self.agent_text.bytes[..self.agent_text.len]
    }

    /// The datagram of the last [`Event::Notify`] (bytes from QM: decode, never trust).
    pub fn notify_text(&self) -> &[u8] {
        &self.notify_text[..self.notify_len]
    }

    /// The agent forwards sd_notify datagrams (wire 1.2, `NOTIFY_FORWARD`).
    pub fn forwards_notify(&self) -> bool {
        self.announced(wire::Capabilities::NOTIFY_FORWARD) && self.protocol == Protocol::V1
    }

    /// The agent's last `Pong` said minor 2 or more and `capability` (wire 1.2's features).
    fn announced(&self, capability: wire::Capabilities) -> bool {
        self.version.1 >= 2 && self.capabilities.contains(capability)
    }

    /// The agent can take requests.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The link's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The protocol in use (`Auto` until the first connect told).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The agent's version and capabilities from its last `Pong` (v1).
    pub fn agent_version(&self) -> ((u8, u8), wire::Capabilities) {
        (self.version, self.capabilities)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Requests outstanding (for invariant checks).
    pub fn requests_outstanding(&self) -> usize {
        self.slots.iter().filter(|s| s.request.is_some()).count()
    }

    /// The deadline of the request of `index`, if one is outstanding.
    pub fn request_deadline(&self, index: usize) -> Option<u64> {
        self.slots.get(index)?.request.map(|r| r.deadline_ns)
    }

    /// Held gated pidfds (for invariant checks).
    pub fn held(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.gate.as_ref().is_some_and(|g| g.fd.is_some()))
            .count()
    }

    /// Fixed capacities of the link's queues and tables (for "no growth" checks).
    pub fn capacities(&self) -> [usize; 4] {
        [
            self.slots.len(),
            self.send_queue.capacity(),
            self.events.capacity(),
            self.io.capacity(),
        ]
    }

    // --- inputs -------------------------------------------------------------------------

    /// Starts the link (the orchestrator's start-up): connect unless idle.
    pub fn start(&mut self) {
        if self.state != State::Idle {
            self.connect();
        }
    }

    /// A QM service appeared (reload): leave `Idle` and connect.
    pub fn enable(&mut self) {
        if self.state == State::Idle {
            self.state = State::Down { retry_at_ns: 0 };
            self.connect();
        }
    }

    /// The orchestrator exits: close everything, connect no more.
    pub fn close(&mut self) {
        if self.main_open {
            self.main_open = false;
            self.io.push(Io::Close { conn: Conn::Main });
        }
        for index in 0..self.slots.len() {
            if self.slots[index].v02 != v02::ConnState::Closed {
                self.slots[index].v02 = v02::ConnState::Closed;
                self.io.push(Io::Close {
                    conn: Conn::Request(index as u32),
                });
            }
        }
        self.state = State::Idle;
    }

    /// The core wants a QM process for `service`.
    pub fn request(&mut self, cx: &Cx<'_>, service: usize) {
        let busy = self.slots.get(service).is_none_or(|s| s.request.is_some());
        if !self.is_up() || busy {
            self.fail(service, libc::ENOTCONN, StartStage::Agent);
            return;
        }
        match self.protocol {
            Protocol::V02 => self.v02_request(cx, service),
            _ => self.v1_request(cx, service),
        }
    }

    /// A connect the link asked for succeeded; `peer` is where the agent sits in the PID
    /// namespaces (from SO_PEERCRED), if it could be read.
    pub fn connected(&mut self, cx: &Cx<'_>, conn: Conn, peer: Option<NsPid>) {
        match conn {
            Conn::Main => self.v1_connected(cx, peer),
            Conn::Probe => self.v02_up(),
            Conn::Request(index) => self.v02_connected(index as usize, peer),
        }
    }

    /// A connect the link asked for failed with `errno`.
    pub fn connect_failed(&mut self, cx: &Cx<'_>, conn: Conn, errno: i32) {
        match conn {
            Conn::Main if errno == libc::EPROTOTYPE && self.protocol == Protocol::Auto => {
                self.note(Note::FellBackToV02);
                self.protocol = Protocol::V02;
                self.v02_up();
            }
            Conn::Main | Conn::Probe => self.connect_attempt_failed(cx, errno),
            Conn::Request(index) => self.v02_connect_failed(cx, index as usize, errno),
        }
    }

    /// One message arrived on `conn`: a packet (v1) or the next bytes of the stream (v0.2),
    /// with its fds. `oversized`: the packet was longer than the receive buffer (the rest is
    /// lost).
    pub fn received(&mut self, cx: &Cx<'_>, conn: Conn, data: &[u8], oversized: bool, fds: Fds<H>) {
        match conn {
            Conn::Main if self.main_open => self.v1_received(cx, data, oversized, fds),
            Conn::Request(index) => self.v02_received(cx, index as usize, data, fds),
            _ => {}
        }
    }

    /// The peer closed `conn` (a receive returned 0 bytes).
    pub fn closed(&mut self, cx: &Cx<'_>, conn: Conn) {
        match conn {
            Conn::Main if self.main_open => self.drop_link(cx, DownReason::Closed),
            Conn::Request(index) if self.v02_open(index as usize) => {
                self.v02_down(cx, DownReason::ClosedBeforeAnswer)
            }
            _ => {}
        }
    }

    /// A receive on `conn` failed with `errno` (not EINTR: the shell retries that itself).
    pub fn receive_failed(&mut self, cx: &Cx<'_>, conn: Conn, errno: i32) {
        match conn {
            Conn::Main if self.main_open => self.drop_link(cx, DownReason::Receive(errno)),
            Conn::Request(index) if self.v02_open(index as usize) => {
                self.v02_down(cx, DownReason::Receive(errno))
            }
            _ => {}
        }
    }

    /// The send on `conn` completed.
    pub fn sent(&mut self, conn: Conn) {
        if conn == Conn::Main {
            self.sending = false;
        }
    }

    /// The send on `conn` failed with `errno`.
    pub fn send_failed(&mut self, cx: &Cx<'_>, conn: Conn, errno: i32) {
        match conn {
            Conn::Main if self.main_open => {
                self.sending = false;
                self.drop_link(cx, DownReason::Send(errno))
            }
            Conn::Request(index) if self.v02_open(index as usize) => {
                self.v02_down(cx, DownReason::Send(errno))
            }
            _ => {}
        }
    }

    /// The shell could not carry out an operation on `conn` (its ring was full or refused
    /// it): the connection is given up as if it had failed.
    pub fn shell_failed(&mut self, cx: &Cx<'_>, conn: Conn, what: &'static str) {
        match conn {
            Conn::Main if self.main_open => self.drop_link(cx, DownReason::Shell(what)),
            Conn::Request(index) if self.v02_open(index as usize) => {
                self.v02_finish(index as usize, Some((libc::EIO, StartStage::Agent)))
            }
            Conn::Request(index) => {
                if self.slots[index as usize].request.is_some() {
                    self.v02_finish(index as usize, Some((libc::EIO, StartStage::Agent)))
                }
            }
            Conn::Main | Conn::Probe => self.connect_attempt_failed(cx, libc::EIO),
        }
    }

    /// Time passed: reconnect, handshake, request and probe deadlines.
    pub fn handle_timeout(&mut self, cx: &Cx<'_>) {
        let now = cx.now_ns;
        match self.state {
            State::Idle | State::Connecting => {}
            State::Down { retry_at_ns } => {
                if now >= retry_at_ns {
                    self.connect();
                }
            }
            State::Handshaking { deadline_ns, .. } => {
                if now >= deadline_ns {
                    let ms = self.timeout_ms();
                    self.violation(cx, What::NoPong(ms));
                }
            }
            State::Up => {
                let expired = self
                    .order
                    .oldest()
                    .filter(|&i| self.slots[i].request.is_some_and(|r| now >= r.deadline_ns));
                match expired {
                    Some(index) if self.protocol == Protocol::V02 => self.v02_timeout(cx, index),
                    _ if self.probe.is_some_and(|p| now >= p.deadline_ns) => {
                        let ms = self.timeout_ms();
                        self.violation(cx, What::NoProbePong(ms));
                    }
                    Some(_) => self.v1_expire_requests(cx),
                    None => {}
                }
            }
        }
    }

    // --- shared machinery ---------------------------------------------------------------

    fn timeout_ms(&self) -> u64 {
        self.config.request_timeout.as_millis() as u64
    }

    fn deadline(&self, now_ns: u64) -> u64 {
        now_ns.saturating_add(self.config.request_timeout.as_nanos() as u64)
    }

    fn next_id(&mut self, index: u64) -> u64 {
        self.sequence = self.sequence.wrapping_add(1) & ((1 << (64 - REQUEST_INDEX_BITS)) - 1);
        (self.sequence << REQUEST_INDEX_BITS) | index
    }

    fn note(&mut self, note: Note) {
        self.events.push(Event::Note(note));
    }

    fn fail(&mut self, service: usize, errno: i32, stage: StartStage) {
        self.events.push(Event::Failed {
            service,
            errno,
            stage,
        });
    }

    /// Records a new outstanding request of `index`.
    fn open_request(&mut self, index: usize, id: u64, deadline_ns: u64, sent: bool) {
        self.slots[index].request = Some(Request {
            id,
            deadline_ns,
            sent,
        });
        self.order.push(index);
    }

    /// Ends the outstanding request of `index`, if any; returns it.
    fn close_request(&mut self, index: usize) -> Option<Request> {
        let request = self.slots.get_mut(index)?.request.take();
        if request.is_some() {
            self.order.remove(index);
        }
        request
    }

    fn connect(&mut self) {
        self.state = State::Connecting;
        // `auto` detects again at every (re)connect: the agent behind the path may have been
        // swapped for one that speaks the other protocol.
        if self.config.protocol == Protocol::Auto {
            self.protocol = Protocol::Auto;
        }
        match self.protocol {
            Protocol::V02 => self.io.push(Io::Connect {
                conn: Conn::Probe,
                kind: SocketKind::Stream,
            }),
            Protocol::Auto | Protocol::V1 => self.io.push(Io::Connect {
                conn: Conn::Main,
                kind: SocketKind::Seqpacket,
            }),
        }
    }

    /// A connection attempt failed: note the first of a run, retry with backoff.
    fn connect_attempt_failed(&mut self, cx: &Cx<'_>, errno: i32) {
        if self.connect_failures == 0 {
            self.note(Note::ConnectFailed {
                protocol: self.protocol,
                errno,
            });
        }
        self.connect_failures += 1;
        self.schedule_retry(cx);
    }

    fn schedule_retry(&mut self, cx: &Cx<'_>) {
        let delay = self.reconnect_delay;
        self.reconnect_delay = (delay * 2)
            .min(self.config.reconnect_max)
            .max(self.config.reconnect_initial);
        let retry_at_ns = cx.now_ns.saturating_add(delay.as_nanos() as u64);
        self.state = State::Down { retry_at_ns };
        self.note(Note::Retry { delay });
    }

    /// Rate limit of misbehaviour notes: `Some(suppressed)` when this one is noted.
    fn misbehaviour_due(&mut self, now_ns: u64) -> Option<u32> {
        let interval_ns = MISBEHAVIOUR_LOG_INTERVAL.as_nanos() as u64;
        let due = self
            .misbehaviour_noted_at_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= interval_ns);
        if due {
            self.misbehaviour_noted_at_ns = Some(now_ns);
            self.quiet = false;
            Some(std::mem::take(&mut self.misbehaviour_suppressed))
        } else {
            self.misbehaviour_suppressed = self.misbehaviour_suppressed.saturating_add(1);
            self.quiet = true;
            None
        }
    }

    /// Notes a misbehaviour if the rate limit allows.
    fn note_misbehaviour(&mut self, now_ns: u64, what: What) {
        if let Some(suppressed) = self.misbehaviour_due(now_ns) {
            self.note(Note::Misbehaved {
                protocol: self.protocol,
                what,
                suppressed,
            });
        }
    }

    /// A received fd that claims to be a new QM process: a pidfd, of a process that is
    /// neither supervised nor held. Returns its identity.
    fn check_pidfd(&self, cx: &Cx<'_>, class: &FdClass) -> Result<Identity, What> {
        let identity = match *class {
            FdClass::Other => return Err(What::Said("file descriptor is not a pidfd")),
            FdClass::NoIdentity => return Err(What::Said("pidfd without identity")),
            FdClass::Pidfd { identity, .. } => identity,
        };
        let held = self.slots.iter().any(|s| {
            s.gate
                .as_ref()
                .and_then(|g| g.fd.as_ref())
                .is_some_and(|fd| match fd.class {
                    FdClass::Pidfd {
                        identity: other, ..
                    } => other.same_process(&identity),
                    _ => false,
                })
        });
        if held || (cx.supervised)(&identity) {
            return Err(What::Said("pidfd of a process already supervised"));
        }
        Ok(identity)
    }

    /// The process must sit where a child of the agent must: in the agent's PID namespace
    /// (same depth) and, with `claimed`, with the pid the agent reported. A process that has
    /// exited is not checked (it can do no harm: its end is reported at once).
    fn check_namespace(
        class: &FdClass,
        agent: Option<NsPid>,
        claimed: Option<i32>,
    ) -> Result<(), What> {
        let (Some(agent), FdClass::Pidfd { ns: Some(p), .. }) = (agent, class) else {
            return Ok(());
        };
        if p.depth != agent.depth {
            return Err(What::Said(
                "pidfd of a process outside the agent's PID namespace",
            ));
        }
        if claimed.is_some_and(|c| c != p.innermost) {
            return Err(What::Said(
                "pidfd of a process other than the one the agent reported",
            ));
        }
        Ok(())
    }

    /// Hands a checked pidfd to the core: the process is supervised from now on.
    fn adopt(&mut self, index: usize, fd: PeerFd<H>, qm_pid: i32) {
        let identity = match fd.class {
            FdClass::Pidfd { identity, .. } => identity,
            _ => Identity { inode: 0, pid: -1 },
        };
        self.slots[index].qm_pid = qm_pid;
        self.events.push(Event::Started {
            service: index,
            handle: fd.handle,
            identity,
            qm_pid,
        });
    }
}
