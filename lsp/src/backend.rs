//! The boundary between the language server and whatever produces completions.
//!
//! **API boundary:** the server sees a completion engine only through [`CompletionBackend`]. The `phi-tui` binary
//! implements it on its inference engine; the tests implement it with
//! `testing::FakeBackend` (feature `test-support`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::stop::StopRule;

/// A rule over the text generated so far: the byte offset at which the generation should end (the text is cut
/// there), or `None` to go on. The same type as the engine's `StopPredicate`, so the binary can pass it through.
pub type StopPredicate = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// What a completion engine must provide. Every method returns a `'static` future so that the server can race it
/// against cancellation and drop it.
///
/// # Cancellation
///
/// The server drops a [`complete`](Self::complete) future when the client cancels the request
/// (`$/cancelRequest`), when a newer request for the same document supersedes it, or when the connection closes.
/// **Dropping the future must stop the model's work** (the engine's generation stream cancels on drop), so an
/// abandoned completion does not keep the engine busy while the user types on.
///
/// # Prompt reuse
///
/// The server keeps the start of its prompts stable across keystrokes: the window over the file moves in blocks of
/// lines, and other-file context comes first and changes rarely. An implementation should generate on one
/// dedicated sequence and reuse the cached keys and values of the longest common token prefix with its previous
/// prompt; then a keystroke costs a handful of new prompt tokens.
pub trait CompletionBackend: Send + Sync + 'static {
    /// Loads the model at `path`, replacing the current one. The server calls this with the model named by `-m`,
    /// `initializationOptions.model`, `workspace/didChangeConfiguration` or the config file. A failure must leave
    /// the backend usable (with no model, or with the previous one).
    fn load_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelSummary, BackendError>>;

    /// The model loaded now, if any.
    fn model(&self) -> BoxFuture<'static, Option<ModelSummary>>;

    /// The model's tokens for `text`, without a beginning-of-sequence token or any other special token the backend
    /// adds around a prompt. The server only counts them, to fit prompts to the context.
    fn tokenize(&self, text: String) -> BoxFuture<'static, Result<Vec<u32>, BackendError>>;

    /// Generates a completion of `request.prompt`. See the trait's documentation on cancellation.
    fn complete(&self, request: CompletionRequest) -> BoxFuture<'static, Result<Completion, BackendError>>;

    /// Changes that others make to the model behind this backend (when it is shared, e.g. another client loads a
    /// model or a LoRA adapter). The server logs each one, shows it to the user and forgets cached suggestions.
    /// Called once, after `initialized`; the default has none.
    fn notices(&self) -> Option<BoxStream<'static, BackendNotice>> {
        None
    }
}

/// Something the user should know about the backend, said by the backend in words (see
/// [`CompletionBackend::notices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendNotice {
    pub message: String,
}

/// What the server needs to know about a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    /// A name for messages and logs (e.g. the file name).
    pub name: String,
    /// The file it was loaded from, when known; the server skips reloading a model that is already loaded.
    pub path: Option<PathBuf>,
    /// Tokens one sequence holds: prompt plus generated text must fit in it.
    pub context_size: u32,
    /// Fill-in-the-middle tokens, for models trained with them (phi-1 has none).
    pub fim: Option<FimTokens>,
}

/// The text of a model's fill-in-the-middle special tokens. With them the server sends
/// `{prefix}<text before the cursor>{suffix}<text after the cursor>{middle}` and the model writes the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: String,
    pub suffix: String,
    pub middle: String,
}

/// One generation, as the server asks for it.
#[derive(Clone)]
pub struct CompletionRequest {
    /// The whole prompt text (special tokens, if any, as text); it fits the context with `max_tokens` to spare.
    pub prompt: String,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Python block rules over the generated text (see [`crate::stop::StopRules`]), as data so that they can travel
    /// to wherever the model runs. The backend should apply them after every token ([`StopRule::into_predicate`]),
    /// end the generation when they return an offset, and return the text cut there.
    pub stop: StopRule,
    /// The generation ends before any of these; the returned text contains none of them.
    pub stop_strings: Vec<String>,
    /// Text the completion is likely to repeat without it being in the prompt: the code after the cursor (an edit
    /// often re-types what follows it). A backend that drafts tokens ahead may draft them from here; the
    /// completion itself must not depend on it.
    pub draft_hint: String,
}

impl fmt::Debug for CompletionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionRequest")
            .field("prompt", &self.prompt)
            .field("max_tokens", &self.max_tokens)
            .field("stop_strings", &self.stop_strings)
            .field("draft_hint", &self.draft_hint)
            .finish_non_exhaustive()
    }
}

/// A finished generation and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The generated text, cut where the stop predicate or a stop string said.
    pub text: String,
    /// Whether the generation ended because it reached `max_tokens` (its last line is then likely unfinished).
    pub hit_token_limit: bool,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the previous generation (not decoded again).
    pub reused_tokens: usize,
    /// Time spent waiting for the engine (other jobs ahead of this one).
    pub queue_ms: f64,
    /// Time spent decoding the prompt tokens that were not reused.
    pub prompt_ms: f64,
    /// Time spent generating.
    pub gen_ms: f64,
    /// Tokens the backend guessed ahead (speculative drafting) and the model checked.
    pub drafted_tokens: usize,
    /// Guessed tokens the model confirmed.
    pub accepted_tokens: usize,
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("no model is loaded")]
    NoModel,
    #[error("could not load the model {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("{0}")]
    Failed(String),
}
