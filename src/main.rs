//! The `phi-tui` binary: parses the command line and hands over to one of the subcommands.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    phi_tui::logging::init_stderr();
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
