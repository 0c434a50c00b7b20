//! The one error type of fine-tuning. Like the converter's, every message is one line that starts with what it is
//! about (a file, a line of a file, an option), because the CLI prints it as is.

use std::path::PathBuf;

pub type Result<T, E = FinetuneError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A file or directory could not be read, created or written.
    #[error("{}: {action}: {source}", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },

    /// The training data is unusable: empty, malformed (with the 1-based line when there is one), or out of the
    /// model's range.
    #[error("{}{}: {reason}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data { path: PathBuf, line: Option<usize>, reason: String },

    /// The base model cannot be trained: unreadable, not phi, quantized, or tensors of the wrong shape.
    #[error("{}: {reason}", path.display())]
    Base { path: PathBuf, reason: String },

    /// An adapter (PEFT directory or GGUF) is unreadable or does not fit the base model.
    #[error("{}: {reason}", path.display())]
    Adapter { path: PathBuf, reason: String },

    /// A training checkpoint is unreadable or belongs to another run.
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },

    /// A training option is out of range or contradicts another one.
    #[error("{0}")]
    Option(String),

    /// The tokenizer could not be loaded or failed on the data.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The tensor library failed (out of memory, a device error, or a bug here).
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}

impl FinetuneError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> FinetuneError {
        FinetuneError::Io { path: path.into(), action, source }
    }

    pub(crate) fn base(path: impl Into<PathBuf>, reason: impl Into<String>) -> FinetuneError {
        FinetuneError::Base { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn adapter(path: impl Into<PathBuf>, reason: impl Into<String>) -> FinetuneError {
        FinetuneError::Adapter { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, line: Option<usize>, reason: impl Into<String>) -> FinetuneError {
        FinetuneError::Data { path: path.into(), line, reason: reason.into() }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> FinetuneError {
        FinetuneError::Checkpoint { path: path.into(), reason: reason.into() }
    }
}
