//! Every bound of the agent, as named constants. Memory is sized from these at
//! start-up; nothing grows with the number of requests or processes.

use holden::wire::{v02, v1};

/// Most client connections served at once (v1 and v0.2 together). A
/// connection beyond this is accepted, told why, and closed at once.
pub const CONNECTIONS_MAX: usize = 64;

/// Most gated starts (wire 1.1) whose exec is not confirmed yet, over all
/// connections: each holds three fds (pidfd, report pipe, gate) and one entry
/// of the poll array until its `Running` or `Error` is sent. A `Start` beyond
/// this is refused (`Error` stage `limit`, errno `EAGAIN`).
pub const PENDING_EXECS_MAX: usize = 64;

/// Most of those on one connection, so that one client cannot take them all.
pub const PENDING_EXECS_PER_CONN_MAX: usize = 16;

/// Bytes of a pending start's program name kept for its log line and error
/// text (the spec is reused by the next request); longer names are cut.
pub const PENDING_PROGRAM_BYTES: usize = 160;

/// `listen(2)` backlog of each listening socket.
pub const LISTEN_BACKLOG: i32 = 128;

/// Default time a connection may take to send a complete first v1 frame, or
/// (v0.2) to complete a started frame or stay idle, before it is dropped.
pub const READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Smallest and largest accepted `--read-timeout-ms` (and `--exec-timeout-ms`).
pub const READ_TIMEOUT_MS_MIN: u64 = 10;
pub const READ_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// Default time a gated child has, from its go-ahead, to finish `execve`
/// before the agent withdraws the go-ahead, kills it and answers `Error`
/// stage `exec`, `ETIMEDOUT`. Below holden-orchestrator's default
/// `agent.request_timeout` (5 s), so that the `Error` arrives while the
/// orchestrator still waits for it (a later one it takes for misbehaviour).
pub const EXEC_TIMEOUT_MS_DEFAULT: u64 = 3_000;

/// Receive buffer of a v1 connection: one packet (larger ones are truncated by
/// the kernel, detected with MSG_TRUNC and refused).
pub const V1_RECV_BYTES: usize = v1::FRAME_LEN_MAX;

/// Receive buffer of a v0.2 (stream) connection: the largest v0.2 frame.
pub const V02_RECV_BYTES: usize = v02::FRAME_LEN_MAX;

/// Most `--allow-uid` options.
pub const ALLOW_UIDS_MAX: usize = 32;

/// Most entries and bytes of the agent's own environment kept for
/// `INHERIT_ENV` starts and for v0.2 starts; the rest is dropped (logged).
pub const INHERITED_ENV_COUNT_MAX: usize = 256;
pub const INHERITED_ENV_BYTES_MAX: usize = 64 * 1024;

/// Longest socket path (`sun_path` less its NUL).
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

/// Frames handled per v0.2 connection per wake-up: bounded by what fits in
/// its buffer (the smallest v0.2 frame is the 8-byte header).
pub const V02_FRAMES_PER_WAKE_MAX: usize = V02_RECV_BYTES / v02::HEADER_LEN;
