//! The benchmark programs against real processes: the probe's records, the floor loops'
//! counts, and that nothing is left behind.

use holden_bench::{
    KIND_EXIT, KIND_IDLE, KIND_LAUNCH, KIND_READY, LAUNCH_SERVICE, RECORD_BYTES, RECORD_MAGIC,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PROBE: &str = env!("CARGO_BIN_EXE_bench-probe");
const FLOOR: &str = env!("CARGO_BIN_EXE_bench-floor");
const FLOOR_SCALE: &str = env!("CARGO_BIN_EXE_bench-floor-scale");
const BOOT_SERVICE: &str = env!("CARGO_BIN_EXE_bench-boot-service");
const LAUNCH: &str = env!("CARGO_BIN_EXE_bench-launch");
/// Generous bound on waits (not a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(format!(
            "/tmp/holden-bench-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (service, pid, kind, start, end) of every record.
fn records(path: &Path) -> Vec<(u32, i32, u32, u64, u64)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    assert_eq!(bytes.len() % RECORD_BYTES, 0);
    bytes
        .chunks(RECORD_BYTES)
        .map(|c| {
            let u32_at = |a: usize| u32::from_ne_bytes(c[a..a + 4].try_into().unwrap());
            let u64_at = |a: usize| u64::from_ne_bytes(c[a..a + 8].try_into().unwrap());
            assert_eq!(u32_at(0), RECORD_MAGIC);
            (
                u32_at(4),
                u32_at(8) as i32,
                u32_at(12),
                u64_at(16),
                u64_at(24),
            )
        })
        .collect()
}

/// Live processes whose arguments mention `marker`.
fn pids_with(marker: &Path) -> Vec<i32> {
    let marker = marker.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != std::process::id() as i32)
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        })
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn the_probe_writes_one_exit_record_and_exits_0() {
    let dir = TempDir::new("probe");
    let rec = dir.0.join("r.rec");
    let status = Command::new(PROBE)
        .arg(&rec)
        .args(["42", "exit"])
        .status()
        .unwrap();
    assert!(status.success());
    let r = records(&rec);
    assert_eq!(r.len(), 1);
    let (service, pid, kind, start, end) = r[0];
    assert_eq!((service, kind), (42, KIND_EXIT));
    assert!(pid > 0 && start > 0 && end >= start);
}

#[test]
fn the_probe_refuses_bad_arguments() {
    let dir = TempDir::new("probe-bad");
    let rec = dir.0.join("r.rec");
    for args in [
        vec![],
        vec!["x"],
        vec!["1x", "exit"],
        vec!["99999999999", "exit"],
        vec!["1", "sleep"],
    ] {
        let status = Command::new(PROBE).arg(&rec).args(&args).status().unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
    let status = Command::new(PROBE)
        .args(["/nonexistent-dir/r.rec", "1", "exit"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(records(&rec).is_empty());
}

#[test]
fn the_floor_loop_restarts_the_probe_count_times_one_at_a_time() {
    let dir = TempDir::new("floor");
    let rec = dir.0.join("r.rec");
    for extra in [
        &[][..],
        &["--spawn", "fork"],
        &["--spawn", "launcher", "--ballast-fds", "64"],
        &[
            "--spawn",
            "fork",
            "--ballast-kib",
            "64",
            "--ballast-fds",
            "64",
        ],
    ] {
        let _ = std::fs::remove_file(&rec);
        let out = Command::new(FLOOR)
            .args(["--probe", PROBE, "--records"])
            .arg(&rec)
            .args(["--count", "50"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{extra:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("spawned=50 cpu_ns="), "{text}");
        let mut r = records(&rec);
        assert_eq!(r.len(), 50);
        r.sort_by_key(|x| x.3);
        for pair in r.windows(2) {
            assert!(pair[1].3 >= pair[0].4, "two instances at once: {pair:?}");
        }
    }
    assert!(pids_with(&dir.0).is_empty());
}

#[test]
fn the_floor_loop_refuses_misuse() {
    for args in [
        &["--probe", PROBE][..],
        &["--probe", PROBE, "--records", "/tmp/x", "--count", "0"],
        &[
            "--probe",
            PROBE,
            "--records",
            "/tmp/x",
            "--count",
            "1",
            "--spawn",
            "vfork",
        ],
        &["--bogus"],
    ] {
        let status = Command::new(FLOOR).args(args).status().unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn the_scale_floor_keeps_idle_probes_up_restarts_the_others_and_cleans_up_on_sigterm() {
    let dir = TempDir::new("floor-scale");
    let rec = dir.0.join("r.rec");
    let mut child = Command::new(FLOOR_SCALE)
        .args(["--probe", PROBE, "--records"])
        .arg(&rec)
        .args(["--services", "6", "--crashing", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let r = records(&rec);
        let crashing = r.iter().filter(|x| x.2 == KIND_EXIT).count();
        let idle = r.iter().filter(|x| x.2 == KIND_IDLE).count();
        if crashing >= 40 && idle == 4 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{crashing} exits, {idle} idle");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Four idle probes are up (plus at most the two crashing ones between spawn and exit).
    let live = pids_with(&dir.0);
    assert!(live.len() >= 4, "{live:?}");
    // SAFETY: kill(2) with plain integers, on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "bench-floor-scale ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(out.success());
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.starts_with("spawned="), "{text}");
    let r = records(&rec);
    // Idle services were started once each, never again.
    for id in 2..6 {
        assert_eq!(r.iter().filter(|x| x.0 == id).count(), 1);
    }
    assert!(pids_with(&dir.0).is_empty(), "children left behind");
}

#[test]
fn the_boot_service_says_ready_after_its_delay_records_it_and_stays_up() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("boot");
    let rec = dir.0.join("r.rec");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut child = Command::new(BOOT_SERVICE)
        .arg(&rec)
        .args(["7", "30"])
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let deadline = Instant::now() + WAIT;
    while records(&rec).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = records(&rec);
    assert_eq!(r.len(), 1);
    let (service, pid, kind, start, end) = r[0];
    assert_eq!((service, kind, pid), (7, KIND_READY, child.id() as i32));
    assert!(end - start >= 30_000_000, "ready after {} ns", end - start);
    assert!(
        child.try_wait().unwrap().is_none(),
        "it stays up once ready"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_boot_service_refuses_misuse_and_a_missing_notify_socket() {
    let dir = TempDir::new("boot-bad");
    let rec = dir.0.join("r.rec");
    for args in [vec![], vec!["1"], vec!["x", "20"], vec!["1", "99999999"]] {
        let status = Command::new(BOOT_SERVICE)
            .arg(&rec)
            .args(&args)
            .env("NOTIFY_SOCKET", dir.0.join("n.sock"))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
    let status = Command::new(BOOT_SERVICE)
        .arg(&rec)
        .args(["1", "0"])
        .env_remove("NOTIFY_SOCKET")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(4));
    // Nobody listens on the socket: the send fails.
    let status = Command::new(BOOT_SERVICE)
        .arg(&rec)
        .args(["1", "0"])
        .env("NOTIFY_SOCKET", dir.0.join("n.sock"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(4));
    assert!(records(&rec).is_empty());
}

#[test]
fn launch_records_the_instant_and_becomes_the_program() {
    let dir = TempDir::new("launch");
    let rec = dir.0.join("r.rec");
    let before = std::time::SystemTime::now();
    let child = Command::new(LAUNCH)
        .arg(&rec)
        .args(["/bin/sh", "-c", "echo $$; exit 7"])
        .output()
        .unwrap();
    assert!(before.elapsed().unwrap() < WAIT);
    assert_eq!(child.status.code(), Some(7));
    let r = records(&rec);
    assert_eq!(r.len(), 1);
    let (service, pid, kind, start, end) = r[0];
    assert_eq!((service, kind), (LAUNCH_SERVICE, KIND_LAUNCH));
    assert!(start > 0 && start == end);
    // The same process: the shell's pid is the one bench-launch recorded.
    let shell_pid: i32 = String::from_utf8_lossy(&child.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(shell_pid, pid);
    let status = Command::new(LAUNCH).arg(&rec).status().unwrap();
    assert_eq!(status.code(), Some(2));
    let status = Command::new(LAUNCH)
        .arg(&rec)
        .arg(dir.0.join("no-such-program"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(4));
}
