//! The language server's completion backend, on an inference session: the glue between `phi-lsp` (which knows
//! nothing of llama.cpp) and [`crate::session`] (the shared daemon's session, or a private engine with
//! `--standalone`; the backend cannot tell which).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use phi_lsp::{BackendError, BackendNotice, Completion, CompletionBackend, CompletionRequest, FimTokens, ModelSummary};
use tokio::sync::broadcast;

use crate::engine::{Drafting, EngineError, LookupOptions, ModelInfo, Priority, Prompt, StopReason};
use crate::session::{same_file, Notice, SessionRequest, SharedSession};

/// Completes on the session handle's own sequence, at interactive priority, so that a keystroke's completion
/// preempts a chat generation and reuses the previous completion's cached prompt prefix.
#[derive(Clone)]
pub struct SessionBackend {
    session: SharedSession,
    /// The model this backend last saw loaded: notices about it are news only when it changes.
    known_model: Arc<Mutex<Option<PathBuf>>>,
    /// How completions draft; prompt lookup by default (each request adds its own reference, the draft hint).
    drafting: Drafting,
}

impl SessionBackend {
    pub fn new(session: SharedSession) -> Self {
        Self { session, known_model: Arc::default(), drafting: Drafting::Lookup(LookupOptions::default()) }
    }

    /// Drafts completions as `drafting` says (`phi-tui lsp --draft`).
    pub fn with_drafting(mut self, drafting: Drafting) -> Self {
        self.drafting = drafting;
        self
    }

    fn saw_model(&self, info: &ModelInfo) {
        *self.known_model.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.path.clone());
    }
}

impl CompletionBackend for SessionBackend {
    fn load_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelSummary, BackendError>> {
        let this = self.clone();
        async move {
            // An installed model's name (`phi-tui models`) as well as a path.
            let path = match crate::models::resolve(Some(&path), &crate::config::Config::default()) {
                Ok(resolved) => resolved.unwrap_or(path),
                Err(e) => return Err(BackendError::Load { path, reason: e.to_string() }),
            };
            // The session announces a model it loads for this very call; that is no news to this backend's user.
            *this.known_model.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
            match this.session.attach_model(path.clone()).await {
                Ok(info) => {
                    this.saw_model(&info);
                    Ok(summary(&this.session, info).await)
                }
                Err(e) => Err(BackendError::Load { path, reason: e.to_string() }),
            }
        }
        .boxed()
    }

    fn model(&self) -> BoxFuture<'static, Option<ModelSummary>> {
        let session = self.session.clone();
        async move {
            let info = session.state().await.ok()?.model?;
            Some(summary(&session, info).await)
        }
        .boxed()
    }

    fn tokenize(&self, text: String) -> BoxFuture<'static, Result<Vec<u32>, BackendError>> {
        let session = self.session.clone();
        async move {
            let tokens = session.tokenize(text, false).await.map_err(backend_error)?;
            // Token ids are never negative: the engine's tokenizer only returns vocabulary entries.
            Ok(tokens.into_iter().map(|t| t.max(0) as u32).collect())
        }
        .boxed()
    }

    fn complete(&self, request: CompletionRequest) -> BoxFuture<'static, Result<Completion, BackendError>> {
        let mut generate = SessionRequest::new(Prompt::Text(request.prompt));
        generate.max_tokens = request.max_tokens;
        generate.stop_strings = request.stop_strings;
        generate.stop_rule = Some(request.stop);
        generate.priority = Priority::Interactive;
        generate.draft = self.drafting.clone();
        let session = self.session.clone();
        async move {
            // Completions repeat the buffer (names, argument lists, the line above, the code below the cursor):
            // prompt lookup drafts them from the prompt and the hint, and greedy verification keeps the text
            // exactly what it would be without. A hint that fails to tokenize only means fewer drafts.
            if let Drafting::Lookup(options) = &mut generate.draft {
                if !request.draft_hint.is_empty() {
                    options.reference = session.tokenize(request.draft_hint, false).await.unwrap_or_default();
                }
            }
            // The stream cancels the engine's work when dropped, so dropping this future (a `$/cancelRequest`, a
            // superseding keystroke) stops decoding within one step, in this process or in the daemon.
            let generation = session.generate(generate);
            let summary = generation.finish().await.map_err(backend_error)?;
            Ok(Completion {
                text: summary.text,
                hit_token_limit: summary.stop_reason == StopReason::MaxTokens,
                prompt_tokens: summary.prompt_tokens.len(),
                reused_tokens: summary.reused_tokens,
                queue_ms: summary.timings.queue_ms,
                prompt_ms: summary.timings.prompt_ms,
                gen_ms: summary.timings.gen_ms,
                drafted_tokens: summary.timings.drafted,
                accepted_tokens: summary.timings.draft_accepted,
            })
        }
        .boxed()
    }

    fn notices(&self) -> Option<BoxStream<'static, BackendNotice>> {
        let known_model = Arc::clone(&self.known_model);
        let notices = futures::stream::unfold(self.session.notices(), |mut notices| async move {
            loop {
                match notices.recv().await {
                    Ok(notice) => return Some((notice, notices)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter_map(move |notice| {
            let message = describe(notice, &known_model);
            async move { message.map(|message| BackendNotice { message }) }
        });
        Some(notices.boxed())
    }
}

/// A notice in words for the editor's user, or `None` when it is not news.
fn describe(notice: Notice, known_model: &Mutex<Option<PathBuf>>) -> Option<String> {
    match notice {
        Notice::Model(info) => {
            let mut known = known_model.lock().unwrap_or_else(|e| e.into_inner());
            if known.as_deref().is_some_and(|path| same_file(path, &info.path)) {
                return None;
            }
            *known = Some(info.path.clone());
            Some(format!("the shared session now uses the model {} ({})", info.name, info.path.display()))
        }
        Notice::Adapter(Some(adapter)) => Some(format!(
            "the shared session now applies the LoRA adapter {} at scale {}{}",
            adapter.path.display(),
            adapter.scale,
            adapter.step.map(|step| format!(" (being fine-tuned: step {step})")).unwrap_or_default()
        )),
        Notice::Adapter(None) => Some("the shared session removed its LoRA adapter".to_owned()),
        Notice::Disconnected(reason) => Some(reason),
        Notice::Reconnected { pid } => Some(format!("completions now come from a new session daemon (pid {pid})")),
    }
}

async fn summary(session: &SharedSession, info: ModelInfo) -> ModelSummary {
    let fim = match info.fim_tokens {
        Some([prefix, suffix, middle]) => {
            let text = |token| async move { session.detokenize(vec![token]).await.ok() };
            match (text(prefix).await, text(suffix).await, text(middle).await) {
                (Some(prefix), Some(suffix), Some(middle)) => Some(FimTokens { prefix, suffix, middle }),
                _ => None,
            }
        }
        None => None,
    };
    let name = info.path.file_name().map_or_else(|| info.name.clone(), |n| n.to_string_lossy().into_owned());
    ModelSummary { name, path: Some(info.path), context_size: info.context_size, fim }
}

fn backend_error(error: EngineError) -> BackendError {
    match error {
        EngineError::NoModel => BackendError::NoModel,
        other => BackendError::Failed(other.to_string()),
    }
}
