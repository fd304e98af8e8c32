//! Gated starts (wire 1.1) whose exec is not confirmed yet.
//!
//! After `Started` + pidfd went out, the agent gives the child its go-ahead
//! ([`holden::spawn::Gated::open`]) and does **not** wait: the child's report
//! pipe joins the poll set, and the loop goes on serving every connection.
//! When the pipe reaches end of file (`execve` passed its point of no return)
//! the agent sends `Running`; when it carries the child's failure report,
//! `Error` stage `exec`. A child that does neither within `--exec-timeout-ms`
//! (someone stopped it at its gate, or its `execve` hangs) is given up: its
//! go-ahead is taken back if it has not read it, it is killed, and the request
//! gets `Error` stage `exec`, errno `ETIMEDOUT`.
//!
//! The table is fixed at start-up ([`PENDING_EXECS_MAX`] entries, at most
//! [`PENDING_EXECS_PER_CONN_MAX`] per connection); a gated `Start` that finds
//! it full is refused with `Error` stage `limit`, errno `EAGAIN`.

use std::fmt::Write as _;
use std::time::Instant;

use holden::spawn::{Finish, Released, SpawnError, SpawnStage, Withdrawn};
use holden::wire::v1::encode_running;

use crate::limits::{PENDING_EXECS_MAX, PENDING_EXECS_PER_CONN_MAX, PENDING_PROGRAM_BYTES};
use crate::request::Subject;
use crate::server::{Next, Server};
use crate::text::{Errno, Escaped, FixedBuf};

/// One gated start waiting for its exec.
#[derive(Debug)]
pub(crate) struct PendingExec {
    pub released: Released,
    /// Its connection: slot and serial (a slot is reused by later connections).
    pub slot: usize,
    pub serial: u64,
    pub request_id: u64,
    /// When the agent gives up on the exec.
    pub deadline: Instant,
    /// The program, for the log line and the error text (cut to
    /// [`PENDING_PROGRAM_BYTES`]).
    program: [u8; PENDING_PROGRAM_BYTES],
    program_len: usize,
}

impl PendingExec {
    pub fn new(
        released: Released,
        slot: usize,
        serial: u64,
        request_id: u64,
        deadline: Instant,
        program: &[u8],
    ) -> PendingExec {
        let mut copy = [0u8; PENDING_PROGRAM_BYTES];
        let len = program.len().min(PENDING_PROGRAM_BYTES);
        copy[..len].copy_from_slice(&program[..len]);
        PendingExec {
            released,
            slot,
            serial,
            request_id,
            deadline,
            program: copy,
            program_len: len,
        }
    }
}

/// Why a gated start cannot be taken now.
pub(crate) enum Full {
    Connection,
    Agent,
}

impl Server {
    /// A free entry for one more pending exec of the connection in `slot`.
    pub(crate) fn pending_entry(&self, slot: usize) -> Result<usize, Full> {
        let serial = self.conns[slot].as_ref().map_or(0, |c| c.serial);
        let mine = self
            .pending
            .iter()
            .flatten()
            .filter(|p| p.slot == slot && p.serial == serial)
            .count();
        if mine >= PENDING_EXECS_PER_CONN_MAX {
            return Err(Full::Connection);
        }
        self.pending
            .iter()
            .position(Option::is_none)
            .ok_or(Full::Agent)
    }

    /// The text of a refused gated start.
    pub(crate) fn full_text(full: &Full) -> FixedBuf<{ holden::wire::v1::ERROR_TEXT_LEN_MAX }> {
        let mut text = FixedBuf::new();
        let _ = match full {
            Full::Connection => write!(
                text,
                "{PENDING_EXECS_PER_CONN_MAX} gated starts of this connection still wait for \
                 their exec (at most {PENDING_EXECS_PER_CONN_MAX} per connection); nothing was \
                 started, send it again after a Running or Error"
            ),
            Full::Agent => write!(
                text,
                "{PENDING_EXECS_MAX} gated starts still wait for their exec (at most \
                 {PENDING_EXECS_MAX} in the agent); nothing was started, try again later"
            ),
        };
        text
    }

    /// The pending exec `index` polled ready (or its deadline passed: `now`).
    pub(crate) fn exec_ready(&mut self, index: usize, now: Option<Instant>) {
        let Some(pending) = self.pending[index].take() else {
            return;
        };
        let PendingExec {
            released,
            slot,
            serial,
            request_id,
            deadline,
            program,
            program_len,
        } = pending;
        let pid = released.pid;
        let outcome = match released.try_finish() {
            Finish::Done(result) => Ok(result),
            Finish::Pending(released) if now.is_some_and(|now| deadline <= now) => {
                Err(released.withdraw())
            }
            Finish::Pending(released) => {
                self.pending[index] = Some(PendingExec {
                    released,
                    slot,
                    serial,
                    request_id,
                    deadline,
                    program,
                    program_len,
                });
                return;
            }
        };
        let live = self.conns[slot]
            .as_ref()
            .is_some_and(|c| c.serial == serial);
        if !live {
            // Its connection is gone (and the entry should be too): nothing to tell anyone.
            return;
        }
        let program = &program[..program_len];
        let next = match outcome {
            Ok(Ok(())) => {
                let len = encode_running(&mut self.send_buf, request_id).unwrap_or(0);
                self.log_conn(
                    slot,
                    format_args!("request {request_id}: pid {pid} running"),
                );
                self.v1_send(slot, len, None)
            }
            Ok(Err(error)) => {
                let subject = Subject {
                    program,
                    ..Subject::default()
                };
                self.v1_failure(slot, request_id, error, subject)
            }
            Err(withdrawn) => self.exec_timed_out(slot, request_id, pid, program, withdrawn),
        };
        if next == Next::Close {
            self.close(slot, "closed");
        }
    }

    /// Gave up on an exec at its deadline: `Error` stage exec, `ETIMEDOUT`.
    fn exec_timed_out(
        &mut self,
        slot: usize,
        request_id: u64,
        pid: libc::pid_t,
        program: &[u8],
        withdrawn: Withdrawn,
    ) -> Next {
        let ms = self.settings.exec_timeout.as_millis();
        let shown = Escaped(program);
        let mut text = FixedBuf::<{ holden::wire::v1::ERROR_TEXT_LEN_MAX }>::new();
        let stage = match withdrawn {
            Withdrawn::AtGate => {
                let _ = write!(
                    text,
                    "gate of \"{shown}\": the process did not take its go-ahead within {ms} ms \
                     (stopped?); go-ahead withdrawn and process killed, it never called execve"
                );
                SpawnStage::Gate
            }
            Withdrawn::PastGate => {
                let _ = write!(
                    text,
                    "exec \"{shown}\": execve did not complete within {ms} ms of the go-ahead \
                     (stopped?); process killed (SIGKILL) before the program could run"
                );
                SpawnStage::Exec
            }
        };
        let error = SpawnError::new(stage, libc::ETIMEDOUT);
        self.log_conn(
            slot,
            format_args!(
                "request {request_id}: pid {pid} -> error {}: {} (errno {}): {}",
                error.stage,
                Errno(error.errno),
                error.errno,
                Escaped(text.as_bytes())
            ),
        );
        self.v1_reply_text(slot, request_id, error, text.as_bytes())
    }

    /// Forgets the pending execs of the connection in `slot` (it is closing):
    /// their children keep their go-ahead and exec; nobody is told.
    pub(crate) fn forget_pending(&mut self, slot: usize, serial: u64) {
        for entry in self.pending.iter_mut() {
            if entry
                .as_ref()
                .is_some_and(|p| p.slot == slot && p.serial == serial)
            {
                let pending = entry.take();
                if let (Some(pending), Some(conn)) = (pending, self.conns[slot].as_ref()) {
                    crate::log::info!(
                        "{}: request {}: pid {}: connection closing before its exec was \
                         confirmed; the process keeps its go-ahead",
                        conn.label(),
                        pending.request_id,
                        pending.released.pid
                    );
                }
            }
        }
    }

    /// Earliest deadline of a pending exec.
    pub(crate) fn pending_deadline(&self) -> Option<Instant> {
        self.pending.iter().flatten().map(|p| p.deadline).min()
    }

    /// Gives up on every pending exec whose deadline passed.
    pub(crate) fn expire_pending(&mut self, now: Instant) {
        for index in 0..self.pending.len() {
            if self.pending[index]
                .as_ref()
                .is_some_and(|p| p.deadline <= now)
            {
                self.exec_ready(index, Some(now));
            }
        }
    }
}
