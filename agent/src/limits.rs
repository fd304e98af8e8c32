//! Every bound of the agent, as named constants. Memory is sized from these at
//! start-up; nothing grows with the number of requests or processes.

use holden::wire::{v02, v1};

/// Most client connections served at once (v1 and legacy together). A
/// connection beyond this is accepted, told why, and closed at once.
pub const CONNECTIONS_MAX: usize = 64;

/// `listen(2)` backlog of each listening socket.
pub const LISTEN_BACKLOG: i32 = 128;

/// Default time a connection may take to send a complete first v1 frame, or
/// (legacy) to complete a started frame or stay idle, before it is dropped.
pub const READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Smallest and largest accepted `--read-timeout-ms`.
pub const READ_TIMEOUT_MS_MIN: u64 = 10;
pub const READ_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// Receive buffer of a v1 connection: one packet (larger ones are truncated by
/// the kernel, detected with MSG_TRUNC and refused).
pub const V1_RECV_BYTES: usize = v1::FRAME_LEN_MAX;

/// Receive buffer of a legacy (stream) connection: the largest v0.2 frame.
pub const LEGACY_RECV_BYTES: usize = v02::FRAME_LEN_MAX;

/// Most `--allow-uid` options.
pub const ALLOW_UIDS_MAX: usize = 32;

/// Most entries and bytes of the agent's own environment kept for
/// `INHERIT_ENV` starts and for legacy starts; the rest is dropped (logged).
pub const INHERITED_ENV_COUNT_MAX: usize = 256;
pub const INHERITED_ENV_BYTES_MAX: usize = 64 * 1024;

/// Longest socket path (`sun_path` less its NUL).
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

/// Frames handled per legacy connection per wake-up: bounded by what fits in
/// its buffer (the smallest v0.2 frame is the 8-byte header).
pub const LEGACY_FRAMES_PER_WAKE_MAX: usize = LEGACY_RECV_BYTES / v02::HEADER_LEN;
