//! `cargo xtask fuzz`: run the cargo-fuzz targets in `fuzz/` with a time bound.
//!
//! Installs nothing: when cargo-fuzz or the nightly toolchain is missing it says
//! how to get them and fails.

use crate::run::{self, Failure};
use std::path::Path;
use std::process::Command;

const HELP: &str = "\
cargo xtask fuzz [TARGET...] [--seconds N] [--list]

Runs each named cargo-fuzz target (every target in fuzz/Cargo.toml when none is
named) for N seconds (default 30), one after the other, on the nightly toolchain.
New corpus entries stay in fuzz/corpus/TARGET (only seed-* files are committed);
a crash leaves its input in fuzz/artifacts/TARGET and fails the task.

Needs: rustup toolchain install nightly --profile minimal
       cargo install cargo-fuzz --locked
";

const SECONDS_DEFAULT: u64 = 30;

pub fn main(args: &[String]) -> Result<(), Failure> {
    let root = run::workspace_root();
    let all = targets(&root)?;
    let mut seconds = SECONDS_DEFAULT;
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(());
            }
            "--list" => {
                for t in &all {
                    println!("{t}");
                }
                return Ok(());
            }
            "--seconds" => seconds = run::parse_number(it.next(), "--seconds")?,
            t if t.starts_with('-') => {
                return Err(Failure::Usage(format!("fuzz: unknown option `{t}`")))
            }
            t if all.iter().any(|known| known == t) => chosen.push(t.to_string()),
            t => {
                return Err(Failure::Usage(format!(
                    "fuzz: no target `{t}` (targets: {})",
                    all.join(", ")
                )))
            }
        }
    }
    if seconds == 0 {
        return Err(Failure::Usage("fuzz: --seconds must be at least 1".into()));
    }
    run_targets(
        &root,
        if chosen.is_empty() { &all } else { &chosen },
        seconds,
    )
}

/// The `[[bin]]` names declared in `fuzz/Cargo.toml`.
pub fn targets(root: &Path) -> Result<Vec<String>, Failure> {
    let manifest = root.join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| Failure::Failed(format!("{}: {e}", manifest.display())))?;
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(value)) = (in_bin, line.strip_prefix("name")) {
            let name = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(Failure::Failed(format!(
            "{}: no [[bin]] fuzz targets declared",
            manifest.display()
        )));
    }
    Ok(names)
}

/// Runs every target in turn for `seconds` each.
pub fn run_targets(root: &Path, targets: &[String], seconds: u64) -> Result<(), Failure> {
    check_tools()?;
    let fuzz_dir = root.join("fuzz");
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| Failure::Failed(format!("{}: {e}", corpus.display())))?;
        let mut cmd = Command::new("cargo");
        // `cargo xtask` runs under a pinned toolchain; the explicit +nightly must win.
        cmd.env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1");
        run::status(cmd)?;
    }
    Ok(())
}

fn check_tools() -> Result<(), Failure> {
    crate::setup::cargo_fuzz()
}
