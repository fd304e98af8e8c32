//! From the text to a valid [`Config`]: every check, every default, every error.
//!
//! The text is parsed into a document whose every key and value keeps its place in the file
//! (`toml::de::DeTable`), and the document is checked here by hand rather than by serde, so
//! that every error of the file is reported (not only the first), each names the service it
//! is in (`service.radio.uid`), and none speaks the parser's language (`expected i64`).
//! A value that is wrong is reported and replaced by its default, so that the checks after
//! it still run; the [`Config`] is built only when there was no error.

use super::duration::{format_duration, parse_duration};
use super::error::{line_column, ConfigError, ConfigErrorKind, ConfigErrors};
use super::service::{
    OutputTarget, ServiceName, ServiceSpec, ARGV_COUNT_MAX, ARG_LEN_MAX, ENV_COUNT_MAX, ENV_LEN_MAX,
};
use super::signal::{signal_from_name, signal_from_number, SIGNAL_NUMBER_MAX};
use super::{
    AgentConfig, AgentProtocol, CgroupConfig, CgroupRoot, Config, ControlConfig, LogConfig,
    LogLevel, OwnLines, ShutdownConfig, AGENT_SOCKET_DEFAULT, CONTROL_SOCKET_DEFAULT,
    HISTORY_BYTES_DEFAULT, HISTORY_BYTES_MAX, HISTORY_BYTES_MIN, JOURNAL_SOCKET_DEFAULT,
    PATH_LEN_MAX, RUNTIME_DIR_DEFAULT, SLOTS_DEFAULT, SLOTS_MAX, SOCKET_PATH_LEN_MAX,
};
use crate::supervise::{
    Backoff, Kind, Partition, Readiness, Restart, ServicePolicy, StartLimit, START_LIMIT_BURST_MAX,
};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Default agent request timeout.
pub const AGENT_REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default first agent reconnect delay.
pub const AGENT_RECONNECT_INITIAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest agent reconnect delay.
pub const AGENT_RECONNECT_MAX_DEFAULT: Duration = Duration::from_secs(5);
/// Default shutdown timeout.
pub const SHUTDOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default backoff factor.
pub const BACKOFF_FACTOR_DEFAULT: f64 = 2.0;
/// Largest backoff factor.
pub const BACKOFF_FACTOR_MAX: f64 = 10.0;
/// Default stable run time after which the backoff resets.
pub const BACKOFF_RESET_AFTER_DEFAULT: Duration = Duration::from_secs(60);
/// Longest group name for the control socket.
pub const GROUP_NAME_LEN_MAX: usize = 32;

const TOP_KEYS: &[&str] = &[
    "slots",
    "log_level",
    "runtime_dir",
    "agent",
    "shutdown",
    "control",
    "log",
    "cgroup",
    "service",
];
const TOP_SHOWN: &str =
    "`slots`, `log_level`, `runtime_dir`, `[agent]`, `[shutdown]`, `[control]`, `[log]`, `[cgroup]`, `[[service]]`";
const CGROUP_KEYS: &[&str] = &["root"];
const LOG_KEYS: &[&str] = &["journal_socket", "journal", "history_bytes"];
const AGENT_KEYS: &[&str] = &[
    "socket",
    "protocol",
    "request_timeout",
    "reconnect_initial",
    "reconnect_max",
    "cgroup",
];
const SHUTDOWN_KEYS: &[&str] = &["stop_services", "timeout"];
const CONTROL_KEYS: &[&str] = &["socket", "group", "read_group"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "argv",
    "partition",
    "env",
    "working_directory",
    "uid",
    "gid",
    "restart",
    "restart_delay",
    "backoff",
    "start_limit",
    "stop_signal",
    "stop_timeout",
    "enabled",
    "stdout",
    "stderr",
    "type",
    "start_timeout",
    "watchdog",
    "watchdog_signal",
    "notify_fd",
    "after",
    "requires",
    "wants",
    "user",
    "group",
    "supplementary_groups",
    "limits",
    "umask",
    "oom_score_adj",
    "nice",
    "sched_policy",
    "sched_priority",
    "cpu_affinity",
    "no_new_privs",
    "capability_bounding_set",
    "ambient_capabilities",
    "memory_max",
    "memory_high",
    "cpu_weight",
    "cpu_max",
    "pids_max",
    "io_weight",
];
const SERVICE_SHOWN: &str = "`name`, `argv`, `partition`, `env`, `working_directory`, `uid`, `gid`, `restart`, `restart_delay`, `backoff`, `start_limit`, `stop_signal`, `stop_timeout`, `enabled`, `stdout`, `stderr`, `type`, `start_timeout`, `watchdog`, `watchdog_signal`, `notify_fd`, `after`, `requires`, `wants`, `user`, `group`, `supplementary_groups`, `limits`, `umask`, `oom_score_adj`, `nice`, `sched_policy`, `sched_priority`, `cpu_affinity`, `no_new_privs`, `capability_bounding_set`, `ambient_capabilities`, `memory_max`, `memory_high`, `cpu_weight`, `cpu_max`, `pids_max`, `io_weight`";
const LIMIT_SHOWN: &str = "`cpu`, `fsize`, `data`, `stack`, `core`, `rss`, `nproc`, `nofile`, `memlock`, `as`, `locks`, `sigpending`, `msgqueue`, `nice`, `rtprio`, `rttime`";
const BACKOFF_KEYS: &[&str] = &["initial", "factor", "max", "reset_after"];
const START_LIMIT_KEYS: &[&str] = &["burst", "interval"];

const DURATION_EXPECTED: &str = "a duration string like \"250ms\" or \"5s\"";

type Table<'i> = DeTable<'i>;
type Val<'i> = Spanned<DeValue<'i>>;

/// Where, in the text, the values the host checks look at are (byte offsets).
#[derive(Clone, Debug, Default)]
pub(crate) struct Spans {
    pub control_group: Option<usize>,
    pub control_read_group: Option<usize>,
    /// One per service, in file order.
    pub services: Vec<ServiceSpans>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceSpans {
    pub argv0: usize,
    pub working_directory: Option<usize>,
    /// `stdout` and `stderr`, when given.
    pub outputs: [Option<usize>; 2],
    /// Each cgroup limit's value, in the order of `ServiceSpec::cgroup_limits`.
    pub cgroup_limits: Vec<usize>,
}

/// The checks of one file: its name and text, and the errors found so far.
struct Check<'a> {
    path: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// `/etc/passwd` and `/etc/group`, read at the first name (`user`, `group`, …).
    accounts: super::accounts::Accounts,
}

/// The value of `key` in `table`.
fn entry<'t, 'i>(table: &'t Table<'i>, key: &str) -> Option<&'t Val<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// `prefix.key`, or `key` at the top.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// What a value is, for "expected X, found Y": never a Rust type name.
fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => {
            let mut shown: String = s.chars().take(40).collect();
            if shown.len() < s.len() {
                shown.push('…');
            }
            format!("the string {shown:?}")
        }
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date-time {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// Edit distance of two short keys (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

impl Check<'_> {
    fn error(&mut self, offset: usize, kind: ConfigErrorKind, field: &str, message: String) {
        self.errors.push(ConfigError::at(
            self.path, self.text, offset, kind, field, message,
        ));
    }

    /// A bad value: reported, `None`.
    fn bad<T>(&mut self, value: &Val<'_>, field: &str, message: impl Into<String>) -> Option<T> {
        self.error(
            value.span().start,
            ConfigErrorKind::BadValue,
            field,
            message.into(),
        );
        None
    }

    fn expected<T>(&mut self, value: &Val<'_>, field: &str, expected: &str) -> Option<T> {
        let message = format!("expected {expected}, found {}", found(value.get_ref()));
        self.bad(value, field, message)
    }

    /// Reports every key of `table` that is not in `allowed`.
    fn known_keys(&mut self, table: &Table<'_>, prefix: &str, allowed: &[&str], shown: &str) {
        for (key, _) in table.iter() {
            let key_text = key.get_ref().as_ref();
            if allowed.contains(&key_text) {
                continue;
            }
            let close = allowed
                .iter()
                .map(|k| (distance(key_text, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min();
            let hint = match close {
                Some((_, "service")) => "; did you mean `[[service]]`?".to_string(),
                Some((_, k)) => format!("; did you mean `{k}`?"),
                None => String::new(),
            };
            self.error(
                key.span().start,
                ConfigErrorKind::UnknownKey,
                &join(prefix, key_text),
                format!("unknown key `{key_text}`: expected one of {shown}{hint}"),
            );
        }
    }

    fn string<'v>(&mut self, value: &'v Val<'_>, field: &str, expected: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => self.expected(value, field, expected),
        }
    }

    fn boolean(&mut self, value: &Val<'_>, field: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => self.expected(value, field, "a boolean (true or false)"),
        }
    }

    fn table<'v, 'i>(&mut self, value: &'v Val<'i>, field: &str) -> Option<&'v Table<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => self.expected(value, field, "a table"),
        }
    }

    /// An integer in `min..=max`; `expected` describes the range for the messages.
    fn integer(
        &mut self,
        value: &Val<'_>,
        field: &str,
        min: i64,
        max: i64,
        expected: &str,
    ) -> Option<i64> {
        let DeValue::Integer(integer) = value.get_ref() else {
            return self.expected(value, field, &format!("an integer {expected}"));
        };
        match i64::from_str_radix(integer.as_str(), integer.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => self.bad(
                value,
                field,
                format!("{integer} out of range: expected {expected}"),
            ),
        }
    }

    fn duration(&mut self, value: &Val<'_>, field: &str) -> Option<Duration> {
        let text = self.string(value, field, DURATION_EXPECTED)?;
        match parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(message) => self.bad(value, field, message),
        }
    }

    fn duration_or(
        &mut self,
        table: &Table<'_>,
        key: &str,
        prefix: &str,
        default: Duration,
    ) -> Duration {
        match entry(table, key) {
            None => default,
            Some(value) => self.duration(value, &join(prefix, key)).unwrap_or(default),
        }
    }

    /// One of `choices` by name.
    fn one_of<T: Copy>(
        &mut self,
        value: &Val<'_>,
        field: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        let expected = format!("one of {}", names.join(", "));
        let text = self.string(value, field, &expected)?;
        match choices.iter().find(|(name, _)| *name == text) {
            Some((_, v)) => Some(*v),
            None => self.bad(
                value,
                field,
                format!("unknown value {text:?}: expected {expected}"),
            ),
        }
    }

    fn one_of_or<T: Copy>(
        &mut self,
        table: &Table<'_>,
        key: &str,
        prefix: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        match entry(table, key) {
            None => default,
            Some(value) => self
                .one_of(value, &join(prefix, key), choices)
                .unwrap_or(default),
        }
    }

    fn socket_path(
        &mut self,
        table: &Table<'_>,
        key: &str,
        prefix: &str,
        default: &str,
    ) -> PathBuf {
        let field = join(prefix, key);
        let Some(value) = entry(table, key) else {
            return PathBuf::from(default);
        };
        let expected = format!("an absolute socket path of at most {SOCKET_PATH_LEN_MAX} bytes");
        let Some(path) = self.string(value, &field, &expected) else {
            return PathBuf::from(default);
        };
        if !path.starts_with('/') || path.len() > SOCKET_PATH_LEN_MAX || path.contains('\0') {
            let message = format!("bad socket path {path:?}: expected {expected}");
            self.bad::<()>(value, &field, message);
            return PathBuf::from(default);
        }
        PathBuf::from(path)
    }

    fn group_name(&mut self, value: &Val<'_>, field: &str) -> Option<String> {
        let expected = format!(
            "a group name of 1 to {GROUP_NAME_LEN_MAX} characters of a-z A-Z 0-9 _ -, starting with a letter or _"
        );
        let name = self.string(value, field, &expected)?;
        let valid = !name.is_empty()
            && name.len() <= GROUP_NAME_LEN_MAX
            && name
                .bytes()
                .next()
                .is_some_and(|byte| byte.is_ascii_alphabetic() || byte == b'_')
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'));
        if !valid {
            return self.bad(
                value,
                field,
                format!("bad group name {name:?}: expected {expected}"),
            );
        }
        Some(name.to_string())
    }
}

/// Parses and validates a whole file: the configuration and where its host-dependent values
/// are, or every error (in file order, capped).
pub(crate) fn parse(text: &str, path: &str) -> Result<(Config, Spans), ConfigErrors> {
    let (document, syntax) = DeTable::parse_recoverable(text);
    let mut check = Check {
        path,
        text,
        errors: Vec::new(),
        accounts: Default::default(),
    };
    if !syntax.is_empty() {
        // A document with syntax errors is only a guess: checking its values would report
        // errors that are not there.
        for error in &syntax {
            syntax_error(&mut check, error);
        }
        return Err(ConfigErrors::of(check.errors).expect("not empty"));
    }
    let root = document.get_ref();
    let result = config(&mut check, root);
    match ConfigErrors::of(check.errors) {
        Some(errors) => Err(errors),
        None => Ok(result),
    }
}

fn syntax_error(check: &mut Check<'_>, error: &toml::de::Error) {
    let span = error.span().unwrap_or(0..0);
    let message = error.message().trim().to_string();
    let field = if message.starts_with("duplicate key") {
        check
            .text
            .get(span.clone())
            .map(|key| {
                key.trim()
                    .trim_matches('"')
                    .trim_matches(['[', ']'])
                    .to_string()
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let message = if field == "service" {
        format!(
            "{message}: `[service]` and `[[service]]` cannot be mixed; write `[[service]]` (two brackets) before each service"
        )
    } else {
        message
    };
    check.error(span.start, ConfigErrorKind::Syntax, &field, message);
}

fn config(check: &mut Check<'_>, root: &Table<'_>) -> (Config, Spans) {
    check.known_keys(root, "", TOP_KEYS, TOP_SHOWN);
    let mut slots_valid = true;
    let slots = match entry(root, "slots") {
        None => SLOTS_DEFAULT,
        Some(value) => {
            let slots = check.integer(
                value,
                "slots",
                1,
                i64::from(SLOTS_MAX),
                &format!("1..={SLOTS_MAX}"),
            );
            slots_valid = slots.is_some();
            slots.map_or(SLOTS_DEFAULT, |n| n as u32)
        }
    };
    let log_level = check.one_of_or(
        root,
        "log_level",
        "",
        LogLevel::Info,
        &[
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
        ],
    );
    let runtime_dir = entry(root, "runtime_dir")
        .and_then(|value| absolute_path(check, value, "runtime_dir"))
        .map_or_else(
            || PathBuf::from(RUNTIME_DIR_DEFAULT),
            |path| PathBuf::from(std::ffi::OsString::from_vec(path.into_bytes())),
        );
    let empty = Table::new();
    let section = |check: &mut Check<'_>, key: &str| -> Option<&Table<'_>> {
        entry(root, key).and_then(|value| check.table(value, key))
    };
    let agent_table = section(check, "agent");
    let agent = agent(check, agent_table.unwrap_or(&empty));
    let shutdown_table = section(check, "shutdown").unwrap_or(&empty);
    check.known_keys(
        shutdown_table,
        "shutdown",
        SHUTDOWN_KEYS,
        "`stop_services`, `timeout`",
    );
    let shutdown = ShutdownConfig {
        stop_services: entry(shutdown_table, "stop_services")
            .and_then(|v| check.boolean(v, "shutdown.stop_services"))
            .unwrap_or(true),
        timeout: check.duration_or(
            shutdown_table,
            "timeout",
            "shutdown",
            SHUTDOWN_TIMEOUT_DEFAULT,
        ),
    };
    let mut spans = Spans::default();
    let control_table = section(check, "control").unwrap_or(&empty);
    let control = control(check, control_table, &mut spans);
    let log_table = section(check, "log").unwrap_or(&empty);
    let log = log(check, log_table);
    let cgroup_table = section(check, "cgroup").unwrap_or(&empty);
    let cgroup = cgroup(check, cgroup_table);
    let services = services(check, root, slots, slots_valid, &mut spans);
    let config = Config {
        slots,
        log_level,
        runtime_dir,
        agent,
        shutdown,
        control,
        log,
        cgroup,
        services,
    };
    (config, spans)
}

fn log(check: &mut Check<'_>, table: &Table<'_>) -> LogConfig {
    check.known_keys(
        table,
        "log",
        LOG_KEYS,
        "`journal_socket`, `journal`, `history_bytes`",
    );
    let journal_socket = check.socket_path(table, "journal_socket", "log", JOURNAL_SOCKET_DEFAULT);
    let own_lines = check.one_of_or(
        table,
        "journal",
        "log",
        OwnLines::Auto,
        &[
            ("auto", OwnLines::Auto),
            ("always", OwnLines::Journal),
            ("never", OwnLines::Stderr),
        ],
    );
    let history_bytes = entry(table, "history_bytes")
        .and_then(|value| {
            check.integer(
                value,
                "log.history_bytes",
                i64::from(HISTORY_BYTES_MIN),
                i64::from(HISTORY_BYTES_MAX),
                &format!("{HISTORY_BYTES_MIN}..={HISTORY_BYTES_MAX}"),
            )
        })
        .map_or(HISTORY_BYTES_DEFAULT, |n| n as u32);
    LogConfig {
        journal_socket,
        own_lines,
        history_bytes,
    }
}

/// A service's `stdout` or `stderr`: `"inherit"`, `"null"`, `"journal"`, `"log"` or
/// `"file:/absolute/path"`.
fn output_target(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<OutputTarget> {
    let expected = "\"journal\", \"log\", \"inherit\", \"null\" or \"file:/absolute/path\"";
    let text = check.string(value, field, expected)?;
    Some(match text {
        "inherit" => OutputTarget::Inherit,
        "null" => OutputTarget::Null,
        "journal" => OutputTarget::Journal,
        "log" => OutputTarget::Log,
        _ => match text.strip_prefix("file:") {
            Some(path) if path.starts_with('/') && path.len() <= PATH_LEN_MAX => {
                match CString::new(path) {
                    Ok(path) => OutputTarget::File(path),
                    Err(_) => return check.bad(value, field, "contains a NUL character"),
                }
            }
            Some(path) => {
                return check.bad(
                    value,
                    field,
                    format!("{path:?} is not an absolute path: expected \"file:\" and an absolute path of at most {PATH_LEN_MAX} bytes"),
                )
            }
            None => {
                return check.bad(
                    value,
                    field,
                    format!("unknown value {text:?}: expected {expected}"),
                )
            }
        },
    })
}

fn agent(check: &mut Check<'_>, table: &Table<'_>) -> AgentConfig {
    check.known_keys(
        table,
        "agent",
        AGENT_KEYS,
        "`socket`, `protocol`, `request_timeout`, `reconnect_initial`, `reconnect_max`, `cgroup`",
    );
    let protocol = check.one_of_or(
        table,
        "protocol",
        "agent",
        AgentProtocol::V1,
        &[
            ("v1", AgentProtocol::V1),
            ("v0.2", AgentProtocol::V0_2),
            ("auto", AgentProtocol::Auto),
        ],
    );
    let positive = |check: &mut Check<'_>, key: &str, default: Duration, why: &str| {
        let field = join("agent", key);
        match entry(table, key) {
            None => default,
            Some(value) => match check.duration(value, &field) {
                Some(d) if d.is_zero() => {
                    check.bad::<()>(value, &field, format!("must be greater than 0{why}"));
                    default
                }
                Some(d) => d,
                None => default,
            },
        }
    };
    let request_timeout = positive(check, "request_timeout", AGENT_REQUEST_TIMEOUT_DEFAULT, "");
    let reconnect_initial = positive(
        check,
        "reconnect_initial",
        AGENT_RECONNECT_INITIAL_DEFAULT,
        " (a reconnect loop needs a delay)",
    );
    let reconnect_max =
        check.duration_or(table, "reconnect_max", "agent", AGENT_RECONNECT_MAX_DEFAULT);
    if reconnect_max < reconnect_initial {
        let offset = entry(table, "reconnect_max")
            .or(entry(table, "reconnect_initial"))
            .map_or(0, |value| value.span().start);
        check.error(
            offset,
            ConfigErrorKind::BadValue,
            "agent.reconnect_max",
            format!(
                "{} is shorter than agent.reconnect_initial {}: expected reconnect_max >= reconnect_initial",
                format_duration(reconnect_max),
                format_duration(reconnect_initial)
            ),
        );
    }
    let cgroup = entry(table, "cgroup")
        .and_then(|value| absolute_path(check, value, "agent.cgroup"))
        .map(|path| PathBuf::from(std::ffi::OsString::from_vec(path.into_bytes())));
    AgentConfig {
        socket: check.socket_path(table, "socket", "agent", AGENT_SOCKET_DEFAULT),
        protocol,
        request_timeout,
        reconnect_initial,
        reconnect_max,
        cgroup,
    }
}

fn control(check: &mut Check<'_>, table: &Table<'_>, spans: &mut Spans) -> ControlConfig {
    check.known_keys(
        table,
        "control",
        CONTROL_KEYS,
        "`socket`, `group`, `read_group`",
    );
    let socket = check.socket_path(table, "socket", "control", CONTROL_SOCKET_DEFAULT);
    let group_of = |check: &mut Check<'_>, key: &str| {
        let value = entry(table, key)?;
        let name = check.group_name(value, &join("control", key))?;
        Some((name, value.span().start))
    };
    let group = group_of(check, "group");
    let read_group = group_of(check, "read_group");
    if let (Some((group, _)), Some((read, offset))) = (&group, &read_group) {
        if group == read {
            check.error(
                *offset,
                ConfigErrorKind::BadValue,
                "control.read_group",
                format!(
                    "{read:?} is also control.group: expected a group that may only look (status, monitor), or no read_group"
                ),
            );
        }
    }
    spans.control_group = group.as_ref().map(|(_, offset)| *offset);
    spans.control_read_group = read_group.as_ref().map(|(_, offset)| *offset);
    ControlConfig {
        socket,
        group: group.map(|(name, _)| name),
        read_group: read_group.map(|(name, _)| name),
    }
}

fn services(
    check: &mut Check<'_>,
    root: &Table<'_>,
    slots: u32,
    slots_valid: bool,
    spans: &mut Spans,
) -> Vec<ServiceSpec> {
    let Some(value) = entry(root, "service") else {
        return Vec::new();
    };
    let items = match value.get_ref() {
        DeValue::Array(items) => items,
        DeValue::Table(_) => {
            check.bad::<()>(
                value,
                "service",
                "`[service]` is one table, but services are an array of tables: write `[[service]]` (two brackets) before each service",
            );
            return Vec::new();
        }
        _ => {
            check.expected::<()>(value, "service", "`[[service]]` tables");
            return Vec::new();
        }
    };
    let mut specs = Vec::with_capacity(items.len());
    let mut deps: Vec<DepRefs> = Vec::with_capacity(items.len());
    // Name -> offset of its first definition; its line is worked out only for an error (a
    // line for every service made the check quadratic in the file: 250 ms for 1,024 services).
    let mut first_at: BTreeMap<String, usize> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let DeValue::Table(table) = item.get_ref() else {
            check.expected::<()>(item, &format!("service[{index}]"), "a `[[service]]` table");
            continue;
        };
        let header = item.span().start;
        let Some((spec, service_spans, name_offset)) = service(check, table, header, index) else {
            continue;
        };
        if let Some(&first) = first_at.get(spec.name.as_str()) {
            let (first, _) = line_column(check.text, first);
            check.error(
                name_offset,
                ConfigErrorKind::DuplicateName,
                &format!("service[{index}].name"),
                format!(
                    "duplicate service name {:?}: first defined on line {first}; expected unique names",
                    spec.name.as_str()
                ),
            );
            continue;
        }
        if slots_valid && index as u64 >= u64::from(slots) {
            check.error(
                header,
                ConfigErrorKind::TooManyServices,
                &format!("service.{}", spec.name),
                format!(
                    "more services than slots ({slots}): expected at most {slots} services, or raise `slots`"
                ),
            );
        }
        first_at.insert(spec.name.as_str().to_string(), name_offset);
        let mut spec = spec;
        let field = format!("service.{}", spec.name);
        let mut refs = DepRefs::default();
        for (key, list) in [
            ("after", &mut refs.after),
            ("requires", &mut refs.requires),
            ("wants", &mut refs.wants),
        ] {
            if let Some(value) = entry(table, key) {
                *list = dependency_names(check, value, &join(&field, key));
                refs.offsets.push((key, value.span().start));
            }
        }
        spec.after = refs.after.iter().map(|(n, _)| n.clone()).collect();
        spec.requires = refs.requires.iter().map(|(n, _)| n.clone()).collect();
        spec.wants = refs.wants.iter().map(|(n, _)| n.clone()).collect();
        deps.push(refs);
        specs.push(spec);
        spans.services.push(service_spans);
    }
    check_dependencies(check, &specs, &deps);
    specs
}

/// Where one service's `after` and `requires` entries are, for the checks that need every
/// service (names that exist, no cycle).
#[derive(Default)]
struct DepRefs {
    after: Vec<(ServiceName, usize)>,
    requires: Vec<(ServiceName, usize)>,
    wants: Vec<(ServiceName, usize)>,
    /// The keys themselves (a cycle is reported at one of them).
    offsets: Vec<(&'static str, usize)>,
}

/// An `after` or `requires` value: an array of service names.
fn dependency_names(
    check: &mut Check<'_>,
    value: &Val<'_>,
    field: &str,
) -> Vec<(ServiceName, usize)> {
    let DeValue::Array(items) = value.get_ref() else {
        check.expected::<()>(
            value,
            field,
            "an array of service names, like [\"bus\", \"can\"]",
        );
        return Vec::new();
    };
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let DeValue::String(text) = item.get_ref() else {
            check.expected::<()>(item, &item_field, "a service name");
            continue;
        };
        match ServiceName::new(text) {
            Ok(name) if names.iter().any(|(n, _): &(ServiceName, usize)| *n == name) => {
                check.bad::<()>(item, &item_field, format!("{text:?} is listed twice"));
            }
            Ok(name) => names.push((name, item.span().start)),
            Err(message) => {
                check.bad::<()>(item, &item_field, message);
            }
        }
    }
    names
}

/// Every dependency names a service of the file, not itself, and `after` and `requires`
/// together have no cycle: it would wait for itself.
fn check_dependencies(check: &mut Check<'_>, specs: &[ServiceSpec], deps: &[DepRefs]) {
    let index_of = |name: &ServiceName| specs.iter().position(|s| s.name == *name);
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    for (i, (spec, refs)) in specs.iter().zip(deps).enumerate() {
        for (key, list) in [
            ("after", &refs.after),
            ("requires", &refs.requires),
            ("wants", &refs.wants),
        ] {
            for (k, (name, offset)) in list.iter().enumerate() {
                let field = format!("service.{}.{key}[{k}]", spec.name);
                match index_of(name) {
                    None => check.error(
                        *offset,
                        ConfigErrorKind::BadValue,
                        &field,
                        format!("no service is named {:?}", name.as_str()),
                    ),
                    Some(j) if j == i => check.error(
                        *offset,
                        ConfigErrorKind::BadValue,
                        &field,
                        "a service cannot depend on itself".into(),
                    ),
                    // `wants` orders nothing: a cycle through it waits for nothing.
                    Some(_) if key == "wants" => {}
                    Some(j) => edges[i].push(j),
                }
            }
        }
    }
    // Depth-first search; a node on the current path reached again closes a cycle.
    let mut mark = vec![0u8; specs.len()]; // 0 new, 1 on the path, 2 done
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[n] = 1;
        path.push(n);
        for &m in &edges[n] {
            if mark[m] == 1 {
                let start = path.iter().position(|&p| p == m).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if mark[m] == 0 {
                if let Some(cycle) = visit(m, edges, mark, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        mark[n] = 2;
        None
    }
    for n in 0..specs.len() {
        if mark[n] != 0 {
            continue;
        }
        if let Some(cycle) = visit(n, &edges, &mut mark, &mut path) {
            let first = cycle[0];
            let names: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&first))
                .map(|&c| specs[c].name.as_str())
                .collect();
            let (key, offset) = deps[first].offsets.first().copied().unwrap_or(("after", 0));
            check.error(
                offset,
                ConfigErrorKind::BadValue,
                &format!("service.{}.{key}", specs[first].name),
                format!(
                    "a dependency cycle: {}; none of them could ever start",
                    names.join(" -> ")
                ),
            );
            return;
        }
    }
}

/// One `[[service]]`: its spec, where its host-dependent values are, and where its name is.
/// `None` when it has errors (reported).
fn service(
    check: &mut Check<'_>,
    table: &Table<'_>,
    header: usize,
    index: usize,
) -> Option<(ServiceSpec, ServiceSpans, usize)> {
    let errors_before = check.errors.len();
    let unnamed = format!("service[{index}]");
    let name = match entry(table, "name") {
        None => {
            check.error(
                header,
                ConfigErrorKind::MissingKey,
                &join(&unnamed, "name"),
                "missing key `name`: every [[service]] needs a unique name".to_string(),
            );
            None
        }
        Some(value) => check
            .string(value, &join(&unnamed, "name"), "a service name string")
            .and_then(|text| match ServiceName::new(text) {
                Ok(name) => Some((name, value.span().start)),
                Err(message) => check.bad(value, &join(&unnamed, "name"), message),
            }),
    };
    let prefix = match &name {
        Some((name, _)) => format!("service.{name}"),
        None => unnamed,
    };
    let field = |key: &str| join(&prefix, key);
    check.known_keys(table, &prefix, SERVICE_KEYS, SERVICE_SHOWN);
    let partition = match entry(table, "partition") {
        None => {
            let offset = name.as_ref().map_or(header, |(_, offset)| *offset);
            check.error(
                offset,
                ConfigErrorKind::MissingKey,
                &field("partition"),
                "missing key `partition`: expected \"local\" or \"qm\"".to_string(),
            );
            None
        }
        Some(value) => check.one_of(
            value,
            &field("partition"),
            &[("local", Partition::Local), ("qm", Partition::Qm)],
        ),
    };
    let (argv, argv0) = match entry(table, "argv") {
        None => {
            check.error(
                header,
                ConfigErrorKind::MissingKey,
                &field("argv"),
                "missing key `argv`: expected the program's absolute path and its arguments, like [\"/usr/bin/prog\", \"--flag\"]".to_string(),
            );
            (None, header)
        }
        Some(value) => argv(check, value, &field("argv")),
    };
    let env = entry(table, "env").and_then(|value| env(check, value, &field("env")));
    let (working_directory, cwd_offset) = match entry(table, "working_directory") {
        None => (Some(CString::new("/").expect("no NUL")), None),
        Some(value) => (
            absolute_path(check, value, &field("working_directory")),
            Some(value.span().start),
        ),
    };
    let id = |check: &mut Check<'_>, key: &str| {
        entry(table, key).map(|value| {
            let max = i64::from(u32::MAX - 1);
            check
                .integer(value, &field(key), 0, max, &format!("0..={max}"))
                .map(|n| n as u32)
        })
    };
    let uid = id(check, "uid");
    let gid = id(check, "gid");
    let (uid, gid) = user_group(check, table, partition, &prefix, uid, gid);
    let exec = exec_env(check, table, partition, &prefix);
    let (cgroup_limits, limit_offsets) = cgroup_limits(check, table, &prefix);
    let enabled = entry(table, "enabled").map(|value| check.boolean(value, &field("enabled")));
    let mut outputs = [None, None];
    let mut output_offsets = [None, None];
    for (i, key) in ["stdout", "stderr"].into_iter().enumerate() {
        let Some(value) = entry(table, key) else {
            continue;
        };
        if partition == Some(Partition::Qm) {
            check.bad::<()>(
                value,
                &field(key),
                format!("`{key}` is for local services only: a QM service's output stays inside the QM partition (holden-agent's own stdout and stderr)"),
            );
            continue;
        }
        outputs[i] = output_target(check, value, &field(key));
        output_offsets[i] = Some(value.span().start);
    }
    let policy = policy(check, table, partition.unwrap_or(Partition::Local), &prefix);
    let notify_fd = entry(table, "notify_fd").and_then(|value| {
        let field = field("notify_fd");
        if partition == Some(Partition::Qm) {
            return check.bad(
                value,
                &field,
                "`notify_fd` is for local services only (a QM service says READY=1 over \
                 sd_notify)",
            );
        }
        if policy.readiness.kind != Kind::Notify {
            return check.bad(
                value,
                &field,
                "`notify_fd` needs `type = \"notify\"` (the service is ready once it writes a \
                 newline to that fd)",
            );
        }
        check
            .integer(value, &field, 3, 1023, "3..=1023 (0, 1 and 2 are stdio)")
            .map(|n| n as i32)
    });
    if check.errors.len() > errors_before {
        return None;
    }
    let (name, name_offset) = name?;
    let partition = partition?;
    let [stdout, stderr] = outputs.map(|o| o.unwrap_or(OutputTarget::default_for(partition)));
    let spec = ServiceSpec {
        name,
        argv: argv?,
        env: env.unwrap_or_default(),
        working_directory: working_directory?,
        uid: uid.flatten(),
        gid: gid.flatten(),
        enabled: enabled.flatten().unwrap_or(true),
        policy: ServicePolicy {
            partition,
            ..policy
        },
        stdout,
        stderr,
        exec: exec.unwrap_or_default(),
        cgroup_limits,
        notify_fd,
        after: Vec::new(),
        requires: Vec::new(),
        wants: Vec::new(),
    };
    let spans = ServiceSpans {
        argv0,
        working_directory: cwd_offset,
        outputs: output_offsets,
        cgroup_limits: limit_offsets,
    };
    Some((spec, spans, name_offset))
}

fn policy(
    check: &mut Check<'_>,
    table: &Table<'_>,
    partition: Partition,
    prefix: &str,
) -> ServicePolicy {
    let defaults = ServicePolicy::default_for(partition);
    let restart = check.one_of_or(
        table,
        "restart",
        prefix,
        defaults.restart,
        &[
            ("always", Restart::Always),
            ("on-failure", Restart::OnFailure),
            ("never", Restart::Never),
        ],
    );
    let backoff = match entry(table, "backoff") {
        None => Backoff::NONE,
        Some(value) => check
            .table(value, &join(prefix, "backoff"))
            .and_then(|t| backoff(check, t, value.span().start, &join(prefix, "backoff")))
            .unwrap_or(Backoff::NONE),
    };
    let start_limit = match entry(table, "start_limit") {
        None => defaults.start_limit,
        Some(value) => check
            .table(value, &join(prefix, "start_limit"))
            .and_then(|t| start_limit(check, t, value.span().start, &join(prefix, "start_limit")))
            .unwrap_or(defaults.start_limit),
    };
    let stop_signal = signal_or(check, table, "stop_signal", prefix, defaults.stop_signal);
    let kind = check.one_of_or(
        table,
        "type",
        prefix,
        Kind::Simple,
        &[
            ("simple", Kind::Simple),
            ("exec", Kind::Exec),
            ("notify", Kind::Notify),
            ("oneshot", Kind::Oneshot),
        ],
    );
    let watchdog = check.duration_or(table, "watchdog", prefix, Duration::ZERO);
    if let (Some(value), false) = (entry(table, "watchdog"), kind == Kind::Notify) {
        check.bad::<()>(
            value,
            &join(prefix, "watchdog"),
            "a watchdog needs `type = \"notify\"` (the service pings it with WATCHDOG=1)",
        );
    }
    if let (Kind::Oneshot, Restart::Always, Some(value)) = (kind, restart, entry(table, "restart"))
    {
        check.bad::<()>(
            value,
            &join(prefix, "restart"),
            "a oneshot service is done when it exits 0: `restart = \"always\"` would run it \
             forever; use \"on-failure\" or \"never\"",
        );
    }
    let readiness = Readiness {
        kind,
        start_timeout: check.duration_or(table, "start_timeout", prefix, START_TIMEOUT_DEFAULT),
        watchdog,
        watchdog_signal: signal_or(check, table, "watchdog_signal", prefix, libc::SIGABRT),
    };
    ServicePolicy {
        partition,
        restart,
        restart_delay: check.duration_or(table, "restart_delay", prefix, defaults.restart_delay),
        backoff,
        start_limit,
        stop_signal,
        stop_timeout: check.duration_or(table, "stop_timeout", prefix, defaults.stop_timeout),
        readiness,
    }
}

/// How long a `notify` or `oneshot` service may take to be ready (or done) by default.
const START_TIMEOUT_DEFAULT: Duration = Duration::from_secs(90);

/// A signal key (`stop_signal`, `watchdog_signal`): a name like "SIGTERM" or a number.
fn signal_or(
    check: &mut Check<'_>,
    table: &Table<'_>,
    key: &str,
    prefix: &str,
    default: i32,
) -> i32 {
    match entry(table, key) {
        None => default,
        Some(value) => {
            let field = join(prefix, key);
            let signal = match value.get_ref() {
                DeValue::String(name) => signal_from_name(name),
                DeValue::Integer(number) => {
                    let number = i64::from_str_radix(number.as_str(), number.radix()).unwrap_or(i64::MAX);
                    signal_from_number(number)
                }
                other => Err(format!(
                    "expected a signal name like \"SIGTERM\" or a number 1..={SIGNAL_NUMBER_MAX}, found {}",
                    found(other)
                )),
            };
            match signal {
                Ok(signal) => signal,
                Err(message) => {
                    check.bad::<()>(value, &field, message);
                    default
                }
            }
        }
    }
}

/// A required key of a sub-table (`backoff`, `start_limit`).
fn required<'t, 'i>(
    check: &mut Check<'_>,
    table: &'t Table<'i>,
    key: &str,
    at: usize,
    prefix: &str,
    expected: &str,
) -> Option<&'t Val<'i>> {
    let value = entry(table, key);
    if value.is_none() {
        check.error(
            at,
            ConfigErrorKind::MissingKey,
            &join(prefix, key),
            format!("missing key `{key}`: expected {expected}"),
        );
    }
    value
}

fn backoff(check: &mut Check<'_>, table: &Table<'_>, at: usize, field: &str) -> Option<Backoff> {
    check.known_keys(
        table,
        field,
        BACKOFF_KEYS,
        "`initial`, `factor`, `max`, `reset_after`",
    );
    let initial = required(check, table, "initial", at, field, DURATION_EXPECTED)
        .and_then(|v| check.duration(v, &join(field, "initial")));
    let max_value = required(check, table, "max", at, field, DURATION_EXPECTED);
    let max = max_value.and_then(|v| check.duration(v, &join(field, "max")));
    if let (Some(initial), Some(max), Some(value)) = (initial, max, max_value) {
        if max < initial {
            check.bad::<()>(
                value,
                &join(field, "max"),
                format!(
                    "{} is shorter than initial {}: expected max >= initial",
                    format_duration(max),
                    format_duration(initial)
                ),
            );
        }
    }
    let factor = match entry(table, "factor") {
        None => Some(BACKOFF_FACTOR_DEFAULT),
        Some(value) => {
            let factor_field = join(field, "factor");
            let expected = format!("a number 1.0..={BACKOFF_FACTOR_MAX:.1}");
            let number = match value.get_ref() {
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .map(|n| n as f64),
                _ => return check.expected(value, &factor_field, &expected),
            };
            let shown = match value.get_ref() {
                DeValue::Float(f) => f.to_string(),
                DeValue::Integer(i) => i.to_string(),
                other => found(other),
            };
            match number {
                Some(factor) if (1.0..=BACKOFF_FACTOR_MAX).contains(&factor) => Some(factor),
                _ => check.bad(
                    value,
                    &factor_field,
                    format!("{shown} out of range: expected {expected}"),
                ),
            }
        }
    };
    let reset_after = check.duration_or(table, "reset_after", field, BACKOFF_RESET_AFTER_DEFAULT);
    Some(Backoff {
        initial: initial?,
        factor_milli: (factor? * 1000.0).round() as u32,
        max: max?,
        reset_after,
    })
}

fn start_limit(
    check: &mut Check<'_>,
    table: &Table<'_>,
    at: usize,
    field: &str,
) -> Option<StartLimit> {
    check.known_keys(table, field, START_LIMIT_KEYS, "`burst`, `interval`");
    let max = i64::from(START_LIMIT_BURST_MAX);
    let burst = required(check, table, "burst", at, field, "an integer 0..=16").and_then(|v| {
        check.integer(
            v,
            &join(field, "burst"),
            0,
            max,
            &format!("0..={START_LIMIT_BURST_MAX} (0 = no limit)"),
        )
    });
    let interval_value = required(check, table, "interval", at, field, DURATION_EXPECTED);
    let interval = interval_value.and_then(|v| check.duration(v, &join(field, "interval")));
    if let (Some(burst), Some(interval), Some(value)) = (burst, interval, interval_value) {
        if burst > 0 && interval.is_zero() {
            check.bad::<()>(
                value,
                &join(field, "interval"),
                "must be greater than 0 when burst is not 0",
            );
        }
    }
    Some(StartLimit {
        burst: burst? as u32,
        interval: interval?,
    })
}

/// The argv and where its program is.
fn argv(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> (Option<Vec<CString>>, usize) {
    let at = value.span().start;
    let expected = "an array of strings: the program's absolute path and its arguments";
    let DeValue::Array(entries) = value.get_ref() else {
        return (check.expected(value, field, expected), at);
    };
    if entries.is_empty() {
        return (
            check.bad(
                value,
                field,
                "empty argv: expected at least the program's absolute path",
            ),
            at,
        );
    }
    if entries.len() > ARGV_COUNT_MAX {
        let message = format!(
            "{} entries: expected at most {ARGV_COUNT_MAX}",
            entries.len()
        );
        return (check.bad(value, field, message), at);
    }
    let argv0 = entries.iter().next().map_or(at, |e| e.span().start);
    let mut argv = Some(Vec::with_capacity(entries.len()));
    for (index, entry) in entries.iter().enumerate() {
        let entry_field = format!("{field}[{index}]");
        let arg = check.string(entry, &entry_field, "a string").and_then(|text| {
            if text.len() > ARG_LEN_MAX {
                let message = format!("{} bytes: expected at most {ARG_LEN_MAX}", text.len());
                return check.bad(entry, &entry_field, message);
            }
            if index == 0 && !text.starts_with('/') {
                let message = format!(
                    "program {text:?} is not an absolute path: expected a path starting with / (there is no PATH search)"
                );
                return check.bad(entry, &entry_field, message);
            }
            match CString::new(text.as_bytes()) {
                Ok(arg) => Some(arg),
                Err(_) => check.bad(entry, &entry_field, "contains a NUL character"),
            }
        });
        match (&mut argv, arg) {
            (Some(list), Some(arg)) => list.push(arg),
            _ => argv = None,
        }
    }
    (argv, argv0)
}

fn env(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<Vec<(CString, CString)>> {
    let table = match value.get_ref() {
        DeValue::Table(t) => t,
        _ => return check.expected(value, field, "a table of strings like { KEY = \"value\" }"),
    };
    if table.len() > ENV_COUNT_MAX {
        let message = format!(
            "{} variables: expected at most {ENV_COUNT_MAX}",
            table.len()
        );
        return check.bad(value, field, message);
    }
    let mut env = Some(Vec::with_capacity(table.len()));
    for (key, entry) in table.iter() {
        let key = key.get_ref().as_ref();
        let entry_field = format!("{field}.{key}");
        let pair = check
            .string(entry, &entry_field, "a string")
            .and_then(|text| {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    let message = format!(
                        "bad variable name {key:?}: expected a non-empty name without = or NUL"
                    );
                    return check.bad(entry, &entry_field, message);
                }
                if key.len() + 1 + text.len() > ENV_LEN_MAX {
                    let message =
                        format!("too long: expected KEY=value of at most {ENV_LEN_MAX} bytes");
                    return check.bad(entry, &entry_field, message);
                }
                match CString::new(text.as_bytes()) {
                    Ok(value) => Some((
                        CString::new(key.as_bytes()).expect("checked: no NUL"),
                        value,
                    )),
                    Err(_) => check.bad(entry, &entry_field, "contains a NUL character"),
                }
            });
        match (&mut env, pair) {
            (Some(list), Some(pair)) => list.push(pair),
            _ => env = None,
        }
    }
    env
}

/// The `[cgroup]` table.
fn cgroup(check: &mut Check<'_>, table: &Table<'_>) -> CgroupConfig {
    check.known_keys(table, "cgroup", CGROUP_KEYS, "`root`");
    let root = match entry(table, "root") {
        None => CgroupRoot::Auto,
        Some(value) => {
            let field = "cgroup.root";
            let expected = format!(
                "\"auto\", \"off\" or an absolute path of at most {PATH_LEN_MAX} bytes inside a cgroup2 mount"
            );
            match check.string(value, field, &expected) {
                None => CgroupRoot::Auto,
                Some("auto") => CgroupRoot::Auto,
                Some("off") => CgroupRoot::Off,
                Some(path)
                    if path.starts_with('/')
                        && path.len() <= PATH_LEN_MAX
                        && !path.contains('\0')
                        && !path.split('/').any(|c| c == "..") =>
                {
                    CgroupRoot::Path(PathBuf::from(path))
                }
                Some(path) => check
                    .bad(
                        value,
                        field,
                        format!("{path:?}: expected {expected}, without `..`"),
                    )
                    .unwrap_or(CgroupRoot::Auto),
            }
        }
    };
    CgroupConfig { root }
}

fn absolute_path(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<CString> {
    let expected = format!("an absolute path (starting with /) of at most {PATH_LEN_MAX} bytes");
    let path = check.string(value, field, &expected)?;
    if !path.starts_with('/') || path.len() > PATH_LEN_MAX {
        return check.bad(
            value,
            field,
            format!("{path:?} is not an absolute path: expected {expected}"),
        );
    }
    match CString::new(path.as_bytes()) {
        Ok(path) => Some(path),
        Err(_) => check.bad(value, field, "contains a NUL character"),
    }
}

/// What `user`/`group` name (a name, resolved from `/etc/passwd` and `/etc/group`, or a
/// number), merged with `uid`/`gid` (only one of each pair). A user by name brings its
/// primary group unless a group is given.
fn user_group(
    check: &mut Check<'_>,
    table: &Table<'_>,
    partition: Option<Partition>,
    prefix: &str,
    uid: Option<Option<u32>>,
    gid: Option<Option<u32>>,
) -> (Option<Option<u32>>, Option<Option<u32>>) {
    let id_max = i64::from(u32::MAX - 1);
    let mut primary = None;
    let mut user_of = |check: &mut Check<'_>, value: &Val<'_>, field: &str| -> Option<u32> {
        match value.get_ref() {
            DeValue::Integer(_) => check
                .integer(value, field, 0, id_max, &format!("0..={id_max}"))
                .map(|n| n as u32),
            DeValue::String(name) => match check.accounts.user(name) {
                Ok(Some(user)) => {
                    primary = Some(user.gid);
                    Some(user.uid)
                }
                Ok(None) => check.bad(
                    value,
                    field,
                    format!(
                        "no user named {name:?} in {}: expected a user of this machine, or a uid",
                        super::accounts::PASSWD_PATH
                    ),
                ),
                Err(e) => check.bad(
                    value,
                    field,
                    format!("user {name:?} cannot be looked up: {e}"),
                ),
            },
            _ => check.expected(value, field, "a user name or a uid"),
        }
    };
    let mut uid = uid;
    if let Some(value) = entry(table, "user") {
        let field = join(prefix, "user");
        if partition == Some(Partition::Qm) && matches!(value.get_ref(), DeValue::String(_)) {
            check.bad::<()>(value, &field, "a user name is for local services only: a QM service's users are QM's (give a uid)");
        } else if uid.is_some() {
            check.bad::<()>(value, &field, "both `uid` and `user`: give one of them");
        } else {
            uid = Some(user_of(check, value, &field));
        }
    }
    let mut gid = gid;
    if let Some(value) = entry(table, "group") {
        let field = join(prefix, "group");
        if partition == Some(Partition::Qm) && matches!(value.get_ref(), DeValue::String(_)) {
            check.bad::<()>(value, &field, "a group name is for local services only: a QM service's groups are QM's (give a gid)");
        } else if gid.is_some() {
            check.bad::<()>(value, &field, "both `gid` and `group`: give one of them");
        } else {
            gid = Some(group_of(check, value, &field));
        }
    }
    if gid.is_none() {
        gid = primary.map(Some);
    }
    (uid, gid)
}

/// A group by name (from `/etc/group`) or by number.
fn group_of(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<u32> {
    let id_max = i64::from(u32::MAX - 1);
    match value.get_ref() {
        DeValue::Integer(_) => check
            .integer(value, field, 0, id_max, &format!("0..={id_max}"))
            .map(|n| n as u32),
        DeValue::String(name) => match check.accounts.group(name) {
            Ok(Some(group)) => Some(group.gid),
            Ok(None) => check.bad(
                value,
                field,
                format!(
                    "no group named {name:?} in {}: expected a group of this machine, or a gid",
                    super::accounts::GROUP_PATH
                ),
            ),
            Err(e) => check.bad(
                value,
                field,
                format!("group {name:?} cannot be looked up: {e}"),
            ),
        },
        _ => check.expected(value, field, "a group name or a gid"),
    }
}

/// The execution environment keys of a service (`None` after an error).
fn exec_env(
    check: &mut Check<'_>,
    table: &Table<'_>,
    partition: Option<Partition>,
    prefix: &str,
) -> Option<crate::spawn::ExecEnv> {
    use crate::spawn::{CpuSet, ExecEnv, Groups, OomScoreAdj, SchedPolicy};
    let errors_before = check.errors.len();
    let mut exec = ExecEnv::default();
    if let Some(value) = entry(table, "supplementary_groups") {
        let field = join(prefix, "supplementary_groups");
        if let DeValue::Array(items) = value.get_ref() {
            let mut gids = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let item_field = format!("{field}[{i}]");
                if partition == Some(Partition::Qm) && matches!(item.get_ref(), DeValue::String(_))
                {
                    check.bad::<()>(item, &item_field, "a group name is for local services only: a QM service's groups are QM's (give a gid)");
                } else if let Some(gid) = group_of(check, item, &item_field) {
                    gids.push(gid);
                }
            }
            match Groups::new(&gids) {
                Some(groups) => exec.groups = Some(groups),
                None => {
                    check.bad::<()>(
                        value,
                        &field,
                        format!(
                            "{} groups: expected at most {}",
                            items.len(),
                            crate::spawn::GROUPS_MAX
                        ),
                    );
                }
            }
        } else {
            check.expected::<()>(
                value,
                &field,
                "an array of group names or gids, like [\"audio\", 44]",
            );
        }
    }
    if let Some(value) = entry(table, "limits") {
        let field = join(prefix, "limits");
        if let Some(limits) = check.table(value, &field) {
            let allowed: Vec<&str> = crate::spawn::RLIMIT_NAMES.to_vec();
            check.known_keys(limits, &field, &allowed, LIMIT_SHOWN);
            for (resource, name) in crate::spawn::RLIMIT_NAMES.iter().enumerate() {
                if let Some(value) = entry(limits, name) {
                    exec.rlimits[resource] = rlimit(check, value, &join(&field, name));
                }
            }
        }
    }
    if let Some(value) = entry(table, "umask") {
        let field = join(prefix, "umask");
        exec.umask = match value.get_ref() {
            DeValue::Integer(_) => check
                .integer(value, &field, 0, 0o777, "0o000..=0o777 (like 0o027)")
                .map(|n| n as u32),
            DeValue::String(text) => match u32::from_str_radix(text, 8) {
                Ok(n) if n <= 0o777 && !text.is_empty() => Some(n),
                _ => check.bad(value, &field, format!("bad umask {text:?}: expected octal digits 000..=777, like \"0027\" or 0o027")),
            },
            _ => check.expected(value, &field, "an octal umask like 0o027 or \"0027\""),
        };
    }
    if let Some(value) = entry(table, "oom_score_adj") {
        exec.oom_score_adj = check
            .integer(
                value,
                &join(prefix, "oom_score_adj"),
                -1000,
                1000,
                "-1000..=1000",
            )
            .and_then(|n| OomScoreAdj::new(n as i32));
    }
    if let Some(value) = entry(table, "nice") {
        exec.nice = check
            .integer(value, &join(prefix, "nice"), -20, 19, "-20..=19")
            .map(|n| n as i8);
    }
    let policy = entry(table, "sched_policy").and_then(|value| {
        check.one_of(
            value,
            &join(prefix, "sched_policy"),
            &[
                ("other", SchedPolicy::Other),
                ("fifo", SchedPolicy::Fifo),
                ("rr", SchedPolicy::Rr),
            ],
        )
    });
    let priority = entry(table, "sched_priority");
    match (policy, priority) {
        (None, Some(value)) if entry(table, "sched_policy").is_none() => {
            check.bad::<()>(
                value,
                &join(prefix, "sched_priority"),
                "`sched_priority` without `sched_policy`: give the policy (\"fifo\" or \"rr\")",
            );
        }
        (Some(SchedPolicy::Other), priority) => {
            let n = priority.and_then(|v| {
                check.integer(
                    v,
                    &join(prefix, "sched_priority"),
                    0,
                    0,
                    "0 (SCHED_OTHER has no priority; use `nice`)",
                )
            });
            if priority.is_none() || n.is_some() {
                exec.sched = Some((SchedPolicy::Other, 0));
            }
        }
        (Some(policy), Some(value)) => {
            exec.sched = check
                .integer(value, &join(prefix, "sched_priority"), 1, 99, "1..=99")
                .map(|n| (policy, n as u8));
        }
        (Some(policy), None) => {
            let at = entry(table, "sched_policy").map_or(0, |v| v.span().start);
            check.error(
                at,
                ConfigErrorKind::MissingKey,
                &join(prefix, "sched_priority"),
                format!(
                    "missing key `sched_priority`: sched_policy = \"{}\" needs a priority 1..=99",
                    policy.as_str()
                ),
            );
        }
        (None, _) => {}
    }
    if let Some(value) = entry(table, "cpu_affinity") {
        let field = join(prefix, "cpu_affinity");
        let expected = format!(
            "an array of CPU numbers 0..={} or ranges like \"2-3\"",
            crate::spawn::CPU_MAX
        );
        if let DeValue::Array(items) = value.get_ref() {
            let mut cpus = CpuSet::default();
            for (i, item) in items.iter().enumerate() {
                let item_field = format!("{field}[{i}]");
                let range = match item.get_ref() {
                    DeValue::Integer(_) => check
                        .integer(
                            item,
                            &item_field,
                            0,
                            crate::spawn::CPU_MAX as i64,
                            &format!("0..={}", crate::spawn::CPU_MAX),
                        )
                        .map(|n| (n as usize, n as usize)),
                    DeValue::String(text) => {
                        let parsed = text.split_once('-').and_then(|(a, b)| {
                            Some((
                                a.trim().parse::<usize>().ok()?,
                                b.trim().parse::<usize>().ok()?,
                            ))
                        });
                        match parsed {
                            Some((a, b)) if a <= b && b <= crate::spawn::CPU_MAX => Some((a, b)),
                            _ => check.bad(
                                item,
                                &item_field,
                                format!("bad CPU range {text:?}: expected {expected}"),
                            ),
                        }
                    }
                    _ => check.expected(item, &item_field, &expected),
                };
                if let Some((a, b)) = range {
                    for cpu in a..=b {
                        cpus.add(cpu);
                    }
                }
            }
            if items.is_empty() {
                check.bad::<()>(value, &field, format!("an empty set: expected {expected}"));
            } else {
                exec.cpu_affinity = Some(cpus);
            }
        } else {
            check.expected::<()>(value, &field, &expected);
        }
    }
    if let Some(value) = entry(table, "no_new_privs") {
        exec.no_new_privs = check
            .boolean(value, &join(prefix, "no_new_privs"))
            .unwrap_or(false);
    }
    let mut sets = [None, None];
    for (i, key) in ["capability_bounding_set", "ambient_capabilities"]
        .into_iter()
        .enumerate()
    {
        if let Some(value) = entry(table, key) {
            sets[i] = capabilities(check, value, &join(prefix, key)).map(|m| (m, value));
        }
    }
    if let [Some((bounding, _)), Some((ambient, value))] = sets {
        if ambient & !bounding != 0 {
            let outside: Vec<&str> = (0..64)
                .filter(|&c| (ambient & !bounding) & (1u64 << c) != 0)
                .filter_map(|c| crate::spawn::CAPABILITY_NAMES.get(c).copied())
                .collect();
            check.bad::<()>(
                value,
                &join(prefix, "ambient_capabilities"),
                format!(
                    "not in capability_bounding_set: {}; an ambient capability must stay in the bounding set",
                    outside.join(", ")
                ),
            );
        }
    }
    exec.cap_bounding = sets[0].map(|(m, _)| m);
    exec.cap_ambient = sets[1].map(|(m, _)| m);
    (check.errors.len() == errors_before).then_some(exec)
}

/// An array of capability names (`"CAP_NET_BIND_SERVICE"` or `"net_bind_service"`), as a mask.
fn capabilities(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<u64> {
    let expected = "an array of capability names like [\"CAP_NET_BIND_SERVICE\"]";
    let DeValue::Array(items) = value.get_ref() else {
        return check.expected(value, field, expected);
    };
    let mut mask = 0u64;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let Some(name) = check.string(item, &item_field, "a capability name") else {
            ok = false;
            continue;
        };
        match crate::spawn::capability_number(name) {
            Some(cap) => mask |= 1u64 << cap,
            None => {
                ok = false;
                check.bad::<()>(
                    item,
                    &item_field,
                    format!("unknown capability {name:?}: expected a name of capabilities(7), like \"CAP_NET_BIND_SERVICE\""),
                );
            }
        }
    }
    ok.then_some(mask)
}

/// One `limits` entry: a number (soft and hard), `"infinity"`, or `{ soft = …, hard = … }`.
fn rlimit(check: &mut Check<'_>, value: &Val<'_>, field: &str) -> Option<crate::spawn::Rlimit> {
    let expected = "a number, \"infinity\", or { soft = N, hard = N }";
    let one = |check: &mut Check<'_>, value: &Val<'_>, field: &str| -> Option<u64> {
        match value.get_ref() {
            DeValue::Integer(_) => check
                .integer(value, field, 0, i64::MAX, "0 or more, or \"infinity\"")
                .map(|n| n as u64),
            DeValue::String(text) if *text == "infinity" || *text == "unlimited" => {
                Some(crate::spawn::RLIM_INFINITY)
            }
            _ => check.expected(value, field, "a number or \"infinity\""),
        }
    };
    match value.get_ref() {
        DeValue::Table(table) => {
            check.known_keys(table, field, &["soft", "hard"], "`soft`, `hard`");
            let at = value.span().start;
            let soft = required(check, table, "soft", at, field, "a number or \"infinity\"")
                .and_then(|v| one(check, v, &join(field, "soft")));
            let hard_value = required(check, table, "hard", at, field, "a number or \"infinity\"");
            let hard = hard_value.and_then(|v| one(check, v, &join(field, "hard")));
            let (soft, hard, hard_value) = (soft?, hard?, hard_value?);
            if soft > hard {
                return check.bad(
                    hard_value,
                    &join(field, "hard"),
                    format!("hard {hard} is below soft {soft}: expected soft <= hard"),
                );
            }
            Some(crate::spawn::Rlimit { soft, hard })
        }
        DeValue::Integer(_) | DeValue::String(_) => {
            one(check, value, field).map(|n| crate::spawn::Rlimit { soft: n, hard: n })
        }
        _ => check.expected(value, field, expected),
    }
}

/// The cgroup limit keys of a service (`memory_max`, …), as the text of their cgroup files.
fn cgroup_limits(
    check: &mut Check<'_>,
    table: &Table<'_>,
    prefix: &str,
) -> (super::CgroupLimits, Vec<usize>) {
    let mut limits = super::CgroupLimits::default();
    let mut offsets = Vec::new();
    for (key, controller, file) in super::CGROUP_LIMIT_KEYS {
        let Some(value) = entry(table, key) else {
            continue;
        };
        let field = join(prefix, key);
        let text: Option<String> = match key {
            "memory_max" | "memory_high" => match value.get_ref() {
                DeValue::Integer(_) => check
                    .integer(value, &field, 0, i64::MAX, "0 or more bytes")
                    .map(|n| n.to_string()),
                DeValue::String(text) => match super::parse_bytes(text) {
                    Ok(text) => Some(text),
                    Err(message) => check.bad(value, &field, message),
                },
                _ => check.expected(value, &field, "a size like \"32M\" or \"max\""),
            },
            "cpu_weight" => check
                .integer(
                    value,
                    &field,
                    1,
                    10_000,
                    "1..=10000 (100 is the default weight)",
                )
                .map(|n| n.to_string()),
            "io_weight" => check
                .integer(
                    value,
                    &field,
                    1,
                    10_000,
                    "1..=10000 (100 is the default weight)",
                )
                .map(|n| format!("default {n}")),
            "cpu_max" => match check.string(value, &field, "a string like \"50%\" or \"max\"") {
                Some(text) => match super::parse_cpu_max(text) {
                    Ok(text) => Some(text),
                    Err(message) => check.bad(value, &field, message),
                },
                None => None,
            },
            _ => match value.get_ref() {
                // pids_max
                DeValue::String(text) if *text == "max" => Some("max".to_string()),
                _ => check
                    .integer(
                        value,
                        &field,
                        1,
                        i64::from(i32::MAX),
                        "1..=2147483647 or \"max\"",
                    )
                    .map(|n| n.to_string()),
            },
        };
        let Some(text) = text else {
            continue;
        };
        if let Ok(text) = arrayvec::ArrayString::from(&text) {
            offsets.push(value.span().start);
            limits.limits.push(super::CgroupLimit {
                key,
                controller,
                file,
                value: text,
            });
        }
    }
    (limits, offsets)
}
