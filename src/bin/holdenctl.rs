//! holdenctl: looks at and steers a running holden-orchestrator through its control socket.
//!
//! Protocol: `holden::control` (docs/control.md). Exit codes: see [`USAGE`].

#![forbid(unsafe_code)]

use holden::config::{parse_duration, signal_from_name, signal_from_number};
use holden::control::{
    self as proto, AgentInfo, Body, EventInfo, Exit, FailCode, Op, ServiceInfo, SpawnError,
    StateCode, TypeCode, Why,
};
use holden::sys::socket;
use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SOCKET_ENV: &str = "HOLDEN_CONTROL_SOCKET";
const SOCKET_DEFAULT: &str = "/run/holden/control.sock";
/// How long holdenctl waits for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of `--wait`.
const WAIT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Interval between two status looks while waiting.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Lines `holdenctl logs` shows without `-n`.
const LOG_LINES_DEFAULT: u32 = 10;

const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNKNOWN: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

const USAGE: &str = "\
usage: holdenctl [--socket PATH] COMMAND [ARGS...]

Looks at and steers a running holden-orchestrator.

Commands:
  status [NAME...] [--json]           services: state, pid, uptime, restarts, last exit, cause
  start NAME... [--wait] [--timeout DUR]
  stop NAME... [--wait] [--timeout DUR]
  restart NAME... [--wait] [--timeout DUR]
  kill [-s SIGNAL] NAME [--wait] [--timeout DUR]
  reset-failed NAME... [--wait] [--timeout DUR]
  monitor [NAME...] [--json]          state changes as they happen (Ctrl+C ends)
  logs NAME [-n N] [-f] [--json]      a local service's last output lines (-f: and new ones)
  agent [--json]                      the link to holden-agent in the QM partition
  stats [--json]                      the orchestrator's own figures: loop stalls, spawns, log drops
  reload                              re-read the orchestrator's configuration file
  reexec                              re-execute the orchestrator's binary, keeping every service

Options:
  --socket PATH   control socket (default $HOLDEN_CONTROL_SOCKET, else /run/holden/control.sock)
  -h, --help      help (also after a command: holdenctl status --help)
  -V, --version   print the version

Options may come before or after the command. A value follows its option or is joined to it:
--socket=PATH, --timeout=5s, -sKILL, --signal=KILL. -- ends the options: what follows is the
command or a NAME even if it starts with -.

Exit codes:
  0  done (with --wait: the target state was reached)
  1  the orchestrator refused or failed the operation, --wait timed out or the service
     failed, a reload was refused (invalid file: its error is printed), or a re-exec failed
  2  usage error
  3  unknown service name
  4  cannot reach the orchestrator (no socket, permission denied, too many clients,
     protocol error)

Colour only on a terminal, never with NO_COLOR set.";

fn help_for(command: &str) -> &'static str {
    match command {
        "status" => "usage: holdenctl status [NAME...] [--json]\n\nOne line per service: name, partition, state, pid, uptime, time to ready (from\nits spawn to running: 0 for a simple one, the wait for READY=1 for a notify one),\nrestarts, last exit\n(code N, signal NAME or unknown), the time until the next restart, and the cause\nof a failure or backoff (start-limit, the stage and errno of a failed start), and\nwhat a type = \"notify\" service last said in STATUS=.\n--json prints an array of objects instead.\nExit: 0, 3 if a NAME is unknown (every unknown NAME is named, no row printed),\n4 if the orchestrator cannot be reached.",
        "start" | "stop" | "restart" | "reset-failed" => "usage: holdenctl start|stop|restart|reset-failed NAME... [--wait] [--timeout DUR]\n\n--wait waits until every service reached its target state: start and restart:\nrunning (restart: with a new process); stop: stopped or failed; reset-failed: stopped.\n--timeout bounds the wait (default 30s; units ns us ms s m h).\nExit: 0 done, 1 refused / timed out / the service failed, 3 unknown NAME, 4 unreachable.",
        "kill" => "usage: holdenctl kill [-s SIGNAL] NAME [--wait] [--timeout DUR]\n\nSends SIGNAL (-s or --signal; default SIGTERM; a name like TERM or SIGKILL, or a\nnumber) to the service's process. What follows is decided by its restart policy.\n--wait waits until that process has ended.\nExit: 0 sent, 1 refused / timed out, 3 unknown NAME, 4 unreachable.",
        "monitor" => "usage: holdenctl monitor [NAME...] [--json]\n\nPrints one line per state change as it happens (only of NAMEs, if given), until\ninterrupted. If holdenctl does not keep up, the orchestrator drops events and says\nhow many (\"dropped N events\").",
        "logs" => "usage: holdenctl logs NAME [-n N] [-f] [--json]\n\nThe last N lines (-n/--lines, default 10; 0 for none) of a local service's stdout\nand stderr, as the orchestrator keeps them (a fixed ring per service, [log]\nhistory_bytes); stderr lines start with \"stderr: \", control characters and bytes that\nare not UTF-8 are shown as \\xNN. -f/--follow then prints every new line until\ninterrupted; if holdenctl does not keep up, the lines it missed are counted\n(\"-- N lines missed --\"). Lines the orchestrator did not forward (over the rate\nlimit, a full journal) are counted on stderr at the end. --json: one object per line\n(seq, stream, priority, truncated, text), after one with the service's figures.\nExit: 0, 1 if the service's output is not captured, 3 unknown NAME, 4 unreachable.",
        "stats" => "usage: holdenctl stats [--json]\n\nThe orchestrator's own figures since start-up: how long its event loop spent on\none completion (p50, p99, p99.9, max: the longest it could not answer anything else),\nprocesses spawned (local, QM), failed starts, process ends, log lines dropped because\nthe log stream did not keep up. --json also gives the histogram's non-empty buckets\n([lowest ns, count] pairs).",
        "agent" => "usage: holdenctl agent [--json]\n\nThe agent link: state (up, down, not-needed), protocol, version, capabilities,\nsocket, handshakes and dropped connections since start.",
        "reload" => "usage: holdenctl reload\n\nThe orchestrator re-reads its configuration file. An invalid file changes nothing\nand its error (file:line:column) is printed (exit 1). Added services start (if\nenabled), removed ones stop, changed ones restart; settings that need a restart of\nthe orchestrator are listed.",
        "reexec" => "usage: holdenctl reexec\n\nThe orchestrator executes its binary again (the file now at its path: after an\nupdate, the new version), keeping every service running: their processes, restart\ncounters, backoff and start limits carry over, and an exit during the re-exec is\nreported after it. Waits for the new instance's answer and prints how long it took.\nNeeds a runtime directory (runtime_dir). SIGUSR2 to the orchestrator does the same.\nExit: 0 done, 1 the re-exec failed (the orchestrator runs on as it was), 4 unreachable.",
        _ => USAGE,
    }
}

/// A command-line mistake: printed with a hint to `--help`, exit 2.
#[derive(Debug)]
struct Usage(String);

/// What the command line asks for.
#[derive(Debug)]
enum Parsed {
    /// Print this help text and exit 0.
    Help(&'static str),
    Version,
    Run(Cli),
}

/// A command to run.
#[derive(Debug)]
struct Cli {
    socket: PathBuf,
    command: String,
    names: Vec<String>,
    json: bool,
    wait: bool,
    timeout: Duration,
    signal: u8,
    /// `logs`: lines to show, and whether to follow.
    lines: u32,
    follow: bool,
}

/// Parses the arguments after the program name. `env_socket` is `$HOLDEN_CONTROL_SOCKET`.
/// Options may come before or after the command; `--help` and `--version` win over what follows
/// them; `--` ends the options. Options given twice: the last one counts.
fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_socket: Option<OsString>,
) -> Result<Parsed, Usage> {
    use lexopt::Arg::{Long, Short, Value};
    let mut parser = lexopt::Parser::from_args(args);
    let mut socket: Option<PathBuf> = None;
    let mut command: Option<OsString> = None;
    let mut names: Vec<OsString> = Vec::new();
    let mut json = false;
    let mut wait = false;
    let mut timeout = WAIT_TIMEOUT_DEFAULT;
    let mut signal: Option<u8> = None;
    let mut lines: Option<u32> = None;
    let mut follow = false;
    while let Some(arg) = parser.next().map_err(|e| lexopt_usage(&e))? {
        match arg {
            Short('h') | Long("help") => {
                let command = command.as_deref().and_then(OsStr::to_str);
                return Ok(Parsed::Help(help_for(command.unwrap_or(""))));
            }
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Long("socket") => socket = Some(PathBuf::from(value(&mut parser, "--socket")?)),
            Long("json") => json = true,
            Short('f') | Long("follow") => follow = true,
            Short('n') | Long("lines") => {
                let text = text_value(&mut parser, "-n")?;
                lines = Some(text.parse::<u32>().map_err(|_| {
                    Usage(format!(
                        "-n {text:?}: expected a number of lines (0..={})",
                        u32::MAX
                    ))
                })?);
            }
            Long("wait") => wait = true,
            Long("timeout") => {
                let text = text_value(&mut parser, "--timeout")?;
                timeout =
                    parse_duration(&text).map_err(|e| Usage(format!("--timeout {text:?}: {e}")))?;
            }
            Short('s') => signal = Some(signal_value(&mut parser, "-s")?),
            Long("signal") => signal = Some(signal_value(&mut parser, "--signal")?),
            Short(c) => return Err(Usage(format!("unknown option \"-{c}\""))),
            Long(name) => return Err(Usage(format!("unknown option \"--{name}\""))),
            Value(value) if command.is_none() => command = Some(value),
            Value(value) => names.push(value),
        }
    }
    let Some(command) = command else {
        return Err(Usage("no command given".into()));
    };
    let command = command
        .into_string()
        .map_err(|c| Usage(format!("unknown command {c:?}")))?;
    let names = names
        .into_iter()
        .map(|n| {
            n.into_string()
                .map_err(|n| Usage(format!("service name {n:?} is not UTF-8")))
        })
        .collect::<Result<Vec<String>, Usage>>()?;
    let socket = socket
        .or_else(|| env_socket.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(SOCKET_DEFAULT));
    let needs_names = matches!(
        command.as_str(),
        "start" | "stop" | "restart" | "kill" | "reset-failed"
    );
    match command.as_str() {
        "status" | "monitor" | "agent" | "stats" | "reload" | "reexec" | "start" | "stop"
        | "restart" | "kill" | "reset-failed" | "logs" => {}
        other => return Err(Usage(format!("unknown command {other:?}"))),
    }
    if needs_names && names.is_empty() {
        return Err(Usage(format!("{command} needs a service NAME")));
    }
    if command == "kill" && names.len() != 1 {
        return Err(Usage("kill takes exactly one NAME".into()));
    }
    if matches!(command.as_str(), "agent" | "stats" | "reload" | "reexec") && !names.is_empty() {
        return Err(Usage(format!("{command} takes no NAME")));
    }
    if command == "logs" && names.len() != 1 {
        return Err(Usage("logs takes exactly one NAME".into()));
    }
    if (follow || lines.is_some()) && command != "logs" {
        return Err(Usage("-f/--follow and -n/--lines are for logs only".into()));
    }
    if signal.is_some() && command != "kill" {
        return Err(Usage("-s/--signal is for kill only".into()));
    }
    if let Some(name) = names
        .iter()
        .find(|n| n.is_empty() || n.len() > proto::NAME_LEN_MAX)
    {
        return Err(Usage(format!(
            "service name {name:?} must be 1..={} bytes",
            proto::NAME_LEN_MAX
        )));
    }
    Ok(Parsed::Run(Cli {
        socket,
        command,
        names,
        json,
        wait,
        timeout,
        signal: signal.unwrap_or(libc::SIGTERM as u8),
        lines: lines.unwrap_or(LOG_LINES_DEFAULT),
        follow,
    }))
}

/// An error lexopt itself reports: only `--flag=value` for an option that takes no value
/// (missing values and unknown options are worded here).
fn lexopt_usage(error: &lexopt::Error) -> Usage {
    match error {
        lexopt::Error::UnexpectedValue { option, .. } => Usage(format!("{option} takes no value")),
        other => Usage(other.to_string()),
    }
}

/// The value of `flag`: `--flag VALUE`, `--flag=VALUE`, `-fVALUE` or `-f VALUE`.
fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<OsString, Usage> {
    parser
        .value()
        .map_err(|_| Usage(format!("{flag} needs a value")))
}

/// The value of `flag`, which must be text.
fn text_value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, Usage> {
    value(parser, flag)?
        .into_string()
        .map_err(|v| Usage(format!("{flag} {v:?}: not UTF-8")))
}

/// The value of `-s` / `--signal`: a name (`TERM`, `SIGKILL`) or a number.
fn signal_value(parser: &mut lexopt::Parser, flag: &str) -> Result<u8, Usage> {
    let text = text_value(parser, flag)?;
    let number = match text.parse::<i64>() {
        Ok(n) => signal_from_number(n),
        Err(_) => signal_from_name(&text),
    }
    .map_err(|e| Usage(format!("signal {text:?}: {e}")))?;
    Ok(number as u8)
}

/// Why holdenctl stops with a non-zero code.
struct Fail {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Fail {
    Fail {
        code,
        message: message.into(),
    }
}

/// One connection to the orchestrator.
struct Client {
    fd: OwnedFd,
    next_id: u32,
    buf: Box<[u8]>,
    socket: PathBuf,
}

impl Client {
    fn connect(path: &std::path::Path) -> Result<Client, Fail> {
        let addr = socket::UnixAddr::new(path.as_os_str().as_bytes())
            .map_err(|e| fail(EXIT_USAGE, format!("--socket: {e}")))?;
        let fd = socket::socket(socket::Kind::Seqpacket, false)
            .map_err(|e| unreachable(path, "socket", e))?;
        socket::connect(fd.as_fd(), &addr).map_err(|e| unreachable(path, "connect", e))?;
        let client = Client {
            fd,
            next_id: 1,
            buf: vec![0u8; proto::FRAME_LEN_MAX].into_boxed_slice(),
            socket: path.to_path_buf(),
        };
        client.set_timeout(Some(REPLY_TIMEOUT));
        Ok(client)
    }

    fn set_timeout(&self, timeout: Option<Duration>) {
        let _ = socket::set_receive_timeout(self.fd.as_fd(), timeout.unwrap_or(Duration::ZERO));
    }

    fn send(&mut self, body: &Body<'_>) -> Result<(), Fail> {
        let mut out = [0u8; proto::FRAME_LEN_MAX];
        let len = proto::encode(&mut out, self.next_id, body)
            .map_err(|e| fail(EXIT_USAGE, format!("cannot encode the request: {e}")))?;
        self.next_id = self.next_id.wrapping_add(1);
        let sent = socket::send(self.fd.as_fd(), &out[..len], false);
        if let Err(e) = sent.and_then(|n| {
            (n == len)
                .then_some(())
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EMSGSIZE))
        }) {
            // Refused at once (too many clients, permission): the reason waits in our
            // receive queue; `recv` reads it.
            if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) {
                return Ok(());
            }
            return Err(unreachable(&self.socket, "send", e));
        }
        Ok(())
    }

    /// Receives one frame (its bytes stay in `self.buf`; decode with [`Client::frame`]).
    fn recv(&mut self) -> Result<usize, Fail> {
        let n = match socket::recv(self.fd.as_fd(), &mut self.buf, true, false) {
            // The orchestrator closed after a refusal while our request was unread: the reset
            // is reported first, the refusal frame is still queued.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                socket::recv(self.fd.as_fd(), &mut self.buf, true, true)
            }
            other => other,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(fail(
                    EXIT_UNREACHABLE,
                    format!(
                        "{}: no reply within {}s",
                        self.socket.display(),
                        REPLY_TIMEOUT.as_secs()
                    ),
                ));
            }
            Err(e) => return Err(unreachable(&self.socket, "recv", e)),
        };
        if n == 0 {
            return Err(fail(
                EXIT_UNREACHABLE,
                format!(
                    "{}: the orchestrator closed the connection",
                    self.socket.display()
                ),
            ));
        }
        if n > self.buf.len() {
            return Err(fail(
                EXIT_UNREACHABLE,
                format!("reply of {n} bytes is larger than a control frame"),
            ));
        }
        Ok(n)
    }

    fn frame(&self, len: usize) -> Result<Body<'_>, Fail> {
        let frame = proto::decode(&self.buf[..len])
            .map_err(|e| fail(EXIT_UNREACHABLE, format!("undecodable reply: {e}")))?;
        if let Body::Failure { code, text } = frame.body {
            return Err(failure(code, text));
        }
        Ok(frame.body)
    }

    /// Status of one service (`Some`) or all; the items are passed to `each`.
    fn status(
        &mut self,
        name: Option<&str>,
        mut each: impl FnMut(&ServiceInfo<'_>),
    ) -> Result<(), Fail> {
        self.send(&Body::Status(name))?;
        loop {
            let len = self.recv()?;
            match self.frame(len)? {
                Body::Service(info) => each(&info),
                Body::End(_) => return Ok(()),
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// The rows of `names` (in the order given, each once), from one listing of every
    /// service. Any unknown name fails the whole command before anything is done: every
    /// unknown name is reported (exit 3).
    fn known(&mut self, names: &[String]) -> Result<Vec<Owned>, Fail> {
        let mut all = Vec::new();
        self.status(None, |s| all.push(Owned::of(s)))?;
        let mut rows: Vec<Owned> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        for name in names {
            if rows.iter().any(|r| &r.name == name) || unknown.contains(name) {
                continue;
            }
            match all.iter().find(|s| &s.name == name) {
                Some(row) => rows.push(row.clone()),
                None => unknown.push(name.clone()),
            }
        }
        if unknown.is_empty() {
            return Ok(rows);
        }
        let lines: Vec<String> = unknown
            .iter()
            .map(|n| format!("no service named {n:?}"))
            .collect();
        Err(fail(EXIT_UNKNOWN, lines.join("\nholdenctl: ")))
    }

    fn one(&mut self, name: &str) -> Result<Owned, Fail> {
        let mut found = None;
        self.status(Some(name), |s| found = Some(Owned::of(s)))?;
        found.ok_or_else(|| fail(EXIT_UNKNOWN, format!("no service named {name:?}")))
    }

    fn request(&mut self, body: &Body<'_>) -> Result<usize, Fail> {
        self.send(body)?;
        self.recv()
    }
}

fn failure(code: FailCode, text: &str) -> Fail {
    let exit = match code {
        FailCode::UnknownService => EXIT_UNKNOWN,
        FailCode::TooManyClients | FailCode::PermissionDenied | FailCode::BadRequest => {
            EXIT_UNREACHABLE
        }
        _ => EXIT_FAILED,
    };
    fail(exit, text.to_string())
}

fn unexpected(body: &Body<'_>) -> Fail {
    fail(
        EXIT_UNREACHABLE,
        format!("unexpected reply kind {}", body.kind()),
    )
}

fn unreachable(path: &std::path::Path, what: &str, e: std::io::Error) -> Fail {
    let hint = match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => " (is holden-orchestrator running? its [control] socket is set in the configuration; --socket or HOLDEN_CONTROL_SOCKET choose another)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (the control socket is for root and the [control] group and read_group; with a read_group, its file belongs to that group)",
        _ => "",
    };
    fail(
        EXIT_UNREACHABLE,
        format!("{}: {what}: {e}{hint}", path.display()),
    )
}

/// A service's status, owned.
#[derive(Clone, Debug)]
struct Owned {
    name: String,
    partition: &'static str,
    state: StateCode,
    pid: Option<i32>,
    uptime_ms: Option<u64>,
    restarts: u32,
    last_exit: Option<Exit>,
    next_restart_ms: Option<u64>,
    spawn_error: Option<SpawnError>,
    start_limit_hit: bool,
    /// What the service said in sd_notify's `STATUS=`.
    status: String,
    kind: TypeCode,
    /// From its spawn to `running`.
    ready_ms: Option<u64>,
    /// The state the orchestrator answered a command with (`--wait`).
    after_command: Option<StateCode>,
}

impl Owned {
    fn of(s: &ServiceInfo<'_>) -> Owned {
        Owned {
            name: s.name.to_string(),
            status: s.status.to_string(),
            kind: s.kind,
            ready_ms: s.ready_ms,
            after_command: None,
            partition: s.partition.as_str(),
            state: s.state,
            pid: s.pid,
            uptime_ms: s.uptime_ms,
            restarts: s.restarts,
            last_exit: s.last_exit,
            next_restart_ms: s.next_restart_ms,
            spawn_error: s.spawn_error,
            start_limit_hit: s.start_limit_hit,
        }
    }

    /// Why it failed or backs off, short (a table cell): `start-limit after exec ENOENT`,
    /// `exec ENOENT`, `start-limit`, or `-`.
    fn cause(&self) -> String {
        match (self.start_limit_hit, self.spawn_error) {
            (true, Some(e)) => format!("start-limit after {}", spawn_text(e)),
            (true, None) => "start-limit".into(),
            (false, Some(e)) => spawn_text(e),
            (false, None) => "-".into(),
        }
    }

    /// Why it failed, in a sentence (`--wait` messages).
    fn cause_sentence(&self) -> String {
        let last = match (self.spawn_error, self.last_exit) {
            (Some(e), _) => format!("its last start failed: {}", spawn_sentence(e)),
            (None, Some(exit)) => format!("its last process exited with {}", exit_text(Some(exit))),
            (None, None) => String::new(),
        };
        match (self.start_limit_hit, last.is_empty()) {
            (true, true) => "it hit its start limit".into(),
            (true, false) => format!("it hit its start limit; {last}"),
            (false, _) => last,
        }
    }
}

/// `exec ENOENT`; a stage alone when there is no errno (a timeout).
fn spawn_text(e: SpawnError) -> String {
    match (e.errno, holden::sys::errno::name(e.errno)) {
        (0, _) => e.stage.as_str().to_string(),
        (_, Some(name)) => format!("{} {name}", e.stage.as_str()),
        (errno, None) => format!("{} errno {errno}", e.stage.as_str()),
    }
}

/// `exec ENOENT (No such file or directory)`.
fn spawn_sentence(e: SpawnError) -> String {
    if e.errno == 0 {
        return format!(
            "{} (no errno: the request timed out or was refused)",
            e.stage.as_str()
        );
    }
    format!(
        "{} ({})",
        spawn_text(e),
        holden::sys::errno::Strerror(e.errno)
    )
}

fn json_spawn_error(error: Option<SpawnError>) -> String {
    let Some(e) = error else {
        return "null".into();
    };
    let name = holden::sys::errno::name(e.errno);
    let text = if e.errno == 0 {
        None
    } else {
        Some(holden::sys::errno::Strerror(e.errno).to_string())
    };
    format!(
        "{{\"stage\":\"{}\",\"errno\":{},\"errno_name\":{},\"error\":{}}}",
        e.stage.as_str(),
        e.errno,
        name.map_or("null".into(), json_str),
        text.as_deref().map_or("null".into(), json_str)
    )
}

struct Style {
    colour: bool,
}

impl Style {
    fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn state(&self, state: StateCode, padded: &str) -> String {
        if !self.colour {
            return padded.to_string();
        }
        let code = match state {
            StateCode::Running => "32",
            StateCode::Failed => "31;1",
            StateCode::Stopped => "0",
            _ => "33",
        };
        format!("\x1b[{code}m{padded}\x1b[0m")
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

fn exit_text(exit: Option<Exit>) -> String {
    match exit {
        None => "-".into(),
        Some(Exit::Code(code)) => format!("code {code}"),
        Some(Exit::Signal(sig)) => format!("signal {}", holden::pidfd::signal_name(sig)),
        Some(Exit::Unknown) => "unknown".into(),
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn json_exit(exit: Option<Exit>) -> String {
    match exit {
        None => "null".into(),
        Some(Exit::Code(code)) => format!("{{\"code\":{code}}}"),
        Some(Exit::Signal(sig)) => format!(
            "{{\"signal\":{}}}",
            json_str(&holden::pidfd::signal_name(sig).to_string())
        ),
        Some(Exit::Unknown) => "\"unknown\"".into(),
    }
}

fn status_json(s: &Owned) -> String {
    format!(
        "{{\"name\":{},\"type\":\"{}\",\"partition\":\"{}\",\"state\":\"{}\",\"pid\":{},\"uptime_ms\":{},\"ready_ms\":{},\"restarts\":{},\"last_exit\":{},\"next_restart_ms\":{},\"result\":{},\"spawn_error\":{},\"status\":{}}}",
        json_str(&s.name),
        s.kind.as_str(),
        s.partition,
        s.state.as_str(),
        json_opt(s.pid),
        json_opt(s.uptime_ms),
        json_opt(s.ready_ms),
        s.restarts,
        json_exit(s.last_exit),
        json_opt(s.next_restart_ms),
        if s.start_limit_hit { "\"start-limit\"" } else { "null" },
        json_spawn_error(s.spawn_error),
        if s.status.is_empty() {
            "null".to_string()
        } else {
            json_str(&s.status)
        }
    )
}

fn print_table(rows: &[Owned], style: &Style) {
    let header = [
        "NAME",
        "PARTITION",
        "STATE",
        "PID",
        "UPTIME",
        "READY IN",
        "RESTARTS",
        "LAST EXIT",
        "NEXT RESTART",
        "CAUSE",
        "STATUS",
    ];
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.partition.to_string(),
                s.state.as_str().to_string(),
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.uptime_ms.map_or("-".into(), human_ms),
                s.ready_ms.map_or("-".into(), human_ms),
                s.restarts.to_string(),
                exit_text(s.last_exit),
                s.next_restart_ms
                    .map_or("-".into(), |ms| format!("in {}", human_ms(ms))),
                s.cause(),
                if s.status.is_empty() {
                    "-".into()
                } else {
                    s.status
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String], state: Option<StateCode>| {
        let mut parts = Vec::new();
        for (i, cell) in row.iter().enumerate() {
            let last = i == row.len() - 1;
            let padded = if last {
                cell.clone()
            } else {
                format!("{cell:<width$}", width = widths[i])
            };
            parts.push(match (i, state) {
                (2, Some(state)) => style.state(state, &padded),
                _ => padded,
            });
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(String::from), None);
    for (row, s) in cells.iter().zip(rows) {
        line(&mut out, row, Some(s.state));
    }
    print!("{out}");
}

fn cmd_status(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    let mut rows = Vec::new();
    if cli.names.is_empty() {
        client.status(None, |s| rows.push(Owned::of(s)))?;
    } else {
        rows = client.known(&cli.names)?;
    }
    if cli.json {
        let items: Vec<String> = rows.iter().map(status_json).collect();
        println!("[{}]", items.join(","));
    } else {
        print_table(&rows, &Style::detect());
    }
    Ok(EXIT_OK)
}

/// Whether a service reached the target of `command` (`Err` when it cannot any more).
fn reached(command: &str, before: &Owned, now: &Owned) -> Result<bool, String> {
    let failed = now.state == StateCode::Failed;
    match command {
        "start" | "restart" => {
            if failed {
                let cause = now.cause_sentence();
                return Err(if cause.is_empty() {
                    format!("{} failed", now.name)
                } else {
                    format!("{} failed: {cause}", now.name)
                });
            }
            if now.kind == TypeCode::Oneshot {
                // Done: the command started it (the answer was not `stopped`), and it has
                // exited 0 since.
                let started = before.after_command != Some(StateCode::Stopped);
                let done = now.state == StateCode::Stopped && now.last_exit == Some(Exit::Code(0));
                return Ok(started && done);
            }
            let new_process =
                command == "start" || now.pid != before.pid || before.state != StateCode::Running;
            Ok(now.state == StateCode::Running && new_process)
        }
        "stop" => Ok(matches!(now.state, StateCode::Stopped | StateCode::Failed)),
        "reset-failed" => Ok(now.state == StateCode::Stopped),
        "kill" => Ok(before.pid.is_none() || now.pid != before.pid),
        _ => Ok(true),
    }
}

fn cmd_operate(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    let op = match cli.command.as_str() {
        "start" => Op::Start,
        "stop" => Op::Stop,
        "restart" => Op::Restart,
        "kill" => Op::Kill(cli.signal),
        _ => Op::ResetFailed,
    };
    let mut code = EXIT_OK;
    let mut waiting = Vec::new();
    // Every name is checked first: an unknown one fails the command before anything is done.
    for before in client.known(&cli.names)? {
        let len = client.request(&Body::Command {
            op,
            name: &before.name,
        })?;
        match client.frame(len) {
            Ok(Body::Done(state)) => {
                if cli.wait {
                    waiting.push(Owned {
                        after_command: Some(state),
                        ..before
                    });
                }
            }
            Ok(other) => return Err(unexpected(&other)),
            Err(f) if f.code == EXIT_UNKNOWN || f.code == EXIT_FAILED => {
                eprintln!("holdenctl: {}", f.message);
                code = code.max(f.code);
            }
            Err(f) => return Err(f),
        }
    }
    let deadline = Instant::now() + cli.timeout;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for before in waiting {
            let now = client.one(&before.name)?;
            match reached(&cli.command, &before, &now) {
                Ok(true) => {}
                Ok(false) => still.push(before),
                Err(message) => {
                    eprintln!("holdenctl: {message}");
                    code = code.max(EXIT_FAILED);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for before in &waiting {
                let now = client.one(&before.name)?;
                let cause = match now.spawn_error {
                    Some(e) => format!("; its last start failed: {}", spawn_sentence(e)),
                    None => String::new(),
                };
                eprintln!(
                    "holdenctl: {}: timed out after {} waiting for {} (state {}{cause})",
                    before.name,
                    holden::config::format_duration(cli.timeout),
                    cli.command,
                    now.state.as_str()
                );
            }
            code = code.max(EXIT_FAILED);
            break;
        }
        std::thread::sleep(WAIT_POLL);
    }
    Ok(code)
}

fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs() % 86400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s % 3600) / 60,
        s % 60,
        now.subsec_millis()
    )
}

fn why_text(why: Why) -> String {
    match why {
        Why::Spawned(0) => "spawned pid=unknown".to_string(),
        Why::Spawned(pid) => format!("spawned pid={pid}"),
        Why::Adopted(pid) => format!("adopted pid={pid}"),
        Why::SpawnFailed(e) => format!("spawn-failed {}", spawn_text(e)),
        Why::Exited(exit) => format!("exited {}", exit_text(Some(exit))),
        other => other.as_str().to_string(),
    }
}

fn event_line(e: &EventInfo<'_>, json: bool, style: &Style) -> String {
    if json {
        let detail = match e.why {
            Why::Spawned(pid) => format!(",\"spawned_pid\":{}", json_opt((pid > 0).then_some(pid))),
            Why::Adopted(pid) => format!(",\"adopted_pid\":{pid}"),
            Why::SpawnFailed(e) => format!(",\"spawn_error\":{}", json_spawn_error(Some(e))),
            Why::Exited(exit) => format!(",\"exit\":{}", json_exit(Some(exit))),
            _ => String::new(),
        };
        return format!(
            "{{\"time\":\"{}\",\"name\":{},\"partition\":\"{}\",\"from\":\"{}\",\"to\":\"{}\",\"reason\":\"{}\"{detail},\"pid\":{},\"restarts\":{},\"next_restart_ms\":{}}}",
            clock(),
            json_str(e.name),
            e.partition.as_str(),
            e.from.as_str(),
            e.to.as_str(),
            e.why.as_str(),
            json_opt(e.pid),
            e.restarts,
            json_opt(e.next_delay_ms)
        );
    }
    let mut line = format!(
        "{} {} ({}) {} -> {}  {} restarts={}",
        clock(),
        e.name,
        e.partition.as_str(),
        e.from.as_str(),
        style.state(e.to, e.to.as_str()),
        why_text(e.why),
        e.restarts
    );
    if let Some(ms) = e.next_delay_ms {
        line.push_str(&format!(" next_restart_in={}", human_ms(ms)));
    }
    line
}

fn cmd_monitor(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    // Unknown names are refused at once (a monitor would wait for them forever).
    if !cli.names.is_empty() {
        client.known(&cli.names)?;
    }
    let len = client.request(&Body::Monitor)?;
    match client.frame(len)? {
        Body::Done(_) => {}
        other => return Err(unexpected(&other)),
    }
    client.set_timeout(None);
    let style = Style::detect();
    let stdout = std::io::stdout();
    loop {
        let len = client.recv()?;
        let line = match client.frame(len)? {
            Body::Event(e) => {
                if !cli.names.is_empty() && !cli.names.iter().any(|n| n == e.name) {
                    continue;
                }
                event_line(&e, cli.json, &style)
            }
            Body::Dropped(n) if cli.json => format!("{{\"time\":\"{}\",\"dropped\":{n}}}", clock()),
            Body::Dropped(n) => {
                format!("{} dropped {n} events (holdenctl did not keep up)", clock())
            }
            other => return Err(unexpected(&other)),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(EXIT_OK);
        }
    }
}

fn agent_fields(a: &AgentInfo<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("state", a.link.as_str().to_string()),
        ("protocol", a.protocol.to_string()),
        (
            "version",
            if a.version == (0, 0) {
                "-".into()
            } else {
                format!("{}.{}", a.version.0, a.version.1)
            },
        ),
        ("capabilities", format!("{:#x}", a.capabilities)),
        ("socket", a.socket.to_string()),
        ("connects", a.connects.to_string()),
        ("reconnects", a.connects.saturating_sub(1).to_string()),
        ("drops", a.drops.to_string()),
    ]
}

fn cmd_agent(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    let len = client.request(&Body::AgentStatus)?;
    let Body::Agent(a) = client.frame(len)? else {
        return Err(fail(EXIT_UNREACHABLE, "unexpected reply to agent"));
    };
    let fields = agent_fields(&a);
    if cli.json {
        let items: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                let numeric = matches!(*k, "connects" | "reconnects" | "drops");
                if numeric {
                    format!("\"{k}\":{v}")
                } else {
                    format!("\"{k}\":{}", json_str(v))
                }
            })
            .collect();
        println!("{{{}}}", items.join(","));
    } else {
        for (k, v) in fields {
            println!("{:<13} {v}", format!("{k}:"));
        }
    }
    Ok(EXIT_OK)
}

fn cmd_stats(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    use holden::histogram;
    let len = client.request(&Body::StatsRequest)?;
    let Body::Stats(s) = client.frame(len)? else {
        return Err(fail(EXIT_UNREACHABLE, "unexpected reply to stats"));
    };
    let completions: u64 = s.stall_counts().sum();
    let q = |q: f64| histogram::quantile(s.stall_counts(), s.stall_max_ns, q);
    let (p50, p99, p999) = (q(0.5), q(0.99), q(0.999));
    if cli.json {
        let ns = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let buckets: Vec<String> = s
            .stall_counts()
            .enumerate()
            .filter(|&(_, count)| count > 0)
            .map(|(i, count)| format!("[{},{count}]", histogram::bucket_low(i)))
            .collect();
        println!(
            "{{\"completions\":{completions},\"stall_p50_ns\":{},\"stall_p99_ns\":{},\
             \"stall_p999_ns\":{},\"stall_max_ns\":{},\"stall_buckets\":[{}],\
             \"spawned_local\":{},\"spawned_qm\":{},\"spawn_failed\":{},\"exited\":{},\
             \"log_dropped\":{}}}",
            ns(p50),
            ns(p99),
            ns(p999),
            ns((completions > 0).then_some(s.stall_max_ns)),
            buckets.join(","),
            s.spawned_local,
            s.spawned_qm,
            s.spawn_failed,
            s.exited,
            s.log_dropped
        );
        return Ok(EXIT_OK);
    }
    let us = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1} µs", v as f64 / 1e3));
    println!("loop completions:  {completions}");
    println!(
        "loop stall:        p50 {}, p99 {}, p99.9 {}, max {}",
        us(p50),
        us(p99),
        us(p999),
        us((completions > 0).then_some(s.stall_max_ns))
    );
    println!(
        "spawned:           {} local, {} qm ({} failed)",
        s.spawned_local, s.spawned_qm, s.spawn_failed
    );
    println!("exits:             {}", s.exited);
    println!("log lines dropped: {}", s.log_dropped);
    Ok(EXIT_OK)
}

/// A service's output line for a terminal: valid UTF-8 as is, control characters (but tab)
/// and bytes that are not UTF-8 as `\xNN`, so that a service cannot drive the terminal.
fn output_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn log_line_text(l: &proto::LogLineInfo<'_>, json: bool) -> String {
    if json {
        return format!(
            "{{\"seq\":{},\"stream\":\"{}\",\"priority\":{},\"truncated\":{},\"text\":{}}}",
            l.seq,
            l.stream.as_str(),
            l.priority,
            l.truncated,
            json_str(&String::from_utf8_lossy(l.text))
        );
    }
    let stream = match l.stream {
        proto::StreamCode::Stdout => "",
        proto::StreamCode::Stderr => "stderr: ",
    };
    let cut = if l.truncated { " [cut]" } else { "" };
    format!("{stream}{}{cut}", output_text(l.text))
}

fn cmd_logs(client: &mut Client, cli: &Cli) -> Result<u8, Fail> {
    let name = &cli.names[0];
    let len = client.request(&Body::Logs {
        name,
        lines: cli.lines,
        follow: cli.follow,
    })?;
    let stats = match client.frame(len)? {
        Body::LogStats(stats) => stats,
        other => return Err(unexpected(&other)),
    };
    if cli.json {
        println!(
            "{{\"service\":{},\"lines\":{},\"dropped\":{},\"first_seq\":{},\"next_seq\":{}}}",
            json_str(name),
            stats.lines,
            stats.dropped,
            stats.first_seq,
            stats.next_seq
        );
    }
    if cli.follow {
        client.set_timeout(None);
    }
    let stdout = std::io::stdout();
    loop {
        let len = client.recv()?;
        let line = match client.frame(len)? {
            Body::LogLine(l) => log_line_text(&l, cli.json),
            Body::Dropped(n) if cli.json => format!("{{\"missed\":{n}}}"),
            Body::Dropped(n) => {
                format!("-- {n} lines missed (overwritten before they were sent) --")
            }
            Body::End(_) => break,
            other => return Err(unexpected(&other)),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(EXIT_OK);
        }
    }
    if stats.dropped > 0 && !cli.json {
        eprintln!(
            "holdenctl: {name}: {} of its {} lines were not forwarded (over the rate limit, or a full journal socket)",
            stats.dropped, stats.lines
        );
    }
    Ok(EXIT_OK)
}

fn cmd_reload(client: &mut Client) -> Result<u8, Fail> {
    let len = client.request(&Body::Reload)?;
    let Body::Reloaded(r) = client.frame(len)? else {
        return Err(fail(EXIT_UNREACHABLE, "unexpected reply to reload"));
    };
    println!(
        "reloaded: {} added, {} removed, {} changed, {} unchanged",
        r.added, r.removed, r.changed, r.unchanged
    );
    if !r.needs_restart.is_empty() {
        println!(
            "changed but applied only after a restart of the orchestrator: {}",
            r.needs_restart
        );
    }
    Ok(EXIT_OK)
}

fn cmd_reexec(client: &mut Client) -> Result<u8, Fail> {
    let len = client.request(&Body::Reexec)?;
    let Body::Reexecuted(r) = client.frame(len)? else {
        return Err(fail(EXIT_UNREACHABLE, "unexpected reply to reexec"));
    };
    println!(
        "re-executed in {}.{:03} ms (re-exec {} of this orchestrator); processes taken over: {}",
        r.took_us / 1_000,
        r.took_us % 1_000,
        r.generation,
        r.adopted
    );
    Ok(EXIT_OK)
}

fn run(cli: &Cli) -> Result<u8, Fail> {
    let mut client = Client::connect(&cli.socket)?;
    match cli.command.as_str() {
        "status" => cmd_status(&mut client, cli),
        "monitor" => cmd_monitor(&mut client, cli),
        "agent" => cmd_agent(&mut client, cli),
        "stats" => cmd_stats(&mut client, cli),
        "reload" => cmd_reload(&mut client),
        "reexec" => cmd_reexec(&mut client),
        "logs" => cmd_logs(&mut client, cli),
        _ => cmd_operate(&mut client, cli),
    }
}

fn main() -> ExitCode {
    let env_socket = std::env::var_os(SOCKET_ENV);
    let cli = match parse(std::env::args_os().skip(1), env_socket) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("holdenctl {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(Usage(message)) => {
            eprintln!("holdenctl: {message} (see holdenctl --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("holdenctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn parse_strs(list: &[&str]) -> Result<Parsed, Usage> {
        parse(list.iter().map(OsString::from), None)
    }

    fn cli(list: &[&str]) -> Cli {
        match parse_strs(list) {
            Ok(Parsed::Run(cli)) => cli,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    fn usage(list: &[&str]) -> String {
        match parse_strs(list) {
            Err(Usage(message)) => message,
            other => panic!("{list:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_the_socket_sources() {
        let c = cli(&["status"]);
        assert_eq!(c.socket, PathBuf::from(SOCKET_DEFAULT));
        assert_eq!(c.timeout, WAIT_TIMEOUT_DEFAULT);
        assert_eq!(c.signal, libc::SIGTERM as u8);
        assert!(!c.json && !c.wait && c.names.is_empty());
        let from_env = |env: &str| match parse(["status"].map(OsString::from), Some(env.into())) {
            Ok(Parsed::Run(cli)) => cli.socket,
            other => panic!("{other:?}"),
        };
        assert_eq!(from_env("/e.sock"), PathBuf::from("/e.sock"));
        assert_eq!(from_env(""), PathBuf::from(SOCKET_DEFAULT));
        match parse(
            ["--socket", "/o.sock", "status"].map(OsString::from),
            Some("/e".into()),
        ) {
            Ok(Parsed::Run(cli)) => assert_eq!(cli.socket, PathBuf::from("/o.sock")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_separate_or_joined() {
        for list in [
            &[
                "--socket",
                "/s",
                "kill",
                "-s",
                "KILL",
                "a",
                "--timeout",
                "5s",
            ][..],
            &["--socket=/s", "kill", "-sKILL", "a", "--timeout=5s"],
            &["kill", "a", "--signal=9", "--socket=/s", "--timeout=5s"],
            &[
                "kill",
                "--signal",
                "SIGKILL",
                "a",
                "--socket",
                "/s",
                "--timeout",
                "5s",
            ],
            &["kill", "-s=KILL", "a", "--socket=/s", "--timeout", "5s"],
        ] {
            let c = cli(list);
            assert_eq!(c.socket, PathBuf::from("/s"), "{list:?}");
            assert_eq!(c.signal, libc::SIGKILL as u8, "{list:?}");
            assert_eq!(c.timeout, Duration::from_secs(5), "{list:?}");
            assert_eq!(
                (c.command.as_str(), &c.names[..]),
                ("kill", &["a".to_string()][..])
            );
        }
        // Given twice: the last one counts.
        assert_eq!(
            cli(&["--socket=/a", "--socket=/b", "status"]).socket,
            PathBuf::from("/b")
        );
    }

    #[test]
    fn double_dash_ends_the_options() {
        let c = cli(&["status", "--json", "--", "-dash", "--wait"]);
        assert!(c.json && !c.wait);
        assert_eq!(c.names, ["-dash", "--wait"]);
        assert_eq!(cli(&["--", "stop", "-x"]).names, ["-x"]);
        assert!(usage(&["--", "--help"]).contains("unknown command \"--help\""));
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse_strs(&["--help"]), Ok(Parsed::Help(text)) if text == USAGE));
        assert!(matches!(parse_strs(&["-h"]), Ok(Parsed::Help(text)) if text == USAGE));
        assert!(
            matches!(parse_strs(&["kill", "--help"]), Ok(Parsed::Help(text)) if text.starts_with("usage: holdenctl kill"))
        );
        assert!(matches!(parse_strs(&["--version"]), Ok(Parsed::Version)));
        assert!(matches!(parse_strs(&["status", "-V"]), Ok(Parsed::Version)));
        assert!(parse_strs(&["--bogus", "--help"]).is_err());
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert_eq!(usage(&[]), "no command given");
        assert_eq!(usage(&["--socket"]), "--socket needs a value");
        assert_eq!(usage(&["status", "--timeout"]), "--timeout needs a value");
        assert_eq!(usage(&["kill", "a", "-s"]), "-s needs a value");
        assert_eq!(usage(&["status", "--bogus"]), "unknown option \"--bogus\"");
        assert_eq!(usage(&["status", "-x"]), "unknown option \"-x\"");
        assert_eq!(usage(&["status", "--json=yes"]), "--json takes no value");
        assert_eq!(usage(&["frobnicate"]), "unknown command \"frobnicate\"");
        assert_eq!(usage(&["start"]), "start needs a service NAME");
        assert_eq!(usage(&["kill", "a", "b"]), "kill takes exactly one NAME");
        assert_eq!(usage(&["reload", "a"]), "reload takes no NAME");
        assert_eq!(
            usage(&["stop", "-sKILL", "a"]),
            "-s/--signal is for kill only"
        );
        assert!(usage(&["kill", "-s", "NOPE", "a"]).starts_with("signal \"NOPE\""));
        assert!(usage(&["start", "a", "--timeout=5parsecs"]).starts_with("--timeout \"5parsecs\""));
        assert!(usage(&["status", &"n".repeat(proto::NAME_LEN_MAX + 1)]).contains("must be 1..="));
    }

    #[test]
    fn the_socket_path_need_not_be_utf8_but_names_and_values_must_be() {
        let path = OsString::from_vec(b"/run/\xff/control.sock".to_vec());
        let mut joined = OsString::from("--socket=");
        joined.push(&path);
        for list in [
            vec!["--socket".into(), path.clone(), "status".into()],
            vec![joined, "status".into()],
        ] {
            match parse(list, None) {
                Ok(Parsed::Run(cli)) => assert_eq!(cli.socket, PathBuf::from(&path)),
                other => panic!("{other:?}"),
            }
        }
        let bad = || OsString::from_vec(b"\xff".to_vec());
        let cases = [
            (
                vec!["status".into(), bad()],
                "service name \"\\xFF\" is not UTF-8",
            ),
            (vec![bad()], "unknown command \"\\xFF\""),
            (
                vec!["start".into(), "a".into(), "--timeout".into(), bad()],
                "--timeout \"\\xFF\": not UTF-8",
            ),
            (
                vec!["kill".into(), "a".into(), "-s".into(), bad()],
                "-s \"\\xFF\": not UTF-8",
            ),
        ];
        for (list, expected) in cases {
            match parse(list, None) {
                Err(Usage(message)) => assert_eq!(message, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}
