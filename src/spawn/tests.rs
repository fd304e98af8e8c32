//! Spawning against the real kernel: what the child gets, how each failure is reported.

#![allow(unsafe_code)]

use super::*;
use crate::pidfd::send_signal as pidfd_send_signal;
use libc::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

const POLL_TIMEOUT_MS: c_int = 10_000;

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("holden-spawn-{}-{}-{}", tag, std::process::id(), n));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spawned child that is killed and reaped when dropped.
struct Child(Spawned);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = pidfd_send_signal(self.0.pidfd.as_fd(), libc::SIGKILL);
        wait_exit(&self.0.pidfd);
    }
}

fn spec(argv: &[&[u8]]) -> SpawnSpec {
    SpawnSpec::new(argv, &[] as &[&[u8]], None).unwrap()
}

fn poll_readable(fd: &OwnedFd, timeout_ms: c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc == 1 && pfd.revents & libc::POLLIN != 0
}

/// Reaps the child behind `pidfd`; returns (si_code, si_status).
fn wait_exit(pidfd: &OwnedFd) -> (i32, i32) {
    // SAFETY: siginfo_t is plain data for the kernel to fill.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        );
        assert_eq!(rc, 0, "waitid: {}", io::Error::last_os_error());
        (info.si_code, info.si_status())
    }
}

fn sleeper() -> Child {
    Child(spawn(&spec(&[b"/bin/sleep", b"1000"])).unwrap())
}

fn proc_status_field(pid: libc::pid_t, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Waits until the child has exec'd `comm` (spawn returns after execve,
/// so this is immediate; the loop only guards against surprises).
fn proc_comm(pid: libc::pid_t) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn true_gives_a_pidfd_that_polls_readable_on_exit() {
    let spawned = spawn(&spec(&[b"/bin/true"])).unwrap();
    assert!(spawned.pid > 0);
    assert!(poll_readable(&spawned.pidfd, POLL_TIMEOUT_MS));
    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
}

#[test]
fn pidfd_is_a_pidfd_and_cloexec() {
    let child = sleeper();
    let fd = child.0.pidfd.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    let link = link.as_os_str().as_bytes();
    assert!(
        link == b"anon_inode:[pidfd]" || link.starts_with(b"pidfd:"),
        "{link:?}"
    );
    // SAFETY: F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    pidfd_send_signal(child.0.pidfd.as_fd(), 0).unwrap();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    assert!(
        fdinfo.contains(&format!("Pid:\t{}", child.0.pid)),
        "{fdinfo}"
    );
}

fn expect_error(spec: &SpawnSpec, stage: SpawnStage, errno: i32) {
    match spawn(spec) {
        Ok(spawned) => {
            let _ = Child(spawned);
            panic!("spawn succeeded, expected {stage} errno {errno}");
        }
        Err(error) => assert_eq!(error, SpawnError::new(stage, errno), "{error}"),
    }
}

#[test]
fn missing_program_is_exec_enoent() {
    let dir = TempDir::new("enoent");
    let path = dir.0.join("does-not-exist");
    expect_error(
        &spec(&[path.as_os_str().as_bytes()]),
        SpawnStage::Exec,
        libc::ENOENT,
    );
}

#[test]
fn non_executable_file_is_exec_eacces() {
    let dir = TempDir::new("eacces");
    let path = dir.0.join("not-executable");
    std::fs::write(&path, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_error(
        &spec(&[path.as_os_str().as_bytes()]),
        SpawnStage::Exec,
        libc::EACCES,
    );
}

#[test]
fn unknown_format_is_exec_enoexec_without_shell_retry() {
    let dir = TempDir::new("enoexec");
    let path = dir.0.join("garbage");
    std::fs::write(&path, [0x7fu8, b'X', b'Y', b'Z', 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    expect_error(
        &spec(&[path.as_os_str().as_bytes()]),
        SpawnStage::Exec,
        libc::ENOEXEC,
    );
}

/// Linux answers `execve` of a directory with EACCES (not a regular
/// file). The man page's EISDIR (an ELF interpreter that is a directory)
/// is EACCES too on current kernels (checked on 6.18 with a patched
/// PT_INTERP), so a directory is reported as EACCES.
#[test]
fn directory_is_exec_eacces() {
    let dir = TempDir::new("isdir");
    expect_error(
        &spec(&[dir.0.as_os_str().as_bytes()]),
        SpawnStage::Exec,
        libc::EACCES,
    );
}

#[test]
fn missing_cwd_is_chdir_enoent() {
    let dir = TempDir::new("chdir");
    let missing = dir.0.join("missing");
    let spec = SpawnSpec::new(
        &[b"/bin/true"],
        &[] as &[&[u8]],
        Some(missing.as_os_str().as_bytes()),
    )
    .unwrap();
    expect_error(&spec, SpawnStage::Chdir, libc::ENOENT);
}

#[test]
fn bare_name_is_searched_in_the_spec_path() {
    let dir = TempDir::new("path");
    let mut path_var = b"PATH=".to_vec();
    path_var.extend_from_slice(dir.0.as_os_str().as_bytes());
    path_var.extend_from_slice(b"/nowhere::/bin");
    let found = SpawnSpec::new(&[b"true"], &[path_var.as_slice()], None).unwrap();
    let spawned = spawn(&found).unwrap();
    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
    let missing = SpawnSpec::new(&[b"no-such-program-holden"], &[b"PATH=/bin"], None).unwrap();
    expect_error(&missing, SpawnStage::Exec, libc::ENOENT);
}

#[test]
fn argv_env_and_cwd_arrive_exactly() {
    let dir = TempDir::new("argv");
    // The shell stops itself, so its /proc entries stay readable.
    let argv: [&[u8]; 6] = [
        b"/bin/sh",
        b"-c",
        b"kill -STOP $$",
        b"two words",
        b"\xff\xfe raw",
        b"",
    ];
    let env: [&[u8]; 3] = [b"A=1", b"B=x y=z", b"EMPTY="];
    let spec = SpawnSpec::new(&argv, &env, Some(dir.0.as_os_str().as_bytes())).unwrap();
    let child = Child(spawn(&spec).unwrap());
    let pid = child.0.pid;
    wait_until_stopped(pid);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"));
    let environ = std::fs::read(format!("/proc/{pid}/environ"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    let mut expected_cmdline = Vec::new();
    for arg in argv {
        expected_cmdline.extend_from_slice(arg);
        expected_cmdline.push(0);
    }
    let mut expected_environ = Vec::new();
    for entry in env {
        expected_environ.extend_from_slice(entry);
        expected_environ.push(0);
    }
    assert_eq!(cmdline.unwrap(), expected_cmdline);
    assert_eq!(environ.unwrap(), expected_environ);
    assert_eq!(cwd.unwrap(), dir.0);
}

/// Waits (bounded) until `pid` is in state T (stopped).
fn wait_until_stopped(pid: libc::pid_t) {
    for _ in 0..10_000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
        if state == Some('T') {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("process {pid} never stopped");
}

#[test]
fn only_fds_0_to_2_survive_and_stdin_is_dev_null() {
    // Open fds without CLOEXEC, as a careless library might.
    // SAFETY: open/dup of a constant path; closed below.
    let leaked: Vec<c_int> = (0..3)
        .map(|_| unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) })
        .collect();
    assert!(leaked.iter().all(|&fd| fd > 2));
    let child = sleeper();
    let pid = child.0.pid;
    let fds = child_fds(pid);
    for fd in leaked {
        // SAFETY: closing the fds opened above.
        unsafe { libc::close(fd) };
    }
    assert!(fds.iter().all(|&fd| fd <= 2), "child fds: {fds:?}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );
}

#[test]
fn stdio_null_puts_dev_null_on_all_three() {
    let mut spec = spec(&[b"/bin/sleep", b"1000"]);
    {
        let mut w = spec.writer();
        w.arg(b"/bin/sleep").unwrap();
        w.arg(b"1000").unwrap();
        w.stdio_null(true);
    }
    let child = Child(spawn(&spec).unwrap());
    for fd in 0..3 {
        let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", child.0.pid)).unwrap();
        assert_eq!(link, Path::new("/dev/null"), "fd {fd}");
    }
}

#[test]
fn signals_are_default_and_unblocked_in_the_child() {
    // The Rust runtime ignores SIGPIPE in this process; also block SIGUSR2
    // in this thread. Neither may reach the child.
    // SAFETY: sigset_t is plain data; all-zero is a valid value.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: changes this thread's mask only; restored below.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
    }
    let self_ignored = proc_status_field(std::process::id() as i32, "SigIgn:");
    assert_ne!(
        self_ignored, "0000000000000000",
        "test premise: SIGPIPE ignored here"
    );
    let child = sleeper();
    // SAFETY: restores this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    let pid = child.0.pid;
    assert_eq!(proc_comm(pid), "sleep");
    assert_eq!(proc_status_field(pid, "SigBlk:"), "0000000000000000");
    assert_eq!(proc_status_field(pid, "SigIgn:"), "0000000000000000");
}

#[test]
fn the_child_leads_its_own_session() {
    let child = sleeper();
    // SAFETY: getsid/getpgid take a pid and return an id or -1.
    let (sid, pgid) = unsafe { (libc::getsid(child.0.pid), libc::getpgid(child.0.pid)) };
    assert_eq!(sid, child.0.pid);
    assert_eq!(pgid, child.0.pid);
    // SAFETY: getsid(0) is our own session.
    assert_ne!(unsafe { libc::getsid(0) }, sid);
}

#[test]
fn uid_and_gid_are_applied_when_privileged() {
    // SAFETY: geteuid takes no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root");
        return;
    }
    let mut spec = spec(&[b"/bin/sleep", b"1000"]);
    {
        let mut w = spec.writer();
        w.arg(b"/bin/sleep").unwrap();
        w.arg(b"1000").unwrap();
        w.uid(Some(65534));
        w.gid(Some(65533));
    }
    let child = Child(spawn(&spec).unwrap());
    let pid = child.0.pid;
    assert_eq!(proc_status_field(pid, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_status_field(pid, "Gid:"), "65533\t65533\t65533\t65533");
    assert_eq!(proc_status_field(pid, "Groups:"), "65533");
}

#[test]
fn refilled_spec_is_reused_without_growing() {
    let limits = SpawnLimits {
        args_count_max: 4,
        env_count_max: 2,
        strings_bytes_max: 64,
    };
    let mut spec = SpawnSpec::with_limits(limits);
    assert_eq!(spawn(&spec).unwrap_err().stage, SpawnStage::Prepare);
    let capacity = spec.strings.capacity();
    for round in 0..20 {
        {
            let mut w = spec.writer();
            w.arg(b"/bin/true").unwrap();
            w.arg(format!("{round}").as_bytes()).unwrap();
            w.env(b"X=1").unwrap();
        }
        let spawned = spawn(&spec).unwrap();
        assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
    }
    assert_eq!(spec.strings.capacity(), capacity);
    let mut w = spec.writer();
    assert_eq!(w.arg(b"a\0b"), Err(SpecError::InteriorNul));
    assert_eq!(w.env(b"NOEQUALS"), Err(SpecError::EnvNotKeyValue));
    assert_eq!(w.env(b"=x"), Err(SpecError::EnvNotKeyValue));
    for _ in 0..4 {
        w.arg(b"x").unwrap();
    }
    assert_eq!(w.arg(b"x"), Err(SpecError::TooManyArgs));
    assert_eq!(w.cwd(&[b'c'; 64]), Err(SpecError::StringsTooLong));
    drop(w);
    // A writer that saw an error leaves the spec unspawnable.
    assert!(!spec.is_complete());
    assert_eq!(
        spawn(&spec).unwrap_err(),
        SpawnError::new(SpawnStage::Prepare, libc::EINVAL)
    );
}

#[test]
fn concurrent_spawns_from_many_threads_all_get_their_own_pidfd() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let spec = spec(&[b"/bin/true"]);
                for _ in 0..25 {
                    let spawned = spawn(&spec).unwrap();
                    assert!(poll_readable(&spawned.pidfd, POLL_TIMEOUT_MS));
                    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn legacy_clone_fallback_also_yields_a_pidfd() {
    let spawned = match clone_legacy_pidfd_for_test() {
        Ok(spawned) => spawned,
        Err(error) => panic!("{error}"),
    };
    assert!(poll_readable(&spawned.pidfd, POLL_TIMEOUT_MS));
    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
}

/// Runs the `clone` path directly (what a seccomp'd clone3 falls back to).
fn clone_legacy_pidfd_for_test() -> Result<Spawned, SpawnError> {
    let spec = spec(&[b"/bin/true"]);
    let (report_read, report_write) = crate::sys::spawn::report_pipe()?;
    let (pid, pidfd) =
        crate::sys::spawn::clone_child_legacy(&spec.plan(), report_write.as_fd(), None)?;
    drop(report_write);
    match crate::sys::spawn::read_report(report_read.as_fd()) {
        Ok(None) => Ok(Spawned { pid, pidfd }),
        Ok(Some(bytes)) => Err(SpawnError::from_report(bytes)),
        Err(error) => Err(error),
    }
}

// --- gated spawns -------------------------------------------------------

/// A gated child that is killed and reaped when dropped unreleased.
fn gated_marker_spec(marker: &Path) -> SpawnSpec {
    let script = format!("echo ran > {}", marker.display());
    spec(&[b"/bin/sh", b"-c", script.as_bytes()])
}

fn fd_count(pid: libc::pid_t) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn gated_child_does_not_exec_until_released() {
    let dir = TempDir::new("gate-hold");
    let marker = dir.0.join("ran");
    let gated = spawn_gated(&gated_marker_spec(&marker)).unwrap();
    // The child is alive, set up, and still this test binary (no exec):
    // /proc/pid/exe is ours, and it holds exactly fds 0-2 + report + gate.
    let exe = std::fs::read_link(format!("/proc/{}/exe", gated.pid)).unwrap();
    assert_eq!(exe, std::fs::read_link("/proc/self/exe").unwrap());
    assert_eq!(fd_count(gated.pid), 5);
    assert!(!poll_readable(&gated.pidfd, 0), "gated child exited");
    assert!(!marker.exists());
    let pidfd = gated.pidfd.try_clone().unwrap();
    gated.release().unwrap();
    assert!(poll_readable(&pidfd, POLL_TIMEOUT_MS));
    assert_eq!(wait_exit(&pidfd), (libc::CLD_EXITED, 0));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}

#[test]
fn gated_exec_failure_is_reported_by_release() {
    let dir = TempDir::new("gate-enoent");
    let path = dir.0.join("does-not-exist");
    let gated = spawn_gated(&spec(&[path.as_os_str().as_bytes()])).unwrap();
    let pidfd = gated.pidfd.try_clone().unwrap();
    let error = gated.release().unwrap_err();
    assert_eq!(error, SpawnError::new(SpawnStage::Exec, libc::ENOENT));
    // release reaped the child (exit 127): it is gone.
    assert!(poll_readable(&pidfd, POLL_TIMEOUT_MS));
    // SAFETY: plain data for the kernel to fill.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(crate::sys::errno::last(), libc::ECHILD);
}

#[test]
fn gated_setup_failure_is_reported_before_the_gate() {
    let dir = TempDir::new("gate-chdir");
    let missing = dir.0.join("missing");
    let spec = SpawnSpec::new(
        &[b"/bin/true"],
        &[] as &[&[u8]],
        Some(missing.as_os_str().as_bytes()),
    )
    .unwrap();
    let error = spawn_gated(&spec).unwrap_err();
    assert_eq!(error, SpawnError::new(SpawnStage::Chdir, libc::ENOENT));
}

#[test]
fn closing_the_gate_without_go_ends_the_child_without_exec() {
    let dir = TempDir::new("gate-closed");
    let marker = dir.0.join("ran");
    let gated = spawn_gated(&gated_marker_spec(&marker)).unwrap();
    // What happens when the spawner dies: its end of the gate closes.
    let Gated {
        pid: _,
        pidfd,
        go,
        gate,
        report,
    } = gated;
    drop(go);
    drop(gate);
    drop(report);
    assert!(poll_readable(&pidfd, POLL_TIMEOUT_MS));
    assert_eq!(
        wait_exit(&pidfd),
        (libc::CLD_EXITED, GATE_CLOSED_EXIT_STATUS)
    );
    assert!(!marker.exists(), "the program ran without the go-ahead");
}

#[test]
fn abort_ends_and_reaps_the_child_without_exec() {
    let dir = TempDir::new("gate-abort");
    let marker = dir.0.join("ran");
    let gated = spawn_gated(&gated_marker_spec(&marker)).unwrap();
    let pidfd = gated.pidfd.try_clone().unwrap();
    gated.abort();
    assert!(poll_readable(&pidfd, 0));
    assert!(!marker.exists());
}

#[test]
fn release_of_a_child_killed_at_the_gate_is_a_gate_error() {
    // The go byte is still queued when the report pipe reaches end of file: the child died
    // without reading it, so it never exec'd.
    let gated = spawn_gated(&spec(&[b"/bin/true"])).unwrap();
    pidfd_send_signal(gated.pidfd(), libc::SIGKILL).unwrap();
    assert!(poll_readable(&gated.pidfd, POLL_TIMEOUT_MS));
    let error = gated.release().unwrap_err();
    assert_eq!(error, SpawnError::new(SpawnStage::Gate, libc::EPIPE));
}

/// Polls `released` until its outcome is known (bounded).
fn finish(mut released: Released) -> Result<(), SpawnError> {
    for _ in 0..100 {
        assert!(
            poll_fd(released.report_fd(), POLL_TIMEOUT_MS / 100),
            "report pipe never became ready"
        );
        match released.try_finish() {
            Finish::Done(result) => return result,
            Finish::Pending(again) => released = again,
        }
    }
    panic!("try_finish never concluded");
}

/// POLLIN or POLLHUP on any fd.
fn poll_fd(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc == 1 && pfd.revents != 0
}

#[test]
fn open_does_not_wait_and_the_report_pipe_tells_the_outcome() {
    let dir = TempDir::new("gate-open");
    let marker = dir.0.join("ran");
    let gated = spawn_gated(&gated_marker_spec(&marker)).unwrap();
    let pidfd = gated.pidfd.try_clone().unwrap();
    let released = gated.open().unwrap();
    finish(released).unwrap();
    assert_eq!(wait_exit(&pidfd), (libc::CLD_EXITED, 0));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    // An exec failure arrives the same way.
    let missing = dir.0.join("missing");
    let gated = spawn_gated(&spec(&[missing.as_os_str().as_bytes()])).unwrap();
    let error = finish(gated.open().unwrap()).unwrap_err();
    assert_eq!(error, SpawnError::new(SpawnStage::Exec, libc::ENOENT));
}

#[test]
fn a_child_stopped_at_the_gate_stays_pending_and_is_withdrawn_without_exec() {
    let dir = TempDir::new("gate-stop");
    let marker = dir.0.join("ran");
    let gated = spawn_gated(&gated_marker_spec(&marker)).unwrap();
    let pid = gated.pid;
    let pidfd = gated.pidfd.try_clone().unwrap();
    pidfd_send_signal(gated.pidfd(), libc::SIGSTOP).unwrap();
    wait_until_stopped(pid);
    let released = gated.open().unwrap();
    // Stopped before it could read the go-ahead: nothing to report, and nothing blocks.
    assert!(!poll_fd(released.report_fd(), 50));
    let released = match released.try_finish() {
        Finish::Pending(released) => released,
        Finish::Done(result) => panic!("a stopped child concluded: {result:?}"),
    };
    assert_eq!(released.withdraw(), Withdrawn::AtGate);
    assert_killed_by_sigkill(&pidfd);
    assert!(
        !marker.exists(),
        "the program ran after its go-ahead was withdrawn"
    );
}

#[test]
fn withdrawing_after_the_child_took_its_go_ahead_kills_it() {
    let gated = spawn_gated(&spec(&[b"/bin/sleep", b"1000"])).unwrap();
    let pid = gated.pid;
    let pidfd = gated.pidfd.try_clone().unwrap();
    let released = gated.open().unwrap();
    assert!(poll_fd(released.report_fd(), POLL_TIMEOUT_MS));
    wait_for_comm(pid, "sleep");
    // The go byte was read: it cannot be taken back; the process is killed instead.
    assert_eq!(released.withdraw(), Withdrawn::PastGate);
    assert_killed_by_sigkill(&pidfd);
}

/// The child behind `pidfd` ends killed by SIGKILL. `withdraw` reaps it if it has already
/// exited by then, so the status comes from our own `waitid` or, when that finds no child, from
/// `PIDFD_INFO_EXIT` (where the kernel has it).
fn assert_killed_by_sigkill(pidfd: &OwnedFd) {
    assert!(poll_readable(pidfd, POLL_TIMEOUT_MS));
    match crate::sys::process::wait_pidfd(pidfd.as_fd(), true) {
        Ok(Some(waited)) => assert_eq!(
            (waited.code, waited.status),
            (libc::CLD_KILLED, libc::SIGKILL)
        ),
        Ok(None) => panic!("a blocking wait returned nothing"),
        Err(error) => {
            assert_eq!(error.raw_os_error(), Some(libc::ECHILD), "{error}");
            match crate::pidfd::exit_info(pidfd.as_fd()) {
                crate::pidfd::ExitInfo::Status(status) => assert_eq!(
                    status,
                    crate::pidfd::WaitStatus::Signaled {
                        signal: libc::SIGKILL,
                        core_dumped: false
                    }
                ),
                crate::pidfd::ExitInfo::Unavailable => {}
                crate::pidfd::ExitInfo::NotYet => panic!("reaped but no exit status"),
            }
        }
    }
}

/// Waits (bounded) until the child's comm is `comm`: after the exec's point of no return the
/// kernel sets it a moment later.
fn wait_for_comm(pid: libc::pid_t, comm: &str) {
    for _ in 0..10_000 {
        if proc_comm(pid) == comm {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("comm of {pid} never became {comm}");
}

#[test]
fn the_gate_fd_does_not_leak_into_the_program() {
    let gated = spawn_gated(&spec(&[b"/bin/sleep", b"1000"])).unwrap();
    let pid = gated.pid;
    let pidfd = gated.pidfd.try_clone().unwrap();
    gated.release().unwrap();
    let child = Child(Spawned { pid, pidfd });
    wait_for_comm(pid, "sleep");
    assert_eq!(child_fds(pid), vec![0, 1, 2]);
    drop(child);
}

#[test]
fn errors_display_stage_and_reason() {
    let error = SpawnError::new(SpawnStage::Exec, libc::ENOENT);
    let text = error.to_string();
    assert!(text.contains("exec"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    for stage in SpawnStage::ALL {
        assert_eq!(SpawnStage::from_u32(stage as u32), Some(stage));
    }
    assert_eq!(SpawnStage::from_u32(0), None);
    // The report carries a limit failure's resource, and the text names it.
    let nofile =
        SpawnError::with_detail(SpawnStage::Rlimit, libc::EPERM, libc::RLIMIT_NOFILE as u16);
    let decoded = SpawnError::from_report(nofile.to_report());
    assert_eq!(decoded, nofile);
    assert_eq!(decoded.resource(), Some("nofile"));
    assert!(decoded.to_string().contains("rlimit (nofile)"), "{decoded}");
    for stage in SpawnStage::ALL {
        let plain = SpawnError::new(stage, libc::EIO);
        assert_eq!(SpawnError::from_report(plain.to_report()), plain);
    }
    let debug = format!(
        "{:?}",
        SpawnSpec::new(&[b"/bin/x"], &[b"SECRET=hunter2"], None).unwrap()
    );
    assert!(!debug.contains("hunter2"), "{debug}");
}

// --- launchers: CLONE_VM | CLONE_VFORK | CLONE_FILES ------------------------------------

fn launcher() -> Launcher {
    Launcher::set(1)
        .unwrap()
        .expect("close_range (5.9+) on the test machine")
        .pop()
        .unwrap()
}

/// The child's open fds once it has settled: right after `execve` the dynamic loader of
/// `/bin/sleep` holds `ld.so.cache` and its libraries open for a moment, so the listing is
/// taken again until it shows only 0-2, for at most 5 s (a leaked fd stays and fails).
fn child_fds(pid: libc::pid_t) -> Vec<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort();
        if fds == [0, 1, 2] || std::time::Instant::now() > deadline {
            return fds;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_launcher_spawns_reports_exec_errors_and_leaks_no_fd() {
    let mut l = launcher();
    let spawned = l.spawn(&spec(&[b"/bin/true"])).unwrap();
    assert!(poll_readable(&spawned.pidfd, POLL_TIMEOUT_MS));
    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
    let dir = TempDir::new("launcher");
    let missing = dir.0.join("missing");
    match l.spawn(&spec(&[missing.as_os_str().as_bytes()])) {
        Err(error) => assert_eq!(error, SpawnError::new(SpawnStage::Exec, libc::ENOENT)),
        Ok(spawned) => panic!("spawned {}", spawned.pid),
    }
    let cwd = SpawnSpec::new(
        &[b"/bin/true"],
        &[] as &[&[u8]],
        Some(missing.as_os_str().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        l.spawn(&cwd).unwrap_err(),
        SpawnError::new(SpawnStage::Chdir, libc::ENOENT)
    );
    // Fds without CLOEXEC, many of them: the child starts on the parent's table and keeps
    // none but 0-2.
    // SAFETY: opens of a constant path; closed below.
    let leaked: Vec<c_int> = (0..300)
        .map(|_| unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) })
        .collect();
    let child = Child(l.spawn(&spec(&[b"/bin/sleep", b"1000"])).unwrap());
    let fds = child_fds(child.0.pid);
    for fd in leaked {
        // SAFETY: closing the fds opened above.
        unsafe { libc::close(fd) };
    }
    assert_eq!(fds, [0, 1, 2], "child fds");
    // The parent's table is untouched: its reserved number is /dev/null again.
    let reserved = l.reserved.as_raw_fd();
    assert_eq!(
        std::fs::read_link(format!("/proc/self/fd/{reserved}")).unwrap(),
        Path::new("/dev/null")
    );
}

/// Every signal's disposition in `pid` is the default: none ignored, none caught.
fn assert_dispositions_default(pid: libc::pid_t, path: &str) {
    for field in ["SigIgn:", "SigCgt:"] {
        assert_eq!(
            proc_status_field(pid, field),
            "0000000000000000",
            "{path}: {field}"
        );
    }
}

/// Spawns `sleep 1000` the way `path` names, and checks the child's dispositions (a gated
/// child before its release: it did its set-up, signals included, before the gate).
fn check_dispositions_of_a_spawn(path: &str, launcher: &mut Launcher) {
    let sleeper = spec(&[b"/bin/sleep", b"1000"]);
    match path {
        "spawn" => assert_dispositions_default(Child(spawn(&sleeper).unwrap()).0.pid, path),
        "launcher" => {
            assert_dispositions_default(Child(launcher.spawn(&sleeper).unwrap()).0.pid, path)
        }
        _ => {
            let gated = spawn_gated(&sleeper).unwrap();
            assert_dispositions_default(gated.pid, path);
            let pidfd = gated.pidfd.try_clone().unwrap();
            gated.abort();
            assert!(poll_readable(&pidfd, 0));
        }
    }
}

#[test]
fn every_spawn_path_gives_the_child_every_disposition_default_even_after_a_change() {
    use crate::sys::signal::{set_disposition, Disposition};
    let mut l = launcher();
    for path in ["spawn", "gated", "launcher"] {
        // The Rust runtime ignores SIGPIPE here: the child resets it, also when the answer
        // comes from the last look (the second spawn).
        check_dispositions_of_a_spawn(path, &mut l);
        check_dispositions_of_a_spawn(path, &mut l);
        // A disposition changed after the last look: seen at the next spawn.
        set_disposition(libc::SIGURG, Disposition::Ignore).unwrap();
        check_dispositions_of_a_spawn(path, &mut l);
        set_disposition(libc::SIGURG, Disposition::Default).unwrap();
    }
    // The mask names exactly what is not default.
    let mask = crate::sys::spawn::signals_to_reset();
    assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0);
    assert_eq!(mask & (1 << (libc::SIGURG - 1)), 0);
    assert_eq!(mask & (1 << (libc::SIGKILL - 1)), 0);
}

#[test]
fn launchers_in_parallel_threads_keep_their_reports_apart() {
    let set = Launcher::set(4).unwrap().expect("close_range");
    let threads: Vec<_> = set
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            std::thread::spawn(move || {
                let ok = spec(&[b"/bin/true"]);
                let bad = spec(&[b"/nonexistent/holden-launcher-test"]);
                for round in 0..50 {
                    if (round + i) % 3 == 0 {
                        assert_eq!(
                            l.spawn(&bad).unwrap_err(),
                            SpawnError::new(SpawnStage::Exec, libc::ENOENT)
                        );
                    } else {
                        let spawned = l.spawn(&ok).unwrap();
                        assert!(poll_readable(&spawned.pidfd, POLL_TIMEOUT_MS));
                        assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

// --- output fds ----------------------------------------------------------------------------

/// Everything written to a pipe until every write end is closed.
fn read_to_end(read: OwnedFd) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::from(read).read_to_end(&mut out).unwrap();
    out
}

fn shell_writes_both_streams() -> SpawnSpec {
    spec(&[
        b"/bin/sh",
        b"-c",
        b"echo to-stdout; echo to-stderr >&2; ls /proc/self/fd",
    ])
}

#[test]
fn output_fds_go_on_stdout_and_stderr_and_nothing_else_leaks() {
    let mut l = launcher();
    for use_launcher in [true, false] {
        let (out_r, out_w) = crate::sys::fd::pipe().unwrap();
        let (err_r, err_w) = crate::sys::fd::pipe().unwrap();
        let output = Output {
            stdout: Some(out_w.as_fd()),
            stderr: Some(err_w.as_fd()),
            extra: None,
        };
        let spec = shell_writes_both_streams();
        let spawned = if use_launcher {
            l.spawn_with(&spec, output).unwrap()
        } else {
            spawn_with(&spec, output).unwrap()
        };
        drop((out_w, err_w));
        assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
        let out = String::from_utf8(read_to_end(out_r)).unwrap();
        // `ls` lists 0, 1, 2 and its own directory fd: nothing of the parent's.
        assert_eq!(out, "to-stdout\n0\n1\n2\n3\n", "launcher={use_launcher}");
        assert_eq!(read_to_end(err_r), b"to-stderr\n");
    }
    // The launcher's reserved numbers are /dev/null again: it holds no copy of the pipes.
    for fd in &l.reserved_out {
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap(),
            Path::new("/dev/null")
        );
    }
    // Only one stream given: the other is inherited.
    let (out_r, out_w) = crate::sys::fd::pipe().unwrap();
    let only = Output {
        stdout: Some(out_w.as_fd()),
        stderr: None,
        extra: None,
    };
    let spawned = l
        .spawn_with(&spec(&[b"/bin/sh", b"-c", b"echo one"]), only)
        .unwrap();
    drop(out_w);
    assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
    assert_eq!(read_to_end(out_r), b"one\n");
}

/// `Output::extra` puts the caller's fd on the child's own number (s6's notification fd),
/// whatever that number holds in the spawner: a reserved number of the launcher (its report
/// pipe's included), a low or a high one; and nothing else of the parent's reaches the child.
/// A failure after the report pipe moved off that number still comes back as an error.
#[test]
fn an_extra_fd_lands_on_its_number_and_nothing_else_leaks() {
    let mut l = launcher();
    let mut targets = vec![3, 4, 5, 9, 100];
    targets.push(l.reserved.as_raw_fd());
    targets.extend(l.reserved_out.iter().map(|fd| fd.as_raw_fd()));
    targets.push(l.first);
    for use_launcher in [true, false] {
        for &n in &targets {
            let (out_r, out_w) = crate::sys::fd::pipe().unwrap();
            let (ready_r, ready_w) = crate::sys::fd::pipe().unwrap();
            let output = Output {
                stdout: Some(out_w.as_fd()),
                stderr: None,
                extra: Some((ready_w.as_fd(), n)),
            };
            // bash: dash takes only single-digit fds in a redirection.
            let script = format!("echo ready >&{n}; ls /proc/self/fd");
            let spec = spec(&[b"/bin/bash", b"-c", script.as_bytes()]);
            let spawned = if use_launcher {
                l.spawn_with(&spec, output).unwrap()
            } else {
                spawn_with(&spec, output).unwrap()
            };
            drop((out_w, ready_w));
            let status = wait_exit(&spawned.pidfd);
            let out = String::from_utf8(read_to_end(out_r)).unwrap();
            assert_eq!(
                status,
                (libc::CLD_EXITED, 0),
                "launcher={use_launcher} n={n} {out}"
            );
            assert_eq!(
                read_to_end(ready_r),
                b"ready\n",
                "launcher={use_launcher} n={n}"
            );
            // 0, 1, 2, n and `ls`'s own directory fd (the lowest free number): nothing else.
            let mut listed: Vec<i32> = out.lines().map(|l| l.parse().unwrap()).collect();
            listed.sort_unstable();
            let dir_fd = if n == 3 { 4 } else { 3 };
            let mut expected = vec![0, 1, 2, n, dir_fd];
            expected.sort_unstable();
            assert_eq!(listed, expected, "launcher={use_launcher} n={n}");
        }
        // The report pipe sat on the number: a failed exec is still reported.
        let n = if use_launcher {
            l.reserved.as_raw_fd()
        } else {
            3
        };
        let (_ready_r, ready_w) = crate::sys::fd::pipe().unwrap();
        let output = Output {
            stdout: None,
            stderr: None,
            extra: Some((ready_w.as_fd(), n)),
        };
        let missing = spec(&[b"/nonexistent/holden-extra-fd"]);
        let error = if use_launcher {
            l.spawn_with(&missing, output).unwrap_err()
        } else {
            spawn_with(&missing, output).unwrap_err()
        };
        assert_eq!(
            (error.stage, error.errno),
            (SpawnStage::Exec, libc::ENOENT),
            "launcher={use_launcher}"
        );
    }
    for fd in &l.reserved_out {
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap(),
            Path::new("/dev/null")
        );
    }
}

/// `ExecEnv::watchdog_pid`: the child's environment has `WATCHDOG_PID=` its own pid, in place
/// of one the spec has, and the rest unchanged; without it nothing is added.
#[test]
fn watchdog_pid_is_the_childs_own_pid() {
    let mut l = launcher();
    let env: &[&[u8]] = &[b"A=1", b"WATCHDOG_PID=1", b"B=2"];
    let script: &[&[u8]] = &[b"/bin/sh", b"-c", b"echo $$; env | sort"];
    for use_launcher in [true, false] {
        for on in [true, false] {
            let mut spec = SpawnSpec::new(script, env, None).unwrap();
            spec.set_exec_env(ExecEnv {
                watchdog_pid: on,
                ..ExecEnv::default()
            });
            let (out_r, out_w) = crate::sys::fd::pipe().unwrap();
            let output = Output {
                stdout: Some(out_w.as_fd()),
                stderr: None,
                extra: None,
            };
            let spawned = if use_launcher {
                l.spawn_with(&spec, output).unwrap()
            } else {
                spawn_with(&spec, output).unwrap()
            };
            drop(out_w);
            assert_eq!(wait_exit(&spawned.pidfd), (libc::CLD_EXITED, 0));
            let out = String::from_utf8(read_to_end(out_r)).unwrap();
            let mut lines = out.lines();
            let pid = lines.next().unwrap();
            assert_eq!(pid, spawned.pid.to_string());
            let env: Vec<&str> = lines.filter(|l| !l.starts_with("PWD=")).collect();
            let expected = if on {
                vec![
                    "A=1".to_string(),
                    "B=2".into(),
                    format!("WATCHDOG_PID={pid}"),
                ]
            } else {
                vec!["A=1".to_string(), "B=2".into(), "WATCHDOG_PID=1".into()]
            };
            assert_eq!(env, expected, "launcher={use_launcher} on={on}");
        }
    }
}
