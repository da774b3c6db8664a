//! The `k8sd` binary: parse the command line, set up logging, dispatch, and map the final error
//! to a process exit code. This is the only place that decides exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match k8sd::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(k8sd::cli::exit_code(&err))
        }
    }
}
