//! `holdenctl logs` against the real binaries: the last lines of a local service's output,
//! following new ones, what a slow follower missed, and the refusals.

mod orchestrator_support;

use orchestrator_support::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(socket: &Path, args: &[&str]) -> Out {
    let out = orchestrator_support::holdenctl(socket, args);
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config with the control socket and no journal (every line also goes to the log).
fn config(dir: &TempDir, log_extra: &str, services: &str) -> (String, PathBuf) {
    let control = dir.path("control.sock");
    let text = format!(
        "[control]\nsocket = {:?}\n\n[log]\njournal_socket = {:?}\n{log_extra}\n\n{services}",
        control.display().to_string(),
        dir.path("no-journal.sock").display().to_string()
    );
    (text, control)
}

/// A holdenctl that runs until killed (by pid).
struct Follower(std::process::Child);

impl Drop for Follower {
    fn drop(&mut self) {
        kill(self.0.id() as i32, libc::SIGKILL);
        let _ = self.0.wait();
    }
}

#[test]
fn logs_shows_the_last_lines_escaped() {
    let dir = TempDir::new("ctl-logs");
    let services = service(
        "radio",
        "local",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 30 ]; do echo line-$i; i=$((i+1)); done; sleep 0.2; printf '<4>esc \\033[31m \\377 end\\n' >&2; exec sleep 1000",
        ],
        "restart = \"never\"",
    ) + &service(
        "quiet",
        "local",
        &["/bin/sleep", "1000"],
        "restart = \"never\"\nstdout = \"null\"\nstderr = \"inherit\"",
    );
    let (text, control) = config(&dir, "", &services);
    let mut orch = Orch::start(&dir, &text);
    orch.wait_lines(&["service=radio event=output stream=stderr"], 1);
    let out = ctl(&control, &["logs", "radio", "-n", "3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout, "line-28\nline-29\nstderr: esc \\x1b[31m \\xff end\n",
        "the last 3, stderr marked, the terminal escape and the bad byte shown as \\xNN"
    );
    // Default 10 lines; --json with the figures first.
    let out = ctl(&control, &["logs", "radio"]);
    assert_eq!(out.stdout.lines().count(), 10, "{}", out.stdout);
    let out = ctl(&control, &["logs", "radio", "-n", "1", "--json"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "{\"service\":\"radio\",\"lines\":31,\"dropped\":0,\"first_seq\":0,\"next_seq\":31}"
    );
    assert_eq!(
        lines[1],
        "{\"seq\":30,\"stream\":\"stderr\",\"priority\":4,\"truncated\":false,\"text\":\"esc \\u001b[31m \u{fffd} end\"}"
    );
    // -n 0: nothing but the figures.
    let out = ctl(&control, &["logs", "radio", "-n", "0"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    // Refusals.
    let out = ctl(&control, &["logs", "nosuch"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = ctl(&control, &["logs", "quiet"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("its output is not captured"),
        "{}",
        out.stderr
    );
    for args in [
        &["logs"][..],
        &["logs", "a", "b"],
        &["logs", "radio", "-n", "x"],
        &["status", "-f"],
    ] {
        let out = ctl(&control, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
    }
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn logs_follow_prints_new_lines_as_they_come() {
    let dir = TempDir::new("ctl-logs-f");
    let services = service(
        "ticker",
        "local",
        &[
            "/bin/sh",
            "-c",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done",
        ],
        "restart = \"never\"",
    );
    let (text, control) = config(&dir, "", &services);
    let mut orch = Orch::start(&dir, &text);
    orch.wait_lines(&["text=\"tick-2\""], 1);
    let out_path = dir.path("follow.out");
    let follower = Follower(
        Command::new(env!("CARGO_BIN_EXE_holdenctl"))
            .arg("--socket")
            .arg(&control)
            .args(["logs", "ticker", "-n", "1", "-f"])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // Lines that were not there when it connected arrive, in order, each once.
    let seen = wait_until("20 followed lines", || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        (text.lines().count() >= 20).then_some(text)
    });
    let numbers: Vec<u64> = seen
        .lines()
        .map(|l| l.strip_prefix("tick-").unwrap().parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{seen}");
    drop(follower);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn a_follower_that_does_not_keep_up_is_told_how_many_lines_it_missed() {
    let dir = TempDir::new("ctl-logs-slow");
    // A small history, a service writing as fast as it can.
    let services = service(
        "flood",
        "local",
        &["/bin/sh", "-c", "exec yes flood-line-of-some-length"],
        "restart = \"never\"",
    ) + &service(
        "chatter",
        "local",
        &["/bin/sh", "-c", "while :; do echo chat; done"],
        "restart = \"never\"",
    );
    let (text, control) = config(&dir, "history_bytes = 2048", &services);
    let mut orch = Orch::start(&dir, &text);
    orch.wait_lines(&["service=flood event=output"], 1);
    let mut follower = Follower(
        Command::new(env!("CARGO_BIN_EXE_holdenctl"))
            .arg("--socket")
            .arg(&control)
            .args(["logs", "flood", "-f"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Not read for a while: holdenctl blocks on its stdout, its socket fills, the history
    // moves on (within the orchestrator's 5 s idle bound for a client that takes nothing).
    std::thread::sleep(Duration::from_secs(2));
    let mut stdout = follower.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.contains(" lines missed (")
                && text
                    .lines()
                    .filter(|l| *l == "flood-line-of-some-length")
                    .count()
                    > 100
            {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    wait_until("the follower's output", || {
        reader.is_finished().then_some(())
    });
    let got = reader.join().unwrap();
    // Without -f the answer ends, however fast the service writes: at most the lines asked
    // for (and a count of what was overwritten before it could be sent), from a service
    // writing without a pause.
    let mut quick = Follower(
        Command::new(env!("CARGO_BIN_EXE_holdenctl"))
            .arg("--socket")
            .arg(&control)
            .args(["logs", "chatter", "-n", "3"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut quick_out = quick.0.stdout.take().unwrap();
    let quick_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = quick_out.read_to_string(&mut text);
        text
    });
    let status = wait_until("holdenctl logs -n 3 to end during a flood", || {
        quick.0.try_wait().unwrap()
    });
    let text = quick_reader.join().unwrap();
    assert!(status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("-- ")).collect();
    assert!(lines.len() <= 3, "{text}");
    let missed = got
        .lines()
        .find(|l| l.starts_with("-- ") && l.contains(" lines missed ("))
        .unwrap_or_else(|| panic!("no missed count in {} bytes", got.len()));
    let n: u64 = missed[3..].split(' ').next().unwrap().parse().unwrap();
    assert!(n > 0, "{missed}");
    assert!(got.lines().any(|l| l == "flood-line-of-some-length"));
    drop(follower);
    assert!(orch.stop(libc::SIGTERM).success());
}
