//! The whole orchestrator, simulated (TigerBeetle's VOPR is the model).
//!
//! The real [`Engine`] — the supervision core and the agent link glued together, exactly the
//! code the ring shell drives — runs against a simulated world: local processes that live,
//! crash, ignore SIGTERM or fail to exec; a simulated holden-agent that answers every `Start`
//! and `Ping` with exact wire v1 frames, gated or not, forwards its processes' notifications
//! (`Notify`, wire 1.2; some from pids that are no service's), and on some connections misbehaves in
//! one of the ways of the hostile suite (`tests/reliability_hostile.rs`), dies, or refuses
//! connections; operators that start, stop, restart, kill, reset, add and remove services;
//! and simulated time. The test plays the shell: it carries out every output, holds the
//! pidfds the engine hands it, delivers packets with their fds, and fires the engine's timer
//! when its deadline comes. Random choices come from splitmix64, one seed per run.
//!
//! After every step: at most one live process runs the program of each service; a `Notify`
//! counts only for the service whose process has its QM pid; every
//! pidfd handle ends exactly once (watched handles are released only after their process's
//! exit was reported); no agent request is outstanding past its deadline; no table or queue
//! of the engine has grown. At the end the orchestrator shuts down, every process is gone and
//! every handle was released. Which (state, input) pairs were reached is recorded — link
//! state × what the shell fed the link, and core state changes — and the run fails if one of
//! the reachable ones (listed below) never was.
//!
//! `HOLDEN_SIM_SEED=<seed> cargo test --test orchestrator_sim -- --nocapture` replays one seed
//! with a trace; `HOLDEN_SIM_SEEDS=<n>` and `HOLDEN_SIM_STEPS=<n>` change the size of the
//! default run (100 seeds × 10,000 steps).

use holden::link::{self, Conn, FdClass, Fds, Note, PeerFd, Protocol, SocketKind};
use holden::orchestrator::engine::{Engine, Output};
use holden::pidfd::{Identity, NsPid};
use holden::supervise::{
    Backoff, Command, ExitStatus, MonoTime, Partition, Reason, Refusal, Restart, ServiceId,
    ServicePolicy, StartFailure, StartLimit, StartStage,
};
use holden::wire::v1;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

const SEEDS_DEFAULT: u64 = 100;
const STEPS_DEFAULT: u64 = 10_000;
const CAPACITY: usize = 6;
const MS: u64 = 1_000_000;
const REQUEST_TIMEOUT_MS: u64 = 300;
/// A shutdown must complete within this many steps.
const SHUTDOWN_STEPS_MAX: u64 = 200_000;
const TRACE_LEN: usize = 60;
/// The agent's PID namespace (depth 2: QM inside the host).
const AGENT_NS: NsPid = NsPid {
    depth: 2,
    innermost: 1,
};

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Every pidfd handle ever made, and whether it was released.
#[derive(Default)]
struct Registry {
    released: Vec<bool>,
}

/// A simulated pidfd: refers to one process, records its release.
struct SimFd {
    id: usize,
    pid: usize,
    registry: Rc<RefCell<Registry>>,
}

impl std::fmt::Debug for SimFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd{}(pid {})", self.id, self.pid)
    }
}

impl Drop for SimFd {
    fn drop(&mut self) {
        let mut registry = self.registry.borrow_mut();
        assert!(!registry.released[self.id], "fd{} released twice", self.id);
        registry.released[self.id] = true;
    }
}

/// A simulated process.
struct Proc {
    /// The service whose program it runs (`None`: a stray the hostile agent passes around).
    service: Option<usize>,
    alive: bool,
    ignores_term: bool,
    /// SIGKILL sent: gone within a millisecond, no longer counted.
    doomed: bool,
    /// Its exit was reported to the engine.
    reported: bool,
    status: ExitStatus,
    inode: u64,
}

/// Misbehaviours of the simulated agent (the hostile suite's classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    Garbage,
    BadMagic,
    Truncated,
    LyingLength,
    Oversized,
    StartedWithoutFd,
    StartedWithTwoFds,
    StartedWithPipe,
    PidfdOfAnotherProcess,
    PidfdAlreadySupervised,
    ReplyToIdNeverSent,
    SameReplyTwice,
    PongFlood,
    AcceptAndNeverReply,
    FuturePongVersion,
    AnswerBeforeHandshake,
    SilentAfterStart,
    ReplyAfterTimeout,
    FdFlood,
    ErrorWithFd,
    OrchestratorOnlyFrame,
    GatedRunningTwice,
    GatedRunningBeforeStarted,
    GatedRunningWithFd,
    GatedSilentAfterStarted,
    NotifyFlood,
}

const HOSTILE: [Hostile; 26] = [
    Hostile::Garbage,
    Hostile::BadMagic,
    Hostile::Truncated,
    Hostile::LyingLength,
    Hostile::Oversized,
    Hostile::StartedWithoutFd,
    Hostile::StartedWithTwoFds,
    Hostile::StartedWithPipe,
    Hostile::PidfdOfAnotherProcess,
    Hostile::PidfdAlreadySupervised,
    Hostile::ReplyToIdNeverSent,
    Hostile::SameReplyTwice,
    Hostile::PongFlood,
    Hostile::AcceptAndNeverReply,
    Hostile::FuturePongVersion,
    Hostile::AnswerBeforeHandshake,
    Hostile::SilentAfterStart,
    Hostile::ReplyAfterTimeout,
    Hostile::FdFlood,
    Hostile::ErrorWithFd,
    Hostile::OrchestratorOnlyFrame,
    Hostile::GatedRunningTwice,
    Hostile::GatedRunningBeforeStarted,
    Hostile::GatedRunningWithFd,
    Hostile::GatedSilentAfterStarted,
    Hostile::NotifyFlood,
];

impl Hostile {
    fn gated_only(self) -> bool {
        matches!(
            self,
            Hostile::GatedRunningTwice
                | Hostile::GatedRunningBeforeStarted
                | Hostile::GatedRunningWithFd
                | Hostile::GatedSilentAfterStarted
        )
    }
    fn in_handshake(self) -> bool {
        matches!(
            self,
            Hostile::AcceptAndNeverReply
                | Hostile::FuturePongVersion
                | Hostile::AnswerBeforeHandshake
        )
    }
}

/// One connection of the simulated agent.
struct AgentConn {
    epoch: u64,
    gated: bool,
    /// It announced wire 1.2 and `NOTIFY_FORWARD`: it sends `Notify` frames now and then.
    notify: bool,
    hostile: Option<Hostile>,
    /// The misbehaviour happened (each connection misbehaves once, then answers as it can).
    done: bool,
    /// Silent: answers nothing more.
    silent: bool,
    /// When its last packet arrives (packets keep their order).
    last_delivery_ns: u64,
}

/// A packet on its way to the orchestrator.
struct Packet {
    epoch: u64,
    bytes: Vec<u8>,
    fds: Vec<PeerFd<SimFd>>,
    truncated: bool,
    oversized: bool,
}

enum Ev {
    Deliver(Packet),
    SendDone { epoch: u64 },
    ProcDies { pid: usize },
    AgentDies { epoch: u64 },
}

struct World {
    seed: u64,
    rng: SplitMix64,
    engine: Engine<SimFd>,
    registry: Rc<RefCell<Registry>>,
    now_ns: u64,
    events: Vec<(u64, u64, Ev)>,
    seq: u64,
    procs: Vec<Proc>,
    /// Per service slot: the watched handle of its live process.
    watched: Vec<Option<SimFd>>,
    /// Per service slot: in the engine, and its name (for traces).
    live: Vec<bool>,
    agent: Option<AgentConn>,
    /// The agent refuses connections until then (it is restarting).
    agent_down_until_ns: u64,
    next_epoch: u64,
    /// The link's answer to `poll_transmit` is pending a `SendDone`.
    shutdown_complete: bool,
    steps: u64,
    trace: Vec<String>,
    verbose: bool,
    link_pairs: BTreeSet<(&'static str, &'static str)>,
    core_pairs: BTreeSet<(&'static str, &'static str, &'static str)>,
    reached: BTreeSet<&'static str>,
    hostiles_seen: BTreeSet<&'static str>,
}

fn reason_kind(reason: Reason) -> &'static str {
    match reason {
        Reason::Added => "added",
        Reason::Operator => "operator",
        Reason::RestartDue => "restart-due",
        Reason::Spawned(_) => "spawned",
        Reason::SpawnFailed(_) => "spawn-failed",
        Reason::Exited(_) => "exited",
        Reason::StartLimit => "start-limit",
        Reason::Agent => "agent",
        Reason::StopTimeout => "stop-timeout",
        Reason::Shutdown => "shutdown",
        Reason::Removed => "removed",
        Reason::Adopted(_) => "adopted",
        Reason::Resumed => "resumed",
        Reason::Ready => "ready",
        Reason::StartTimeout => "start-timeout",
        Reason::Watchdog => "watchdog",
    }
}

fn link_state(state: link::State) -> &'static str {
    match state {
        link::State::Idle => "idle",
        link::State::Down { .. } => "down",
        link::State::Connecting => "connecting",
        link::State::Handshaking { .. } => "handshaking",
        link::State::Up => "up",
    }
}

fn frame_kind(bytes: &[u8]) -> &'static str {
    match v1::decode(bytes) {
        Ok(f) => match f.body {
            v1::Body::Start(_) => "start",
            v1::Body::Started(_) => "started",
            v1::Body::Error(_) => "error",
            v1::Body::Ping => "ping",
            v1::Body::Pong(_) => "pong",
            v1::Body::Running => "running",
            v1::Body::Notify(_) => "notify",
        },
        Err(_) => "garbage",
    }
}

fn frame(kind: v1::FrameKind, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = v1::MAGIC.to_vec();
    f.extend_from_slice(&[v1::VERSION_MAJOR, v1::VERSION_MINOR, kind as u8, 0]);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

fn started(id: u64, pid: i32) -> Vec<u8> {
    frame(v1::FrameKind::Started, id, &pid.to_le_bytes())
}

fn running(id: u64) -> Vec<u8> {
    frame(v1::FrameKind::Running, id, &[])
}

fn pong(id: u64, major: u8, minor: u8, gated: bool) -> Vec<u8> {
    pong_with(id, major, minor, gated, false)
}

fn pong_with(id: u64, major: u8, minor: u8, gated: bool, notify: bool) -> Vec<u8> {
    let mut caps = 0;
    if gated {
        caps |= v1::Capabilities::GATED_EXEC.bits();
    }
    if notify {
        caps |= v1::Capabilities::NOTIFY_FORWARD.bits();
    }
    let mut p = vec![major, minor, 0, 0];
    p.extend_from_slice(&caps.to_le_bytes());
    frame(v1::FrameKind::Pong, id, &p)
}

fn notify(pid: i32, text: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; v1::FRAME_LEN_MAX];
    let len = v1::encode_notify(&mut out, pid, text).expect("a valid Notify");
    out.truncate(len);
    out
}

fn error(id: u64, errno: i32) -> Vec<u8> {
    let text = b"exec: No such file or directory";
    let mut p = errno.to_le_bytes().to_vec();
    p.extend_from_slice(&[v1::ErrorStage::Exec as u8, 0]);
    p.extend_from_slice(&(text.len() as u16).to_le_bytes());
    p.extend_from_slice(text);
    frame(v1::FrameKind::Error, id, &p)
}

/// The QM pid the agent reports for process `pid` (its PID namespace).
fn qm_pid(pid: usize) -> i32 {
    pid as i32 + 2
}

struct Starts;

impl link::Requests for Starts {
    fn start(&self, _index: usize) -> Option<v1::StartRef<'_, Vec<u8>, Vec<u8>>> {
        static ARGV: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        let argv = ARGV.get_or_init(|| vec![b"/usr/bin/radio".to_vec()]);
        Some(v1::StartRef {
            argv: argv.as_slice(),
            env: &[],
            cwd: None,
            uid: None,
            gid: None,
            flags: v1::StartFlags::NEW_SESSION,
            cgroup: None,
            exec: None,
            cgroup_limits: None,
        })
    }
}

impl World {
    fn new(seed: u64, verbose: bool) -> World {
        let config = link::Config {
            protocol: Protocol::V1,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            reconnect_initial: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(400),
            services: CAPACITY,
        };
        World {
            seed,
            rng: SplitMix64(seed),
            engine: Engine::new(CAPACITY, config, true),
            registry: Rc::new(RefCell::new(Registry::default())),
            now_ns: 1_000 * MS,
            events: Vec::new(),
            seq: 0,
            procs: Vec::new(),
            watched: (0..CAPACITY).map(|_| None).collect(),
            live: vec![false; CAPACITY],
            agent: None,
            agent_down_until_ns: 0,
            next_epoch: 1,
            shutdown_complete: false,
            steps: 0,
            trace: Vec::new(),
            verbose,
            link_pairs: BTreeSet::new(),
            core_pairs: BTreeSet::new(),
            reached: BTreeSet::new(),
            hostiles_seen: BTreeSet::new(),
        }
    }

    fn now(&self) -> MonoTime {
        MonoTime::from_nanos(self.now_ns)
    }

    fn fail(&self, what: String) -> ! {
        let trace = self.trace.join("\n  ");
        panic!(
            "seed {seed}: step {step} at {now} ms: {what}\n  last events:\n  {trace}\n\
             replay: HOLDEN_SIM_SEED={seed} cargo test --test orchestrator_sim -- --nocapture",
            seed = self.seed,
            step = self.steps,
            now = self.now_ns / MS,
        );
    }

    fn log(&mut self, line: String) {
        if self.verbose {
            println!("{:>8} ms {line}", self.now_ns / MS);
        }
        self.trace.push(line);
        if self.trace.len() > TRACE_LEN {
            self.trace.remove(0);
        }
    }

    fn schedule(&mut self, at_ns: u64, ev: Ev) {
        self.seq += 1;
        self.events.push((at_ns, self.seq, ev));
    }

    fn new_fd(&self, pid: usize) -> SimFd {
        let mut registry = self.registry.borrow_mut();
        registry.released.push(false);
        SimFd {
            id: registry.released.len() - 1,
            pid,
            registry: self.registry.clone(),
        }
    }

    fn new_proc(&mut self, service: Option<usize>) -> usize {
        let ignores_term = self.rng.chance(10);
        let status = match self.rng.below(4) {
            0 => ExitStatus::Code(0),
            1 => ExitStatus::Code(1),
            2 => ExitStatus::Signal(libc::SIGSEGV),
            _ => ExitStatus::Code(3),
        };
        let pid = self.procs.len();
        self.procs.push(Proc {
            service,
            alive: true,
            ignores_term,
            doomed: false,
            reported: false,
            status,
            inode: pid as u64 + 1,
        });
        // Most processes live a while; some crash at once, some run until stopped.
        let life_ms = match self.rng.below(10) {
            0..=2 => Some(self.rng.below(5)),
            3..=7 => Some(5 + self.rng.below(3_000)),
            _ => None,
        };
        if let Some(ms) = life_ms {
            let at = self.now_ns + ms * MS;
            self.schedule(at, Ev::ProcDies { pid });
        }
        pid
    }

    fn identity(&self, pid: usize) -> Identity {
        Identity {
            inode: self.procs[pid].inode,
            pid: 5_000 + pid as i32,
        }
    }

    fn class(&self, pid: usize) -> FdClass {
        FdClass::Pidfd {
            identity: self.identity(pid),
            ns: Some(NsPid {
                depth: 2,
                innermost: qm_pid(pid),
            }),
        }
    }

    fn kill(&mut self, pid: usize, signal: i32) {
        let proc = &mut self.procs[pid];
        if !proc.alive {
            return;
        }
        if signal == libc::SIGKILL {
            proc.doomed = true;
            proc.status = ExitStatus::Signal(libc::SIGKILL);
            let at = self.now_ns + self.rng.below(MS);
            self.schedule(at, Ev::ProcDies { pid });
        } else if signal == libc::SIGTERM && !proc.ignores_term {
            proc.status = ExitStatus::Signal(libc::SIGTERM);
            let at = self.now_ns + self.rng.below(20) * MS;
            self.schedule(at, Ev::ProcDies { pid });
        } else if signal != libc::SIGTERM && signal != 0 {
            proc.status = ExitStatus::Signal(signal);
            let at = self.now_ns + self.rng.below(5) * MS;
            self.schedule(at, Ev::ProcDies { pid });
        }
    }

    // --- the shell --------------------------------------------------------------------

    /// Carries out every output and sends what the link has to send, like the ring shell.
    fn settle(&mut self) {
        loop {
            while let Some(output) = self.engine.poll_output() {
                self.carry_out(output);
            }
            let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
            let now = self.now();
            match self.engine.poll_transmit(now, &mut buf, &Starts) {
                Some((conn, len)) => {
                    buf.truncate(len);
                    self.transmitted(conn, buf);
                }
                None => {
                    if let Some(output) = self.engine.poll_output() {
                        self.carry_out(output);
                        continue;
                    }
                    break;
                }
            }
        }
    }

    fn carry_out(&mut self, output: Output<SimFd>) {
        match output {
            Output::SpawnLocal { service } => {
                let s = service.index();
                if self.rng.chance(4) {
                    self.log(format!("s{s} local spawn fails (exec)"));
                    let now = self.now();
                    self.engine.spawn_failed(
                        now,
                        service,
                        StartFailure {
                            errno: libc::ENOENT,
                            stage: StartStage::Exec,
                        },
                    );
                } else {
                    let pid = self.new_proc(Some(s));
                    self.log(format!("s{s} local spawn p{pid}"));
                    let fd = self.new_fd(pid);
                    let identity = Identity {
                        inode: 0,
                        pid: 5_000 + pid as i32,
                    };
                    let now = self.now();
                    self.engine
                        .spawned(now, service, fd, 5_000 + pid as i32, identity);
                }
            }
            Output::Watch { service, handle } => {
                let s = service.index();
                if let Some(old) = &self.watched[s] {
                    self.fail(format!(
                        "s{s}: Watch of {handle:?} while {old:?} is watched"
                    ));
                }
                let pid = handle.pid;
                self.log(format!("s{s} watch p{pid}"));
                self.watched[s] = Some(handle);
                if !self.procs[pid].alive && !self.procs[pid].reported {
                    // It died before it was watched: its pidfd is readable at once.
                    self.report_exit(s, pid);
                }
            }
            Output::Signal {
                service, signal, ..
            } => {
                let s = service.index();
                let Some(pid) = self.watched[s].as_ref().map(|h| h.pid) else {
                    self.fail(format!("s{s}: signal without a watched process"));
                };
                self.log(format!("s{s} signal {signal} p{pid}"));
                self.kill(pid, signal);
            }
            Output::Release { service } => {
                let s = service.index();
                let Some(handle) = self.watched[s].take() else {
                    self.fail(format!("s{s}: release without a watched process"));
                };
                if self.procs[handle.pid].alive {
                    self.fail(format!("s{s}: release of live p{}", handle.pid));
                }
                self.log(format!("s{s} release p{}", handle.pid));
            }
            Output::Link(io) => self.link_io(io),
            Output::Transition(t) => {
                self.core_pairs
                    .insert((t.from.as_str(), reason_kind(t.reason), t.to.as_str()));
                self.log(format!(
                    "s{} {} -> {} ({})",
                    t.service.0,
                    t.from,
                    t.to,
                    reason_kind(t.reason)
                ));
            }
            Output::Note(note) => {
                if let Note::Misbehaved { what, .. } = note {
                    self.log(format!("note: misbehaved {what:?}"));
                }
            }
            Output::Notified { service, qm_pid } => {
                self.log(format!("notified {service:?} qm_pid={qm_pid}"));
                // Counted for a service only if that service's process has this QM pid.
                if let Some(s) = service {
                    let pid = (qm_pid - 2) as usize;
                    let held = self.watched[s.index()].as_ref().map(|h| h.pid);
                    if held != Some(pid) {
                        self.fail(format!(
                            "a Notify from QM pid {qm_pid} was counted for s{} (its process: {held:?})",
                            s.0
                        ));
                    }
                }
                self.reached.insert(if service.is_some() {
                    "notify-counted"
                } else {
                    "notify-dropped"
                });
            }
            Output::AgentUp => self.log("agent up".into()),
            Output::AgentDown => self.log("agent down".into()),
            Output::Removed { service } => {
                self.live[service.index()] = false;
                self.log(format!("s{} removed", service.0));
            }
            Output::ShutdownComplete => {
                self.shutdown_complete = true;
                self.log("shutdown complete".into());
            }
            Output::Refused { refusal, event } => {
                self.fail(format!("the core refused {event:?}: {refusal}"))
            }
        }
    }

    fn report_exit(&mut self, s: usize, pid: usize) {
        self.procs[pid].reported = true;
        let status = self.procs[pid].status;
        self.log(format!("s{s} p{pid} exit reported {status:?}"));
        let now = self.now();
        self.engine.exited(now, ServiceId(s as u32), status);
    }

    fn record_link(&mut self, input: &'static str) {
        let state = link_state(self.engine.link().state());
        self.link_pairs.insert((state, input));
    }

    fn link_io(&mut self, io: link::Io<SimFd>) {
        match io {
            link::Io::Connect { conn, kind } => {
                assert_eq!((conn, kind), (Conn::Main, SocketKind::Seqpacket));
                let now = self.now();
                if self.now_ns < self.agent_down_until_ns || self.rng.chance(5) {
                    self.log("connect refused".into());
                    self.record_link("connect-failed");
                    self.engine
                        .link_connect_failed(now, conn, libc::ECONNREFUSED);
                    return;
                }
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                let gated = self.rng.chance(80);
                let mut hostile = None;
                if self.rng.chance(40) {
                    let h = HOSTILE[self.rng.below(HOSTILE.len() as u64) as usize];
                    if gated || !h.gated_only() {
                        hostile = Some(h);
                    }
                }
                self.log(format!(
                    "connected epoch {epoch} gated={gated} hostile={hostile:?}"
                ));
                let notify = self.rng.chance(50);
                self.agent = Some(AgentConn {
                    epoch,
                    gated,
                    notify,
                    hostile,
                    done: false,
                    silent: false,
                    last_delivery_ns: self.now_ns,
                });
                // The agent is killed now and then (most often during a handshake or a burst
                // of requests, sometimes after a long quiet run).
                if self.rng.chance(50) {
                    let ms = match self.rng.below(3) {
                        0 => self.rng.below(3),
                        1 => self.rng.below(500),
                        _ => self.rng.below(5_000),
                    };
                    let at = self.now_ns + ms * MS;
                    self.schedule(at, Ev::AgentDies { epoch });
                }
                self.record_link("connected");
                self.engine.link_connected(now, conn, Some(AGENT_NS));
            }
            link::Io::Close { conn } => {
                assert_eq!(conn, Conn::Main);
                let Some(agent) = self.agent.take() else {
                    return;
                };
                self.log(format!("close epoch {}", agent.epoch));
                // The shell drains what it never read: the pidfds in those packets are killed,
                // so an answer the orchestrator did not read leaves no process behind.
                let mut unread = Vec::new();
                self.events.retain_mut(|(_, _, ev)| match ev {
                    Ev::Deliver(p) if p.epoch == agent.epoch => {
                        unread.append(&mut p.fds);
                        false
                    }
                    Ev::SendDone { epoch } | Ev::AgentDies { epoch } if *epoch == agent.epoch => {
                        false
                    }
                    _ => true,
                });
                for fd in unread {
                    let pid = fd.handle.pid;
                    self.kill(pid, libc::SIGKILL);
                }
            }
            link::Io::Kill { handle, late, .. } => {
                self.log(format!("kill p{} late={late}", handle.pid));
                self.kill(handle.pid, libc::SIGKILL);
            }
        }
    }

    // --- the simulated agent ------------------------------------------------------------

    fn deliver(&mut self, bytes: Vec<u8>, fds: Vec<PeerFd<SimFd>>, extra_ms: u64) {
        self.deliver_with(bytes, fds, extra_ms, false, false);
    }

    fn deliver_with(
        &mut self,
        bytes: Vec<u8>,
        fds: Vec<PeerFd<SimFd>>,
        extra_ms: u64,
        truncated: bool,
        oversized: bool,
    ) {
        let latency = self.rng.below(3 * MS);
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        let at = (self.now_ns + latency + extra_ms * MS).max(agent.last_delivery_ns);
        agent.last_delivery_ns = at;
        let epoch = agent.epoch;
        self.schedule(
            at,
            Ev::Deliver(Packet {
                epoch,
                bytes,
                fds,
                truncated,
                oversized,
            }),
        );
    }

    fn stray_fd(&mut self) -> PeerFd<SimFd> {
        let pid = self.new_proc(None);
        let class = self.class(pid);
        PeerFd {
            handle: self.new_fd(pid),
            class,
        }
    }

    /// The orchestrator sent `bytes` on the agent connection.
    fn transmitted(&mut self, conn: Conn, bytes: Vec<u8>) {
        assert_eq!(conn, Conn::Main);
        let Some(epoch) = self.agent.as_ref().map(|a| a.epoch) else {
            self.fail("a transmit without a connection".into());
        };
        let done = self.now_ns + self.rng.below(MS);
        self.schedule(done, Ev::SendDone { epoch });
        let frame = match v1::decode(&bytes) {
            Ok(frame) => frame,
            Err(e) => self.fail(format!("the orchestrator sent an undecodable frame: {e}")),
        };
        let id = frame.request_id();
        let agent = self.agent.as_ref().expect("connection");
        if agent.silent {
            return;
        }
        let (gated, notify_on, hostile, misbehave) = (
            agent.gated,
            agent.notify,
            agent.hostile,
            !agent.done && agent.hostile.is_some(),
        );
        match frame.body {
            v1::Body::Ping => {
                let handshake = self.engine.link().state() != link::State::Up;
                if misbehave && hostile.is_some_and(|h| h.in_handshake()) == handshake {
                    let h = hostile.expect("hostile");
                    if handshake
                        || h == Hostile::SilentAfterStart
                        || h == Hostile::GatedSilentAfterStarted
                    {
                        self.misbehave_on_ping(id, h);
                        return;
                    }
                }
                let minor = if notify_on {
                    2
                } else if gated {
                    1
                } else {
                    0
                };
                self.deliver(pong_with(id, 1, minor, gated, notify_on), vec![], 0);
            }
            v1::Body::Start(_) => {
                let service = (id & ((1 << 20) - 1)) as usize;
                if misbehave && !hostile.is_some_and(|h| h.in_handshake()) && self.rng.chance(50) {
                    self.misbehave_on_start(id, service, hostile.expect("hostile"));
                    return;
                }
                self.answer_start(id, service, gated, 0);
            }
            other => self.fail(format!("the orchestrator sent {other:?}")),
        }
    }

    /// A well-behaved answer to a `Start` (after `extra_ms`).
    fn answer_start(&mut self, id: u64, service: usize, gated: bool, extra_ms: u64) {
        if self.rng.chance(5) {
            if gated {
                // The child stopped at the gate; its exec failed: it is gone.
                let pid = self.new_proc(Some(service));
                self.procs[pid].alive = false;
                let fd = PeerFd {
                    class: self.class(pid),
                    handle: self.new_fd(pid),
                };
                self.deliver(started(id, qm_pid(pid)), vec![fd], extra_ms);
            }
            self.deliver(error(id, libc::ENOENT), vec![], extra_ms);
            return;
        }
        let pid = self.new_proc(Some(service));
        let fd = PeerFd {
            class: self.class(pid),
            handle: self.new_fd(pid),
        };
        self.log(format!("agent starts p{pid} for s{service}"));
        self.deliver(started(id, qm_pid(pid)), vec![fd], extra_ms);
        if gated {
            self.deliver(running(id), vec![], extra_ms);
        }
        // What the program says through the agent's notify socket (wire 1.2), now and then;
        // sometimes from a pid that is no service's (the engine must not take it for one).
        let notify_on = self.agent.as_ref().is_some_and(|a| a.notify);
        if notify_on && self.rng.chance(30) {
            let from = if self.rng.chance(10) {
                qm_pid(pid) + 100_000
            } else {
                qm_pid(pid)
            };
            let text: &[u8] = match self.rng.below(3) {
                0 => b"READY=1\nSTATUS=up",
                1 => b"WATCHDOG=1",
                _ => b"MAINPID=1\nX",
            };
            let later = extra_ms + self.rng.below(5);
            self.deliver(notify(from, text), vec![], later);
        }
    }

    fn mark_misbehaved(&mut self, h: Hostile) {
        if let Some(agent) = self.agent.as_mut() {
            agent.done = true;
        }
        self.hostiles_seen.insert(match h {
            Hostile::Garbage => "garbage",
            Hostile::BadMagic => "bad-magic",
            Hostile::Truncated => "truncated",
            Hostile::LyingLength => "lying-length",
            Hostile::Oversized => "oversized",
            Hostile::StartedWithoutFd => "started-without-fd",
            Hostile::StartedWithTwoFds => "started-with-two-fds",
            Hostile::StartedWithPipe => "started-with-pipe",
            Hostile::PidfdOfAnotherProcess => "pidfd-of-another-process",
            Hostile::PidfdAlreadySupervised => "pidfd-already-supervised",
            Hostile::ReplyToIdNeverSent => "reply-to-id-never-sent",
            Hostile::SameReplyTwice => "same-reply-twice",
            Hostile::PongFlood => "pong-flood",
            Hostile::AcceptAndNeverReply => "accept-and-never-reply",
            Hostile::FuturePongVersion => "future-pong-version",
            Hostile::AnswerBeforeHandshake => "answer-before-handshake",
            Hostile::SilentAfterStart => "silent-after-start",
            Hostile::ReplyAfterTimeout => "reply-after-timeout",
            Hostile::FdFlood => "fd-flood",
            Hostile::ErrorWithFd => "error-with-fd",
            Hostile::OrchestratorOnlyFrame => "orchestrator-only-frame",
            Hostile::GatedRunningTwice => "gated-running-twice",
            Hostile::GatedRunningBeforeStarted => "gated-running-before-started",
            Hostile::GatedRunningWithFd => "gated-running-with-fd",
            Hostile::GatedSilentAfterStarted => "gated-silent-after-started",
            Hostile::NotifyFlood => "notify-flood",
        });
        self.log(format!("agent misbehaves: {h:?}"));
    }

    fn misbehave_on_ping(&mut self, id: u64, h: Hostile) {
        self.mark_misbehaved(h);
        match h {
            Hostile::AcceptAndNeverReply
            | Hostile::SilentAfterStart
            | Hostile::GatedSilentAfterStarted => {
                if let Some(agent) = self.agent.as_mut() {
                    agent.silent = true;
                }
            }
            Hostile::FuturePongVersion => self.deliver(pong(id, 2, 0, false), vec![], 0),
            Hostile::AnswerBeforeHandshake => {
                let fd = self.stray_fd();
                self.deliver(started(1 << 20, 9), vec![fd], 0);
            }
            _ => {}
        }
    }

    fn misbehave_on_start(&mut self, id: u64, service: usize, h: Hostile) {
        self.mark_misbehaved(h);
        let good = started(id, 42);
        match h {
            Hostile::Garbage => self.deliver(b"\x00garbage, not a frame".to_vec(), vec![], 0),
            Hostile::BadMagic => {
                let mut f = good;
                f[0] = b'X';
                self.deliver(f, vec![], 0)
            }
            Hostile::Truncated => self.deliver(good[..good.len() - 2].to_vec(), vec![], 0),
            Hostile::LyingLength => {
                let mut f = good;
                f[16] = 200;
                self.deliver(f, vec![], 0)
            }
            Hostile::Oversized => self.deliver_with(good, vec![], 0, false, true),
            Hostile::StartedWithoutFd => self.deliver(good, vec![], 0),
            Hostile::StartedWithTwoFds => {
                let (a, b) = (self.stray_fd(), self.stray_fd());
                self.deliver(good, vec![a, b], 0)
            }
            Hostile::StartedWithPipe => {
                let pid = self.new_proc(None);
                let fd = PeerFd {
                    handle: self.new_fd(pid),
                    class: FdClass::Other,
                };
                self.deliver(good, vec![fd], 0)
            }
            Hostile::PidfdOfAnotherProcess => {
                let fd = self.stray_fd();
                self.deliver(good, vec![fd], 0)
            }
            Hostile::PidfdAlreadySupervised => {
                let victim = self.watched.iter().flatten().map(|h| h.pid).next();
                match victim {
                    Some(pid) => {
                        let fd = PeerFd {
                            class: self.class(pid),
                            handle: self.new_fd(pid),
                        };
                        self.deliver(started(id, qm_pid(pid)), vec![fd], 0)
                    }
                    None => self.answer_start(id, service, false, 0),
                }
            }
            Hostile::ReplyToIdNeverSent => {
                let fd = self.stray_fd();
                self.deliver(started(id + (1 << 20), 42), vec![fd], 0)
            }
            Hostile::SameReplyTwice => {
                let gated = self.agent.as_ref().is_some_and(|a| a.gated);
                self.answer_start(id, service, gated, 0);
                let fd = self.stray_fd();
                let pid = fd.handle.pid;
                self.deliver(started(id, qm_pid(pid)), vec![fd], 0)
            }
            Hostile::NotifyFlood => {
                // Answers, then floods Notify frames at once, far beyond the link's rate: the
                // connection is dropped (also from an agent that did not announce them).
                let gated = self.agent.as_ref().is_some_and(|a| a.gated);
                self.answer_start(id, service, gated, 0);
                let frame = notify(qm_pid(self.procs.len().saturating_sub(1)), b"WATCHDOG=1");
                for _ in 0..link::NOTIFY_BURST + 44 {
                    self.deliver(frame.clone(), vec![], 0);
                }
            }
            Hostile::PongFlood => {
                let gated = self.agent.as_ref().is_some_and(|a| a.gated);
                self.answer_start(id, service, gated, 0);
                self.deliver(pong(id, 1, 1, false), vec![], 0)
            }
            Hostile::SilentAfterStart => {
                if let Some(agent) = self.agent.as_mut() {
                    agent.silent = true;
                }
            }
            Hostile::ReplyAfterTimeout => {
                let gated = self.agent.as_ref().is_some_and(|a| a.gated);
                self.answer_start(id, service, gated, REQUEST_TIMEOUT_MS + 50)
            }
            Hostile::FdFlood => {
                let fd = self.stray_fd();
                self.deliver_with(good, vec![fd], 0, true, false)
            }
            Hostile::ErrorWithFd => {
                let fd = self.stray_fd();
                self.deliver(error(id, libc::ENOENT), vec![fd], 0)
            }
            Hostile::OrchestratorOnlyFrame => {
                self.deliver(frame(v1::FrameKind::Ping, id, &[]), vec![], 0)
            }
            Hostile::GatedRunningTwice => {
                self.answer_start(id, service, true, 0);
                self.deliver(running(id), vec![], 0)
            }
            Hostile::GatedRunningBeforeStarted => self.deliver(running(id), vec![], 0),
            Hostile::GatedRunningWithFd => {
                let pid = self.new_proc(Some(service));
                let fd = PeerFd {
                    class: self.class(pid),
                    handle: self.new_fd(pid),
                };
                self.deliver(started(id, qm_pid(pid)), vec![fd], 0);
                let extra = self.stray_fd();
                self.deliver(running(id), vec![extra], 0)
            }
            Hostile::GatedSilentAfterStarted => {
                let pid = self.new_proc(Some(service));
                let fd = PeerFd {
                    class: self.class(pid),
                    handle: self.new_fd(pid),
                };
                self.deliver(started(id, qm_pid(pid)), vec![fd], 0);
                if let Some(agent) = self.agent.as_mut() {
                    agent.silent = true;
                }
            }
            Hostile::AcceptAndNeverReply
            | Hostile::FuturePongVersion
            | Hostile::AnswerBeforeHandshake => self.answer_start(id, service, false, 0),
        }
    }

    // --- world events and operators --------------------------------------------------

    fn next_event(&mut self) -> Option<(u64, Ev)> {
        let (index, _) = self
            .events
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, seq, _))| (*at, *seq))?;
        let (at, _, ev) = self.events.swap_remove(index);
        Some((at, ev))
    }

    fn world_event(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Deliver(packet) => {
                let Some(agent) = self.agent.as_ref().filter(|a| a.epoch == packet.epoch) else {
                    return;
                };
                let _ = agent;
                let kind = if packet.oversized {
                    "oversized"
                } else {
                    frame_kind(&packet.bytes)
                };
                self.log(format!("deliver {kind} ({} fds)", packet.fds.len()));
                let mut fds = Fds::none();
                fds.truncated = packet.truncated;
                for fd in packet.fds {
                    fds.fds.push(fd);
                }
                self.record_link(kind);
                self.engine
                    .link_received(now, Conn::Main, &packet.bytes, packet.oversized, fds);
            }
            Ev::SendDone { epoch } => {
                if self.agent.as_ref().is_some_and(|a| a.epoch == epoch) {
                    self.record_link("sent");
                    self.engine.link_sent(now, Conn::Main);
                }
            }
            Ev::ProcDies { pid } => {
                let proc = &mut self.procs[pid];
                if !proc.alive {
                    return;
                }
                proc.alive = false;
                let watcher = self
                    .watched
                    .iter()
                    .position(|w| w.as_ref().is_some_and(|h| h.pid == pid));
                self.log(format!("p{pid} dies"));
                if let Some(s) = watcher {
                    if !self.procs[pid].reported {
                        self.report_exit(s, pid);
                    }
                }
            }
            Ev::AgentDies { epoch } => {
                if self.agent.as_ref().is_some_and(|a| a.epoch == epoch) {
                    self.log(format!("agent dies (epoch {epoch})"));
                    let back = self.now_ns + self.rng.below(300) * MS;
                    self.agent_down_until_ns = self.agent_down_until_ns.max(back);
                    self.record_link("closed");
                    self.engine.link_closed(now, Conn::Main);
                }
            }
        }
    }

    fn random_policy(&mut self) -> ServicePolicy {
        let partition = if self.rng.chance(50) {
            Partition::Qm
        } else {
            Partition::Local
        };
        ServicePolicy {
            partition,
            restart: match self.rng.below(3) {
                0 => Restart::Always,
                1 => Restart::OnFailure,
                _ => Restart::Never,
            },
            restart_delay: Duration::from_millis(self.rng.below(50)),
            backoff: if self.rng.chance(50) {
                Backoff {
                    initial: Duration::from_millis(10),
                    factor_milli: 2000,
                    max: Duration::from_millis(500),
                    reset_after: Duration::from_millis(1000),
                }
            } else {
                Backoff::NONE
            },
            start_limit: if self.rng.chance(40) {
                StartLimit {
                    burst: 1 + self.rng.below(5) as u32,
                    interval: Duration::from_millis(500 + self.rng.below(2000)),
                }
            } else {
                StartLimit::NONE
            },
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_millis(50 + self.rng.below(200)),
            readiness: holden::supervise::Readiness::SIMPLE,
        }
    }

    fn add_service(&mut self) {
        let policy = self.random_policy();
        match self.engine.add(policy) {
            Ok(id) => {
                self.live[id.index()] = true;
                self.log(format!("add s{} {:?}", id.0, policy.partition));
                if policy.partition == Partition::Qm {
                    let now = self.now();
                    self.engine.enable_agent(now);
                }
                if self.rng.chance(80) {
                    let now = self.now();
                    let _ = self.engine.command(now, id, Command::Start);
                }
            }
            Err(Refusal::Full) => {
                self.reached.insert("add-refused-full");
            }
            Err(e) => self.fail(format!("add refused: {e}")),
        }
    }

    fn operator(&mut self) {
        let now = self.now();
        if self.rng.chance(4) {
            // The QM partition's holden-agent is restarted.
            if let Some(epoch) = self.agent.as_ref().map(|a| a.epoch) {
                self.schedule(self.now_ns, Ev::AgentDies { epoch });
            }
            return;
        }
        let s = self.rng.below(CAPACITY as u64) as usize;
        if !self.live[s] || self.rng.chance(8) {
            self.add_service();
            return;
        }
        let service = ServiceId(s as u32);
        let command = match self.rng.below(12) {
            0..=3 => Command::Start,
            4 | 5 => Command::Stop,
            6 | 7 => Command::Restart,
            8 => Command::Kill(libc::SIGKILL),
            9 => Command::ResetFailed,
            10 => {
                self.log(format!("remove s{s}"));
                match self.engine.remove(now, service) {
                    Ok(()) => self.reached.insert("remove"),
                    Err(_) => self.reached.insert("remove-refused"),
                };
                return;
            }
            _ => {
                let policy = self.random_policy();
                let _ = self.engine.replace(now, service, policy);
                self.reached.insert("replace");
                return;
            }
        };
        self.log(format!("operator {command:?} s{s}"));
        if self.engine.command(now, service, command).is_err() {
            self.reached.insert("command-refused");
        }
    }

    /// One step: the next world event, the engine's timer, or an operator.
    fn step(&mut self) {
        self.steps += 1;
        let engine_at = self.engine.poll_timeout().map(|t| t.as_nanos());
        let event_at = self.events.iter().map(|(at, _, _)| *at).min();
        if !self.shutdown_requested() && self.rng.chance(3) {
            self.operator();
        } else {
            let engine_first = match (engine_at, event_at) {
                (Some(e), Some(w)) => e <= w,
                (Some(_), None) => true,
                _ => false,
            };
            match (engine_at, event_at) {
                (Some(e), _) if engine_first => {
                    self.now_ns = self.now_ns.max(e);
                    let state = link_state(self.engine.link().state());
                    if self
                        .engine
                        .link()
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now_ns)
                    {
                        self.link_pairs.insert((state, "timeout"));
                    }
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
                (_, Some(_)) => {
                    let (at, ev) = self.next_event().expect("an event");
                    self.now_ns = self.now_ns.max(at);
                    self.world_event(ev);
                }
                _ => {
                    self.now_ns += 10 * MS;
                }
            }
        }
        self.settle();
        self.check();
    }

    fn shutdown_requested(&self) -> bool {
        self.engine.core().shutting_down()
    }

    // --- invariants ----------------------------------------------------------------------

    fn check(&mut self) {
        // At most one live process runs the program of each service.
        let mut running = [0usize; CAPACITY];
        for proc in &self.procs {
            if let Some(s) = proc.service.filter(|_| proc.alive && !proc.doomed) {
                running[s] += 1;
            }
        }
        for (s, &n) in running.iter().enumerate() {
            if n > 1 {
                self.fail(format!("s{s}: {n} live processes"));
            }
        }
        // Watched handles refer to distinct processes, each attributed to its service.
        for (s, w) in self.watched.iter().enumerate() {
            if let Some(h) = w {
                if self.procs[h.pid].service != Some(s) {
                    self.fail(format!(
                        "s{s} watches p{}, a process of {:?}",
                        h.pid, self.procs[h.pid].service
                    ));
                }
            }
        }
        // No request outstanding past its deadline (timers due now were fired).
        let due = self.engine.poll_timeout().map(|t| t.as_nanos());
        if due.is_none_or(|d| d > self.now_ns) {
            for s in 0..CAPACITY {
                if let Some(d) = self.engine.link().request_deadline(s) {
                    if d <= self.now_ns {
                        self.fail(format!("s{s}: request outstanding past its deadline"));
                    }
                }
            }
        }
        // No table or queue grew.
        let capacities = self.engine.capacities();
        if capacities != EXPECTED_CAPACITIES.with(|c| *c.borrow()) {
            self.fail(format!("capacities changed: {capacities:?}"));
        }
    }

    fn shutdown(&mut self) {
        let now = self.now();
        self.log("shutdown".into());
        self.engine.shutdown(now);
        self.settle();
        let started = self.steps;
        while !self.shutdown_complete {
            if self.steps - started > SHUTDOWN_STEPS_MAX {
                self.fail("shutdown did not complete".into());
            }
            if self.steps - started == 20_000 {
                // A second request kills what is left at once.
                let now = self.now();
                self.engine.shutdown(now);
                self.settle();
            }
            self.step();
        }
        // Let every kill and exit happen, then nothing may be left.
        while let Some((at, ev)) = self.next_event() {
            self.now_ns = self.now_ns.max(at);
            self.world_event(ev);
            self.settle();
        }
        let alive: Vec<usize> = (0..self.procs.len())
            .filter(|&p| self.procs[p].alive && self.procs[p].service.is_some())
            .collect();
        if !alive.is_empty() {
            self.fail(format!("processes alive after shutdown: {alive:?}"));
        }
        if self.watched.iter().any(Option::is_some) {
            self.fail("a handle is still watched after shutdown".into());
        }
    }
}

thread_local! {
    static EXPECTED_CAPACITIES: RefCell<[usize; 8]> = const { RefCell::new([0; 8]) };
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Coverage {
    link: BTreeSet<(&'static str, &'static str)>,
    core: BTreeSet<(&'static str, &'static str, &'static str)>,
    reached: BTreeSet<&'static str>,
    hostiles: BTreeSet<&'static str>,
}

fn run_seed(seed: u64, steps: u64, verbose: bool, coverage: &mut Coverage) {
    let mut world = World::new(seed, verbose);
    EXPECTED_CAPACITIES.with(|c| *c.borrow_mut() = world.engine.capacities());
    let initial = 2 + world.rng.below(CAPACITY as u64 - 2);
    for _ in 0..initial {
        world.add_service();
    }
    let now = world.now();
    world.engine.start(now);
    world.settle();
    for _ in 0..steps {
        world.step();
    }
    if world.rng.chance(30) {
        // Some runs end while the agent is away: QM services wait for it when the shutdown
        // comes.
        world.agent_down_until_ns = u64::MAX;
        if let Some(epoch) = world.agent.as_ref().map(|a| a.epoch) {
            let now = world.now_ns;
            world.schedule(now, Ev::AgentDies { epoch });
        }
        for _ in 0..steps / 10 {
            world.step();
        }
        for s in 0..CAPACITY {
            if world.live[s] {
                let now = world.now();
                let _ = world
                    .engine
                    .command(now, ServiceId(s as u32), Command::Start);
                world.settle();
            }
        }
    }
    world.shutdown();
    coverage.link.extend(world.link_pairs.iter().copied());
    coverage.core.extend(world.core_pairs.iter().copied());
    coverage.reached.extend(world.reached.iter().copied());
    coverage
        .hostiles
        .extend(world.hostiles_seen.iter().copied());
    let registry = world.registry.clone();
    drop(world);
    let leaked = registry.borrow().released.iter().filter(|r| !**r).count();
    assert_eq!(
        leaked, 0,
        "seed {seed}: {leaked} pidfd handles never released"
    );
}

/// Link (state, input) pairs every default run must reach.
const LINK_PAIRS: &[(&str, &str)] = &[
    ("connecting", "connected"),
    ("connecting", "connect-failed"),
    ("down", "timeout"),
    ("handshaking", "timeout"),
    ("handshaking", "pong"),
    ("handshaking", "started"),
    ("handshaking", "sent"),
    ("handshaking", "closed"),
    ("up", "started"),
    ("up", "running"),
    ("up", "error"),
    ("up", "pong"),
    ("up", "ping"),
    ("up", "garbage"),
    ("up", "oversized"),
    ("up", "sent"),
    ("up", "closed"),
    ("up", "timeout"),
];

/// Core state changes every default run must reach (from, why, to): every change the core
/// can make with the inputs the engine gives it. (An agent that goes down changes no state by
/// itself: services meet it at their next start, as `waiting-for-agent`.)
const CORE_PAIRS: &[(&str, &str, &str)] = &[
    ("backoff", "operator", "starting"),
    ("backoff", "operator", "stopped"),
    ("backoff", "removed", "stopped"),
    ("backoff", "restart-due", "starting"),
    ("backoff", "restart-due", "waiting-for-agent"),
    ("backoff", "shutdown", "stopped"),
    ("backoff", "start-limit", "failed"),
    ("failed", "operator", "starting"),
    ("failed", "operator", "stopped"),
    ("failed", "operator", "waiting-for-agent"),
    ("failed", "removed", "stopped"),
    ("running", "exited", "backoff"),
    ("running", "exited", "failed"),
    ("running", "exited", "stopped"),
    ("running", "operator", "stopping"),
    ("running", "removed", "stopping"),
    ("running", "shutdown", "stopping"),
    ("starting", "operator", "stopping"),
    ("starting", "removed", "stopping"),
    ("starting", "shutdown", "stopping"),
    ("starting", "spawn-failed", "backoff"),
    ("starting", "spawn-failed", "failed"),
    ("starting", "spawned", "running"),
    ("stopped", "operator", "starting"),
    ("stopped", "operator", "waiting-for-agent"),
    ("stopped", "removed", "stopped"),
    ("stopping", "exited", "stopped"),
    ("stopping", "removed", "stopped"),
    ("stopping", "spawn-failed", "stopped"),
    ("stopping", "stop-timeout", "stopping"),
    ("waiting-for-agent", "agent", "starting"),
    ("waiting-for-agent", "start-limit", "failed"),
    ("waiting-for-agent", "operator", "stopped"),
    ("waiting-for-agent", "removed", "stopped"),
    ("waiting-for-agent", "shutdown", "stopped"),
];

const REACHED: &[&str] = &[
    "add-refused-full",
    "remove",
    "replace",
    "command-refused",
    "notify-counted",
    "notify-dropped",
];

#[test]
fn the_whole_orchestrator_keeps_its_invariants_against_a_hostile_world() {
    if let Ok(seed) = std::env::var("HOLDEN_SIM_SEED") {
        let seed: u64 = seed.parse().expect("HOLDEN_SIM_SEED is a number");
        let steps = env_u64("HOLDEN_SIM_STEPS", STEPS_DEFAULT);
        let mut coverage = Coverage {
            link: BTreeSet::new(),
            core: BTreeSet::new(),
            reached: BTreeSet::new(),
            hostiles: BTreeSet::new(),
        };
        run_seed(seed, steps, true, &mut coverage);
        return;
    }
    let seeds = env_u64("HOLDEN_SIM_SEEDS", SEEDS_DEFAULT);
    let steps = env_u64("HOLDEN_SIM_STEPS", STEPS_DEFAULT);
    let mut coverage = Coverage {
        link: BTreeSet::new(),
        core: BTreeSet::new(),
        reached: BTreeSet::new(),
        hostiles: BTreeSet::new(),
    };
    for seed in 0..seeds {
        run_seed(seed, steps, false, &mut coverage);
    }
    println!("{} seeds x {steps} steps", seeds);
    println!("link pairs reached: {:?}", coverage.link);
    println!("core changes reached: {}", coverage.core.len());
    for pair in &coverage.core {
        println!("  {pair:?}");
    }
    println!("hostile behaviours: {:?}", coverage.hostiles);
    if seeds * steps < SEEDS_DEFAULT * STEPS_DEFAULT {
        return; // a smaller run need not reach everything
    }
    let missing_link: Vec<_> = LINK_PAIRS
        .iter()
        .filter(|p| !coverage.link.contains(p))
        .collect();
    let missing_core: Vec<_> = CORE_PAIRS
        .iter()
        .filter(|p| !coverage.core.contains(p))
        .collect();
    let missing: Vec<_> = REACHED
        .iter()
        .filter(|r| !coverage.reached.contains(*r))
        .collect();
    assert!(
        missing_link.is_empty() && missing_core.is_empty() && missing.is_empty(),
        "never reached: link {missing_link:?}, core {missing_core:?}, other {missing:?}"
    );
    assert_eq!(
        coverage.hostiles.len(),
        HOSTILE.len(),
        "every hostile behaviour was played: {:?}",
        coverage.hostiles
    );
}
