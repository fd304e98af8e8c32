//! holden-orchestrator: supervises local and QM processes on one io_uring ring.
//!
//! Exit codes: 0 after a clean shutdown (or a valid `--check`), 1 when the configuration is
//! invalid or the orchestrator cannot run (io_uring unavailable, ...), 2 for command-line
//! misuse.

#![forbid(unsafe_code)]

use holden::config::{Checked, ConfigErrors, ThisMachine, CONFIG_PATH_DEFAULT};
use holden::orchestrator::{Options, Orchestrator, ServiceDef, Settings};
use holden::wire::v02::{DEFAULT_SOCKET_PATH, SOCKET_PATH_ENV};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: holden-orchestrator [--config PATH] [--runtime-dir DIR] [--check]
       holden-orchestrator [--runtime-dir DIR] [--check] [--] 'LOCAL CMD' 'QM CMD'
       holden-orchestrator --help | --version

Supervises the services of a configuration file (default /etc/holden/orchestrator.toml,
format in docs/config.md): local ones are spawned here, QM ones through holden-agent.

  --config PATH   read this configuration file (also --config=PATH)
  --runtime-dir DIR
                  the runtime directory (instead of the file's `runtime_dir`, default
                  /run/holden): the lock that lets one orchestrator at a time run on it, and
                  the state record that lets a restarted one take over the running services
  --check         validate the configuration and exit (0: valid, 1: invalid)
  -h, --help      print this help
  -V, --version   print the version
  --              end of options: what follows is 'LOCAL CMD' 'QM CMD', even if it
                  starts with -

The v0.2 form supervises LOCAL CMD here and QM CMD through the agent at $HOLDEN_SOCKET_PATH
(default /tmp/process_orchestrator.sock), both with restart = always.

SIGTERM or SIGINT stops every service and exits 0; a second one SIGKILLs them at once.
Logs go to stderr, one line per event, with journald priority prefixes.
Exit codes: 0 clean shutdown, 1 invalid configuration or fatal error, 2 misuse.";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Cli {
    Help,
    Version,
    Run {
        source: Source,
        check: bool,
        runtime_dir: Option<PathBuf>,
    },
}

#[derive(Debug, PartialEq)]
enum Source {
    File(PathBuf),
    Legacy { local: String, qm: String },
}

/// Parses the arguments after the program name. `--help` and `--version` win over what
/// follows them; `--` ends the options.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut parser = lexopt::Parser::from_args(args);
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    let mut runtime_dir: Option<PathBuf> = None;
    let mut positional: Vec<OsString> = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| lexopt_message(&e))? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Short('V') | Long("version") => return Ok(Cli::Version),
            Long("check") => check = true,
            Long("config") => {
                let value = parser.value().map_err(|_| "--config needs a PATH")?;
                if value.is_empty() {
                    return Err("--config needs a PATH".into());
                }
                if config.replace(PathBuf::from(value)).is_some() {
                    return Err("--config given twice".into());
                }
            }
            Long("runtime-dir") => {
                let value = parser.value().map_err(|_| "--runtime-dir needs a DIR")?;
                if !value.as_encoded_bytes().starts_with(b"/") {
                    return Err("--runtime-dir needs an absolute DIR (starting with /)".into());
                }
                if runtime_dir.replace(PathBuf::from(value)).is_some() {
                    return Err("--runtime-dir given twice".into());
                }
            }
            Value(value) => positional.push(value),
            Short(c) => return Err(format!("unknown option \"-{c}\"")),
            Long(name) => return Err(format!("unknown option \"--{name}\"")),
        }
    }
    let count = positional.len();
    let source = match (config, <[OsString; 2]>::try_from(positional)) {
        (Some(path), _) if count == 0 => Source::File(path),
        (Some(_), _) => {
            return Err("--config and the v0.2 'LOCAL CMD' 'QM CMD' form exclude each other".into())
        }
        (None, _) if count == 0 => Source::File(PathBuf::from(CONFIG_PATH_DEFAULT)),
        (None, Ok([local, qm])) => Source::Legacy {
            local: utf8(local)?,
            qm: utf8(qm)?,
        },
        (None, Err(_)) => {
            return Err(format!(
                "expected no argument or exactly two ('LOCAL CMD' 'QM CMD'), got {count}"
            ));
        }
    };
    Ok(Cli::Run {
        source,
        check,
        runtime_dir,
    })
}

/// The message of an error that lexopt itself reports: only `--flag=value` for an option that
/// takes no value (missing values and unknown options are worded here).
fn lexopt_message(error: &lexopt::Error) -> String {
    match error {
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
        other => other.to_string(),
    }
}

fn utf8(arg: OsString) -> Result<String, String> {
    arg.into_string()
        .map_err(|arg| format!("argument {arg:?} is not UTF-8"))
}

/// The configuration, validated and checked against this machine.
fn load(source: &Source) -> Result<Checked, ConfigErrors> {
    match source {
        Source::File(path) => holden::config::Config::load_checked(path, &ThisMachine),
        Source::Legacy { local, qm } => {
            let socket = std::env::var_os(SOCKET_PATH_ENV)
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from);
            holden::config::Config::from_legacy_args(local, qm, &socket)?
                .check_host("the v0.2 command line", &ThisMachine)
        }
    }
}

/// A problem of a valid configuration, as a log line.
fn log_config_problem(problem: &holden::config::ConfigError) {
    use holden::log::{Quoted, Value};
    let consequence = if problem.kind == holden::config::ConfigErrorKind::Missing {
        " consequence=\"the service will fail to start\""
    } else {
        ""
    };
    eprintln!(
        "<4>event=config-warning file={} line={} column={} field={} problem={}{consequence}",
        Value(&problem.path),
        problem.line,
        problem.column,
        Value(if problem.field.is_empty() {
            "-"
        } else {
            &problem.field
        }),
        Quoted(&problem.message)
    );
}

/// Prints every error (one per line, priority 3) and a summary line.
fn print_errors(errors: &ConfigErrors, outcome: &str) {
    for error in &errors.errors {
        eprintln!("<3>{error}");
    }
    let count = errors.errors.len() + errors.omitted;
    let noun = if count == 1 { "error" } else { "errors" };
    eprintln!("<3>holden-orchestrator: {count} {noun} in the configuration; {outcome}");
}

/// Open files the orchestrator needs besides its slots: stdio, the ring, signalfd, eventfd,
/// the agent link, control connections, a spawn's report pipe, a received fd being checked.
const FDS_BESIDES_SLOTS: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard one (systemd starts services with a soft limit of
/// 1024, far below what thousands of pidfds need), and refuses a configuration whose slots
/// cannot all hold a process: each slot may hold a pidfd, and a QM slot briefly a second one
/// (a gated spawn's pidfd before `Running`). Returns the limit in force.
/// Fds the output of the configured local services holds: a pipe (two ends) per captured
/// stream, one fd per `null` or `file:` stream.
fn output_fds(config: &holden::config::Config) -> u64 {
    use holden::config::OutputTarget;
    config
        .services
        .iter()
        .filter(|s| s.partition() == holden::supervise::Partition::Local)
        .flat_map(|s| [&s.stdout, &s.stderr])
        .map(|target| match target {
            OutputTarget::Journal | OutputTarget::Log => 2,
            OutputTarget::Null | OutputTarget::File(_) => 1,
            OutputTarget::Inherit => 0,
        })
        .sum()
}

fn raise_fd_limit(slots: usize, output_fds: u64) -> Result<u64, String> {
    let (mut soft, hard) = holden::sys::process::nofile_limit()
        .map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    if soft < hard {
        // Raising the soft limit up to the hard one is always allowed.
        holden::sys::process::set_nofile_soft(hard)
            .map_err(|e| format!("setrlimit(RLIMIT_NOFILE): {e}"))?;
        soft = hard;
    }
    let needed = 2 * slots as u64 + output_fds + FDS_BESIDES_SLOTS;
    if soft < needed {
        return Err(format!(
            "slots = {slots} needs up to {needed} open files, but RLIMIT_NOFILE allows {soft} \
             (raise LimitNOFILE= in the unit, or lower slots)"
        ));
    }
    // Sized once, before any thread: growing it later would stall the loop (best effort).
    let _ = holden::sys::fd::reserve_table(needed);
    Ok(soft)
}

fn main() -> ExitCode {
    let cli = match parse_args(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("holden-orchestrator: {message} (see holden-orchestrator --help)");
            return ExitCode::from(2);
        }
    };
    let (source, check, runtime_dir) = match cli {
        Cli::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Cli::Version => {
            println!("holden-orchestrator {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Cli::Run {
            source,
            check,
            runtime_dir,
        } => (source, check, runtime_dir),
    };
    let checked = match load(&source) {
        Ok(checked) => checked,
        Err(errors) => {
            let outcome = if check {
                "it is invalid"
            } else {
                "nothing was started"
            };
            print_errors(&errors, outcome);
            return ExitCode::from(1);
        }
    };
    if check {
        for warning in checked.warnings.iter().chain(&checked.unchecked) {
            eprintln!("<4>{warning}");
        }
        // --check refuses what would fail for sure: a local program or working directory
        // that is not there.
        if let Some(errors) = ConfigErrors::of_missing(&checked.missing) {
            print_errors(&errors, "it is invalid");
            return ExitCode::from(1);
        }
        let config = &checked.config;
        let qm = config
            .services
            .iter()
            .filter(|s| s.partition() == holden::supervise::Partition::Qm)
            .count();
        println!(
            "configuration valid: {} services ({} local, {} qm), {} slots",
            config.services.len(),
            config.services.len() - qm,
            qm,
            config.slots
        );
        return ExitCode::SUCCESS;
    }
    // Start-up starts what it can (a service whose program is missing fails to start, and
    // says why); these lines are key=value like every line of the log.
    for problem in checked.warnings.iter().chain(&checked.missing) {
        log_config_problem(problem);
    }
    let config = checked.config;
    holden::sys::fd::ensure_standard_fds();
    // Started under a real-time policy (the shipped unit: SCHED_FIFO 1), the event loop keeps
    // it, but no service or helper thread inherits it.
    match holden::sys::process::keep_realtime_from_children() {
        Ok(Some((policy, priority))) => eprintln!(
            "<5>event=sched-reset-on-fork policy={policy} priority={priority} \
             effect=\"services and helper threads start under SCHED_OTHER\""
        ),
        Ok(None) => {}
        Err(e) => {
            eprintln!(
                "<3>holden-orchestrator: cannot start: a real-time policy without \
                 SCHED_RESET_ON_FORK could not be kept from services: {e}; nothing was started"
            );
            return ExitCode::from(1);
        }
    }
    // What services get back of the limits the orchestrator changes for itself.
    if let Err(e) = holden::sys::process::record_starting_limits() {
        eprintln!("<3>holden-orchestrator: cannot start: the starting resource limits cannot be read: {e}; nothing was started");
        return ExitCode::from(1);
    }
    if let Err(message) = raise_fd_limit(config.slots as usize, output_fds(&config)) {
        eprintln!("<3>holden-orchestrator: cannot start: {message}; nothing was started");
        return ExitCode::from(1);
    }
    let mut settings = Settings::from_config(&config);
    if let Some(dir) = runtime_dir {
        settings.runtime_dir = Some(dir);
    }
    if let Source::File(path) = &source {
        settings.config_path = Some(path.clone());
    }
    let defs = ServiceDef::all_from_config(&config);
    let mut orchestrator = match Orchestrator::new(settings, defs, Options::default()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("<3>holden-orchestrator: cannot start: {e}; nothing was started");
            return ExitCode::from(1);
        }
    };
    drop(config);
    match orchestrator.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("<2>holden-orchestrator: event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            parse_args(args(&[])).unwrap(),
            Cli::Run {
                source: Source::File(CONFIG_PATH_DEFAULT.into()),
                check: false,
                runtime_dir: None
            }
        );
        assert_eq!(
            parse_args(args(&["--config", "/x.toml", "--check"])).unwrap(),
            Cli::Run {
                source: Source::File("/x.toml".into()),
                check: true,
                runtime_dir: None
            }
        );
        assert_eq!(
            parse_args(args(&["--config=/y"])).unwrap(),
            Cli::Run {
                source: Source::File("/y".into()),
                check: false,
                runtime_dir: None
            }
        );
        assert_eq!(
            parse_args(args(&["/bin/a x", "b"])).unwrap(),
            Cli::Run {
                source: Source::Legacy {
                    local: "/bin/a x".into(),
                    qm: "b".into()
                },
                check: false,
                runtime_dir: None
            }
        );
        assert_eq!(parse_args(args(&["--help", "--bogus"])).unwrap(), Cli::Help);
        assert_eq!(parse_args(args(&["--version"])).unwrap(), Cli::Version);
    }

    #[test]
    fn misuse_is_refused() {
        for bad in [
            &["--config"][..],
            &["--bogus"],
            &["one"],
            &["a", "b", "c"],
            &["--config", "/x", "a", "b"],
            &["--config=/a", "--config=/b"],
            &["--config="],
            &["--config", ""],
            &["--check=yes"],
            &["-x"],
            &["--", "--config=/a"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_args(args(&["--config"])).unwrap_err(),
            "--config needs a PATH"
        );
        assert_eq!(
            parse_args(args(&["--bogus"])).unwrap_err(),
            "unknown option \"--bogus\""
        );
        assert_eq!(
            parse_args(args(&["--check=yes"])).unwrap_err(),
            "--check takes no value"
        );
    }

    #[test]
    fn the_runtime_directory_can_be_given() {
        assert_eq!(
            parse_args(args(&["--runtime-dir", "/tmp/x", "a", "b"])).unwrap(),
            Cli::Run {
                source: Source::Legacy {
                    local: "a".into(),
                    qm: "b".into()
                },
                check: false,
                runtime_dir: Some("/tmp/x".into())
            }
        );
        for bad in [
            &["--runtime-dir"][..],
            &["--runtime-dir", "relative"],
            &["--runtime-dir=/a", "--runtime-dir=/b"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn double_dash_ends_the_options() {
        assert_eq!(
            parse_args(args(&["--check", "--", "-local --x", "--help"])).unwrap(),
            Cli::Run {
                source: Source::Legacy {
                    local: "-local --x".into(),
                    qm: "--help".into()
                },
                check: true,
                runtime_dir: None
            }
        );
        assert_eq!(parse_args(args(&["-h"])).unwrap(), Cli::Help);
        assert_eq!(parse_args(args(&["-V"])).unwrap(), Cli::Version);
    }

    #[test]
    fn paths_need_not_be_utf8_but_commands_must_be() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(b"/etc/holden/\xff.toml".to_vec());
        let mut equals = OsString::from("--config=");
        equals.push(&path);
        for list in [vec![OsString::from("--config"), path.clone()], vec![equals]] {
            assert_eq!(
                parse_args(list).unwrap(),
                Cli::Run {
                    source: Source::File(PathBuf::from(&path)),
                    check: false,
                    runtime_dir: None
                }
            );
        }
        let error = parse_args([path, OsString::from("qm")]).unwrap_err();
        assert!(error.contains("is not UTF-8"), "{error}");
    }
}
