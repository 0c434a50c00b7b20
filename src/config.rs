//! The configuration file: `config.toml` in the platform's config directory (`~/.config/phi-tui/` on Linux), or in
//! `$PHI_TUI_CONFIG_DIR` when that is set. Every setting is optional; a missing file means the defaults.
//!
//! ```toml
//! model = "~/models/phi-1.f16.gguf"   # used when `-m` is not given (relative paths: from this file's directory);
//!                                     # or an installed model's name (`phi-tui models`), e.g. "phi-1"
//! lora = "~/models/my-adapter.gguf"   # optional LoRA adapter
//! lora_scale = 1.0
//! mode = "code"                       # "code" or "chat"; default: code unless the model has a chat template
//! max_tokens = 256
//! temperature = 0.0                   # 0 = greedy
//! mouse = true                        # capture the mouse (wheel scrolling); F2 toggles it at run time
//! theme = "base16-ocean.dark"         # syntax-highlighting theme
//!
//! [keys]                              # any command from the help screen (F1): one key or a list
//! send = "enter"
//! newline = ["alt-enter", "ctrl-j"]
//! ```
//!
//! The data directory (sessions, logs) is the platform's data directory (`~/.local/share/phi-tui/`), or
//! `$PHI_TUI_DATA_DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Overrides the config directory (tests, portable setups).
pub const CONFIG_DIR_ENV: &str = "PHI_TUI_CONFIG_DIR";
/// Overrides the data directory (sessions, logs).
pub const DATA_DIR_ENV: &str = "PHI_TUI_DATA_DIR";
/// The config file's name inside the config directory.
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no home directory found; set {CONFIG_DIR_ENV} and {DATA_DIR_ENV}")]
    NoHomeDir,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// How a prompt is given to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// The input is code (a signature and docstring, say); the model continues it to the end of the block.
    #[default]
    Code,
    /// The input is a question; the model answers it.
    Chat,
}

impl PromptMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Chat => "chat",
        }
    }

    pub fn toggled(self) -> Self {
        match self {
            Self::Code => Self::Chat,
            Self::Chat => Self::Code,
        }
    }
}

/// One key or a list of keys, as written in `[keys]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyList {
    One(String),
    Many(Vec<String>),
}

impl KeyList {
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Self::One(key) => vec![key.as_str()],
            Self::Many(keys) => keys.iter().map(String::as_str).collect(),
        }
    }
}

/// The settings of `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The GGUF model used when none is given on the command line.
    pub model: Option<PathBuf>,
    /// A LoRA adapter GGUF applied at start.
    pub lora: Option<PathBuf>,
    pub lora_scale: f32,
    /// The prompt mode new conversations start in; `None` picks one per model.
    pub mode: Option<PromptMode>,
    /// Tokens generated at most per reply.
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Capture the mouse (wheel scrolling). Off leaves selection to the terminal.
    pub mouse: bool,
    /// The syntax-highlighting theme (one of syntect's defaults).
    pub theme: String,
    /// Key bindings: command name → keys. Commands not named keep their defaults.
    pub keys: BTreeMap<String, KeyList>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model: None,
            lora: None,
            lora_scale: 1.0,
            mode: None,
            max_tokens: 256,
            temperature: 0.0,
            mouse: true,
            theme: "base16-ocean.dark".to_owned(),
            keys: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The config file's path (it need not exist).
    pub fn path() -> Result<PathBuf, ConfigError> {
        Ok(config_dir()?.join(CONFIG_FILE))
    }

    /// Reads the config file; a missing file gives the defaults.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(&Self::path()?)
    }

    /// Reads a config file; a missing file gives the defaults. Relative paths in it are taken from its directory.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Io { path: path.to_path_buf(), source }),
        };
        let mut config =
            Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // `model` may name an installed model (`phi-1`) rather than a file.
        config.model = config.model.map(|p| {
            if p.to_str().is_some_and(crate::models::is_bare_name) {
                p
            } else {
                resolve_path(&p, base)
            }
        });
        config.lora = config.lora.map(|p| resolve_path(&p, base));
        Ok(config)
    }

    /// Parses the text of a config file (paths are left as written).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if !config.temperature.is_finite() || config.temperature < 0.0 {
            return Err(format!("temperature must be ≥ 0, got {}", config.temperature));
        }
        if !config.lora_scale.is_finite() {
            return Err("lora_scale must be a number".to_owned());
        }
        if config.max_tokens == 0 {
            return Err("max_tokens must be at least 1".to_owned());
        }
        Ok(config)
    }
}

/// `~/x` → the home directory's `x`; a relative path → relative to `base`.
pub fn resolve_path(path: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = directories::BaseDirs::new().map(|dirs| dirs.home_dir().to_path_buf()) {
            return home.join(rest);
        }
    }
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

fn project_dirs() -> Result<directories::ProjectDirs, ConfigError> {
    directories::ProjectDirs::from("", "", "phi-tui").ok_or(ConfigError::NoHomeDir)
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The config directory: `$PHI_TUI_CONFIG_DIR`, else the platform's (`~/.config/phi-tui` on Linux).
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    match env_dir(CONFIG_DIR_ENV) {
        Some(dir) => Ok(dir),
        None => Ok(project_dirs()?.config_dir().to_path_buf()),
    }
}

/// The data directory (sessions, logs): `$PHI_TUI_DATA_DIR`, else the platform's (`~/.local/share/phi-tui`).
pub fn data_dir() -> Result<PathBuf, ConfigError> {
    match env_dir(DATA_DIR_ENV) {
        Some(dir) => Ok(dir),
        None => Ok(project_dirs()?.data_dir().to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_defaults() {
        assert_eq!(Config::parse("").ok(), Some(Config::default()));
    }

    #[test]
    fn parses_every_setting() {
        let config = Config::parse(
            r#"
            model = "m.gguf"
            lora = "/a/b.gguf"
            lora_scale = 0.5
            mode = "chat"
            max_tokens = 64
            temperature = 0.7
            mouse = false
            theme = "InspiredGitHub"
            [keys]
            send = "ctrl-s"
            newline = ["enter", "alt-enter"]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.model, Some(PathBuf::from("m.gguf")));
        assert_eq!(config.mode, Some(PromptMode::Chat));
        assert_eq!(config.max_tokens, 64);
        assert!(!config.mouse);
        assert_eq!(config.keys["send"].keys(), vec!["ctrl-s"]);
        assert_eq!(config.keys["newline"].keys(), vec!["enter", "alt-enter"]);
    }

    #[test]
    fn rejects_unknown_settings_and_bad_values() {
        assert!(Config::parse("modle = \"x\"").unwrap_err().contains("modle"));
        assert!(Config::parse("mode = \"poetry\"").is_err());
        assert!(Config::parse("temperature = -1.0").is_err());
        assert!(Config::parse("max_tokens = 0").is_err());
    }

    #[test]
    fn load_resolves_relative_paths_and_tolerates_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("phi-tui-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(CONFIG_FILE);
        assert_eq!(Config::load_from(&path).ok(), Some(Config::default()));
        std::fs::write(&path, "model = \"models/phi.gguf\"\nlora = \"/abs/a.gguf\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let config = Config::load_from(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.model, Some(dir.join("models/phi.gguf")));
        assert_eq!(config.lora, Some(PathBuf::from("/abs/a.gguf")));
        // An installed model's name stays a name.
        std::fs::write(&path, "model = \"phi-1\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Config::load_from(&path).ok().and_then(|c| c.model), Some(PathBuf::from("phi-1")));
        std::fs::write(&path, "model = 3\n").unwrap_or_else(|e| panic!("{e}"));
        let error = Config::load_from(&path).unwrap_err().to_string();
        assert!(error.contains("config.toml"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
