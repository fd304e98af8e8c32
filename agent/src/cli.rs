//! Command line: options, defaults, `--help` and `--version`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::limits::{
    ALLOW_UIDS_MAX, EXEC_TIMEOUT_MS_DEFAULT, READ_TIMEOUT_MS_DEFAULT, READ_TIMEOUT_MS_MAX,
    READ_TIMEOUT_MS_MIN, SOCKET_PATH_BYTES_MAX,
};

/// Socket path when neither `--socket` nor `HOLDEN_SOCKET_PATH` is given.
pub const DEFAULT_SOCKET_PATH: &str = "/run/holden/qm_orchestrator.sock";

/// Environment variable naming the socket path (as in holden v0.2).
pub const SOCKET_PATH_ENV: &str = "HOLDEN_SOCKET_PATH";

pub const USAGE: &str = "\
Usage: holden-agent [OPTIONS]

holden's stateless QM-partition spawner. Listens on an AF_UNIX SOCK_SEQPACKET
socket speaking holden wire v1, starts the processes it is asked to start, and
passes each one's pidfd back. It keeps no state about the processes.

Options:
  --socket PATH           v1 socket path (default: /run/holden/qm_orchestrator.sock;
                          with --legacy-socket, $HOLDEN_SOCKET_PATH if set).
                          Ignored for a socket passed by systemd (LISTEN_FDS).
  --legacy-socket PATH    also serve holden v0.2 (SOCK_STREAM) on PATH
  --allow-uid UID         also accept clients with this uid (repeatable; root
                          and the agent's own uid are always accepted)
  --read-timeout-ms MS    drop a connection that sends no complete first v1
                          frame, or stalls a v0.2 frame, within MS (default
                          10000)
  --exec-timeout-ms MS    give up on a gated child that has not finished its
                          execve MS after its go-ahead: kill it and answer
                          Error stage exec, ETIMEDOUT (default 3000)
  --notify-socket PATH    the sd_notify socket named to type = \"notify\"
                          services (NOTIFY_SOCKET), whose datagrams are
                          forwarded to the orchestrator (default:
                          qm_notify.sock beside the v1 socket; \"none\": no
                          socket, notify services are refused)
  --no-cgroups            start processes in the agent's own cgroup even when it
                          has a delegated one (StartFlags::CGROUP is refused)
  -h, --help              print this help and exit
  -V, --version           print the version and exit

Started the v0.2 way, with $HOLDEN_SOCKET_PATH and neither --socket nor
--legacy-socket, the agent is a drop-in for the v0.2 agent: it serves holden
v0.2 (SOCK_STREAM) on $HOLDEN_SOCKET_PATH, and no v1 socket.

A value follows its option or is joined to it (--socket=PATH). An option
given twice is refused, except --allow-uid (repeatable) and the two
timeouts (the last one counts).

Signals: SIGTERM or SIGINT stop the agent cleanly (exit 0); the processes it
started keep running. Exit status: 0 clean stop, 1 start-up failure, 2 usage.
See docs/agent.md.
";

/// What the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

/// Options of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The v1 socket; `None` when started the v0.2 way (`HOLDEN_SOCKET_PATH` only).
    pub socket: Option<PathBuf>,
    pub legacy_socket: Option<PathBuf>,
    pub allow_uids: Vec<u32>,
    pub read_timeout_ms: u64,
    pub exec_timeout_ms: u64,
    pub notify_socket: NotifyChoice,
    /// Give started processes a cgroup of their own when the agent has a delegated one.
    pub cgroups: bool,
}

/// `--notify-socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyChoice {
    /// Not given: `qm_notify.sock` beside the v1 socket; a failure to bind it is a warning.
    Default,
    /// Given: a failure to bind it stops the start.
    Path(PathBuf),
    /// `none`.
    Off,
}

impl Options {
    /// Where the notify socket goes, and whether it was asked for by name. None without a
    /// v1 socket (started the v0.2 way) or with `--notify-socket none`.
    pub fn notify_path(&self) -> Option<(PathBuf, bool)> {
        match &self.notify_socket {
            NotifyChoice::Off => None,
            NotifyChoice::Path(path) => Some((path.clone(), true)),
            NotifyChoice::Default => {
                let v1 = self.socket.as_deref()?;
                let dir = v1.parent().unwrap_or(std::path::Path::new("/"));
                Some((dir.join(crate::notify::DEFAULT_NAME), false))
            }
        }
    }
}

/// A command-line mistake: printed with a hint, exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see holden-agent --help)", self.0)
    }
}

/// Parses the arguments after the program name. `env_socket` is the value of
/// `HOLDEN_SOCKET_PATH`, if set. A value follows its option or is joined to it
/// (`--socket PATH`, `--socket=PATH`); `--help` and `--version` win over what
/// follows them; `--` ends the options (and, as the agent takes no positional
/// argument, anything after it is a stray argument).
pub fn parse<I>(args: I, env_socket: Option<OsString>) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    use lexopt::Arg::{Long, Short, Value};
    let mut parser = lexopt::Parser::from_args(args);
    let mut socket: Option<PathBuf> = None;
    let mut legacy_socket: Option<PathBuf> = None;
    let mut allow_uids: Vec<u32> = Vec::new();
    let mut read_timeout_ms = READ_TIMEOUT_MS_DEFAULT;
    let mut exec_timeout_ms = EXEC_TIMEOUT_MS_DEFAULT;
    let mut notify_socket: Option<NotifyChoice> = None;
    let mut cgroups = true;
    while let Some(arg) = parser.next().map_err(|e| lexopt_usage(&e))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("socket") => {
                let path = socket_path("--socket", value(&mut parser, "--socket")?)?;
                set_once(&mut socket, "--socket", path)?;
            }
            Long("legacy-socket") => {
                let name = "--legacy-socket";
                let path = socket_path(name, value(&mut parser, name)?)?;
                set_once(&mut legacy_socket, name, path)?;
            }
            Long("allow-uid") => {
                let name = "--allow-uid";
                let uid =
                    parse_number(name, &value(&mut parser, name)?, 0, u64::from(u32::MAX - 1))?
                        as u32;
                if allow_uids.len() >= ALLOW_UIDS_MAX {
                    return Err(UsageError(format!(
                        "--allow-uid given more than {ALLOW_UIDS_MAX} times"
                    )));
                }
                if !allow_uids.contains(&uid) {
                    allow_uids.push(uid);
                }
            }
            Long("read-timeout-ms") => {
                let name = "--read-timeout-ms";
                read_timeout_ms = parse_number(
                    name,
                    &value(&mut parser, name)?,
                    READ_TIMEOUT_MS_MIN,
                    READ_TIMEOUT_MS_MAX,
                )?;
            }
            Long("exec-timeout-ms") => {
                let name = "--exec-timeout-ms";
                exec_timeout_ms = parse_number(
                    name,
                    &value(&mut parser, name)?,
                    READ_TIMEOUT_MS_MIN,
                    READ_TIMEOUT_MS_MAX,
                )?;
            }
            Long("no-cgroups") => cgroups = false,
            Long("notify-socket") => {
                let name = "--notify-socket";
                let value = value(&mut parser, name)?;
                let choice = if value == "none" {
                    NotifyChoice::Off
                } else {
                    NotifyChoice::Path(socket_path(name, value)?)
                };
                set_once(&mut notify_socket, name, choice)?;
            }
            Short(c) => return Err(UsageError(format!("unknown option \"-{c}\""))),
            Long(name) => return Err(UsageError(format!("unknown option \"--{name}\""))),
            Value(stray) => return Err(UsageError(format!("unexpected argument {stray:?}"))),
        }
    }
    let env_socket = match env_socket.filter(|v| !v.is_empty()) {
        Some(v) => Some(socket_path(SOCKET_PATH_ENV, v)?),
        None => None,
    };
    let (socket, legacy_socket) = match (socket, legacy_socket, env_socket) {
        (Some(socket), legacy, _) => (Some(socket), legacy),
        // `HOLDEN_SOCKET_PATH` alone is how the v0.2 agent was started: be it, serve v0.2
        // (SOCK_STREAM) there. A v0.2 orchestrator connects with SOCK_STREAM, and a socket
        // path is one socket type: it cannot be a v1 (SOCK_SEQPACKET) socket too.
        (None, None, Some(env)) => (None, Some(env)),
        // With --legacy-socket, the variable names the v1 socket, as before.
        (None, legacy, env) => (
            Some(env.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH))),
            legacy,
        ),
    };
    if legacy_socket.is_some() && legacy_socket == socket {
        return Err(UsageError(
            "--legacy-socket must differ from the v1 socket path".to_string(),
        ));
    }
    Ok(Command::Run(Options {
        socket,
        legacy_socket,
        allow_uids,
        read_timeout_ms,
        exec_timeout_ms,
        notify_socket: notify_socket.unwrap_or(NotifyChoice::Default),
        cgroups,
    }))
}

/// An error lexopt itself reports: only `--flag=value` for an option that
/// takes no value (missing values and unknown options are worded here).
fn lexopt_usage(error: &lexopt::Error) -> UsageError {
    match error {
        lexopt::Error::UnexpectedValue { option, .. } => {
            UsageError(format!("{option} takes no value"))
        }
        other => UsageError(other.to_string()),
    }
}

/// The value of `name`, separate or joined with `=`.
fn value(parser: &mut lexopt::Parser, name: &str) -> Result<OsString, UsageError> {
    parser
        .value()
        .map_err(|_| UsageError(format!("{name} needs a value")))
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UsageError> {
    if slot.is_some() {
        return Err(UsageError(format!("{name} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn socket_path(name: &str, value: OsString) -> Result<PathBuf, UsageError> {
    let len = value.as_bytes().len();
    if len == 0 {
        return Err(UsageError(format!("{name}: the socket path is empty")));
    }
    if len > SOCKET_PATH_BYTES_MAX {
        return Err(UsageError(format!(
            "{name}: the socket path is {len} bytes, longer than the {SOCKET_PATH_BYTES_MAX} \
             bytes AF_UNIX allows"
        )));
    }
    if value.as_bytes().contains(&0) {
        return Err(UsageError(format!("{name}: the socket path contains NUL")));
    }
    Ok(PathBuf::from(value))
}

fn parse_number(name: &str, value: &OsStr, min: u64, max: u64) -> Result<u64, UsageError> {
    let Some(text) = value.to_str() else {
        return Err(UsageError(format!("{name}: {value:?} is not UTF-8")));
    };
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(UsageError(format!(
            "{name}: {text:?} is not a number in {min}..={max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: Option<&str>) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from), env.map(OsString::from))
    }

    fn options(args: &[&str], env: Option<&str>) -> Options {
        match run(args, env).unwrap() {
            Command::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_environment() {
        let o = options(&[], None);
        assert_eq!(o.socket, Some(PathBuf::from(DEFAULT_SOCKET_PATH)));
        assert_eq!(o.legacy_socket, None);
        assert_eq!(o.read_timeout_ms, READ_TIMEOUT_MS_DEFAULT);
        assert_eq!(o.exec_timeout_ms, EXEC_TIMEOUT_MS_DEFAULT);
        // Started the v0.2 way: the v0.2 agent's socket, and no v1 one.
        let o = options(&[], Some("/tmp/x.sock"));
        assert_eq!(o.socket, None);
        assert_eq!(o.legacy_socket, Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(
            options(&["--socket", "/a"], Some("/b")),
            options(&["--socket", "/a"], None),
            "--socket: the variable does not matter"
        );
        // With --legacy-socket the variable names the v1 socket, as before.
        let o = options(&["--legacy-socket", "/l"], Some("/b"));
        assert_eq!(o.socket, Some(PathBuf::from("/b")));
        assert_eq!(o.legacy_socket, Some(PathBuf::from("/l")));
        assert!(run(&["--legacy-socket", "/b"], Some("/b")).is_err());
    }

    #[test]
    fn all_options_both_spellings() {
        let o = options(
            &[
                "--socket=/s",
                "--legacy-socket",
                "/l",
                "--allow-uid",
                "1000",
                "--allow-uid=2000",
                "--read-timeout-ms=50",
                "--exec-timeout-ms",
                "70",
                "--exec-timeout-ms=60",
            ],
            None,
        );
        assert_eq!(o.socket, Some(PathBuf::from("/s")));
        assert_eq!(o.legacy_socket, Some(PathBuf::from("/l")));
        assert_eq!(o.allow_uids, vec![1000, 2000]);
        assert_eq!(o.read_timeout_ms, 50);
        assert_eq!(o.exec_timeout_ms, 60);
        assert_eq!(run(&["--help"], None).unwrap(), Command::Help);
        assert_eq!(run(&["-V"], None).unwrap(), Command::Version);
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            &["--bogus"][..],
            &["--socket"],
            &["--socket", ""],
            &["--socket", "/a", "--socket", "/b"],
            &["--allow-uid", "x"],
            &["--allow-uid", "-1"],
            &["--allow-uid", "4294967295"],
            &["--read-timeout-ms", "0"],
            &["--exec-timeout-ms", "9"],
            &["--exec-timeout-ms", "3600001"],
            &["stray"],
            &["--socket", "/same", "--legacy-socket", "/same"],
        ] {
            assert!(run(bad, None).is_err(), "{bad:?} accepted");
        }
        let long = "/".repeat(SOCKET_PATH_BYTES_MAX + 1);
        assert!(run(&["--socket", &long], None).is_err());
        for (bad, message) in [
            (&["--bogus"][..], "unknown option \"--bogus\""),
            (&["-x"], "unknown option \"-x\""),
            (&["--socket"], "--socket needs a value"),
            (&["--socket=/a", "--socket=/b"], "--socket given twice"),
            (&["--allow-uid=1=2"], "--allow-uid: \"1=2\" is not a number"),
            (&["stray"], "unexpected argument \"stray\""),
            (&["--", "--help"], "unexpected argument \"--help\""),
        ] {
            let error = run(bad, None).unwrap_err();
            assert!(error.0.starts_with(message), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        assert_eq!(
            options(&["--socket", "-odd.sock", "--legacy-socket=--l"], None).legacy_socket,
            Some(PathBuf::from("--l"))
        );
        assert_eq!(
            options(&["--socket", "-odd.sock"], None).socket,
            Some(PathBuf::from("-odd.sock"))
        );
    }

    #[test]
    fn socket_paths_need_not_be_utf8_but_numbers_must_be() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(b"/run/holden/\xff.sock".to_vec());
        let mut legacy = path.clone();
        legacy.push(".legacy");
        let mut joined = OsString::from("--legacy-socket=");
        joined.push(&legacy);
        let parsed = parse([OsString::from("--socket"), path.clone(), joined], None);
        let Ok(Command::Run(o)) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(o.socket, Some(PathBuf::from(&path)));
        assert_eq!(o.legacy_socket, Some(PathBuf::from(&legacy)));
        let parsed = parse([], Some(path.clone()));
        assert!(
            matches!(parsed, Ok(Command::Run(o)) if o.legacy_socket.as_deref() == Some(path.as_ref()))
        );
        let bad = OsString::from_vec(b"1\xff".to_vec());
        let mut joined = OsString::from("--read-timeout-ms=");
        joined.push(&bad);
        assert_eq!(
            parse([joined], None).unwrap_err().0,
            "--read-timeout-ms: \"1\\xFF\" is not UTF-8"
        );
        assert_eq!(
            parse([OsString::from("--allow-uid"), bad], None)
                .unwrap_err()
                .0,
            "--allow-uid: \"1\\xFF\" is not UTF-8"
        );
    }
}
