//! The inference session: the one loaded model, its LoRA adapter and its KV cache, as the chat TUI and the language
//! server see it.
//!
//! **API boundary:** the TUI and `phi-tui lsp` talk to an [`InferenceSession`] and never know which of its two
//! implementations they hold:
//! - [`LocalSession`]: an engine in this process (`--standalone`, and the daemon's own view of its engine);
//! - [`client::DaemonSession`]: the shared session of `phi-tui serve` ([`daemon`]), reached over a Unix socket
//!   ([`protocol`], [`paths`]) and started on first use, so that the TUI and every editor share one model.
//!
//! Requests carry their stop rule as data ([`StopRule`]), not as a closure, so that they can cross the socket; each
//! session handle generates on its own sequence (KV cache), which the daemon assigns per client.

pub mod chat;
pub mod client;
pub mod daemon;
pub mod http;
pub mod paths;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use phi_lsp::stop::StopRule;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::engine::{
    AdapterInfo, Drafting, Engine, EngineState, GenerateRequest, Generation, LoadProgress, ModelInfo, Priority, Prompt,
    Result, SamplingParams, SequenceId, StopPredicate, TokenId,
};
pub use protocol::{ClientKind, ClientStatus, DaemonStatus};

/// What the TUI and the language server need from the model, wherever it runs.
pub trait InferenceSession: Send + Sync + 'static {
    /// Makes sure a model is loaded, preferring `path`. A private (in-process) session loads `path` unless it is
    /// loaded already; a shared one keeps whatever model its other clients use and loads `path` only when there
    /// is none. Returns the model that is loaded.
    fn attach_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelInfo>>;

    /// Loads `path` in place of the current model, for every client of the session.
    fn load_model(&self, path: PathBuf, progress: Option<LoadProgress>) -> BoxFuture<'static, Result<ModelInfo>>;

    /// Applies a LoRA adapter at `scale` (replacing any other), for every client of the session.
    fn set_adapter(&self, path: PathBuf, scale: f32) -> BoxFuture<'static, Result<AdapterInfo>>;

    fn remove_adapter(&self) -> BoxFuture<'static, Result<()>>;

    fn state(&self) -> BoxFuture<'static, Result<EngineState>>;

    fn tokenize(&self, text: String, parse_special: bool) -> BoxFuture<'static, Result<Vec<TokenId>>>;

    fn detokenize(&self, tokens: Vec<TokenId>) -> BoxFuture<'static, Result<String>>;

    /// Starts a generation on this handle's sequence. Dropping the stream cancels it.
    fn generate(&self, request: SessionRequest) -> Generation;

    /// Changes to the session (model, adapter, the daemon's connection), whoever made them.
    fn notices(&self) -> broadcast::Receiver<Notice>;

    /// The shared session's daemon and its clients; `None` for a private session.
    fn status(&self) -> BoxFuture<'static, Result<Option<DaemonStatus>>>;
}

/// A session handle to share between tasks.
pub type SharedSession = Arc<dyn InferenceSession>;

/// A generation as a session client asks for it: the engine's [`GenerateRequest`] without the sequence (the
/// session handle owns that) and with the stop rule as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    pub max_tokens: u32,
    pub stop_strings: Vec<String>,
    pub stop_rule: Option<StopRule>,
    pub stop_at_eog: bool,
    pub priority: Priority,
    /// Speculative drafting (greedy requests only). Absent from the requests of a client that predates it: off.
    #[serde(default)]
    pub draft: Drafting,
}

impl SessionRequest {
    pub fn new(prompt: Prompt) -> Self {
        let defaults = GenerateRequest::new(SequenceId(0), Prompt::Tokens(Vec::new()));
        Self {
            prompt,
            sampling: defaults.sampling,
            max_tokens: defaults.max_tokens,
            stop_strings: Vec::new(),
            stop_rule: None,
            stop_at_eog: defaults.stop_at_eog,
            priority: defaults.priority,
            draft: defaults.draft,
        }
    }

    /// The engine's request for `sequence`.
    pub fn into_engine_request(self, sequence: SequenceId) -> GenerateRequest {
        let mut request = GenerateRequest::new(sequence, self.prompt);
        request.sampling = self.sampling;
        request.max_tokens = self.max_tokens;
        request.stop_strings = self.stop_strings;
        request.stop_predicate = self.stop_rule.map(StopRule::into_predicate);
        request.stop_at_eog = self.stop_at_eog;
        request.priority = self.priority;
        request.draft = self.draft;
        request
    }
}

/// A change to the session that its clients should show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Notice {
    /// A model was loaded (by this client or another).
    Model(ModelInfo),
    /// The LoRA adapter changed; `None`: removed.
    Adapter(Option<AdapterInfo>),
    /// The connection to the daemon broke; the next request starts or reaches a new one.
    Disconnected(String),
    /// A new daemon serves this client after the previous one went away.
    Reconnected { pid: u32 },
}

/// Notices are few and small; a client that falls this far behind only misses old ones.
const NOTICE_CAPACITY: usize = 64;

/// A new channel for [`Notice`]s.
pub fn notice_channel() -> broadcast::Sender<Notice> {
    broadcast::channel(NOTICE_CAPACITY).0
}

/// A session on an engine in this process, generating on one sequence. Clones of the engine handle made into
/// several `LocalSession`s (with one notice channel) share the model, each on its own sequence: that is how the
/// daemon serves its clients.
#[derive(Clone)]
pub struct LocalSession {
    engine: Engine,
    sequence: SequenceId,
    notices: broadcast::Sender<Notice>,
}

impl LocalSession {
    pub fn new(engine: Engine, sequence: SequenceId) -> Self {
        Self::with_notices(engine, sequence, notice_channel())
    }

    pub fn with_notices(engine: Engine, sequence: SequenceId, notices: broadcast::Sender<Notice>) -> Self {
        Self { engine, sequence, notices }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn sequence(&self) -> SequenceId {
        self.sequence
    }

    /// [`InferenceSession::generate`] with a stop predicate added, which ends the generation where it or the
    /// request's own stop rule says, whichever comes first. Only an in-process caller can give one: a closure (a
    /// deadline, say) cannot cross the daemon's socket.
    pub fn generate_with_predicate(&self, request: SessionRequest, predicate: Option<StopPredicate>) -> Generation {
        let mut request = request.into_engine_request(self.sequence);
        request.stop_predicate = match (request.stop_predicate.take(), predicate) {
            (Some(rule), Some(extra)) => Some(Arc::new(move |text: &str| match (rule(text), extra(text)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })),
            (rule, extra) => rule.or(extra),
        };
        self.engine.generate(request)
    }
}

impl InferenceSession for LocalSession {
    fn attach_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelInfo>> {
        let this = self.clone();
        async move {
            if let Some(model) = this.engine.state().await?.model {
                if same_file(&model.path, &path) {
                    return Ok(model);
                }
            }
            this.load_model(path, None).await
        }
        .boxed()
    }

    fn load_model(&self, path: PathBuf, progress: Option<LoadProgress>) -> BoxFuture<'static, Result<ModelInfo>> {
        let (engine, notices) = (self.engine.clone(), self.notices.clone());
        async move {
            let info = engine.load_model(&path, progress).await?;
            // Nobody may be listening; that is fine.
            let _ = notices.send(Notice::Model(info.clone()));
            Ok(info)
        }
        .boxed()
    }

    fn set_adapter(&self, path: PathBuf, scale: f32) -> BoxFuture<'static, Result<AdapterInfo>> {
        let (engine, notices) = (self.engine.clone(), self.notices.clone());
        async move {
            let adapter = engine.set_adapter(&path, scale).await?;
            let _ = notices.send(Notice::Adapter(Some(adapter.clone())));
            Ok(adapter)
        }
        .boxed()
    }

    fn remove_adapter(&self) -> BoxFuture<'static, Result<()>> {
        let (engine, notices) = (self.engine.clone(), self.notices.clone());
        async move {
            engine.remove_adapter().await?;
            let _ = notices.send(Notice::Adapter(None));
            Ok(())
        }
        .boxed()
    }

    fn state(&self) -> BoxFuture<'static, Result<EngineState>> {
        let engine = self.engine.clone();
        async move { engine.state().await }.boxed()
    }

    fn tokenize(&self, text: String, parse_special: bool) -> BoxFuture<'static, Result<Vec<TokenId>>> {
        let engine = self.engine.clone();
        async move { engine.tokenize(&text, parse_special).await }.boxed()
    }

    fn detokenize(&self, tokens: Vec<TokenId>) -> BoxFuture<'static, Result<String>> {
        let engine = self.engine.clone();
        async move { engine.detokenize(&tokens).await }.boxed()
    }

    fn generate(&self, request: SessionRequest) -> Generation {
        self.engine.generate(request.into_engine_request(self.sequence))
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn status(&self) -> BoxFuture<'static, Result<Option<DaemonStatus>>> {
        async { Ok(None) }.boxed()
    }
}

/// Whether two paths name the same file (an absolute path and a relative one, say).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// How often [`watch_interactive`] looks at the session.
pub const INTERACTIVE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Keeps `busy` telling whether the session is generating (for any client: an editor's completion, a chat reply),
/// until `busy` is the only handle left. Training watches it between steps and gives way (`finetune::live`).
pub async fn watch_interactive(session: SharedSession, busy: Arc<std::sync::atomic::AtomicBool>) {
    while Arc::strong_count(&busy) > 1 {
        // A session that cannot answer (no daemon) is not busy: training does not wait on it.
        let pending = session.state().await.map(|state| state.pending_requests > 0).unwrap_or(false);
        busy.store(pending, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(INTERACTIVE_POLL).await;
    }
}
