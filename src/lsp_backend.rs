//! The language server's completion backend, on the engine: the glue between `phi-lsp` (which knows nothing of
//! llama.cpp) and [`crate::engine`].

use std::path::PathBuf;

use futures::future::BoxFuture;
use futures::FutureExt;
use phi_lsp::{BackendError, Completion, CompletionBackend, CompletionRequest, FimTokens, ModelSummary};

use crate::engine::{
    Drafting, Engine, GenerateRequest, LookupOptions, ModelInfo, Priority, Prompt, SequenceId, StopReason,
};

/// Completes on one dedicated sequence of a (possibly shared) engine, at interactive priority, so that a
/// keystroke's completion preempts a chat generation and reuses the previous completion's cached prompt prefix.
#[derive(Clone)]
pub struct EngineBackend {
    engine: Engine,
    sequence: SequenceId,
}

impl EngineBackend {
    pub fn new(engine: Engine, sequence: SequenceId) -> Self {
        Self { engine, sequence }
    }
}

impl CompletionBackend for EngineBackend {
    fn load_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelSummary, BackendError>> {
        let engine = self.engine.clone();
        async move {
            match engine.load_model(&path, None).await {
                Ok(info) => Ok(summary(&engine, info).await),
                Err(e) => Err(BackendError::Load { path, reason: e.to_string() }),
            }
        }
        .boxed()
    }

    fn model(&self) -> BoxFuture<'static, Option<ModelSummary>> {
        let engine = self.engine.clone();
        async move {
            let info = engine.state().await.ok()?.model?;
            Some(summary(&engine, info).await)
        }
        .boxed()
    }

    fn tokenize(&self, text: String) -> BoxFuture<'static, Result<Vec<u32>, BackendError>> {
        let engine = self.engine.clone();
        async move {
            let tokens = engine.tokenize(&text, false).await.map_err(backend_error)?;
            // Token ids are never negative: the engine's tokenizer only returns vocabulary entries.
            Ok(tokens.into_iter().map(|t| t.max(0) as u32).collect())
        }
        .boxed()
    }

    fn complete(&self, request: CompletionRequest) -> BoxFuture<'static, Result<Completion, BackendError>> {
        let mut generate = GenerateRequest::new(self.sequence, Prompt::Text(request.prompt));
        generate.max_tokens = request.max_tokens;
        generate.stop_strings = request.stop_strings;
        generate.stop_predicate = Some(request.stop);
        generate.priority = Priority::Interactive;
        let engine = self.engine.clone();
        async move {
            // Completions repeat the buffer (names, argument lists, the line above, the code below the cursor):
            // prompt lookup drafts them from the prompt and the hint, and greedy verification keeps the text
            // exactly what it would be without.
            let reference = if request.draft_hint.is_empty() {
                Vec::new()
            } else {
                engine.tokenize(&request.draft_hint, false).await.unwrap_or_default()
            };
            generate.draft = Drafting::Lookup(LookupOptions { reference, ..LookupOptions::default() });
            // The stream cancels the engine's work when dropped, so dropping this future (a `$/cancelRequest`, a
            // superseding keystroke) stops decoding within one step.
            let generation = engine.generate(generate);
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
}

async fn summary(engine: &Engine, info: ModelInfo) -> ModelSummary {
    let fim = match info.fim_tokens {
        Some([prefix, suffix, middle]) => {
            let text = |token| async move { engine.detokenize(&[token]).await.ok() };
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

fn backend_error(error: crate::engine::EngineError) -> BackendError {
    match error {
        crate::engine::EngineError::NoModel => BackendError::NoModel,
        other => BackendError::Failed(other.to_string()),
    }
}
