//! holden wire v1: the native protocol between orchestrator and agent.
//!
//! Transport: AF_UNIX `SOCK_SEQPACKET`, one frame per packet. A frame is a fixed 24-byte
//! little-endian header (magic `HLDN`, major/minor version, kind, request id, payload length)
//! followed by the payload of its kind. The full specification, with byte tables and worked
//! examples, is `docs/wire.md`; the golden-bytes tests in `tests/wire_v1.rs` pin the code to it.
//!
//! - [`decode`] turns one received packet into a [`Frame`] borrowing from the packet, without
//!   allocating and without panicking on any input; every count and length is checked against
//!   the constants in [`limits`].
//! - `encode_*` write one frame into a caller-supplied buffer (at most [`FRAME_LEN_MAX`] bytes)
//!   and return its length. [`StartRef`] lets the orchestrator encode a `Start` straight from
//!   the service's owned argv/env.
//! - [`OwnedFrame`] is the allocating form for tests and fuzzing.
//!
//! File descriptors are not the codec's business, but the rule is part of the protocol: a
//! `Started` packet carries exactly one pidfd in SCM_RIGHTS ([`STARTED_FD_COUNT`]), every other
//! packet carries none, and a receiver closes every fd it did not expect.

mod cgroup_limits;
mod cursor;
mod decode;
mod encode;
mod error;
mod exec_env;
pub mod limits;
mod owned;
mod types;

pub use cgroup_limits::CgroupLimitsSection;
pub use decode::{
    decode, decode_header, header_offset, is_cgroup_name, payload_offset, peek_request_id, Body,
    ErrorFrame, Frame, Header, Notify, Start, Started, StrIter, StrList, PRESENT_GID, PRESENT_UID,
};
pub use encode::{
    clamp_error_text, encode_error, encode_notify, encode_ping, encode_pong, encode_running,
    encode_start, encode_started, StartRef,
};
pub use error::{DecodeError, EncodeError};
pub use exec_env::{field as exec_field, ExecSection};
pub use limits::*;
pub use owned::{OwnedBody, OwnedError, OwnedFrame, OwnedStart};
pub use types::{Capabilities, ErrorStage, FrameKind, Pong, StartFlags};
