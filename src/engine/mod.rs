//! The inference engine: the only code in phi-tui that touches llama.cpp.
//!
//! One dedicated thread owns the llama model and its context (llama.cpp contexts are not `Sync`, and a model can
//! only take a new LoRA adapter while no context borrows it). Everything else talks to that thread through
//! [`Engine`], a cheap clonable handle whose methods send a command and await the reply. The TUI and the language
//! server hold clones of the same handle, so they share one loaded model and one context.
//!
//! The context holds several independent sequences ([`SequenceId`]), each with its own KV cache. Every request
//! names its sequence; the engine reuses the longest common token prefix already cached there and decodes only the
//! rest. Generation runs step by step (a prompt chunk or one token per step); between two steps the worker reads
//! new commands, so cancellation lands within one step and a higher-[`Priority`] request preempts a running one,
//! which later resumes from its cached state. A greedy request may draft ([`Drafting`]): a step then decodes the
//! last token with a guess of the next ones and keeps what the model confirms — the same tokens, in fewer steps.

mod amx;
mod draft;
mod ffi;
mod sampling;
mod text;
mod validate;
pub use validate::TRAINING_STEP_KEY;
mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use draft::{Drafting, LookupOptions};
pub use ffi::{llama_cpp_version, quantize_model, QuantizeError};
pub use sampling::SamplingParams;
pub use text::StopPredicate;
/// The checked reader of phi GGUF hyperparameters, shared with fine-tuning (which loads GGUF bases too).
pub(crate) use validate::phi2_hparams;
pub use worker::gpu_offload_available;
#[cfg(feature = "dynamic-backends")]
pub use worker::set_backends_dir;
pub use worker::{max_threads, THREAD_NAME};

/// A token id of the loaded model's vocabulary.
pub type TokenId = i32;

/// Errors the engine reports. The engine keeps serving after every one of them. They cross the session daemon's
/// socket as they are, so a client of the shared session sees the same errors as an in-process one.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EngineError {
    #[error("no model is loaded")]
    NoModel,
    #[error("{path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("{path}: llama.cpp could not load the model: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("could not create the inference context: {0}")]
    Context(String),
    #[error("{path}: {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },
    #[error("the prompt has {prompt_tokens} tokens but a sequence holds at most {context_size}")]
    PromptTooLong { prompt_tokens: usize, context_size: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (0..{n_vocab})")]
    InvalidToken { token: TokenId, n_vocab: i32 },
    #[error("sequence {sequence} does not exist (the context has {sequences} sequences)")]
    InvalidSequence { sequence: u32, sequences: u32 },
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    #[error("invalid drafting options: {0}")]
    InvalidDraft(String),
    #[error("llama.cpp failed to decode: {0}")]
    Decode(String),
    #[error("the request was cancelled")]
    Cancelled,
    #[error("the engine thread has stopped")]
    EngineStopped,
    /// The shared session's daemon could not be reached, refused this client, or went away mid-request.
    #[error("{0}")]
    Daemon(String),
    /// Something inside the engine (llama-cpp-2, most likely) panicked while serving the request. The request
    /// failed; the engine keeps serving (without a model if the panic struck outside a request).
    #[error("internal error in the engine: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Whether llama.cpp uses flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    /// llama.cpp decides: on where the backend supports it (GPU offload, and the CPU in this version).
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for FlashAttention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown flash-attention mode `{other}` (expected auto, on or off)")),
        }
    }
}

impl fmt::Display for FlashAttention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// How the engine sets up llama.cpp. Fixed for the engine's lifetime except where a command says otherwise.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tokens each sequence can hold; `None` uses the model's training context.
    pub context_size: Option<u32>,
    /// Independent sequences (KV caches) in the context, e.g. one per chat plus one for the editor.
    pub sequences: u32,
    /// How the sequences' keys and values are stored.
    pub kv_cache: KvCacheLayout,
    /// CPU threads; `None` uses every available core.
    pub threads: Option<u32>,
    /// Most prompt tokens decoded in one step: a cancel or a higher-priority request waits at most this long.
    pub batch_size: u32,
    /// Layers offloaded to the GPU; `None` offloads all of them when llama.cpp was built with a GPU backend.
    pub gpu_layers: Option<u32>,
    pub flash_attention: FlashAttention,
    pub main_gpu: u32,
    /// Allow `context_size` beyond the model's training context (the model was not trained for it, and llama.cpp
    /// allocates whatever is asked).
    pub context_beyond_training: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context_size: None,
            sequences: 2,
            kv_cache: KvCacheLayout::PerSequence,
            threads: None,
            batch_size: 512,
            gpu_layers: None,
            flash_attention: FlashAttention::Auto,
            main_gpu: 0,
            context_beyond_training: false,
        }
    }
}

/// How the KV cache is laid out among the sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheLayout {
    /// Each sequence has a cache of `context_size` tokens of its own.
    #[default]
    PerSequence,
    /// All sequences draw from one pool of this many tokens (`None`: one sequence's context). Many sequences (one
    /// per client of the session daemon) then cost no more memory than one: when the pool is full, the least
    /// recently used other sequence is evicted, and decodes its prefix again when it next runs. Each sequence
    /// holds at most `min(context_size, pool)` tokens.
    Shared(Option<u32>),
}

/// What is known about the loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub name: String,
    pub architecture: String,
    /// The weights' storage type as GGUF names it (`F16`, `Q4_K_M`, …).
    pub file_type: String,
    pub parameters: u64,
    pub size_bytes: u64,
    pub n_vocab: i32,
    pub n_layer: u32,
    pub context_train: u32,
    /// Tokens each sequence can hold.
    pub context_size: u32,
    pub sequences: u32,
    pub threads: u32,
    /// `CPU`, or the GPU holding the offloaded layers as `description (backend)`, e.g. `NVIDIA H200 (CUDA)`, with
    /// `, N/M layers` added when only some of them are.
    pub device: String,
    /// Layers on the GPU, the output layer included: `n_layer + 1` when all are, 0 on the CPU.
    pub gpu_layers: u32,
    pub flash_attention: FlashAttention,
    pub has_chat_template: bool,
    /// Fill-in-the-middle tokens (prefix, suffix, middle), when the vocabulary has them (phi-1's has none).
    pub fim_tokens: Option<[TokenId; 3]>,
    /// The end-of-text token (`<|endoftext|>` for phi).
    pub eos_token: TokenId,
}

/// The active LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub path: PathBuf,
    /// The user scale; llama.cpp multiplies it by the adapter's alpha / rank.
    pub scale: f32,
    /// The training step the adapter was written at (`phi_tui.training.step` in its GGUF, written by live
    /// fine-tuning), for status lines; `None` for finished or foreign adapters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
}

/// A snapshot of the engine for status lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub model: Option<ModelInfo>,
    pub adapter: Option<AdapterInfo>,
    /// Tokens cached in each sequence.
    pub cached_tokens: Vec<usize>,
    /// Generations waiting or running.
    pub pending_requests: usize,
}

/// One of the context's independent sequences (KV caches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SequenceId(pub u32);

/// Which request runs when several are waiting. Higher runs first; equals take turns step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash, Serialize, Deserialize)]
pub enum Priority {
    Background,
    #[default]
    Chat,
    /// Editor completions: someone is waiting for every keystroke.
    Interactive,
}

/// What to feed the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<TokenId>),
}

/// A generation request.
#[derive(Clone)]
pub struct GenerateRequest {
    pub sequence: SequenceId,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Tokens to generate at most; 0 only evaluates the prompt (see `return_logits`).
    pub max_tokens: u32,
    /// Generation ends before any of these; the text never contains one, nor any part of one.
    pub stop_strings: Vec<String>,
    pub stop_predicate: Option<StopPredicate>,
    /// End at the model's end-of-generation token.
    pub stop_at_eog: bool,
    pub priority: Priority,
    /// Also return the logits at the last prompt position.
    pub return_logits: bool,
    /// Speculative drafting (greedy requests only): the same tokens, in fewer decodes.
    pub draft: Drafting,
}

impl GenerateRequest {
    pub fn new(sequence: SequenceId, prompt: Prompt) -> Self {
        Self {
            sequence,
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 128,
            stop_strings: Vec::new(),
            stop_predicate: None,
            stop_at_eog: true,
            priority: Priority::default(),
            return_logits: false,
            draft: Drafting::Off,
        }
    }
}

impl fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateRequest")
            .field("sequence", &self.sequence)
            .field("prompt", &self.prompt)
            .field("sampling", &self.sampling)
            .field("max_tokens", &self.max_tokens)
            .field("stop_strings", &self.stop_strings)
            .field("stop_predicate", &self.stop_predicate.is_some())
            .field("priority", &self.priority)
            .field("draft", &self.draft)
            .finish()
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    MaxTokens,
    EndOfGeneration,
    StopString(String),
    Predicate,
    /// The sequence is full.
    ContextFull,
    Cancelled,
}

/// Wall-clock timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From submission until the first step ran.
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    /// Prompt tokens decoded (the reused prefix is not counted).
    pub prompt_tokens_decoded: usize,
    /// Generated tokens decoded. The last generated token is sampled but never decoded, so this is one less
    /// than the tokens generated; `gen_ms` covers exactly these decodes (plus sampling). Draft tokens the model
    /// rejected are not counted (their decode time is).
    pub gen_tokens_decoded: usize,
    /// Draft tokens the model checked (see [`Drafting`]). (Defaults: a daemon or client that does not draft
    /// sends neither.)
    #[serde(default)]
    pub drafted: usize,
    /// Draft tokens the model confirmed: generated tokens that took no step of their own.
    #[serde(default)]
    pub draft_accepted: usize,
}

impl Timings {
    pub fn prompt_tok_s(&self) -> f64 {
        per_second(self.prompt_tokens_decoded, self.prompt_ms)
    }

    pub fn gen_tok_s(&self) -> f64 {
        per_second(self.gen_tokens_decoded, self.gen_ms)
    }

    /// The share of draft tokens the model confirmed; 0 without drafts.
    pub fn draft_acceptance(&self) -> f64 {
        if self.drafted > 0 {
            self.draft_accepted as f64 / self.drafted as f64
        } else {
            0.0
        }
    }
}

fn per_second(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub prompt_tokens: Vec<TokenId>,
    /// Prompt tokens found in the sequence's cache and not decoded again.
    pub reused_tokens: usize,
    pub tokens: Vec<TokenId>,
    pub text: String,
    pub stop_reason: StopReason,
    pub timings: Timings,
    pub last_logits: Option<Vec<f32>>,
}

/// What a running generation reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationEvent {
    /// Newly generated tokens and the text they complete (possibly empty while a character or a possible stop
    /// string is incomplete).
    Delta {
        tokens: Vec<TokenId>,
        text: String,
    },
    Finished(GenerationSummary),
}

/// An identifier for a submitted generation, used to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Stops a generation by id; how depends on where the generation runs (the engine thread, or a daemon across a
/// socket).
pub type Canceller = Arc<dyn Fn(RequestId) + Send + Sync>;

/// A generation in progress: a stream of [`GenerationEvent`]s. Dropping it cancels the generation.
pub struct Generation {
    id: RequestId,
    events: mpsc::UnboundedReceiver<Result<GenerationEvent>>,
    cancel: Canceller,
    finished: bool,
}

impl Generation {
    /// A generation whose events arrive on `events` and which `cancel` stops: the engine's own, or one that a
    /// session client relays from elsewhere.
    pub fn new(id: RequestId, events: mpsc::UnboundedReceiver<Result<GenerationEvent>>, cancel: Canceller) -> Self {
        Self { id, events, cancel, finished: false }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after [`GenerationEvent::Finished`] or an error.
    pub async fn next(&mut self) -> Option<Result<GenerationEvent>> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await.unwrap_or(Err(EngineError::EngineStopped));
        self.finished = !matches!(event, Ok(GenerationEvent::Delta { .. }));
        Some(event)
    }

    /// Waits for the end and returns the summary.
    pub async fn finish(mut self) -> Result<GenerationSummary> {
        while let Some(event) = self.next().await {
            if let GenerationEvent::Finished(summary) = event? {
                return Ok(summary);
            }
        }
        Err(EngineError::EngineStopped)
    }

    /// Asks the engine to stop this generation; it ends with [`StopReason::Cancelled`] within one step.
    pub fn cancel(&self) {
        (self.cancel)(self.id);
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.finished {
            (self.cancel)(self.id);
        }
    }
}

/// Progress of a model load, from 0.0 to 1.0.
pub type LoadProgress = Box<dyn FnMut(f32) + Send>;

/// The handle to the engine thread. Clone it freely; the thread stops when the last handle is dropped, and that
/// drop waits for it.
#[derive(Clone)]
pub struct Engine {
    // Declared before `_thread`, so each handle's sender is gone before its share of the thread is released: when
    // the last share goes, the worker has seen its channel close.
    commands: std_mpsc::Sender<worker::Command>,
    next_request: Arc<AtomicU64>,
    /// Held only for its drop.
    _thread: Arc<EngineThread>,
}

/// Joins the engine thread when the last [`Engine`] handle is dropped. Without the join, a process could reach
/// `exit` while the worker is still freeing its model, and llama.cpp's static destructors would run under it (a
/// segfault at exit, seen about once in 40 runs of `datagen`).
struct EngineThread(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for EngineThread {
    fn drop(&mut self) {
        let handle = match self.0.get_mut() {
            Ok(handle) => handle.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // A handle dropped on the engine thread itself (a cancel callback, say) must not wait for itself.
        if let Some(handle) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            if handle.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Engine {
    /// Starts the engine thread. No model is loaded yet.
    pub fn start(options: EngineOptions) -> Result<Self> {
        let (commands, thread) = worker::spawn(options)?;
        Ok(Self {
            commands,
            next_request: Arc::new(AtomicU64::new(1)),
            _thread: Arc::new(EngineThread(std::sync::Mutex::new(Some(thread)))),
        })
    }

    /// Loads a GGUF model, replacing the current one. Generations in flight on the old model end with an error.
    pub async fn load_model(&self, path: &Path, progress: Option<LoadProgress>) -> Result<ModelInfo> {
        self.call(|reply| worker::Command::LoadModel { path: path.to_path_buf(), progress, reply }).await?
    }

    pub async fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<TokenId>> {
        self.call(|reply| worker::Command::Tokenize { text: text.to_owned(), parse_special, reply }).await?
    }

    pub async fn detokenize(&self, tokens: &[TokenId]) -> Result<String> {
        self.call(|reply| worker::Command::Detokenize { tokens: tokens.to_vec(), reply }).await?
    }

    /// A conversation of `(role, content)` messages laid out by the model's chat template (llama.cpp's template
    /// engine), ending where the assistant's answer starts. `None` when the model has no chat template (phi-1's GGUF
    /// has none) or one that llama.cpp does not know: the caller lays the conversation out itself.
    pub async fn apply_chat_template(&self, messages: Vec<(String, String)>) -> Result<Option<String>> {
        self.call(|reply| worker::Command::ApplyChatTemplate { messages, reply }).await?
    }

    /// Loads (once per path) and applies a LoRA adapter at `scale`, replacing any other. Cached sequences are
    /// cleared: their keys and values were computed with other weights.
    pub async fn set_adapter(&self, path: &Path, scale: f32) -> Result<AdapterInfo> {
        self.call(|reply| worker::Command::SetAdapter { path: path.to_path_buf(), scale, reply }).await?
    }

    /// Removes the active adapter, restoring the base model.
    pub async fn remove_adapter(&self) -> Result<()> {
        self.call(|reply| worker::Command::RemoveAdapter { reply }).await?
    }

    pub async fn state(&self) -> Result<EngineState> {
        self.call(|reply| worker::Command::State { reply }).await
    }

    /// Forgets what a sequence has cached.
    pub async fn clear_sequence(&self, sequence: SequenceId) -> Result<()> {
        self.call(|reply| worker::Command::ClearSequence { sequence, reply }).await?
    }

    /// Submits a generation. Errors in the request itself come as the stream's first item.
    pub fn generate(&self, request: GenerateRequest) -> Generation {
        let id = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (events, receiver) = mpsc::unbounded_channel();
        let sent = self.commands.send(worker::Command::Generate { id, request: Box::new(request), events });
        if let Err(std_mpsc::SendError(worker::Command::Generate { events, .. })) = sent {
            // The engine thread is gone: the stream's first item says so. (The receiver is ours: this send works.)
            let _ = events.send(Err(EngineError::EngineStopped));
        }
        let engine = self.clone();
        Generation::new(id, receiver, Arc::new(move |id| engine.cancel(id)))
    }

    /// Cancels a generation by id; unknown or finished ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        // A stopped engine has nothing left to cancel.
        let _ = self.commands.send(worker::Command::Cancel { id });
    }

    async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> worker::Command) -> Result<T> {
        let (reply, response) = oneshot::channel();
        self.commands.send(command(reply)).map_err(|_| EngineError::EngineStopped)?;
        response.await.map_err(|_| self.reply_lost())
    }

    /// Why a command got no reply: the worker drops a command's reply only when a panic ended its handling, and
    /// then goes on serving; if it is gone instead, nothing can be sent to it any more.
    fn reply_lost(&self) -> EngineError {
        match self.commands.send(worker::Command::Cancel { id: RequestId(0) }) {
            Ok(()) => EngineError::Internal("the request failed inside the engine".to_owned()),
            Err(_) => EngineError::EngineStopped,
        }
    }
}
