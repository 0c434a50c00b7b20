//! The chat TUI: `phi-tui` with no subcommand.
//!
//! - [`app`]: the state and its update logic (`App::update(Action) -> Vec<Effect>`), no IO;
//! - [`render`]: drawing the state with ratatui, with a per-message line cache;
//! - this module: the terminal (set up, restored on every exit path) and the event loop, which selects over terminal
//!   events, the running generation, background jobs and a tick, carries out the app's effects, and redraws only
//!   when something changed (at most once per frame interval).

pub mod app;
pub mod clipboard;
pub mod finetune;
pub mod input;
pub mod keys;
pub mod markdown;
pub mod prompt;
pub mod render;
pub mod runner;
pub mod session;
#[doc(hidden)]
pub mod testing;

use std::io::{Stdout, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, Event, EventStream,
    KeyEventKind, MouseEventKind,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, BeginSynchronizedUpdate, EndSynchronizedUpdate, EnterAlternateScreen,
    LeaveAlternateScreen,
};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::{EngineError, Generation, GenerationEvent};
use crate::models::{self, ModelChoice, PullEvent};
use crate::session::{Notice, SharedSession};
use app::{Action, App, AppOptions, Effect, ModelState};
use keys::KeyMap;
use render::RenderCache;
use session::{Listing, Session, SessionStore};

/// Python that touches most of the syntax's rules (highlighted once at start, off the UI thread).
const WARM_UP_CODE: &str = "import os\n@decorator\nclass A(B):\n    \"\"\"Doc.\"\"\"\n    def f(self, x: int = 1, *a, **k) -> str:\n        return f'{x!r}' + r'\\d' + b'x'.decode() if x else [y for y in range(3)]  # c\nlambda t: t[1]\n";

/// The least time between two frames.
const FRAME: Duration = Duration::from_millis(16);

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("{0}")]
    Config(String),
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the TUI starts with.
pub struct TuiOptions {
    /// The inference session: the daemon's, shared with the editors, or a private one.
    pub session: SharedSession,
    /// The model to load at start (from `-m` or the config file).
    pub model: Option<PathBuf>,
    /// A LoRA adapter and its scale, applied once the model is loaded.
    pub lora: Option<(PathBuf, f32)>,
    pub config: Config,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
}

/// The app's options from the config file.
pub fn app_options(config: &Config, config_path: PathBuf, export_dir: PathBuf) -> Result<AppOptions, TuiError> {
    let keymap =
        KeyMap::from_config(&config.keys).map_err(|e| TuiError::Config(format!("{}: {e}", config_path.display())))?;
    Ok(AppOptions {
        keymap,
        max_tokens: config.max_tokens,
        temperature: config.temperature,
        mode: config.mode,
        mouse: config.mouse,
        config_path,
        export_dir,
    })
}

/// Checks what the config file says about the TUI (keys, theme), so that mistakes are reported before the
/// terminal is taken over.
pub fn check_config(config: &Config, config_path: &std::path::Path) -> Result<(), TuiError> {
    app_options(config, config_path.to_path_buf(), PathBuf::new())?;
    markdown::set_theme(&config.theme).map_err(|e| TuiError::Config(format!("{}: theme: {e}", config_path.display())))
}

/// Runs the TUI until the user quits. The terminal is restored however this ends, panics included.
pub async fn run(options: TuiOptions) -> Result<(), TuiError> {
    markdown::set_theme(&options.config.theme)
        .map_err(|e| TuiError::Config(format!("{}: theme: {e}", options.config_path.display())))?;
    let export_dir = std::env::current_dir().unwrap_or_else(|_| options.data_dir.clone());
    let app_options = app_options(&options.config, options.config_path.clone(), export_dir)?;
    let mode = app_options.mode.unwrap_or_default();
    let model_state = match &options.model {
        Some(path) => ModelState::Loading { path: path.clone(), progress: 0.0 },
        None => ModelState::None,
    };
    // Syntect compiles its regexes on first use: do it while the model loads, not in the first frame with code.
    std::thread::spawn(|| {
        markdown::Highlighter::get().highlight(WARM_UP_CODE, "python");
    });
    let mut app = App::new(app_options, Session::new(String::new(), mode), model_state);
    let store = SessionStore::new(&options.data_dir);

    let mut guard = TerminalGuard::enter(app.mouse_captured)?;
    let (actions_tx, actions_rx) = mpsc::unbounded_channel();
    match &options.model {
        Some(path) => spawn_model_attach(&options.session, path.clone(), options.lora.clone(), actions_tx.clone()),
        None => spawn_session_model(&options.session, actions_tx.clone()),
    }
    let session_watch = tokio::spawn(watch_session(options.session.clone(), actions_tx.clone()));
    send_finetuned(&options.data_dir, &actions_tx);
    let mut event_loop = EventLoop {
        session: options.session.clone(),
        store: store.clone(),
        saver: Saver::start(actions_tx.clone()),
        actions: actions_tx,
        generation: None,
        data_dir: options.data_dir.clone(),
        install_cancel: None,
        config: options.config.clone(),
        finetune: FinetuneRunner::default(),
    };
    let result = event_loop.run(&mut app, guard.terminal(), actions_rx).await;
    session_watch.abort();
    event_loop.finetune.finish().await;
    // Cancel what is running and let the last save reach the disk before the terminal is given back.
    if let Some(generation) = event_loop.generation.take() {
        generation.cancel();
    }
    if let Some(cancel) = &event_loop.install_cancel {
        cancel.store(true, Ordering::Relaxed);
    }
    event_loop.saver.finish();
    guard.restore();
    result
}

struct EventLoop {
    session: SharedSession,
    store: SessionStore,
    saver: Saver,
    actions: mpsc::UnboundedSender<Action>,
    generation: Option<Generation>,
    /// Where installed models go.
    data_dir: PathBuf,
    /// Stops the install in progress.
    install_cancel: Option<Arc<AtomicBool>>,
    config: Config,
    finetune: FinetuneRunner,
}

/// The fine-tune screen's run: prepared on one thread, trained on another.
#[derive(Default)]
struct FinetuneRunner {
    /// The run [`Effect::FinetunePrepare`] prepared, waiting for [`Effect::FinetuneStart`].
    prepared: Arc<std::sync::Mutex<Option<crate::finetune::live::Prepared>>>,
    /// The running run's control; gone when its thread ends.
    control: std::sync::Weak<crate::finetune::live::LiveControl>,
}

impl FinetuneRunner {
    /// Stops a run still training and waits (a little) for its checkpoint, so that it can be resumed.
    async fn finish(&self) {
        if let Some(control) = self.control.upgrade() {
            control.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.control.strong_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What woke the loop up.
enum Wake {
    Action(Action),
    Generation(Option<Result<GenerationEvent, EngineError>>),
    Redraw,
    TerminalClosed,
}

impl EventLoop {
    async fn run(
        &mut self,
        app: &mut App,
        terminal: &mut Terminal<CrosstermBackend<Stdout>>,
        mut actions: mpsc::UnboundedReceiver<Action>,
    ) -> Result<(), TuiError> {
        let mut events = EventStream::new();
        let mut ticker = tokio::time::interval(app::TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut cache = RenderCache::new();
        let mut dirty = true;
        let mut last_draw: Option<Instant> = None;
        loop {
            if dirty && last_draw.is_none_or(|t| t.elapsed() >= FRAME) {
                let report = draw(app, &mut cache, terminal)?;
                last_draw = Some(Instant::now());
                dirty = false;
                if report != app.view || app.reveal_block {
                    let scroll = app.scroll;
                    app.update(Action::View(report));
                    // A scroll correction (or a block to reveal) changes what the next frame shows.
                    dirty = app.scroll != scroll;
                }
            }
            if app.quit {
                return Ok(());
            }
            let redraw_at = tokio::time::Instant::from_std(last_draw.unwrap_or_else(Instant::now) + FRAME);
            let wake = tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => match terminal_action(event) {
                        Some(action) => Wake::Action(action),
                        None => continue,
                    },
                    Some(Err(e)) => return Err(TuiError::Terminal(e)),
                    None => Wake::TerminalClosed,
                },
                Some(action) = actions.recv() => Wake::Action(action),
                event = next_generation_event(&mut self.generation) => Wake::Generation(event),
                _ = ticker.tick() => Wake::Action(Action::Tick),
                _ = tokio::time::sleep_until(redraw_at), if dirty => Wake::Redraw,
            };
            let action = match wake {
                Wake::Action(action) => action,
                Wake::Redraw => continue,
                Wake::TerminalClosed => return Ok(()),
                Wake::Generation(event) => match event {
                    Some(Ok(GenerationEvent::Delta { tokens, text })) => Action::Delta { tokens: tokens.len(), text },
                    Some(Ok(GenerationEvent::Finished(summary))) => {
                        self.generation = None;
                        Action::Finished(Box::new(summary))
                    }
                    Some(Err(e)) => {
                        self.generation = None;
                        Action::GenerationFailed(e.to_string())
                    }
                    None => {
                        self.generation = None;
                        continue;
                    }
                },
            };
            let is_tick = action == Action::Tick;
            let animating = app.animating();
            let effects = app.update(action);
            if !is_tick || animating {
                dirty = true;
            }
            for effect in effects {
                self.effect(app, effect, terminal);
            }
        }
    }

    fn effect(&mut self, app: &mut App, effect: Effect, terminal: &mut Terminal<CrosstermBackend<Stdout>>) {
        let actions = self.actions.clone();
        let store = self.store.clone();
        match effect {
            Effect::Generate(spec) => {
                if let Some(old) = self.generation.take() {
                    old.cancel();
                }
                self.generation = Some(self.session.generate(spec.request()));
            }
            Effect::CancelGeneration => {
                // Dropping a generation cancels it too; cancel() says so right away.
                if let Some(generation) = self.generation.take() {
                    generation.cancel();
                }
            }
            Effect::Save => {
                if app.session.id.is_empty() {
                    app.session.id = self.store.new_id();
                }
                match serde_json::to_vec_pretty(&app.session) {
                    Ok(bytes) => self.saver.save(self.store.clone(), app.session.id.clone(), bytes),
                    Err(e) => app.error(format!("could not save: {e}")),
                }
            }
            Effect::ListSessions => {
                tokio::task::spawn_blocking(move || send_listing(&actions, store.list()));
            }
            Effect::SearchSessions(query) => {
                tokio::task::spawn_blocking(move || send_listing(&actions, store.search(&query)));
            }
            Effect::OpenSession(id) => {
                tokio::task::spawn_blocking(move || {
                    let result = store.load(&id).map(Box::new).map_err(|e| e.to_string());
                    let _ = actions.send(Action::SessionOpened(result));
                });
            }
            Effect::DeleteSession(id) => {
                tokio::task::spawn_blocking(move || {
                    let result = store.delete(&id).map(|()| id).map_err(|e| e.to_string());
                    let _ = actions.send(Action::SessionDeleted(result));
                });
            }
            Effect::RenameSession { id, title } => {
                tokio::task::spawn_blocking(move || {
                    let result = store.rename(&id, &title).map(|s| (s.id, s.title)).map_err(|e| e.to_string());
                    let _ = actions.send(Action::SessionRenamed(result));
                });
            }
            Effect::Export { id, path } => {
                let current = (id == app.session.id).then(|| app.session.clone());
                tokio::task::spawn_blocking(move || {
                    let session = match current {
                        Some(session) => Ok(session),
                        None => store.load(&id),
                    };
                    let result = session.and_then(|s| SessionStore::export_markdown(&s, &path));
                    let _ = actions.send(match result {
                        Ok(()) => Action::Notice(format!("exported to {}", path.display())),
                        Err(e) => Action::Error(format!("export: {e}")),
                    });
                });
            }
            Effect::Copy { text, what } => {
                let how = clipboard::copy(&text, terminal.backend_mut());
                let lines = text.lines().count();
                app.notify(format!("copied {what} ({lines} line{}) {how}", if lines == 1 { "" } else { "s" }));
            }
            Effect::SetMouseCapture(on) => {
                let result = if on {
                    crossterm::execute!(terminal.backend_mut(), EnableMouseCapture)
                } else {
                    crossterm::execute!(terminal.backend_mut(), DisableMouseCapture)
                };
                if let Err(e) = result {
                    app.error(format!("mouse: {e}"));
                }
            }
            Effect::Run { message, block, code } => {
                let session = app.session.id.clone();
                tokio::task::spawn_blocking(move || {
                    let record = runner::run_block(block, &code);
                    let _ = actions.send(Action::RunFinished { session, message, record });
                });
            }
            Effect::LoadModel(path) => self.open_model(&path, actions),
            Effect::CancelInstall => {
                if let Some(cancel) = &self.install_cancel {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Effect::SetAdapter { path, scale } => {
                let path = crate::finetune::live::resolve_adapter(&self.data_dir, &path);
                let session = self.session.clone();
                tokio::spawn(async move {
                    let result = session.set_adapter(path, scale).await.map(Some).map_err(|e| e.to_string());
                    let _ = actions.send(Action::AdapterChanged(result));
                });
            }
            Effect::RemoveAdapter => {
                let session = self.session.clone();
                tokio::spawn(async move {
                    let result = session.remove_adapter().await.map(|()| None).map_err(|e| e.to_string());
                    let _ = actions.send(Action::AdapterChanged(result));
                });
            }
            Effect::FinetunePrepare { spec, model, conversation } => {
                self.finetune_prepare(spec, model, conversation, actions)
            }
            Effect::FinetuneStart { resume } => self.finetune_start(resume, actions),
            Effect::FinetunePause => {
                if let Some(control) = self.finetune.control.upgrade() {
                    let paused = control.toggle_pause();
                    app.notify(if paused { "training paused: p resumes" } else { "training resumed" });
                }
            }
            Effect::FinetuneStop => {
                if let Some(control) = self.finetune.control.upgrade() {
                    control.stop();
                }
            }
            Effect::Quit => {
                // Stopping saves the run's checkpoint, to resume later.
                if let Some(control) = self.finetune.control.upgrade() {
                    control.stop();
                }
            }
        }
    }
}

impl EventLoop {
    fn finetune_prepare(
        &mut self,
        mut spec: finetune::FinetuneSpec,
        model: PathBuf,
        conversation: Vec<String>,
        actions: mpsc::UnboundedSender<Action>,
    ) {
        let config = self.config.clone();
        let data_dir = self.data_dir.clone();
        let slot = Arc::clone(&self.finetune.prepared);
        let failed = actions.clone();
        let spawned = std::thread::Builder::new().name("phi-tui-finetune-prepare".to_owned()).spawn(move || {
            let prepare = || -> Result<crate::finetune::live::Prepared, String> {
                if !conversation.is_empty() {
                    spec.data = write_conversation_data(&data_dir, &conversation)?;
                }
                // Training reads the checkpoint the model was converted from, or the model itself if unquantized.
                let base =
                    models::resolve_checkpoint(Some(&model), &config).map_err(|e| e.to_string())?.unwrap_or(model);
                let mut settings = crate::finetune::live::LiveSettings::new(base, spec.data);
                settings.rank = spec.rank;
                settings.alpha = 2.0 * spec.rank as f32;
                settings.train.max_steps = Some(spec.steps);
                settings.train.lr = spec.lr;
                settings.train.batch_size = spec.batch;
                settings.train.seq_len = spec.seq_len;
                settings.prepare(&data_dir).map_err(|e| e.to_string())
            };
            let result = prepare().map(|prepared| {
                let run = finetune::PreparedRun {
                    name: prepared.settings.name.clone(),
                    summary: prepared.summary.clone(),
                    resumable: prepared.resumable,
                };
                *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(prepared);
                run
            });
            let _ = actions.send(Action::FinetunePrepared(result));
        });
        if let Err(e) = spawned {
            let _ = failed.send(Action::FinetunePrepared(Err(format!("cannot start: {e}"))));
        }
    }

    fn finetune_start(&mut self, resume: bool, actions: mpsc::UnboundedSender<Action>) {
        if self.finetune.control.upgrade().is_some() {
            let _ = actions.send(Action::Notice("a run is already training".to_owned()));
            return;
        }
        let taken = self.finetune.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(prepared) = taken else {
            let _ = actions.send(Action::FinetuneEnded(Err("nothing prepared: Enter checks the settings".to_owned())));
            return;
        };
        // Training gives way while the session generates (this chat, or an editor's completion).
        let busy = Arc::new(AtomicBool::new(false));
        tokio::spawn(crate::session::watch_interactive(self.session.clone(), Arc::clone(&busy)));
        let control = Arc::new(crate::finetune::live::LiveControl::new(move || busy.load(Ordering::SeqCst)));
        self.finetune.control = Arc::downgrade(&control);
        let _ = actions.send(Action::FinetuneStarted);
        let failed = actions.clone();
        let data_dir = self.data_dir.clone();
        let spawned = std::thread::Builder::new().name("phi-tui-finetune".to_owned()).spawn(move || {
            let progress = actions.clone();
            let result = prepared.run(resume, &control, &mut |event| {
                let _ = progress.send(Action::FinetuneProgress(event));
            });
            // The control (and with it the watch on the session) ends with the run.
            drop(control);
            let _ = actions.send(Action::FinetuneEnded(result.map(Box::new).map_err(|e| e.to_string())));
            send_finetuned(&data_dir, &actions);
        });
        if let Err(e) = spawned {
            let _ = failed.send(Action::FinetuneEnded(Err(format!("cannot start training: {e}"))));
        }
    }
}

impl EventLoop {
    /// Loads what the user asked for: a GGUF or an installed model right away; a checkpoint directory or a model
    /// to pull once it is installed (on a thread of its own, reporting progress).
    fn open_model(&mut self, path: &std::path::Path, actions: mpsc::UnboundedSender<Action>) {
        let choice = match models::choose(&path.to_string_lossy(), &self.data_dir) {
            Ok(ModelChoice::File(file)) => return spawn_model_load(&self.session, file, actions),
            Ok(choice) => choice,
            Err(e) => {
                let _ = actions.send(Action::ModelLoaded(Err(e.to_string())));
                return;
            }
        };
        let what = match &choice {
            ModelChoice::Pull(name) => name.clone(),
            ModelChoice::Checkpoint(dir) | ModelChoice::File(dir) => dir.display().to_string(),
        };
        let _ = actions.send(Action::InstallStarted(what));
        let cancel = Arc::new(AtomicBool::new(false));
        self.install_cancel = Some(Arc::clone(&cancel));
        let data_dir = self.data_dir.clone();
        let failed = actions.clone();
        // A thread, not a blocking task: quitting must not wait for a conversion to finish.
        let spawned = std::thread::Builder::new()
            .name("phi-tui-install".to_owned())
            .spawn(move || install(choice, &data_dir, &actions, &cancel));
        if let Err(e) = spawned {
            let _ = failed.send(Action::Installed(Err(format!("cannot start the install: {e}"))));
        }
    }
}

/// Pulls a model or converts a checkpoint directory into the installed models, then asks for it to be loaded.
fn install(
    choice: ModelChoice,
    data_dir: &std::path::Path,
    actions: &mpsc::UnboundedSender<Action>,
    cancel: &AtomicBool,
) {
    // Byte counts come per chunk; the screen needs a few a second.
    let mut last_sent: Option<Instant> = None;
    let mut on_event = |event: PullEvent| {
        let partial = match &event {
            PullEvent::Download(crate::hub::FetchEvent::Progress { done, total, .. })
            | PullEvent::Converting { done, total, .. } => done < total,
            _ => false,
        };
        if partial && last_sent.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        last_sent = Some(Instant::now());
        let _ = actions.send(Action::InstallProgress(event));
    };
    let result = match choice {
        ModelChoice::Pull(name) => {
            let hub = crate::hub::Hub::from_env();
            models::pull(&hub, data_dir, &models::PullRequest::new(name), &mut on_event, cancel)
        }
        ModelChoice::Checkpoint(dir) | ModelChoice::File(dir) => {
            let name = models::name_for_checkpoint(&dir);
            let source = models::ModelSource::Local { dir: dir.clone() };
            models::install(data_dir, &dir, &name, models::default_quant(), source, None, &mut on_event)
        }
    };
    let outcome = result
        .map(|pulled| {
            let model = &pulled.model;
            let notice = if pulled.up_to_date {
                format!("{} is installed and up to date", model.name)
            } else {
                format!("installed {} ({}, {})", model.name, model.quant, models::human_size(model.size))
            };
            (model.path.clone(), notice)
        })
        .map_err(|e| e.to_string());
    if let Err(error) = &outcome {
        tracing::error!("install: {error}");
    }
    let _ = actions.send(Action::Installed(outcome));
}

async fn next_generation_event(generation: &mut Option<Generation>) -> Option<Result<GenerationEvent, EngineError>> {
    match generation {
        Some(generation) => generation.next().await,
        None => std::future::pending().await,
    }
}

fn terminal_action(event: Event) -> Option<Action> {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => Some(Action::Key(key)),
        Event::Paste(text) => Some(Action::Paste(text)),
        Event::Mouse(mouse) => match mouse.kind {
            MouseEventKind::ScrollUp => Some(Action::Scroll(3)),
            MouseEventKind::ScrollDown => Some(Action::Scroll(-3)),
            _ => None,
        },
        Event::Resize(..) => Some(Action::Resize),
        _ => None,
    }
}

/// Loads the model for every client of the session (F5).
fn spawn_model_load(session: &SharedSession, path: PathBuf, actions: mpsc::UnboundedSender<Action>) {
    let session = session.clone();
    tokio::spawn(async move {
        let progress_actions = actions.clone();
        let progress: crate::engine::LoadProgress = Box::new(move |p| {
            let _ = progress_actions.send(Action::ModelProgress(p));
        });
        let action = match session.load_model(path, Some(progress)).await {
            Ok(info) => Action::ModelLoaded(Ok(Box::new(info))),
            // The engine checks a file before it unloads the working model: say which model is still there.
            Err(error) => match session.state().await.ok().and_then(|state| state.model) {
                Some(kept) => Action::ModelKept { error: error.to_string(), model: Box::new(kept) },
                None => Action::ModelLoaded(Err(error.to_string())),
            },
        };
        let _ = actions.send(action);
    });
}

/// At start: uses the model the session has (a shared session keeps the one its editors use), loading `path`
/// only where there is none, then applies the adapter asked for unless the session applies it already.
fn spawn_model_attach(
    session: &SharedSession,
    path: PathBuf,
    lora: Option<(PathBuf, f32)>,
    actions: mpsc::UnboundedSender<Action>,
) {
    let session = session.clone();
    tokio::spawn(async move {
        let result = session.attach_model(path.clone()).await;
        let attached_elsewhere = result.as_ref().is_ok_and(|info| !crate::session::same_file(&info.path, &path));
        let loaded = result.is_ok();
        let _ = actions.send(Action::ModelLoaded(result.map(Box::new).map_err(|e| e.to_string())));
        if attached_elsewhere {
            let _ = actions.send(Action::Notice(format!(
                "the shared session already serves this model; {} was not loaded (F5 switches everyone to it, \
                 --standalone loads a private copy)",
                path.display()
            )));
        }
        let Some((lora, scale)) = lora.filter(|_| loaded) else {
            // The shared session may apply an adapter already: show it.
            if let Ok(state) = session.state().await {
                if state.adapter.is_some() {
                    let _ = actions.send(Action::AdapterChanged(Ok(state.adapter)));
                }
            }
            return;
        };
        let current = session.state().await.ok().and_then(|state| state.adapter);
        let same = current.as_ref().is_some_and(|a| a.scale == scale && crate::session::same_file(&a.path, &lora));
        let result = if same { Ok(current) } else { session.set_adapter(lora, scale).await.map(Some) };
        let _ = actions.send(Action::AdapterChanged(result.map_err(|e| e.to_string())));
    });
}

/// Without a model of its own to load, the TUI shows the one the shared session has (an editor may have loaded one).
fn spawn_session_model(session: &SharedSession, actions: mpsc::UnboundedSender<Action>) {
    let session = session.clone();
    tokio::spawn(async move {
        if let Ok(state) = session.state().await {
            if let Some(model) = state.model {
                let _ = actions.send(Action::ModelLoaded(Ok(Box::new(model))));
                if state.adapter.is_some() {
                    let _ = actions.send(Action::AdapterChanged(Ok(state.adapter)));
                }
            }
        }
    });
}

/// How often the TUI asks the shared session what its editors are doing.
/// Writes the conversation's code as fine-tuning data (`{"text"}` JSONL) and returns its path; its run is called
/// `conversation`.
fn write_conversation_data(data_dir: &std::path::Path, code: &[String]) -> Result<PathBuf, String> {
    let dir = data_dir.join("finetune-data");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("conversation.jsonl");
    let lines: Vec<String> = code.iter().map(|text| serde_json::json!({ "text": text }).to_string()).collect();
    phi_converters::write_atomically(&path, lines.join("\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Tells the app which fine-tuned adapters the data directory keeps (for F6).
fn send_finetuned(data_dir: &std::path::Path, actions: &mpsc::UnboundedSender<Action>) {
    let names = crate::finetune::live::list_runs(data_dir).into_iter().map(|(name, _)| name).collect();
    let _ = actions.send(Action::Finetuned(names));
}

const ACTIVITY_INTERVAL: Duration = Duration::from_secs(2);

/// Relays what other clients do to the session (a model or adapter change, the daemon's restarts) and, every
/// [`ACTIVITY_INTERVAL`], the editors' activity.
async fn watch_session(session: SharedSession, actions: mpsc::UnboundedSender<Action>) {
    let mut notices = session.notices();
    let mut activity = tokio::time::interval(ACTIVITY_INTERVAL);
    activity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let action = tokio::select! {
            notice = notices.recv() => match notice {
                Ok(Notice::Model(info)) => Action::ModelLoaded(Ok(Box::new(info))),
                Ok(Notice::Adapter(adapter)) => Action::AdapterChanged(Ok(adapter)),
                Ok(Notice::Disconnected(reason)) => Action::Error(reason),
                Ok(Notice::Reconnected { pid }) => Action::Notice(format!("attached to a new session daemon (pid {pid})")),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = activity.tick() => match session.status().await {
                Ok(Some(status)) => Action::Activity(status.editor_activity()),
                // A private session has no editors; a daemon that cannot be reached now shows no activity.
                Ok(None) => return,
                Err(_) => Action::Activity(None),
            },
        };
        if actions.send(action).is_err() {
            return;
        }
    }
}

fn draw(
    app: &App,
    cache: &mut RenderCache,
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
) -> Result<app::ViewReport, TuiError> {
    let mut report = app::ViewReport::default();
    // Synchronized output: the terminal shows the frame whole, never half drawn.
    crossterm::queue!(terminal.backend_mut(), BeginSynchronizedUpdate)?;
    terminal.draw(|frame| report = render::render(app, cache, frame))?;
    crossterm::execute!(terminal.backend_mut(), EndSynchronizedUpdate)?;
    Ok(report)
}

/// Shows a listing, and says which session files could not be read (after the list, which does not clear it).
fn send_listing(actions: &mpsc::UnboundedSender<Action>, listing: Listing) {
    let problem = listing.problem();
    let _ = actions.send(Action::SessionList(listing.items));
    if let Some(problem) = problem {
        let _ = actions.send(Action::Error(problem));
    }
}

/// Writes sessions on a thread of its own, in order, keeping only the newest pending version of each.
struct Saver {
    jobs: Option<std_mpsc::Sender<(SessionStore, String, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Saver {
    fn start(actions: mpsc::UnboundedSender<Action>) -> Self {
        let (jobs, receiver) = std_mpsc::channel::<(SessionStore, String, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name("phi-tui-saver".to_owned())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut pending = vec![first];
                    pending.extend(receiver.try_iter());
                    // Only the newest version of each session matters.
                    let mut newest: Vec<(SessionStore, String, Vec<u8>)> = Vec::new();
                    for job in pending.into_iter().rev() {
                        if !newest.iter().any(|(_, id, _)| *id == job.1) {
                            newest.push(job);
                        }
                    }
                    for (store, id, bytes) in newest.into_iter().rev() {
                        if let Err(e) = store.save_bytes(&id, &bytes) {
                            tracing::error!("saving session {id}: {e}");
                            let _ = actions.send(Action::Error(format!("could not save: {e}")));
                        }
                    }
                }
            })
            .ok();
        Self { jobs: Some(jobs), thread }
    }

    fn save(&self, store: SessionStore, id: String, bytes: Vec<u8>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send((store, id, bytes));
        }
    }

    /// Waits until everything queued is written.
    fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Raw mode, the alternate screen, bracketed paste and (optionally) mouse capture, undone on drop and on panic.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    restored: bool,
}

impl TerminalGuard {
    fn enter(mouse: bool) -> Result<Self, TuiError> {
        install_panic_hook();
        abort_restore::install();
        enable_raw_mode()?;
        let mut stdout = std::io::stdout();
        let setup = crossterm::execute!(stdout, EnterAlternateScreen, EnableBracketedPaste).and_then(|()| {
            if mouse {
                crossterm::execute!(stdout, EnableMouseCapture)
            } else {
                Ok(())
            }
        });
        let terminal = setup.and_then(|()| Terminal::new(CrosstermBackend::new(stdout)));
        match terminal {
            Ok(terminal) => Ok(Self { terminal, restored: false }),
            Err(e) => {
                restore_terminal();
                Err(e.into())
            }
        }
    }

    fn terminal(&mut self) -> &mut Terminal<CrosstermBackend<Stdout>> {
        &mut self.terminal
    }

    fn restore(&mut self) {
        if !self.restored {
            self.restored = true;
            let _ = self.terminal.show_cursor();
            restore_terminal();
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Puts the terminal back as it was: safe to call more than once.
pub fn restore_terminal() {
    let mut stdout = std::io::stdout();
    let _ = crossterm::execute!(
        stdout,
        DisableMouseCapture,
        DisableBracketedPaste,
        EndSynchronizedUpdate,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = disable_raw_mode();
    let _ = stdout.flush();
}

/// If the process aborts (an assert in native code), the terminal is put back before it dies: no panic hook or
/// destructor runs then, and a shell left in the alternate screen with mouse reporting on is unusable.
mod abort_restore {
    use std::sync::OnceLock;

    /// The terminal's settings before raw mode, for the handler (which may only make async-signal-safe calls).
    static TERMIOS: OnceLock<libc::termios> = OnceLock::new();
    /// What `restore_terminal` writes: mouse capture off (every mode crossterm enables), bracketed paste off, end of
    /// a synchronized update, the main screen, the cursor shown.
    const RESTORE: &[u8] =
        b"\x1b[?1006l\x1b[?1015l\x1b[?1003l\x1b[?1002l\x1b[?1000l\x1b[?2004l\x1b[?2026l\x1b[?1049l\x1b[?25h";

    pub(super) fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: termios is plain data; tcgetattr fills it in or fails (then nothing is saved).
            let mut termios: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } == 0 {
                let _ = TERMIOS.set(termios);
            }
            // SAFETY: the handler only makes async-signal-safe calls (write, tcsetattr, raise); SA_RESETHAND puts
            // the default action back, so the re-raised signal ends the process as it would have.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESETHAND;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
            }
        });
    }

    extern "C" fn on_abort(signal: libc::c_int) {
        // SAFETY: write, tcsetattr and raise are async-signal-safe; the buffers are statics.
        unsafe {
            libc::write(libc::STDOUT_FILENO, RESTORE.as_ptr().cast(), RESTORE.len());
            if let Some(termios) = TERMIOS.get() {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, termios);
            }
            libc::raise(signal);
        }
    }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The engine catches panics on its thread, fails the request and keeps serving: the TUI goes on, so
            // the terminal stays as it is and the panic goes to the log instead of over the screen.
            if std::thread::current().name() == Some(crate::engine::THREAD_NAME) {
                tracing::error!(%info, "a panic in the engine (recovered)");
                return;
            }
            restore_terminal();
            previous(info);
        }));
    });
}
