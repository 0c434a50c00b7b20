//! The teacher: whatever writes the samples. The pipeline sees only the [`Teacher`] trait; two implementations
//! sit behind it: [`EngineTeacher`], a local GGUF through phi-tui's engine with one sequence per sample in flight,
//! and [`OpenAiTeacher`], any OpenAI-compatible endpoint (vLLM, llama-server, a hosted API) — the way to scale out:
//! a cluster as the teacher, phi-tui as the pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::engine::{
    Engine, EngineError, GenerateRequest, ModelInfo, Priority, Prompt, SamplingParams, SequenceId, StopReason,
};

/// The environment variables an API key is read from, in order.
pub const API_KEY_VARS: [&str; 2] = ["PHI_TUI_TEACHER_API_KEY", "OPENAI_API_KEY"];

/// One sample's request.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherRequest {
    /// The instructions: a chat teacher's user message.
    pub prompt: String,
    /// What a completion teacher continues after `prompt` (e.g. an opened code fence); chat teachers ignore it.
    pub response_prefix: String,
    /// Where a completion teacher stops (the text excludes the stop).
    pub stop: Vec<String>,
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
}

/// What the teacher wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherReply {
    /// A chat teacher's whole reply, or a completion teacher's continuation after the response prefix.
    pub text: String,
    /// Tokens generated (0 when the teacher does not say).
    pub tokens: u64,
    /// It ended at the token limit rather than where the teacher chose to stop.
    pub truncated: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TeacherError {
    /// This request failed (e.g. its prompt is too long): the sample is rejected and the run goes on.
    #[error("{0}")]
    Request(String),
    /// The teacher cannot serve any request (unreachable after retries, refused the key, unknown model): the run
    /// stops, keeping what it committed.
    #[error("{0}")]
    Unavailable(String),
}

/// Who the teacher is, as recorded with every sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    /// `engine`, `openai-chat` or `openai-completions`.
    pub kind: String,
    /// The model file's name, or the model the endpoint was asked for.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

pub type TeacherFuture<'a> = Pin<Box<dyn Future<Output = Result<TeacherReply, TeacherError>> + Send + 'a>>;

/// Writes samples. Several requests may be in flight at once; dropping a request's future abandons it (the
/// engine cancels the generation).
pub trait Teacher: Send + Sync {
    fn info(&self) -> TeacherInfo;
    fn complete(&self, request: TeacherRequest) -> TeacherFuture<'_>;
}

/// A local model through the engine: each request in flight has a sequence (KV cache) of its own, and the engine
/// interleaves them step by step.
pub struct EngineTeacher {
    engine: Engine,
    info: TeacherInfo,
    free: Arc<Mutex<Vec<SequenceId>>>,
    slots: Semaphore,
}

impl EngineTeacher {
    /// A teacher on `engine`, with `model` loaded, using all of its sequences.
    pub fn new(engine: Engine, model: &ModelInfo) -> Self {
        let name = model.path.file_name().map_or_else(|| model.name.clone(), |n| n.to_string_lossy().into_owned());
        let sequences: Vec<SequenceId> = (0..model.sequences).rev().map(SequenceId).collect();
        Self {
            engine,
            info: TeacherInfo { kind: "engine".to_owned(), model: name, url: None },
            slots: Semaphore::new(sequences.len()),
            free: Arc::new(Mutex::new(sequences)),
        }
    }
}

/// A borrowed sequence, given back when the request ends or is dropped.
struct SequenceLease {
    free: Arc<Mutex<Vec<SequenceId>>>,
    sequence: SequenceId,
}

impl Drop for SequenceLease {
    fn drop(&mut self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(self.sequence);
    }
}

impl Teacher for EngineTeacher {
    fn info(&self) -> TeacherInfo {
        self.info.clone()
    }

    fn complete(&self, request: TeacherRequest) -> TeacherFuture<'_> {
        Box::pin(async move {
            let _slot =
                self.slots.acquire().await.map_err(|_| TeacherError::Unavailable("the engine is gone".to_owned()))?;
            // A slot guarantees a free sequence.
            let sequence = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let sequence = sequence.ok_or_else(|| TeacherError::Unavailable("no free sequence".to_owned()))?;
            let lease = SequenceLease { free: self.free.clone(), sequence };
            let mut generate = GenerateRequest::new(
                lease.sequence,
                Prompt::Text(format!("{}{}", request.prompt, request.response_prefix)),
            );
            generate.max_tokens = request.max_tokens;
            generate.stop_strings = request.stop;
            generate.priority = Priority::Background;
            generate.sampling = SamplingParams {
                temperature: request.temperature,
                top_p: if request.temperature > 0.0 { request.top_p } else { 1.0 },
                seed: request.seed,
                ..SamplingParams::default()
            };
            match self.engine.generate(generate).finish().await {
                Ok(summary) => Ok(TeacherReply {
                    text: summary.text,
                    tokens: summary.tokens.len() as u64,
                    truncated: matches!(summary.stop_reason, StopReason::MaxTokens | StopReason::ContextFull),
                }),
                Err(error @ (EngineError::PromptTooLong { .. } | EngineError::EmptyPrompt)) => {
                    Err(TeacherError::Request(error.to_string()))
                }
                Err(error) => Err(TeacherError::Unavailable(error.to_string())),
            }
        })
    }
}

/// Which OpenAI endpoint a [`OpenAiTeacher`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiApi {
    /// `POST {url}/chat/completions`: the prompt is the user message (instruction-tuned teachers).
    Chat,
    /// `POST {url}/completions`: the model continues prompt + response prefix (base models on vLLM or
    /// llama-server).
    Completions,
}

impl std::str::FromStr for OpenAiApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" => Ok(Self::Chat),
            "completions" => Ok(Self::Completions),
            other => Err(format!("unknown API `{other}` (expected chat or completions)")),
        }
    }
}

/// Any OpenAI-compatible server. Requests run on blocking threads (one per request in flight); transport errors,
/// 429 and 5xx are retried with exponential backoff.
#[derive(Clone)]
pub struct OpenAiTeacher {
    agent: ureq::Agent,
    base_url: String,
    model: String,
    api: OpenAiApi,
    api_key: Option<String>,
    retries: u32,
    retry_delay: Duration,
}

impl OpenAiTeacher {
    /// A teacher at `base_url` (e.g. `http://host:8000/v1`) asking for `model`; `timeout` bounds each request.
    pub fn new(base_url: &str, model: &str, api: OpenAiApi, api_key: Option<String>, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build();
        Self {
            agent: config.into(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api,
            api_key,
            retries: 4,
            retry_delay: Duration::from_secs(1),
        }
    }

    /// Retries of a failed request (transport error, 429, 5xx) and the first delay, doubled each time.
    pub fn with_retries(mut self, retries: u32, first_delay: Duration) -> Self {
        self.retries = retries;
        self.retry_delay = first_delay;
        self
    }

    /// The API key from the first of [`API_KEY_VARS`] that is set and not empty.
    pub fn api_key_from_env() -> Option<String> {
        API_KEY_VARS.iter().filter_map(|var| std::env::var(var).ok()).find(|key| !key.trim().is_empty())
    }

    fn url(&self) -> String {
        let endpoint = match self.api {
            OpenAiApi::Chat => "chat/completions",
            OpenAiApi::Completions => "completions",
        };
        format!("{}/{endpoint}", self.base_url)
    }

    fn body(&self, request: &TeacherRequest) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": decimal(request.temperature),
            "top_p": decimal(request.top_p),
            "seed": request.seed,
        });
        match self.api {
            OpenAiApi::Chat => {
                body["messages"] = serde_json::json!([{ "role": "user", "content": request.prompt }]);
            }
            OpenAiApi::Completions => {
                body["prompt"] = format!("{}{}", request.prompt, request.response_prefix).into();
                if !request.stop.is_empty() {
                    body["stop"] = serde_json::json!(request.stop);
                }
            }
        }
        body
    }

    /// One request, with retries (blocking).
    fn post(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
        let url = self.url();
        let body = self.body(request).to_string();
        let mut last_error = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.retry_delay.saturating_mul(1 << (attempt - 1).min(16)));
            }
            let mut call = self.agent.post(&url).header("content-type", "application/json");
            if let Some(key) = &self.api_key {
                call = call.header("authorization", format!("Bearer {key}"));
            }
            let mut response = match call.send(body.as_str()) {
                Ok(response) => response,
                Err(error) => {
                    last_error = format!("{url}: {error}");
                    continue;
                }
            };
            let status = response.status().as_u16();
            let text = match response.body_mut().read_to_string() {
                Ok(text) => text,
                Err(error) => {
                    last_error = format!("{url}: reading the response: {error}");
                    continue;
                }
            };
            match status {
                200..=299 => {
                    return self.parse(&text).map_err(|reason| TeacherError::Request(format!("{url}: {reason}")))
                }
                429 | 500..=599 => last_error = format!("{url}: HTTP {status}: {}", shorten(&text)),
                401 | 403 | 404 => {
                    return Err(TeacherError::Unavailable(format!("{url}: HTTP {status}: {}", shorten(&text))))
                }
                _ => return Err(TeacherError::Request(format!("{url}: HTTP {status}: {}", shorten(&text)))),
            }
        }
        Err(TeacherError::Unavailable(format!("{last_error} (after {} attempts)", self.retries + 1)))
    }

    fn parse(&self, text: &str) -> Result<TeacherReply, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let choice = &value["choices"][0];
        let content = match self.api {
            OpenAiApi::Chat => &choice["message"]["content"],
            OpenAiApi::Completions => &choice["text"],
        };
        let text = content.as_str().ok_or_else(|| format!("no text in the response: {}", shorten(text)))?;
        Ok(TeacherReply {
            text: text.to_owned(),
            tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            truncated: choice["finish_reason"].as_str() == Some("length"),
        })
    }
}

/// An `f32` as the decimal it was written as (0.8, not 0.800000011920929), for JSON.
pub fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// The start of a response body, for error messages.
fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Teacher for OpenAiTeacher {
    fn info(&self) -> TeacherInfo {
        let kind = match self.api {
            OpenAiApi::Chat => "openai-chat",
            OpenAiApi::Completions => "openai-completions",
        };
        TeacherInfo { kind: kind.to_owned(), model: self.model.clone(), url: Some(self.base_url.clone()) }
    }

    fn complete(&self, request: TeacherRequest) -> TeacherFuture<'_> {
        let teacher = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || teacher.post(&request))
                .await
                .map_err(|e| TeacherError::Unavailable(format!("the request thread failed: {e}")))?
        })
    }
}
