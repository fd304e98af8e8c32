//! The ring: slots, operations, completions.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use arrayvec::ArrayVec;
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use crate::arena::{cmsg_space, Arena};
use crate::user_data::{UserData, GENERATION_MASK};
use crate::{setup, EnterError, Errno, Full, Limits, OpError, SetupError, FDS_PER_MSG_MAX};

/// How often one `submit_and_wait` retries `io_uring_enter` after EINTR before returning.
const ENTER_EINTR_RETRIES_MAX: u32 = 4;
/// Rounds of 10 ms that `Drop` waits for outstanding operations before leaking the buffers.
const DROP_DRAIN_ROUNDS_MAX: u32 = 200;
const DROP_DRAIN_ROUND: Duration = Duration::from_millis(10);

/// Identifies a slot: its index and the generation it had when it was handed out. An id whose
/// slot was removed is stale and every call with it fails or returns nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    /// Index in `0..Limits::slots`, stable while the slot lives (use it to index your own table).
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// Generation (24 bits); changes every time the slot index is freed.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// The kind of an operation. Each may be outstanding at most once per slot at any time; all
/// kinds may be outstanding at once on the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpTag {
    /// One-shot `POLL_ADD`; result: the `revents` mask.
    Poll = 0,
    /// `RECVMSG`; result: bytes received (0: peer closed). Data: [`Ring::received`], fds:
    /// [`Ring::take_fds`].
    RecvMsg = 1,
    /// `SENDMSG`; result: bytes sent.
    SendMsg = 2,
    /// `ACCEPT`; result: the new fd's number, the fd itself: [`Ring::take_accepted`].
    Accept = 3,
    /// `READ`; result: bytes read. Data: [`Ring::read_data`].
    Read = 4,
    /// `TIMEOUT`; result `Ok(0)` when it fired, `Err(Errno::CANCELED)` when cancelled.
    Timeout = 5,
}

impl OpTag {
    /// Every tag, in numeric order.
    pub const ALL: [OpTag; 6] = [
        OpTag::Poll,
        OpTag::RecvMsg,
        OpTag::SendMsg,
        OpTag::Accept,
        OpTag::Read,
        OpTag::Timeout,
    ];

    pub(crate) fn from_u8(value: u8) -> Option<OpTag> {
        OpTag::ALL.get(value as usize).copied()
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The operations whose entry names the slot's attached fd (all but `Timeout`).
const FD_OPS: u8 = OpTag::Poll.bit()
    | OpTag::RecvMsg.bit()
    | OpTag::SendMsg.bit()
    | OpTag::Accept.bit()
    | OpTag::Read.bit();

/// When a timeout fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// After this long from submission.
    After(Duration),
    /// At this CLOCK_MONOTONIC time, in nanoseconds (see [`crate::now_ns`]).
    At(u64),
}

/// One delivered completion. Only completions for live slots are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The slot the operation belongs to.
    pub slot: SlotId,
    /// Which operation completed; the slot may now start another of this kind.
    pub op: OpTag,
    /// The kernel's result: `Ok(value)` (meaning per [`OpTag`]) or the negated errno.
    /// `Err(Errno::CANCELED)` after a cancel, `Err(Errno::INTR)`: re-arm.
    pub result: Result<u32, Errno>,
}

/// The fds of the last RECVMSG on a slot.
#[derive(Debug, Default)]
pub struct ReceivedFds {
    /// The fds, in order of arrival (close-on-exec).
    pub fds: ArrayVec<OwnedFd, FDS_PER_MSG_MAX>,
    /// The control data was truncated (MSG_CTRUNC) or carried more than `fds_per_msg_max` fds:
    /// some fds were lost (closed), only the ones here arrived.
    pub truncated: bool,
}

/// Counters for things the ring absorbed instead of returning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Completions dropped because their slot or generation no longer matched.
    pub stale_dropped: u64,
    /// Completions whose user_data the ring never produced.
    pub foreign_dropped: u64,
    /// Completions of removed slots, consumed inside.
    pub removed_dropped: u64,
    /// `io_uring_enter` calls retried after EINTR.
    pub enter_eintr: u64,
    /// `io_uring_enter` calls that returned EBUSY/EAGAIN (completions drained first).
    pub enter_busy: u64,
    /// Received fds closed because nobody could take them.
    pub fds_closed: u64,
    /// Deferred cancel requests that could not be queued (submission failed).
    pub cancel_failed: u64,
}

#[derive(Default)]
struct SlotState {
    /// Bit per [`OpTag`]: operation outstanding.
    pending: u8,
    /// Bit per [`OpTag`]: a cancel request for that operation is outstanding.
    cancelling: u8,
    /// Bit per [`OpTag`]: cancel was asked while an earlier cancel request for the same kind
    /// was still outstanding; issued when that one completes (at most one per kind in flight).
    cancel_again: u8,
    removed: bool,
    /// The file the slot's operations act on ([`Ring::attach`]). Its number is in the entries
    /// of the outstanding `FD_OPS`, so it is closed only with the state: when the slot is freed
    /// (every completion arrived) or the ring is dropped.
    fd: Option<OwnedFd>,
    /// The buffer set this slot owns (`None`: a bare slot).
    buffers: Option<u32>,
    recv_bytes: u32,
    recv_flags: i32,
    read_bytes: u32,
    fds: ReceivedFds,
    accepted: Option<OwnedFd>,
    /// Duplicate of the fd being passed by the outstanding SENDMSG.
    send_fd: Option<OwnedFd>,
}

impl SlotState {
    /// Forgets (never closes) the fds whose numbers an outstanding operation still names: for
    /// a ring whose operations may outlive it.
    fn leak_fds_in_use(&mut self) {
        if self.pending & FD_OPS != 0 {
            std::mem::forget(self.fd.take());
        }
        if self.pending & OpTag::SendMsg.bit() != 0 {
            std::mem::forget(self.send_fd.take());
        }
    }
}

/// One io_uring instance with a fixed slab of slots. See `docs/ring.md`.
pub struct Ring {
    // Field order matters for Drop: the io_uring closes (nothing more can be submitted) before
    // the arena is freed and before the slots, with their fds, are dropped.
    uring: IoUring,
    arena: Option<Arena>,
    slots: Slab<SlotState>,
    generations: Box<[u32]>,
    /// Buffer-set indices not owned by any slot (capacity `Limits::buffered_slots`).
    free_buffers: Vec<u32>,
    limits: Limits,
    /// Operations and cancel requests queued or in the kernel, not yet completed.
    in_flight: u32,
    delivered_since_wait: u32,
    stats: Stats,
}

impl Ring {
    /// Creates the ring and allocates everything it will ever use.
    pub fn new(limits: Limits) -> Result<Ring, SetupError> {
        let uring = setup::create(&limits)?;
        let slots = limits.slots as usize;
        Ok(Ring {
            uring,
            arena: Some(Arena::new(&limits)),
            slots: Slab::with_capacity(slots),
            generations: vec![0; slots].into_boxed_slice(),
            free_buffers: (0..limits.buffered_slots).rev().collect(),
            limits,
            in_flight: 0,
            delivered_since_wait: 0,
            stats: Stats::default(),
        })
    }

    /// The limits this ring was built with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Slots in use, including removed slots still waiting for completions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// `true` when no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Operations (and internal cancel requests) not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Counters of absorbed events.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Completion queue entries the kernel granted.
    pub fn cq_entries(&self) -> u32 {
        self.uring.params().cq_entries()
    }

    /// Takes a free slot with its own buffer set (every operation kind). Never allocates: past
    /// `Limits::slots`, or when all `Limits::buffered_slots` buffer sets are taken, it returns
    /// [`Full`].
    pub fn insert(&mut self) -> Result<SlotId, Full> {
        if self.slots.len() >= self.limits.slots as usize {
            return Err(self.full(false));
        }
        let set = self.free_buffers.pop().ok_or(self.full(true))?;
        Ok(self.take_slot(Some(set)))
    }

    /// Takes a free bare slot: no buffers, so only `poll_add`, `accept` and `timeout` (a pidfd
    /// and its timer need nothing more). Never allocates: past `Limits::slots` it returns
    /// [`Full`].
    pub fn insert_bare(&mut self) -> Result<SlotId, Full> {
        if self.slots.len() >= self.limits.slots as usize {
            return Err(self.full(false));
        }
        Ok(self.take_slot(None))
    }

    fn full(&self, buffered: bool) -> Full {
        let slots = match buffered {
            true => self.limits.buffered_slots,
            false => self.limits.slots,
        };
        Full { slots, buffered }
    }

    fn take_slot(&mut self, buffers: Option<u32>) -> SlotId {
        let index = self.slots.insert(SlotState {
            buffers,
            ..SlotState::default()
        });
        assert!(
            index < self.generations.len(),
            "slab handed out an index beyond its capacity"
        );
        SlotId {
            index: index as u32,
            generation: self.generations[index],
        }
    }

    /// Gives the slot up. Outstanding operations are cancelled; the slot returns to the free
    /// list only when all their completions arrived (its buffers stay valid and its attached fd
    /// open until then), and none of them is delivered. Received and accepted fds not taken are
    /// closed now; the attached fd when the slot is freed (at once if nothing is outstanding).
    pub fn remove(&mut self, id: SlotId) -> Result<(), OpError> {
        self.live(id)?;
        let index = id.index;
        let state = &mut self.slots[index as usize];
        state.removed = true;
        state.fds = ReceivedFds::default();
        state.accepted = None;
        let result = self.cancel_pending(index, id.generation, u8::MAX);
        self.free_if_idle(index);
        result
    }

    /// Gives the slot its file: `poll_add`, `recvmsg`, `sendmsg`, `accept` and `read` act on
    /// it. The slot owns it from now on: it is closed when the slot is freed after
    /// [`Ring::remove`] (never while an operation naming it is outstanding), or handed back by
    /// [`Ring::detach`]. On error (`Stale`, `Removed`, `FdAttached`) `fd` is closed.
    pub fn attach(&mut self, id: SlotId, fd: OwnedFd) -> Result<(), OpError> {
        self.live(id)?;
        let state = &mut self.slots[id.index as usize];
        if state.fd.is_some() {
            return Err(OpError::FdAttached);
        }
        state.fd = Some(fd);
        Ok(())
    }

    /// The slot's attached fd, for the owner's own system calls (`waitid` on a pidfd, `send`
    /// on a socket ...); `None` for a stale or removed id or a slot without one.
    pub fn fd(&self, id: SlotId) -> Option<BorrowedFd<'_>> {
        self.state(id)?.fd.as_ref().map(AsFd::as_fd)
    }

    /// Hands the attached fd back. Refused with `Busy(tag)` while an operation that names it
    /// (anything but `Timeout`) is outstanding, queued or in the kernel: cancel it and wait for
    /// its completion first. `NoFd` when the slot has none.
    pub fn detach(&mut self, id: SlotId) -> Result<OwnedFd, OpError> {
        self.live(id)?;
        let state = &mut self.slots[id.index as usize];
        let in_use = state.pending & FD_OPS;
        if let Some(op) = OpTag::ALL.into_iter().find(|op| in_use & op.bit() != 0) {
            return Err(OpError::Busy(op));
        }
        state.fd.take().ok_or(OpError::NoFd)
    }

    /// Cancels every outstanding operation of the slot. Each yields exactly one completion
    /// (`Err(Errno::CANCELED)`, or its own result if it completed first).
    pub fn cancel(&mut self, id: SlotId) -> Result<(), OpError> {
        self.live(id)?;
        self.cancel_pending(id.index, id.generation, u8::MAX)
    }

    /// Cancels one outstanding operation of the slot (no-op if it is not outstanding).
    pub fn cancel_op(&mut self, id: SlotId, op: OpTag) -> Result<(), OpError> {
        self.live(id)?;
        self.cancel_pending(id.index, id.generation, op.bit())
    }

    /// `true` when an operation of this kind is outstanding on the slot.
    pub fn is_pending(&self, id: SlotId, op: OpTag) -> bool {
        self.state(id).is_some_and(|s| s.pending & op.bit() != 0)
    }

    /// One-shot poll of the slot's fd for `events` (`libc::POLLIN` ...).
    pub fn poll_add(&mut self, id: SlotId, events: u32) -> Result<(), OpError> {
        self.begin(id, OpTag::Poll)?;
        let fd = self.attached(id)?;
        let sqe = opcode::PollAdd::new(fd, events).build();
        self.queue(id, OpTag::Poll, sqe)
    }

    /// Receives one message from the slot's fd into its receive buffer, with room for
    /// `Limits::fds_per_msg_max` fds (MSG_CMSG_CLOEXEC). Fds not yet taken from the previous
    /// receive are closed.
    pub fn recvmsg(&mut self, id: SlotId) -> Result<(), OpError> {
        let set = self.begin_buffered(id, OpTag::RecvMsg)?;
        let fd = self.attached(id)?;
        let index = id.index;
        let recv_len = self.limits.recv_len as usize;
        let arena = self.arena();
        let headers = arena.headers(set);
        let (cmsg, cmsg_len) = arena.recv_cmsg(set);
        let buf = arena.recv_buf(set);
        // SAFETY: no RECVMSG is outstanding on this slot (checked by `begin`), so neither the
        // kernel nor any reference touches its receive header, iovec or control space; all
        // pointers lie in the arena, which outlives every operation.
        let msg = unsafe {
            ptr::write_bytes(cmsg, 0, cmsg_len);
            let iov = ptr::addr_of_mut!((*headers).recv_iov);
            iov.write(libc::iovec {
                iov_base: buf.cast(),
                iov_len: recv_len,
            });
            let msg = ptr::addr_of_mut!((*headers).recv_msg);
            let mut header: libc::msghdr = std::mem::zeroed();
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            header.msg_control = cmsg.cast();
            header.msg_controllen = cmsg_len as _;
            msg.write(header);
            msg
        };
        let state = &mut self.slots[index as usize];
        state.fds = ReceivedFds::default();
        state.recv_bytes = 0;
        state.recv_flags = 0;
        let sqe = opcode::RecvMsg::new(fd, msg)
            .flags(libc::MSG_CMSG_CLOEXEC as u32)
            .build();
        self.queue(id, OpTag::RecvMsg, sqe)
    }

    /// Sends `data` (copied into the slot's send buffer) as one message on the slot's fd,
    /// passing a duplicate of `pass_fd` in SCM_RIGHTS if given (made now, owned by the slot,
    /// closed when the send completed). MSG_NOSIGNAL: a closed peer yields `Err(EPIPE)`, not
    /// SIGPIPE.
    pub fn sendmsg(
        &mut self,
        id: SlotId,
        data: &[u8],
        pass_fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), OpError> {
        let set = self.begin_buffered(id, OpTag::SendMsg)?;
        if data.len() > self.limits.send_len as usize {
            return Err(OpError::TooLong {
                len: data.len(),
                send_len: self.limits.send_len,
            });
        }
        let fd = self.attached(id)?;
        let dup = match pass_fd {
            Some(pass) => Some(dup_cloexec(pass).map_err(OpError::DupFd)?),
            None => None,
        };
        let index = id.index;
        let arena = self.arena();
        let headers = arena.headers(set);
        let buf = arena.send_buf(set);
        let raw_dup = dup.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: no SENDMSG is outstanding on this slot (checked by `begin`), so the send
        // buffer, header, iovec and control space are ours; `data.len()` fits the buffer
        // (checked above); all pointers lie in the arena, which outlives every operation.
        let msg = unsafe { write_send_msg(headers, buf, data, raw_dup) };
        self.slots[index as usize].send_fd = dup;
        let sqe = opcode::SendMsg::new(fd, msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        self.queue(id, OpTag::SendMsg, sqe)
    }

    /// Accepts one connection on the slot's fd, a listening socket (SOCK_CLOEXEC). An accepted
    /// fd not yet taken from the previous accept is closed.
    pub fn accept(&mut self, id: SlotId) -> Result<(), OpError> {
        self.begin(id, OpTag::Accept)?;
        let fd = self.attached(id)?;
        self.slots[id.index as usize].accepted = None;
        let sqe = opcode::Accept::new(fd, ptr::null_mut(), ptr::null_mut())
            .flags(libc::SOCK_CLOEXEC)
            .build();
        self.queue(id, OpTag::Accept, sqe)
    }

    /// Reads up to `Limits::read_len` bytes from the slot's fd (at the file position) into its
    /// read buffer.
    pub fn read(&mut self, id: SlotId) -> Result<(), OpError> {
        let set = self.begin_buffered(id, OpTag::Read)?;
        let fd = self.attached(id)?;
        self.slots[id.index as usize].read_bytes = 0;
        let buf = self.arena().read_buf(set);
        let sqe = opcode::Read::new(fd, buf, self.limits.read_len)
            .offset(u64::MAX)
            .build();
        self.queue(id, OpTag::Read, sqe)
    }

    /// Starts a timer; its completion is `Ok(0)` when it fires.
    pub fn timeout(&mut self, id: SlotId, when: Timeout) -> Result<(), OpError> {
        self.begin(id, OpTag::Timeout)?;
        let (spec, flags) = match when {
            Timeout::After(duration) => (
                types::Timespec::from(duration),
                types::TimeoutFlags::empty(),
            ),
            Timeout::At(deadline_ns) => (
                types::Timespec::from(Duration::from_nanos(deadline_ns)),
                types::TimeoutFlags::ABS,
            ),
        };
        let timespec = self.arena().timespec(id.index);
        // SAFETY: no TIMEOUT is outstanding on this slot (checked by `begin`), so its timespec
        // is ours; the pointer lies in the arena, which outlives every operation.
        unsafe { timespec.write(spec) };
        let sqe = opcode::Timeout::new(timespec).flags(flags).build();
        self.queue(id, OpTag::Timeout, sqe)
    }

    /// The data of the slot's last completed RECVMSG; `None` for a stale id or while a
    /// RECVMSG is outstanding (the kernel may be writing the buffer).
    pub fn received(&self, id: SlotId) -> Option<&[u8]> {
        let state = self.state(id)?;
        if state.pending & OpTag::RecvMsg.bit() != 0 {
            return None;
        }
        let len = (state.recv_bytes as usize).min(self.limits.recv_len as usize);
        let buf = self.arena().recv_buf(state.buffers?);
        // SAFETY: no RECVMSG is outstanding, so nothing writes the buffer; a new one needs
        // `&mut self`, which the returned borrow of `self` excludes; `len` fits the buffer.
        Some(unsafe { std::slice::from_raw_parts(buf, len) })
    }

    /// `true` when the last RECVMSG's data was cut to the buffer size (MSG_TRUNC).
    pub fn recv_truncated(&self, id: SlotId) -> bool {
        self.state(id)
            .is_some_and(|s| s.recv_flags & libc::MSG_TRUNC != 0)
    }

    /// Takes the fds of the slot's last completed RECVMSG (empty for a stale id).
    pub fn take_fds(&mut self, id: SlotId) -> ReceivedFds {
        match self.state_mut(id) {
            Some(state) => std::mem::take(&mut state.fds),
            None => ReceivedFds::default(),
        }
    }

    /// Takes the fd of the slot's last completed ACCEPT.
    pub fn take_accepted(&mut self, id: SlotId) -> Option<OwnedFd> {
        self.state_mut(id)?.accepted.take()
    }

    /// The data of the slot's last completed READ; `None` for a stale id or while a READ is
    /// outstanding.
    pub fn read_data(&self, id: SlotId) -> Option<&[u8]> {
        let state = self.state(id)?;
        if state.pending & OpTag::Read.bit() != 0 {
            return None;
        }
        let len = (state.read_bytes as usize).min(self.limits.read_len as usize);
        let buf = self.arena().read_buf(state.buffers?);
        // SAFETY: no READ is outstanding, so nothing writes the buffer; a new one needs
        // `&mut self`, which the returned borrow of `self` excludes; `len` fits the buffer.
        Some(unsafe { std::slice::from_raw_parts(buf, len) })
    }

    /// Submits queued operations and waits until at least `min_complete` completions are ready
    /// or `timeout` passed. EINTR is retried (a few times, then it returns), EBUSY/EAGAIN and
    /// ETIME return `Ok` so that the caller drains completions. Starts a new completion batch.
    /// With nothing in flight and no timeout it does not wait.
    pub fn submit_and_wait(
        &mut self,
        min_complete: u32,
        timeout: Option<Duration>,
    ) -> Result<(), EnterError> {
        self.delivered_since_wait = 0;
        let min = if self.in_flight == 0 && timeout.is_none() {
            0
        } else {
            min_complete
        };
        for _ in 0..=ENTER_EINTR_RETRIES_MAX {
            let result = match timeout {
                Some(duration) => {
                    let spec = types::Timespec::from(duration);
                    let args = types::SubmitArgs::new().timespec(&spec);
                    self.uring.submitter().submit_with_args(min as usize, &args)
                }
                None => self.uring.submitter().submit_and_wait(min as usize),
            };
            match result.map_err(|e| Errno::from_io(&e).0) {
                Ok(_) | Err(libc::ETIME) => break,
                Err(libc::EINTR) => self.stats.enter_eintr += 1,
                Err(libc::EBUSY | libc::EAGAIN) => {
                    self.stats.enter_busy += 1;
                    break;
                }
                Err(errno) => return Err(EnterError::Enter(Errno(errno))),
            }
        }
        self.check_overflow()
    }

    /// The next completion of the current batch, `None` when the completion queue is empty or
    /// `Limits::completions_per_wait_max` were delivered since the last `submit_and_wait`.
    /// Stale completions and those of removed slots are consumed here and never returned.
    pub fn next_completion(&mut self) -> Option<Completion> {
        let bound = self.cq_entries();
        for _ in 0..bound {
            if self.delivered_since_wait >= self.limits.completions_per_wait_max {
                return None;
            }
            let cqe = self.uring.completion().next()?;
            if let Some(completion) = self.process(cqe.user_data(), cqe.result()) {
                self.delivered_since_wait += 1;
                return Some(completion);
            }
        }
        None
    }

    // ---- internals ----

    fn arena(&self) -> &Arena {
        self.arena.as_ref().expect("arena lives until drop")
    }

    fn state(&self, id: SlotId) -> Option<&SlotState> {
        let state = self.slots.get(id.index as usize)?;
        let live = self.generations[id.index as usize] == id.generation && !state.removed;
        live.then_some(state)
    }

    fn state_mut(&mut self, id: SlotId) -> Option<&mut SlotState> {
        let generation = *self.generations.get(id.index as usize)?;
        let state = self.slots.get_mut(id.index as usize)?;
        (generation == id.generation && !state.removed).then_some(state)
    }

    fn live(&self, id: SlotId) -> Result<(), OpError> {
        let state = self.slots.get(id.index as usize).ok_or(OpError::Stale)?;
        if self.generations[id.index as usize] != id.generation {
            return Err(OpError::Stale);
        }
        if state.removed {
            return Err(OpError::Removed);
        }
        Ok(())
    }

    fn begin(&self, id: SlotId, op: OpTag) -> Result<(), OpError> {
        self.live(id)?;
        if self.slots[id.index as usize].pending & op.bit() != 0 {
            return Err(OpError::Busy(op));
        }
        Ok(())
    }

    /// The number of the slot's attached fd, for an entry. Sound to put in an entry because the
    /// slot keeps the fd open until that entry's completion: `detach` refuses while an FD_OPS
    /// operation is outstanding and a removed slot drops its state only when idle.
    fn attached(&self, id: SlotId) -> Result<types::Fd, OpError> {
        let fd = self.slots[id.index as usize].fd.as_ref();
        fd.map(|fd| types::Fd(fd.as_raw_fd())).ok_or(OpError::NoFd)
    }

    /// [`Ring::begin`] for an operation that needs the slot's buffer set; returns its index.
    fn begin_buffered(&self, id: SlotId, op: OpTag) -> Result<u32, OpError> {
        self.begin(id, op)?;
        self.slots[id.index as usize]
            .buffers
            .ok_or(OpError::NoBuffers(op))
    }

    fn queue(&mut self, id: SlotId, op: OpTag, sqe: squeue::Entry) -> Result<(), OpError> {
        let user_data = UserData {
            index: id.index,
            generation: id.generation,
            tag: op,
            cancel: false,
        };
        self.push(sqe.user_data(user_data.encode()))
            .map_err(OpError::Submit)?;
        self.slots[id.index as usize].pending |= op.bit();
        Ok(())
    }

    /// Queues a cancel request for every operation in `mask` that is outstanding. If a cancel
    /// request for that kind is still in flight (it may target an earlier operation that has
    /// completed since), the new request is deferred until that one's completion.
    fn cancel_pending(&mut self, index: u32, generation: u32, mask: u8) -> Result<(), OpError> {
        for op in OpTag::ALL {
            let state = &mut self.slots[index as usize];
            if state.pending & mask & op.bit() == 0 {
                continue;
            }
            if state.cancelling & op.bit() != 0 {
                state.cancel_again |= op.bit();
                continue;
            }
            let target = UserData {
                index,
                generation,
                tag: op,
                cancel: false,
            }
            .encode();
            let sqe = match op {
                OpTag::Timeout => opcode::TimeoutRemove::new(target).build(),
                _ => opcode::AsyncCancel::new(target).build(),
            };
            let own = UserData {
                index,
                generation,
                tag: op,
                cancel: true,
            }
            .encode();
            self.push(sqe.user_data(own)).map_err(OpError::Submit)?;
            self.slots[index as usize].cancelling |= op.bit();
        }
        Ok(())
    }

    /// Puts one entry in the submission queue, submitting first when it is full.
    fn push(&mut self, sqe: squeue::Entry) -> Result<(), Errno> {
        for _ in 0..=ENTER_EINTR_RETRIES_MAX {
            // SAFETY: every pointer in a ring-built entry points into the arena, which lives
            // until every operation completed (see Drop); every fd number in an entry belongs
            // to an fd the slot owns until that operation's completion (see `attached`, and
            // `send_fd` for the SCM_RIGHTS one), so it cannot name another file meanwhile.
            if unsafe { self.uring.submission().push(&sqe) }.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            match self.uring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => self.stats.enter_eintr += 1,
                Err(e) => return Err(Errno::from_io(&e)),
            }
        }
        Err(Errno(libc::EAGAIN))
    }

    fn check_overflow(&mut self) -> Result<(), EnterError> {
        let dropped = self.uring.completion().overflow();
        if dropped != 0 {
            return Err(EnterError::CqOverflow { dropped });
        }
        Ok(())
    }

    /// Handles one completion; returns it when it must be delivered.
    fn process(&mut self, user_data: u64, res: i32) -> Option<Completion> {
        let Some(ud) = UserData::decode(user_data) else {
            self.stats.foreign_dropped += 1;
            return None;
        };
        let index = ud.index as usize;
        let bit = ud.tag.bit();
        let known = self.generations.get(index) == Some(&ud.generation)
            && self.slots.get(index).is_some_and(|s| {
                if ud.cancel {
                    s.cancelling & bit != 0
                } else {
                    s.pending & bit != 0
                }
            });
        if !known {
            self.stats.stale_dropped += 1;
            if ud.tag == OpTag::Accept && !ud.cancel && res >= 0 {
                // SAFETY: a successful ACCEPT result is a new fd nobody else owns.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return None;
        }
        self.in_flight -= 1;
        if ud.cancel {
            let state = &mut self.slots[index];
            state.cancelling &= !bit;
            if state.cancel_again & bit != 0 {
                state.cancel_again &= !bit;
                if self.cancel_pending(ud.index, ud.generation, bit).is_err() {
                    self.stats.cancel_failed += 1;
                }
            }
            self.free_if_idle(ud.index);
            return None;
        }
        self.slots[index].pending &= !bit;
        self.slots[index].cancel_again &= !bit;
        let result = self.finish(ud.index, ud.tag, res);
        let state = &mut self.slots[index];
        if state.removed {
            state.fds = ReceivedFds::default();
            state.accepted = None;
            self.stats.removed_dropped += 1;
            self.free_if_idle(ud.index);
            return None;
        }
        Some(Completion {
            slot: SlotId {
                index: ud.index,
                generation: ud.generation,
            },
            op: ud.tag,
            result,
        })
    }

    /// Per-operation bookkeeping of a completion; returns the caller-facing result.
    fn finish(&mut self, index: u32, op: OpTag, res: i32) -> Result<u32, Errno> {
        let result = if res < 0 {
            Err(Errno(-res))
        } else {
            Ok(res as u32)
        };
        match op {
            OpTag::Poll => result,
            OpTag::RecvMsg => {
                if let Ok(bytes) = result {
                    self.collect_received(index, bytes);
                }
                result
            }
            OpTag::SendMsg => {
                self.slots[index as usize].send_fd = None;
                result
            }
            OpTag::Accept => {
                if let Ok(fd) = result {
                    // SAFETY: a successful ACCEPT result is a new fd nobody else owns.
                    self.slots[index as usize].accepted =
                        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
                }
                result
            }
            OpTag::Read => {
                self.slots[index as usize].read_bytes = result.unwrap_or(0);
                result
            }
            OpTag::Timeout => match result {
                Err(Errno(libc::ETIME)) => Ok(0),
                other => other,
            },
        }
    }

    /// Records a RECVMSG's length and flags and moves the fds it carried into the slot.
    fn collect_received(&mut self, index: u32, bytes: u32) {
        let set = self.slots[index as usize]
            .buffers
            .expect("a RECVMSG was only queued on a buffered slot");
        let arena = self.arena.as_ref().expect("arena lives until drop");
        let headers = arena.headers(set);
        let (cmsg_base, cmsg_space_len) = arena.recv_cmsg(set);
        // SAFETY: the RECVMSG completed, so the kernel no longer writes the header; read by
        // value through raw pointers.
        let (flags, controllen) = unsafe {
            let msg = ptr::addr_of!((*headers).recv_msg).read();
            (
                msg.msg_flags,
                // `as usize`: socklen_t (u32) on musl, size_t on glibc.
                #[allow(clippy::unnecessary_cast)]
                (msg.msg_controllen as usize).min(cmsg_space_len),
            )
        };
        let fds_max = self.limits.fds_per_msg_max as usize;
        let state = &mut self.slots[index as usize];
        state.recv_bytes = bytes;
        state.recv_flags = flags;
        state.fds.truncated = flags & libc::MSG_CTRUNC != 0;
        // SAFETY: the control space is ours again (RECVMSG completed); the walk stays within
        // `controllen <= cmsg_space_len` bytes of it.
        let closed = unsafe { extract_fds(cmsg_base, controllen, fds_max, &mut state.fds) };
        self.stats.fds_closed += closed as u64;
    }

    /// Frees a removed slot once nothing of it is in flight; dropping its state closes its
    /// attached fd (the deferred close of `remove`).
    fn free_if_idle(&mut self, index: u32) {
        let state = &self.slots[index as usize];
        if state.removed && state.pending == 0 && state.cancelling == 0 {
            let state = self.slots.remove(index as usize);
            if let Some(set) = state.buffers {
                // Never grows: the list held every set at construction and this one left it.
                debug_assert!(self.free_buffers.len() < self.free_buffers.capacity());
                self.free_buffers.push(set);
            }
            drop(state);
            let generation = &mut self.generations[index as usize];
            *generation = generation.wrapping_add(1) & GENERATION_MASK;
        }
    }

    /// Cancels everything and waits (bounded) for every completion; `true` when none is left.
    fn drain_for_drop(&mut self) -> bool {
        for index in 0..self.generations.len() as u32 {
            let generation = self.generations[index as usize];
            if let Some(state) = self.slots.get_mut(index as usize) {
                state.removed = true;
                let _ = self.cancel_pending(index, generation, u8::MAX);
            }
        }
        for _ in 0..DROP_DRAIN_ROUNDS_MAX {
            if self.in_flight == 0 {
                return true;
            }
            if self.submit_and_wait(1, Some(DROP_DRAIN_ROUND)).is_err() {
                return false;
            }
            for _ in 0..self.cq_entries() {
                let next = self.uring.completion().next();
                let Some(cqe) = next else { break };
                let _ = self.process(cqe.user_data(), cqe.result());
            }
        }
        self.in_flight == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.drain_for_drop() {
            // The kernel may still write into the buffers: never free them. Nor close the fds
            // whose numbers outstanding operations name (a retried SENDMSG, for one, looks its
            // SCM_RIGHTS number up again); the rest close with the slab.
            if let Some(arena) = self.arena.take() {
                arena.leak();
            }
            for (_, state) in self.slots.iter_mut() {
                state.leak_fds_in_use();
            }
        }
    }
}

/// Fills the slot's send header, iovec, buffer and (optionally) SCM_RIGHTS control message.
///
/// # Safety
/// No SENDMSG may be outstanding on the slot; `buf` must have room for `data`.
unsafe fn write_send_msg(
    headers: *mut crate::arena::SlotHeaders,
    buf: *mut u8,
    data: &[u8],
    pass_fd: Option<RawFd>,
) -> *const libc::msghdr {
    // SAFETY: guaranteed by the caller (see above).
    unsafe {
        ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
        let iov = ptr::addr_of_mut!((*headers).send_iov);
        iov.write(libc::iovec {
            iov_base: buf.cast(),
            iov_len: data.len(),
        });
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = iov;
        header.msg_iovlen = 1;
        if let Some(fd) = pass_fd {
            let control = ptr::addr_of_mut!((*headers).send_cmsg).cast::<u8>();
            let space = cmsg_space(size_of::<RawFd>());
            ptr::write_bytes(control, 0, space);
            header.msg_control = control.cast();
            header.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        }
        let msg = ptr::addr_of_mut!((*headers).send_msg);
        msg.write(header);
        msg
    }
}

/// Moves every SCM_RIGHTS fd found in `len` bytes of control data at `base` into `out` (up to
/// `fds_max`), closing the rest. Returns how many it closed.
///
/// # Safety
/// `base..base + len` must be readable and not written concurrently.
unsafe fn extract_fds(base: *mut u8, len: usize, fds_max: usize, out: &mut ReceivedFds) -> usize {
    let header_len = size_of::<libc::cmsghdr>();
    let data_offset = cmsg_space(0);
    let mut offset = 0;
    let mut closed = 0;
    // Each iteration advances by at least CMSG_SPACE(0) bytes, so the loop is bounded by `len`.
    while offset + header_len <= len {
        // SAFETY: `offset + header_len <= len`: the header lies in the readable range.
        let cmsg = unsafe { base.add(offset).cast::<libc::cmsghdr>().read_unaligned() };
        // `as usize`: socklen_t (u32) on musl, size_t on glibc.
        #[allow(clippy::unnecessary_cast)]
        let cmsg_len = cmsg.cmsg_len as usize;
        if cmsg_len < data_offset || offset + cmsg_len > len {
            break;
        }
        if cmsg.cmsg_level == libc::SOL_SOCKET && cmsg.cmsg_type == libc::SCM_RIGHTS {
            let count = (cmsg_len - data_offset) / size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `data_offset + (i + 1) * 4 <= cmsg_len` and `offset + cmsg_len <= len`.
                let fd = unsafe {
                    base.add(offset + data_offset + i * size_of::<RawFd>())
                        .cast::<RawFd>()
                        .read_unaligned()
                };
                if fd < 0 {
                    continue;
                }
                // SAFETY: the kernel installed this fd for us (SCM_RIGHTS); nobody else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if out.fds.len() < fds_max {
                    out.fds.push(owned);
                } else {
                    drop(owned);
                    out.truncated = true;
                    closed += 1;
                }
            }
        }
        offset += cmsg_space(cmsg_len - data_offset).max(data_offset);
    }
    closed
}

/// `fcntl(F_DUPFD_CLOEXEC)`.
fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    // SAFETY: fcntl on a borrowed, open fd; F_DUPFD_CLOEXEC returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of [`Timeout::At`]).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
