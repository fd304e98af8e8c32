//! Where services' cgroups live: the cgroup v2 mount, the caller's own cgroup, and the stable
//! path of each service's cgroup (`docs/config.md`, `[cgroup]`).
//!
//! A service's cgroup is `<services root>/<service name>`, derived from the root and the name
//! only, so that an orchestrator started again (after a crash, or re-executed) finds the
//! cgroups of the services its predecessor spawned and can list what runs in them
//! ([`Hierarchy::procs`]). Everything read here (`/proc/self/cgroup`, `/proc/self/mountinfo`,
//! `cgroup.procs`) is bounded, and odd content yields `None` or is skipped, never a panic.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Largest `/proc/self/mountinfo` read (a host with very many mounts: only the first MiB is
/// searched for the cgroup2 mount).
pub const MOUNTINFO_BYTES_MAX: u64 = 1024 * 1024;
/// Largest `/proc/self/cgroup` read.
pub const PROC_CGROUP_BYTES_MAX: u64 = 64 * 1024;
/// Name of the leaf cgroup the orchestrator moves itself into under `root = "auto"`.
pub const ORCHESTRATOR_LEAF: &str = "orchestrator";
/// Name of the cgroup that holds the services' cgroups under `root = "auto"`.
pub const SERVICES_DIR: &str = "services";

fn read_bounded(path: &str, max: u64) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The cgroup v2 path in a `/proc/PID/cgroup` text: the `0::PATH` line (`None` on a host with
/// cgroup v1 only, or for a line that is not an absolute path).
pub fn parse_own_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mount_field(field: &str) -> Option<String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4)?;
            let mut value: u32 = 0;
            for &d in digits {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                value = value * 8 + u32::from(d - b'0');
            }
            out.push(u8::try_from(value).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The mount point of the first cgroup2 file system in a `/proc/PID/mountinfo` text.
pub fn parse_cgroup2_mount(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fs_type = after.split(' ').next()?;
        if fs_type != "cgroup2" {
            return None;
        }
        let mount_point = before.split(' ').nth(4)?;
        unescape_mount_field(mount_point).filter(|p| p.starts_with('/'))
    })
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn mount_point() -> Option<PathBuf> {
    let text = read_bounded("/proc/self/mountinfo", MOUNTINFO_BYTES_MAX)?;
    parse_cgroup2_mount(&text).map(PathBuf::from)
}

/// This process's cgroup v2 path, relative to the mount (`/` in the root cgroup).
pub fn own_cgroup() -> Option<String> {
    let text = read_bounded("/proc/self/cgroup", PROC_CGROUP_BYTES_MAX)?;
    parse_own_cgroup(&text).map(str::to_string)
}

/// A process's `/proc/PID/cgroup`, read into a buffer of its own: allocation-free, for the
/// event loop.
pub struct ProcCgroup {
    bytes: [u8; 512],
    len: usize,
}

impl ProcCgroup {
    /// `None` when the process is gone (or the file cannot be read or is not text).
    pub fn read(pid: i32) -> Option<ProcCgroup> {
        let mut bytes = [0u8; 512];
        let path = crate::sys::fd::ProcPath::pid_file(pid, "cgroup");
        let len = crate::sys::fd::read_small_file(path.as_cstr(), &mut bytes).ok()?;
        let read = ProcCgroup { bytes, len };
        std::str::from_utf8(read.bytes.get(..len)?).ok()?;
        Some(read)
    }

    /// The file's text (checked to be UTF-8 when read).
    pub fn text(&self) -> &str {
        std::str::from_utf8(self.bytes.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}

/// The service a process belongs to by its cgroup: in the `/proc/PID/cgroup` text `text`, the
/// component right below `root` (the services' root, relative to the cgroup2 mount, as
/// `/proc` shows it), when the process's cgroup is that service's or one below it.
pub fn service_in<'t>(text: &'t str, root: &str) -> Option<&'t str> {
    let path = parse_own_cgroup(text)?;
    let root = root.trim_end_matches('/');
    let below = path.strip_prefix(root)?.strip_prefix('/')?;
    let name = below.split('/').next()?;
    valid_component(name).then_some(name)
}

/// Whether `name` can be one path component of a cgroup (what a service name always is:
/// `[A-Za-z0-9_.@-]`, not starting with `.`).
pub fn valid_component(name: &str) -> bool {
    crate::wire::v1::is_cgroup_name(name.as_bytes())
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The cgroups of one orchestrator's services: `<root>/<service name>` each.
#[derive(Debug)]
pub struct Hierarchy {
    root: PathBuf,
    /// The root's directory, once [`Hierarchy::open_root`] opened it.
    root_dir: Option<OwnedFd>,
}

/// Calls `f` with `name` NUL-terminated in a stack buffer (no allocation); `None` for a name
/// that is not a valid component.
fn with_component<R>(name: &str, f: impl FnOnce(&std::ffi::CStr) -> R) -> Option<R> {
    let mut buf = [0u8; 256];
    if !valid_component(name) || name.len() >= buf.len() {
        return None;
    }
    buf[..name.len()].copy_from_slice(name.as_bytes());
    let name = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    Some(f(name))
}

/// Opens the cgroup `name` (one valid component) inside the cgroup directory `dir`;
/// allocation-free.
pub fn open_component(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    with_component(name, |name| {
        crate::sys::cgroup::open_in(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
    })
    .unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::InvalidInput)))
}

impl Hierarchy {
    /// The root as `/proc/PID/cgroup` shows it: relative to the cgroup2 mount, from `/`.
    /// `None` if the root is not under `mount`.
    pub fn root_in_proc(&self, mount: &Path) -> Option<String> {
        let rel = self.root.strip_prefix(mount).ok()?;
        Some(format!("/{}", rel.display()))
    }

    /// Services' cgroups under `root` (an absolute path inside a cgroup v2 mount).
    pub fn at(root: PathBuf) -> Hierarchy {
        Hierarchy {
            root,
            root_dir: None,
        }
    }

    /// Creates the root if it does not exist and opens it (for [`Hierarchy::renew`]).
    pub fn open_root(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        self.root_dir = Some(crate::sys::cgroup::open_dir(&cstring(&self.root)?)?);
        Ok(())
    }

    /// The root's directory, once opened.
    pub fn root_dir(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.root_dir.as_ref().map(AsFd::as_fd)
    }

    /// Replaces `service`'s empty cgroup by a new one at the same path (rmdir, mkdir) and
    /// opens it; allocation-free. After a `cgroup.kill`, a kernel may kill every child later
    /// created in that cgroup with `CLONE_INTO_CGROUP` (seen on 6.18: the kill count it
    /// compares is read from the parent's cgroup); a new cgroup has no kill behind it.
    pub fn renew(&self, service: &str) -> io::Result<OwnedFd> {
        let root = self
            .root_dir()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        with_component(service, |name| {
            crate::sys::cgroup::rmdir_in(root, name)?;
            crate::sys::cgroup::mkdir_in(root, name)?;
            crate::sys::cgroup::open_in(root, name, libc::O_RDONLY | libc::O_DIRECTORY)
        })
        .unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::InvalidInput)))
    }

    /// Makes `controller` available to the services' cgroups: `+controller` into the root's
    /// `cgroup.subtree_control`, and first into its parent's when the root does not offer it
    /// (under `root = "auto"` the parent is the orchestrator's delegated cgroup). Start-up and
    /// reload only. The error says what the root offers.
    pub fn enable(&self, controller: &str) -> Result<(), String> {
        let read = |p: &Path, file: &str| {
            std::fs::read_to_string(p.join(file)).map(|t| t.trim().to_string())
        };
        let has = |text: &str| text.split_whitespace().any(|c| c == controller);
        if read(&self.root, "cgroup.subtree_control").is_ok_and(|t| has(&t)) {
            return Ok(());
        }
        let offered = read(&self.root, "cgroup.controllers").unwrap_or_default();
        if !has(&offered) {
            if let Some(parent) = self.root.parent() {
                let _ = std::fs::write(
                    parent.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
        }
        std::fs::write(
            self.root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        )
        .map_err(|e| {
            let offered = read(&self.root, "cgroup.controllers").unwrap_or_default();
            format!(
                "the cgroup v2 controller `{controller}` cannot be enabled in {} (its \
                     cgroup.controllers: {}; on a hybrid host it is bound to cgroup v1): {e}",
                self.root.display(),
                if offered.is_empty() { "none" } else { &offered },
            )
        })
    }

    /// The directory that holds the services' cgroups.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `service`'s cgroup: stable across restarts (the root and the name only);
    /// `None` for a name that cannot be a path component.
    pub fn path_of(&self, service: &str) -> Option<PathBuf> {
        valid_component(service).then(|| self.root.join(service))
    }

    /// Creates `service`'s cgroup if it does not exist (and the root with its parents), and
    /// opens its directory.
    pub fn create(&self, service: &str) -> io::Result<OwnedFd> {
        let path = self
            .path_of(service)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        std::fs::create_dir_all(&self.root)?;
        crate::sys::cgroup::mkdir(&cstring(&path)?)?;
        crate::sys::cgroup::open_dir(&cstring(&path)?)
    }

    /// Opens `service`'s existing cgroup directory.
    pub fn open(&self, service: &str) -> io::Result<OwnedFd> {
        let path = self
            .path_of(service)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        crate::sys::cgroup::open_dir(&cstring(&path)?)
    }

    /// The pids in `service`'s cgroup (its `cgroup.procs`, at most
    /// [`crate::sys::cgroup::PROCS_MAX`]): what an orchestrator that starts again finds of
    /// the processes its predecessor spawned. `ENOENT` when the cgroup does not exist.
    pub fn procs(&self, service: &str) -> io::Result<Vec<i32>> {
        let dir = self.open(service)?;
        let mut pids = Vec::new();
        crate::sys::cgroup::for_each_proc(dir.as_fd(), |pid| pids.push(pid))?;
        Ok(pids)
    }

    /// Removes `service`'s cgroup if it is empty (`EBUSY` while a process is in it).
    pub fn remove(&self, service: &str) -> io::Result<()> {
        let path = self
            .path_of(service)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        crate::sys::cgroup::rmdir(&cstring(&path)?)
    }
}

/// What `root = "auto"` found.
#[derive(Debug)]
pub enum Auto {
    /// Cgroups in this hierarchy; `moved` when the orchestrator moved itself into its leaf
    /// (`<own>/orchestrator`) just now.
    At { hierarchy: Hierarchy, moved: bool },
    /// No cgroups, and why (logged once).
    Off(String),
}

/// `root = "auto"`: the orchestrator's own cgroup, when it is its own (delegated by systemd
/// with `Delegate=yes`, the orchestrator alone in it). It then moves itself into the leaf
/// `<own>/orchestrator` (the no-internal-process rule: once controllers are enabled, only
/// leaves may hold processes) and the services' cgroups go under `<own>/services`. An
/// orchestrator already in a leaf called `orchestrator` (started again by a re-exec) takes its
/// parent as its own. Off: without a cgroup v2 mount, in the root cgroup, or in a cgroup shared
/// with other processes (a terminal's scope, a test runner's cgroup), where services of two
/// orchestrators with the same names would share cgroups.
pub fn resolve_auto() -> Auto {
    resolve_delegated(ORCHESTRATOR_LEAF)
}

/// [`resolve_auto`] for any process alone in a delegated cgroup (holden-agent's is `agent`):
/// it moves itself into `<own>/<leaf>`, its children's cgroups go under `<own>/services`.
pub fn resolve_delegated(leaf: &str) -> Auto {
    let Some(mount) = mount_point() else {
        return Auto::Off("no cgroup2 file system is mounted".into());
    };
    let Some(own) = own_cgroup() else {
        return Auto::Off("no cgroup v2 line in /proc/self/cgroup".into());
    };
    if own == "/" {
        return Auto::Off("this process is in the root cgroup".into());
    }
    let own_path = mount.join(own.trim_start_matches('/'));
    let in_leaf = own_path.file_name().is_some_and(|n| n == leaf);
    let base = match (in_leaf, own_path.parent()) {
        (true, Some(parent)) => parent.to_path_buf(),
        _ => own_path.clone(),
    };
    let me = crate::sys::process::getpid();
    let alone = cstring(&own_path)
        .and_then(|p| crate::sys::cgroup::open_dir(&p))
        .and_then(|dir| {
            let mut others = 0usize;
            crate::sys::cgroup::for_each_proc(dir.as_fd(), |pid| others += usize::from(pid != me))?;
            Ok(others == 0)
        });
    match alone {
        Ok(true) => {}
        Ok(false) => {
            return Auto::Off(format!(
                "its cgroup {} has other processes: not delegated to it",
                own_path.display()
            ))
        }
        Err(e) => return Auto::Off(format!("{}: {e}", own_path.display())),
    }
    let mut moved = false;
    if !in_leaf {
        let leaf = base.join(leaf);
        let joined = cstring(&leaf).and_then(|p| {
            crate::sys::cgroup::mkdir(&p)?;
            let dir = crate::sys::cgroup::open_dir(&p)?;
            let procs = crate::sys::cgroup::open_in(dir.as_fd(), c"cgroup.procs", libc::O_WRONLY)?;
            crate::sys::fd::write(procs.as_fd(), b"0").map(|_| ())
        });
        if let Err(e) = joined {
            return Auto::Off(format!("moving into {}: {e}", leaf.display()));
        }
        moved = true;
    }
    Auto::At {
        hierarchy: Hierarchy::at(base.join(SERVICES_DIR)),
        moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_the_component_below_the_root() {
        let text = "12:pids:/x\n0::/holden/radio/worker\n";
        assert_eq!(service_in(text, "/holden"), Some("radio"));
        assert_eq!(service_in(text, "/holden/"), Some("radio"));
        assert_eq!(service_in("0::/holden/radio\n", "/holden"), Some("radio"));
        // The root itself, a sibling that shares the prefix, another tree, no v2 line.
        assert_eq!(service_in("0::/holden\n", "/holden"), None);
        assert_eq!(service_in("0::/holdenx/radio\n", "/holden"), None);
        assert_eq!(service_in("0::/system.slice/a\n", "/holden"), None);
        assert_eq!(service_in("1:name=systemd:/holden/a\n", "/holden"), None);
        // The orchestrator's own leaf is no service.
        assert_eq!(service_in("0::/holden/.orchestrator\n", "/holden"), None);
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        assert_eq!(parse_own_cgroup("0::/\n"), Some("/"));
        assert_eq!(
            parse_own_cgroup("12:pids:/x\n0::/system.slice/holden.service\n"),
            Some("/system.slice/holden.service")
        );
        assert_eq!(parse_own_cgroup("12:pids:/x\n"), None);
        assert_eq!(parse_own_cgroup("0::relative\n"), None);
        assert_eq!(parse_own_cgroup(""), None);
    }

    #[test]
    fn the_cgroup2_mount_is_found_and_unescaped() {
        let text = "24 30 0:22 / /sys rw - sysfs sysfs rw\n\
                    35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(text).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let spaced = "1 2 0:1 / /a\\040b rw shared:1 - cgroup2 none rw\n";
        assert_eq!(parse_cgroup2_mount(spaced).as_deref(), Some("/a b"));
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / /a\\04 rw - cgroup2 x\n"),
            None
        );
        assert_eq!(parse_cgroup2_mount("garbage\n - cgroup2\n"), None);
        assert_eq!(parse_cgroup2_mount(""), None);
    }

    #[test]
    fn service_paths_are_the_root_and_the_name() {
        let h = Hierarchy::at(PathBuf::from("/sys/fs/cgroup/holden.service/services"));
        assert_eq!(
            h.path_of("web-1"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/holden.service/services/web-1"
            ))
        );
        for bad in ["", "..", ".hidden", "a/b", "cgroup.procs"] {
            assert_eq!(h.path_of(bad), None, "{bad:?}");
        }
    }
}

/// Longest value text of a cgroup limit file (`cpu.max`: two 20-digit numbers).
pub const CGROUP_VALUE_LEN_MAX: usize = 48;

/// One limit a service's cgroup gets: the cgroup v2 file, the controller it belongs to, the
/// configuration key, and the text written to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupLimit {
    pub key: &'static str,
    pub controller: &'static str,
    pub file: &'static std::ffi::CStr,
    pub value: arrayvec::ArrayString<CGROUP_VALUE_LEN_MAX>,
}

impl CgroupLimit {
    /// The limit of configuration key `key` (`"memory_max"` …) with the file text `value`;
    /// `None` for an unknown key or a value over [`CGROUP_VALUE_LEN_MAX`] bytes.
    pub fn new(key: &str, value: &str) -> Option<CgroupLimit> {
        let (key, controller, file) = *CGROUP_LIMIT_KEYS.iter().find(|(k, _, _)| *k == key)?;
        Some(CgroupLimit {
            key,
            controller,
            file,
            value: arrayvec::ArrayString::from(value).ok()?,
        })
    }
}

/// Every cgroup limit key: (key, controller, file).
pub const CGROUP_LIMIT_KEYS: [(&str, &str, &std::ffi::CStr); 6] = [
    ("memory_max", "memory", c"memory.max"),
    ("memory_high", "memory", c"memory.high"),
    ("cpu_weight", "cpu", c"cpu.weight"),
    ("cpu_max", "cpu", c"cpu.max"),
    ("pids_max", "pids", c"pids.max"),
    ("io_weight", "io", c"io.weight"),
];

/// A service's cgroup limits (`docs/config.md`), at most one per key, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupLimits {
    pub limits: arrayvec::ArrayVec<CgroupLimit, 6>,
}

impl CgroupLimits {
    /// The controllers the limits need, each once, in key order.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for limit in &self.limits {
            if !out.contains(&limit.controller) {
                out.push(limit.controller);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}
