//! The orchestrator against a hostile agent: a fake agent in this test, speaking wire v1
//! itself, misbehaves on purpose, one behaviour per test, while the orchestrator also
//! supervises a crash-looping local service and two QM services.
//!
//! Each test: the first connection behaves (both QM services get a real process) and a
//! baseline is taken (the orchestrator's open fds by kind, its `VmRSS`, the local service's
//! restarts over a window). Then the QM victim's process is killed, and every connection from
//! then on misbehaves in the same way, at least [`HOSTILE_CONNECTIONS_MIN`] of them and for at
//! least [`WINDOW`]. Then one connection behaves again. Checked: the orchestrator is up; the
//! misbehaviour was logged exactly once (rate-limited), with the expected reason; the
//! reconnect delays grew; no fd of any kind leaked; `VmRSS` did not grow beyond
//! [`RSS_GROWTH_KB_MAX`]; the local service's restart rate during the hostile phase was at
//! least [`RATE_RATIO_MIN`] of the baseline; the steady QM service kept its process; the
//! victim runs with the process of the last, well-behaved connection.

mod orchestrator_support;
mod reliability_support;

use holden::wire::v1;
use orchestrator_support::*;
use reliability_support::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Misbehaving connections per test, at least.
const HOSTILE_CONNECTIONS_MIN: usize = 4;
/// Length of the baseline window, and least length of the hostile phase.
const WINDOW: Duration = Duration::from_millis(1200);
/// Least ratio of the local service's restart rate, hostile phase over baseline (generous:
/// the machine is shared).
const RATE_RATIO_MIN: f64 = 0.5;
/// Most growth of the orchestrator's VmRSS (and of its peak, VmHWM) over the hostile phase.
const RSS_GROWTH_KB_MAX: u64 = 256;
/// The orchestrator's agent request timeout in these tests.
const REQUEST_TIMEOUT: &str = "300ms";
/// Most fds one packet can carry (the kernel's SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Garbage,
    BadMagic,
    FutureHeaderVersion,
    FuturePongVersion,
    Truncated,
    Oversized,
    LyingLength,
    StartedWithoutFd,
    StartedWithTwoFds,
    StartedWithPipe,
    StartedWithRegularFile,
    StartedWithSocket,
    StartedWithEventfd,
    StartedWithMemfd,
    PidfdOfAnotherProcess,
    PidfdAlreadySupervised,
    ReplyToIdNeverSent,
    SameReplyTwice,
    PongFlood,
    AcceptAndNeverReply,
    SilentAfterStart,
    ReplyAfterTimeout,
    CloseMidFrame,
    FdFlood,
    ErrorWithFd,
    AnswerBeforeHandshake,
    OrchestratorOnlyFrame,
    // Gated exec (wire 1.1): the fake agent announces `GATED_EXEC`.
    GatedRunningTwice,
    GatedRunningBeforeStarted,
    GatedRunningWithFd,
    GatedSilentAfterStarted,
    // Notifications (wire 1.2): Notify frames as fast as the socket takes them, from an agent
    // that announced `NOTIFY_FORWARD`, naming the steady QM service's pid; Notify frames from
    // one that did not; a Notify with an fd.
    NotifyFlood,
    NotifyUnannounced,
    NotifyWithFd,
}

use Behaviour::*;

impl Behaviour {
    /// The `what=` of the orchestrator's `agent-misbehaved` line.
    fn expected(self) -> &'static str {
        match self {
            Garbage | BadMagic | FutureHeaderVersion | Truncated | LyingLength | CloseMidFrame => {
                "undecodable frame"
            }
            FuturePongVersion => "agent speaks another major version",
            Oversized => "packet larger than",
            StartedWithoutFd | StartedWithTwoFds => "without exactly one file descriptor",
            StartedWithPipe
            | StartedWithRegularFile
            | StartedWithSocket
            | StartedWithEventfd
            | StartedWithMemfd => "file descriptor is not a pidfd",
            PidfdOfAnotherProcess => "other than the one the agent reported",
            PidfdAlreadySupervised => "pidfd of a process already supervised",
            ReplyToIdNeverSent | SameReplyTwice => "unknown request id",
            PongFlood => "unexpected Pong",
            AcceptAndNeverReply => "no Pong within",
            SilentAfterStart => "no Pong to a liveness Ping",
            ReplyAfterTimeout => "answer after the request timed out",
            FdFlood => "more file descriptors than allowed",
            ErrorWithFd => "file descriptor with an Error",
            AnswerBeforeHandshake => "answer before the handshake",
            OrchestratorOnlyFrame => "a frame only the orchestrator sends",
            GatedRunningTwice => "unknown request id",
            GatedRunningBeforeStarted => "Running before Started",
            GatedRunningWithFd => "file descriptor with a Running",
            GatedSilentAfterStarted => "no Pong to a liveness Ping",
            NotifyFlood => "Notify frames beyond the rate limit",
            NotifyUnannounced => "Notify from an agent that did not announce NOTIFY_FORWARD",
            NotifyWithFd => "file descriptor with a Notify",
        }
    }

    /// What the fake agent's `Pong` announces.
    fn capabilities(self) -> v1::Capabilities {
        let mut caps = v1::Capabilities::empty();
        if self.gated() {
            caps |= v1::Capabilities::GATED_EXEC;
        }
        if matches!(self, NotifyFlood | NotifyWithFd) {
            caps |= v1::Capabilities::NOTIFY_FORWARD;
        }
        caps
    }

    /// The fake agent announces the gated exec (`Started`, then `Running`).
    fn gated(self) -> bool {
        matches!(
            self,
            GatedRunningTwice
                | GatedRunningBeforeStarted
                | GatedRunningWithFd
                | GatedSilentAfterStarted
        )
    }

    /// The misbehaviour leaves the victim with an adopted process, which the fake agent ends
    /// so that the victim asks again on the next connection.
    fn adopts(self) -> bool {
        matches!(
            self,
            SameReplyTwice | GatedRunningTwice | GatedRunningWithFd | GatedSilentAfterStarted
        )
    }

    /// Misbehaves instead of answering the handshake `Ping`.
    fn in_handshake(self) -> bool {
        matches!(
            self,
            FuturePongVersion | AcceptAndNeverReply | AnswerBeforeHandshake
        )
    }
}

fn frame_started(id: u64, pid: i32) -> Vec<u8> {
    let mut out = [0u8; 64];
    let len = v1::encode_started(&mut out, id, pid).unwrap();
    out[..len].to_vec()
}

fn frame_running(id: u64) -> Vec<u8> {
    let mut out = [0u8; 64];
    let len = v1::encode_running(&mut out, id).unwrap();
    out[..len].to_vec()
}

fn frame_pong(id: u64, version_major: u8) -> Vec<u8> {
    frame_pong_with(id, version_major, v1::Capabilities::empty())
}

fn frame_pong_with(id: u64, version_major: u8, capabilities: v1::Capabilities) -> Vec<u8> {
    let mut out = [0u8; 64];
    let mut pong = v1::Pong::ours(capabilities);
    pong.version_major = version_major;
    let len = v1::encode_pong(&mut out, id, pong).unwrap();
    out[..len].to_vec()
}

/// Receives the next frame, decoded; `None` on EOF.
fn next_frame(conn: &OwnedFd, buf: &mut [u8]) -> Option<(u64, bool)> {
    let n = recv(conn, buf);
    if n == 0 {
        return None;
    }
    let frame = v1::decode(&buf[..n]).expect("the orchestrator sends valid frames");
    Some((frame.request_id(), matches!(frame.body, v1::Body::Start(_))))
}

/// Answers the `Ping`, announcing `capabilities` (with our minor version).
fn handshake(conn: &OwnedFd, capabilities: v1::Capabilities) {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    let (ping, is_start) = next_frame(conn, &mut buf).expect("ping");
    assert!(!is_start);
    send(
        conn,
        &frame_pong_with(ping, v1::VERSION_MAJOR, capabilities),
        &[],
    );
}

fn frame_notify(pid: i32, text: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; v1::FRAME_LEN_MAX];
    let len = v1::encode_notify(&mut out, pid, text).unwrap();
    out.truncate(len);
    out
}

/// A correct answer: `Started` + pidfd, and `Running` when gated.
fn answer(conn: &OwnedFd, id: u64, pid: i32, pidfd: RawFd, gated: bool) {
    send(conn, &frame_started(id, pid), &[pidfd]);
    if gated {
        send(conn, &frame_running(id), &[]);
    }
}

/// The id of the next `Start`.
fn next_start(conn: &OwnedFd) -> u64 {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    loop {
        let (id, is_start) = next_frame(conn, &mut buf).expect("a Start");
        if is_start {
            return id;
        }
    }
}

/// Reads until the orchestrator hangs up (bounded by [`WAIT`]).
fn drain_until_closed(conn: &OwnedFd) {
    let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
    while recv(conn, &mut buf) > 0 {}
}

fn owned(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd just returned by the kernel.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What the hostile side of a test knows.
struct Hostile {
    behaviour: Behaviour,
    marker: String,
    steady_pid: i32,
    steady_pidfd: OwnedFd,
    regular_file: std::path::PathBuf,
    children: Reaper,
}

impl Hostile {
    /// A sleeper the fake agent "started", kept until the end of the test.
    fn process(&mut self) -> (i32, OwnedFd) {
        let (child, fd) = sleeper(&self.marker);
        let pid = child.id() as i32;
        self.children.0.push(child);
        (pid, fd)
    }

    /// Misbehaves on a connection whose handshake is done and whose victim `Start` (`id`)
    /// is outstanding. Returns whether to close the connection at once.
    fn misbehave(&mut self, conn: &OwnedFd, id: u64) -> bool {
        let (pid, pidfd) = self.process();
        let started = frame_started(id, pid);
        let pfd = pidfd.as_raw_fd();
        match self.behaviour {
            Garbage => send(conn, b"\x00\x01garbage that is no frame at all", &[]),
            BadMagic => {
                let mut f = started;
                f[..4].copy_from_slice(b"HTTP");
                send(conn, &f, &[pfd])
            }
            FutureHeaderVersion => {
                let mut f = started;
                f[4] = v1::VERSION_MAJOR + 1;
                send(conn, &f, &[pfd])
            }
            Truncated => {
                let mut f = started;
                f.truncate(f.len() - 2);
                f[16..20].copy_from_slice(&2u32.to_le_bytes());
                send(conn, &f, &[pfd])
            }
            LyingLength => {
                let mut f = started;
                f[16..20].copy_from_slice(&4000u32.to_le_bytes());
                send(conn, &f, &[pfd])
            }
            Oversized => {
                let mut f = started;
                f.resize(v1::FRAME_LEN_MAX * 2, 0x41);
                send(conn, &f, &[pfd])
            }
            CloseMidFrame => {
                send(conn, &started[..10], &[]);
                return true;
            }
            StartedWithoutFd => send(conn, &started, &[]),
            StartedWithTwoFds => send(conn, &started, &[pfd, pfd]),
            StartedWithPipe => {
                let mut fds = [0; 2];
                // SAFETY: pipe2 writes two fds into the array.
                unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
                let (r, _w) = (owned(fds[0]), owned(fds[1]));
                send(conn, &started, &[r.as_raw_fd()])
            }
            StartedWithRegularFile => {
                let file = std::fs::File::create(&self.regular_file).unwrap();
                send(conn, &started, &[file.as_raw_fd()])
            }
            StartedWithSocket => {
                let mut fds = [0; 2];
                // SAFETY: socketpair writes two fds into the array.
                unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                        0,
                        fds.as_mut_ptr(),
                    )
                };
                let (a, _b) = (owned(fds[0]), owned(fds[1]));
                send(conn, &started, &[a.as_raw_fd()])
            }
            StartedWithEventfd => {
                // SAFETY: plain eventfd call.
                let fd = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) });
                send(conn, &started, &[fd.as_raw_fd()])
            }
            StartedWithMemfd => {
                // SAFETY: memfd_create with a NUL-terminated name (visible in /proc/<pid>/fd).
                let fd = owned(unsafe {
                    libc::memfd_create(c"holden-hostile".as_ptr(), libc::MFD_CLOEXEC)
                });
                send(conn, &started, &[fd.as_raw_fd()])
            }
            PidfdOfAnotherProcess => send(conn, &frame_started(id, pid + 1), &[pfd]),
            PidfdAlreadySupervised => send(
                conn,
                &frame_started(id, self.steady_pid),
                &[self.steady_pidfd.as_raw_fd()],
            ),
            ReplyToIdNeverSent => {
                // The victim's index, a sequence number never used.
                let never = (id & 0xf_ffff) | (0xfff_ffff << 20);
                send(conn, &frame_started(never, pid), &[pfd])
            }
            SameReplyTwice => {
                send(conn, &started, &[pfd]);
                send(conn, &started, &[pfd])
            }
            PongFlood => {
                let pong = frame_pong(id, v1::VERSION_MAJOR);
                let mut sent = 0;
                while sent < 10_000 && send(conn, &pong, &[]) {
                    sent += 1;
                }
                assert!(sent > 0);
                true
            }
            SilentAfterStart => true,
            ReplyAfterTimeout => {
                // Wait for the liveness Ping that follows the timeout, answer it, then answer
                // the request late: the process must be killed, not adopted.
                let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
                let (probe, _) = next_frame(conn, &mut buf).expect("liveness ping");
                send(conn, &frame_pong(probe, v1::VERSION_MAJOR), &[]);
                send(conn, &started, &[pfd]);
                let child = self.children.0.last_mut().unwrap();
                let status = wait_until("the late process killed", || child.try_wait().unwrap());
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(libc::SIGKILL));
                true
            }
            FdFlood => {
                // SAFETY: memfd_create with a NUL-terminated name (visible if leaked).
                let fd = owned(unsafe {
                    libc::memfd_create(c"holden-flood".as_ptr(), libc::MFD_CLOEXEC)
                });
                let fds = vec![fd.as_raw_fd(); SCM_MAX_FD];
                send(conn, &started, &fds)
            }
            ErrorWithFd => {
                let mut out = [0u8; 512];
                let len = v1::encode_error(&mut out, id, libc::ENOENT, v1::ErrorStage::Exec, b"x")
                    .unwrap();
                send(conn, &out[..len], &[pfd])
            }
            OrchestratorOnlyFrame => {
                let mut out = [0u8; 64];
                let len = v1::encode_ping(&mut out, id).unwrap();
                send(conn, &out[..len], &[])
            }
            GatedRunningTwice => {
                send(conn, &started, &[pfd]);
                send(conn, &frame_running(id), &[]);
                send(conn, &frame_running(id), &[])
            }
            GatedRunningBeforeStarted => send(conn, &frame_running(id), &[]),
            GatedRunningWithFd => {
                // The held pidfd is adopted when the link drops: the process is supervised.
                send(conn, &started, &[pfd]);
                send(conn, &frame_running(id), &[pfd])
            }
            GatedSilentAfterStarted => {
                // No Running: the request times out, the held pidfd is adopted, and the
                // liveness Ping goes unanswered (drained below).
                send(conn, &started, &[pfd])
            }
            NotifyFlood => {
                // The steady service's pid as the fake agent reported it: each frame speaks
                // for a real service, and asks for what would stop it.
                let notify = frame_notify(
                    self.steady_pid,
                    b"READY=1\nWATCHDOG=trigger\nSTOPPING=1\nSTATUS=flood",
                );
                let mut sent = 0;
                while sent < 10_000 && send(conn, &notify, &[]) {
                    sent += 1;
                }
                assert!(sent as u64 > holden::link::NOTIFY_BURST, "{sent} sent");
                true
            }
            NotifyUnannounced => send(conn, &frame_notify(self.steady_pid, b"READY=1"), &[]),
            NotifyWithFd => send(conn, &frame_notify(self.steady_pid, b"READY=1"), &[pfd]),
            FuturePongVersion | AcceptAndNeverReply | AnswerBeforeHandshake => {
                unreachable!("handshake behaviours")
            }
        };
        false
    }

    /// Misbehaves in place of the handshake.
    fn misbehave_in_handshake(&mut self, conn: &OwnedFd) {
        let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
        let (ping, _) = next_frame(conn, &mut buf).expect("ping");
        match self.behaviour {
            FuturePongVersion => {
                send(conn, &frame_pong(ping, v1::VERSION_MAJOR + 1), &[]);
            }
            AcceptAndNeverReply => {}
            AnswerBeforeHandshake => {
                let (pid, pidfd) = self.process();
                send(conn, &frame_started(ping, pid), &[pidfd.as_raw_fd()]);
            }
            other => unreachable!("{other:?}"),
        }
    }

    /// Every connection misbehaves until `stop`; then one behaves: the victim gets a real
    /// process, whose pid is returned with the connection.
    fn run(
        mut self,
        listener: OwnedFd,
        conn0: OwnedFd,
        id0: u64,
        stop: &AtomicBool,
        misbehaved: &AtomicUsize,
    ) -> (Hostile, OwnedFd, i32) {
        if self.behaviour.in_handshake() {
            drop(conn0); // a plain agent restart, not a misbehaviour
        } else {
            let close = self.misbehave(&conn0, id0);
            misbehaved.fetch_add(1, Ordering::SeqCst);
            if !close {
                drain_until_closed(&conn0);
            }
            drop(conn0);
            self.end_adopted();
        }
        loop {
            let conn = accept(&listener);
            if stop.load(Ordering::SeqCst) {
                let gated = self.behaviour.gated();
                handshake(&conn, self.behaviour.capabilities());
                let id = next_start(&conn);
                let (pid, pidfd) = self.process();
                answer(&conn, id, pid, pidfd.as_raw_fd(), gated);
                return (self, conn, pid);
            }
            let close = if self.behaviour.in_handshake() {
                self.misbehave_in_handshake(&conn);
                false
            } else {
                handshake(&conn, self.behaviour.capabilities());
                let id = next_start(&conn);
                self.misbehave(&conn, id)
            };
            misbehaved.fetch_add(1, Ordering::SeqCst);
            if !close {
                drain_until_closed(&conn);
            }
            drop(conn);
            self.end_adopted();
        }
    }

    /// After `SameReplyTwice` the first reply was adopted: end that process so the victim
    /// asks again on the next connection.
    fn end_adopted(&mut self) {
        if !self.behaviour.adopts() {
            return;
        }
        for child in &mut self.children.0 {
            if child.try_wait().unwrap().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The orchestrator's fds by kind, and apart from them its pidfds (the crash-looping
/// services' come and go), so that a transient fd is not counted: of a few samples, the
/// quietest (the fewest fds other than pidfds) and the least pidfd count. Pipes and
/// `/dev/null` are counted together: a spawn in flight puts its report pipe's write end in
/// place of a spawner thread's reserved `/dev/null`.
fn fd_baseline(pid: i32) -> (std::collections::BTreeMap<String, usize>, usize) {
    let sample = || {
        let mut kinds = fd_kinds(pid);
        let pidfds = kinds.remove("pidfd").unwrap_or(0);
        let stand_ins = kinds.remove("pipe").unwrap_or(0) + kinds.remove("/dev/null").unwrap_or(0);
        kinds.insert("pipe or /dev/null".to_string(), stand_ins);
        (kinds, pidfds)
    };
    let mut quietest = sample();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(20));
        let now = sample();
        let pidfds = quietest.1.min(now.1);
        if now.0.values().sum::<usize>() < quietest.0.values().sum::<usize>() {
            quietest.0 = now.0;
        }
        quietest.1 = pidfds;
    }
    quietest
}

fn spawned_count(orch: &Orch, name: &str) -> usize {
    count(orch, &[&format!("service={name} "), "reason=spawned"])
}

fn run(behaviour: Behaviour) {
    let dir = TempDir::new("rel-hostile");
    let socket = dir.path("agent.sock");
    let listener = seqpacket_listener(&socket);
    let tag = format!("{}{:02}", std::process::id(), behaviour as u32);
    let (victim_marker, steady_marker) = (format!("6666.{tag}"), format!("6667.{tag}"));
    let cfg = "log_level = \"debug\"\n".to_string()
        + &config_header(&socket).replace("\"5s\"", &format!("{REQUEST_TIMEOUT:?}"))
        + &service(
            "victim",
            "qm",
            &["/bin/sleep", &victim_marker],
            "restart = \"always\"\nrestart_delay = \"0s\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        )
        + &service("steady", "qm", &["/bin/sleep", &steady_marker], "restart = \"always\"")
        + &service(
            "local-loop",
            "local",
            &["/bin/sh", "-c", "exit 1"],
            "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"0s\" }",
        );
    let mut orch = Orch::start(&dir, &cfg);
    let mut children = Reaper::default();

    // The first connection behaves: both QM services get a process.
    let conn0 = accept(&listener);
    let gated = behaviour.gated();
    handshake(&conn0, behaviour.capabilities());
    let mut steady = None;
    for _ in 0..2 {
        let id = next_start(&conn0);
        let victim = id & 0xf_ffff == 0; // service index 0 (config order)
        let (child, pidfd) = sleeper(if victim {
            &victim_marker
        } else {
            &steady_marker
        });
        let pid = child.id() as i32;
        answer(&conn0, id, pid, pidfd.as_raw_fd(), gated);
        if !victim {
            steady = Some((pid, pidfd));
        }
        children.0.push(child);
    }
    let (steady_pid, steady_pidfd) = steady.expect("a Start for steady");
    orch.wait_lines(&["partition=qm", "state=running"], 2);

    // Baseline.
    std::thread::sleep(Duration::from_millis(200));
    let (fds_before, pidfds_before) = fd_baseline(orch.pid());
    let rss_before_kb = status_kb(orch.pid(), "VmRSS");
    let hwm_before_kb = status_kb(orch.pid(), "VmHWM");
    let (base_count, base_at) = (spawned_count(&orch, "local-loop"), Instant::now());
    std::thread::sleep(WINDOW);
    let base_restarts = spawned_count(&orch, "local-loop") - base_count;
    let base_rate = base_restarts as f64 / base_at.elapsed().as_secs_f64();

    // The victim's process ends: its next Start is where the hostility begins.
    let victim_child = children
        .0
        .iter_mut()
        .find(|c| has_argument(c.id() as i32, &victim_marker))
        .unwrap();
    victim_child.kill().unwrap();
    victim_child.wait().unwrap();
    let id0 = next_start(&conn0);

    let stop = Arc::new(AtomicBool::new(false));
    let misbehaved = Arc::new(AtomicUsize::new(0));
    let hostile = Hostile {
        behaviour,
        marker: victim_marker.clone(),
        steady_pid,
        steady_pidfd: steady_pidfd.try_clone().unwrap(),
        regular_file: dir.path("regular-file"),
        children: Reaper::default(),
    };
    let (hostile_count, hostile_at) = (spawned_count(&orch, "local-loop"), Instant::now());
    let thread = {
        let (stop, misbehaved) = (Arc::clone(&stop), Arc::clone(&misbehaved));
        std::thread::spawn(move || hostile.run(listener, conn0, id0, &stop, &misbehaved))
    };
    wait_until("the hostile phase", || {
        (misbehaved.load(Ordering::SeqCst) >= HOSTILE_CONNECTIONS_MIN
            && hostile_at.elapsed() >= WINDOW)
            .then_some(())
    });
    let hostile_restarts = spawned_count(&orch, "local-loop") - hostile_count;
    let hostile_rate = hostile_restarts as f64 / hostile_at.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (hostile, conn, final_pid) = thread.join().expect("the fake agent failed");

    // The victim runs with the last connection's process; the orchestrator is up.
    orch.wait_lines(
        &[
            "service=victim ",
            "state=running",
            &format!("spawned_pid={final_pid}"),
        ],
        1,
    );
    assert!(
        orch.child.try_wait().unwrap().is_none(),
        "orchestrator died"
    );
    let log = orch.log();

    // Logged once, with the reason.
    let lines = orch.lines_with(&["event=agent-misbehaved"]);
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    assert!(
        lines[0].contains(behaviour.expected()),
        "expected {:?}: {}",
        behaviour.expected(),
        lines[0]
    );

    // Gated: a held pidfd whose Running never came is supervised, not dropped.
    let held_why = match behaviour {
        GatedSilentAfterStarted => Some("why=running-timeout"),
        GatedRunningWithFd => Some("why=connection-lost"),
        _ => None,
    };
    if let Some(why) = held_why {
        let held = orch.lines_with(&["service=victim ", "event=held-pidfd-adopted", why]);
        assert!(!held.is_empty(), "held pidfd adopted ({why}): {log}");
    }

    // Dropped and retried with growing delays (50 ms doubling to 500 ms).
    let delays: Vec<u64> = orch
        .lines_with(&["event=agent-retry"])
        .iter()
        .filter_map(|l| field(l, "delay_ms")?.parse().ok())
        .collect();
    assert!(
        delays.len() >= HOSTILE_CONNECTIONS_MIN,
        "retries {delays:?}"
    );
    assert!(
        delays.windows(2).all(|w| w[0] <= w[1]),
        "delays never shrink during the hostile phase: {delays:?}"
    );
    assert!(
        delays[HOSTILE_CONNECTIONS_MIN - 1] >= 4 * delays[0] && *delays.last().unwrap() <= 500,
        "delays grow to their cap: {delays:?}"
    );

    // No fd of any kind leaked.
    std::thread::sleep(Duration::from_millis(100));
    let (fds_after, pidfds_after) = fd_baseline(orch.pid());
    assert_eq!(fds_before, fds_after, "fds by kind, before and after");
    assert!(
        pidfds_before <= 2 && pidfds_after <= 2,
        "pidfds: {pidfds_before} before, {pidfds_after} after"
    );

    // Memory did not grow.
    let rss_after_kb = status_kb(orch.pid(), "VmRSS");
    let hwm_after_kb = status_kb(orch.pid(), "VmHWM");
    assert!(
        rss_after_kb <= rss_before_kb + RSS_GROWTH_KB_MAX
            && hwm_after_kb <= hwm_before_kb + RSS_GROWTH_KB_MAX,
        "VmRSS {rss_before_kb} -> {rss_after_kb} kB, VmHWM {hwm_before_kb} -> {hwm_after_kb} kB"
    );

    // The local service kept its pace.
    let ratio = hostile_rate / base_rate;
    eprintln!(
        "{behaviour:?}: {} misbehaving connections, retries {delays:?} ms, fds {fds_after:?}, \
         VmRSS {rss_before_kb} -> {rss_after_kb} kB, local restarts/s {base_rate:.1} -> \
         {hostile_rate:.1} (ratio {ratio:.2})",
        misbehaved.load(Ordering::SeqCst)
    );
    assert!(
        ratio >= RATE_RATIO_MIN,
        "local restart rate {base_rate:.1}/s before, {hostile_rate:.1}/s during"
    );

    // The steady QM service kept its one process throughout.
    assert_eq!(spawned_count(&orch, "steady"), 1, "{log}");
    assert!(alive(steady_pid));

    assert!(orch.stop(libc::SIGTERM).success());
    drop((hostile, conn, steady_pidfd, children));
}

macro_rules! hostile_tests {
    ($($name:ident: $behaviour:expr,)*) => {
        $(
            #[test]
            fn $name() {
                run($behaviour);
            }
        )*
    };
}

hostile_tests! {
    garbage_bytes: Garbage,
    bad_magic: BadMagic,
    future_major_version_in_the_header: FutureHeaderVersion,
    future_major_version_in_the_pong: FuturePongVersion,
    truncated_frame: Truncated,
    oversized_packet: Oversized,
    length_field_that_lies: LyingLength,
    started_without_fd: StartedWithoutFd,
    started_with_two_fds: StartedWithTwoFds,
    started_with_a_pipe: StartedWithPipe,
    started_with_a_regular_file: StartedWithRegularFile,
    started_with_a_socket: StartedWithSocket,
    started_with_an_eventfd: StartedWithEventfd,
    started_with_a_memfd: StartedWithMemfd,
    pidfd_of_another_process: PidfdOfAnotherProcess,
    pidfd_of_a_process_already_supervised: PidfdAlreadySupervised,
    reply_to_a_request_id_never_sent: ReplyToIdNeverSent,
    the_same_reply_twice: SameReplyTwice,
    a_flood_of_pongs: PongFlood,
    accept_and_never_reply: AcceptAndNeverReply,
    silent_after_a_start: SilentAfterStart,
    reply_after_the_request_timed_out: ReplyAfterTimeout,
    close_mid_frame: CloseMidFrame,
    fds_up_to_the_kernel_limit: FdFlood,
    error_with_an_fd: ErrorWithFd,
    answer_before_the_handshake: AnswerBeforeHandshake,
    a_frame_only_the_orchestrator_sends: OrchestratorOnlyFrame,
    gated_running_twice: GatedRunningTwice,
    gated_running_before_started: GatedRunningBeforeStarted,
    gated_running_with_an_fd: GatedRunningWithFd,
    gated_silent_after_started_is_held_and_adopted: GatedSilentAfterStarted,
    a_flood_of_notify_frames: NotifyFlood,
    notify_from_an_agent_that_did_not_offer_it: NotifyUnannounced,
    notify_with_an_fd: NotifyWithFd,
}
