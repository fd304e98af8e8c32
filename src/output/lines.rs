//! Bytes in, complete lines out: the line assembler of one output stream.
//!
//! A line ends at `\n` (not included). A line longer than [`LINE_BYTES_MAX`] is cut: its first
//! [`LINE_BYTES_MAX`] bytes come out at once, marked `truncated`, and the rest up to the next
//! `\n` is skipped (so a flood without newlines costs a fixed buffer, never more). A line that
//! starts with `<N>` (N a digit 0–7, as `sd-daemon(3)` prefixes) has it parsed off as its
//! priority. [`Assembler::flush`] hands out a partial line (the service ended without a final
//! newline). Nothing else is changed: the bytes need not be UTF-8.

/// Longest output line kept (bytes, without the newline and the `<N>` prefix).
pub const LINE_BYTES_MAX: usize = 1024;

/// One complete line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The text, without the newline and the `<N>` prefix.
    pub text: &'a [u8],
    /// The `<N>` prefix, if the line had one.
    pub priority: Option<u8>,
    /// The line was longer than [`LINE_BYTES_MAX`] (and cut), or ended without a newline
    /// when flushed.
    pub truncated: bool,
}

/// Splits `<N>` off the start of a line.
pub fn split_priority(line: &[u8]) -> (Option<u8>, &[u8]) {
    match line {
        [b'<', digit @ b'0'..=b'7', b'>', rest @ ..] => (Some(digit - b'0'), rest),
        _ => (None, line),
    }
}

fn line(text: &[u8], truncated: bool) -> Line<'_> {
    let (priority, text) = split_priority(text);
    Line {
        text,
        priority,
        truncated,
    }
}

/// The assembler of one stream: a fixed buffer for the partial line.
pub struct Assembler {
    buf: Box<[u8; LINE_BYTES_MAX + 3]>,
    len: usize,
    /// Skipping the rest of a line that was cut.
    skipping: bool,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("len", &self.len)
            .field("skipping", &self.skipping)
            .finish()
    }
}

impl Default for Assembler {
    fn default() -> Self {
        Assembler::new()
    }
}

impl Assembler {
    /// Room for one line and its `<N>` prefix.
    const CAPACITY: usize = LINE_BYTES_MAX + 3;

    /// An empty assembler (allocates its buffer once).
    pub fn new() -> Assembler {
        Assembler {
            buf: Box::new([0; LINE_BYTES_MAX + 3]),
            len: 0,
            skipping: false,
        }
    }

    /// Bytes of a partial line held.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Feeds bytes; `out` gets every line they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Line<'_>)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            if self.skipping {
                match newline {
                    Some(at) => {
                        self.skipping = false;
                        bytes = &bytes[at + 1..];
                        continue;
                    }
                    None => return,
                }
            }
            if let (0, Some(at)) = (self.len, newline) {
                // A whole line in the input and nothing held: no copy.
                let (priority, text) = split_priority(&bytes[..at]);
                if text.len() <= LINE_BYTES_MAX {
                    out(Line {
                        text,
                        priority,
                        truncated: false,
                    });
                    bytes = &bytes[at + 1..];
                    continue;
                }
            }
            let consumed = self.take(bytes, newline, out);
            bytes = &bytes[consumed..];
        }
    }

    /// Copies from `bytes` into the buffer up to its newline (at `newline`) or the bound;
    /// emits what completes. Returns the bytes consumed.
    fn take(
        &mut self,
        bytes: &[u8],
        newline: Option<usize>,
        out: &mut impl FnMut(Line<'_>),
    ) -> usize {
        let room = Self::CAPACITY - self.len;
        let chunk = newline.unwrap_or(bytes.len()).min(room);
        self.buf[self.len..self.len + chunk].copy_from_slice(&bytes[..chunk]);
        self.len += chunk;
        if newline == Some(chunk) {
            // The line ended within the room.
            let held = self.len;
            self.len = 0;
            let (priority, text) = split_priority(&self.buf[..held]);
            let kept = text.len().min(LINE_BYTES_MAX);
            out(Line {
                text: &text[..kept],
                priority,
                truncated: kept < text.len(),
            });
            return chunk + 1;
        }
        if self.len == Self::CAPACITY {
            self.emit_cut(out);
        }
        chunk
    }

    /// The buffer is full and the line goes on: hand out its first bytes, skip the rest.
    fn emit_cut(&mut self, out: &mut impl FnMut(Line<'_>)) {
        let held = self.len;
        self.len = 0;
        let (priority, rest) = split_priority(&self.buf[..held]);
        let kept = rest.len().min(LINE_BYTES_MAX);
        // Without a prefix the buffer holds 3 bytes beyond the bound: they are cut too.
        out(Line {
            text: &rest[..kept],
            priority,
            truncated: true,
        });
        self.skipping = true;
    }

    /// Hands out the partial line, if any (marked `truncated`: it had no newline). A line
    /// being skipped ends here.
    pub fn flush(&mut self, out: &mut impl FnMut(Line<'_>)) {
        self.skipping = false;
        if self.len == 0 {
            return;
        }
        let held = self.len;
        self.len = 0;
        out(line(&self.buf[..held], true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], flush: bool) -> Vec<(Vec<u8>, Option<u8>, bool)> {
        let mut a = Assembler::new();
        let mut got = Vec::new();
        let mut out = |l: Line<'_>| got.push((l.text.to_vec(), l.priority, l.truncated));
        for chunk in chunks {
            a.feed(chunk, &mut out);
        }
        if flush {
            a.flush(&mut out);
        }
        got
    }

    #[test]
    fn splits_lines_across_chunks_and_parses_priorities() {
        let got = collect(&[b"<3>err", b"or\nplain\n<7>", b"dbg\n<8>no\n<3x\n"], false);
        assert_eq!(
            got,
            vec![
                (b"error".to_vec(), Some(3), false),
                (b"plain".to_vec(), None, false),
                (b"dbg".to_vec(), Some(7), false),
                (b"<8>no".to_vec(), None, false),
                (b"<3x".to_vec(), None, false),
            ]
        );
    }

    #[test]
    fn keeps_bytes_as_they_are() {
        let got = collect(&[b"a\r\x00\xff\"\\b\n\n"], false);
        assert_eq!(
            got,
            vec![
                (b"a\r\x00\xff\"\\b".to_vec(), None, false),
                (Vec::new(), None, false),
            ]
        );
    }

    #[test]
    fn a_long_line_is_cut_at_the_bound_and_its_rest_skipped() {
        let long = vec![b'x'; LINE_BYTES_MAX + 500];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        // In one chunk, and byte by byte.
        for chunks in [vec![input.as_slice()], input.chunks(1).collect::<Vec<_>>()] {
            let got = collect(&chunks, false);
            assert_eq!(got.len(), 2, "the cut line and the next");
            assert_eq!(got[0].0, vec![b'x'; LINE_BYTES_MAX]);
            assert!(got[0].2, "marked truncated");
            assert_eq!(got[1], (b"next".to_vec(), None, false));
        }
        // Exactly the bound fits, with or without a prefix.
        let exact = [vec![b'y'; LINE_BYTES_MAX], b"\n".to_vec()].concat();
        assert_eq!(
            collect(&[&exact], false),
            vec![(exact[..LINE_BYTES_MAX].to_vec(), None, false)]
        );
        let prefixed = [b"<5>".to_vec(), exact.clone()].concat();
        assert_eq!(
            collect(&[&prefixed[..10], &prefixed[10..]], false),
            vec![(exact[..LINE_BYTES_MAX].to_vec(), Some(5), false)]
        );
    }

    #[test]
    fn a_flood_without_newlines_costs_one_buffer() {
        let mut a = Assembler::new();
        let mut lines = 0;
        let chunk = [b'z'; 4096];
        for _ in 0..1000 {
            a.feed(&chunk, &mut |l: Line<'_>| {
                assert_eq!(l.text.len(), LINE_BYTES_MAX);
                lines += 1;
            });
            assert!(a.pending() <= LINE_BYTES_MAX + 3);
        }
        assert_eq!(lines, 1, "one cut line, the rest skipped until a newline");
        a.feed(b"\nend\n", &mut |l: Line<'_>| {
            assert_eq!(l.text, b"end");
            lines += 1;
        });
        assert_eq!(lines, 2);
    }

    #[test]
    fn flush_hands_out_the_partial_line() {
        assert_eq!(
            collect(&[b"one\n<4>tw", b"o"], true),
            vec![
                (b"one".to_vec(), None, false),
                (b"two".to_vec(), Some(4), true)
            ]
        );
        assert_eq!(
            collect(&[b"one\n"], true),
            vec![(b"one".to_vec(), None, false)]
        );
    }
}
