//! Valid configurations: the complete example of docs/config.md (read out of the document, so
//! the two cannot drift), defaults, the v0.2 command line, and the value parsers.

use holden::config::{
    format_duration, legacy_socket_path, parse_duration, signal_from_name, AgentProtocol, Config,
    LogLevel, ServiceSpec, LEGACY_SOCKET_DEFAULT,
};
use holden::supervise::{Backoff, Partition, Restart, StartLimit};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The one ```toml block under "## Complete example" of docs/config.md.
fn doc_example() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
        .expect("docs/config.md is readable");
    let section = doc
        .split("## Complete example")
        .nth(1)
        .expect("docs/config.md has a complete example");
    let block = section.split("```toml\n").nth(1).expect("a ```toml block");
    block
        .split("\n```")
        .next()
        .expect("the block ends")
        .to_string()
}

fn cstrings(items: &[&str]) -> Vec<CString> {
    items
        .iter()
        .map(|item| CString::new(*item).unwrap())
        .collect()
}

#[test]
fn the_documented_example_is_valid_and_means_what_it_says() {
    let config =
        Config::parse(&doc_example(), "docs/config.md").unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.slots, 32);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(
        config.agent.socket,
        PathBuf::from("/run/holden/qm_orchestrator.sock")
    );
    assert_eq!(config.agent.protocol, AgentProtocol::Auto);
    assert_eq!(config.agent.request_timeout, Duration::from_secs(5));
    assert_eq!(config.control.group.as_deref(), Some("holden"));
    assert!(config.shutdown.stop_services);
    assert_eq!(config.services.len(), 3);

    let signals = config.service("vehicle-signals").expect("defined");
    assert_eq!(signals.partition(), Partition::Local);
    assert_eq!(
        signals.argv,
        cstrings(&["/usr/bin/vsignald", "--bus", "can0"])
    );
    assert_eq!(
        signals.envp(),
        cstrings(&["RUST_LOG=info", "VSIGNALD_SHM=/dev/shm/vsignal"])
    );
    assert_eq!(
        signals.working_directory,
        CString::new("/var/lib/vsignald").unwrap()
    );
    assert_eq!((signals.uid, signals.gid), (Some(990), Some(990)));
    assert_eq!(signals.policy.restart, Restart::Always);
    assert_eq!(signals.policy.restart_delay, Duration::ZERO);
    assert_eq!(
        signals.policy.backoff,
        Backoff {
            initial: Duration::from_millis(10),
            factor_milli: 2000,
            max: Duration::from_secs(2),
            reset_after: Duration::from_secs(30)
        }
    );
    assert_eq!(
        signals.policy.start_limit,
        StartLimit {
            burst: 10,
            interval: Duration::from_secs(10)
        }
    );
    assert_eq!(signals.policy.stop_signal, libc::SIGINT);
    assert_eq!(signals.policy.stop_timeout, Duration::from_secs(3));
    assert!(signals.enabled);

    let radio = config.service("radio").expect("defined");
    assert_eq!(radio.partition(), Partition::Qm);
    assert_eq!(
        radio.argv[2],
        CString::new("Radio 1").unwrap(),
        "no word splitting"
    );
    assert_eq!(radio.policy.restart, Restart::OnFailure);
    assert_eq!(radio.policy.stop_signal, libc::SIGTERM);
    assert_eq!(radio.gid, None);

    let job = config.service("map-update").expect("defined");
    assert!(!job.enabled);
    assert_eq!(job.policy.restart, Restart::Never);
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let config = Config::parse("", "empty.toml").unwrap();
    assert_eq!(config.slots, 64);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(
        config.agent.socket,
        PathBuf::from("/run/holden/qm_orchestrator.sock")
    );
    assert_eq!(config.agent.protocol, AgentProtocol::V1);
    assert_eq!(config.agent.request_timeout, Duration::from_secs(5));
    assert_eq!(config.agent.reconnect_initial, Duration::from_millis(100));
    assert_eq!(config.agent.reconnect_max, Duration::from_secs(5));
    assert!(config.shutdown.stop_services);
    assert_eq!(config.shutdown.timeout, Duration::from_secs(30));
    assert_eq!(
        config.control.socket,
        PathBuf::from("/run/holden/control.sock")
    );
    assert_eq!(config.control.group, None);
    assert!(config.services.is_empty());
}

#[test]
fn a_minimal_service_gets_the_documented_defaults() {
    let text = "[[service]]\nname = \"s\"\npartition = \"qm\"\nargv = [\"/bin/sleep\", \"1\"]\n";
    let config = Config::parse(text, "min.toml").unwrap();
    let spec = &config.services[0];
    assert_eq!(spec.name.as_str(), "s");
    assert!(spec.env.is_empty());
    assert_eq!(spec.working_directory, CString::new("/").unwrap());
    assert_eq!((spec.uid, spec.gid), (None, None));
    assert!(spec.enabled);
    assert_eq!(spec.policy.restart, Restart::OnFailure);
    assert_eq!(spec.policy.restart_delay, Duration::from_millis(100));
    assert_eq!(spec.policy.backoff, Backoff::NONE);
    assert_eq!(
        spec.policy.start_limit,
        StartLimit {
            burst: 5,
            interval: Duration::from_secs(10)
        }
    );
    assert_eq!(spec.policy.stop_signal, libc::SIGTERM);
    assert_eq!(spec.policy.stop_timeout, Duration::from_secs(10));
}

#[test]
fn load_reads_a_real_file() {
    let dir = std::env::temp_dir().join(format!("holden-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("orchestrator.toml");
    std::fs::write(&path, doc_example()).unwrap();
    let loaded = Config::load(&path);
    std::fs::write(&path, "slots = \"many\"\n").unwrap();
    let broken = Config::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.unwrap().services.len(), 3);
    let error = broken.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:1:9: `slots`: ", path.display())),
        "{error}"
    );
}

#[test]
fn specs_compare_by_content_so_a_reload_can_tell_what_changed() {
    let base = "[[service]]\nname = \"s\"\npartition = \"local\"\nargv = [\"/bin/sleep\", \"1\"]\n";
    let same = Config::parse(&format!("# a comment\n{base}"), "b.toml").unwrap();
    let a: &ServiceSpec = &Config::parse(base, "a.toml").unwrap().services[0];
    assert_eq!(a, &same.services[0]);
    let changed = Config::parse(&format!("{base}stop_timeout = \"1s\"\n"), "c.toml").unwrap();
    assert_eq!(a.name, changed.services[0].name);
    assert_ne!(a, &changed.services[0]);
}

#[test]
fn services_fill_every_slot_but_no_more() {
    let mut text = String::from("slots = 3\n");
    for index in 0..3 {
        text.push_str(&format!(
            "[[service]]\nname = \"s{index}\"\npartition = \"local\"\nargv = [\"/bin/true\"]\n"
        ));
    }
    assert_eq!(Config::parse(&text, "full.toml").unwrap().services.len(), 3);
}

#[test]
fn the_v0_2_command_line_maps_to_two_always_restarted_services() {
    let socket = Path::new("/run/holden/qm_orchestrator.sock");
    let config = Config::from_legacy_args("/bin/sleep  30", "qm-app --flag\tx", socket).unwrap();
    assert_eq!(config.agent.protocol, AgentProtocol::Auto);
    assert_eq!(config.agent.socket, socket);
    let local = config.service("local").unwrap();
    assert_eq!(local.partition(), Partition::Local);
    assert_eq!(local.argv, cstrings(&["/bin/sleep", "30"]));
    assert_eq!(local.policy.restart, Restart::Always);
    assert_eq!(local.policy.start_limit, StartLimit::NONE);
    let qm = config.service("qm").unwrap();
    assert_eq!(qm.partition(), Partition::Qm);
    assert_eq!(
        qm.argv,
        cstrings(&["qm-app", "--flag", "x"]),
        "a QM program is resolved by the agent"
    );
    // A local program without a slash is looked up in PATH, as v0.2's execvp did.
    let config = Config::from_legacy_args("sh -c true", "/bin/true", socket).unwrap();
    let program = config.service("local").unwrap().argv[0]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        program.starts_with('/') && program.ends_with("/sh"),
        "{program}"
    );
}

#[test]
fn the_v0_2_command_line_keeps_v0_2_bounds() {
    let socket = Path::new("/tmp/x.sock");
    assert!(Config::from_legacy_args("   ", "/bin/true", socket).is_err());
    let many = format!("/bin/echo{}", " a".repeat(33));
    let error = Config::from_legacy_args(&many, "/bin/true", socket).unwrap_err();
    assert!(error.to_string().contains("at most 32"), "{error}");
    let long = format!("/bin/echo {}", "a".repeat(256));
    assert!(Config::from_legacy_args(&long, "/bin/true", socket).is_err());
    assert!(Config::from_legacy_args("no-such-program-holden", "/bin/true", socket).is_err());
    assert!(
        Config::from_legacy_args("/bin/true", "/bin/true", Path::new("relative.sock")).is_err()
    );
    assert_eq!(
        legacy_socket_path(None),
        PathBuf::from(LEGACY_SOCKET_DEFAULT)
    );
    assert_eq!(
        legacy_socket_path(Some("/run/x.sock".as_ref())),
        PathBuf::from("/run/x.sock")
    );
}

#[test]
fn durations_and_signals_parse_as_documented() {
    for (text, expected) in [
        ("0", Duration::ZERO),
        ("250ms", Duration::from_millis(250)),
        ("5s", Duration::from_secs(5)),
        ("2m", Duration::from_secs(120)),
        ("24h", Duration::from_secs(86_400)),
        ("1500us", Duration::from_micros(1500)),
        ("7ns", Duration::from_nanos(7)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for bad in [
        "",
        "5",
        "s",
        "-1s",
        "1.5s",
        "5 s",
        "25h",
        "99999999999999999999s",
        "5S",
        "0s0",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    assert_eq!(signal_from_name("SIGTERM"), Ok(libc::SIGTERM));
    assert_eq!(signal_from_name("term"), Ok(libc::SIGTERM));
    assert_eq!(signal_from_name("USR1"), Ok(libc::SIGUSR1));
    assert!(signal_from_name("SIGFOO").is_err());
}
