//! Decoder and encoder of control frames: bounds-checked, allocation-free, never panicking.

use super::types::*;

/// Why a packet is not a valid control frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than the header.
    ShortHeader { len: usize },
    /// Longer than [`FRAME_LEN_MAX`].
    TooLong { len: usize },
    /// The magic is not `HCTL`.
    BadMagic,
    /// Another protocol version.
    UnsupportedVersion { version: u8 },
    /// The reserved header bytes are not zero.
    Reserved,
    /// The header's payload length disagrees with the packet.
    LengthMismatch { header: u32, actual: usize },
    /// Unknown kind byte.
    UnknownKind { kind: u8 },
    /// The payload ends early for its kind.
    Truncated { kind: u8 },
    /// Bytes left after the payload of its kind.
    TrailingBytes { kind: u8 },
    /// A field holds a value outside its range.
    BadValue { kind: u8, field: &'static str },
    /// A string is longer than its limit or not UTF-8.
    BadString { kind: u8, field: &'static str },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::ShortHeader { len } => {
                write!(
                    f,
                    "packet of {len} bytes is shorter than the {HEADER_LEN}-byte header"
                )
            }
            DecodeError::TooLong { len } => {
                write!(f, "packet of {len} bytes exceeds {FRAME_LEN_MAX}")
            }
            DecodeError::BadMagic => f.write_str("bad magic (not a holden control frame)"),
            DecodeError::UnsupportedVersion { version } => {
                write!(f, "control protocol version {version}, expected {VERSION}")
            }
            DecodeError::Reserved => f.write_str("reserved header bytes are not zero"),
            DecodeError::LengthMismatch { header, actual } => {
                write!(f, "header says {header} payload bytes, packet has {actual}")
            }
            DecodeError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            DecodeError::Truncated { kind } => write!(f, "frame kind {kind}: payload too short"),
            DecodeError::TrailingBytes { kind } => {
                write!(f, "frame kind {kind}: bytes after the payload")
            }
            DecodeError::BadValue { kind, field } => {
                write!(f, "frame kind {kind}: field {field} out of range")
            }
            DecodeError::BadString { kind, field } => {
                write!(f, "frame kind {kind}: string {field} too long or not UTF-8")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The buffer is shorter than the frame.
    BufferTooSmall { needed: usize },
    /// A name is empty where one is required, or longer than [`NAME_LEN_MAX`].
    BadName { len: usize },
    /// A signal outside 1..=64.
    BadSignal { signal: u8 },
    /// Stall buckets of the wrong length (expected [`STALL_BUCKETS_BYTES`]).
    BadBuckets { len: usize },
    /// A log line's priority outside 0..=7.
    BadPriority { priority: u8 },
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: frame needs {needed} bytes")
            }
            EncodeError::BadName { len } => {
                write!(
                    f,
                    "service name of {len} bytes (expected 1..={NAME_LEN_MAX})"
                )
            }
            EncodeError::BadSignal { signal } => write!(f, "signal {signal} outside 1..=64"),
            EncodeError::BadPriority { priority } => {
                write!(f, "log line priority {priority} outside 0..=7")
            }
            EncodeError::BadBuckets { len } => {
                write!(
                    f,
                    "stall buckets of {len} bytes (expected {STALL_BUCKETS_BYTES})"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len);
        let slice = end
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(DecodeError::Truncated { kind: self.kind })?;
        self.pos += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::BadString {
                kind: self.kind,
                field,
            });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadString {
            kind: self.kind,
            field,
        })
    }

    fn name(&mut self) -> Result<&'a str, DecodeError> {
        let name = self.string("name", NAME_LEN_MAX)?;
        if name.is_empty() {
            return Err(self.bad("name"));
        }
        Ok(name)
    }

    fn bad(&self, field: &'static str) -> DecodeError {
        DecodeError::BadValue {
            kind: self.kind,
            field,
        }
    }

    fn state(&mut self, field: &'static str) -> Result<StateCode, DecodeError> {
        let value = self.u8()?;
        StateCode::from_u8(value).ok_or(self.bad(field))
    }

    fn partition(&mut self) -> Result<PartitionCode, DecodeError> {
        let value = self.u8()?;
        PartitionCode::from_u8(value).ok_or(self.bad("partition"))
    }

    fn ms(&mut self) -> Result<Option<u64>, DecodeError> {
        let value = self.u64()?;
        Ok((value != NONE_MS).then_some(value))
    }
}

/// Decodes one packet. Never panics, never allocates; every length is checked.
pub fn decode(packet: &[u8]) -> Result<Frame<'_>, DecodeError> {
    if packet.len() < HEADER_LEN {
        return Err(DecodeError::ShortHeader { len: packet.len() });
    }
    if packet.len() > FRAME_LEN_MAX {
        return Err(DecodeError::TooLong { len: packet.len() });
    }
    let mut header = Reader {
        bytes: packet,
        pos: 0,
        kind: 0,
    };
    if header.array::<4>()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = header.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let kind = header.u8()?;
    if header.u16()? != 0 {
        return Err(DecodeError::Reserved);
    }
    let id = header.u32()?;
    let len = header.u32()?;
    let actual = packet.len() - HEADER_LEN;
    if len as usize != actual {
        return Err(DecodeError::LengthMismatch {
            header: len,
            actual,
        });
    }
    let mut r = Reader {
        bytes: &packet[HEADER_LEN..],
        pos: 0,
        kind,
    };
    let body = decode_body(&mut r)?;
    if r.pos != r.bytes.len() {
        return Err(DecodeError::TrailingBytes { kind });
    }
    Ok(Frame { id, body })
}

fn decode_body<'a>(r: &mut Reader<'a>) -> Result<Body<'a>, DecodeError> {
    Ok(match r.kind {
        1 => {
            let name = r.string("name", NAME_LEN_MAX)?;
            Body::Status((!name.is_empty()).then_some(name))
        }
        2 => {
            let op = r.u8()?;
            let signal = r.u8()?;
            let op = match (op, signal) {
                (1, 0) => Op::Start,
                (2, 0) => Op::Stop,
                (3, 0) => Op::Restart,
                (4, 1..=64) => Op::Kill(signal),
                (5, 0) => Op::ResetFailed,
                _ => return Err(r.bad("op")),
            };
            Body::Command {
                op,
                name: r.name()?,
            }
        }
        3 => Body::AgentStatus,
        4 => Body::Monitor,
        5 => Body::Reload,
        6 => Body::StatsRequest,
        8 => Body::Reexec,
        7 => {
            let lines = r.u32()?;
            let follow = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.bad("follow")),
            };
            Body::Logs {
                name: r.name()?,
                lines,
                follow,
            }
        }
        16 => Body::Service(decode_service(r)?),
        17 => Body::End(r.u32()?),
        18 => Body::Done(r.state("state")?),
        19 => {
            let code = r.u8()?;
            let code = FailCode::from_u8(code).ok_or(r.bad("code"))?;
            Body::Failure {
                code,
                text: r.string("text", TEXT_LEN_MAX)?,
            }
        }
        20 => Body::Agent(decode_agent(r)?),
        21 => Body::Event(decode_event(r)?),
        22 => Body::Dropped(r.u64()?),
        23 => Body::Reloaded(ReloadInfo {
            added: r.u16()?,
            removed: r.u16()?,
            changed: r.u16()?,
            unchanged: r.u16()?,
            needs_restart: r.string("needs_restart", TEXT_LEN_MAX)?,
        }),
        24 => Body::Stats(StatsInfo {
            spawned_local: r.u64()?,
            spawned_qm: r.u64()?,
            exited: r.u64()?,
            spawn_failed: r.u64()?,
            log_dropped: r.u64()?,
            stall_max_ns: r.u64()?,
            stall_buckets: {
                if usize::from(r.u16()?) != crate::histogram::BUCKETS {
                    return Err(r.bad("bucket count"));
                }
                r.take(STALL_BUCKETS_BYTES)?
            },
        }),
        25 => {
            let seq = r.u64()?;
            let stream = match r.u8()? {
                0 => StreamCode::Stdout,
                1 => StreamCode::Stderr,
                _ => return Err(r.bad("stream")),
            };
            let priority = r.u8()?;
            if priority > 7 {
                return Err(r.bad("priority"));
            }
            let truncated = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.bad("truncated")),
            };
            let len = usize::from(r.u16()?);
            if len > LOG_TEXT_LEN_MAX {
                return Err(DecodeError::BadString {
                    kind: r.kind,
                    field: "text",
                });
            }
            Body::LogLine(LogLineInfo {
                seq,
                stream,
                priority,
                truncated,
                text: r.take(len)?,
            })
        }
        26 => {
            let info = LogStatsInfo {
                lines: r.u64()?,
                dropped: r.u64()?,
                first_seq: r.u64()?,
                next_seq: r.u64()?,
            };
            if info.first_seq > info.next_seq {
                return Err(r.bad("first_seq"));
            }
            Body::LogStats(info)
        }
        27 => Body::Reexecuted(ReexecInfo {
            generation: r.u32()?,
            took_us: r.u64()?,
            adopted: r.u32()?,
        }),
        kind => return Err(DecodeError::UnknownKind { kind }),
    })
}

fn decode_exit(r: &mut Reader<'_>) -> Result<Option<Exit>, DecodeError> {
    let tag = r.u8()?;
    let value = r.i32()?;
    Ok(match (tag, value) {
        (0, 0) => None,
        (1, code) => Some(Exit::Code(code)),
        (2, 1..=64) => Some(Exit::Signal(value)),
        (3, 0) => Some(Exit::Unknown),
        _ => return Err(r.bad("exit")),
    })
}

fn decode_pid(r: &mut Reader<'_>) -> Result<Option<i32>, DecodeError> {
    match r.i32()? {
        0 => Ok(None),
        pid if pid > 0 => Ok(Some(pid)),
        _ => Err(r.bad("pid")),
    }
}

fn decode_spawn_error(r: &mut Reader<'_>) -> Result<Option<SpawnError>, DecodeError> {
    let stage = r.u8()?;
    let errno = r.i32()?;
    match (stage, errno) {
        (0, 0) => Ok(None),
        (stage, errno) if errno >= 0 => match SpawnStage::from_u8(stage) {
            Some(stage) => Ok(Some(SpawnError { stage, errno })),
            None => Err(r.bad("spawn_error")),
        },
        _ => Err(r.bad("spawn_error")),
    }
}

fn decode_service<'a>(r: &mut Reader<'a>) -> Result<ServiceInfo<'a>, DecodeError> {
    let partition = r.partition()?;
    let state = r.state("state")?;
    let last_exit = decode_exit(r)?;
    let start_limit_hit = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(r.bad("result")),
    };
    let spawn_error = decode_spawn_error(r)?;
    let pid = decode_pid(r)?;
    let restarts = r.u32()?;
    let uptime_ms = r.ms()?;
    let next_restart_ms = r.ms()?;
    let name = r.name()?;
    let status = r.string("status", STATUS_TEXT_MAX)?;
    let kind = r.u8()?;
    let kind = TypeCode::from_u8(kind).ok_or(r.bad("type"))?;
    let ready_ms = r.ms()?;
    Ok(ServiceInfo {
        ready_ms,
        status,
        kind,
        name,
        partition,
        state,
        pid,
        uptime_ms,
        restarts,
        last_exit,
        next_restart_ms,
        spawn_error,
        start_limit_hit,
    })
}

fn decode_event<'a>(r: &mut Reader<'a>) -> Result<EventInfo<'a>, DecodeError> {
    let partition = r.partition()?;
    let from = r.state("from")?;
    let to = r.state("to")?;
    let why_tag = r.u8()?;
    let value = r.i32()?;
    let stage = r.u8()?;
    if why_tag != 4 && stage != 0 {
        return Err(r.bad("stage"));
    }
    let why = match (why_tag, value) {
        (0, 0) => Why::Added,
        (1, 0) => Why::Operator,
        (2, 0) => Why::RestartDue,
        (3, pid) if pid >= 0 => Why::Spawned(pid),
        (4, errno) if errno >= 0 => match SpawnStage::from_u8(stage) {
            Some(stage) => Why::SpawnFailed(SpawnError { stage, errno }),
            None => return Err(r.bad("stage")),
        },
        (5, code) => Why::Exited(Exit::Code(code)),
        (6, 1..=64) => Why::Exited(Exit::Signal(value)),
        (7, 0) => Why::Exited(Exit::Unknown),
        (8, 0) => Why::StartLimit,
        (9, 0) => Why::Agent,
        (10, 0) => Why::StopTimeout,
        (11, 0) => Why::Shutdown,
        (12, 0) => Why::Removed,
        (13, pid) if pid > 0 => Why::Adopted(pid),
        (14, 0) => Why::Resumed,
        (15, 0) => Why::Ready,
        (16, 0) => Why::StartTimeout,
        (17, 0) => Why::Watchdog,
        _ => return Err(r.bad("why")),
    };
    let restarts = r.u32()?;
    let pid = decode_pid(r)?;
    let next_delay_ms = r.ms()?;
    let name = r.name()?;
    Ok(EventInfo {
        name,
        partition,
        from,
        to,
        why,
        restarts,
        pid,
        next_delay_ms,
    })
}

fn decode_agent<'a>(r: &mut Reader<'a>) -> Result<AgentInfo<'a>, DecodeError> {
    let link = r.u8()?;
    let link = LinkCode::from_u8(link).ok_or(r.bad("link"))?;
    let major = r.u8()?;
    let minor = r.u8()?;
    if r.u8()? != 0 {
        return Err(r.bad("reserved"));
    }
    let capabilities = r.u32()?;
    let connects = r.u64()?;
    let drops = r.u64()?;
    let protocol = r.string("protocol", 8)?;
    let socket = r.string("socket", TEXT_LEN_MAX)?;
    Ok(AgentInfo {
        link,
        protocol,
        version: (major, minor),
        capabilities,
        connects,
        drops,
        socket,
    })
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + bytes.len();
        let needed = end.max(HEADER_LEN);
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { needed })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn i32(&mut self, v: i32) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn ms(&mut self, v: Option<u64>) -> Result<(), EncodeError> {
        // A real value of u64::MAX ms cannot occur (585 million years); clamp it anyway.
        self.u64(v.map_or(NONE_MS, |v| v.min(NONE_MS - 1)))
    }
    /// A string cut to `max` bytes at a character boundary.
    fn text(&mut self, s: &str, max: usize) -> Result<(), EncodeError> {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16)?;
        self.put(&s.as_bytes()[..end])
    }
    fn name(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.is_empty() || s.len() > NAME_LEN_MAX {
            return Err(EncodeError::BadName { len: s.len() });
        }
        self.text(s, NAME_LEN_MAX)
    }
    fn pid(&mut self, pid: Option<i32>) -> Result<(), EncodeError> {
        self.i32(pid.filter(|p| *p > 0).unwrap_or(0))
    }
    fn spawn_error(&mut self, error: Option<SpawnError>) -> Result<(), EncodeError> {
        match error {
            None => {
                self.u8(0)?;
                self.i32(0)
            }
            Some(e) => {
                self.u8(e.stage as u8)?;
                self.i32(e.errno.max(0))
            }
        }
    }
    fn exit(&mut self, exit: Option<Exit>) -> Result<(), EncodeError> {
        let (tag, value) = match exit {
            None => (0, 0),
            Some(Exit::Code(code)) => (1, code),
            Some(Exit::Signal(sig)) if (1..=64).contains(&sig) => (2, sig),
            // A signal number the protocol cannot carry is reported as unknown, not invented.
            Some(Exit::Signal(_)) | Some(Exit::Unknown) => (3, 0),
        };
        self.u8(tag)?;
        self.i32(value)
    }
}

/// Encodes one frame into `buf` (at most [`FRAME_LEN_MAX`] bytes are written) and returns its
/// length. Texts longer than their limit are cut (at a character boundary); names are checked.
pub fn encode(buf: &mut [u8], id: u32, body: &Body<'_>) -> Result<usize, EncodeError> {
    let mut w = Writer { buf, pos: 0 };
    w.put(&MAGIC)?;
    w.u8(VERSION)?;
    w.u8(body.kind())?;
    w.u16(0)?;
    w.u32(id)?;
    w.u32(0)?;
    encode_body(&mut w, body)?;
    let len = w.pos;
    let payload = (len - HEADER_LEN) as u32;
    w.buf[12..16].copy_from_slice(&payload.to_le_bytes());
    debug_assert!(len <= FRAME_LEN_MAX);
    Ok(len)
}

fn encode_body(w: &mut Writer<'_>, body: &Body<'_>) -> Result<(), EncodeError> {
    match *body {
        Body::Status(name) => match name {
            Some(name) => w.name(name)?,
            None => w.u16(0)?,
        },
        Body::Command { op, name } => {
            let (code, signal) = match op {
                Op::Start => (1, 0),
                Op::Stop => (2, 0),
                Op::Restart => (3, 0),
                Op::Kill(signal) if (1..=64).contains(&signal) => (4, signal),
                Op::Kill(signal) => return Err(EncodeError::BadSignal { signal }),
                Op::ResetFailed => (5, 0),
            };
            w.u8(code)?;
            w.u8(signal)?;
            w.name(name)?;
        }
        Body::AgentStatus | Body::Monitor | Body::Reload | Body::StatsRequest | Body::Reexec => {}
        Body::Reexecuted(r) => {
            w.u32(r.generation)?;
            w.u64(r.took_us)?;
            w.u32(r.adopted)?;
        }
        Body::Logs {
            name,
            lines,
            follow,
        } => {
            w.u32(lines)?;
            w.u8(u8::from(follow))?;
            w.name(name)?;
        }
        Body::LogLine(l) => {
            if l.priority > 7 {
                return Err(EncodeError::BadPriority {
                    priority: l.priority,
                });
            }
            let text = &l.text[..l.text.len().min(LOG_TEXT_LEN_MAX)];
            w.u64(l.seq)?;
            w.u8(l.stream as u8)?;
            w.u8(l.priority)?;
            w.u8(u8::from(l.truncated || text.len() < l.text.len()))?;
            w.u16(text.len() as u16)?;
            w.put(text)?;
        }
        Body::LogStats(s) => {
            w.u64(s.lines)?;
            w.u64(s.dropped)?;
            w.u64(s.first_seq.min(s.next_seq))?;
            w.u64(s.next_seq)?;
        }
        Body::Service(s) => {
            w.u8(s.partition as u8)?;
            w.u8(s.state as u8)?;
            w.exit(s.last_exit)?;
            w.u8(u8::from(s.start_limit_hit))?;
            w.spawn_error(s.spawn_error)?;
            w.pid(s.pid)?;
            w.u32(s.restarts)?;
            w.ms(s.uptime_ms)?;
            w.ms(s.next_restart_ms)?;
            w.name(s.name)?;
            w.text(s.status, STATUS_TEXT_MAX)?;
            w.u8(s.kind as u8)?;
            w.ms(s.ready_ms)?;
        }
        Body::End(count) => w.u32(count)?,
        Body::Done(state) => w.u8(state as u8)?,
        Body::Failure { code, text } => {
            w.u8(code as u8)?;
            w.text(text, TEXT_LEN_MAX)?;
        }
        Body::Agent(a) => {
            w.u8(a.link as u8)?;
            w.u8(a.version.0)?;
            w.u8(a.version.1)?;
            w.u8(0)?;
            w.u32(a.capabilities)?;
            w.u64(a.connects)?;
            w.u64(a.drops)?;
            w.text(a.protocol, 8)?;
            w.text(a.socket, TEXT_LEN_MAX)?;
        }
        Body::Event(e) => {
            w.u8(e.partition as u8)?;
            w.u8(e.from as u8)?;
            w.u8(e.to as u8)?;
            let stage = match e.why {
                Why::SpawnFailed(error) => error.stage as u8,
                _ => 0,
            };
            let (tag, value) = match e.why {
                Why::Added => (0, 0),
                Why::Operator => (1, 0),
                Why::RestartDue => (2, 0),
                // 0: the process was gone before its pid could be read (never invented).
                Why::Spawned(pid) => (3, pid.max(0)),
                Why::SpawnFailed(error) => (4, error.errno.max(0)),
                Why::Exited(Exit::Code(code)) => (5, code),
                Why::Exited(Exit::Signal(sig)) if (1..=64).contains(&sig) => (6, sig),
                Why::Exited(_) => (7, 0),
                Why::StartLimit => (8, 0),
                Why::Agent => (9, 0),
                Why::StopTimeout => (10, 0),
                Why::Shutdown => (11, 0),
                Why::Removed => (12, 0),
                Why::Adopted(pid) => (13, pid.max(1)),
                Why::Resumed => (14, 0),
                Why::Ready => (15, 0),
                Why::StartTimeout => (16, 0),
                Why::Watchdog => (17, 0),
            };
            w.u8(tag)?;
            w.i32(value)?;
            w.u8(stage)?;
            w.u32(e.restarts)?;
            w.pid(e.pid)?;
            w.ms(e.next_delay_ms)?;
            w.name(e.name)?;
        }
        Body::Dropped(count) => w.u64(count)?,
        Body::Reloaded(r) => {
            w.u16(r.added)?;
            w.u16(r.removed)?;
            w.u16(r.changed)?;
            w.u16(r.unchanged)?;
            w.text(r.needs_restart, TEXT_LEN_MAX)?;
        }
        Body::Stats(s) => {
            if s.stall_buckets.len() != STALL_BUCKETS_BYTES {
                return Err(EncodeError::BadBuckets {
                    len: s.stall_buckets.len(),
                });
            }
            for value in [
                s.spawned_local,
                s.spawned_qm,
                s.exited,
                s.spawn_failed,
                s.log_dropped,
                s.stall_max_ns,
            ] {
                w.u64(value)?;
            }
            w.u16(crate::histogram::BUCKETS as u16)?;
            w.put(s.stall_buckets)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(body: Body<'_>) {
        let mut buf = [0u8; FRAME_LEN_MAX];
        let len = encode(&mut buf, 7, &body).unwrap();
        let frame = decode(&buf[..len]).unwrap();
        assert_eq!(frame.id, 7);
        assert_eq!(frame.body, body);
        // Every proper prefix is refused, never a panic.
        for cut in 0..len {
            assert!(decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn every_kind_round_trips() {
        roundtrip(Body::Status(None));
        roundtrip(Body::Status(Some("radio")));
        roundtrip(Body::Command {
            op: Op::Kill(9),
            name: "a",
        });
        roundtrip(Body::Command {
            op: Op::ResetFailed,
            name: "nav",
        });
        roundtrip(Body::AgentStatus);
        roundtrip(Body::Monitor);
        roundtrip(Body::Reload);
        roundtrip(Body::Reexec);
        roundtrip(Body::Reexecuted(ReexecInfo {
            generation: 2,
            took_us: 3_141,
            adopted: 16,
        }));
        roundtrip(Body::Service(ServiceInfo {
            name: "radio",
            partition: PartitionCode::Qm,
            state: StateCode::Backoff,
            pid: None,
            uptime_ms: None,
            restarts: 3,
            last_exit: Some(Exit::Signal(9)),
            next_restart_ms: Some(400),
            spawn_error: None,
            start_limit_hit: false,
            status: "",
            kind: TypeCode::Simple,
            ready_ms: None,
        }));
        roundtrip(Body::Service(ServiceInfo {
            name: "nav",
            partition: PartitionCode::Local,
            state: StateCode::Failed,
            pid: None,
            uptime_ms: None,
            restarts: 5,
            last_exit: None,
            next_restart_ms: None,
            spawn_error: Some(SpawnError {
                stage: SpawnStage::Exec,
                errno: libc::ENOENT,
            }),
            start_limit_hit: true,
            status: "serving 3 clients",
            kind: TypeCode::Notify,
            ready_ms: Some(412),
        }));
        roundtrip(Body::Event(EventInfo {
            name: "nav",
            partition: PartitionCode::Local,
            from: StateCode::Starting,
            to: StateCode::Backoff,
            why: Why::SpawnFailed(SpawnError {
                stage: SpawnStage::Setup,
                errno: libc::EACCES,
            }),
            restarts: 1,
            pid: None,
            next_delay_ms: Some(10),
        }));
        roundtrip(Body::End(3));
        roundtrip(Body::Done(StateCode::Running));
        roundtrip(Body::Failure {
            code: FailCode::UnknownService,
            text: "no service \"x\"",
        });
        roundtrip(Body::Agent(AgentInfo {
            link: LinkCode::Up,
            protocol: "v1",
            version: (1, 0),
            capabilities: 5,
            connects: 2,
            drops: 1,
            socket: "/run/holden/qm.sock",
        }));
        roundtrip(Body::Event(EventInfo {
            name: "radio",
            partition: PartitionCode::Local,
            from: StateCode::Running,
            to: StateCode::Backoff,
            why: Why::Exited(Exit::Code(1)),
            restarts: 4,
            pid: Some(4242),
            next_delay_ms: Some(100),
        }));
        // A QM process gone before its pid was read: pid 0 (unknown), never replaced by 1.
        roundtrip(Body::Event(EventInfo {
            name: "radio",
            partition: PartitionCode::Qm,
            from: StateCode::Starting,
            to: StateCode::Running,
            why: Why::Spawned(0),
            restarts: 0,
            pid: None,
            next_delay_ms: None,
        }));
        roundtrip(Body::Dropped(12));
        roundtrip(Body::Reloaded(ReloadInfo {
            added: 1,
            removed: 2,
            changed: 3,
            unchanged: 4,
            needs_restart: "slots",
        }));
    }

    #[test]
    fn log_frames_round_trip_and_are_checked() {
        roundtrip(Body::Logs {
            name: "radio",
            lines: 10,
            follow: true,
        });
        roundtrip(Body::Logs {
            name: "r",
            lines: u32::MAX,
            follow: false,
        });
        roundtrip(Body::LogLine(LogLineInfo {
            seq: 41,
            stream: StreamCode::Stderr,
            priority: 3,
            truncated: false,
            text: b"not utf-8 \xff \"\n\0",
        }));
        roundtrip(Body::LogLine(LogLineInfo {
            seq: u64::MAX,
            stream: StreamCode::Stdout,
            priority: 0,
            truncated: true,
            text: &[b'x'; LOG_TEXT_LEN_MAX],
        }));
        roundtrip(Body::LogStats(LogStatsInfo {
            lines: 5000,
            dropped: 3000,
            first_seq: 4900,
            next_seq: 5000,
        }));
        // The exact bytes of a request: lines, follow, name.
        let mut buf = [0u8; FRAME_LEN_MAX];
        let body = Body::Logs {
            name: "ab",
            lines: 258,
            follow: true,
        };
        let len = encode(&mut buf, 9, &body).unwrap();
        assert_eq!(
            &buf[..len],
            b"HCTL\x05\x07\0\0\x09\0\0\0\x09\0\0\0\x02\x01\0\0\x01\x02\0ab"
        );
        // Out-of-range fields are refused, typed.
        let mut bad = buf;
        bad[HEADER_LEN + 4] = 2;
        assert_eq!(
            decode(&bad[..len]),
            Err(DecodeError::BadValue {
                kind: 7,
                field: "follow"
            })
        );
        let line = Body::LogLine(LogLineInfo {
            seq: 1,
            stream: StreamCode::Stdout,
            priority: 6,
            truncated: false,
            text: b"hi",
        });
        let len = encode(&mut buf, 1, &line).unwrap();
        for (offset, value, field) in [(8, 2, "stream"), (9, 8, "priority"), (10, 2, "truncated")] {
            let mut bad = buf;
            bad[HEADER_LEN + offset] = value;
            assert_eq!(
                decode(&bad[..len]),
                Err(DecodeError::BadValue { kind: 25, field }),
                "{field}"
            );
        }
        let mut bad = buf;
        bad[HEADER_LEN + 11..HEADER_LEN + 13].copy_from_slice(&1025u16.to_le_bytes());
        assert!(matches!(
            decode(&bad[..len]),
            Err(DecodeError::BadString { kind: 25, .. })
        ));
        assert!(matches!(
            encode(
                &mut buf,
                1,
                &Body::LogLine(LogLineInfo {
                    priority: 8,
                    ..LogLineInfo {
                        seq: 0,
                        stream: StreamCode::Stdout,
                        priority: 0,
                        truncated: false,
                        text: b""
                    }
                })
            ),
            Err(EncodeError::BadPriority { priority: 8 })
        ));
        let stats = Body::LogStats(LogStatsInfo {
            lines: 1,
            dropped: 0,
            first_seq: 0,
            next_seq: 1,
        });
        let len = encode(&mut buf, 1, &stats).unwrap();
        let mut bad = buf;
        bad[HEADER_LEN + 16] = 2;
        assert_eq!(
            decode(&bad[..len]),
            Err(DecodeError::BadValue {
                kind: 26,
                field: "first_seq"
            })
        );
    }

    #[test]
    fn header_errors_are_typed() {
        let mut buf = [0u8; FRAME_LEN_MAX];
        let len = encode(&mut buf, 1, &Body::Monitor).unwrap();
        let mut bad = buf;
        bad[0] = b'X';
        assert_eq!(decode(&bad[..len]), Err(DecodeError::BadMagic));
        // Version 1 (before why a service failed was carried) is refused by name.
        let mut bad = buf;
        bad[4] = 1;
        assert_eq!(
            decode(&bad[..len]),
            Err(DecodeError::UnsupportedVersion { version: 1 })
        );
        let mut bad = buf;
        bad[5] = 99;
        assert_eq!(
            decode(&bad[..len]),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
        let mut long = buf;
        long[12] = 1;
        assert!(matches!(
            decode(&long[..len + 1]),
            Err(DecodeError::TrailingBytes { kind: 4 })
        ));
        assert!(matches!(
            decode(&[0u8; FRAME_LEN_MAX + 1]),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let text = "é".repeat(TEXT_LEN_MAX);
        let mut buf = [0u8; FRAME_LEN_MAX];
        let len = encode(
            &mut buf,
            1,
            &Body::Failure {
                code: FailCode::ReloadFailed,
                text: &text,
            },
        )
        .unwrap();
        let Body::Failure { text: cut, .. } = decode(&buf[..len]).unwrap().body else {
            panic!("not a failure");
        };
        assert_eq!(cut.len(), TEXT_LEN_MAX);
        assert!(text.starts_with(cut));
    }

    #[test]
    fn bad_names_are_refused_on_encode() {
        let mut buf = [0u8; FRAME_LEN_MAX];
        let long = "x".repeat(NAME_LEN_MAX + 1);
        assert!(encode(
            &mut buf,
            1,
            &Body::Command {
                op: Op::Start,
                name: &long
            }
        )
        .is_err());
        assert!(encode(
            &mut buf,
            1,
            &Body::Command {
                op: Op::Start,
                name: ""
            }
        )
        .is_err());
    }

    #[test]
    fn stats_round_trip_and_need_every_bucket() {
        roundtrip(Body::StatsRequest);
        let mut buckets = [0u8; STALL_BUCKETS_BYTES];
        buckets[8..16].copy_from_slice(&7u64.to_le_bytes());
        buckets[STALL_BUCKETS_BYTES - 8..].copy_from_slice(&1u64.to_le_bytes());
        let info = StatsInfo {
            spawned_local: 1,
            spawned_qm: 2,
            exited: 3,
            spawn_failed: 4,
            log_dropped: 5,
            stall_max_ns: 6,
            stall_buckets: &buckets,
        };
        roundtrip(Body::Stats(info));
        assert_eq!(info.stall_counts().sum::<u64>(), 8);
        assert_eq!(info.stall_counts().nth(1), Some(7));
        let short = StatsInfo {
            stall_buckets: &buckets[8..],
            ..info
        };
        let mut buf = [0u8; FRAME_LEN_MAX];
        assert!(matches!(
            encode(&mut buf, 1, &Body::Stats(short)),
            Err(EncodeError::BadBuckets { .. })
        ));
        // Another bucket count is refused.
        let len = encode(&mut buf, 1, &Body::Stats(info)).unwrap();
        buf[HEADER_LEN + 48] ^= 1;
        assert!(matches!(
            decode(&buf[..len]),
            Err(DecodeError::BadValue {
                field: "bucket count",
                ..
            })
        ));
    }

    #[test]
    fn every_fuzz_seed_decodes_and_re_encodes_exactly() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/control_decode");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let frame = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut buf = [0u8; FRAME_LEN_MAX];
            let len = encode(&mut buf, frame.id, &frame.body).unwrap();
            assert_eq!(&buf[..len], &bytes[..], "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 17, "only {seen} seeds");
    }
}
