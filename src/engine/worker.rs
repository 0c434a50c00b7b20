//! The engine thread: owns the llama model and context, schedules generations step by step.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{DecodeError, LlamaBackendDeviceType, LogOptions};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use super::amx;
use super::draft::{Drafter, Drafting};
use super::text::{TextStop, TextStream};
use super::validate::{self, AdapterFacts, ModelFacts};
use super::{
    AdapterInfo, EngineError, EngineOptions, EngineState, FlashAttention, GenerateRequest, GenerationEvent,
    GenerationSummary, KvCacheLayout, LoadProgress, ModelInfo, Priority, Prompt, RequestId, Result, SequenceId,
    StopReason, Timings, TokenId,
};

pub(super) enum Command {
    LoadModel { path: PathBuf, progress: Option<LoadProgress>, reply: oneshot::Sender<Result<ModelInfo>> },
    Tokenize { text: String, parse_special: bool, reply: oneshot::Sender<Result<Vec<TokenId>>> },
    Detokenize { tokens: Vec<TokenId>, reply: oneshot::Sender<Result<String>> },
    ApplyChatTemplate { messages: Vec<(String, String)>, reply: oneshot::Sender<Result<Option<String>>> },
    SetAdapter { path: PathBuf, scale: f32, reply: oneshot::Sender<Result<AdapterInfo>> },
    RemoveAdapter { reply: oneshot::Sender<Result<()>> },
    State { reply: oneshot::Sender<EngineState> },
    ClearSequence { sequence: SequenceId, reply: oneshot::Sender<Result<()>> },
    Generate { id: RequestId, request: Box<GenerateRequest>, events: EventSender },
    Cancel { id: RequestId },
}

type EventSender = tokio_mpsc::UnboundedSender<Result<GenerationEvent>>;

/// llama.cpp's process-wide state. `llama_backend_init` may run only once per process, so the engine, the
/// quantizer and tests all share this one.
pub(crate) fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs a lot, to stderr by default; the TUI and the language server own the terminal and
            // stdout, so every line goes through tracing instead.
            llama_cpp_2::send_logs_to_tracing(LogOptions::default());
            // Before llama.cpp first sets up its CPU backend, which is where it asks for AMX.
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            let amx_denied = amx::cpu_has_amx()
                && match amx::deny_amx() {
                    Ok(()) => {
                        tracing::debug!("AMX CPU: llama.cpp's AMX kernels are kept off (see engine/amx.rs)");
                        true
                    }
                    Err(e) => {
                        tracing::warn!("cannot keep llama.cpp off AMX, whose kernels crash: {e}");
                        false
                    }
                };
            #[cfg(feature = "dynamic-backends")]
            load_backend_modules()?;
            let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            if amx_denied {
                super::ffi::set_up_cpu_buffer_types_quietly();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| EngineError::Context(format!("llama.cpp backend: {e}")))
}

/// Whether llama.cpp has a GPU to offload layers to (false where its backend cannot start).
pub fn gpu_offload_available() -> bool {
    backend().is_ok_and(|backend| backend.supports_gpu_offload())
}

/// Where to find ggml backend modules (e.g. a CUDA backend built on another machine).
#[cfg(feature = "dynamic-backends")]
static BACKENDS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Names the directory of ggml backend modules. Must run before the first engine starts; later calls are ignored.
#[cfg(feature = "dynamic-backends")]
pub fn set_backends_dir(dir: PathBuf) {
    let _ = BACKENDS_DIR.set(dir);
}

/// Loads the ggml backend modules (CPU variants, CUDA, …) from the directory given to [`set_backends_dir`], else
/// from the one llama-cpp-sys-2 built them into.
#[cfg(feature = "dynamic-backends")]
fn load_backend_modules() -> Result<(), String> {
    match BACKENDS_DIR.get() {
        Some(dir) => {
            // llama-cpp-2 panics on a path that is not UTF-8, and ggml only logs a missing directory.
            if dir.to_str().is_none() || !dir.is_dir() {
                return Err(format!("{}: not a directory of ggml backend modules", dir.display()));
            }
            llama_cpp_2::llama_backend::load_backends_from_path(dir);
        }
        None => llama_cpp_2::llama_backend::load_backends(),
    }
    // Without a CPU backend llama.cpp cannot load a model at all, even with every layer on a GPU.
    let devices = llama_cpp_2::list_llama_ggml_backend_devices();
    if !devices.iter().any(|d| d.device_type == LlamaBackendDeviceType::Cpu) {
        let dir =
            BACKENDS_DIR.get().map_or_else(|| "the build's backends directory".to_owned(), |d| d.display().to_string());
        return Err(format!("no CPU backend module (libggml-cpu*.so) was found in {dir}"));
    }
    for device in &devices {
        tracing::info!(name = device.name, description = device.description, backend = device.backend, "ggml device");
    }
    Ok(())
}

/// The engine thread's name (the TUI's panic hook tells the engine's recoverable panics from fatal ones by it).
pub const THREAD_NAME: &str = "phi-engine";
/// The most prompt tokens one step decodes; llama.cpp sizes its compute buffers by it.
const MAX_BATCH_SIZE: u32 = 1 << 16;

pub(super) fn spawn(options: EngineOptions) -> Result<(Sender<Command>, std::thread::JoinHandle<()>)> {
    validate_options(&options)?;
    backend()?;
    let (commands, receiver) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            let mut worker = Worker::new(receiver, options);
            // A panic (inside llama-cpp-2, most likely) must not stop the engine for the rest of the process: the
            // requests in flight fail, the model is dropped, and the worker serves again. Loads and requests catch
            // their own panics first (see `run`); this is for whatever is left.
            while let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run())) {
                let error = EngineError::Internal(panic_message(&*panic));
                tracing::error!(%error, "the engine recovered from a panic; no model is loaded");
                worker.fail_all(&error);
                worker.cached.clear();
            }
        })
        .map_err(|e| EngineError::Context(format!("cannot start the engine thread: {e}")))?;
    Ok((commands, thread))
}

fn validate_options(options: &EngineOptions) -> Result<()> {
    let bad = |what: String| Err(EngineError::Context(what));
    if !(1..=64).contains(&options.sequences) {
        return bad("the number of sequences must be between 1 and 64".to_owned());
    }
    if !(1..=MAX_BATCH_SIZE).contains(&options.batch_size) {
        return bad(format!("the batch size must be between 1 and {MAX_BATCH_SIZE}"));
    }
    if options.context_size.is_some_and(|n| n < 16) {
        return bad("the context must hold at least 16 tokens".to_owned());
    }
    if let Some(threads) = options.threads {
        // Far more threads than cores only slows llama.cpp down, and thousands crash its OpenMP runtime.
        let most = max_threads();
        if !(1..=most).contains(&threads) {
            return bad(format!("the number of threads must be between 1 and {most} on this machine"));
        }
    }
    Ok(())
}

/// The most CPU threads accepted: four per core, at least 64, at most ggml's `GGML_MAX_N_THREADS` (512).
pub fn max_threads() -> u32 {
    default_threads().saturating_mul(4).clamp(64, 512)
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_owned(),
        (None, Some(message)) => message.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// A loaded model and the adapters loaded into it (llama.cpp frees adapters only with their model).
struct Loaded {
    model: LlamaModel,
    info: ModelInfo,
    facts: ModelFacts,
    adapters: Vec<(AdapterFacts, LlamaLoraAdapter)>,
    active_adapter: Option<(usize, f32)>,
}

/// Why the worker left the loop that serves one context.
enum Exit {
    Shutdown,
    /// A model file that passed its checks (`check_model`); one that fails them is answered without leaving.
    LoadModel {
        path: PathBuf,
        facts: Box<ModelFacts>,
        progress: Option<LoadProgress>,
        reply: oneshot::Sender<Result<ModelInfo>>,
    },
    /// A new adapter needs `&mut LlamaModel`, which no live context may borrow.
    InitAdapter {
        facts: AdapterFacts,
        scale: f32,
        reply: oneshot::Sender<Result<AdapterInfo>>,
    },
    ContextFailed(EngineError),
    /// A panic ended a command or a step; its request failed. The context may be in any state: make a new one.
    Panicked,
}

struct Worker {
    commands: Receiver<Command>,
    options: EngineOptions,
    jobs: Vec<Job>,
    /// The tokens whose keys and values each sequence holds, in position order.
    cached: Vec<Vec<TokenId>>,
    /// The step at which each sequence last decoded: with a shared KV pool, the least recently used is evicted.
    last_used: Vec<u64>,
    steps: u64,
}

/// A generation the worker is running.
struct Job {
    id: RequestId,
    sequence: usize,
    priority: Priority,
    max_tokens: usize,
    stop_at_eog: bool,
    return_logits: bool,
    prompt: Vec<TokenId>,
    generated: Vec<TokenId>,
    sampler: LlamaSampler,
    /// Greedy without penalties: the argmax of the logits, taken directly (see [`argmax`]).
    plain_greedy: bool,
    /// Guesses tokens ahead for [`speculative_step`]; only plain greedy jobs have one.
    drafter: Option<Drafter>,
    text: TextStream,
    events: EventSender,
    submitted: Instant,
    reused_tokens: Option<usize>,
    timings: Timings,
    last_logits: Option<Vec<f32>>,
    /// The worker step at which this job last ran, for round-robin among equals.
    last_step: u64,
}

impl Job {
    fn token(&self, i: usize) -> TokenId {
        if i < self.prompt.len() {
            self.prompt[i]
        } else {
            self.generated[i - self.prompt.len()]
        }
    }

    fn len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }
}

impl Worker {
    fn new(commands: Receiver<Command>, options: EngineOptions) -> Self {
        Self { commands, options, jobs: Vec::new(), cached: Vec::new(), last_used: Vec::new(), steps: 0 }
    }

    fn run(&mut self) {
        let mut loaded: Option<Loaded> = None;
        loop {
            let exit = match loaded.as_mut() {
                None => self.serve_without_model(),
                Some(loaded) => self.serve_model(loaded),
            };
            match exit {
                Exit::Shutdown => return,
                Exit::LoadModel { path, facts, progress, reply } => {
                    self.fail_all(&EngineError::Context("the model was replaced".to_owned()));
                    // Free the old model before loading the new one: two 1.3B models may not fit.
                    loaded = None;
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        load_model(&path, *facts, progress, &self.options)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(EngineError::ModelLoad { path: path.clone(), reason: panic_message(&*panic) })
                    });
                    let _ = reply.send(result.as_ref().map(|l| l.info.clone()).map_err(Clone::clone));
                    if let Ok(new) = result {
                        self.cached = vec![Vec::new(); new.info.sequences as usize];
                        self.last_used = vec![0; new.info.sequences as usize];
                        loaded = Some(new);
                    }
                }
                Exit::InitAdapter { facts, scale, reply } => {
                    let Some(loaded) = loaded.as_mut() else {
                        let _ = reply.send(Err(EngineError::NoModel));
                        continue;
                    };
                    let result = match loaded.model.lora_adapter_init(&facts.path) {
                        Ok(adapter) => {
                            let info = AdapterInfo { path: facts.path.clone(), scale, step: facts.step };
                            loaded.adapters.push((facts, adapter));
                            loaded.active_adapter = Some((loaded.adapters.len() - 1, scale));
                            Ok(info)
                        }
                        Err(e) => Err(EngineError::InvalidAdapter { path: facts.path, reason: e.to_string() }),
                    };
                    let _ = reply.send(result);
                }
                Exit::ContextFailed(error) => {
                    tracing::error!(%error, "dropping the model");
                    self.fail_all(&error);
                    loaded = None;
                }
                Exit::Panicked => {}
            }
        }
    }

    fn serve_without_model(&mut self) -> Exit {
        loop {
            let Ok(command) = self.commands.recv() else { return Exit::Shutdown };
            match command {
                Command::LoadModel { path, progress, reply } => {
                    if let Some(exit) = self.load_model_exit(path, progress, reply) {
                        return exit;
                    }
                }
                Command::State { reply } => {
                    let _ = reply.send(EngineState::default());
                }
                Command::Cancel { .. } => {}
                Command::Generate { events, .. } => {
                    let _ = events.send(Err(EngineError::NoModel));
                }
                Command::Tokenize { reply, .. } => reply_no_model(reply),
                Command::Detokenize { reply, .. } => reply_no_model(reply),
                Command::ApplyChatTemplate { reply, .. } => reply_no_model(reply),
                Command::SetAdapter { reply, .. } => reply_no_model(reply),
                Command::RemoveAdapter { reply } => reply_no_model(reply),
                Command::ClearSequence { reply, .. } => reply_no_model(reply),
            }
        }
    }

    fn serve_model(&mut self, loaded: &mut Loaded) -> Exit {
        let Loaded { model, info, facts, adapters, active_adapter } = loaded;
        let model: &LlamaModel = model;
        let backend = match backend() {
            Ok(backend) => backend,
            Err(e) => return Exit::ContextFailed(e),
        };
        let mut ctx = match model.new_context(backend, context_params(&self.options, info)) {
            Ok(ctx) => ctx,
            Err(e) => return Exit::ContextFailed(EngineError::Context(e.to_string())),
        };
        // A fresh context holds nothing: jobs in flight re-decode what they need on their next step.
        self.cached.iter_mut().for_each(Vec::clear);
        if let Some((index, scale)) = *active_adapter {
            if let Err(e) = ctx.lora_adapter_set(&mut adapters[index].1, scale) {
                tracing::error!(error = %e, "could not re-apply the LoRA adapter");
                *active_adapter = None;
            }
        }
        let mut batch = LlamaBatch::new(self.options.batch_size as usize, 1);
        loop {
            // Read every waiting command before the next step, so a cancel or a more urgent request is seen
            // within one step. With nothing to run, block until something arrives.
            let command = if self.jobs.is_empty() {
                match self.commands.recv() {
                    Ok(command) => command,
                    Err(_) => return Exit::Shutdown,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => {
                        let stepped =
                            std::panic::catch_unwind(AssertUnwindSafe(|| self.step(&mut ctx, model, info, &mut batch)));
                        if let Err(panic) = stepped {
                            return self.step_panicked(&*panic);
                        }
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return Exit::Shutdown,
                }
            };
            let mut session = Session {
                ctx: &mut ctx,
                model,
                info,
                facts,
                adapters: &mut *adapters,
                active_adapter: &mut *active_adapter,
            };
            // A panic while handling a command drops its reply, which its caller sees as an internal error.
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(command, &mut session))) {
                Ok(Some(exit)) => return exit,
                Ok(None) => {}
                Err(panic) => {
                    tracing::error!(panic = panic_message(&*panic), "a command panicked in the engine");
                    return Exit::Panicked;
                }
            }
        }
    }

    /// Handles one command; returns an exit when the context must go.
    fn handle(&mut self, command: Command, session: &mut Session<'_, '_>) -> Option<Exit> {
        match command {
            Command::LoadModel { path, progress, reply } => return self.load_model_exit(path, progress, reply),
            Command::Tokenize { text, parse_special, reply } => {
                let _ = reply.send(Ok(tokenize(session.model, &text, parse_special)));
            }
            Command::Detokenize { tokens, reply } => {
                let _ = reply.send(detokenize(session.model, session.info, &tokens));
            }
            Command::ApplyChatTemplate { messages, reply } => {
                let _ = reply.send(Ok(apply_chat_template(session.model, &messages)));
            }
            Command::SetAdapter { path, scale, reply } => return self.set_adapter(session, path, scale, reply),
            Command::RemoveAdapter { reply } => {
                let result = match session.active_adapter.take() {
                    Some((index, _)) => session
                        .ctx
                        .lora_adapter_remove(&mut session.adapters[index].1)
                        .map(|()| self.clear_all(session.ctx))
                        .map_err(|e| EngineError::Context(format!("removing the adapter: {e}"))),
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
            Command::State { reply } => {
                let _ = reply.send(EngineState {
                    model: Some(session.info.clone()),
                    adapter: session
                        .active_adapter
                        .map(|(index, scale)| adapter_info(&session.adapters[index].0, scale)),
                    cached_tokens: self.cached.iter().map(Vec::len).collect(),
                    pending_requests: self.jobs.len(),
                });
            }
            Command::ClearSequence { sequence, reply } => {
                let result = self.check_sequence(sequence).map(|seq| self.clear_sequence(session.ctx, seq));
                let _ = reply.send(result);
            }
            Command::Generate { id, request, events } => match self.new_job(id, *request, events.clone(), session) {
                Ok(job) => self.jobs.push(job),
                Err(e) => {
                    let _ = events.send(Err(e));
                }
            },
            Command::Cancel { id } => {
                if let Some(index) = self.jobs.iter().position(|job| job.id == id) {
                    let job = self.jobs.remove(index);
                    finish(job, StopReason::Cancelled);
                }
            }
        }
        None
    }

    fn set_adapter(
        &mut self,
        session: &mut Session<'_, '_>,
        path: PathBuf,
        scale: f32,
        reply: oneshot::Sender<Result<AdapterInfo>>,
    ) -> Option<Exit> {
        if !scale.is_finite() {
            let _ = reply.send(Err(EngineError::InvalidAdapter { path, reason: format!("bad scale {scale}") }));
            return None;
        }
        let facts = match validate::adapter_file(&path, session.facts) {
            Ok(facts) => facts,
            Err(e) => {
                let _ = reply.send(Err(e));
                return None;
            }
        };
        // The same path and the same version of the file: the adapter loaded before. A file rewritten since (live
        // fine-tuning) is loaded anew; llama.cpp frees the older one only with the model.
        let Some(index) = session.adapters.iter().position(|(loaded, _)| *loaded == facts) else {
            return Some(Exit::InitAdapter { facts, scale, reply });
        };
        let result = session
            .ctx
            .lora_adapter_set(&mut session.adapters[index].1, scale)
            .map_err(|e| EngineError::InvalidAdapter { path: facts.path.clone(), reason: e.to_string() });
        if result.is_ok() {
            *session.active_adapter = Some((index, scale));
        }
        // Whatever happened, cached keys and values may no longer match the weights.
        self.clear_all(session.ctx);
        let _ = reply.send(result.map(|()| adapter_info(&facts, scale)));
        None
    }

    fn check_sequence(&self, sequence: SequenceId) -> Result<usize> {
        let sequences = self.cached.len();
        if (sequence.0 as usize) < sequences {
            Ok(sequence.0 as usize)
        } else {
            Err(EngineError::InvalidSequence { sequence: sequence.0, sequences: sequences as u32 })
        }
    }

    fn clear_sequence(&mut self, ctx: &mut LlamaContext<'_>, seq: usize) {
        // Removing a whole sequence's range cannot fail for a valid id.
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        self.cached[seq].clear();
    }

    fn clear_all(&mut self, ctx: &mut LlamaContext<'_>) {
        ctx.clear_kv_cache();
        self.cached.iter_mut().for_each(Vec::clear);
    }

    /// Validates a request completely, so that nothing it carries can reach an assert inside llama.cpp.
    fn new_job(
        &self,
        id: RequestId,
        request: GenerateRequest,
        events: EventSender,
        session: &Session<'_, '_>,
    ) -> Result<Job> {
        let sequence = self.check_sequence(request.sequence)?;
        request.sampling.validate()?;
        let prompt = match request.prompt {
            // Special tokens written in the text count as such, as in transformers' `tokenizer(text)`.
            Prompt::Text(text) => tokenize(session.model, &text, true),
            Prompt::Tokens(tokens) => tokens,
        };
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        check_tokens(&prompt, session.info.n_vocab)?;
        let context_size = session.info.context_size as usize;
        if prompt.len() > context_size {
            return Err(EngineError::PromptTooLong { prompt_tokens: prompt.len(), context_size });
        }
        let plain_greedy = request.sampling.is_greedy() && request.sampling.repeat_penalty == 1.0;
        let drafter = match request.draft {
            Drafting::Off => None,
            Drafting::Lookup(options) => {
                options.validate(session.info.n_vocab).map_err(EngineError::InvalidDraft)?;
                // Sampled tokens cannot be checked against a draft without changing their distribution; those
                // jobs decode one token at a time.
                plain_greedy.then(|| Drafter::new(options))
            }
        };
        let mut sampler = request.sampling.build(session.info.n_vocab);
        if request.sampling.repeat_penalty != 1.0 {
            // The penalty looks at recent tokens, the prompt's included, as llama.cpp's own tools do.
            sampler.accept_many(prompt.iter().map(|&t| LlamaToken(t)));
        }
        Ok(Job {
            id,
            sequence,
            priority: request.priority,
            max_tokens: request.max_tokens as usize,
            stop_at_eog: request.stop_at_eog,
            return_logits: request.return_logits,
            prompt,
            generated: Vec::new(),
            sampler,
            plain_greedy,
            drafter,
            text: TextStream::new(request.stop_strings, request.stop_predicate),
            events,
            submitted: Instant::now(),
            reused_tokens: None,
            timings: Timings::default(),
            last_logits: None,
            last_step: 0,
        })
    }

    /// The job to run next: among the oldest job of each sequence (a sequence serves its requests in order), the
    /// highest priority; among equals, the one that waited longest since it last ran.
    fn next_job(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (index, job) in self.jobs.iter().enumerate() {
            if self.jobs[..index].iter().any(|earlier| earlier.sequence == job.sequence) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let current = &self.jobs[b];
                    job.priority > current.priority
                        || (job.priority == current.priority && job.last_step < current.last_step)
                }
            };
            if better {
                best = Some(index);
            }
        }
        best
    }

    /// Runs one step of the chosen job: decodes a prompt chunk, or the last sampled token, then samples.
    fn step(&mut self, ctx: &mut LlamaContext<'_>, model: &LlamaModel, info: &ModelInfo, batch: &mut LlamaBatch) {
        let Some(index) = self.next_job() else { return };
        self.steps += 1;
        let steps = self.steps;
        let context_size = info.context_size as usize;
        let job = &mut self.jobs[index];
        job.last_step = steps;
        let seq = job.sequence;
        let target_len = job.len();
        if target_len > context_size {
            let job = self.jobs.remove(index);
            finish(job, StopReason::ContextFull);
            return;
        }

        // Reuse what the sequence already holds; the last token is always decoded again because its logits
        // are needed and the context keeps only those of the latest decode.
        let cached = &mut self.cached[seq];
        let mut common = cached.iter().enumerate().take_while(|&(i, &t)| i < target_len && job.token(i) == t).count();
        common = common.min(target_len - 1);
        if cached.len() > common {
            // Trimming the tail of a sequence is a partial `seq_rm`, which llama.cpp supports (unlike a partial
            // `seq_cp`).
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), Some(common as u32), None);
            cached.truncate(common);
        }
        let in_prompt = common < job.prompt.len();
        let started = Instant::now();
        if job.reused_tokens.is_none() {
            job.reused_tokens = Some(common.min(job.prompt.len()));
            job.timings.queue_ms = ms_between(job.submitted, started);
        }

        let end = (common + self.options.batch_size as usize).min(target_len);
        self.last_used[seq] = steps;
        // A generation step (only the last token to decode) may decode a draft along with it.
        if !in_prompt && common + 1 == target_len {
            let batch_size = self.options.batch_size as usize;
            if let Some(outcome) = speculative_step(job, cached, ctx, model, batch, context_size, batch_size) {
                job.timings.gen_ms += ms_between(started, Instant::now());
                if let Some(reason) = outcome {
                    let job = self.jobs.remove(index);
                    finish(job, reason);
                }
                return;
            }
        }
        batch.clear();
        for position in common..end {
            let wants_logits = position + 1 == target_len;
            if let Err(e) = batch.add(LlamaToken(job.token(position)), position as i32, &[seq as i32], wants_logits) {
                let job = self.jobs.remove(index);
                fail(job, EngineError::Decode(e.to_string()));
                return;
            }
        }
        if let Err(e) = self.decode_making_room(ctx, batch, seq) {
            // The sequence's state is unknown after a failed decode: drop it.
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            self.cached[seq].clear();
            let job = self.jobs.remove(index);
            match e {
                // Even alone in the pool the sequence does not fit.
                DecodeError::NoKvCacheSlot => finish(job, StopReason::ContextFull),
                e => fail(job, EngineError::Decode(e.to_string())),
            }
            return;
        }
        // On a GPU, llama_decode only queues the work. Waiting for it here makes a step last as long as its
        // decode really takes, so the timings are true and a cancel still lands within one step. (Sampling would
        // wait anyway; a prompt chunk without sampling would not.)
        ctx.synchronize();
        let job = &mut self.jobs[index];
        self.cached[seq].extend((common..end).map(|i| job.token(i)));
        if in_prompt {
            job.timings.prompt_tokens_decoded += end - common;
        } else {
            job.timings.gen_tokens_decoded += end - common;
        }
        if end < target_len {
            job.timings.prompt_ms += ms_between(started, Instant::now());
            return;
        }

        let logits_index = (end - common - 1) as i32;
        if job.return_logits && job.last_logits.is_none() {
            job.last_logits = Some(ctx.get_logits_ith(logits_index).to_vec());
        }
        let outcome = if job.generated.len() >= job.max_tokens {
            Some(StopReason::MaxTokens)
        } else if target_len >= context_size {
            Some(StopReason::ContextFull)
        } else {
            sample_next(job, ctx, model, logits_index)
        };
        let elapsed = ms_between(started, Instant::now());
        if in_prompt {
            job.timings.prompt_ms += elapsed;
        } else {
            job.timings.gen_ms += elapsed;
        }
        if let Some(reason) = outcome {
            let job = self.jobs.remove(index);
            finish(job, reason);
        }
    }

    /// Decodes `batch` for sequence `seq`. When the KV cache has no room (a pool shared by all sequences), evicts
    /// the least recently used other sequence and tries again; an evicted sequence re-decodes its tokens the next
    /// time one of its jobs runs, as after any other cache miss.
    fn decode_making_room(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
        seq: usize,
    ) -> Result<(), DecodeError> {
        loop {
            match ctx.decode(batch) {
                Err(DecodeError::NoKvCacheSlot) => {
                    let victim = (0..self.cached.len())
                        .filter(|&other| other != seq && !self.cached[other].is_empty())
                        .min_by_key(|&other| self.last_used[other]);
                    let Some(victim) = victim else { return Err(DecodeError::NoKvCacheSlot) };
                    tracing::debug!(
                        sequence = seq,
                        evicted = victim,
                        tokens = self.cached[victim].len(),
                        "KV pool full"
                    );
                    self.clear_sequence(ctx, victim);
                }
                other => return other,
            }
        }
    }

    /// Checks a model file before anything is unloaded: one that fails its checks is answered here, and the working
    /// model, its context and the generations on it stay as they are (F5 on a bad path in the TUI).
    fn load_model_exit(
        &self,
        path: PathBuf,
        progress: Option<LoadProgress>,
        reply: oneshot::Sender<Result<ModelInfo>>,
    ) -> Option<Exit> {
        match check_model(&path, &self.options) {
            Ok(facts) => Some(Exit::LoadModel { path, facts: Box::new(facts), progress, reply }),
            Err(error) => {
                let _ = reply.send(Err(error));
                None
            }
        }
    }

    /// After a panic in `step`: the job that was running (the one stamped with this step) fails; the others go on
    /// in a fresh context.
    fn step_panicked(&mut self, panic: &(dyn std::any::Any + Send)) -> Exit {
        let error = EngineError::Internal(panic_message(panic));
        tracing::error!(%error, "a generation step panicked in the engine");
        if let Some(index) = self.jobs.iter().position(|job| job.last_step == self.steps) {
            fail(self.jobs.remove(index), error);
        }
        Exit::Panicked
    }

    fn fail_all(&mut self, error: &EngineError) {
        for job in self.jobs.drain(..) {
            fail(job, error.clone());
        }
    }
}

/// The parts of the loaded model a command may need, borrowed for one command.
struct Session<'a, 'm> {
    ctx: &'a mut LlamaContext<'m>,
    model: &'a LlamaModel,
    info: &'a ModelInfo,
    facts: &'a ModelFacts,
    adapters: &'a mut Vec<(AdapterFacts, LlamaLoraAdapter)>,
    active_adapter: &'a mut Option<(usize, f32)>,
}

/// Samples the next token and streams its text. Returns why the generation ends, if it does.
fn sample_next(job: &mut Job, ctx: &LlamaContext<'_>, model: &LlamaModel, logits_index: i32) -> Option<StopReason> {
    let token = if job.plain_greedy {
        LlamaToken(argmax(ctx.get_logits_ith(logits_index)))
    } else {
        job.sampler.sample(ctx, -1)
    };
    let mut delta = Delta::default();
    let outcome = push_token(job, model, token, &mut delta);
    send_delta(job, delta).or(outcome)
}

/// The tokens a step generated and the text they released, sent as one event.
#[derive(Default)]
struct Delta {
    tokens: Vec<TokenId>,
    text: String,
}

/// Appends a generated token: ends at end-of-generation, else streams its text through the stop rules. Returns
/// why the generation ends, if it does.
fn push_token(job: &mut Job, model: &LlamaModel, token: LlamaToken, delta: &mut Delta) -> Option<StopReason> {
    job.generated.push(token.0);
    if job.stop_at_eog && model.vocab().is_eog(token) {
        return Some(StopReason::EndOfGeneration);
    }
    let piece = model.vocab().token_to_piece(token, false, None);
    let (text, stop) = job.text.push(&piece);
    delta.tokens.push(token.0);
    delta.text.push_str(&text);
    match stop {
        Some(TextStop::StopString(stop)) => Some(StopReason::StopString(stop)),
        Some(TextStop::Predicate) => Some(StopReason::Predicate),
        None if job.generated.len() >= job.max_tokens => Some(StopReason::MaxTokens),
        None => None,
    }
}

/// Sends a step's tokens to the caller; `Some(Cancelled)` when nobody listens any more (the caller dropped the
/// stream).
fn send_delta(job: &Job, delta: Delta) -> Option<StopReason> {
    if delta.tokens.is_empty() {
        return None;
    }
    let Delta { tokens, text } = delta;
    job.events.send(Ok(GenerationEvent::Delta { tokens, text })).is_err().then_some(StopReason::Cancelled)
}

/// A generation step that decodes the job's last token together with a draft of the tokens after it (see
/// [`super::draft`]), in one batch with logits at every position. The model's greedy token at each position is
/// pushed exactly as a plain step would push it, while it confirms the draft: the first one that differs from the
/// draft, or that ends the generation, is the step's last. So the tokens, the text and the stop are the plain
/// steps' own. The keys and values of the rejected part of the draft are trimmed from the cache, which afterwards
/// holds what plain decoding would hold: every token of the job but the last.
///
/// Returns `None`, with the cache and the job as they were, when there is nothing to draft or the batch cannot be
/// decoded; the caller then runs the plain step. Else returns the step's outcome: why the generation ends, if it
/// does.
fn speculative_step(
    job: &mut Job,
    cached: &mut Vec<TokenId>,
    ctx: &mut LlamaContext<'_>,
    model: &LlamaModel,
    batch: &mut LlamaBatch,
    context_size: usize,
    batch_size: usize,
) -> Option<Option<StopReason>> {
    let last = job.len() - 1;
    // Room for the draft: it must fit the batch, leave the sequence room for the token sampled after it (as a
    // plain step would, which ends the generation when the sequence is full), and not draft past `max_tokens`.
    let room = (batch_size - 1)
        .min(context_size.saturating_sub(job.len() + 1))
        .min(job.max_tokens.saturating_sub(job.generated.len() + 1));
    let tokens: Vec<TokenId> = job.prompt.iter().chain(&job.generated).copied().collect();
    let draft = job.drafter.as_mut()?.draft(&tokens, room);
    if draft.is_empty() {
        return None;
    }
    let seq = job.sequence;
    batch.clear();
    for (i, &token) in std::iter::once(&tokens[last]).chain(&draft).enumerate() {
        batch.add(LlamaToken(token), (last + i) as i32, &[seq as i32], true).ok()?;
    }
    if ctx.decode(batch).is_err() {
        // Whatever part of the batch made it into the cache goes: the plain step decodes the last token alone (and
        // handles the failure if that fails too). Drafting pauses as after a rejected draft.
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), Some(last as u32), None);
        if let Some(drafter) = job.drafter.as_mut() {
            drafter.record(draft.len(), 0);
        }
        return None;
    }
    ctx.synchronize();

    let mut delta = Delta::default();
    let mut outcome = None;
    let mut confirmed = 0;
    for i in 0..=draft.len() {
        let token = argmax(ctx.get_logits_ith(i as i32));
        outcome = push_token(job, model, LlamaToken(token), &mut delta);
        let confirms = draft.get(i) == Some(&token);
        confirmed += usize::from(confirms);
        if !confirms || outcome.is_some() {
            break;
        }
    }
    // The step generated `produced` tokens; all but the last of them are the decoded draft tokens to keep.
    let produced = job.len() - 1 - last;
    if produced <= draft.len() {
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), Some((last + produced) as u32), None);
    }
    cached.push(tokens[last]);
    cached.extend(&draft[..produced - 1]);
    job.timings.gen_tokens_decoded += produced;
    job.timings.drafted += draft.len();
    job.timings.draft_accepted += confirmed;
    if let Some(drafter) = job.drafter.as_mut() {
        drafter.record(draft.len(), confirmed);
    }
    tracing::trace!(drafted = draft.len(), accepted = confirmed, "verify step");
    Some(send_delta(job, delta).or(outcome))
}

/// The index of the largest logit, the lower one among equals: the token llama.cpp's greedy sampler picks, without
/// first copying the whole vocabulary into its candidate array. That copy and scan take ~40 µs per token, a few
/// percent of a token's time on a fast GPU.
fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

fn finish(mut job: Job, stop_reason: StopReason) {
    let stopped_by_text = matches!(stop_reason, StopReason::StopString(_) | StopReason::Predicate);
    if !stopped_by_text {
        let rest = job.text.flush();
        if !rest.is_empty() {
            let _ = job.events.send(Ok(GenerationEvent::Delta { tokens: Vec::new(), text: rest }));
        }
    }
    let summary = GenerationSummary {
        reused_tokens: job.reused_tokens.unwrap_or(0),
        text: job.text.text().to_owned(),
        prompt_tokens: job.prompt,
        tokens: job.generated,
        stop_reason,
        timings: job.timings,
        last_logits: job.last_logits,
    };
    // The caller may have gone away; the result is then simply dropped.
    let _ = job.events.send(Ok(GenerationEvent::Finished(summary)));
}

fn fail(job: Job, error: EngineError) {
    let _ = job.events.send(Err(error));
}

fn reply_no_model<T>(reply: oneshot::Sender<Result<T>>) {
    let _ = reply.send(Err(EngineError::NoModel));
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1000.0
}

/// Tokenizes as the model's GGUF asks: with a BOS token only where it says so (phi's does not).
fn tokenize(model: &LlamaModel, text: &str, parse_special: bool) -> Vec<TokenId> {
    model.vocab().tokenize(text.as_bytes(), true, parse_special).into_iter().map(|t| t.0).collect()
}

fn check_tokens(tokens: &[TokenId], n_vocab: i32) -> Result<()> {
    match tokens.iter().find(|&&t| t < 0 || t >= n_vocab) {
        Some(&token) => Err(EngineError::InvalidToken { token, n_vocab }),
        None => Ok(()),
    }
}

fn detokenize(model: &LlamaModel, info: &ModelInfo, tokens: &[TokenId]) -> Result<String> {
    check_tokens(tokens, info.n_vocab)?;
    let mut bytes = Vec::new();
    for &token in tokens {
        bytes.extend(model.vocab().token_to_piece(LlamaToken(token), true, None));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `messages` (role, content) laid out by the model's own chat template, ending where the assistant's answer
/// starts; `None` when the model has no template, or one that llama.cpp's template engine does not know.
fn apply_chat_template(model: &LlamaModel, messages: &[(String, String)]) -> Option<String> {
    let template = model.chat_template(None).ok()?;
    // A NUL cannot cross into C; it has no business in a chat message anyway.
    let chat: Vec<LlamaChatMessage> = messages
        .iter()
        .filter_map(|(role, content)| LlamaChatMessage::new(role.replace('\0', ""), content.replace('\0', "")).ok())
        .collect();
    match model.apply_chat_template(&template, &chat, true) {
        Ok(prompt) => Some(prompt),
        Err(error) => {
            tracing::warn!(%error, "the model's chat template cannot be applied; using the plain layout");
            None
        }
    }
}

/// Everything that can be known about a load before llama.cpp starts it: the file (see `validate::model_file`) and
/// the context it would get, which must suit the model and, when the KV cache lives in RAM, fit in it.
fn check_model(path: &Path, options: &EngineOptions) -> Result<ModelFacts> {
    let facts = validate::model_file(path)?;
    let backend = backend()?;
    // The same size as `context_params` gives the context.
    let per_sequence = options.context_size.unwrap_or(facts.hparams.context_length).max(16);
    let on_cpu = !backend.supports_gpu_offload() || gpu_layers(options, backend) == 0;
    validate::context_fits(
        &facts.hparams,
        per_sequence,
        options.sequences,
        options.context_beyond_training,
        if on_cpu { validate::available_memory() } else { None },
    )
    .map_err(|reason| EngineError::Context(format!("{}: {reason}", path.display())))?;
    Ok(facts)
}

fn gpu_layers(options: &EngineOptions, backend: &LlamaBackend) -> u32 {
    options.gpu_layers.unwrap_or(if backend.supports_gpu_offload() { 999 } else { 0 })
}

fn load_model(
    path: &Path,
    facts: ModelFacts,
    progress: Option<LoadProgress>,
    options: &EngineOptions,
) -> Result<Loaded> {
    let backend = backend()?;
    let gpu_layers = gpu_layers(options, backend);
    let mut params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers).with_main_gpu(options.main_gpu as i32);
    if let Some(mut progress) = progress {
        params = params.with_progress_callback(move |fraction| {
            progress(fraction);
            true
        });
    }
    let model = LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| EngineError::ModelLoad { path: path.to_path_buf(), reason: e.to_string() })?;

    // llama.cpp offloads the output layer too: n_layer + 1 layers in all.
    let all_layers = model.n_layer() + 1;
    let gpu = (gpu_layers > 0).then(|| main_gpu_device(options.main_gpu)).flatten();
    let (device, gpu_layers) = match gpu {
        None => ("CPU".to_owned(), 0),
        Some(gpu) if gpu_layers >= all_layers => (gpu, all_layers),
        Some(gpu) => (format!("{gpu}, {gpu_layers}/{all_layers} layers"), gpu_layers),
    };
    let vocab = model.vocab();
    let fim = [vocab.fim_pre().0, vocab.fim_suf().0, vocab.fim_mid().0];
    let threads = options.threads.unwrap_or_else(default_threads);
    let mut info = ModelInfo {
        path: path.to_path_buf(),
        name: facts.name.clone(),
        architecture: facts.architecture.clone(),
        file_type: facts.file_type.clone(),
        parameters: model.n_params(),
        size_bytes: model.size(),
        n_vocab: model.n_vocab(),
        n_layer: model.n_layer(),
        context_train: model.n_ctx_train(),
        context_size: 0,
        sequences: options.sequences,
        threads,
        device,
        gpu_layers,
        flash_attention: options.flash_attention,
        has_chat_template: model.chat_template(None).is_ok(),
        fim_tokens: fim.iter().all(|&t| t >= 0).then_some(fim),
        eos_token: vocab.eos().0,
    };
    // Create one context now, so that options the machine cannot satisfy fail the load instead of a request.
    let ctx = model
        .new_context(backend, context_params(options, &info))
        .map_err(|e| EngineError::Context(format!("{}: {e}", path.display())))?;
    info.context_size = match options.kv_cache {
        KvCacheLayout::Shared(_) => ctx.n_ctx().min(options.context_size.unwrap_or(info.context_train).max(16)),
        KvCacheLayout::PerSequence => ctx.n_ctx() / options.sequences,
    };
    drop(ctx);
    Ok(Loaded { model, info, facts, adapters: Vec::new(), active_adapter: None })
}

/// The GPU that holds the offloaded layers, as `description (backend)`, e.g. `NVIDIA H200 (CUDA)`. llama.cpp
/// numbers `main_gpu` among the GPU devices, in ggml's device order.
fn main_gpu_device(main_gpu: u32) -> Option<String> {
    let gpus: Vec<_> = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu))
        .collect();
    let gpu = gpus.get(main_gpu as usize).or(gpus.first())?;
    let name = if gpu.description.is_empty() { &gpu.name } else { &gpu.description };
    Some(format!("{name} ({})", gpu.backend))
}

fn context_params(options: &EngineOptions, info: &ModelInfo) -> LlamaContextParams {
    let per_sequence = options.context_size.unwrap_or(info.context_train).max(16);
    // One KV stream per sequence, each of `per_sequence` tokens; or one pool that every sequence draws from.
    let (n_ctx, unified) = match options.kv_cache {
        KvCacheLayout::Shared(pool) => (pool.unwrap_or(per_sequence).max(16), true),
        KvCacheLayout::PerSequence => (per_sequence.saturating_mul(options.sequences), false),
    };
    let threads = i32::try_from(info.threads).unwrap_or(i32::MAX);
    let flash_attention = match options.flash_attention {
        FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
    };
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(options.batch_size)
        .with_n_ubatch(options.batch_size)
        .with_n_seq_max(options.sequences)
        .with_kv_unified(unified)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_flash_attention_policy(flash_attention)
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn adapter_info(facts: &AdapterFacts, scale: f32) -> AdapterInfo {
    AdapterInfo { path: facts.path.clone(), scale, step: facts.step }
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_picks_the_lower_id_among_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30, -1e30]), 1);
    }
}
