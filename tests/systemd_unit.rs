//! The shipped unit (`xtask/image/holden-orchestrator.service`) under a real systemd: systemd
//! runs as PID 1 of its own PID, mount and cgroup namespaces (as a container manager runs
//! it), with a private `/run`, a private cgroup2 tree (a child of this test's cgroup, removed
//! at the end), a read-only `/proc/sys`, and `/etc/systemd/system` holding only the shipped
//! unit, a drop-in that points it at this build and this test's directory, and a target that
//! wants it; so none of the machine's units start and nothing leaks out. `systemctl` talks to
//! it inside its mount namespace (`nsenter`). systemd's own log (debug) goes to a pty bound
//! over the namespace's `/dev/console`, kept in `DIR/systemd-console.log` for failures.
//!
//! One test, in order: `Type=notify` start (`READY=1`, `STATUS=`); a `kill -9` of the main
//! process while one service has just ended (systemd restarts the orchestrator, passes the fd
//! store back in `LISTEN_FDS`, the new instance takes every service over by its pidfd, the
//! ended one's pidfd was kept by `FDPOLL=0` and tells its exit status, the talking service
//! writes on into the same pipe); a live re-exec by SIGUSR2 and by `holdenctl reexec` (the
//! same main pid, the unit stays active) and `systemctl reload` (`ExecReload=`); the watchdog (a stopped orchestrator is killed and
//! restarted, the services taken over); `systemctl stop` (every service ends, the store is
//! emptied). Every process is ended with the namespace (SIGKILL of its PID 1) at the end.
//! Waits are bounded (30 s, to avoid hangs); nothing is timed.

mod orchestrator_support;

use orchestrator_support::{alive, field, holdenctl, kill, sleep_marker, TempDir};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = "holden-orchestrator.service";
const SHIPPED_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/xtask/image/holden-orchestrator.service"
);

/// systemd's binary, where Debian and Fedora put it.
fn systemd_binary() -> PathBuf {
    ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd is not installed (neither /lib/systemd/systemd nor \
                 /usr/lib/systemd/systemd): `cargo xtask ci` installs the Debian package \
                 `systemd`; this test needs it and does not pass without it"
            )
        })
}

/// The cgroup2 hierarchy's mount point (unified or hybrid layout) and this process's cgroup
/// in it, under which the test's own cgroup goes.
fn own_cgroup2() -> PathBuf {
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .unwrap_or_else(|| {
            panic!(
                "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: systemd \
                 needs one to run in a container"
            )
        });
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line (0::) in /proc/self/cgroup");
    root.join(path.trim_start_matches('/'))
}

/// A pty: the master (read by a thread into a file) and the slave's path, bound over the
/// namespace's `/dev/console`, which systemd as PID 1 logs to. The slave stays open here so
/// that reading the master never ends early.
fn console(log: PathBuf) -> (OwnedFd, PathBuf) {
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx");
    let mut unlock: libc::c_int = 0;
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes an unsigned int; both point at locals
    // that outlive the calls, on an fd we own.
    let ok = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) == 0
            && libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) == 0
    };
    assert!(ok, "pty: {}", std::io::Error::last_os_error());
    let path = PathBuf::from(format!("/dev/pts/{number}"));
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .expect("open the pty's slave");
    let mut reader = master;
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(log).unwrap();
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (OwnedFd::from(slave), path)
}

/// systemd as PID 1 of its own namespaces, and this test's directory.
struct Machine {
    dir: TempDir,
    /// `sh` → `unshare --fork`, whose child is systemd.
    unshare: Child,
    /// systemd's pid here (our PID namespace).
    systemd: i32,
    pid_ns: String,
    cgroup: PathBuf,
    _console: OwnedFd,
}

impl Machine {
    fn boot(dir: TempDir, config: &str) -> Machine {
        let systemd = systemd_binary();
        let bin = Path::new(env!("CARGO_BIN_EXE_holden-orchestrator"));
        let ctl = Path::new(env!("CARGO_BIN_EXE_holdenctl"));
        let units = dir.path("units");
        std::fs::create_dir_all(units.join(format!("{UNIT}.d"))).unwrap();
        std::fs::copy(SHIPPED_UNIT, units.join(UNIT)).unwrap();
        let config_path = dir.path("orchestrator.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path("orchestrator.log");
        // The shipped unit as it is, but for its paths (this build, this test's config and
        // control socket), a quicker restart and watchdog, no default dependencies (they
        // would pull in the machine's sysinit.target), its stderr in a file (no journald
        // here), and no core file (the watchdog's SIGABRT would leave one in /).
        let drop_in = format!(
            "[Unit]\nDefaultDependencies=no\n\n[Service]\nExecStartPre=\n\
             ExecStartPre={bin} --check --config {config}\nExecStart=\n\
             ExecStart={bin} --config {config}\nExecReload=\n\
             ExecReload={ctl} --socket {control} reload\nRestartSec=100ms\nWatchdogSec=3s\n\
             StandardOutput=append:{log}\nStandardError=append:{log}\nLimitCORE=0\n",
            bin = bin.display(),
            ctl = ctl.display(),
            config = config_path.display(),
            control = dir.path("control.sock").display(),
            log = log.display(),
        );
        std::fs::write(units.join(format!("{UNIT}.d/test.conf")), drop_in).unwrap();
        std::fs::write(
            units.join("holden-test.target"),
            format!("[Unit]\nDescription=holden test\nWants={UNIT}\n"),
        )
        .unwrap();
        let cgroup = own_cgroup2().join(format!("holden-systemd-test-{}", std::process::id()));
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("create the test's cgroup {}: {e}", cgroup.display()));
        let (slave, console_path) = console(dir.path("systemd-console.log"));
        // Inside the new namespaces: private mounts only (unshare's default propagation is
        // private), then systemd as PID 1, told it runs in a container.
        let inner = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             mount --bind {units} /etc/systemd/system\n\
             mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
             mount --bind /proc/sys /proc/sys\n\
             mount -o remount,bind,ro /proc/sys\n\
             mount --bind {console} /dev/console\n\
             exec env -i container=holden-test PATH=/usr/sbin:/usr/bin:/sbin:/bin {systemd} \
             --unit=holden-test.target --log-target=console --log-level=debug \
             --show-status=no\n",
            units = units.display(),
            console = console_path.display(),
            systemd = systemd.display(),
        );
        let outer = format!(
            "echo $$ > {procs} && exec unshare --cgroup --pid --fork --mount --mount-proc \
             --propagation private /bin/sh -c \"$0\"",
            procs = cgroup.join("cgroup.procs").display()
        );
        let stderr = std::fs::File::create(dir.path("unshare.log")).unwrap();
        let unshare = Command::new("/bin/sh")
            .arg("-c")
            .arg(outer)
            .arg(inner)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("run sh and unshare");
        let mut machine = Machine {
            dir,
            systemd: 0,
            pid_ns: String::new(),
            unshare,
            cgroup,
            _console: slave,
        };
        let unshare_pid = machine.unshare.id() as i32;
        let start = Instant::now();
        machine.systemd = loop {
            let systemd = orchestrator_support::children(unshare_pid)
                .into_iter()
                .find(|&p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|exe| exe.ends_with("systemd"))
                });
            if let Some(pid) = systemd {
                break pid;
            }
            // unshare or a mount failed (no CAP_SYS_ADMIN, no cgroup2, ...): say so at once.
            if let Ok(Some(status)) = machine.unshare.try_wait() {
                panic!(
                    "systemd cannot run in its own namespaces here ({status}); this test \
                     needs root with CAP_SYS_ADMIN and a cgroup2 hierarchy\n{}",
                    machine.logs()
                );
            }
            if start.elapsed() > orchestrator_support::WAIT {
                panic!("timed out waiting for systemd to start\n{}", machine.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        machine.pid_ns = std::fs::read_link(format!("/proc/{}/ns/pid", machine.systemd))
            .unwrap()
            .display()
            .to_string();
        machine.wait("systemd answering systemctl", || {
            let out = machine.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded" | "starting").then_some(())
        });
        machine
    }

    /// [`wait_until`], with systemd's and the orchestrator's logs in the failure.
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > orchestrator_support::WAIT {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path(name)).unwrap_or_default();
        let console = read("systemd-console.log");
        let tail: Vec<&str> = console.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- unshare:\n{}\n--- systemd (last 80 lines):\n{}\n--- orchestrator:\n{}\n--- systemctl status:\n{}",
            read("unshare.log"),
            tail.join("\n"),
            read("orchestrator.log"),
            String::from_utf8_lossy(&self.systemctl(&["status", UNIT]).stdout)
        )
    }

    /// `systemctl ARGS` inside systemd's mount and PID namespaces.
    fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.systemd.to_string())
            .args(["-m", "-p", "--", "systemctl", "--no-pager"])
            .args(args)
            .env("SYSTEMD_COLORS", "0")
            .output()
            .expect("run nsenter systemctl")
    }

    fn show(&self, property: &str) -> String {
        let out = self.systemctl(&["show", UNIT, "-p", property, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn main_pid(&self) -> i32 {
        self.show("MainPID").parse().unwrap_or(0)
    }

    fn store(&self) -> usize {
        self.show("NFileDescriptorStore")
            .parse()
            .unwrap_or(usize::MAX)
    }

    /// Waits until systemd's fd store holds `n` entries.
    fn wait_store(&self, n: usize, what: &str) {
        let mut last = 0;
        let start = Instant::now();
        while start.elapsed() < orchestrator_support::WAIT {
            last = self.store();
            if last == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {n} entries in systemd's fd store ({what}); it holds {last}\n{}",
            self.logs()
        );
    }

    /// Waits until the unit is `active (running)` with a main pid other than `not`; returns it.
    fn wait_running(&self, what: &str, not: i32) -> i32 {
        self.wait(what, || {
            let main = self.main_pid();
            (self.show("ActiveState") == "active"
                && self.show("SubState") == "running"
                && main != 0
                && main != not)
                .then_some(main)
        })
    }

    /// Our pid of the process that is `ns_pid` in systemd's PID namespace.
    fn host_pid(&self, ns_pid: i32) -> Option<i32> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
            if ns.display().to_string() != self.pid_ns {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            (nspid.split_whitespace().last()?.parse::<i32>().ok()? == ns_pid).then_some(pid)
        })
    }

    fn orchestrator_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("orchestrator.log")).unwrap_or_default()
    }

    /// The orchestrator's log, one string per instance (each begins with `event=start`).
    fn instances(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in self.orchestrator_log().lines() {
            if line.contains("event=start ") {
                out.push(String::new());
            }
            // (`--check`'s line before the first start belongs to none.)
            let Some(last) = out.last_mut() else {
                continue;
            };
            last.push_str(line);
            last.push('\n');
        }
        out
    }

    /// The services' pids (systemd's PID namespace, as the orchestrator sees them) by
    /// `holdenctl status --json`, once every one named has a process.
    fn pids(&self, names: &[&str]) -> Vec<i32> {
        self.wait(&format!("{names:?} running"), || {
            let out = holdenctl(&self.dir.path("control.sock"), &["status", "--json"]);
            let json = String::from_utf8_lossy(&out.stdout).to_string();
            names.iter().map(|n| pid_in(&json, n)).collect()
        })
    }
}

impl Drop for Machine {
    /// SIGKILL of systemd ends its PID namespace, so every process in it; then the
    /// namespaces' last process (unshare) is reaped and the cgroup tree removed.
    fn drop(&mut self) {
        if self.systemd > 0 {
            kill(self.systemd, libc::SIGKILL);
        }
        kill(self.unshare.id() as i32, libc::SIGKILL);
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cgroup.exists() && Instant::now() < deadline {
            let mut dirs = Vec::new();
            collect_dirs(&self.cgroup, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The pid of service `name` in a `holdenctl status --json` answer, if it has a process.
fn pid_in(json: &str, name: &str) -> Option<i32> {
    let at = json.find(&format!("{{\"name\":\"{name}\""))?;
    let rest = &json[at..];
    let rest = &rest[..rest.find('}').unwrap_or(rest.len())];
    rest.split("\"pid\":")
        .nth(1)?
        .split([',', '}'])
        .next()?
        .parse()
        .ok()
}

/// The numbers of the talker's lines (`line N`) in a log, with the pid that wrote each.
fn talk_lines(log: &str) -> Vec<(i32, u64)> {
    log.lines()
        .filter(|l| l.contains("service=talk ") && l.contains("event=output"))
        .filter_map(|l| {
            let pid = field(l, "pid")?.parse().ok()?;
            let n = l
                .split("text=\"line ")
                .nth(1)?
                .trim_end_matches('"')
                .parse()
                .ok()?;
            Some((pid, n))
        })
        .collect()
}

/// `KEY=` of a process's environment.
fn environ(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{key}=")).map(str::to_string)
    })
}

fn process_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

#[test]
fn the_shipped_unit_under_systemd() {
    let dir = TempDir::new("systemd");
    let marker = sleep_marker("1400");
    let talker = "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done";
    let config = format!(
        "runtime_dir = {run:?}\n\n[agent]\nsocket = {agent:?}\n\n[control]\nsocket = {control:?}\n\n\
         [log]\njournal_socket = {journal:?}\n\n\
         [[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/sleep\", {marker:?}]\n\
         stdout = \"null\"\nstderr = \"null\"\n\n\
         [[service]]\nname = \"talk\"\npartition = \"local\"\n\
         argv = [\"/bin/sh\", \"-c\", {talker:?}, {marker:?}]\nstdout = \"log\"\nstderr = \"null\"\n\n\
         [[service]]\nname = \"gone\"\npartition = \"local\"\nargv = [\"/bin/sleep\", {marker:?}]\n\
         stdout = \"null\"\nstderr = \"null\"\nrestart = \"never\"\n",
        run = dir.path("run").display().to_string(),
        agent = dir.path("agent.sock").display().to_string(),
        control = dir.path("control.sock").display().to_string(),
        journal = dir.path("no-journal.sock").display().to_string(),
    );
    let m = Machine::boot(dir, &config);

    // 1. Type=notify: active (running) only after READY=1; STATUS= shown.
    let main1 = m.wait_running("the first start (READY=1)", 0);
    m.wait("STATUS=", || {
        m.show("StatusText")
            .starts_with("3 services (0 in QM)")
            .then_some(())
    });
    let status = String::from_utf8_lossy(&m.systemctl(&["status", UNIT]).stdout).to_string();
    assert!(
        status.contains("Active: active (running)")
            && status.contains("Status: \"3 services (0 in QM)"),
        "{status}"
    );
    let pids = m.pids(&["a", "talk", "gone"]);
    let (a, talk, gone) = (pids[0], pids[1], pids[2]);
    // The fd store (systemd 252 does not set FDSTORE: the unit does) holds exactly each
    // service's pidfd and the talker's stdout pipe, both ends.
    m.wait_store(5, "each service's pidfd and talk's stdout pipe");
    let host = |ns: i32| {
        m.host_pid(ns)
            .unwrap_or_else(|| panic!("no process {ns} in systemd's namespace\n{}", m.logs()))
    };
    let (host_main1, host_a, host_talk, host_gone) = (host(main1), host(a), host(talk), host(gone));
    m.wait("the talker's lines", || {
        (talk_lines(&m.orchestrator_log()).len() >= 3).then_some(())
    });

    // 2. kill -9 of the main process, while `gone` has just ended: the orchestrator is
    // stopped, `gone` killed (a zombie of the stopped orchestrator), then the orchestrator
    // killed; `gone` is reaped by systemd (PID 1) before any orchestrator could see it.
    kill(host_main1, libc::SIGSTOP);
    kill(host_gone, libc::SIGKILL);
    m.wait("gone a zombie", || {
        (process_state(host_gone).as_deref() == Some("Z")).then_some(())
    });
    let said_before = talk_lines(&m.orchestrator_log())
        .last()
        .map_or(0, |&(_, n)| n);
    kill(host_main1, libc::SIGKILL);
    let main2 = m.wait_running("the restart after kill -9 (READY=1)", main1);
    assert_eq!(m.show("NRestarts"), "1", "{}", m.logs());
    // What systemd passed back: the store's five entries.
    let host_main2 = host(main2);
    let names = environ(host_main2, "LISTEN_FDNAMES").unwrap_or_default();
    let mut names: Vec<&str> = names.split(':').collect();
    names.sort();
    assert_eq!(
        names,
        [
            "out.talk.stdout.r",
            "out.talk.stdout.w",
            "pid.a",
            "pid.gone",
            "pid.talk"
        ],
        "LISTEN_FDNAMES\n{}",
        m.logs()
    );
    assert_eq!(environ(host_main2, "LISTEN_FDS").as_deref(), Some("5"));
    let second = m.wait("the second instance's summary", || {
        let instances = m.instances();
        instances
            .get(1)
            .filter(|log| log.contains("event=carried-over"))
            .cloned()
    });
    let summary = second
        .lines()
        .find(|l| l.contains("event=carried-over"))
        .unwrap()
        .to_string();
    // a and talk by their kept pidfds; gone's too (FDPOLL=0: systemd kept the pidfd of the
    // process that ended), which tells its status.
    assert!(
        summary.contains("by_kept_pidfd=3") && summary.contains("found_by_tag=0"),
        "{summary}\n{}",
        m.logs()
    );
    assert_eq!(m.pids(&["a", "talk"]), [a, talk], "the same processes");
    assert!(alive(host_a) && alive(host_talk));
    let gone_lines: Vec<&str> = second
        .lines()
        .filter(|l| l.contains("service=gone "))
        .collect();
    assert!(
        gone_lines.iter().any(|l| l.contains("signal=SIGKILL"))
            && !gone_lines.iter().any(|l| l.contains("event=process-gone")),
        "gone's exit, read through its kept pidfd: {gone_lines:?}"
    );
    // talk writes on into the same pipe, read by the new instance.
    m.wait("the talker's lines going on in the new instance", || {
        let instances = m.instances();
        let lines = talk_lines(instances.get(1)?);
        (lines.len() >= 5).then_some(())
    });
    let said = talk_lines(&m.instances()[1]);
    assert!(
        said.iter().all(|&(pid, _)| pid == talk),
        "{said:?} (talk is {talk})"
    );
    assert!(said.iter().any(|&(_, n)| n > said_before), "{said:?}");
    assert!(
        !second.contains("reason=spawned") && !second.contains("SIGPIPE"),
        "nothing started again:\n{second}"
    );
    m.wait("STATUS= of the new instance", || {
        (m.show("StatusText") == "3 services (0 in QM), 1 failed: gone; agent not needed")
            .then_some(())
    });
    // gone has no process now: its entry left the store.
    m.wait_store(4, "gone's pidfd removed");

    // 4. Live re-exec under systemd: SIGUSR2 to the main process only, then holdenctl.
    let out = m.systemctl(&["kill", "--kill-whom=main", "-s", "SIGUSR2", UNIT]);
    assert!(out.status.success(), "{out:?}");
    m.wait("the re-exec by SIGUSR2", || {
        m.orchestrator_log()
            .contains("event=reexec-done generation=1 ")
            .then_some(())
    });
    assert_eq!(m.wait_running("active after the re-exec", 0), main2);
    let out = holdenctl(&m.dir.path("control.sock"), &["reexec"]);
    assert!(out.status.success(), "{out:?}");
    m.wait("the re-exec by holdenctl", || {
        m.orchestrator_log()
            .contains("event=reexec-done generation=2 ")
            .then_some(())
    });
    assert_eq!(m.wait_running("active after the second re-exec", 0), main2);
    // systemctl reload: ExecReload= (holdenctl reload), RELOADING=1 ... READY=1.
    let out = m.systemctl(&["reload", UNIT]);
    assert!(out.status.success(), "{out:?}\n{}", m.logs());
    m.wait("the reload", || {
        m.orchestrator_log().contains("event=reload ").then_some(())
    });
    assert_eq!(m.wait_running("active after the reload", 0), main2);
    assert_eq!(m.show("NRestarts"), "1");
    assert_eq!(m.pids(&["a", "talk"]), [a, talk]);
    let instances = m.instances();
    assert_eq!(instances.len(), 4, "two starts, two re-execs");
    for log in &instances[2..] {
        assert!(!log.contains("reason=spawned"), "{log}");
    }
    m.wait_store(4, "after the re-execs");

    // 5. WatchdogSec: a stopped orchestrator sends no WATCHDOG=1; systemd kills it
    // (SIGABRT, then SIGCONT) and starts it again, which takes the services over.
    kill(host_main2, libc::SIGSTOP);
    let main3 = m.wait_running("the restart after the watchdog", main2);
    assert_eq!(m.show("NRestarts"), "2");
    let console = std::fs::read_to_string(m.dir.path("systemd-console.log")).unwrap_or_default();
    assert!(console.contains("Watchdog timeout"), "{}", m.logs());
    assert_eq!(m.pids(&["a", "talk"]), [a, talk]);
    let fifth = m.wait("the third start's summary", || {
        m.instances()
            .get(4)
            .filter(|log| log.contains("event=carried-over"))
            .cloned()
    });
    assert!(fifth.contains("by_kept_pidfd=2"), "{fifth}");
    assert!(!fifth.contains("reason=spawned"), "{fifth}");

    // 3. systemctl stop: the orchestrator stops every service and exits; nothing is left.
    let host_main3 = host(main3);
    let out = m.systemctl(&["stop", UNIT]);
    assert!(out.status.success(), "{out:?}\n{}", m.logs());
    assert_eq!(m.show("ActiveState"), "inactive");
    assert_eq!(m.store(), 0, "systemctl stop empties the fd store");
    for pid in [host_main3, host_a, host_talk] {
        assert!(!alive(pid), "{pid} still runs\n{}", m.logs());
    }
    assert!(m
        .orchestrator_log()
        .contains("event=shutdown-complete services=3"));
    // The unit's cgroup empties: what is left a moment is the talker's last `sleep 0.05`,
    // orphaned when its shell was stopped (KillMode=process: systemd leaves a service's
    // descendants to the orchestrator, which stops the service's process, not its tree).
    let procs = m
        .cgroup
        .join("system.slice")
        .join(UNIT)
        .join("cgroup.procs");
    let mut left = String::new();
    let start = Instant::now();
    while start.elapsed() < orchestrator_support::WAIT {
        left = std::fs::read_to_string(&procs).unwrap_or_default();
        if left.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = left
        .split_whitespace()
        .map(|p| {
            format!(
                "{p}: {:?}",
                orchestrator_support::cmdline(p.parse().unwrap_or(0))
            )
        })
        .collect();
    assert!(left.is_empty(), "left in the unit's cgroup: {left:?}");
}
