//! holden-agent: the stateless QM-partition spawner.
//!
//! It listens on an AF_UNIX SOCK_SEQPACKET socket speaking holden wire v1
//! (and, with `--legacy-socket`, on a SOCK_STREAM socket speaking holden
//! v0.2), starts the processes it is asked to start with a race-free
//! `clone3(CLONE_PIDFD)`, passes each pidfd back over SCM_RIGHTS, closes its
//! own copy and forgets the process. See `docs/agent.md`.

#![forbid(unsafe_code)]

mod cli;
mod env;
mod fdpass;
mod limits;
mod listen;
mod log;
mod notify;
mod peer;
mod pending;
mod request;
mod server;
mod signals;
mod text;
mod v02;
mod v1;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Command, Options};
use crate::listen::{Flavor, Listener};
use crate::log::{err, info, notice, warning};
use holden::sd_notify::{Notifier, NOTIFY_SOCKET_ENV};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let env_socket = std::env::var_os(cli::SOCKET_PATH_ENV);
    match cli::parse(std::env::args_os().skip(1), env_socket) {
        Err(error) => {
            eprintln!("holden-agent: {error}");
            ExitCode::from(2)
        }
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!(
                "holden-agent {VERSION} (holden wire v{}.{}, legacy v0.2)",
                holden::wire::v1::VERSION_MAJOR,
                holden::wire::v1::VERSION_MINOR
            );
            ExitCode::SUCCESS
        }
        Ok(Command::Run(options)) => match run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                err!("{message}");
                ExitCode::from(1)
            }
        },
    }
}

/// Variables of the agent's own environment consumed at start-up.
struct StartupEnv {
    listen_pid: Option<OsString>,
    listen_fds: Option<OsString>,
    notify_socket: Option<OsString>,
}

impl StartupEnv {
    /// Reads and removes them, so that no child ever inherits them.
    fn take() -> StartupEnv {
        let taken = StartupEnv {
            listen_pid: std::env::var_os("LISTEN_PID"),
            listen_fds: std::env::var_os("LISTEN_FDS"),
            notify_socket: std::env::var_os(NOTIFY_SOCKET_ENV),
        };
        for name in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            NOTIFY_SOCKET_ENV,
        ] {
            // Start-up is single-threaded: nothing reads the environment
            // concurrently.
            std::env::remove_var(name);
        }
        taken
    }
}

fn run(options: Options) -> Result<(), String> {
    signals::ensure_standard_fds();
    let startup = StartupEnv::take();
    // Systemd's fds first: they are 3.. and must be claimed before anything
    // else is opened.
    let activated =
        listen::from_systemd(startup.listen_pid.as_deref(), startup.listen_fds.as_deref())
            .map_err(|e| e.to_string())?;
    let signals = signals::install().map_err(|e| format!("signalfd: {e}"))?;
    let inherited = env::InheritedEnv::capture();
    if inherited.dropped > 0 {
        warning!(
            "{} environment entries do not fit the limits and are not passed to INHERIT_ENV \
             and v0.2 children",
            inherited.dropped
        );
    }
    let listeners = open_listeners(&options, activated)?;
    let own_uid = holden::sys::process::getuid();
    let allow = peer::AllowList::new(own_uid, &options.allow_uids);
    info!(
        "allowed peer uids: {:?}; read timeout {} ms; exec timeout {} ms; at most {} connections, \
         {} gated starts waiting for their exec ({} per connection)",
        allow.uids(),
        options.read_timeout_ms,
        options.exec_timeout_ms,
        limits::CONNECTIONS_MAX,
        limits::PENDING_EXECS_MAX,
        limits::PENDING_EXECS_PER_CONN_MAX
    );
    let settings = server::Settings {
        read_timeout: Duration::from_millis(options.read_timeout_ms),
        exec_timeout: Duration::from_millis(options.exec_timeout_ms),
        allow,
    };
    let notify = match options.notify_path() {
        None => None,
        Some((path, named)) => match notify::NotifySocket::bind(&path) {
            Ok(socket) => Some(socket),
            Err(error) if named => {
                for listener in &listeners {
                    listener.remove_file();
                }
                return Err(error);
            }
            Err(error) => {
                warning!("{error}; type = \"notify\" services are refused (--notify-socket)");
                None
            }
        },
    };
    let cgroups = if options.cgroups {
        match holden::cgroup::resolve_delegated("agent") {
            holden::cgroup::Auto::At {
                mut hierarchy,
                moved,
            } => match hierarchy.open_root() {
                Ok(()) => {
                    info!(
                        "cgroups: started processes get their own under {}{}",
                        hierarchy.root().display(),
                        if moved {
                            " (moved itself into its leaf `agent`)"
                        } else {
                            ""
                        }
                    );
                    Some(hierarchy)
                }
                Err(e) => {
                    warning!(
                        "cgroups: {}: {e}; started processes share the agent's",
                        hierarchy.root().display()
                    );
                    None
                }
            },
            holden::cgroup::Auto::Off(reason) => {
                info!("cgroups: off ({reason}); started processes share the agent's");
                None
            }
        }
    } else {
        None
    };
    let mut server = server::Server::new(listeners, signals, inherited, settings, notify, cgroups);
    log_startup(&server);
    let mut status = String::from("READY=1\nSTATUS=listening on");
    for listener in server.listeners() {
        status.push(' ');
        status.push_str(&listener.description);
    }
    let notifier = Notifier::to(startup.notify_socket.as_deref()).unwrap_or_else(|error| {
        warning!("sd_notify: {error}");
        Notifier::disabled()
    });
    if let Err(error) = notifier.send(status.as_bytes()) {
        warning!("sd_notify READY=1: {error}");
    }
    let result = server.run();
    server.remove_socket_files();
    let _ = notifier.send(b"STOPPING=1");
    match result {
        Ok(signal) => {
            notice!("stopped on signal {signal}; socket files removed");
            Ok(())
        }
        Err(error) => Err(format!("event loop: poll: {error}")),
    }
}

/// The v1 listener (systemd's or bound at `--socket`) and, if asked for or
/// passed by systemd, the v0.2 one. On failure, files already created are
/// removed.
fn open_listeners(options: &Options, activated: Vec<Listener>) -> Result<Vec<Listener>, String> {
    let mut listeners = activated;
    match &options.socket {
        Some(path) if !listeners.iter().any(|l| l.flavor == Flavor::V1) => {
            let v1 = Listener::bind(path, Flavor::V1).map_err(|e| e.to_string())?;
            listeners.push(v1);
        }
        Some(_) => {}
        None => notice!(
            "started the v0.2 way ({} without --socket): serving holden v0.2 (SOCK_STREAM) as \
             the v0.2 agent did, and no holden wire v1 socket (give --socket PATH for one)",
            cli::SOCKET_PATH_ENV
        ),
    }
    let has_v02 = listeners.iter().any(|l| l.flavor == Flavor::V02);
    if let (Some(path), false) = (&options.legacy_socket, has_v02) {
        match Listener::bind(path, Flavor::V02) {
            Ok(v02) => listeners.push(v02),
            Err(error) => {
                for listener in &listeners {
                    listener.remove_file();
                }
                return Err(error.to_string());
            }
        }
    }
    Ok(listeners)
}

fn log_startup(server: &server::Server) {
    for listener in server.listeners() {
        info!(
            "holden-agent {VERSION} listening on {}",
            listener.description
        );
    }
    if let Some(notify) = server.notify_socket() {
        info!(
            "notify socket {}: datagrams forwarded as Notify to wire 1.2 peers (at most {}/s)",
            notify.path().display(),
            notify::FORWARD_PER_SEC
        );
    }
}
