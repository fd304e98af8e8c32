//! The link against exact byte sequences: every behaviour of the hostile-agent suite
//! (`tests/reliability_hostile.rs`), the gated exec, timeouts, reconnect backoff, the
//! misbehaviour rate limit, and the v0.2 dialect. Frames are written byte by byte here (the
//! header layout of `docs/wire.md` §4), not with the encoder, so the tests also pin the
//! format. Handles are tokens that record when they are dropped: every fd the link is given
//! must end exactly once — passed on in an event or an `Io`, or dropped by the link.

use super::*;
use crate::pidfd::{Identity, NsPid};
use std::cell::RefCell;
use std::rc::Rc;

const MS: u64 = 1_000_000;
const TIMEOUT_MS: u64 = 300;

/// A handle whose drop is recorded.
#[derive(Debug)]
struct Tok {
    id: u32,
    dropped: Rc<RefCell<Vec<u32>>>,
}

impl Drop for Tok {
    fn drop(&mut self) {
        self.dropped.borrow_mut().push(self.id);
    }
}

struct Starts;

/// Service 3 is a `type = "notify"` one; service 2 asks for a cgroup of its own; service 4
/// has an execution environment (a nice value); service 5 a cgroup with a limit.
const NOTIFY_SERVICE: usize = 3;
const CGROUP_SERVICE: usize = 2;
const EXEC_SERVICE: usize = 4;
const LIMITS_SERVICE: usize = 5;

impl Requests for Starts {
    fn start(&self, index: usize) -> Option<wire::StartRef<'_, Vec<u8>, Vec<u8>>> {
        static ARGV: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        let argv = ARGV.get_or_init(|| vec![b"/bin/true".to_vec()]);
        let mut flags = wire::StartFlags::NEW_SESSION;
        if index == NOTIFY_SERVICE {
            flags |= wire::StartFlags::NOTIFY;
        }
        let cgroup = [CGROUP_SERVICE, LIMITS_SERVICE]
            .contains(&index)
            .then_some(b"radio".as_slice());
        if cgroup.is_some() {
            flags |= wire::StartFlags::CGROUP;
        }
        static EXEC: crate::spawn::ExecEnv = crate::spawn::ExecEnv {
            nice: Some(5),
            ..crate::spawn::ExecEnv::DEFAULT
        };
        let exec = (index == EXEC_SERVICE).then_some(&EXEC);
        static LIMITS: std::sync::OnceLock<crate::cgroup::CgroupLimits> =
            std::sync::OnceLock::new();
        let cgroup_limits = (index == LIMITS_SERVICE).then(|| {
            LIMITS.get_or_init(|| {
                let mut limits = crate::cgroup::CgroupLimits::default();
                limits
                    .limits
                    .push(crate::cgroup::CgroupLimit::new("pids_max", "64").unwrap());
                limits
            })
        });
        if cgroup_limits.is_some() {
            flags |= wire::StartFlags::CGROUP_LIMITS;
        }
        if exec.is_some() {
            flags |= wire::StartFlags::EXEC_ENV;
        }
        Some(wire::StartRef {
            argv: argv.as_slice(),
            env: &[],
            cwd: None,
            uid: None,
            gid: None,
            flags,
            cgroup,
            exec,
            cgroup_limits,
        })
    }
}

/// Kinds of wire v1 frames (docs/wire.md §4).
const START: u8 = 1;
const STARTED: u8 = 2;
const ERROR: u8 = 3;
const PING: u8 = 4;
const PONG: u8 = 5;
const RUNNING: u8 = 6;
const NOTIFY: u8 = 7;

/// A v1 frame, byte by byte: magic, major 1, minor 1, kind, reserved, request id (LE u64),
/// payload length (LE u32), reserved u32, payload.
fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = b"HLDN".to_vec();
    f.extend_from_slice(&[1, 1, kind, 0]);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

fn pong(id: u64, major: u8, minor: u8, caps: u32) -> Vec<u8> {
    let mut p = vec![major, minor, 0, 0];
    p.extend_from_slice(&caps.to_le_bytes());
    frame(PONG, id, &p)
}

fn started(id: u64, pid: i32) -> Vec<u8> {
    frame(STARTED, id, &pid.to_le_bytes())
}

fn error(id: u64, errno: i32, stage: u8, text: &[u8]) -> Vec<u8> {
    let mut p = errno.to_le_bytes().to_vec();
    p.extend_from_slice(&[stage, 0]);
    p.extend_from_slice(&(text.len() as u16).to_le_bytes());
    p.extend_from_slice(text);
    frame(ERROR, id, &p)
}

fn notify(pid: i32, text: &[u8]) -> Vec<u8> {
    let mut p = pid.to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&(text.len() as u16).to_le_bytes());
    p.extend_from_slice(text);
    frame(NOTIFY, 0, &p)
}

const GATED: u32 = 1 << 3;
const NOTIFY_FORWARD: u32 = 1 << 4;
/// `Error` stages (docs/wire.md §8).
const EXEC: u8 = 2;
const SETUP: u8 = 9;

/// The pidfd class of a QM process with `pid` at PID-namespace depth 2.
fn pidfd_class(inode: u64, pid: i32) -> FdClass {
    FdClass::Pidfd {
        identity: Identity {
            inode,
            pid: pid + 1000,
        },
        ns: Some(NsPid {
            depth: 2,
            innermost: pid,
        }),
    }
}

const AGENT_NS: NsPid = NsPid {
    depth: 2,
    innermost: 1,
};

struct Harness {
    link: Link<Tok>,
    now: u64,
    supervised: Vec<Identity>,
    dropped: Rc<RefCell<Vec<u32>>>,
    next_tok: u32,
    /// Handles passed on (events, io), by id.
    passed: Vec<u32>,
    notes: Vec<Note>,
    events: Vec<String>,
    io: Vec<String>,
}

impl Harness {
    fn new(protocol: Protocol) -> Harness {
        let config = Config {
            protocol,
            request_timeout: Duration::from_millis(TIMEOUT_MS),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(800),
            services: 6,
        };
        Harness {
            link: Link::new(config, true),
            now: 1_000 * MS,
            supervised: Vec::new(),
            dropped: Rc::new(RefCell::new(Vec::new())),
            next_tok: 1,
            passed: Vec::new(),
            notes: Vec::new(),
            events: Vec::new(),
            io: Vec::new(),
        }
    }

    fn tok(&mut self) -> Tok {
        self.next_tok += 1;
        Tok {
            id: self.next_tok,
            dropped: self.dropped.clone(),
        }
    }

    fn fd(&mut self, class: FdClass) -> PeerFd<Tok> {
        PeerFd {
            handle: self.tok(),
            class,
        }
    }

    fn run(&mut self, f: impl FnOnce(&mut Link<Tok>, &Cx<'_>)) {
        let supervised = self.supervised.clone();
        let check = move |id: &Identity| supervised.iter().any(|s| s.same_process(id));
        let cx = Cx {
            now_ns: self.now,
            supervised: &check,
        };
        f(&mut self.link, &cx);
        self.collect();
    }

    /// Moves what the link produced into readable lists; handles passed on are kept (as a
    /// shell would) and their ids recorded.
    fn collect(&mut self) {
        while let Some(io) = self.link.poll_io() {
            match io {
                Io::Connect { conn, kind } => self.io.push(format!("connect {conn:?} {kind:?}")),
                Io::Close { conn } => self.io.push(format!("close {conn:?}")),
                Io::Kill { handle, late, .. } => {
                    self.passed.push(handle.id);
                    self.io.push(format!("kill late={late}"));
                    std::mem::forget(handle);
                }
            }
        }
        while let Some(event) = self.link.poll_event() {
            match event {
                Event::Up => self.events.push("up".into()),
                Event::Down => self.events.push("down".into()),
                Event::Started {
                    service,
                    handle,
                    qm_pid,
                    ..
                } => {
                    self.passed.push(handle.id);
                    self.events
                        .push(format!("started {service} qm_pid={qm_pid}"));
                    std::mem::forget(handle);
                }
                Event::Failed {
                    service,
                    errno,
                    stage,
                } => self
                    .events
                    .push(format!("failed {service} {stage:?} {errno}")),
                Event::Notify { qm_pid } => {
                    let text = String::from_utf8_lossy(self.link.notify_text()).into_owned();
                    self.events.push(format!("notify {qm_pid} {text:?}"));
                }
                Event::Note(note) => self.notes.push(note),
            }
        }
    }

    fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }

    fn take_io(&mut self) -> Vec<String> {
        std::mem::take(&mut self.io)
    }

    fn transmit(&mut self) -> Option<(Conn, Vec<u8>)> {
        let mut buf = vec![0u8; wire::FRAME_LEN_MAX];
        let sent = self.link.poll_transmit(&mut buf, &Starts);
        self.collect();
        sent.map(|(conn, len)| (conn, buf[..len].to_vec()))
    }

    /// Sends the pending frame and completes the send; returns its request id.
    fn send_one(&mut self) -> u64 {
        let (conn, bytes) = self.transmit().expect("a frame to send");
        assert_eq!(conn, Conn::Main);
        self.link.sent(Conn::Main);
        u64::from_le_bytes(bytes[8..16].try_into().unwrap())
    }

    fn receive(&mut self, bytes: &[u8], fds: Vec<PeerFd<Tok>>) {
        let mut set = Fds::none();
        for fd in fds {
            set.fds.push(fd);
        }
        self.receive_set(bytes, set);
    }

    fn receive_set(&mut self, bytes: &[u8], fds: Fds<Tok>) {
        self.run(|link, cx| link.received(cx, Conn::Main, bytes, false, fds));
    }

    /// Start, connect, handshake (gated or not): the link is up.
    fn up(&mut self, gated: bool) {
        self.up_as(1, if gated { GATED } else { 0 });
    }

    /// As [`Harness::up`], with the agent's `Pong` saying `minor` and `caps`.
    fn up_as(&mut self, minor: u8, caps: u32) {
        self.take_io();
        self.take_events();
        match self.link.state() {
            State::Down { retry_at_ns } if retry_at_ns > 0 => {
                self.now = self.now.max(retry_at_ns);
                self.run(|link, cx| link.handle_timeout(cx));
            }
            _ => self.run(|link, _| link.start()),
        }
        assert_eq!(self.take_io(), ["connect Main Seqpacket"]);
        self.run(|link, cx| link.connected(cx, Conn::Main, Some(AGENT_NS)));
        let ping = self.send_one();
        assert_eq!(
            ping & REQUEST_INDEX_MASK,
            PING_INDEX,
            "the handshake Ping's id"
        );
        self.receive(&pong(ping, 1, minor, caps), vec![]);
        assert_eq!(self.take_events(), ["up"]);
        assert!(self.link.is_up());
    }

    /// The link is asked for `service` and fails its start at once with `failure`
    /// (`EOPNOTSUPP`, stage `setup`), sending nothing.
    fn assert_refused_at_once(&mut self, service: usize, failure: EncodeFailure) {
        self.run(|link, cx| link.request(cx, service));
        assert!(self.transmit().is_none(), "no Start is sent");
        assert_eq!(
            self.take_events(),
            [format!("failed {service} Setup {}", libc::EOPNOTSUPP)]
        );
        assert!(self
            .notes
            .iter()
            .any(|n| matches!(n, Note::EncodeFailed { error, .. } if *error == failure)));
    }

    /// The link is asked for `service` and sends its `Start`: the frame's bytes and the
    /// decoded request.
    fn sent_start(&mut self, service: usize) -> (Vec<u8>, wire::OwnedStart) {
        self.run(|link, cx| link.request(cx, service));
        let (_, bytes) = self.transmit().expect("a Start");
        let frame = wire::decode(&bytes).unwrap();
        let wire::Body::Start(start) = frame.body else {
            panic!("{frame:?}");
        };
        let start = start.to_owned_start();
        (bytes, start)
    }

    /// The link asks for a QM process for `service` and sends its `Start`; the request id.
    fn request(&mut self, service: usize) -> u64 {
        self.run(|link, cx| link.request(cx, service));
        let (conn, bytes) = self.transmit().expect("a Start");
        assert_eq!(conn, Conn::Main);
        assert_eq!(bytes[6], START, "kind Start");
        self.link.sent(Conn::Main);
        let id = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        assert_eq!(id & REQUEST_INDEX_MASK, service as u64);
        id
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms * MS;
        self.run(|link, cx| link.handle_timeout(cx));
    }

    fn misbehaved(&self) -> Vec<String> {
        self.notes
            .iter()
            .filter_map(|n| match n {
                Note::Misbehaved { what, .. } => Some(format!("{what:?}")),
                _ => None,
            })
            .collect()
    }

    /// Every handle given to the link ended exactly once: passed on or dropped.
    fn assert_handles_accounted(&self, given: u32) {
        let mut ends: Vec<u32> = self.dropped.borrow().clone();
        ends.extend(&self.passed);
        ends.sort_unstable();
        let expected: Vec<u32> = (2..=given + 1).collect();
        assert_eq!(ends, expected, "each handle ends exactly once");
    }
}

/// One hostile behaviour: what the agent does with the request `id` of service 0 outstanding,
/// and the `what` the link must note.
struct Hostile {
    name: &'static str,
    gated: bool,
    act: fn(&mut Harness, u64),
    what: &'static str,
}

fn hostile() -> Vec<Hostile> {
    vec![
        Hostile {
            name: "garbage",
            gated: false,
            act: |h, _| h.receive(b"\x01\x02garbage bytes here", vec![]),
            what: "undecodable frame",
        },
        Hostile {
            name: "bad magic",
            gated: false,
            act: |h, id| {
                let mut f = started(id, 5);
                f[0] = b'X';
                h.receive(&f, vec![])
            },
            what: "undecodable frame",
        },
        Hostile {
            name: "future header version",
            gated: false,
            act: |h, id| {
                let mut f = started(id, 5);
                f[4] = 2;
                h.receive(&f, vec![])
            },
            what: "undecodable frame",
        },
        Hostile {
            name: "truncated",
            gated: false,
            act: |h, id| {
                let f = started(id, 5);
                h.receive(&f[..f.len() - 2], vec![])
            },
            what: "undecodable frame",
        },
        Hostile {
            name: "lying length",
            gated: false,
            act: |h, id| {
                let mut f = started(id, 5);
                f[16] = 9;
                h.receive(&f, vec![])
            },
            what: "undecodable frame",
        },
        Hostile {
            name: "zero-length packet",
            gated: false,
            act: |h, _| h.receive(b"", vec![]),
            what: "undecodable frame",
        },
        Hostile {
            name: "started without fd",
            gated: false,
            act: |h, id| h.receive(&started(id, 5), vec![]),
            what: "Started without exactly one file descriptor",
        },
        Hostile {
            name: "started with two fds",
            gated: false,
            act: |h, id| {
                let a = h.fd(pidfd_class(1, 5));
                let b = h.fd(pidfd_class(2, 5));
                h.receive(&started(id, 5), vec![a, b])
            },
            what: "Started without exactly one file descriptor",
        },
        Hostile {
            name: "started with a pipe",
            gated: false,
            act: |h, id| {
                let f = h.fd(FdClass::Other);
                h.receive(&started(id, 5), vec![f])
            },
            what: "file descriptor is not a pidfd",
        },
        Hostile {
            name: "pidfd without identity",
            gated: false,
            act: |h, id| {
                let f = h.fd(FdClass::NoIdentity);
                h.receive(&started(id, 5), vec![f])
            },
            what: "pidfd without identity",
        },
        Hostile {
            name: "pidfd of another process",
            gated: false,
            act: |h, id| {
                let f = h.fd(pidfd_class(9, 6));
                h.receive(&started(id, 5), vec![f])
            },
            what: "other than the one the agent reported",
        },
        Hostile {
            name: "pidfd outside the agent's namespace",
            gated: false,
            act: |h, id| {
                let f = h.fd(FdClass::Pidfd {
                    identity: Identity { inode: 9, pid: 5 },
                    ns: Some(NsPid {
                        depth: 1,
                        innermost: 5,
                    }),
                });
                h.receive(&started(id, 5), vec![f])
            },
            what: "outside the agent's PID namespace",
        },
        Hostile {
            name: "pidfd already supervised",
            gated: false,
            act: |h, id| {
                h.supervised.push(Identity {
                    inode: 77,
                    pid: 1042,
                });
                let f = h.fd(pidfd_class(77, 42));
                h.receive(&started(id, 42), vec![f])
            },
            what: "pidfd of a process already supervised",
        },
        Hostile {
            name: "reply to an id never sent",
            gated: false,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id + (1 << 20), 5), vec![f])
            },
            what: "unknown request id",
        },
        Hostile {
            name: "same reply twice",
            gated: false,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f]);
                let g = h.fd(pidfd_class(4, 5));
                h.receive(&started(id, 5), vec![g])
            },
            what: "unknown request id",
        },
        Hostile {
            name: "pong flood",
            gated: false,
            act: |h, _| h.receive(&pong(12345, 1, 1, 0), vec![]),
            what: "unexpected Pong",
        },
        Hostile {
            name: "silent after start",
            gated: false,
            act: |h, _| {
                h.advance(TIMEOUT_MS);
                let _ping = h.send_one();
                h.advance(TIMEOUT_MS)
            },
            what: "NoProbePong(300)",
        },
        Hostile {
            name: "reply after timeout",
            gated: false,
            act: |h, id| {
                h.advance(TIMEOUT_MS);
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f])
            },
            what: "answer after the request timed out",
        },
        Hostile {
            name: "fd flood",
            gated: false,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                let mut set = Fds::none();
                set.fds.push(f);
                set.truncated = true;
                h.receive_set(&started(id, 5), set)
            },
            what: "more file descriptors than allowed",
        },
        Hostile {
            name: "error with fd",
            gated: false,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&error(id, 2, 5, b"no"), vec![f])
            },
            what: "file descriptor with an Error",
        },
        Hostile {
            name: "orchestrator-only frame",
            gated: false,
            act: |h, id| h.receive(&frame(PING, id, &[]), vec![]),
            what: "a frame only the orchestrator sends",
        },
        Hostile {
            name: "oversized",
            gated: false,
            act: |h, id| {
                let f = started(id, 5);
                h.run(|link, cx| link.received(cx, Conn::Main, &f, true, Fds::none()))
            },
            what: "Oversized",
        },
        Hostile {
            name: "gated: running twice",
            gated: true,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f]);
                h.receive(&frame(RUNNING, id, &[]), vec![]);
                h.receive(&frame(RUNNING, id, &[]), vec![])
            },
            what: "unknown request id",
        },
        Hostile {
            name: "gated: running before started",
            gated: true,
            act: |h, id| h.receive(&frame(RUNNING, id, &[]), vec![]),
            what: "Running before Started",
        },
        Hostile {
            name: "gated: running with fd",
            gated: true,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f]);
                let g = h.fd(pidfd_class(4, 5));
                h.receive(&frame(RUNNING, id, &[]), vec![g])
            },
            what: "file descriptor with a Running",
        },
        Hostile {
            name: "gated: second started",
            gated: true,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f]);
                let g = h.fd(pidfd_class(4, 5));
                h.receive(&started(id, 5), vec![g])
            },
            what: "a second Started for one request",
        },
        Hostile {
            name: "gated: silent after started",
            gated: true,
            act: |h, id| {
                let f = h.fd(pidfd_class(3, 5));
                h.receive(&started(id, 5), vec![f]);
                h.advance(TIMEOUT_MS);
                let _ping = h.send_one();
                h.advance(TIMEOUT_MS)
            },
            what: "NoProbePong(300)",
        },
    ]
}

#[test]
fn every_hostile_behaviour_is_noted_once_drops_the_link_and_accounts_for_every_fd() {
    for case in hostile() {
        let mut h = Harness::new(Protocol::V1);
        h.up(case.gated);
        let id = h.request(0);
        h.take_io();
        (case.act)(&mut h, id);
        let misbehaved = h.misbehaved();
        assert_eq!(
            misbehaved.len(),
            1,
            "{}: noted once: {:?}",
            case.name,
            h.notes
        );
        assert!(
            misbehaved[0].contains(case.what),
            "{}: {misbehaved:?}",
            case.name
        );
        assert!(
            h.take_io().contains(&"close Main".to_string()),
            "{}: closed",
            case.name
        );
        assert!(
            matches!(h.link.state(), State::Down { .. }),
            "{}: down",
            case.name
        );
        assert!(
            h.take_events().contains(&"down".to_string()),
            "{}: the core hears",
            case.name
        );
        assert_eq!(
            h.link.requests_outstanding(),
            0,
            "{}: no request left",
            case.name
        );
        assert_eq!(h.link.held(), 0, "{}: no pidfd held", case.name);
        let given = h.next_tok - 1;
        h.assert_handles_accounted(given);
    }
}

/// The handshake's own misbehaviours: no Pong in time, another major version, a frame before
/// the Pong.
#[test]
fn a_handshake_that_fails_is_a_misbehaviour() {
    type Act = fn(&mut Harness, u64);
    let cases: [(&str, Act, &str); 4] = [
        (
            "accept and never reply",
            |h, _| h.advance(TIMEOUT_MS),
            "NoPong(300)",
        ),
        (
            "future pong version",
            |h, ping| h.receive(&pong(ping, 2, 0, 0), vec![]),
            "another major version",
        ),
        (
            "answer before the handshake",
            |h, _| h.receive(&started(1 << 20, 5), vec![]),
            "answer before the handshake",
        ),
        (
            "pong with another id",
            |h, ping| h.receive(&pong(ping + 1, 1, 1, 0), vec![]),
            "Pong with an unknown request id",
        ),
    ];
    for (name, act, what) in cases {
        let mut h = Harness::new(Protocol::V1);
        h.run(|link, _| link.start());
        h.run(|link, cx| link.connected(cx, Conn::Main, None));
        let ping = h.send_one();
        act(&mut h, ping);
        let misbehaved = h.misbehaved();
        assert_eq!(misbehaved.len(), 1, "{name}");
        assert!(misbehaved[0].contains(what), "{name}: {misbehaved:?}");
        assert!(
            !h.take_events().contains(&"up".to_string()),
            "{name}: never up"
        );
    }
}

#[test]
fn an_ungated_start_is_answered_with_its_pidfd() {
    let mut h = Harness::new(Protocol::V1);
    h.up(false);
    let id = h.request(2);
    let f = h.fd(pidfd_class(5, 77));
    h.receive(&started(id, 77), vec![f]);
    assert_eq!(h.take_events(), ["started 2 qm_pid=77"]);
    assert_eq!(h.link.requests_outstanding(), 0);
    assert_eq!(
        h.link.poll_timeout(),
        None,
        "nothing outstanding: no deadline"
    );
    h.assert_handles_accounted(1);
}

#[test]
fn a_gated_start_holds_its_pidfd_until_running() {
    let mut h = Harness::new(Protocol::V1);
    h.up(true);
    let id = h.request(1);
    let f = h.fd(pidfd_class(5, 77));
    h.receive(&started(id, 77), vec![f]);
    assert!(h.take_events().is_empty(), "held, not yet adopted");
    assert_eq!(h.link.held(), 1);
    h.receive(&frame(RUNNING, id, &[]), vec![]);
    assert_eq!(h.take_events(), ["started 1 qm_pid=77"]);
    assert_eq!(h.link.held(), 0);
    assert!(h.misbehaved().is_empty());
    h.assert_handles_accounted(1);
}

#[test]
fn a_gated_error_kills_the_held_process_and_fails_like_an_exec_failure() {
    let mut h = Harness::new(Protocol::V1);
    h.up(true);
    let id = h.request(0);
    let f = h.fd(pidfd_class(5, 77));
    h.receive(&started(id, 77), vec![f]);
    h.receive(
        &error(id, libc::ENOENT, EXEC, b"exec \"/nope\": No such file"),
        vec![],
    );
    assert_eq!(h.take_io(), ["kill late=false"]);
    assert_eq!(h.take_events(), [format!("failed 0 Exec {}", libc::ENOENT)]);
    assert_eq!(h.link.agent_text(), b"exec \"/nope\": No such file");
    h.assert_handles_accounted(1);
}

#[test]
fn a_held_pidfd_is_adopted_when_running_times_out_or_the_connection_drops() {
    // Timeout: adopted, and a liveness probe goes out.
    let mut h = Harness::new(Protocol::V1);
    h.up(true);
    let id = h.request(0);
    let f = h.fd(pidfd_class(5, 77));
    h.receive(&started(id, 77), vec![f]);
    h.advance(TIMEOUT_MS);
    assert_eq!(h.take_events(), ["started 0 qm_pid=77"]);
    assert!(h.notes.iter().any(|n| matches!(
        n,
        Note::HeldAdopted {
            why: "running-timeout",
            ..
        }
    )));
    let probe = h.send_one();
    assert_eq!(probe & REQUEST_INDEX_MASK, PING_INDEX);
    // The probe's Pong: the agent is up again (the core heard of a failed request before).
    h.receive(&pong(probe, 1, 1, GATED), vec![]);
    assert_eq!(h.take_events(), ["up"]);
    // Connection lost: adopted too.
    let id = h.request(1);
    let f = h.fd(pidfd_class(6, 78));
    h.receive(&started(id, 78), vec![f]);
    h.run(|link, cx| link.closed(cx, Conn::Main));
    assert_eq!(h.take_events(), ["started 1 qm_pid=78", "down"]);
    assert!(h.notes.iter().any(|n| matches!(
        n,
        Note::HeldAdopted {
            why: "connection-lost",
            ..
        }
    )));
    h.assert_handles_accounted(2);
}

#[test]
fn a_request_that_times_out_fails_and_its_late_answer_is_killed() {
    let mut h = Harness::new(Protocol::V1);
    h.up(false);
    let id = h.request(0);
    assert_eq!(h.link.poll_timeout(), Some(h.now + TIMEOUT_MS * MS));
    h.advance(TIMEOUT_MS - 1);
    assert!(h.take_events().is_empty(), "not before its deadline");
    h.advance(1);
    assert_eq!(
        h.take_events(),
        [format!("failed 0 Agent {}", libc::ETIMEDOUT)]
    );
    let f = h.fd(pidfd_class(5, 77));
    h.receive(&started(id, 77), vec![f]);
    assert!(h.take_io().contains(&"kill late=true".to_string()));
    h.assert_handles_accounted(1);
}

#[test]
fn a_pidfd_the_kernel_could_not_give_us_fails_the_request_without_blaming_the_agent() {
    let mut h = Harness::new(Protocol::V1);
    h.up(true);
    let id = h.request(0);
    let mut set = Fds::none();
    set.truncated = true;
    set.ours = true;
    h.receive_set(&started(id, 77), set);
    assert_eq!(
        h.take_events(),
        [format!("failed 0 Refused {}", libc::EMFILE)]
    );
    assert!(h
        .notes
        .iter()
        .any(|n| matches!(n, Note::PidfdLost { qm_pid: 77, .. })));
    // Its Running is awaited and ignored.
    h.receive(&frame(RUNNING, id, &[]), vec![]);
    assert!(h.misbehaved().is_empty(), "{:?}", h.notes);
    assert!(h.link.is_up());
}

#[test]
fn an_agent_error_fails_the_spawn_with_its_stage() {
    let mut h = Harness::new(Protocol::V1);
    h.up(false);
    let id = h.request(1);
    h.receive(
        &error(id, libc::ENOENT, SETUP, b"chdir \"/gone\": No such file"),
        vec![],
    );
    assert_eq!(
        h.take_events(),
        [format!("failed 1 Setup {}", libc::ENOENT)]
    );
    assert!(h.link.is_up());
}

#[test]
fn requests_while_down_or_twice_fail_at_once() {
    let mut h = Harness::new(Protocol::V1);
    h.run(|link, cx| link.request(cx, 0));
    assert_eq!(
        h.take_events(),
        [format!("failed 0 Agent {}", libc::ENOTCONN)]
    );
    h.up(false);
    h.request(0);
    h.run(|link, cx| link.request(cx, 0));
    assert_eq!(
        h.take_events(),
        [format!("failed 0 Agent {}", libc::ENOTCONN)]
    );
}

#[test]
fn one_send_in_flight_and_starts_wait_their_turn() {
    let mut h = Harness::new(Protocol::V1);
    h.up(false);
    h.run(|link, cx| {
        link.request(cx, 0);
        link.request(cx, 1);
    });
    let first = h.transmit().unwrap();
    assert!(h.transmit().is_none(), "the first send is still in flight");
    h.link.sent(Conn::Main);
    let second = h.transmit().unwrap();
    assert_eq!(
        u64::from_le_bytes(first.1[8..16].try_into().unwrap()) & REQUEST_INDEX_MASK,
        0
    );
    assert_eq!(
        u64::from_le_bytes(second.1[8..16].try_into().unwrap()) & REQUEST_INDEX_MASK,
        1
    );
}

#[test]
fn reconnects_back_off_and_reset_only_after_an_answered_request() {
    let mut h = Harness::new(Protocol::V1);
    h.run(|link, _| link.start());
    h.take_io();
    let mut delays = Vec::new();
    for _ in 0..5 {
        h.run(|link, cx| link.connect_failed(cx, Conn::Main, libc::ENOENT));
        let State::Down { retry_at_ns } = h.link.state() else {
            panic!("down");
        };
        delays.push((retry_at_ns - h.now) / MS);
        h.now = retry_at_ns;
        h.run(|link, cx| link.handle_timeout(cx));
        assert_eq!(h.take_io(), ["connect Main Seqpacket"]);
    }
    assert_eq!(delays, [100, 200, 400, 800, 800]);
    let connect_notes = h
        .notes
        .iter()
        .filter(|n| matches!(n, Note::ConnectFailed { .. }))
        .count();
    assert_eq!(connect_notes, 1, "only the first failure of a run is noted");
    // A handshake alone does not reset the delay; an answered request does.
    h.run(|link, cx| link.connected(cx, Conn::Main, None));
    let ping = h.send_one();
    h.receive(&pong(ping, 1, 1, 0), vec![]);
    h.run(|link, cx| link.closed(cx, Conn::Main));
    let State::Down { retry_at_ns } = h.link.state() else {
        panic!()
    };
    assert_eq!((retry_at_ns - h.now) / MS, 800);
    h.now = retry_at_ns;
    h.run(|link, cx| link.handle_timeout(cx));
    h.run(|link, cx| link.connected(cx, Conn::Main, None));
    let ping = h.send_one();
    h.receive(&pong(ping, 1, 1, 0), vec![]);
    let id = h.request(0);
    h.receive(&error(id, 2, 5, b"x"), vec![]);
    h.run(|link, cx| link.closed(cx, Conn::Main));
    let State::Down { retry_at_ns } = h.link.state() else {
        panic!()
    };
    assert_eq!(
        (retry_at_ns - h.now) / MS,
        100,
        "reset after a healthy connection"
    );
}

#[test]
fn misbehaviour_is_noted_at_most_once_a_minute_then_with_the_count() {
    let mut h = Harness::new(Protocol::V1);
    for round in 0..4 {
        h.up(false);
        h.receive(b"garbage", vec![]);
        h.now += 10_000 * MS;
        let _ = round;
    }
    let noted: Vec<u32> = h
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::Misbehaved { suppressed, .. } => Some(*suppressed),
            _ => None,
        })
        .collect();
    assert_eq!(noted, [0], "one note in the first minute");
    let downs = h
        .notes
        .iter()
        .filter(|n| matches!(n, Note::Down { .. }))
        .count();
    assert_eq!(downs, 1, "nor are the drops of unnoted misbehaviour");
    h.now += MISBEHAVIOUR_LOG_INTERVAL.as_nanos() as u64;
    h.up(false);
    h.receive(b"garbage", vec![]);
    assert!(
        h.notes
            .iter()
            .any(|n| matches!(n, Note::Misbehaved { suppressed: 3, .. })),
        "{:?}",
        h.notes
    );
}

#[test]
fn auto_falls_back_to_v02_on_a_stream_socket() {
    let mut h = Harness::new(Protocol::Auto);
    h.run(|link, _| link.start());
    h.run(|link, cx| link.connect_failed(cx, Conn::Main, libc::EPROTOTYPE));
    assert_eq!(h.link.protocol(), Protocol::V02);
    assert_eq!(h.take_events(), ["up"]);
    assert!(h.notes.iter().any(|n| matches!(n, Note::FellBackToV02)));
}

/// `auto` detects again at every reconnect: a v0.2 agent swapped for holden-agent (v1), and
/// back, under a running link, is found each time; nothing stays stranded on the protocol of
/// the agent that was there first.
#[test]
fn auto_detects_again_at_every_reconnect() {
    let mut h = Harness::new(Protocol::Auto);
    h.run(|link, _| link.start());
    assert_eq!(h.take_io(), ["connect Main Seqpacket"]);
    h.run(|link, cx| link.connect_failed(cx, Conn::Main, libc::EPROTOTYPE));
    assert_eq!(h.link.protocol(), Protocol::V02);
    assert_eq!(h.take_events(), ["up"]);
    // The v0.2 agent is replaced by a v1 one: the next request's stream connect is refused.
    h.run(|link, cx| link.request(cx, 1));
    assert_eq!(h.take_io(), ["connect Request(1) Stream"]);
    h.run(|link, cx| link.connect_failed(cx, Conn::Request(1), libc::EPROTOTYPE));
    assert_eq!(
        h.take_events(),
        [
            format!("failed 1 Agent {}", libc::EPROTOTYPE),
            "down".to_string()
        ]
    );
    // The reconnect detects again: v1 this time, with its handshake.
    h.up(false);
    assert_eq!(h.link.protocol(), Protocol::Auto, "v1 through auto");
    let id = h.request(2);
    assert_eq!(id & REQUEST_INDEX_MASK, 2);
    // And back: the v1 agent goes, a v0.2 one takes the path.
    h.run(|link, cx| link.closed(cx, Conn::Main));
    assert!(h.take_events().contains(&"down".to_string()));
    h.take_io();
    h.advance(800);
    assert_eq!(h.take_io(), ["connect Main Seqpacket"]);
    h.run(|link, cx| link.connect_failed(cx, Conn::Main, libc::EPROTOTYPE));
    assert_eq!(h.link.protocol(), Protocol::V02);
    assert_eq!(h.take_events(), ["up"]);
    let fallbacks = h
        .notes
        .iter()
        .filter(|n| matches!(n, Note::FellBackToV02))
        .count();
    assert_eq!(fallbacks, 2, "{:?}", h.notes);
}

/// Configured `v0.2` (not `auto`) stays v0.2 across reconnects: no seqpacket attempt.
#[test]
fn a_configured_protocol_is_kept_across_reconnects() {
    let mut h = v02_up();
    h.run(|link, cx| link.request(cx, 0));
    h.take_io();
    h.run(|link, cx| link.connect_failed(cx, Conn::Request(0), libc::ECONNREFUSED));
    h.advance(100);
    assert_eq!(h.take_io(), ["connect Probe Stream"]);
    assert_eq!(h.link.protocol(), Protocol::V02);
}

/// A v0.2 frame, byte by byte (host-endian header `{u32 type; u32 length}`).
fn v02_frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = kind.to_ne_bytes().to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    f.extend_from_slice(payload);
    f
}

fn v02_up() -> Harness {
    let mut h = Harness::new(Protocol::V02);
    h.run(|link, _| link.start());
    assert_eq!(h.take_io(), ["connect Probe Stream"]);
    h.run(|link, cx| link.connected(cx, Conn::Probe, None));
    assert_eq!(h.take_events(), ["up"]);
    h
}

#[test]
fn v02_one_connection_per_request_with_the_pidfd_after_its_marker() {
    let mut h = v02_up();
    h.run(|link, cx| link.request(cx, 1));
    assert_eq!(h.take_io(), ["connect Request(1) Stream"]);
    h.run(|link, cx| link.connected(cx, Conn::Request(1), Some(AGENT_NS)));
    let (conn, start) = h.transmit().expect("START_PROCESS");
    assert_eq!(conn, Conn::Request(1));
    assert_eq!(&start[..4], &1u32.to_ne_bytes(), "type START_PROCESS");
    assert_eq!(start.len(), 8 + 8452);
    // PROCESS_STARTED, byte at a time, then the marker with the pidfd.
    let mut pids = 4242i32.to_ne_bytes().to_vec();
    pids.extend_from_slice(&17i32.to_ne_bytes());
    for byte in v02_frame(2, &pids) {
        h.run(|link, cx| link.received(cx, Conn::Request(1), &[byte], false, Fds::none()));
    }
    assert!(h.take_events().is_empty());
    let f = h.fd(pidfd_class(8, 17));
    let mut set = Fds::none();
    set.fds.push(f);
    h.run(|link, cx| link.received(cx, Conn::Request(1), b"x", false, set));
    assert_eq!(h.take_events(), ["started 1 qm_pid=17"]);
    assert_eq!(h.take_io(), ["close Request(1)"]);
    h.assert_handles_accounted(1);
}

#[test]
fn v02_error_and_misbehaviour() {
    let mut h = v02_up();
    h.run(|link, cx| link.request(cx, 0));
    h.run(|link, cx| link.connected(cx, Conn::Request(0), None));
    h.transmit();
    let mut text = [0u8; 512];
    text[..9].copy_from_slice(b"exec fail");
    h.run(|link, cx| {
        link.received(
            cx,
            Conn::Request(0),
            &v02_frame(3, &text),
            false,
            Fds::none(),
        )
    });
    assert_eq!(h.take_events(), ["failed 0 Exec 0"]);
    assert_eq!(h.link.agent_text(), b"exec fail");
    // A pidfd before PROCESS_STARTED: misbehaviour, the agent counts as down.
    h.run(|link, cx| link.request(cx, 0));
    h.run(|link, cx| link.connected(cx, Conn::Request(0), None));
    h.transmit();
    let f = h.fd(pidfd_class(8, 17));
    let mut set = Fds::none();
    set.fds.push(f);
    h.run(|link, cx| link.received(cx, Conn::Request(0), b"\x02\x00", false, set));
    assert!(h.misbehaved()[0].contains("file descriptor before PROCESS_STARTED"));
    assert!(h.take_events().contains(&"down".to_string()));
    h.assert_handles_accounted(1);
}

#[test]
fn v02_timeout_marks_the_agent_down_and_probes_again() {
    let mut h = v02_up();
    h.run(|link, cx| link.request(cx, 0));
    h.run(|link, cx| link.connected(cx, Conn::Request(0), None));
    h.transmit();
    h.advance(TIMEOUT_MS);
    assert_eq!(
        h.take_events(),
        [
            format!("failed 0 Agent {}", libc::ECONNRESET),
            "down".to_string()
        ]
    );
    assert!(h
        .notes
        .iter()
        .any(|n| matches!(n, Note::RequestTimeout { .. })));
    h.advance(100);
    assert!(h.take_io().contains(&"connect Probe Stream".to_string()));
}

#[test]
fn notify_frames_are_events_with_their_text_up_to_the_rate() {
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, GATED | NOTIFY_FORWARD);
    assert!(h.link.forwards_notify());
    h.receive(&notify(42, b"READY=1\nSTATUS=up"), vec![]);
    assert_eq!(h.take_events(), ["notify 42 \"READY=1\\nSTATUS=up\""]);
    // A burst: NOTIFY_BURST in all (the one above counted), then one more at the same instant
    // is a flood.
    for _ in 1..NOTIFY_BURST {
        h.receive(&notify(42, b"WATCHDOG=1"), vec![]);
    }
    assert_eq!(h.take_events().len() as u64, NOTIFY_BURST - 1);
    assert!(h.misbehaved().is_empty());
    h.receive(&notify(42, b"WATCHDOG=1"), vec![]);
    assert_eq!(
        h.misbehaved(),
        ["Said(\"Notify frames beyond the rate limit\")"]
    );
    assert!(!h.link.is_up());
    assert_eq!(h.take_events(), ["down"]);
}

#[test]
fn notify_at_the_rate_is_taken_for_ever() {
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, NOTIFY_FORWARD);
    // One a millisecond (1,000 a second, under NOTIFY_PER_SEC) for three seconds.
    for _ in 0..3_000 {
        h.now += MS;
        h.receive(&notify(7, b"WATCHDOG=1"), vec![]);
    }
    assert_eq!(h.take_events().len(), 3_000);
    assert!(h.misbehaved().is_empty());
}

#[test]
fn notify_from_an_agent_that_did_not_offer_it_or_with_an_fd_is_misbehaviour() {
    for (minor, caps) in [(1, GATED), (2, GATED), (1, GATED | NOTIFY_FORWARD)] {
        let mut h = Harness::new(Protocol::V1);
        h.up_as(minor, caps);
        assert!(!h.link.forwards_notify());
        h.receive(&notify(42, b"READY=1"), vec![]);
        assert_eq!(
            h.misbehaved(),
            ["Said(\"Notify from an agent that did not announce NOTIFY_FORWARD\")"],
            "minor {minor} caps {caps:#x}"
        );
        assert!(!h.link.is_up());
    }
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, NOTIFY_FORWARD);
    let fd = h.fd(FdClass::Other);
    h.receive(&notify(42, b"READY=1"), vec![fd]);
    assert_eq!(h.misbehaved(), ["Said(\"file descriptor with a Notify\")"]);
    h.assert_handles_accounted(1);
    // A Notify with a request id does not decode.
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, NOTIFY_FORWARD);
    let mut f = notify(42, b"READY=1");
    f[8] = 1;
    h.receive(&f, vec![]);
    assert_eq!(h.misbehaved(), ["Said(\"undecodable frame\")"]);
}

#[test]
fn a_notify_service_starts_only_through_an_agent_that_forwards() {
    let mut h = Harness::new(Protocol::V1);
    h.up(true);
    h.assert_refused_at_once(NOTIFY_SERVICE, EncodeFailure::NoNotify);
    // Other services are not affected.
    h.request(0);
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, GATED | NOTIFY_FORWARD);
    let (bytes, _) = h.sent_start(NOTIFY_SERVICE);
    let flags = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    assert_eq!(
        flags,
        (wire::StartFlags::NEW_SESSION | wire::StartFlags::NOTIFY).bits()
    );
    assert_eq!(bytes[5], 2, "the Start says minor 2");
}

#[test]
fn a_cgroup_is_asked_for_only_of_an_agent_that_offers_cgroups() {
    const CGROUPS: u32 = 1 << 5;
    for (caps, asked) in [(GATED | CGROUPS, true), (GATED, false)] {
        let mut h = Harness::new(Protocol::V1);
        h.up_as(2, caps);
        let (_, start) = h.sent_start(CGROUP_SERVICE);
        assert_eq!(start.flags.contains(wire::StartFlags::CGROUP), asked);
        assert_eq!(
            start.cgroup.as_deref(),
            asked.then_some(b"radio".as_slice())
        );
    }
}

#[test]
fn an_execution_environment_goes_only_to_an_agent_that_applies_one() {
    const EXEC_ENV: u32 = 1 << 6;
    // An agent that did not announce it (minor 1, or minor 2 without the bit): the start
    // fails at once, nothing is sent, and the others are not affected.
    for (minor, caps) in [(1, GATED | EXEC_ENV), (2, GATED)] {
        let mut h = Harness::new(Protocol::V1);
        h.up_as(minor, caps);
        h.assert_refused_at_once(EXEC_SERVICE, EncodeFailure::NoExecEnv);
        h.request(0);
    }
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, GATED | EXEC_ENV);
    let (_, start) = h.sent_start(EXEC_SERVICE);
    assert!(start.flags.contains(wire::StartFlags::EXEC_ENV));
    assert_eq!(start.exec.and_then(|e| e.nice), Some(5));
}

#[test]
fn cgroup_limits_go_only_to_an_agent_with_cgroups() {
    const CGROUPS: u32 = 1 << 5;
    // Without cgroups the limits could not be held: the start fails at once (it is not sent
    // without them, as a cgroup alone would be).
    for (minor, caps) in [(1, GATED | CGROUPS), (2, GATED)] {
        let mut h = Harness::new(Protocol::V1);
        h.up_as(minor, caps);
        h.assert_refused_at_once(LIMITS_SERVICE, EncodeFailure::NoCgroupLimits);
    }
    let mut h = Harness::new(Protocol::V1);
    h.up_as(2, GATED | CGROUPS);
    let (_, start) = h.sent_start(LIMITS_SERVICE);
    let limits = start.cgroup_limits.expect("its limits");
    assert_eq!(limits.limits[0].value.as_str(), "64");
    assert_eq!(start.cgroup.as_deref(), Some(b"radio".as_slice()));
}
