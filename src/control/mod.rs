//! The control protocol between `holdenctl` and the orchestrator.
//!
//! Transport: AF_UNIX `SOCK_SEQPACKET`, one frame per packet, at most [`FRAME_LEN_MAX`] bytes.
//! A frame is a 16-byte little-endian header (magic `HCTL`, version, kind, request id, payload
//! length) and the payload of its kind. The byte layout is specified in `docs/control.md`.
//!
//! - [`decode`] turns one packet into a [`Frame`] borrowing from it: no allocation, no panic on
//!   any input (fuzzed by `fuzz/fuzz_targets/control_decode.rs`).
//! - [`encode`] writes one frame into a caller-supplied buffer and returns its length.
//!
//! Every listing is streamed as one packet per item and an [`Body::End`], so that a packet's
//! size never depends on the number of services.

mod codec;
mod types;

pub use codec::{decode, encode, DecodeError, EncodeError};
pub use types::*;
