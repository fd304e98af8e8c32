//! sd_notify when the notify socket is full: every message goes out without blocking, and a
//! `READY=1` the socket did not take is sent again until it is taken. Found under systemd 252
//! (`tests/systemd_unit.rs`): after a `kill -9`, the new instance's take-over wrote its
//! services' fd store entries before `READY=1`, the socket (`net.unix.max_dgram_qlen`
//! datagrams) was full, `READY=1` was dropped, and the unit stayed `activating` until the
//! start timeout stopped it, and every service with it. Here the test fills the socket
//! before the orchestrator starts, then reads it.

mod orchestrator_support;

use orchestrator_support::{
    config_header, holdenctl, service, sleep_marker, wait_until, Orch, TempDir,
};
use std::os::unix::net::UnixDatagram;
use std::process::Command;

#[test]
fn ready_is_sent_again_when_the_notify_socket_was_full() {
    let dir = TempDir::new("notify-full");
    let marker = sleep_marker("1300");
    let notify_path = dir.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // Fill the socket's queue, as systemd busy with other units (or a burst) leaves it.
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"X-FILLER=1", &notify_path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the notify socket never filled");
    }
    assert!(queued > 0);
    let config = format!(
        "{}{}",
        config_header(&dir.path("agent.sock")),
        service("a", "local", &["/bin/sleep", &marker], "")
    );
    let path = dir.path("o.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(orchestrator_support::orchestrator_bin());
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("FDSTORE", "16");
    let mut orch = Orch::spawn(&dir, cmd);
    // Start-up is over (READY=1 was tried, into the full socket) once `a` runs.
    let control = dir.path("control.sock");
    wait_until("a running", || {
        let out = holdenctl(&control, &["status", "a", "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("\"state\":\"running\"")
            .then_some(())
    });
    // Now read, as systemd would once it gets to the socket.
    notify
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    wait_until("READY=1, STATUS= and a's pidfd, after the filler", || {
        while let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text != "X-FILLER=1" {
                messages.push(text);
            }
        }
        let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
        (has("READY=1") && has("STATUS=1 service ") && has("FDNAME=pid.a")).then_some(())
    });
    // READY=1 and STATUS= went ahead of every fd store entry.
    let ready = messages.iter().position(|m| m == "READY=1").unwrap();
    let status = messages
        .iter()
        .position(|m| m.starts_with("STATUS="))
        .unwrap();
    let first_store = messages.iter().position(|m| m.contains("FDSTORE")).unwrap();
    assert!(ready < first_store && status < first_store, "{messages:?}");
    assert!(orch.stop(libc::SIGTERM).success(), "{}", orch.log());
    // STOPPING=1 came too (the socket has room now).
    while let Ok(n) = notify.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(messages.iter().any(|m| m == "STOPPING=1"), "{messages:?}");
}
