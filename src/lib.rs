//! holden: a process orchestrator for safety-critical automotive Linux.
//!
//! This library holds what the orchestrator, the agent and the tools share:
//! the wire protocol ([`wire`]), race-free process spawning ([`spawn`]),
//! the service specification ([`config`]) and the sans-IO supervision core
//! ([`supervise`]). Every call into the kernel goes through [`sys`], the only
//! module allowed to use `unsafe`. Without the default `orchestrator` feature it is only what
//! `holden-agent` needs (wire, spawn, pidfd, sd_notify, log, sys).

#![deny(unsafe_code)]

pub mod cgroup;
#[cfg(feature = "orchestrator")]
pub mod config;
#[cfg(feature = "orchestrator")]
pub mod control;
pub mod fd_store;
#[cfg(feature = "orchestrator")]
pub mod handoff;
pub mod histogram;
#[cfg(feature = "orchestrator")]
pub mod link;
pub mod log;
#[cfg(feature = "orchestrator")]
pub mod orchestrator;
pub mod output;
pub mod pidfd;
pub mod queue;
pub mod rate;
#[cfg(feature = "orchestrator")]
pub mod record;
pub mod sd_notify;
#[cfg(feature = "orchestrator")]
pub mod service_notify;
pub mod spawn;
#[cfg(feature = "orchestrator")]
pub mod supervise;
pub mod sys;
pub mod wire;
