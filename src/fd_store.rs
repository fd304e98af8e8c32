//! systemd's file descriptor store (`FileDescriptorStoreMax=`), used for the services'
//! pidfds: sans-IO, the messages and the parsing of what systemd passes back. The sending (one
//! `sd_notify` datagram with the pidfd in `SCM_RIGHTS`) is [`crate::sd_notify::Notifier`]'s.
//!
//! When a service's process is watched the orchestrator stores its pidfd
//! (`FDSTORE=1`, `FDNAME=pid.<service>`, `FDPOLL=0`: systemd must not drop it when the process
//! exits, which makes a pidfd readable); when the process is released it removes it
//! (`FDSTOREREMOVE=1`). systemd keeps the store while it restarts the orchestrator and passes
//! every stored fd to the next instance as `LISTEN_FDS` (fds 3 onwards) with their names in
//! `LISTEN_FDNAMES`; the next instance takes each service's process over by its pidfd, with
//! no pid to look up and nothing that a reused pid could fool. systemd sets `FDSTORE` (254+) to
//! the store's size; without it nothing is stored.

use std::io::Write;
use std::os::fd::RawFd;

/// The prefix of a pidfd's name in the store (`FDNAME=pid.camera`).
pub const PIDFD_NAME_PREFIX: &str = "pid.";
/// Longest message (systemd allows names of 255 bytes).
pub const MESSAGE_LEN_MAX: usize = 320;
/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Most fds taken from `LISTEN_FDS` (more are refused as a whole: not what systemd sends).
pub const LISTEN_FDS_MAX: usize = 4096;

/// `FDSTORE=1` for the pidfd of `service`; `None` if it does not fit.
pub fn store_message(buf: &mut [u8; MESSAGE_LEN_MAX], service: &str) -> Option<usize> {
    let mut w = &mut buf[..];
    write!(
        w,
        "FDSTORE=1\nFDNAME={PIDFD_NAME_PREFIX}{service}\nFDPOLL=0"
    )
    .ok()?;
    Some(MESSAGE_LEN_MAX - w.len())
}

/// `FDSTOREREMOVE=1` for the pidfd of `service`.
pub fn remove_message(buf: &mut [u8; MESSAGE_LEN_MAX], service: &str) -> Option<usize> {
    let mut w = &mut buf[..];
    write!(w, "FDSTOREREMOVE=1\nFDNAME={PIDFD_NAME_PREFIX}{service}").ok()?;
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

/// The service whose pidfd a stored fd's name says it is.
pub fn service_of(name: &str) -> Option<&str> {
    name.strip_prefix(PIDFD_NAME_PREFIX)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_are_systemd_s() {
        let mut buf = [0u8; MESSAGE_LEN_MAX];
        let len = store_message(&mut buf, "camera").unwrap();
        assert_eq!(
            &buf[..len],
            b"FDSTORE=1\nFDNAME=pid.camera\nFDPOLL=0".as_slice()
        );
        let len = remove_message(&mut buf, "camera").unwrap();
        assert_eq!(
            &buf[..len],
            b"FDSTOREREMOVE=1\nFDNAME=pid.camera".as_slice()
        );
        assert_eq!(store_message(&mut buf, &"x".repeat(400)), None);
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
            ("42", "5000", "", "more than"),
            ("42", "2", "a", "1 names for LISTEN_FDS=2"),
        ] {
            let e = listen_fds(Some(pid), Some(fds), Some(names), 42).unwrap_err();
            assert!(e.0.contains(expected), "{e}");
        }
        assert_eq!(service_of("pid.camera"), Some("camera"));
        assert_eq!(service_of("pid."), None);
        assert_eq!(service_of("control"), None);
    }
}
