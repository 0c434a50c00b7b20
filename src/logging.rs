//! Where logs go. Never stdout: `generate` streams text there and the language server speaks JSON-RPC there.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The environment variable holding a `tracing` filter, e.g. `PHI_TUI_LOG=debug`.
pub const LOG_ENV: &str = "PHI_TUI_LOG";

/// Logs warnings and errors to stderr (more with `PHI_TUI_LOG`). llama.cpp's own messages arrive through
/// `tracing` too; below `error` they are noise to a user, so they are only shown when asked for.
pub fn init_stderr() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn,llama-cpp-2=error"));
    // A second initialisation (e.g. in tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(LogTarget).try_init();
}

/// Sends every log line from now on to the file at `path` (appending) instead of stderr: for the TUI, which owns
/// the terminal, and the language server. Installs the subscriber if [`init_stderr`] has not.
pub fn init_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    init_stderr();
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
