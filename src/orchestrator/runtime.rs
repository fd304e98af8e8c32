//! The runtime directory (`runtime_dir`, default `/run/holden`): the lock that lets one
//! orchestrator at a time run on it, and the state record (`src/record.rs`) that lets the next
//! instance take over the processes of this one.
//!
//! The record is written by its own thread: the loop only copies a service's fixed-size entry
//! into a shared table and notes it changed (O(1) under a mutex that the writer holds only to
//! take the changed entries), and the writer, at most every [`RECORD_INTERVAL`], encodes the
//! whole record into a buffer sized at start-up, writes it to `state.tmp` and renames that
//! over `state`. A reader therefore sees a whole record, old or new, never a mix. Nothing here
//! allocates after start-up.

use crate::log::{Logger, Priority, Quoted};
use crate::pidfd;
use crate::record::{self, Entry, Identity, Record};
use crate::sys;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Why the runtime directory cannot be used.
#[derive(Debug)]
pub enum RuntimeError {
    /// Another orchestrator holds the lock.
    Locked { lock: PathBuf, holder: Option<i32> },
    /// A system call failed (`what` names it and its path).
    Io(String, io::Error),
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Locked { lock, holder } => {
                let holder = match holder {
                    Some(pid) => format!("pid {pid}"),
                    None => "a process that has not written its pid yet".to_string(),
                };
                write!(
                    f,
                    "another holden-orchestrator ({holder}) holds the lock {}: one orchestrator \
                     runs per runtime directory. Stop that one first (systemctl stop \
                     holden-orchestrator, or SIGTERM to its pid), or give this one another \
                     `runtime_dir` (with its own control and agent sockets)",
                    lock.display()
                )
            }
            RuntimeError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// The runtime directory, locked for this instance.
pub(crate) struct RuntimeDir {
    dir: PathBuf,
    /// Held for the life of the process (and across a re-exec): the lock is this open file
    /// description's, so it goes when the process dies, however it dies.
    lock: OwnedFd,
    state: CString,
    tmp: CString,
}

fn path_c(path: &Path) -> Result<CString, RuntimeError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        RuntimeError::Io(
            format!("path {}", path.display()),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

impl RuntimeDir {
    /// Creates the directory if needed (mode 0755) and takes its lock, or says who holds it. A
    /// lock left by a dead process is no obstacle: the kernel released it with the process.
    ///
    /// After a re-exec `inherited` is the previous instance's lock fd: the lock is still held
    /// (the same open file description), so there is no moment at which another instance could
    /// take it. It is used only if it is this directory's lock file.
    pub(crate) fn lock(dir: &Path, inherited: Option<OwnedFd>) -> Result<RuntimeDir, RuntimeError> {
        let io = |what: &str, path: &Path| {
            let text = format!("{what} {}", path.display());
            move |e| RuntimeError::Io(text, e)
        };
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io("cannot create the runtime directory", dir))?;
        }
        let lock_path = dir.join("lock");
        let lock_c = path_c(&lock_path)?;
        let same_file = |fd: &OwnedFd| match (sys::fd::fstat(fd.as_fd()), sys::fd::lstat(&lock_c)) {
            (Ok(held), Ok(Some(path))) => held.dev == path.dev && held.ino == path.ino,
            _ => false,
        };
        let lock = match inherited.filter(same_file) {
            Some(fd) => {
                sys::fd::set_cloexec(fd.as_fd(), true).map_err(io("fcntl", &lock_path))?;
                fd
            }
            None => sys::fd::open_create(&lock_c, libc::O_RDWR, 0o644)
                .map_err(io("open", &lock_path))?,
        };
        if !sys::fd::try_lock_exclusive(lock.as_fd()).map_err(io("flock", &lock_path))? {
            let mut buf = [0u8; 16];
            let n = sys::fd::read_full(lock.as_fd(), &mut buf).unwrap_or(0);
            let holder = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|text| text.trim().parse().ok());
            return Err(RuntimeError::Locked {
                lock: lock_path,
                holder,
            });
        }
        let pid = format!("{}\n", sys::process::getpid());
        sys::fd::truncate(lock.as_fd(), 0).map_err(io("truncate", &lock_path))?;
        sys::fd::write_all(lock.as_fd(), pid.as_bytes()).map_err(io("write", &lock_path))?;
        Ok(RuntimeDir {
            state: path_c(&dir.join("state"))?,
            tmp: path_c(&dir.join("state.tmp"))?,
            dir: dir.to_path_buf(),
            lock,
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The previous instance's record, if there is one this instance can use: `Ok(None)` when
    /// there is none or it is of another boot; `Err` (with the reason) when it is unreadable,
    /// which the caller must say loudly, since the processes it named are not taken over.
    pub(crate) fn read_record(
        &self,
        services_max: usize,
        boot_id: &str,
    ) -> Result<Option<Record>, String> {
        use std::io::Read;
        let path = Path::new(std::ffi::OsStr::from_bytes(self.state.as_bytes()));
        let entries_max = services_max.max(1) * 4;
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        // No larger than a record of `entries_max` services: a bigger file is not one.
        let size_max = record::size_max(entries_max) as u64;
        let mut bytes = Vec::new();
        file.take(size_max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() as u64 > size_max {
            return Err(format!(
                "{}: larger than {size_max} bytes, the most a record of {entries_max} services takes",
                path.display()
            ));
        }
        let record =
            record::decode(&bytes, entries_max).map_err(|e| format!("{}: {e}", path.display()))?;
        if record.boot_id.as_str() != boot_id {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Removes the record (after a clean shutdown stopped every service: nothing to take
    /// over).
    fn remove_record(&self) {
        let _ = sys::fd::unlink(&self.state);
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or an empty string.
pub(crate) fn boot_id() -> String {
    let mut buf = [0u8; 64];
    let n = sys::fd::read_small_file(c"/proc/sys/kernel/random/boot_id", &mut buf).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .unwrap_or("")
        .trim()
        .chars()
        .take(record::BOOT_ID_LEN)
        .collect()
}

/// A process's identity without pidfs: its start time and a digest of its executable's path
/// and command line. `None` when they cannot be read (the process is gone). Reads three small
/// `/proc` files into stack buffers.
pub(crate) fn start_time_identity(pid: i32) -> Option<Identity> {
    let mut stat = [0u8; 1024];
    let n = sys::fd::read_small_file(
        sys::fd::ProcPath::pid_file(pid, "stat").as_cstr(),
        &mut stat,
    )
    .ok()?;
    let ticks = stat_field(&stat[..n], 22)?;
    let mut exe = [0u8; 512];
    let exe_len =
        sys::fd::readlink(sys::fd::ProcPath::pid_file(pid, "exe").as_cstr(), &mut exe).unwrap_or(0);
    let mut cmdline = [0u8; 2048];
    let cmd_len = sys::fd::read_small_file(
        sys::fd::ProcPath::pid_file(pid, "cmdline").as_cstr(),
        &mut cmdline,
    )
    .unwrap_or(0);
    Some(Identity::StartTime {
        ticks,
        digest: record::digest(&[&exe[..exe_len], &cmdline[..cmd_len]]),
    })
}

/// Numeric field `n` (1-based, 3 or later) of `/proc/PID/stat`: 4 is the parent's pid, 22 the
/// start time in clock ticks since boot. The command name, field 2, is in parentheses and may
/// hold spaces and parentheses: count after the last `)`, where field 3 is the first word.
fn stat_field(stat: &[u8], n: usize) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    rest.split_ascii_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The variables every service of an orchestrator with a runtime directory gets, as systemd
/// gives a unit's processes `INVOCATION_ID`: which service, of which orchestrator. A
/// restarted orchestrator finds by them a process that the crashed one had started but not
/// yet recorded (a spawn in flight at the crash), local or QM, and takes it over instead of
/// starting a second one.
pub(crate) const SERVICE_ENV: &str = "HOLDEN_SERVICE";
pub(crate) const RUNTIME_ENV: &str = "HOLDEN_RUNTIME_DIR";

/// Adds [`SERVICE_ENV`] and [`RUNTIME_ENV`] to a service's environment.
pub(crate) fn tag(def: &mut crate::orchestrator::ServiceDef, runtime_dir: &Path) {
    let mut service = format!("{SERVICE_ENV}=").into_bytes();
    service.extend_from_slice(def.name.as_bytes());
    let mut runtime = format!("{RUNTIME_ENV}=").into_bytes();
    runtime.extend_from_slice(runtime_dir.as_os_str().as_bytes());
    def.env.retain(|e| {
        !e.starts_with(SERVICE_ENV.as_bytes()) && !e.starts_with(RUNTIME_ENV.as_bytes())
    });
    def.env.push(service);
    def.env.push(runtime);
}

/// The processes that carry this runtime directory's tag, by service, oldest first (by start
/// time): only the root of each tagged tree (a process whose parent carries the same
/// service's tag is its descendant). Read once at start-up from `/proc` (allocates; start-up
/// only).
pub(crate) fn tagged_processes(runtime_dir: &Path) -> std::collections::BTreeMap<String, Vec<i32>> {
    use std::collections::BTreeMap;
    let mut runtime = format!("{RUNTIME_ENV}=").into_bytes();
    runtime.extend_from_slice(runtime_dir.as_os_str().as_bytes());
    let service_key = format!("{SERVICE_ENV}=").into_bytes();
    // pid -> (service, parent's pid, start time)
    let mut tagged: BTreeMap<i32, (String, i32, u64)> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    let mut environ = vec![0u8; 64 * 1024];
    let mut stat = [0u8; 1024];
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let path = sys::fd::ProcPath::pid_file(pid, "environ");
        let Ok(n) = sys::fd::read_small_file(path.as_cstr(), &mut environ) else {
            continue;
        };
        let vars = || environ[..n].split(|&b| b == 0);
        if !vars().any(|v| v == runtime.as_slice()) {
            continue;
        }
        let Some(name) = vars().find_map(|v| v.strip_prefix(service_key.as_slice())) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let path = sys::fd::ProcPath::pid_file(pid, "stat");
        let stat = match sys::fd::read_small_file(path.as_cstr(), &mut stat) {
            Ok(n) => &stat[..n],
            Err(_) => &[][..],
        };
        let ppid = stat_field(stat, 4).map_or(0, |p| p as i32);
        let started = stat_field(stat, 22).unwrap_or(0);
        tagged.insert(pid, (name, ppid, started));
    }
    let mut roots: BTreeMap<String, Vec<(u64, i32)>> = BTreeMap::new();
    for (&pid, (name, ppid, started)) in &tagged {
        let descendant = tagged
            .get(ppid)
            .is_some_and(|(parent, _, _)| parent == name);
        if !descendant {
            roots.entry(name.clone()).or_default().push((*started, pid));
        }
    }
    roots
        .into_iter()
        .map(|(name, mut pids)| {
            pids.sort_unstable();
            (name, pids.into_iter().map(|(_, pid)| pid).collect())
        })
        .collect()
}

/// Ends what a previous instance left half-spawned: a child cloned for a spawn that had not
/// yet executed the service's program when that instance died (its spawner thread died with
/// it; the child would go on to exec a service nobody supervises, one the new instance starts
/// again). Before its exec such a child is still the orchestrator's program: its
/// `/proc/PID/exe` and command line are this process's, and it carries no tag yet. Each is
/// ended with SIGKILL through a pidfd opened before looking (so the process looked at is the
/// one signalled; one that exec'd in between is a service process the record does not know,
/// whose service is started again anyway). Start-up only (allocates). Returns how many.
pub(crate) fn end_half_spawned() -> u32 {
    let Ok(own_exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(own_cmdline) = std::fs::read("/proc/self/cmdline") else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = sys::process::getpid();
    let mut ended = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|&p| p != me)
        else {
            continue;
        };
        let Ok(pidfd) = pidfd::open(pid) else {
            continue;
        };
        let same_exe = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == own_exe);
        let same_cmdline = same_exe
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == own_cmdline);
        if same_cmdline && pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL).is_ok() {
            ended += 1;
        }
    }
    ended
}

/// What the identity check found for a recorded process.
pub(crate) enum Found {
    /// The same process, alive (or exited, not yet reaped): its new pidfd.
    Same(OwnedFd),
    /// No process with that pid.
    Gone,
    /// Another process has the pid now: it is left alone.
    Other,
}

impl Found {
    /// Whether the recorded process was found.
    pub(crate) fn is_same(&self) -> bool {
        matches!(self, Found::Same(_))
    }
}

/// Opens a pidfd for a recorded pid and checks that it is the recorded process.
pub(crate) fn find(pid: i32, identity: Identity) -> Found {
    let Ok(pidfd) = pidfd::open(pid) else {
        return Found::Gone;
    };
    // A child of this process (after a re-exec): its pid cannot have been reused, since only
    // this process reaps it; it may be a zombie already, whose exe is gone.
    let same = pidfd::is_child(pidfd.as_fd())
        || match identity {
            Identity::None => false,
            Identity::Pidfs(ino) => pidfd::pidfs_inode(pidfd.as_fd()) == Some(ino),
            Identity::StartTime { .. } => {
                // Read /proc, then make sure the pidfd's process was alive throughout: a pid
                // reused between the two would have failed pidfd_open or this signal 0.
                let read = start_time_identity(pid);
                read == Some(identity) && pidfd::send_signal(pidfd.as_fd(), 0).is_ok()
            }
        };
    if same {
        Found::Same(pidfd)
    } else {
        Found::Other
    }
}

/// How long the writer lets changes gather before it writes them out: the record lags the
/// services by at most this plus one write, and is written at most this often (a crash loop
/// changes some service thousands of times a second; writing each change cost the loop a
/// fifth of its restarts and its tail latency, measured with `benches/loop-stall-sched.sh`).
/// A process started within the lag is found by its tag instead.
pub(crate) const RECORD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The entries the loop has changed since the writer last took them.
struct Table {
    entries: Box<[Option<Entry>]>,
    /// Indices of the changed entries (capacity: every service; no allocation).
    dirty: Vec<u32>,
    is_dirty: Box<[bool]>,
    stop: bool,
    /// After `stop`: remove the record instead of writing it.
    remove: bool,
    /// Written by a re-exec ([`Recorder::write_now`]): the writer thread does not write.
    frozen: bool,
}

struct Shared {
    table: Mutex<Table>,
    changed: Condvar,
    runtime: RuntimeDir,
    boot_id: String,
    /// Held while `state.tmp` is written and renamed: the writer thread and a re-exec's last
    /// write ([`Recorder::write_now`]) never write it at once.
    file: Mutex<()>,
}

/// The state record's writer: see the module documentation.
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Starts the writer thread for up to `capacity` services.
    pub(crate) fn start(
        runtime: RuntimeDir,
        capacity: usize,
        boot_id: String,
        log: Logger,
    ) -> io::Result<Recorder> {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                entries: vec![None; capacity].into_boxed_slice(),
                dirty: Vec::with_capacity(capacity),
                is_dirty: vec![false; capacity].into_boxed_slice(),
                stop: false,
                remove: false,
                frozen: false,
            }),
            changed: Condvar::new(),
            runtime,
            boot_id,
            file: Mutex::new(()),
        });
        let theirs = Arc::clone(&shared);
        let thread = sys::signal::spawn_thread_blocking_signals(
            std::thread::Builder::new().name("holden-record".into()),
            move || write_loop(&theirs, &log, capacity),
        )?;
        Ok(Recorder {
            shared,
            thread: Some(thread),
        })
    }

    /// Sets (or clears) the entry of service `index`; the writer is woken by the first change
    /// after a write (later ones join it). O(1) under the mutex, which the writer holds only
    /// to take the changed entries.
    pub(crate) fn put(&self, index: usize, entry: Option<Entry>) {
        let Ok(mut table) = self.shared.table.lock() else {
            return;
        };
        let table = &mut *table;
        let Some(place) = table.entries.get_mut(index) else {
            return;
        };
        if *place == entry {
            return;
        }
        *place = entry;
        if !table.is_dirty[index] {
            table.is_dirty[index] = true;
            let was_clean = table.dirty.is_empty();
            table.dirty.push(index as u32);
            if was_clean {
                self.shared.changed.notify_one();
            }
        }
    }

    /// Writes the whole record now, in the calling thread, and keeps the writer thread from
    /// writing it again until [`Recorder::resume_writing`] (a re-exec: the next instance must
    /// read exactly this). Allocates (a re-exec is a start-up, not the loop's steady state).
    pub(crate) fn write_now(&self) -> io::Result<()> {
        let poisoned = || io::Error::from_raw_os_error(libc::EDEADLK);
        let _file = self.shared.file.lock().map_err(|_| poisoned())?;
        let mut table = self.shared.table.lock().map_err(|_| poisoned())?;
        table.frozen = true;
        let mut buf = vec![0u8; record::size_max(table.entries.len())];
        write_record(
            &self.shared.runtime,
            &self.shared.boot_id,
            &table.entries,
            &mut buf,
        )
    }

    /// After a failed re-exec: the writer thread writes again.
    pub(crate) fn resume_writing(&self) {
        if let Ok(mut table) = self.shared.table.lock() {
            table.frozen = false;
            if !table.dirty.is_empty() {
                self.shared.changed.notify_one();
            }
        }
    }

    /// The lock file's fd (kept across a re-exec).
    pub(crate) fn lock_fd(&self) -> BorrowedFd<'_> {
        self.shared.runtime.lock.as_fd()
    }

    /// Writes the last state (or removes the record when `remove`: a clean shutdown left no
    /// process) and ends the writer thread.
    pub(crate) fn stop(&mut self, remove: bool) {
        if let Ok(mut table) = self.shared.table.lock() {
            table.stop = true;
            table.remove = remove;
            self.shared.changed.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(false);
        }
    }
}

/// The writer thread: waits for a change, lets changes gather for [`RECORD_INTERVAL`], takes
/// the changed entries into its own copy of the table, and writes the whole record.
fn write_loop(shared: &Shared, log: &Logger, capacity: usize) {
    let (runtime, boot_id) = (&shared.runtime, shared.boot_id.as_str());
    let mut copy: Box<[Option<Entry>]> = vec![None; capacity].into_boxed_slice();
    let mut buf = vec![0u8; record::size_max(capacity)].into_boxed_slice();
    let mut failed_before = false;
    loop {
        {
            let Ok(mut table) = shared.table.lock() else {
                return;
            };
            while table.dirty.is_empty() && !table.stop {
                table = match shared.changed.wait(table) {
                    Ok(table) => table,
                    Err(_) => return,
                };
            }
            if !table.stop {
                drop(table);
                std::thread::sleep(RECORD_INTERVAL);
            }
        }
        let (stop, remove) = {
            let Ok(mut table) = shared.table.lock() else {
                return;
            };
            let table = &mut *table;
            for index in table.dirty.drain(..) {
                let index = index as usize;
                copy[index] = table.entries[index];
                table.is_dirty[index] = false;
            }
            (table.stop, table.remove)
        };
        let Ok(_file) = shared.file.lock() else {
            return;
        };
        if shared.table.lock().map_or(true, |table| table.frozen) {
            // A re-exec wrote the record last: it stays as written.
            if stop {
                return;
            }
            continue;
        }
        if remove {
            runtime.remove_record();
            return;
        }
        match write_record(runtime, boot_id, &copy, &mut buf) {
            Ok(()) => failed_before = false,
            Err(e) if !failed_before => {
                failed_before = true;
                log.line(
                    Priority::Err,
                    format_args!(
                        "event=record-write-failed dir={} error={} \
                         consequence=\"a restarted orchestrator would not take over what \
                         changed since the last write\"",
                        Quoted(&runtime.path().display().to_string()),
                        Quoted(&e.to_string())
                    ),
                );
            }
            Err(_) => {}
        }
        if stop {
            return;
        }
    }
}

fn write_record(
    runtime: &RuntimeDir,
    boot_id: &str,
    entries: &[Option<Entry>],
    buf: &mut [u8],
) -> io::Result<()> {
    let len = record::encode(boot_id, entries.iter().flatten(), buf)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))?;
    let file = sys::fd::open_create(&runtime.tmp, libc::O_WRONLY | libc::O_TRUNC, 0o644)?;
    sys::fd::write_all(file.as_fd(), &buf[..len])?;
    drop(file);
    sys::fd::rename(&runtime.tmp, &runtime.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_whatever_the_command_name() {
        let stat = b"4211 (a) b) c) S 1 4211 4211 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 \
                     1 2 3\n";
        assert_eq!(stat_field(stat, 22), Some(987_654));
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(b"4211 (x) S 1", 22), None);
        assert_eq!(stat_field(b"no parenthesis", 4), None);
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn this_process_has_a_start_time_identity_that_a_child_does_not_share() {
        let me = sys::process::getpid();
        let mine = start_time_identity(me).unwrap();
        assert_eq!(start_time_identity(me), Some(mine));
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let theirs = start_time_identity(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(theirs.is_some());
        assert_ne!(theirs, Some(mine));
    }
}
