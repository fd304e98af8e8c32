//! Nothing outside the orchestrator stalls its event loop: not a local spawn whose exec
//! stalls, not a log stream that nobody reads.
//!
//! The exec stall is real: the program lives on a FUSE filesystem served by this test (the
//! raw protocol on `/dev/fuse`, enough for `execve`), which holds the first read of the
//! program's bytes for 5 s. The kernel's `execve` waits in that read, so the spawn cannot
//! finish until the read is answered. Meanwhile another local service must go on being
//! restarted and `holdenctl status` must answer; then the read is answered and the stalled
//! spawn completes. The mount is made inside the orchestrator's own mount namespace
//! (created between fork and exec of the orchestrator), so it is seen only by the
//! orchestrator and its services and vanishes with them: nothing is left mounted, even if
//! the test fails.
//!
//! The log stall is a real full pipe: the orchestrator's stderr, one page, unread for 3 s.

mod orchestrator_support;

use orchestrator_support::*;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the program's first read is held.
const STALL: Duration = Duration::from_secs(5);
/// The crash-looping service's restart delay: about 20 restarts a second when the loop runs.
const LOOP_DELAY_MS: u64 = 50;
/// Restarts the looping service must reach during the stall (100 at its normal rate, none if
/// the loop were held by the stalled spawn).
const LOOP_RESTARTS_MIN: usize = 20;

/// The served file: a copy of a real program, read from the FUSE mount as `NAME`.
const NAME: &[u8] = b"sleep";
const ROOT_NODE: u64 = 1;
const FILE_NODE: u64 = 2;

// Opcodes and sizes of the FUSE protocol (include/uapi/linux/fuse.h).
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
const ATTR_LEN: usize = 88;

/// What the filesystem thread tells the test.
enum Served {
    /// The first read of the program arrived and is being held.
    Holding,
}

/// `fuse_attr` of a node.
fn attr(node: u64, size: u64) -> [u8; ATTR_LEN] {
    let mut a = [0u8; ATTR_LEN];
    let mode: u32 = if node == ROOT_NODE {
        libc::S_IFDIR | 0o755
    } else {
        libc::S_IFREG | 0o755
    };
    a[0..8].copy_from_slice(&node.to_le_bytes()); // ino
    a[8..16].copy_from_slice(&size.to_le_bytes()); // size
    a[16..24].copy_from_slice(&size.div_ceil(512).to_le_bytes()); // blocks
    a[60..64].copy_from_slice(&mode.to_le_bytes());
    a[64..68].copy_from_slice(&1u32.to_le_bytes()); // nlink
    a[80..84].copy_from_slice(&4096u32.to_le_bytes()); // blksize
    a
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn reply(dev: &mut File, unique: u64, error: i32, body: &[u8]) {
    let mut out = Vec::with_capacity(OUT_HEADER_LEN + body.len());
    out.extend_from_slice(&((OUT_HEADER_LEN + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(-error).to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(body);
    // ENOENT: the request was interrupted meanwhile (its process was killed).
    let _ = dev.write_all(&out);
}

/// Serves `content` as the one file of the filesystem until the connection ends (the mount
/// namespace is gone). The first read of the file is answered only when `release` says so.
fn serve(
    mut dev: File,
    content: Vec<u8>,
    served: mpsc::Sender<Served>,
    release: mpsc::Receiver<()>,
) {
    let mut buf = vec![0u8; 1 << 20];
    let mut held = false;
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // ENODEV: unmounted.
            Err(_) => return,
        };
        let req = &buf[..n];
        if n < IN_HEADER_LEN {
            continue;
        }
        let opcode = u32_at(req, 4);
        let unique = u64_at(req, 8);
        let node = u64_at(req, 16);
        let body = &req[IN_HEADER_LEN..];
        match opcode {
            FUSE_INIT => {
                let mut out = [0u8; 64];
                out[0..4].copy_from_slice(&7u32.to_le_bytes()); // major
                out[4..8].copy_from_slice(&31u32.to_le_bytes()); // minor
                out[8..12].copy_from_slice(&body[8..12]); // max_readahead as asked
                out[16..18].copy_from_slice(&16u16.to_le_bytes()); // max_background
                out[18..20].copy_from_slice(&12u16.to_le_bytes()); // congestion_threshold
                out[20..24].copy_from_slice(&4096u32.to_le_bytes()); // max_write
                out[24..28].copy_from_slice(&1u32.to_le_bytes()); // time_gran
                reply(&mut dev, unique, 0, &out);
            }
            FUSE_LOOKUP => {
                let name = body.split(|&b| b == 0).next().unwrap_or(&[]);
                if node != ROOT_NODE || name != NAME {
                    reply(&mut dev, unique, libc::ENOENT, &[]);
                    continue;
                }
                let mut out = Vec::with_capacity(40 + ATTR_LEN);
                out.extend_from_slice(&FILE_NODE.to_le_bytes());
                out.extend_from_slice(&[0u8; 32]); // generation, entry/attr validity
                out.extend_from_slice(&attr(FILE_NODE, content.len() as u64));
                reply(&mut dev, unique, 0, &out);
            }
            FUSE_GETATTR => {
                let mut out = Vec::with_capacity(16 + ATTR_LEN);
                out.extend_from_slice(&[0u8; 16]); // attr validity
                out.extend_from_slice(&attr(node, content.len() as u64));
                reply(&mut dev, unique, 0, &out);
            }
            FUSE_OPEN => reply(&mut dev, unique, 0, &[0u8; 16]),
            FUSE_READ => {
                if !held {
                    held = true;
                    let _ = served.send(Served::Holding);
                    // The stall: nothing else is served until the test releases it.
                    let _ = release.recv();
                }
                let offset = (u64_at(body, 8) as usize).min(content.len());
                let size = u32_at(body, 16) as usize;
                let end = offset.saturating_add(size).min(content.len());
                reply(&mut dev, unique, 0, &content[offset..end]);
            }
            FUSE_RELEASE | FUSE_FLUSH => reply(&mut dev, unique, 0, &[]),
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => {}
            // GETXATTR (security.capability during exec), ACCESS, STATFS, ...: not offered.
            _ => reply(&mut dev, unique, libc::ENOSYS, &[]),
        }
    }
}

/// Has the orchestrator start in a mount namespace of its own with the FUSE connection `dev`
/// mounted at `at`.
fn mount_before_exec(cmd: &mut Command, dev: RawFd, at: &Path) {
    let target = CString::new(at.as_os_str().as_bytes()).unwrap();
    let options = CString::new(format!(
        "fd={dev},rootmode=40000,user_id=0,group_id=0,allow_other"
    ))
    .unwrap();
    // SAFETY: the closure runs in the forked child before exec and calls only the kernel
    // (unshare, mount) with strings prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing mounted below may propagate back to the test's namespace.
            let private = libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            if private != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mounted = libc::mount(
                c"holden-test".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            );
            if mounted != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A field of `name` in `holdenctl status NAME --json` (the answer must come).
fn status_field(socket: &Path, name: &str, key: &str) -> String {
    let (code, out) = holdenctl_text(socket, &["status", name, "--json"]);
    assert_eq!(code, 0, "status {name}: {out}");
    let needle = format!("\"{key}\":");
    let at = out.find(&needle).expect(key) + needle.len();
    out[at..]
        .trim_start_matches('"')
        .split(['"', ',', '}'])
        .next()
        .unwrap()
        .to_string()
}

fn state_of(socket: &Path, name: &str) -> String {
    status_field(socket, name, "state")
}

#[test]
fn an_exec_stalled_on_a_fuse_read_holds_neither_the_loop_nor_other_spawns() {
    let dir = TempDir::new("spawn-stall");
    let mount = dir.path("fuse");
    std::fs::create_dir(&mount).unwrap();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse (the FUSE module; this test needs root)");
    let program = PathBuf::from("/bin/sleep");
    let content = std::fs::read(&program).unwrap();

    let control = dir.path("control.sock");
    let stalled_marker = sleep_marker("6801");
    let cfg = config_header(&dir.path("no-agent.sock"))
        + &service(
            "stalled",
            "local",
            &[mount.join("sleep").to_str().unwrap(), &stalled_marker],
            "restart = \"never\"",
        )
        + &service(
            "looper",
            "local",
            &["/bin/true"],
            &format!(
                "restart = \"always\"\nrestart_delay = \"{LOOP_DELAY_MS}ms\"\n\
                 start_limit = {{ burst = 0, interval = \"0s\" }}"
            ),
        );
    std::fs::write(dir.path("orchestrator.toml"), cfg).unwrap();
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg("--config")
        .arg(dir.path("orchestrator.toml"))
        .arg("--runtime-dir")
        .arg(dir.path("run"))
        .env_remove("NOTIFY_SOCKET");
    mount_before_exec(&mut cmd, dev.as_raw_fd(), &mount);
    let mut orch = Orch::spawn(&dir, cmd);
    // Served from now on: before the mount, reading the device fails (EPERM). Declared after
    // `orch`, `release` is dropped first if the test fails: the held read is answered, and
    // the orchestrator can shut down.
    let (served_tx, served) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let server_dev = dev.try_clone().unwrap();
    let server = std::thread::spawn(move || serve(server_dev, content, served_tx, release_rx));

    // The exec is in the kernel, waiting for the held read.
    let held = served.recv_timeout(WAIT);
    assert!(
        matches!(held, Ok(Served::Holding)),
        "the program's first read never came: {}",
        orch.log()
    );
    let stall_start = Instant::now();
    let looper_before = orch
        .lines_with(&["service=looper ", "reason=spawned"])
        .len();
    let mut answers = 0;
    while stall_start.elapsed() < STALL {
        assert_eq!(state_of(&control, "stalled"), "starting");
        answers += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let looper_during = orch
        .lines_with(&["service=looper ", "reason=spawned"])
        .len()
        - looper_before;
    assert!(
        orch.lines_with(&["service=stalled ", "reason=spawned"])
            .is_empty(),
        "the stalled spawn finished during the stall: {}",
        orch.log()
    );
    release.send(()).unwrap();

    // The stalled spawn completes: the program runs, from the FUSE mount.
    let running = orch.wait_lines(&["service=stalled ", "reason=spawned"], 1);
    let pid: i32 = field(&running[0], "spawned_pid").unwrap().parse().unwrap();
    assert!(has_argument(pid, &stalled_marker), "{}", running[0]);
    assert_eq!(state_of(&control, "stalled"), "running");

    eprintln!(
        "during a {STALL:?} exec stall: {answers} status answers, {looper_during} restarts \
         of the looping service ({LOOP_DELAY_MS} ms delay)"
    );
    assert!(
        looper_during >= LOOP_RESTARTS_MIN,
        "the looping service was restarted {looper_during} times during the stall: {}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
    drop(dev);
    // The mount went with the orchestrator's namespace: the connection ends.
    server.join().unwrap();
}

#[test]
fn a_log_stream_nobody_reads_does_not_hold_the_loop() {
    let dir = TempDir::new("log-stall");
    let control = dir.path("control.sock");
    let cfg = "log_level = \"debug\"\n".to_string()
        + &config_header(&dir.path("no-agent.sock"))
        + &service(
            "looper",
            "local",
            &["/bin/true"],
            // As fast as it goes: thousands of lines a second, far more than the log's ring.
            "restart = \"always\"\nrestart_delay = \"0s\"\n\
             start_limit = { burst = 0, interval = \"0s\" }",
        );
    std::fs::write(dir.path("orchestrator.toml"), cfg).unwrap();
    let (read_end, write_end) = std::io::pipe().unwrap();
    // One page: a few dozen lines fill it.
    // SAFETY: F_SETPIPE_SZ on a pipe this test owns; no memory is passed.
    let sized = unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        sized >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg("--config")
        .arg(dir.path("orchestrator.toml"))
        .arg("--runtime-dir")
        .arg(dir.path("run"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(write_end)
        .process_group(0);
    let child = cmd.spawn().expect("spawn holden-orchestrator");
    // The command holds the pipe's write end: the reader sees end of file only without it.
    drop(cmd);
    // Nothing is ever written to this path: the log is the pipe.
    let mut orch = Orch {
        child,
        log_path: dir.path("unused.log"),
    };

    // The pipe fills within the first restarts; then nobody reads it for 3 s.
    let restarts = || -> u32 {
        status_field(&control, "looper", "restarts")
            .parse()
            .unwrap()
    };
    wait_until("the control socket", || control.exists().then_some(()));
    let before = restarts();
    let unread_start = Instant::now();
    let mut answers = 0;
    while unread_start.elapsed() < Duration::from_secs(3) {
        restarts();
        answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = restarts() - before;

    // Read it now: the lines that did not fit were dropped, and the count is reported.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut read_end = read_end;
        let _ = read_end.read_to_string(&mut text);
        text
    });
    assert!(orch.stop(libc::SIGTERM).success());
    let text = reader.join().unwrap();
    let dropped: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("<4>event=log-dropped lines="))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    eprintln!(
        "while the log was unread for 3 s: {answers} status answers, {during} restarts, \
         {dropped} log lines dropped"
    );
    assert!(
        during as usize >= LOOP_RESTARTS_MIN,
        "the looping service was restarted {during} times while the log was unread"
    );
    assert!(dropped > 0, "the drops are reported: {text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("event=shutdown-complete")),
        "the last lines are written at exit: {text}"
    );
}
