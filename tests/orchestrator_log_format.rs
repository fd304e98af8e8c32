//! Every line a running orchestrator writes is strict `key=value` (docs/orchestrator.md, "Log"):
//! values with spaces, quotes or newlines are quoted and escaped. Real runs that exercise the
//! lines with free text in them: spawn failures, a crash loop into the start limit, a stop
//! timeout, the agent absent, killed and back, reloads that fail (an error text full of quotes)
//! and succeed, SIGHUP, operator commands, shutdown.

mod orchestrator_support;

use orchestrator_support::*;

/// Asserts that every line of `log` is strict key=value; returns the parsed lines.
fn parse_all(log: &str) -> Vec<Vec<(String, String)>> {
    let mut parsed = Vec::new();
    for line in log.lines() {
        match parse_log_line(line) {
            Ok(fields) => parsed.push(fields),
            Err(e) => panic!("not key=value ({e}): {line}\n--- whole log:\n{log}"),
        }
    }
    parsed
}

fn value<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_strict_parser_refuses_what_breaks_key_value() {
    for bad in [
        "<6>event=reload-failed error=\"x\" action=nothing changed",
        "<4>event=agent-connect-failed error=\"ENOENT\" (is holden-agent running?)",
        "<6>event=x a=\"unterminated",
        "<6>event=x a=\"bad \\q escape\"",
        "<6>event=x  a=b",
        "<6>event=x a=b ",
        "<6>Event=x",
        "event=x",
        "<6>",
    ] {
        assert!(parse_log_line(bad).is_err(), "accepted: {bad}");
    }
    let fields =
        parse_log_line("<3>event=x error=\"say \\\"hi\\\" \\\\ \\x01\" n=3").expect("valid");
    assert_eq!(value(&fields, "error"), Some("say \"hi\" \\ \u{1}"));
    assert_eq!(value(&fields, "n"), Some("3"));
}

#[test]
fn every_line_of_real_runs_parses_as_key_value() {
    let dir = TempDir::new("logfmt");
    let control = dir.path("control.sock");
    let agent_socket = dir.path("agent.sock");
    let config_path = dir.path("orchestrator.toml");
    let marker = sleep_marker("6161");
    let mut services = service(
        "crashy",
        "local",
        &["/bin/sh", "-c", "exit 3"],
        "restart = \"always\"\nrestart_delay = \"10ms\"\nstart_limit = { burst = 3, interval = \"60s\" }",
    );
    services += &service(
        "missing",
        "local",
        &["/nonexistent/holden-logfmt"],
        "restart_delay = \"10ms\"\nstart_limit = { burst = 2, interval = \"60s\" }",
    );
    services += &service(
        "stubborn",
        "local",
        &[
            "/bin/sh",
            "-c",
            &format!("trap '' TERM; exec /bin/sleep {marker}"),
        ],
        "stop_timeout = \"200ms\"",
    );
    services += &service("radio", "qm", &["/bin/sleep", &marker], "");
    services += &service(
        "qm-missing",
        "qm",
        &["/nonexistent/qm-prog"],
        "restart = \"never\"",
    );
    let text = format!(
        "{}{services}",
        config_header(&agent_socket).replace("[agent]\n", "[agent]\nprotocol = \"auto\"\n")
    );
    // No agent yet: connect failures (with their hint) until it comes.
    let mut orch = Orch::start(&dir, &text);
    assert_eq!(config_path, dir.path("orchestrator.toml"));
    orch.wait_lines(&["event=agent-connect-failed"], 1);
    orch.wait_lines(&["service=crashy ", "reason=start-limit"], 1);
    orch.wait_lines(&["service=missing ", "reason=start-limit"], 1);
    let qm = Qm::start(&dir, "");
    orch.wait_lines(&["event=agent-up"], 1);
    orch.wait_lines(&["service=radio ", "reason=spawned"], 1);
    orch.wait_lines(&["service=qm-missing ", "state=failed"], 1);
    // The agent dies and comes back.
    qm.kill_agent();
    orch.wait_lines(&["event=agent-down"], 1);
    orch.wait_lines(&["event=agent-up"], 2);
    // Operator commands, a stop that needs SIGKILL.
    let out = holdenctl(
        &control,
        &["stop", "stubborn", "--wait", "--timeout", "20s"],
    );
    assert!(out.status.success(), "{out:?}");
    orch.wait_lines(&["service=stubborn ", "reason=stop-timeout"], 1);
    let out = holdenctl(&control, &["kill", "nosuch"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // A reload that fails: the error text is full of quotes and spaces.
    std::fs::write(
        &config_path,
        format!("{text}[[service]]\nname = \"bad\"\npartition = \"local\"\nargv = [\"/bin/true\"]\nstop_timeout = \"5 sec\"\n"),
    )
    .unwrap();
    let out = holdenctl(&control, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    orch.wait_lines(&["event=reload-failed"], 1);
    // A reload that works and reports a setting that needs a restart; then SIGHUP.
    std::fs::write(&config_path, format!("slots = 9\n{text}")).unwrap();
    let out = holdenctl(&control, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    orch.wait_lines(&["event=reload "], 1);
    kill(orch.pid(), libc::SIGHUP);
    orch.wait_lines(&["event=reload "], 2);
    assert!(orch.stop(libc::SIGTERM).success());
    drop(qm);

    let log = orch.log();
    let lines = parse_all(&log);
    let find = |event: &str| {
        lines
            .iter()
            .find(|f| value(f, "event") == Some(event))
            .unwrap_or_else(|| panic!("no event={event} in:\n{log}"))
    };
    assert_eq!(
        value(find("reload-failed"), "action"),
        Some("none"),
        "{log}"
    );
    assert!(
        value(find("reload-failed"), "error").is_some_and(|e| e.contains("\"5 sec\"")),
        "the error keeps its quotes: {log}"
    );
    assert!(
        value(find("agent-connect-failed"), "hint").is_some(),
        "{log}"
    );
    assert_eq!(
        value(find("reload"), "needs_restart"),
        Some("slots"),
        "{log}"
    );
    assert!(value(find("agent-down"), "reason").is_some(), "{log}");
    // Start-up says which local program is missing (and starts the rest).
    let warning = find("config-warning");
    assert_eq!(
        value(warning, "field"),
        Some("service.missing.argv[0]"),
        "{log}"
    );
    assert_eq!(
        value(warning, "consequence"),
        Some("the service will fail to start"),
        "{log}"
    );
    assert!(pids_with(&marker).is_empty(), "{log}");
    if std::env::var_os("HOLDEN_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
}
