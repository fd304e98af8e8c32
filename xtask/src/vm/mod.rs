//! `cargo xtask vm-test`: the static binaries on a booted distribution kernel under QEMU.
//!
//! The guest is an initramfs written here ([`cpio`]): a static busybox, the x86_64 musl
//! binaries of `cargo xtask dist`, a configuration and `init.sh` as PID 1. The kernel is
//! Debian's ([`kernel`]), older than 6.15, so the orchestrator's fallbacks for missing pidfd
//! features run. The guest prints its checks on the serial console (a file); the host
//! asserts on them and on the orchestrator's log lines, and prints the whole console on any
//! miss.

mod cpio;
mod kernel;

use crate::run::{self, Failure};
use crate::{dist, elf};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HELP: &str = "\
cargo xtask vm-test [--kvm] [--kernel PATH] [--timeout SECONDS] [--keep]

Boots the x86_64 static musl binaries (cargo xtask dist) in QEMU on Debian's kernel
(linux-image-amd64, fetched once with apt-get download into target/vm/) with a busybox
initramfs. Inside: holden-agent as PID 2 of its own PID + mount namespace (the QM stand-in,
under a shell loop as PID 1), holden-orchestrator outside with a local, a QM and a
crash-looping service. Checks: each service killed and restarted, the crash loop backing
off to its start limit, the agent killed while the QM service keeps running and is
still supervised after the reconnect, holdenctl status (when holdenctl has it), a clean
shutdown. Fails with the console log on any miss.

Needs: qemu-system-x86 and busybox-static (apt-get install qemu-system-x86 busybox-static).

Options:
  --kvm             use KVM (default: TCG; a KVM guest hung on the project's machines)
  --kernel PATH     boot this kernel instead of Debian's
  --timeout SECONDS hard limit for the guest (default 240)
  --keep            keep target/vm/run-<pid>/ (initramfs, console log) after success
";

/// Default hard limit for one guest run.
const TIMEOUT_S_DEFAULT: u64 = 240;
/// Largest accepted --timeout.
const TIMEOUT_S_MAX: u64 = 3600;
/// Guest memory.
const GUEST_MEMORY_MIB: u32 = 512;
/// First kernel with PIDFD_INFO_EXIT: older ones exercise the fallbacks.
const PIDFD_INFO_EXIT_KERNEL: (u32, u32) = (6, 15);

const INIT_SCRIPT: &str = include_str!("init.sh");
const VM_CONFIG: &str = include_str!("vm.toml");

/// Steps the guest must report as passed, in order.
pub const STEPS: [&str; 8] = [
    "started",
    "local-restart",
    "qm-restart",
    "exit-status",
    "agent-restart",
    "qm-restart-after-reconnect",
    "crash-loop",
    "shutdown",
];

struct Options {
    kvm: bool,
    kernel: Option<PathBuf>,
    timeout: Duration,
    keep: bool,
}

pub fn main(args: &[String]) -> Result<(), Failure> {
    let Some(opts) = parse(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let root = run::workspace_root();
    let qemu = "qemu-system-x86_64";
    if !run::succeeds(qemu, &["--version"]) {
        return Err(Failure::Failed(format!(
            "{qemu} not found: apt-get install qemu-system-x86"
        )));
    }
    if opts.kvm && !Path::new("/dev/kvm").exists() {
        return Err(Failure::Failed(
            "--kvm: /dev/kvm does not exist here; run without --kvm (TCG)".into(),
        ));
    }
    let busybox = static_busybox()?;
    let binaries = dist::build(&root, "x86_64")?;
    let cache = dist::target_dir(&root).join("vm");
    std::fs::create_dir_all(&cache)
        .map_err(|e| Failure::Failed(format!("{}: {e}", cache.display())))?;
    let kernel = match &opts.kernel {
        Some(k) => k.clone(),
        None => kernel::ensure(&cache)?,
    };
    if let Some(v) = kernel::version_of(&kernel) {
        let note = if v < PIDFD_INFO_EXIT_KERNEL {
            "older than 6.15: the fallbacks for missing PIDFD_INFO_EXIT run"
        } else {
            "6.15 or newer: the fallbacks for missing pidfd features do NOT run"
        };
        eprintln!("kernel {} ({}.{}): {note}", kernel.display(), v.0, v.1);
    }
    let work = cache.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(|e| Failure::Failed(format!("{}: {e}", work.display())))?;
    let initramfs = work.join("initramfs.cpio");
    let bytes = initramfs_bytes(&busybox, &binaries)?;
    std::fs::write(&initramfs, &bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", initramfs.display())))?;
    eprintln!(
        "initramfs {} ({} KiB)",
        initramfs.display(),
        bytes.len() / 1024
    );
    let console = work.join("console.log");
    let started = Instant::now();
    let outcome = boot(qemu, &kernel, &initramfs, &console, &opts);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let verdict = outcome.and_then(|()| check_console(&text));
    match verdict {
        Ok(report) => {
            for line in &report {
                println!("  {line}");
            }
            println!(
                "vm-test passed in {:.1} s (kernel {})",
                started.elapsed().as_secs_f64(),
                kernel.display()
            );
            // The plain closing line CI reads: N passed, N failed[, N skipped].
            let passed = report.iter().filter(|l| l.starts_with("passed: ")).count();
            let skipped = report.iter().filter(|l| l.starts_with("SKIP ")).count();
            println!("vm-test: {passed} passed, 0 failed, {skipped} skipped");
            if opts.keep {
                println!("kept {}", work.display());
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(())
        }
        Err(why) => {
            eprintln!("----- console ({}) -----", console.display());
            eprintln!("{text}");
            eprintln!("----- end of console -----");
            Err(Failure::Failed(format!(
                "vm-test failed after {:.1} s: {why} (files kept in {})",
                started.elapsed().as_secs_f64(),
                work.display()
            )))
        }
    }
}

fn parse(args: &[String]) -> Result<Option<Options>, Failure> {
    let mut opts = Options {
        kvm: false,
        kernel: None,
        timeout: Duration::from_secs(TIMEOUT_S_DEFAULT),
        keep: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--kvm" => opts.kvm = true,
            "--keep" => opts.keep = true,
            "--kernel" => {
                let path = it
                    .next()
                    .ok_or_else(|| Failure::Usage("vm-test: --kernel needs a PATH".into()))?;
                opts.kernel = Some(PathBuf::from(path));
            }
            "--timeout" => {
                let s = run::parse_number(it.next(), "--timeout")?;
                if s == 0 || s > TIMEOUT_S_MAX {
                    return Err(Failure::Usage(format!(
                        "vm-test: --timeout must be 1..={TIMEOUT_S_MAX} seconds"
                    )));
                }
                opts.timeout = Duration::from_secs(s);
            }
            other => {
                return Err(Failure::Usage(format!(
                    "vm-test: unknown option `{other}` (see --help)"
                )))
            }
        }
    }
    Ok(Some(opts))
}

/// Debian's busybox-static installs a static /bin/busybox (the dynamic `busybox` package
/// installs a dynamic one at the same path).
fn static_busybox() -> Result<PathBuf, Failure> {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if matches!(elf::linkage(&bytes), Ok(elf::Linkage::Static)) {
            return Ok(PathBuf::from(path));
        }
        return Err(Failure::Failed(format!(
            "{path} is not a static binary: apt-get install busybox-static"
        )));
    }
    Err(Failure::Failed(
        "busybox not found: apt-get install busybox-static".into(),
    ))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))
}

/// The guest's whole filesystem.
fn initramfs_bytes(busybox: &Path, binaries: &[(String, PathBuf)]) -> Result<Vec<u8>, Failure> {
    let mut a = cpio::Archive::new();
    for dir in [
        "bin", "dev", "etc", "proc", "sys", "tmp", "run", "root", "usr",
    ] {
        a.dir(dir, 0o755);
    }
    a.dir("usr/bin", 0o755);
    a.dir("etc/holden", 0o755);
    // The kernel opens /dev/console for PID 1's stdio before /init can mount devtmpfs.
    a.char_dev("dev/console", 0o600, 5, 1);
    a.file("bin/busybox", 0o755, &read(busybox)?);
    a.symlink("bin/sh", "busybox");
    a.file("init", 0o755, INIT_SCRIPT.as_bytes());
    a.file("etc/holden/vm.toml", 0o644, VM_CONFIG.as_bytes());
    for (name, path) in binaries {
        a.file(&format!("usr/bin/{name}"), 0o755, &read(path)?);
    }
    Ok(a.finish())
}

/// Runs QEMU until the guest powers off, with a hard timeout; the serial console goes to
/// `console`.
fn boot(
    qemu: &str,
    kernel: &Path,
    initramfs: &Path,
    console: &Path,
    opts: &Options,
) -> Result<(), String> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", if opts.kvm { "kvm" } else { "tcg" }])
        .args(["-cpu", if opts.kvm { "host" } else { "max" }, "-smp", "1"])
        .args(["-m", &GUEST_MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .stdin(Stdio::null());
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("$ {shown}");
    let child = cmd
        .spawn()
        .map_err(|e| format!("{qemu}: cannot run: {e}"))?;
    let mut guard = QemuGuard(child);
    let deadline = Instant::now() + opts.timeout;
    loop {
        match guard.0.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{qemu} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                return Err(format!(
                    "the guest did not power off within {} s (killed)",
                    opts.timeout.as_secs()
                ))
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {qemu}: {e}")),
        }
    }
}

/// Kills QEMU (by its pid, through `Child`) if it is still running when dropped.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Checks the console: every step passed, nothing failed, and the orchestrator's own log
/// agrees. Returns the report lines.
pub fn check_console(text: &str) -> Result<Vec<String>, String> {
    if let Some(line) = text.lines().find(|l| l.contains("HOLDEN-VM-FAIL:")) {
        return Err(format!("the guest reported: {}", line.trim()));
    }
    let mut report = Vec::new();
    if let Some(boot) = text.lines().find(|l| l.starts_with("HOLDEN-VM: boot:")) {
        report.push(boot.trim_start_matches("HOLDEN-VM: ").trim().to_string());
    }
    let passed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HOLDEN-VM-PASS: "))
        .collect();
    let mut last = 0;
    for step in STEPS {
        let Some(at) = passed
            .iter()
            .position(|p| p.split(' ').next() == Some(step))
        else {
            return Err(format!("step `{step}` never passed"));
        };
        if at < last {
            return Err(format!("step `{step}` passed out of order"));
        }
        last = at;
        report.push(format!("passed: {}", passed[at]));
    }
    let holdenctl = passed.iter().find(|p| p.starts_with("holdenctl-status"));
    let skipped = text
        .lines()
        .find(|l| l.starts_with("HOLDEN-VM: SKIP holdenctl status"));
    match (holdenctl, skipped) {
        (Some(p), _) => report.push(format!("passed: {p}")),
        (None, Some(s)) => report.push(s.trim_start_matches("HOLDEN-VM: ").trim().to_string()),
        (None, None) => return Err("holdenctl status neither passed nor skipped".into()),
    }
    if !text.lines().any(|l| l.trim() == "HOLDEN-VM-DONE") {
        return Err("the guest did not reach HOLDEN-VM-DONE".into());
    }
    check_orchestrator_log(text)?;
    report.push(
        "orchestrator log: 3 QM spawns, 2+ agent connections, growing backoff, clean shutdown"
            .into(),
    );
    Ok(report)
}

/// Cross-checks the orchestrator's log lines (`orch| ...`) the guest printed.
fn check_orchestrator_log(text: &str) -> Result<(), String> {
    let log: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("orch| "))
        .collect();
    let count = |needles: &[&str]| {
        log.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    };
    let qm_spawns = count(&["service=vm-qm ", "reason=spawned"]);
    if qm_spawns != 3 {
        return Err(format!(
            "orchestrator log: {qm_spawns} spawns of vm-qm, expected 3 (start, restart, restart after reconnect)"
        ));
    }
    if count(&["event=agent-up"]) < 2 || count(&["event=agent-down"]) < 1 {
        return Err("orchestrator log: no agent-down followed by a second agent-up".into());
    }
    let delays: Vec<u64> = log
        .iter()
        .filter(|l| l.contains("service=vm-crashy ") && l.contains("reason=exited"))
        .filter_map(|l| l.split(" next_delay_ms=").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse().ok())
        .collect();
    // Non-decreasing (capped at backoff.max) and growing at least once.
    if delays.len() < 2
        || delays.windows(2).any(|w| w[1] < w[0])
        || delays[0] >= delays[delays.len() - 1]
    {
        return Err(format!(
            "orchestrator log: crash-loop delays {delays:?} do not grow (backoff)"
        ));
    }
    if count(&["service=vm-crashy ", "state=failed", "reason=start-limit"]) != 1 {
        return Err("orchestrator log: vm-crashy did not end in failed (start limit)".into());
    }
    if count(&["event=shutdown-complete"]) != 1 {
        return Err("orchestrator log: no event=shutdown-complete".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
