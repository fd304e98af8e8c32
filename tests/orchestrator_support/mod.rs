//! Shared helpers of the orchestrator tests: temp dirs, the orchestrator binary with its log,
//! holden-agent in its own PID namespace, and process bookkeeping by pid.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Generous bound on any wait (avoid hanging, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(30);

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/holden-orch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`WAIT`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > WAIT {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// The command line of a process, NULs as spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&bytes)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
    )
}

/// Whether one of the process's arguments is exactly `arg`.
pub fn has_argument(pid: i32, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|bytes| bytes.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
}

/// Every live process that has `marker` (a unique string per test) as one of its arguments.
pub fn pids_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if has_argument(pid, marker) && alive(pid) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// SIGKILL by pid (never by name).
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) with plain integers.
    unsafe { libc::kill(pid, signal) };
}

/// Parent pid of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Children of a process (scanning /proc).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if ppid(p) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Directory of the built binaries (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn orchestrator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_holden-orchestrator"))
}

/// The holden-agent binary, built on first use if the workspace build did not make it.
pub fn agent_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = bin_dir();
            let path = dir.join("holden-agent");
            let target_dir = dir.parent().unwrap();
            let profile = dir.file_name().unwrap().to_string_lossy().to_string();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "holden-agent", "--bin", "holden-agent"]);
            if profile == "release" {
                cmd.arg("--release");
            }
            cmd.env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            let status = cmd.status().expect("run cargo build -p holden-agent");
            assert!(status.success(), "cargo build -p holden-agent failed");
            assert!(path.exists(), "{} missing after build", path.display());
            path
        })
        .clone()
}

/// `examples/notify_service.rs` (an sd_notify client of holden's own), built on first use.
#[allow(dead_code)]
pub fn notify_service_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = bin_dir();
            let path = dir.join("examples").join("notify_service");
            let target_dir = dir.parent().unwrap();
            let profile = dir.file_name().unwrap().to_string_lossy().to_string();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "holden", "--example", "notify_service"]);
            if profile == "release" {
                cmd.arg("--release");
            }
            cmd.env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            let status = cmd
                .status()
                .expect("run cargo build --example notify_service");
            assert!(
                status.success(),
                "cargo build --example notify_service failed"
            );
            assert!(path.exists(), "{} missing after build", path.display());
            path
        })
        .clone()
}

/// Ends, by pid, every process that still carries one of the markers when it is dropped (a
/// test that fails half-way leaves nothing behind).
pub struct MarkerReaper(pub Vec<String>);

impl Drop for MarkerReaper {
    fn drop(&mut self) {
        for marker in &self.0 {
            for pid in pids_with(marker) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Index of the first line of `log` holding every one of `needles` (panics, with the log, if
/// none does): what came first.
pub fn line_index(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in\n{log}"))
}

/// `examples/notify_service.rs ARGS...` as a local `type = "notify"` service with `extra`
/// keys; `marker` is among its arguments, for the `/proc` scans.
pub fn notify_service(name: &str, args: &[&str], marker: &str, extra: &str) -> String {
    let bin = notify_service_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["marker", marker]);
    service(name, "local", &argv, &format!("type = \"notify\"\n{extra}"))
}

/// A running holden-orchestrator with its stderr in a file.
pub struct Orch {
    pub child: Child,
    pub log_path: PathBuf,
}

impl Orch {
    pub fn start(dir: &TempDir, config_text: &str) -> Orch {
        let config = dir.path("orchestrator.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut cmd = Command::new(orchestrator_bin());
        cmd.arg("--config").arg(&config).env_remove("NOTIFY_SOCKET");
        Orch::spawn(dir, cmd)
    }

    /// [`Orch::start`] with `services` after the test's [`config_header`].
    pub fn start_services(dir: &TempDir, services: &str) -> Orch {
        Orch::start(dir, &(config_header(&dir.path("agent.sock")) + services))
    }

    /// Starts `cmd` (holden-orchestrator, or a command that ends in its command line) with
    /// the test's own runtime directory (`DIR/run`) unless the command names one: tests
    /// never touch /run/holden, and each has its own lock and state record.
    pub fn spawn(dir: &TempDir, cmd: Command) -> Orch {
        Orch::spawn_logged(dir, cmd, "orchestrator")
    }

    /// [`Orch::spawn`] with the log in `DIR/NAME.log`: instances that follow one another on
    /// one directory each keep their own log (and their own clean-up).
    pub fn spawn_logged(dir: &TempDir, mut cmd: Command, name: &str) -> Orch {
        if !cmd.get_args().any(|a| a == "--runtime-dir") {
            cmd.arg("--runtime-dir").arg(dir.path("run"));
        }
        let log_path = dir.path(&format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // Its own process group, so nothing of it survives a test failure unnoticed.
        cmd.process_group(0);
        let child = cmd.spawn().expect("spawn holden-orchestrator");
        Orch { child, log_path }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Log lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `count` lines contain every needle; returns them.
    pub fn wait_lines(&self, needles: &[&str], count: usize) -> Vec<String> {
        wait_until(&format!("{count} log lines with {needles:?}"), || {
            let lines = self.lines_with(needles);
            (lines.len() >= count).then_some(lines)
        })
    }

    /// Kills it with SIGKILL, as a crash would, and waits for it. What it spawned is left
    /// alone (dropping it would end its orphans): it is the next instance's to take over.
    pub fn kill_9(mut self) {
        kill(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
        // No log: the clean-up of `Drop` finds no process of its own.
        self.log_path = PathBuf::new();
    }

    /// Sends `signal` and waits for the exit status. Also checks that the core never refused
    /// an event from the shell (a shell bug).
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        kill(self.pid(), signal);
        let status = wait_until("orchestrator exit", || self.child.try_wait().unwrap());
        let refused = self.lines_with(&["event=core-refused"]);
        assert!(refused.is_empty(), "the core refused events: {refused:?}");
        // Every line the orchestrator wrote (a priority prefix; a service's own output has
        // none) is strict key=value.
        for line in self.log().lines().filter(|l| has_priority_prefix(l)) {
            if let Err(e) = parse_log_line(line) {
                panic!("log line is not key=value ({e}): {line}");
            }
        }
        status
    }
}

impl Drop for Orch {
    /// A test that ends early (a failed assertion) still ends what it started: the
    /// orchestrator is asked to shut down (which stops its services), killed if it does not,
    /// and any local process it spawned that outlived it is killed by pid. (QM processes die
    /// with their namespace when the [`Qm`] is dropped.)
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            kill(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        for line in self.lines_with(&["partition=local", "reason=spawned"]) {
            let pid = field(&line, "spawned_pid").and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid.filter(|&pid| alive(pid) && orphan(pid)) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs holdenctl on `socket` with `args` (no colours).
pub fn holdenctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_holdenctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run holdenctl")
}

/// [`holdenctl`]'s exit code, and its stdout followed by its stderr.
pub fn holdenctl_text(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = holdenctl(socket, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Whether the process was re-parented to init (its supervisor is gone).
fn orphan(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1));
    ppid == Some("1")
}

/// Whether a line starts with a journald priority prefix `<N>`.
pub fn has_priority_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>'
}

/// Parses one orchestrator log line strictly (the grammar of docs/orchestrator.md, "Log"):
/// `<N>`, then fields `key=value` separated by one space; a key is `[a-z0-9_]+`; a value is
/// a bare word (no space, `"` or `\`) or a quoted string in which `"` and `\` appear only
/// escaped (`\"`, `\\`, `\n`, `\xNN`). Returns the fields, values unescaped.
pub fn parse_log_line(line: &str) -> Result<Vec<(String, String)>, String> {
    if !has_priority_prefix(line) {
        return Err("no <N> priority prefix".into());
    }
    let b = line.as_bytes();
    let mut i = 3;
    let mut fields = Vec::new();
    if i == b.len() {
        return Err("no field".into());
    }
    loop {
        let key_start = i;
        while i < b.len() && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        if i == key_start {
            return Err(format!("no key at byte {i}"));
        }
        let key = line[key_start..i].to_string();
        if b.get(i) != Some(&b'=') {
            return Err(format!("key {key:?} without '=' at byte {i}"));
        }
        i += 1;
        let mut value = Vec::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("{key}: unterminated quoted value")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        match b.get(i + 1) {
                            Some(b'"') => value.push(b'"'),
                            Some(b'\\') => value.push(b'\\'),
                            Some(b'n') => value.push(b'\n'),
                            Some(b'x') => {
                                let hex = line
                                    .get(i + 2..i + 4)
                                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                                    .ok_or_else(|| format!("{key}: bad \\x escape"))?;
                                value.push(hex);
                                i += 2;
                            }
                            other => return Err(format!("{key}: bad escape {other:?}")),
                        }
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b' ' {
                if b[i] == b'"' || b[i] == b'\\' {
                    return Err(format!("{key}: '\"' or '\\' in a bare value"));
                }
                i += 1;
            }
            if i == start {
                return Err(format!("{key}: empty bare value"));
            }
            value.extend_from_slice(&b[start..i]);
        }
        fields.push((key, String::from_utf8_lossy(&value).into_owned()));
        match b.get(i) {
            None => return Ok(fields),
            Some(b' ') if i + 1 < b.len() => i += 1,
            Some(_) => {
                return Err(format!(
                    "expected one space before the next field at byte {i}"
                ))
            }
        }
    }
}

/// Value of `key=` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat).map(|i| i + pat.len()).or_else(|| {
        let pat = format!(">{key}=");
        line.find(&pat).map(|i| i + pat.len())
    })?;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// holden-agent running under a small init (a shell loop that restarts it) as PID 1 of its
/// own PID and mount namespace: a stand-in for the QM container.
pub struct Qm {
    unshare: Child,
    pub init_pid: i32,
    pub socket: PathBuf,
}

impl Qm {
    /// Starts the namespace; `extra` are more agent options (e.g. `--legacy-socket P`).
    pub fn start(dir: &TempDir, extra: &str) -> Qm {
        Qm::start_with(dir, &format!("\"$AGENT\" --socket \"$SOCKET\" {extra}"))
    }

    /// Starts the namespace with `command` as the agent's command line, a shell command in
    /// which `$AGENT` is the agent binary and `$SOCKET` the socket path (run again each time
    /// the agent ends).
    pub fn start_with(dir: &TempDir, command: &str) -> Qm {
        Qm::spawn(dir, command, || Ok(()))
    }

    /// [`Qm::start_with`], with `before_exec` run in the child before it executes `unshare`.
    fn spawn(dir: &TempDir, command: &str, before_exec: fn() -> std::io::Result<()>) -> Qm {
        let socket = dir.path("agent.sock");
        let agent = agent_bin();
        let log = std::fs::File::create(dir.path("agent.log")).unwrap();
        // PID 1 is dash: it restarts the agent when it dies and, waiting for it, reaps every
        // orphan that is reparented to it.
        let script = format!(
            "AGENT='{}'; SOCKET='{}'; while :; do {command}; sleep 0.05; done",
            agent.display(),
            socket.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "/bin/sh",
            "-c",
            &script,
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        // SAFETY: `before_exec` is one of this file's functions, which only make system calls
        // on stack data (async-signal-safe, as a pre-exec hook must be).
        unsafe {
            cmd.pre_exec(before_exec);
        }
        let unshare = cmd.spawn().expect("spawn unshare");
        let unshare_pid = unshare.id() as i32;
        let init_pid = wait_until("namespace init", || children(unshare_pid).first().copied());
        let qm = Qm {
            unshare,
            init_pid,
            socket,
        };
        wait_until("agent socket", || {
            qm.agent_pid().filter(|_| qm.socket.exists())
        });
        qm
    }

    /// Starts the namespace under a model of QM's seccomp profile: its rule against
    /// real-time scheduling only (`sched_setscheduler` and `sched_setattr` answer `EPERM`, as
    /// QM's `/usr/share/qm/seccomp.json` has them). The filter is installed in the child before
    /// it executes `unshare`, so the agent and everything it starts inherit it.
    pub fn start_denying_sched(dir: &TempDir) -> Qm {
        Qm::spawn(dir, "\"$AGENT\" --socket \"$SOCKET\"", deny_sched_filter)
    }

    /// The agent's pid (in our namespace), if it is running.
    pub fn agent_pid(&self) -> Option<i32> {
        children(self.init_pid)
            .into_iter()
            .find(|&p| cmdline(p).is_some_and(|c| c.contains("holden-agent")))
    }

    /// Kills the agent with SIGKILL; the init loop restarts it.
    pub fn kill_agent(&self) -> i32 {
        let pid = self.agent_pid().expect("agent running");
        kill(pid, libc::SIGKILL);
        pid
    }

    pub fn agent_log(dir: &TempDir) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(dir.path("agent.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

/// Installs a seccomp filter on the calling process (and what it starts) that answers
/// `sched_setscheduler` and `sched_setattr` with `EPERM` and lets every other call through.
fn deny_sched_filter() -> std::io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        // seccomp_data.arch (offset 4): another architecture's calls are let through.
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 3, ARCH),
        // seccomp_data.nr (offset 0).
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 2, 0, libc::SYS_sched_setscheduler as u32),
        op(JEQ_K, 1, 0, libc::SYS_sched_setattr as u32),
        op(RET_K, 0, 0, RET_ALLOW),
        op(RET_K, 0, 0, RET_EPERM),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_SECCOMP reads the program through `fprog`, both on this stack frame and
    // valid for the call; the test runs as root (CAP_SYS_ADMIN), so no_new_privs is not needed.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Qm {
    fn drop(&mut self) {
        // Killing PID 1 of the namespace kills everything in it.
        kill(self.init_pid, libc::SIGKILL);
        let _ = self.unshare.wait();
    }
}

/// A TOML `[[service]]` block.
pub fn service(name: &str, partition: &str, argv: &[&str], extra: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[service]]\nname = {name:?}\npartition = {partition:?}\nargv = [{}]\n{extra}\n",
        argv.join(", ")
    )
}

/// Header of a config whose agent socket lives in `dir`.
/// Header of a config whose agent socket is `socket` and whose control socket lies beside it
/// (never the system-wide default: tests must not touch /run/holden).
/// Its journal socket is one nobody binds: service output goes to the log whatever the machine
/// runs (a test that wants a journal binds its own and writes its own `[log]`).
pub fn config_header(socket: &Path) -> String {
    let control = socket.with_file_name("control.sock");
    let journal = socket.with_file_name("no-journal.sock");
    format!(
        "{}[control]\nsocket = {:?}\n\n[log]\njournal_socket = {:?}\n\n",
        agent_section(socket),
        control.display().to_string(),
        journal.display().to_string()
    )
}

/// The `[agent]` section alone, for tests that write their own `[control]`.
pub fn agent_section(socket: &Path) -> String {
    format!("[agent]\nsocket = {:?}\nreconnect_initial = \"50ms\"\nreconnect_max = \"500ms\"\nrequest_timeout = \"5s\"\n\n", socket.display().to_string())
}

/// A `sleep` argument unique to this test run (`PREFIX.<pid><n>`), so `/proc` scans find only
/// this test's processes. Each test file uses its own prefix.
pub fn sleep_marker(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}.{}{:03}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid of the last process the orchestrator logged as spawned for `name`.
pub fn last_spawned_pid(orch: &Orch, name: &str) -> i32 {
    let lines = orch.lines_with(&[&format!("service={name} "), "reason=spawned"]);
    field(lines.last().expect("spawned"), "spawned_pid")
        .unwrap()
        .parse()
        .unwrap()
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`); 0 when it cannot be read.
#[allow(dead_code)]
pub fn status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// VmRSS of the live process `pid` in kB (panics if it cannot be read).
#[allow(dead_code)]
pub fn rss_kb(pid: i32) -> u64 {
    match status_kb(pid, "VmRSS") {
        0 => panic!("no VmRSS for pid {pid}"),
        kb => kb,
    }
}

/// A crash loop's restarts per second over `window`, from the orchestrator's `reason=spawned`
/// lines for `name` (the reliability suite's rate: compared with a baseline of the same run).
#[allow(dead_code)]
pub fn spawn_rate(orch: &Orch, name: &str, window: std::time::Duration) -> f64 {
    let needle = format!("service={name} ");
    let spawned = || orch.lines_with(&[&needle, "reason=spawned"]).len();
    let (before, at) = (spawned(), std::time::Instant::now());
    std::thread::sleep(window);
    (spawned() - before) as f64 / at.elapsed().as_secs_f64()
}

/// The local crash loop a flood test measures (`reason=spawned` lines of `local-loop`),
/// tagged with `marker`.
pub fn crash_loop_service(marker: &str) -> String {
    service(
        "local-loop",
        "local",
        &["/bin/sh", "-c", "exit 1", marker],
        "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"0s\" }",
    )
}

/// What a flood cost: the crash loop's restarts per second and the orchestrator's VmRSS,
/// before the flood and while it ran.
pub struct Flood {
    pub base_rate: f64,
    pub flood_rate: f64,
    pub rss_before: u64,
    pub rss_after: u64,
}

impl Flood {
    /// The reliability suite's bounds: the crash loop keeps at least half its rate, and the
    /// orchestrator's VmRSS grows by at most 256 kB.
    pub fn assert_contained(&self) {
        let Flood {
            base_rate,
            flood_rate,
            rss_before,
            rss_after,
        } = *self;
        assert!(
            flood_rate >= 0.5 * base_rate,
            "local restart rate {base_rate:.1}/s before, {flood_rate:.1}/s during"
        );
        assert!(
            rss_after <= rss_before + 256,
            "VmRSS {rss_before} -> {rss_after} kB"
        );
    }
}

/// Measures [`crash_loop_service`]'s rate and the orchestrator's VmRSS, then runs `start`
/// (which starts the flood and returns while it runs) and measures them again.
pub fn measure_flood<T>(orch: &mut Orch, start: impl FnOnce(&mut Orch) -> T) -> (Flood, T) {
    let window = std::time::Duration::from_millis(1500);
    orch.wait_lines(&["service=local-loop ", "reason=spawned"], 5);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let base_rate = spawn_rate(orch, "local-loop", window);
    let rss_before = rss_kb(orch.pid());
    let started = start(orch);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let flood_rate = spawn_rate(orch, "local-loop", window);
    let rss_after = rss_kb(orch.pid());
    let flood = Flood {
        base_rate,
        flood_rate,
        rss_before,
        rss_after,
    };
    (flood, started)
}

/// A cgroup root of this test's own, removed (after killing what is left in it) on drop.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> Option<TestCgroup> {
        static N: AtomicU32 = AtomicU32::new(0);
        let mount = holden::cgroup::mount_point()?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("holden-test-{tag}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => Some(TestCgroup(path)),
            Err(e) => {
                eprintln!(
                    "skipped: cannot create a cgroup under {}: {e}",
                    mount.display()
                );
                None
            }
        }
    }

    pub fn service(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn toml(&self) -> String {
        format!("[cgroup]\nroot = {:?}\n\n", self.0.display().to_string())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Every cgroup below the root, the deepest first (a QM test's agent makes
        // `services/<name>` two levels down).
        fn below(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for path in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                below(&path, out);
                out.push(path);
            }
        }
        let mut dirs = Vec::new();
        below(&self.0, &mut dirs);
        for dir in &dirs {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        for dir in dirs.iter().chain(std::iter::once(&self.0)) {
            let _ = wait_until_ok(|| std::fs::remove_dir(dir).is_ok());
        }
    }
}

/// Polls `f` for a few seconds (clean-up only: the cgroup empties after its kill).
pub fn wait_until_ok(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Starts QM (a real holden-agent in its own PID namespace) with the agent alone in the
/// cgroup `qm` (as QM's delegated cgroup): it moves itself into `qm/agent` and makes its
/// processes' cgroups under `qm/services`.
pub fn qm_in(dir: &TempDir, qm: &TestCgroup) -> Qm {
    Qm::start_with(
        dir,
        // An inner shell moves itself (`$$`), then becomes the agent: the outer loop, QM's
        // init, stays where it is.
        &format!(
            "sh -c \"echo \\$\\$ > '{}/cgroup.procs' && exec '$AGENT' --socket '$SOCKET'\"",
            qm.0.display()
        ),
    )
}
