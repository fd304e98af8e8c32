//! holden-agent in a cgroup of its own (as QM's, delegated): a `Start` with `CGROUP` and
//! `CGROUP_LIMITS` (wire 1.2, docs/wire.md §5b) gets its limits written into the cgroup the
//! agent makes for it, or, where the controller cannot be had (this hybrid host's unified
//! hierarchy offers none of them), an `Error` that names the controller, with nothing started.
//! A host without a writable cgroup2 mount skips (and says so on stderr).

mod common;

use common::*;
use holden::cgroup::{CgroupLimit, CgroupLimits};
use holden::wire::v1::{encode_start, ErrorStage, StartFlags, StartRef, FRAME_LEN_MAX};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;

/// A cgroup of this test's own under the cgroup2 mount, removed on drop with what the agent
/// made below it (the agent is ended first: declare it after this).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Option<Cgroup> {
        let mount = holden::cgroup::mount_point()?;
        let path = mount.join(format!("holden-agent-test-{tag}-{}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => Some(Cgroup(path)),
            Err(e) => {
                eprintln!(
                    "skipped: cannot create a cgroup under {}: {e}",
                    mount.display()
                );
                None
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let services = self.0.join("services");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&services)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        dirs.extend([services, self.0.join("agent"), self.0.clone()]);
        for dir in &dirs {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let deadline = std::time::Instant::now() + WAIT;
            while std::fs::remove_dir(dir).is_err() && dir.exists() {
                if std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn limits_go_into_the_processes_cgroup_or_the_start_is_refused_naming_the_controller() {
    let Some(cgroup) = Cgroup::new("limits") else {
        return;
    };
    let dir = TempDir::new("cg-limits");
    let socket = dir.join("agent.sock");
    // The shell moves itself into the cgroup, then becomes the agent: alone there, as in QM.
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(format!(
        "echo $$ > '{}/cgroup.procs' && exec '{AGENT}' --socket '{}'",
        cgroup.0.display(),
        socket.display()
    ));
    let agent = Agent::launch(&dir, command, &socket);
    let services = cgroup.0.join("services");
    // The controller a QM service's memory limit needs, as the agent's cgroup offers it.
    let offered = std::fs::read_to_string(cgroup.0.join("cgroup.controllers")).unwrap();
    let has_memory = offered.split_whitespace().any(|c| c == "memory");

    let mut limits = CgroupLimits::default();
    limits
        .limits
        .push(CgroupLimit::new("memory_max", "33554432").unwrap());
    let argv: &[&[u8]] = &[b"/bin/sleep", b"3600"];
    let start = StartRef {
        argv,
        env: &[] as &[&[u8]],
        cwd: None,
        uid: None,
        gid: None,
        flags: StartFlags::CGROUP | StartFlags::CGROUP_LIMITS,
        cgroup: Some(b"lim"),
        exec: None,
        cgroup_limits: Some(&limits),
    };
    let mut buf = vec![0u8; FRAME_LEN_MAX];
    let len = encode_start(&mut buf, 1, &start).unwrap();
    let client = V1Client::connect(&socket);
    client.send(&buf[..len]);
    let procs =
        || std::fs::read_to_string(services.join("lim").join("cgroup.procs")).unwrap_or_default();
    match client.outcome(1) {
        Outcome::Started { pid, pidfd } if has_memory => {
            let written = std::fs::read_to_string(services.join("lim").join("memory.max")).unwrap();
            assert_eq!(written.trim(), "33554432");
            assert_eq!(procs().trim(), pid.to_string());
            holden::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        }
        Outcome::Error { stage, errno, text } if !has_memory => {
            assert_eq!(
                (stage, errno),
                (ErrorStage::Setup, libc::EOPNOTSUPP),
                "{text}"
            );
            assert!(text.contains("memory_max"), "{text}");
            assert!(text.contains("controller `memory`"), "{text}");
            assert_eq!(
                procs().trim(),
                "",
                "a process was started without its limit"
            );
        }
        other => panic!(
            "{} offers {offered:?}: {other:?}\n{}",
            cgroup.0.display(),
            agent.log()
        ),
    }
    // A start without limits into the same agent still works (nothing was left half done).
    let plain = StartRef {
        flags: StartFlags::CGROUP,
        cgroup_limits: None,
        cgroup: Some(b"plain"),
        ..start
    };
    let len = encode_start(&mut buf, 2, &plain).unwrap();
    client.send(&buf[..len]);
    match client.outcome(2) {
        Outcome::Started { pidfd, .. } => {
            holden::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        }
        other => panic!("{other:?}\n{}", agent.log()),
    }
    drop(agent);
}
