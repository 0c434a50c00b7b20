//! The session daemon (`phi-tui serve`): one engine, one loaded model and adapter, one KV pool, shared by every
//! client that connects to its socket.
//!
//! Each client gets a sequence of its own (its KV cache, so its prompt prefix stays cached between its requests)
//! and a [`LocalSession`] on it; the daemon is that session behind a socket. Calls run as tasks, so a connection
//! keeps reading (a `Cancel`, say) while a generation streams. A client that disconnects cancels its generations
//! and gives its sequence back. The daemon exits on SIGTERM/SIGINT, after an idle timeout with no clients, or when
//! its socket is removed from under it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::paths::{effective_uid, DaemonLock, PathsError, SessionPaths};
use super::protocol::{
    read_frame, write_frame, Answer, Call, ClientInfo, ClientKind, ClientMessage, ClientStatus, DaemonMessage,
    DaemonStatus, FrameError, Hello, Welcome, PROTOCOL_VERSION,
};
use super::{notice_channel, InferenceSession, LocalSession, Notice, SessionRequest};
use crate::engine::{
    Engine, EngineError, EngineOptions, GenerationEvent, GenerationSummary, LoadProgress, SequenceId, StopReason,
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
    /// Exit after this long without clients; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The socket, bound, with the lock that makes this process the one daemon.
pub struct Listening {
    listener: UnixListener,
    paths: SessionPaths,
    socket_inode: u64,
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
        Ok(Self { listener, paths: paths.clone(), socket_inode, _lock: lock })
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
pub async fn run(listening: Listening, options: DaemonOptions) -> Result<(), DaemonError> {
    let engine = Engine::start(options.engine.clone())?;
    let daemon = Arc::new(Daemon::new(engine, listening.paths.clone(), options.engine.sequences));
    tracing::info!(socket = %listening.paths.socket.display(), pid = std::process::id(), "session daemon listening");
    if let Some(model) = options.model.clone() {
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            if let Err(error) = daemon.attach_model(model.clone(), None).await {
                tracing::error!(%error, model = %model.display(), "could not load the model");
            }
        });
    }

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
    Ok(())
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

/// What the connections share.
struct Daemon {
    engine: Engine,
    notices: broadcast::Sender<Notice>,
    paths: SessionPaths,
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
    sequence: u32,
    connected: Instant,
    requests: u64,
    generations: u64,
    latencies_ms: VecDeque<f64>,
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
    fn new(engine: Engine, paths: SessionPaths, sequences: u32) -> Self {
        Self {
            engine,
            notices: notice_channel(),
            paths,
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
        let client = match accepted {
            Ok(client) => client,
            Err(reason) => {
                tracing::warn!(reason, "refused a connection");
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let _ = write_frame(&mut writer, &welcome(Some(reason))).await;
                return;
            }
        };
        let Some((client_id, sequence)) = self.register(client.clone()) else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let busy = format!(
                "the session daemon serves at most {} clients at once and all are connected",
                lock(&self.sequences_in_use).len()
            );
            let _ = write_frame(&mut writer, &welcome(Some(busy))).await;
            return;
        };
        tracing::info!(client_id, kind = client.kind.name(), pid = client.pid, sequence, "client connected");
        if write_frame(&mut writer, &welcome(None)).await.is_err() {
            self.unregister(client_id, sequence).await;
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
        let session = LocalSession::with_notices(self.engine.clone(), SequenceId(sequence), self.notices.clone());
        let cancels: Cancels = Arc::default();
        loop {
            match read_frame::<ClientMessage, _>(&mut reader).await {
                Ok(ClientMessage::Call { id, call }) => {
                    self.with_client(client_id, |record| record.requests += 1);
                    // Registered before the call's task starts, so that neither a `Cancel` nor the client's
                    // disconnection can slip past a generation.
                    let cancelled = matches!(call, Call::Generate(_)).then(|| {
                        let (cancel, cancelled) = oneshot::channel();
                        lock(&cancels).insert(id, cancel);
                        cancelled
                    });
                    let daemon = Arc::clone(&self);
                    let (session, outbox) = (session.clone(), outbox.clone());
                    let call = Pending { id, call, cancelled, cancels: Arc::clone(&cancels) };
                    tokio::spawn(async move { daemon.handle(client_id, call, session, outbox).await });
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
        self.unregister(client_id, sequence).await;
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

    fn register(&self, info: ClientInfo) -> Option<(u64, u32)> {
        let sequence = if info.kind == ClientKind::Probe {
            // A look at the status uses no sequence; u32::MAX is never valid, so it can generate nothing.
            u32::MAX
        } else {
            let mut in_use = lock(&self.sequences_in_use);
            let free = in_use.iter().position(|used| !used)?;
            in_use[free] = true;
            free as u32
        };
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let record = ClientRecord {
            info,
            sequence,
            connected: Instant::now(),
            requests: 0,
            generations: 0,
            latencies_ms: VecDeque::new(),
        };
        lock(&self.clients).insert(id, record);
        if sequence != u32::MAX {
            *lock(&self.idle_since) = None;
        }
        Some((id, sequence))
    }

    async fn unregister(&self, client_id: u64, sequence: u32) {
        lock(&self.clients).remove(&client_id);
        if sequence == u32::MAX {
            return;
        }
        // The next client of this sequence shares no prefix with this one: free its keys and values now. (A model
        // may not be loaded; then there is nothing to free.)
        let _ = self.engine.clear_sequence(SequenceId(sequence)).await;
        if let Some(used) = lock(&self.sequences_in_use).get_mut(sequence as usize) {
            *used = false;
        }
        let anyone = lock(&self.clients).values().any(|c| c.sequence != u32::MAX);
        if !anyone {
            *lock(&self.idle_since) = Some(Instant::now());
        }
    }

    fn with_client(&self, client_id: u64, f: impl FnOnce(&mut ClientRecord)) {
        if let Some(record) = lock(&self.clients).get_mut(&client_id) {
            f(record);
        }
    }

    async fn handle(self: Arc<Self>, client_id: u64, pending: Pending, session: LocalSession, outbox: Outbox) {
        let Pending { id, call, cancelled, cancels } = pending;
        let result = match call {
            Call::Generate(request) => {
                // The reader registers a cancel channel for every generation.
                if let Some(cancelled) = cancelled {
                    self.generate(client_id, id, *request, session, &outbox, cancelled).await;
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
                let _loading = self.loading.lock().await;
                let result = session.load_model(path, progress).await;
                if result.is_ok() {
                    self.counters.model_loads.fetch_add(1, Ordering::Relaxed);
                }
                result.map(Answer::Model)
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
    async fn attach_model(
        &self,
        path: PathBuf,
        progress: Option<LoadProgress>,
    ) -> Result<crate::engine::ModelInfo, EngineError> {
        let _loading = self.loading.lock().await;
        if let Some(model) = self.engine.state().await?.model {
            return Ok(model);
        }
        let session = LocalSession::with_notices(self.engine.clone(), SequenceId(0), self.notices.clone());
        let model = session.load_model(path, progress).await?;
        self.counters.model_loads.fetch_add(1, Ordering::Relaxed);
        Ok(model)
    }

    async fn generate(
        &self,
        client_id: u64,
        id: u64,
        request: SessionRequest,
        session: LocalSession,
        outbox: &Outbox,
        mut cancelled: oneshot::Receiver<()>,
    ) {
        self.counters.generations.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut generation = session.generate(request);
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
            if let Ok(GenerationEvent::Finished(summary)) = &event {
                self.record(client_id, summary, started.elapsed());
            }
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

    async fn status(&self) -> Result<DaemonStatus, EngineError> {
        let engine = self.engine.state().await?;
        let clients = lock(&self.clients)
            .iter()
            .filter(|(_, c)| c.info.kind != ClientKind::Probe)
            .map(|(&id, c)| ClientStatus {
                id,
                kind: c.info.kind,
                pid: c.info.pid,
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
