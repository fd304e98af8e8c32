//! `cargo xtask demo`: holden's main job on this machine, narrated step by step.
//!
//! holden-agent runs in its own PID + mount namespace under a small shell loop as PID 1 (a
//! stand-in for the QM partition and its systemd); holden-orchestrator runs here with a demo
//! configuration in a temporary directory. The demo crashes, kills and restarts things and
//! shows the orchestrator's log lines for each step. Everything it starts carries
//! `HOLDEN_DEMO_DIR=<temp dir>` in its environment, which is how the cleanup finds (by pid)
//! whatever is left, also after a failure or Ctrl+C.

use crate::dist;
use crate::run::{self, Failure};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const HELP: &str = "\
cargo xtask demo [--release] [--no-namespaces]

Builds holden, starts holden-agent in a separate PID + mount namespace (a stand-in for the
QM partition; without namespaces when they are not permitted) and holden-orchestrator with
a demo configuration, then shows, step by step, with the orchestrator's own log lines:
  a crash-looping local service restarted with growing backoff, then stopped by its start limit
  a QM service killed and restarted through the agent
  the agent killed (SIGKILL): the QM service keeps running and stays supervised; the agent
    is restarted and reconnects
  holdenctl status (once holdenctl has it)
  a clean shutdown (SIGTERM)
Takes about half a minute after the build; leaves nothing running (also on Ctrl+C).

Options:
  --release        build and run the release binaries
  --no-namespaces  run the agent without its own namespaces (what happens by itself
                   where unshare is not permitted)
";

/// Environment variable that marks every process the demo starts.
const MARKER_ENV: &str = "HOLDEN_DEMO_DIR";
/// Longest wait for any one expected log line.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time the orchestrator gets to stop everything on SIGTERM before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the log file and processes are polled.
const POLL: Duration = Duration::from_millis(20);
/// Width of the narration text (log lines are shown whole).
const TEXT_COLUMNS: usize = 96;
/// Pause between sections when the output is a terminal.
const SECTION_PAUSE_MS: u64 = 800;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

extern "C" fn on_signal(_signum: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl+C and SIGTERM set a flag that every wait checks, so the cleanup runs.
fn catch_interrupts() {
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe { signal(sig, on_signal as extern "C" fn(i32) as usize) };
    }
}

/// Sends `sig` to `pid`; false if it is gone.
fn send(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) takes plain integers; a stale pid at worst fails with ESRCH.
    pid > 0 && unsafe { kill(pid, sig) } == 0
}

fn interrupted() -> Result<(), Failure> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Failure::Failed("interrupted".into()))
    } else {
        Ok(())
    }
}

pub fn main(args: &[String]) -> Result<(), Failure> {
    let mut release = false;
    let mut namespaces = true;
    for arg in args {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(());
            }
            "--release" => release = true,
            "--no-namespaces" => namespaces = false,
            other => return Err(Failure::Usage(format!("demo: unknown option `{other}`"))),
        }
    }
    if namespaces {
        crate::setup::debian(&[("unshare", "util-linux")])?;
    }
    catch_interrupts();
    let root = run::workspace_root();
    let out = Out::new();
    out.section("Building holden-orchestrator, holden-agent and holdenctl");
    let mut build = vec!["build", "-p", "holden", "-p", "holden-agent"];
    if release {
        build.push("--release");
    }
    run::cargo(&root, &build)?;
    let bin = dist::target_dir(&root).join(if release { "release" } else { "debug" });
    let started = Instant::now();
    let mut demo = Demo::new(bin, out)?;
    demo.namespaces_wanted = namespaces;
    let result = demo.run();
    let cleanup = demo.clean_up();
    match (&result, cleanup) {
        (Ok(()), Ok(())) => {
            demo.out.section("Done");
            demo.out.say(&format!(
                "{:.1} s from the first start to the last stop. Nothing is left running; {} is removed.",
                started.elapsed().as_secs_f64(),
                demo.dir.display()
            ));
            Ok(())
        }
        (Err(_), Ok(())) => {
            demo.out
                .say("Cleaned up: nothing is left running, the temporary directory is removed.");
            result
        }
        (_, Err(e)) => {
            if let Err(Failure::Failed(m)) = &result {
                eprintln!("xtask: {m}");
            }
            Err(e)
        }
    }
}

/// Terminal output: short headed sections, the orchestrator's lines indented.
struct Out {
    color: bool,
    step: std::cell::Cell<u32>,
}

impl Out {
    fn new() -> Out {
        Out {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            step: std::cell::Cell::new(0),
        }
    }

    fn section(&self, title: &str) {
        // On a terminal, a moment to read the previous section.
        if self.color && self.step.get() > 1 {
            std::thread::sleep(Duration::from_millis(SECTION_PAUSE_MS));
        }
        let n = self.step.get() + 1;
        self.step.set(n);
        if self.color {
            println!("\n\x1b[1m== {n}. {title}\x1b[0m");
        } else {
            println!("\n== {n}. {title}");
        }
    }

    /// Narration, wrapped to [`TEXT_COLUMNS`].
    fn say(&self, text: &str) {
        let mut line = String::new();
        for word in text.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > TEXT_COLUMNS {
                println!("   {line}");
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        println!("   {line}");
    }

    /// One log line, without its `<N>` priority prefix.
    fn log(&self, who: &str, line: &str) {
        let text = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map_or(line, |(_, t)| t);
        let text = text.strip_prefix("holden-agent: ").unwrap_or(text);
        if self.color {
            println!("    \x1b[2m{who:>12} |\x1b[0m {text}");
        } else {
            println!("    {who:>12} | {text}");
        }
    }
}

/// New complete lines of a growing log file.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    lines: Vec<String>,
}

impl LogTail {
    fn new(path: PathBuf) -> LogTail {
        LogTail {
            path,
            offset: 0,
            partial: String::new(),
            lines: Vec::new(),
        }
    }

    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.lines.push(line.trim_end().to_string());
        }
    }
}

/// Value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split([' ', '>'])
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn has(line: &str, needles: &[&str]) -> bool {
    needles.iter().all(|n| line.contains(n))
}

struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    out: Out,
    log: LogTail,
    /// Lines before this index have been waited for already.
    cursor: usize,
    /// `unshare` (or the bare shell loop when namespaces are not permitted).
    qm: Option<Child>,
    namespaced: bool,
    /// False with --no-namespaces.
    namespaces_wanted: bool,
    orchestrator: Option<Child>,
}

impl Demo {
    fn new(bin: PathBuf, out: Out) -> Result<Demo, Failure> {
        let dir = PathBuf::from(format!("/tmp/holden-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("qm"))
            .map_err(|e| Failure::Failed(format!("{}: {e}", dir.display())))?;
        Ok(Demo {
            bin,
            log: LogTail::new(dir.join("orchestrator.log")),
            dir,
            out,
            cursor: 0,
            qm: None,
            namespaced: false,
            namespaces_wanted: true,
            orchestrator: None,
        })
    }

    fn agent_socket(&self) -> PathBuf {
        self.dir.join("qm/agent.sock")
    }

    fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn run(&mut self) -> Result<(), Failure> {
        self.start_qm()?;
        self.start_orchestrator()?;
        self.crash_loop()?;
        let qm_pid = self.qm_restart()?;
        self.agent_kill(qm_pid)?;
        self.reexec()?;
        self.holdenctl_status()?;
        self.shutdown()
    }

    /// `holdenctl reexec`: the orchestrator executes its binary again and keeps both services.
    fn reexec(&mut self) -> Result<(), Failure> {
        self.out
            .section("A live re-exec: a new orchestrator binary without stopping anything");
        let radio = self.last_spawned("radio")?;
        self.out.say(&format!(
            "holdenctl --socket {} reexec (as after an update of the binary; SIGUSR2 does the same)",
            self.control_socket().display()
        ));
        let output = self.holdenctl("reexec")?;
        if !output.status.success() {
            return Err(Failure::Failed(format!(
                "holdenctl reexec exited with {}",
                output.status
            )));
        }
        self.show(&["service=radio ", "reason=adopted"])?;
        self.show(&["event=reexec-done"])?;
        self.out.say(&format!(
            "The same orchestrator pid, and radio kept its process (pid {radio}): nothing was              started twice, and its restart counter carried over."
        ));
        Ok(())
    }

    fn config(&self) -> String {
        let marker = format!("{{ {MARKER_ENV} = \"{}\" }}", self.dir.display());
        let mut c = String::new();
        let _ = write!(
            c,
            "# holden demo configuration (cargo xtask demo)\n\
             slots = 8\nlog_level = \"info\"\n\n\
             [agent]\nsocket = \"{}\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n\n\
             [shutdown]\ntimeout = \"5s\"\n\n\
             [control]\nsocket = \"{}\"\n\n\
             # Exits with code 1 a moment after every start.\n\
             [[service]]\nname = \"crashy\"\npartition = \"local\"\n\
             argv = [\"/bin/sh\", \"-c\", \"sleep 0.3; exit 1\"]\nenv = {marker}\n\
             restart = \"on-failure\"\nrestart_delay = \"0\"\n\
             backoff = {{ initial = \"200ms\", factor = 2.0, max = \"2s\" }}\n\
             start_limit = {{ burst = 5, interval = \"1m\" }}\n\n\
             # Runs in the QM stand-in, started by holden-agent.\n\
             [[service]]\nname = \"radio\"\npartition = \"qm\"\n\
             argv = [\"/bin/sleep\", \"3600\"]\nenv = {marker}\n\
             restart = \"on-failure\"\nrestart_delay = \"100ms\"\n",
            self.agent_socket().display(),
            self.control_socket().display(),
        );
        c
    }

    /// holden-agent under a shell loop (restarting it like QM's systemd would), as PID 1 of
    /// a new PID + mount namespace when permitted.
    fn start_qm(&mut self) -> Result<(), Failure> {
        let agent = self.bin.join("holden-agent");
        let script = format!(
            "while :; do {} --socket {}; sleep 0.2; done",
            agent.display(),
            self.agent_socket().display()
        );
        self.namespaced = self.namespaces_wanted
            && run::succeeds(
                "unshare",
                &[
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    "/bin/true",
                ],
            );
        self.out.section(if self.namespaced {
            "The QM stand-in: holden-agent in its own PID + mount namespace"
        } else {
            "The QM stand-in: holden-agent under a restarting shell loop"
        });
        let mut cmd;
        if self.namespaced {
            cmd = Command::new("unshare");
            cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
            cmd.args(["/bin/sh", "-c", &script]);
        } else {
            self.out.say(if self.namespaces_wanted {
                "`unshare --pid --fork --mount-proc` is not permitted here (it needs root, or \
                 util-linux's unshare), so the agent runs without its own namespaces: \
                 everything below still happens, only the isolation of the real QM partition \
                 is missing."
            } else {
                "--no-namespaces: the agent runs without its own namespaces; everything below \
                 still happens, only the isolation of the real QM partition is missing."
            });
            cmd = Command::new("/bin/sh");
            cmd.args(["-c", &script]);
        }
        let agent_log = std::fs::File::create(self.dir.join("agent.log"))
            .map_err(|e| Failure::Failed(format!("agent log: {e}")))?;
        cmd.env(MARKER_ENV, &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(agent_log)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| Failure::Failed(format!("cannot start the QM stand-in: {e}")))?;
        let shell = child.id() as i32;
        self.qm = Some(child);
        let agent_pid = self.wait_agent(None)?;
        let init = ppid(agent_pid).unwrap_or(shell);
        if self.namespaced {
            self.out.say(&format!(
                "holden-agent is pid {agent_pid} here and pid {} inside its namespace, whose \
                 PID 1 (pid {init} here) is a shell loop playing QM's systemd: it restarts the \
                 agent when it dies.",
                ns_pid(agent_pid).map_or("?".into(), |p| p.to_string())
            ));
        } else {
            self.out.say(&format!(
                "holden-agent is pid {agent_pid}, under a shell loop (pid {init}) that restarts it."
            ));
        }
        self.out.say(&format!(
            "It listens on {} and keeps no state about what it starts.",
            self.agent_socket().display()
        ));
        Ok(())
    }

    /// Waits for a running holden-agent (other than `old`) with its socket in place.
    fn wait_agent(&self, old: Option<i32>) -> Result<i32, Failure> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            interrupted()?;
            let pid = marked_processes(&self.dir)
                .into_iter()
                .find(|&p| comm(p).as_deref() == Some("holden-agent") && Some(p) != old);
            if let Some(pid) = pid.filter(|_| self.agent_socket().exists()) {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(Failure::Failed(format!(
                    "holden-agent did not come up; its log:\n{}",
                    read_or_empty(&self.dir.join("agent.log"))
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn start_orchestrator(&mut self) -> Result<(), Failure> {
        self.out
            .section("holden-orchestrator starts, with one local and one QM service");
        let config = self.dir.join("orchestrator.toml");
        std::fs::write(&config, self.config())
            .map_err(|e| Failure::Failed(format!("{}: {e}", config.display())))?;
        self.out.say(&format!(
            "Configuration {}: `crashy` (local, exits with code 1 after 0.3 s, restarted with \
             backoff 200 ms doubling up to 2 s, at most 5 starts a minute) and `radio` (QM, a \
             long-running process).",
            config.display()
        ));
        let log = std::fs::File::create(self.dir.join("orchestrator.log"))
            .map_err(|e| Failure::Failed(format!("orchestrator log: {e}")))?;
        let child = Command::new(self.bin.join("holden-orchestrator"))
            .arg("--config")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .env(MARKER_ENV, &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::Failed(format!("cannot start holden-orchestrator: {e}")))?;
        self.out
            .say(&format!("holden-orchestrator is pid {}.", child.id()));
        self.orchestrator = Some(child);
        self.show(&["event=start "])?;
        self.show(&["event=agent-up"])?;
        self.show(&["service=radio ", "reason=spawned"])?;
        Ok(())
    }

    fn crash_loop(&mut self) -> Result<(), Failure> {
        self.out
            .section("A crash-looping local service, restarted with backoff");
        self.out.say(
            "`crashy` dies 0.3 s after every start. Each exit is seen at once on its pidfd; \
             the next start waits twice as long as the one before:",
        );
        loop {
            let line = self.next_where("crashy exits", |l| {
                l.contains("service=crashy ")
                    && (l.contains("reason=exited") || l.contains("state=failed"))
            })?;
            self.out.log("orchestrator", &line);
            if line.contains("state=failed") {
                break;
            }
        }
        self.out.say(
            "After 5 starts within a minute (its start limit) one more would exceed it: \
             `crashy` is now `failed` and left alone until an operator starts it again \
             (holdenctl start crashy).",
        );
        Ok(())
    }

    /// Kills the QM service; the orchestrator restarts it through the agent.
    fn qm_restart(&mut self) -> Result<i32, Failure> {
        self.out.section("A QM service restarted through the agent");
        let pid = self.last_spawned("radio")?;
        let inside = ns_pid(pid).map_or(String::new(), |p| format!(" (pid {p} inside QM)"));
        self.out.say(&format!(
            "`radio` runs as pid {pid}{inside}. The agent started it and handed its pidfd to \
             the orchestrator, which is not its parent. Killing it: kill -9 {pid}"
        ));
        send(pid, SIGKILL);
        let exited = self.next(&["service=radio ", "reason=exited"])?;
        self.out.log("orchestrator", &exited);
        if exited.contains("status=unknown") {
            self.out.say(
                "This kernel has no PIDFD_INFO_EXIT (6.15+): the exit status of a process the \
                 orchestrator did not spawn is unknown, and is logged so, never invented.",
            );
        }
        let spawned = self.next(&["service=radio ", "reason=spawned"])?;
        self.out.log("orchestrator", &spawned);
        let new = field(&spawned, "spawned_pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let agent_log = read_or_empty(&self.dir.join("agent.log"));
        if let Some(line) = agent_log
            .lines()
            .rev()
            .find(|l| l.contains("-> started pid"))
        {
            self.out.log("agent", line);
        }
        self.out.say(&format!(
            "The orchestrator asked the agent for a new one: `radio` is pid {new} now."
        ));
        Ok(new)
    }

    /// Kills the agent: the QM service keeps running, supervised; the agent comes back.
    fn agent_kill(&mut self, qm_pid: i32) -> Result<(), Failure> {
        self.out
            .section("The agent killed with kill -9: QM processes stay supervised");
        let agent = self.wait_agent(None)?;
        self.out.say(&format!("kill -9 {agent}   (holden-agent)"));
        send(agent, SIGKILL);
        self.show(&["event=agent-down"])?;
        let new_agent = self.wait_agent(Some(agent))?;
        self.show(&["event=agent-up"])?;
        let alive = is_alive(qm_pid);
        self.out.say(&format!(
            "The QM stand-in's init restarted the agent (pid {new_agent}) and the orchestrator \
             reconnected. `radio` (pid {qm_pid}) {}: the orchestrator holds its pidfd, the \
             agent held nothing.",
            if alive { "never stopped" } else { "is GONE" }
        ));
        if !alive {
            return Err(Failure::Failed(format!(
                "radio (pid {qm_pid}) died with the agent"
            )));
        }
        self.out.say(&format!(
            "Still supervised: kill -9 {qm_pid}, and the new agent starts a replacement."
        ));
        send(qm_pid, SIGKILL);
        self.show(&["service=radio ", "reason=exited"])?;
        self.show(&["service=radio ", "reason=spawned"])?;
        Ok(())
    }

    fn holdenctl_status(&mut self) -> Result<(), Failure> {
        self.out.section("holdenctl status");
        let holdenctl = self.bin.join("holdenctl");
        let available = Command::new(&holdenctl)
            .args(["status", "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            self.out.say(
                "Skipped: this holdenctl has no `status` yet (`holdenctl status --help` does not \
                 exit 0).",
            );
            return Ok(());
        }
        self.out.say(&format!(
            "holdenctl --socket {} status",
            self.control_socket().display()
        ));
        let output = self.holdenctl("status")?;
        if !output.status.success() {
            self.out
                .say(&format!("holdenctl exited with {}.", output.status));
        }
        Ok(())
    }

    /// Runs `holdenctl --socket SOCKET command`, its output shown as holdenctl's lines.
    fn holdenctl(&mut self, command: &str) -> Result<std::process::Output, Failure> {
        let output = Command::new(self.bin.join("holdenctl"))
            .arg("--socket")
            .arg(self.control_socket())
            .arg(command)
            .env(MARKER_ENV, &self.dir)
            .output()
            .map_err(|e| Failure::Failed(format!("holdenctl: {e}")))?;
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            self.out.log("holdenctl", line);
        }
        Ok(output)
    }

    fn shutdown(&mut self) -> Result<(), Failure> {
        self.out.section("Clean shutdown");
        let Some(orch) = self.orchestrator.as_mut() else {
            return Ok(());
        };
        let pid = orch.id() as i32;
        self.out.say(&format!(
            "kill -TERM {pid}: the orchestrator stops every service (local and QM) with its \
             stop signal, then exits."
        ));
        send(pid, SIGTERM);
        let status = wait_child(orch, SHUTDOWN_TIMEOUT)?;
        self.log.poll();
        let lines: Vec<String> = self.log.lines[self.cursor..]
            .iter()
            .filter(|l| has(l, &["state=stopp"]) || has(l, &["event=shutdown-complete"]))
            .cloned()
            .collect();
        for line in &lines {
            self.out.log("orchestrator", line);
        }
        self.orchestrator = None;
        match status {
            Some(s) if s.success() => {
                self.out.say("holden-orchestrator exited with status 0.");
                Ok(())
            }
            other => Err(Failure::Failed(format!(
                "holden-orchestrator did not shut down cleanly: {other:?}"
            ))),
        }
    }

    /// Waits for the next line (after the cursor) with every needle; moves the cursor past it.
    fn next(&mut self, needles: &[&str]) -> Result<String, Failure> {
        self.next_where(&format!("{needles:?}"), |l| has(l, needles))
    }

    /// Waits for the next line (after the cursor) that `wanted` accepts.
    fn next_where(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Result<String, Failure> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            interrupted()?;
            self.log.poll();
            if let Some(i) = self.log.lines[self.cursor..].iter().position(|l| wanted(l)) {
                let i = self.cursor + i;
                self.cursor = i + 1;
                return Ok(self.log.lines[i].clone());
            }
            if let Some(orch) = self.orchestrator.as_mut() {
                if let Ok(Some(status)) = orch.try_wait() {
                    return Err(Failure::Failed(format!(
                        "holden-orchestrator exited ({status}); its log:\n{}",
                        self.log.lines.join("\n")
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Failure::Failed(format!(
                    "no log line {what} within {} s; the orchestrator's log:\n{}",
                    STEP_TIMEOUT.as_secs(),
                    self.log.lines.join("\n")
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn show(&mut self, needles: &[&str]) -> Result<(), Failure> {
        let line = self.next(needles)?;
        self.out.log("orchestrator", &line);
        Ok(())
    }

    fn last_spawned(&mut self, service: &str) -> Result<i32, Failure> {
        self.log.poll();
        let needle = format!("service={service} ");
        self.log
            .lines
            .iter()
            .rev()
            .find(|l| has(l, &[&needle, "reason=spawned"]))
            .and_then(|l| field(l, "spawned_pid")?.parse().ok())
            .ok_or_else(|| Failure::Failed(format!("no spawn of {service} in the log")))
    }

    /// Stops whatever is still running (by pid) and removes the temporary directory.
    fn clean_up(&mut self) -> Result<(), Failure> {
        if let Some(mut orch) = self.orchestrator.take() {
            send(orch.id() as i32, SIGTERM);
            if !matches!(wait_child(&mut orch, SHUTDOWN_TIMEOUT), Ok(Some(_))) {
                let _ = orch.kill();
                let _ = orch.wait();
            }
        }
        if let Some(mut qm) = self.qm.take() {
            if self.namespaced {
                // PID 1 of the namespace (the shell loop): killing it kills everything in it.
                if let Some(init) = children_of(qm.id() as i32).first() {
                    send(*init, SIGKILL);
                }
            }
            let _ = qm.kill();
            let _ = qm.wait();
        }
        let mut left = Vec::new();
        for _ in 0..50 {
            left = marked_processes(&self.dir);
            if left.is_empty() {
                break;
            }
            for &pid in &left {
                send(pid, SIGKILL);
            }
            std::thread::sleep(POLL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if left.is_empty() {
            Ok(())
        } else {
            Err(Failure::Failed(format!(
                "processes {left:?} (marked {MARKER_ENV}) could not be stopped"
            )))
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.clean_up();
    }
}

/// Waits up to `timeout` for a child; `None` if it is still running.
fn wait_child(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) if Instant::now() > deadline => return Ok(None),
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(Failure::Failed(format!("wait: {e}"))),
        }
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes (other than this one) whose environment carries the demo's marker.
fn marked_processes(dir: &Path) -> Vec<i32> {
    let marker = format!("{MARKER_ENV}={}\0", dir.display());
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .collect()
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn ppid(pid: i32) -> Option<i32> {
    status_field(pid, "PPid")?.parse().ok()
}

/// The pid in the innermost PID namespace, when it differs from ours.
fn ns_pid(pid: i32) -> Option<i32> {
    let nspid = status_field(pid, "NSpid")?;
    let all: Vec<&str> = nspid.split_whitespace().collect();
    (all.len() > 1).then(|| all.last()?.parse().ok())?
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn is_alive(pid: i32) -> bool {
    status_field(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

fn children_of(pid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| ppid(p) == Some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_log_lines() {
        let line = "<6>service=radio partition=qm state=running from=starting pid=7 qm_pid=3 \
                    restarts=1 reason=spawned spawned_pid=7";
        assert_eq!(field(line, "spawned_pid"), Some("7"));
        assert_eq!(field(line, "pid"), Some("7"));
        assert_eq!(field(line, "service"), Some("radio"));
        assert_eq!(field(line, "missing"), None);
    }

    #[test]
    fn log_tail_returns_complete_lines_only() {
        let path = std::env::temp_dir().join(format!("xtask-demo-tail-{}", std::process::id()));
        std::fs::write(&path, "one\ntw").unwrap();
        let mut tail = LogTail::new(path.clone());
        tail.poll();
        assert_eq!(tail.lines, ["one"]);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"o\nthree\n").unwrap();
        tail.poll();
        let _ = std::fs::remove_file(&path);
        assert_eq!(tail.lines, ["one", "two", "three"]);
    }

    #[test]
    fn finds_processes_by_their_environment_marker() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-marker-{}", std::process::id()));
        let mut child = Command::new("/bin/sleep")
            .arg("30")
            .env(MARKER_ENV, &dir)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Until the child has exec'd, /proc/PID/environ is still its parent's copy.
        let mut found = Vec::new();
        for _ in 0..500 {
            found = marked_processes(&dir);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![pid]);
        assert!(marked_processes(&dir).is_empty());
    }
}
