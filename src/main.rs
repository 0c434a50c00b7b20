//! The `phi-tui` binary: parses the command line and hands over to one of the subcommands.

mod cli;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: training frees and reallocates the same large buffers every step,
/// which glibc returns to the kernel and faults back in each time; mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
