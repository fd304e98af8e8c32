//! The holden wire protocols.
//!
//! - [`v1`]: "holden wire v1", the native protocol (SOCK_SEQPACKET, one frame per packet, the
//!   pidfd travelling in the same packet as its `Started` reply).
//! - [`v02`]: the v0.2 C protocol (SOCK_STREAM, host-endian C structs, the pidfd in a
//!   separate one-byte message), so holden can replace either side of a v0.2 deployment.
//!
//! Both decoders are bounded, allocation-free and never panic; see `docs/wire.md`.

pub mod v02;
pub mod v1;
