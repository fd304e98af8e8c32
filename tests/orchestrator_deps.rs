//! Dependencies between services (`after`, `requires`): real orchestrators, real services
//! that say READY=1 over sd_notify (`examples/notify_service.rs`), the order read from the
//! orchestrator's log.

mod orchestrator_support;

use orchestrator_support::{
    line_index, notify_service, service, sleep_marker, MarkerReaper, Orch, TempDir,
};

/// A chain a <- b <- c (`after`), each ready 200 ms after its spawn, and d with no
/// dependency: d and a start at once, b only once a is ready, c only once b is.
#[test]
fn after_starts_each_service_once_what_it_comes_after_is_ready() {
    let dir = TempDir::new("deps-after");
    let marker = sleep_marker("1400");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = notify_service("a", &["ready-after", "200"], &marker, "")
        + &notify_service("b", &["ready-after", "200"], &marker, "after = [\"a\"]")
        + &notify_service("c", &["ready-after", "200"], &marker, "after = [\"b\"]")
        + &notify_service("d", &["ready-after", "200"], &marker, "");
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["service=c ", "reason=ready"], 1);
    let log = orch.log();
    let spawned = |n: &str| line_index(&log, &[&format!("service={n} "), "reason=spawned"]);
    let ready = |n: &str| line_index(&log, &[&format!("service={n} "), "reason=ready"]);
    assert!(ready("a") < spawned("b"), "b before a was ready\n{log}");
    assert!(ready("b") < spawned("c"), "c before b was ready\n{log}");
    // d does not wait: it starts with a, before anything is ready.
    assert!(spawned("d") < ready("a"), "d waited\n{log}");
    assert!(spawned("d") < spawned("b"));
    // A shutdown stops in reverse order: c, then b, then a (d at once).
    assert!(orch.stop(libc::SIGTERM).success());
    let log = orch.log();
    let stopping = |n: &str| {
        line_index(
            &log,
            &[
                &format!("service={n} "),
                "state=stopping",
                "reason=shutdown",
            ],
        )
    };
    let stopped = |n: &str| line_index(&log, &[&format!("service={n} "), "state=stopped"]);
    assert!(stopped("c") < stopping("b"), "b stopped before c\n{log}");
    assert!(stopped("b") < stopping("a"), "a stopped before b\n{log}");
    assert!(
        stopping("d") < stopped("c"),
        "d waited for the chain\n{log}"
    );
    assert!(log.contains("event=shutdown-complete"));
}

/// A oneshot chain runs in order: each after the one before it is done.
#[test]
fn a_oneshot_chain_runs_in_order() {
    let dir = TempDir::new("deps-oneshot");
    let marker = sleep_marker("1401");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let step = |name: &str, after: &str| {
        let extra = if after.is_empty() {
            "type = \"oneshot\"".to_string()
        } else {
            format!("type = \"oneshot\"\nafter = [\"{after}\"]")
        };
        service(
            name,
            "local",
            &["/bin/sh", "-c", "sleep 0.1", &marker],
            &extra,
        )
    };
    let services = step("third", "second") + &step("first", "") + &step("second", "first");
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["service=third ", "reason=exited", "code=0"], 1);
    let log = orch.log();
    let spawned = |n: &str| line_index(&log, &[&format!("service={n} "), "reason=spawned"]);
    let done = |n: &str| line_index(&log, &[&format!("service={n} "), "state=stopped", "code=0"]);
    assert!(done("first") < spawned("second"), "{log}");
    assert!(done("second") < spawned("third"), "{log}");
    orch.stop(libc::SIGTERM);
}

/// `requires`: a service that needs one that fails is stopped with it; `holdenctl start`
/// starts what a service requires.
#[test]
fn requires_starts_what_is_needed_and_stops_what_needs_a_failed_one() {
    let dir = TempDir::new("deps-requires");
    let marker = sleep_marker("1402");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = service(
        "bus",
        "local",
        &["/bin/sh", "-c", "sleep 0.4; exit 3", &marker],
        "restart = \"never\"\nenabled = false",
    ) + &service(
        "camera",
        "local",
        &["/bin/sleep", &marker],
        "requires = [\"bus\"]\nenabled = false",
    );
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["event=control-listening"], 1);
    let control = dir.path("control.sock");
    let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "camera"]);
    assert_eq!(code, 0, "{text}");
    // bus was started with it, though not enabled.
    orch.wait_lines(&["service=bus ", "reason=spawned"], 1);
    orch.wait_lines(&["service=camera ", "reason=spawned"], 1);
    // bus fails: camera is stopped.
    let gone = orch
        .wait_lines(
            &["service=camera ", "event=dependency-gone", "dependency=bus"],
            1,
        )
        .remove(0);
    assert!(gone.contains("dependency_state=failed"), "{gone}");
    orch.wait_lines(&["service=camera ", "state=stopped"], 1);
    orch.stop(libc::SIGTERM);
}

/// `wants`: started with it, and what becomes of it later changes nothing (a wanted service
/// that fails leaves the one that wanted it running; a cycle of wants is no error).
#[test]
fn wants_starts_them_too_and_their_failure_stops_nothing() {
    let dir = TempDir::new("deps-wants");
    let marker = sleep_marker("1403");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let services = service(
        "helper",
        "local",
        &["/bin/sh", "-c", "sleep 0.2; exit 3", &marker],
        "restart = \"never\"\nenabled = false\nwants = [\"main\"]",
    ) + &service(
        "main",
        "local",
        &["/bin/sleep", &marker],
        "enabled = false\nwants = [\"helper\"]",
    );
    let mut orch = Orch::start_services(&dir, &services);
    orch.wait_lines(&["event=control-listening"], 1);
    let control = dir.path("control.sock");
    let (code, text) = orchestrator_support::holdenctl_text(&control, &["start", "main"]);
    assert_eq!(code, 0, "{text}");
    orch.wait_lines(&["service=helper ", "reason=spawned"], 1);
    orch.wait_lines(&["service=helper ", "state=failed"], 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(orch
        .lines_with(&["service=main ", "state=stopping"])
        .is_empty());
    assert!(orch.lines_with(&["event=dependency-gone"]).is_empty());
    orch.stop(libc::SIGTERM);
}

/// A service a reload adds waits for what it comes after, as at boot: `late` (after `base`,
/// which says READY=1 1.5 s after its spawn) is added by a reload while `base` is starting,
/// and spawns only once `base` is ready.
#[test]
fn a_service_a_reload_adds_waits_for_its_after_dependencies() {
    let dir = TempDir::new("deps-reload");
    let marker = sleep_marker("1404");
    let _reaper = MarkerReaper(vec![marker.clone()]);
    let base = notify_service("base", &["ready-after", "1500"], &marker, "");
    let mut orch = Orch::start_services(&dir, &base);
    orch.wait_lines(&["service=base ", "reason=spawned"], 1);
    let late = notify_service("late", &["ready-after", "0"], &marker, "after = [\"base\"]");
    let config = dir.path("orchestrator.toml");
    let text = std::fs::read_to_string(&config).unwrap() + &late;
    std::fs::write(&config, text).unwrap();
    let (code, out) = orchestrator_support::holdenctl_text(&dir.path("control.sock"), &["reload"]);
    assert_eq!(code, 0, "{out}");
    orch.wait_lines(&["service=late ", "reason=ready"], 1);
    let log = orch.log();
    assert!(
        line_index(&log, &["event=reload "]) < line_index(&log, &["service=base ", "reason=ready"]),
        "the reload came after base was ready: the test proves nothing\n{log}"
    );
    assert!(
        line_index(&log, &["service=base ", "reason=ready"])
            < line_index(&log, &["service=late ", "reason=spawned"]),
        "late started before base was ready\n{log}"
    );
    assert!(orch.stop(libc::SIGTERM).success());
}
