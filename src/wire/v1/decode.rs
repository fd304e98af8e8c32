//! The v1 decoder: one packet in, a frame borrowing from it out. No allocation, no panic.

use super::cursor::Reader;
use super::error::DecodeError;
use super::limits::{
    ARGV_COUNT_MAX, CGROUP_NAME_LEN_MAX, ENV_COUNT_MAX, ERROR_TEXT_LEN_MAX, FRAME_LEN_MAX,
    HEADER_FROZEN_LEN, HEADER_LEN, MAGIC, NOTIFY_TEXT_LEN_MAX, STRING_LEN_MAX, VERSION_MAJOR,
    VERSION_MINOR,
};
use super::types::{Capabilities, ErrorStage, FrameKind, Pong, StartFlags};

/// Presence bit of the uid field of a `Start`.
pub const PRESENT_UID: u8 = 1 << 0;
/// Presence bit of the gid field of a `Start`.
pub const PRESENT_GID: u8 = 1 << 1;
const PRESENT_ALL: u8 = PRESENT_UID | PRESENT_GID;

/// Offsets of the header fields, from the start of the packet.
pub mod header_offset {
    /// `[u8; 4]` magic.
    pub const MAGIC: usize = 0;
    /// `u8` major version.
    pub const VERSION_MAJOR: usize = 4;
    /// `u8` minor version.
    pub const VERSION_MINOR: usize = 5;
    /// `u8` frame kind.
    pub const KIND: usize = 6;
    /// `u8` reserved, zero.
    pub const RESERVED_0: usize = 7;
    /// `u64` request id.
    pub const REQUEST_ID: usize = 8;
    /// `u32` payload length.
    pub const PAYLOAD_LEN: usize = 16;
    /// `u32` reserved, zero.
    pub const RESERVED_1: usize = 20;
}

/// Offsets of payload fields, from the start of the payload (add `HEADER_LEN` for the packet).
pub mod payload_offset {
    /// `Start`: `u32` flags.
    pub const START_FLAGS: usize = 0;
    /// `Start`: `u32` uid (0 when absent).
    pub const START_UID: usize = 4;
    /// `Start`: `u32` gid (0 when absent).
    pub const START_GID: usize = 8;
    /// `Start`: `u8` presence bits.
    pub const START_PRESENT: usize = 12;
    /// `Start`: `u8` reserved, zero.
    pub const START_RESERVED: usize = 13;
    /// `Start`: `u16` argv count.
    pub const START_ARGC: usize = 14;
    /// `Start`: `u16` env count.
    pub const START_ENVC: usize = 16;
    /// `Start`: `u16` working directory length.
    pub const START_CWD_LEN: usize = 18;
    /// `Start`: the working directory bytes, then the argv and env strings.
    pub const START_CWD: usize = 20;
    /// `Started`: `i32` pid.
    pub const STARTED_PID: usize = 0;
    /// `Notify`: `i32` sender pid.
    pub const NOTIFY_PID: usize = 0;
    /// `Notify`: `u16` reserved, zero.
    pub const NOTIFY_RESERVED: usize = 4;
    /// `Notify`: `u16` datagram length.
    pub const NOTIFY_TEXT_LEN: usize = 6;
    /// `Notify`: the datagram bytes.
    pub const NOTIFY_TEXT: usize = 8;
    /// `Error`: `i32` errno.
    pub const ERROR_ERRNO: usize = 0;
    /// `Error`: `u8` stage.
    pub const ERROR_STAGE: usize = 4;
    /// `Error`: `u8` reserved, zero.
    pub const ERROR_RESERVED: usize = 5;
    /// `Error`: `u16` text length.
    pub const ERROR_TEXT_LEN: usize = 6;
    /// `Error`: the text bytes.
    pub const ERROR_TEXT: usize = 8;
    /// `Pong`: `u8` major version.
    pub const PONG_VERSION_MAJOR: usize = 0;
    /// `Pong`: `u8` minor version.
    pub const PONG_VERSION_MINOR: usize = 1;
    /// `Pong`: `u16` reserved, zero.
    pub const PONG_RESERVED: usize = 2;
    /// `Pong`: `u32` capabilities.
    pub const PONG_CAPABILITIES: usize = 4;

    const _: () = assert!(START_CWD == super::super::limits::START_FIXED_LEN);
    const _: () = assert!(ERROR_TEXT == super::super::limits::ERROR_FIXED_LEN);
    const _: () = assert!(NOTIFY_TEXT == super::super::limits::NOTIFY_FIXED_LEN);
    const _: () = assert!(PONG_CAPABILITIES + 4 == super::super::limits::PONG_PAYLOAD_LEN);
}

/// A decoded, validated v1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Always `VERSION_MAJOR` once decoded.
    pub version_major: u8,
    /// The sender's minor version (may be higher than ours).
    pub version_minor: u8,
    /// What the payload is.
    pub kind: FrameKind,
    /// Chosen by the orchestrator for a request; every reply carries the request's id.
    pub request_id: u64,
    /// Bytes after the header.
    pub payload_len: u32,
}

/// A decoded frame borrowing its strings from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub body: Body<'a>,
}

impl Frame<'_> {
    /// The request id from the header.
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }
}

/// The payload of a frame, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Start(Start<'a>),
    Started(Started),
    Error(ErrorFrame<'a>),
    Ping,
    Pong(Pong),
    /// Minor 1+: the process announced by this request's `Started` exec'd its program.
    Running,
    /// Minor 2+: an sd_notify datagram forwarded by the agent.
    Notify(Notify<'a>),
}

/// A decoded `Start`: every string is validated (length, no NUL, env has `=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start<'a> {
    pub flags: StartFlags,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The working directory, `None` to keep the agent's.
    pub cwd: Option<&'a [u8]>,
    /// 1..=`ARGV_COUNT_MAX` entries; `argv[0]` is the program (searched in `PATH` if it has no `/`).
    pub argv: StrList<'a>,
    /// 0..=`ENV_COUNT_MAX` `KEY=VALUE` entries.
    pub env: StrList<'a>,
    /// With `StartFlags::CGROUP` (minor 2+): the name of the child's own cgroup, one path
    /// component of `[A-Za-z0-9_.@-]`, not starting with `.` nor `cgroup.`.
    pub cgroup: Option<&'a [u8]>,
    /// With `StartFlags::EXEC_ENV` (minor 2+): the child's execution environment.
    pub exec: Option<super::ExecSection<'a>>,
    /// With `StartFlags::CGROUP_LIMITS` (minor 2+, with `CGROUP`): the limits of the child's
    /// own cgroup.
    pub cgroup_limits: Option<super::CgroupLimitsSection<'a>>,
}

/// A decoded `Started`: the pid as the agent sees it (in the agent's PID namespace). The pidfd
/// travels beside the packet, in SCM_RIGHTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
}

/// A decoded `Notify`: who sent the datagram (a pid in the agent's PID namespace, from the
/// kernel's `SCM_CREDENTIALS`) and its bytes, unparsed (at most `NOTIFY_TEXT_LEN_MAX`, no NUL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify<'a> {
    pub pid: i32,
    pub text: &'a [u8],
}

/// A decoded `Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// A Linux errno (positive), or 0 when none applies.
    pub errno: i32,
    pub stage: ErrorStage,
    /// Human-readable, at most `ERROR_TEXT_LEN_MAX` bytes, no NUL (UTF-8 by convention).
    pub text: &'a [u8],
}

/// A validated list of length-prefixed strings inside a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrList<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> StrList<'a> {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the list has no string.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The strings, in order, without their length prefixes.
    pub fn iter(&self) -> StrIter<'a> {
        StrIter {
            left: self.count,
            bytes: self.bytes,
        }
    }
}

impl<'a> IntoIterator for StrList<'a> {
    type Item = &'a [u8];
    type IntoIter = StrIter<'a>;
    fn into_iter(self) -> StrIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`StrList`].
#[derive(Clone, Debug)]
pub struct StrIter<'a> {
    left: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        // The list was validated at decode time; the checks only keep this panic-free.
        let prefix = self.bytes.get(..2)?;
        let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
        let string = self.bytes.get(2..2 + len)?;
        self.bytes = self.bytes.get(2 + len..)?;
        self.left -= 1;
        Some(string)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for StrIter<'_> {}

/// The request id of a packet whose frozen header prefix is readable (long enough, right magic),
/// whatever its version or payload: lets a receiver answer a frame it cannot decode.
pub fn peek_request_id(packet: &[u8]) -> Option<u64> {
    let prefix = packet.get(..HEADER_FROZEN_LEN)?;
    if prefix[..4] != MAGIC {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&prefix[header_offset::REQUEST_ID..header_offset::REQUEST_ID + 8]);
    Some(u64::from_le_bytes(id))
}

/// Decodes and validates the header of one packet (the whole packet, for the length check).
pub fn decode_header(packet: &[u8]) -> Result<Header, DecodeError> {
    let len = packet.len();
    if len > FRAME_LEN_MAX {
        return Err(DecodeError::TooLong { len });
    }
    if len < HEADER_FROZEN_LEN {
        return Err(DecodeError::TooShort { len });
    }
    let mut r = Reader::new(packet, FrameKind::Start);
    let magic = r.bytes(4)?;
    if magic != MAGIC {
        let mut magic_copy = [0u8; 4];
        magic_copy.copy_from_slice(magic);
        return Err(DecodeError::BadMagic { magic: magic_copy });
    }
    let version_major = r.u8()?;
    let version_minor = r.u8()?;
    let kind = r.u8()?;
    let reserved_0 = r.u8()?;
    let request_id = peek_request_id(packet).unwrap_or(0);
    if version_major != VERSION_MAJOR {
        return Err(DecodeError::UnsupportedVersion {
            major: version_major,
            minor: version_minor,
            request_id,
        });
    }
    if len < HEADER_LEN {
        return Err(DecodeError::TooShort { len });
    }
    if reserved_0 != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: header_offset::RESERVED_0,
        });
    }
    r.bytes(8)?;
    let payload_len = r.u32()?;
    if r.u32()? != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: header_offset::RESERVED_1,
        });
    }
    let actual = len - HEADER_LEN;
    if usize::try_from(payload_len).ok() != Some(actual) {
        return Err(DecodeError::PayloadLenMismatch {
            declared: payload_len,
            actual,
        });
    }
    let kind = FrameKind::from_u8(kind).ok_or(DecodeError::UnknownKind { kind })?;
    Ok(Header {
        version_major,
        version_minor,
        kind,
        request_id,
        payload_len,
    })
}

/// Decodes one packet (exactly one SOCK_SEQPACKET message) into a frame that borrows from it.
pub fn decode(packet: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let header = decode_header(packet)?;
    let payload = packet.get(HEADER_LEN..).unwrap_or(&[]);
    let mut r = Reader::new(payload, header.kind);
    let body = match header.kind {
        FrameKind::Start => Body::Start(decode_start(&mut r)?),
        FrameKind::Started => Body::Started(decode_started(&mut r)?),
        FrameKind::Error => Body::Error(decode_error(&mut r)?),
        FrameKind::Ping => Body::Ping,
        FrameKind::Pong => Body::Pong(decode_pong(&mut r)?),
        FrameKind::Running => Body::Running,
        FrameKind::Notify if header.request_id != 0 => {
            return Err(DecodeError::NotifyRequestId {
                id: header.request_id,
            })
        }
        FrameKind::Notify => Body::Notify(decode_notify(&mut r)?),
    };
    // A newer minor may append fields we do not know; from our own or an older minor every
    // byte must have been understood.
    let trailing = r.remaining();
    let from_newer_minor = header.version_minor > VERSION_MINOR;
    if trailing != 0 && !from_newer_minor {
        return Err(DecodeError::TrailingBytes {
            kind: header.kind,
            count: trailing,
        });
    }
    Ok(Frame { header, body })
}

fn decode_start<'a>(r: &mut Reader<'a>) -> Result<Start<'a>, DecodeError> {
    let bits = r.u32()?;
    let flags = StartFlags::from_bits(bits).ok_or(DecodeError::UnknownStartFlags { bits })?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let present = r.u8()?;
    let reserved = r.u8()?;
    let argc = usize::from(r.u16()?);
    let envc = usize::from(r.u16()?);
    let cwd_len = usize::from(r.u16()?);
    if present & !PRESENT_ALL != 0 {
        return Err(DecodeError::UnknownPresenceBits { bits: present });
    }
    if reserved != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: HEADER_LEN + payload_offset::START_RESERVED,
        });
    }
    let uid = optional_id(
        uid,
        present & PRESENT_UID != 0,
        HEADER_LEN + payload_offset::START_UID,
    )?;
    let gid = optional_id(
        gid,
        present & PRESENT_GID != 0,
        HEADER_LEN + payload_offset::START_GID,
    )?;
    if argc == 0 {
        return Err(DecodeError::ArgvEmpty);
    }
    if argc > ARGV_COUNT_MAX {
        return Err(DecodeError::ArgvTooMany { count: argc });
    }
    if envc > ENV_COUNT_MAX {
        return Err(DecodeError::EnvTooMany { count: envc });
    }
    if cwd_len > STRING_LEN_MAX {
        return Err(DecodeError::StringTooLong { len: cwd_len });
    }
    let cwd = r.bytes(cwd_len)?;
    check_no_nul(cwd)?;
    let cwd = if cwd.is_empty() { None } else { Some(cwd) };
    let argv = decode_list(r, argc, false)?;
    let env = decode_list(r, envc, true)?;
    let cgroup = if flags.contains(StartFlags::CGROUP) {
        let len = usize::from(r.u16()?);
        if len > CGROUP_NAME_LEN_MAX {
            return Err(DecodeError::BadCgroupName);
        }
        let name = r.bytes(len)?;
        if !is_cgroup_name(name) {
            return Err(DecodeError::BadCgroupName);
        }
        Some(name)
    } else {
        None
    };
    let exec = if flags.contains(StartFlags::EXEC_ENV) {
        Some(super::exec_env::section(r)?)
    } else {
        None
    };
    let cgroup_limits = if flags.contains(StartFlags::CGROUP_LIMITS) {
        if !flags.contains(StartFlags::CGROUP) {
            return Err(DecodeError::BadCgroupLimits {
                what: "CGROUP_LIMITS without CGROUP",
            });
        }
        Some(super::cgroup_limits::section(r)?)
    } else {
        None
    };
    Ok(Start {
        flags,
        uid,
        gid,
        cwd,
        argv,
        env,
        cgroup,
        exec,
        cgroup_limits,
    })
}

/// Whether `name` can be a `Start`'s cgroup: one path component of `[A-Za-z0-9_.@-]`, at most
/// `CGROUP_NAME_LEN_MAX` bytes, not starting with `.` (no `.` or `..`) nor `cgroup.` (the
/// kernel's own files).
pub fn is_cgroup_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= CGROUP_NAME_LEN_MAX
        && !name.starts_with(b".")
        && !name.starts_with(b"cgroup.")
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// An absent uid/gid must be written as zero so that every frame has one encoding.
fn optional_id(value: u32, present: bool, offset: usize) -> Result<Option<u32>, DecodeError> {
    match (present, value) {
        (true, value) => Ok(Some(value)),
        (false, 0) => Ok(None),
        (false, _) => Err(DecodeError::ReservedNotZero { offset }),
    }
}

fn decode_list<'a>(
    r: &mut Reader<'a>,
    count: usize,
    is_env: bool,
) -> Result<StrList<'a>, DecodeError> {
    let start = r.pos();
    let mut total = 0usize;
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        if len > STRING_LEN_MAX {
            return Err(DecodeError::StringTooLong { len });
        }
        let string = r.bytes(len)?;
        check_no_nul(string)?;
        if is_env && !is_env_entry(string) {
            return Err(DecodeError::EnvEntryWithoutEquals);
        }
        total += 2 + len;
    }
    // Re-borrow the exact span that was validated.
    let bytes = r.span(start, total);
    Ok(StrList { count, bytes })
}

/// `KEY=VALUE` with a non-empty key.
pub(crate) fn is_env_entry(entry: &[u8]) -> bool {
    matches!(entry.iter().position(|&b| b == b'='), Some(i) if i > 0)
}

fn check_no_nul(string: &[u8]) -> Result<(), DecodeError> {
    if string.contains(&0) {
        return Err(DecodeError::NulInString);
    }
    Ok(())
}

fn decode_started(r: &mut Reader<'_>) -> Result<Started, DecodeError> {
    let pid = r.i32()?;
    if pid <= 0 {
        return Err(DecodeError::InvalidPid { pid });
    }
    Ok(Started { pid })
}

fn decode_error<'a>(r: &mut Reader<'a>) -> Result<ErrorFrame<'a>, DecodeError> {
    let errno = r.i32()?;
    let stage = r.u8()?;
    let reserved = r.u8()?;
    let text_len = usize::from(r.u16()?);
    if errno < 0 {
        return Err(DecodeError::NegativeErrno { errno });
    }
    let stage = ErrorStage::from_u8(stage).ok_or(DecodeError::UnknownStage { stage })?;
    if reserved != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: HEADER_LEN + payload_offset::ERROR_RESERVED,
        });
    }
    if text_len > ERROR_TEXT_LEN_MAX {
        return Err(DecodeError::ErrorTextTooLong { len: text_len });
    }
    let text = r.bytes(text_len)?;
    check_no_nul(text)?;
    Ok(ErrorFrame { errno, stage, text })
}

fn decode_notify<'a>(r: &mut Reader<'a>) -> Result<Notify<'a>, DecodeError> {
    let pid = r.i32()?;
    let reserved = r.u16()?;
    let text_len = usize::from(r.u16()?);
    if pid <= 0 {
        return Err(DecodeError::InvalidPid { pid });
    }
    if reserved != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: HEADER_LEN + payload_offset::NOTIFY_RESERVED,
        });
    }
    if text_len > NOTIFY_TEXT_LEN_MAX {
        return Err(DecodeError::NotifyTextTooLong { len: text_len });
    }
    let text = r.bytes(text_len)?;
    check_no_nul(text)?;
    Ok(Notify { pid, text })
}

fn decode_pong(r: &mut Reader<'_>) -> Result<Pong, DecodeError> {
    let version_major = r.u8()?;
    let version_minor = r.u8()?;
    if r.u16()? != 0 {
        return Err(DecodeError::ReservedNotZero {
            offset: HEADER_LEN + payload_offset::PONG_RESERVED,
        });
    }
    let capabilities = Capabilities::from_bits_retain(r.u32()?);
    Ok(Pong {
        version_major,
        version_minor,
        capabilities,
    })
}
