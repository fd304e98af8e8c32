//! The handoff of a live re-exec: what one orchestrator instance passes to the next one when it
//! `execve`s itself, beside the state record. The record says what each service had; the
//! handoff names the fds kept open across the exec (the lock, the control listener, the
//! captured output pipes, each service's pidfd, the connection of the `holdenctl reexec` that
//! asked for it) and how many re-execs came before. Sans-IO: encoding into a caller's buffer and strict decoding; the
//! memfd that carries it (its number in [`ENV`]) is the shell's (`src/orchestrator/reexec.rs`).
//!
//! ```text
//! holden-handoff 1
//! generation 3
//! began 81230000000
//! spawning 0
//! lock 4
//! control 5
//! notify 10
//! reply 9 17
//! output camera stdout 6 7
//! process camera 8
//! end 9
//! ```
//!
//! `began` is `CLOCK_MONOTONIC` in nanoseconds when the previous instance started the re-exec;
//! `spawning 1` says a spawn was still in flight (its process, if any, is found by its tag);
//! `reply` is the fd and the request id of the control connection to answer; `output` lines
//! give a service's stream with the pipe's read end and write end; `process` lines a
//! service's pidfd (kept, a process that exits during the exec is still known by it, and its
//! exit status read through it, even once someone else reaped it). `end N` counts the lines
//! between header and trailer: a handoff cut short is refused.

use crate::config::SERVICE_NAME_LEN_MAX;
use crate::output::Stream;
use arrayvec::ArrayString;
use std::io::Write;
use std::os::fd::RawFd;

/// The environment variable that names the handoff memfd's number in the new instance.
pub const ENV: &str = "HOLDEN_HANDOFF_FD";
/// The format's version (the header's second word).
pub const VERSION: u32 = 1;
/// Longest line.
pub const LINE_LEN_MAX: usize = 64 + SERVICE_NAME_LEN_MAX;
/// Lines other than `output` ones.
const FIXED_LINES: usize = 7;

/// Largest handoff of `services` services (two output lines and a process line each).
pub fn size_max(services: usize) -> usize {
    (FIXED_LINES + 3 * services) * LINE_LEN_MAX
}

/// One captured stream's pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputFds {
    pub service: ArrayString<SERVICE_NAME_LEN_MAX>,
    pub stream: Stream,
    pub read: RawFd,
    pub write: RawFd,
}

/// What the previous instance handed over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Re-execs so far, this one included.
    pub generation: u32,
    /// `CLOCK_MONOTONIC` ns when the previous instance began the re-exec.
    pub began_ns: u64,
    /// A spawn was in flight at the exec.
    pub spawning: bool,
    pub lock: Option<RawFd>,
    pub control: Option<RawFd>,
    /// The services' sd_notify socket.
    pub notify: Option<RawFd>,
    /// The control connection to answer, and its request id.
    pub reply: Option<(RawFd, u32)>,
    pub outputs: Vec<OutputFds>,
    /// Each service's pidfd.
    pub processes: Vec<(ArrayString<SERVICE_NAME_LEN_MAX>, RawFd)>,
}

/// Why a handoff was refused: the line (1-based) and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for HandoffError {}

impl Handoff {
    /// Every fd it names (to claim, or to close what is not used).
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.lock
            .into_iter()
            .chain(self.control)
            .chain(self.notify)
            .chain(self.reply.map(|(fd, _)| fd))
            .chain(self.outputs.iter().flat_map(|o| [o.read, o.write]))
            .chain(self.processes.iter().map(|&(_, fd)| fd))
    }

    /// Writes the handoff into `out`; returns the length, or `None` if it does not fit.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let capacity = out.len();
        let mut w = &mut out[..];
        let mut lines = 2;
        writeln!(w, "holden-handoff {VERSION}").ok()?;
        writeln!(w, "generation {}", self.generation).ok()?;
        writeln!(w, "began {}", self.began_ns).ok()?;
        writeln!(w, "spawning {}", u8::from(self.spawning)).ok()?;
        lines += 1;
        if let Some(fd) = self.lock {
            writeln!(w, "lock {fd}").ok()?;
            lines += 1;
        }
        if let Some(fd) = self.control {
            writeln!(w, "control {fd}").ok()?;
            lines += 1;
        }
        if let Some(fd) = self.notify {
            writeln!(w, "notify {fd}").ok()?;
            lines += 1;
        }
        if let Some((fd, request)) = self.reply {
            writeln!(w, "reply {fd} {request}").ok()?;
            lines += 1;
        }
        for o in &self.outputs {
            writeln!(
                w,
                "output {} {} {} {}",
                o.service,
                o.stream.as_str(),
                o.read,
                o.write
            )
            .ok()?;
            lines += 1;
        }
        for (service, fd) in &self.processes {
            writeln!(w, "process {service} {fd}").ok()?;
            lines += 1;
        }
        writeln!(w, "end {lines}").ok()?;
        Some(capacity - w.len())
    }
}

/// Decodes a handoff of at most `services_max` services (twice as many output lines, as many
/// process lines); every fd number must be 3 or more and named once.
pub fn decode(bytes: &[u8], services_max: usize) -> Result<Handoff, HandoffError> {
    let outputs_max = 2 * services_max;
    let text = std::str::from_utf8(bytes).map_err(|e| HandoffError {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8".into(),
    })?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(HandoffError {
            line: text.lines().count().max(1),
            message: "cut short (no final newline)".into(),
        });
    };
    let mut handoff = Handoff::default();
    let mut counted = 0usize;
    let mut ended = false;
    let mut seen_generation = false;
    let mut seen_began = false;
    let mut seen_spawning = false;
    for (i, line) in body.split('\n').enumerate() {
        let number = i + 1;
        let bad = |message: String| HandoffError {
            line: number,
            message,
        };
        if ended {
            return Err(bad("text after the end line".into()));
        }
        if line.len() > LINE_LEN_MAX {
            return Err(bad(format!("longer than {LINE_LEN_MAX} bytes")));
        }
        let words: Vec<&str> = line.split(' ').collect();
        if number == 1 {
            match words.as_slice() {
                ["holden-handoff", v] if *v == VERSION.to_string() => continue,
                ["holden-handoff", v] => {
                    return Err(bad(format!(
                        "version {v} (this build reads version {VERSION})"
                    )))
                }
                _ => return Err(bad("not a holden handoff (no holden-handoff header)".into())),
            }
        }
        let fd = |word: &str| -> Result<RawFd, HandoffError> {
            match word.parse::<RawFd>() {
                Ok(fd) if fd >= 3 => Ok(fd),
                _ => Err(bad(format!("fd {word:?}: not a number of 3 or more"))),
            }
        };
        let twice = |what: &str| bad(format!("{what} given twice"));
        counted += 1;
        match words.as_slice() {
            ["generation", n] => {
                if seen_generation {
                    return Err(twice("generation"));
                }
                seen_generation = true;
                handoff.generation = n
                    .parse()
                    .map_err(|_| bad(format!("generation {n:?}: not a number")))?;
            }
            ["began", n] => {
                if seen_began {
                    return Err(twice("began"));
                }
                seen_began = true;
                handoff.began_ns = n
                    .parse()
                    .map_err(|_| bad(format!("began {n:?}: not a number")))?;
            }
            ["spawning", n] => {
                if seen_spawning {
                    return Err(twice("spawning"));
                }
                seen_spawning = true;
                handoff.spawning = match *n {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad(format!("spawning {n:?}: not 0 or 1"))),
                };
            }
            ["lock", n] => {
                if handoff.lock.replace(fd(n)?).is_some() {
                    return Err(twice("lock"));
                }
            }
            ["control", n] => {
                if handoff.control.replace(fd(n)?).is_some() {
                    return Err(twice("control"));
                }
            }
            ["notify", n] => {
                if handoff.notify.replace(fd(n)?).is_some() {
                    return Err(twice("notify"));
                }
            }
            ["reply", n, request] => {
                let request = request
                    .parse()
                    .map_err(|_| bad(format!("request id {request:?}: not a number")))?;
                if handoff.reply.replace((fd(n)?, request)).is_some() {
                    return Err(twice("reply"));
                }
            }
            ["output", name, stream, read, write] => {
                if handoff.outputs.len() == outputs_max {
                    return Err(bad(format!("more than {outputs_max} output lines")));
                }
                let service = service_name(name)
                    .ok_or_else(|| bad(format!("service name {name:?}: empty or too long")))?;
                let stream = match *stream {
                    "stdout" => Stream::Stdout,
                    "stderr" => Stream::Stderr,
                    other => return Err(bad(format!("stream {other:?}: not stdout or stderr"))),
                };
                if handoff
                    .outputs
                    .iter()
                    .any(|o| o.service == service && o.stream == stream)
                {
                    return Err(twice("that service's stream"));
                }
                let (read, write) = (fd(read)?, fd(write)?);
                handoff.outputs.push(OutputFds {
                    service,
                    stream,
                    read,
                    write,
                });
            }
            ["process", name, n] => {
                if handoff.processes.len() == services_max {
                    return Err(bad(format!("more than {services_max} process lines")));
                }
                let service = service_name(name)
                    .ok_or_else(|| bad(format!("service name {name:?}: empty or too long")))?;
                if handoff.processes.iter().any(|(s, _)| *s == service) {
                    return Err(twice("that service's process"));
                }
                handoff.processes.push((service, fd(n)?));
            }
            ["end", n] => {
                counted -= 1;
                let n: usize = n
                    .parse()
                    .map_err(|_| bad(format!("end {n:?}: not a number")))?;
                if n != counted {
                    return Err(bad(format!(
                        "end says {n} lines, the handoff has {counted}"
                    )));
                }
                ended = true;
            }
            _ => return Err(bad(format!("unknown line {:?}", truncate(line)))),
        }
    }
    if !ended {
        return Err(HandoffError {
            line: body.split('\n').count(),
            message: "cut short (no end line)".into(),
        });
    }
    if !seen_generation || !seen_began || !seen_spawning {
        return Err(HandoffError {
            line: 1,
            message: "no generation, began or spawning line".into(),
        });
    }
    let mut fds: Vec<RawFd> = handoff.fds().collect();
    fds.sort_unstable();
    if let Some(pair) = fds.windows(2).find(|w| w[0] == w[1]) {
        return Err(HandoffError {
            line: 1,
            message: format!("fd {} named twice", pair[0]),
        });
    }
    Ok(handoff)
}

fn service_name(name: &str) -> Option<ArrayString<SERVICE_NAME_LEN_MAX>> {
    ArrayString::from(name).ok().filter(|n| !n.is_empty())
}

fn truncate(line: &str) -> &str {
    let mut end = line.len().min(40);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        Handoff {
            generation: 3,
            began_ns: 81_230_000_000,
            spawning: false,
            lock: Some(4),
            control: Some(5),
            notify: Some(10),
            reply: Some((9, 17)),
            outputs: vec![OutputFds {
                service: ArrayString::from("camera").unwrap(),
                stream: Stream::Stdout,
                read: 6,
                write: 7,
            }],
            processes: vec![(ArrayString::from("camera").unwrap(), 8)],
        }
    }

    #[test]
    fn encodes_the_documented_text_and_reads_it_back() {
        let mut buf = [0u8; 1024];
        let len = sample().encode(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(
            text,
            "holden-handoff 1\ngeneration 3\nbegan 81230000000\nspawning 0\nlock 4\ncontrol 5\nnotify 10\nreply 9 17\n\
             output camera stdout 6 7\nprocess camera 8\nend 9\n"
        );
        assert_eq!(decode(text.as_bytes(), 1).unwrap(), sample());
        assert!(decode(text.as_bytes(), 0)
            .unwrap_err()
            .message
            .contains("more than 0 output lines"));
        assert!(len <= size_max(1));
    }

    #[test]
    fn refuses_what_is_not_a_whole_handoff() {
        let mut buf = [0u8; 1024];
        let len = sample().encode(&mut buf).unwrap();
        let good = std::str::from_utf8(&buf[..len]).unwrap().to_owned();
        let cases: &[(&str, &str)] = &[
            (&good[..good.len() - 1], "no final newline"),
            (&good[..good.len() - 6], "no end line"),
            ("holden-state 1\n", "not a holden handoff"),
            ("holden-handoff 2\nend 1\n", "version 2"),
        ];
        for (text, expected) in cases {
            let e = decode(text.as_bytes(), 4).unwrap_err();
            assert!(e.message.contains(expected), "{text:?}: {e}");
        }
        let edits = [
            ("lock 4", "lock 2", "3 or more"),
            ("lock 4", "lock 5", "fd 5 named twice"),
            ("end 9", "end 5", "end says 5"),
            ("spawning 0", "spawning 2", "not 0 or 1"),
            ("process camera 8", "process camera 7", "fd 7 named twice"),
            ("stdout", "stdin", "not stdout or stderr"),
            ("reply 9 17", "reply 9 x", "request id"),
            ("generation 3", "generation 3\ngeneration 4", "twice"),
            ("control 5", "jump 5", "unknown line"),
        ];
        for (from, to, expected) in edits {
            let text = good.replacen(from, to, 1);
            let e = decode(text.as_bytes(), 4).unwrap_err();
            assert!(e.message.contains(expected), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn an_encoding_that_does_not_fit_is_refused_not_cut() {
        let mut buf = [0u8; 40];
        assert_eq!(sample().encode(&mut buf), None);
    }

    #[test]
    fn mutated_handoffs_never_panic() {
        let mut buf = [0u8; 1024];
        let len = sample().encode(&mut buf).unwrap();
        let good = buf[..len].to_vec();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone();
            let at = (x as usize) % bytes.len();
            match (x >> 32) % 3 {
                0 => bytes[at] = (x >> 40) as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b"0 \n-9"[(x >> 48) as usize % 5]),
            }
            let _ = decode(&bytes, 2);
        }
    }
}
