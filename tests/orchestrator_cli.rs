//! holden-orchestrator's command line, configuration errors and sd_notify.

mod orchestrator_support;

use holden::wire::v02::SOCKET_PATH_ENV;
use orchestrator_support::*;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    Command::new(orchestrator_bin())
        .args(args)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run holden-orchestrator")
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config PATH") && text.contains("'LOCAL CMD' 'QM CMD'"),
        "{text}"
    );
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("holden-orchestrator "));
}

#[test]
fn misuse_exits_2_with_a_message() {
    for args in [
        &["--bogus"][..],
        &["only-one"],
        &["a", "b", "c"],
        &["--config"],
        &["--config", "/x", "a", "b"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        // One line and a pointer to --help, not the whole help.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("holden-orchestrator: ")
                && err.ends_with(" (see holden-orchestrator --help)\n")
                && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

fn run_os(args: &[&OsStr], tweak: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(orchestrator_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove(SOCKET_PATH_ENV);
    tweak(&mut cmd);
    cmd.output().expect("run holden-orchestrator")
}

/// `--config=PATH` and `--config PATH` both take a path that is not UTF-8.
#[test]
fn a_config_path_that_is_not_utf8_is_read_in_both_spellings() {
    let dir = TempDir::new("cli-nonutf8");
    let path = dir.0.join(OsStr::from_bytes(b"conf-\xff\xfe.toml"));
    assert!(path.to_str().is_none());
    std::fs::write(&path, service("a", "local", &["/bin/true"], "")).unwrap();
    let mut joined = OsString::from("--config=");
    joined.push(&path);
    for args in [
        vec![OsStr::new("--check"), joined.as_os_str()],
        vec![
            OsStr::new("--check"),
            OsStr::new("--config"),
            path.as_os_str(),
        ],
        vec![joined.as_os_str(), OsStr::new("--check")],
    ] {
        let out = run_os(&args, |_| {});
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("configuration valid: 1 services"),
            "{args:?}: {out:?}"
        );
    }
    // The path is still named (lossily) when the file is invalid.
    std::fs::write(&path, "slots = \"many\"\n").unwrap();
    let out = run_os(&[OsStr::new("--check"), joined.as_os_str()], |_| {});
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conf-"),
        "{out:?}"
    );
}

/// After `--`, arguments are the v0.2 commands even when they start with `-`.
#[test]
fn double_dash_ends_the_options_of_the_v02_form() {
    let dir = TempDir::new("cli-dashdash");
    // A local program whose name starts with `-`, found through PATH.
    let bin = dir.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.join("-local")).unwrap();
    let env = |cmd: &mut Command| {
        cmd.env(SOCKET_PATH_ENV, dir.path("agent.sock"))
            .env("PATH", &bin);
    };
    let out = run_os(
        &[
            OsStr::new("--check"),
            OsStr::new("--"),
            OsStr::new("-local --flag"),
            OsStr::new("--help"),
        ],
        env,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 services (1 local, 1 qm)"),
        "{out:?}"
    );
    // Nothing after `--` is an option, a flag takes no value, the v0.2 commands must be text.
    for (args, message) in [
        (vec![OsStr::new("--"), OsStr::new("--check")], "got 1"),
        (vec![OsStr::new("--check=yes")], "--check takes no value"),
        (
            vec![
                OsStr::new("--check"),
                OsStr::from_bytes(b"/bin/\xff"),
                OsStr::new("qm"),
            ],
            "argument \"/bin/\\xFF\" is not UTF-8",
        ),
    ] {
        let out = run_os(&args, env);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}: {out:?}"
        );
    }
}

#[test]
fn check_validates_and_errors_name_the_place() {
    let dir = TempDir::new("cli-check");
    let good = dir.path("good.toml");
    std::fs::write(&good, service("a", "local", &["/bin/true"], "")).unwrap();
    let out = run(&["--check", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 services"));

    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        service("a", "local", &["/bin/true"], "") + &service("a", "local", &["/bin/true"], ""),
    )
    .unwrap();
    let out = run(&["--check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", bad.display())) && err.contains("it is invalid"),
        "{err}"
    );

    let missing = run(&["--check", "--config", "/nonexistent/holden.toml"]);
    assert_eq!(missing.status.code(), Some(1));
}

/// `--check` prints every error of a file, one line each with its place, then a summary.
#[test]
fn check_reports_every_error_of_a_file() {
    let dir = TempDir::new("cli-check-all");
    let path = dir.path("bad.toml");
    std::fs::write(
        &path,
        "slots = \"8\"\n[[service]]\nname = \"radio\"\npartition = \"qm\"\nargv = [\"/usr/bin/radio\"]\nuid = \"x\"\nrestart_delay = \"1.5s\"\n[service.backoff]\ninitial = \"1s\"\n",
    )
    .unwrap();
    let out = run(&["--check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    let expected = format!(
        "<3>{p}:1:9: `slots`: expected an integer 1..=8192, found the string \"8\"\n\
         <3>{p}:6:7: `service.radio.uid`: expected an integer 0..=4294967294, found the string \"x\"\n\
         <3>{p}:7:17: `service.radio.restart_delay`: bad duration \"1.5s\": fractions are not accepted: write \"1500ms\" (an integer and a unit: ns, us, ms, s, m or h)\n\
         <3>{p}:8:1: `service.radio.backoff.max`: missing key `max`: expected a duration string like \"250ms\" or \"5s\"\n\
         <3>holden-orchestrator: 4 errors in the configuration; it is invalid\n"
    );
    assert_eq!(err, expected);
}

/// `--check` rejects whatever start-up rejects (an unknown control.group: both with the
/// file's line and column), and what would fail for sure: a local program that does not
/// exist or is not executable, a local working directory that does not exist. It warns about
/// what it cannot know (QM paths) and about an empty file; start-up starts such a file.
#[test]
fn check_looks_at_the_machine_as_start_up_does() {
    let dir = TempDir::new("cli-check-host");
    let header = config_header(&dir.path("none.sock"));
    let write = |name: &str, text: &str| {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // An unknown group: --check and start-up refuse it alike, at its place.
    let group = write(
        "group.toml",
        &format!(
            "{}{}",
            header.replace(
                "[control]\n",
                "[control]\ngroup = \"no-such-group-holden\"\n"
            ),
            service("a", "local", &["/bin/true"], "")
        ),
    );
    let place = format!("{}:", group.display());
    for args in [&["--check", "--config"][..], &["--config"]] {
        let mut argv = args.to_vec();
        argv.push(group.to_str().unwrap());
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&place)
                && err.contains("`control.group`: no group named \"no-such-group-holden\""),
            "{args:?}: {err}"
        );
    }

    // A missing program, one that is not executable, a missing working directory.
    let not_exec = dir.path("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let marker = sleep_marker("7373");
    let text = header.clone()
        + &service("gone", "local", &["/nonexistent/holden-prog"], "")
        + &service("plain", "local", &[not_exec.to_str().unwrap()], "")
        + &service(
            "nowhere",
            "local",
            &["/bin/sleep", &marker],
            "working_directory = \"/nonexistent/holden-dir\"",
        )
        + &service("radio", "qm", &["/usr/bin/radio-app"], "");
    let host = write("host.toml", &text);
    let out = run(&["--check", "--config", host.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    for needle in [
        "`service.gone.argv[0]`: program \"/nonexistent/holden-prog\" cannot be started: No such file or directory",
        "`service.plain.argv[0]`: program",
        "is not executable",
        "`service.nowhere.working_directory`: \"/nonexistent/holden-dir\" cannot be the working directory",
        "warning: `service.radio.argv[0]`: \"/usr/bin/radio-app\" not checked: its program is a path inside the QM partition",
        "3 errors in the configuration; it is invalid",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(err.contains(&format!("{}:", host.display())), "{err}");

    // An empty file: valid, with a warning.
    let empty = write("empty.toml", "");
    let out = run(&["--check", "--config", empty.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stderr(&out),
        format!(
            "<4>{}: warning: 0 services: the orchestrator would start and supervise nothing\n",
            empty.display()
        )
    );
}

#[test]
fn an_invalid_file_starts_nothing() {
    let dir = TempDir::new("cli-invalid");
    let m = "7777.4242";
    let text = service("fine", "local", &["/bin/sleep", m], "")
        + &service("broken", "local", &["/bin/true"], "restart = \"sometimes\"");
    let path = dir.path("o.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restart") && err.contains(":"), "{err}");
    assert!(pids_with(m).is_empty());
}

fn notify_lines(sock: &UnixDatagram, until: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    wait_until(&format!("notification {until}"), || {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        got.iter().any(|m| m.starts_with(until)).then_some(())
    });
    got
}

#[test]
fn sd_notify_ready_status_watchdog_and_stopping() {
    let dir = TempDir::new("cli-notify");
    let sock_path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let cfg =
        config_header(&dir.path("none.sock")) + &service("s", "local", &["/bin/sleep", "1000"], "");
    std::fs::write(dir.path("o.toml"), cfg).unwrap();
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg("--config").arg(dir.path("o.toml"));
    let mut orch = Orch::spawn(
        &dir,
        cmd_with_notify(cmd, sock_path.to_str().unwrap(), Some(100_000)),
    );
    let got = notify_lines(&sock, "READY=1");
    let mut got = got
        .into_iter()
        .chain(notify_lines(&sock, "STATUS="))
        .collect::<Vec<_>>();
    got.extend(notify_lines(&sock, "WATCHDOG=1"));
    got.extend(notify_lines(&sock, "WATCHDOG=1"));
    kill(orch.pid(), libc::SIGTERM);
    got.extend(notify_lines(&sock, "STOPPING=1"));
    let status = wait_until("exit", || orch.child.try_wait().unwrap());
    assert!(status.success());
    assert!(
        got.iter()
            .any(|m| m == "STATUS=1 service (0 in QM), none failed; agent not needed"),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "{got:?}"
    );
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// `STATUS=` names the failed services; a reload (SIGHUP, as `systemctl reload` sends through
/// the unit's ExecReload) is framed by `RELOADING=1` with `MONOTONIC_USEC=` and `READY=1`.
#[test]
fn sd_notify_names_failed_services_and_frames_a_reload() {
    let dir = TempDir::new("cli-notify-reload");
    let sock_path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let cfg = config_header(&dir.path("none.sock"))
        + &service("fine", "local", &["/bin/sleep", "1000"], "")
        + &service(
            "radio",
            "local",
            &["/bin/sh", "-c", "exit 3"],
            "restart = \"never\"",
        );
    std::fs::write(dir.path("o.toml"), &cfg).unwrap();
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg("--config").arg(dir.path("o.toml"));
    let mut orch = Orch::spawn(
        &dir,
        cmd_with_notify(cmd, sock_path.to_str().unwrap(), None),
    );
    notify_lines(&sock, "READY=1");
    notify_lines(
        &sock,
        "STATUS=2 services (0 in QM), 1 failed: radio; agent not needed",
    );
    // A reload that removes radio: RELOADING=1 with the monotonic time, then READY=1, then
    // the new status.
    let without_radio = cfg
        .split("[[service]]\nname = \"radio\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(dir.path("o.toml"), without_radio).unwrap();
    let before = monotonic_usec();
    kill(orch.pid(), libc::SIGHUP);
    let got = notify_lines(&sock, "READY=1");
    let after = monotonic_usec();
    let reloading = got
        .iter()
        .find(|m| m.starts_with("RELOADING=1\n"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {got:?}"));
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    let ready = got.iter().position(|m| m == "READY=1").unwrap();
    let reload_at = got
        .iter()
        .position(|m| m.starts_with("RELOADING=1"))
        .unwrap();
    assert!(reload_at < ready, "{got:?}");
    orch.wait_lines(&["service=radio ", "event=removed"], 1);
    let status = got
        .iter()
        .skip(ready)
        .find(|m| m.starts_with("STATUS="))
        .cloned()
        .unwrap_or_else(|| notify_lines(&sock, "STATUS=").pop().unwrap());
    assert_eq!(
        status,
        "STATUS=1 service (0 in QM), none failed; agent not needed"
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn sd_notify_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("cli-notify-abs");
    let name = format!("holden-orch-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let cfg = config_header(&dir.path("none.sock"))
        + &service("s", "local", &["/bin/true"], "restart = \"never\"");
    std::fs::write(dir.path("o.toml"), cfg).unwrap();
    let mut cmd = Command::new(orchestrator_bin());
    cmd.arg("--config").arg(dir.path("o.toml"));
    let mut orch = Orch::spawn(&dir, cmd_with_notify(cmd, &format!("@{name}"), None));
    notify_lines(&sock, "READY=1");
    assert!(orch.stop(libc::SIGTERM).success());
}

fn cmd_with_notify(mut cmd: Command, socket: &str, watchdog_usec: Option<u64>) -> Command {
    cmd.env("NOTIFY_SOCKET", socket);
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec.to_string());
    }
    cmd
}

/// The (soft, hard) open-files limits of a process, from /proc/PID/limits.
fn nofile_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// Started with a low soft RLIMIT_NOFILE (systemd's 1024 is the usual case), the orchestrator
/// raises it to the hard limit before it opens anything.
#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_one() {
    let dir = TempDir::new("cli-nofile");
    let cfg =
        config_header(&dir.path("none.sock")) + &service("s", "local", &["/bin/sleep", "1000"], "");
    std::fs::write(dir.path("o.toml"), cfg).unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=200:4096")
        .arg("--")
        .arg(orchestrator_bin())
        .arg("--config")
        .arg(dir.path("o.toml"));
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["service=s ", "reason=spawned"], 1);
    assert_eq!(
        nofile_limits(orch.pid()),
        ("4096".to_string(), "4096".to_string())
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

/// More slots than the hard limit can hold pidfds for: refused at start, nothing started.
#[test]
fn slots_beyond_the_fd_limit_are_refused_at_start() {
    let dir = TempDir::new("cli-nofile-low");
    let marker = format!("/tmp/holden-nofile-{}", std::process::id());
    let cfg = format!("slots = 512\n{}", config_header(&dir.path("none.sock")))
        + &service(
            "s",
            "local",
            &["/bin/touch", &marker],
            "restart = \"never\"",
        );
    std::fs::write(dir.path("o.toml"), cfg).unwrap();
    let out = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg("--")
        .arg(orchestrator_bin())
        .arg("--config")
        .arg(dir.path("o.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        // 2 × 512 pidfds, the service's two output pipes (4 fds), 64 for the rest.
        stderr.contains("slots = 512 needs up to 1092 open files")
            && stderr.contains("RLIMIT_NOFILE allows 256")
            && stderr.contains("nothing was started"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "a service was started"
    );
}
