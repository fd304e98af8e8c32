//! From the raw serde structs to a valid [`Config`]: every check, every default.

use super::duration::{format_duration, parse_duration};
use super::error::{from_toml, ConfigError, ConfigErrorKind};
use super::raw::{RawBackoff, RawConfig, RawService, RawStartLimit};
use super::service::{
    ServiceName, ServiceSpec, ARGV_COUNT_MAX, ARG_LEN_MAX, ENV_COUNT_MAX, ENV_LEN_MAX,
};
use super::signal::{signal_from_name, signal_from_number, SIGNAL_NUMBER_MAX};
use super::{
    AgentConfig, AgentProtocol, Config, ControlConfig, LogLevel, ShutdownConfig,
    AGENT_SOCKET_DEFAULT, CONTROL_SOCKET_DEFAULT, PATH_LEN_MAX, SLOTS_DEFAULT, SLOTS_MAX,
    SOCKET_PATH_LEN_MAX,
};
use crate::supervise::{
    Backoff, Partition, Restart, ServicePolicy, StartLimit, START_LIMIT_BURST_MAX,
};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::time::Duration;
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

/// Position and naming context of one file.
struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn bad<T>(&self, spanned: &Spanned<T>, field: &str, message: impl Into<String>) -> ConfigError {
        self.error_at(
            spanned.span().start,
            ConfigErrorKind::BadValue,
            field,
            message,
        )
    }

    fn error_at(
        &self,
        offset: usize,
        kind: ConfigErrorKind,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.path, self.text, offset, kind, field, message)
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(spanned) => self.duration_of(spanned, field),
        }
    }

    fn duration_of(&self, spanned: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        parse_duration(spanned.get_ref()).map_err(|message| self.bad(spanned, field, message))
    }

    fn socket_path(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        let Some(spanned) = value else {
            return Ok(PathBuf::from(default));
        };
        let path = spanned.get_ref();
        if !path.starts_with('/') || path.len() > SOCKET_PATH_LEN_MAX || path.contains('\0') {
            return Err(self.bad(
                spanned,
                field,
                format!("bad socket path {path:?}: expected an absolute path of at most {SOCKET_PATH_LEN_MAX} bytes"),
            ));
        }
        Ok(PathBuf::from(path))
    }

    fn one_of<T: Copy>(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(spanned) = value else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(name, _)| *name == spanned.get_ref())
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<String> = choices
                    .iter()
                    .map(|(name, _)| format!("\"{name}\""))
                    .collect();
                self.bad(
                    spanned,
                    field,
                    format!(
                        "unknown value {:?}: expected one of {}",
                        spanned.get_ref(),
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Parses and validates a whole file.
pub(crate) fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|error| from_toml(path, text, &error))?;
    let ctx = Ctx { path, text };
    let slots = match &raw.slots {
        None => SLOTS_DEFAULT,
        Some(spanned) => u32::try_from(*spanned.get_ref())
            .ok()
            .filter(|slots| (1..=SLOTS_MAX).contains(slots))
            .ok_or_else(|| {
                ctx.bad(
                    spanned,
                    "slots",
                    format!(
                        "{} out of range: expected 1..={SLOTS_MAX}",
                        spanned.get_ref()
                    ),
                )
            })?,
    };
    let log_level = ctx.one_of(
        &raw.log_level,
        "log_level",
        LogLevel::Info,
        &[
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
        ],
    )?;
    let agent = agent(&ctx, &raw)?;
    let shutdown = ShutdownConfig {
        stop_services: raw.shutdown.stop_services.unwrap_or(true),
        timeout: ctx.duration(
            &raw.shutdown.timeout,
            "shutdown.timeout",
            SHUTDOWN_TIMEOUT_DEFAULT,
        )?,
    };
    let control = ControlConfig {
        socket: ctx.socket_path(
            &raw.control.socket,
            "control.socket",
            CONTROL_SOCKET_DEFAULT,
        )?,
        group: raw
            .control
            .group
            .as_ref()
            .map(|group| group_name(&ctx, group, "control.group"))
            .transpose()?,
        read_group: raw
            .control
            .read_group
            .as_ref()
            .map(|group| group_name(&ctx, group, "control.read_group"))
            .transpose()?,
    };
    let services = services(&ctx, &raw.service, slots)?;
    Ok(Config {
        slots,
        log_level,
        agent,
        shutdown,
        control,
        services,
    })
}

fn agent(ctx: &Ctx, raw: &RawConfig) -> Result<AgentConfig, ConfigError> {
    let agent = &raw.agent;
    let protocol = ctx.one_of(
        &agent.protocol,
        "agent.protocol",
        AgentProtocol::V1,
        &[
            ("v1", AgentProtocol::V1),
            ("v0.2", AgentProtocol::V0_2),
            ("auto", AgentProtocol::Auto),
        ],
    )?;
    let request_timeout = ctx.duration(
        &agent.request_timeout,
        "agent.request_timeout",
        AGENT_REQUEST_TIMEOUT_DEFAULT,
    )?;
    if request_timeout.is_zero() {
        let spanned = agent.request_timeout.as_ref().expect("default is not zero");
        return Err(ctx.bad(spanned, "agent.request_timeout", "must be greater than 0"));
    }
    let reconnect_initial = ctx.duration(
        &agent.reconnect_initial,
        "agent.reconnect_initial",
        AGENT_RECONNECT_INITIAL_DEFAULT,
    )?;
    if reconnect_initial.is_zero() {
        let spanned = agent
            .reconnect_initial
            .as_ref()
            .expect("default is not zero");
        return Err(ctx.bad(
            spanned,
            "agent.reconnect_initial",
            "must be greater than 0 (a reconnect loop needs a delay)",
        ));
    }
    let reconnect_max = ctx.duration(
        &agent.reconnect_max,
        "agent.reconnect_max",
        AGENT_RECONNECT_MAX_DEFAULT,
    )?;
    if reconnect_max < reconnect_initial {
        let offset = agent
            .reconnect_max
            .as_ref()
            .or(agent.reconnect_initial.as_ref())
            .map_or(0, |spanned| spanned.span().start);
        return Err(ctx.error_at(
            offset,
            ConfigErrorKind::BadValue,
            "agent.reconnect_max",
            format!(
                "{} is shorter than agent.reconnect_initial {}: expected reconnect_max >= reconnect_initial",
                format_duration(reconnect_max),
                format_duration(reconnect_initial)
            ),
        ));
    }
    Ok(AgentConfig {
        socket: ctx.socket_path(&agent.socket, "agent.socket", AGENT_SOCKET_DEFAULT)?,
        protocol,
        request_timeout,
        reconnect_initial,
        reconnect_max,
    })
}

fn group_name(ctx: &Ctx, group: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
    let name = group.get_ref();
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
        return Err(ctx.bad(
            group,
            field,
            format!("bad group name {name:?}: expected 1 to {GROUP_NAME_LEN_MAX} characters of a-z A-Z 0-9 _ -, starting with a letter or _"),
        ));
    }
    Ok(name.clone())
}

fn services(
    ctx: &Ctx,
    raw: &[Spanned<RawService>],
    slots: u32,
) -> Result<Vec<ServiceSpec>, ConfigError> {
    let mut specs: Vec<ServiceSpec> = Vec::with_capacity(raw.len());
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for (index, spanned) in raw.iter().enumerate() {
        let service = spanned.get_ref();
        let spec = service_spec(ctx, service, index)?;
        let (line, _) = super::error::line_column(ctx.text, service.name.span().start);
        if let Some(first) = first_line.get(spec.name.as_str()) {
            return Err(ctx.error_at(
                service.name.span().start,
                ConfigErrorKind::DuplicateName,
                &format!("service[{index}].name"),
                format!("duplicate service name {:?}: first defined on line {first}; expected unique names", spec.name.as_str()),
            ));
        }
        if index as u64 >= u64::from(slots) {
            return Err(ctx.error_at(
                spanned.span().start,
                ConfigErrorKind::TooManyServices,
                &format!("service.{}", spec.name),
                format!("more services than slots ({slots}): expected at most {slots} services, or raise `slots`"),
            ));
        }
        first_line.insert(spec.name.as_str().to_string(), line);
        specs.push(spec);
    }
    Ok(specs)
}

fn service_spec(ctx: &Ctx, raw: &RawService, index: usize) -> Result<ServiceSpec, ConfigError> {
    let name = ServiceName::new(raw.name.get_ref())
        .map_err(|message| ctx.bad(&raw.name, &format!("service[{index}].name"), message))?;
    let field = |key: &str| format!("service.{name}.{key}");
    let partition = match &raw.partition {
        None => {
            return Err(ctx.error_at(
                raw.name.span().start,
                ConfigErrorKind::MissingKey,
                &field("partition"),
                "missing key `partition`: expected \"local\" or \"qm\"",
            ))
        }
        some => ctx.one_of(
            some,
            &field("partition"),
            Partition::Local,
            &[("local", Partition::Local), ("qm", Partition::Qm)],
        )?,
    };
    let argv = argv(ctx, &raw.argv, &field("argv"))?;
    let env = env(ctx, &raw.env, &field("env"))?;
    let working_directory = match &raw.working_directory {
        None => CString::new("/").expect("no NUL"),
        Some(spanned) => absolute_path(ctx, spanned, &field("working_directory"))?,
    };
    let uid = raw
        .uid
        .as_ref()
        .map(|spanned| id(ctx, spanned, &field("uid")))
        .transpose()?;
    let gid = raw
        .gid
        .as_ref()
        .map(|spanned| id(ctx, spanned, &field("gid")))
        .transpose()?;
    let policy = policy(ctx, raw, partition, &field)?;
    Ok(ServiceSpec {
        name,
        argv,
        env,
        working_directory,
        uid,
        gid,
        enabled: raw.enabled.unwrap_or(true),
        policy,
    })
}

fn policy(
    ctx: &Ctx,
    raw: &RawService,
    partition: Partition,
    field: &dyn Fn(&str) -> String,
) -> Result<ServicePolicy, ConfigError> {
    let defaults = ServicePolicy::default_for(partition);
    let restart = ctx.one_of(
        &raw.restart,
        &field("restart"),
        defaults.restart,
        &[
            ("always", Restart::Always),
            ("on-failure", Restart::OnFailure),
            ("never", Restart::Never),
        ],
    )?;
    let backoff = match &raw.backoff {
        None => Backoff::NONE,
        Some(spanned) => backoff(ctx, spanned.get_ref(), &field("backoff"))?,
    };
    let start_limit = match &raw.start_limit {
        None => defaults.start_limit,
        Some(spanned) => start_limit(ctx, spanned.get_ref(), &field("start_limit"))?,
    };
    let stop_signal = match &raw.stop_signal {
        None => defaults.stop_signal,
        Some(spanned) => match spanned.get_ref() {
            toml::Value::String(name) => signal_from_name(name),
            toml::Value::Integer(number) => signal_from_number(*number),
            other => Err(format!(
                "invalid type: {}, expected a signal name like \"SIGTERM\" or a number 1..={SIGNAL_NUMBER_MAX}",
                other.type_str()
            )),
        }
        .map_err(|message| ctx.bad(spanned, &field("stop_signal"), message))?,
    };
    Ok(ServicePolicy {
        partition,
        restart,
        restart_delay: ctx.duration(
            &raw.restart_delay,
            &field("restart_delay"),
            defaults.restart_delay,
        )?,
        backoff,
        start_limit,
        stop_signal,
        stop_timeout: ctx.duration(
            &raw.stop_timeout,
            &field("stop_timeout"),
            defaults.stop_timeout,
        )?,
    })
}

fn backoff(ctx: &Ctx, raw: &RawBackoff, field: &str) -> Result<Backoff, ConfigError> {
    let initial = ctx.duration_of(&raw.initial, &format!("{field}.initial"))?;
    let max = ctx.duration_of(&raw.max, &format!("{field}.max"))?;
    if max < initial {
        return Err(ctx.bad(
            &raw.max,
            &format!("{field}.max"),
            format!(
                "{} is shorter than initial {}: expected max >= initial",
                format_duration(max),
                format_duration(initial)
            ),
        ));
    }
    let factor = match &raw.factor {
        None => BACKOFF_FACTOR_DEFAULT,
        Some(spanned) => {
            let factor = *spanned.get_ref();
            if !(1.0..=BACKOFF_FACTOR_MAX).contains(&factor) {
                return Err(ctx.bad(
                    spanned,
                    &format!("{field}.factor"),
                    format!(
                        "{factor} out of range: expected a number 1.0..={BACKOFF_FACTOR_MAX:.1}"
                    ),
                ));
            }
            factor
        }
    };
    let reset_after = ctx.duration(
        &raw.reset_after,
        &format!("{field}.reset_after"),
        BACKOFF_RESET_AFTER_DEFAULT,
    )?;
    Ok(Backoff {
        initial,
        factor_milli: (factor * 1000.0).round() as u32,
        max,
        reset_after,
    })
}

fn start_limit(ctx: &Ctx, raw: &RawStartLimit, field: &str) -> Result<StartLimit, ConfigError> {
    let burst = u32::try_from(*raw.burst.get_ref())
        .ok()
        .filter(|burst| *burst <= START_LIMIT_BURST_MAX)
        .ok_or_else(|| {
            ctx.bad(
                &raw.burst,
                &format!("{field}.burst"),
                format!(
                    "{} out of range: expected 0..={START_LIMIT_BURST_MAX} (0 = no limit)",
                    raw.burst.get_ref()
                ),
            )
        })?;
    let interval = ctx.duration_of(&raw.interval, &format!("{field}.interval"))?;
    if burst > 0 && interval.is_zero() {
        return Err(ctx.bad(
            &raw.interval,
            &format!("{field}.interval"),
            "must be greater than 0 when burst is not 0",
        ));
    }
    Ok(StartLimit { burst, interval })
}

fn argv(
    ctx: &Ctx,
    raw: &Spanned<Vec<Spanned<String>>>,
    field: &str,
) -> Result<Vec<CString>, ConfigError> {
    let entries = raw.get_ref();
    if entries.is_empty() {
        return Err(ctx.bad(
            raw,
            field,
            "empty argv: expected at least the program's absolute path",
        ));
    }
    if entries.len() > ARGV_COUNT_MAX {
        return Err(ctx.bad(
            raw,
            field,
            format!(
                "{} entries: expected at most {ARGV_COUNT_MAX}",
                entries.len()
            ),
        ));
    }
    let mut argv = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let text = entry.get_ref();
        let entry_field = format!("{field}[{index}]");
        if text.len() > ARG_LEN_MAX {
            return Err(ctx.bad(
                entry,
                &entry_field,
                format!("{} bytes: expected at most {ARG_LEN_MAX}", text.len()),
            ));
        }
        if index == 0 && !text.starts_with('/') {
            return Err(ctx.bad(
                entry,
                &entry_field,
                format!(
                    "program {text:?} is not an absolute path: expected a path starting with /"
                ),
            ));
        }
        let arg = CString::new(text.as_bytes())
            .map_err(|_| ctx.bad(entry, &entry_field, "contains a NUL character"))?;
        argv.push(arg);
    }
    Ok(argv)
}

fn env(
    ctx: &Ctx,
    raw: &Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    field: &str,
) -> Result<Vec<(CString, CString)>, ConfigError> {
    let Some(table) = raw else {
        return Ok(Vec::new());
    };
    if table.get_ref().len() > ENV_COUNT_MAX {
        return Err(ctx.bad(
            table,
            field,
            format!(
                "{} variables: expected at most {ENV_COUNT_MAX}",
                table.get_ref().len()
            ),
        ));
    }
    let mut env = Vec::with_capacity(table.get_ref().len());
    for (key, value) in table.get_ref() {
        let entry_field = format!("{field}.{key}");
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ctx.bad(
                value,
                &entry_field,
                format!("bad variable name {key:?}: expected a non-empty name without = or NUL"),
            ));
        }
        if key.len() + 1 + value.get_ref().len() > ENV_LEN_MAX {
            return Err(ctx.bad(
                value,
                &entry_field,
                format!("too long: expected KEY=value of at most {ENV_LEN_MAX} bytes"),
            ));
        }
        let value_c = CString::new(value.get_ref().as_bytes())
            .map_err(|_| ctx.bad(value, &entry_field, "contains a NUL character"))?;
        env.push((
            CString::new(key.as_bytes()).expect("checked: no NUL"),
            value_c,
        ));
    }
    Ok(env)
}

fn absolute_path(
    ctx: &Ctx,
    spanned: &Spanned<String>,
    field: &str,
) -> Result<CString, ConfigError> {
    let path = spanned.get_ref();
    if !path.starts_with('/') || path.len() > PATH_LEN_MAX {
        return Err(ctx.bad(spanned, field, format!("{path:?} is not an absolute path: expected a path starting with / of at most {PATH_LEN_MAX} bytes")));
    }
    CString::new(path.as_bytes()).map_err(|_| ctx.bad(spanned, field, "contains a NUL character"))
}

fn id(ctx: &Ctx, spanned: &Spanned<i64>, field: &str) -> Result<u32, ConfigError> {
    u32::try_from(*spanned.get_ref())
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| {
            ctx.bad(
                spanned,
                field,
                format!(
                    "{} out of range: expected 0..={}",
                    spanned.get_ref(),
                    u32::MAX - 1
                ),
            )
        })
}
