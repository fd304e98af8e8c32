//! What the tasks need on a fresh machine, installed by the tasks themselves: the nightly
//! toolchain and cargo-fuzz for the fuzz smoke, the musl targets for `dist` (in `dist.rs`),
//! and Debian packages. `.ci/run` only calls the tasks, so the two cannot drift.
//!
//! Each step checks first and installs only what is missing, so a second run installs
//! nothing.

use crate::run::{self, Failure};
use std::process::Command;

/// The nightly toolchain (cargo-fuzz needs it).
pub fn nightly() -> Result<(), Failure> {
    if run::succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    run::status(cmd)
}

/// cargo-fuzz.
pub fn cargo_fuzz() -> Result<(), Failure> {
    nightly()?;
    if run::succeeds("cargo", &["+nightly", "fuzz", "--version"]) {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "cargo-fuzz", "--locked"]);
    run::status(cmd)
}

/// Debian packages: each `(present, package)` pair is installed with apt-get unless
/// `present` — a command on `PATH`, or a path — already exists. `apt-get update` runs once,
/// only when something is missing.
pub fn debian(wanted: &[(&str, &str)]) -> Result<(), Failure> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(present, _)| !present_on_machine(present))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    run::status(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run::status(install)
}

fn present_on_machine(what: &str) -> bool {
    if what.starts_with('/') {
        return std::path::Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(what).is_file()))
}
