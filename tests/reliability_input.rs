//! Bad input: malformed configuration files (the cases `tests/config_errors.rs` does not
//! already hold), the real binary refusing them without starting anything, command-line
//! misuse of every binary, and programs that cannot be executed, locally and in QM.

mod orchestrator_support;
mod reliability_support;

use holden::config::Config;
use orchestrator_support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVICE: &str = "[[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n";

/// (file text, line, column, field, part of the message).
type Case = (String, usize, usize, &'static str, &'static str);

fn with(extra: &str) -> String {
    format!("{SERVICE}{extra}\n")
}

/// Malformed files beyond the 42 of `tests/config_errors.rs`: absurd and malformed
/// durations, relative and overlong paths, too many slots for the ring, wrong types, unknown
/// tables and keys, missing required keys, a bare program name for QM.
fn cases() -> Vec<Case> {
    let long_socket = format!("/run/holden/{}.sock", "a".repeat(100));
    vec![
        (
            with("restart_delay = \"99999999999999999999s\""),
            5,
            17,
            "service.a.restart_delay",
            "too large (at most 24h)",
        ),
        (
            with("stop_timeout = -5"),
            5,
            16,
            "service.a.stop_timeout",
            "expected a duration string like \"250ms\" or \"5s\", found the integer -5",
        ),
        (
            with("restart_delay = \"1.5s\""),
            5,
            17,
            "service.a.restart_delay",
            "fractions are not accepted: write \"1500ms\"",
        ),
        (
            "[control]\nsocket = \"control.sock\"\n".into(),
            2,
            10,
            "control.socket",
            "expected an absolute socket path",
        ),
        (
            format!("[agent]\nsocket = {long_socket:?}\n"),
            2,
            10,
            "agent.socket",
            "at most 107 bytes",
        ),
        (
            format!("slots = 20000\n{SERVICE}"),
            1,
            9,
            "slots",
            "out of range",
        ),
        (
            "[[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/true\", 5]\n".into(),
            4,
            22,
            "service.a.argv[1]",
            "expected a string, found the integer 5",
        ),
        (
            SERVICE.replace("\"a\"", &format!("{:?}", "a".repeat(65))),
            2,
            8,
            "service[0].name",
            "expected 1 to 64 characters",
        ),
        (
            "[agnet]\nsocket = \"/x.sock\"\n".into(),
            1,
            2,
            "agnet",
            "unknown key `agnet`: expected one of `slots`, `log_level`, `runtime_dir`, `[agent]`, `[shutdown]`, `[control]`, `[log]`, `[cgroup]`, `[[service]]`; did you mean `agent`?",
        ),
        (
            with("env = { \"\" = \"x\" }"),
            5,
            14,
            "service.a.env.",
            "non-empty name",
        ),
        (
            with("enabled = \"yes\""),
            5,
            11,
            "service.a.enabled",
            "expected a boolean",
        ),
        (
            with("uid = 4294967295"),
            5,
            7,
            "service.a.uid",
            "out of range",
        ),
        (
            with("backoff = { initial = \"1s\" }"),
            5,
            11,
            "service.a.backoff.max",
            "missing key `max`",
        ),
        (
            with("start_limit = { burst = 3 }"),
            5,
            15,
            "service.a.start_limit.interval",
            "missing key `interval`",
        ),
        (
            "[shutdown]\ngrace = \"5s\"\n".into(),
            2,
            1,
            "shutdown.grace",
            "unknown key `grace`",
        ),
        (
            with("working_directory = \"\""),
            5,
            21,
            "service.a.working_directory",
            "not an absolute path",
        ),
        (
            "[[service]]\nname = \"a\"\npartition = \"qm\"\nargv = [\"true\"]\n".into(),
            4,
            9,
            "service.a.argv[0]",
            "not an absolute path",
        ),
        (
            "service = 1\n".into(),
            1,
            11,
            "service",
            "expected `[[service]]` tables, found the integer 1",
        ),
    ]
}

#[test]
fn malformed_files_are_rejected_with_file_line_column_and_field() {
    let mut failures = Vec::new();
    let cases = cases();
    for (i, (text, line, column, field, message)) in cases.iter().enumerate() {
        match Config::parse(text, "bad.toml") {
            Ok(_) => failures.push(format!("case {i} accepted:\n{text}")),
            Err(e) => {
                let rendered = e.first().to_string();
                let prefix = format!("bad.toml:{line}:{column}: `{field}`: ");
                if !(rendered.starts_with(&prefix) && rendered.contains(message)) {
                    failures.push(format!(
                        "case {i}: {rendered:?}, expected {prefix:?} … {message:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} malformed files rejected", cases.len());
}

/// The real binary: `--config bad.toml` exits 1 with `bad.toml:LINE:COLUMN: `FIELD`` on
/// stderr and starts nothing, even though the file also holds a valid service (whose unique
/// argument would show in /proc if it had been started).
#[test]
fn the_binary_refuses_every_malformed_file_and_starts_nothing() {
    let dir = TempDir::new("rel-badconfig");
    for (i, (text, line, column, field, _)) in cases().into_iter().enumerate() {
        let marker = format!("5555.{}{i:02}", std::process::id());
        // The valid service goes first when the bad part is top-level, else after it.
        let valid = service("canary", "local", &["/bin/sleep", &marker], "");
        let (text, line) = if text.starts_with("service =") {
            (text, line) // a `service` key cannot be followed by `[[service]]`
        } else if text.starts_with("slots") {
            (format!("{text}{valid}"), line)
        } else {
            (format!("{valid}{text}"), line + valid.lines().count())
        };
        let path = dir.path(&format!("bad{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let mut child = Command::new(orchestrator_bin())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                for pid in pids_with(&marker) {
                    kill(pid, libc::SIGKILL);
                }
                panic!("case {i}: accepted and running:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(1), "case {i}: {stderr}");
        let place = format!("{}:{line}:{column}: `", path.display());
        let at = stderr
            .find(&place)
            .unwrap_or_else(|| panic!("case {i}: {stderr:?} lacks {place:?}"));
        let named = stderr[at + place.len()..].split('`').next().unwrap_or("");
        assert!(
            named == field.replace("service.a", "service.canary").as_str()
                || named == field
                || named.replace("[1]", "[0]") == field,
            "case {i}: field {named:?}, expected {field:?}: {stderr}"
        );
        assert!(stderr.contains("nothing was started"), "case {i}: {stderr}");
        assert!(
            pids_with(&marker).is_empty(),
            "case {i}: the canary was started"
        );
    }
}

/// One command-line misuse: exit code 2 and a message on stderr naming the binary.
fn misuse(bin: &std::path::Path, name: &str, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("HOLDEN_SOCKET_PATH")
        .env(
            "HOLDEN_CONTROL_SOCKET",
            "/nonexistent/holden-test/control.sock",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
    assert!(
        stderr.starts_with(&format!("{name}: ")) && stderr.trim().len() > name.len() + 10,
        "{name} {args:?}: {stderr:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{name} {args:?}: usage errors go to stderr"
    );
}

#[test]
fn command_line_misuse_of_every_binary_exits_2_with_a_message() {
    let orch = orchestrator_bin();
    for args in [
        &["--bogus"][..],
        &["-x"],
        &["only-one"],
        &["a", "b", "c"],
        &["--config"],
        &["--config", "/x", "a", "b"],
    ] {
        misuse(&orch, "holden-orchestrator", args);
    }
    let agent = agent_bin();
    for args in [
        &["--bogus"][..],
        &["--socket"],
        &["--read-timeout-ms", "5"],
        &["--read-timeout-ms", "x"],
        &["--allow-uid", "x"],
        &["stray"],
        &["--socket", &format!("/{}", "s".repeat(120))],
    ] {
        misuse(&agent, "holden-agent", args);
    }
    let ctl = std::path::PathBuf::from(env!("CARGO_BIN_EXE_holdenctl"));
    for args in [
        &[][..],
        &["--bogus"],
        &["frobnicate"],
        &["start"],
        &["stop"],
        &["--socket"],
    ] {
        misuse(&ctl, "holdenctl", args);
    }
}

/// Programs that cannot be executed: a missing file (ENOENT), a file without the execute bit
/// (EACCES) and a directory (EACCES), locally and in QM. Each failure is reported with its
/// errno at stage `exec` (never as a start followed by an exit), retried with a growing
/// backoff, and the service ends in `failed` after its start limit.
#[test]
fn programs_that_cannot_be_executed_fail_with_their_errno_then_reach_failed() {
    let dir = TempDir::new("rel-noexec");
    let qm = Qm::start(&dir, "");
    let plain = dir.path("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    let directory = dir.path("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let programs = [
        (
            "missing",
            "/nonexistent/holden-test-binary".to_string(),
            libc::ENOENT,
        ),
        ("plain", plain.display().to_string(), libc::EACCES),
        ("directory", directory.display().to_string(), libc::EACCES),
    ];
    let policy = "restart = \"always\"\nrestart_delay = \"0s\"\nbackoff = { initial = \"20ms\", max = \"1s\" }\nstart_limit = { burst = 4, interval = \"60s\" }";
    let mut cfg = config_header(&qm.socket);
    for partition in ["local", "qm"] {
        for (name, program, _) in &programs {
            cfg += &service(
                &format!("{partition}-{name}"),
                partition,
                &[program.as_str()],
                policy,
            );
        }
    }
    let mut orch = Orch::start(&dir, &cfg);
    for partition in ["local", "qm"] {
        for (name, _, errno) in &programs {
            let svc = format!("service={partition}-{name} ");
            orch.wait_lines(&[&svc, "state=failed"], 1);
            let errors = orch.lines_with(&[
                &svc,
                "event=spawn-failed",
                "stage=exec",
                &format!("errno={errno}"),
            ]);
            assert_eq!(errors.len(), 4, "{svc}: one error per start: {errors:#?}");
            let delays: Vec<u64> = orch
                .lines_with(&[&svc, "state=backoff"])
                .iter()
                .filter_map(|l| field(l, "next_delay_ms")?.parse().ok())
                .collect();
            assert_eq!(delays, vec![20, 40, 80, 160], "{svc}: backoff grows");
            assert!(
                orch.lines_with(&[&svc, "reason=exited"]).is_empty(),
                "{svc}: never 'exited'"
            );
            assert!(
                orch.lines_with(&[&svc, "reason=spawned"]).is_empty(),
                "{svc}: never 'spawned'"
            );
        }
    }
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);
}
