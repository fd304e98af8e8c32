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
