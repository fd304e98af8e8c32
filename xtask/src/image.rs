//! `cargo xtask build-image`: an automotive-image-builder manifest (`holden.aib.yml`) and every
//! file it references, for one architecture; the image itself when aib is installed.
//!
//! The manifest is generated from [`ENTRIES`] (what goes where, on which side of the QM
//! boundary) so that the file list, the `chmod_files` modes and the enabled units cannot drift
//! apart. The orchestrator's unit, configuration, tmpfiles, drop-in and sysctl sources live in
//! `xtask/image/`; the agent's unit is the agent's own (`agent/systemd/holden-agent.service`).

use crate::dist;
use crate::run::{self, Failure};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELP: &str = "\
cargo xtask build-image [--arch x86_64|aarch64] [--distro NAME] [--target NAME] [--out DIR]

Writes an AutoSD image description for holden into DIR (default target/image/<arch>):
  holden.aib.yml   the automotive-image-builder manifest
  files/host/...   what goes into the host (safety) partition: holden-orchestrator,
                   holdenctl, the orchestrator unit (Type=notify, WatchdogSec), its
                   configuration, the tmpfiles.d entry for /run/holden, the qm.container.d
                   drop-in sharing /run/holden/qm with QM, the io_uring sysctl drop-in
  files/qm/...     what goes into the QM partition: holden-agent and its unit
The binaries are the static musl release builds of `cargo xtask dist`.

If aib-dev (or the older automotive-image-builder) is on PATH, the image is built as
DIR/holden-<arch>.qcow2; otherwise the exact command to run on a machine that has it is
printed and the task succeeds.

Options:
  --arch ARCH      x86_64 (default) or aarch64
  --distro NAME    aib distribution (default autosd10; autosd9 for CentOS Stream 9 based
                   images, as in the older `automotive-image-builder build --distro autosd9`)
  --target NAME    aib hardware target (default qemu)
  --out DIR        output directory (default target/image/<arch>)
";

/// Default aib distribution: AutoSD 10 (kernel 6.12 base).
pub const DISTRO_DEFAULT: &str = "autosd10";
/// Default aib hardware target.
pub const TARGET_DEFAULT: &str = "qemu";
/// Name of the manifest file in the output directory.
pub const MANIFEST_NAME: &str = "holden.aib.yml";
/// Longest accepted distro or target name.
const NAME_BYTES_MAX: usize = 64;

/// Which side of the QM boundary a file is installed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The host (safety) partition: the manifest's `content`.
    Host,
    /// The QM partition: the manifest's `qm.content`.
    Qm,
}

impl Side {
    fn dir(self) -> &'static str {
        match self {
            Side::Host => "host",
            Side::Qm => "qm",
        }
    }
}

/// Where a file's content comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// A binary of `cargo xtask dist` (by name).
    Binary(&'static str),
    /// A file of the repository (path relative to the workspace root).
    Repo(&'static str),
}

/// One installed file.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub side: Side,
    /// Absolute destination in the partition (under /usr or /etc).
    pub dest: &'static str,
    pub source: Source,
    /// Installed with mode 755 (`chmod_files`); everything else arrives as 644.
    pub executable: bool,
}

const fn entry(side: Side, dest: &'static str, source: Source, executable: bool) -> Entry {
    Entry {
        side,
        dest,
        source,
        executable,
    }
}

/// Every file the image gets.
pub const ENTRIES: [Entry; 9] = [
    entry(
        Side::Host,
        "/usr/bin/holden-orchestrator",
        Source::Binary("holden-orchestrator"),
        true,
    ),
    entry(
        Side::Host,
        "/usr/bin/holdenctl",
        Source::Binary("holdenctl"),
        true,
    ),
    entry(
        Side::Host,
        "/usr/lib/systemd/system/holden-orchestrator.service",
        Source::Repo("xtask/image/holden-orchestrator.service"),
        false,
    ),
    entry(
        Side::Host,
        "/etc/holden/orchestrator.toml",
        Source::Repo("xtask/image/orchestrator.toml"),
        false,
    ),
    entry(
        Side::Host,
        "/usr/lib/tmpfiles.d/holden.conf",
        Source::Repo("xtask/image/holden.tmpfiles.conf"),
        false,
    ),
    entry(
        Side::Host,
        "/etc/containers/systemd/qm.container.d/holden.conf",
        Source::Repo("xtask/image/qm-holden.conf"),
        false,
    ),
    entry(
        Side::Host,
        "/usr/lib/sysctl.d/60-holden-io_uring.conf",
        Source::Repo("xtask/image/holden-io_uring.sysctl.conf"),
        false,
    ),
    entry(
        Side::Qm,
        "/usr/bin/holden-agent",
        Source::Binary("holden-agent"),
        true,
    ),
    entry(
        Side::Qm,
        "/usr/lib/systemd/system/holden-agent.service",
        Source::Repo("agent/systemd/holden-agent.service"),
        false,
    ),
];

/// Units enabled on each side (`systemd.enabled_services`).
pub const ENABLED_SERVICES: [(Side, &str); 2] = [
    (Side::Host, "holden-orchestrator.service"),
    (Side::Qm, "holden-agent.service"),
];

struct Options {
    arch: String,
    distro: String,
    target: String,
    out: Option<PathBuf>,
}

pub fn main(args: &[String]) -> Result<(), Failure> {
    let Some(opts) = parse(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let root = run::workspace_root();
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| dist::target_dir(&root).join("image").join(&opts.arch));
    let binaries = dist::build(&root, &opts.arch)?;
    for (_, path) in &binaries {
        check_static(path)?;
    }
    if opts.arch == std::env::consts::ARCH {
        check_config(&binaries, &root.join("xtask/image/orchestrator.toml"))?;
    }
    let manifest = write_bundle(&root, &out, &binaries)?;
    println!("wrote {}", manifest.display());
    for e in &ENTRIES {
        println!("  {:<5} {}", e.side.dir(), e.dest);
    }
    let image = format!("holden-{}.qcow2", opts.arch);
    let installed = ["aib-dev", "automotive-image-builder"]
        .into_iter()
        .find(|p| on_path(p));
    match installed {
        Some(found) => {
            let (program, args) = aib_command(found, &opts, &image);
            let mut cmd = Command::new(program);
            cmd.args(&args).current_dir(&out);
            run::status(cmd)?;
            println!("image: {}", out.join(&image).display());
            Ok(())
        }
        None => {
            let (program, args) = aib_command("aib-dev", &opts, &image);
            println!(
                "\nautomotive-image-builder is not installed here; on a machine that has it, run:\n  \
                 cd {} && {program} {}\n(the directory is self-contained: copy it whole; with the \
                 older tool: automotive-image-builder {} --mode package --export qcow2 ...)",
                out.display(),
                args.join(" "),
                args[..7].join(" ")
            );
            Ok(())
        }
    }
}

fn parse(args: &[String]) -> Result<Option<Options>, Failure> {
    let mut opts = Options {
        arch: "x86_64".into(),
        distro: DISTRO_DEFAULT.into(),
        target: TARGET_DEFAULT.into(),
        out: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Failure::Usage(format!("build-image: {name} needs a value")))
        };
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--arch" => {
                let arch = value("--arch")?;
                if !dist::ARCHES.contains(&arch.as_str()) {
                    return Err(Failure::Usage(format!(
                        "build-image: --arch `{arch}` is not one of {}",
                        dist::ARCHES.join(", ")
                    )));
                }
                opts.arch = arch;
            }
            "--distro" => opts.distro = plain_name("--distro", value("--distro")?)?,
            "--target" => opts.target = plain_name("--target", value("--target")?)?,
            "--out" => opts.out = Some(PathBuf::from(value("--out")?)),
            other => {
                return Err(Failure::Usage(format!(
                    "build-image: unknown option `{other}` (see --help)"
                )))
            }
        }
    }
    Ok(Some(opts))
}

/// Distro and target names go into a printed shell command: keep them to plain characters.
fn plain_name(option: &str, value: String) -> Result<String, Failure> {
    let ok = !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(value)
    } else {
        Err(Failure::Usage(format!(
            "build-image: {option} `{value}`: expected 1..={NAME_BYTES_MAX} of a-z 0-9 . _ -"
        )))
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The image build command: `aib-dev build` (current aib), or the older
/// `automotive-image-builder build ... --mode package --export qcow2` form.
fn aib_command(program: &str, opts: &Options, image: &str) -> (&'static str, Vec<String>) {
    let common = [
        "build".to_string(),
        "--distro".into(),
        opts.distro.clone(),
        "--arch".into(),
        opts.arch.clone(),
        "--target".into(),
        opts.target.clone(),
    ];
    if program == "automotive-image-builder" {
        let mut args = common.to_vec();
        args.extend(["--mode", "package", "--export", "qcow2"].map(String::from));
        args.extend([MANIFEST_NAME.to_string(), image.to_string()]);
        ("automotive-image-builder", args)
    } else {
        let mut args = common.to_vec();
        args.extend([MANIFEST_NAME.to_string(), image.to_string()]);
        ("aib-dev", args)
    }
}

/// An image gets fully static binaries only (AutoSD has no musl to link against).
fn check_static(path: &Path) -> Result<(), Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    match crate::elf::linkage(&bytes) {
        Ok(crate::elf::Linkage::Static) => Ok(()),
        Ok(crate::elf::Linkage::Dynamic(why)) => Err(Failure::Failed(format!(
            "{}: not fully static: {why}",
            path.display()
        ))),
        Err(e) => Err(Failure::Failed(format!("{}: {e}", path.display()))),
    }
}

/// Runs the freshly built orchestrator's `--check` on the image's default configuration.
fn check_config(binaries: &[(String, PathBuf)], config: &Path) -> Result<(), Failure> {
    let orchestrator = binary(binaries, "holden-orchestrator")?;
    let mut cmd = Command::new(orchestrator);
    cmd.arg("--check").arg("--config").arg(config);
    run::status(cmd)
}

fn binary<'a>(binaries: &'a [(String, PathBuf)], name: &str) -> Result<&'a Path, Failure> {
    binaries
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.as_path())
        .ok_or_else(|| {
            Failure::Failed(format!("build-image: no `{name}` among the built binaries"))
        })
}

/// Copies every file of [`ENTRIES`] to `out/files/<side><dest>` (binaries from `binaries`,
/// the rest from the workspace `root`) and writes the manifest; returns the manifest's path.
pub fn write_bundle(
    root: &Path,
    out: &Path,
    binaries: &[(String, PathBuf)],
) -> Result<PathBuf, Failure> {
    let files = out.join("files");
    if files.exists() {
        std::fs::remove_dir_all(&files)
            .map_err(|e| Failure::Failed(format!("{}: remove: {e}", files.display())))?;
    }
    for e in &ENTRIES {
        let from = match e.source {
            Source::Binary(name) => binary(binaries, name)?.to_path_buf(),
            Source::Repo(path) => root.join(path),
        };
        let to = out.join(source_path(e));
        copy_with_mode(&from, &to, if e.executable { 0o755 } else { 0o644 })?;
    }
    let manifest = out.join(MANIFEST_NAME);
    std::fs::write(&manifest, render_manifest())
        .map_err(|e| Failure::Failed(format!("{}: write: {e}", manifest.display())))?;
    Ok(manifest)
}

/// The manifest-relative source path of an entry: `files/<side><dest>`.
pub fn source_path(e: &Entry) -> String {
    format!("files/{}{}", e.side.dir(), e.dest)
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        Failure::Failed(format!("{}: {what}: {e}", path.display()))
    };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create directory", dir, e))?;
    }
    std::fs::copy(from, to).map_err(|e| fail("copy", from, e))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("chmod", to, e))
}

/// The `.aib.yml` text. Every string is double-quoted (none holds a quote or a backslash).
pub fn render_manifest() -> String {
    let mut y = String::new();
    y.push_str(
        "# holden on AutoSD: written by `cargo xtask build-image` (see docs/deploy.md).\n\
         # Paths in source_path are relative to this file.\n\
         name: \"holden\"\n\n",
    );
    y.push_str("# The host (safety) partition.\ncontent:\n");
    render_content(&mut y, Side::Host, "  ");
    y.push_str(
        "\n# The QM partition (its own rootfs, systemd and PID namespace).\nqm:\n  content:\n",
    );
    render_content(&mut y, Side::Qm, "    ");
    y
}

fn render_content(y: &mut String, side: Side, indent: &str) {
    let entries = ENTRIES.iter().filter(|e| e.side == side);
    let _ = writeln!(y, "{indent}add_files:");
    for e in entries.clone() {
        let _ = writeln!(y, "{indent}  - path: \"{}\"", e.dest);
        let _ = writeln!(y, "{indent}    source_path: \"{}\"", source_path(e));
    }
    let _ = writeln!(y, "{indent}chmod_files:");
    for e in entries.filter(|e| e.executable) {
        let _ = writeln!(y, "{indent}  - path: \"{}\"", e.dest);
        let _ = writeln!(y, "{indent}    mode: \"755\"");
    }
    let _ = writeln!(y, "{indent}systemd:\n{indent}  enabled_services:");
    for (_, unit) in ENABLED_SERVICES.iter().filter(|(s, _)| *s == side) {
        let _ = writeln!(y, "{indent}    - \"{unit}\"");
    }
}

#[cfg(test)]
mod tests;
