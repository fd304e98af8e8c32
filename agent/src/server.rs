//! The event loop: one thread, `poll(2)` over a fixed array of fds.
//!
//! Why plain `poll` and not the `ring` crate: the agent's work per event is a
//! synchronous `clone3` up to the child's gate (or its exec, ungated), a
//! `recvmsg` and a `sendmsg`; it has no timers beyond a deadline per
//! connection and per pending exec, and at most [`CONNECTIONS_MAX`] + 3 +
//! [`PENDING_EXECS_MAX`] fds to watch. `poll` over that fixed array costs nothing
//! measurable next to the spawn itself, works on every kernel and in every
//! container (io_uring may be disabled by sysctl or seccomp in QM), and keeps
//! the agent's code small. The orchestrator, which keeps many pidfds and
//! timeouts in flight, is where the ring pays off.
//!
//! Fairness: each wake-up handles at most one v1 packet per connection (and
//! the complete frames already buffered for a v0.2 connection), so a client
//! that floods cannot starve the others; a client that stalls costs nothing
//! but its slot until its read deadline. A gated child whose exec has not
//! been confirmed is watched through its report pipe (`pending.rs`), so a
//! client that stops its child at the gate delays nobody else.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use holden::spawn::SpawnSpec;
use holden::wire::v1::Capabilities;

use crate::env::InheritedEnv;
use crate::limits::{CONNECTIONS_MAX, PENDING_EXECS_MAX, V02_RECV_BYTES, V1_RECV_BYTES};
use crate::listen::{Flavor, Listener};
use crate::log::{info, notice, warning};
use crate::notify::{Datagram, NotifySocket};
use crate::peer::{AllowList, Peer};
use crate::pending::PendingExec;
use crate::request::spec_limits;
use crate::signals::{IGNORED, TERMINATING};
use holden::sys::poll::{self, PollFd};
use holden::sys::signal::SignalFd;
use holden::sys::socket::{self, PeerCred};

/// Connections accepted per listener per wake-up.
const ACCEPTS_PER_WAKE_MAX: usize = 16;

/// Packets read and discarded from a refused connection before closing it.
const REFUSE_DRAIN_MAX: usize = 16;

/// Fixed entries in the poll array: the signalfd, up to two listeners and the
/// notify socket.
const POLL_FIXED_MAX: usize = 4;

/// Largest reply of either protocol.
const SEND_BYTES: usize = if holden::wire::v1::FRAME_LEN_MAX > holden::wire::v02::FRAME_LEN_MAX {
    holden::wire::v1::FRAME_LEN_MAX
} else {
    holden::wire::v02::FRAME_LEN_MAX
};

/// Settings of the loop.
pub struct Settings {
    pub read_timeout: Duration,
    /// Deadline of a gated exec, from its go-ahead.
    pub exec_timeout: Duration,
    pub allow: AllowList,
}

/// One client connection.
pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub flavor: Flavor,
    pub peer: Peer,
    /// Connection number, for logs.
    pub serial: u64,
    /// When the connection is dropped unless it makes progress (None: a v1
    /// connection that has sent a valid frame is kept while idle).
    pub deadline: Option<Instant>,
    /// Bytes buffered in this slot's v0.2 reassembly buffer.
    pub v02_len: usize,
    /// The highest minor version of the peer's v1 frames so far: from 2 on it gets `Notify`.
    pub minor: u8,
}

/// What to do with a connection after handling an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Keep,
    Close,
}

#[derive(Clone, Copy)]
enum Owner {
    Signals,
    Listener(usize),
    Conn(usize),
    Exec(usize),
    Notify,
}

pub struct Server {
    listeners: Vec<Listener>,
    signals: SignalFd,
    pub(crate) conns: Vec<Option<Conn>>,
    /// One buffer per slot for v0.2 stream reassembly (empty when there is no
    /// v0.2 listener).
    pub(crate) v02_bufs: Vec<Box<[u8]>>,
    pub(crate) recv_buf: Box<[u8]>,
    pub(crate) send_buf: Box<[u8]>,
    pub(crate) spec: SpawnSpec,
    pub(crate) inherited: InheritedEnv,
    pub(crate) settings: Settings,
    pub(crate) capabilities: Capabilities,
    /// Gated starts whose exec is not confirmed yet (fixed size).
    pub(crate) pending: Vec<Option<PendingExec>>,
    /// The socket whose datagrams are forwarded as `Notify` (wire 1.2).
    pub(crate) notify: Option<NotifySocket>,
    /// Where started processes get a cgroup of their own (`StartFlags::CGROUP`, wire 1.2).
    pub(crate) cgroups: Option<holden::cgroup::Hierarchy>,
    pollfds: Vec<PollFd>,
    owners: Vec<Owner>,
    serial_next: u64,
    stop_signal: Option<i32>,
    /// Whether the switch from clone3 to clone(CLONE_PIDFD) was logged.
    clone_fallback_logged: bool,
}

/// A connection's label in log lines: `v1 conn 3 (uid 0, pid 1234)`.
pub(crate) struct Label {
    pub flavor: Flavor,
    pub serial: u64,
    pub peer: Peer,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conn {} (uid {}, pid {})",
            self.flavor.name(),
            self.serial,
            self.peer.uid,
            self.peer.pid
        )
    }
}

impl Conn {
    pub fn label(&self) -> Label {
        Label {
            flavor: self.flavor,
            serial: self.serial,
            peer: self.peer,
        }
    }
}

impl Server {
    /// Allocates everything the loop will ever use.
    pub fn new(
        listeners: Vec<Listener>,
        signals: SignalFd,
        inherited: InheritedEnv,
        settings: Settings,
        notify: Option<NotifySocket>,
        cgroups: Option<holden::cgroup::Hierarchy>,
    ) -> Server {
        let has_v02 = listeners.iter().any(|l| l.flavor == Flavor::V02);
        let mut capabilities = Capabilities::EXIT_STATUS_VIA_PIDFD
            | Capabilities::CLONE3_PIDFD
            | Capabilities::GATED_EXEC
            | Capabilities::EXEC_ENV;
        if has_v02 {
            capabilities |= Capabilities::LEGACY_LISTENER;
        }
        if notify.is_some() {
            capabilities |= Capabilities::NOTIFY_FORWARD;
        }
        if cgroups.is_some() {
            capabilities |= Capabilities::CGROUPS;
        }
        let v02_bufs = (0..CONNECTIONS_MAX)
            .map(|_| {
                let len = if has_v02 { V02_RECV_BYTES } else { 0 };
                vec![0u8; len].into_boxed_slice()
            })
            .collect();
        let spec = SpawnSpec::with_limits(spec_limits(&inherited));
        Server {
            listeners,
            signals,
            conns: (0..CONNECTIONS_MAX).map(|_| None).collect(),
            v02_bufs,
            recv_buf: vec![0u8; V1_RECV_BYTES].into_boxed_slice(),
            send_buf: vec![0u8; SEND_BYTES].into_boxed_slice(),
            spec,
            inherited,
            settings,
            capabilities,
            pending: (0..PENDING_EXECS_MAX).map(|_| None).collect(),
            notify,
            cgroups,
            pollfds: Vec::with_capacity(POLL_FIXED_MAX + CONNECTIONS_MAX + PENDING_EXECS_MAX),
            owners: Vec::with_capacity(POLL_FIXED_MAX + CONNECTIONS_MAX + PENDING_EXECS_MAX),
            serial_next: 1,
            stop_signal: None,
            clone_fallback_logged: false,
        }
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    pub fn notify_socket(&self) -> Option<&NotifySocket> {
        self.notify.as_ref()
    }

    /// Serves until SIGTERM or SIGINT; returns the signal.
    pub fn run(&mut self) -> io::Result<i32> {
        loop {
            self.build_poll_set();
            let timeout_ms = self.poll_timeout_ms(Instant::now());
            if poll::poll(&mut self.pollfds, timeout_ms)? == 0 {
                self.expire(Instant::now());
                continue;
            }
            for index in 0..self.pollfds.len() {
                let revents = self.pollfds[index].revents;
                if revents == 0 {
                    continue;
                }
                match self.owners[index] {
                    Owner::Signals => self.on_signal()?,
                    Owner::Listener(l) => self.accept_ready(l),
                    Owner::Conn(slot) => self.conn_ready(slot, revents),
                    Owner::Exec(index) => self.exec_ready(index, None),
                    Owner::Notify => self.notify_ready(),
                }
            }
            self.expire(Instant::now());
            if let Some(signal) = self.stop_signal {
                return Ok(signal);
            }
        }
    }

    /// Spawns from the filled spec; logs once when clone3 turned out to be
    /// unavailable and the race-free clone(CLONE_PIDFD) fallback is in use.
    pub(crate) fn spawn_from_spec(
        &mut self,
    ) -> Result<holden::spawn::Spawned, holden::spawn::SpawnError> {
        let result = holden::spawn::spawn(&self.spec);
        if !self.clone_fallback_logged && holden::spawn::clone3_fallback_active() {
            self.clone_fallback_logged = true;
            notice!("clone3 is refused here (ENOSYS, e.g. seccomp): using clone(CLONE_PIDFD)");
        }
        result
    }

    /// Like [`Server::spawn_from_spec`], but the child waits at a gate before
    /// `execve` until released (wire v1.1 gated exec).
    pub(crate) fn spawn_gated_from_spec(
        &mut self,
    ) -> Result<holden::spawn::Gated, holden::spawn::SpawnError> {
        let result = holden::spawn::spawn_gated(&self.spec);
        if !self.clone_fallback_logged && holden::spawn::clone3_fallback_active() {
            self.clone_fallback_logged = true;
            notice!("clone3 is refused here (ENOSYS, e.g. seccomp): using clone(CLONE_PIDFD)");
        }
        result
    }

    /// Removes the socket files the agent created (clean exit only).
    pub fn remove_socket_files(&self) {
        for listener in &self.listeners {
            listener.remove_file();
        }
        if let Some(notify) = &self.notify {
            notify.remove_file();
        }
    }

    /// Datagrams on the notify socket: each forwarded as `Notify` to every v1 connection
    /// of minor 2+, without waiting (a connection whose socket buffer is full misses it:
    /// a notification is not worth a connection).
    fn notify_ready(&mut self) {
        let Some(mut notify) = self.notify.take() else {
            return;
        };
        for _ in 0..crate::notify::READS_PER_WAKE_MAX {
            let frame = match notify.next(&mut self.recv_buf, &mut self.send_buf) {
                None => break,
                Some(Datagram::Dropped) => continue,
                Some(Datagram::Forward(frame)) => frame,
            };
            for conn in self.conns.iter().flatten() {
                if conn.flavor == Flavor::V1 && conn.minor >= 2 {
                    let _ = socket::send(conn.fd.as_fd(), frame, true);
                }
            }
        }
        notify.say_drops();
        self.notify = Some(notify);
    }

    fn build_poll_set(&mut self) {
        self.pollfds.clear();
        self.owners.clear();
        let entry = |fd: RawFd| PollFd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.pollfds.push(entry(self.signals.fd().as_raw_fd()));
        self.owners.push(Owner::Signals);
        for (i, listener) in self.listeners.iter().enumerate() {
            self.pollfds.push(entry(listener.fd().as_raw_fd()));
            self.owners.push(Owner::Listener(i));
        }
        for (slot, conn) in self.conns.iter().enumerate() {
            if let Some(conn) = conn {
                self.pollfds.push(entry(conn.fd.as_raw_fd()));
                self.owners.push(Owner::Conn(slot));
            }
        }
        for (index, pending) in self.pending.iter().enumerate() {
            if let Some(pending) = pending {
                // End of file on a pipe polls POLLHUP, the failure report POLLIN.
                self.pollfds
                    .push(entry(pending.released.report_fd().as_raw_fd()));
                self.owners.push(Owner::Exec(index));
            }
        }
        // Last: a process whose exec is reported in the same wake-up as its first
        // notification has its `Running` sent before its `Notify`.
        if let Some(notify) = &self.notify {
            self.pollfds.push(entry(notify.fd().as_raw_fd()));
            self.owners.push(Owner::Notify);
        }
    }

    fn poll_timeout_ms(&self, now: Instant) -> libc::c_int {
        let conns = self.conns.iter().flatten().filter_map(|c| c.deadline).min();
        let next = match (conns, self.pending_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(now);
                // Round up so that the deadline has passed when poll returns.
                let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        }
    }

    fn on_signal(&mut self) -> io::Result<()> {
        while let Some(signal) = self.signals.read()? {
            if TERMINATING.contains(&signal) {
                notice!("signal {signal} received: stopping (started processes keep running)");
                self.stop_signal = Some(signal);
            } else if IGNORED.contains(&signal) {
                info!(
                    "signal {signal} received: ignored (the agent has no configuration to reload)"
                );
            }
        }
        Ok(())
    }

    fn accept_ready(&mut self, listener: usize) {
        for _ in 0..ACCEPTS_PER_WAKE_MAX {
            let l = &self.listeners[listener];
            let flavor = l.flavor;
            let fd = match socket::accept(l.fd(), true) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(error) => {
                    match error.raw_os_error() {
                        Some(libc::ECONNABORTED) => continue,
                        Some(libc::EINTR) => {}
                        _ => warning!("{} listener: accept: {error}", flavor.name()),
                    }
                    return;
                }
            };
            self.admit(fd, flavor);
        }
    }

    /// Checks the peer and finds a slot, or tells the peer why not.
    fn admit(&mut self, fd: OwnedFd, flavor: Flavor) {
        let serial = self.serial_next;
        self.serial_next += 1;
        let peer = match PeerCred::of(fd.as_fd()) {
            Ok(peer) => peer,
            Err(error) => {
                warning!(
                    "{} conn {serial}: SO_PEERCRED: {error}; closed",
                    flavor.name()
                );
                return;
            }
        };
        let label = Label {
            flavor,
            serial,
            peer,
        };
        if !self.settings.allow.allows(peer.uid) {
            let mut text = crate::text::FixedBuf::<256>::new();
            let _ = fmt::Write::write_fmt(
                &mut text,
                format_args!(
                    "uid {} may not use holden-agent (allowed: root, the agent's uid and \
                     --allow-uid)",
                    peer.uid
                ),
            );
            warning!(
                "{label}: refused: uid {} is not on the allow-list",
                peer.uid
            );
            self.refuse(
                &fd,
                flavor,
                holden::wire::v1::ErrorStage::Permission,
                libc::EACCES,
                text.as_bytes(),
            );
            return;
        }
        let Some(slot) = self.conns.iter().position(Option::is_none) else {
            warning!("{label}: refused: {CONNECTIONS_MAX} connections already open");
            self.refuse(
                &fd,
                flavor,
                holden::wire::v1::ErrorStage::Limit,
                libc::EBUSY,
                b"holden-agent has too many open connections; try again later",
            );
            return;
        };
        if flavor == Flavor::V1 {
            info!("{label}: connected");
        }
        self.conns[slot] = Some(Conn {
            fd,
            flavor,
            peer,
            serial,
            deadline: Some(Instant::now() + self.settings.read_timeout),
            v02_len: 0,
            minor: 0,
        });
    }

    /// Sends one error (request id 0 for v1) on a connection about to close.
    fn refuse(
        &mut self,
        fd: &OwnedFd,
        flavor: Flavor,
        stage: holden::wire::v1::ErrorStage,
        errno: i32,
        text: &[u8],
    ) {
        let len = match flavor {
            Flavor::V1 => {
                holden::wire::v1::encode_error(&mut self.send_buf, 0, errno, stage, text).ok()
            }
            Flavor::V02 => holden::wire::v02::encode_error(&mut self.send_buf, text).ok(),
        };
        if let Some(len) = len {
            let _ = crate::fdpass::send(fd.as_fd(), &self.send_buf[..len], None);
        }
        // Closing with unread requests queued would make the peer's next
        // read fail with ECONNRESET before it sees the reason: drain what
        // has arrived (bounded) first.
        for _ in 0..REFUSE_DRAIN_MAX {
            match crate::fdpass::recv(fd.as_fd(), &mut self.recv_buf, flavor == Flavor::V1) {
                Ok(crate::fdpass::Recv::Data(_)) => continue,
                _ => break,
            }
        }
    }

    fn conn_ready(&mut self, slot: usize, revents: libc::c_short) {
        let Some(conn) = self.conns[slot].as_ref() else {
            return;
        };
        let next = if revents & libc::POLLIN != 0 {
            match conn.flavor {
                Flavor::V1 => self.v1_readable(slot),
                Flavor::V02 => self.v02_readable(slot),
            }
        } else {
            // POLLHUP/POLLERR without data: the peer is gone.
            Next::Close
        };
        if next == Next::Close {
            self.close(slot, "closed");
        }
    }

    pub(crate) fn close(&mut self, slot: usize, why: &str) {
        if let Some(serial) = self.conns[slot].as_ref().map(|c| c.serial) {
            self.forget_pending(slot, serial);
        }
        if let Some(conn) = self.conns[slot].take() {
            if conn.flavor == Flavor::V1 || why != "closed" {
                info!("{}: {why}", conn.label());
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        self.expire_pending(now);
        for slot in 0..self.conns.len() {
            let expired =
                matches!(&self.conns[slot], Some(c) if c.deadline.is_some_and(|d| d <= now));
            if expired {
                let ms = self.settings.read_timeout.as_millis();
                let mut why = crate::text::FixedBuf::<96>::new();
                let _ = fmt::Write::write_fmt(
                    &mut why,
                    format_args!("dropped: no complete frame within the {ms} ms read timeout"),
                );
                let why = std::str::from_utf8(why.as_bytes()).unwrap_or("dropped: read timeout");
                self.close(slot, why);
            }
        }
    }
}
