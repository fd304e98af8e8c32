//! The v1 encoder: writes one frame into a caller-supplied buffer, allocating nothing.
//!
//! Every function validates first (limits, NUL bytes, sizes) and writes only when the whole
//! frame fits, returning its length; on error the buffer content is unspecified.

use super::cursor::Writer;
use super::decode::{is_env_entry, PRESENT_GID, PRESENT_UID};
use super::error::EncodeError;
use super::limits::{
    ARGV_COUNT_MAX, ENV_COUNT_MAX, ERROR_FIXED_LEN, ERROR_TEXT_LEN_MAX, FRAME_LEN_MAX, HEADER_LEN,
    MAGIC, NOTIFY_FIXED_LEN, NOTIFY_TEXT_LEN_MAX, PONG_PAYLOAD_LEN, RUNNING_PAYLOAD_LEN,
    STARTED_PAYLOAD_LEN, START_FIXED_LEN, STRING_LEN_MAX, STRING_PREFIX_LEN, VERSION_MAJOR,
    VERSION_MINOR,
};
use super::types::{ErrorStage, FrameKind, Pong, StartFlags};

/// A `Start` request borrowing its strings from the caller, e.g. from a service's
/// `Vec<Vec<u8>>`/`Box<[Box<[u8]>]>` argv and env, or from `&[&[u8]]`/`&[&str]` literals.
#[derive(Clone, Copy, Debug)]
pub struct StartRef<'a, A: AsRef<[u8]>, E: AsRef<[u8]>> {
    /// 1..=`ARGV_COUNT_MAX` entries, each at most `STRING_LEN_MAX` bytes, no NUL.
    pub argv: &'a [A],
    /// 0..=`ENV_COUNT_MAX` `KEY=VALUE` entries, each at most `STRING_LEN_MAX` bytes, no NUL.
    pub env: &'a [E],
    /// Working directory, non-empty when given, at most `STRING_LEN_MAX` bytes, no NUL.
    pub cwd: Option<&'a [u8]>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Only known bits.
    pub flags: StartFlags,
    /// Exactly with `StartFlags::CGROUP`: the child's own cgroup's name.
    pub cgroup: Option<&'a [u8]>,
    /// Exactly with `StartFlags::EXEC_ENV`: the child's execution environment.
    pub exec: Option<&'a crate::spawn::ExecEnv>,
    /// Exactly with `StartFlags::CGROUP_LIMITS` (which needs `CGROUP`): the limits of the
    /// child's own cgroup.
    pub cgroup_limits: Option<&'a crate::cgroup::CgroupLimits>,
}

impl<A: AsRef<[u8]>, E: AsRef<[u8]>> StartRef<'_, A, E> {
    /// The payload length after validating every field.
    pub fn payload_len(&self) -> Result<usize, EncodeError> {
        if self.flags.bits() & !StartFlags::all().bits() != 0 {
            return Err(EncodeError::UnknownStartFlags {
                bits: self.flags.bits(),
            });
        }
        if self.argv.is_empty() {
            return Err(EncodeError::ArgvEmpty);
        }
        if self.argv.len() > ARGV_COUNT_MAX {
            return Err(EncodeError::ArgvTooMany {
                count: self.argv.len(),
            });
        }
        if self.env.len() > ENV_COUNT_MAX {
            return Err(EncodeError::EnvTooMany {
                count: self.env.len(),
            });
        }
        let cwd_len = match self.cwd {
            Some([]) => return Err(EncodeError::EmptyCwd),
            Some(cwd) => check_string(cwd)?,
            None => 0,
        };
        // Each entry is bounded by STRING_LEN_MAX and the counts by their maxima, so the sum
        // cannot overflow; saturating keeps that true even if the limits grow.
        let mut len = START_FIXED_LEN + cwd_len;
        for arg in self.argv {
            len = len.saturating_add(STRING_PREFIX_LEN + check_string(arg.as_ref())?);
        }
        for entry in self.env {
            let entry = entry.as_ref();
            len = len.saturating_add(STRING_PREFIX_LEN + check_string(entry)?);
            if !is_env_entry(entry) {
                return Err(EncodeError::EnvEntryWithoutEquals);
            }
        }
        match (self.flags.contains(StartFlags::CGROUP), self.cgroup) {
            (true, Some(name)) if super::decode::is_cgroup_name(name) => {
                len = len.saturating_add(STRING_PREFIX_LEN + name.len());
            }
            (false, None) => {}
            _ => return Err(EncodeError::BadCgroupName),
        }
        match (self.flags.contains(StartFlags::EXEC_ENV), self.exec) {
            (true, Some(exec)) => len = len.saturating_add(super::exec_env::len(exec)?),
            (false, None) => {}
            _ => {
                return Err(EncodeError::BadExecEnv {
                    what: "EXEC_ENV and the section go together",
                })
            }
        }
        match (
            self.flags.contains(StartFlags::CGROUP_LIMITS),
            self.cgroup_limits,
        ) {
            (true, Some(_)) if !self.flags.contains(StartFlags::CGROUP) => {
                return Err(EncodeError::BadCgroupLimits {
                    what: "CGROUP_LIMITS without CGROUP",
                })
            }
            (true, Some(limits)) => {
                len = len.saturating_add(super::cgroup_limits::len(limits)?);
            }
            (false, None) => {}
            _ => {
                return Err(EncodeError::BadCgroupLimits {
                    what: "CGROUP_LIMITS and the section go together",
                })
            }
        }
        Ok(len)
    }
}

/// Encodes a `Start` with `request_id` into `buf`; returns the frame length.
pub fn encode_start<A: AsRef<[u8]>, E: AsRef<[u8]>>(
    buf: &mut [u8],
    request_id: u64,
    start: &StartRef<'_, A, E>,
) -> Result<usize, EncodeError> {
    let payload_len = start.payload_len()?;
    let mut w = begin(buf, FrameKind::Start, request_id, payload_len)?;
    let mut present = 0u8;
    if start.uid.is_some() {
        present |= PRESENT_UID;
    }
    if start.gid.is_some() {
        present |= PRESENT_GID;
    }
    let cwd = start.cwd.unwrap_or(&[]);
    w.u32(start.flags.bits())?;
    w.u32(start.uid.unwrap_or(0))?;
    w.u32(start.gid.unwrap_or(0))?;
    w.u8(present)?;
    w.u8(0)?;
    w.u16(len_u16(start.argv.len()))?;
    w.u16(len_u16(start.env.len()))?;
    w.u16(len_u16(cwd.len()))?;
    w.put(cwd)?;
    for arg in start.argv {
        put_string(&mut w, arg.as_ref())?;
    }
    for entry in start.env {
        put_string(&mut w, entry.as_ref())?;
    }
    if let Some(name) = start.cgroup {
        put_string(&mut w, name)?;
    }
    if let Some(exec) = start.exec {
        super::exec_env::put(&mut w, exec)?;
    }
    if let Some(limits) = start.cgroup_limits {
        super::cgroup_limits::put(&mut w, limits)?;
    }
    Ok(w.pos())
}

/// Encodes a `Started` for `request_id`: `pid` as the agent sees it (must be positive). The
/// pidfd must go with this packet in the same `sendmsg` (SCM_RIGHTS), which is the caller's job.
pub fn encode_started(buf: &mut [u8], request_id: u64, pid: i32) -> Result<usize, EncodeError> {
    if pid <= 0 {
        return Err(EncodeError::InvalidPid { pid });
    }
    let mut w = begin(buf, FrameKind::Started, request_id, STARTED_PAYLOAD_LEN)?;
    w.i32(pid)?;
    Ok(w.pos())
}

/// Encodes an `Error` for `request_id`. `text` must be at most `ERROR_TEXT_LEN_MAX` bytes
/// without NUL: pass it through [`clamp_error_text`] when it comes from elsewhere.
pub fn encode_error(
    buf: &mut [u8],
    request_id: u64,
    errno: i32,
    stage: ErrorStage,
    text: &[u8],
) -> Result<usize, EncodeError> {
    if errno < 0 {
        return Err(EncodeError::NegativeErrno { errno });
    }
    if text.len() > ERROR_TEXT_LEN_MAX {
        return Err(EncodeError::ErrorTextTooLong { len: text.len() });
    }
    if text.contains(&0) {
        return Err(EncodeError::NulInString);
    }
    let mut w = begin(
        buf,
        FrameKind::Error,
        request_id,
        ERROR_FIXED_LEN + text.len(),
    )?;
    w.i32(errno)?;
    w.u8(stage as u8)?;
    w.u8(0)?;
    w.u16(len_u16(text.len()))?;
    w.put(text)?;
    Ok(w.pos())
}

/// Encodes a `Ping` with `request_id` (the `Pong` carries the same id).
pub fn encode_ping(buf: &mut [u8], request_id: u64) -> Result<usize, EncodeError> {
    let w = begin(buf, FrameKind::Ping, request_id, 0)?;
    Ok(w.pos())
}

/// Encodes a `Running` (minor 1+) for `request_id`: the process announced by that request's
/// `Started` exec'd its program. Empty payload.
pub fn encode_running(buf: &mut [u8], request_id: u64) -> Result<usize, EncodeError> {
    let w = begin(buf, FrameKind::Running, request_id, RUNNING_PAYLOAD_LEN)?;
    Ok(w.pos())
}

/// Encodes a `Notify` (request id 0): the datagram `text` that process `pid` (in the agent's
/// PID namespace) sent to the agent's notify socket.
pub fn encode_notify(buf: &mut [u8], pid: i32, text: &[u8]) -> Result<usize, EncodeError> {
    if pid <= 0 {
        return Err(EncodeError::InvalidPid { pid });
    }
    if text.len() > NOTIFY_TEXT_LEN_MAX {
        return Err(EncodeError::NotifyTextTooLong { len: text.len() });
    }
    if text.contains(&0) {
        return Err(EncodeError::NulInString);
    }
    let mut w = begin(buf, FrameKind::Notify, 0, NOTIFY_FIXED_LEN + text.len())?;
    w.i32(pid)?;
    w.u16(0)?;
    w.u16(len_u16(text.len()))?;
    w.put(text)?;
    Ok(w.pos())
}

/// Encodes a `Pong` answering the `Ping` with `request_id`.
pub fn encode_pong(buf: &mut [u8], request_id: u64, pong: Pong) -> Result<usize, EncodeError> {
    let mut w = begin(buf, FrameKind::Pong, request_id, PONG_PAYLOAD_LEN)?;
    w.u8(pong.version_major)?;
    w.u8(pong.version_minor)?;
    w.u16(0)?;
    w.u32(pong.capabilities.bits())?;
    Ok(w.pos())
}

/// The longest prefix of `text` that `encode_error` accepts: cut at the first NUL and at
/// `ERROR_TEXT_LEN_MAX` bytes (on a UTF-8 character boundary when `text` is UTF-8).
pub fn clamp_error_text(text: &[u8]) -> &[u8] {
    let text = match text.iter().position(|&b| b == 0) {
        Some(nul) => &text[..nul],
        None => text,
    };
    if text.len() <= ERROR_TEXT_LEN_MAX {
        return text;
    }
    let mut end = ERROR_TEXT_LEN_MAX;
    // Back off over UTF-8 continuation bytes (0b10xx_xxxx), at most 3 of them.
    let mut backed = 0;
    while backed < 3 && end > 0 && text[end] & 0xC0 == 0x80 {
        end -= 1;
        backed += 1;
    }
    if text[end] & 0xC0 == 0x80 {
        end = ERROR_TEXT_LEN_MAX;
    }
    &text[..end]
}

/// Checks the frame size against the limit and the buffer, then writes the header.
fn begin(
    buf: &mut [u8],
    kind: FrameKind,
    request_id: u64,
    payload_len: usize,
) -> Result<Writer<'_>, EncodeError> {
    let len = HEADER_LEN.saturating_add(payload_len);
    if len > FRAME_LEN_MAX {
        return Err(EncodeError::FrameTooLarge { len });
    }
    if len > buf.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        });
    }
    let (frame, _) = buf.split_at_mut(len);
    let mut w = Writer::new(frame);
    w.put(&MAGIC)?;
    w.u8(VERSION_MAJOR)?;
    w.u8(VERSION_MINOR)?;
    w.u8(kind as u8)?;
    w.u8(0)?;
    w.u64(request_id)?;
    // len <= FRAME_LEN_MAX, so the payload length fits u32.
    w.u32(payload_len as u32)?;
    w.u32(0)?;
    Ok(w)
}

/// Validates one string; returns its length.
fn check_string(string: &[u8]) -> Result<usize, EncodeError> {
    if string.len() > STRING_LEN_MAX {
        return Err(EncodeError::StringTooLong { len: string.len() });
    }
    if string.contains(&0) {
        return Err(EncodeError::NulInString);
    }
    Ok(string.len())
}

fn put_string(w: &mut Writer<'_>, string: &[u8]) -> Result<(), EncodeError> {
    w.u16(len_u16(string.len()))?;
    w.put(string)
}

/// Lengths and counts reaching here were checked against limits below `u16::MAX`.
fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}
