//! Helpers of the reliability suite (`tests/reliability_*.rs`): a fake agent's socket calls
//! (SOCK_SEQPACKET listener, accept and receive with bounded waits, sendmsg with any fds),
//! snapshots of a process's open fds and memory, and processes ended by pid on drop.
#![allow(dead_code)]

use crate::orchestrator_support::*;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A listening Unix socket of `kind` (`SOCK_SEQPACKET` or `SOCK_STREAM`) at `path`.
pub fn listener(path: &Path, kind: i32) -> OwnedFd {
    // SAFETY: plain socket/bind/listen calls on a sockaddr_un we build; the fd is owned below.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
            *d = s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0,
            "bind {}",
            path.display()
        );
        assert_eq!(libc::listen(fd, 8), 0);
        owned
    }
}

pub fn seqpacket_listener(path: &Path) -> OwnedFd {
    listener(path, libc::SOCK_SEQPACKET)
}

/// Waits up to `timeout` for `fd` to be readable.
pub fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded wait.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    ready == 1
}

/// Accepts the next connection, or `None` after `timeout`.
pub fn accept_within(listener: &OwnedFd, timeout: Duration) -> Option<OwnedFd> {
    if !readable(listener, timeout) {
        return None;
    }
    // SAFETY: accept4 on our listener.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept");
    // SAFETY: the fd was just returned to us.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Accepts the next connection (panics after [`WAIT`]: the orchestrator did not reconnect).
pub fn accept(listener: &OwnedFd) -> OwnedFd {
    accept_within(listener, WAIT).expect("the orchestrator did not (re)connect")
}

/// Receives one packet (0 on EOF or error), waiting at most [`WAIT`].
pub fn recv(conn: &OwnedFd, buf: &mut [u8]) -> usize {
    if !readable(conn, WAIT) {
        panic!("nothing received from the orchestrator");
    }
    // SAFETY: reads into a valid buffer.
    let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    n.max(0) as usize
}

/// Sends one packet with `fds` attached (SCM_RIGHTS, up to 253). Errors (the orchestrator
/// already hung up) are ignored: the tests check the orchestrator's side.
pub fn send(conn: &OwnedFd, data: &[u8], fds: &[RawFd]) -> bool {
    assert!(fds.len() <= 253, "SCM_MAX_FD");
    // Room for 253 fds: CMSG_SPACE(253 * 4) = 16 + 1012 rounded up.
    let mut control = [0u64; 130];
    // SAFETY: builds a msghdr over valid buffers; the control buffer is large enough.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
        libc::sendmsg(
            conn.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        ) >= 0
    }
}

/// Kills its processes by pid when dropped, also when the test fails.
#[derive(Default)]
pub struct Reaper(pub Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `/bin/sleep` with `marker` as argument, and a pidfd of it.
pub fn sleeper(marker: &str) -> (Child, OwnedFd) {
    let child = Command::new("/bin/sleep")
        .arg(marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fd = holden::pidfd::open(child.id() as i32).unwrap();
    (child, fd)
}

/// The open fds of a process by kind (`socket`, `pipe`, `pidfd`, `anon_inode:[eventfd]`,
/// a path …): a leak of any kind shows as a changed count.
pub fn fd_kinds(pid: i32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.display().to_string();
        let kind = if target.contains("pidfd") {
            "pidfd".to_string()
        } else if let Some((head, _)) = target.split_once(":[") {
            if head == "anon_inode" {
                target
            } else {
                head.to_string()
            }
        } else {
            target
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

/// Every live process whose arguments include one starting with `prefix`, by that argument.
pub fn pids_by_argument_prefix(prefix: &str) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        for arg in bytes.split(|&b| b == 0) {
            let arg = String::from_utf8_lossy(arg);
            if arg.starts_with(prefix) && alive(pid) {
                out.entry(arg.to_string()).or_default().push(pid);
            }
        }
    }
    out
}

/// Number of lines of the orchestrator's log containing every needle.
pub fn count(orch: &Orch, needles: &[&str]) -> usize {
    orch.lines_with(needles).len()
}
