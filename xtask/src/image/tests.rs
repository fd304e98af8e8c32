//! The generated manifest, checked structurally with a real YAML parser: it parses, it uses
//! only aib's keys, every `source_path` exists, every executable gets mode 755, every unit's
//! programs and configuration are installed, and the socket shared with QM lines up.

use super::*;
use serde_norway::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A unique directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("xtask-image-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a bundle whose "binaries" are copies of a real executable (/bin/true): the test is
/// about the manifest, not the release build.
fn bundle(tag: &str) -> (TempDir, PathBuf, Value) {
    let dir = TempDir::new(tag);
    let binaries: Vec<(String, PathBuf)> = dist::BINARIES
        .iter()
        .map(|b| (b.to_string(), PathBuf::from("/bin/true")))
        .collect();
    let out = dir.0.join("out");
    let manifest = write_bundle(&run::workspace_root(), &out, &binaries)
        .unwrap_or_else(|_| panic!("write_bundle into {}", out.display()));
    let text = std::fs::read_to_string(&manifest).unwrap();
    let value: Value = serde_norway::from_str(&text).expect("the manifest is valid YAML");
    (dir, out, value)
}

fn map_keys(v: &Value, what: &str) -> BTreeSet<String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("{what} is a mapping"))
        .keys()
        .map(|k| {
            k.as_str()
                .unwrap_or_else(|| panic!("{what}: string keys"))
                .to_string()
        })
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: `{key}` is a string"))
}

/// One partition's `content`, as parsed back.
struct Content {
    /// destination -> source file in the bundle
    files: Vec<(String, PathBuf)>,
    /// destination -> mode
    modes: Vec<(String, String)>,
    enabled: Vec<String>,
}

impl Content {
    fn read(v: &Value, out: &Path, what: &str) -> Content {
        let allowed = [
            "rpms",
            "repos",
            "enable_repos",
            "add_files",
            "chmod_files",
            "make_dirs",
            "systemd",
        ];
        for key in map_keys(v, what) {
            assert!(
                allowed.contains(&key.as_str()),
                "{what}: unknown key `{key}`"
            );
        }
        let mut files = Vec::new();
        for f in v["add_files"].as_sequence().expect("add_files is a list") {
            let keys = map_keys(f, "add_files entry");
            assert_eq!(
                keys,
                BTreeSet::from(["path".to_string(), "source_path".to_string()]),
                "{what}: add_files entries are {{path, source_path}}"
            );
            let dest = str_of(f, "path", what);
            assert!(
                dest.starts_with("/usr/") || dest.starts_with("/etc/"),
                "{what}: {dest} is not under /usr/ or /etc/"
            );
            let source = str_of(f, "source_path", what);
            assert!(
                !source.starts_with('/') && !source.split('/').any(|c| c == ".."),
                "{what}: source_path {source} must stay inside the bundle"
            );
            let path = out.join(source);
            assert!(
                path.is_file(),
                "{what}: source_path {source} does not exist"
            );
            assert!(
                !files.iter().any(|(d, _)| d == dest),
                "{what}: {dest} added twice"
            );
            files.push((dest.to_string(), path));
        }
        let mut modes = Vec::new();
        for c in v["chmod_files"]
            .as_sequence()
            .expect("chmod_files is a list")
        {
            assert_eq!(
                map_keys(c, "chmod_files entry"),
                BTreeSet::from(["path".to_string(), "mode".to_string()])
            );
            modes.push((
                str_of(c, "path", what).to_string(),
                str_of(c, "mode", what).to_string(),
            ));
        }
        let enabled = v["systemd"]["enabled_services"]
            .as_sequence()
            .expect("systemd.enabled_services is a list")
            .iter()
            .map(|u| u.as_str().expect("unit names are strings").to_string())
            .collect();
        Content {
            files,
            modes,
            enabled,
        }
    }

    fn source(&self, dest: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|(d, _)| d == dest)
            .map(|(_, p)| p.as_path())
    }

    fn mode(&self, dest: &str) -> Option<&str> {
        self.modes
            .iter()
            .find(|(d, _)| d == dest)
            .map(|(_, m)| m.as_str())
    }

    fn units(&self) -> Vec<(String, String)> {
        self.files
            .iter()
            .filter(|(d, _)| d.ends_with(".service"))
            .map(|(d, p)| (d.clone(), std::fs::read_to_string(p).unwrap()))
            .collect()
    }
}

fn contents(v: &Value, out: &Path) -> (Content, Content) {
    for key in map_keys(v, "manifest") {
        assert!(
            ["name", "version", "content", "qm", "image", "auth"].contains(&key.as_str()),
            "unknown top-level key `{key}`"
        );
    }
    assert_eq!(str_of(v, "name", "manifest"), "holden");
    assert_eq!(
        map_keys(&v["qm"], "qm"),
        BTreeSet::from(["content".to_string()])
    );
    (
        Content::read(&v["content"], out, "content"),
        Content::read(&v["qm"]["content"], out, "qm.content"),
    )
}

fn is_executable_file(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"#!") || mode & 0o111 != 0
}

/// `Exec*=` command lines of a unit, without systemd's `-@:+!` prefixes.
fn exec_lines(unit: &str) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("Exec"))
        .map(|(_, v)| {
            v.trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .collect()
}

/// `key=value` of a unit or drop-in (first match).
fn unit_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

#[test]
fn manifest_parses_and_every_source_exists() {
    let (_dir, out, v) = bundle("sources");
    let (host, qm) = contents(&v, &out);
    assert_eq!(host.files.len() + qm.files.len(), ENTRIES.len());
    for d in ["/usr/bin/holden-orchestrator", "/usr/bin/holdenctl"] {
        assert!(host.source(d).is_some(), "host gets {d}");
        assert!(qm.source(d).is_none(), "QM does not get {d}");
    }
    assert!(qm.source("/usr/bin/holden-agent").is_some());
    assert!(host.source("/usr/bin/holden-agent").is_none());
}

#[test]
fn every_executable_gets_mode_755_and_nothing_else_does() {
    let (_dir, out, v) = bundle("modes");
    let (host, qm) = contents(&v, &out);
    for (what, c) in [("content", &host), ("qm.content", &qm)] {
        for (dest, source) in &c.files {
            if is_executable_file(source) {
                assert_eq!(c.mode(dest), Some("755"), "{what}: {dest} needs mode 755");
            } else {
                assert_eq!(c.mode(dest), None, "{what}: {dest} is not executable");
            }
        }
        for (dest, mode) in &c.modes {
            assert!(
                c.source(dest).is_some(),
                "{what}: chmod of {dest}, never added"
            );
            assert_eq!(mode, "755");
        }
    }
}

#[test]
fn units_reference_installed_paths() {
    let (_dir, out, v) = bundle("units");
    let (host, qm) = contents(&v, &out);
    for (what, c) in [("content", &host), ("qm.content", &qm)] {
        assert!(!c.enabled.is_empty(), "{what}: a unit is enabled");
        for unit in &c.enabled {
            let dest = format!("/usr/lib/systemd/system/{unit}");
            assert!(
                c.source(&dest).is_some(),
                "{what}: enabled {unit} is not installed"
            );
        }
        for (dest, text) in c.units() {
            let lines = exec_lines(&text);
            assert!(!lines.is_empty(), "{dest}: no Exec line");
            for argv in lines {
                let program = &argv[0];
                assert!(
                    c.source(program).is_some() && c.mode(program) == Some("755"),
                    "{what}: {dest} runs {program}, which is not installed with mode 755"
                );
                // Every absolute file the command names (a --config) is installed too.
                for pair in argv.windows(2) {
                    if pair[0] == "--config" {
                        assert!(
                            c.source(&pair[1]).is_some(),
                            "{dest}: --config {} is not installed",
                            pair[1]
                        );
                    }
                }
            }
        }
    }
    let orchestrator = host
        .units()
        .into_iter()
        .find(|(d, _)| d.ends_with("holden-orchestrator.service"))
        .expect("orchestrator unit")
        .1;
    assert_eq!(unit_value(&orchestrator, "Type"), Some("notify"));
    assert!(unit_value(&orchestrator, "WatchdogSec").is_some());
    // `systemctl reload` goes through holdenctl, which reports an invalid file and fails.
    assert_eq!(
        unit_value(&orchestrator, "ExecReload"),
        Some("/usr/bin/holdenctl reload")
    );
    let agent = qm.units().pop().expect("agent unit").1;
    assert_eq!(
        unit_value(&agent, "KillMode"),
        Some("process"),
        "restarting the agent must not kill the QM services it started"
    );
}

#[test]
fn the_agent_socket_is_shared_through_the_qm_drop_in() {
    let (_dir, out, v) = bundle("socket");
    let (host, qm) = contents(&v, &out);
    let read = |c: &Content, dest: &str| {
        std::fs::read_to_string(c.source(dest).unwrap_or_else(|| panic!("{dest} installed")))
            .unwrap()
    };
    let dropin = read(&host, "/etc/containers/systemd/qm.container.d/holden.conf");
    let (host_dir, qm_dir) = unit_value(&dropin, "Volume")
        .and_then(|v| v.split_once(':'))
        .expect("Volume=HOST:QM");
    let config = read(&host, "/etc/holden/orchestrator.toml");
    let agent_section = config.split("[agent]").nth(1).expect("[agent] table");
    let host_socket = unit_value(agent_section, "socket")
        .expect("agent.socket")
        .trim_matches('"');
    let agent = qm.units().pop().expect("agent unit").1;
    let argv = exec_lines(&agent).pop().expect("ExecStart");
    let qm_socket = argv
        .windows(2)
        .find(|p| p[0] == "--socket")
        .map(|p| p[1].clone())
        .expect("--socket PATH");
    let name = |p: &str, dir: &str| p.strip_prefix(dir).map(str::to_string);
    assert_eq!(
        name(host_socket, host_dir),
        name(&qm_socket, qm_dir),
        "{host_socket} (host) and {qm_socket} (QM) are the same file through {host_dir}:{qm_dir}"
    );
    assert!(name(host_socket, host_dir).is_some());
    let tmpfiles = read(&host, "/usr/lib/tmpfiles.d/holden.conf");
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(host_dir)),
        "tmpfiles.d creates {host_dir}"
    );
    // The control socket is not in the shared directory.
    let control = config.split("[control]").nth(1).expect("[control] table");
    let control_socket = unit_value(control, "socket").expect("control.socket");
    assert!(!control_socket.trim_matches('"').starts_with(host_dir));
}

#[test]
fn options_are_checked() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches!(parse(&args(&["--help"])), Ok(None)));
    let o = parse(&args(&["--arch", "aarch64", "--distro", "autosd9"]))
        .ok()
        .flatten()
        .expect("valid options");
    assert_eq!((o.arch.as_str(), o.distro.as_str()), ("aarch64", "autosd9"));
    for bad in [
        &["--arch", "mips"][..],
        &["--arch"],
        &["--distro", "a b"],
        &["--distro", ""],
        &["--target", "x;rm"],
        &["--bogus"],
    ] {
        assert!(
            matches!(parse(&args(bad)), Err(Failure::Usage(_))),
            "{bad:?} is refused"
        );
    }
    let (program, argv) = aib_command("aib-dev", &o, "x.qcow2");
    assert_eq!(program, "aib-dev");
    assert_eq!(argv.last().map(String::as_str), Some("x.qcow2"));
    let (_, old) = aib_command("automotive-image-builder", &o, "x.qcow2");
    assert!(old.windows(2).any(|w| w == ["--mode", "package"]));
}

/// A root for `systemd-analyze verify --root`: one side of the bundle plus the host's
/// targets and slices (which the units' default dependencies name).
fn verify_root(side: &Path, into: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(side)
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
    let units = into.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with(".target")
            || name.ends_with(".slice")
            || name == "systemd-tmpfiles-setup.service";
        if wanted && !units.join(&name).exists() {
            std::fs::copy(entry.path(), units.join(&name)).unwrap();
        }
    }
}

/// systemd's own tools accept the units (no unknown key, every program present and
/// executable in the partition's tree) and the tmpfiles entry creates both directories.
#[test]
fn systemd_accepts_the_units_and_the_tmpfiles_entry() {
    if !Path::new("/lib/systemd/system").is_dir()
        || !run::succeeds("systemd-analyze", &["--version"])
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let (dir, out, _) = bundle("systemd");
    for (side, unit) in [
        ("host", "holden-orchestrator.service"),
        ("qm", "holden-agent.service"),
    ] {
        let root = dir.0.join(format!("root-{side}"));
        verify_root(&out.join("files").join(side), &root);
        let result = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(root.join("usr/lib/systemd/system").join(unit))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            result.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            result.status
        );
    }
    let root = dir.0.join("root-host");
    let status = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .args(["--boot", "--create", "holden.conf"])
        .status()
        .unwrap();
    assert!(status.success());
    for d in ["run/holden", "run/holden/qm"] {
        let meta = std::fs::metadata(root.join(d)).unwrap_or_else(|_| panic!("{d} created"));
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{d}");
    }
}

/// `systemd-analyze security` of both shipped units: the sandbox directives are set, the score
/// is what docs/deploy.md says, and every exposure it reports is explained there.
#[test]
fn every_exposure_of_the_units_is_explained() {
    let (_dir, out, v) = bundle("security");
    let (host, qm) = contents(&v, &out);
    let deploy = std::fs::read_to_string(run::workspace_root().join("docs/deploy.md")).unwrap();
    let section = deploy
        .split("### `systemd-analyze security`")
        .nth(1)
        .expect("docs/deploy.md has the systemd-analyze security section")
        .split("\n## ")
        .next()
        .unwrap();
    let units = [
        host.units()
            .into_iter()
            .find(|(d, _)| d.ends_with("holden-orchestrator.service"))
            .expect("orchestrator unit"),
        qm.units().pop().expect("agent unit"),
    ];
    for (dest, text) in &units {
        for key in [
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectHostname",
            "LockPersonality",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "SystemCallErrorNumber",
        ] {
            assert!(unit_value(text, key).is_some(), "{dest}: {key}= is not set");
        }
    }
    if !run::succeeds("systemd-analyze", &["--version"]) {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    for (dest, _) in &units {
        let side = if dest.contains("holden-agent") {
            "qm"
        } else {
            "host"
        };
        let path = out
            .join("files")
            .join(side)
            .join(dest.trim_start_matches('/'));
        let result = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&result.stdout);
        let exposure = report
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{dest}: no exposure level in\n{report}"));
        assert!(
            exposure <= 8.3,
            "{dest}: exposure {exposure} is above the 8.3 docs/deploy.md states"
        );
        for line in report.lines().filter(|l| l.starts_with('✗')) {
            let name = line
                .trim_start_matches('✗')
                .split_whitespace()
                .next()
                .unwrap_or("");
            let directive = name.split('=').next().unwrap_or(name);
            assert!(
                section.contains(&format!("`{directive}=")),
                "{dest}: the exposure {name} is not explained in docs/deploy.md"
            );
        }
    }
}
