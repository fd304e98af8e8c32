//! The last lines of one service, in a fixed byte ring (`holdenctl logs`).
//!
//! Each record is a 4-byte header — text length (u16 little-endian), flags (bit 0: stderr,
//! bit 1: truncated), priority — and the text. When a new record does not fit, the oldest go.
//! Records are numbered from 0 in the order they came (`seq`); a reader holds a [`Cursor`]
//! (a sequence number and the record's absolute byte position), so that following a stream
//! costs O(1) per line and a reader that fell behind learns how many it missed.

use super::Stream;

const HEADER_BYTES: usize = 4;
const FLAG_STDERR: u8 = 1;
const FLAG_TRUNCATED: u8 = 2;

/// Where a reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The next record to read.
    pub seq: u64,
    /// Its absolute byte position (valid while `seq` is still held).
    pos: u64,
}

/// One record as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub stream: Stream,
    pub priority: u8,
    pub truncated: bool,
    pub text: &'a [u8],
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// The next record (the cursor moved past it).
    Record(Record<'a>),
    /// Records the reader missed: they were overwritten (the cursor moved to the oldest held).
    Missed(u64),
    /// Nothing new.
    End,
}

/// The ring of one service.
pub struct History {
    bytes: Box<[u8]>,
    /// Absolute position of the oldest record, and of the end.
    head: u64,
    tail: u64,
    first_seq: u64,
    next_seq: u64,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("capacity", &self.bytes.len())
            .field("first_seq", &self.first_seq)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl History {
    /// A ring of `capacity` bytes (at least a header and one byte).
    pub fn new(capacity: usize) -> History {
        History {
            bytes: vec![0u8; capacity.max(HEADER_BYTES + 1)].into_boxed_slice(),
            head: 0,
            tail: 0,
            first_seq: 0,
            next_seq: 0,
        }
    }

    /// Bytes of the ring.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// The number of the oldest record held.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The number the next record will get (records ever pushed).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn at(&self, pos: u64) -> u8 {
        self.bytes[(pos % self.bytes.len() as u64) as usize]
    }

    fn put(&mut self, pos: u64, data: &[u8]) {
        let cap = self.bytes.len();
        let start = (pos % cap as u64) as usize;
        let first = data.len().min(cap - start);
        self.bytes[start..start + first].copy_from_slice(&data[..first]);
        self.bytes[..data.len() - first].copy_from_slice(&data[first..]);
    }

    fn record_len(&self, pos: u64) -> u64 {
        let len = u16::from_le_bytes([self.at(pos), self.at(pos + 1)]);
        HEADER_BYTES as u64 + u64::from(len)
    }

    /// Appends a line, dropping the oldest to make room; a text longer than the ring (or than
    /// `u16::MAX`) is cut.
    pub fn push(&mut self, stream: Stream, priority: u8, truncated: bool, text: &[u8]) {
        let cap = self.bytes.len();
        let keep = text
            .len()
            .min(cap - HEADER_BYTES)
            .min(usize::from(u16::MAX));
        let cut = keep < text.len();
        let text = &text[..keep];
        let needed = (HEADER_BYTES + keep) as u64;
        while cap as u64 - (self.tail - self.head) < needed {
            self.head += self.record_len(self.head);
            self.first_seq += 1;
        }
        let mut flags = 0;
        if stream == Stream::Stderr {
            flags |= FLAG_STDERR;
        }
        if truncated || cut {
            flags |= FLAG_TRUNCATED;
        }
        let len = (keep as u16).to_le_bytes();
        let tail = self.tail;
        self.put(tail, &[len[0], len[1], flags, priority]);
        self.put(tail + HEADER_BYTES as u64, text);
        self.tail += needed;
        self.next_seq += 1;
    }

    /// A cursor at the `n` newest records (all if fewer are held).
    pub fn last(&self, n: u64) -> Cursor {
        let held = self.next_seq - self.first_seq;
        let mut cursor = Cursor {
            seq: self.first_seq,
            pos: self.head,
        };
        for _ in 0..held.saturating_sub(n) {
            cursor.pos += self.record_len(cursor.pos);
            cursor.seq += 1;
        }
        cursor
    }

    /// A cursor past the newest record (`-f` without history).
    pub fn end(&self) -> Cursor {
        Cursor {
            seq: self.next_seq,
            pos: self.tail,
        }
    }

    /// Reads the record at `cursor` into `out` (cut to its length) and moves the cursor on.
    pub fn read<'o>(&self, cursor: &mut Cursor, out: &'o mut [u8]) -> Read<'o> {
        if cursor.seq < self.first_seq {
            let missed = self.first_seq - cursor.seq;
            cursor.seq = self.first_seq;
            cursor.pos = self.head;
            return Read::Missed(missed);
        }
        if cursor.seq >= self.next_seq {
            return Read::End;
        }
        let pos = cursor.pos;
        let len = self.record_len(pos) as usize - HEADER_BYTES;
        let flags = self.at(pos + 2);
        let priority = self.at(pos + 3);
        let take = len.min(out.len());
        for (i, byte) in out[..take].iter_mut().enumerate() {
            *byte = self.at(pos + (HEADER_BYTES + i) as u64);
        }
        let record = Record {
            seq: cursor.seq,
            stream: if flags & FLAG_STDERR != 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            priority,
            truncated: flags & FLAG_TRUNCATED != 0 || take < len,
            text: &out[..take],
        };
        cursor.pos += (HEADER_BYTES + len) as u64;
        cursor.seq += 1;
        Read::Record(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(h: &History, mut cursor: Cursor) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match h.read(&mut cursor, &mut buf) {
                Read::Record(r) => out.push((r.seq, r.text.to_vec())),
                Read::Missed(n) => out.push((u64::MAX, n.to_string().into_bytes())),
                Read::End => return out,
            }
        }
    }

    #[test]
    fn keeps_the_newest_lines_in_a_fixed_ring() {
        // 32 bytes: three records of 4 + 6 bytes fit, a fourth pushes out the first.
        let mut h = History::new(32);
        for (i, text) in [b"line-0", b"line-1", b"line-2"].iter().enumerate() {
            h.push(Stream::from_index(i % 2), 6, false, *text);
        }
        assert_eq!(texts(&h, h.last(10)).len(), 3);
        h.push(Stream::Stdout, 3, true, b"line-3");
        assert_eq!(h.first_seq(), 1);
        assert_eq!(h.next_seq(), 4);
        assert_eq!(
            texts(&h, h.last(2)),
            vec![(2, b"line-2".to_vec()), (3, b"line-3".to_vec())]
        );
        let mut buf = [0u8; 64];
        let mut cursor = h.last(1);
        assert_eq!(
            h.read(&mut cursor, &mut buf),
            Read::Record(Record {
                seq: 3,
                stream: Stream::Stdout,
                priority: 3,
                truncated: true,
                text: b"line-3"
            })
        );
        assert_eq!(h.read(&mut cursor, &mut buf), Read::End);
        assert_eq!(cursor, h.end());
    }

    #[test]
    fn a_reader_that_fell_behind_learns_how_many_it_missed() {
        let mut h = History::new(40);
        h.push(Stream::Stdout, 6, false, b"a");
        let cursor = h.end();
        for i in 0..20u8 {
            h.push(Stream::Stderr, 3, false, &[b'0' + i % 10; 7]);
        }
        // 40 bytes hold 3 records of 11 bytes: seq 18, 19, 20.
        let read = texts(&h, cursor);
        assert_eq!(read[0], (u64::MAX, b"17".to_vec()));
        assert_eq!(
            read[1..].iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![18, 19, 20]
        );
    }

    #[test]
    fn wraps_records_around_the_end_and_cuts_what_cannot_fit() {
        let mut h = History::new(23);
        for i in 0..50u8 {
            let text = vec![b'a' + i % 26; 1 + usize::from(i % 5)];
            h.push(Stream::Stdout, i % 8, false, &text);
            let last = texts(&h, h.last(1));
            assert_eq!(last, vec![(u64::from(i), text)]);
        }
        h.push(Stream::Stdout, 6, false, &[b'q'; 100]);
        let mut buf = [0u8; 64];
        let mut cursor = h.last(1);
        match h.read(&mut cursor, &mut buf) {
            Read::Record(r) => {
                assert_eq!(r.text.len(), 19, "cut to the ring");
                assert!(r.truncated);
            }
            other => panic!("{other:?}"),
        }
    }
}
