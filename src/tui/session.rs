//! Conversations and where they live: one JSON file per session in `<data dir>/sessions/`, rewritten whole on every
//! save through a temporary file and a rename, so a reader (or a crash) never sees half a file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::markdown::{code_blocks, CodeBlock};
use crate::config::PromptMode;

/// The version written into every session file.
pub const SESSION_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a session file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no session `{0}`")]
    NotFound(String),
    #[error("`{0}` is not a session id")]
    BadId(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// Where a message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    #[default]
    Complete,
    /// Still being generated (a file saved mid-reply holds this; it reads back as interrupted).
    Streaming,
    Cancelled,
    /// The process ended while this reply was being generated.
    Interrupted,
    Error(String),
}

/// Numbers about one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplyStats {
    pub model: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub stop: String,
}

/// The result of running one code block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The block's index within its message.
    pub block: usize,
    pub passed: bool,
    /// One line: `3 doctests passed`, `exit 1`, `timed out after 10 s`, …
    pub summary: String,
    /// What the program printed (shortened).
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// The user's input, or the generated text (in code mode: the completion only).
    pub text: String,
    #[serde(default)]
    pub mode: PromptMode,
    /// Code mode replies: the code the model continued; the reply shows `prefix + text` as one block.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default)]
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ReplyStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    #[serde(default)]
    pub created: u64,
    /// Changes whenever the message does (render caches key on it); unique across the process.
    #[serde(skip)]
    pub rev: u64,
    /// The message's code blocks (derived from the text).
    #[serde(skip)]
    pub blocks: Vec<CodeBlock>,
}

impl Message {
    pub fn user(text: String, mode: PromptMode) -> Self {
        Self::new(Role::User, text, mode, String::new(), MessageStatus::Complete)
    }

    pub fn assistant(mode: PromptMode, prefix: String) -> Self {
        Self::new(Role::Assistant, String::new(), mode, prefix, MessageStatus::Streaming)
    }

    fn new(role: Role, text: String, mode: PromptMode, prefix: String, status: MessageStatus) -> Self {
        let mut message = Self {
            role,
            text,
            mode,
            prefix,
            status,
            stats: None,
            runs: Vec::new(),
            created: now(),
            rev: 0,
            blocks: vec![],
        };
        message.refresh(0);
        message
    }

    /// The reply as it is shown and copied: in code mode the prompt and its continuation as one piece of code.
    pub fn content(&self) -> String {
        match (self.role, self.mode) {
            (Role::Assistant, PromptMode::Code) => format!("{}{}", self.prefix, self.text),
            _ => self.text.clone(),
        }
    }

    /// Recomputes what is derived from the text and gives the message a new revision.
    pub fn refresh(&mut self, rev: u64) {
        self.rev = rev;
        self.blocks = match (self.role, self.mode) {
            (Role::User, _) => Vec::new(),
            (Role::Assistant, PromptMode::Code) => {
                vec![CodeBlock { language: "python".to_owned(), code: self.content().trim_end().to_owned() }]
            }
            (Role::Assistant, PromptMode::Chat) => code_blocks(&self.text),
        };
    }

    pub fn is_streaming(&self) -> bool {
        self.status == MessageStatus::Streaming
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub version: u32,
    pub id: String,
    pub title: String,
    pub created: u64,
    pub updated: u64,
    #[serde(default)]
    pub mode: PromptMode,
    pub messages: Vec<Message>,
}

impl Session {
    pub fn new(id: String, mode: PromptMode) -> Self {
        let now = now();
        Self { version: SESSION_VERSION, id, title: String::new(), created: now, updated: now, mode, messages: vec![] }
    }

    /// The title, or one made from the first message.
    pub fn display_title(&self) -> String {
        if !self.title.trim().is_empty() {
            return self.title.clone();
        }
        match self.messages.iter().find(|m| m.role == Role::User) {
            Some(message) => title_from(&message.text),
            None => "new conversation".to_owned(),
        }
    }

    /// The conversation as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.display_title());
        let _ = writeln!(out, "_{} · exported from phi-tui_\n", format_time(self.created));
        for message in &self.messages {
            match message.role {
                Role::User => {
                    let _ = writeln!(out, "## You ({} mode)\n", message.mode.name());
                    match message.mode {
                        PromptMode::Code => out.push_str(&fenced("python", &message.text)),
                        PromptMode::Chat => {
                            out.push_str(message.text.trim_end());
                            out.push('\n');
                        }
                    }
                }
                Role::Assistant => {
                    let model = message.stats.as_ref().map(|s| s.model.as_str()).unwrap_or("model");
                    let _ = writeln!(out, "## {model}\n");
                    match message.mode {
                        PromptMode::Code => out.push_str(&fenced("python", &message.content())),
                        PromptMode::Chat => {
                            out.push_str(message.text.trim_end());
                            out.push('\n');
                        }
                    }
                    match &message.status {
                        MessageStatus::Cancelled => out.push_str("\n_(stopped)_\n"),
                        MessageStatus::Interrupted | MessageStatus::Streaming => out.push_str("\n_(interrupted)_\n"),
                        MessageStatus::Error(e) => {
                            let _ = writeln!(out, "\n_(error: {e})_");
                        }
                        MessageStatus::Complete => {}
                    }
                    for run in &message.runs {
                        let mark = if run.passed { "✓" } else { "✗" };
                        let _ = writeln!(out, "\n**Run {}: {mark} {}**\n", run.block + 1, run.summary);
                        if !run.output.trim().is_empty() {
                            out.push_str(&fenced("text", &run.output));
                        }
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// Whether the title or any message contains `query` (case-insensitive); returns a snippet of the first match.
    pub fn search(&self, query: &str) -> Option<String> {
        let query = query.to_lowercase();
        if query.is_empty() {
            return Some(String::new());
        }
        if self.display_title().to_lowercase().contains(&query) {
            return Some(String::new());
        }
        self.messages.iter().find_map(|m| {
            let text = m.content();
            text.lines().find(|line| line.to_lowercase().contains(&query)).map(|line| shorten(line.trim(), 60))
        })
    }
}

/// A fenced code block whose fence is longer than any backtick run inside.
fn fenced(language: &str, code: &str) -> String {
    let longest = code.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{language}\n{}\n{fence}\n", code.trim_end_matches('\n'))
}

/// A session as the list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    pub id: String,
    pub title: String,
    pub updated: u64,
    pub messages: usize,
    /// Search results: the matching line.
    pub snippet: Option<String>,
}

impl SessionSummary {
    pub fn of(session: &Session) -> Self {
        Self {
            id: session.id.clone(),
            title: session.display_title(),
            updated: session.updated,
            messages: session.messages.len(),
            snippet: None,
        }
    }
}

/// Sessions as the list shows them, and the session files that could not be read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    pub items: Vec<SessionSummary>,
    /// Why each unreadable file was left out (each names its file).
    pub unreadable: Vec<String>,
}

impl Listing {
    /// What to tell the user about the files that could not be read, if any.
    pub fn problem(&self) -> Option<String> {
        match self.unreadable.as_slice() {
            [] => None,
            [one] => Some(format!("could not read a conversation: {one}")),
            [first, rest @ ..] => Some(format!(
                "could not read {} conversations: {first} (and {} more, in the log)",
                rest.len() + 1,
                rest.len()
            )),
        }
    }
}

/// The session files of one data directory.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// The store in `<data_dir>/sessions` (created on the first save).
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("sessions") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, id: &str) -> Result<PathBuf, SessionError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(SessionError::BadId(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// A fresh id, e.g. `20260514-153012-1a2b`: sortable, and unused in this store.
    pub fn new_id(&self) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let stamp = format_time(now()).replace(['-', ':'], "").replace(' ', "-");
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tag = (std::process::id().wrapping_mul(2654435761) ^ n.wrapping_mul(40503)) & 0xffff;
            let id = format!("{stamp}-{tag:04x}");
            if self.path_of(&id).map(|p| !p.exists()).unwrap_or(false) {
                return id;
            }
        }
    }

    /// Writes the session: to a temporary file first, synced, then renamed over the old one.
    pub fn save(&self, session: &Session) -> Result<PathBuf, SessionError> {
        let json = serde_json::to_vec_pretty(session).map_err(|e| SessionError::Parse {
            path: self.dir.join(format!("{}.json", session.id)),
            message: e.to_string(),
        })?;
        self.save_bytes(&session.id, &json)
    }

    /// Writes an already serialised session (see [`SessionStore::save`]).
    pub fn save_bytes(&self, id: &str, json: &[u8]) -> Result<PathBuf, SessionError> {
        let path = self.path_of(id)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| SessionError::Io { path: self.dir.clone(), source })?;
        phi_converters::write_atomically(&path, json)
            .map_err(|source| SessionError::Io { path: path.clone(), source })?;
        Ok(path)
    }

    /// Reads a session. A reply that was still streaming when the file was written reads as interrupted.
    pub fn load(&self, id: &str) -> Result<Session, SessionError> {
        let path = self.path_of(id)?;
        let mut session = Self::read(&path)?;
        for message in &mut session.messages {
            if message.status == MessageStatus::Streaming {
                message.status = MessageStatus::Interrupted;
            }
        }
        Ok(session)
    }

    fn read(path: &Path) -> Result<Session, SessionError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SessionError::NotFound(path.file_stem().unwrap_or_default().to_string_lossy().into_owned())
            } else {
                SessionError::Io { path: path.to_path_buf(), source }
            }
        })?;
        let mut session: Session = serde_json::from_slice(&bytes)
            .map_err(|e| SessionError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        for message in &mut session.messages {
            message.refresh(0);
        }
        Ok(session)
    }

    /// Every readable session, most recently updated first, and why the other files could not be read.
    fn all(&self) -> (Vec<Session>, Vec<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return (Vec::new(), Vec::new()) };
        let mut sessions = Vec::new();
        let mut unreadable = Vec::new();
        let paths = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "json") && !is_temp(path));
        for path in paths {
            match Self::read(&path) {
                Ok(session) => sessions.push(session),
                Err(e) => {
                    tracing::warn!("cannot list {e}");
                    unreadable.push(e.to_string());
                }
            }
        }
        sessions.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| b.id.cmp(&a.id)));
        unreadable.sort();
        (sessions, unreadable)
    }

    /// Every readable session, most recently updated first, and the files that could not be read.
    pub fn list(&self) -> Listing {
        let (sessions, unreadable) = self.all();
        Listing { items: sessions.iter().map(SessionSummary::of).collect(), unreadable }
    }

    /// Sessions whose title or messages contain `query` (case-insensitive), with the matching line; and the files
    /// that could not be read.
    pub fn search(&self, query: &str) -> Listing {
        let (sessions, unreadable) = self.all();
        let items = sessions
            .iter()
            .filter_map(|session| {
                session.search(query).map(|snippet| SessionSummary {
                    snippet: (!snippet.is_empty()).then_some(snippet),
                    ..SessionSummary::of(session)
                })
            })
            .collect();
        Listing { items, unreadable }
    }

    pub fn rename(&self, id: &str, title: &str) -> Result<Session, SessionError> {
        let mut session = self.load(id)?;
        session.title = title.trim().to_owned();
        session.updated = now();
        self.save(&session)?;
        Ok(session)
    }

    pub fn delete(&self, id: &str) -> Result<(), SessionError> {
        let path = self.path_of(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SessionError::NotFound(id.to_owned())),
            Err(source) => Err(SessionError::Io { path, source }),
        }
    }

    /// Writes the session as Markdown to `path` (through a temporary file too).
    pub fn export_markdown(session: &Session, path: &Path) -> Result<(), SessionError> {
        let io = |source| SessionError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        phi_converters::write_atomically(path, session.to_markdown().as_bytes()).map_err(io)
    }
}

fn is_temp(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2026-05-14 15:30:12` (UTC).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A title from a message: its first non-empty line, shortened.
pub fn title_from(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("untitled");
    shorten(line, 48)
}

/// At most `max` characters, with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(store: &SessionStore) -> Session {
        let mut session = Session::new(store.new_id(), PromptMode::Code);
        session.messages.push(Message::user("def add(a, b):".into(), PromptMode::Code));
        let mut reply = Message::assistant(PromptMode::Code, "def add(a, b):".into());
        reply.text = "\n    return a + b".into();
        reply.status = MessageStatus::Complete;
        reply.refresh(0);
        session.messages.push(reply);
        session
    }

    #[test]
    fn save_load_round_trip_and_streaming_reads_as_interrupted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SessionStore::new(dir.path());
        let mut session = sample(&store);
        store.save(&session).unwrap_or_else(|e| panic!("{e}"));
        let loaded = store.load(&session.id).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, session);
        assert_eq!(loaded.messages[1].blocks[0].code, "def add(a, b):\n    return a + b");

        session.messages[1].status = MessageStatus::Streaming;
        store.save(&session).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.load(&session.id).unwrap_or_else(|e| panic!("{e}")).messages[1].status,
            MessageStatus::Interrupted
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(store.dir()).unwrap_or_else(|e| panic!("{e}")).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn list_search_rename_delete() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SessionStore::new(dir.path());
        let first = sample(&store);
        let mut second = Session::new(store.new_id(), PromptMode::Chat);
        second.messages.push(Message::user("What is a Fibonacci number?".into(), PromptMode::Chat));
        second.updated += 10;
        store.save(&first).unwrap_or_else(|e| panic!("{e}"));
        store.save(&second).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(store.dir().join("broken.json"), "{").unwrap_or_else(|e| panic!("{e}"));

        let list = store.list();
        assert_eq!(
            list.items.iter().map(|s| s.title.as_str()).collect::<Vec<_>>(),
            ["What is a Fibonacci number?", "def add(a, b):"]
        );
        // The broken file is reported, naming the file, not skipped in silence.
        assert_eq!(list.unreadable.len(), 1, "{list:?}");
        let problem = list.problem().unwrap_or_default();
        assert!(problem.starts_with("could not read a conversation: "), "{problem}");
        assert!(problem.contains("broken.json"), "{problem}");
        let found = store.search("RETURN A");
        assert_eq!(found.items.len(), 1);
        assert_eq!(found.items[0].id, first.id);
        assert_eq!(found.items[0].snippet.as_deref(), Some("return a + b"));
        assert_eq!(found.unreadable, list.unreadable);
        std::fs::write(store.dir().join("empty.json"), "").unwrap_or_else(|e| panic!("{e}"));
        let problem = store.list().problem().unwrap_or_default();
        assert!(problem.starts_with("could not read 2 conversations: ") && problem.contains("1 more"), "{problem}");
        std::fs::remove_file(store.dir().join("empty.json")).unwrap_or_else(|e| panic!("{e}"));

        store.rename(&first.id, "  adding  ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.load(&first.id).unwrap_or_else(|e| panic!("{e}")).title, "adding");
        store.delete(&first.id).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(store.load(&first.id), Err(SessionError::NotFound(_))));
        assert!(matches!(store.load("../etc/passwd"), Err(SessionError::BadId(_))));
    }

    #[test]
    fn markdown_export_fences_code() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SessionStore::new(dir.path());
        let mut session = sample(&store);
        session.messages[1].runs.push(RunRecord {
            block: 0,
            passed: true,
            summary: "ran, no doctests".into(),
            output: String::new(),
        });
        let md = session.to_markdown();
        assert!(md.starts_with("# def add(a, b):\n"), "{md}");
        assert!(md.contains("```python\ndef add(a, b):\n    return a + b\n```"), "{md}");
        assert!(md.contains("**Run 1: ✓ ran, no doctests**"), "{md}");
        assert_eq!(fenced("", "a ``` b"), "````\na ``` b\n````\n");
        let path = dir.path().join("out/export.md");
        SessionStore::export_markdown(&session, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), md);
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_767_225_599), "2025-12-31 23:59:59");
    }
}
