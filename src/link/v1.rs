//! Wire v1 on one SOCK_SEQPACKET connection: the handshake, pipelined requests, the gated
//! exec, abandoned ids and the liveness probe.
//!
//! Everything the agent sends is checked. Any misbehaviour — undecodable or oversized packet,
//! unknown request id, a frame the agent must not send, an fd where none belongs, no fd or
//! two fds with `Started`, an fd that is not a pidfd, a pidfd of a process already supervised
//! or held, a process outside the agent's PID namespace or other than the one it reported, a
//! handshake or probe timeout — drops the connection: requests in flight fail (the core backs
//! off), the agent counts as down, and the link reconnects with exponential backoff. Running
//! QM processes are not affected: their pidfds do not depend on the connection. The first
//! misbehaviour of each connection is noted, and across connections at most one per
//! [`super::MISBEHAVIOUR_LOG_INTERVAL`] (the next says how many were suppressed). The
//! reconnect delay is reset only when a connection that answered a request correctly ends
//! without misbehaving, so an agent that handshakes and then misbehaves is retried with a
//! growing delay.
//!
//! Gated exec (an agent announcing minor 1 and `GATED_EXEC`): `Started` + pidfd comes before
//! the exec; the pidfd is held and the request stays open until `Running` (adopt) or `Error`
//! (the agent says the program did not run: the held process is killed anyway and the spawn
//! fails like an ungated exec failure). If `Running` does not come — the request times out,
//! or the connection drops — the held pidfd is adopted anyway: a QM process whose pidfd we
//! did not receive never runs its program, and a held one is never lost.

use super::{
    Conn, Cx, DownReason, EncodeFailure, Event, Fds, Gate, Io, Link, Note, PeerFd, Probe, Protocol,
    Requests, State, What, PING_INDEX, REQUEST_INDEX_MASK,
};
use crate::supervise::StartStage;
use crate::wire::v1 as wire;

/// Which request an answer belongs to.
enum Answer {
    /// An outstanding request of this service.
    OnTime(usize),
    /// A request of this service that already timed out.
    Late(usize),
}

type Checked<T> = Result<T, What>;

fn said(text: &'static str) -> What {
    What::Said(text)
}

impl<H> Link<H> {
    pub(super) fn v1_request(&mut self, cx: &Cx<'_>, service: usize) {
        let id = self.next_id(service as u64);
        let deadline = self.deadline(cx.now_ns);
        self.open_request(service, id, deadline, false);
        self.send_queue.push(service as u32);
    }

    pub(super) fn v1_connected(&mut self, cx: &Cx<'_>, peer: Option<crate::pidfd::NsPid>) {
        let ping_id = self.next_id(PING_INDEX);
        self.main_open = true;
        self.sending = false;
        self.ping_unsent = true;
        self.peer_ns = peer;
        self.violations = 0;
        self.answered = false;
        self.state = State::Handshaking {
            ping_id,
            deadline_ns: self.deadline(cx.now_ns),
        };
    }

    pub(super) fn v1_transmit(
        &mut self,
        buf: &mut [u8],
        requests: &dyn Requests,
    ) -> Option<(Conn, usize)> {
        if !self.main_open || self.sending {
            return None;
        }
        if self.ping_unsent {
            if let State::Handshaking { ping_id, .. } = self.state {
                self.ping_unsent = false;
                return self.v1_send_ping(buf, ping_id);
            }
        }
        if self.state != State::Up {
            return None;
        }
        if let Some(probe) = self.probe.filter(|p| p.unsent) {
            self.probe = Some(Probe {
                unsent: false,
                ..probe
            });
            return self.v1_send_ping(buf, probe.id);
        }
        while let Some(index) = self.send_queue.pop() {
            let index = index as usize;
            let Some(request) = self.slots[index].request.filter(|r| !r.sent) else {
                continue;
            };
            let encoded = match requests.start(index) {
                Some(mut start) => match super::unmet(start.flags, |c| self.announced(c)) {
                    Some(failure) => Err(failure),
                    None => {
                        // An agent without cgroups starts it in its own (the shell says so
                        // when the process comes: its cgroup is not the one asked for).
                        if !self.announced(wire::Capabilities::CGROUPS) {
                            start.flags.remove(wire::StartFlags::CGROUP);
                            start.cgroup = None;
                        }
                        wire::encode_start(buf, request.id, &start).map_err(EncodeFailure::V1)
                    }
                },
                None => Err(EncodeFailure::NoStart),
            };
            match encoded {
                Ok(len) => {
                    if let Some(r) = self.slots[index].request.as_mut() {
                        r.sent = true;
                    }
                    self.sending = true;
                    return Some((Conn::Main, len));
                }
                Err(error) => {
                    self.close_request(index);
                    let errno = error.errno();
                    self.note(Note::EncodeFailed {
                        protocol: Protocol::V1,
                        service: index,
                        error,
                    });
                    self.fail(index, errno, StartStage::Setup);
                }
            }
        }
        None
    }

    fn v1_send_ping(&mut self, buf: &mut [u8], id: u64) -> Option<(Conn, usize)> {
        let len = wire::encode_ping(buf, id).ok()?;
        self.sending = true;
        Some((Conn::Main, len))
    }

    pub(super) fn v1_received(&mut self, cx: &Cx<'_>, data: &[u8], oversized: bool, fds: Fds<H>) {
        if oversized {
            drop(fds);
            return self.violation(cx, What::Oversized);
        }
        if let Err(what) = self.v1_frame(cx, data, fds) {
            self.violation(cx, what);
        }
    }

    /// One packet from the agent; every fd not passed on is dropped (closed) on return.
    fn v1_frame(&mut self, cx: &Cx<'_>, packet: &[u8], mut fds: Fds<H>) -> Checked<()> {
        let frame = match wire::decode(packet) {
            Ok(frame) => frame,
            Err(e) => {
                self.note(Note::Garbage(e));
                return Err(said("undecodable frame"));
            }
        };
        let id = frame.request_id();
        if fds.ours {
            // Fewer fds than the control buffer holds, yet truncated: the kernel could not
            // install one here (EMFILE/ENFILE). Our shortage, not the agent's fault.
            if let wire::Body::Started(started) = frame.body {
                if let Ok(Answer::OnTime(index)) = self.take_request(id) {
                    if self.gated {
                        // Its `Running`/`Error` is still to come: expect it, then ignore it.
                        self.slots[index].gate = Some(Gate { id, fd: None });
                    }
                    self.note(Note::PidfdLost {
                        service: index,
                        qm_pid: started.pid,
                    });
                    self.fail(index, libc::EMFILE, StartStage::Refused);
                    self.answered = true;
                    return Ok(());
                }
            }
        }
        if fds.truncated {
            return Err(said("more file descriptors than allowed"));
        }
        match frame.body {
            wire::Body::Pong(_) if self.is_up() => match self.probe {
                Some(probe) if probe.id == id && !probe.unsent && fds.fds.is_empty() => {
                    self.probe = None;
                    // The timed-out request told the core the agent was down; it answers, so
                    // it is up again (else QM services would wait for an AgentUp that never
                    // comes while the connection stays).
                    self.events.push(Event::Up);
                    Ok(())
                }
                _ => Err(said("unexpected Pong")),
            },
            wire::Body::Pong(pong) => {
                let State::Handshaking { ping_id, .. } = self.state else {
                    return Err(said("unexpected Pong"));
                };
                if id != ping_id {
                    return Err(said("Pong with an unknown request id"));
                }
                if !fds.fds.is_empty() {
                    return Err(said("file descriptor with a Pong"));
                }
                if pong.version_major != wire::VERSION_MAJOR {
                    return Err(said("agent speaks another major version"));
                }
                self.state = State::Up;
                self.capabilities = pong.capabilities;
                self.gated = pong.version_minor >= 1
                    && pong.capabilities.contains(wire::Capabilities::GATED_EXEC);
                self.notify_budget = crate::rate::TokenBucket::new(
                    super::NOTIFY_PER_SEC,
                    super::NOTIFY_BURST,
                    cx.now_ns,
                );
                self.version = (pong.version_major, pong.version_minor);
                // The reconnect delay is not reset here: only a valid answer to a request
                // (applied when the connection ends) does, so a hostile agent cannot force
                // fast reconnects.
                self.connect_failures = 0;
                self.stats.connected += 1;
                self.note(Note::Up {
                    protocol: Protocol::V1,
                    version: self.version,
                    capabilities: pong.capabilities.bits(),
                });
                self.events.push(Event::Up);
                Ok(())
            }
            wire::Body::Started(_) if self.gate_index(id).is_some() => {
                Err(said("a second Started for one request"))
            }
            wire::Body::Started(started) if self.gated => {
                let index = self.check_started(cx, id, &mut fds, started.pid)?;
                let fd = fds
                    .fds
                    .pop()
                    .ok_or(said("Started without exactly one file descriptor"))?;
                self.slots[index].qm_pid = started.pid;
                self.note(Note::StartedGated {
                    service: index,
                    qm_pid: started.pid,
                });
                self.slots[index].gate = Some(Gate { id, fd: Some(fd) });
                Ok(())
            }
            wire::Body::Started(started) => {
                let index = self.check_started(cx, id, &mut fds, started.pid)?;
                let fd = fds
                    .fds
                    .pop()
                    .ok_or(said("Started without exactly one file descriptor"))?;
                self.close_request(index);
                self.adopt(index, fd, started.pid);
                self.answered = true;
                Ok(())
            }
            wire::Body::Running if !fds.fds.is_empty() => {
                Err(said("file descriptor with a Running"))
            }
            wire::Body::Running => match self.gate_index(id) {
                Some(index) => {
                    let gate = self.slots[index].gate.take();
                    let Some(fd) = gate.and_then(|g| g.fd) else {
                        // The pidfd was lost (EMFILE); the failure is already reported.
                        return Ok(());
                    };
                    self.close_request(index);
                    self.adopt_held(cx, index, fd, "running")?;
                    self.answered = true;
                    Ok(())
                }
                None => match self.take_request(id)? {
                    Answer::Late(index) => Err(self.late_answer(cx, index, fds, None)),
                    Answer::OnTime(index) => {
                        self.fail(index, libc::EBADMSG, StartStage::Refused);
                        Err(said("Running before Started"))
                    }
                },
            },
            wire::Body::Error(error) => match self.gate_index(id) {
                Some(index) => {
                    let held = self.slots[index].gate.take().and_then(|g| g.fd);
                    if !fds.fds.is_empty() {
                        if let Some(fd) = held {
                            self.close_request(index);
                            let _ = self.adopt_held(cx, index, fd, "bad-error");
                        }
                        return Err(said("file descriptor with an Error"));
                    }
                    let Some(fd) = held else {
                        return Ok(());
                    };
                    // The agent says the program did not run (the child exited 127 and was
                    // reaped). Kill it anyway, so that a lying agent cannot leave a process
                    // behind.
                    self.io.push(Io::Kill {
                        handle: fd.handle,
                        service: index,
                        qm_pid: 0,
                        late: false,
                    });
                    self.close_request(index);
                    self.spawn_error(index, &error);
                    self.answered = true;
                    Ok(())
                }
                None => {
                    let index = match self.take_request(id)? {
                        Answer::OnTime(index) => index,
                        Answer::Late(index) => return Err(self.late_answer(cx, index, fds, None)),
                    };
                    if !fds.fds.is_empty() {
                        self.fail(index, libc::EBADMSG, StartStage::Refused);
                        return Err(said("file descriptor with an Error"));
                    }
                    self.spawn_error(index, &error);
                    self.answered = true;
                    Ok(())
                }
            },
            wire::Body::Notify(_) if !fds.fds.is_empty() => {
                Err(said("file descriptor with a Notify"))
            }
            wire::Body::Notify(_)
                if self.state != State::Up
                    || !self.announced(wire::Capabilities::NOTIFY_FORWARD) =>
            {
                Err(said(
                    "Notify from an agent that did not announce NOTIFY_FORWARD",
                ))
            }
            wire::Body::Notify(notify) => {
                if !self.notify_budget.take(cx.now_ns) {
                    return Err(said("Notify frames beyond the rate limit"));
                }
                let len = notify.text.len().min(self.notify_text.len());
                self.notify_text[..len].copy_from_slice(&notify.text[..len]);
                self.notify_len = len;
                self.events.push(Event::Notify { qm_pid: notify.pid });
                Ok(())
            }
            wire::Body::Start(_) | wire::Body::Ping => {
                Err(said("a frame only the orchestrator sends"))
            }
        }
    }

    /// Finds and clears the request with this id (sent on this connection). `Late(index)`: the
    /// id of a request that already timed out.
    fn take_request(&mut self, id: u64) -> Checked<Answer> {
        if self.state != State::Up {
            return Err(said("answer before the handshake"));
        }
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let slot = self.slots.get(index).ok_or(said("unknown request id"))?;
        match slot.request {
            Some(r) if r.id == id && r.sent => {
                self.close_request(index);
                Ok(Answer::OnTime(index))
            }
            _ if slot.abandoned == Some(id) => Ok(Answer::Late(index)),
            _ => Err(said("unknown request id")),
        }
    }

    /// The service whose gate waits for `Running`/`Error` of this request id.
    fn gate_index(&self, id: u64) -> Option<usize> {
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let slot = self.slots.get(index)?;
        let gate = slot.gate.as_ref()?;
        let open = slot.request.is_some_and(|r| r.id == id);
        (gate.id == id && (open || gate.fd.is_none())).then_some(index)
    }

    /// A `Started`: the request must be open and sent, the packet must carry exactly one
    /// pidfd of a process that is neither supervised nor held, in the agent's PID namespace.
    /// The request stays open (the caller closes it, or holds it for `Running`).
    fn check_started(
        &mut self,
        cx: &Cx<'_>,
        id: u64,
        fds: &mut Fds<H>,
        qm_pid: i32,
    ) -> Checked<usize> {
        if self.state != State::Up {
            return Err(said("answer before the handshake"));
        }
        let index = (id & REQUEST_INDEX_MASK) as usize;
        let slot = self.slots.get(index).ok_or(said("unknown request id"))?;
        match slot.request {
            Some(r) if r.id == id && r.sent => {}
            _ if slot.abandoned == Some(id) => {
                let taken = std::mem::replace(fds, Fds::none());
                return Err(self.late_answer(cx, index, taken, Some(qm_pid)));
            }
            _ => return Err(said("unknown request id")),
        }
        if fds.fds.len() != wire::STARTED_FD_COUNT {
            self.close_request(index);
            self.fail(index, libc::EBADMSG, StartStage::Refused);
            return Err(said("Started without exactly one file descriptor"));
        }
        let class = fds.fds[0].class;
        let checked = self
            .check_pidfd(cx, &class)
            .and_then(|_| Self::check_namespace(&class, self.peer_ns, Some(qm_pid)));
        if let Err(what) = checked {
            self.close_request(index);
            self.fail(index, libc::EBADF, StartStage::Refused);
            return Err(what);
        }
        Ok(index)
    }

    /// Supervises a held pidfd (after `Running`, a timeout or a lost connection), after
    /// checking once more that no service has its process.
    fn adopt_held(
        &mut self,
        cx: &Cx<'_>,
        index: usize,
        fd: PeerFd<H>,
        why: &'static str,
    ) -> Checked<()> {
        if let Err(what) = self.check_pidfd(cx, &fd.class) {
            self.fail(index, libc::EBADF, StartStage::Refused);
            return Err(what);
        }
        let qm_pid = self.slots[index].qm_pid;
        if why != "running" {
            self.note(Note::HeldAdopted {
                service: index,
                qm_pid,
                why,
            });
        }
        self.adopt(index, fd, qm_pid);
        Ok(())
    }

    /// An `Error` answering a request: noted, and the core backs off.
    fn spawn_error(&mut self, index: usize, error: &wire::ErrorFrame<'_>) {
        let stage = match error.stage {
            wire::ErrorStage::Exec => StartStage::Exec,
            _ => StartStage::Setup,
        };
        self.agent_text.set(error.text);
        self.note(Note::SpawnError {
            service: index,
            stage: error.stage,
            errno: error.errno,
        });
        self.fail(index, error.errno, stage);
    }

    /// A late answer to a request that timed out: kill the process it reports (after the same
    /// checks as any pidfd), then treat the lateness as misbehaviour.
    fn late_answer(
        &mut self,
        cx: &Cx<'_>,
        index: usize,
        mut fds: Fds<H>,
        claimed: Option<i32>,
    ) -> What {
        self.slots[index].abandoned = None;
        if let Some(fd) = fds.fds.pop() {
            let checked = self
                .check_pidfd(cx, &fd.class)
                .and_then(|_| Self::check_namespace(&fd.class, self.peer_ns, claimed));
            if checked.is_ok() && fds.fds.is_empty() {
                self.io.push(Io::Kill {
                    handle: fd.handle,
                    service: index,
                    qm_pid: claimed.unwrap_or(0),
                    late: true,
                });
            }
        }
        said("answer after the request timed out")
    }

    /// Requests past their deadline fail (the core backs off). Their ids are remembered: a late
    /// `Started` is then killed instead of leaving an unsupervised process in QM. A `Ping`
    /// checks that the agent still answers at all; no `Pong` in time drops the connection.
    pub(super) fn v1_expire_requests(&mut self, cx: &Cx<'_>) {
        let ms = self.timeout_ms();
        while let Some(index) = self.order.oldest() {
            let Some(request) = self.slots[index]
                .request
                .filter(|r| cx.now_ns >= r.deadline_ns)
            else {
                break;
            };
            self.close_request(index);
            self.slots[index].abandoned = Some(request.id);
            let held = match self.slots[index].gate.take() {
                Some(gate) if gate.id == request.id => gate.fd,
                other => {
                    self.slots[index].gate = other;
                    None
                }
            };
            if let Some(fd) = held {
                // `Started` came but `Running` did not: the process is held, not dropped.
                let _ = self.adopt_held(cx, index, fd, "running-timeout");
                continue;
            }
            self.note(Note::RequestTimeout {
                protocol: Protocol::V1,
                service: index,
                timeout_ms: ms,
            });
            self.fail(index, libc::ETIMEDOUT, StartStage::Agent);
        }
        if self.probe.is_none() {
            let id = self.next_id(PING_INDEX);
            self.probe = Some(Probe {
                id,
                deadline_ns: self.deadline(cx.now_ns),
                unsent: true,
            });
        }
    }

    /// A protocol violation: note the first of this connection, then drop it.
    pub(super) fn violation(&mut self, cx: &Cx<'_>, what: What) {
        self.violations += 1;
        if self.violations == 1 {
            self.note_misbehaviour(cx.now_ns, what);
        }
        self.drop_link(cx, DownReason::Misbehaved);
    }

    /// Closes the connection, fails every request in flight (supervising held pidfds), and
    /// schedules a reconnect.
    pub(super) fn drop_link(&mut self, cx: &Cx<'_>, reason: DownReason) {
        let was_up = self.state == State::Up;
        if !std::mem::take(&mut self.quiet) {
            self.note(Note::Down {
                protocol: self.protocol,
                reason,
            });
        }
        self.stats.dropped += 1;
        if self.main_open {
            self.main_open = false;
            self.io.push(Io::Close { conn: Conn::Main });
        }
        self.sending = false;
        self.ping_unsent = false;
        self.send_queue.clear();
        if self.violations == 0 && self.answered {
            // A healthy connection ended (e.g. the agent restarted): reconnect quickly.
            self.reconnect_delay = self.config.reconnect_initial;
        }
        self.answered = false;
        self.fail_all(cx);
        if was_up {
            self.events.push(Event::Down);
        }
        self.schedule_retry(cx);
    }

    /// Answers every request in flight with a failure of stage `Agent`; a held pidfd is
    /// supervised instead (the process exists; it execs only if the agent sent the go-ahead).
    fn fail_all(&mut self, cx: &Cx<'_>) {
        self.probe = None;
        for index in 0..self.slots.len() {
            self.slots[index].abandoned = None;
            let gate = self.slots[index].gate.take();
            let Some(request) = self.close_request(index) else {
                continue;
            };
            if let Some(fd) = gate.filter(|g| g.id == request.id).and_then(|g| g.fd) {
                if self.adopt_held(cx, index, fd, "connection-lost").is_ok() {
                    continue;
                }
            }
            self.fail(index, libc::ECONNRESET, StartStage::Agent);
        }
    }
}
