//! journald's native protocol, sans-IO: the encoder of one entry (one datagram to
//! `/run/systemd/journal/socket`).
//!
//! An entry is a list of fields. A field whose value holds no newline is `NAME=value\n`; any
//! other is `NAME\n`, the value's length as a little-endian u64, the value, `\n` (binary-safe).
//! Names are 1–64 bytes of `A-Z`, `0-9` and `_`, not starting with `_` (journald keeps those
//! for the fields it adds itself: `_PID`, `_UID`, `_COMM`, … from the sender's credentials) or
//! a digit. The encoder writes into a caller's fixed buffer and never allocates.

/// Longest field name.
pub const NAME_LEN_MAX: usize = 64;

/// Why a field was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// The name is empty, too long, starts with `_` or a digit, or holds a byte outside
    /// `A-Z0-9_`.
    BadName,
    /// The buffer has no room for it (the entry is unchanged).
    NoRoom,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FieldError::BadName => "not a journal field name (A-Z, 0-9, _; not starting with _ or a digit; at most 64 bytes)",
            FieldError::NoRoom => "entry buffer full",
        })
    }
}

impl std::error::Error for FieldError {}

/// Whether `name` may be sent as a field name.
pub fn valid_name(name: &[u8]) -> bool {
    match name.first() {
        None | Some(b'_') | Some(b'0'..=b'9') => false,
        Some(_) => {
            name.len() <= NAME_LEN_MAX
                && name
                    .iter()
                    .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }
    }
}

/// One entry being encoded into a fixed buffer.
pub struct Entry<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Entry<'b> {
    /// An empty entry in `buf`.
    pub fn new(buf: &'b mut [u8]) -> Entry<'b> {
        Entry { buf, len: 0 }
    }

    /// Adds one field.
    pub fn field(&mut self, name: &str, value: &[u8]) -> Result<(), FieldError> {
        let name = name.as_bytes();
        if !valid_name(name) {
            return Err(FieldError::BadName);
        }
        let binary = value.contains(&b'\n');
        let needed = if binary {
            name.len() + 1 + 8 + value.len() + 1
        } else {
            name.len() + 1 + value.len() + 1
        };
        if self.buf.len() - self.len < needed {
            return Err(FieldError::NoRoom);
        }
        let mut at = self.len;
        let mut put = |bytes: &[u8]| {
            self.buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(name);
        if binary {
            put(b"\n");
            put(&(value.len() as u64).to_le_bytes());
        } else {
            put(b"=");
        }
        put(value);
        put(b"\n");
        self.len = at;
        Ok(())
    }

    /// Adds a field whose value is a number.
    pub fn number(&mut self, name: &str, value: u64) -> Result<(), FieldError> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.field(name, &digits[at..])
    }

    /// The datagram so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Bytes used.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No field yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Decodes an entry (for tests and the stand-in journal of the integration tests): the fields
/// in order, `None` if the bytes are not a well-formed entry.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let end = bytes.iter().position(|&b| b == b'=' || b == b'\n')?;
        let name = std::str::from_utf8(&bytes[..end]).ok()?.to_string();
        if !valid_name(name.as_bytes()) {
            return None;
        }
        if bytes[end] == b'=' {
            let rest = &bytes[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n')?;
            fields.push((name, rest[..nl].to_vec()));
            bytes = &rest[nl + 1..];
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            let len = usize::try_from(len).ok()?;
            let value = rest.get(8..8usize.checked_add(len)?)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((name, value.to_vec()));
            bytes = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_fields_byte_for_byte() {
        let mut buf = [0u8; 128];
        let mut e = Entry::new(&mut buf);
        e.field("MESSAGE", b"hello world").unwrap();
        e.number("PRIORITY", 3).unwrap();
        e.field("MESSAGE_ID", b"two\nlines").unwrap();
        e.number("HOLDEN_PID", 0).unwrap();
        let mut expected = b"MESSAGE=hello world\nPRIORITY=3\nMESSAGE_ID\n".to_vec();
        expected.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(b"two\nlines\nHOLDEN_PID=0\n");
        assert_eq!(e.as_bytes(), expected.as_slice());
        assert_eq!(
            decode(e.as_bytes()).unwrap(),
            vec![
                ("MESSAGE".to_string(), b"hello world".to_vec()),
                ("PRIORITY".to_string(), b"3".to_vec()),
                ("MESSAGE_ID".to_string(), b"two\nlines".to_vec()),
                ("HOLDEN_PID".to_string(), b"0".to_vec()),
            ]
        );
    }

    #[test]
    fn names_are_checked() {
        let mut buf = [0u8; 256];
        let mut e = Entry::new(&mut buf);
        for bad in ["", "_PID", "1ABC", "message", "A=B", "A B", &"A".repeat(65)] {
            assert_eq!(e.field(bad, b"x"), Err(FieldError::BadName), "{bad:?}");
        }
        assert!(e.is_empty());
        e.field(&"A".repeat(64), b"").unwrap();
        assert_eq!(e.len(), 66);
    }

    #[test]
    fn a_field_without_room_leaves_the_entry_as_it_was() {
        let mut buf = [0u8; 16];
        let mut e = Entry::new(&mut buf);
        e.field("A", b"1234").unwrap();
        assert_eq!(e.field("B", b"123456789"), Err(FieldError::NoRoom));
        assert_eq!(e.field("B", b"1\n2"), Err(FieldError::NoRoom));
        assert_eq!(e.as_bytes(), b"A=1234\n");
        e.field("B", b"123456").unwrap();
        assert_eq!(e.len(), 16);
    }

    #[test]
    fn decode_refuses_malformed_entries() {
        assert_eq!(decode(b""), Some(vec![]));
        assert!(decode(b"A=1").is_none(), "no final newline");
        assert!(decode(b"_A=1\n").is_none());
        assert!(
            decode(b"A\n\x05\0\0\0\0\0\0\0abc\n").is_none(),
            "short value"
        );
        assert!(decode(b"A\n\xff\xff\xff\xff\xff\xff\xff\xff").is_none());
    }
}
