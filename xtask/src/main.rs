//! `cargo xtask <task>`: holden's one entry point for build, test and fuzz tasks.
//!
//! Plain Rust and the standard library only (matklad's convention): every task is
//! a sequence of commands, printed before it runs, stopping at the first failure.

mod bench;
mod demo;
mod dist;
mod elf;
mod fuzz;
mod image;
mod run;
mod setup;
mod vm;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <task> [options]

Tasks:
  bench              restart latency, scale, memory and size against the machine's floor
                     (--quick under a minute; report in target/bench/report.md)
  build-image        AutoSD image manifest (holden.aib.yml) and its files; the image if aib is here
  ci                 everything CI checks: fmt, clippy, tests, a fuzz smoke of every target
  demo               holden's main job on this machine, narrated: crash loop, QM restart,
                     agent killed, holdenctl status, clean shutdown (about 30 s)
  dist               static musl release binaries (x86_64, aarch64), checked and sized
  fuzz [TARGET...]   run cargo-fuzz targets (all when none is named) with a time bound
      --seconds N        seconds per target (default 30)
      --list             list the fuzz targets and exit
  help               print this help
  vm-test            boot the static binaries on Debian's kernel in QEMU and check supervision
                     (--matrix: 5.10, 6.1, 6.12 on x86_64, 6.12 on aarch64, io_uring disabled)

Run `cargo xtask <task> --help` for a task's options.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "bench" => bench::main(rest),
        "ci" => ci(rest),
        "demo" => demo::main(rest),
        "dist" => dist::main(rest),
        "fuzz" => fuzz::main(rest),
        "build-image" => image::main(rest),
        "vm-test" => vm::main(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("xtask: unknown task `{other}`\n");
            eprint!("{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::Failure::Usage(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::from(2)
        }
        Err(run::Failure::Failed(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

const CI_HELP: &str = "\
cargo xtask ci [--fuzz-seconds N]

Installs what is missing first (the nightly toolchain, cargo-fuzz, the musl targets, the
Debian packages util-linux for unshare and nsenter, and systemd for tests/systemd_unit.rs),
then runs, stopping at the first failure:
  cargo fmt --all --check
  cargo clippy --workspace --all-targets -- -D warnings
  cargo test --workspace
  cargo xtask dist               (static musl binaries, x86_64 and aarch64)
  cargo xtask fuzz --seconds N   (every target; N defaults to 20)
";

fn ci(args: &[String]) -> Result<(), run::Failure> {
    let mut fuzz_seconds: u64 = 20;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{CI_HELP}");
                return Ok(());
            }
            "--fuzz-seconds" => fuzz_seconds = run::parse_number(it.next(), "--fuzz-seconds")?,
            other => return Err(run::Failure::Usage(format!("ci: unknown option `{other}`"))),
        }
    }
    setup::cargo_fuzz()?;
    // tests/systemd_unit.rs boots systemd in its own namespaces (unshare, nsenter) and fails
    // without it: a machine without systemd gets the package, never a skipped test.
    setup::debian(&[
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("/lib/systemd/systemd", "systemd"),
    ])?;
    let root = run::workspace_root();
    run::cargo(&root, &["fmt", "--all", "--check"])?;
    run::cargo(
        &root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run::cargo(&root, &["test", "--workspace"])?;
    // The shipped binaries are static musl builds; musl and glibc disagree on some
    // libc field types, so building them here catches such code.
    dist::main(&[])?;
    fuzz::run_targets(&root, &fuzz::targets(&root)?, fuzz_seconds)
}
