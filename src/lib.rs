//! holden: a process orchestrator for safety-critical automotive Linux.
//!
//! This library holds what the orchestrator, the agent and the tools share:
//! the wire protocol ([`wire`]), race-free process spawning ([`spawn`]),
//! the service specification ([`config`]) and the sans-IO supervision core
//! ([`supervise`]).

pub mod config;
pub mod control;
pub mod orchestrator;
pub mod pidfd;
pub mod sd_notify;
pub mod signalfd;
pub mod sockaddr;
pub mod spawn;
pub mod supervise;
pub mod wire;
