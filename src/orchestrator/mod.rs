//! The orchestrator's I/O shell: one thread, one io_uring ring, pidfds for every process.
//!
//! [`Orchestrator::new`] allocates everything (ring slab, engine, spawn specs, buffers);
//! [`Orchestrator::run`] then drives the sans-IO [`engine::Engine`] from io_uring completions
//! and allocates nothing until it returns. Modules by what they hold:
//! - `event_loop`: the [`Orchestrator`], the ring, dispatch of completions and outputs;
//! - [`engine`]: the supervision core and the agent link glued together, without I/O;
//! - `timers`: the core's timers (one per service) in an indexed heap;
//! - `services`, `agent_io`, `control`: the sub-shells (each service's pidfd slot and spawn
//!   spec; the agent connections; holdenctl's connections);
//! - `spawner`: the threads that carry out local spawns off the loop;
//! - `status_line`: the `STATUS=` line for systemd (services, the failed ones, the agent);
//! - `runtime`: the runtime directory's one-instance lock and the state record's writer;
//! - `reload`, `spec`, `signals`, `counters`.
//!
//! No module here imports `event_loop`: the sub-shells get what they need as arguments.

mod agent_io;
mod control;
mod counters;
mod deps;
pub mod engine;
mod event_loop;
mod notify;
mod output;
mod reexec;
mod reload;
mod runtime;
mod services;
pub mod signals;
mod spawner;
mod spec;
mod status_line;
mod timers;
mod tree;

pub use control::{
    ControlSettings, CONNECTIONS_MAX as CONTROL_CONNECTIONS_MAX,
    IDLE_TIMEOUT as CONTROL_IDLE_TIMEOUT,
};
pub use counters::Counters;
pub use event_loop::{Error, Orchestrator, ShutdownHandle, FIXED_SLOTS};
pub use runtime::RuntimeError;
pub use spec::{AgentProtocol, Options, ServiceDef, Settings};
pub use timers::Timers;
