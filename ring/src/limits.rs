//! Construction limits: every byte the ring will ever use is derived from these numbers.

/// Most file descriptors one RECVMSG can hand over (compile-time bound of the inline fd array).
pub const FDS_PER_MSG_MAX: usize = 8;
/// Largest per-slot buffer (receive, send or read), in bytes.
pub const BUF_LEN_MAX: u32 = 1 << 20;
/// Most slots one ring may hold (the completion queue must also cover all of them, see
/// [`Limits::cq_entries_needed`]).
pub const SLOTS_MAX: u32 = 10240;
/// Largest submission queue the kernel accepts (`IORING_MAX_ENTRIES`).
pub const SQ_ENTRIES_MAX: u32 = 32768;
/// Largest completion queue the kernel accepts (`2 * IORING_MAX_ENTRIES`).
pub const CQ_ENTRIES_MAX: u32 = 65536;
/// Number of operation kinds ([`crate::OpTag`]); each may be outstanding once per slot.
pub const OP_TAG_COUNT: u32 = 6;
/// Operation kinds a bare slot may run: `Poll`, `Accept` and `Timeout`.
pub const BARE_OP_TAG_COUNT: u32 = 3;

/// Sizes fixed at construction. Memory use is about
/// `slots * 120 + buffered_slots * (recv_len + send_len + read_len + 8 * fds_per_msg_max + 256)`
/// bytes: only buffered slots own buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Number of slots (processes, connections, timers ...) that can exist at once.
    pub slots: u32,
    /// How many of those slots may own I/O buffers ([`crate::Ring::insert`]); the others are
    /// bare ([`crate::Ring::insert_bare`]: poll, accept and timeout only). At most `slots`.
    pub buffered_slots: u32,
    /// Submission queue entries (rounded up to a power of two by the kernel). When the queue is
    /// full the ring submits what it has before queueing more, so this only tunes batching.
    pub sq_entries: u32,
    /// Minimum completion queue entries. The ring raises it to
    /// [`Limits::cq_entries_needed`] so that the queue can never overflow.
    pub cq_entries: u32,
    /// Bytes of each slot's RECVMSG buffer.
    pub recv_len: u32,
    /// Bytes of each slot's SENDMSG buffer (the most one `sendmsg` call can send).
    pub send_len: u32,
    /// Bytes of each slot's READ buffer.
    pub read_len: u32,
    /// Most fds one RECVMSG accepts (1..=[`FDS_PER_MSG_MAX`]); more are closed and reported as
    /// truncated.
    pub fds_per_msg_max: u32,
    /// Most completions [`crate::Ring::next_completion`] returns between two calls of
    /// [`crate::Ring::submit_and_wait`] (the batch bound of one loop iteration).
    pub completions_per_wait_max: u32,
}

impl Limits {
    /// Small defaults for tests and tools: 64 slots, all buffered, 4 KiB buffers.
    pub const fn small() -> Limits {
        Limits {
            slots: 64,
            buffered_slots: 64,
            sq_entries: 64,
            cq_entries: 0,
            recv_len: 4096,
            send_len: 4096,
            read_len: 4096,
            fds_per_msg_max: 4,
            completions_per_wait_max: 256,
        }
    }

    /// Completion queue entries needed so that it can hold one completion for every operation
    /// and every cancel request that can be in flight at once:
    /// `(buffered_slots * OP_TAG_COUNT + bare slots * BARE_OP_TAG_COUNT) * 2`.
    pub const fn cq_entries_needed(&self) -> u64 {
        let bare = self.slots.saturating_sub(self.buffered_slots) as u64;
        (self.buffered_slots as u64 * OP_TAG_COUNT as u64 + bare * BARE_OP_TAG_COUNT as u64) * 2
    }

    /// Checks every limit against its bound; the message names the field and the bound.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.slots == 0 || self.slots > SLOTS_MAX {
            return Err("slots must be in 1..=10240 (SLOTS_MAX)");
        }
        if self.buffered_slots > self.slots {
            return Err("buffered_slots must be at most slots");
        }
        if self.sq_entries == 0 || self.sq_entries > SQ_ENTRIES_MAX {
            return Err("sq_entries must be in 1..=32768");
        }
        if self.cq_entries > CQ_ENTRIES_MAX || self.cq_entries_needed() > CQ_ENTRIES_MAX as u64 {
            return Err(
                "cq_entries (or cq_entries_needed) exceeds 65536: use fewer slots per ring",
            );
        }
        if self.recv_len > BUF_LEN_MAX || self.send_len > BUF_LEN_MAX || self.read_len > BUF_LEN_MAX
        {
            return Err("recv_len, send_len and read_len must each be at most 1 MiB (BUF_LEN_MAX)");
        }
        if self.fds_per_msg_max == 0 || self.fds_per_msg_max as usize > FDS_PER_MSG_MAX {
            return Err("fds_per_msg_max must be in 1..=8 (FDS_PER_MSG_MAX)");
        }
        if self.completions_per_wait_max == 0 {
            return Err("completions_per_wait_max must be at least 1");
        }
        Ok(())
    }

    /// The completion queue size the ring will ask for: the largest of the request, the need
    /// and the submission queue size (the kernel wants CQ >= SQ), rounded up to a power of two.
    pub fn cq_entries_effective(&self) -> u32 {
        let needed = self
            .cq_entries_needed()
            .max(self.cq_entries as u64)
            .max(self.sq_entries.next_power_of_two() as u64 * 2);
        needed.next_power_of_two().min(CQ_ENTRIES_MAX as u64) as u32
    }
}
