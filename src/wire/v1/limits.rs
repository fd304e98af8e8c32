//! Every size, count and length bound of holden wire v1, as named constants.
//!
//! The receive buffer of a peer is `FRAME_LEN_MAX` bytes, allocated once; every other limit
//! bounds a field inside that buffer so that a decoder knows the worst case before it reads.

/// The four magic bytes that open every v1 frame: ASCII `HLDN`.
pub const MAGIC: [u8; 4] = *b"HLDN";

/// The protocol major version this code speaks. A different major is refused with
/// [`crate::wire::v1::DecodeError::UnsupportedVersion`].
pub const VERSION_MAJOR: u8 = 1;

/// The protocol minor version this code speaks. Minor versions only add things a peer may ignore.
///
/// 1.1 added the `Running` frame and the gated exec (`Capabilities::GATED_EXEC`); 1.2 the
/// `Notify` frame and `StartFlags::NOTIFY` (`Capabilities::NOTIFY_FORWARD`).
pub const VERSION_MINOR: u8 = 2;

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;

/// Length of the header prefix (magic, version, kind, reserved byte, request id) whose layout is
/// frozen for every major version, so that any peer can read the request id of a frame it
/// cannot otherwise decode and answer it with an `Error` frame of stage `version`.
pub const HEADER_FROZEN_LEN: usize = 16;

/// Largest frame (header plus payload) in bytes: one SOCK_SEQPACKET packet.
pub const FRAME_LEN_MAX: usize = 16384;

/// Largest payload in bytes.
pub const PAYLOAD_LEN_MAX: usize = FRAME_LEN_MAX - HEADER_LEN;

/// Most entries in a `Start` argv (at least one entry is required).
pub const ARGV_COUNT_MAX: usize = 256;

/// Most entries in a `Start` environment.
pub const ENV_COUNT_MAX: usize = 256;

/// Longest argv entry, env entry or working directory in bytes, without a terminator: the
/// string plus the NUL the agent appends fits `PATH_MAX` (4096).
pub const STRING_LEN_MAX: usize = 4095;

/// Longest `Error` text in bytes.
pub const ERROR_TEXT_LEN_MAX: usize = 256;

/// Length of the length prefix (u16, little-endian) before every string.
pub const STRING_PREFIX_LEN: usize = 2;

/// Length of the fixed part of a `Start` payload (before the working directory bytes).
pub const START_FIXED_LEN: usize = 20;

/// Length of a `Started` payload.
pub const STARTED_PAYLOAD_LEN: usize = 4;

/// Length of the fixed part of an `Error` payload (before the text bytes).
pub const ERROR_FIXED_LEN: usize = 8;

/// Length of a `Ping` payload.
pub const PING_PAYLOAD_LEN: usize = 0;

/// Length of a `Pong` payload.
pub const PONG_PAYLOAD_LEN: usize = 8;

/// Payload length of a `Running` (empty).
pub const RUNNING_PAYLOAD_LEN: usize = 0;

/// Length of the fixed part of a `Notify` payload (before the datagram bytes).
pub const NOTIFY_FIXED_LEN: usize = 8;

/// Longest forwarded sd_notify datagram in bytes (systemd reads at most 4096).
pub const NOTIFY_TEXT_LEN_MAX: usize = 4096;

/// Longest `cgroup` name of a `Start` (one path component).
pub const CGROUP_NAME_LEN_MAX: usize = 255;

/// Number of file descriptors that travel with a `Started` frame (SCM_RIGHTS): the pidfd.
/// Every other frame travels with none.
pub const STARTED_FD_COUNT: usize = 1;

const _: () = assert!(FRAME_LEN_MAX <= 16 * 1024);
const _: () = assert!(PAYLOAD_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(STRING_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(ERROR_TEXT_LEN_MAX + ERROR_FIXED_LEN <= PAYLOAD_LEN_MAX);
const _: () = assert!(NOTIFY_TEXT_LEN_MAX + NOTIFY_FIXED_LEN <= PAYLOAD_LEN_MAX);
const _: () = assert!(NOTIFY_TEXT_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(ARGV_COUNT_MAX <= u16::MAX as usize);
const _: () = assert!(ENV_COUNT_MAX <= u16::MAX as usize);
const _: () = assert!(HEADER_FROZEN_LEN <= HEADER_LEN);
