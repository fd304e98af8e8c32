//! Local services' output, against the real binary: captured on pipes, forwarded to a journald
//! stand-in over the native protocol, else written as escaped lines a service cannot forge;
//! `null`, `inherit` and `file:PATH`; an output file that cannot be opened.

mod orchestrator_support;

use holden::output::journal::decode;
use orchestrator_support::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// A config with one control socket and `[log]` naming `journal` as journald's socket.
fn header(dir: &TempDir, journal: &Path) -> String {
    format!(
        "[control]\nsocket = {:?}\n\n[log]\njournal_socket = {:?}\n\n",
        dir.path("control.sock").display().to_string(),
        journal.display().to_string()
    )
}

/// A service that prints `script` (by `printf`) and then sleeps.
fn printing(name: &str, script: &str, extra: &str) -> String {
    service(
        name,
        "local",
        &[
            "/bin/sh",
            "-c",
            &format!("printf '{script}'; exec sleep 1000"),
        ],
        &format!("restart = \"never\"\n{extra}"),
    )
}

#[test]
fn a_service_cannot_forge_a_holden_line() {
    let dir = TempDir::new("out-forge");
    // A forged transition, then one line holding \r, an embedded \n (two lines), a quote, a
    // backslash and bytes that are not UTF-8; and a forged line on stderr.
    let script = "<3>service=radio partition=local state=failed from=running restarts=9 reason=start-limit\\n\
                  a\\rb\\nc \"q\" \\\\ \\377\\376 end\\n";
    let mut config = header(&dir, &dir.path("no-journal.sock"));
    config += &printing("forger", script, "stdout = \"log\"");
    config += &service(
        "forger2",
        "local",
        &[
            "/bin/sh",
            "-c",
            "echo 'service=forger state=failed' >&2; exec sleep 1000",
        ],
        "restart = \"never\"",
    );
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["event=output", "service=forger "], 3);
    orch.wait_lines(&["event=output", "service=forger2 "], 1);
    let log = orch.log();
    // Every line of the log parses strictly, and no line but the orchestrator's own
    // transitions carries `state=`.
    let mut outputs = Vec::new();
    for line in log.lines() {
        let fields = parse_log_line(line).unwrap_or_else(|e| panic!("{e}: {line}\n{log}"));
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if get("event").as_deref() == Some("output") {
            assert!(get("state").is_none(), "{line}");
            outputs.push((
                line.to_string(),
                get("service").unwrap(),
                get("stream").unwrap(),
                get("text").unwrap(),
            ));
        }
        if get("state").as_deref() == Some("failed") {
            panic!("a service made a line that reads as a transition: {line}\n{log}");
        }
    }
    let forger: Vec<_> = outputs.iter().filter(|o| o.1 == "forger").collect();
    assert_eq!(forger.len(), 3, "{log}");
    // The forged <3> is taken as the line's priority, the rest is quoted text.
    assert!(
        forger[0]
            .0
            .starts_with("<3>service=forger event=output stream=stdout pid="),
        "{}",
        forger[0].0
    );
    assert_eq!(
        forger[0].3,
        "service=radio partition=local state=failed from=running restarts=9 reason=start-limit"
    );
    assert!(forger[1].0.starts_with("<6>"), "no prefix: info on stdout");
    assert!(
        forger[1].0.ends_with("text=\"a\\x0db\""),
        "\\r escaped: {}",
        forger[1].0
    );
    assert!(
        forger[2]
            .0
            .ends_with("text=\"c \\\"q\\\" \\\\ \\xff\\xfe end\""),
        "quote, backslash and invalid UTF-8 escaped: {}",
        forger[2].0
    );
    let forger2: Vec<_> = outputs.iter().filter(|o| o.1 == "forger2").collect();
    assert_eq!(forger2.len(), 1);
    assert!(
        forger2[0]
            .0
            .starts_with("<3>service=forger2 event=output stream=stderr"),
        "stderr is err"
    );
    assert_eq!(forger2[0].3, "service=forger state=failed");
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn lines_go_to_journald_over_its_native_protocol() {
    let dir = TempDir::new("out-journal");
    let journal_path = dir.path("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut config = header(&dir, &journal_path);
    config += &printing("radio", "<4>warned\\nplain\\n", "");
    config += &service(
        "radio-err",
        "local",
        &["/bin/sh", "-c", "echo 'two words' >&2; exec sleep 1000"],
        "restart = \"never\"",
    );
    let mut orch = Orch::start(&dir, &config);
    let mut entries = Vec::new();
    let mut buf = [0u8; 8192];
    while entries.len() < 3 {
        let n = journal.recv(&mut buf).expect("an entry within 30 s");
        let fields = decode(&buf[..n]).unwrap_or_else(|| panic!("malformed entry {:?}", &buf[..n]));
        entries.push(fields);
    }
    let get = |e: &Vec<(String, Vec<u8>)>, k: &str| {
        e.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    orch.wait_lines(&["service=radio ", "reason=spawned"], 1);
    orch.wait_lines(&["service=radio-err ", "reason=spawned"], 1);
    let radio_pid = last_spawned_pid(&orch, "radio").to_string();
    let err_pid = last_spawned_pid(&orch, "radio-err").to_string();
    let mut radio: Vec<_> = entries
        .iter()
        .filter(|e| get(e, "HOLDEN_SERVICE").as_deref() == Some("radio"))
        .collect();
    assert_eq!(radio.len(), 2, "{entries:?}");
    radio.sort_by_key(|e| get(e, "MESSAGE"));
    assert_eq!(get(radio[0], "MESSAGE").as_deref(), Some("plain"));
    assert_eq!(get(radio[0], "PRIORITY").as_deref(), Some("6"));
    assert_eq!(get(radio[1], "MESSAGE").as_deref(), Some("warned"));
    assert_eq!(
        get(radio[1], "PRIORITY").as_deref(),
        Some("4"),
        "from the <4> prefix"
    );
    for e in &radio {
        assert_eq!(get(e, "SYSLOG_IDENTIFIER").as_deref(), Some("radio"));
        assert_eq!(get(e, "HOLDEN_STREAM").as_deref(), Some("stdout"));
        assert_eq!(get(e, "HOLDEN_PID").as_deref(), Some(radio_pid.as_str()));
        assert_eq!(get(e, "OBJECT_PID").as_deref(), Some(radio_pid.as_str()));
        assert!(
            e.iter().all(|(k, _)| !k.starts_with('_')),
            "no trusted field is sent"
        );
    }
    let err = entries
        .iter()
        .find(|e| get(e, "HOLDEN_SERVICE").as_deref() == Some("radio-err"))
        .expect("the stderr line");
    assert_eq!(get(err, "MESSAGE").as_deref(), Some("two words"));
    assert_eq!(
        get(err, "PRIORITY").as_deref(),
        Some("3"),
        "stderr without prefix: err"
    );
    assert_eq!(get(err, "HOLDEN_STREAM").as_deref(), Some("stderr"));
    assert_eq!(get(err, "HOLDEN_PID").as_deref(), Some(err_pid.as_str()));
    // What journald took is not written into the log as well.
    assert!(
        orch.lines_with(&["event=output"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn without_journald_the_lines_go_to_the_log() {
    let dir = TempDir::new("out-nojournal");
    let mut config = header(&dir, &dir.path("nobody-binds-this.sock"));
    config += &printing("radio", "hello journal\\n", "stdout = \"journal\"");
    let mut orch = Orch::start(&dir, &config);
    let lines = orch.wait_lines(&["service=radio event=output stream=stdout"], 1);
    assert!(lines[0].ends_with("text=\"hello journal\""), "{}", lines[0]);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn null_inherit_and_file_targets() {
    let dir = TempDir::new("out-targets");
    let file = dir.path("radio.out");
    std::fs::write(&file, "kept\n").unwrap();
    let mut config = header(&dir, &dir.path("no-journal.sock"));
    config += &printing(
        "to-file",
        "first\\n",
        &format!(
            "stdout = {:?}\nstderr = \"null\"",
            format!("file:{}", file.display())
        ),
    );
    config += &service(
        "to-file-err",
        "local",
        &[
            "/bin/sh",
            "-c",
            "echo on-stderr-too >&2; echo not-seen; exec sleep 1000",
        ],
        &format!(
            "restart = \"never\"\nstdout = \"null\"\nstderr = {:?}",
            format!("file:{}", file.display())
        ),
    );
    // (The test gives the orchestrator's stdout to /dev/null, its stderr to the log file.)
    config += &service(
        "inheriting",
        "local",
        &[
            "/bin/sh",
            "-c",
            "echo raw-inherited-line >&2; exec sleep 1000",
        ],
        "restart = \"never\"\nstderr = \"inherit\"",
    );
    let mut orch = Orch::start(&dir, &config);
    wait_until("both lines in the file", || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        (text.contains("first\n") && text.contains("on-stderr-too\n")).then_some(())
    });
    wait_until("the inherited line", || {
        orch.log()
            .lines()
            .any(|l| l == "raw-inherited-line")
            .then_some(())
    });
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("kept\n"), "appended: {text:?}");
    assert!(!text.contains("not-seen"), "{text:?}");
    assert!(!orch.log().contains("not-seen"), "null drops it");
    assert!(
        orch.lines_with(&["event=output"]).is_empty(),
        "{}",
        orch.log()
    );
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn an_output_file_that_cannot_be_opened_is_an_error_with_its_place() {
    let dir = TempDir::new("out-badfile");
    let bad = dir.path("no-such-dir/radio.out");
    let mut config = header(&dir, &dir.path("no-journal.sock"));
    config += &printing(
        "radio",
        "x\\n",
        &format!("stdout = {:?}", format!("file:{}", bad.display())),
    );
    let path = dir.path("orchestrator.toml");
    std::fs::write(&path, &config).unwrap();
    let check = std::process::Command::new(orchestrator_bin())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    let line = config
        .lines()
        .position(|l| l.starts_with("stdout = "))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "orchestrator.toml:{line}:10: `service.radio.stdout`: output file"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    // Started anyway, the service fails to start and says why (stage stdio).
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(
        &[
            "service=radio",
            "event=spawn-failed",
            "stage=stdio",
            "errno=2",
        ],
        1,
    );
    orch.wait_lines(&["service=radio", "event=output-open-failed"], 1);
    assert!(orch.stop(libc::SIGTERM).success());
}

/// A number field in `holdenctl ... --json` output.
fn json_number(text: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let at = text
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} in {text}"))
        + needle.len();
    text[at..]
        .split([',', '}'])
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {text}"))
}

#[test]
fn a_flooding_service_costs_a_bounded_amount_and_stalls_nothing() {
    let dir = TempDir::new("out-flood");
    let started = std::time::Instant::now();
    let mut config = header(&dir, &dir.path("no-journal.sock"));
    config += &service(
        "flood",
        "local",
        &["/bin/sh", "-c", "exec yes flood-flood-flood"],
        "restart = \"never\"\nstdout = \"log\"",
    );
    config += &service(
        "looper",
        "local",
        &["/bin/true"],
        "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"1s\" }",
    );
    let control = dir.path("control.sock");
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["service=flood", "event=output-dropped"], 1);
    // While it floods: status keeps answering and the other service keeps restarting.
    let restarts = |orch: &Orch| {
        let (code, out) = holdenctl_text(&control, &["status", "looper", "--json"]);
        assert_eq!(
            code,
            0,
            "status answers during the flood: {out}\n{}",
            orch.log().len()
        );
        json_number(&out, "restarts")
    };
    let before = restarts(&orch);
    let mut answers = 0;
    wait_until("30 more restarts of looper during the flood", || {
        answers += 1;
        (restarts(&orch) >= before + 30).then_some(())
    });
    assert!(answers > 0);
    // The drops are counted per service, and shown.
    let (code, out) = holdenctl_text(&control, &["logs", "flood", "-n", "1", "--json"]);
    assert_eq!(code, 0, "{out}");
    let (lines, dropped) = (json_number(&out, "lines"), json_number(&out, "dropped"));
    assert!(dropped > 0 && dropped < lines, "{out}");
    let (_, plain) = holdenctl_text(&control, &["logs", "flood", "-n", "1"]);
    assert!(plain.contains("lines were not forwarded"), "{plain}");
    assert!(orch.stop(libc::SIGTERM).success());
    // What reached the log is bounded by the rate limit, whatever the service wrote: at most
    // LINES_PER_WINDOW_MAX a second (plus one window).
    let forwarded = orch
        .lines_with(&["service=flood event=output stream=stdout"])
        .len() as u64;
    let windows = started.elapsed().as_secs() + 2;
    assert!(
        forwarded <= windows * u64::from(holden::output::LINES_PER_WINDOW_MAX),
        "{forwarded} lines in {windows} windows"
    );
    let reported: u64 = orch
        .lines_with(&["service=flood", "event=output-dropped"])
        .iter()
        .map(|l| field(l, "lines").unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(reported > 0, "the drops are reported in the log");
    // And the bytes it read are bounded too: its writes were held past the read budget.
    let seconds = started.elapsed().as_secs() + 2;
    let line_bytes = "flood-flood-flood\n".len() as u64;
    assert!(
        lines * line_bytes <= seconds * holden::output::READ_BYTES_PER_WINDOW_MAX,
        "{lines} lines read in {seconds} s"
    );
}

/// Entries received by a stand-in journal until `enough` says so (30 s at most).
fn entries_until(
    journal: &UnixDatagram,
    mut enough: impl FnMut(&[Vec<(String, Vec<u8>)>]) -> bool,
) -> Vec<Vec<(String, Vec<u8>)>> {
    journal
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut entries = Vec::new();
    let mut buf = [0u8; 8192];
    while !enough(&entries) {
        let n = journal.recv(&mut buf).expect("an entry within 30 s");
        entries.push(decode(&buf[..n]).unwrap_or_else(|| panic!("malformed {:?}", &buf[..n])));
    }
    entries
}

fn value_of(entry: &[(String, Vec<u8>)], key: &str) -> Option<String> {
    entry
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn has(entries: &[Vec<(String, Vec<u8>)>], pairs: &[(&str, &str)]) -> bool {
    entries.iter().any(|e| {
        pairs
            .iter()
            .all(|(k, v)| value_of(e, k).as_deref() == Some(*v))
    })
}

#[test]
fn the_orchestrators_own_lines_go_to_journald_with_native_fields() {
    for mode in ["always", "auto"] {
        let dir = TempDir::new("out-own");
        let journal_path = dir.path("journal.sock");
        let journal = UnixDatagram::bind(&journal_path).unwrap();
        let mut config = format!(
            "[control]\nsocket = {:?}\n\n[log]\njournal_socket = {:?}\njournal = {:?}\n\n",
            dir.path("control.sock").display().to_string(),
            journal_path.display().to_string(),
            mode
        );
        config += &printing("radio", "say \"hi\"\\n", "stdout = \"log\"");
        let config_path = dir.path("orchestrator.toml");
        std::fs::write(&config_path, &config).unwrap();
        let mut cmd = std::process::Command::new(orchestrator_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .env_remove("NOTIFY_SOCKET");
        if mode == "auto" {
            // As systemd says it: the log file (our stand-in for stderr) is the journal.
            use std::os::unix::fs::MetadataExt;
            let log = dir.path("orchestrator.log");
            std::fs::File::create(&log).unwrap();
            let meta = std::fs::metadata(&log).unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let mut orch = Orch::spawn(&dir, cmd);
        let entries = entries_until(&journal, |e| {
            has(e, &[("HOLDEN_EVENT", "start")])
                && has(
                    e,
                    &[("HOLDEN_SERVICE", "radio"), ("HOLDEN_STATE", "running")],
                )
                && has(
                    e,
                    &[("HOLDEN_EVENT", "output"), ("HOLDEN_TEXT", "say \"hi\"")],
                )
        });
        let start = entries
            .iter()
            .find(|e| value_of(e, "HOLDEN_EVENT").as_deref() == Some("start"))
            .unwrap();
        assert_eq!(value_of(start, "PRIORITY").as_deref(), Some("5"), "{mode}");
        assert_eq!(
            value_of(start, "SYSLOG_IDENTIFIER").as_deref(),
            Some("holden-orchestrator")
        );
        assert!(value_of(start, "MESSAGE")
            .unwrap()
            .starts_with("event=start version="));
        let running = entries
            .iter()
            .find(|e| value_of(e, "HOLDEN_STATE").as_deref() == Some("running"))
            .unwrap();
        assert_eq!(
            value_of(running, "HOLDEN_REASON").as_deref(),
            Some("spawned")
        );
        assert_eq!(
            value_of(running, "HOLDEN_PARTITION").as_deref(),
            Some("local")
        );
        assert!(
            !orch.log().contains("event=start"),
            "{mode}: not on stderr too"
        );
        assert!(orch.stop(libc::SIGTERM).success());
    }
}

#[test]
fn without_journal_stream_the_orchestrators_lines_stay_on_stderr() {
    let dir = TempDir::new("out-own-stderr");
    let journal_path = dir.path("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal.set_nonblocking(true).unwrap();
    let mut config = header(&dir, &journal_path);
    config += &printing("radio", "x\\n", "stdout = \"log\"");
    std::fs::write(dir.path("orchestrator.toml"), &config).unwrap();
    let mut cmd = std::process::Command::new(orchestrator_bin());
    cmd.arg("--config")
        .arg(dir.path("orchestrator.toml"))
        .env_remove("NOTIFY_SOCKET")
        .env("JOURNAL_STREAM", "1:1");
    let mut orch = Orch::spawn(&dir, cmd);
    orch.wait_lines(&["service=radio event=output"], 1);
    assert!(orch.stop(libc::SIGTERM).success());
    let mut buf = [0u8; 64];
    assert!(
        journal.recv(&mut buf).is_err(),
        "nothing sent to the journal"
    );
}

#[test]
fn a_reload_changes_where_output_goes_and_adds_captured_services() {
    let dir = TempDir::new("out-reload");
    let file = dir.path("ticker.out");
    let ticker = |target: &str, stderr: &str| {
        service(
            "ticker",
            "local",
            &[
                "/bin/sh",
                "-c",
                "while true; do echo tick; sleep 0.05; done",
            ],
            &format!("restart = \"never\"\nstdout = {target:?}\nstderr = {stderr:?}"),
        )
    };
    let head = header(&dir, &dir.path("no-journal.sock"));
    let mut orch = Orch::start(&dir, &(head.clone() + &ticker("log", "log")));
    orch.wait_lines(&["service=ticker event=output", "text=\"tick\""], 2);
    // stdout to a file now, and a new captured service.
    let config = head
        + &ticker(&format!("file:{}", file.display()), "null")
        + &printing("added", "hello from added\\n", "");
    std::fs::write(dir.path("orchestrator.toml"), config).unwrap();
    let control = dir.path("control.sock");
    let (code, out) = holdenctl_text(&control, &["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 added, 0 removed, 1 changed"), "{out}");
    wait_until("ticks in the file", || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        (text.lines().filter(|l| *l == "tick").count() >= 3).then_some(())
    });
    orch.wait_lines(
        &["service=added event=output", "text=\"hello from added\""],
        1,
    );
    let (code, out) = holdenctl_text(&control, &["logs", "added", "-n", "5"]);
    assert_eq!((code, out.as_str()), (0, "hello from added\n"));
    // The ticker's output is not captured any more: no history to show.
    let (code, _) = holdenctl_text(&control, &["logs", "ticker"]);
    assert_eq!(code, 1);
    assert!(orch.stop(libc::SIGTERM).success());
}

#[test]
fn a_journal_that_does_not_keep_up_costs_dropped_lines_never_a_wait() {
    let dir = TempDir::new("out-journal-full");
    let journal_path = dir.path("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    let mut config = header(&dir, &journal_path);
    config += &service(
        "burst",
        "local",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; exec sleep 1000",
        ],
        "restart = \"never\"",
    );
    let control = dir.path("control.sock");
    let mut orch = Orch::start(&dir, &config);
    orch.wait_lines(&["event=control-listening"], 1);
    // Nobody reads the journal: its queue fills and the sends find it full (EAGAIN).
    let (lines, dropped) = wait_until("300 lines read", || {
        let (code, out) = holdenctl_text(&control, &["logs", "burst", "-n", "0", "--json"]);
        assert_eq!(code, 0, "{out}");
        let lines = json_number(&out, "lines");
        (lines == 300).then(|| (lines, json_number(&out, "dropped")))
    });
    assert!(dropped > 0, "a full journal drops lines");
    // Every line went to the journal or was counted; none waited, none went to the log.
    journal.set_nonblocking(true).unwrap();
    let mut received = 0;
    let mut buf = [0u8; 4096];
    while journal.recv(&mut buf).is_ok() {
        received += 1;
    }
    assert_eq!(
        received + dropped,
        lines,
        "received {received}, dropped {dropped}"
    );
    assert!(orch.lines_with(&["event=output stream"]).is_empty());
    assert!(orch.stop(libc::SIGTERM).success());
}
