//! The TUI's state and everything that changes it. No IO here: [`App::update`] takes an [`Action`] (a key, a
//! generated token, a finished background job) and returns the [`Effect`]s the event loop should carry out.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::finetune::{FinetuneRequest, FinetuneSpec, FinetuneView, PreparedRun};
use super::input::Input;
use super::keys::{Command, KeyMap};
use super::prompt::{build_prompt, GenerationSpec};
use super::session::{Message, MessageStatus, ReplyStats, Role, RunRecord, Session, SessionSummary};
use crate::config::PromptMode;
use crate::engine::{AdapterInfo, GenerationSummary, ModelInfo, StopReason};
use crate::models::{self, PullEvent};

/// The fine-tune screen's data that means "this conversation's code".
pub const CONVERSATION_DATA: &str = ":conversation";

/// Ticks (of [`TICK`]) between two saves of a reply that is still streaming.
pub const SAVE_EVERY_TICKS: u32 = 4;
/// The event loop's tick.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a notice stays, in ticks.
const NOTICE_TICKS: u32 = 16;

/// Settings the app starts with.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub keymap: KeyMap,
    pub max_tokens: u32,
    pub temperature: f32,
    /// The configured prompt mode; `None` picks one per model.
    pub mode: Option<PromptMode>,
    pub mouse: bool,
    /// Shown on the first-run screen.
    pub config_path: PathBuf,
    /// Where exports go by default.
    pub export_dir: PathBuf,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            keymap: KeyMap::default(),
            max_tokens: 256,
            temperature: 0.0,
            mode: None,
            mouse: true,
            config_path: PathBuf::from("~/.config/phi-tui/config.toml"),
            export_dir: PathBuf::from("."),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    /// None given and none configured.
    None,
    Loading {
        path: PathBuf,
        progress: f32,
    },
    Ready(Box<ModelInfo>),
    Failed {
        path: PathBuf,
        error: String,
    },
    /// A model being downloaded and converted (or a local checkpoint converted) before it loads.
    Installing {
        /// What was asked for: a model name, `owner/name`, or a checkpoint directory.
        what: String,
        /// The latest progress.
        event: Option<PullEvent>,
    },
}

/// What a one-line prompt is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptPurpose {
    Model,
    Adapter,
    Rename { id: String },
    Search,
    Export { id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextPrompt {
    pub purpose: PromptPurpose,
    pub title: String,
    pub hint: String,
    pub input: Input,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionsView {
    pub items: Vec<SessionSummary>,
    pub selected: usize,
    pub query: String,
    /// Waiting for a second `d` (or `y`) to delete the selected session.
    pub confirm_delete: bool,
    pub loading: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    Help,
    Sessions(SessionsView),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    ticks_left: u32,
}

/// Where the conversation view stands, as the last frame drew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewReport {
    pub height: usize,
    /// The largest useful scroll offset (lines above the bottom).
    pub max_scroll: usize,
    /// The scroll offset that brings the block to be revealed into view.
    pub reveal: Option<usize>,
    /// The scroll offset the frame used: more than asked when the reply grew below a scrolled-up view, which
    /// keeps the text in view still.
    pub scroll: usize,
}

/// Everything that can happen to the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Key(KeyEvent),
    Paste(String),
    /// Mouse wheel: positive scrolls up (towards older messages).
    Scroll(i32),
    Resize,
    Tick,
    View(ViewReport),
    ModelProgress(f32),
    ModelLoaded(Result<Box<ModelInfo>, String>),
    /// The model asked for must be installed first (pulled, or converted from a checkpoint directory).
    InstallStarted(String),
    InstallProgress(PullEvent),
    /// The install ended: the GGUF to load and what to tell the user, or why it failed.
    Installed(Result<(PathBuf, String), String>),
    /// A load failed before the engine let go of the model it had, which it still serves.
    ModelKept {
        error: String,
        model: Box<ModelInfo>,
    },
    AdapterChanged(Result<Option<AdapterInfo>, String>),
    /// What the editors sharing the session are doing (e.g. `2 editors · 143 completions · p50 18 ms`).
    Activity(Option<String>),
    Delta {
        tokens: usize,
        text: String,
    },
    Finished(Box<GenerationSummary>),
    GenerationFailed(String),
    SessionList(Vec<SessionSummary>),
    SessionOpened(Result<Box<Session>, String>),
    SessionDeleted(Result<String, String>),
    SessionRenamed(Result<(String, String), String>),
    /// A run of a code block of message `message` in session `session` ended.
    RunFinished {
        session: String,
        message: usize,
        record: RunRecord,
    },
    Notice(String),
    Error(String),
    /// The fine-tune screen's run was prepared (model and data loaded, a step measured), or could not be.
    FinetunePrepared(Result<PreparedRun, String>),
    /// Training started (the event loop had a prepared run to start).
    FinetuneStarted,
    FinetuneProgress(crate::finetune::live::LiveEvent),
    FinetuneEnded(Result<Box<crate::finetune::live::LiveOutcome>, String>),
    /// The fine-tuned adapters kept in the data directory, by name.
    Finetuned(Vec<String>),
}

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Generate(GenerationSpec),
    CancelGeneration,
    /// Save the current session.
    Save,
    ListSessions,
    SearchSessions(String),
    OpenSession(String),
    DeleteSession(String),
    RenameSession {
        id: String,
        title: String,
    },
    /// Export a session (the current one when `id` is its id) to Markdown.
    Export {
        id: String,
        path: PathBuf,
    },
    Copy {
        text: String,
        what: String,
    },
    SetMouseCapture(bool),
    /// Run a code block of message `message` in the sandbox.
    Run {
        message: usize,
        block: usize,
        code: String,
    },
    /// Load a model: a GGUF, an installed model's name, or (installed first) a checkpoint directory or a model to
    /// pull.
    LoadModel(PathBuf),
    /// Stop the download of the model being installed.
    CancelInstall,
    SetAdapter {
        path: PathBuf,
        scale: f32,
    },
    RemoveAdapter,
    /// Load the base model and the data of a fine-tuning run (on `model`, the model the session serves).
    FinetunePrepare {
        spec: FinetuneSpec,
        model: PathBuf,
        /// With the data `:conversation`: the code blocks of this conversation's finished replies, to train on.
        conversation: Vec<String>,
    },
    /// Start the prepared run (continuing its checkpoint with `resume`).
    FinetuneStart {
        resume: bool,
    },
    FinetunePause,
    FinetuneStop,
    Quit,
}

/// A code block's place: message index and index within the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub message: usize,
    pub index: usize,
    /// 1-based number in the conversation.
    pub number: usize,
}

pub struct App {
    pub options: AppOptions,
    pub session: Session,
    pub input: Input,
    pub history: Vec<String>,
    history_index: Option<usize>,
    history_draft: String,
    /// The input holds the last user message for editing; sending replaces that exchange.
    pub editing_last: bool,
    pub overlay: Option<Overlay>,
    pub prompt: Option<TextPrompt>,
    pub model: ModelState,
    pub adapter: Option<AdapterInfo>,
    pub adapter_loading: bool,
    /// The adapter put aside by the base ⇄ adapter toggle, to bring back.
    pub compared_adapter: Option<AdapterInfo>,
    /// The fine-tune screen's state (kept while it is closed: a run goes on).
    pub finetune: Option<FinetuneView>,
    pub finetune_open: bool,
    /// The names of the fine-tuned adapters in the data directory (F6 takes a name too).
    pub finetuned: Vec<String>,
    /// The editors' activity in the shared session, for the status line.
    pub activity: Option<String>,
    /// The last message is a reply being generated.
    pub generating: bool,
    /// Tokens streamed so far in the current reply.
    pub streamed_tokens: usize,
    /// Tokens in the chat's context after the last reply.
    pub context_used: Option<usize>,
    /// Tokens per second of the last reply.
    pub last_speed: Option<f64>,
    /// The selected code block (1-based number in the conversation).
    pub selected_block: Option<usize>,
    /// Bring the selected block into view on the next frame.
    pub reveal_block: bool,
    /// Lines scrolled up from the bottom (0 follows the newest text).
    pub scroll: usize,
    pub view: ViewReport,
    pub mouse_captured: bool,
    pub notice: Option<Notice>,
    /// A block being run: (message, block index).
    pub running: Option<(usize, usize)>,
    pub quit: bool,
    pub tick: u64,
    ticks_since_save: u32,
    next_rev: u64,
    regenerations: u32,
    /// The user chose the prompt mode; a model load does not change it.
    mode_chosen: bool,
}

impl App {
    pub fn new(options: AppOptions, session: Session, model: ModelState) -> Self {
        let mouse_captured = options.mouse;
        let mut app = Self {
            options,
            session,
            input: Input::default(),
            history: Vec::new(),
            history_index: None,
            history_draft: String::new(),
            editing_last: false,
            overlay: None,
            prompt: None,
            model,
            adapter: None,
            adapter_loading: false,
            compared_adapter: None,
            finetune: None,
            finetune_open: false,
            finetuned: Vec::new(),
            activity: None,
            generating: false,
            streamed_tokens: 0,
            context_used: None,
            last_speed: None,
            selected_block: None,
            reveal_block: false,
            scroll: 0,
            view: ViewReport::default(),
            mouse_captured,
            notice: None,
            running: None,
            quit: false,
            tick: 0,
            ticks_since_save: 0,
            next_rev: 1,
            regenerations: 0,
            mode_chosen: false,
        };
        if let Some(mode) = app.options.mode {
            app.session.mode = mode;
        }
        app.adopt_session();
        app
    }

    fn rev(&mut self) -> u64 {
        self.next_rev += 1;
        self.next_rev
    }

    /// Gives every message a fresh revision and rebuilds the input history from the session.
    fn adopt_session(&mut self) {
        for i in 0..self.session.messages.len() {
            let rev = self.rev();
            self.session.messages[i].refresh(rev);
        }
        self.history = self.session.messages.iter().filter(|m| m.role == Role::User).map(|m| m.text.clone()).collect();
        self.history_index = None;
        self.scroll = 0;
        self.selected_block = None;
        self.editing_last = false;
        self.running = None;
    }

    fn touch(&mut self, index: usize) {
        let rev = self.rev();
        if let Some(message) = self.session.messages.get_mut(index) {
            message.refresh(rev);
        }
        self.session.updated = super::session::now();
    }

    pub fn notify(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice { text: text.into(), error: false, ticks_left: NOTICE_TICKS });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice { text: text.into(), error: true, ticks_left: NOTICE_TICKS * 2 });
    }

    /// A later success takes down an error still on show: what it said (no model, a failed reply) is over.
    fn clear_error(&mut self) {
        if self.notice.as_ref().is_some_and(|notice| notice.error) {
            self.notice = None;
        }
    }

    pub fn model_info(&self) -> Option<&ModelInfo> {
        match &self.model {
            ModelState::Ready(info) => Some(info),
            _ => None,
        }
    }

    /// The mode a model suggests: chat for models with a chat template, code otherwise (phi-1).
    pub fn default_mode(info: &ModelInfo) -> PromptMode {
        if info.has_chat_template {
            PromptMode::Chat
        } else {
            PromptMode::Code
        }
    }

    /// Every code block of the conversation's replies, numbered from 1.
    pub fn blocks(&self) -> Vec<BlockRef> {
        let mut out = Vec::new();
        for (message, m) in self.session.messages.iter().enumerate() {
            for index in 0..m.blocks.len() {
                out.push(BlockRef { message, index, number: out.len() + 1 });
            }
        }
        out
    }

    /// The number of the first code block of each message (what the renderer numbers from).
    pub fn first_block_numbers(&self) -> Vec<usize> {
        let mut next = 1;
        self.session
            .messages
            .iter()
            .map(|m| {
                let first = next;
                next += m.blocks.len();
                first
            })
            .collect()
    }

    /// The selected block, or else the last one.
    fn target_block(&self) -> Option<BlockRef> {
        let blocks = self.blocks();
        match self.selected_block {
            Some(n) => blocks.get(n.saturating_sub(1)).copied(),
            None => blocks.last().copied(),
        }
    }

    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Key(key) => self.key(key),
            Action::Paste(text) => {
                match self.prompt.as_mut() {
                    Some(prompt) => prompt.input.insert_str(&text.replace(['\n', '\r'], " ")),
                    None if self.overlay.is_none() => self.input.insert_str(&text),
                    None => {}
                }
                vec![]
            }
            Action::Scroll(lines) => {
                self.scroll_by(lines);
                vec![]
            }
            Action::Resize => vec![],
            Action::Tick => self.on_tick(),
            Action::View(report) => {
                self.view = report;
                self.scroll = report.scroll;
                if let Some(target) = report.reveal.filter(|_| self.reveal_block) {
                    self.scroll = target;
                }
                self.reveal_block = false;
                self.scroll = self.scroll.min(report.max_scroll);
                vec![]
            }
            Action::ModelProgress(progress) => {
                if let ModelState::Loading { progress: p, .. } = &mut self.model {
                    *p = progress.clamp(0.0, 1.0);
                }
                vec![]
            }
            Action::ModelLoaded(result) => self.model_loaded(result),
            Action::Activity(activity) => {
                self.activity = activity;
                vec![]
            }
            Action::InstallStarted(what) => {
                self.model = ModelState::Installing { what, event: None };
                vec![]
            }
            Action::InstallProgress(progress) => {
                if let ModelState::Installing { event, .. } = &mut self.model {
                    *event = Some(progress);
                }
                vec![]
            }
            Action::Installed(result) => match result {
                Ok((path, notice)) => {
                    self.notify(notice);
                    self.model = ModelState::Loading { path: path.clone(), progress: 0.0 };
                    vec![Effect::LoadModel(path)]
                }
                Err(error) => {
                    let path = match &self.model {
                        ModelState::Installing { what, .. } => PathBuf::from(what),
                        _ => PathBuf::new(),
                    };
                    self.error(error.clone());
                    self.model = ModelState::Failed { path, error };
                    vec![]
                }
            },
            Action::ModelKept { error, model } => {
                self.error(format!("could not load the model: {error} (still using {})", model.name));
                self.model = ModelState::Ready(model);
                vec![]
            }
            Action::AdapterChanged(result) => {
                self.adapter_loading = false;
                match result {
                    Ok(adapter) => {
                        match &adapter {
                            Some(a) => self.notify(format!("LoRA adapter {} at scale {}", file_name(&a.path), a.scale)),
                            None => self.notify("LoRA adapter removed"),
                        }
                        self.adapter = adapter;
                        self.context_used = Some(0);
                    }
                    Err(e) => self.error(format!("adapter: {e}")),
                }
                vec![]
            }
            Action::Delta { tokens, text } => self.delta(tokens, &text),
            Action::Finished(summary) => self.finished(*summary),
            Action::GenerationFailed(error) => {
                if !self.generating {
                    return vec![];
                }
                self.generating = false;
                let last = self.session.messages.len().saturating_sub(1);
                if let Some(message) = self.session.messages.last_mut() {
                    message.status = MessageStatus::Error(error.clone());
                }
                self.touch(last);
                self.error(error);
                vec![Effect::Save]
            }
            Action::SessionList(mut items) => {
                // The saver writes in the background, so a listing read right after a change to the open
                // conversation (a rename, say) can be older than what the app holds: the app's copy wins (once
                // it has been saved at all, i.e. has messages).
                let current = items.iter_mut().find(|item| item.id == self.session.id);
                if let Some(item) = current.filter(|_| !self.session.messages.is_empty()) {
                    *item = SessionSummary { snippet: item.snippet.take(), ..SessionSummary::of(&self.session) };
                }
                if let Some(Overlay::Sessions(view)) = &mut self.overlay {
                    view.items = items;
                    view.loading = false;
                    view.selected = view.selected.min(view.items.len().saturating_sub(1));
                }
                vec![]
            }
            Action::SessionOpened(result) => match result {
                Ok(session) => {
                    self.session = *session;
                    self.adopt_session();
                    self.overlay = None;
                    self.context_used = None;
                    self.notify(format!("opened “{}”", self.session.display_title()));
                    vec![]
                }
                Err(e) => {
                    self.error(e);
                    vec![]
                }
            },
            Action::SessionDeleted(result) => match result {
                Ok(id) => {
                    self.notify("conversation deleted");
                    if id == self.session.id {
                        self.session = Session::new(self.session_id_after(&id), self.session.mode);
                        self.adopt_session();
                    }
                    vec![Effect::ListSessions]
                }
                Err(e) => {
                    self.error(e);
                    vec![Effect::ListSessions]
                }
            },
            Action::SessionRenamed(result) => match result {
                Ok((id, title)) => {
                    self.notify(format!("renamed to “{title}”"));
                    if id == self.session.id {
                        self.session.title = title;
                    }
                    vec![self.refresh_list()]
                }
                Err(e) => {
                    self.error(e);
                    vec![]
                }
            },
            Action::RunFinished { session, message, record } => {
                self.running = None;
                if session != self.session.id {
                    return vec![];
                }
                let Some(m) = self.session.messages.get_mut(message) else { return vec![] };
                if m.role != Role::Assistant {
                    return vec![];
                }
                let block = record.block;
                let (passed, summary) = (record.passed, record.summary.clone());
                m.runs.retain(|r| r.block != block);
                m.runs.push(record);
                m.runs.sort_by_key(|r| r.block);
                if passed {
                    self.notify(format!("run: ✓ {summary}"));
                } else {
                    self.error(format!("run: ✗ {summary}"));
                }
                self.touch(message);
                vec![Effect::Save]
            }
            Action::Notice(text) => {
                self.notify(text);
                vec![]
            }
            Action::Error(text) => {
                self.error(text);
                vec![]
            }
            Action::Finetuned(names) => {
                self.finetuned = names;
                vec![]
            }
            Action::FinetunePrepared(result) => {
                if let Some(view) = &mut self.finetune {
                    view.prepared(result);
                }
                vec![]
            }
            Action::FinetuneStarted => {
                if let Some(view) = &mut self.finetune {
                    view.started();
                }
                vec![]
            }
            Action::FinetuneProgress(event) => {
                let Some(view) = &mut self.finetune else { return vec![] };
                view.event(&event);
                match event {
                    // The better adapter is the session's at once, for the chat and every editor.
                    crate::finetune::live::LiveEvent::AdapterWritten { path, .. } => {
                        self.compared_adapter = None;
                        vec![Effect::SetAdapter { path, scale: 1.0 }]
                    }
                    _ => vec![],
                }
            }
            Action::FinetuneEnded(result) => {
                let result = result.map(|outcome| *outcome);
                if let Some(view) = &mut self.finetune {
                    view.ended(&result);
                }
                match &result {
                    Ok(outcome) => self.notify(format!("fine-tuning ended: adapter {}", outcome.adapter.display())),
                    Err(e) => self.error(format!("fine-tuning: {e}")),
                }
                vec![]
            }
        }
    }

    /// Opens the fine-tune screen (on `data` when given), or closes it.
    pub fn toggle_finetune(&mut self, data: Option<&str>) -> Vec<Effect> {
        if self.finetune_open && data.is_none() {
            self.finetune_open = false;
            return vec![];
        }
        let default = self.options.export_dir.to_string_lossy().into_owned();
        let view = self.finetune.get_or_insert_with(|| FinetuneView::new(data.unwrap_or(&default)));
        if let Some(data) = data.filter(|_| !view.training()) {
            view.fields[0] = Input::new(data);
            view.phase = super::finetune::Phase::Setup;
        }
        self.finetune_open = true;
        vec![]
    }

    fn finetune_key(&mut self, key: KeyEvent) -> Option<Vec<Effect>> {
        let view = self.finetune.as_mut()?;
        let request = match view.key(key)? {
            Ok(request) => request,
            Err(problem) => {
                self.error(problem);
                return Some(vec![]);
            }
        };
        Some(match request {
            None => vec![],
            Some(FinetuneRequest::Close) => {
                self.finetune_open = false;
                vec![]
            }
            Some(FinetuneRequest::Prepare(spec)) => match self.model_info() {
                Some(info) => {
                    let model = info.path.clone();
                    let conversation = if spec.data.as_os_str() == CONVERSATION_DATA {
                        let kept = self.kept_code();
                        if kept.is_empty() {
                            if let Some(view) = &mut self.finetune {
                                view.phase = super::finetune::Phase::Setup;
                            }
                            self.error("no code to train on: this conversation has no finished reply with code");
                            return Some(vec![]);
                        }
                        kept
                    } else {
                        Vec::new()
                    };
                    vec![Effect::FinetunePrepare { spec, model, conversation }]
                }
                None => {
                    if let Some(view) = &mut self.finetune {
                        view.phase = super::finetune::Phase::Setup;
                    }
                    self.error("load a model first: fine-tuning trains the loaded model's adapter");
                    vec![]
                }
            },
            Some(FinetuneRequest::Start { resume }) => vec![Effect::FinetuneStart { resume }],
            Some(FinetuneRequest::TogglePause) => {
                if let Some(view) = &mut self.finetune {
                    view.paused = !view.paused;
                }
                vec![Effect::FinetunePause]
            }
            Some(FinetuneRequest::Stop) => {
                self.notify("stopping after this step; the best adapter is kept");
                vec![Effect::FinetuneStop]
            }
        })
    }

    /// The code of the conversation's finished replies (cancelled and failed ones are not kept).
    fn kept_code(&self) -> Vec<String> {
        let finished =
            self.session.messages.iter().filter(|m| m.role == Role::Assistant && m.status == MessageStatus::Complete);
        finished.flat_map(|m| m.blocks.iter().map(|b| b.code.clone())).filter(|code| !code.trim().is_empty()).collect()
    }

    /// Base model ⇄ adapter: puts the adapter aside (or brings it back), to compare a reply with and without it.
    fn toggle_adapter(&mut self) -> Vec<Effect> {
        if let Some(adapter) = self.adapter.clone() {
            self.compared_adapter = Some(adapter);
            self.adapter_loading = true;
            self.notify(format!(
                "base model (no adapter); {} brings the adapter back",
                self.options.keymap.first(Command::ToggleAdapter)
            ));
            return vec![Effect::RemoveAdapter];
        }
        match self.compared_adapter.take() {
            Some(adapter) => {
                self.adapter_loading = true;
                vec![Effect::SetAdapter { path: adapter.path, scale: adapter.scale }]
            }
            None => {
                self.notify("no adapter to compare with: F6 sets one, F7 trains one");
                vec![]
            }
        }
    }

    /// A new session has no id until the loop first saves it.
    fn session_id_after(&self, _old: &str) -> String {
        String::new()
    }

    fn refresh_list(&self) -> Effect {
        match &self.overlay {
            Some(Overlay::Sessions(view)) if !view.query.is_empty() => Effect::SearchSessions(view.query.clone()),
            _ => Effect::ListSessions,
        }
    }

    fn on_tick(&mut self) -> Vec<Effect> {
        self.tick += 1;
        if let Some(notice) = &mut self.notice {
            notice.ticks_left = notice.ticks_left.saturating_sub(1);
            if notice.ticks_left == 0 {
                self.notice = None;
            }
        }
        if self.generating {
            self.ticks_since_save += 1;
            if self.ticks_since_save >= SAVE_EVERY_TICKS {
                self.ticks_since_save = 0;
                return vec![Effect::Save];
            }
        }
        vec![]
    }

    /// Whether a tick changes what is on screen (a spinner or a notice to expire).
    pub fn animating(&self) -> bool {
        self.generating
            || self.adapter_loading
            || self.running.is_some()
            || matches!(self.model, ModelState::Loading { .. } | ModelState::Installing { .. })
            || self.notice.is_some()
    }

    fn scroll_by(&mut self, lines: i32) {
        if lines >= 0 {
            self.scroll = self.scroll.saturating_add(lines as usize).min(self.view.max_scroll.max(self.scroll));
        } else {
            self.scroll = self.scroll.saturating_sub(lines.unsigned_abs() as usize);
        }
    }

    fn model_loaded(&mut self, result: Result<Box<ModelInfo>, String>) -> Vec<Effect> {
        match result {
            Ok(info) => {
                if !self.mode_chosen && self.options.mode.is_none() && self.session.messages.is_empty() {
                    self.session.mode = Self::default_mode(&info);
                }
                self.notify(format!(
                    "loaded {} ({}, {}) · {} mode",
                    info.name,
                    info.file_type,
                    info.device,
                    self.session.mode.name()
                ));
                self.context_used = Some(0);
                self.adapter = None;
                self.model = ModelState::Ready(info);
            }
            Err(error) => {
                let path = match &self.model {
                    ModelState::Loading { path, .. } => path.clone(),
                    _ => PathBuf::new(),
                };
                self.error(format!("could not load the model: {error}"));
                self.model = ModelState::Failed { path, error };
            }
        }
        vec![]
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if self.prompt.is_some() {
            return self.prompt_key(key);
        }
        match &self.overlay {
            Some(Overlay::Help) => {
                // Any key closes the help; the help key too.
                self.overlay = None;
                return vec![];
            }
            Some(Overlay::Sessions(_)) => return self.sessions_key(key),
            None => {}
        }
        if self.finetune_open {
            if let Some(effects) = self.finetune_key(key) {
                return effects;
            }
        }
        if let Some(command) = self.options.keymap.lookup(&key) {
            return self.command(command);
        }
        self.edit_key(key);
        vec![]
    }

    fn edit_key(&mut self, key: KeyEvent) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let input = &mut self.input;
        match key.code {
            KeyCode::Char(c) if !ctrl && !alt => input.insert(c),
            KeyCode::Char('u') if ctrl => input.kill_to_line_start(),
            KeyCode::Char('k') if ctrl => input.kill_to_line_end(),
            KeyCode::Char('w') if ctrl => input.delete_word(),
            KeyCode::Char('a') if ctrl => input.home(),
            KeyCode::Backspace if alt || ctrl => input.delete_word(),
            KeyCode::Backspace => input.backspace(),
            KeyCode::Delete => input.delete(),
            KeyCode::Left if ctrl || alt => input.word_left(),
            KeyCode::Right if ctrl || alt => input.word_right(),
            KeyCode::Left => input.left(),
            KeyCode::Right => input.right(),
            KeyCode::Home => input.home(),
            KeyCode::End => input.end(),
            KeyCode::Tab => {
                // Code is indented with four spaces.
                for _ in 0..4 {
                    input.insert(' ');
                }
            }
            KeyCode::Up => {
                input.vertical(true);
            }
            KeyCode::Down => {
                input.vertical(false);
            }
            _ => {}
        }
    }

    /// Runs a key binding's command: its function in [`COMMANDS`].
    fn command(&mut self, command: Command) -> Vec<Effect> {
        match COMMANDS.iter().find(|(name, _)| *name == command) {
            Some((_, run)) => run(self),
            None => vec![],
        }
    }

    fn newline(&mut self) -> Vec<Effect> {
        self.input.insert('\n');
        vec![]
    }

    fn quit_command(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.generating {
            effects.extend(self.cancel());
        }
        if !self.session.messages.is_empty() && !effects.contains(&Effect::Save) {
            effects.push(Effect::Save);
        }
        self.quit = true;
        effects.push(Effect::Quit);
        effects
    }

    fn history_prev(&mut self) -> Vec<Effect> {
        if !self.input.vertical(true) {
            self.history_step(true);
        }
        vec![]
    }

    fn history_next(&mut self) -> Vec<Effect> {
        if !self.input.vertical(false) {
            self.history_step(false);
        }
        vec![]
    }

    fn scroll_up(&mut self) -> Vec<Effect> {
        self.scroll_by((self.view.height / 2).max(1) as i32);
        vec![]
    }

    fn scroll_down(&mut self) -> Vec<Effect> {
        self.scroll_by(-((self.view.height / 2).max(1) as i32));
        vec![]
    }

    fn scroll_bottom(&mut self) -> Vec<Effect> {
        self.scroll = 0;
        vec![]
    }

    fn edit_last(&mut self) -> Vec<Effect> {
        if self.generating {
            self.notify("a reply is being generated: Esc stops it");
            return vec![];
        }
        match self.session.messages.iter().rposition(|m| m.role == Role::User) {
            Some(i) => {
                let text = self.session.messages[i].text.clone();
                self.session.mode = self.session.messages[i].mode;
                self.input.set(&text);
                self.editing_last = true;
                self.notify(format!(
                    "editing the last message: {} resends it, {} gives up",
                    self.options.keymap.first(Command::Send),
                    self.options.keymap.first(Command::Cancel)
                ));
            }
            None => self.notify("nothing to edit yet"),
        }
        vec![]
    }

    fn toggle_mode(&mut self) -> Vec<Effect> {
        self.session.mode = self.session.mode.toggled();
        self.mode_chosen = true;
        self.notify(match self.session.mode {
            PromptMode::Code => "code mode: type code (e.g. a signature and docstring); the model continues it",
            PromptMode::Chat => "chat mode: ask a question (phi-1 is a code model; answers are best-effort)",
        });
        vec![]
    }

    fn new_session(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.generating {
            effects.extend(self.cancel());
        }
        let mode = self.options.mode.or_else(|| self.model_info().map(Self::default_mode)).unwrap_or_default();
        let mode = if self.mode_chosen { self.session.mode } else { mode };
        let id = self.session_id_after(&self.session.id);
        self.session = Session::new(id, mode);
        self.adopt_session();
        self.input.take();
        self.context_used = Some(0);
        self.notify("new conversation");
        effects
    }

    fn sessions(&mut self) -> Vec<Effect> {
        self.overlay = Some(Overlay::Sessions(SessionsView { loading: true, ..Default::default() }));
        vec![Effect::ListSessions]
    }

    fn prev_block(&mut self) -> Vec<Effect> {
        self.select_block(Command::PrevBlock)
    }

    fn next_block(&mut self) -> Vec<Effect> {
        self.select_block(Command::NextBlock)
    }

    /// The previous or next code block; the first press selects the last block.
    fn select_block(&mut self, direction: Command) -> Vec<Effect> {
        let total = self.blocks().len();
        if total == 0 {
            self.notify("no code blocks yet");
            return vec![];
        }
        let next = match (self.selected_block, direction) {
            (None, _) => total,
            (Some(n), Command::PrevBlock) => n.saturating_sub(1).max(1),
            (Some(n), _) => (n + 1).min(total),
        };
        self.selected_block = Some(next);
        self.reveal_block = true;
        vec![]
    }

    fn copy_block(&mut self) -> Vec<Effect> {
        match self.target_block() {
            Some(block) => {
                let code = self.session.messages[block.message].blocks[block.index].code.clone();
                vec![Effect::Copy { text: code, what: format!("block [{}]", block.number) }]
            }
            None => {
                self.notify("no code block to copy");
                vec![]
            }
        }
    }

    fn copy_reply(&mut self) -> Vec<Effect> {
        let message = match self.target_block() {
            Some(block) if self.selected_block.is_some() => Some(block.message),
            _ => self.session.messages.iter().rposition(|m| m.role == Role::Assistant),
        };
        match message {
            Some(i) => {
                vec![Effect::Copy { text: self.session.messages[i].content(), what: "the reply".into() }]
            }
            None => {
                self.notify("no reply to copy");
                vec![]
            }
        }
    }

    fn export(&mut self) -> Vec<Effect> {
        let slug = slug(&self.session.display_title());
        let path = self.options.export_dir.join(format!("{slug}.md"));
        self.open_prompt(
            PromptPurpose::Export { id: self.session.id.clone() },
            "Export to Markdown",
            "file to write",
            &path.to_string_lossy(),
        );
        vec![]
    }

    fn toggle_mouse(&mut self) -> Vec<Effect> {
        self.mouse_captured = !self.mouse_captured;
        if self.mouse_captured {
            self.notify("mouse captured: the wheel scrolls");
        } else {
            self.notify(format!(
                "mouse released: select and copy with the terminal; {} captures it again",
                self.options.keymap.first(Command::ToggleMouse)
            ));
        }
        vec![Effect::SetMouseCapture(self.mouse_captured)]
    }

    fn load_model_prompt(&mut self) -> Vec<Effect> {
        let current = match &self.model {
            ModelState::Ready(info) => info.path.to_string_lossy().into_owned(),
            ModelState::Loading { path, .. } | ModelState::Failed { path, .. } => path.to_string_lossy().into_owned(),
            ModelState::Installing { what, .. } => what.clone(),
            // The first run offers the first model: Enter pulls it.
            ModelState::None => models::FIRST_MODEL.name.to_owned(),
        };
        let hint = format!(
            "GGUF, checkpoint dir or model ({}: {})",
            models::FIRST_MODEL.name,
            models::human_size(models::FIRST_MODEL.download_bytes)
        );
        self.open_prompt(PromptPurpose::Model, "Load a model", &hint, &current);
        vec![]
    }

    fn load_adapter_prompt(&mut self) -> Vec<Effect> {
        if self.model_info().is_none() {
            self.notify("load a model first");
            return vec![];
        }
        let current =
            self.adapter.as_ref().map(|a| format!("{} {}", a.path.to_string_lossy(), a.scale)).unwrap_or_default();
        let hint = if self.finetuned.is_empty() {
            "path to an adapter GGUF, then the scale (default 1.0); empty removes it".to_owned()
        } else {
            format!(
                "a fine-tuned adapter ({}) or a GGUF's path, then the scale (default 1.0); empty removes it",
                self.finetuned.join(", ")
            )
        };
        self.open_prompt(PromptPurpose::Adapter, "LoRA adapter", &hint, &current);
        vec![]
    }

    fn finetune_command(&mut self) -> Vec<Effect> {
        self.toggle_finetune(None)
    }

    fn help(&mut self) -> Vec<Effect> {
        self.overlay = Some(Overlay::Help);
        vec![]
    }

    fn open_prompt(&mut self, purpose: PromptPurpose, title: &str, hint: &str, text: &str) {
        self.prompt =
            Some(TextPrompt { purpose, title: title.to_owned(), hint: hint.to_owned(), input: Input::new(text) });
    }

    fn history_step(&mut self, back: bool) {
        if self.history.is_empty() {
            return;
        }
        let next = match (self.history_index, back) {
            (None, true) => {
                self.history_draft = self.input.text().to_owned();
                Some(self.history.len() - 1)
            }
            (None, false) => None,
            (Some(i), true) => Some(i.saturating_sub(1)),
            (Some(i), false) if i + 1 < self.history.len() => Some(i + 1),
            (Some(_), false) => {
                let draft = std::mem::take(&mut self.history_draft);
                self.input.set(&draft);
                self.history_index = None;
                return;
            }
        };
        if let Some(i) = next {
            self.history_index = Some(i);
            let text = self.history[i].clone();
            self.input.set(&text);
        }
    }

    fn ready_to_generate(&mut self) -> Option<Box<ModelInfo>> {
        if self.generating {
            self.notify(format!("a reply is being generated: {} stops it", self.options.keymap.first(Command::Cancel)));
            return None;
        }
        match &self.model {
            ModelState::Ready(info) => Some(info.clone()),
            ModelState::Loading { .. } => {
                self.notify("the model is still loading");
                None
            }
            ModelState::Installing { .. } => {
                self.notify("the model is still being installed");
                None
            }
            _ => {
                self.error(format!("no model loaded: {} loads one", self.options.keymap.first(Command::LoadModel)));
                None
            }
        }
    }

    fn send(&mut self) -> Vec<Effect> {
        if self.input.text().trim().is_empty() {
            return vec![];
        }
        // `:finetune [PATH]` opens the fine-tune screen (on PATH).
        if let Some(rest) = self.input.text().trim().strip_prefix(":finetune") {
            if rest.is_empty() || rest.starts_with(' ') {
                let data = rest.trim().to_owned();
                self.input.take();
                self.finetune_open = false;
                return self.toggle_finetune(Some(data.as_str()).filter(|d| !d.is_empty()));
            }
        }
        let Some(info) = self.ready_to_generate() else { return vec![] };
        let text = self.input.take();
        if self.editing_last {
            if let Some(i) = self.session.messages.iter().rposition(|m| m.role == Role::User) {
                self.session.messages.truncate(i);
            }
            self.editing_last = false;
        }
        if self.history.last() != Some(&text) {
            self.history.push(text.clone());
        }
        self.history_index = None;
        let mode = self.session.mode;
        self.start_reply(&info, text, mode, self.options.temperature, 0)
    }

    /// Appends the user message and an empty streaming reply, and asks for the generation.
    fn start_reply(
        &mut self,
        info: &ModelInfo,
        text: String,
        mode: PromptMode,
        temperature: f32,
        seed: u32,
    ) -> Vec<Effect> {
        let budget = (info.context_size as usize).saturating_sub(self.options.max_tokens as usize) * 3;
        let (prompt, stop_strings) = build_prompt(&self.session.messages, &text, mode, budget.max(256));
        let prefix = if mode == PromptMode::Code { text.clone() } else { String::new() };
        self.session.messages.push(Message::user(text, mode));
        self.session.messages.push(Message::assistant(mode, prefix));
        let n = self.session.messages.len();
        self.touch(n - 2);
        self.touch(n - 1);
        self.generating = true;
        self.streamed_tokens = 0;
        self.ticks_since_save = 0;
        self.scroll = 0;
        self.selected_block = None;
        let spec =
            GenerationSpec { mode, prompt, stop_strings, max_tokens: self.options.max_tokens, temperature, seed };
        vec![Effect::Save, Effect::Generate(spec)]
    }

    fn regenerate(&mut self) -> Vec<Effect> {
        let n = self.session.messages.len();
        let last_is_reply = n >= 2
            && self.session.messages[n - 1].role == Role::Assistant
            && self.session.messages[n - 2].role == Role::User;
        if !last_is_reply {
            if !self.generating {
                self.notify("nothing to regenerate yet");
            }
            return vec![];
        }
        let Some(info) = self.ready_to_generate() else { return vec![] };
        let user = self.session.messages[n - 2].clone();
        self.session.messages.truncate(n - 2);
        // The same prompt greedily gives the same reply again: sample instead.
        let temperature = if self.options.temperature > 0.0 { self.options.temperature } else { 0.8 };
        self.regenerations += 1;
        self.start_reply(&info, user.text, user.mode, temperature, self.regenerations)
    }

    fn cancel(&mut self) -> Vec<Effect> {
        if matches!(self.model, ModelState::Installing { .. }) && self.input.is_empty() {
            self.notify("stopping the download…");
            return vec![Effect::CancelInstall];
        }
        if self.generating {
            self.generating = false;
            let last = self.session.messages.len().saturating_sub(1);
            if let Some(message) = self.session.messages.last_mut() {
                message.status = MessageStatus::Cancelled;
            }
            self.touch(last);
            self.notify("stopped");
            return vec![Effect::CancelGeneration, Effect::Save];
        }
        if self.editing_last {
            self.editing_last = false;
            self.input.take();
            self.notify("edit abandoned");
        } else if !self.input.is_empty() {
            self.input.take();
            self.history_index = None;
        } else if self.selected_block.is_some() {
            self.selected_block = None;
        } else {
            self.notify(format!("{} quits", self.options.keymap.first(Command::Quit)));
        }
        vec![]
    }

    fn delta(&mut self, tokens: usize, text: &str) -> Vec<Effect> {
        if !self.generating {
            return vec![];
        }
        self.streamed_tokens += tokens;
        if text.is_empty() {
            return vec![];
        }
        let last = self.session.messages.len().saturating_sub(1);
        if let Some(message) = self.session.messages.last_mut() {
            if message.text.is_empty() && message.mode == PromptMode::Chat {
                message.text.push_str(text.trim_start());
            } else {
                message.text.push_str(text);
            }
        }
        self.touch(last);
        vec![]
    }

    fn finished(&mut self, summary: GenerationSummary) -> Vec<Effect> {
        if !self.generating {
            return vec![];
        }
        self.generating = false;
        let model = self.model_info().map(|i| i.name.clone()).unwrap_or_default();
        let speed = summary.timings.gen_tok_s();
        let last = self.session.messages.len().saturating_sub(1);
        if let Some(message) = self.session.messages.last_mut() {
            // The final text: a stop rule may have cut text that was already streamed (blank lines at the end).
            message.text = match message.mode {
                PromptMode::Chat => summary.text.trim().to_owned(),
                PromptMode::Code => summary.text.trim_end().to_owned(),
            };
            message.status = if summary.stop_reason == StopReason::Cancelled {
                MessageStatus::Cancelled
            } else {
                MessageStatus::Complete
            };
            message.stats = Some(ReplyStats {
                model,
                prompt_tokens: summary.prompt_tokens.len(),
                tokens: summary.tokens.len(),
                tokens_per_second: speed,
                stop: stop_name(&summary.stop_reason),
            });
        }
        self.touch(last);
        self.last_speed = Some(speed);
        self.context_used = Some(summary.prompt_tokens.len() + summary.tokens.len());
        if summary.stop_reason != StopReason::Cancelled {
            self.clear_error();
        }
        vec![Effect::Save]
    }

    fn run_block(&mut self) -> Vec<Effect> {
        if self.running.is_some() {
            self.notify("a block is already running");
            return vec![];
        }
        let Some(block) = self.target_block() else {
            self.notify("no code block to run");
            return vec![];
        };
        let message = &self.session.messages[block.message];
        if message.is_streaming() {
            self.notify("wait for the reply to finish");
            return vec![];
        }
        let code_block = &message.blocks[block.index];
        if !code_block.is_python() {
            self.notify(format!("block [{}] is {}, not Python", block.number, code_block.language));
            return vec![];
        }
        let code = code_block.code.clone();
        self.running = Some((block.message, block.index));
        self.notify(format!("running block [{}] in the sandbox…", block.number));
        vec![Effect::Run { message: block.message, block: block.index, code }]
    }

    fn prompt_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(prompt) = self.prompt.as_mut() else { return vec![] };
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => {
                self.prompt = None;
                return vec![];
            }
            KeyCode::Char('c') if ctrl => {
                self.prompt = None;
                return vec![];
            }
            KeyCode::Enter => {
                if let Some(prompt) = self.prompt.take() {
                    return self.submit_prompt(prompt.purpose, prompt.input.text().trim().to_owned());
                }
            }
            KeyCode::Char('u') if ctrl => prompt.input.kill_to_line_start(),
            KeyCode::Char('w') if ctrl => prompt.input.delete_word(),
            KeyCode::Char(c) if !ctrl => prompt.input.insert(c),
            KeyCode::Backspace => prompt.input.backspace(),
            KeyCode::Delete => prompt.input.delete(),
            KeyCode::Left => prompt.input.left(),
            KeyCode::Right => prompt.input.right(),
            KeyCode::Home => prompt.input.home(),
            KeyCode::End => prompt.input.end(),
            _ => {}
        }
        vec![]
    }

    fn submit_prompt(&mut self, purpose: PromptPurpose, text: String) -> Vec<Effect> {
        match purpose {
            PromptPurpose::Model => {
                if text.is_empty() {
                    return vec![];
                }
                if matches!(self.model, ModelState::Installing { .. }) {
                    self.notify(format!(
                        "a model is being installed: {} stops it first",
                        self.options.keymap.first(Command::Cancel)
                    ));
                    return vec![];
                }
                let mut effects = Vec::new();
                if self.generating {
                    effects.extend(self.cancel());
                }
                let path = PathBuf::from(text);
                self.model = ModelState::Loading { path: path.clone(), progress: 0.0 };
                effects.push(Effect::LoadModel(path));
                effects
            }
            PromptPurpose::Adapter => {
                if self.generating {
                    self.notify("wait for the reply to finish (or stop it) before changing the adapter");
                    return vec![];
                }
                if text.is_empty() {
                    self.adapter_loading = true;
                    return vec![Effect::RemoveAdapter];
                }
                let (path, scale) = match text.rsplit_once(char::is_whitespace) {
                    Some((path, scale)) => match scale.parse::<f32>() {
                        Ok(scale) if scale.is_finite() => (path.trim().to_owned(), scale),
                        _ => (text.clone(), 1.0),
                    },
                    None => (text.clone(), 1.0),
                };
                self.adapter_loading = true;
                vec![Effect::SetAdapter { path: PathBuf::from(path), scale }]
            }
            PromptPurpose::Rename { id } => {
                if id == self.session.id {
                    self.session.title = text.trim().to_owned();
                    if let Some(Overlay::Sessions(view)) = &mut self.overlay {
                        if let Some(item) = view.items.iter_mut().find(|item| item.id == id) {
                            item.title = self.session.display_title();
                        }
                    }
                    let mut effects = vec![];
                    if !self.session.messages.is_empty() {
                        effects.push(Effect::Save);
                    }
                    effects.push(self.refresh_list());
                    effects
                } else {
                    vec![Effect::RenameSession { id, title: text }]
                }
            }
            PromptPurpose::Search => {
                if let Some(Overlay::Sessions(view)) = &mut self.overlay {
                    view.query = text.clone();
                    view.selected = 0;
                    view.loading = true;
                }
                if text.is_empty() {
                    vec![Effect::ListSessions]
                } else {
                    vec![Effect::SearchSessions(text)]
                }
            }
            PromptPurpose::Export { id } => {
                if text.is_empty() {
                    return vec![];
                }
                if id == self.session.id && self.session.messages.is_empty() {
                    self.notify("nothing to export yet");
                    return vec![];
                }
                vec![Effect::Export { id, path: PathBuf::from(text) }]
            }
        }
    }

    fn sessions_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(Overlay::Sessions(view)) = &mut self.overlay else { return vec![] };
        if view.confirm_delete {
            view.confirm_delete = false;
            if matches!(key.code, KeyCode::Char('d') | KeyCode::Char('y')) {
                if let Some(item) = view.items.get(view.selected) {
                    let id = item.id.clone();
                    let mut effects = Vec::new();
                    if id == self.session.id && self.generating {
                        effects.extend(self.cancel());
                    }
                    effects.push(Effect::DeleteSession(id));
                    return effects;
                }
            }
            self.notify("not deleted");
            return vec![];
        }
        let selected = view.items.get(view.selected).cloned();
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => self.overlay = None,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => self.overlay = None,
            KeyCode::Up | KeyCode::Char('k') => view.selected = view.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                view.selected = (view.selected + 1).min(view.items.len().saturating_sub(1));
            }
            KeyCode::Home | KeyCode::Char('g') => view.selected = 0,
            KeyCode::End | KeyCode::Char('G') => view.selected = view.items.len().saturating_sub(1),
            KeyCode::Enter => {
                if let Some(item) = selected {
                    if item.id == self.session.id {
                        self.overlay = None;
                        return vec![];
                    }
                    let mut effects = Vec::new();
                    if self.generating {
                        effects.extend(self.cancel());
                    }
                    effects.push(Effect::OpenSession(item.id));
                    return effects;
                }
            }
            KeyCode::Char('n') => {
                self.overlay = None;
                return self.command(Command::NewSession);
            }
            KeyCode::Char('d') | KeyCode::Delete => {
                if let Some(item) = selected {
                    view.confirm_delete = true;
                    self.notify(format!("delete “{}”? d or y deletes, any other key keeps it", item.title));
                }
            }
            KeyCode::Char('r') => {
                if let Some(item) = selected {
                    self.open_prompt(PromptPurpose::Rename { id: item.id }, "Rename", "new title", &item.title);
                }
            }
            KeyCode::Char('/') | KeyCode::Char('s') => {
                let query = view.query.clone();
                self.open_prompt(PromptPurpose::Search, "Search conversations", "text to find (empty: all)", &query);
            }
            KeyCode::Char('e') => {
                if let Some(item) = selected {
                    let path = self.options.export_dir.join(format!("{}.md", slug(&item.title)));
                    self.open_prompt(
                        PromptPurpose::Export { id: item.id },
                        "Export to Markdown",
                        "file to write",
                        &path.to_string_lossy(),
                    );
                }
            }
            _ => {}
        }
        vec![]
    }
}

/// What each key binding's command does, one function per command (as helix's typed commands).
type CommandFn = fn(&mut App) -> Vec<Effect>;

const COMMANDS: [(Command, CommandFn); Command::ALL.len()] = [
    (Command::Send, App::send),
    (Command::Newline, App::newline),
    (Command::Cancel, App::cancel),
    (Command::Quit, App::quit_command),
    (Command::HistoryPrev, App::history_prev),
    (Command::HistoryNext, App::history_next),
    (Command::ScrollUp, App::scroll_up),
    (Command::ScrollDown, App::scroll_down),
    (Command::ScrollBottom, App::scroll_bottom),
    (Command::Regenerate, App::regenerate),
    (Command::EditLast, App::edit_last),
    (Command::ToggleMode, App::toggle_mode),
    (Command::NewSession, App::new_session),
    (Command::Sessions, App::sessions),
    (Command::PrevBlock, App::prev_block),
    (Command::NextBlock, App::next_block),
    (Command::CopyBlock, App::copy_block),
    (Command::CopyReply, App::copy_reply),
    (Command::RunBlock, App::run_block),
    (Command::Export, App::export),
    (Command::ToggleMouse, App::toggle_mouse),
    (Command::LoadModel, App::load_model_prompt),
    (Command::LoadAdapter, App::load_adapter_prompt),
    (Command::Finetune, App::finetune_command),
    (Command::ToggleAdapter, App::toggle_adapter),
    (Command::Help, App::help),
];

pub fn stop_name(reason: &StopReason) -> String {
    match reason {
        StopReason::MaxTokens => "max tokens".to_owned(),
        StopReason::EndOfGeneration => "end of text".to_owned(),
        StopReason::StopString(s) => format!("stop {s:?}"),
        StopReason::Predicate => "end of block".to_owned(),
        StopReason::ContextFull => "context full".to_owned(),
        StopReason::Cancelled => "stopped".to_owned(),
    }
}

pub fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// A file-name-safe form of a title.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "conversation".to_owned()
    } else {
        out.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_exactly_one_function() {
        // The table replaces an exhaustive match: a command added to `Command::ALL` without a function would do
        // nothing at all.
        for command in Command::ALL {
            let entries = COMMANDS.iter().filter(|(name, _)| *name == command).count();
            assert_eq!(entries, 1, "{}", command.name());
        }
    }
}
