//! holden's minimal io_uring runtime: one ring, a fixed slab of slots, no allocation after
//! construction.
//!
//! See `docs/ring.md` for the slot model, the `user_data` layout, the buffer lifetime rule,
//! cancel semantics and the error cases. A slot owns the fd its operations act on
//! ([`Ring::attach`]) and closes it only after their completions, so an fd number in a queued
//! entry can never name another file. In short:
//!
//! ```no_run
//! use ring::{Limits, OpTag, Ring, Timeout};
//! use std::os::fd::OwnedFd;
//! use std::time::Duration;
//! # fn pidfd() -> OwnedFd { unimplemented!() }
//! let mut ring = Ring::new(Limits::small()).expect("io_uring available");
//! let timer = ring.insert().expect("free slot");
//! ring.timeout(timer, Timeout::After(Duration::from_millis(5))).unwrap();
//! let process = ring.insert_bare().expect("free slot");
//! ring.attach(process, pidfd()).unwrap(); // the slot owns it from now on
//! ring.poll_add(process, libc::POLLIN as u32).unwrap();
//! ring.submit_and_wait(1, None).unwrap();
//! while let Some(c) = ring.next_completion() {
//!     match c.op {
//!         OpTag::Timeout => assert_eq!((c.slot, c.result), (timer, Ok(0))),
//!         _ => assert_eq!((c.slot, c.op), (process, OpTag::Poll)), // exited
//!     }
//! }
//! ring.remove(process).unwrap(); // the pidfd closes once nothing names it
//! ```

// Every unsafe block carries a `// SAFETY:` comment; clippy enforces it.
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod arena;
mod error;
mod limits;
mod ring;
mod setup;
mod user_data;

pub use crate::error::{EnterError, Errno, Full, OpError, SetupError};
pub use crate::limits::{
    Limits, BARE_OP_TAG_COUNT, BUF_LEN_MAX, CQ_ENTRIES_MAX, FDS_PER_MSG_MAX, OP_TAG_COUNT,
    SLOTS_MAX, SQ_ENTRIES_MAX,
};
pub use crate::ring::{now_ns, Completion, OpTag, ReceivedFds, Ring, SlotId, Stats, Timeout};
