use std::process::ExitCode;

fn main() -> ExitCode {
    match weave_router::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weave-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
