//! A scripted [`CompletionBackend`] for tests: no model, deterministic tokens, controllable latency, and counters
//! that show whether the server dropped (cancelled) its futures.

mod client;
pub use client::{TestClient, TIMEOUT};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};

use crate::backend::{
    BackendError, Completion, CompletionBackend, CompletionRequest, FimTokens, ModelSummary, StopPredicate,
};

/// The fake model's context size unless a test sets another.
pub const FAKE_CONTEXT_SIZE: u32 = 2048;

/// One scripted answer: the model's raw output, and how long it takes to produce it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeReply {
    pub text: String,
    pub delay: Duration,
}

impl FakeReply {
    pub fn new(text: &str) -> Self {
        Self { text: text.to_owned(), delay: Duration::ZERO }
    }

    /// The same reply, taking `delay` first (a slow model: for cancellation tests).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A backend that answers completions from a script. Clones share their state.
///
/// It tokenizes with [`fake_tokens`], applies the request's stop predicate token by token like an engine would,
/// records every request, and counts completions that were started, finished, and dropped unfinished.
#[derive(Clone, Default)]
pub struct FakeBackend {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    model: Mutex<Option<ModelSummary>>,
    fim: Mutex<Option<FimTokens>>,
    context_size: Mutex<Option<u32>>,
    load_error: Mutex<Option<String>>,
    loads: Mutex<Vec<PathBuf>>,
    replies: Mutex<VecDeque<FakeReply>>,
    requests: Mutex<Vec<CompletionRequest>>,
    started: AtomicUsize,
    finished: AtomicUsize,
    cancelled: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has already failed; the data is still usable for its report.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeBackend {
    /// A backend with no model loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with a model named `name` already loaded (as if the binary had loaded it).
    pub fn with_model(name: &str) -> Self {
        let backend = Self::new();
        *lock(&backend.state.model) = Some(backend.summary(name, None));
        backend
    }

    /// Models loaded from now on get this context size.
    pub fn set_context_size(&self, tokens: u32) {
        *lock(&self.state.context_size) = Some(tokens);
        if let Some(model) = lock(&self.state.model).as_mut() {
            model.context_size = tokens;
        }
    }

    /// Models loaded from now on have these fill-in-the-middle tokens.
    pub fn set_fim(&self, fim: Option<FimTokens>) {
        lock(&self.state.fim).clone_from(&fim);
        if let Some(model) = lock(&self.state.model).as_mut() {
            model.fim = fim;
        }
    }

    /// Makes every model load fail with `reason` (or succeed again, with `None`).
    pub fn fail_loads(&self, reason: Option<&str>) {
        *lock(&self.state.load_error) = reason.map(str::to_owned);
    }

    /// Queues the reply for the next completion. Without a queued reply, a completion generates nothing.
    pub fn push_reply(&self, reply: FakeReply) {
        lock(&self.state.replies).push_back(reply);
    }

    /// Every completion request so far.
    pub fn requests(&self) -> Vec<CompletionRequest> {
        lock(&self.state.requests).clone()
    }

    /// Every path the server asked to load.
    pub fn loads(&self) -> Vec<PathBuf> {
        lock(&self.state.loads).clone()
    }

    /// Completions that began generating.
    pub fn started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Completions that returned their text.
    pub fn finished(&self) -> usize {
        self.state.finished.load(Ordering::SeqCst)
    }

    /// Completions whose future was dropped before it finished: what an engine sees as a cancellation.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds, checking every few milliseconds; false if `timeout` passes first.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !condition(self) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn summary(&self, name: &str, path: Option<PathBuf>) -> ModelSummary {
        ModelSummary {
            name: name.to_owned(),
            path,
            context_size: lock(&self.state.context_size).unwrap_or(FAKE_CONTEXT_SIZE),
            fim: lock(&self.state.fim).clone(),
        }
    }
}

impl CompletionBackend for FakeBackend {
    fn load_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelSummary, BackendError>> {
        lock(&self.state.loads).push(path.clone());
        let result = match lock(&self.state.load_error).clone() {
            Some(reason) => {
                *lock(&self.state.model) = None;
                Err(BackendError::Load { path, reason })
            }
            None => {
                let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                let summary = self.summary(&name, Some(path));
                *lock(&self.state.model) = Some(summary.clone());
                Ok(summary)
            }
        };
        futures::future::ready(result).boxed()
    }

    fn model(&self) -> BoxFuture<'static, Option<ModelSummary>> {
        futures::future::ready(lock(&self.state.model).clone()).boxed()
    }

    fn tokenize(&self, text: String) -> BoxFuture<'static, Result<Vec<u32>, BackendError>> {
        let ids = fake_tokens(&text).iter().map(|token| token.len() as u32).collect();
        futures::future::ready(Ok(ids)).boxed()
    }

    fn complete(&self, request: CompletionRequest) -> BoxFuture<'static, Result<Completion, BackendError>> {
        let state = Arc::clone(&self.state);
        async move {
            if lock(&state.model).is_none() {
                return Err(BackendError::NoModel);
            }
            let reply = lock(&state.replies).pop_front().unwrap_or_default();
            lock(&state.requests).push(request.clone());
            state.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = CancelGuard { state: Arc::clone(&state), armed: true };
            tokio::time::sleep(reply.delay).await;
            let (text, hit_token_limit) =
                generate(&reply.text, &request.stop.clone().into_predicate(), request.max_tokens);
            guard.armed = false;
            state.finished.fetch_add(1, Ordering::SeqCst);
            let prompt_tokens = fake_tokens(&request.prompt).len();
            Ok(Completion { text, hit_token_limit, prompt_tokens, ..Completion::default() })
        }
        .boxed()
    }
}

/// Counts a cancellation when a completion future is dropped before it finished.
struct CancelGuard {
    state: Arc<State>,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The fake tokenizer: a run of letters, digits and underscores is one token, a run of whitespace is one token, and
/// any other character is a token of its own.
pub fn fake_tokens(text: &str) -> Vec<&str> {
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        }
    };
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut previous: Option<u8> = None;
    for (i, c) in text.char_indices() {
        let current = class(c);
        if i > start && (previous != Some(current) || current == 2) {
            tokens.push(&text[start..i]);
            start = i;
        }
        previous = Some(current);
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

/// Generates `output` the way an engine would: token by token ([`fake_tokens`]), asking `stop` after each, for at
/// most `max_tokens` tokens. Returns the text and whether the token limit ended it.
pub fn generate(output: &str, stop: &StopPredicate, max_tokens: u32) -> (String, bool) {
    let mut text = String::new();
    for (n, token) in fake_tokens(output).into_iter().enumerate() {
        if n == max_tokens as usize {
            return (text, true);
        }
        text.push_str(token);
        if let Some(cut) = stop(&text) {
            text.truncate(cut.min(text.len()));
            return (text, false);
        }
    }
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_tokens_split_words_space_and_symbols() {
        assert_eq!(fake_tokens("def f(x):\n    é"), vec!["def", " ", "f", "(", "x", ")", ":", "\n    ", "é"]);
        assert!(fake_tokens("").is_empty());
    }

    #[test]
    fn generation_honours_the_predicate_and_the_limit() {
        let stop: StopPredicate = Arc::new(|text: &str| text.find('\n'));
        assert_eq!(generate("a b\nc", &stop, 10), ("a b".to_owned(), false));
        let never: StopPredicate = Arc::new(|_: &str| None);
        assert_eq!(generate("a b c", &never, 3), ("a b".to_owned(), true));
    }
}
