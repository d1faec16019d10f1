use std::process::ExitCode;

use weave_router::datapath::DatapathError;

fn main() -> ExitCode {
    // Installed as the CNI plugin (`setup-cni`), the runtime runs this program as weave-net.
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_os_string()));
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new(weave_router::cni::PLUGIN_NAME)) {
        return weave_router::cni::plugin::main();
    }
    match weave_router::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weave-router: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: ` between them, down to the first data-path error: that
/// one's text already says its own cause (its sources are there for code, not for people).
fn one_line(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<DatapathError>() {
            break;
        }
    }
    parts.join(": ")
}
