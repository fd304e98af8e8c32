//! systemd's fd store, with this test as systemd: the orchestrator runs with `NOTIFY_SOCKET`
//! and `FDSTORE` pointing at a datagram socket the test reads, stores each service's pidfd
//! there (`FDSTORE=1`, `FDNAME=pid.<name>`, `FDPOLL=0`) and removes it when the process ends;
//! after a `kill -9` the next instance is started the way systemd starts it, with the stored
//! fds from fd 3 on, `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`, and takes every service
//! over by its pidfd, with no state record to read. What systemd itself does with the store
//! is tested in `tests/systemd_unit.rs` (systemd 252); the messages are the ones
//! `sd_notify(3)` documents. One test in this file: the stored fds are made inheritable for the next
//! instance, and no other test's children may inherit them.

mod orchestrator_support;

use holden::sys::socket;
use orchestrator_support::{
    alive, config_header, holdenctl, kill, pids_with, service, sleep_marker, wait_until, Orch, Qm,
    TempDir,
};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The fake fd store, as systemd keeps it: (name, fd) entries, several may share a name;
/// and every message received.
#[derive(Default)]
struct Store {
    fds: Vec<(String, OwnedFd)>,
    messages: Vec<String>,
}

impl Store {
    /// The pids (our namespace; -1 once ended) of the pidfds stored under `name`.
    fn pids(&self, name: &str) -> Vec<i32> {
        self.fds
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, fd)| holden::pidfd::identity(fd.as_fd()).map_or(-1, |i| i.pid))
            .collect()
    }
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Reads notifications until the socket is closed by the test's end.
fn serve(socket: UnixDatagram, store: Arc<Mutex<Store>>) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok(Some(mut got)) = socket::recv_with_fds(socket.as_fd(), &mut buf, false, true) else {
            return;
        };
        let text = String::from_utf8_lossy(&buf[..got.len]).to_string();
        let mut store = store.lock().unwrap();
        if text.contains("FDSTORE=1") {
            assert_eq!(field(&text, "FDPOLL"), Some("0"), "{text}");
            let name = field(&text, "FDNAME").expect("FDNAME").to_string();
            let fd = got.fds.pop().expect("an fd with FDSTORE=1");
            if name.starts_with("pid.") {
                assert!(holden::pidfd::is_pidfd(fd.as_fd()), "{text}: not a pidfd");
            }
            store.fds.push((name, fd));
        } else if text.contains("FDSTOREREMOVE=1") {
            let name = field(&text, "FDNAME").expect("FDNAME");
            store.fds.retain(|(n, _)| n != name);
        }
        store.messages.push(text);
    }
}

#[test]
fn a_restart_takes_every_service_over_from_systemd_s_fd_store() {
    let dir = TempDir::new("fd-store");
    let marker = sleep_marker("1200");
    let qm = Qm::start(&dir, "");
    let notify_path = dir.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let server = {
        let (notify, store) = (notify.try_clone().unwrap(), Arc::clone(&store));
        std::thread::spawn(move || serve(notify, store))
    };
    let crash = "sleep 0.05; exit 3";
    let talker = "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done";
    let config = format!(
        "runtime_dir = {:?}\n{}{}{}{}{}",
        dir.path("run").display().to_string(),
        config_header(&qm.socket),
        service("a", "local", &["/bin/sleep", &marker], ""),
        service("talk", "local", &["/bin/sh", "-c", talker, &marker], "stdout = \"log\""),
        service("crash", "local", &["/bin/sh", "-c", crash, &marker], "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"1s\" }"),
        service("q", "qm", &["/bin/sleep", &marker], "")
    );
    let path = dir.path("o.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(orchestrator_support::orchestrator_bin());
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("FDSTORE", "32");
    let first = Orch::spawn_logged(&dir, cmd, "first");
    first.wait_lines(&["service=crash ", "reason=spawned"], 6);
    let stored = |names: &[&str]| {
        let store = store.lock().unwrap();
        names.iter().all(|n| store.fds.iter().any(|(m, _)| m == n))
    };
    wait_until("a, talk and q stored, and talk's pipe", || {
        stored(&[
            "pid.a",
            "pid.q",
            "pid.talk",
            "out.talk.stdout.r",
            "out.talk.stdout.w",
        ])
        .then_some(())
    });
    let control = dir.path("control.sock");
    let pid_of = |name: &str| -> i32 {
        let out = holdenctl(&control, &["status", name, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split("\"pid\":")
            .nth(1)
            .unwrap()
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a, q, talk) = (pid_of("a"), pid_of("q"), pid_of("talk"));
    // The store holds exactly each service's live process (the crash loop's messages come in
    // bursts; one the socket did not take is sent again).
    wait_until("one pidfd per service, the live one", || {
        let store = store.lock().unwrap();
        [("pid.a", a), ("pid.q", q), ("pid.talk", talk)]
            .iter()
            .all(|(name, pid)| store.pids(name) == [*pid])
            .then_some(())
    });
    first.kill_9();
    // Nothing but the fd store carries the services: the record is removed (and with it
    // counters and backoff, which only the record holds).
    std::fs::remove_file(dir.path("run/state")).unwrap();
    // systemd's start: the stored fds on 3, 4, ... and LISTEN_* naming them.
    let (names, fds): (Vec<String>, Vec<OwnedFd>) = {
        let mut store = store.lock().unwrap();
        std::mem::take(&mut store.fds).into_iter().unzip()
    };
    assert!(names.contains(&"pid.a".to_string()) && names.contains(&"pid.q".to_string()));
    // The child puts them on 3, 4, ... before it execs sh, which sets LISTEN_PID to its own
    // pid and execs the orchestrator (the same pid, as systemd's child does).
    let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    assert!(raw.len() <= 64, "{names:?}");
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$0\" \"$@\"",
        fds.len(),
        names.join(":")
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&script)
        .arg(orchestrator_support::orchestrator_bin())
        .arg("--config")
        .arg(&path)
        .arg("--runtime-dir")
        .arg(dir.path("run"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("FDSTORE", "32");
    // SAFETY: in the child before exec, only async-signal-safe calls (fcntl, dup2, close) on
    // fds the child inherited: each out of the way above 512 first (a target number may still
    // hold a source), then onto 3, 4, ... without close-on-exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let mut high = [0i32; 64];
            for (i, &fd) in raw.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 512);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..raw.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut second = Orch::spawn_logged(&dir, cmd, "second");
    drop(fds);
    let summary = second.wait_lines(&["event=carried-over"], 1).remove(0);
    // a, talk and q by their pidfds (crash's, if stored, may be of a process that ended).
    let by_pidfd: usize = summary
        .split("by_kept_pidfd=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("by_kept_pidfd");
    assert!(by_pidfd >= 3, "{summary}\n{}", second.log());
    assert!(summary.contains("found_by_tag=0"), "{summary}");
    for (name, pid) in [("a", a), ("q", q), ("talk", talk)] {
        let taken = second.lines_with(&[&format!("service={name} "), "event=found-by-pidfd"]);
        assert_eq!(taken.len(), 1, "{name}: {}", second.log());
        assert!(taken[0].contains(&format!("pid={pid} ")), "{}", taken[0]);
        assert_eq!(pid_of(name), pid, "{name} kept its process");
        assert!(alive(pid));
    }
    assert!(second
        .lines_with(&["service=a ", "reason=spawned"])
        .is_empty());
    assert!(second
        .lines_with(&["service=q ", "reason=spawned"])
        .is_empty());
    // talk wrote on into its pipe, which the second instance reads: the same process, never
    // ended by SIGPIPE.
    let said = second.wait_lines(&["service=talk ", "event=output"], 10);
    assert!(
        said.iter().all(|l| l.contains(&format!("pid={talk} "))),
        "{said:?}"
    );
    assert!(second
        .lines_with(&["service=talk ", "reason=spawned"])
        .is_empty());
    assert!(second.lines_with(&["service=talk ", "SIGPIPE"]).is_empty());
    // The crash loop runs on, storing and removing; a clean stop empties the store.
    second.wait_lines(&["service=crash ", "reason=spawned"], 3);
    second.stop(libc::SIGTERM);
    // After a clean stop no entry is of a live process (what is left goes when systemd stops
    // the unit, or is replaced at the next start).
    {
        let store = store.lock().unwrap();
        for name in ["pid.a", "pid.q", "pid.talk", "pid.crash"] {
            assert!(
                store.pids(name).iter().all(|&p| p <= 0),
                "{name}: {:?}",
                store.pids(name)
            );
        }
        assert!(store.messages.iter().any(|m| m == "READY=1"));
    }
    for pid in [a, q, talk] {
        assert!(!alive(pid));
    }
    for pid in pids_with(&marker) {
        kill(pid, libc::SIGKILL);
    }
    // The server thread stays blocked on its socket until the test process ends.
    drop(server);
    drop(qm);
}
