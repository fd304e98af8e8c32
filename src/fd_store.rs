//! systemd's file descriptor store (`FileDescriptorStoreMax=`), used for the services'
//! pidfds and their captured output pipes: sans-IO, the names, the messages and the parsing of
//! what systemd passes back. The sending (one `sd_notify` datagram with the fd in
//! `SCM_RIGHTS`) is [`crate::sd_notify::Notifier`]'s.
//!
//! When a service's process is watched the orchestrator stores its pidfd
//! (`FDSTORE=1`, `FDNAME=pid.<service>`, `FDPOLL=0`: systemd must not drop it when the process
//! exits, which makes a pidfd readable); when the process is released it removes it
//! (`FDSTOREREMOVE=1`). Each captured output pipe is stored once, both ends
//! (`out.<service>.stdout.r` and `….w`), so that a service taken over after a crash writes on
//! into a pipe that is read instead of getting `EPIPE`. systemd keeps the store while it
//! restarts the orchestrator and passes every stored fd to the next instance as `LISTEN_FDS`
//! (fds 3 onwards) with their names in `LISTEN_FDNAMES`; the next instance takes each service's
//! process over by its pidfd, with no pid to look up and nothing that a reused pid could fool.
//! systemd sets `FDSTORE` (254+) to the store's size; without it nothing is stored.

use crate::output::Stream;
use std::io::Write;
use std::os::fd::RawFd;

/// The prefix of a pidfd's name in the store (`FDNAME=pid.camera`).
pub const PIDFD_NAME_PREFIX: &str = "pid.";
/// The prefix of an output pipe end's name (`FDNAME=out.camera.stdout.r`).
pub const PIPE_NAME_PREFIX: &str = "out.";
/// Longest message (systemd allows names of 255 bytes).
pub const MESSAGE_LEN_MAX: usize = 320;
/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Most fds taken from `LISTEN_FDS` (more are refused as a whole: not what systemd sends).
pub const LISTEN_FDS_MAX: usize = 16_384;
/// Store entries one service may use: its pidfd and both ends of two pipes.
pub const FDS_PER_SERVICE_MAX: usize = 5;

/// What a stored fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The pidfd of the service's process.
    Pidfd { service: &'a str },
    /// One end of a service's captured output pipe (`write`: the write end).
    Pipe {
        service: &'a str,
        stream: Stream,
        write: bool,
    },
}

impl std::fmt::Display for Stored<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Pidfd { service } => write!(f, "{PIDFD_NAME_PREFIX}{service}"),
            Stored::Pipe {
                service,
                stream,
                write,
            } => write!(
                f,
                "{PIPE_NAME_PREFIX}{service}.{}.{}",
                stream.as_str(),
                if *write { "w" } else { "r" }
            ),
        }
    }
}

impl Stored<'_> {
    /// What a stored fd's name says it is (`None`: not one of ours).
    pub fn of(name: &str) -> Option<Stored<'_>> {
        if let Some(service) = name.strip_prefix(PIDFD_NAME_PREFIX) {
            return (!service.is_empty()).then_some(Stored::Pidfd { service });
        }
        let rest = name.strip_prefix(PIPE_NAME_PREFIX)?;
        let (rest, end) = rest.rsplit_once('.')?;
        let (service, stream) = rest.rsplit_once('.')?;
        let stream = match stream {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return None,
        };
        let write = match end {
            "r" => false,
            "w" => true,
            _ => return None,
        };
        (!service.is_empty()).then_some(Stored::Pipe {
            service,
            stream,
            write,
        })
    }
}

/// `FDSTORE=1` for `what`; `None` if it does not fit.
pub fn store_message(buf: &mut [u8; MESSAGE_LEN_MAX], what: Stored<'_>) -> Option<usize> {
    let mut w = &mut buf[..];
    write!(w, "FDSTORE=1\nFDNAME={what}\nFDPOLL=0").ok()?;
    Some(MESSAGE_LEN_MAX - w.len())
}

/// `FDSTOREREMOVE=1` for `what`.
pub fn remove_message(buf: &mut [u8; MESSAGE_LEN_MAX], what: Stored<'_>) -> Option<usize> {
    let mut w = &mut buf[..];
    write!(w, "FDSTOREREMOVE=1\nFDNAME={what}").ok()?;
    Some(MESSAGE_LEN_MAX - w.len())
}

/// Why `LISTEN_FDS` could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenError(pub String);

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fds systemd passed, from the values of `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES`: `(fd, name)` for each (the name empty when systemd gave none). Nothing
/// (`Ok(empty)`) when `LISTEN_FDS` is not set or `LISTEN_PID` is another process's (they were
/// meant for someone else, as `sd_listen_fds(3)` says).
pub fn listen_fds(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: i32,
) -> Result<Vec<(RawFd, String)>, ListenError> {
    let Some(fds) = fds else {
        return Ok(Vec::new());
    };
    let Some(pid) = pid else {
        return Ok(Vec::new());
    };
    let pid: i32 = pid
        .parse()
        .map_err(|_| ListenError(format!("LISTEN_PID={pid:?}: not a pid")))?;
    if pid != our_pid {
        return Ok(Vec::new());
    }
    let count: usize = fds
        .parse()
        .map_err(|_| ListenError(format!("LISTEN_FDS={fds:?}: not a number")))?;
    if count > LISTEN_FDS_MAX {
        return Err(ListenError(format!(
            "LISTEN_FDS={count}: more than {LISTEN_FDS_MAX}"
        )));
    }
    let names: Vec<&str> = match names {
        Some(names) if !names.is_empty() => names.split(':').collect(),
        _ => Vec::new(),
    };
    if !names.is_empty() && names.len() != count {
        return Err(ListenError(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
            names.len()
        )));
    }
    Ok((0..count)
        .map(|i| {
            (
                LISTEN_FDS_START + i as RawFd,
                names.get(i).copied().unwrap_or("").to_string(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_are_systemd_s() {
        let mut buf = [0u8; MESSAGE_LEN_MAX];
        let camera = Stored::Pidfd { service: "camera" };
        let len = store_message(&mut buf, camera).unwrap();
        assert_eq!(
            &buf[..len],
            b"FDSTORE=1\nFDNAME=pid.camera\nFDPOLL=0".as_slice()
        );
        let len = remove_message(&mut buf, camera).unwrap();
        assert_eq!(
            &buf[..len],
            b"FDSTOREREMOVE=1\nFDNAME=pid.camera".as_slice()
        );
        let long = "x".repeat(400);
        assert_eq!(
            store_message(&mut buf, Stored::Pidfd { service: &long }),
            None
        );
        let pipe = Stored::Pipe {
            service: "a.b",
            stream: Stream::Stderr,
            write: true,
        };
        let len = store_message(&mut buf, pipe).unwrap();
        assert_eq!(
            &buf[..len],
            b"FDSTORE=1\nFDNAME=out.a.b.stderr.w\nFDPOLL=0".as_slice()
        );
    }

    #[test]
    fn names_say_what_is_stored() {
        assert_eq!(
            Stored::of("pid.camera"),
            Some(Stored::Pidfd { service: "camera" })
        );
        assert_eq!(
            Stored::of("out.a.b.stdout.r"),
            Some(Stored::Pipe {
                service: "a.b",
                stream: Stream::Stdout,
                write: false
            })
        );
        for other in [
            "pid.",
            "control",
            "out.a.stdin.r",
            "out.a.stdout.x",
            "out..stdout.r",
        ] {
            assert_eq!(Stored::of(other), None, "{other}");
        }
    }

    #[test]
    fn listen_fds_are_ours_only_when_the_pid_is() {
        assert_eq!(
            listen_fds(Some("42"), Some("2"), Some("pid.a:control"), 42).unwrap(),
            vec![(3, "pid.a".to_string()), (4, "control".to_string())]
        );
        assert_eq!(
            listen_fds(Some("42"), Some("1"), None, 42).unwrap(),
            vec![(3, String::new())]
        );
        assert!(listen_fds(Some("41"), Some("2"), None, 42)
            .unwrap()
            .is_empty());
        assert!(listen_fds(None, Some("2"), None, 42).unwrap().is_empty());
        assert!(listen_fds(Some("42"), None, None, 42).unwrap().is_empty());
        for (pid, fds, names, expected) in [
            ("x", "1", "", "not a pid"),
            ("42", "-1", "", "not a number"),
            ("42", "50000", "", "more than"),
            ("42", "2", "a", "1 names for LISTEN_FDS=2"),
        ] {
            let e = listen_fds(Some(pid), Some(fds), Some(names), 42).unwrap_err();
            assert!(e.0.contains(expected), "{e}");
        }
    }
}
