//! The output sub-shell: local services' stdout and stderr.
//!
//! For each captured stream (`stdout`/`stderr` = `"journal"` or `"log"`) one pipe, made when
//! the service is put (start-up or reload): the orchestrator keeps both ends, so that every
//! process of the service writes into the same pipe and a restart never sees end-of-file; the
//! spawner threads put the write end on the child's fd 1 or 2. The read end (non-blocking) is
//! owned by a bare ring slot of its own, polled for `POLLIN`; when it polls readable the loop
//! reads at most [`READ_BYTES`] once into a buffer shared by every stream, hands the bytes to
//! the stream's line assembler (`output::lines`) and polls again. So a service that floods its
//! output costs one read per loop iteration, whatever it writes.
//!
//! A service reads at most [`crate::output::READ_BYTES_PER_WINDOW_MAX`] a second: past that
//! its streams are not polled until the second is over (a ring timeout on the stream's slot),
//! so its pipes fill and its writes block; a flood costs the loop a bounded amount of work.
//!
//! Each complete line goes into the service's history ring (`holdenctl logs`), then, within the
//! service's rate limit (`output::RateLimit`: [`crate::output::LINES_PER_WINDOW_MAX`] lines a
//! second), to journald (`"journal"`: one native-protocol datagram, sent non-blocking; a full
//! socket drops the line and counts it, an absent journal is looked for again a second later and
//! the line goes to the log meanwhile) or into the orchestrator's log as one escaped
//! `event=output` line. Lines over the limit are counted, and the count is reported in the log
//! (`event=output-dropped`) before the next line that is forwarded.
//!
//! `"null"` and `"file:PATH"` are fds opened here too, handed to the child the same way;
//! `"inherit"` hands nothing (the child keeps the orchestrator's fd 1 or 2).

use crate::config::OutputTarget;
use crate::log::{ErrnoText, Logger, Priority, QuotedBytes, Value};
use crate::output::history::History;
use crate::output::journal::Entry;
use crate::output::lines::{Assembler, Line};
use crate::output::{RateLimit, Stream};
use crate::sys::socket::{self, UnixAddr};
use ring::{Completion, Ring, SlotId};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// Most bytes read from one stream per completion.
pub(crate) const READ_BYTES: usize = 16 * 1024;
/// One journal entry: the text and the fields around it.
const ENTRY_BYTES: usize = crate::output::lines::LINE_BYTES_MAX + 512;
/// How long an absent journal is not asked again.
const JOURNAL_RETRY_NS: u64 = 1_000_000_000;
/// Mode of an output file the orchestrator creates (`file:PATH`).
pub(crate) const OUTPUT_FILE_MODE: u32 = 0o640;

/// What the spawner threads put on a child's fd 1 and 2 (`None`: inherited).
pub(crate) type ChildFds = [Option<Arc<OwnedFd>>; 2];

/// One captured stream.
struct Captured {
    slot: SlotId,
    /// The pipe's write end, kept so that the pipe outlives every process of the service.
    write: Arc<OwnedFd>,
    assembler: Assembler,
    /// To journald (else to the log).
    journal: bool,
    /// Readable while its service's spawn was in flight: not read (nor polled) until the
    /// spawn's outcome gives the new process's pid ([`Outputs::resume`]).
    held: bool,
}

/// The output of one service.
pub(crate) struct ServiceOutput {
    /// What its processes get on fd 1 and 2.
    pub child: ChildFds,
    /// Why an output file could not be opened (errno): its spawns fail at stage `stdio`.
    pub open_error: Option<i32>,
    streams: [Option<Captured>; 2],
    /// Its last lines (captured services only).
    history: Option<History>,
    limit: RateLimit,
    /// Lines read in all.
    lines: u64,
}

impl ServiceOutput {
    fn empty() -> ServiceOutput {
        ServiceOutput {
            child: [None, None],
            open_error: None,
            streams: [None, None],
            history: None,
            limit: RateLimit::default(),
            lines: 0,
        }
    }

    /// The history ring, if the service's output is captured.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Lines read, and lines not forwarded (rate limit, full journal socket).
    pub fn counts(&self) -> (u64, u64) {
        (self.lines, self.limit.dropped())
    }
}

/// journald's socket, as the loop sees it.
struct Journal {
    fd: Option<OwnedFd>,
    addr: Option<UnixAddr>,
    /// Not there when last asked: not asked again before this time.
    retry_at_ns: u64,
}

/// Every service's output, indexed by service index.
pub(crate) struct Outputs {
    list: Vec<ServiceOutput>,
    journal: Journal,
    read_buf: Box<[u8]>,
    entry_buf: Box<[u8]>,
    history_bytes: usize,
    /// Lines sent to journald.
    pub journal_sent: u64,
}

/// Why a line was not taken by journald.
enum Sent {
    Yes,
    /// Full socket: the line is dropped and counted.
    Full,
    /// No journal (or it refused the datagram): the line goes to the log.
    No,
}

impl Outputs {
    /// Room for `capacity` services; `journal_socket` is journald's native socket.
    pub(crate) fn new(
        capacity: usize,
        journal_socket: &std::path::Path,
        history_bytes: usize,
    ) -> Outputs {
        use std::os::unix::ffi::OsStrExt;
        let addr = UnixAddr::new(journal_socket.as_os_str().as_bytes()).ok();
        let fd = socket::socket(socket::Kind::Datagram, true).ok();
        Outputs {
            list: Vec::with_capacity(capacity),
            journal: Journal {
                fd,
                addr,
                retry_at_ns: 0,
            },
            read_buf: vec![0u8; READ_BYTES].into_boxed_slice(),
            entry_buf: vec![0u8; ENTRY_BYTES].into_boxed_slice(),
            history_bytes,
            journal_sent: 0,
        }
    }

    /// The output of a service.
    pub(crate) fn get(&self, index: usize) -> Option<&ServiceOutput> {
        self.list.get(index)
    }

    /// Prepares the output of service `index` (start-up or reload; allocates): opens files and
    /// `/dev/null`, makes the pipes of captured streams and polls their read ends on slots of
    /// their own. Returns the slots taken, with their stream, for the loop's slot owners.
    /// Whatever `index` held before is released first. `pipes` are a captured stream's pipe
    /// (read end, write end) kept across a re-exec: used instead of a new one, so the
    /// service's processes write on into the same pipe (one not used is closed).
    pub(crate) fn put(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        index: usize,
        name: &str,
        targets: [&OutputTarget; 2],
        mut pipes: [Option<(OwnedFd, OwnedFd)>; 2],
    ) -> [Option<SlotId>; 2] {
        self.release(ring, index);
        let mut out = ServiceOutput::empty();
        let mut slots = [None, None];
        for (i, target) in targets.into_iter().enumerate() {
            let stream = Stream::from_index(i);
            let opened = match target {
                OutputTarget::Inherit => continue,
                OutputTarget::Null => crate::sys::fd::open(c"/dev/null", libc::O_WRONLY),
                OutputTarget::File(path) => open_output_file(path),
                OutputTarget::Journal | OutputTarget::Log => {
                    let journal = matches!(target, OutputTarget::Journal);
                    match self.capture(ring, journal, pipes[i].take()) {
                        Ok(captured) => {
                            slots[i] = Some(captured.slot);
                            out.child[i] = Some(Arc::clone(&captured.write));
                            out.streams[i] = Some(captured);
                        }
                        // No pipe or no ring slot: the stream stays the orchestrator's.
                        Err(e) => log.line(
                            Priority::Err,
                            format_args!(
                                "service={name} event=output-unavailable stream={} error={} action=inherit",
                                stream.as_str(),
                                Value(e)
                            ),
                        ),
                    }
                    continue;
                }
            };
            match opened {
                Ok(fd) => out.child[i] = Some(Arc::new(fd)),
                Err(e) => {
                    let errno = crate::sys::errno::of(&e);
                    out.open_error = Some(errno);
                    log.line(
                        Priority::Err,
                        format_args!(
                            "service={name} event=output-open-failed stream={} target={} errno={errno} error=\"{}\"",
                            stream.as_str(),
                            Value(target),
                            ErrnoText(errno)
                        ),
                    );
                }
            }
        }
        if out.streams.iter().any(Option::is_some) {
            out.history = Some(History::new(self.history_bytes));
        }
        match self.list.get_mut(index) {
            Some(entry) => *entry = out,
            None => {
                debug_assert_eq!(index, self.list.len());
                self.list.push(out);
            }
        }
        slots
    }

    /// A pipe (`kept`, or a new one) and a ring slot polling its read end.
    fn capture(
        &mut self,
        ring: &mut Ring,
        journal: bool,
        kept: Option<(OwnedFd, OwnedFd)>,
    ) -> Result<Captured, String> {
        let (read, write) = match kept {
            Some(pipe) => pipe,
            None => crate::sys::fd::pipe().map_err(|e| format!("pipe: {e}"))?,
        };
        crate::sys::fd::set_nonblock_cloexec(read.as_fd()).map_err(|e| format!("pipe: {e}"))?;
        let slot = ring.insert_bare().map_err(|e| format!("ring: {e}"))?;
        let polled = ring
            .attach(slot, read)
            .and_then(|()| ring.poll_add(slot, libc::POLLIN as u32));
        if let Err(e) = polled {
            let _ = ring.remove(slot);
            return Err(format!("ring: {e}"));
        }
        Ok(Captured {
            slot,
            write: Arc::new(write),
            assembler: Assembler::new(),
            journal,
            held: false,
        })
    }

    /// The captured streams' pipes of service `index`: the read end's ring slot and the write
    /// end (what a re-exec keeps).
    pub(crate) fn pipes(&self, index: usize) -> [Option<(SlotId, &OwnedFd)>; 2] {
        let mut pipes = [None, None];
        if let Some(entry) = self.list.get(index) {
            for (place, stream) in pipes.iter_mut().zip(&entry.streams) {
                *place = stream.as_ref().map(|c| (c.slot, &*c.write));
            }
        }
        pipes
    }

    /// Frees the output of service `index` (removed, or put again): its slots (their read
    /// ends close once their polls completed) and its fds. Returns the slots freed.
    pub(crate) fn release(&mut self, ring: &mut Ring, index: usize) -> [Option<SlotId>; 2] {
        let mut freed = [None, None];
        if let Some(entry) = self.list.get_mut(index) {
            for (i, stream) in entry.streams.iter_mut().enumerate() {
                if let Some(captured) = stream.take() {
                    let _ = ring.remove(captured.slot);
                    freed[i] = Some(captured.slot);
                }
            }
            *entry = ServiceOutput::empty();
        }
        freed
    }

    /// A captured stream of service `index` polled readable while its spawn is in flight: it
    /// waits for [`Outputs::resume`].
    pub(crate) fn hold(&mut self, index: usize, stream: Stream) {
        if let Some(captured) = self
            .list
            .get_mut(index)
            .and_then(|e| e.streams[stream as usize].as_mut())
        {
            captured.held = true;
        }
    }

    /// The spawn of service `index` finished: its held streams are polled again.
    pub(crate) fn resume(&mut self, ring: &mut Ring, index: usize) {
        let Some(entry) = self.list.get_mut(index) else {
            return;
        };
        for captured in entry.streams.iter_mut().flatten() {
            if captured.held {
                captured.held = false;
                let _ = ring.poll_add(captured.slot, libc::POLLIN as u32);
            }
        }
    }

    /// A captured stream polled readable: read once, hand out the lines, poll again. Returns
    /// whether lines came (followers of `holdenctl logs -f` may be sent them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_readable(
        &mut self,
        ring: &mut Ring,
        log: &Logger,
        name: &str,
        pid: i32,
        now_ns: u64,
        index: usize,
        stream: Stream,
        c: Completion,
    ) -> bool {
        let Some(entry) = self.list.get_mut(index) else {
            return false;
        };
        let Some(captured) = entry.streams[stream as usize].as_mut() else {
            return false;
        };
        if captured.slot != c.slot {
            return false;
        }
        let slot = captured.slot;
        if c.op == ring::OpTag::Timeout {
            // The window of a service that used its read budget is over: read again.
            let _ = ring.poll_add(slot, libc::POLLIN as u32);
            return false;
        }
        if let Err(e) = c.result {
            if e.0 != libc::EINTR && e.0 != libc::ECANCELED {
                log.line(
                    Priority::Err,
                    format_args!(
                        "service={name} event=output-poll-failed stream={} errno={}",
                        stream.as_str(),
                        e.0
                    ),
                );
                return false;
            }
            let _ = ring.poll_add(slot, libc::POLLIN as u32);
            return false;
        }
        let budget = entry.limit.read_budget(now_ns);
        if budget == 0 {
            // Read enough this window: its pipe waits (the service's writes block) until the
            // next one.
            let at = entry.limit.window_end_ns();
            let _ = ring.timeout(slot, ring::Timeout::At(at));
            return false;
        }
        let want = (budget as usize).min(self.read_buf.len());
        let read = match ring.fd(slot) {
            Some(fd) => crate::sys::fd::read(fd, &mut self.read_buf[..want]),
            None => return false,
        };
        let n = match read {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
            Err(e) => {
                log.line(
                    Priority::Err,
                    format_args!(
                        "service={name} event=output-read-failed stream={} error=\"{}\"",
                        stream.as_str(),
                        ErrnoText(crate::sys::errno::of(&e))
                    ),
                );
                return false;
            }
        };
        entry.limit.count_read(n as u64);
        let _ = ring.poll_add(slot, libc::POLLIN as u32);
        if n == 0 {
            return false;
        }
        let bytes = &self.read_buf[..n];
        let mut sink = Sink {
            log,
            name,
            pid,
            now_ns,
            stream,
            journal: &mut self.journal,
            entry_buf: &mut self.entry_buf,
            journal_sent: &mut self.journal_sent,
            history: entry.history.as_mut(),
            limit: &mut entry.limit,
            lines: &mut entry.lines,
            to_journal: captured.journal,
        };
        let mut got = false;
        captured.assembler.feed(bytes, &mut |line: Line<'_>| {
            got = true;
            sink.deliver(line)
        });
        got
    }

    /// The service's process ended: hand out what its streams hold of a last line without a
    /// newline (what is still in the pipe comes with the next read).
    pub(crate) fn on_exit(
        &mut self,
        log: &Logger,
        name: &str,
        pid: i32,
        now_ns: u64,
        index: usize,
    ) {
        let Some(entry) = self.list.get_mut(index) else {
            return;
        };
        for (i, stream) in entry.streams.iter_mut().enumerate() {
            let Some(captured) = stream.as_mut() else {
                continue;
            };
            let mut sink = Sink {
                log,
                name,
                pid,
                now_ns,
                stream: Stream::from_index(i),
                journal: &mut self.journal,
                entry_buf: &mut self.entry_buf,
                journal_sent: &mut self.journal_sent,
                history: entry.history.as_mut(),
                limit: &mut entry.limit,
                lines: &mut entry.lines,
                to_journal: captured.journal,
            };
            captured
                .assembler
                .flush(&mut |line: Line<'_>| sink.deliver(line));
        }
    }
}

/// Opens an output file for appending (created with [`OUTPUT_FILE_MODE`]).
fn open_output_file(path: &CString) -> std::io::Result<OwnedFd> {
    crate::sys::fd::open_create(path, libc::O_WRONLY | libc::O_APPEND, OUTPUT_FILE_MODE)
}

/// Where one stream's lines go.
struct Sink<'a> {
    log: &'a Logger,
    name: &'a str,
    pid: i32,
    now_ns: u64,
    stream: Stream,
    journal: &'a mut Journal,
    entry_buf: &'a mut [u8],
    journal_sent: &'a mut u64,
    history: Option<&'a mut History>,
    limit: &'a mut RateLimit,
    lines: &'a mut u64,
    to_journal: bool,
}

impl Sink<'_> {
    fn deliver(&mut self, line: Line<'_>) {
        *self.lines += 1;
        let priority = line.priority.unwrap_or(self.stream.default_priority());
        if let Some(history) = self.history.as_deref_mut() {
            history.push(self.stream, priority, line.truncated, line.text);
        }
        if !self.limit.admit(self.now_ns) {
            return;
        }
        let missed = self.limit.take_unreported();
        if missed > 0 {
            self.log.line(
                Priority::Warning,
                format_args!(
                    "service={} event=output-dropped lines={missed} reason=rate-limit-or-journal-full",
                    self.name
                ),
            );
        }
        if self.to_journal {
            match self.send_journal(priority, &line) {
                Sent::Yes => return,
                Sent::Full => {
                    self.limit.count_drop();
                    return;
                }
                Sent::No => {}
            }
        }
        self.log.line_at(
            priority,
            format_args!(
                "service={} event=output stream={} pid={} text={}{}",
                self.name,
                self.stream.as_str(),
                self.pid,
                QuotedBytes(line.text),
                if line.truncated { " truncated=yes" } else { "" }
            ),
        );
    }

    fn send_journal(&mut self, priority: u8, line: &Line<'_>) -> Sent {
        let (Some(fd), Some(addr)) = (&self.journal.fd, &self.journal.addr) else {
            return Sent::No;
        };
        if self.now_ns < self.journal.retry_at_ns {
            return Sent::No;
        }
        let mut entry = Entry::new(self.entry_buf);
        let built = entry
            .field("MESSAGE", line.text)
            .and_then(|()| entry.number("PRIORITY", u64::from(priority)))
            .and_then(|()| entry.field("SYSLOG_IDENTIFIER", self.name.as_bytes()))
            .and_then(|()| entry.field("HOLDEN_SERVICE", self.name.as_bytes()))
            .and_then(|()| entry.field("HOLDEN_STREAM", self.stream.as_str().as_bytes()))
            .and_then(|()| {
                if self.pid > 0 {
                    entry
                        .number("HOLDEN_PID", self.pid as u64)
                        .and_then(|()| entry.number("OBJECT_PID", self.pid as u64))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                if line.truncated {
                    entry.field("HOLDEN_TRUNCATED", b"1")
                } else {
                    Ok(())
                }
            });
        if built.is_err() {
            return Sent::No;
        }
        match socket::send_to(fd.as_fd(), entry.as_bytes(), addr) {
            Ok(_) => {
                *self.journal_sent += 1;
                Sent::Yes
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Sent::Full,
                _ => {
                    // Not there (ENOENT, ECONNREFUSED) or refused: the log takes the lines
                    // for a second, then the journal is asked again.
                    self.journal.retry_at_ns = self.now_ns.saturating_add(JOURNAL_RETRY_NS);
                    Sent::No
                }
            },
        }
    }
}
