//! Log lines written by a thread of their own, so that a full or stalled log stream (a
//! stderr pipe nobody reads, a journal that does not keep up) never blocks the caller.
//!
//! [`Logger::line`](super::Logger::line) copies each finished line into a fixed byte ring
//! (sized at start-up; nothing is allocated per line) and wakes the writer thread if it is
//! idle; the writer takes whole lines out and writes them with blocking `write(2)`s. When the
//! ring is full, the oldest lines are dropped to make room and counted; the next thing the
//! writer writes is `<4>event=log-dropped lines=N`, so a reader knows how many it missed.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of the ring: about a thousand lines of a hundred bytes.
pub const RING_BYTES: usize = 128 * 1024;
/// Most bytes the writer takes out of the ring for one `write(2)`.
const CHUNK_BYTES: usize = 16 * 1024;
/// Longest wait for the writer when the log is flushed at exit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

struct Ring {
    bytes: Box<[u8]>,
    /// Start of the oldest line.
    head: usize,
    len: usize,
    /// Lines dropped since the writer last reported.
    unreported: u64,
    /// Lines dropped in all.
    dropped_total: u64,
    writer_idle: bool,
    /// The writer is writing lines it took out.
    writing: bool,
    stop: bool,
}

impl Ring {
    fn byte(&self, offset: usize) -> u8 {
        self.bytes[(self.head + offset) % self.bytes.len()]
    }

    /// Drops the oldest line.
    fn drop_oldest(&mut self) {
        let line = (0..self.len)
            .find(|&i| self.byte(i) == b'\n')
            .map_or(self.len, |i| i + 1);
        self.head = (self.head + line) % self.bytes.len();
        self.len -= line;
        self.unreported += 1;
        self.dropped_total += 1;
    }

    fn push(&mut self, line: &[u8]) {
        let capacity = self.bytes.len();
        let line = &line[..line.len().min(capacity)];
        while capacity - self.len < line.len() {
            self.drop_oldest();
        }
        let tail = (self.head + self.len) % capacity;
        let first = line.len().min(capacity - tail);
        self.bytes[tail..tail + first].copy_from_slice(&line[..first]);
        self.bytes[..line.len() - first].copy_from_slice(&line[first..]);
        self.len += line.len();
    }

    /// Moves whole lines (at most `out.len()` bytes, at least one line if there is one) into
    /// `out`; returns their length.
    fn take(&mut self, out: &mut [u8]) -> usize {
        let mut n = self.len.min(out.len());
        if n < self.len {
            // End at the last newline within the chunk (a line is shorter than a chunk).
            n = (0..n)
                .rev()
                .find(|&i| self.byte(i) == b'\n')
                .map_or(n, |i| i + 1);
        }
        for (i, slot) in out[..n].iter_mut().enumerate() {
            *slot = self.byte(i);
        }
        self.head = (self.head + n) % self.bytes.len();
        self.len -= n;
        n
    }
}

/// journald's socket, for a writer that sends each line as a native entry.
pub struct JournalSink {
    /// A datagram socket connected to journald's socket (blocking: the writer waits while
    /// journald's queue is full, as it would on a full stderr).
    pub socket: std::os::fd::OwnedFd,
    pub addr: crate::sys::socket::UnixAddr,
    /// `SYSLOG_IDENTIFIER` of every entry.
    pub identifier: &'static str,
}

impl JournalSink {
    /// A socket connected to journald's socket at `path`; `Err` when it is not there.
    pub fn connect(path: &[u8], identifier: &'static str) -> std::io::Result<JournalSink> {
        use crate::sys::socket;
        let addr = socket::UnixAddr::new(path)?;
        let socket = socket::connect_new(&addr, socket::Kind::Datagram, false)?;
        Ok(JournalSink {
            socket,
            addr,
            identifier,
        })
    }

    /// Sends one line (without its newline) as an entry; `false` when journald did not take
    /// it (the caller writes it to its fd instead).
    fn send(&mut self, line: &[u8], entry: &mut [u8]) -> bool {
        use crate::sys::socket;
        use std::os::fd::AsFd;
        let n = super::journal::line_entry(line, self.identifier, entry);
        for attempt in 0..2 {
            match socket::send(self.socket.as_fd(), &entry[..n], false) {
                Ok(_) => return true,
                // journald restarted: connect again once.
                Err(_) if attempt == 0 => {
                    if socket::connect(self.socket.as_fd(), &self.addr).is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }
}

struct Shared {
    ring: Mutex<Ring>,
    /// The writer waits here for lines.
    work: Condvar,
    /// Flushers wait here for the ring to empty.
    drained: Condvar,
    fd: RawFd,
    tag: &'static str,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Ring> {
    // A push or take leaves the ring consistent even if its thread panicked afterwards.
    shared.ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ring and its writer thread, shared by the [`Logger`](super::Logger)s made from it.
#[derive(Clone)]
pub struct Background {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("fd", &self.shared.fd)
            .finish_non_exhaustive()
    }
}

impl Background {
    /// Starts the writer thread for `fd` with a ring of `ring_bytes`; `tag` goes into the
    /// drop report as into every line.
    pub fn start(fd: RawFd, ring_bytes: usize, tag: &'static str) -> std::io::Result<Background> {
        Background::start_with_journal(fd, ring_bytes, tag, None)
    }

    /// As [`Background::start`]; with `journal`, each line goes to journald as an entry with
    /// native fields (`log::journal`), and to `fd` only when journald does not take it.
    pub fn start_with_journal(
        fd: RawFd,
        ring_bytes: usize,
        tag: &'static str,
        journal: Option<JournalSink>,
    ) -> std::io::Result<Background> {
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                bytes: vec![0u8; ring_bytes.max(super::LINE_BYTES_MAX)].into_boxed_slice(),
                head: 0,
                len: 0,
                unreported: 0,
                dropped_total: 0,
                writer_idle: false,
                writing: false,
                stop: false,
            }),
            work: Condvar::new(),
            drained: Condvar::new(),
            fd,
            tag,
        });
        let writer = Arc::clone(&shared);
        let builder = std::thread::Builder::new()
            .name("holden-log".into())
            .stack_size(64 * 1024 + CHUNK_BYTES);
        crate::sys::signal::spawn_thread_blocking_signals(builder, move || {
            write_lines(&writer, journal)
        })?;
        Ok(Background { shared })
    }

    /// Queues one finished line (never blocks on the log stream).
    pub(super) fn push(&self, line: &[u8]) {
        let mut ring = lock(&self.shared);
        ring.push(line);
        let wake = ring.writer_idle;
        drop(ring);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Lines dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared).dropped_total
    }

    /// Waits until every queued line is written, for at most `timeout`. Returns whether it
    /// was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ring = lock(&self.shared);
        while ring.len > 0 || ring.writing || ring.unreported > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ring = self
                .shared
                .drained
                .wait_timeout(ring, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Flushes (for at most `timeout`) and ends the writer thread. Lines logged afterwards
    /// are queued and not written.
    pub fn stop(&self, timeout: Duration) {
        self.flush(timeout);
        lock(&self.shared).stop = true;
        self.shared.work.notify_one();
    }
}

/// Writes (or sends) lines: to journald when there is a sink and it takes them, else to `fd`.
fn emit(shared: &Shared, journal: &mut Option<JournalSink>, entry: &mut [u8], bytes: &[u8]) {
    // Errors writing the log are ignored: there is nowhere to report them.
    let Some(sink) = journal.as_mut() else {
        let _ = crate::sys::fd::write_all_raw(shared.fd, bytes);
        return;
    };
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if !sink.send(text, entry) {
            let _ = crate::sys::fd::write_all_raw(shared.fd, line);
        }
    }
}

fn write_lines(shared: &Shared, mut journal: Option<JournalSink>) {
    let mut chunk = [0u8; CHUNK_BYTES];
    // One entry: a line, its fields again unescaped, and the field names.
    let mut entry = vec![
        0u8;
        if journal.is_some() {
            4 * super::LINE_BYTES_MAX
        } else {
            0
        }
    ];
    loop {
        let mut ring = lock(shared);
        while ring.len == 0 && ring.unreported == 0 {
            if ring.stop {
                return;
            }
            ring.writer_idle = true;
            ring = shared.work.wait(ring).unwrap_or_else(|p| p.into_inner());
            ring.writer_idle = false;
        }
        let dropped = std::mem::take(&mut ring.unreported);
        let n = ring.take(&mut chunk);
        ring.writing = true;
        drop(ring);
        if dropped > 0 {
            let mut report = super::LineBuf::new();
            use std::fmt::Write as _;
            let _ = write!(
                report,
                "<{}>{}event=log-dropped lines={dropped}",
                super::Priority::Warning as u8,
                shared.tag
            );
            emit(shared, &mut journal, &mut entry, report.finish());
        }
        emit(shared, &mut journal, &mut entry, &chunk[..n]);
        let mut ring = lock(shared);
        ring.writing = false;
        if ring.len == 0 && ring.unreported == 0 {
            shared.drained.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Logger, Priority};
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let background = Background::start(w.as_raw_fd(), 4096, "").unwrap();
        let log = Logger::new(w.as_raw_fd(), Priority::Info).in_background(background.clone());
        for i in 0..30 {
            log.line(Priority::Info, format_args!("line={i}"));
        }
        assert!(background.flush(Duration::from_secs(10)));
        background.stop(Duration::from_secs(1));
        drop(w);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        let expected: String = (0..30).map(|i| format!("<6>line={i}\n")).collect();
        assert_eq!(text, expected);
        assert_eq!(background.dropped(), 0);
    }

    #[test]
    fn a_full_stream_drops_the_oldest_lines_counts_them_and_never_blocks() {
        let (r, w) = crate::sys::fd::pipe().unwrap();
        // The smallest pipe the kernel allows (one page): nobody reads it for now.
        crate::sys::fd::set_pipe_size(w.as_fd(), 4096).unwrap();
        let background = Background::start(w.as_raw_fd(), 8192, "").unwrap();
        let log = Logger::new(w.as_raw_fd(), Priority::Info).in_background(background.clone());
        const LINES: usize = 5000;
        // Logged on another thread: a logger that blocked on the full pipe would never finish.
        let (done, finished) = std::sync::mpsc::channel();
        let logging = log.clone();
        std::thread::spawn(move || {
            for i in 0..LINES {
                logging.line(
                    Priority::Info,
                    format_args!("line={i:05} {}", "x".repeat(40)),
                );
            }
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(20)).is_ok(),
            "logging blocked on a full log stream"
        );
        let dropped = background.dropped();
        assert!(dropped > 0, "the ring overflowed");
        // Now read it all.
        let mut reader = std::fs::File::from(r);
        let reading = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        assert!(background.flush(Duration::from_secs(10)));
        background.stop(Duration::from_secs(1));
        drop(log);
        drop(w);
        let text = reading.join().unwrap();
        let numbers: Vec<usize> = text
            .lines()
            .filter_map(|l| l.strip_prefix("<6>line="))
            .map(|l| l[..5].parse().unwrap())
            .collect();
        let reported: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("<4>event=log-dropped lines="))
            .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(reported, dropped, "every drop is reported");
        assert_eq!(
            numbers.len() as u64 + dropped,
            LINES as u64,
            "written or counted"
        );
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(
            numbers.last(),
            Some(&(LINES - 1)),
            "the newest line is kept"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with("<6>line=") || l.starts_with("<4>event=log-dropped")),
            "only whole lines"
        );
    }
}
