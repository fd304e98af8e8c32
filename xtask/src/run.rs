//! Running commands: print each one, fail with its exit status.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a task stopped.
pub enum Failure {
    /// The task was called wrongly (exit code 2).
    Usage(String),
    /// A step failed (exit code 1).
    Failed(String),
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Runs `cargo ARGS` in `dir`.
pub fn cargo(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(dir);
    status(cmd)
}

/// Runs a prepared command, echoing it first.
pub fn status(mut cmd: Command) -> Result<(), Failure> {
    let shown = show(&cmd);
    eprintln!("$ {shown}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::Failed(format!("`{shown}` failed: {s}"))),
        Err(e) => Err(Failure::Failed(format!("`{shown}`: cannot run: {e}"))),
    }
}

/// Whether `program ARGS` runs and exits 0 (output discarded).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Parses the value of a numeric option.
pub fn parse_number(value: Option<&String>, option: &str) -> Result<u64, Failure> {
    let value = value.ok_or_else(|| Failure::Usage(format!("{option} needs a value")))?;
    value
        .parse()
        .map_err(|_| Failure::Usage(format!("{option}: `{value}` is not a whole number")))
}
