//! Live re-exec: the orchestrator `execve`s its binary again (the same path, so a binary
//! replaced there is the one that runs) and keeps every service. What survives the exec by
//! itself: the pid, the children (services stay its children, so their exit statuses are read
//! with `waitid` as before; an exit during the exec waits as a zombie), the signal mask and
//! pending signals, fds 0-2. What is carried: the state record, written in full just before the
//! exec ([`super::runtime::Recorder::write_now`]), and the fds named by the handoff
//! ([`crate::handoff`]) in a memfd kept across the exec, its number in [`handoff::ENV`]. The
//! new instance takes the record over as after a crash, except that nothing can have been
//! reused: every recorded local process is still its child.

use crate::handoff::{self, Handoff};
use crate::sys;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What to exec: this process's binary path, arguments and environment, taken at start-up.
pub(crate) struct Program {
    path: CString,
    argv: Vec<CString>,
    /// Without the variables that were for this instance's start only.
    env: Vec<CString>,
}

impl Program {
    /// This process's program: `/proc/self/exe` read now (the path, not the file: after a
    /// package update the new binary at that path runs), `argv` and the environment.
    pub(crate) fn of_this_process() -> io::Result<Program> {
        let path = std::fs::read_link("/proc/self/exe")?;
        let strip = |os: OsString| CString::new(os.into_vec()).ok();
        let argv: Vec<CString> = std::env::args_os().filter_map(strip).collect();
        let env = std::env::vars_os()
            // The handoff's variable is set anew; systemd's LISTEN_* were for this instance's
            // start and would name the next one's handoff fds.
            .filter(|(key, _)| {
                ![handoff::ENV, "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
                    .iter()
                    .any(|k| key == k)
            })
            .filter_map(|(key, value)| {
                let mut entry = key.into_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                CString::new(entry).ok()
            })
            .collect();
        Ok(Program {
            path: CString::new(path.into_os_string().into_vec())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            argv,
            env,
        })
    }

    /// The binary's path.
    pub(crate) fn path(&self) -> &CStr {
        &self.path
    }

    /// Execs the program with `handoff`, keeping `kept` (every fd the handoff names) open
    /// across the exec. Returns only if the exec failed; then every fd is close-on-exec
    /// again and nothing else changed.
    pub(crate) fn exec(&self, handoff: &Handoff, kept: &[BorrowedFd<'_>]) -> io::Error {
        let services = handoff.processes.len().max(handoff.outputs.len());
        let mut buf = vec![0u8; handoff::size_max(services)];
        let Some(len) = handoff.encode(&mut buf) else {
            return io::Error::from_raw_os_error(libc::ENOSPC);
        };
        let memfd = match sys::fd::memfd_kept(c"holden-handoff") {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        if let Err(e) = sys::fd::write_all(memfd.as_fd(), &buf[..len]) {
            return e;
        }
        let variable = match CString::new(format!("{}={}", handoff::ENV, memfd.as_raw_fd())) {
            Ok(v) => v,
            Err(_) => return io::Error::from_raw_os_error(libc::EINVAL),
        };
        let restore = |upto: usize| {
            for fd in &kept[..upto] {
                let _ = sys::fd::set_cloexec(*fd, true);
            }
        };
        for (i, fd) in kept.iter().enumerate() {
            if let Err(e) = sys::fd::set_cloexec(*fd, false) {
                restore(i);
                return e;
            }
        }
        let argv: Vec<&CStr> = self.argv.iter().map(CString::as_c_str).collect();
        let mut envp: Vec<&CStr> = self.env.iter().map(CString::as_c_str).collect();
        envp.push(&variable);
        let error = sys::process::execve(&self.path, &argv, &envp);
        restore(kept.len());
        error
    }
}

/// The fds a previous instance handed over, claimed; what is not taken is closed on drop.
pub(crate) struct Inherited {
    pub(crate) handoff: Handoff,
    fds: BTreeMap<RawFd, OwnedFd>,
}

impl Inherited {
    /// Reads the handoff named by [`handoff::ENV`], if this process was started by a re-exec.
    /// `Err` says why it could not be used (every fd it named is closed then).
    pub(crate) fn from_env(services: usize) -> Result<Option<Inherited>, String> {
        let Some(value) = std::env::var_os(handoff::ENV) else {
            return Ok(None);
        };
        let number: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{}={value:?}: not an fd number", handoff::ENV))?;
        let memfd = sys::fd::claim_inherited(number)
            .map_err(|e| format!("{}={number}: {e}", handoff::ENV))?;
        let services = services.max(1);
        let max = handoff::size_max(services);
        let mut buf = vec![0u8; max + 1];
        let mut len = 0;
        while len < buf.len() {
            match sys::fd::read_at(memfd.as_fd(), &mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => return Err(format!("reading the handoff: {e}")),
            }
        }
        if len > max {
            return Err(format!("the handoff is larger than {max} bytes"));
        }
        let handoff =
            handoff::decode(&buf[..len], services).map_err(|e| format!("the handoff: {e}"))?;
        let mut fds = BTreeMap::new();
        for fd in handoff.fds() {
            // A number that is not open is left out: what needed it is set up anew.
            if let Ok(owned) = sys::fd::claim_inherited(fd) {
                // Close-on-exec again at once: no service inherits it.
                let _ = sys::fd::set_cloexec(owned.as_fd(), true);
                fds.insert(fd, owned);
            }
        }
        Ok(Some(Inherited { handoff, fds }))
    }

    /// Takes the fd numbered `fd` (once).
    pub(crate) fn take(&mut self, fd: Option<RawFd>) -> Option<OwnedFd> {
        fd.and_then(|fd| self.fds.remove(&fd))
    }

    /// Takes every service's pidfd: service name and pidfd.
    pub(crate) fn take_processes(&mut self) -> Vec<(String, OwnedFd)> {
        let named: Vec<_> = self.handoff.processes.clone();
        named
            .into_iter()
            .filter_map(|(name, fd)| Some((name.to_string(), self.fds.remove(&fd)?)))
            .collect()
    }

    /// Takes the pipe of a service's stream: (read end, write end).
    pub(crate) fn take_output(
        &mut self,
        service: &str,
        stream: crate::output::Stream,
    ) -> Option<(OwnedFd, OwnedFd)> {
        let o = *self
            .handoff
            .outputs
            .iter()
            .find(|o| o.service.as_str() == service && o.stream == stream)?;
        let read = self.fds.remove(&o.read);
        let write = self.fds.remove(&o.write);
        read.zip(write)
    }
}
