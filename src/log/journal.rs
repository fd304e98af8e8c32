//! The orchestrator's own log lines as journald entries with native fields, sans-IO.
//!
//! A line `<N>key=value key="quoted value" ...` (the grammar of `docs/orchestrator.md`, "Log")
//! becomes one entry: `MESSAGE` the line without its `<N>` prefix, `PRIORITY=N`,
//! `SYSLOG_IDENTIFIER`, and one field `HOLDEN_<KEY>` per field of the line, its value
//! unquoted and unescaped (`HOLDEN_EVENT=reload-failed`, `HOLDEN_SERVICE=radio`,
//! `HOLDEN_STATE=failed`, …). A line that is not `key=value` (the sentences before the loop
//! starts) gets `MESSAGE` and `PRIORITY` only; a field that does not fit is left out.

use crate::output::journal::Entry;

/// Most fields of a line turned into native fields.
const FIELDS_MAX: usize = 32;

/// (start, len) of a key and of its value in the scratch buffer.
type Spans = arrayvec::ArrayVec<((usize, usize), (usize, usize)), FIELDS_MAX>;

/// Parses the fields of a log line body (after `<N>`): keys upper-cased and values unescaped
/// into `scratch`, their places returned; `None` when the body is not strict `key=value`.
/// Allocates nothing (fields past [`FIELDS_MAX`] are left out).
fn fields(body: &[u8], scratch: &mut [u8]) -> Option<Spans> {
    let mut at = 0;
    let mut w = 0;
    let put = |scratch: &mut [u8], w: &mut usize, b: u8| -> Option<()> {
        *scratch.get_mut(*w)? = b;
        *w += 1;
        Some(())
    };
    let mut spans = Spans::new();
    while at < body.len() {
        let key_start = w;
        while at < body.len() && matches!(body[at], b'a'..=b'z' | b'0'..=b'9' | b'_') {
            put(scratch, &mut w, body[at].to_ascii_uppercase())?;
            at += 1;
        }
        if w == key_start || body.get(at) != Some(&b'=') {
            return None;
        }
        let key = (key_start, w - key_start);
        at += 1;
        let value_start = w;
        if body.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match *body.get(at)? {
                    b'"' => {
                        at += 1;
                        break;
                    }
                    b'\\' => {
                        let (b, len) = match *body.get(at + 1)? {
                            b'"' => (b'"', 2),
                            b'\\' => (b'\\', 2),
                            b'n' => (b'\n', 2),
                            b'x' => {
                                let hex = std::str::from_utf8(body.get(at + 2..at + 4)?).ok()?;
                                (u8::from_str_radix(hex, 16).ok()?, 4)
                            }
                            _ => return None,
                        };
                        put(scratch, &mut w, b)?;
                        at += len;
                    }
                    b => {
                        put(scratch, &mut w, b)?;
                        at += 1;
                    }
                }
            }
        } else {
            while at < body.len() && body[at] != b' ' {
                put(scratch, &mut w, body[at])?;
                at += 1;
            }
        }
        let _ = spans.try_push((key, (value_start, w - value_start)));
        match body.get(at) {
            None => break,
            Some(b' ') => at += 1,
            Some(_) => return None,
        }
    }
    Some(spans)
}

/// Encodes one log line (without its newline) as an entry into `buf`; returns its length.
pub fn line_entry(line: &[u8], identifier: &str, buf: &mut [u8]) -> usize {
    let (priority, body) = crate::output::lines::split_priority(line);
    let mut scratch = [0u8; super::LINE_BYTES_MAX * 2];
    let parsed = fields(body, &mut scratch);
    let mut entry = Entry::new(buf);
    let _ = entry.field("MESSAGE", body);
    let _ = entry.number("PRIORITY", u64::from(priority.unwrap_or(6)));
    let _ = entry.field("SYSLOG_IDENTIFIER", identifier.as_bytes());
    if let Some(parsed) = parsed {
        let mut name = [0u8; crate::output::journal::NAME_LEN_MAX];
        name[..7].copy_from_slice(b"HOLDEN_");
        for ((key_start, key_len), (start, len)) in parsed {
            let key = &scratch[key_start..key_start + key_len];
            if 7 + key.len() > name.len() {
                continue;
            }
            name[7..7 + key.len()].copy_from_slice(key);
            let Ok(name) = std::str::from_utf8(&name[..7 + key.len()]) else {
                continue;
            };
            let _ = entry.field(name, &scratch[start..start + len]);
        }
    }
    entry.len()
}

/// Whether `JOURNAL_STREAM` (systemd's `DEVICE:INODE`, decimal) names the file with `dev` and
/// `ino`: then stderr is connected to the journal.
pub fn names_stream(journal_stream: &[u8], dev: u64, ino: u64) -> bool {
    let Ok(text) = std::str::from_utf8(journal_stream) else {
        return false;
    };
    let Some((d, i)) = text.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Whether `fd` is the stream `JOURNAL_STREAM` names (the environment of this process).
pub fn fd_is_journal_stream(fd: std::os::fd::RawFd) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stat = crate::sys::fd::fstat_raw(fd);
    stat.is_ok_and(|st| names_stream(value.as_bytes(), st.dev, st.ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::journal::decode;

    fn entry(line: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut buf = [0u8; 4096];
        let n = line_entry(line, "holden-orchestrator", &mut buf);
        decode(&buf[..n]).unwrap()
    }

    #[test]
    fn every_field_of_a_line_becomes_a_native_field() {
        let got =
            entry(b"<3>event=reload-failed error=\"a \\\"b\\\" c\\\\d\\ne\\x01\" action=none");
        let expected: Vec<(String, Vec<u8>)> = [
            (
                "MESSAGE",
                &b"event=reload-failed error=\"a \\\"b\\\" c\\\\d\\ne\\x01\" action=none"[..],
            ),
            ("PRIORITY", b"3"),
            ("SYSLOG_IDENTIFIER", b"holden-orchestrator"),
            ("HOLDEN_EVENT", b"reload-failed"),
            ("HOLDEN_ERROR", b"a \"b\" c\\d\ne\x01"),
            ("HOLDEN_ACTION", b"none"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
        assert_eq!(got, expected);
        // The exact bytes: the value with a newline goes length-prefixed.
        let mut buf = [0u8; 512];
        let n = line_entry(b"<6>a=\"x\\ny\"", "h", &mut buf);
        assert_eq!(
            &buf[..n],
            b"MESSAGE=a=\"x\\ny\"\nPRIORITY=6\nSYSLOG_IDENTIFIER=h\nHOLDEN_A\n\x03\0\0\0\0\0\0\0x\ny\n"
        );
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(names_stream(b"8:12345", 8, 12345));
        assert!(!names_stream(b"8:12345", 8, 12346));
        assert!(!names_stream(b"8:12345", 9, 12345));
        for bad in [&b""[..], b"8", b"8:", b":1", b"x:1", b"8:1:2", b"\xff:1"] {
            assert!(!names_stream(bad, 8, 1), "{bad:?}");
        }
    }

    #[test]
    fn a_line_that_is_not_key_value_keeps_message_and_priority() {
        for line in [
            &b"<3>holden-orchestrator: cannot start: x"[..],
            b"<4>a=\"unterminated",
            b"<4>a=\"bad \\q\"",
            b"no prefix",
        ] {
            let got = entry(line);
            let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                names,
                ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"],
                "{line:?}"
            );
        }
        assert_eq!(entry(b"no prefix")[1].1, b"6");
    }
}
