//! The session daemon (`phi-tui serve`): one engine, one loaded model and adapter, one KV pool, shared by every
//! client that connects to its socket (or to its HTTP front-end, [`super::http`]).
//!
//! Each client gets a sequence of its own (its KV cache, so its prompt prefix stays cached between its requests)
//! and a [`LocalSession`] on it; the daemon is that session behind a socket. Calls run as tasks, so a connection
//! keeps reading (a `Cancel`, say) while a generation streams. A client that disconnects cancels its generations
//! and gives its sequence back. The daemon exits on SIGTERM/SIGINT, after an idle timeout with no clients, or when
//! its socket is removed from under it.
//!
//! Both front-ends attach their clients with [`Daemon::attach`] and generate through [`Client::generate`], so the
//! records, counters and sequence pool are one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::http::{self, HttpListening};
use super::paths::{effective_uid, DaemonLock, PathsError, SessionPaths};
use super::protocol::{
    read_frame, write_frame, Answer, Call, ClientInfo, ClientKind, ClientMessage, ClientStatus, DaemonMessage,
    DaemonStatus, FrameError, Hello, Welcome, PROTOCOL_VERSION,
};
use super::{notice_channel, InferenceSession, LocalSession, Notice, SessionRequest};
use crate::engine::{
    Engine, EngineError, EngineOptions, Generation, GenerationEvent, GenerationSummary, LoadProgress, SequenceId,
    StopPredicate, StopReason,
};

/// How long a client may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the daemon checks its idle time and its socket.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// Latencies kept per client for its percentiles.
const LATENCY_WINDOW: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error("a phi-tui session daemon is already running{}; `phi-tui status` shows it, `phi-tui serve --stop` stops it",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32> },
    #[error("{}: cannot listen: {source}", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub engine: EngineOptions,
    /// A model to load at start.
    pub model: Option<PathBuf>,
    /// Whether a failure to load `model` stops the daemon with that error (a model named by hand on `phi-tui
    /// serve`), rather than only being logged (a daemon a client started, which reports to that client).
    pub model_required: bool,
    /// Exit after this long without clients; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The socket, bound, with the lock that makes this process the one daemon; and the HTTP listener, if any.
pub struct Listening {
    listener: UnixListener,
    paths: SessionPaths,
    socket_inode: u64,
    http: Option<HttpListening>,
    _lock: DaemonLock,
}

impl Listening {
    /// Takes the lock, replaces a stale socket, binds (mode 0600) and writes the pid file. Must run inside a Tokio
    /// runtime.
    pub fn bind(paths: &SessionPaths) -> Result<Self, DaemonError> {
        paths.prepare_dir()?;
        let Some(lock) = paths.try_lock()? else {
            return Err(DaemonError::AlreadyRunning { pid: read_pid(paths) });
        };
        paths.clear_stale_socket()?;
        let bind_error = |source| DaemonError::Bind { path: paths.socket.clone(), source };
        let listener = UnixListener::bind(&paths.socket).map_err(bind_error)?;
        // The directory is private already; the socket's own mode keeps it so if the directory is ever opened.
        std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
        let socket_inode = std::fs::metadata(&paths.socket).map_err(bind_error)?.ino();
        std::fs::write(&paths.pid, format!("{}\n", std::process::id())).map_err(|source| PathsError::Io {
            what: "cannot write the pid file",
            path: paths.pid.clone(),
            source,
        })?;
        Ok(Self { listener, paths: paths.clone(), socket_inode, http: None, _lock: lock })
    }

    /// Where the HTTP front-end listens, if there is one.
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(HttpListening::address)
    }

    /// Adds an HTTP front-end (bound already), served by the same daemon as the socket.
    pub fn with_http(mut self, http: HttpListening) -> Self {
        self.http = Some(http);
        self
    }

    /// Whether the socket file is still the one this daemon bound.
    fn socket_is_ours(&self) -> bool {
        std::fs::metadata(&self.paths.socket).is_ok_and(|m| m.ino() == self.socket_inode)
    }
}

fn read_pid(paths: &SessionPaths) -> Option<u32> {
    std::fs::read_to_string(&paths.pid).ok()?.trim().parse().ok()
}

/// Serves until a signal, the idle timeout, or the socket's removal. Removes the socket and pid file on the way out.
pub async fn run(mut listening: Listening, options: DaemonOptions) -> Result<(), DaemonError> {
    let engine = Engine::start(options.engine.clone())?;
    let http_address = listening.http.as_ref().map(|http| http.address().to_string());
    let daemon = Arc::new(Daemon::new(engine, listening.paths.clone(), options.engine.sequences, http_address));
    tracing::info!(socket = %listening.paths.socket.display(), pid = std::process::id(), "session daemon listening");
    if let Some(http) = listening.http.take() {
        tokio::spawn(http::serve(http, Arc::clone(&daemon)));
    }
    // The model loads while clients connect; a required one that fails ends the daemon below.
    let (load_failed, mut load_failure) = tokio::sync::mpsc::channel::<EngineError>(1);
    if let Some(model) = options.model.clone() {
        let daemon = Arc::clone(&daemon);
        let required = options.model_required;
        tokio::spawn(async move {
            if let Err(error) = daemon.attach_model(model.clone(), None).await {
                tracing::error!(%error, model = %model.display(), "could not load the model");
                if required {
                    let _ = load_failed.send(error).await;
                }
            }
        });
    }
    let mut failure = None;

    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate());
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt());
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let reason = loop {
        tokio::select! {
            accepted = listening.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(Arc::clone(&daemon).serve_connection(stream));
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
            _ = recv(&mut terminate) => break "SIGTERM",
            _ = recv(&mut interrupt) => break "SIGINT",
            Some(error) = load_failure.recv() => {
                failure = Some(error);
                break "its model could not be loaded";
            }
            _ = housekeeping.tick() => {
                if !listening.socket_is_ours() {
                    break "its socket was removed or replaced";
                }
                if let Some(timeout) = options.idle_timeout {
                    if daemon.idle_for().is_some_and(|idle| idle >= timeout) {
                        break "idle timeout";
                    }
                }
            }
        }
    };
    tracing::info!(reason, "session daemon stopping");
    if listening.socket_is_ours() {
        let _ = std::fs::remove_file(&listening.paths.socket);
        let _ = std::fs::remove_file(&listening.paths.pid);
    }
    failure.map_or(Ok(()), |error| Err(DaemonError::Engine(error)))
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).map_err(|e| tracing::warn!(error = %e, "no signal handler")).ok()
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// What the front-ends share: the engine, the clients and the counters.
pub(super) struct Daemon {
    engine: Engine,
    notices: broadcast::Sender<Notice>,
    paths: SessionPaths,
    /// Where the HTTP front-end listens, if it does.
    http_address: Option<String>,
    started: Instant,
    /// Which sequences a client holds.
    sequences_in_use: Mutex<Vec<bool>>,
    clients: Mutex<BTreeMap<u64, ClientRecord>>,
    next_client: AtomicU64,
    /// Since when no client has been connected (`None` while one is).
    idle_since: Mutex<Option<Instant>>,
    /// Serializes model loads, so that two clients attaching at once load one model.
    loading: tokio::sync::Mutex<()>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    model_loads: AtomicU64,
    generations: AtomicU64,
    cancelled: AtomicU64,
    tokens_generated: AtomicU64,
    prompt_tokens_decoded: AtomicU64,
    refused: AtomicU64,
}

struct ClientRecord {
    info: ClientInfo,
    peer: Option<String>,
    sequence: u32,
    connected: Instant,
    requests: u64,
    generations: u64,
    latencies_ms: VecDeque<f64>,
}

/// A sequence id that is never valid: a probe's, which generates nothing.
const NO_SEQUENCE: u32 = u32::MAX;

/// A client of the daemon, whichever front-end it came through (a socket connection, an HTTP connection): its
/// record for `phi-tui status` and a session on its own sequence. [`Attached::detach`] (or dropping it) gives the
/// sequence back.
pub(super) struct Attached {
    client: Client,
    sequence: u32,
    detached: bool,
}

/// What a client's calls need: its session, and the daemon to record them in. Cheap to clone into a call's task.
#[derive(Clone)]
pub(super) struct Client {
    daemon: Arc<Daemon>,
    id: u64,
    session: LocalSession,
}

impl Attached {
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn sequence(&self) -> u32 {
        self.sequence
    }

    /// Leaves the daemon: the client's record goes, and its sequence is cleared and given back.
    pub(super) async fn detach(mut self) {
        self.detached = true;
        self.client.daemon.unregister(self.client.id, self.sequence, true).await;
    }

    /// Leaves the daemon, giving the sequence back with its cache kept, for a next client that likely shares its
    /// prompt prefix (see [`Daemon::attach`]'s `preferred`). The cache costs nothing while it is not needed: the
    /// KV pool evicts the least recently used sequence when it is full.
    pub(super) async fn detach_keeping_cache(mut self) {
        self.detached = true;
        self.client.daemon.unregister(self.client.id, self.sequence, false).await;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let (daemon, id, sequence) = (Arc::clone(&self.client.daemon), self.client.id, self.sequence);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { daemon.unregister(id, sequence, true).await });
        }
    }
}

impl Client {
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn session(&self) -> &LocalSession {
        &self.session
    }

    pub(super) fn count_request(&self) {
        self.daemon.with_client(self.id, |record| record.requests += 1);
    }

    /// Starts a generation on the client's sequence, counted in the daemon's counters and the client's record.
    /// `predicate` adds a stop rule that cannot cross a socket (a front-end inside the daemon may pass one).
    pub(super) fn generate(&self, request: SessionRequest, predicate: Option<StopPredicate>) -> TrackedGeneration {
        self.daemon.counters.generations.fetch_add(1, Ordering::Relaxed);
        TrackedGeneration {
            generation: Some(self.session.generate_with_predicate(request, predicate)),
            daemon: Arc::clone(&self.daemon),
            client_id: self.id,
            started: Instant::now(),
        }
    }
}

/// A generation whose end is recorded (tokens, latency, cancelled or not). Dropping it before its end cancels it
/// within one step, and its end is still recorded: a client that goes away mid-stream shows in the counters.
pub(super) struct TrackedGeneration {
    generation: Option<Generation>,
    daemon: Arc<Daemon>,
    client_id: u64,
    started: Instant,
}

impl TrackedGeneration {
    /// The next event; `None` after the last one.
    pub(super) async fn next(&mut self) -> Option<Result<GenerationEvent, EngineError>> {
        let event = self.generation.as_mut()?.next().await;
        match &event {
            Some(Ok(GenerationEvent::Delta { .. })) => {}
            Some(Ok(GenerationEvent::Finished(summary))) => {
                self.daemon.record(self.client_id, summary, self.started.elapsed());
                self.generation = None;
            }
            _ => self.generation = None,
        }
        event
    }

    /// Stops the generation within one step; it still ends with a `Finished` event.
    pub(super) fn cancel(&self) {
        if let Some(generation) = &self.generation {
            generation.cancel();
        }
    }
}

impl Drop for TrackedGeneration {
    fn drop(&mut self) {
        let Some(mut generation) = self.generation.take() else { return };
        generation.cancel();
        let (daemon, client_id, started) = (Arc::clone(&self.daemon), self.client_id, self.started);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                while let Some(event) = generation.next().await {
                    if let Ok(GenerationEvent::Finished(summary)) = event {
                        daemon.record(client_id, &summary, started.elapsed());
                    }
                }
            });
        }
    }
}

type Outbox = mpsc::UnboundedSender<DaemonMessage>;
type Cancels = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// A call as the connection's reader hands it to its task.
struct Pending {
    id: u64,
    call: Call,
    /// For a generation: fires (or is dropped) when the client cancels it or goes away.
    cancelled: Option<oneshot::Receiver<()>>,
    cancels: Cancels,
}

impl Daemon {
    fn new(engine: Engine, paths: SessionPaths, sequences: u32, http_address: Option<String>) -> Self {
        Self {
            engine,
            notices: notice_channel(),
            paths,
            http_address,
            started: Instant::now(),
            sequences_in_use: Mutex::new(vec![false; sequences as usize]),
            clients: Mutex::new(BTreeMap::new()),
            next_client: AtomicU64::new(1),
            idle_since: Mutex::new(Some(Instant::now())),
            loading: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
        }
    }

    fn idle_for(&self) -> Option<Duration> {
        lock(&self.idle_since).map(|since| since.elapsed())
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The session's changes (model, adapter), whoever made them.
    pub(super) fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// A session for calls that concern every client (a model, an adapter) rather than one client's sequence.
    pub(super) fn shared_session(&self) -> LocalSession {
        LocalSession::with_notices(self.engine.clone(), SequenceId(0), self.notices.clone())
    }

    async fn serve_connection(self: Arc<Self>, stream: UnixStream) {
        let peer_uid = stream.peer_cred().map(|cred| cred.uid());
        let (mut reader, mut writer) = stream.into_split();
        let welcome = |refused: Option<String>| Welcome {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            refused,
        };
        let uid = effective_uid();
        let accepted = match peer_uid {
            Ok(peer) if peer == uid => self.handshake(&mut reader).await,
            Ok(peer) => Err(format!("connections from uid {peer} are refused: this session daemon serves uid {uid}")),
            Err(e) => Err(format!("cannot identify the connecting process: {e}")),
        };
        let info = match accepted {
            Ok(info) => info,
            Err(reason) => {
                tracing::warn!(reason, "refused a connection");
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let _ = write_frame(&mut writer, &welcome(Some(reason))).await;
                return;
            }
        };
        let attached = match self.attach(info.clone(), None, None) {
            Ok(attached) => attached,
            Err(busy) => {
                let _ = write_frame(&mut writer, &welcome(Some(busy))).await;
                return;
            }
        };
        let client_id = attached.client().id();
        tracing::info!(
            client_id,
            kind = info.kind.name(),
            pid = info.pid,
            sequence = attached.sequence(),
            "client connected"
        );
        if write_frame(&mut writer, &welcome(None)).await.is_err() {
            attached.detach().await;
            return;
        }

        let (outbox, mut outgoing) = mpsc::unbounded_channel::<DaemonMessage>();
        let writer_task = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if let Err(error) = write_frame(&mut writer, &message).await {
                    tracing::debug!(%error, "client went away");
                    break;
                }
            }
        });
        let notices_task = tokio::spawn(forward_notices(self.notices.subscribe(), outbox.clone()));
        let cancels: Cancels = Arc::default();
        loop {
            match read_frame::<ClientMessage, _>(&mut reader).await {
                Ok(ClientMessage::Call { id, call }) => {
                    attached.client().count_request();
                    // Registered before the call's task starts, so that neither a `Cancel` nor the client's
                    // disconnection can slip past a generation.
                    let cancelled = matches!(call, Call::Generate(_)).then(|| {
                        let (cancel, cancelled) = oneshot::channel();
                        lock(&cancels).insert(id, cancel);
                        cancelled
                    });
                    let daemon = Arc::clone(&self);
                    let (client, outbox) = (attached.client().clone(), outbox.clone());
                    let call = Pending { id, call, cancelled, cancels: Arc::clone(&cancels) };
                    tokio::spawn(async move { daemon.handle(client, call, outbox).await });
                }
                Ok(ClientMessage::Cancel { id }) => {
                    if let Some(cancel) = lock(&cancels).remove(&id) {
                        let _ = cancel.send(());
                    }
                }
                Err(FrameError::Closed) => break,
                Err(error) => {
                    tracing::warn!(client_id, %error, "dropping the client");
                    break;
                }
            }
        }
        // Dropping the cancel senders stops every generation of this client within one step.
        lock(&cancels).clear();
        notices_task.abort();
        drop(outbox);
        attached.detach().await;
        let _ = writer_task.await;
        tracing::info!(client_id, "client disconnected");
    }

    /// Reads the client's hello: the protocol version first, so that any version can be answered in words.
    async fn handshake(&self, reader: &mut OwnedReadHalf) -> Result<ClientInfo, String> {
        let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame::<serde_json::Value, _>(reader)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => return Err(format!("no valid hello: {e}")),
            Err(_) => return Err("no hello within the handshake timeout".to_owned()),
        };
        let protocol = hello.get("protocol").and_then(serde_json::Value::as_u64);
        if protocol != Some(u64::from(PROTOCOL_VERSION)) {
            let client_version = hello.get("version").and_then(serde_json::Value::as_str).unwrap_or("unknown");
            let client_protocol = protocol.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            return Err(format!(
                "this phi-tui session daemon is version {} (protocol {PROTOCOL_VERSION}), but the client is version \
                 {client_version} (protocol {client_protocol}); stop the daemon with `phi-tui serve --stop` (the \
                 next request starts one of the client's version), or run the client with --standalone",
                env!("CARGO_PKG_VERSION")
            ));
        }
        serde_json::from_value::<Hello>(hello).map(|hello| hello.client).map_err(|e| format!("malformed hello: {e}"))
    }

    /// Registers a client and gives it a sequence of its own (a probe gets none): `preferred` when it is free,
    /// else the first free one. Refused, in words, when every sequence is taken. Every front-end attaches its
    /// clients here, so they all show in `phi-tui status`.
    pub(super) fn attach(
        self: &Arc<Self>,
        info: ClientInfo,
        peer: Option<String>,
        preferred: Option<u32>,
    ) -> Result<Attached, String> {
        let sequence = if info.kind == ClientKind::Probe {
            NO_SEQUENCE
        } else {
            let mut in_use = lock(&self.sequences_in_use);
            let preferred = preferred.map(|s| s as usize).filter(|&s| in_use.get(s) == Some(&false));
            let Some(free) = preferred.or_else(|| in_use.iter().position(|used| !used)) else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(format!(
                    "the session daemon serves at most {} clients at once and all are connected",
                    in_use.len()
                ));
            };
            in_use[free] = true;
            free as u32
        };
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let record = ClientRecord {
            info,
            peer,
            sequence,
            connected: Instant::now(),
            requests: 0,
            generations: 0,
            latencies_ms: VecDeque::new(),
        };
        lock(&self.clients).insert(id, record);
        if sequence != NO_SEQUENCE {
            *lock(&self.idle_since) = None;
        }
        let session = LocalSession::with_notices(self.engine.clone(), SequenceId(sequence), self.notices.clone());
        Ok(Attached { client: Client { daemon: Arc::clone(self), id, session }, sequence, detached: false })
    }

    async fn unregister(&self, client_id: u64, sequence: u32, clear: bool) {
        lock(&self.clients).remove(&client_id);
        if sequence == NO_SEQUENCE {
            return;
        }
        // The next client of this sequence likely shares no prefix with this one: free its keys and values now. (A
        // model may not be loaded; then there is nothing to free.)
        if clear {
            let _ = self.engine.clear_sequence(SequenceId(sequence)).await;
        }
        if let Some(used) = lock(&self.sequences_in_use).get_mut(sequence as usize) {
            *used = false;
        }
        let anyone = lock(&self.clients).values().any(|c| c.sequence != NO_SEQUENCE);
        if !anyone {
            *lock(&self.idle_since) = Some(Instant::now());
        }
    }

    fn with_client(&self, client_id: u64, f: impl FnOnce(&mut ClientRecord)) {
        if let Some(record) = lock(&self.clients).get_mut(&client_id) {
            f(record);
        }
    }

    async fn handle(self: Arc<Self>, client: Client, pending: Pending, outbox: Outbox) {
        let Pending { id, call, cancelled, cancels } = pending;
        let session = client.session().clone();
        let result = match call {
            Call::Generate(request) => {
                // The reader registers a cancel channel for every generation.
                if let Some(cancelled) = cancelled {
                    Self::generate(&client, id, *request, &outbox, cancelled).await;
                }
                lock(&cancels).remove(&id);
                return;
            }
            Call::AttachModel { path } => self.attach_model(path, None).await.map(Answer::Model),
            Call::LoadModel { path, progress } => {
                let progress = progress.then(|| {
                    let outbox = outbox.clone();
                    Box::new(move |fraction| {
                        let _ = outbox.send(DaemonMessage::Progress { id, fraction });
                    }) as LoadProgress
                });
                self.load_model(&session, path, progress).await.map(Answer::Model)
            }
            Call::SetAdapter { path, scale } => session.set_adapter(path, scale).await.map(Answer::Adapter),
            Call::RemoveAdapter => session.remove_adapter().await.map(|()| Answer::Done),
            Call::State => session.state().await.map(Answer::State),
            Call::Tokenize { text, parse_special } => session.tokenize(text, parse_special).await.map(Answer::Tokens),
            Call::Detokenize { tokens } => session.detokenize(tokens).await.map(Answer::Text),
            Call::Status => self.status().await.map(|status| Answer::Status(Box::new(status))),
        };
        let _ = outbox.send(DaemonMessage::Reply { id, result });
    }

    /// Loads `path` unless a model is loaded already: clients share what the session has.
    pub(super) async fn attach_model(
        &self,
        path: PathBuf,
        progress: Option<LoadProgress>,
    ) -> Result<crate::engine::ModelInfo, EngineError> {
        let _loading = self.loading.lock().await;
        if let Some(model) = self.engine.state().await?.model {
            return Ok(model);
        }
        let model = self.shared_session().load_model(path, progress).await?;
        self.counters.model_loads.fetch_add(1, Ordering::Relaxed);
        Ok(model)
    }

    /// Loads `path` in place of the current model, for every client.
    async fn load_model(
        &self,
        session: &LocalSession,
        path: PathBuf,
        progress: Option<LoadProgress>,
    ) -> Result<crate::engine::ModelInfo, EngineError> {
        let _loading = self.loading.lock().await;
        let result = session.load_model(path, progress).await;
        if result.is_ok() {
            self.counters.model_loads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn generate(
        client: &Client,
        id: u64,
        request: SessionRequest,
        outbox: &Outbox,
        mut cancelled: oneshot::Receiver<()>,
    ) {
        let mut generation = client.generate(request, None);
        let mut cancel_sent = false;
        loop {
            let event = tokio::select! {
                biased;
                // An explicit cancel, or the client gone (the sender dropped): stop within one step, and still
                // report how the generation ended.
                _ = &mut cancelled, if !cancel_sent => {
                    generation.cancel();
                    cancel_sent = true;
                    continue;
                }
                event = generation.next() => event,
            };
            let Some(event) = event else { break };
            let last = !matches!(event, Ok(GenerationEvent::Delta { .. }));
            // A client that is gone reads nothing; its generation has been cancelled above.
            let _ = outbox.send(DaemonMessage::Event { id, event });
            if last {
                break;
            }
        }
    }

    fn record(&self, client_id: u64, summary: &GenerationSummary, elapsed: Duration) {
        let counters = &self.counters;
        counters.tokens_generated.fetch_add(summary.tokens.len() as u64, Ordering::Relaxed);
        counters.prompt_tokens_decoded.fetch_add(summary.timings.prompt_tokens_decoded as u64, Ordering::Relaxed);
        let was_cancelled = summary.stop_reason == StopReason::Cancelled;
        if was_cancelled {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.with_client(client_id, |record| {
            record.generations += 1;
            if !was_cancelled {
                if record.latencies_ms.len() == LATENCY_WINDOW {
                    record.latencies_ms.pop_front();
                }
                record.latencies_ms.push_back(elapsed.as_secs_f64() * 1000.0);
            }
        });
    }

    pub(super) async fn status(&self) -> Result<DaemonStatus, EngineError> {
        let engine = self.engine.state().await?;
        let clients = lock(&self.clients)
            .iter()
            .filter(|(_, c)| c.info.kind != ClientKind::Probe)
            .map(|(&id, c)| ClientStatus {
                id,
                kind: c.info.kind,
                pid: c.info.pid,
                peer: c.peer.clone(),
                sequence: c.sequence,
                connected_s: c.connected.elapsed().as_secs_f64(),
                requests: c.requests,
                generations: c.generations,
                p50_ms: percentile(&c.latencies_ms, 0.50),
                p95_ms: percentile(&c.latencies_ms, 0.95),
            })
            .collect();
        let counters = &self.counters;
        Ok(DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            socket: self.paths.socket.clone(),
            http: self.http_address.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            engine,
            model_loads: counters.model_loads.load(Ordering::Relaxed),
            generations: counters.generations.load(Ordering::Relaxed),
            cancelled: counters.cancelled.load(Ordering::Relaxed),
            tokens_generated: counters.tokens_generated.load(Ordering::Relaxed),
            prompt_tokens_decoded: counters.prompt_tokens_decoded.load(Ordering::Relaxed),
            memory_pss_bytes: pss_bytes(std::process::id()),
            clients,
            refused: counters.refused.load(Ordering::Relaxed),
        })
    }
}

async fn forward_notices(mut notices: broadcast::Receiver<Notice>, outbox: Outbox) {
    loop {
        match notices.recv().await {
            Ok(notice) => {
                if outbox.send(DaemonMessage::Notice(notice)).is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn percentile(values: &VecDeque<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[index])
}

/// A process's proportional set size: its private pages plus its share of pages mapped by several processes (the
/// model file, which llama.cpp memory-maps). RSS would count those once per process.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
