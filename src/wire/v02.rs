//! The legacy holden v0.2 wire format (C structs over SOCK_STREAM), so that holden can replace
//! either side of a v0.2 deployment.
//!
//! Layout (host byte order, as the C code wrote its structs): an 8-byte header
//! `{u32 type; u32 length}` followed by `length` payload bytes. `START_PROCESS` carries
//! `char name[256]; char args[32][256]; int32 arg_count` (8452 bytes), `PROCESS_STARTED`
//! `int32 host_pid; int32 container_pid` (8 bytes), `PROCESS_ERROR` `char error[512]`,
//! `PING`/`PONG` nothing. After a `PROCESS_STARTED` the agent sends one data byte `'x'` in a
//! separate `sendmsg` carrying the pidfd in SCM_RIGHTS.
//!
//! Unlike v0.2 this decoder never trusts `length`: a known type must have exactly its fixed
//! size, any other type at most [`PAYLOAD_LEN_MAX`] (the size of the v0.2 message union,
//! 16,904 bytes: its process-list member is the largest), and nothing is read past the buffer. It is stream-oriented: [`decode`] returns either
//! [`Decoded::NeedMore`] or a frame and the number of bytes it consumed.

use core::fmt;
use core::fmt::Write as _;

/// Length of the `{u32 type; u32 length}` header.
pub const HEADER_LEN: usize = 8;
/// Size of `char name[256]`.
pub const NAME_LEN: usize = 256;
/// Size of each `char args[i][256]`.
pub const ARG_LEN: usize = 256;
/// Number of `args` slots.
pub const ARG_COUNT_MAX: usize = 32;
/// Most argv entries a START can carry: the name plus every arg slot.
pub const ARGV_COUNT_MAX: usize = 1 + ARG_COUNT_MAX;
/// Longest name or argument in bytes: the field less its NUL terminator.
pub const STRING_LEN_MAX: usize = ARG_LEN - 1;
/// Offset of `int32 arg_count` in a START payload.
pub const ARG_COUNT_OFFSET: usize = NAME_LEN + ARG_COUNT_MAX * ARG_LEN;
/// `length` of a START_PROCESS payload.
pub const START_PAYLOAD_LEN: usize = ARG_COUNT_OFFSET + 4;
/// `length` of a PROCESS_STARTED payload.
pub const STARTED_PAYLOAD_LEN: usize = 8;
/// `length` of a PROCESS_ERROR payload.
pub const ERROR_PAYLOAD_LEN: usize = 512;
/// Longest error text: the field less its NUL terminator.
pub const ERROR_TEXT_LEN_MAX: usize = ERROR_PAYLOAD_LEN - 1;
/// Size of the v0.2 message union: `sizeof(message_t)` is 16,912 with the 8-byte header, and
/// its largest member is the process list, not `START_PROCESS` (8452).
pub const UNION_LEN: usize = 16_904;
/// Largest payload of any type: the size of the v0.2 message union.
pub const PAYLOAD_LEN_MAX: usize = UNION_LEN;
/// Largest frame: a receive buffer of this size always suffices.
pub const FRAME_LEN_MAX: usize = HEADER_LEN + PAYLOAD_LEN_MAX;
/// The one data byte of the separate message that carries the pidfd.
pub const PIDFD_MARKER: u8 = b'x';
/// Socket path of v0.2 when `HOLDEN_SOCKET_PATH` is not set.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/process_orchestrator.sock";
/// Environment variable that overrides the v0.2 socket path.
pub const SOCKET_PATH_ENV: &str = "HOLDEN_SOCKET_PATH";
/// Socket path the v0.2 AutoSD demo uses.
pub const AUTOSD_SOCKET_PATH: &str = "/run/holden/qm_orchestrator.sock";

const _: () = assert!(START_PAYLOAD_LEN == 8452);
const _: () = assert!(HEADER_LEN + UNION_LEN == 16_912 && START_PAYLOAD_LEN <= UNION_LEN);

/// The twelve v0.2 message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u32)]
pub enum MessageType {
    StartProcess = 1,
    ProcessStarted = 2,
    ProcessError = 3,
    Ack = 4,
    ListProcesses = 5,
    ProcessList = 6,
    StopProcess = 7,
    ProcessStopped = 8,
    ApplyConstraints = 9,
    ConstraintsApplied = 10,
    Ping = 11,
    Pong = 12,
}

impl MessageType {
    /// Maps a header `type` to a message type, `None` for an unknown value.
    pub fn from_u32(value: u32) -> Option<MessageType> {
        use MessageType::*;
        Some(match value {
            1 => StartProcess,
            2 => ProcessStarted,
            3 => ProcessError,
            4 => Ack,
            5 => ListProcesses,
            6 => ProcessList,
            7 => StopProcess,
            8 => ProcessStopped,
            9 => ApplyConstraints,
            10 => ConstraintsApplied,
            11 => Ping,
            12 => Pong,
            _ => return None,
        })
    }

    /// The payload length this type must have, `None` for the types whose v0.2 payload holden
    /// does not interpret (their length is only bounded by `PAYLOAD_LEN_MAX`).
    pub fn fixed_payload_len(self) -> Option<usize> {
        match self {
            MessageType::StartProcess => Some(START_PAYLOAD_LEN),
            MessageType::ProcessStarted => Some(STARTED_PAYLOAD_LEN),
            MessageType::ProcessError => Some(ERROR_PAYLOAD_LEN),
            MessageType::Ping | MessageType::Pong => Some(0),
            _ => None,
        }
    }
}

/// Result of decoding from a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The buffer holds a valid prefix; at least `bytes` more bytes are needed.
    NeedMore { bytes: usize },
    /// A complete value, made of the first `consumed` bytes of the buffer.
    Done { value: T, consumed: usize },
}

/// A decoded v0.2 frame borrowing from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Start(Start<'a>),
    Started {
        host_pid: i32,
        container_pid: i32,
    },
    /// The error text, up to (not including) its NUL terminator.
    Error {
        text: &'a [u8],
    },
    Ping,
    Pong,
    /// A known type holden does not interpret (ACK, LIST_PROCESSES, ...), with its raw payload.
    Other {
        msg_type: MessageType,
        payload: &'a [u8],
    },
    /// A type outside 1..=12, with its raw payload: the answer is
    /// [`encode_unknown_type_error`].
    Unknown {
        msg_type: u32,
        payload: &'a [u8],
    },
}

/// A validated START_PROCESS payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start<'a> {
    /// The 8452-byte payload; every string in use is NUL-terminated within its field.
    payload: &'a [u8],
    arg_count: usize,
}

impl<'a> Start<'a> {
    /// `name`: argv[0], the program.
    pub fn name(&self) -> &'a [u8] {
        field_str(self.payload, 0, NAME_LEN)
    }

    /// `arg_count` (0..=32).
    pub fn arg_count(&self) -> usize {
        self.arg_count
    }

    /// Number of argv entries: the name plus the args.
    pub fn argv_len(&self) -> usize {
        1 + self.arg_count
    }

    /// The argv: `name`, then `args[0..arg_count]`, each trimmed at its NUL.
    pub fn argv(&self) -> LegacyArgv<'a> {
        LegacyArgv {
            start: *self,
            next: 0,
        }
    }
}

/// Iterator over the argv of a legacy [`Start`].
#[derive(Clone, Debug)]
pub struct LegacyArgv<'a> {
    start: Start<'a>,
    next: usize,
}

impl<'a> Iterator for LegacyArgv<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.next >= self.start.argv_len() {
            return None;
        }
        let index = self.next;
        self.next += 1;
        if index == 0 {
            return Some(self.start.name());
        }
        let offset = NAME_LEN + (index - 1) * ARG_LEN;
        Some(field_str(self.start.payload, offset, ARG_LEN))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.start.argv_len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for LegacyArgv<'_> {}

/// Which fixed-size string field is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringField {
    Name,
    /// `args[i]`.
    Arg(usize),
    ErrorText,
}

impl fmt::Display for StringField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringField::Name => write!(f, "name"),
            StringField::Arg(i) => write!(f, "args[{i}]"),
            StringField::ErrorText => write!(f, "error"),
        }
    }
}

/// Why bytes are not a valid v0.2 frame. After any of these the stream cannot be
/// resynchronised: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A known type with a `length` other than its fixed payload size.
    LengthMismatch {
        msg_type: MessageType,
        length: u32,
        expected: usize,
    },
    /// A `length` above `PAYLOAD_LEN_MAX` (what the v0.2 receiver would have read past its
    /// buffer).
    LengthTooLarge { msg_type: u32, length: u32 },
    /// `arg_count` outside 0..=32.
    ArgCountOutOfRange { arg_count: i32 },
    /// A string field in use has no NUL terminator within its size.
    Unterminated { field: StringField },
    /// The START name (argv[0]) is empty.
    EmptyName,
    /// The byte that should carry the pidfd is not `'x'`.
    BadPidfdMarker { byte: u8 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::LengthMismatch {
                msg_type,
                length,
                expected,
            } => write!(
                f,
                "v0.2 {msg_type:?} message declares length {length}, must be {expected}"
            ),
            DecodeError::LengthTooLarge { msg_type, length } => write!(
                f,
                "v0.2 message type {msg_type} declares length {length}, above the \
                 {PAYLOAD_LEN_MAX}-byte maximum"
            ),
            DecodeError::ArgCountOutOfRange { arg_count } => {
                write!(
                    f,
                    "v0.2 START arg_count {arg_count} is outside 0..={ARG_COUNT_MAX}"
                )
            }
            DecodeError::Unterminated { field } => {
                write!(f, "v0.2 field {field} has no NUL terminator")
            }
            DecodeError::EmptyName => write!(f, "v0.2 START has an empty name"),
            DecodeError::BadPidfdMarker { byte } => write!(
                f,
                "expected the pidfd marker byte 'x' after PROCESS_STARTED, got {byte:#04x}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a v0.2 frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer is shorter than the frame.
    BufferTooSmall { needed: usize, available: usize },
    /// argv is empty (v0.2 needs at least the name).
    ArgvEmpty,
    /// argv has more than `ARGV_COUNT_MAX` entries.
    ArgvTooMany { count: usize },
    /// argv[0] is empty.
    EmptyName,
    /// A name or argument is longer than `STRING_LEN_MAX`.
    StringTooLong { len: usize },
    /// An error text is longer than `ERROR_TEXT_LEN_MAX`.
    ErrorTextTooLong { len: usize },
    /// A string contains a NUL byte.
    NulInString,
    /// A raw payload is longer than `PAYLOAD_LEN_MAX`.
    PayloadTooLarge { len: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "v0.2 frame needs {needed} bytes but the buffer has {available}"
            ),
            EncodeError::ArgvEmpty => write!(f, "argv is empty"),
            EncodeError::ArgvTooMany { count } => write!(
                f,
                "argv has {count} entries; v0.2 carries at most {ARGV_COUNT_MAX}"
            ),
            EncodeError::EmptyName => write!(f, "argv[0] is empty"),
            EncodeError::StringTooLong { len } => write!(
                f,
                "string of {len} bytes exceeds the v0.2 limit of {STRING_LEN_MAX}"
            ),
            EncodeError::ErrorTextTooLong { len } => write!(
                f,
                "error text of {len} bytes exceeds the v0.2 limit of {ERROR_TEXT_LEN_MAX}"
            ),
            EncodeError::NulInString => write!(f, "string contains a NUL byte"),
            EncodeError::PayloadTooLarge { len } => write!(
                f,
                "payload of {len} bytes exceeds the v0.2 limit of {PAYLOAD_LEN_MAX}"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Decodes the first frame of a stream buffer. Never reads past `buf`, never panics.
pub fn decode(buf: &[u8]) -> Result<Decoded<Frame<'_>>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(Decoded::NeedMore {
            bytes: HEADER_LEN - buf.len(),
        });
    };
    let msg_type = read_u32(header, 0);
    let length = read_u32(header, 4);
    let known = MessageType::from_u32(msg_type);
    let payload_len = check_length(msg_type, known, length)?;
    let frame_len = HEADER_LEN + payload_len;
    let Some(payload) = buf.get(HEADER_LEN..frame_len) else {
        return Ok(Decoded::NeedMore {
            bytes: frame_len - buf.len(),
        });
    };
    let frame = match known {
        Some(MessageType::StartProcess) => Frame::Start(decode_start(payload)?),
        Some(MessageType::ProcessStarted) => Frame::Started {
            host_pid: read_i32(payload, 0),
            container_pid: read_i32(payload, 4),
        },
        Some(MessageType::ProcessError) => Frame::Error {
            text: terminated(payload, StringField::ErrorText)?,
        },
        Some(MessageType::Ping) => Frame::Ping,
        Some(MessageType::Pong) => Frame::Pong,
        Some(other) => Frame::Other {
            msg_type: other,
            payload,
        },
        None => Frame::Unknown { msg_type, payload },
    };
    Ok(Decoded::Done {
        value: frame,
        consumed: frame_len,
    })
}

/// Decodes the one-byte message that carries the pidfd (the fd itself is the transport's).
pub fn decode_pidfd_marker(buf: &[u8]) -> Result<Decoded<()>, DecodeError> {
    match buf.first() {
        None => Ok(Decoded::NeedMore { bytes: 1 }),
        Some(&PIDFD_MARKER) => Ok(Decoded::Done {
            value: (),
            consumed: 1,
        }),
        Some(&byte) => Err(DecodeError::BadPidfdMarker { byte }),
    }
}

/// The payload length `length` stands for, if this type may have it.
fn check_length(
    msg_type: u32,
    known: Option<MessageType>,
    length: u32,
) -> Result<usize, DecodeError> {
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if let Some(kind) = known {
        if let Some(fixed) = kind.fixed_payload_len() {
            if len != fixed {
                return Err(DecodeError::LengthMismatch {
                    msg_type: kind,
                    length,
                    expected: fixed,
                });
            }
        }
    }
    if len > PAYLOAD_LEN_MAX {
        return Err(DecodeError::LengthTooLarge { msg_type, length });
    }
    Ok(len)
}

fn decode_start(payload: &[u8]) -> Result<Start<'_>, DecodeError> {
    let raw_count = read_i32(payload, ARG_COUNT_OFFSET);
    let arg_count = usize::try_from(raw_count)
        .ok()
        .filter(|&n| n <= ARG_COUNT_MAX)
        .ok_or(DecodeError::ArgCountOutOfRange {
            arg_count: raw_count,
        })?;
    let name = terminated(payload.get(..NAME_LEN).unwrap_or(&[]), StringField::Name)?;
    if name.is_empty() {
        return Err(DecodeError::EmptyName);
    }
    for i in 0..arg_count {
        let offset = NAME_LEN + i * ARG_LEN;
        let field = payload.get(offset..offset + ARG_LEN).unwrap_or(&[]);
        terminated(field, StringField::Arg(i))?;
    }
    Ok(Start { payload, arg_count })
}

/// The bytes of `field` before its first NUL; no NUL is an error.
fn terminated(field: &[u8], which: StringField) -> Result<&[u8], DecodeError> {
    match field.iter().position(|&b| b == 0) {
        Some(nul) => Ok(&field[..nul]),
        None => Err(DecodeError::Unterminated { field: which }),
    }
}

/// A validated field's string (empty if out of range, which validation rules out).
fn field_str(payload: &[u8], offset: usize, len: usize) -> &[u8] {
    let field = payload.get(offset..offset + len).unwrap_or(&[]);
    let end = field.iter().position(|&b| b == 0).unwrap_or(0);
    &field[..end]
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(src) = bytes.get(offset..offset + 4) {
        raw.copy_from_slice(src);
    }
    u32::from_ne_bytes(raw)
}

fn read_i32(bytes: &[u8], offset: usize) -> i32 {
    read_u32(bytes, offset) as i32
}

/// Encodes a START_PROCESS: `argv[0]` becomes `name`, the rest `args`; unused bytes are zero.
pub fn encode_start<A: AsRef<[u8]>>(buf: &mut [u8], argv: &[A]) -> Result<usize, EncodeError> {
    let Some((name, args)) = argv.split_first() else {
        return Err(EncodeError::ArgvEmpty);
    };
    if argv.len() > ARGV_COUNT_MAX {
        return Err(EncodeError::ArgvTooMany { count: argv.len() });
    }
    if name.as_ref().is_empty() {
        return Err(EncodeError::EmptyName);
    }
    for arg in argv {
        check_string(arg.as_ref(), STRING_LEN_MAX, false)?;
    }
    let payload = begin(buf, MessageType::StartProcess as u32, START_PAYLOAD_LEN)?;
    payload.fill(0);
    payload[..name.as_ref().len()].copy_from_slice(name.as_ref());
    for (i, arg) in args.iter().enumerate() {
        let offset = NAME_LEN + i * ARG_LEN;
        payload[offset..offset + arg.as_ref().len()].copy_from_slice(arg.as_ref());
    }
    // args.len() <= ARG_COUNT_MAX (32), so it fits i32.
    let arg_count = args.len() as i32;
    payload[ARG_COUNT_OFFSET..].copy_from_slice(&arg_count.to_ne_bytes());
    Ok(HEADER_LEN + START_PAYLOAD_LEN)
}

/// Encodes a PROCESS_STARTED. Send [`PIDFD_MARKER`] with the pidfd in a separate `sendmsg`.
pub fn encode_started(
    buf: &mut [u8],
    host_pid: i32,
    container_pid: i32,
) -> Result<usize, EncodeError> {
    let payload = begin(buf, MessageType::ProcessStarted as u32, STARTED_PAYLOAD_LEN)?;
    payload[..4].copy_from_slice(&host_pid.to_ne_bytes());
    payload[4..].copy_from_slice(&container_pid.to_ne_bytes());
    Ok(HEADER_LEN + STARTED_PAYLOAD_LEN)
}

/// Encodes a PROCESS_ERROR with `text` (at most `ERROR_TEXT_LEN_MAX` bytes, no NUL).
pub fn encode_error(buf: &mut [u8], text: &[u8]) -> Result<usize, EncodeError> {
    check_string(text, ERROR_TEXT_LEN_MAX, true)?;
    let payload = begin(buf, MessageType::ProcessError as u32, ERROR_PAYLOAD_LEN)?;
    payload.fill(0);
    payload[..text.len()].copy_from_slice(text);
    Ok(HEADER_LEN + ERROR_PAYLOAD_LEN)
}

/// Encodes the v0.2 answer to an unknown type: PROCESS_ERROR "Unknown message type: N".
pub fn encode_unknown_type_error(buf: &mut [u8], msg_type: u32) -> Result<usize, EncodeError> {
    let mut text = arrayvec::ArrayString::<48>::new();
    // "Unknown message type: " plus at most 10 digits fits 48 bytes.
    let _ = write!(text, "Unknown message type: {msg_type}");
    encode_error(buf, text.as_bytes())
}

/// Encodes a PING.
pub fn encode_ping(buf: &mut [u8]) -> Result<usize, EncodeError> {
    begin(buf, MessageType::Ping as u32, 0)?;
    Ok(HEADER_LEN)
}

/// Encodes a PONG.
pub fn encode_pong(buf: &mut [u8]) -> Result<usize, EncodeError> {
    begin(buf, MessageType::Pong as u32, 0)?;
    Ok(HEADER_LEN)
}

/// Writes the one-byte pidfd marker; the caller attaches the pidfd (SCM_RIGHTS) to this byte.
pub fn encode_pidfd_marker(buf: &mut [u8]) -> Result<usize, EncodeError> {
    let byte = buf.first_mut().ok_or(EncodeError::BufferTooSmall {
        needed: 1,
        available: 0,
    })?;
    *byte = PIDFD_MARKER;
    Ok(1)
}

/// Encodes any type with a raw payload (at most `PAYLOAD_LEN_MAX` bytes); for tests and for
/// types holden does not interpret. Fixed-size types should use their own encoder.
pub fn encode_raw(buf: &mut [u8], msg_type: u32, payload: &[u8]) -> Result<usize, EncodeError> {
    if payload.len() > PAYLOAD_LEN_MAX {
        return Err(EncodeError::PayloadTooLarge { len: payload.len() });
    }
    begin(buf, msg_type, payload.len())?.copy_from_slice(payload);
    Ok(HEADER_LEN + payload.len())
}

/// Checks the buffer, writes the header, returns the payload area (exactly `payload_len`).
fn begin(buf: &mut [u8], msg_type: u32, payload_len: usize) -> Result<&mut [u8], EncodeError> {
    let needed = HEADER_LEN + payload_len;
    if buf.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    let (header, rest) = buf.split_at_mut(HEADER_LEN);
    header[..4].copy_from_slice(&msg_type.to_ne_bytes());
    // payload_len <= PAYLOAD_LEN_MAX, so it fits u32.
    header[4..].copy_from_slice(&(payload_len as u32).to_ne_bytes());
    Ok(&mut rest[..payload_len])
}

fn check_string(string: &[u8], len_max: usize, is_error_text: bool) -> Result<(), EncodeError> {
    if string.len() > len_max {
        return Err(if is_error_text {
            EncodeError::ErrorTextTooLong { len: string.len() }
        } else {
            EncodeError::StringTooLong { len: string.len() }
        });
    }
    if string.contains(&0) {
        return Err(EncodeError::NulInString);
    }
    Ok(())
}

/// An owned v0.2 frame, for tests and fuzzing: `decode(encode(x)) == x` for every valid one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum OwnedFrame {
    Start {
        argv: Vec<Vec<u8>>,
    },
    Started {
        host_pid: i32,
        container_pid: i32,
    },
    Error {
        text: Vec<u8>,
    },
    Ping,
    Pong,
    Other {
        msg_type: MessageType,
        payload: Vec<u8>,
    },
    Unknown {
        msg_type: u32,
        payload: Vec<u8>,
    },
}

impl OwnedFrame {
    /// Encodes into `buf`; an invalid frame is an error.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            OwnedFrame::Start { argv } => encode_start(buf, argv),
            OwnedFrame::Started {
                host_pid,
                container_pid,
            } => encode_started(buf, *host_pid, *container_pid),
            OwnedFrame::Error { text } => encode_error(buf, text),
            OwnedFrame::Ping => encode_ping(buf),
            OwnedFrame::Pong => encode_pong(buf),
            OwnedFrame::Other { msg_type, payload } => match msg_type.fixed_payload_len() {
                // Fixed-size types are not `Other` when decoded: refuse to build one.
                Some(_) => Err(EncodeError::PayloadTooLarge { len: payload.len() }),
                None => encode_raw(buf, *msg_type as u32, payload),
            },
            OwnedFrame::Unknown { msg_type, payload } => match MessageType::from_u32(*msg_type) {
                Some(_) => Err(EncodeError::PayloadTooLarge { len: payload.len() }),
                None => encode_raw(buf, *msg_type, payload),
            },
        }
    }
}

impl Frame<'_> {
    /// Copies the frame into an owned one.
    pub fn to_owned_frame(&self) -> OwnedFrame {
        match *self {
            Frame::Start(start) => OwnedFrame::Start {
                argv: start.argv().map(<[u8]>::to_vec).collect(),
            },
            Frame::Started {
                host_pid,
                container_pid,
            } => OwnedFrame::Started {
                host_pid,
                container_pid,
            },
            Frame::Error { text } => OwnedFrame::Error {
                text: text.to_vec(),
            },
            Frame::Ping => OwnedFrame::Ping,
            Frame::Pong => OwnedFrame::Pong,
            Frame::Other { msg_type, payload } => OwnedFrame::Other {
                msg_type,
                payload: payload.to_vec(),
            },
            Frame::Unknown { msg_type, payload } => OwnedFrame::Unknown {
                msg_type,
                payload: payload.to_vec(),
            },
        }
    }
}
