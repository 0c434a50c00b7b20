//! The language server: LSP messages in, completions from a [`CompletionBackend`] out.
//!
//! Requests run concurrently (tower-lsp-server polls several handlers at once), so a few rules keep them apart:
//! - Document changes are applied without awaiting anything, under a plain mutex, and each request copies its
//!   document before its first await. tower-lsp-server starts handlers in the order messages arrive, so a request
//!   sees every change sent before it.
//! - Each request for a document takes a ticket; a newer request of the same kind for the same document supersedes
//!   it. The older one then answers with an empty result at once and drops its backend future, which stops the
//!   engine's work. `$/cancelRequest` drops the handler future (tower-lsp-server answers RequestCancelled), which
//!   drops the backend future the same way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower_lsp_server::jsonrpc::{Error as RpcError, Result as RpcResult};
use tower_lsp_server::ls_types::{
    CompletionItem, CompletionItemKind, CompletionList, CompletionOptions, CompletionParams, CompletionResponse,
    CompletionTextEdit, CompletionTriggerKind, DidChangeConfigurationParams, DidChangeTextDocumentParams,
    DidCloseTextDocumentParams, DidOpenTextDocumentParams, InitializeParams, InitializeResult, InitializedParams,
    InlineCompletionItem, InlineCompletionList, InlineCompletionParams, InlineCompletionResponse,
    InlineCompletionTriggerKind, InsertTextFormat, MessageType, OneOf, Position, PositionEncodingKind, Range,
    ServerCapabilities, ServerInfo, TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions,
    TextEdit, Uri,
};
use tower_lsp_server::{Client, LanguageServer, LspService};
use tracing::{debug, info, warn};

use crate::backend::{BackendError, CompletionBackend, CompletionRequest};
use crate::cache::SuggestionCache;
use crate::document::Document;
use crate::framing::{check_client_messages, relay_server_messages, write_messages};
use crate::position::{checked_byte_offset, position_of, Utf16Position};
use crate::postprocess::finish_suggestion;
use crate::prompt::{build_prompt, OtherFile, PromptInput};
use crate::settings::Settings;
use crate::stop::{CursorContext, Shape, StopRule, StopRules};

/// Messages tower-lsp-server handles at once. Its default (4) is too few: requests waiting for the model would
/// hold every slot, and the `$/cancelRequest` or newer request that should end them could not start.
const MAX_CONCURRENT_MESSAGES: usize = 64;
/// The buffer between the message check and the server's reader.
const FORWARD_BUFFER_BYTES: usize = 1 << 16;
/// Tokens kept free in the context besides the prompt and the generated text (the engine may add a BOS token).
const PROMPT_MARGIN_TOKENS: usize = 8;
/// A context with less room than this for the prompt cannot give useful completions.
const MIN_PROMPT_TOKENS: usize = 32;
/// Characters after which popup clients ask for completions by themselves (clients that only complete on
/// trigger characters, like Neovim 0.11's autotrigger, would otherwise never ask).
const POPUP_TRIGGER_CHARACTERS: &[&str] = &[".", "(", "[", "{", ",", "=", " "];
/// Longest label of a `textDocument/completion` item, in characters.
const LABEL_MAX_CHARS: usize = 60;

/// Whether two paths name the same file (a relative `-m` path and the absolute one a backend reports, say).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// phi-tui's own request, for an editor's status display: which model completions come from. No params; the
/// answer is [`ServerStatus`], sent once a model load in progress has finished.
pub const STATUS_METHOD: &str = "phi-tui/status";

/// The answer to [`STATUS_METHOD`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerStatus {
    /// The loaded model, or `None` (JSON `null`) when there is none.
    pub model: Option<StatusModel>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusModel {
    pub name: String,
    /// The file, when the backend knows it.
    pub path: Option<PathBuf>,
}

/// How the server starts; the `phi-tui lsp` command fills it from its arguments and config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// The model from the command line (`phi-tui lsp -m MODEL.gguf`). It wins over every setting.
    pub model: Option<PathBuf>,
    /// The settings before the client's `initializationOptions` apply on top: the config file's values (its
    /// `model` included), else [`Settings::default`].
    pub settings: Settings,
}

/// Serves the protocol on stdin and stdout until the client sends `exit` or closes stdin.
///
/// stdin is read on a plain thread of its own: a read of Tokio's stdin runs on the runtime's blocking pool, which
/// the runtime waits for when it shuts down, so after `exit` the process would wait for stdin to close — and
/// editors that keep the pipe open would leave the server running. The thread, blocked in its read, simply ends
/// with the process.
pub async fn serve_stdio<B: CompletionBackend>(backend: B, options: ServerOptions) {
    serve(StdinReader::spawn(), tokio::io::stdout(), backend, options).await;
}

/// Serves the protocol over any byte streams (tests use in-memory ones) until the client sends `exit` or closes
/// `input`. Must run inside a Tokio runtime.
pub async fn serve<R, W, B>(input: R, output: W, backend: B, options: ServerOptions)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite,
    B: CompletionBackend,
{
    let (service, socket) = LspService::build(|client| PhiLanguageServer::new(client, backend, options))
        .custom_method("textDocument/inlineCompletion", PhiLanguageServer::<B>::inline_completion)
        .custom_method(STATUS_METHOD, PhiLanguageServer::<B>::status)
        .finish();
    // client → check → server; server → relay → output, with the check's error answers between whole messages.
    let (server_input, checked_messages) = tokio::io::duplex(FORWARD_BUFFER_BYTES);
    let (server_output, server_messages) = tokio::io::duplex(FORWARD_BUFFER_BYTES);
    let (frames, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let server = tower_lsp_server::Server::new(server_input, server_output, socket)
        .concurrency_level(MAX_CONCURRENT_MESSAGES)
        .serve(service);
    let check_input = check_client_messages(input, checked_messages, frames.clone());
    let run_server = async move {
        tokio::pin!(server);
        tokio::select! {
            // `exit`: the input may stay open, and its check (with its sender of answers) is dropped here.
            () = &mut server => {}
            // The client's input ended: the server still answers what it has read.
            () = check_input => server.await,
        }
    };
    tokio::join!(run_server, relay_server_messages(server_messages, frames), write_messages(outgoing, output));
}

/// stdin as an `AsyncRead`, read by a thread of its own (see [`serve_stdio`]).
struct StdinReader {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    offset: usize,
}

impl StdinReader {
    fn spawn() -> Self {
        let (sender, chunks) = tokio::sync::mpsc::channel(4);
        let spawned = std::thread::Builder::new().name("lsp-stdin".to_owned()).spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buffer = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        if sender.blocking_send(buffer[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        warn!(%error, "reading stdin failed; treating it as closed");
                        return;
                    }
                }
            }
        });
        if let Err(error) = spawned {
            // Without the thread the sender is gone: the input reads as closed and the server ends.
            warn!(%error, "could not start the stdin reader");
        }
        Self { chunks, pending: Vec::new(), offset: 0 }
    }
}

impl AsyncRead for StdinReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.offset == this.pending.len() {
            match this.chunks.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.pending = chunk;
                    this.offset = 0;
                }
                // The thread ended: end of input.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(this.pending.len() - this.offset);
        buf.put_slice(&this.pending[this.offset..this.offset + n]);
        this.offset += n;
        Poll::Ready(Ok(()))
    }
}

/// The [`LanguageServer`] implementation; its state lives behind an `Arc` so that model loads can run as tasks.
struct PhiLanguageServer<B> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    client: Client,
    backend: B,
    /// The `-m` model, which no setting overrides.
    command_line_model: Option<PathBuf>,
    settings: Mutex<Settings>,
    documents: Mutex<HashMap<String, Document>>,
    /// The latest request ticket per document and request kind.
    tickets: Mutex<HashMap<(String, RequestKind), watch::Sender<u64>>>,
    cache: Mutex<SuggestionCache>,
    /// Each document's latest prompt window start, tried first next time so that prompt starts stay put.
    window_starts: Mutex<HashMap<String, usize>>,
    /// Held while a model loads; requests wait for it so that they use the new model.
    loading: Arc<tokio::sync::Mutex<()>>,
    /// Setting problems found in `initialize`, shown once the client is ready for messages.
    startup_warnings: Mutex<Vec<String>>,
    /// The first workspace folder's URI, to name other files relative to it.
    workspace_root: Mutex<Option<String>>,
    /// Whether the user has been told about a completion failure since the last success (to tell them once).
    failure_reported: AtomicBool,
}

/// The two ways clients ask for completions; each kind supersedes only its own older requests, because clients that
/// support both may send both for one keystroke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RequestKind {
    /// `textDocument/inlineCompletion`: ghost text, possibly several lines.
    Inline,
    /// `textDocument/completion`: an item in the completion popup, one line.
    Popup,
}

/// A suggestion and where it goes.
struct Answer {
    /// The text to insert at the cursor.
    suggestion: String,
    /// The cursor's line up to the cursor.
    line_prefix: String,
    cursor: Utf16Position,
    /// Whether text follows the cursor on its line.
    mid_line: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, its data is still the best there is.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: CompletionBackend> PhiLanguageServer<B> {
    fn new(client: Client, backend: B, options: ServerOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                backend,
                command_line_model: options.model,
                settings: Mutex::new(options.settings),
                documents: Mutex::default(),
                tickets: Mutex::default(),
                cache: Mutex::default(),
                window_starts: Mutex::default(),
                loading: Arc::default(),
                startup_warnings: Mutex::default(),
                workspace_root: Mutex::default(),
                failure_reported: AtomicBool::new(false),
            }),
        }
    }

    /// [`STATUS_METHOD`]: the model, after any load in progress.
    async fn status(&self) -> RpcResult<ServerStatus> {
        drop(self.inner.loading.lock().await);
        let model = self.inner.backend.model().await.map(|model| StatusModel { name: model.name, path: model.path });
        Ok(ServerStatus { model })
    }

    /// `textDocument/inlineCompletion` (LSP 3.18).
    async fn inline_completion(&self, params: InlineCompletionParams) -> RpcResult<InlineCompletionResponse> {
        let position = params.text_document_position.position;
        let uri = params.text_document_position.text_document.uri;
        let trigger = if params.context.trigger_kind == InlineCompletionTriggerKind::INVOKED {
            Trigger::INVOKED
        } else {
            Trigger::AUTOMATIC
        };
        let items = match self.inner.suggest(&uri, position, RequestKind::Inline, trigger).await? {
            None => Vec::new(),
            Some(answer) => {
                // At the end of a line the item replaces the line's start, which lets clients keep showing it while
                // the user types through it. In the middle of a line it is inserted at the cursor: a client that
                // draws a replacement over the line (Neovim) would hide the text after the cursor.
                let cursor = lsp_position(answer.cursor);
                let (insert_text, start) = if answer.mid_line {
                    (answer.suggestion, cursor)
                } else {
                    (format!("{}{}", answer.line_prefix, answer.suggestion), Position::new(cursor.line, 0))
                };
                vec![InlineCompletionItem {
                    insert_text,
                    filter_text: None,
                    range: Some(Range { start, end: cursor }),
                    command: None,
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                }]
            }
        };
        Ok(InlineCompletionResponse::List(InlineCompletionList { items }))
    }
}

impl<B: CompletionBackend> LanguageServer for PhiLanguageServer<B> {
    async fn initialize(&self, params: InitializeParams) -> RpcResult<InitializeResult> {
        if let Some(options) = &params.initialization_options {
            let warnings = lock(&self.inner.settings).apply_json(options);
            lock(&self.inner.startup_warnings).extend(warnings);
        }
        let root = params.workspace_folders.as_ref().and_then(|folders| folders.first());
        *lock(&self.inner.workspace_root) = root.map(|folder| folder.uri.as_str().trim_end_matches('/').to_owned());
        info!(client = ?params.client_info.as_ref().map(|c| &c.name), settings = ?*lock(&self.inner.settings), "initialize");
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(PositionEncodingKind::UTF16),
                text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(TextDocumentSyncKind::INCREMENTAL),
                    ..TextDocumentSyncOptions::default()
                })),
                completion_provider: Some(CompletionOptions {
                    trigger_characters: Some(POPUP_TRIGGER_CHARACTERS.iter().map(|c| (*c).to_owned()).collect()),
                    ..CompletionOptions::default()
                }),
                inline_completion_provider: Some(OneOf::Left(true)),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "phi-tui".to_owned(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            ..InitializeResult::default()
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let warnings = std::mem::take(&mut *lock(&self.inner.startup_warnings));
        for warning in warnings {
            self.inner.client.show_message(MessageType::WARNING, warning).await;
        }
        Arc::clone(&self.inner).start_model_load().await;
        if let Some(mut notices) = self.inner.backend.notices() {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                while let Some(notice) = notices.next().await {
                    info!(message = notice.message, "backend notice");
                    lock(&inner.cache).clear();
                    inner.client.show_message(MessageType::INFO, format!("phi-tui: {}", notice.message)).await;
                }
            });
        }
    }

    async fn shutdown(&self) -> RpcResult<()> {
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let document = params.text_document;
        debug!(uri = document.uri.as_str(), language = document.language_id, "didOpen");
        let opened = Document::new(document.text, document.version, document.language_id);
        lock(&self.inner.documents).insert(document.uri.as_str().to_owned(), opened);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        // No await in here: see the module documentation on ordering.
        let uri = params.text_document.uri.as_str();
        let mut documents = lock(&self.inner.documents);
        let Some(document) = documents.get_mut(uri) else {
            warn!(uri, "didChange for a document that is not open; ignoring it");
            return;
        };
        for change in params.content_changes {
            let range = change.range.map(|range| (utf16(range.start), utf16(range.end)));
            document.apply_change(range, &change.text);
        }
        document.version = params.text_document.version;
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri.as_str();
        lock(&self.inner.documents).remove(uri);
        // Dropping the ticket senders ends the document's requests still in flight.
        lock(&self.inner.tickets).retain(|(ticket_uri, _), _| ticket_uri != uri);
        lock(&self.inner.cache).forget(uri);
        lock(&self.inner.window_starts).remove(uri);
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let (warnings, changed, model_changed) = {
            let mut settings = lock(&self.inner.settings);
            let before = settings.clone();
            let warnings = settings.apply_json(&params.settings);
            (warnings, *settings != before, settings.model != before.model)
        };
        for warning in warnings {
            self.inner.client.show_message(MessageType::WARNING, warning).await;
        }
        if changed {
            info!(settings = ?*lock(&self.inner.settings), "settings changed");
            lock(&self.inner.cache).clear();
        }
        if model_changed {
            if let Some(model) = &self.inner.command_line_model {
                info!(model = %model.display(), "ignoring the model setting: the command line's model wins");
            } else {
                Arc::clone(&self.inner).start_model_load().await;
            }
        }
    }

    async fn completion(&self, params: CompletionParams) -> RpcResult<Option<CompletionResponse>> {
        let position = params.text_document_position.position;
        let uri = params.text_document_position.text_document.uri;
        // Popup clients (nvim-cmp, blink.cmp) ask on every keystroke and call that "invoked" too, so popup requests
        // are always debounced; only an explicit invocation may follow a deletion.
        let invoked = params.context.is_none_or(|context| context.trigger_kind == CompletionTriggerKind::INVOKED);
        let trigger = Trigger { debounce: true, after_deletion: invoked };
        let items = match self.inner.suggest(&uri, position, RequestKind::Popup, trigger).await? {
            None => Vec::new(),
            Some(answer) => {
                let word = trailing_word(&answer.line_prefix);
                let text = format!("{word}{}", answer.suggestion);
                let start = Position::new(answer.cursor.line, answer.cursor.character.saturating_sub(utf16_len(word)));
                vec![CompletionItem {
                    label: label_of(&text),
                    kind: Some(CompletionItemKind::TEXT),
                    detail: Some("phi-tui".to_owned()),
                    filter_text: Some(text.clone()),
                    sort_text: Some("0".to_owned()),
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                        range: Range { start, end: lsp_position(answer.cursor) },
                        new_text: text,
                    })),
                    ..CompletionItem::default()
                }]
            }
        };
        // Incomplete: the client asks again as the user types instead of filtering this one item.
        Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items })))
    }
}

impl<B: CompletionBackend> Inner<B> {
    /// Loads the model the options and settings name, in a task; requests wait for it. Takes the loading lock
    /// before returning, so that requests which arrive after this call wait for this load.
    async fn start_model_load(self: Arc<Self>) {
        let guard = match Arc::clone(&self.loading).try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => Arc::clone(&self.loading).lock_owned().await,
        };
        tokio::spawn(async move {
            self.load_model().await;
            drop(guard);
        });
    }

    async fn load_model(&self) {
        let wanted = self.command_line_model.clone().or_else(|| lock(&self.settings).model.clone());
        let current = self.backend.model().await;
        let Some(path) = wanted else {
            match current {
                Some(model) => info!(model = model.name, "no model configured; using the one already loaded"),
                None => {
                    warn!("no model configured");
                    self.client.show_message(MessageType::WARNING, NO_MODEL_MESSAGE).await;
                }
            }
            return;
        };
        if current.as_ref().and_then(|model| model.path.as_deref()).is_some_and(|loaded| same_file(loaded, &path)) {
            info!(path = %path.display(), "model already loaded");
            return;
        }
        info!(path = %path.display(), "loading model");
        let started = Instant::now();
        match self.backend.load_model(path.clone()).await {
            Ok(model) => {
                info!(
                    model = model.name,
                    context = model.context_size,
                    fim = model.fim.is_some(),
                    ms = started.elapsed().as_millis() as u64,
                    "model loaded"
                );
                lock(&self.cache).clear();
                // A shared backend keeps the model its other users have loaded rather than swapping it under them.
                if model.path.as_deref().is_some_and(|loaded| !same_file(loaded, &path)) {
                    let message = format!(
                        "phi-tui: completions use {}, which the shared session already serves, instead of {}",
                        model.name,
                        path.display()
                    );
                    info!(message, "attached to the loaded model");
                    self.client.show_message(MessageType::INFO, message).await;
                }
            }
            Err(error) => {
                warn!(%error, "model load failed");
                let message = format!(
                    "phi-tui: {error}. There are no completions until a model loads: check the path, or set \
                     another model (`phi-tui lsp -m MODEL.gguf`, or `model` in initializationOptions or settings)."
                );
                self.client.show_message(MessageType::ERROR, message).await;
            }
        }
    }

    /// Answers one completion request: `Ok(None)` when there is nothing to suggest (or a newer request superseded
    /// this one), an error for requests about documents or positions the server does not know.
    async fn suggest(
        &self,
        uri: &Uri,
        position: Position,
        kind: RequestKind,
        trigger: Trigger,
    ) -> RpcResult<Option<Answer>> {
        let started = Instant::now();
        let uri = uri.as_str();
        // Everything up to the first await sees the documents as the messages before this request left them.
        let document = lock(&self.documents).get(uri).cloned().ok_or_else(|| {
            RpcError::invalid_params(format!("unknown document {uri}: the client must send textDocument/didOpen first"))
        })?;
        if !document.is_python() {
            return Ok(None);
        }
        let cursor = checked_byte_offset(&document.text, utf16(position)).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "line {} is past the end of {uri} ({} lines)",
                position.line,
                crate::position::line_count(&document.text)
            ))
        })?;
        let mut ticket = self.take_ticket(uri, kind);
        if !trigger.after_deletion && document.last_edit_deleted {
            debug!(uri, "no automatic completion right after a deletion");
            return Ok(None);
        }
        let settings = lock(&self.settings).clone();
        let other_files = if settings.open_files_context { self.other_files(uri) } else { Vec::new() };
        let context = CursorContext::new(&document.text, cursor);
        let shape = Shape::choose(&context, settings.mode, kind == RequestKind::Popup);
        let (before, after) = document.text.split_at(cursor);
        let answer = |suggestion: String| Answer {
            suggestion,
            line_prefix: context.line_prefix.clone(),
            cursor: position_of(&document.text, cursor),
            mid_line: context.mid_line(),
        };

        if let Some(rest) = lock(&self.cache).lookup(uri, shape, before, after) {
            info!(
                uri,
                version = document.version,
                ?kind,
                ?shape,
                cache = "hit",
                chars = rest.len(),
                total_ms = ms(started.elapsed()),
                "completion"
            );
            return Ok(Some(answer(rest)));
        }

        let input = GenerationInput { document: &document, cursor, context: &context, shape, trigger, started };
        tokio::select! {
            biased;
            () = ticket.superseded() => {
                info!(uri, ?kind, total_ms = ms(started.elapsed()), "superseded by a newer request");
                Ok(None)
            }
            suggestion = self.generate(uri, &settings, &other_files, input) => {
                let Some(suggestion) = suggestion else { return Ok(None) };
                lock(&self.cache).insert(uri, shape, before, after, &suggestion);
                Ok(Some(answer(suggestion)))
            }
        }
    }

    /// Debounce, prompt, generation, post-processing. `None` when there is nothing to suggest.
    async fn generate(
        &self,
        uri: &str,
        settings: &Settings,
        other_files: &[OtherFile],
        request: GenerationInput<'_>,
    ) -> Option<String> {
        let wait_started = Instant::now();
        if request.trigger.debounce && !settings.debounce.is_zero() {
            tokio::time::sleep(settings.debounce).await;
        }
        drop(self.loading.lock().await);
        let waited = wait_started.elapsed();
        let Some(model) = self.backend.model().await else {
            debug!(uri, "no model loaded");
            return None;
        };
        let max_tokens = if request.shape == Shape::Block { settings.max_tokens } else { settings.max_line_tokens };
        let budget = (model.context_size as usize).saturating_sub(max_tokens as usize + PROMPT_MARGIN_TOKENS);
        if budget < MIN_PROMPT_TOKENS {
            warn!(context = model.context_size, max_tokens, "the model's context is too small for completions");
            return None;
        }

        let input = PromptInput {
            text: &request.document.text,
            cursor: request.cursor,
            other_files,
            fim: model.fim.as_ref(),
            budget,
            previous_window_start: lock(&self.window_starts).get(uri).copied(),
        };
        let count_tokens = |text: String| {
            let tokens = self.backend.tokenize(text);
            async move { tokens.await.map(|tokens| tokens.len()) }
        };
        let prompt = match build_prompt(&input, count_tokens).await {
            Ok(prompt) => prompt,
            Err(error) => return self.report_failure(error).await,
        };
        lock(&self.window_starts).insert(uri.to_owned(), prompt.window_start_line);
        let rules = Arc::new(StopRules::new(request.context, request.shape));
        let stop_strings =
            model.fim.as_ref().map(|fim| vec![fim.prefix.clone(), fim.suffix.clone(), fim.middle.clone()]);
        let completion_request = CompletionRequest {
            prompt: prompt.text,
            max_tokens,
            stop: StopRule::Block(StopRules::clone(&rules)),
            stop_strings: stop_strings.unwrap_or_default(),
            draft_hint: draft_hint(&request.document.text[request.cursor..]),
        };
        let completion = match self.backend.complete(completion_request).await {
            Ok(completion) => completion,
            Err(error) => return self.report_failure(error).await,
        };
        self.failure_reported.store(false, Ordering::Relaxed);
        let suggestion = finish_suggestion(
            &request.document.text,
            request.cursor,
            request.context,
            &rules,
            &completion.text,
            completion.hit_token_limit,
        );
        info!(
            uri,
            version = request.document.version,
            shape = ?request.shape,
            cache = "miss",
            wait_ms = ms(waited),
            window_start_line = prompt.window_start_line,
            prompt_tokens = completion.prompt_tokens,
            reused_tokens = completion.reused_tokens,
            decoded_tokens = completion.prompt_tokens.saturating_sub(completion.reused_tokens),
            queue_ms = completion.queue_ms,
            prompt_ms = completion.prompt_ms,
            gen_ms = completion.gen_ms,
            drafted_tokens = completion.drafted_tokens,
            accepted_tokens = completion.accepted_tokens,
            generated_chars = completion.text.len(),
            suggested_chars = suggestion.as_ref().map_or(0, String::len),
            total_ms = ms(request.started.elapsed()),
            "completion"
        );
        suggestion
    }

    /// Logs a failed completion and tells the user once (until a completion succeeds again).
    async fn report_failure<T>(&self, error: BackendError) -> Option<T> {
        if error == BackendError::NoModel {
            debug!("no model loaded");
            return None;
        }
        warn!(%error, "completion failed");
        if !self.failure_reported.swap(true, Ordering::Relaxed) {
            let message = format!("phi-tui: completion failed: {error}");
            self.client.show_message(MessageType::ERROR, message).await;
        }
        None
    }

    /// Takes the next ticket for `uri` and `kind`, superseding the requests holding older ones.
    fn take_ticket(&self, uri: &str, kind: RequestKind) -> Ticket {
        let mut tickets = lock(&self.tickets);
        let sender = tickets.entry((uri.to_owned(), kind)).or_insert_with(|| watch::channel(0).0);
        sender.send_modify(|latest| *latest += 1);
        let number = *sender.borrow();
        Ticket { number, latest: sender.subscribe() }
    }

    /// The other open Python documents, named relative to the workspace, in a stable order (so the prompt's start
    /// stays the same and its cached keys and values stay valid).
    fn other_files(&self, uri: &str) -> Vec<OtherFile> {
        let root = lock(&self.workspace_root).clone();
        let documents = lock(&self.documents);
        let mut files: Vec<OtherFile> = documents
            .iter()
            .filter(|(other, document)| other.as_str() != uri && document.is_python())
            .map(|(other, document)| OtherFile {
                name: display_name(other, root.as_deref()),
                text: document.text.clone(),
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }
}

/// What [`Inner::generate`] needs to know about the request.
struct GenerationInput<'a> {
    document: &'a Document,
    cursor: usize,
    context: &'a CursorContext,
    shape: Shape,
    trigger: Trigger,
    started: Instant,
}

/// What the way a request was triggered allows.
#[derive(Debug, Clone, Copy)]
struct Trigger {
    /// Wait [`Settings::debounce`] before generating.
    debounce: bool,
    /// Complete even right after a deletion.
    after_deletion: bool,
}

impl Trigger {
    /// The user asked for a completion: answer at once, whatever they did before.
    const INVOKED: Self = Self { debounce: false, after_deletion: true };
    /// The client asks as the user types.
    const AUTOMATIC: Self = Self { debounce: true, after_deletion: false };
}

/// A request's place in the queue of requests for one document.
struct Ticket {
    number: u64,
    latest: watch::Receiver<u64>,
}

impl Ticket {
    /// Resolves once a newer request took a ticket, or the document closed.
    async fn superseded(&mut self) {
        loop {
            if *self.latest.borrow_and_update() != self.number {
                return;
            }
            if self.latest.changed().await.is_err() {
                return;
            }
        }
    }
}

const NO_MODEL_MESSAGE: &str = "phi-tui: no model is set, so there are no completions. Start the server with \
    `phi-tui lsp -m MODEL.gguf`, or set `model` in initializationOptions (your editor's settings for this server), \
    or set `model` in the phi-tui config file.";

fn utf16(position: Position) -> Utf16Position {
    Utf16Position { line: position.line, character: position.character }
}

fn lsp_position(position: Utf16Position) -> Position {
    Position::new(position.line, position.character)
}

fn utf16_len(text: &str) -> u32 {
    text.chars().map(|c| c.len_utf16() as u32).sum()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The identifier characters that end `line_prefix` (what a popup client filters its items by).
fn trailing_word(line_prefix: &str) -> &str {
    let start = line_prefix
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(line_prefix.len(), |(i, _)| i);
    &line_prefix[start..]
}

fn label_of(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= LABEL_MAX_CHARS {
        return text.to_owned();
    }
    let mut label: String = text.chars().take(LABEL_MAX_CHARS - 1).collect();
    label.push('…');
    label
}

/// A document's name for the prompt: its path relative to the workspace root, else its path.
fn display_name(uri: &str, root: Option<&str>) -> String {
    if let Some(relative) = root.and_then(|root| uri.strip_prefix(root)).and_then(|rest| rest.strip_prefix('/')) {
        return relative.to_owned();
    }
    uri.strip_prefix("file://").unwrap_or(uri).to_owned()
}

/// The most text after the cursor handed to the backend as a drafting hint: what an edit may re-type soon.
const DRAFT_HINT_BYTES: usize = 4096;

/// The start of the text after the cursor, at most [`DRAFT_HINT_BYTES`], cut at a character boundary.
fn draft_hint(after: &str) -> String {
    let mut end = after.len().min(DRAFT_HINT_BYTES);
    while !after.is_char_boundary(end) {
        end -= 1;
    }
    after[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_words_stop_at_non_identifier_characters() {
        assert_eq!(trailing_word("    return fo"), "fo");
        assert_eq!(trailing_word("x = é_1"), "é_1");
        assert_eq!(trailing_word("f("), "");
        assert_eq!(trailing_word(""), "");
    }

    #[test]
    fn long_labels_are_shortened() {
        assert_eq!(label_of("  x + 1 "), "x + 1");
        let long = "a".repeat(100);
        assert_eq!(label_of(&long).chars().count(), LABEL_MAX_CHARS);
    }

    #[test]
    fn the_draft_hint_is_the_start_of_the_text_after_the_cursor() {
        assert_eq!(draft_hint("x = 1\n"), "x = 1\n");
        let long = "é".repeat(DRAFT_HINT_BYTES);
        let hint = draft_hint(&long);
        assert!(hint.len() <= DRAFT_HINT_BYTES && hint.len() + 2 > DRAFT_HINT_BYTES);
        assert!(long.starts_with(&hint));
    }

    #[test]
    fn other_files_are_named_relative_to_the_workspace() {
        assert_eq!(display_name("file:///w/pkg/a.py", Some("file:///w")), "pkg/a.py");
        assert_eq!(display_name("file:///elsewhere/b.py", Some("file:///w")), "/elsewhere/b.py");
        assert_eq!(display_name("untitled:1", None), "untitled:1");
    }
}
