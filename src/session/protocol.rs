//! The session daemon's wire protocol: length-prefixed JSON frames over a Unix socket.
//!
//! Each frame is a 4-byte little-endian length and that many bytes of JSON. A connection starts with a handshake
//! whose two messages, [`Hello`] and [`Welcome`], keep their shape in every version of the protocol: a client and
//! a daemon of different versions can always tell each other so, in words, instead of failing to parse. After the
//! handshake the client sends [`ClientMessage`]s and the daemon answers with [`DaemonMessage`]s; calls carry an id,
//! and several may be in flight at once (a generation streams its events under its call's id).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Notice, SessionRequest};
use crate::engine::{AdapterInfo, EngineError, EngineState, GenerationEvent, ModelInfo, TokenId};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest frame either side accepts (a prompt of a whole context is far smaller).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The client's phi-tui version, for messages.
    pub version: String,
    pub client: ClientInfo,
}

/// Who a client is, for `phi-tui status` and the TUI's activity line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub kind: ClientKind,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// The chat TUI.
    Tui,
    /// A language server (`phi-tui lsp`) serving an editor.
    Editor,
    /// A connection to the daemon's HTTP front-end (llama.vscode, llama.vim, Continue, an OpenAI client…).
    Http,
    /// A look at the daemon (`phi-tui status`), not a user of the model.
    Probe,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tui => "tui",
            Self::Editor => "editor",
            Self::Http => "http",
            Self::Probe => "probe",
        }
    }
}

/// The daemon's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    /// Why the daemon will not serve this client; `None` when it will.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    Call {
        id: u64,
        call: Call,
    },
    /// Stops the generation started by call `id` (within one engine step).
    Cancel {
        id: u64,
    },
}

/// What a client asks of the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Call {
    AttachModel {
        path: PathBuf,
    },
    /// With `progress`, the daemon sends [`DaemonMessage::Progress`] frames while it loads.
    LoadModel {
        path: PathBuf,
        progress: bool,
    },
    SetAdapter {
        path: PathBuf,
        scale: f32,
    },
    RemoveAdapter,
    State,
    Tokenize {
        text: String,
        parse_special: bool,
    },
    Detokenize {
        tokens: Vec<TokenId>,
    },
    /// Answered with [`DaemonMessage::Event`]s, the last one `Finished` or an error.
    Generate(Box<SessionRequest>),
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DaemonMessage {
    Reply { id: u64, result: Result<Answer, EngineError> },
    Event { id: u64, event: Result<GenerationEvent, EngineError> },
    Progress { id: u64, fraction: f32 },
    Notice(Notice),
}

/// A successful reply to a [`Call`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Model(ModelInfo),
    Adapter(AdapterInfo),
    Done,
    State(EngineState),
    Tokens(Vec<TokenId>),
    Text(String),
    Status(Box<DaemonStatus>),
}

/// The daemon and its clients, for `phi-tui status` and the TUI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub socket: PathBuf,
    /// The address of the HTTP front-end, when the daemon has one.
    #[serde(default)]
    pub http: Option<String>,
    pub uptime_s: f64,
    pub engine: EngineState,
    /// Models loaded since the daemon started.
    pub model_loads: u64,
    /// Generations started, cancelled, and the tokens they generated and decoded.
    pub generations: u64,
    pub cancelled: u64,
    pub tokens_generated: u64,
    pub prompt_tokens_decoded: u64,
    /// Proportional set size of the daemon (its share of shared pages), from /proc; `None` where unknown.
    pub memory_pss_bytes: Option<u64>,
    pub clients: Vec<ClientStatus>,
    /// Connections refused (another user, another protocol version, too many clients).
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub id: u64,
    pub kind: ClientKind,
    pub pid: u32,
    /// Where an HTTP client connects from (it has no pid the daemon knows).
    #[serde(default)]
    pub peer: Option<String>,
    pub sequence: u32,
    pub connected_s: f64,
    pub requests: u64,
    /// Generations that finished (cancelled ones included).
    pub generations: u64,
    /// Median and 95th percentile time from request to last token over recent generations, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl DaemonStatus {
    /// One line for the TUI: the editors and HTTP clients it shares the session with, e.g. `2 editors · 143
    /// completions · p50 18 ms` or `1 editor + 2 HTTP clients · 150 completions · p50 20 ms`.
    pub fn editor_activity(&self) -> Option<String> {
        let editors: Vec<&ClientStatus> =
            self.clients.iter().filter(|c| matches!(c.kind, ClientKind::Editor | ClientKind::Http)).collect();
        if editors.is_empty() {
            return None;
        }
        let count = |kind: ClientKind, one: &str, many: &str| {
            let n = editors.iter().filter(|c| c.kind == kind).count();
            (n > 0).then(|| format!("{n} {}", if n == 1 { one } else { many }))
        };
        let who: Vec<String> =
            [count(ClientKind::Editor, "editor", "editors"), count(ClientKind::Http, "HTTP client", "HTTP clients")]
                .into_iter()
                .flatten()
                .collect();
        let completions: u64 = editors.iter().map(|c| c.generations).sum();
        let mut line =
            format!("{} · {completions} completion{}", who.join(" + "), if completions == 1 { "" } else { "s" });
        let p50s: Vec<f64> = editors.iter().filter_map(|c| c.p50_ms).collect();
        if !p50s.is_empty() {
            line.push_str(&format!(" · p50 {:.0} ms", median(p50s)));
        }
        Some(line)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed")]
    Closed,
    #[error("a frame of {0} bytes is larger than the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one frame and parses it as `T`.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncRead + Unpin,
{
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })?;
    Ok(serde_json::from_slice(&body)?)
}

/// Writes `message` as one frame (and flushes it).
pub async fn write_frame<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// The message a client shows when the daemon speaks another protocol: both versions and what to do.
pub fn version_mismatch(daemon_protocol: u32, daemon_version: &str) -> String {
    format!(
        "the running phi-tui session daemon is version {daemon_version} (protocol {daemon_protocol}), but this \
         phi-tui is version {} (protocol {PROTOCOL_VERSION}); stop the old daemon with `phi-tui serve --stop` (the \
         next request starts a new one), or run with --standalone",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineState;

    fn client(kind: ClientKind, generations: u64, p50_ms: Option<f64>) -> ClientStatus {
        ClientStatus {
            id: 1,
            kind,
            pid: 1,
            peer: None,
            sequence: 0,
            connected_s: 1.0,
            requests: generations,
            generations,
            p50_ms,
            p95_ms: p50_ms,
        }
    }

    #[test]
    fn the_activity_line_counts_editors_and_http_clients() {
        let mut status = DaemonStatus {
            pid: 1,
            version: "0".into(),
            socket: PathBuf::from("/s"),
            http: None,
            uptime_s: 1.0,
            engine: EngineState::default(),
            model_loads: 1,
            generations: 0,
            cancelled: 0,
            tokens_generated: 0,
            prompt_tokens_decoded: 0,
            memory_pss_bytes: None,
            clients: vec![client(ClientKind::Tui, 5, Some(1.0))],
            refused: 0,
        };
        assert_eq!(status.editor_activity(), None, "the TUI itself is not shown");
        status.clients.push(client(ClientKind::Http, 2, Some(30.0)));
        assert_eq!(status.editor_activity().as_deref(), Some("1 HTTP client · 2 completions · p50 30 ms"));
        status.clients.push(client(ClientKind::Editor, 1, Some(10.0)));
        status.clients.push(client(ClientKind::Editor, 0, None));
        assert_eq!(status.editor_activity().as_deref(), Some("2 editors + 1 HTTP client · 3 completions · p50 30 ms"));
        status.clients.retain(|client| client.kind != ClientKind::Http);
        assert_eq!(status.editor_activity().as_deref(), Some("2 editors · 1 completion · p50 10 ms"));
    }

    #[test]
    fn the_draft_setting_travels_in_a_generate_call_and_older_clients_get_none() {
        use crate::engine::{Drafting, LookupOptions, Prompt, Timings};

        let mut request = SessionRequest::new(Prompt::Text("x = 1\n".to_owned()));
        request.draft = Drafting::Lookup(LookupOptions { reference: vec![1, 2, 3], ..LookupOptions::default() });
        let call = ClientMessage::Call { id: 3, call: Call::Generate(Box::new(request.clone())) };
        let json = serde_json::to_value(&call).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::from_value::<ClientMessage>(json.clone()).ok(), Some(call));

        // A client that predates drafting sends no `draft`; a daemon that predates it sends no draft counts.
        let mut older = json;
        let fields = older["Call"]["call"]["Generate"].as_object_mut().unwrap_or_else(|| panic!("not a Generate call"));
        assert!(fields.remove("draft").is_some());
        let Ok(ClientMessage::Call { call: Call::Generate(parsed), .. }) = serde_json::from_value(older) else {
            panic!("an older client's request should parse");
        };
        assert_eq!(*parsed, SessionRequest { draft: Drafting::Off, ..request });
        let timings: Timings = serde_json::from_str(
            r#"{"queue_ms":0,"prompt_ms":1,"gen_ms":2,"prompt_tokens_decoded":3,"gen_tokens_decoded":4}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((timings.gen_tokens_decoded, timings.drafted, timings.draft_accepted), (4, 0, 0));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let message = ClientMessage::Cancel { id: 7 };
        write_frame(&mut a, &message).await.unwrap_or_else(|e| panic!("{e}"));
        let read: ClientMessage = read_frame(&mut b).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, message);
        tokio::io::AsyncWriteExt::write_all(&mut a, &(MAX_FRAME_BYTES as u32 + 1).to_le_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_frame::<ClientMessage, _>(&mut b).await, Err(FrameError::TooLarge(_))));
        drop(a);
        assert!(matches!(read_frame::<ClientMessage, _>(&mut b).await, Err(FrameError::Closed)));
    }
}
