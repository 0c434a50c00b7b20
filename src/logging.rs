//! Where logs go. Never stdout: `generate` streams text there and the language server speaks JSON-RPC there.

use tracing_subscriber::EnvFilter;

/// The environment variable holding a `tracing` filter, e.g. `PHI_TUI_LOG=debug`.
pub const LOG_ENV: &str = "PHI_TUI_LOG";

/// Logs warnings and errors to stderr (more with `PHI_TUI_LOG`). llama.cpp's own messages arrive through
/// `tracing` too; below `error` they are noise to a user, so they are only shown when asked for.
pub fn init_stderr() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn,llama-cpp-2=error"));
    // A second initialisation (e.g. in tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
