//! The orchestrator's I/O shell: one thread, one io_uring ring, pidfds for every process.

pub mod log;
pub mod notify;
pub mod signals;
