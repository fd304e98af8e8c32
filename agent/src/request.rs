//! From a decoded start request to a filled [`SpawnSpec`], and from a
//! [`SpawnError`] to the wire's error stage and a text that names what failed.

use std::fmt;

use holden::spawn::{SpawnError, SpawnLimits, SpawnSpec, SpawnStage, SpecError};
use holden::wire::v02;
use holden::wire::v1::{self, ErrorStage, StartFlags};

use crate::env::{entry_name, InheritedEnv};
use crate::text::{Errno, Escaped};

/// Capacity of the agent's one reusable spec: the largest v1 or v0.2 start,
/// plus the captured environment for `INHERIT_ENV`. A decoded frame's strings
/// (each with a 2-byte length prefix on the wire, a 1-byte NUL here) always
/// fit in `FRAME_LEN_MAX` bytes.
pub fn spec_limits(inherited: &InheritedEnv) -> SpawnLimits {
    SpawnLimits {
        args_count_max: v1::ARGV_COUNT_MAX.max(v02::ARGV_COUNT_MAX),
        // + the agent's own NOTIFY_SOCKET entry.
        env_count_max: v1::ENV_COUNT_MAX + inherited.len() + 1,
        strings_bytes_max: v1::FRAME_LEN_MAX.max(v02::FRAME_LEN_MAX)
            + inherited.bytes()
            + "NOTIFY_SOCKET=".len()
            + crate::limits::SOCKET_PATH_BYTES_MAX
            + 1,
    }
}

/// Fills `spec` from a v1 `Start`. With `INHERIT_ENV` the agent's captured
/// environment comes first, without the names the request sets itself.
/// With `NOTIFY`, `notify` (the agent's `NOTIFY_SOCKET=PATH`) replaces any
/// `NOTIFY_SOCKET` of either. `NEW_SESSION` needs nothing: every child gets its
/// own session.
pub fn fill_v1(
    spec: &mut SpawnSpec,
    start: &v1::Start<'_>,
    inherited: &InheritedEnv,
    notify: Option<&[u8]>,
) -> Result<(), SpecError> {
    let notify = notify.filter(|_| start.flags.contains(StartFlags::NOTIFY));
    let replaced = |entry: &[u8]| notify.is_some() && entry_name(entry) == b"NOTIFY_SOCKET";
    let mut w = spec.writer();
    for arg in start.argv.iter() {
        w.arg(arg)?;
    }
    if start.flags.contains(StartFlags::INHERIT_ENV) {
        for entry in inherited.iter() {
            let name = entry_name(entry);
            if !start.env.iter().any(|own| entry_name(own) == name) && !replaced(entry) {
                w.env(entry)?;
            }
        }
    }
    for entry in start.env.iter().filter(|e| !replaced(e)) {
        w.env(entry)?;
    }
    if let Some(entry) = notify {
        w.env(entry)?;
    }
    if let Some(cwd) = start.cwd {
        w.cwd(cwd)?;
    }
    w.uid(start.uid);
    w.gid(start.gid);
    w.stdio_null(start.flags.contains(StartFlags::STDIO_NULL));
    w.finish();
    // The decoder checked every value; a part the kernel refuses fails the spawn.
    if let Some(exec) = start.exec {
        spec.set_exec_env(exec.get());
    }
    Ok(())
}

/// Fills `spec` from a v0.2 START: argv from `name` and `args`, the agent's
/// environment (as v0.2 children had), program looked up in its `PATH`.
pub fn fill_v02(
    spec: &mut SpawnSpec,
    start: &v02::Start<'_>,
    inherited: &InheritedEnv,
) -> Result<(), SpecError> {
    let mut w = spec.writer();
    for arg in start.argv() {
        w.arg(arg)?;
    }
    for entry in inherited.iter() {
        w.env(entry)?;
    }
    Ok(())
}

/// The wire stage reported for a spawn failure.
pub fn wire_stage(stage: SpawnStage) -> ErrorStage {
    match stage {
        SpawnStage::Prepare => ErrorStage::Limit,
        SpawnStage::Pipe | SpawnStage::Report => ErrorStage::Internal,
        SpawnStage::Clone => ErrorStage::Fork,
        SpawnStage::Setgroups | SpawnStage::Setgid | SpawnStage::Setuid => ErrorStage::Permission,
        // Gate: the child was gone before its go-ahead, so the program did not run either.
        SpawnStage::Exec | SpawnStage::Gate => ErrorStage::Exec,
        SpawnStage::ReportFd
        | SpawnStage::Setsid
        | SpawnStage::CloseFds
        | SpawnStage::Stdin
        | SpawnStage::Stdio
        | SpawnStage::Cgroup
        | SpawnStage::Rlimit
        | SpawnStage::Nice
        | SpawnStage::Sched
        | SpawnStage::Affinity
        | SpawnStage::OomScoreAdj
        | SpawnStage::NoNewPrivs
        | SpawnStage::CapBounding
        | SpawnStage::Capabilities
        | SpawnStage::Ambient
        | SpawnStage::Chdir => ErrorStage::Setup,
    }
}

/// What a start was about: the objects a failure text names.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    /// The program (argv[0] or the path searched for).
    pub program: &'a [u8],
    pub cwd: Option<&'a [u8]>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl<'a> Subject<'a> {
    pub fn of(spec: &'a SpawnSpec) -> Subject<'a> {
        let (uid, gid) = spec.credentials();
        Subject {
            program: spec.program().unwrap_or(b""),
            cwd: spec.cwd(),
            uid,
            gid,
        }
    }
}

/// The text of a failed start: the step that failed, the object it failed on,
/// and the reason — `chdir "/srv/x": No such file or directory`,
/// `exec "/usr/bin/radio": Permission denied`, `setuid to uid 1000: Operation
/// not permitted`. Client bytes are escaped.
pub struct FailureText<'a> {
    pub error: SpawnError,
    pub subject: Subject<'a>,
}

impl fmt::Display for FailureText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = Escaped(self.subject.program);
        let reason = Errno(self.error.errno);
        let id = |id: Option<u32>| IdText(id);
        match self.error.stage {
            SpawnStage::Exec => write!(f, "exec \"{program}\": {reason}"),
            SpawnStage::Chdir => match self.subject.cwd {
                Some(dir) => write!(f, "chdir \"{}\": {reason}", Escaped(dir)),
                None => write!(f, "chdir: {reason}"),
            },
            SpawnStage::Setgroups => write!(
                f,
                "setgroups [{}] for \"{program}\": {reason}",
                id(self.subject.gid)
            ),
            SpawnStage::Setgid => write!(
                f,
                "setgid to gid {} for \"{program}\": {reason}",
                id(self.subject.gid)
            ),
            SpawnStage::Setuid => write!(
                f,
                "setuid to uid {} for \"{program}\": {reason}",
                id(self.subject.uid)
            ),
            SpawnStage::Setsid => write!(f, "setsid for \"{program}\": {reason}"),
            SpawnStage::Stdio => write!(f, "stdout/stderr for \"{program}\": {reason}"),
            SpawnStage::Cgroup => write!(f, "joining the cgroup for \"{program}\": {reason}"),
            SpawnStage::Rlimit => write!(f, "resource limits for \"{program}\": {reason}"),
            SpawnStage::Nice => write!(f, "nice for \"{program}\": {reason}"),
            // QM's seccomp profile denies sched_setscheduler (real-time scheduling belongs to
            // the safety partition): say so, as that is the likely cause inside QM.
            SpawnStage::Sched if self.error.errno == libc::EPERM => write!(
                f,
                "scheduling policy for \"{program}\": {reason} (QM's seccomp profile denies \
                 sched_setscheduler: real-time scheduling is for the host)"
            ),
            SpawnStage::Sched => write!(f, "scheduling policy for \"{program}\": {reason}"),
            SpawnStage::Affinity => write!(f, "CPU affinity for \"{program}\": {reason}"),
            SpawnStage::OomScoreAdj => write!(f, "oom_score_adj for \"{program}\": {reason}"),
            SpawnStage::NoNewPrivs => write!(f, "no_new_privs for \"{program}\": {reason}"),
            SpawnStage::CapBounding => {
                write!(f, "capability bounding set for \"{program}\": {reason}")
            }
            SpawnStage::Capabilities => write!(f, "capabilities for \"{program}\": {reason}"),
            SpawnStage::Ambient => write!(f, "ambient capabilities for \"{program}\": {reason}"),
            SpawnStage::CloseFds => {
                write!(f, "closing inherited fds for \"{program}\": {reason}")
            }
            SpawnStage::Stdin => write!(f, "stdio on /dev/null for \"{program}\": {reason}"),
            SpawnStage::ReportFd => {
                write!(
                    f,
                    "moving the report pipe above fd 2 for \"{program}\": {reason}"
                )
            }
            SpawnStage::Clone => write!(f, "clone3 (fork) for \"{program}\": {reason}"),
            SpawnStage::Pipe => write!(f, "report pipe or gate for \"{program}\": {reason}"),
            SpawnStage::Report => write!(f, "reading the report of \"{program}\": {reason}"),
            SpawnStage::Gate if self.error.errno == libc::EPIPE => write!(
                f,
                "gate of \"{program}\": the process was gone before it took its go-ahead \
                 (killed at the gate); it never called execve"
            ),
            SpawnStage::Gate => write!(f, "gate of \"{program}\": {reason}"),
            SpawnStage::Prepare => write!(f, "incomplete start of \"{program}\": {reason}"),
        }
    }
}

/// A uid or gid, or what the child used when the request named none.
struct IdText(Option<u32>);

impl fmt::Display for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("(the agent's)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holden::wire::v1::{decode, encode_start, Body, StartRef};

    #[test]
    fn failure_texts_name_what_failed() {
        let subject = Subject {
            program: b"/bin/true",
            cwd: Some(b"/no/such dir"),
            uid: Some(1000),
            gid: Some(100),
        };
        let text = |stage, errno| {
            FailureText {
                error: SpawnError::new(stage, errno),
                subject,
            }
            .to_string()
        };
        assert_eq!(
            text(SpawnStage::Chdir, libc::ENOENT),
            "chdir \"/no/such dir\": No such file or directory"
        );
        assert_eq!(
            text(SpawnStage::Exec, libc::EACCES),
            "exec \"/bin/true\": Permission denied"
        );
        assert_eq!(
            text(SpawnStage::Setuid, libc::EPERM),
            "setuid to uid 1000 for \"/bin/true\": Operation not permitted"
        );
        assert_eq!(
            text(SpawnStage::Setgid, libc::EINVAL),
            "setgid to gid 100 for \"/bin/true\": Invalid argument"
        );
        assert!(text(SpawnStage::Setgroups, libc::EPERM).starts_with("setgroups [100] "));
        assert!(
            text(SpawnStage::Clone, libc::EAGAIN).starts_with("clone3 (fork) for \"/bin/true\"")
        );
        assert!(text(SpawnStage::Gate, libc::EPIPE).contains("never called execve"));
        let none = Subject {
            program: b"x\n",
            ..Subject::default()
        };
        let chdir = FailureText {
            error: SpawnError::new(SpawnStage::Setuid, libc::EPERM),
            subject: none,
        };
        assert_eq!(
            chdir.to_string(),
            "setuid to uid (the agent's) for \"x\\x0a\": Operation not permitted"
        );
        // Every stage has a text that says which step failed.
        for stage in SpawnStage::ALL {
            assert!(!text(stage, libc::EIO).is_empty());
        }
    }

    fn start_frame(flags: StartFlags, env: &[&[u8]]) -> Vec<u8> {
        let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
        let argv: [&[u8]; 2] = [b"/bin/echo", b"hi"];
        let start = StartRef {
            argv: &argv,
            env,
            cwd: Some(b"/tmp".as_slice()),
            uid: Some(7),
            gid: None,
            flags,
            cgroup: None,
            exec: None,
            cgroup_limits: None,
        };
        let len = encode_start(&mut buf, 1, &start).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn inherit_env_merges_with_request_winning() {
        let inherited = InheritedEnv::from_pairs(vec![
            (b"PATH".to_vec(), b"/bin".to_vec()),
            (b"HOME".to_vec(), b"/root".to_vec()),
        ]);
        let frame = start_frame(
            StartFlags::INHERIT_ENV | StartFlags::STDIO_NULL,
            &[b"HOME=/x"],
        );
        let Body::Start(start) = decode(&frame).unwrap().body else {
            panic!("not a start");
        };
        let mut spec = SpawnSpec::with_limits(spec_limits(&inherited));
        fill_v1(&mut spec, &start, &inherited, None).unwrap();
        assert!(spec.is_complete());
        assert_eq!(spec.args_count(), 2);
        assert_eq!(spec.env_count(), 2);
        assert_eq!(spec.cwd(), Some(b"/tmp".as_slice()));
        assert_eq!(spec.credentials(), (Some(7), None));
        let without = start_frame(StartFlags::empty(), &[b"A=1"]);
        let Body::Start(start) = decode(&without).unwrap().body else {
            panic!("not a start");
        };
        fill_v1(&mut spec, &start, &inherited, None).unwrap();
        assert_eq!(spec.env_count(), 1);
    }

    fn env_of(spec: &SpawnSpec) -> Vec<&[u8]> {
        (0..spec.env_count())
            .filter_map(|i| spec.env_entry(i))
            .collect()
    }

    #[test]
    fn notify_replaces_every_notify_socket_and_only_with_the_flag() {
        let inherited = InheritedEnv::from_pairs(vec![
            (b"NOTIFY_SOCKET".to_vec(), b"/run/systemd/notify".to_vec()),
            (b"HOME".to_vec(), b"/root".to_vec()),
        ]);
        let ours: &[u8] = b"NOTIFY_SOCKET=/run/holden/qm_notify.sock";
        let mut spec = SpawnSpec::with_limits(spec_limits(&inherited));
        let frame = start_frame(
            StartFlags::INHERIT_ENV | StartFlags::NOTIFY,
            &[b"NOTIFY_SOCKET=/elsewhere"],
        );
        let Body::Start(start) = decode(&frame).unwrap().body else {
            panic!("not a start");
        };
        fill_v1(&mut spec, &start, &inherited, Some(ours)).unwrap();
        let env = env_of(&spec);
        assert_eq!(env, [b"HOME=/root".as_slice(), ours]);
        // Without the flag the agent's socket is not given, and the request's entry stays.
        let frame = start_frame(StartFlags::INHERIT_ENV, &[b"NOTIFY_SOCKET=/elsewhere"]);
        let Body::Start(start) = decode(&frame).unwrap().body else {
            panic!("not a start");
        };
        fill_v1(&mut spec, &start, &inherited, Some(ours)).unwrap();
        let env = env_of(&spec);
        assert_eq!(env, [b"HOME=/root".as_slice(), b"NOTIFY_SOCKET=/elsewhere"]);
    }

    #[test]
    fn largest_v1_start_fits_the_spec() {
        // Many 1-byte args and env entries up to the frame limit.
        let inherited = InheritedEnv::default();
        let args: Vec<Vec<u8>> = (0..v1::ARGV_COUNT_MAX).map(|_| b"a".to_vec()).collect();
        let env: Vec<Vec<u8>> = (0..v1::ENV_COUNT_MAX).map(|_| b"E=".to_vec()).collect();
        let long = vec![b'x'; v1::STRING_LEN_MAX];
        let mut buf = vec![0u8; v1::FRAME_LEN_MAX];
        let mut argv = args.clone();
        argv.push(long.clone());
        argv.truncate(v1::ARGV_COUNT_MAX);
        let start = StartRef {
            argv: &argv,
            env: &env,
            cwd: Some(long.as_slice()),
            uid: None,
            gid: None,
            flags: StartFlags::empty(),
            cgroup: None,
            exec: None,
            cgroup_limits: None,
        };
        let len = encode_start(&mut buf, 1, &start).unwrap();
        let Body::Start(start) = decode(&buf[..len]).unwrap().body else {
            panic!("not a start");
        };
        let mut spec = SpawnSpec::with_limits(spec_limits(&inherited));
        fill_v1(&mut spec, &start, &inherited, None).unwrap();
        assert!(spec.is_complete());
    }
}
