//! The client side of the shared session: [`DaemonSession`], an [`InferenceSession`] whose engine is the session
//! daemon's, across its Unix socket.
//!
//! The first request connects, starting a daemon when none listens (`phi-tui serve --spawned`, detached in its own
//! process group; the daemon's lock settles a race between two clients starting one each). Several calls share
//! the connection, each under its own id. When the daemon goes away, every call in flight fails at once with a
//! clear error, and the next call starts (or finds) a new daemon and restores the model and adapter the session
//! had, so that an editor never needs a restart.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::paths::SessionPaths;
use super::protocol::{
    read_frame, version_mismatch, write_frame, Answer, Call, ClientInfo, ClientKind, ClientMessage, DaemonMessage,
    DaemonStatus, FrameError, Hello, Welcome, PROTOCOL_VERSION,
};
use super::{notice_channel, InferenceSession, Notice, SessionRequest};
use crate::engine::{
    AdapterInfo, EngineError, EngineState, Generation, GenerationEvent, LoadProgress, ModelInfo, RequestId, Result,
    TokenId,
};

/// How long a new daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a daemon: this program with `serve --spawned` and the runtime options of the client that starts it.
/// The daemon inherits the client's environment, plus `envs`; it is always told to listen where the client looks.
#[derive(Debug, Clone)]
pub struct DaemonLaunch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
}

/// A handle to the shared session. Clones share one connection.
#[derive(Clone)]
pub struct DaemonSession {
    inner: Arc<Inner>,
}

struct Inner {
    paths: SessionPaths,
    /// `None`: only talk to a running daemon, never start one (`phi-tui status`).
    launch: Option<DaemonLaunch>,
    kind: ClientKind,
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while connecting, so that concurrent first calls make one connection (and start one daemon).
    connecting: tokio::sync::Mutex<()>,
    notices: broadcast::Sender<Notice>,
    /// The model and adapter the session had, to restore in a daemon that replaces one that died.
    wanted: Arc<Mutex<Wanted>>,
    next_id: AtomicU64,
    connected_before: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct Wanted {
    model: Option<PathBuf>,
    adapter: Option<(PathBuf, f32)>,
}

/// One connection to a daemon: calls in flight by id, and the writer's queue.
struct Connection {
    outbox: mpsc::UnboundedSender<ClientMessage>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    alive: AtomicBool,
    pid: u32,
}

enum Waiter {
    Reply { reply: oneshot::Sender<Result<Answer>>, progress: Option<LoadProgress> },
    Stream(mpsc::UnboundedSender<Result<GenerationEvent>>),
}

/// How a handshake failed: the other end dropped the connection (a dying daemon: try again), or anything else.
enum Handshake {
    Dropped(EngineError),
    Failed(EngineError),
}

fn daemon_gone() -> EngineError {
    EngineError::Daemon(
        "the phi-tui session daemon stopped while serving this request (it crashed or was killed); the next \
         request starts a new one"
            .to_owned(),
    )
}

impl DaemonSession {
    /// A client of the daemon at `paths`, starting one with `launch` when none runs.
    pub fn new(paths: SessionPaths, kind: ClientKind, launch: Option<DaemonLaunch>) -> Self {
        Self {
            inner: Arc::new(Inner {
                paths,
                launch,
                kind,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                notices: notice_channel(),
                wanted: Arc::default(),
                next_id: AtomicU64::new(1),
                connected_before: AtomicBool::new(false),
            }),
        }
    }

    /// Connects now (starting a daemon if needed), so that a problem shows at start rather than at the first
    /// request. Returns the daemon's pid.
    pub async fn connect(&self) -> Result<u32> {
        Ok(self.inner.connection().await?.pid)
    }

    async fn call(&self, call: Call, progress: Option<LoadProgress>) -> Result<Answer> {
        let connection = self.inner.connection().await?;
        connection.call(self.inner.next_id(), call, progress).await
    }

    fn remember(&self, update: impl FnOnce(&mut Wanted)) {
        update(&mut lock(&self.inner.wanted));
    }
}

impl Inner {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn live(&self) -> Option<Arc<Connection>> {
        lock(&self.current).as_ref().filter(|c| c.alive.load(Ordering::Acquire)).cloned()
    }

    async fn connection(self: &Arc<Self>) -> Result<Arc<Connection>> {
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        // A daemon that is dying (killed, say) may still accept a connection and then drop it: try again, and
        // the next attempt finds its socket stale and starts a new one.
        let mut attempts = 0;
        let connection = loop {
            let stream = self.connect_or_start().await?;
            match self.open(stream).await {
                Ok(connection) => break connection,
                Err(Handshake::Dropped(error)) if attempts < 20 => {
                    tracing::debug!(%error, "the daemon dropped the connection; trying again");
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Handshake::Dropped(error) | Handshake::Failed(error)) => return Err(error),
            }
        };
        *lock(&self.current) = Some(Arc::clone(&connection));
        if self.connected_before.swap(true, Ordering::AcqRel) {
            self.restore(&connection).await;
            let _ = self.notices.send(Notice::Reconnected { pid: connection.pid });
        }
        Ok(connection)
    }

    async fn connect_or_start(&self) -> Result<UnixStream> {
        let socket = &self.paths.socket;
        let unreachable = |e: std::io::Error| {
            EngineError::Daemon(format!("{}: cannot connect to the phi-tui session daemon: {e}", socket.display()))
        };
        let mut attempts = 0;
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => return Ok(stream),
                // No daemon (no socket, or a stale one): start one below.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => break,
                // A daemon that is dying (a full backlog nobody accepts any more): wait until it is gone.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::ConnectionReset) && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(unreachable(e)),
            }
        }
        let Some(launch) = self.launch.clone() else {
            return Err(EngineError::Daemon(format!(
                "no phi-tui session daemon is running (no one listens on {})",
                socket.display()
            )));
        };
        let dir = self.paths.dir.clone();
        tokio::task::spawn_blocking(move || start_daemon(&launch, &dir))
            .await
            .map_err(|e| EngineError::Daemon(format!("starting the session daemon: {e}")))??;
        // The daemon listens before it says it is ready, or another one already did.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() >= deadline => return Err(unreachable(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The handshake, then the reader and writer tasks of a new connection.
    async fn open(self: &Arc<Self>, stream: UnixStream) -> Result<Arc<Connection>, Handshake> {
        let (mut reader, mut writer) = stream.into_split();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            client: ClientInfo { kind: self.kind, pid: std::process::id() },
        };
        let failed = |e: String| Handshake::Failed(EngineError::Daemon(format!("the phi-tui session daemon: {e}")));
        let dropped = |e: FrameError| match e {
            FrameError::Closed => Handshake::Dropped(daemon_gone()),
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => Handshake::Dropped(daemon_gone()),
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Handshake::Dropped(daemon_gone()),
            other => failed(format!("no valid answer to the handshake: {other}")),
        };
        write_frame(&mut writer, &hello).await.map_err(dropped)?;
        // The shape of `Welcome` is the same in every protocol version; read it loosely all the same, so that even
        // a daemon that answers something else gets a message in words.
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame::<serde_json::Value, _>(&mut reader))
            .await
            .map_err(|_| failed("no answer to the handshake".to_owned()))?
            .map_err(dropped)?;
        let protocol = welcome.get("protocol").and_then(serde_json::Value::as_u64);
        if let Some(reason) = welcome.get("refused").and_then(serde_json::Value::as_str) {
            let refused = format!("the phi-tui session daemon refused this client: {reason}");
            return Err(Handshake::Failed(EngineError::Daemon(refused)));
        }
        if protocol != Some(u64::from(PROTOCOL_VERSION)) {
            let version = welcome.get("version").and_then(serde_json::Value::as_str).unwrap_or("unknown");
            return Err(Handshake::Failed(EngineError::Daemon(version_mismatch(
                protocol.unwrap_or(0) as u32,
                version,
            ))));
        }
        let welcome: Welcome =
            serde_json::from_value(welcome).map_err(|e| failed(format!("malformed welcome: {e}")))?;

        let (outbox, mut outgoing) = mpsc::unbounded_channel::<ClientMessage>();
        let connection =
            Arc::new(Connection { outbox, waiters: Mutex::default(), alive: AtomicBool::new(true), pid: welcome.pid });
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if write_frame(&mut writer, &message).await.is_err() {
                    break;
                }
            }
        });
        let (weak_connection, weak_inner) = (Arc::downgrade(&connection), Arc::downgrade(self));
        tokio::spawn(async move {
            loop {
                let message = read_frame::<DaemonMessage, _>(&mut reader).await;
                let Some(connection) = weak_connection.upgrade() else { return };
                match message {
                    Ok(DaemonMessage::Notice(notice)) => {
                        if let Some(inner) = weak_inner.upgrade() {
                            inner.on_notice(notice);
                        }
                    }
                    Ok(message) => connection.dispatch(message),
                    Err(error) => {
                        tracing::warn!(%error, "lost the connection to the session daemon");
                        connection.close();
                        if let Some(inner) = weak_inner.upgrade() {
                            let _ = inner.notices.send(Notice::Disconnected(daemon_gone().to_string()));
                        }
                        return;
                    }
                }
            }
        });
        tracing::info!(pid = welcome.pid, version = welcome.version, "attached to the session daemon");
        Ok(connection)
    }

    fn on_notice(&self, notice: Notice) {
        {
            let mut wanted = lock(&self.wanted);
            match &notice {
                Notice::Model(model) => {
                    wanted.model = Some(model.path.clone());
                    wanted.adapter = None;
                }
                Notice::Adapter(adapter) => wanted.adapter = adapter.as_ref().map(|a| (a.path.clone(), a.scale)),
                Notice::Disconnected(_) | Notice::Reconnected { .. } => {}
            }
        }
        let _ = self.notices.send(notice);
    }

    /// Puts the model and adapter the session had into a new daemon (one that replaced a daemon that died).
    async fn restore(&self, connection: &Connection) {
        let wanted = lock(&self.wanted).clone();
        if let Some(model) = wanted.model {
            if let Err(error) = connection.call(self.next_id(), Call::AttachModel { path: model }, None).await {
                tracing::warn!(%error, "could not restore the model in the new session daemon");
                return;
            }
        }
        if let Some((path, scale)) = wanted.adapter {
            let state = connection.call(self.next_id(), Call::State, None).await;
            if matches!(state, Ok(Answer::State(EngineState { adapter: None, .. }))) {
                if let Err(error) = connection.call(self.next_id(), Call::SetAdapter { path, scale }, None).await {
                    tracing::warn!(%error, "could not restore the adapter in the new session daemon");
                }
            }
        }
    }
}

impl Connection {
    async fn call(&self, id: u64, call: Call, progress: Option<LoadProgress>) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        lock(&self.waiters).insert(id, Waiter::Reply { reply, progress });
        self.send(ClientMessage::Call { id, call })?;
        answer.await.map_err(|_| daemon_gone())?
    }

    fn send(&self, message: ClientMessage) -> Result<()> {
        let id = match &message {
            ClientMessage::Call { id, .. } | ClientMessage::Cancel { id } => *id,
        };
        // Checked after registering the waiter: a connection that closes in between fails the waiter itself.
        if !self.alive.load(Ordering::Acquire) || self.outbox.send(message).is_err() {
            lock(&self.waiters).remove(&id);
            return Err(daemon_gone());
        }
        Ok(())
    }

    fn dispatch(&self, message: DaemonMessage) {
        let mut waiters = lock(&self.waiters);
        match message {
            DaemonMessage::Reply { id, result } => {
                if let Some(Waiter::Reply { reply, .. }) = waiters.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            DaemonMessage::Progress { id, fraction } => {
                if let Some(Waiter::Reply { progress: Some(progress), .. }) = waiters.get_mut(&id) {
                    progress(fraction);
                }
            }
            DaemonMessage::Event { id, event } => {
                let events = match waiters.get(&id) {
                    Some(Waiter::Stream(events)) => Some(events.clone()),
                    _ => None,
                };
                if !matches!(event, Ok(GenerationEvent::Delta { .. })) {
                    waiters.remove(&id);
                }
                if let Some(events) = events {
                    let _ = events.send(event);
                }
            }
            DaemonMessage::Notice(_) => {}
        }
    }

    /// Fails everything in flight: the daemon is gone.
    fn close(&self) {
        self.alive.store(false, Ordering::Release);
        for (_, waiter) in lock(&self.waiters).drain() {
            match waiter {
                Waiter::Reply { reply, .. } => {
                    let _ = reply.send(Err(daemon_gone()));
                }
                Waiter::Stream(events) => {
                    let _ = events.send(Err(daemon_gone()));
                }
            }
        }
    }
}

impl InferenceSession for DaemonSession {
    fn attach_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelInfo>> {
        let this = self.clone();
        async move {
            let path = absolute(&path);
            match this.call(Call::AttachModel { path }, None).await? {
                Answer::Model(model) => {
                    this.remember(|wanted| wanted.model = Some(model.path.clone()));
                    Ok(model)
                }
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn load_model(&self, path: PathBuf, progress: Option<LoadProgress>) -> BoxFuture<'static, Result<ModelInfo>> {
        let this = self.clone();
        async move {
            let path = absolute(&path);
            let call = Call::LoadModel { path, progress: progress.is_some() };
            match this.call(call, progress).await? {
                Answer::Model(model) => Ok(model),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn set_adapter(&self, path: PathBuf, scale: f32) -> BoxFuture<'static, Result<AdapterInfo>> {
        let this = self.clone();
        async move {
            let path = absolute(&path);
            match this.call(Call::SetAdapter { path, scale }, None).await? {
                Answer::Adapter(adapter) => Ok(adapter),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn remove_adapter(&self) -> BoxFuture<'static, Result<()>> {
        let this = self.clone();
        async move {
            match this.call(Call::RemoveAdapter, None).await? {
                Answer::Done => Ok(()),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn state(&self) -> BoxFuture<'static, Result<EngineState>> {
        let this = self.clone();
        async move {
            match this.call(Call::State, None).await? {
                Answer::State(state) => Ok(state),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn tokenize(&self, text: String, parse_special: bool) -> BoxFuture<'static, Result<Vec<TokenId>>> {
        let this = self.clone();
        async move {
            match this.call(Call::Tokenize { text, parse_special }, None).await? {
                Answer::Tokens(tokens) => Ok(tokens),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn detokenize(&self, tokens: Vec<TokenId>) -> BoxFuture<'static, Result<String>> {
        let this = self.clone();
        async move {
            match this.call(Call::Detokenize { tokens }, None).await? {
                Answer::Text(text) => Ok(text),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }

    fn generate(&self, request: SessionRequest) -> Generation {
        let id = self.inner.next_id();
        let (events, receiver) = mpsc::unbounded_channel();
        // Set by a cancel that comes before the call reached the daemon; the call is then cancelled right after it.
        let cancelled = Arc::new(AtomicBool::new(false));
        let sent_on: Arc<Mutex<Weak<Connection>>> = Arc::default();
        let inner = Arc::clone(&self.inner);
        let (task_cancelled, task_sent_on) = (Arc::clone(&cancelled), Arc::clone(&sent_on));
        tokio::spawn(async move {
            let connection = match inner.connection().await {
                Ok(connection) => connection,
                Err(error) => {
                    let _ = events.send(Err(error));
                    return;
                }
            };
            lock(&connection.waiters).insert(id, Waiter::Stream(events.clone()));
            *lock(&task_sent_on) = Arc::downgrade(&connection);
            if let Err(error) = connection.send(ClientMessage::Call { id, call: Call::Generate(Box::new(request)) }) {
                let _ = events.send(Err(error));
                return;
            }
            if task_cancelled.load(Ordering::Acquire) {
                let _ = connection.send(ClientMessage::Cancel { id });
            }
        });
        let cancel = move |request: RequestId| {
            cancelled.store(true, Ordering::Release);
            if let Some(connection) = lock(&sent_on).upgrade() {
                // A connection that is gone has nothing left to cancel.
                let _ = connection.outbox.send(ClientMessage::Cancel { id: request.0 });
            }
        };
        Generation::new(RequestId(id), receiver, Arc::new(cancel))
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// Asks the daemon this handle is connected to; it does not start a new one after the last went away (a look
    /// is not a use).
    fn status(&self) -> BoxFuture<'static, Result<Option<DaemonStatus>>> {
        let this = self.clone();
        async move {
            if this.inner.connected_before.load(Ordering::Acquire) && this.inner.live().is_none() {
                return Err(daemon_gone());
            }
            match this.call(Call::Status, None).await? {
                Answer::Status(status) => Ok(Some(*status)),
                other => Err(unexpected(&other)),
            }
        }
        .boxed()
    }
}

fn unexpected(answer: &Answer) -> EngineError {
    EngineError::Daemon(format!("the session daemon answered out of turn: {answer:?}"))
}

/// The daemon resolves paths from its own working directory: send absolute ones.
fn absolute(path: &Path) -> PathBuf {
    path.canonicalize().or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// Starts `phi-tui serve --spawned` detached (own process group, no terminal, working directory `/`) and waits
/// until it listens, or says another daemon does. Blocking.
fn start_daemon(launch: &DaemonLaunch, runtime_dir: &Path) -> Result<()> {
    let failed = |what: String| EngineError::Daemon(format!("could not start the phi-tui session daemon: {what}"));
    let mut child = Command::new(&launch.program)
        .args(&launch.args)
        .envs(launch.envs.iter().map(|(k, v)| (k, v)))
        .env(super::paths::RUNTIME_DIR_ENV, runtime_dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", launch.program.display())))?;
    tracing::info!(pid = child.id(), "started a session daemon");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (line_sender, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        if let Some(stdout) = stdout {
            let _ = BufReader::new(stdout).read_line(&mut first);
        }
        let _ = line_sender.send(first);
    });
    let first = line.recv_timeout(START_TIMEOUT).map_err(|_| failed("it did not start listening in time".to_owned()));
    let first = match first {
        Ok(first) => first,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
    };
    if first.starts_with("ready") || first.starts_with("running") {
        // The daemon outlives this call (and maybe this process); reap it if it ends first.
        std::thread::spawn(move || child.wait());
        return Ok(());
    }
    let mut message = String::new();
    if let Some(mut stderr) = stderr {
        let _ = stderr.read_to_string(&mut message);
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let message = message.trim().trim_start_matches("error: ").to_owned();
    Err(failed(if message.is_empty() { status } else { message }))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
