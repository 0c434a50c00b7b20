//! A real editor client: headless Neovim starts `phi-tui lsp` on a converted fixture model, opens a Python file
//! and receives completion items from it. Skipped (with a message) where `nvim` is not installed; CI installs it.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use phi_converters::OutType;
use serde_json::Value;

/// A Python file ending in a comment, where whatever the random fixture model writes is valid Python: the
/// server's syntax filter keeps it, so the client gets an item back.
const SOURCE: &str = "import os\n\n\ndef walk(root):\n    # list every file under root and\n";

#[test]
fn neovim_receives_completions_from_phi_tui_lsp() {
    if Command::new("nvim").arg("--version").output().is_err() {
        eprintln!("skipped: nvim is not installed (apt-get install neovim)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walk.py");
    std::fs::write(&file, SOURCE).unwrap();
    let out = dir.path().join("result.json");
    let line = SOURCE.lines().count();
    let column = SOURCE.lines().last().unwrap().len();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nvim/complete.lua");

    let mut nvim = Command::new("nvim")
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n", "-c"])
        .arg(format!("luafile {}", script.display()))
        .env("PHI_TUI_BIN", env!("CARGO_BIN_EXE_phi-tui"))
        .env("MODEL", converted("tiny-phi", OutType::F16))
        .env("FILE", &file)
        .env("LINE", line.to_string())
        .env("COL", column.to_string())
        .env("OUT", &out)
        .env("LOG", dir.path().join("lsp.log"))
        .env("PHI_TUI_DATA_DIR", dir.path())
        .env("PHI_TUI_CONFIG_DIR", dir.path())
        .env("PHI_TUI_RUNTIME_DIR", dir.path().join("run"))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = nvim.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            nvim.kill().unwrap();
            panic!("nvim did not finish; server log:\n{}", log_of(dir.path()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "nvim exited with {status}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(result.get("error").is_none(), "{result}\nserver log:\n{}", log_of(dir.path()));
    assert_eq!(result["server"], "phi-tui");
    assert!(result["capabilities"]["completionProvider"].is_object(), "{result}");

    // buf_request_sync answers {[client_id] = {result = ...}}, which json_encode writes as an array when the
    // client id is 1 (and as an object otherwise).
    let response = match &result["responses"] {
        Value::Array(responses) => responses.iter().find(|r| !r.is_null()),
        Value::Object(responses) => responses.values().next(),
        _ => None,
    };
    let response = response.unwrap_or_else(|| panic!("no response: {result}\nserver log:\n{}", log_of(dir.path())));
    assert!(response.get("err").is_none(), "{response}");
    let items = response["result"]["items"].as_array().or_else(|| response["result"].as_array());
    let items = items.unwrap_or_else(|| panic!("no completion list: {result}\nserver log:\n{}", log_of(dir.path())));
    assert!(!items.is_empty(), "no completion items: {response}\nserver log:\n{}", log_of(dir.path()));
    let text = items[0]["insertText"].as_str().or_else(|| items[0]["textEdit"]["newText"].as_str()).unwrap();
    assert!(!text.trim().is_empty(), "{}", items[0]);
}

fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("lsp.log")).unwrap_or_default()
}
