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
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, but without a cause that the text so far already
/// says: many errors put their source into their own message (`path: cannot read file: reason`) and also expose it
/// as their source, which would print the reason twice.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}
