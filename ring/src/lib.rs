//! holden's minimal io_uring runtime: one ring, a fixed slab of slots, no allocation after
//! construction.
//!
//! See `docs/ring.md` for the slot model, the `user_data` layout, the buffer lifetime rule,
//! cancel semantics and the error cases. In short:
//!
//! ```no_run
//! use ring::{Limits, OpTag, Ring, Timeout};
//! use std::time::Duration;
//! let mut ring = Ring::new(Limits::small()).expect("io_uring available");
//! let timer = ring.insert().expect("free slot");
//! ring.timeout(timer, Timeout::After(Duration::from_millis(5))).unwrap();
//! ring.submit_and_wait(1, None).unwrap();
//! while let Some(c) = ring.next_completion() {
//!     assert_eq!((c.slot, c.op, c.result), (timer, OpTag::Timeout, Ok(0)));
//! }
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
