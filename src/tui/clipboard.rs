//! Copying: the system clipboard through the usual command-line tools where one is available, and always an OSC 52
//! escape sequence to the terminal, which sets the clipboard of the terminal the user sees — over SSH and in tmux
//! (`set -g set-clipboard on`) too.

use std::io::Write;
use std::process::{Command, Stdio};

/// The OSC 52 sequence that puts `text` on the clipboard.
pub fn osc52(text: &str) -> String {
    format!("\x1b]52;c;{}\x07", base64(text.as_bytes()))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The clipboard tools to try, for this environment.
fn tools() -> Vec<(&'static str, &'static [&'static str])> {
    let mut tools: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    if cfg!(target_os = "macos") {
        tools.push(("pbcopy", &[]));
    }
    if std::env::var_os("WAYLAND_DISPLAY").is_some() {
        tools.push(("wl-copy", &[]));
    }
    if std::env::var_os("DISPLAY").is_some() {
        tools.push(("xclip", &["-selection", "clipboard"]));
        tools.push(("xsel", &["--clipboard", "--input"]));
    }
    tools
}

/// Copies through a clipboard tool; returns its name, or `None` when there is none (or it failed).
pub fn copy_with_tool(text: &str) -> Option<&'static str> {
    for (tool, args) in tools() {
        let child =
            Command::new(tool).args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let Ok(mut child) = child else { continue };
        let written = child.stdin.take().is_some_and(|mut stdin| stdin.write_all(text.as_bytes()).is_ok());
        // xclip stays around to serve the selection; do not wait for it.
        if written {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Some(tool);
        }
    }
    None
}

/// Copies `text`: the system clipboard where a tool is available, and OSC 52 to `terminal` in any case. Returns
/// how it was copied, for the notice.
pub fn copy(text: &str, terminal: &mut impl Write) -> String {
    let tool = copy_with_tool(text);
    let osc = terminal.write_all(osc52(text).as_bytes()).and_then(|()| terminal.flush()).is_ok();
    match (tool, osc) {
        (Some(tool), _) => format!("via {tool}"),
        (None, true) => "via the terminal (OSC 52)".to_owned(),
        (None, false) => "failed: no clipboard".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
        assert_eq!(osc52("hi"), "\x1b]52;c;aGk=\x07");
    }
}
