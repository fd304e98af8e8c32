//! systemd's fd store, with this test as systemd: the orchestrator runs with `NOTIFY_SOCKET`
//! and `FDSTORE` pointing at a datagram socket the test reads, stores each service's pidfd
//! there (`FDSTORE=1`, `FDNAME=pid.<name>`, `FDPOLL=0`) and removes it when the process ends;
//! after a `kill -9` the next instance is started the way systemd starts it, with the stored
//! fds from fd 3 on, `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`, and takes every service
//! over by its pidfd, with no state record to read. What systemd itself does with the store
//! is not tested here (no systemd on this machine); the messages are the ones `sd_notify(3)`
//! documents. One test in this file: the stored fds are made inheritable for the next
//! instance, and no other test's children may inherit them.

mod orchestrator_support;

use holden::sys::socket;
use orchestrator_support::{
    alive, config_header, holdenctl, kill, pids_with, service, sleep_marker, wait_until, Orch, Qm,
    TempDir,
};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fake fd store: name → fd, and every message received.
#[derive(Default)]
struct Store {
    fds: BTreeMap<String, OwnedFd>,
    messages: Vec<String>,
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
            assert!(holden::pidfd::is_pidfd(fd.as_fd()), "{text}: not a pidfd");
            store.fds.insert(name, fd);
        } else if text.contains("FDSTOREREMOVE=1") {
            let name = field(&text, "FDNAME").expect("FDNAME");
            assert!(store.fds.remove(name).is_some(), "{text}: never stored");
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
    let config = format!(
        "runtime_dir = {:?}\n{}{}{}{}",
        dir.path("run").display().to_string(),
        config_header(&qm.socket),
        service("a", "local", &["/bin/sleep", &marker], ""),
        service("crash", "local", &["/bin/sh", "-c", crash, &marker], "restart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit = { burst = 0, interval = \"1s\" }"),
        service("q", "qm", &["/bin/sleep", &marker], "")
    );
    let path = dir.path("o.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(orchestrator_support::orchestrator_bin());
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("FDSTORE", "8");
    let first = Orch::spawn_logged(&dir, cmd, "first");
    first.wait_lines(&["service=crash ", "reason=spawned"], 6);
    let stored = |names: &[&str]| {
        let store = store.lock().unwrap();
        names.iter().all(|n| store.fds.contains_key(*n))
    };
    wait_until("a and q stored", || {
        stored(&["pid.a", "pid.q"]).then_some(())
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
    let (a, q) = (pid_of("a"), pid_of("q"));
    first.kill_9();
    // Nothing but the fd store carries the services: the record is removed (and with it
    // counters and backoff, which only the record holds).
    std::fs::remove_file(dir.path("run/state")).unwrap();
    // systemd's start: the stored fds on 3, 4, ... and LISTEN_* naming them.
    let (fds, names): (Vec<OwnedFd>, Vec<String>) = {
        let mut store = store.lock().unwrap();
        std::mem::take(&mut store.fds)
            .into_iter()
            .map(|(name, fd)| (fd, name))
            .unzip()
    };
    assert!(names.contains(&"pid.a".to_string()) && names.contains(&"pid.q".to_string()));
    let mut script = String::from("exec");
    for (i, fd) in fds.iter().enumerate() {
        holden::sys::fd::set_cloexec(fd.as_fd(), false).unwrap();
        script += &format!(" {}<&{} {}<&-", 3 + i, fd.as_raw_fd(), fd.as_raw_fd());
    }
    script += &format!(
        "; export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$0\" \"$@\"",
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
        .env("FDSTORE", "8");
    let mut second = Orch::spawn_logged(&dir, cmd, "second");
    drop(fds);
    let summary = second.wait_lines(&["event=carried-over"], 1).remove(0);
    // a and q by their pidfds (crash's, if stored, may be of a process that ended since).
    let by_pidfd: usize = summary
        .split("by_kept_pidfd=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("by_kept_pidfd");
    assert!(by_pidfd >= 2, "{summary}\n{}", second.log());
    assert!(summary.contains("found_by_tag=0"), "{summary}");
    for (name, pid) in [("a", a), ("q", q)] {
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
    // The crash loop runs on, storing and removing; a clean stop empties the store.
    second.wait_lines(&["service=crash ", "reason=spawned"], 3);
    second.stop(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    {
        let store = store.lock().unwrap();
        assert!(
            store.fds.is_empty(),
            "left in the store: {:?}",
            store.fds.keys()
        );
        assert!(store.messages.iter().any(|m| m == "READY=1"));
    }
    for pid in [a, q] {
        assert!(!alive(pid));
    }
    for pid in pids_with(&marker) {
        kill(pid, libc::SIGKILL);
    }
    // The server thread stays blocked on its socket until the test process ends.
    drop(server);
    drop(qm);
}
