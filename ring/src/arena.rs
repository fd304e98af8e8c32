//! The fixed buffers of every slot, allocated once and addressed only through raw pointers.
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

/// The fixed-size headers of one slot.
#[repr(C)]
pub(crate) struct SlotHeaders {
    pub recv_msg: libc::msghdr,
    pub recv_iov: libc::iovec,
    pub send_msg: libc::msghdr,
    pub send_iov: libc::iovec,
    pub timespec: io_uring::types::Timespec,
    pub send_cmsg: [u64; SEND_CMSG_WORDS],
}

pub(crate) struct Arena {
    base: NonNull<u8>,
    layout: Layout,
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

impl Arena {
    pub fn new(limits: &Limits) -> Arena {
        assert!(cmsg_space(size_of::<libc::c_int>()) <= SEND_CMSG_WORDS * 8);
        let recv_cmsg_len = cmsg_space(size_of::<libc::c_int>() * limits.fds_per_msg_max as usize);
        let recv_cmsg_offset = round_up(size_of::<SlotHeaders>());
        let recv_offset = recv_cmsg_offset + round_up(recv_cmsg_len);
        let send_offset = recv_offset + round_up(limits.recv_len as usize);
        let read_offset = send_offset + round_up(limits.send_len as usize);
        let stride = read_offset + round_up(limits.read_len as usize);
        let size = stride * limits.slots as usize;
        let layout =
            Layout::from_size_align(size, ALIGN).expect("arena layout (bounded by Limits)");
        // SAFETY: `size` is non-zero (SlotHeaders alone is > 0 bytes and slots >= 1, checked by
        // Limits::validate); the memory is zeroed, so every header starts as a valid all-zero
        // msghdr/iovec/timespec.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Arena {
            base,
            layout,
            stride,
            recv_cmsg_offset,
            recv_cmsg_len,
            recv_offset,
            send_offset,
            read_offset,
        }
    }

    fn slot_base(&self, index: u32) -> *mut u8 {
        let offset = index as usize * self.stride;
        assert!(
            offset + self.stride <= self.layout.size(),
            "slot index beyond the arena"
        );
        // SAFETY: offset + stride lies within the allocation (asserted above).
        unsafe { self.base.as_ptr().add(offset) }
    }

    pub fn headers(&self, index: u32) -> *mut SlotHeaders {
        self.slot_base(index).cast()
    }

    pub fn recv_cmsg(&self, index: u32) -> (*mut u8, usize) {
        // SAFETY: the region lies within this slot's stride (layout computed in `new`).
        (
            unsafe { self.slot_base(index).add(self.recv_cmsg_offset) },
            self.recv_cmsg_len,
        )
    }

    pub fn recv_buf(&self, index: u32) -> *mut u8 {
        // SAFETY: the region lies within this slot's stride (layout computed in `new`).
        unsafe { self.slot_base(index).add(self.recv_offset) }
    }

    pub fn send_buf(&self, index: u32) -> *mut u8 {
        // SAFETY: the region lies within this slot's stride (layout computed in `new`).
        unsafe { self.slot_base(index).add(self.send_offset) }
    }

    pub fn read_buf(&self, index: u32) -> *mut u8 {
        // SAFETY: the region lies within this slot's stride (layout computed in `new`).
        unsafe { self.slot_base(index).add(self.read_offset) }
    }

    /// Gives up the memory without freeing it: used when the kernel may still write into it.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base` came from alloc_zeroed with `layout`; the ring drops the arena only
        // after every operation's completion arrived (otherwise it calls `leak`).
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

// SAFETY: the arena is plain memory owned by exactly one ring; moving that ring (and with it
// the arena) to another thread is sound, and the kernel does not care which thread submits.
unsafe impl Send for Arena {}
