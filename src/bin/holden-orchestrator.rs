//! holden-orchestrator: not implemented yet.

fn main() -> std::process::ExitCode {
    eprintln!("holden-orchestrator: not implemented yet (see the open issues); nothing was done");
    std::process::ExitCode::from(2)
}
