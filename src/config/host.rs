//! What a valid file needs of the machine it runs on: the groups it names, the programs and
//! working directories of its local services. `--check` looks (as `systemd-analyze verify`
//! looks for the programs of a unit), and says what it cannot know: a QM service's paths are
//! inside the QM partition.

use super::error::{ConfigError, ConfigErrorKind};
use super::validate::Spans;
use super::Config;
use crate::supervise::Partition;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The machine, as the checks see it (a trait, so that tests can describe another one).
pub trait Host {
    /// Whether group `name` exists; `Err` when the lookup itself failed.
    fn group_exists(&self, name: &str) -> Result<bool, String>;
    /// Why `path` cannot be executed as a program, `None` when it can.
    fn program_problem(&self, path: &Path) -> Option<String>;
    /// Why `path` cannot be a working directory, `None` when it can.
    fn directory_problem(&self, path: &Path) -> Option<String>;
    /// Why the orchestrator cannot append a service's output to `path` (`stdout =
    /// "file:..."`), `None` when it can. The default looks at the machine as
    /// [`ThisMachine`] does.
    fn output_file_problem(&self, path: &Path) -> Option<String> {
        ThisMachine.output_file_problem(path)
    }
    /// Where services' cgroups would be under `root` and the cgroup v2 controllers they can
    /// have there (that directory's `cgroup.controllers`, or its nearest existing ancestor's);
    /// `Err` says why there would be no cgroups. The default looks at this machine.
    fn cgroup_controllers(&self, root: &super::CgroupRoot) -> Result<(PathBuf, String), String> {
        ThisMachine.cgroup_controllers(root)
    }
}

/// The machine this runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThisMachine;

impl Host for ThisMachine {
    fn group_exists(&self, name: &str) -> Result<bool, String> {
        crate::sys::user::group_id(name)
            .map(|gid| gid.is_some())
            .map_err(|e| format!("getgrnam: {e}"))
    }

    fn program_problem(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Err(e) => Some(format!("cannot be started: {e}")),
            Ok(meta) if !meta.is_file() => Some("is not a regular file".to_string()),
            Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
                Some("is not executable (no x permission bit)".to_string())
            }
            Ok(_) => None,
        }
    }

    fn directory_problem(&self, path: &Path) -> Option<String> {
        match std::fs::metadata(path) {
            Err(e) => Some(format!("cannot be the working directory: {e}")),
            Ok(meta) if !meta.is_dir() => Some("is not a directory".to_string()),
            Ok(_) => None,
        }
    }

    fn output_file_problem(&self, path: &Path) -> Option<String> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Some("is a directory".to_string()),
            // Opening for append changes nothing in an existing file.
            Ok(_) => match std::fs::OpenOptions::new().append(true).open(path) {
                Ok(_) => None,
                Err(e) => Some(format!("cannot be opened for appending: {e}")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(Path::new("/"));
                match std::fs::metadata(dir) {
                    Ok(meta) if meta.is_dir() => None,
                    Ok(_) => Some(format!(
                        "cannot be created: {:?} is not a directory",
                        dir.display().to_string()
                    )),
                    Err(e) => Some(format!(
                        "cannot be created in {:?}: {e}",
                        dir.display().to_string()
                    )),
                }
            }
            Err(e) => Some(format!("cannot be opened for appending: {e}")),
        }
    }

    fn cgroup_controllers(&self, root: &super::CgroupRoot) -> Result<(PathBuf, String), String> {
        use super::CgroupRoot;
        let dir = match root {
            CgroupRoot::Off => return Err("[cgroup] root = \"off\": services get no cgroup".into()),
            CgroupRoot::Path(path) => path.clone(),
            CgroupRoot::Auto => {
                let mount = crate::cgroup::mount_point()
                    .ok_or("[cgroup] root = \"auto\" finds no cgroup2 file system mounted")?;
                let own = crate::cgroup::own_cgroup().ok_or(
                    "[cgroup] root = \"auto\" finds no cgroup v2 line in /proc/self/cgroup",
                )?;
                if own == "/" {
                    return Err("[cgroup] root = \"auto\" gives no cgroups here: this process is in the root cgroup (the orchestrator needs a delegated cgroup, Delegate=yes, or a root path)".into());
                }
                mount.join(own.trim_start_matches('/'))
            }
        };
        // The orchestrator enables a controller in the root's parent first when the root
        // does not offer it (`Hierarchy::enable`): what the parent offers counts too.
        let read = |p: &Path| std::fs::read_to_string(p.join("cgroup.controllers")).ok();
        let mut at = dir.as_path();
        loop {
            if let Some(text) = read(at) {
                let mut offered: Vec<String> = text.split_whitespace().map(String::from).collect();
                if at == dir.as_path() {
                    let parent = at.parent().and_then(read).unwrap_or_default();
                    for c in parent.split_whitespace() {
                        if !offered.iter().any(|o| o == c) {
                            offered.push(c.to_string());
                        }
                    }
                }
                return Ok((at.to_path_buf(), offered.join(" ")));
            }
            match at.parent() {
                Some(parent) => at = parent,
                None => {
                    return Err(format!(
                        "{} is not in a cgroup v2 file system",
                        dir.display()
                    ))
                }
            }
        }
    }
}

/// Where the problems are: the text and spans of a file, or only a name (the v0.2 command
/// line has no file).
pub(crate) struct Source<'a> {
    pub path: &'a str,
    pub text: &'a str,
    pub spans: Option<&'a Spans>,
}

impl Source<'_> {
    fn at(
        &self,
        offset: Option<usize>,
        kind: ConfigErrorKind,
        field: &str,
        message: String,
    ) -> ConfigError {
        match offset {
            Some(offset) => ConfigError::at(self.path, self.text, offset, kind, field, message),
            None => ConfigError::unplaced(self.path, kind, field, message),
        }
    }
}

/// The host checks of a valid configuration: (errors, warnings).
pub(crate) fn check(
    config: &Config,
    source: &Source<'_>,
    host: &dyn Host,
) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let spans = source.spans;
    for (key, name, offset) in [
        (
            "control.group",
            &config.control.group,
            spans.and_then(|s| s.control_group),
        ),
        (
            "control.read_group",
            &config.control.read_group,
            spans.and_then(|s| s.control_read_group),
        ),
    ] {
        let Some(name) = name else { continue };
        match host.group_exists(name) {
            Ok(true) => {}
            Ok(false) => errors.push(source.at(
                offset,
                ConfigErrorKind::UnknownGroup,
                key,
                format!("no group named {name:?} on this machine: create it, or remove {key} (the orchestrator refuses to start without it)"),
            )),
            Err(e) => errors.push(source.at(
                offset,
                ConfigErrorKind::UnknownGroup,
                key,
                format!("group {name:?} cannot be looked up: {e}"),
            )),
        }
    }
    if config.services.is_empty() {
        warnings.push(source.at(
            None,
            ConfigErrorKind::Warning,
            "",
            "0 services: the orchestrator would start and supervise nothing".to_string(),
        ));
    }
    let mut controllers_at = None;
    let mut qm_controllers_at = None;
    let qm_root = config.agent.cgroup.clone().map(super::CgroupRoot::Path);
    for (index, spec) in config.services.iter().enumerate() {
        let service_spans = spans.and_then(|s| s.services.get(index));
        let program = Path::new(OsStr::from_bytes(spec.argv[0].as_bytes()));
        let cwd = spec.working_directory.as_bytes();
        let cwd_offset = service_spans.and_then(|s| s.working_directory);
        let argv0_offset = service_spans.map(|s| s.argv0);
        let field = |key: &str| format!("service.{}.{key}", spec.name);
        match spec.partition() {
            Partition::Local => {
                if let Some(problem) = host.program_problem(program) {
                    errors.push(source.at(
                        argv0_offset,
                        ConfigErrorKind::Missing,
                        &field("argv[0]"),
                        format!("program {:?} {problem}", program.display().to_string()),
                    ));
                }
                for (i, (key, target)) in [("stdout", &spec.stdout), ("stderr", &spec.stderr)]
                    .into_iter()
                    .enumerate()
                {
                    let super::OutputTarget::File(path) = target else {
                        continue;
                    };
                    let path = Path::new(OsStr::from_bytes(path.as_bytes()));
                    if let Some(problem) = host.output_file_problem(path) {
                        errors.push(source.at(
                            service_spans.and_then(|s| s.outputs[i]),
                            ConfigErrorKind::Missing,
                            &field(key),
                            format!("output file {:?} {problem}", path.display().to_string()),
                        ));
                    }
                }
                if !spec.cgroup_limits.is_empty() {
                    cgroup_limit_problems(
                        &mut errors,
                        source,
                        host,
                        Ok(&config.cgroup.root),
                        spec,
                        service_spans.map(|s| s.cgroup_limits.as_slice()),
                        &mut controllers_at,
                    );
                }
                // The default "/" is not worth a look; a configured one is.
                let configured = cwd_offset.is_some() || (spans.is_none() && cwd != b"/");
                if configured {
                    let dir = Path::new(OsStr::from_bytes(cwd));
                    if let Some(problem) = host.directory_problem(dir) {
                        errors.push(source.at(
                            cwd_offset,
                            ConfigErrorKind::Missing,
                            &field("working_directory"),
                            format!("{:?} {problem}", dir.display().to_string()),
                        ));
                    }
                }
            }
            Partition::Qm => {
                if !spec.cgroup_limits.is_empty() {
                    cgroup_limit_problems(
                        &mut errors,
                        source,
                        host,
                        qm_root.as_ref().ok_or(
                            "[agent] cgroup is not set, so QM services get no cgroup of their own (docs/config.md)",
                        ),
                        spec,
                        service_spans.map(|s| s.cgroup_limits.as_slice()),
                        &mut qm_controllers_at,
                    );
                }
                let what = if cwd_offset.is_some() {
                    "its program and working directory are paths"
                } else {
                    "its program is a path"
                };
                warnings.push(source.at(
                    argv0_offset,
                    ConfigErrorKind::Warning,
                    &field("argv[0]"),
                    format!(
                        "{:?} not checked: {what} inside the QM partition (holden-agent reports them when it starts the service)",
                        program.display().to_string()
                    ),
                ));
            }
        }
    }
    (errors, warnings)
}

/// The cgroup limits of a service need their controllers in the services' cgroups (a local
/// service's under `[cgroup] root`, a QM service's under `[agent] cgroup`, `root`): a limit
/// whose controller the machine does not give them is an error (never ignored), which names
/// the controller. `looked` keeps the one look at the machine.
fn cgroup_limit_problems(
    errors: &mut Vec<ConfigError>,
    source: &Source<'_>,
    host: &dyn Host,
    root: Result<&super::CgroupRoot, &str>,
    spec: &super::ServiceSpec,
    offsets: Option<&[usize]>,
    looked: &mut Option<Result<(PathBuf, String), String>>,
) {
    let found = looked.get_or_insert_with(|| {
        root.map_err(str::to_string)
            .and_then(|root| host.cgroup_controllers(root))
    });
    for (i, limit) in spec.cgroup_limits.limits.iter().enumerate() {
        let field = format!("service.{}.{}", spec.name, limit.key);
        let offset = offsets.and_then(|o| o.get(i).copied());
        let message = match &*found {
            Err(reason) => format!(
                "a cgroup limit needs the service's own cgroup, and there would be none: {reason}"
            ),
            Ok((_, offered)) if offered.split_whitespace().any(|c| c == limit.controller) => continue,
            Ok((dir, offered)) => format!(
                "needs the cgroup v2 controller `{}`, which {} does not offer (cgroup.controllers: {}): on a hybrid host it is bound to cgroup v1. Enable it for cgroup v2 (a pure cgroup2 mount, or cgroup_no_v1={} on the kernel command line, and \"+{}\" in the parent's cgroup.subtree_control), or remove `{}`",
                limit.controller,
                dir.display(),
                if offered.is_empty() { "none" } else { offered },
                limit.controller,
                limit.controller,
                limit.key
            ),
        };
        errors.push(source.at(offset, ConfigErrorKind::MissingController, &field, message));
    }
}
