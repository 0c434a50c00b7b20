//! Settings a client can change: through `initializationOptions` at start-up and
//! `workspace/didChangeConfiguration` later. lsp/README.md documents them for users.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// Default for [`Settings::max_tokens`].
pub const DEFAULT_MAX_TOKENS: u32 = 64;
/// Default for [`Settings::max_line_tokens`].
pub const DEFAULT_MAX_LINE_TOKENS: u32 = 32;
/// Default for [`Settings::debounce`], in milliseconds.
pub const DEFAULT_DEBOUNCE_MS: u64 = 150;

/// The most tokens a client may ask for: phi-1's context is 2048 tokens, and the prompt needs most of it.
const MAX_TOKENS_LIMIT: u32 = 1024;
/// The longest debounce a client may set; longer waits only look like a broken server.
const MAX_DEBOUNCE_MS: u64 = 5000;

/// How much a completion may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineMode {
    /// Up to the end of the current block (the Python stop rules decide). With the cursor in the middle of a line,
    /// only the rest of that line.
    #[default]
    MultiLine,
    /// The rest of the current line only (or, at the end of a line that opens a block, the block's first line).
    SingleLine,
}

/// The completion settings of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The GGUF model file. JSON key `model`; a leading `~/` means the home directory. Default: none (the
    /// server then says how to set one). A model given on the command line (`phi-tui lsp -m`) wins over this.
    pub model: Option<PathBuf>,
    /// Tokens a multi-line completion may generate. JSON `maxTokens`, default 64.
    pub max_tokens: u32,
    /// Tokens a single-line completion may generate (`textDocument/completion`, single-line mode, and the cursor in
    /// the middle of a line). JSON `maxLineTokens`, default 32.
    pub max_line_tokens: u32,
    /// JSON `mode`: `"multiLine"` (default) or `"singleLine"`.
    pub mode: LineMode,
    /// How long an automatically triggered request waits before the model starts, so that a burst of keystrokes
    /// costs one generation. Requests the user invokes explicitly do not wait. JSON `debounceMs`, default 150.
    pub debounce: Duration,
    /// Put an outline of the other open Python files (imports, `def` and `class` lines) at the top of the prompt,
    /// as comments. JSON `openFilesContext`, default false: phi-1's context is small, and the current file is
    /// usually the better use of it.
    pub open_files_context: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            max_line_tokens: DEFAULT_MAX_LINE_TOKENS,
            mode: LineMode::MultiLine,
            debounce: Duration::from_millis(DEFAULT_DEBOUNCE_MS),
            open_files_context: false,
        }
    }
}

impl Settings {
    /// Applies the settings in `value` on top of these and returns a warning for each value it could not use
    /// (those keep their previous value). `value` is either the settings object itself or an object with it under
    /// `"phi-tui"` or `"phiTui"` (how VS Code and Neovim send a named section). Unknown keys are ignored.
    pub fn apply_json(&mut self, value: &Value) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(object) = section(value) else {
            if !value.is_null() {
                warnings.push(format!("phi-tui settings must be a JSON object, not {value}"));
            }
            return warnings;
        };
        for (key, value) in object {
            if value.is_null() {
                // Editors send null for settings the user left unset: keep what we have.
                continue;
            }
            let result = match key.as_str() {
                "model" => match value.as_str() {
                    Some("") => {
                        self.model = None;
                        Ok(())
                    }
                    Some(path) => {
                        self.model = Some(expand_home(path));
                        Ok(())
                    }
                    None => Err("a file path string"),
                },
                "maxTokens" => read_u32(value, 1, MAX_TOKENS_LIMIT).map(|n| self.max_tokens = n),
                "maxLineTokens" => read_u32(value, 1, MAX_TOKENS_LIMIT).map(|n| self.max_line_tokens = n),
                "mode" => match value.as_str() {
                    Some("multiLine" | "multi-line" | "multi") => {
                        self.mode = LineMode::MultiLine;
                        Ok(())
                    }
                    Some("singleLine" | "single-line" | "single") => {
                        self.mode = LineMode::SingleLine;
                        Ok(())
                    }
                    _ => Err("\"multiLine\" or \"singleLine\""),
                },
                "debounceMs" => match value.as_u64() {
                    Some(ms) if ms <= MAX_DEBOUNCE_MS => {
                        self.debounce = Duration::from_millis(ms);
                        Ok(())
                    }
                    _ => Err("a number of milliseconds from 0 to 5000"),
                },
                "openFilesContext" => match value.as_bool() {
                    Some(on) => {
                        self.open_files_context = on;
                        Ok(())
                    }
                    None => Err("true or false"),
                },
                _ => {
                    tracing::debug!(key, "ignoring an unknown setting");
                    Ok(())
                }
            };
            if let Err(expected) = result {
                warnings.push(format!(
                    "phi-tui setting `{key}` must be {expected}, not {value}; keeping the previous value"
                ));
            }
        }
        warnings
    }
}

fn section(value: &Value) -> Option<&serde_json::Map<String, Value>> {
    let object = value.as_object()?;
    for name in ["phi-tui", "phiTui"] {
        if let Some(inner) = object.get(name).and_then(Value::as_object) {
            return Some(inner);
        }
    }
    Some(object)
}

fn read_u32(value: &Value, min: u32, max: u32) -> Result<u32, &'static str> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or("a whole number from 1 to 1024")
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_and_sectioned_objects_both_apply() {
        let mut settings = Settings::default();
        let warnings = settings.apply_json(&json!({"model": "/m/phi-1.gguf", "maxTokens": 100, "mode": "singleLine"}));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(settings.model, Some(PathBuf::from("/m/phi-1.gguf")));
        assert_eq!(settings.max_tokens, 100);
        assert_eq!(settings.mode, LineMode::SingleLine);

        let warnings = settings.apply_json(&json!({"phi-tui": {"debounceMs": 0, "openFilesContext": true}}));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(settings.debounce, Duration::ZERO);
        assert!(settings.open_files_context);
        // Untouched keys keep their values.
        assert_eq!(settings.max_tokens, 100);
    }

    #[test]
    fn bad_values_warn_and_keep_the_previous_value() {
        let mut settings = Settings::default();
        let warnings = settings.apply_json(&json!({"maxTokens": -3, "mode": "sideways", "debounceMs": "soon",
            "maxLineTokens": 12, "unknown": 1, "model": null}));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        for key in ["maxTokens", "mode", "debounceMs"] {
            assert!(warnings.iter().any(|w| w.contains(key)), "no warning about {key}: {warnings:?}");
        }
        assert_eq!(settings.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(settings.mode, LineMode::MultiLine);
        assert_eq!(settings.debounce, Duration::from_millis(DEFAULT_DEBOUNCE_MS));
        assert_eq!(settings.max_line_tokens, 12);
        assert_eq!(settings.apply_json(&json!([1, 2])).len(), 1);
    }

    #[test]
    fn an_empty_model_string_clears_the_model() {
        let mut settings = Settings { model: Some(PathBuf::from("a.gguf")), ..Settings::default() };
        assert!(settings.apply_json(&json!({"model": ""})).is_empty());
        assert_eq!(settings.model, None);
    }
}
