//! Shared pieces of the benchmark programs: the probe's record format, a clock, and the
//! floor's `posix_spawn`.
//!
//! `cargo xtask bench` (in `xtask/src/bench/`) drives the programs of this package and reads
//! the records they leave. xtask stays std-only, so it decodes the same layout by hand: keep
//! [`RECORD_BYTES`] and the field order in step with `xtask/src/bench/records.rs`.
//!
//! A record is 32 bytes, native-endian, written with one `write(2)` to a file opened with
//! `O_APPEND`, so records of concurrent writers never interleave:
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0  | u32 | [`RECORD_MAGIC`] |
//! | 4  | u32 | service id (argv[2] of the probe) |
//! | 8  | i32 | pid, as the probe sees it (its own PID namespace) |
//! | 12 | u32 | kind: [`KIND_EXIT`], [`KIND_IDLE`], [`KIND_READY`] or [`KIND_LAUNCH`] |
//! | 16 | u64 | CLOCK_MONOTONIC ns at the first statement of `main` |
//! | 24 | u64 | CLOCK_MONOTONIC ns just before `_exit` (0 for an idle probe; for a boot service, just before it sent `READY=1`) |
//!
//! CLOCK_MONOTONIC is not virtualised by PID namespaces (only a time namespace would offset
//! it), so records written inside the QM stand-in compare directly with ours.

/// Size of one record.
pub const RECORD_BYTES: usize = 32;
/// First field of every record ("HLDB" read as little-endian bytes `B D L H`).
pub const RECORD_MAGIC: u32 = 0x484c_4442;
/// The probe exited at once: both timestamps are set.
pub const KIND_EXIT: u32 = 1;
/// The probe stays up until it is signalled: only the start is set.
pub const KIND_IDLE: u32 = 2;
/// A boot service (`bench-boot-service`) said `READY=1`: start of `main`, and just before the
/// datagram was sent.
pub const KIND_READY: u32 = 3;
/// `bench-launch` is about to exec the orchestrator: both times are that instant.
pub const KIND_LAUNCH: u32 = 4;
/// The service id of a [`KIND_LAUNCH`] record.
pub const LAUNCH_SERVICE: u32 = u32::MAX;

/// One probe record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub service: u32,
    pub pid: i32,
    pub kind: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Record {
    /// The 32 bytes written to the records file.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_ne_bytes());
        out[4..8].copy_from_slice(&self.service.to_ne_bytes());
        out[8..12].copy_from_slice(&self.pid.to_ne_bytes());
        out[12..16].copy_from_slice(&self.kind.to_ne_bytes());
        out[16..24].copy_from_slice(&self.start_ns.to_ne_bytes());
        out[24..32].copy_from_slice(&self.end_ns.to_ne_bytes());
        out
    }
}

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call, no system call on x86_64 and aarch64).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling process (all threads) in nanoseconds (CLOCK_PROCESS_CPUTIME_ID;
/// it includes the kernel's work on the process's behalf, fork included).
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Opens the records file at the NUL-terminated `path` for appending (`O_APPEND`, created 0644
/// when missing). Allocation-free, for the probe's short life.
pub fn open_records(path: &std::ffi::CStr) -> Result<libc::c_int, i32> {
    // SAFETY: `path` is a valid NUL-terminated string; open has no other pointer argument.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// Writes `record` with one `write(2)` to an fd from [`open_records`].
pub fn write_record(fd: libc::c_int, record: &Record) -> Result<(), i32> {
    let bytes = record.encode();
    // SAFETY: writes RECORD_BYTES from a valid local array to an fd the caller owns.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), RECORD_BYTES) };
    if written == RECORD_BYTES as isize {
        Ok(())
    } else if written < 0 {
        Err(errno())
    } else {
        Err(libc::EIO)
    }
}

/// Opens, appends one record and closes (used by the loops, which outlive many records).
pub fn append_record(path: &std::ffi::CStr, record: &Record) -> Result<(), i32> {
    let fd = open_records(path)?;
    let result = write_record(fd, record);
    // SAFETY: closes the fd opened above, exactly once.
    unsafe { libc::close(fd) };
    result
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Parses the value `text` of a command-line option as a whole number in `min..=max`.
pub fn number(option: &str, text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "{option}: {text:?} is not a number in {min}..={max}"
        )),
    }
}

/// posix_spawn prepared once: argv as C strings, and the same child set-up as holden's
/// spawn where posix_spawn can express it (new session, every signal to its default action,
/// empty signal mask, stdin on /dev/null), so that the comparison is about fork against
/// `CLONE_VM | CLONE_VFORK`, not about work left out.
pub struct PosixSpawn {
    strings: Vec<std::ffi::CString>,
    argv: Vec<*mut libc::c_char>,
    envp: [*mut libc::c_char; 1],
    attr: Box<libc::posix_spawnattr_t>,
    actions: Box<libc::posix_spawn_file_actions_t>,
}

impl PosixSpawn {
    /// Prepares the spawn of `argv` with an empty environment.
    pub fn new(argv: &[&[u8]]) -> Result<PosixSpawn, String> {
        let strings = argv
            .iter()
            .map(|a| std::ffi::CString::new(*a).map_err(|_| "NUL in argv".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*mut libc::c_char> =
            strings.iter().map(|s| s.as_ptr() as *mut _).collect();
        ptrs.push(std::ptr::null_mut());
        // SAFETY: plain C structs, initialised by their init functions below before any use.
        let mut attr: Box<libc::posix_spawnattr_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: as above.
        let mut actions: Box<libc::posix_spawn_file_actions_t> =
            Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: every call gets valid pointers to the boxed structs (which never move) and
        // to local sigsets; the path is a NUL-terminated literal.
        let rc = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            let flags = libc::POSIX_SPAWN_SETSID
                | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short
                | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short;
            [
                libc::posix_spawnattr_init(&mut *attr),
                libc::posix_spawnattr_setflags(&mut *attr, flags),
                libc::posix_spawnattr_setsigdefault(&mut *attr, &all),
                libc::posix_spawnattr_setsigmask(&mut *attr, &none),
                libc::posix_spawn_file_actions_init(&mut *actions),
                libc::posix_spawn_file_actions_addopen(
                    &mut *actions,
                    0,
                    c"/dev/null".as_ptr(),
                    libc::O_RDONLY,
                    0,
                ),
            ]
            .into_iter()
            .find(|&rc| rc != 0)
        };
        if let Some(rc) = rc {
            return Err(format!(
                "posix_spawn attributes: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(PosixSpawn {
            strings,
            argv: ptrs,
            envp: [std::ptr::null_mut()],
            attr,
            actions,
        })
    }

    /// Starts one process; its pidfd comes from `pidfd_open`.
    pub fn spawn(&self) -> Result<holden::spawn::Spawned, String> {
        let mut pid: libc::pid_t = 0;
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers into `strings`,
        // which lives as long as `self`; `attr` and `actions` were initialised in `new`.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.strings[0].as_ptr(),
                &*self.actions,
                &*self.attr,
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "posix_spawn: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        // Race-free: the child is ours and stays a zombie until we reap it with waitid.
        let pidfd = holden::pidfd::open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
        Ok(holden::spawn::Spawned { pid, pidfd })
    }
}

impl Drop for PosixSpawn {
    fn drop(&mut self) {
        // SAFETY: destroys the structs initialised in `new`, once.
        unsafe {
            libc::posix_spawnattr_destroy(&mut *self.attr);
            libc::posix_spawn_file_actions_destroy(&mut *self.actions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_laid_out_as_documented() {
        let r = Record {
            service: 7,
            pid: -3,
            kind: KIND_EXIT,
            start_ns: 0x0102_0304_0506_0708,
            end_ns: 9,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &RECORD_MAGIC.to_ne_bytes());
        assert_eq!(&b[4..8], &7u32.to_ne_bytes());
        assert_eq!(&b[8..12], &(-3i32).to_ne_bytes());
        assert_eq!(&b[12..16], &KIND_EXIT.to_ne_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&b[24..32], &9u64.to_ne_bytes());
    }

    #[test]
    fn records_appended_by_many_writers_stay_whole() {
        let path = format!("/tmp/holden-bench-lib-{}.rec", std::process::id());
        let cpath = std::ffi::CString::new(path.clone()).unwrap();
        let _ = std::fs::remove_file(&path);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let cpath = &cpath;
                s.spawn(move || {
                    for i in 0..500u64 {
                        let r = Record {
                            service: t,
                            pid: 1,
                            kind: KIND_EXIT,
                            start_ns: i,
                            end_ns: i + 1,
                        };
                        append_record(cpath, &r).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.len(), 4 * 500 * RECORD_BYTES);
        for chunk in bytes.chunks(RECORD_BYTES) {
            assert_eq!(&chunk[0..4], &RECORD_MAGIC.to_ne_bytes());
            let start = u64::from_ne_bytes(chunk[16..24].try_into().unwrap());
            let end = u64::from_ne_bytes(chunk[24..32].try_into().unwrap());
            assert_eq!(end, start + 1);
        }
    }
}
