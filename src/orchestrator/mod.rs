//! The orchestrator's I/O shell: one thread, one io_uring ring, pidfds for every process.
//!
//! [`Orchestrator::new`] allocates everything (ring slab, supervision core, spawn specs,
//! buffers); [`Orchestrator::run`] then drives the sans-IO core from io_uring completions and
//! allocates nothing until it returns. See `event_loop` for the slot layout and `agent` for the
//! QM link and its checks.

mod agent;
mod control;
mod event_loop;
mod v02;

mod reload;
pub mod signals;
mod spec;

pub use control::{
    ControlSettings, CONNECTIONS_MAX as CONTROL_CONNECTIONS_MAX,
    IDLE_TIMEOUT as CONTROL_IDLE_TIMEOUT,
};
pub use event_loop::{Counters, Error, Orchestrator, ShutdownHandle, FIXED_SLOTS};
pub use spec::{AgentProtocol, Options, ServiceDef, Settings};
