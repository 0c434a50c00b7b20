//! The session daemon's HTTP front-end (`phi-tui serve --http ADDR`): llama-server's and OpenAI's endpoints, so
//! that existing clients (llama.vscode, llama.vim, Continue, OpenAI SDKs…) use the one shared session — the same
//! model, adapter and KV cache as the TUI and `phi-tui lsp` — instead of loading a copy of their own.
//!
//! It runs on the daemon's runtime, next to the Unix socket, and its clients are the daemon's clients: **each
//! keep-alive connection is one client**, attached (a record in `phi-tui status`, a sequence from the pool) at its
//! first generation and detached when the connection closes. So a client that reuses its connection keeps its
//! prompt prefix cached between requests (llama-server's `cache_prompt`), and an idle connection gives its
//! sequence back after [`KEEP_ALIVE_IDLE`]. A closed connection's sequence keeps its cache and goes to the next
//! HTTP connection: a client that opens one per request (llama.vim runs curl each time, and warms the cache with
//! `n_predict: 0` requests) still finds its prefix cached. A client that disconnects stops its generation within one step: the
//! response body (or the handler, before it streams) owns the generation, and dropping it cancels it.
//!
//! Security: it listens on loopback addresses only unless told otherwise, and every request but `GET /health`
//! needs the bearer token of [`token`].

mod llama;
mod openai;
pub mod token;

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::daemon::{Attached, Client, Daemon, TrackedGeneration};
use super::protocol::{ClientInfo, ClientKind};
use super::Notice;
use crate::engine::{
    EngineError, GenerationEvent, GenerationSummary, ModelInfo, SamplingParams, StopPredicate, StopReason, TokenId,
};

pub use token::TokenError;

/// Request bodies larger than this are refused (413). phi-1's whole context is about 8 KB of text; an editor's
/// extra context chunks stay far below this.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A keep-alive connection that sends no new request for this long is closed, and its sequence given back.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "{address} is not a loopback address: the HTTP front-end listens on loopback only, unless \
         --http-allow-remote is given (anyone who can reach the port and has the token can use the model)"
    )]
    NotLoopback { address: SocketAddr },
    #[error("{address}: not an address to listen on ({reason}); expected HOST:PORT, e.g. 127.0.0.1:8012")]
    BadAddress { address: String, reason: String },
    #[error("{address}: cannot listen: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The HTTP listener, bound, and the token its requests must carry.
pub struct HttpListening {
    listener: TcpListener,
    address: SocketAddr,
    allow_remote: bool,
    token: String,
}

impl HttpListening {
    /// Binds `address` (`HOST:PORT`; port 0 picks a free one), refusing a non-loopback address unless
    /// `allow_remote`. Must run inside a Tokio runtime.
    pub fn bind(address: &str, allow_remote: bool, token: String) -> Result<Self, HttpError> {
        let candidates = resolve(address, allow_remote)?;
        let mut last_error = None;
        for candidate in candidates {
            let bound = std::net::TcpListener::bind(candidate)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .and_then(TcpListener::from_std);
            match bound {
                Ok(listener) => {
                    let address = listener.local_addr().unwrap_or(candidate);
                    return Ok(Self { listener, address, allow_remote, token });
                }
                Err(e) => last_error = Some(e),
            }
        }
        let source = last_error.unwrap_or_else(|| std::io::Error::other("the name resolves to no address"));
        Err(HttpError::Bind { address: address.to_owned(), source })
    }

    /// Where it listens (with the port chosen when port 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// The addresses `address` names, all of them loopback unless `allow_remote`.
pub fn resolve(address: &str, allow_remote: bool) -> Result<Vec<SocketAddr>, HttpError> {
    let bad = |reason: String| HttpError::BadAddress { address: address.to_owned(), reason };
    let candidates: Vec<SocketAddr> = address.to_socket_addrs().map_err(|e| bad(e.to_string()))?.collect();
    if candidates.is_empty() {
        return Err(bad("it names no address".to_owned()));
    }
    if !allow_remote {
        if let Some(&remote) = candidates.iter().find(|a| !a.ip().is_loopback()) {
            return Err(HttpError::NotLoopback { address: remote });
        }
    }
    Ok(candidates)
}

/// Serves HTTP until the daemon exits. Each connection is served by its own task.
pub(super) async fn serve(listening: HttpListening, daemon: Arc<Daemon>) {
    let HttpListening { listener, address, allow_remote, token } = listening;
    let state = Arc::new(HttpState {
        daemon: Arc::clone(&daemon),
        token,
        model: Mutex::new(None),
        last_adapter: Mutex::new(None),
        warm_sequence: Mutex::new(None),
        next_id: AtomicU64::new(1),
    });
    tokio::spawn(follow_notices(daemon.notices(), Arc::clone(&state)));
    let router = router(Arc::clone(&state));
    tracing::info!(%address, "HTTP front-end listening");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allow_remote && !peer.ip().is_loopback() {
            tracing::warn!(%peer, "refused an HTTP connection from a remote address");
            continue;
        }
        // Streamed tokens go out as they come, not when a segment fills.
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(Connection { state: Arc::clone(&state), peer, attached: Mutex::new(None) });
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn({
                let connection = Arc::clone(&connection);
                move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(Arc::clone(&connection));
                    tower_service::Service::call(&mut router.clone(), request)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(KEEP_ALIVE_IDLE)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
            connection.close().await;
        });
    }
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/completion", post(llama::completion))
        .route("/completions", post(llama::completion))
        .route("/infill", post(llama::infill))
        .route("/lora-adapters", get(llama::adapters).post(llama::set_adapters))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// What the endpoints share.
struct HttpState {
    daemon: Arc<Daemon>,
    token: String,
    /// The loaded model, kept from the session's notices so that a request does not wait for the engine to say.
    model: Mutex<Option<ModelInfo>>,
    /// The adapter last applied, so that `/lora-adapters` can list it at scale 0 after it was switched off.
    last_adapter: Mutex<Option<PathBuf>>,
    /// The sequence of the HTTP connection that closed last, its cache kept for the next one.
    warm_sequence: Mutex<Option<u32>>,
    next_id: AtomicU64,
}

impl HttpState {
    /// The loaded model, or 503 when there is none.
    async fn model(&self) -> Result<ModelInfo, ApiError> {
        if let Some(model) = lock(&self.model).clone() {
            return Ok(model);
        }
        let state = self.daemon.engine().state().await.map_err(ApiError::engine)?;
        if let Some(adapter) = &state.adapter {
            *lock(&self.last_adapter) = Some(adapter.path.clone());
        }
        let model = state.model.ok_or_else(|| ApiError::engine(EngineError::NoModel))?;
        *lock(&self.model) = Some(model.clone());
        Ok(model)
    }

    /// A fresh id for a response (`cmpl-…`).
    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", std::process::id())
    }
}

async fn follow_notices(mut notices: broadcast::Receiver<Notice>, state: Arc<HttpState>) {
    loop {
        match notices.recv().await {
            Ok(Notice::Model(model)) => *lock(&state.model) = Some(model),
            Ok(Notice::Adapter(Some(adapter))) => *lock(&state.last_adapter) = Some(adapter.path),
            Ok(_) => {}
            // Missed some: ask the engine again on the next request.
            Err(broadcast::error::RecvError::Lagged(_)) => *lock(&state.model) = None,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One keep-alive connection: a client of the daemon from its first generation until it closes.
struct Connection {
    state: Arc<HttpState>,
    peer: SocketAddr,
    attached: Mutex<Option<Attached>>,
}

impl Connection {
    /// This connection's client, attaching it on first use, with the request counted.
    fn client(&self) -> Result<Client, ApiError> {
        let mut attached = lock(&self.attached);
        if attached.is_none() {
            let info = ClientInfo { kind: ClientKind::Http, pid: 0 };
            let warm = *lock(&self.state.warm_sequence);
            let client = self
                .state
                .daemon
                .attach(info, Some(self.peer.to_string()), warm)
                .map_err(|message| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", message))?;
            tracing::info!(peer = %self.peer, client_id = client.client().id(), sequence = client.sequence(), "HTTP client connected");
            *attached = Some(client);
        }
        let client = attached.as_ref().map(|a| a.client().clone()).ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the connection has no client")
        })?;
        client.count_request();
        Ok(client)
    }

    async fn close(&self) {
        let attached = lock(&self.attached).take();
        if let Some(attached) = attached {
            tracing::info!(peer = %self.peer, client_id = attached.client().id(), "HTTP client disconnected");
            *lock(&self.state.warm_sequence) = Some(attached.sequence());
            attached.detach_keeping_cache().await;
        }
    }
}

/// `GET /health`, without a token: 200 once a model is loaded, 503 before.
async fn health(State(state): State<Arc<HttpState>>) -> Response {
    match state.model().await {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A request that carried the right bearer token.
struct Authorized;

impl FromRequestParts<Arc<HttpState>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HttpState>) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim);
        match presented {
            Some(presented) if token::matches(presented, &state.token) => Ok(Authorized),
            Some(_) => Err(ApiError::unauthorized("invalid token")),
            None => Err(ApiError::unauthorized("missing token: send `Authorization: Bearer <token>`")),
        }
    }
}

/// An error as llama-server and OpenAI send one: `{"error": {"code", "message", "type", "param"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None }
    }

    fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        Self { param, ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    fn unauthorized(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            format!(
                "{why}; the token is in the config directory's `{}` (`phi-tui serve --print-token`)",
                token::TOKEN_FILE
            ),
        )
    }

    fn engine(error: EngineError) -> Self {
        match error {
            EngineError::NoModel => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "no model is loaded: start the daemon with `phi-tui serve -m MODEL.gguf` (or set `model` in the config \
                 file), or load one from the TUI",
            ),
            EngineError::PromptTooLong { .. }
            | EngineError::EmptyPrompt
            | EngineError::InvalidToken { .. }
            | EngineError::InvalidSampling(_)
            | EngineError::InvalidAdapter { .. } => Self::bad_request(error.to_string(), None),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", other.to_string()),
        }
    }

    fn body(&self) -> Value {
        json!({ "error": {
            "code": self.status.as_u16(),
            "message": self.message,
            "type": self.kind,
            "param": self.param,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The request body as JSON: 413 when it is too large, 400 when it is not JSON.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(rejection.body_text(), None)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}"), None))
}

/// Reads `T` from the body's JSON; an error names the field that is wrong (`n_predict`, `input_extra[0].text`).
fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // A missing field is reported at its parent: take its name from the message.
        let missing = inner.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
        let param = match (path.as_str(), missing) {
            (".", Some(field)) => Some(field.to_owned()),
            (".", None) => None,
            (path, Some(field)) => Some(format!("{path}.{field}")),
            (path, None) => Some(path.to_owned()),
        };
        let message = match &param {
            Some(param) if missing.is_none() => format!("{param}: {inner}"),
            _ => inner,
        };
        ApiError::bad_request(message, param)
    })
}

/// The sampling and stop fields that every generating endpoint takes (llama-server's names).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SamplingFields {
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    seed: Option<i64>,
    stop: Option<StopField>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

impl SamplingFields {
    /// phi-tui's sampling for these fields. The temperature defaults to 0 (greedy), as everywhere in phi-tui; the
    /// other filters default to off; a negative seed (llama-server's "random") takes one from the clock.
    fn params(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        let seed = match self.seed {
            Some(seed) if seed >= 0 => seed as u32,
            Some(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32),
            None => defaults.seed,
        };
        SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.map_or(defaults.top_k, |k| u32::try_from(k).unwrap_or(0)),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            // llama-server's -1: the whole context (the engine caps it there anyway).
            repeat_last_n: self
                .repeat_last_n
                .map_or(defaults.repeat_last_n, |n| u32::try_from(n).unwrap_or(i32::MAX as u32)),
            seed,
        }
    }

    fn stop_strings(&self) -> Vec<String> {
        match &self.stop {
            Some(StopField::One(stop)) => vec![stop.clone()],
            Some(StopField::Many(stops)) => stops.clone(),
            None => Vec::new(),
        }
    }
}

/// A prompt as llama-server and OpenAI take one: text, token ids, or a list of one text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Tokens(Vec<TokenId>),
    Texts(Vec<String>),
}

impl PromptField {
    fn into_prompt(self) -> Result<crate::engine::Prompt, ApiError> {
        match self {
            Self::Text(text) => Ok(crate::engine::Prompt::Text(text)),
            Self::Tokens(tokens) => Ok(crate::engine::Prompt::Tokens(tokens)),
            Self::Texts(mut texts) if texts.len() == 1 => Ok(crate::engine::Prompt::Text(texts.remove(0))),
            Self::Texts(_) => Err(ApiError::bad_request(
                "prompt: several prompts in one request are not supported; send one request each",
                Some("prompt".to_owned()),
            )),
        }
    }
}

/// Tokens to generate at most: `None` or a negative count (llama-server's -1) means until the model ends or the
/// sequence is full.
fn max_tokens(requested: Option<i64>) -> u32 {
    match requested {
        Some(n) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
        _ => u32::MAX,
    }
}

/// Ends a generation once `limit` has passed since its first token and it has a new line (llama-server's
/// `t_max_predict_ms`: a slow multi-line completion is cut short, a one-line one is not).
fn time_limit(limit: Duration) -> StopPredicate {
    let started = OnceLock::new();
    Arc::new(move |text: &str| {
        let started = *started.get_or_init(Instant::now);
        (started.elapsed() > limit && text.contains('\n')).then_some(text.len())
    })
}

/// Ends a generation before the first line (after the first) that is indented less than `columns` (llama-server's
/// `n_indent`: a completion inside a block stops where the block ends). As there, blank lines count as unindented,
/// and the cut comes after the short line's indentation, which a stream may already have sent.
fn indent_limit(columns: usize) -> StopPredicate {
    Arc::new(move |text: &str| {
        let mut offset = 0;
        for (index, line) in text.split_inclusive('\n').enumerate() {
            if index > 0 {
                let body = line.trim_start_matches([' ', '\t']);
                let indent = line.len() - body.len();
                if !body.is_empty() && indent < columns {
                    return Some(offset + indent);
                }
            }
            offset += line.len();
        }
        None
    })
}

/// Combines stop predicates: the earliest cut wins.
fn any_of(predicates: Vec<StopPredicate>) -> Option<StopPredicate> {
    match predicates.len() {
        0 => None,
        1 => predicates.into_iter().next(),
        _ => Some(Arc::new(move |text: &str| predicates.iter().filter_map(|p| p(text)).min())),
    }
}

/// Waits for a generation's end; an engine error becomes the response's error.
async fn finish(mut generation: TrackedGeneration) -> Result<GenerationSummary, ApiError> {
    while let Some(event) = generation.next().await {
        match event.map_err(ApiError::engine)? {
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Finished(summary) => return Ok(summary),
        }
    }
    Err(ApiError::engine(EngineError::EngineStopped))
}

/// What a streaming endpoint sends for each moment of a generation: the `data:` payloads of server-sent events
/// (none is fine).
trait StreamRender: Send + 'static {
    fn delta(&mut self, text: &str, tokens: &[TokenId]) -> Vec<String>;
    fn finished(&mut self, summary: &GenerationSummary) -> Vec<String>;
    fn failed(&mut self, error: ApiError) -> Vec<String>;
}

/// A generation as server-sent events. The first event is awaited before the response starts, so that a request
/// the engine refuses (a prompt too long, say) still gets its error status; after that, errors become an event.
/// The response body owns the generation: a client that goes away drops it, which cancels it.
async fn stream(mut generation: TrackedGeneration, render: impl StreamRender) -> Result<Response, ApiError> {
    let first = match generation.next().await {
        Some(Ok(event)) => event,
        Some(Err(error)) => return Err(ApiError::engine(error)),
        None => return Err(ApiError::engine(EngineError::EngineStopped)),
    };
    struct Streaming<R> {
        generation: TrackedGeneration,
        render: R,
        pending: Option<GenerationEvent>,
        done: bool,
    }
    let state = Streaming { generation, render, pending: Some(first), done: false };
    let body = futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let event = match state.pending.take() {
                Some(event) => Some(Ok(event)),
                None => state.generation.next().await,
            };
            let payloads = match event {
                Some(Ok(GenerationEvent::Delta { text, tokens })) => state.render.delta(&text, &tokens),
                Some(Ok(GenerationEvent::Finished(summary))) => {
                    state.done = true;
                    state.render.finished(&summary)
                }
                Some(Err(error)) => {
                    state.done = true;
                    state.render.failed(ApiError::engine(error))
                }
                None => return None,
            };
            if !payloads.is_empty() || state.done {
                let frame: String = payloads.iter().map(|payload| format!("data: {payload}\n\n")).collect();
                return Some((Ok::<_, Infallible>(Bytes::from(frame)), state));
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// OpenAI's `finish_reason` for how a generation ended.
fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

/// The model's name as the endpoints report it: its file name.
fn model_id(model: &ModelInfo) -> String {
    model.path.file_name().map_or_else(|| model.name.clone(), |name| name.to_string_lossy().into_owned())
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_indent_limit_cuts_before_the_first_shallower_line() {
        let limit = indent_limit(4);
        assert_eq!(limit("x = 1\n    y = 2\n"), None);
        assert_eq!(limit("x = 1\n    y = 2\n  "), None, "an unfinished indentation is not decided yet");
        assert_eq!(limit("x = 1\n    y = 2\nz = 3"), Some(16));
        assert_eq!(limit("x = 1\n\n    y"), Some(6), "a blank line counts as unindented, as in llama-server");
        assert_eq!(limit("x\n    y\n  z"), Some(10));
        assert_eq!(indent_limit(0)("a\nb\n"), None);
    }

    #[test]
    fn errors_name_the_field() {
        #[derive(Debug, Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n_predict: Option<i64>,
            #[allow(dead_code)]
            prompt: String,
        }
        let error = parse::<Body>(&json!({"prompt": "x", "n_predict": "many"})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("n_predict"));
        assert!(error.message.starts_with("n_predict: invalid type"), "{}", error.message);
        let error = parse::<Body>(&json!({})).unwrap_err();
        assert_eq!((error.param.as_deref(), error.message.as_str()), (Some("prompt"), "missing field `prompt`"));
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn addresses_must_be_loopback_unless_allowed() {
        assert!(resolve("127.0.0.1:0", false).is_ok());
        assert!(resolve("[::1]:0", false).is_ok());
        assert!(matches!(resolve("0.0.0.0:8012", false), Err(HttpError::NotLoopback { .. })));
        assert!(resolve("0.0.0.0:8012", true).is_ok());
        assert!(matches!(resolve("8012", false), Err(HttpError::BadAddress { .. })));
    }
}
