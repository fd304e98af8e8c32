//! holden wire v1 on a SOCK_SEQPACKET connection: one request per packet,
//! one reply per request, the pidfd in the same `sendmsg` as `Started`.
//!
//! Gated exec (a `Start` from a minor-1+ orchestrator): the child is set up
//! and stops at a gate before `execve`; the agent sends `Started` + pidfd,
//! and only when that `sendmsg` succeeded gives the child its go-ahead; the
//! exec is confirmed later without blocking the loop (`pending.rs`): `Running`
//! or `Error` (stage `exec`). If the send fails the child is aborted without
//! exec; if the agent dies at any point before the go-ahead, the child's gate
//! closes and it exits 125 without exec. So a program never runs without the
//! orchestrator holding its pidfd. A minor-0 orchestrator gets the old
//! sequence (`Started` only after a successful exec).
//!
//! Hostile input never starts a process: an oversized packet, an empty one, a
//! packet with fds, anything the decoder refuses, and frames only an agent
//! sends are answered with an `Error` (request id from the frozen header
//! prefix when readable, else 0) and the connection stays usable.

use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use holden::pidfd::send_signal;
use holden::wire::v1::{
    self, decode, encode_error, encode_pong, encode_started, peek_request_id, Body, ErrorStage,
    Pong,
};

use crate::fdpass::{self, Recv};
use crate::log::{info, warning};
use crate::peer::may_request_credentials;
use crate::pending::PendingExec;
use crate::request::{fill_v1, wire_stage, FailureText, Subject};
use crate::server::{Next, Server};
use crate::text::{Errno, Escaped, FixedBuf};

/// An error reply in the making.
struct Refusal {
    stage: ErrorStage,
    errno: i32,
    text: FixedBuf<{ v1::ERROR_TEXT_LEN_MAX }>,
}

impl Refusal {
    fn new(stage: ErrorStage, errno: i32, args: std::fmt::Arguments<'_>) -> Refusal {
        let mut text = FixedBuf::new();
        let _ = text.write_fmt(args);
        Refusal { stage, errno, text }
    }
}

/// Gives the next spawn its own cgroup `name` under the agent's (created if missing;
/// `None`: the agent's own cgroup); the refusal to answer when that cannot be.
fn place_in_cgroup(
    spec: &mut holden::spawn::SpawnSpec,
    cgroups: Option<&holden::cgroup::Hierarchy>,
    name: Option<&[u8]>,
) -> Option<Refusal> {
    spec.set_cgroup(None);
    let name = name?;
    let shown = Escaped(name);
    let Some(cgroups) = cgroups else {
        return Some(Refusal::new(
            ErrorStage::Setup,
            libc::EOPNOTSUPP,
            format_args!(
                "cgroup \"{shown}\": this agent has no cgroup subtree of its own (not \
                 delegated, or --no-cgroups); CGROUPS is not offered"
            ),
        ));
    };
    // The decoder checked the name: one path component. A cgroup of that name that is empty
    // is made anew (after a `cgroup.kill`, a kernel may kill what is later created in it),
    // one that still holds processes (the last instance's tree, not yet ended) is used as it
    // is.
    let name = std::str::from_utf8(name).unwrap_or("");
    let dir = match cgroups.renew(name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => cgroups.create(name),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => cgroups.open(name),
        other => other,
    };
    match dir {
        Ok(dir) => {
            spec.set_cgroup(Some(dir));
            None
        }
        Err(e) => Some(Refusal::new(
            ErrorStage::Setup,
            holden::sys::errno::of(&e),
            format_args!("cgroup \"{shown}\": {e}"),
        )),
    }
}

/// Writes `limits` into the cgroup the next spawn goes to (placed by [`place_in_cgroup`]),
/// first making each controller available there (`+controller` in the `services`
/// directory's `cgroup.subtree_control`, and in the agent's own cgroup's when that one does
/// not offer it yet); the refusal to answer when a limit cannot be set: never ignored.
fn apply_cgroup_limits(
    spec: &holden::spawn::SpawnSpec,
    cgroups: Option<&holden::cgroup::Hierarchy>,
    limits: Option<v1::CgroupLimitsSection<'_>>,
) -> Option<Refusal> {
    let limits = limits?.get();
    // The decoder took CGROUP_LIMITS only with CGROUP, and place_in_cgroup refused that
    // without cgroups.
    let (Some(cgroups), Some(dir)) = (cgroups, spec.cgroup()) else {
        return Some(Refusal::new(
            ErrorStage::Setup,
            libc::EOPNOTSUPP,
            format_args!("cgroup limits without a cgroup of the process's own"),
        ));
    };
    for limit in &limits.limits {
        if let Err(why) = cgroups.enable(limit.controller) {
            return Some(Refusal::new(
                ErrorStage::Setup,
                libc::EOPNOTSUPP,
                format_args!("{} = \"{}\": {why}", limit.key, limit.value),
            ));
        }
        if let Err(e) = holden::sys::cgroup::write_file(dir, limit.file, limit.value.as_bytes()) {
            return Some(Refusal::new(
                ErrorStage::Setup,
                holden::sys::errno::of(&e),
                format_args!(
                    "{} = \"{}\" into {}: {e}",
                    limit.key,
                    limit.value,
                    limit.file.to_string_lossy()
                ),
            ));
        }
    }
    None
}

impl Server {
    pub(crate) fn v1_readable(&mut self, slot: usize) -> Next {
        let Some(conn) = self.conns[slot].as_ref() else {
            return Next::Close;
        };
        let received = match fdpass::recv(conn.fd.as_fd(), &mut self.recv_buf, true) {
            Ok(Recv::Data(received)) => received,
            Ok(Recv::WouldBlock) => return Next::Keep,
            Ok(Recv::Closed) => return Next::Close,
            Err(error) => {
                self.log_conn(slot, format_args!("recvmsg: {error}; closing"));
                return Next::Close;
            }
        };
        let packet_len = received.len;
        let request_id = peek_request_id(&self.recv_buf[..packet_len]).unwrap_or(0);
        if received.truncated {
            let max = v1::FRAME_LEN_MAX;
            return self.v1_refuse(
                slot,
                request_id,
                Refusal::new(
                    ErrorStage::Limit,
                    libc::EMSGSIZE,
                    format_args!("packet is larger than the {max}-byte frame maximum"),
                ),
            );
        }
        if received.fds > 0 || received.fds_truncated {
            let fds = received.fds;
            return self.v1_refuse(
                slot,
                request_id,
                Refusal::new(
                    ErrorStage::Decode,
                    libc::EBADMSG,
                    format_args!("request carried {fds} file descriptors; requests carry none"),
                ),
            );
        }
        self.v1_packet(slot, packet_len)
    }

    fn v1_packet(&mut self, slot: usize, packet_len: usize) -> Next {
        let packet = &self.recv_buf[..packet_len];
        let request_id = peek_request_id(packet).unwrap_or(0);
        let frame = match decode(packet) {
            Ok(frame) => frame,
            Err(error) => {
                let refusal = Refusal::new(error.stage(), error.errno(), format_args!("{error}"));
                return self.v1_refuse(slot, request_id, refusal);
            }
        };
        if let Some(conn) = self.conns[slot].as_mut() {
            // A peer that speaks v1 may stay connected while idle.
            conn.deadline = None;
            conn.minor = conn.minor.max(frame.header.version_minor);
        }
        match frame.body {
            Body::Ping => {
                let pong = Pong::ours(self.capabilities);
                let len = encode_pong(&mut self.send_buf, request_id, pong).unwrap_or(0);
                self.log_conn(slot, format_args!("request {request_id}: ping -> pong"));
                self.v1_send(slot, len, None)
            }
            Body::Start(start) => {
                // The spec copies what it needs out of the packet, so the
                // receive buffer is free again once it is filled.
                let permitted = self.conns[slot]
                    .as_ref()
                    .is_some_and(|c| may_request_credentials(&c.peer, start.uid, start.gid));
                if !permitted {
                    let refusal = Refusal::new(
                        ErrorStage::Permission,
                        libc::EPERM,
                        format_args!(
                            "only root may start a process as another user (asked uid {:?}, gid {:?})",
                            start.uid, start.gid
                        ),
                    );
                    return self.v1_refuse(slot, request_id, refusal);
                }
                let notify = self.notify.as_ref().map(|n| n.env_entry());
                if start.flags.contains(v1::StartFlags::NOTIFY) && notify.is_none() {
                    let refusal = Refusal::new(
                        ErrorStage::Setup,
                        libc::EOPNOTSUPP,
                        format_args!(
                            "this agent has no notify socket (--notify-socket none, or it could \
                             not be bound); NOTIFY is not offered"
                        ),
                    );
                    return self.v1_refuse(slot, request_id, refusal);
                }
                let filled = fill_v1(&mut self.spec, &start, &self.inherited, notify);
                if let Some(refusal) =
                    place_in_cgroup(&mut self.spec, self.cgroups.as_ref(), start.cgroup)
                {
                    return self.v1_refuse(slot, request_id, refusal);
                }
                if let Some(refusal) =
                    apply_cgroup_limits(&self.spec, self.cgroups.as_ref(), start.cgroup_limits)
                {
                    return self.v1_refuse(slot, request_id, refusal);
                }
                if let Err(error) = filled {
                    let refusal =
                        Refusal::new(ErrorStage::Limit, libc::E2BIG, format_args!("{error}"));
                    return self.v1_refuse(slot, request_id, refusal);
                }
                if frame.header.version_minor >= 1 {
                    self.v1_start_gated(slot, request_id)
                } else {
                    self.v1_start(slot, request_id)
                }
            }
            Body::Started(_) | Body::Error(_) | Body::Pong(_) | Body::Running | Body::Notify(_) => {
                let kind = frame.header.kind;
                let refusal = Refusal::new(
                    ErrorStage::Decode,
                    libc::EPROTO,
                    format_args!("{kind:?} is a reply frame; the agent only takes Start and Ping"),
                );
                self.v1_refuse(slot, request_id, refusal)
            }
        }
    }

    /// Spawns from the filled spec and replies `Started` + pidfd or `Error`.
    fn v1_start(&mut self, slot: usize, request_id: u64) -> Next {
        let (argc, envc) = (self.spec.args_count(), self.spec.env_count());
        let mut what = FixedBuf::<200>::new();
        let program = Escaped(self.spec.program().unwrap_or(b""));
        let _ = write!(what, "start \"{program}\" argc {argc} envc {envc}");
        match self.spawn_from_spec() {
            Ok(spawned) => {
                let len = encode_started(&mut self.send_buf, request_id, spawned.pid).unwrap_or(0);
                let pid = spawned.pid;
                let shown = what.as_str();
                // Logged before the reply, so the line exists when the
                // requester learns of the process.
                self.log_conn(
                    slot,
                    format_args!("request {request_id}: {shown} -> started pid {pid}"),
                );
                let next = self.v1_send(slot, len, Some(spawned.pidfd.as_fd()));
                if next == Next::Close {
                    // Nobody will supervise a process whose pidfd never
                    // arrived: end it rather than leave it unsupervised.
                    let _ = send_signal(spawned.pidfd.as_fd(), libc::SIGKILL);
                    self.log_conn(
                        slot,
                        format_args!(
                            "request {request_id}: pid {pid} killed: the reply could not be sent"
                        ),
                    );
                }
                next
            }
            Err(error) => self.v1_spawn_error(slot, request_id, &what, error),
        }
    }

    /// Gated: spawns up to the gate, replies `Started` + pidfd, and gives the
    /// child its go-ahead only if that reply was sent. The exec is confirmed
    /// later, without blocking the loop (`pending.rs`): `Running` or `Error`.
    fn v1_start_gated(&mut self, slot: usize, request_id: u64) -> Next {
        let (argc, envc) = (self.spec.args_count(), self.spec.env_count());
        let mut what = FixedBuf::<200>::new();
        let program = Escaped(self.spec.program().unwrap_or(b""));
        let _ = write!(what, "start \"{program}\" argc {argc} envc {envc}");
        let entry = match self.pending_entry(slot) {
            Ok(entry) => entry,
            Err(full) => {
                let refusal = Refusal {
                    stage: ErrorStage::Limit,
                    errno: libc::EAGAIN,
                    text: Server::full_text(&full),
                };
                return self.v1_refuse(slot, request_id, refusal);
            }
        };
        let gated = match self.spawn_gated_from_spec() {
            Ok(gated) => gated,
            Err(error) => return self.v1_spawn_error(slot, request_id, &what, error),
        };
        let pid = gated.pid;
        let len = encode_started(&mut self.send_buf, request_id, pid).unwrap_or(0);
        // Between the reply and the go-ahead nothing but the `sendmsg`: the child waits at
        // its gate meanwhile, so the line about the start is written after the release.
        let next = self.v1_send(slot, len, Some(gated.pidfd()));
        let shown = what.as_str();
        if next == Next::Close {
            self.log_conn(
                slot,
                format_args!("request {request_id}: {shown} -> started pid {pid} (gated)"),
            );
            // The orchestrator did not get the pidfd: the program must not run.
            gated.abort();
            self.log_conn(
                slot,
                format_args!(
                    "request {request_id}: pid {pid} ended before exec: the reply could not be sent"
                ),
            );
            return next;
        }
        let opened = gated.open();
        self.log_conn(
            slot,
            format_args!("request {request_id}: {shown} -> started pid {pid} (gated)"),
        );
        match opened {
            Ok(released) => {
                let Some(conn) = self.conns[slot].as_ref() else {
                    return Next::Close;
                };
                let deadline = Instant::now() + self.settings.exec_timeout;
                let program = self.spec.program().unwrap_or(b"");
                self.pending[entry] = Some(PendingExec::new(
                    released,
                    slot,
                    conn.serial,
                    request_id,
                    deadline,
                    program,
                ));
                Next::Keep
            }
            Err(error) => self.v1_spawn_error(slot, request_id, &what, error),
        }
    }

    /// A spawn failed before or at the gate: `Error` with the stage, errno
    /// and a text naming what failed (the spec still holds the request).
    fn v1_spawn_error(
        &mut self,
        slot: usize,
        request_id: u64,
        what: &FixedBuf<200>,
        error: holden::spawn::SpawnError,
    ) -> Next {
        let errno = error.errno;
        let shown = what.as_str();
        self.log_conn(
            slot,
            format_args!(
                "request {request_id}: {shown} -> error {}: {} (errno {errno})",
                error.stage,
                Errno(errno)
            ),
        );
        let mut text = FixedBuf::<{ v1::ERROR_TEXT_LEN_MAX }>::new();
        let failure = FailureText {
            error,
            subject: Subject::of(&self.spec),
        };
        let _ = write!(text, "{failure}");
        self.v1_reply_text(slot, request_id, error, text.as_bytes())
    }

    /// A pending exec failed (`pending.rs`): `Error` naming the program.
    pub(crate) fn v1_failure(
        &mut self,
        slot: usize,
        request_id: u64,
        error: holden::spawn::SpawnError,
        subject: Subject<'_>,
    ) -> Next {
        let errno = error.errno;
        self.log_conn(
            slot,
            format_args!(
                "request {request_id}: \"{}\" -> error {}: {} (errno {errno})",
                Escaped(subject.program),
                error.stage,
                Errno(errno)
            ),
        );
        let mut text = FixedBuf::<{ v1::ERROR_TEXT_LEN_MAX }>::new();
        let _ = write!(text, "{}", FailureText { error, subject });
        self.v1_reply_text(slot, request_id, error, text.as_bytes())
    }

    /// Replies `Error` for a spawn failure with its wire stage and `text`.
    pub(crate) fn v1_reply_text(
        &mut self,
        slot: usize,
        request_id: u64,
        error: holden::spawn::SpawnError,
        text: &[u8],
    ) -> Next {
        let text = v1::clamp_error_text(text);
        let stage = wire_stage(error.stage);
        match encode_error(&mut self.send_buf, request_id, error.errno, stage, text) {
            Ok(len) => self.v1_send(slot, len, None),
            Err(_) => Next::Close,
        }
    }

    fn v1_refuse(&mut self, slot: usize, request_id: u64, refusal: Refusal) -> Next {
        let text = Escaped(refusal.text.as_bytes());
        if let Some(conn) = self.conns[slot].as_ref() {
            warning!(
                "{}: request {request_id}: refused ({}, errno {}): {text}",
                conn.label(),
                refusal.stage.name(),
                refusal.errno
            );
        }
        self.v1_reply_error(slot, request_id, &refusal)
    }

    fn v1_reply_error(&mut self, slot: usize, request_id: u64, refusal: &Refusal) -> Next {
        let text = v1::clamp_error_text(refusal.text.as_bytes());
        match encode_error(
            &mut self.send_buf,
            request_id,
            refusal.errno,
            refusal.stage,
            text,
        ) {
            Ok(len) => self.v1_send(slot, len, None),
            Err(_) => Next::Close,
        }
    }

    /// Sends `send_buf[..len]` as one packet. A full socket buffer means the
    /// client does not read its replies: the connection is dropped (the agent
    /// keeps no reply queue).
    pub(crate) fn v1_send(
        &mut self,
        slot: usize,
        len: usize,
        pidfd: Option<BorrowedFd<'_>>,
    ) -> Next {
        let Some(conn) = self.conns[slot].as_ref() else {
            return Next::Close;
        };
        if len == 0 {
            return Next::Close;
        }
        match fdpass::send(conn.fd.as_fd(), &self.send_buf[..len], pidfd) {
            Ok(sent) if sent == len => Next::Keep,
            Ok(_) => Next::Close,
            Err(error) => {
                self.log_conn(slot, format_args!("sendmsg: {error}; closing"));
                Next::Close
            }
        }
    }

    pub(crate) fn log_conn(&self, slot: usize, args: std::fmt::Arguments<'_>) {
        if let Some(conn) = self.conns[slot].as_ref() {
            info!("{}: {args}", conn.label());
        }
    }
}
