//! The processes of a benchmark run: a per-run directory, holden-orchestrator with a
//! generated configuration, holden-agent in its own PID namespace. Everything is ended by pid.

use super::procfs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for a SIGTERMed orchestrator to stop its services and exit (4096 of them).
const STOP_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for the agent's socket to appear.
const AGENT_START_WAIT: Duration = Duration::from_secs(20);
/// Longest log excerpt quoted in an error.
const LOG_TAIL_BYTES: usize = 2000;

/// A directory of its own for one run (configurations, records, logs, sockets), removed when
/// dropped. Its path is also the marker that finds stray processes.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new() -> Result<RunDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = PathBuf::from(format!("/tmp/holden-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunDir(path))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// SIGKILLs every live process whose arguments mention this directory; returns their
    /// command lines.
    pub fn sweep(&self) -> Vec<String> {
        let strays = procfs::pids_with(&self.0);
        let mut lines = Vec::new();
        for &pid in &strays {
            lines.push(format!("pid {pid}: {}", procfs::cmdline(pid).join(" ")));
            signal(pid, "KILL");
        }
        lines
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.sweep();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends a signal (by name: TERM, KILL) to one pid with kill(1): xtask stays std-only.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last bytes of a log file, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim_end().to_string()
}

/// A supervisor under measurement: holden-orchestrator or a floor loop.
pub trait Supervisor {
    fn pid(&self) -> u32;
    /// An error when it has exited (it never should during a phase).
    fn check(&mut self) -> Result<(), String>;
    /// Its stderr.
    fn log(&self) -> &Path;
}

/// One line of an orchestrator's stderr and the instant the bench read it.
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A running holden-orchestrator (stderr in `<name>.log` of the run directory).
pub struct Orchestrator {
    child: Option<Child>,
    pub log: PathBuf,
    name: String,
}

impl Orchestrator {
    pub fn start(bin: &Path, dir: &RunDir, name: &str, config: &str) -> Result<Self, String> {
        Self::start_as(bin, dir, name, config, false)
    }

    /// `realtime`: under `chrt --fifo --reset-on-fork 1`, as the shipped unit schedules it
    /// (chrt execs the orchestrator: the same pid).
    pub fn start_as(
        bin: &Path,
        dir: &RunDir,
        name: &str,
        config: &str,
        realtime: bool,
    ) -> Result<Self, String> {
        let config_path = dir.join(&format!("{name}.toml"));
        std::fs::write(&config_path, config)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let log = dir.join(&format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = if realtime {
            let mut chrt = Command::new("chrt");
            chrt.args(["--fifo", "--reset-on-fork", "1"]).arg(bin);
            chrt
        } else {
            Command::new(bin)
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--runtime-dir")
            .arg(dir.join(&format!("{name}.run")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .env_remove("NOTIFY_SOCKET")
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(Orchestrator {
            child: Some(child),
            log,
            name: format!("orchestrator ({name})"),
        })
    }

    /// Started through `launch RECORDS` (bench-launch: it appends the instant of its exec of
    /// the orchestrator to RECORDS, on the services' clock, and becomes the orchestrator, same
    /// pid) with stderr on a pipe: each line goes to `<name>.log` as usual and, with the
    /// instant the bench read it, to the receiver. Also returns the instant just before the
    /// spawn. The thread that reads the pipe ends when the orchestrator is gone.
    pub fn start_launched(
        bin: &Path,
        launch: &Path,
        records: &Path,
        dir: &RunDir,
        name: &str,
        config: &str,
    ) -> Result<(Self, Instant, mpsc::Receiver<Line>), String> {
        let config_path = dir.join(&format!("{name}.toml"));
        std::fs::write(&config_path, config)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let log = dir.join(&format!("{name}.log"));
        let mut log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(launch);
        command
            .arg(records)
            .arg(bin)
            .arg("--config")
            .arg(&config_path)
            .arg("--runtime-dir")
            .arg(dir.join(&format!("{name}.run")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .process_group(0);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", launch.display()))?;
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut reader = std::io::BufReader::new(stderr);
            let mut text = String::new();
            loop {
                text.clear();
                match reader.read_line(&mut text) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let at = Instant::now();
                let _ = log_file.write_all(text.as_bytes());
                // The receiver may be gone (the phase is over): keep draining the pipe.
                let _ = tx.send(Line {
                    at,
                    text: text.trim_end().to_string(),
                });
            }
        });
        Ok((
            Orchestrator {
                child: Some(child),
                log,
                name: format!("orchestrator ({name})"),
            },
            started,
            rx,
        ))
    }

    /// SIGTERM (it stops its services, then exits 0); SIGKILL after [`STOP_WAIT`]. An error
    /// when it did not exit cleanly.
    pub fn stop(mut self) -> Result<(), String> {
        let child = self.child.take().expect("stopped once");
        stop_child(child, &self.name, &self.log)
    }
}

impl Supervisor for Orchestrator {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check(&mut self) -> Result<(), String> {
        check_child(self.child.as_mut(), &self.name, &self.log)
    }

    fn log(&self) -> &Path {
        &self.log
    }
}

/// An error when `child` has exited.
fn check_child(child: Option<&mut Child>, name: &str, log: &Path) -> Result<(), String> {
    let Some(child) = child else {
        return Err(format!("{name} already stopped"));
    };
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(format!(
            "{name} exited during the run: {status}; its log ends with:\n{}",
            log_tail(log)
        )),
        Err(e) => Err(format!("{name}: wait: {e}")),
    }
}

/// SIGTERM, then SIGKILL after [`STOP_WAIT`]; an error unless it exited 0 in time.
fn stop_child(mut child: Child, name: &str, log: &Path) -> Result<(), String> {
    signal(child.id(), "TERM");
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!(
                    "{name} stopped with {status}; its log ends with:\n{}",
                    log_tail(log)
                ))
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not stop within {} s of SIGTERM; killed",
                    STOP_WAIT.as_secs()
                ));
            }
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// bench-floor-scale: the floor loop for N services (stderr in `<name>.log`).
pub struct FloorScale {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl FloorScale {
    pub fn start(
        bin: &Path,
        dir: &RunDir,
        name: &str,
        probe: &Path,
        records: &Path,
        services: usize,
        crashing: usize,
    ) -> Result<FloorScale, String> {
        let log = dir.join(&format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg("--probe")
            .arg(probe)
            .arg("--records")
            .arg(records)
            .args(["--services", &services.to_string()])
            .args(["--crashing", &crashing.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(FloorScale {
            child: Some(child),
            log,
            name: format!("bench-floor-scale ({name})"),
        })
    }

    /// SIGTERM: it kills and reaps its children and exits 0.
    pub fn stop(mut self) -> Result<(), String> {
        let child = self.child.take().expect("stopped once");
        stop_child(child, &self.name, &self.log)
    }
}

impl Supervisor for FloorScale {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check(&mut self) -> Result<(), String> {
        check_child(self.child.as_mut(), &self.name, &self.log)
    }

    fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for FloorScale {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// holden-agent as in the QM partition: `unshare --pid --fork --mount-proc --kill-child`, a
/// small init (`sh`, as PID 1 of the namespace) and the agent beneath it.
pub struct Agent {
    unshare: Child,
    pid: u32,
}

impl Agent {
    pub fn start(bin: &Path, dir: &RunDir) -> Result<Agent, String> {
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        // --kill-child: when unshare dies, the namespace's init gets SIGKILL, and with it every
        // process of the namespace.
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(["/bin/sh", "-c", "\"$0\" --socket \"$1\" & wait"])
            .arg(bin)
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("unshare: {e} (util-linux installed? run as root)"))?;
        let deadline = Instant::now() + AGENT_START_WAIT;
        let bin_text = bin.to_string_lossy().into_owned();
        let socket_text = socket.to_string_lossy().into_owned();
        loop {
            if let Ok(Some(status)) = unshare.try_wait() {
                return Err(format!(
                    "holden-agent in its PID namespace exited at once ({status}): {}",
                    log_tail(&log)
                ));
            }
            let pid = procfs::pids().into_iter().find(|&p| {
                let args = procfs::cmdline(p);
                args.first() == Some(&bin_text) && args.contains(&socket_text)
            });
            if let (Some(pid), true) = (pid, socket.exists()) {
                return Ok(Agent { unshare, pid });
            }
            if Instant::now() > deadline {
                let _ = unshare.kill();
                let _ = unshare.wait();
                return Err(format!(
                    "holden-agent did not create {} within {} s: {}",
                    socket.display(),
                    AGENT_START_WAIT.as_secs(),
                    log_tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's pid in our PID namespace.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// An error when the agent is gone.
    pub fn check(&self) -> Result<(), String> {
        if procfs::alive(self.pid) {
            Ok(())
        } else {
            Err(format!(
                "holden-agent (pid {}) died during the run",
                self.pid
            ))
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
