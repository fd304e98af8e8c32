//! Typed errors of the v1 decoder and encoder.

use core::fmt;

use super::limits::{
    ARGV_COUNT_MAX, ENV_COUNT_MAX, ERROR_TEXT_LEN_MAX, FRAME_LEN_MAX, HEADER_LEN,
    NOTIFY_TEXT_LEN_MAX, STRING_LEN_MAX, VERSION_MAJOR,
};
use super::types::{ErrorStage, FrameKind};

/// Why a packet is not a valid v1 frame. Every variant says which rule the bytes broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet is shorter than the header.
    TooShort { len: usize },
    /// The packet is longer than `FRAME_LEN_MAX`.
    TooLong { len: usize },
    /// The packet does not start with `MAGIC`.
    BadMagic { magic: [u8; 4] },
    /// The header's major version is not ours. The request id is readable (the header prefix is
    /// frozen across versions), so the receiver can answer `Error` with stage `version`.
    UnsupportedVersion {
        major: u8,
        minor: u8,
        request_id: u64,
    },
    /// A reserved field (or an absent uid/gid) is not zero; `offset` is where the field starts,
    /// counted from the start of the packet.
    ReservedNotZero { offset: usize },
    /// The header's payload length differs from the bytes that follow the header.
    PayloadLenMismatch { declared: u32, actual: usize },
    /// The kind byte names no frame kind we know.
    UnknownKind { kind: u8 },
    /// The payload ends inside a field of a frame of this kind.
    Truncated { kind: FrameKind },
    /// Bytes follow the last field of a frame of this kind (allowed only from a newer minor).
    TrailingBytes { kind: FrameKind, count: usize },
    /// A `Start` has no argv entry.
    ArgvEmpty,
    /// A `Start` has more than `ARGV_COUNT_MAX` argv entries.
    ArgvTooMany { count: usize },
    /// A `Start` has more than `ENV_COUNT_MAX` env entries.
    EnvTooMany { count: usize },
    /// A string is longer than `STRING_LEN_MAX`.
    StringTooLong { len: usize },
    /// A string (argv, env, working directory, error text) contains a NUL byte.
    NulInString,
    /// An env entry has no `=` after a non-empty key.
    EnvEntryWithoutEquals,
    /// A `Start` sets flag bits this version does not know.
    UnknownStartFlags { bits: u32 },
    /// A `Start` sets presence bits this version does not know.
    UnknownPresenceBits { bits: u8 },
    /// A `Started` or `Notify` pid is not positive.
    InvalidPid { pid: i32 },
    /// A `Notify` datagram is longer than `NOTIFY_TEXT_LEN_MAX`.
    NotifyTextTooLong { len: usize },
    /// A `Notify` has a request id other than 0 (it answers no request).
    NotifyRequestId { id: u64 },
    /// A `Start`'s `cgroup` is missing, too long, or not one path component.
    BadCgroupName,
    /// A `Start`'s `exec` section breaks a rule: `what` says which.
    BadExecEnv { what: &'static str },
    /// A `Start`'s `cgroup_limits` section breaks a rule (or comes without `CGROUP`): `what`
    /// says which.
    BadCgroupLimits { what: &'static str },
    /// An `Error` stage byte names no stage we know.
    UnknownStage { stage: u8 },
    /// An `Error` errno is negative.
    NegativeErrno { errno: i32 },
    /// An `Error` text is longer than `ERROR_TEXT_LEN_MAX`.
    ErrorTextTooLong { len: usize },
}

impl DecodeError {
    /// The stage an `Error` reply to the offending frame should carry.
    pub fn stage(&self) -> ErrorStage {
        match self {
            DecodeError::UnsupportedVersion { .. } => ErrorStage::Version,
            DecodeError::TooLong { .. }
            | DecodeError::ArgvTooMany { .. }
            | DecodeError::EnvTooMany { .. }
            | DecodeError::StringTooLong { .. }
            | DecodeError::ErrorTextTooLong { .. }
            | DecodeError::NotifyTextTooLong { .. } => ErrorStage::Limit,
            _ => ErrorStage::Decode,
        }
    }

    /// The errno an `Error` reply to the offending frame should carry.
    pub fn errno(&self) -> i32 {
        match self.stage() {
            ErrorStage::Version => libc::EPROTONOSUPPORT,
            ErrorStage::Limit => libc::E2BIG,
            _ => libc::EPROTO,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort { len } => {
                write!(
                    f,
                    "frame of {len} bytes is shorter than the {HEADER_LEN}-byte header"
                )
            }
            DecodeError::TooLong { len } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the {FRAME_LEN_MAX}-byte maximum"
                )
            }
            DecodeError::BadMagic { magic } => {
                write!(f, "bad magic {magic:02x?} (not a holden wire v1 frame)")
            }
            DecodeError::UnsupportedVersion {
                major,
                minor,
                request_id,
            } => write!(
                f,
                "request {request_id}: protocol version {major}.{minor} is not supported \
                 (this side speaks major {VERSION_MAJOR})"
            ),
            DecodeError::ReservedNotZero { offset } => {
                write!(f, "reserved byte at offset {offset} is not zero")
            }
            DecodeError::PayloadLenMismatch { declared, actual } => write!(
                f,
                "header declares a {declared}-byte payload but {actual} bytes follow"
            ),
            DecodeError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            DecodeError::Truncated { kind } => write!(f, "{kind:?} payload ends inside a field"),
            DecodeError::TrailingBytes { kind, count } => {
                write!(f, "{count} unexpected bytes after the {kind:?} payload")
            }
            DecodeError::ArgvEmpty => write!(f, "Start has an empty argv"),
            DecodeError::ArgvTooMany { count } => {
                write!(f, "Start has {count} argv entries (max {ARGV_COUNT_MAX})")
            }
            DecodeError::EnvTooMany { count } => {
                write!(f, "Start has {count} env entries (max {ENV_COUNT_MAX})")
            }
            DecodeError::StringTooLong { len } => {
                write!(f, "string of {len} bytes exceeds {STRING_LEN_MAX} bytes")
            }
            DecodeError::NulInString => write!(f, "string contains a NUL byte"),
            DecodeError::EnvEntryWithoutEquals => {
                write!(f, "env entry is not KEY=VALUE with a non-empty key")
            }
            DecodeError::UnknownStartFlags { bits } => {
                write!(f, "Start flags {bits:#x} contain unknown bits")
            }
            DecodeError::UnknownPresenceBits { bits } => {
                write!(f, "Start presence bits {bits:#x} contain unknown bits")
            }
            DecodeError::InvalidPid { pid } => write!(f, "pid {pid} is not positive"),
            DecodeError::NotifyTextTooLong { len } => {
                write!(
                    f,
                    "notify datagram of {len} bytes exceeds {NOTIFY_TEXT_LEN_MAX} bytes"
                )
            }
            DecodeError::NotifyRequestId { id } => {
                write!(f, "Notify has request id {id}, not 0")
            }
            DecodeError::BadCgroupName => write!(
                f,
                "Start cgroup is not one path component of [A-Za-z0-9_.@-] (at most 255 bytes)"
            ),
            DecodeError::BadExecEnv { what } => write!(f, "Start exec section: {what}"),
            DecodeError::BadCgroupLimits { what } => {
                write!(f, "Start cgroup_limits section: {what}")
            }
            DecodeError::UnknownStage { stage } => write!(f, "unknown error stage {stage}"),
            DecodeError::NegativeErrno { errno } => write!(f, "errno {errno} is negative"),
            DecodeError::ErrorTextTooLong { len } => {
                write!(
                    f,
                    "error text of {len} bytes exceeds {ERROR_TEXT_LEN_MAX} bytes"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded. Nothing was promised to the peer: the buffer content is
/// unspecified and must not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer is shorter than the frame.
    BufferTooSmall { needed: usize, available: usize },
    /// The frame would exceed `FRAME_LEN_MAX`.
    FrameTooLarge { len: usize },
    /// argv has no entry.
    ArgvEmpty,
    /// argv has more than `ARGV_COUNT_MAX` entries.
    ArgvTooMany { count: usize },
    /// env has more than `ENV_COUNT_MAX` entries.
    EnvTooMany { count: usize },
    /// A string is longer than `STRING_LEN_MAX`.
    StringTooLong { len: usize },
    /// A string contains a NUL byte.
    NulInString,
    /// An env entry is not `KEY=VALUE` with a non-empty key.
    EnvEntryWithoutEquals,
    /// A working directory is given but empty (absence is `None`).
    EmptyCwd,
    /// Start flags contain bits this version does not know.
    UnknownStartFlags { bits: u32 },
    /// A `Started` or `Notify` pid is not positive.
    InvalidPid { pid: i32 },
    /// An `Error` errno is negative.
    NegativeErrno { errno: i32 },
    /// An `Error` text is longer than `ERROR_TEXT_LEN_MAX`.
    ErrorTextTooLong { len: usize },
    /// A `Notify` datagram is longer than `NOTIFY_TEXT_LEN_MAX`.
    NotifyTextTooLong { len: usize },
    /// A `Notify` has a request id other than 0.
    NotifyRequestId { id: u64 },
    /// `StartFlags::CGROUP` without a `cgroup` (or the reverse), or a name that is not one
    /// path component.
    BadCgroupName,
    /// `StartFlags::EXEC_ENV` without an `exec` (or the reverse), or one that breaks a rule of
    /// the section: `what` says which.
    BadExecEnv { what: &'static str },
    /// `StartFlags::CGROUP_LIMITS` without limits (or the reverse), without `CGROUP`, or
    /// limits that break a rule of the section: `what` says which.
    BadCgroupLimits { what: &'static str },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "frame needs {needed} bytes but the buffer has {available}"
            ),
            EncodeError::FrameTooLarge { len } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the {FRAME_LEN_MAX}-byte maximum"
                )
            }
            EncodeError::ArgvEmpty => write!(f, "argv is empty"),
            EncodeError::ArgvTooMany { count } => {
                write!(f, "argv has {count} entries (max {ARGV_COUNT_MAX})")
            }
            EncodeError::EnvTooMany { count } => {
                write!(f, "env has {count} entries (max {ENV_COUNT_MAX})")
            }
            EncodeError::StringTooLong { len } => {
                write!(f, "string of {len} bytes exceeds {STRING_LEN_MAX} bytes")
            }
            EncodeError::NulInString => write!(f, "string contains a NUL byte"),
            EncodeError::EnvEntryWithoutEquals => {
                write!(f, "env entry is not KEY=VALUE with a non-empty key")
            }
            EncodeError::EmptyCwd => write!(f, "working directory is empty"),
            EncodeError::UnknownStartFlags { bits } => {
                write!(f, "start flags {bits:#x} contain unknown bits")
            }
            EncodeError::InvalidPid { pid } => write!(f, "pid {pid} is not positive"),
            EncodeError::NegativeErrno { errno } => write!(f, "errno {errno} is negative"),
            EncodeError::NotifyTextTooLong { len } => {
                write!(
                    f,
                    "notify datagram of {len} bytes exceeds {NOTIFY_TEXT_LEN_MAX} bytes"
                )
            }
            EncodeError::NotifyRequestId { id } => {
                write!(f, "a Notify has request id 0, not {id}")
            }
            EncodeError::BadCgroupName => write!(
                f,
                "cgroup given without StartFlags::CGROUP (or the reverse), or not one path component"
            ),
            EncodeError::BadExecEnv { what } => write!(f, "Start exec section: {what}"),
            EncodeError::BadCgroupLimits { what } => {
                write!(f, "Start cgroup_limits section: {what}")
            }
            EncodeError::ErrorTextTooLong { len } => {
                write!(
                    f,
                    "error text of {len} bytes exceeds {ERROR_TEXT_LEN_MAX} bytes"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}
