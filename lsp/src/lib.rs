//! The phi-tui language server: Python completions from a local model over the Language Server Protocol.
//!
//! **Architecture invariant:** this crate knows nothing of llama.cpp. The server asks a [`CompletionBackend`] for
//! text; the `phi-tui` binary supplies one backed by its engine and calls [`serve_stdio`].
//!
//! | module | what it does |
//! |---|---|
//! | [`backend`] | the trait the binary implements, and what crosses it |
//! | [`server`] | the protocol: documents, requests, superseding and cancellation, settings, messages |
//! | [`prompt`] | the text before the cursor, cut to the model's context in stable blocks |
//! | [`stop`] | Python block rules that end a completion (the engine's stop predicate) |
//! | [`postprocess`] | generated text → suggestion: duplicate suffix, unfinished lines, syntax check ([`syntax`]) |
//! | [`cache`] | recent suggestions, for typing into one without asking the model again |
//! | [`document`], [`position`] | open documents and UTF-16 positions |
//! | [`python`] | just enough Python lexing for the rules |
//! | `testing` | a scripted fake backend (feature `test-support`) |
#![forbid(unsafe_code)]

pub mod backend;
pub mod cache;
pub mod document;
mod framing;
pub mod position;
pub mod postprocess;
pub mod prompt;
pub mod python;
pub mod server;
pub mod settings;
pub mod stop;
pub mod syntax;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use backend::{
    BackendError, BackendNotice, Completion, CompletionBackend, CompletionRequest, FimTokens, ModelSummary,
    StopPredicate,
};
pub use server::{serve, serve_stdio, ServerOptions};
pub use settings::{LineMode, Settings};
