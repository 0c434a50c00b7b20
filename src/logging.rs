//! Where logs go. Never stdout: `generate` streams text there and the language server speaks JSON-RPC there.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The environment variable holding a `tracing` filter, e.g. `PHI_TUI_LOG=debug`.
pub const LOG_ENV: &str = "PHI_TUI_LOG";

/// What stderr shows by default: warnings and errors. llama.cpp's own messages arrive through `tracing` too;
/// below `error` they are noise to a user, so they are only shown when asked for.
const STDERR_FILTER: &str = "warn,llama-cpp-2=error";
/// What a log file keeps by default: phi-tui's own `info` lines too (the language server's per-request timings,
/// the daemon's clients, the TUI's start), which nobody reads on a terminal but everyone wants in a log.
const FILE_FILTER: &str = "warn,phi_tui=info,phi_lsp=info,llama-cpp-2=error";

/// The installed filter, swapped by [`init_file`] for the file's default.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `PHI_TUI_LOG` when it is set, else `default`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs warnings and errors to stderr (more with `PHI_TUI_LOG`).
pub fn init_stderr() {
    let (filter, handle) = reload::Layer::new(filter(STDERR_FILTER));
    let subscriber = tracing_subscriber::registry().with(filter).with(fmt::layer().with_writer(LogTarget));
    // A second initialisation (e.g. in tests) keeps the first subscriber.
    if subscriber.try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Sends every log line from now on to the file at `path` (appending) instead of stderr, at the file's default
/// level (`info` for phi-tui's own lines; `PHI_TUI_LOG` still overrides it): for the TUI, which owns the terminal,
/// the language server and the daemon. Installs the subscriber if [`init_stderr`] has not.
pub fn init_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    init_stderr();
    if let Some(handle) = FILTER.get() {
        let _ = handle.reload(filter(FILE_FILTER));
    }
    Ok(())
}

/// Where [`LogTarget`] writes: the file of [`init_file`], else stderr.
static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

struct LogTarget;

impl<'a> MakeWriter<'a> for LogTarget {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            // Colour codes are for terminals.
            Some(file) => file.write_all(&strip_ansi(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(file) => file.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Drops `ESC [ … letter` sequences.
fn strip_ansi(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b && bytes.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < bytes.len() && !bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            i += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_colour_codes() {
        assert_eq!(super::strip_ansi(b"\x1b[2mtime\x1b[0m \x1b[33mWARN\x1b[0m x"), b"time WARN x");
    }
}
