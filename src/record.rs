//! The state record: what a restarted orchestrator needs to take over the processes of the
//! previous instance instead of starting them a second time. Sans-IO: encoding into a caller's
//! buffer and strict decoding; the file, its lock and its atomic replacement are the shell's
//! (`src/orchestrator/runtime.rs`). Format in `docs/orchestrator.md` ("The state record").
//!
//! One line per service, `key=value` fields, in a text file so that an operator can read it:
//!
//! ```text
//! holden-state 1 boot=6f0d…
//! service camera local state=running pid=4211 qm_pid=0 id=pidfs:9a41 since=81230000000 restarts=2 step=1 exit=signal:11 next=- kill_at=- kill_sent=0 again=0 limit=0 starts=81000000000,81230000000
//! end 1
//! ```
//!
//! `end N` closes the file with its number of services: a file cut short is refused, never
//! half-read. Times are nanoseconds of `CLOCK_MONOTONIC`, which counts on across an
//! orchestrator restart within one boot; the boot id in the header makes a record of another
//! boot (a runtime directory on persistent storage) worthless, as it must be.

use crate::config::SERVICE_NAME_LEN_MAX;
use crate::supervise::{Carried, ExitStatus, MonoTime, Partition, Pid, State, CARRIED_STARTS_MAX};
use arrayvec::ArrayString;
use std::io::Write;

/// The format's version (the header's second word).
pub const VERSION: u32 = 1;
/// Longest line of one service (every field at its widest, with room to spare).
pub const ENTRY_LEN_MAX: usize = 384 + SERVICE_NAME_LEN_MAX + CARRIED_STARTS_MAX * 21;
/// Longest header or trailer line.
const FRAME_LEN_MAX: usize = 128;
/// Length of a boot id (`/proc/sys/kernel/random/boot_id` without its newline).
pub const BOOT_ID_LEN: usize = 36;

/// Largest record of `services` services.
pub fn size_max(services: usize) -> usize {
    2 * FRAME_LEN_MAX + services * ENTRY_LEN_MAX
}

/// Which process a recorded pid was: what tells it from a later process with the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Not known (no process, or it could not be read).
    None,
    /// The pidfs inode number of its pidfd (6.9+): never reused within a boot.
    Pidfs(u64),
    /// Without pidfs: its start time (`/proc/PID/stat` field 22, clock ticks since boot) and a
    /// digest of its executable's path and its command line.
    StartTime { ticks: u64, digest: u64 },
}

/// One service of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: ArrayString<SERVICE_NAME_LEN_MAX>,
    pub partition: Partition,
    /// A QM process's pid inside QM (0: none or local).
    pub qm_pid: i32,
    pub identity: Identity,
    /// What the core had; `carried.pid` is its process's pid in the orchestrator's PID
    /// namespace.
    pub carried: Carried,
}

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub boot_id: ArrayString<BOOT_ID_LEN>,
    pub entries: Vec<Entry>,
}

/// Why a record was refused: the line (1-based) and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RecordError {}

/// FNV-1a, 64 bits: the digest of a start-time identity (a check, not a secret).
pub fn digest(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Writes a record of `entries` into `out`; returns the bytes written, `None` when `out` is too
/// small (it is sized with [`size_max`]). Allocates nothing.
pub fn encode<'a>(
    boot_id: &str,
    entries: impl Iterator<Item = &'a Entry>,
    out: &mut [u8],
) -> Option<usize> {
    let mut cursor = std::io::Cursor::new(out);
    writeln!(cursor, "holden-state {VERSION} boot={boot_id}").ok()?;
    let mut count = 0usize;
    for entry in entries {
        encode_entry(&mut cursor, entry).ok()?;
        count += 1;
    }
    writeln!(cursor, "end {count}").ok()?;
    Some(cursor.position() as usize)
}

fn encode_entry(w: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let c = &e.carried;
    write!(
        w,
        "service {} {} state={} pid={} qm_pid={} id=",
        e.name,
        e.partition.as_str(),
        c.state.as_str(),
        c.pid.map_or(0, |p| p.0.max(0)),
        e.qm_pid.max(0)
    )?;
    match e.identity {
        Identity::None => w.write_all(b"-")?,
        Identity::Pidfs(ino) => write!(w, "pidfs:{ino:x}")?,
        Identity::StartTime { ticks, digest } => write!(w, "start:{ticks}:{digest:x}")?,
    }
    w.write_all(b" since=")?;
    time(w, c.running_since)?;
    write!(w, " restarts={} step={} exit=", c.restarts, c.backoff_step)?;
    match c.last_exit {
        None => w.write_all(b"-")?,
        Some(ExitStatus::Code(code)) => write!(w, "code:{code}")?,
        Some(ExitStatus::Signal(signal)) => write!(w, "signal:{signal}")?,
        Some(ExitStatus::Unknown) => w.write_all(b"unknown")?,
    }
    w.write_all(b" next=")?;
    time(w, c.next_restart)?;
    w.write_all(b" kill_at=")?;
    time(w, c.kill_at)?;
    write!(
        w,
        " kill_sent={} again={} limit={} starts=",
        u8::from(c.kill_sent),
        u8::from(c.start_after_stop),
        u8::from(c.start_limit_hit)
    )?;
    if c.starts().is_empty() {
        w.write_all(b"-")?;
    }
    for (i, start) in c.starts().iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write!(w, "{}", start.as_nanos())?;
    }
    w.write_all(b"\n")
}

fn time(w: &mut impl Write, t: Option<MonoTime>) -> std::io::Result<()> {
    match t {
        None => w.write_all(b"-"),
        Some(t) => write!(w, "{}", t.as_nanos()),
    }
}

/// Reads a record; every line must be what [`encode`] writes, and the trailer must count the
/// entries. At most `entries_max` entries are accepted.
pub fn decode(text: &[u8], entries_max: usize) -> Result<Record, RecordError> {
    let text = std::str::from_utf8(text).map_err(|e| RecordError {
        line: 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8".into(),
    })?;
    let mut lines = text.split_inclusive('\n').enumerate();
    let fail = |line: usize, message: String| RecordError {
        line: line + 1,
        message,
    };
    let (_, header) = lines
        .next()
        .ok_or_else(|| fail(0, "empty: expected a header".into()))?;
    let header = header
        .strip_suffix('\n')
        .ok_or_else(|| fail(0, "cut short".into()))?;
    let mut words = header.split(' ');
    if words.next() != Some("holden-state") {
        return Err(fail(0, "not a holden state record".into()));
    }
    match words.next() {
        Some(v) if v == VERSION.to_string() => {}
        other => {
            return Err(fail(
                0,
                format!(
                    "version {}: this orchestrator reads version {VERSION}",
                    other.unwrap_or("(none)")
                ),
            ))
        }
    }
    let boot = words
        .next()
        .and_then(|w| w.strip_prefix("boot="))
        .filter(|b| b.len() <= BOOT_ID_LEN && words.next().is_none())
        .ok_or_else(|| fail(0, "expected `boot=ID` after the version".into()))?;
    let boot_id = ArrayString::from(boot).map_err(|_| fail(0, "boot id too long".into()))?;
    let mut entries = Vec::new();
    for (index, line) in lines {
        let line = line
            .strip_suffix('\n')
            .ok_or_else(|| fail(index, "cut short".into()))?;
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(fail(
                    index,
                    format!("trailer says {count} services, {} read", entries.len()),
                ));
            }
            if index + 1 != text.lines().count() {
                return Err(fail(index + 1, "text after the trailer".into()));
            }
            return Ok(Record { boot_id, entries });
        }
        if entries.len() == entries_max {
            return Err(fail(index, format!("more than {entries_max} services")));
        }
        let entry = decode_entry(line).map_err(|m| fail(index, m))?;
        if entries.iter().any(|e: &Entry| e.name == entry.name) {
            return Err(fail(index, format!("service {} twice", entry.name)));
        }
        entries.push(entry);
    }
    Err(RecordError {
        line: text.lines().count() + 1,
        message: "cut short: no `end` trailer".into(),
    })
}

fn decode_entry(line: &str) -> Result<Entry, String> {
    let mut words = line.split(' ');
    if words.next() != Some("service") {
        return Err("expected `service NAME PARTITION key=value...` or `end N`".into());
    }
    let name = words.next().unwrap_or("");
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    let name = ArrayString::from(name)
        .ok()
        .filter(|_| valid_name)
        .ok_or_else(|| format!("bad service name {name:?}"))?;
    let partition = match words.next() {
        Some("local") => Partition::Local,
        Some("qm") => Partition::Qm,
        other => return Err(format!("bad partition {other:?}")),
    };
    let mut fields = Fields { words, key: "" };
    let state = match fields.next("state")? {
        "stopped" => State::Stopped,
        "starting" => State::Starting,
        "running" => State::Running,
        "backoff" => State::Backoff,
        "stopping" => State::Stopping,
        "failed" => State::Failed,
        "waiting-for-agent" => State::WaitingForAgent,
        other => return Err(format!("bad state {other:?}")),
    };
    let pid = fields.int::<i32>("pid")?;
    let qm_pid = fields.int::<i32>("qm_pid")?;
    let identity = match fields.next("id")? {
        "-" => Identity::None,
        id => {
            if let Some(hex) = id.strip_prefix("pidfs:") {
                Identity::Pidfs(u64::from_str_radix(hex, 16).map_err(|_| bad("id", id))?)
            } else if let Some((ticks, digest)) =
                id.strip_prefix("start:").and_then(|s| s.split_once(':'))
            {
                Identity::StartTime {
                    ticks: ticks.parse().map_err(|_| bad("id", id))?,
                    digest: u64::from_str_radix(digest, 16).map_err(|_| bad("id", id))?,
                }
            } else {
                return Err(bad("id", id));
            }
        }
    };
    let running_since = fields.time("since")?;
    let restarts = fields.int::<u32>("restarts")?;
    let backoff_step = fields.int::<u32>("step")?;
    let last_exit = match fields.next("exit")? {
        "-" => None,
        "unknown" => Some(ExitStatus::Unknown),
        exit => match exit.split_once(':') {
            Some(("code", n)) => Some(ExitStatus::Code(n.parse().map_err(|_| bad("exit", exit))?)),
            Some(("signal", n)) => match n.parse() {
                Ok(signal @ 1..=64) => Some(ExitStatus::Signal(signal)),
                _ => return Err(bad("exit", exit)),
            },
            _ => return Err(bad("exit", exit)),
        },
    };
    let next_restart = fields.time("next")?;
    let kill_at = fields.time("kill_at")?;
    let kill_sent = fields.flag("kill_sent")?;
    let start_after_stop = fields.flag("again")?;
    let start_limit_hit = fields.flag("limit")?;
    let mut starts = [MonoTime::ZERO; CARRIED_STARTS_MAX];
    let mut starts_len = 0u8;
    match fields.next("starts")? {
        "-" => {}
        list => {
            for time in list.split(',') {
                let place = starts
                    .get_mut(usize::from(starts_len))
                    .ok_or_else(|| format!("more than {CARRIED_STARTS_MAX} start times"))?;
                *place = MonoTime::from_nanos(time.parse().map_err(|_| bad("starts", list))?);
                starts_len += 1;
            }
        }
    }
    if let Some(extra) = fields.words.next() {
        return Err(format!("unexpected {extra:?} after `starts`"));
    }
    if pid < 0 || qm_pid < 0 {
        return Err("negative pid".into());
    }
    Ok(Entry {
        name,
        partition,
        qm_pid,
        identity,
        carried: Carried {
            state,
            pid: (pid > 0).then_some(Pid(pid)),
            running_since,
            restarts,
            backoff_step,
            last_exit,
            next_restart,
            kill_at,
            kill_sent,
            start_after_stop,
            start_limit_hit,
            starts,
            starts_len,
        },
    })
}

fn bad(key: &str, value: &str) -> String {
    format!("bad {key} {value:?}")
}

/// The `key=value` words of a line, in their fixed order.
struct Fields<'a, I: Iterator<Item = &'a str>> {
    words: I,
    key: &'a str,
}

impl<'a, I: Iterator<Item = &'a str>> Fields<'a, I> {
    fn next(&mut self, key: &'a str) -> Result<&'a str, String> {
        self.key = key;
        let word = self
            .words
            .next()
            .ok_or_else(|| format!("missing `{key}=`"))?;
        word.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| format!("expected `{key}=` where {word:?} is"))
    }

    fn int<T: std::str::FromStr>(&mut self, key: &'a str) -> Result<T, String> {
        let value = self.next(key)?;
        value.parse().map_err(|_| bad(self.key, value))
    }

    fn time(&mut self, key: &'a str) -> Result<Option<MonoTime>, String> {
        match self.next(key)? {
            "-" => Ok(None),
            value => value
                .parse()
                .map(|ns| Some(MonoTime::from_nanos(ns)))
                .map_err(|_| bad(key, value)),
        }
    }

    fn flag(&mut self, key: &'a str) -> Result<bool, String> {
        match self.next(key)? {
            "0" => Ok(false),
            "1" => Ok(true),
            value => Err(bad(key, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        let mut starts = [MonoTime::ZERO; CARRIED_STARTS_MAX];
        starts[0] = MonoTime::from_nanos(5);
        starts[1] = MonoTime::from_nanos(77);
        Entry {
            name: ArrayString::from(name).unwrap(),
            partition: Partition::Qm,
            qm_pid: 7,
            identity: Identity::Pidfs(0x9a41),
            carried: Carried {
                state: State::Stopping,
                pid: Some(Pid(4211)),
                running_since: Some(MonoTime::from_nanos(81_230_000_000)),
                restarts: 2,
                backoff_step: 1,
                last_exit: Some(ExitStatus::Signal(11)),
                next_restart: None,
                kill_at: Some(MonoTime::from_nanos(99)),
                kill_sent: false,
                start_after_stop: true,
                start_limit_hit: false,
                starts,
                starts_len: 2,
            },
        }
    }

    const BOOT: &str = "6f0d2a8e-1b44-4c1a-9d57-0a4ad3c1f2e9";

    fn encoded(entries: &[Entry]) -> Vec<u8> {
        let mut buf = vec![0; size_max(entries.len())];
        let n = encode(BOOT, entries.iter(), &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let mut other = entry("b.svc@1");
        other.partition = Partition::Local;
        other.identity = Identity::StartTime {
            ticks: 123,
            digest: u64::MAX,
        };
        other.carried = Carried::STOPPED;
        other.carried.last_exit = Some(ExitStatus::Code(-1));
        other.qm_pid = 0;
        let entries = [entry("camera"), other];
        let text = encoded(&entries);
        let record = decode(&text, 8).unwrap();
        assert_eq!(record.boot_id.as_str(), BOOT);
        assert_eq!(record.entries, entries);
        assert_eq!(
            std::str::from_utf8(&text).unwrap().lines().nth(1).unwrap(),
            "service camera qm state=stopping pid=4211 qm_pid=7 id=pidfs:9a41 \
             since=81230000000 restarts=2 step=1 exit=signal:11 next=- kill_at=99 kill_sent=0 \
             again=1 limit=0 starts=5,77"
        );
    }

    #[test]
    fn the_widest_entry_fits_its_bound() {
        let mut e = entry(&"x".repeat(SERVICE_NAME_LEN_MAX));
        e.qm_pid = i32::MAX;
        e.carried.pid = Some(Pid(i32::MAX));
        e.identity = Identity::StartTime {
            ticks: u64::MAX,
            digest: u64::MAX,
        };
        let c = &mut e.carried;
        c.state = State::WaitingForAgent;
        c.restarts = u32::MAX;
        c.backoff_step = u32::MAX;
        c.last_exit = Some(ExitStatus::Code(i32::MIN));
        c.running_since = Some(MonoTime::from_nanos(u64::MAX));
        c.next_restart = c.running_since;
        c.kill_at = c.running_since;
        c.starts = [MonoTime::from_nanos(u64::MAX); CARRIED_STARTS_MAX];
        c.starts_len = CARRIED_STARTS_MAX as u8;
        let text = encoded(&[e]);
        let line = std::str::from_utf8(&text).unwrap().lines().nth(1).unwrap();
        assert!(line.len() < ENTRY_LEN_MAX, "{} bytes", line.len());
        assert_eq!(decode(&text, 1).unwrap().entries, [e]);
    }

    #[test]
    fn a_damaged_record_is_refused_with_its_line() {
        let good = encoded(&[entry("a"), entry("b")]);
        let text = std::str::from_utf8(&good).unwrap();
        let cases: Vec<(String, usize, &str)> = vec![
            (String::new(), 1, "empty"),
            (text[..text.len() - 1].to_string(), 4, "cut short"),
            (text.replace("end 2", "end 3"), 4, "trailer"),
            (text.replace("\nend 2\n", "\n"), 4, "no `end`"),
            (
                text.replace("holden-state 1", "holden-state 2"),
                1,
                "version 2",
            ),
            (text.replace("service b", "service a"), 3, "twice"),
            (
                text.replace("state=stopping", "state=zombie"),
                2,
                "bad state",
            ),
            (text.replace("pid=4211 ", "pid=-4 "), 2, "negative"),
            (
                text.replace(" exit=signal:11", " exit=signal:99"),
                2,
                "bad exit",
            ),
            (text.replace(" restarts=2", ""), 2, "expected `restarts=`"),
            (
                text.replace("starts=5,77", "starts=5,77 more"),
                2,
                "unexpected",
            ),
            (format!("{text}extra\n"), 5, "after the trailer"),
            (
                text.replace("service a", "service a/b"),
                2,
                "bad service name",
            ),
        ];
        for (bad, line, needle) in cases {
            let error = decode(bad.as_bytes(), 8).unwrap_err();
            assert_eq!(error.line, line, "{needle}: {error}");
            assert!(error.message.contains(needle), "{needle}: {error}");
        }
        assert!(decode(&good, 1)
            .unwrap_err()
            .message
            .contains("more than 1"));
        assert!(decode(b"\xff\n", 1).unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = encoded(&[entry("a")]);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 32) as u8;
            bytes.truncate(bytes.len() - ((state >> 40) as usize % 3));
            let _ = decode(&bytes, 4);
        }
    }

    #[test]
    fn a_too_small_buffer_is_reported() {
        let mut buf = [0u8; 40];
        assert_eq!(encode(BOOT, [entry("a")].iter(), &mut buf), None);
    }

    #[test]
    fn the_digest_tells_the_parts_apart() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(
            digest(&[b"/bin/sleep", b"sleep\x0060"]),
            digest(&[b"/bin/sleep", b"sleep\x0060"])
        );
    }
}
