//! `cargo xtask vm-test`: the static binaries on booted distribution kernels under QEMU.
//!
//! The guest is an initramfs written here ([`cpio`]): a static busybox, the musl binaries of
//! `cargo xtask dist` for the guest's architecture, a configuration and `init.sh` as PID 1.
//! The kernels are Debian's ([`kernel`], fetched through a private apt configuration,
//! [`apt`]), all older than 6.15, so the orchestrator's fallbacks for missing pidfd features
//! run. `--matrix` boots every run of [`matrix::MATRIX`]. The guest prints what it probed and
//! its checks on the serial console (a file); the host asserts on them, on the orchestrator's
//! log lines and on its claims about the kernel ([`probe`]), and prints the whole console on
//! any miss.

mod apt;
mod cpio;
mod kernel;
mod matrix;
mod probe;

use crate::run::{self, Failure};
use crate::{dist, elf};
use matrix::{Arch, Run, Scenario};
use probe::{Claims, Probe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HELP: &str = "\
cargo xtask vm-test [--matrix | --run NAME...] [--kernel PATH] [--kvm] [--timeout SECONDS] [--keep]

Boots the static musl binaries (cargo xtask dist) in QEMU on Debian's kernels with a busybox
initramfs. Inside: holden-agent as PID 2 of its own PID + mount namespace (the QM stand-in,
under a shell loop as PID 1), holden-orchestrator outside with a local, a QM and a
crash-looping service. Each run prints its kernel, architecture and the features probed
(pidfs, PIDFD_GET_INFO, PIDFD_INFO_EXIT, kernel.io_uring_disabled, cgroup2 controllers),
checks that the orchestrator's start line claims exactly what the kernel has, then one line
per check: each service killed and restarted, the QM exit status as the kernel allows, the
agent killed while the QM service keeps running and is still supervised after the reconnect,
the crash loop backing off to its start limit, holdenctl status, a clean shutdown. Fails
with the console log on any miss.

Runs (--matrix: all; default: x86_64-6.1):
  x86_64-5.10                    Debian 11 (bullseye) kernel, 1 vCPU
  x86_64-6.1                     Debian 12 (bookworm) kernel, 1 vCPU
  x86_64-6.12                    Debian 13 (trixie) kernel, 2 vCPUs, kernel.io_uring_disabled=1
  x86_64-6.12-io_uring_disabled  trixie, kernel.io_uring_disabled=2: the orchestrator must
                                 exit 1 with the documented message
  x86_64-6.12-cgroup             trixie, cgroup limits with the controllers enabled: a memory
                                 hog OOM-killed in its cgroup and restarted, a fork bomb held
                                 by pids_max, cpu_weight and cpu_max in the cgroup files
  aarch64-6.12                   trixie arm64 kernel, qemu-system-aarch64 virt, Cortex-A72,
                                 2 vCPUs, the aarch64 binaries and busybox-static:arm64

Kernels and the arm64 busybox come from Debian's suites through a private apt configuration
in target/vm/apt/ (the host's archive, Debian's keyring; the host's sources untouched) and
are cached in target/vm/: a second run downloads nothing.

Needs: qemu-system-x86, qemu-system-arm (for aarch64), busybox-static, debian-archive-keyring
(apt-get install qemu-system-x86 qemu-system-arm busybox-static debian-archive-keyring).

Options:
  --matrix          every run above
  --run NAME        this run (repeatable)
  --kernel PATH     boot this kernel instead of Debian's (one run only)
  --kvm             use KVM for x86_64 runs (default: TCG; a KVM guest hung on the
                    project's machines; aarch64 is always TCG)
  --timeout SECONDS hard limit per guest (default 240)
  --keep            keep target/vm/run-<pid>-<run>/ (initramfs, console log) after success
";

/// Default hard limit for one guest run.
const TIMEOUT_S_DEFAULT: u64 = 240;
/// Largest accepted --timeout.
const TIMEOUT_S_MAX: u64 = 3600;
/// Guest memory.
const GUEST_MEMORY_MIB: u32 = 512;
/// The documented refusal with `kernel.io_uring_disabled=2` (docs/deploy.md, section 6),
/// and the documented exit code (docs/orchestrator.md: 1, a fatal error).
pub const IO_URING_DISABLED_MESSAGE: &str = "ring: io_uring_setup: EPERM: io_uring is disabled by sysctl kernel.io_uring_disabled=2 (set kernel.io_uring_disabled=0, e.g. in /etc/sysctl.d/)";
pub const IO_URING_DISABLED_EXIT: i32 = 1;

const INIT_SCRIPT: &str = include_str!("init.sh");
const VM_CONFIG: &str = include_str!("vm.toml");
const VM_CGROUP_CONFIG: &str = include_str!("vm-cgroup.toml");

/// Steps the cgroup-limits run must report as passed, in order.
pub const CGROUP_STEPS: [&str; 6] = [
    "cgroup-files",
    "qm-cgroup-limits",
    "oom-kill",
    "pids-max",
    "tree-kill",
    "cgroup-shutdown",
];

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
    matrix: bool,
    runs: Vec<String>,
}

/// What one run ended with.
struct Outcome {
    run: &'static Run,
    release: String,
    seconds: f64,
    /// The checks passed (report lines starting `passed: `), or why it failed.
    result: Result<usize, String>,
}

pub fn main(args: &[String]) -> Result<(), Failure> {
    let Some(opts) = parse(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let runs = select(&opts)?;
    let root = run::workspace_root();
    let mut arches: Vec<Arch> = runs.iter().map(|r| r.arch).collect();
    arches.sort_by_key(|a| a.name());
    arches.dedup();
    let mut packages = vec![
        ("/bin/busybox", "busybox-static"),
        (
            "/usr/share/keyrings/debian-archive-keyring.gpg",
            "debian-archive-keyring",
        ),
    ];
    for arch in &arches {
        packages.push((arch.qemu(), arch.qemu_package()));
    }
    crate::setup::debian(&packages)?;
    for arch in &arches {
        if !run::succeeds(arch.qemu(), &["--version"]) {
            return Err(Failure::Failed(format!(
                "{} not found: apt-get install {}",
                arch.qemu(),
                arch.qemu_package()
            )));
        }
    }
    if opts.kvm && !Path::new("/dev/kvm").exists() {
        return Err(Failure::Failed(
            "--kvm: /dev/kvm does not exist here; run without --kvm (TCG)".into(),
        ));
    }
    let cache = dist::target_dir(&root).join("vm");
    std::fs::create_dir_all(&cache)
        .map_err(|e| Failure::Failed(format!("{}: {e}", cache.display())))?;
    let mut fetcher = kernel::Fetcher::new(&cache);
    // Everything first (binaries, busybox, kernels), so that no boot is wasted on a
    // missing download.
    let mut guests = Vec::new();
    for arch in &arches {
        let binaries = dist::build(&root, arch.name())?;
        for (_, path) in &binaries {
            kernel::check_static(path, arch.elf_machine())?;
        }
        let busybox = match arch {
            Arch::X86_64 => static_busybox()?,
            Arch::Aarch64 => fetcher.busybox(arch.deb(), arch.elf_machine())?,
        };
        guests.push((*arch, busybox, binaries));
    }
    let mut kernels = Vec::new();
    for r in &runs {
        kernels.push(match &opts.kernel {
            Some(k) => k.clone(),
            None => fetcher.kernel(&r.series, r.arch.deb())?,
        });
    }
    let mut outcomes = Vec::new();
    for (r, kernel) in runs.iter().zip(&kernels) {
        let (_, busybox, binaries) = guests
            .iter()
            .find(|(a, _, _)| *a == r.arch)
            .expect("built for every architecture");
        outcomes.push(boot_run(r, kernel, busybox, binaries, &cache, &opts)?);
    }
    summary(&outcomes)
}

fn parse(args: &[String]) -> Result<Option<Options>, Failure> {
    let mut opts = Options {
        kvm: false,
        kernel: None,
        timeout: Duration::from_secs(TIMEOUT_S_DEFAULT),
        keep: false,
        matrix: false,
        runs: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--kvm" => opts.kvm = true,
            "--keep" => opts.keep = true,
            "--matrix" => opts.matrix = true,
            "--run" => {
                let name = it
                    .next()
                    .ok_or_else(|| Failure::Usage("vm-test: --run needs a NAME".into()))?;
                if matrix::find(name).is_none() {
                    let names: Vec<&str> = matrix::MATRIX.iter().map(|r| r.name).collect();
                    return Err(Failure::Usage(format!(
                        "vm-test: --run `{name}` is not one of {}",
                        names.join(", ")
                    )));
                }
                opts.runs.push(name.clone());
            }
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
    if opts.matrix && !opts.runs.is_empty() {
        return Err(Failure::Usage(
            "vm-test: --matrix and --run exclude each other".into(),
        ));
    }
    if opts.kernel.is_some() && (opts.matrix || opts.runs.len() > 1) {
        return Err(Failure::Usage(
            "vm-test: --kernel boots one run (the default one, or one --run)".into(),
        ));
    }
    Ok(Some(opts))
}

/// The runs the options ask for, in matrix order.
fn select(opts: &Options) -> Result<Vec<&'static Run>, Failure> {
    if opts.matrix {
        return Ok(matrix::MATRIX.iter().collect());
    }
    if opts.runs.is_empty() {
        return Ok(vec![
            matrix::find(matrix::DEFAULT_RUN).expect("in the matrix")
        ]);
    }
    Ok(matrix::MATRIX
        .iter()
        .filter(|r| opts.runs.iter().any(|n| n == r.name))
        .collect())
}

/// Boots one run and checks its console; a failed check is an outcome, not an error (the
/// other runs still boot).
fn boot_run(
    r: &'static Run,
    kernel: &Path,
    busybox: &Path,
    binaries: &[(String, PathBuf)],
    cache: &Path,
    opts: &Options,
) -> Result<Outcome, Failure> {
    let kvm = opts.kvm && r.arch.kvm_capable();
    println!(
        "== {}: {} on {} ({}, {} vCPU{})",
        r.name,
        kernel.display(),
        r.arch.qemu(),
        if kvm { "KVM" } else { "TCG" },
        r.cpus,
        if r.cpus == 1 { "" } else { "s" }
    );
    let work = cache.join(format!("run-{}-{}", std::process::id(), r.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(|e| Failure::Failed(format!("{}: {e}", work.display())))?;
    let initramfs = work.join("initramfs.cpio");
    let bytes = initramfs_bytes(busybox, binaries)?;
    std::fs::write(&initramfs, &bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", initramfs.display())))?;
    eprintln!(
        "initramfs {} ({} KiB)",
        initramfs.display(),
        bytes.len() / 1024
    );
    let console = work.join("console.log");
    let started = Instant::now();
    let outcome = boot(r, kvm, kernel, &initramfs, &console, opts.timeout);
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let verdict = outcome.and_then(|()| check_run(r, opts.kernel.is_none(), &text));
    // As the guest saw it, else from the kernel's file name.
    let release = Probe::parse(&text).map(|p| p.release).unwrap_or_else(|_| {
        let name = kernel.file_name().unwrap_or_default().to_string_lossy();
        name.strip_prefix("vmlinuz-").unwrap_or(&name).to_string()
    });
    let result = match verdict {
        Ok(report) => {
            for line in &report {
                println!("  {line}");
            }
            let passed = report.iter().filter(|l| l.starts_with("passed: ")).count();
            println!("{} passed in {seconds:.1} s: {passed} checks", r.name);
            if opts.keep {
                println!("kept {}", work.display());
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(passed)
        }
        Err(why) => {
            eprintln!("----- console ({}) -----", console.display());
            eprintln!("{text}");
            eprintln!("----- end of console -----");
            println!(
                "{} FAILED after {seconds:.1} s: {why} (files kept in {})",
                r.name,
                work.display()
            );
            Err(why)
        }
    };
    Ok(Outcome {
        run: r,
        release,
        seconds,
        result,
    })
}

/// The table of all runs and the plain closing line CI reads
/// (`vm-test: N passed, N failed, N skipped`: checks passed, runs failed).
fn summary(outcomes: &[Outcome]) -> Result<(), Failure> {
    println!();
    println!(
        "{:<30} {:<24} {:<8} {:>5}  {:<7} {:>8}",
        "run", "kernel", "arch", "vCPUs", "result", "seconds"
    );
    for o in outcomes {
        println!(
            "{:<30} {:<24} {:<8} {:>5}  {:<7} {:>8.1}",
            o.run.name,
            o.release,
            o.run.arch.name(),
            o.run.cpus,
            if o.result.is_ok() { "passed" } else { "FAILED" },
            o.seconds
        );
    }
    let passed: usize = outcomes.iter().filter_map(|o| o.result.as_ref().ok()).sum();
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.run.name)
        .collect();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    println!(
        "vm-test: {} of {} runs passed in {total:.1} s of guest time",
        outcomes.len() - failed.len(),
        outcomes.len()
    );
    println!(
        "vm-test: {passed} passed, {} failed, 0 skipped",
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "vm-test failed: {}",
            failed.join(", ")
        )))
    }
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
    a.file(
        "etc/holden/vm-cgroup.toml",
        0o644,
        VM_CGROUP_CONFIG.as_bytes(),
    );
    for (name, path) in binaries {
        a.file(&format!("usr/bin/{name}"), 0o755, &read(path)?);
    }
    Ok(a.finish())
}

/// Runs QEMU until the guest powers off, with a hard timeout; the serial console goes to
/// `console`.
fn boot(
    r: &Run,
    kvm: bool,
    kernel: &Path,
    initramfs: &Path,
    console: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let qemu = r.arch.qemu();
    let mut cmd = Command::new(qemu);
    cmd.args(r.arch.machine_args(kvm, r.cpus))
        .args(["-smp", &r.cpus.to_string()])
        .args(["-m", &GUEST_MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console={} quiet panic=-1 rdinit=/init {}",
            r.arch.console(),
            r.scenario.cmdline()
        ))
        .stdin(Stdio::null());
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("$ {shown}");
    let child = cmd
        .spawn()
        .map_err(|e| format!("{qemu}: cannot run: {e}"))?;
    let mut guard = QemuGuard(child);
    let deadline = Instant::now() + timeout;
    loop {
        match guard.0.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{qemu} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                return Err(format!(
                    "the guest did not power off within {} s (killed)",
                    timeout.as_secs()
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

/// Checks one run's console: the probe (architecture, vCPUs, kernel series unless
/// `--kernel` replaced it, the sysctl asked for), then the scenario's checks. Returns the
/// report: kernel and features first, then one line per check.
pub fn check_run(r: &Run, debian_kernel: bool, text: &str) -> Result<Vec<String>, String> {
    if let Some(line) = text.lines().find(|l| l.contains("HOLDEN-VM-FAIL:")) {
        return Err(format!("the guest reported: {}", line.trim()));
    }
    let probe = Probe::parse(text)?;
    if probe.arch != r.arch.name() {
        return Err(format!(
            "the guest runs on {}, expected {}",
            probe.arch,
            r.arch.name()
        ));
    }
    if probe.cpus != r.cpus {
        return Err(format!(
            "the guest has {} CPUs online, expected {}",
            probe.cpus, r.cpus
        ));
    }
    if debian_kernel && probe.version != r.series.version {
        return Err(format!(
            "the guest runs kernel {}, expected Debian {}'s {}.{}",
            probe.release, r.series.suite, r.series.version.0, r.series.version.1
        ));
    }
    let wanted = match r.scenario {
        Scenario::Supervision { io_uring_disabled } => io_uring_disabled.map(u32::from),
        Scenario::IoUringDisabled => Some(2),
        Scenario::CgroupLimits => None,
    };
    if let Some(want) = wanted {
        if probe.io_uring_disabled.is_none() {
            let (major, minor) = probe::IO_URING_DISABLED_KERNEL;
            return Err(format!(
                "the run sets kernel.io_uring_disabled={want}, but kernel {} has no such \
                 sysctl ({major}.{minor}+)",
                probe.release
            ));
        }
        if probe.io_uring_disabled != Some(want) {
            return Err(format!(
                "kernel.io_uring_disabled is {} in the guest, the run sets {want}",
                probe.io_uring_disabled_text()
            ));
        }
    }
    let mut report = vec![format!(
        "kernel {}, arch {}, {} CPU{} online",
        probe.release,
        probe.arch,
        probe.cpus,
        if probe.cpus == 1 { "" } else { "s" }
    )];
    match r.scenario {
        Scenario::Supervision { .. } => {
            let claims = Claims::parse(text)?;
            let pidfs = probe.pidfs()?;
            report.push(format!(
                "features: pidfs={} (statfs of a pidfd: {}) pidfd_get_info={} \
                 pidfd_info_exit={} pidfd_reap_hup={} (the orchestrator's probe) \
                 io_uring=usable (the \
                 orchestrator's ring is set up) kernel.io_uring_disabled={} \
                 cgroup2_controllers={}",
                yes_no(pidfs),
                if pidfs { "pidfs" } else { "anon_inode" },
                yes_no(claims.pidfd_get_info),
                yes_no(claims.pidfd_info_exit),
                yes_no(claims.pidfd_reap_hup),
                probe.io_uring_disabled_text(),
                probe.cgroup2_text()
            ));
            report.push(format!("as documented: {}", probe::behaviour(&claims)));
            report.push(format!(
                "passed: {}",
                probe::check_claims(&probe, &claims, debian_kernel)?
            ));
            report.extend(check_console(text)?);
        }
        Scenario::IoUringDisabled => {
            report.push(format!(
                "features: io_uring=disabled (kernel.io_uring_disabled={}) cgroup2_controllers={}",
                probe.io_uring_disabled_text(),
                probe.cgroup2_text()
            ));
            report.extend(check_io_uring_disabled(text)?);
        }
        Scenario::CgroupLimits => {
            report.push(format!(
                "features: cgroup2_controllers={}",
                probe.cgroup2_text()
            ));
            report.extend(check_cgroup_limits(text)?);
        }
    }
    Ok(report)
}

/// The cgroup-limits run: its steps passed in order, and the orchestrator's log agrees (the
/// hog's SIGKILL exit reported and a restart after it, nothing refused).
pub fn check_cgroup_limits(text: &str) -> Result<Vec<String>, String> {
    let passed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HOLDEN-VM-PASS: "))
        .collect();
    let mut report = Vec::new();
    let mut last = 0;
    for step in CGROUP_STEPS {
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
    if !text.lines().any(|l| l.trim() == "HOLDEN-VM-DONE") {
        return Err("the guest did not reach HOLDEN-VM-DONE".into());
    }
    let log: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("orch| "))
        .collect();
    let count = |needles: &[&str]| {
        log.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    };
    if count(&["service=vm-hog ", "reason=exited signal=SIGKILL"]) < 1
        || count(&["service=vm-hog ", "reason=spawned"]) < 2
    {
        return Err("orchestrator log: no SIGKILL exit of vm-hog followed by a restart".into());
    }
    if let Some(line) = log
        .iter()
        .find(|l| l.contains("event=cgroup-limit-failed") || l.contains("event=spawn-failed"))
    {
        return Err(format!("orchestrator log: {line}"));
    }
    if count(&["event=shutdown-complete"]) != 1 {
        return Err("orchestrator log: no event=shutdown-complete".into());
    }
    report.push(
        "orchestrator log: vm-hog SIGKILL and restart, no failed spawn, clean shutdown".into(),
    );
    Ok(report)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The io_uring-disabled run: the orchestrator exited with the documented code and message,
/// announced no start and spawned nothing.
pub fn check_io_uring_disabled(text: &str) -> Result<Vec<String>, String> {
    let exit: i32 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("HOLDEN-VM: orchestrator-exit="))
        .ok_or("the guest did not report the orchestrator's exit code")?
        .trim()
        .parse()
        .map_err(|_| "the orchestrator's exit code is not a number")?;
    if exit != IO_URING_DISABLED_EXIT {
        return Err(format!(
            "with kernel.io_uring_disabled=2 the orchestrator exited {exit}, documented: {IO_URING_DISABLED_EXIT}"
        ));
    }
    let log: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("orch| "))
        .collect();
    let Some(line) = log.iter().find(|l| l.contains(IO_URING_DISABLED_MESSAGE)) else {
        return Err(format!(
            "the orchestrator's stderr does not contain the documented message \
             `{IO_URING_DISABLED_MESSAGE}`: {log:?}"
        ));
    };
    if log
        .iter()
        .any(|l| l.contains("event=start ") || l.contains("reason=spawned"))
    {
        return Err(format!(
            "with io_uring disabled the orchestrator still started something: {log:?}"
        ));
    }
    if !text.lines().any(|l| l.trim() == "HOLDEN-VM-DONE") {
        return Err("the guest did not reach HOLDEN-VM-DONE".into());
    }
    Ok(vec![
        format!("passed: io-uring-disabled exit {exit} as documented"),
        format!(
            "passed: io-uring-disabled message as documented: {}",
            line.trim()
        ),
        "passed: io-uring-disabled nothing started (no event=start, no spawn)".into(),
    ])
}

/// Checks the console: every step passed, nothing failed, and the orchestrator's own log
/// agrees. Returns the report lines.
pub fn check_console(text: &str) -> Result<Vec<String>, String> {
    if let Some(line) = text.lines().find(|l| l.contains("HOLDEN-VM-FAIL:")) {
        return Err(format!("the guest reported: {}", line.trim()));
    }
    let mut report = Vec::new();
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
    // The agent's pidfds pass the orchestrator's checks (pidfs magic and inode, or
    // anon_inode:[pidfd] and pid without pidfs): a genuine agent is never misbehaving.
    if let Some(line) = log.iter().find(|l| l.contains("event=agent-misbehaved")) {
        return Err(format!("orchestrator log: {line}"));
    }
    if count(&["event=shutdown-complete"]) != 1 {
        return Err("orchestrator log: no event=shutdown-complete".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
