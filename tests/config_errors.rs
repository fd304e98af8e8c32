//! Malformed configuration files: each is rejected with the right `line:column`, kind,
//! field name and a message saying what was expected.

use holden::config::{Config, ConfigErrorKind};

const SERVICE: &str = "[[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n";

struct Case {
    text: String,
    line: usize,
    column: usize,
    kind: ConfigErrorKind,
    field: &'static str,
    message: &'static str,
}

fn case(
    text: &str,
    line: usize,
    column: usize,
    kind: ConfigErrorKind,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        text: text.to_string(),
        line,
        column,
        kind,
        field,
        message,
    }
}

/// A file of one valid service followed by `extra` lines inside the same `[[service]]`.
fn service_with(extra: &str) -> String {
    format!("{SERVICE}{extra}\n")
}

fn cases() -> Vec<Case> {
    use ConfigErrorKind::*;
    vec![
        case("slots = \n", 1, 9, Syntax, "", "expected"),
        case("slots = 4\nslots = 5\n", 2, 1, Syntax, "slots", "duplicate key"),
        case("slot = 4\n", 1, 1, UnknownKey, "slot", "expected one of `slots`"),
        case("[agent]\nsockets = \"/x.sock\"\n", 2, 1, UnknownKey, "agent.sockets", "expected one of `socket`"),
        case("[agent]\nprotocol = \"v3\"\n", 2, 12, BadValue, "agent.protocol", "expected one of \"v1\", \"v0.2\", \"auto\""),
        case("[agent]\nsocket = \"run/agent.sock\"\n", 2, 10, BadValue, "agent.socket", "expected an absolute socket path"),
        case("[agent]\nrequest_timeout = \"-5s\"\n", 2, 19, BadValue, "agent.request_timeout", "negative duration"),
        case("[agent]\nrequest_timeout = \"0\"\n", 2, 19, BadValue, "agent.request_timeout", "greater than 0"),
        case("[agent]\nreconnect_initial = \"2s\"\nreconnect_max = \"1s\"\n", 3, 17, BadValue, "agent.reconnect_max", "expected reconnect_max >= reconnect_initial"),
        case("slots = 0\n", 1, 9, BadValue, "slots", "expected 1..=8192"),
        case("slots = 8193\n", 1, 9, BadValue, "slots", "expected 1..=8192"),
        case("log_level = \"loud\"\n", 1, 13, BadValue, "log_level", "expected one of \"error\""),
        case("[shutdown]\ntimeout = \"25h\"\n", 2, 11, BadValue, "shutdown.timeout", "too large (at most 24h)"),
        case("[shutdown]\nstop_services = \"yes\"\n", 2, 17, BadValue, "shutdown.stop_services", "expected a boolean"),
        case("[control]\ngroup = \"9wheel\"\n", 2, 9, BadValue, "control.group", "starting with a letter"),
        case("[[service]]\npartition = \"local\"\nargv = [\"/bin/true\"]\n", 1, 1, MissingKey, "service[0].name", "missing key `name`"),
        case("[[service]]\nname = \"a\"\nargv = [\"/bin/true\"]\n", 2, 8, MissingKey, "service.a.partition", "expected \"local\" or \"qm\""),
        case("[[service]]\nname = \"a b\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n", 2, 8, BadValue, "service[0].name", "expected 1 to 64 characters"),
        case("[[service]]\nname = \"a\"\npartition = \"host\"\nargv = [\"/bin/true\"]\n", 3, 13, BadValue, "service.a.partition", "expected one of \"local\", \"qm\""),
        case("[[service]]\nname = \"a\"\npartition = \"local\"\nargv = []\n", 4, 8, BadValue, "service.a.argv", "empty argv"),
        case("[[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"bin/true\", \"-x\"]\n", 4, 9, BadValue, "service.a.argv[0]", "not an absolute path"),
        case("[[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/echo\", \"a\\u0000b\"]\n", 4, 22, BadValue, "service.a.argv[1]", "NUL"),
        case("[[service]]\nname = \"a\"\npartition = \"local\"\nargv = \"/bin/true\"\n", 4, 8, BadValue, "service.a.argv", "expected an array of strings"),
        case(&service_with("stdout = \"syslog\""), 5, 10, BadValue, "service.a.stdout", "unknown value \"syslog\": expected \"journal\", \"log\", \"inherit\", \"null\" or \"file:/absolute/path\""),
        case(&service_with("stderr = \"file:log/x\""), 5, 10, BadValue, "service.a.stderr", "\"log/x\" is not an absolute path"),
        case(&service_with("stdout = 1"), 5, 10, BadValue, "service.a.stdout", "found the integer 1"),
        case(&service_with("type = \"forking\""), 5, 8, BadValue, "service.a.type", "expected one of \"simple\", \"exec\", \"notify\", \"oneshot\""),
        case(&service_with("watchdog = \"1s\""), 5, 12, BadValue, "service.a.watchdog", "needs `type = \"notify\"`"),
        case(&service_with("type = \"oneshot\"\nrestart = \"always\""), 6, 11, BadValue, "service.a.restart", "a oneshot service is done when it exits 0"),
        case(&service_with("type = \"notify\"\nstart_timeout = \"soon\""), 6, 17, BadValue, "service.a.start_timeout", "duration"),
        case(&service_with("type = \"notify\"\nwatchdog = \"1s\"\nwatchdog_signal = \"SIGNOPE\""), 7, 19, BadValue, "service.a.watchdog_signal", "signal"),
        case(&service_with("notify_fd = 3"), 5, 13, BadValue, "service.a.notify_fd", "needs `type = \"notify\"`"),
        case(&service_with("type = \"notify\"\nnotify_fd = 2"), 6, 13, BadValue, "service.a.notify_fd", "3..=1023"),
        case(&service_with("type = \"notify\"\nnotify_fd = \"3\""), 6, 13, BadValue, "service.a.notify_fd", "an integer"),
        case("[[service]]\nname = \"q\"\npartition = \"qm\"\nargv = [\"/bin/true\"]\ntype = \"notify\"\nnotify_fd = 3\n", 6, 13, BadValue, "service.q.notify_fd", "local services only"),
        case(&service_with("after = [\"nope\"]"), 5, 10, BadValue, "service.a.after[0]", "no service is named \"nope\""),
        case(&service_with("requires = [\"a\"]"), 5, 13, BadValue, "service.a.requires[0]", "cannot depend on itself"),
        case(&service_with("after = \"b\""), 5, 9, BadValue, "service.a.after", "an array of service names"),
        case(&(service_with("after = [\"b\"]") + "[[service]]\nname = \"b\"\npartition = \"local\"\nargv = [\"/bin/true\"]\nrequires = [\"a\"]\n"), 5, 9, BadValue, "service.a.after", "a dependency cycle: a -> b -> a"),
        case("[[service]]\nname = \"q\"\npartition = \"qm\"\nargv = [\"/bin/true\"]\nstdout = \"log\"\n", 5, 10, BadValue, "service.q.stdout", "for local services only: a QM service's output stays inside the QM partition"),
        case("[log]\njournal = \"sometimes\"\n", 2, 11, BadValue, "log.journal", "expected one of \"auto\", \"always\", \"never\""),
        case("[log]\njournal_socket = \"journal.sock\"\n", 2, 18, BadValue, "log.journal_socket", "expected an absolute socket path"),
        case("[log]\nhistory_bytes = 10\n", 2, 17, BadValue, "log.history_bytes", "expected 1024..=1048576"),
        case("[log]\nlevel = \"info\"\n", 2, 1, UnknownKey, "log.level", "expected one of `journal_socket`"),
        case(&service_with("bogus = 1"), 5, 1, UnknownKey, "service.a.bogus", "unknown key `bogus`: expected one of `name`"),
        case(&service_with("restart = \"sometimes\""), 5, 11, BadValue, "service.a.restart", "expected one of \"always\", \"on-failure\", \"never\""),
        case(&service_with("restart_delay = 5"), 5, 17, BadValue, "service.a.restart_delay", "expected a duration string like \"250ms\" or \"5s\", found the integer 5"),
        case(&service_with("restart_delay = \"5 sec\""), 5, 17, BadValue, "service.a.restart_delay", "expected an integer and a unit with no space"),
        case(&service_with("stop_timeout = \"5sec\""), 5, 16, BadValue, "service.a.stop_timeout", "expected ns, us, ms, s, m or h"),
        case(&service_with("stop_timeout = \"2000h\""), 5, 16, BadValue, "service.a.stop_timeout", "at most 24h"),
        case(&service_with("stop_signal = \"SIGFOO\""), 5, 15, BadValue, "service.a.stop_signal", "unknown signal"),
        case(&service_with("stop_signal = 99"), 5, 15, BadValue, "service.a.stop_signal", "expected 1..=64"),
        case(&service_with("working_directory = \"var/lib\""), 5, 21, BadValue, "service.a.working_directory", "not an absolute path"),
        case(&service_with("env = { \"A=B\" = \"x\" }"), 5, 17, BadValue, "service.a.env.A=B", "without = or NUL"),
        case(&service_with("env = { A = 1 }"), 5, 13, BadValue, "service.a.env.A", "expected a string, found the integer 1"),
        case(&service_with("uid = -1"), 5, 7, BadValue, "service.a.uid", "out of range"),
        case(&service_with("backoff = { initial = \"2s\", max = \"1s\" }"), 5, 35, BadValue, "service.a.backoff.max", "expected max >= initial"),
        case(&service_with("backoff = { initial = \"1s\", max = \"2s\", factor = 0.5 }"), 5, 50, BadValue, "service.a.backoff.factor", "expected a number 1.0..=10.0"),
        case(&service_with("backoff = { initial = \"1s\", max = \"2s\", facter = 2.0 }"), 5, 41, UnknownKey, "service.a.backoff.facter", "did you mean `factor`?"),
        case(&service_with("start_limit = { burst = 17, interval = \"1s\" }"), 5, 25, BadValue, "service.a.start_limit.burst", "expected 0..=16"),
        case(&service_with("start_limit = { burst = 3, interval = \"0\" }"), 5, 39, BadValue, "service.a.start_limit.interval", "greater than 0"),
        case(&format!("{SERVICE}{SERVICE}"), 6, 8, DuplicateName, "service[1].name", "first defined on line 2"),
        // No parser wording: no Rust type, no serde.
        case("slots = \"8\"\n", 1, 9, BadValue, "slots", "expected an integer 1..=8192, found the string \"8\""),
        case("slots = 99999999999999999999999999\n", 1, 9, BadValue, "slots", "99999999999999999999999999 out of range: expected 1..=8192"),
        case("slots = 1.5\n", 1, 9, BadValue, "slots", "expected an integer 1..=8192, found the number 1.5"),
        // Type errors name the service.
        case(&service_with("uid = \"radio\""), 5, 7, BadValue, "service.a.uid", "expected an integer 0..=4294967294, found the string \"radio\""),
        case(&service_with("enabled = \"yes\""), 5, 11, BadValue, "service.a.enabled", "expected a boolean (true or false), found the string \"yes\""),
        case(&service_with("backoff = \"fast\""), 5, 11, BadValue, "service.a.backoff", "expected a table, found the string \"fast\""),
        // Hints.
        case("[service]\nname = \"a\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n", 1, 1, BadValue, "service", "write `[[service]]` (two brackets)"),
        case("services = []\n", 1, 1, UnknownKey, "services", "did you mean `[[service]]`?"),
        case(&service_with("restart_delay = \"1.5s\""), 5, 17, BadValue, "service.a.restart_delay", "fractions are not accepted: write \"1500ms\""),
        case("[control]\ngroup = \"staff\"\nread_group = \"staff\"\n", 3, 14, BadValue, "control.read_group", "is also control.group"),
        case(&format!("slots = 1\n{SERVICE}{}", SERVICE.replace("\"a\"", "\"b\"")), 6, 1, TooManyServices, "service.b", "more services than slots (1)"),
    ]
}

#[test]
fn every_malformed_file_is_rejected_at_the_right_place() {
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let errors = match Config::parse(&case.text, "bad.toml") {
            Ok(_) => {
                failures.push(format!("case {index}: accepted:\n{}", case.text));
                continue;
            }
            Err(errors) => errors,
        };
        let error = errors.first();
        let rendered = error.to_string();
        for leak in [
            "i64",
            "i128",
            "u32",
            "f64",
            "invalid type",
            "sequence",
            "serde",
            "field `",
        ] {
            if rendered.contains(leak) {
                failures.push(format!("case {index}: parser wording {leak:?}: {rendered}"));
            }
        }
        let expected_prefix = format!("bad.toml:{}:{}: ", case.line, case.column);
        let ok = error.line == case.line
            && error.column == case.column
            && error.kind == case.kind
            && error.field == case.field
            && rendered.starts_with(&expected_prefix)
            && rendered.contains(case.message)
            && (case.field.is_empty() || rendered.contains(&format!("`{}`", case.field)));
        if !ok {
            failures.push(format!(
                "case {index}: got {rendered:?} kind {:?} field {:?}\n  expected {expected_prefix}`{}` {:?} containing {:?}",
                error.kind, error.field, case.field, case.kind, case.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_missing_file_is_an_io_error_naming_the_path() {
    let path = std::path::Path::new("/nonexistent/holden/orchestrator.toml");
    let errors = Config::load(path).unwrap_err();
    let error = errors.first();
    assert_eq!(error.kind, ConfigErrorKind::Io);
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/holden/orchestrator.toml: open: "),
        "{error}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes: the bad value is still at character column 19.
    let text = "# é\nlog_level = \"é-level\"\n";
    let error = Config::parse(text, "x.toml").unwrap_err().first().clone();
    assert_eq!((error.line, error.column), (2, 13));
    let text = "log_level = \"info\" # é\nslots = \"é\"\n";
    let error = Config::parse(text, "x.toml").unwrap_err().first().clone();
    assert_eq!((error.line, error.column), (2, 9));
}

/// A unique temporary file, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "holden-config-errors-{}-{unique}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn invalid_utf8_is_reported_where_it_starts() {
    let file = TempFile::new("latin1.toml", b"slots = 4\n# caf\xe9\n");
    let error = Config::load(&file.0).unwrap_err().first().clone();
    assert_eq!(
        (error.line, error.column, error.kind),
        (2, 6, ConfigErrorKind::Syntax)
    );
    assert!(
        error.to_string().contains("expected a UTF-8 text file"),
        "{error}"
    );
}

#[test]
fn an_oversized_file_is_refused_before_parsing() {
    let file = TempFile::new("big.toml", &vec![b'#'; 4 * 1024 * 1024 + 1]);
    let error = Config::load(&file.0).unwrap_err().first().clone();
    assert_eq!(error.kind, ConfigErrorKind::Io);
    assert!(
        error.to_string().contains("larger than 4194304 bytes"),
        "{error}"
    );
}

/// Random edits of the documented example (splitmix64, fixed seed): every result is a valid
/// configuration or a positioned error, never a panic.
#[test]
fn mutated_files_never_panic() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let example = doc
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("\n```")
        .next()
        .unwrap()
        .to_string();
    let mut state: u64 = 0x5EED_C0FF;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const PIECES: [&str; 12] = [
        "\"",
        "=",
        "[",
        "]",
        "{",
        "}",
        "\n",
        "-1",
        "\"0\"",
        "\\u0000",
        "[[service]]\n",
        "é",
    ];
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..3_000 {
        let mut text = example.clone();
        for _ in 0..1 + next() % 3 {
            let mut at = (next() as usize) % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match next() % 3 {
                0 => text.insert_str(at, PIECES[(next() as usize) % PIECES.len()]),
                1 => {
                    let mut end = (at + 1 + (next() as usize) % 8).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                }
                _ => {
                    let mut end = (at + 1).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, PIECES[(next() as usize) % PIECES.len()]);
                }
            }
        }
        match Config::parse(&text, "m.toml") {
            Ok(_) => accepted += 1,
            Err(errors) => {
                for error in &errors.errors {
                    assert!(
                        error.line >= 1 && error.column >= 1,
                        "unplaced error {error} for:\n{text}"
                    );
                    assert!(error.to_string().starts_with("m.toml:"), "{error}");
                    for leak in [
                        "i64",
                        "i128",
                        "u32",
                        "f64",
                        "invalid type",
                        "sequence",
                        "serde",
                    ] {
                        assert!(
                            !error.message.contains(leak),
                            "parser wording {leak:?}: {error}"
                        );
                    }
                }
                rejected += 1;
            }
        }
    }
    assert!(
        accepted > 0 && rejected > 1000,
        "accepted {accepted}, rejected {rejected}"
    );
}

/// Every error of a file is reported, in file order, not only the first.
#[test]
fn every_error_of_a_file_is_reported_in_order() {
    let text = "slots = \"many\"\nlog_level = \"loud\"\n[agent]\nprotocol = \"v3\"\n\
        [[service]]\nname = \"radio\"\npartition = \"qm\"\nargv = [\"/usr/bin/radio\"]\nuid = -1\nstop_timeout = \"5sec\"\n\
        [[service]]\nname = \"nav\"\nargv = [\"nav\"]\n";
    let errors = Config::parse(text, "f.toml").unwrap_err();
    let got: Vec<(usize, &str)> = errors
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "slots"),
            (2, "log_level"),
            (4, "agent.protocol"),
            (9, "service.radio.uid"),
            (10, "service.radio.stop_timeout"),
            (12, "service.nav.partition"),
            (13, "service.nav.argv[0]"),
        ],
        "{errors}"
    );
    assert_eq!(errors.omitted, 0);
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 7, "{shown}");
    assert!(shown.lines().all(|l| l.starts_with("f.toml:")), "{shown}");
}

/// At most `SHOWN_MAX` errors are kept; the rest are counted.
#[test]
fn errors_are_capped_and_the_rest_counted() {
    let mut text = String::new();
    for i in 0..40 {
        text += &format!("[[service]]\nname = \"s{i}\"\npartition = \"local\"\nargv = [\"/bin/true\"]\nuid = -1\n");
    }
    let errors = Config::parse(&text, "many.toml").unwrap_err();
    assert_eq!(errors.errors.len(), holden::config::ConfigErrors::SHOWN_MAX);
    assert_eq!(errors.omitted, 40 - holden::config::ConfigErrors::SHOWN_MAX);
    assert_eq!(errors.errors[0].field, "service.s0.uid");
    assert!(
        errors
            .to_string()
            .ends_with("many.toml: 8 more errors not shown (the first 32 are)"),
        "{errors}"
    );
}

/// Syntax errors are all reported too (the parser recovers), and stop the checks of values.
#[test]
fn syntax_errors_are_all_reported() {
    let errors = Config::parse("slots = \nlog_level = \n[agent\n", "s.toml").unwrap_err();
    assert!(errors.errors.len() >= 2, "{errors}");
    assert!(
        errors
            .errors
            .iter()
            .all(|e| e.kind == ConfigErrorKind::Syntax),
        "{errors}"
    );
    let lines: Vec<usize> = errors.errors.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "in file order");
}

/// A machine described by the test: which groups, programs and directories exist.
struct FakeHost;

impl holden::config::Host for FakeHost {
    fn group_exists(&self, name: &str) -> Result<bool, String> {
        Ok(name == "holden")
    }
    fn program_problem(&self, path: &std::path::Path) -> Option<String> {
        (path != std::path::Path::new("/usr/bin/ok")).then(|| "does not exist".to_string())
    }
    fn directory_problem(&self, path: &std::path::Path) -> Option<String> {
        (path != std::path::Path::new("/var/ok")).then(|| "does not exist".to_string())
    }
}

/// `--check` looks at the machine: an unknown group is an error start-up refuses too; a
/// missing local program or working directory is reported (`missing`), with its place; QM
/// paths cannot be checked (a warning); an empty file is a warning.
#[test]
fn the_host_checks_name_the_place() {
    use holden::config::ConfigErrorKind::*;
    let text = "[control]\ngroup = \"holden\"\nread_group = \"nobody-group\"\n\
        [[service]]\nname = \"a\"\npartition = \"local\"\nargv = [\"/usr/bin/ok\"]\nworking_directory = \"/var/ok\"\n\
        [[service]]\nname = \"b\"\npartition = \"local\"\nargv = [\"/usr/bin/gone\"]\nworking_directory = \"/var/gone\"\n\
        [[service]]\nname = \"radio\"\npartition = \"qm\"\nargv = [\"/usr/bin/radio\"]\n";
    let errors = Config::check(text, "h.toml", &FakeHost).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    let e = errors.first();
    assert_eq!((e.line, e.column, e.kind), (3, 14, UnknownGroup), "{e}");
    assert!(
        e.to_string().contains("no group named \"nobody-group\""),
        "{e}"
    );

    let text = text.replace("read_group = \"nobody-group\"\n", "");
    let checked = Config::check(&text, "h.toml", &FakeHost).unwrap();
    let missing: Vec<String> = checked.missing.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        missing,
        [
            "h.toml:11:9: `service.b.argv[0]`: program \"/usr/bin/gone\" does not exist",
            "h.toml:12:21: `service.b.working_directory`: \"/var/gone\" does not exist",
        ]
    );
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    assert_eq!(checked.unchecked.len(), 1, "{:?}", checked.unchecked);
    let w = checked.unchecked[0].to_string();
    assert!(
        w.starts_with(
            "h.toml:16:9: warning: `service.radio.argv[0]`: \"/usr/bin/radio\" not checked"
        ),
        "{w}"
    );

    let checked = Config::check("", "empty.toml", &FakeHost).unwrap();
    assert!(checked.missing.is_empty());
    assert_eq!(
        checked.warnings[0].to_string(),
        "empty.toml: warning: 0 services: the orchestrator would start and supervise nothing"
    );
}
