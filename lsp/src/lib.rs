//! The phi-tui language server: Python completions from a local model over the Language Server Protocol.
//!
//! **Architecture invariant:** this crate knows nothing of llama.cpp. The server asks a [`CompletionBackend`] for
//! text; the `phi-tui` binary supplies one backed by its engine.

pub mod backend;
pub mod document;
pub mod position;
pub mod python;
pub mod settings;
pub mod stop;
pub mod syntax;

pub use backend::{BackendError, Completion, CompletionBackend, CompletionRequest, FimTokens, ModelSummary, StopPredicate};
pub use settings::{LineMode, Settings};
