//! The console check against a real console log (Debian 6.1 kernel, recorded by
//! `cargo xtask vm-test --keep`) and against that log with one thing wrong at a time.

use super::*;

const REAL: &str = include_str!("testdata/console-linux-6.1.txt");

#[test]
fn a_real_run_passes_every_step() {
    let report = check_console(REAL).expect("the recorded run passes");
    for step in STEPS {
        assert!(
            report
                .iter()
                .any(|l| l.starts_with(&format!("passed: {step}"))),
            "{step} in {report:?}"
        );
    }
    assert!(report.iter().any(|l| l.contains("holdenctl")));
}

fn broken(from: &str, to: &str) -> String {
    assert!(REAL.contains(from), "fixture has {from:?}");
    REAL.replacen(from, to, 1)
}

#[test]
fn any_miss_fails() {
    let cases = [
        // The guest reported a failure.
        broken(
            "HOLDEN-VM-DONE",
            "HOLDEN-VM-FAIL: something\nHOLDEN-VM-DONE",
        ),
        // A step never passed.
        broken("HOLDEN-VM-PASS: agent-restart", "HOLDEN-VM: agent-restart"),
        // The guest stopped before the end (e.g. the timeout killed it).
        broken("HOLDEN-VM-DONE", ""),
        // holdenctl neither passed nor was skipped.
        broken("HOLDEN-VM: SKIP holdenctl status", "HOLDEN-VM: holdenctl"),
        // The orchestrator log disagrees with the guest's verdicts.
        broken("orch| <5>event=shutdown-complete", "orch| <5>event=other"),
        broken("event=agent-down", "event=agent-other"),
        broken(
            "restarts=2 reason=spawned spawned_pid=155",
            "restarts=2 reason=other",
        ),
        broken("next_delay_ms=200", "next_delay_ms=50"),
        broken("reason=start-limit", "reason=other"),
    ];
    for (i, text) in cases.iter().enumerate() {
        assert!(check_console(text).is_err(), "case {i} passed");
    }
}

#[test]
fn steps_out_of_order_fail() {
    let a = "HOLDEN-VM-PASS: local-restart";
    let b = "HOLDEN-VM-PASS: qm-restart killed";
    let swapped = REAL
        .replacen(a, "@@A@@", 1)
        .replacen(b, a, 1)
        .replacen("@@A@@", b, 1);
    assert!(check_console(&swapped).is_err());
}

#[test]
fn options_are_checked() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches!(parse(&args(&["--help"])), Ok(None)));
    let o = parse(&args(&["--kvm", "--timeout", "30", "--kernel", "/k"]))
        .ok()
        .flatten()
        .expect("valid");
    assert!(o.kvm && o.timeout == Duration::from_secs(30));
    for bad in [
        &["--timeout", "0"][..],
        &["--timeout", "x"],
        &["--kernel"],
        &["--what"],
    ] {
        assert!(
            matches!(parse(&args(bad)), Err(Failure::Usage(_))),
            "{bad:?}"
        );
    }
}

/// Consoles of `cargo xtask vm-test --matrix --keep` (recorded on the project's machine).
const MATRIX_CONSOLES: [(&str, &str); 5] = [
    (
        "x86_64-5.10",
        include_str!("testdata/console-x86_64-5.10.txt"),
    ),
    (
        "x86_64-6.12",
        include_str!("testdata/console-x86_64-6.12.txt"),
    ),
    (
        "aarch64-6.12",
        include_str!("testdata/console-aarch64-6.12.txt"),
    ),
    (
        "x86_64-6.12-io_uring_disabled",
        include_str!("testdata/console-x86_64-6.12-io_uring_disabled.txt"),
    ),
    (
        "x86_64-6.12-cgroup",
        include_str!("testdata/console-x86_64-6.12-cgroup.txt"),
    ),
];

/// The cgroup-limits run fails when a step is missing, out of order, or the orchestrator's
/// log does not show the hog's SIGKILL and restart.
#[test]
fn the_cgroup_limits_run_fails_without_each_of_its_checks() {
    let text = console("x86_64-6.12-cgroup");
    let r = run("x86_64-6.12-cgroup");
    let report = check_run(r, true, text).unwrap();
    assert!(
        report.iter().any(|l| l.contains("memory.max=33554432")),
        "{report:?}"
    );
    for step in CGROUP_STEPS {
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("HOLDEN-VM-PASS: {step} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = check_run(r, true, &without).unwrap_err();
        assert!(e.contains(&format!("`{step}` never passed")), "{step}: {e}");
    }
    let no_kill = text.replace("reason=exited signal=SIGKILL", "reason=exited code=0");
    let e = check_run(r, true, &no_kill).unwrap_err();
    assert!(e.contains("no SIGKILL exit of vm-hog"), "{e}");
    let failed = text.replace("HOLDEN-VM-DONE", "HOLDEN-VM-FAIL: oom-kill: x");
    assert!(check_run(r, true, &failed).is_err());
}

fn console(name: &str) -> &'static str {
    MATRIX_CONSOLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .expect("recorded")
}

fn run(name: &str) -> &'static Run {
    matrix::find(name).expect("in the matrix")
}

#[test]
fn recorded_matrix_runs_pass() {
    for (name, text) in MATRIX_CONSOLES {
        let report = check_run(run(name), true, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report[0].starts_with("kernel "), "{name}: {report:?}");
        assert!(report[1].starts_with("features: "), "{name}: {report:?}");
        let passed = report.iter().filter(|l| l.starts_with("passed: ")).count();
        let expected = match run(name).scenario {
            Scenario::IoUringDisabled => 3,
            Scenario::Supervision { .. } => 1 + STEPS.len() + 1,
            Scenario::CgroupLimits => CGROUP_STEPS.len(),
        };
        assert_eq!(passed, expected, "{name}: {report:?}");
    }
    let old = check_run(run("x86_64-5.10"), true, console("x86_64-5.10")).unwrap();
    assert!(
        old[1].contains("pidfs=no (statfs of a pidfd: anon_inode)"),
        "{old:?}"
    );
    assert!(
        old[1].contains("kernel.io_uring_disabled=absent"),
        "{old:?}"
    );
    let new = check_run(run("aarch64-6.12"), true, console("aarch64-6.12")).unwrap();
    assert!(new[0].contains("arch aarch64, 2 CPUs"), "{new:?}");
    assert!(
        new[1].contains("pidfs=yes (statfs of a pidfd: pidfs)"),
        "{new:?}"
    );
}

#[test]
fn a_wrong_claim_or_the_wrong_guest_fails() {
    let x = console("x86_64-6.12");
    let start = "kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes";
    assert!(x.contains(start));
    let wrong = [
        // The orchestrator claims what the kernel does not have, or denies what it has.
        x.replace(
            start,
            "kernel=6.12 pidfs=no pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes",
        ),
        x.replace(
            start,
            "kernel=6.12 pidfs=yes pidfd_get_info=yes pidfd_info_exit=no pidfd_reap_hup=yes",
        ),
        x.replace(
            start,
            "kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=yes pidfd_reap_hup=yes",
        ),
        x.replace(
            start,
            "kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=no",
        ),
        x.replace(
            start,
            "kernel=6.13 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes",
        ),
        // The start line no longer states a feature.
        x.replace(
            start,
            "kernel=6.12 pidfs=yes pidfd_info_exit=no pidfd_reap_hup=yes",
        ),
        // The guest is not what the run asked for.
        x.replace("HOLDEN-VM-PROBE: cpus=2", "HOLDEN-VM-PROBE: cpus=1"),
        x.replace(
            "HOLDEN-VM-PROBE: arch=x86_64",
            "HOLDEN-VM-PROBE: arch=aarch64",
        ),
        x.replace(
            "HOLDEN-VM-PROBE: io_uring_disabled=1",
            "HOLDEN-VM-PROBE: io_uring_disabled=0",
        ),
        // No pidfd was probed.
        x.replace(
            "HOLDEN-VM-PROBE: pidfd_fs_magic",
            "HOLDEN-VM: pidfd_fs_magic",
        ),
        // The agent's pidfds were refused.
        x.replace("event=agent-up", "event=agent-misbehaved"),
    ];
    for (i, text) in wrong.iter().enumerate() {
        assert_ne!(text, x, "case {i} changed nothing");
        assert!(
            check_run(run("x86_64-6.12"), true, text).is_err(),
            "case {i}"
        );
    }
    // Another Debian kernel than the run's fails; with --kernel, any kernel is checked as is.
    let old = console("x86_64-5.10");
    assert!(check_run(run("x86_64-6.1"), true, old).is_err());
    assert!(check_run(run("x86_64-6.1"), false, old).is_ok());
    // The aarch64 guest is not an x86_64 run.
    assert!(check_run(run("x86_64-6.12"), true, console("aarch64-6.12")).is_err());
}

#[test]
fn io_uring_disabled_must_fail_as_documented() {
    let name = "x86_64-6.12-io_uring_disabled";
    let d = console(name);
    let wrong = [
        d.replace("orchestrator-exit=1", "orchestrator-exit=0"),
        d.replace("orchestrator-exit=1", "orchestrator-exit=2"),
        d.replace("HOLDEN-VM: orchestrator-exit=1", "HOLDEN-VM: orchestrator"),
        d.replace("(set kernel.io_uring_disabled=0", "(set it to 0"),
        d.replace(
            "HOLDEN-VM-LOG-END",
            "orch| <5>event=start version=0.3.0 kernel=6.12\nHOLDEN-VM-LOG-END",
        ),
        d.replace("PROBE: io_uring_disabled=2", "PROBE: io_uring_disabled=1"),
        d.replace("HOLDEN-VM-DONE", ""),
    ];
    for (i, text) in wrong.iter().enumerate() {
        assert_ne!(text, d, "case {i} changed nothing");
        assert!(check_run(run(name), true, text).is_err(), "case {i}");
    }
}

#[test]
fn the_asserted_refusal_is_the_documented_one() {
    let deploy = include_str!("../../../docs/deploy.md");
    assert!(deploy.contains(IO_URING_DISABLED_MESSAGE));
    assert!(deploy.contains(&format!(
        "the orchestrator exits {IO_URING_DISABLED_EXIT} at start-up"
    )));
}

#[test]
fn runs_are_selected() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let names = |a: &[&str]| {
        let o = parse(&args(a)).ok().flatten().expect("valid");
        select(&o)
            .ok()
            .expect("selected")
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&[]), [matrix::DEFAULT_RUN]);
    assert_eq!(names(&["--matrix"]).len(), matrix::MATRIX.len());
    assert_eq!(
        names(&["--run", "aarch64-6.12", "--run", "x86_64-5.10"]),
        ["x86_64-5.10", "aarch64-6.12"]
    );
    assert_eq!(
        names(&["--run", "aarch64-6.12", "--kernel", "/k"]),
        ["aarch64-6.12"]
    );
    for bad in [
        &["--matrix", "--run", "x86_64-6.1"][..],
        &["--run", "riscv64-6.12"],
        &["--run"],
        &["--matrix", "--kernel", "/k"],
        &[
            "--run",
            "x86_64-6.1",
            "--run",
            "x86_64-5.10",
            "--kernel",
            "/k",
        ],
    ] {
        assert!(
            matches!(parse(&args(bad)), Err(Failure::Usage(_))),
            "{bad:?}"
        );
    }
}
