//! The fixed memory of every slot, allocated once and addressed only through raw pointers.
//!
//! Two regions: a dense array of one timespec per slot (every slot may run a timeout), and
//! `Limits::buffered_slots` buffer sets (message headers, control space, receive, send and read
//! buffers) that only buffered slots own. A bare slot (a pidfd poll and a timer) thus costs a
//! few dozen bytes, not a buffer set.
//!
//! The kernel writes into these bytes asynchronously, so Rust never holds a reference into a
//! region while an operation using it is outstanding: the ring hands out `&[u8]` only for
//! regions whose operation has completed (see `Ring::received`).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::Limits;

/// Space for one SCM_RIGHTS control message carrying a single fd, in u64 words (24 bytes on
/// 64-bit Linux, checked at construction).
const SEND_CMSG_WORDS: usize = 4;
const ALIGN: usize = 16;

/// The fixed-size headers of one buffer set.
#[repr(C)]
pub(crate) struct SlotHeaders {
    pub recv_msg: libc::msghdr,
    pub recv_iov: libc::iovec,
    pub send_msg: libc::msghdr,
    pub send_iov: libc::iovec,
    pub send_cmsg: [u64; SEND_CMSG_WORDS],
}

type Timespec = io_uring::types::Timespec;

pub(crate) struct Arena {
    /// One timespec per slot, indexed by slot index.
    timespecs: Region,
    /// `Limits::buffered_slots` buffer sets of `stride` bytes, indexed by buffer-set index.
    buffers: Region,
    stride: usize,
    recv_cmsg_offset: usize,
    recv_cmsg_len: usize,
    recv_offset: usize,
    send_offset: usize,
    read_offset: usize,
}

const fn round_up(value: usize) -> usize {
    value.div_ceil(ALIGN) * ALIGN
}

/// `CMSG_SPACE(bytes)`.
pub(crate) fn cmsg_space(bytes: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(bytes as libc::c_uint) as usize }
}

/// One zeroed allocation (never empty: at least one byte is allocated).
struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

impl Region {
    fn zeroed(size: usize) -> Region {
        let layout =
            Layout::from_size_align(size.max(1), ALIGN).expect("arena layout (bounded by Limits)");
        // SAFETY: the layout's size is non-zero; the memory is zeroed, so every header starts
        // as a valid all-zero msghdr/iovec/timespec.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Region { base, layout }
    }

    /// Start of `len` bytes at `offset`; panics if they do not lie inside the region.
    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset + len <= self.layout.size(),
            "arena access beyond its region"
        );
        // SAFETY: offset + len lies within the allocation (asserted above).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` came from alloc_zeroed with `layout`; the ring drops the arena only
        // after every operation's completion arrived (otherwise it calls `Arena::leak`).
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

impl Arena {
    pub fn new(limits: &Limits) -> Arena {
        assert!(cmsg_space(size_of::<libc::c_int>()) <= SEND_CMSG_WORDS * 8);
        let recv_cmsg_len = cmsg_space(size_of::<libc::c_int>() * limits.fds_per_msg_max as usize);
        let recv_cmsg_offset = round_up(size_of::<SlotHeaders>());
        let recv_offset = recv_cmsg_offset + round_up(recv_cmsg_len);
        let send_offset = recv_offset + round_up(limits.recv_len as usize);
        let read_offset = send_offset + round_up(limits.send_len as usize);
        let stride = read_offset + round_up(limits.read_len as usize);
        Arena {
            timespecs: Region::zeroed(size_of::<Timespec>() * limits.slots as usize),
            buffers: Region::zeroed(stride * limits.buffered_slots as usize),
            stride,
            recv_cmsg_offset,
            recv_cmsg_len,
            recv_offset,
            send_offset,
            read_offset,
        }
    }

    /// The timespec of slot `slot`.
    pub fn timespec(&self, slot: u32) -> *mut Timespec {
        let size = size_of::<Timespec>();
        self.timespecs.at(slot as usize * size, size).cast()
    }

    fn set_base(&self, set: u32) -> *mut u8 {
        self.buffers.at(set as usize * self.stride, self.stride)
    }

    /// The headers of buffer set `set`.
    pub fn headers(&self, set: u32) -> *mut SlotHeaders {
        self.set_base(set).cast()
    }

    pub fn recv_cmsg(&self, set: u32) -> (*mut u8, usize) {
        // SAFETY: the region lies within this set's stride (layout computed in `new`).
        (
            unsafe { self.set_base(set).add(self.recv_cmsg_offset) },
            self.recv_cmsg_len,
        )
    }

    pub fn recv_buf(&self, set: u32) -> *mut u8 {
        // SAFETY: the region lies within this set's stride (layout computed in `new`).
        unsafe { self.set_base(set).add(self.recv_offset) }
    }

    pub fn send_buf(&self, set: u32) -> *mut u8 {
        // SAFETY: the region lies within this set's stride (layout computed in `new`).
        unsafe { self.set_base(set).add(self.send_offset) }
    }

    pub fn read_buf(&self, set: u32) -> *mut u8 {
        // SAFETY: the region lies within this set's stride (layout computed in `new`).
        unsafe { self.set_base(set).add(self.read_offset) }
    }

    /// Gives up the memory without freeing it: used when the kernel may still write into it.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

// SAFETY: the arena is plain memory owned by exactly one ring; moving that ring (and with it
// the arena) to another thread is sound, and the kernel does not care which thread submits.
unsafe impl Send for Arena {}
