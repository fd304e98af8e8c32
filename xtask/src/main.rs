//! cargo xtask: holden's build tasks (being written).

fn main() -> std::process::ExitCode {
    eprintln!("usage: cargo xtask <task>  (no tasks exist yet)");
    std::process::ExitCode::from(2)
}
