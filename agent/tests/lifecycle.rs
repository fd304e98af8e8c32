//! The agent's life: clean stop on SIGTERM/SIGINT, kill -9 and restart,
//! stale and live sockets, systemd socket activation, command line.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;

#[test]
fn sigterm_and_sigint_stop_cleanly_and_processes_keep_running() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = TempDir::new("term");
        let mut agent = Agent::start(&dir, &[]);
        let client = V1Client::connect(&agent.socket);
        let mut procs = Procs::default();
        let (_, pidfd) = client.start(1, &[b"/bin/sleep", b"1000"]).started();
        let pidfd = procs.keep(pidfd);
        let status = agent.signal_and_wait(signal);
        assert_eq!(status.code(), Some(0), "signal {signal}: {}", agent.log());
        assert!(!agent.socket.exists(), "socket file left behind");
        pidfd_send_signal(pidfd, 0).expect("spawned process died with the agent");
        assert!(!poll_readable(pidfd, Duration::ZERO));
        assert!(agent.log().contains("stopped on signal"));
    }
}

#[test]
fn kill_9_leaves_processes_running_and_a_restarted_agent_serves() {
    let dir = TempDir::new("kill9");
    let mut agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    let mut procs = Procs::default();
    for id in 0..3 {
        let (_, pidfd) = client.start(id, &[b"/bin/sleep", b"1000"]).started();
        procs.keep(pidfd);
    }
    let status = agent.signal_and_wait(libc::SIGKILL);
    assert_eq!(status.code(), None);
    assert!(agent.socket.exists(), "kill -9 cannot remove the socket");
    assert!(client.closed_by_agent());
    for pidfd in &procs.0 {
        pidfd_send_signal(pidfd.as_fd(), 0).expect("process died with the agent");
        assert!(!poll_readable(pidfd.as_fd(), Duration::ZERO));
    }
    // The stale socket is removed and a new agent serves on the same path.
    let again = Agent::start(&dir, &[]);
    assert!(
        again.log().contains("removed a stale socket file"),
        "{}",
        again.log()
    );
    let client = V1Client::connect(&again.socket);
    let (_, pidfd) = client.start(9, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    // The old processes are still supervisable: stop one through its pidfd.
    pidfd_send_signal(procs.0[0].as_fd(), libc::SIGTERM).unwrap();
    assert!(poll_readable(procs.0[0].as_fd(), WAIT));
}

#[test]
fn refuses_a_live_agent_and_a_non_socket_path() {
    let dir = TempDir::new("live");
    let agent = Agent::start(&dir, &[]);
    let second = Command::new(AGENT)
        .arg("--socket")
        .arg(&agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another process is listening there"),
        "{stderr}"
    );
    assert!(agent.socket.exists());
    assert!(matches!(
        V1Client::connect(&agent.socket).ping(1),
        Outcome::Pong { .. }
    ));
    // A regular file is never replaced.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let refused = Command::new(AGENT)
        .arg("--socket")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // A missing directory is a clear start-up error.
    let missing = Command::new(AGENT)
        .arg("--socket")
        .arg(dir.join("no/such/dir.sock"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("bind"));
}

/// With `--legacy-socket`, `HOLDEN_SOCKET_PATH` names the v1 socket (alone, it is the v0.2
/// agent's socket: `tests/v02.rs`).
#[test]
fn environment_variable_names_the_socket() {
    let dir = TempDir::new("envsock");
    let socket = dir.join("from-env.sock");
    let mut command = Command::new(AGENT);
    command
        .env("HOLDEN_SOCKET_PATH", &socket)
        .arg("--legacy-socket")
        .arg(dir.join("legacy.sock"));
    let agent = Agent::launch(&dir, command, &socket);
    assert!(matches!(
        V1Client::connect(&agent.socket).ping(1),
        Outcome::Pong { .. }
    ));
}

#[test]
fn systemd_socket_activation() {
    let dir = TempDir::new("activate");
    let socket = dir.join("activated.sock");
    // Bind and listen like systemd would, then pass the socket as fd 3.
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd.
    let listen_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(&socket);
    // SAFETY: bind/listen on our socket with a valid address.
    unsafe {
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 16), 0);
    }
    let raw = listen_fd.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    // LISTEN_PID must be the agent's pid: the shell exports its own and execs.
    command.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --socket /nonexistent/ignored.sock",
        AGENT,
    ]);
    // SAFETY: dup2/fcntl are async-signal-safe; they put the listening
    // socket on fd 3 without CLOEXEC in the child only (dup2 onto the same
    // number would keep CLOEXEC, hence the fcntl when it already is fd 3).
    unsafe {
        command.pre_exec(move || {
            let rc = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut agent = Agent::launch(&dir, command, &socket);
    let client = V1Client::connect(&socket);
    assert!(matches!(client.ping(1), Outcome::Pong { .. }));
    let (_, pidfd) = client.start(2, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
    assert!(agent.log().contains("(systemd)"), "{}", agent.log());
    let status = agent.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    // The socket file belongs to systemd: left in place.
    assert!(socket.exists());
}

#[test]
fn help_version_and_usage_errors() {
    let help = Command::new(AGENT).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--socket",
        "--legacy-socket",
        "--allow-uid",
        "--read-timeout-ms",
        "--exec-timeout-ms",
        "--version",
    ] {
        assert!(text.contains(option), "help lacks {option}");
    }
    let version = Command::new(AGENT).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("holden-agent 0."));
    for bad in [
        &["--bogus"][..],
        &["--socket"],
        &["--allow-uid", "root"],
        &["extra"],
    ] {
        let out = Command::new(AGENT).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // One line and a pointer to --help, as holdenctl and holden-orchestrator do.
        assert!(
            stderr.starts_with("holden-agent: ")
                && stderr.ends_with(" (see holden-agent --help)\n")
                && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
    // `--` ends the options; the agent takes no positional argument.
    let out = Command::new(AGENT).args(["--", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "holden-agent: unexpected argument \"--help\" (see holden-agent --help)\n"
    );
}

/// Every value option in its `--opt=VALUE` spelling, with socket paths that are not UTF-8.
#[test]
fn joined_values_and_socket_paths_that_are_not_utf8() {
    let dir = TempDir::new("nonutf8");
    let socket = dir.path.join(OsStr::from_bytes(b"v1-\xff.sock"));
    let legacy = dir.path.join(OsStr::from_bytes(b"v02-\xfe.sock"));
    let joined = |option: &str, path: &std::path::Path| {
        let mut arg = OsString::from(option);
        arg.push(path);
        arg
    };
    let mut command = Command::new(AGENT);
    command
        .arg(joined("--socket=", &socket))
        .arg(joined("--legacy-socket=", &legacy))
        .args([
            "--allow-uid=4242",
            "--read-timeout-ms=5000",
            "--exec-timeout-ms=4000",
        ]);
    let mut agent = Agent::launch(&dir, command, &socket);
    let client = V1Client::connect(&socket);
    assert!(matches!(client.ping(1), Outcome::Pong { .. }));
    assert!(legacy.exists(), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("allowed peer uids")
            && log.contains("4242")
            && log.contains("read timeout 5000 ms")
            && log.contains("exec timeout 4000 ms"),
        "{log}"
    );
    drop(client);
    assert_eq!(agent.signal_and_wait(libc::SIGTERM).code(), Some(0));
    assert!(
        !socket.exists() && !legacy.exists(),
        "socket files left behind"
    );
}

#[test]
fn sd_notify_to_an_abstract_address() {
    let dir = TempDir::new("abstract");
    let name = format!("holden-agent-test-{}", std::process::id());
    // SAFETY: plain datagram socket bound to an abstract address.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_un is valid; the name fits.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, &b) in addr.sun_path[1..].iter_mut().zip(name.as_bytes()) {
        *slot = b as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
    // SAFETY: bind with the address built above.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    assert_eq!(rc, 0);
    set_timeouts(sock.as_raw_fd(), WAIT);
    let socket = dir.join("agent.sock");
    let mut child = Command::new(AGENT)
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reply = recv_with_fds(sock.as_raw_fd(), 512);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut child);
    let reply = reply.expect("no READY=1 on the abstract socket");
    assert!(String::from_utf8_lossy(&reply.bytes).starts_with("READY=1"));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn works_when_seccomp_refuses_clone3() {
    // As older container seccomp profiles do: clone3 fails with ENOSYS. The
    // agent must fall back to clone(CLONE_PIDFD), equally race-free.
    const SYS_CLONE3: u32 = 435;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if (A == clone3) fall through, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: SYS_CLONE3,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let dir = TempDir::new("seccomp");
    let socket = dir.join("agent.sock");
    let mut command = Command::new(AGENT);
    command.arg("--socket").arg(&socket);
    // SAFETY: prctl is async-signal-safe; the filter lives in the closure
    // (copied into the child) and is read by the kernel during the call.
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let agent = Agent::launch(&dir, command, &socket);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(
        status.contains("Seccomp:\t2"),
        "no seccomp filter on the agent"
    );
    let client = V1Client::connect(&socket);
    let mut procs = Procs::default();
    for id in 0..20 {
        let (_, pidfd) = client.start(id, &[b"/bin/sleep", b"1000"]).started();
        let pidfd = procs.keep(pidfd);
        pidfd_send_signal(pidfd, libc::SIGKILL).unwrap();
        assert!(poll_readable(pidfd, WAIT));
    }
    let (stage, errno, _) = client.start(99, &[b"/nonexistent/x"]).error();
    assert_eq!(
        (stage, errno),
        (holden::wire::v1::ErrorStage::Exec, libc::ENOENT)
    );
    assert!(
        agent.log().contains("using clone(CLONE_PIDFD)"),
        "{}",
        agent.log()
    );
}
