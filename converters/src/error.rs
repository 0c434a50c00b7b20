//! The one error type of the converter. Every message is a single line that starts with the file (or directory)
//! it is about, because the CLI prints it as is and a user must be able to act on it without a backtrace.

use std::fmt::Display;
use std::path::PathBuf;

/// Everything that can stop a conversion or an inspection.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file or directory could not be read, created or written.
    #[error("{}: {action}: {}", path.display(), one_line(source))]
    Io {
        path: PathBuf,
        /// What we were doing, e.g. "cannot read file".
        action: &'static str,
        source: std::io::Error,
    },

    /// A JSON file (config, index, tokenizer config) is not valid JSON.
    #[error("{}: invalid JSON: {}", path.display(), one_line(source))]
    Json { path: PathBuf, source: serde_json::Error },

    /// `config.json` is valid JSON but not a config (e.g. not an object).
    #[error("{}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },

    /// `config.json` lacks a key the architecture needs.
    #[error("{}: missing key `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },

    /// A key is present but its value is unusable.
    #[error("{}: key `{key}` {reason}", path.display())]
    InvalidValue { path: PathBuf, key: String, reason: String },

    /// `model_type` names a model this converter does not know.
    #[error("{}: unsupported model_type `{model_type}` (expected `phi` or `phi-msft`)", path.display())]
    UnsupportedModelType { path: PathBuf, model_type: String },

    /// `architectures` names no phi causal LM.
    #[error("{}: unsupported architectures {architectures} (expected `PhiForCausalLM`)", path.display())]
    UnsupportedArchitecture { path: PathBuf, architectures: String },

    /// The config asks for a feature that llama.cpp's `phi2` graph does not implement, so the GGUF would compute
    /// something else than the checkpoint.
    #[error("{}: unsupported: {reason}", path.display())]
    UnsupportedFeature { path: PathBuf, reason: String },

    /// The checkpoint directory holds no safetensors weights.
    #[error("{}: no model.safetensors or model.safetensors.index.json{hint}", dir.display())]
    NoWeights { dir: PathBuf, hint: String },

    /// A safetensors file or the shard index is malformed.
    #[error("{}: {reason}", path.display())]
    BadWeights { path: PathBuf, reason: String },

    /// A tensor is stored in a dtype the converter does not read.
    #[error("{}: tensor `{tensor}` has dtype {dtype}; only F32, F16 and BF16 are supported", path.display())]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },

    /// The tensor names fit neither the transformers nor the phi-msft layout.
    #[error("{}: {reason}", path.display())]
    UnknownLayout { path: PathBuf, reason: String },

    /// Tensors the architecture needs are absent.
    #[error("{}: missing tensors: {}", path.display(), name_list(names))]
    MissingTensors { path: PathBuf, names: Vec<String> },

    /// Tensors that map to nothing in the GGUF; converting would silently drop them.
    #[error("{}: unexpected tensors (not part of a phi model): {}", path.display(), name_list(names))]
    UnexpectedTensors { path: PathBuf, names: Vec<String> },

    /// A tensor's shape does not match the config.
    #[error("{}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}", path.display())]
    ShapeMismatch { path: PathBuf, tensor: String, actual: Vec<usize>, expected: Vec<usize> },

    /// The tokenizer files are unusable.
    #[error("{}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    /// The checkpoint has no tokenizer and none was supplied.
    #[error("{}: no tokenizer.json in the checkpoint and no other tokenizer given", dir.display())]
    NoTokenizer { dir: PathBuf },

    /// The output cannot be written where it was asked for.
    #[error("{}: {reason}", path.display())]
    Output { path: PathBuf, reason: String },

    /// `convert` writes only the types it can encode itself; the rest need llama.cpp's quantizer.
    #[error("out type `{out_type}` is not written by the converter itself; convert to f16 or f32 and quantize with llama.cpp")]
    NonNativeOutType { out_type: String },

    /// An out type name that does not exist.
    #[error("unknown out type `{name}` (valid: {valid})")]
    UnknownOutType { name: String, valid: String },
}

/// Keeps messages on one line even when a library error spans several.
fn one_line(error: &impl Display) -> String {
    error.to_string().replace(['\n', '\r'], " ")
}

/// `a`, `b`, `c` … with a cap, so that a wrong model does not print hundreds of names.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut list = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    list
}

/// Shorthand used across the crate.
pub(crate) type Result<T> = std::result::Result<T, ConvertError>;

impl ConvertError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        ConvertError::Io { path: path.into(), action, source }
    }

    pub(crate) fn bad_weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ConvertError::BadWeights { path: path.into(), reason: one_line(&reason.into()) }
    }

    pub(crate) fn tokenizer(path: impl Into<PathBuf>, reason: impl Display) -> Self {
        ConvertError::Tokenizer { path: path.into(), reason: one_line(&reason) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn long_name_lists_are_capped() {
        let names: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        let message = ConvertError::MissingTensors { path: "/x".into(), names }.to_string();
        assert!(message.starts_with("/x: missing tensors: `t0`, `t1`"), "{message}");
        assert!(message.ends_with("`t19` and 5 more"), "{message}");
    }

    #[test]
    fn library_messages_are_flattened_to_one_line() {
        let error = ConvertError::tokenizer("/t/tokenizer.json", "first\nsecond");
        assert_eq!(error.to_string(), "/t/tokenizer.json: first second");
    }
}
