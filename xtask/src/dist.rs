//! `cargo xtask dist`: static musl release binaries for every shipped architecture.

use crate::run::{self, Failure};
use std::path::{Path, PathBuf};
use std::process::Command;

const HELP: &str = "\
cargo xtask dist [--arch x86_64|aarch64]...

Builds holden-orchestrator, holden-agent and holdenctl in release mode for
x86_64-unknown-linux-musl and aarch64-unknown-linux-musl (linked by rust-lld, no
C cross toolchain), checks that each is fully static (no ELF interpreter, no
needed shared libraries) and prints their sizes. Missing rustup targets are added.
Binaries land in target/<triple>/release/.
";

pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];
pub const BINARIES: [&str; 3] = ["holden-orchestrator", "holden-agent", "holdenctl"];

pub fn main(args: &[String]) -> Result<(), Failure> {
    let mut arches = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(());
            }
            "--arch" => {
                let arch = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--arch needs a value".into()))?;
                if !ARCHES.contains(&arch.as_str()) {
                    return Err(Failure::Usage(format!(
                        "--arch: `{arch}` is not one of {}",
                        ARCHES.join(", ")
                    )));
                }
                arches.push(arch.clone());
            }
            other => return Err(Failure::Usage(format!("dist: unknown option `{other}`"))),
        }
    }
    if arches.is_empty() {
        arches = ARCHES.iter().map(|a| a.to_string()).collect();
    }
    let root = run::workspace_root();
    let mut rows = Vec::new();
    for arch in &arches {
        for (name, path) in build(&root, arch)? {
            let size = std::fs::metadata(&path)
                .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?
                .len();
            check_static(&path)?;
            rows.push((arch.clone(), name, size, path));
        }
    }
    println!("{:<8} {:<20} {:>10}  path", "arch", "binary", "bytes");
    for (arch, name, size, path) in rows {
        println!("{arch:<8} {name:<20} {size:>10}  {}", path.display());
    }
    Ok(())
}

/// Builds the release binaries for one architecture; returns (name, path) pairs.
pub fn build(root: &Path, arch: &str) -> Result<Vec<(String, PathBuf)>, Failure> {
    let triple = format!("{arch}-unknown-linux-musl");
    ensure_target(&triple)?;
    // Two builds: together, cargo would unify the library's features and compile the agent
    // against the orchestrator's dependencies (toml, serde, io-uring), which it must not link.
    for package in ["holden", "holden-agent"] {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root)
            .args(["build", "--release", "--target", &triple])
            .args(["-p", package]);
        run::status(cmd)?;
    }
    let dir = target_dir(root).join(&triple).join("release");
    Ok(BINARIES
        .iter()
        .map(|b| (b.to_string(), dir.join(b)))
        .collect())
}

/// The cargo target directory (honours CARGO_TARGET_DIR).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn ensure_target(triple: &str) -> Result<(), Failure> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == triple)
        })
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", triple]);
    run::status(cmd).map_err(|_| {
        Failure::Failed(format!(
            "rustup target {triple} is missing and could not be added; run:\n  rustup target add {triple}"
        ))
    })
}

/// Fails unless the ELF file at `path` has no interpreter and needs no shared library.
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
