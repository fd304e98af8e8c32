//! Counters readable from another thread while the loop runs (tests, benchmarks).

use std::sync::atomic::AtomicU64;

/// See the field docs; all counts since start-up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Processes started locally.
    pub spawned_local: AtomicU64,
    /// Processes started through the agent.
    pub spawned_qm: AtomicU64,
    /// Processes whose end was seen.
    pub exited: AtomicU64,
    /// Spawn failures (local and QM).
    pub spawn_failed: AtomicU64,
    /// Agent handshakes that succeeded.
    pub agent_connected: AtomicU64,
    /// Agent connections dropped (closed, refused, misbehaving, timed out).
    pub agent_dropped: AtomicU64,
    /// Loop iterations.
    pub iterations: AtomicU64,
}
