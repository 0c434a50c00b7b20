//! Fine-tuning as a mode of the product (the TUI's fine-tune screen, `phi-tui finetune --live`): a run kept in the
//! data directory, whose every improved adapter is written where the session can load it while training goes on.
//!
//! A run lives in `adapters/NAME/` of the data directory:
//! * `NAME.gguf`: the best adapter so far (lowest validation loss), replaced write-then-rename at each improvement
//!   and carrying its step ([`crate::engine::TRAINING_STEP_KEY`]), so the session can apply it mid-run;
//! * `provenance.json`: base model, data, settings, state (`training`, `stopped`, `finished`) and losses;
//! * `checkpoint/`: the trainer's checkpoint, which a later run of the same settings resumes exactly.
//!
//! This module knows nothing of sessions: whoever runs it gets [`LiveEvent::AdapterWritten`] and applies the file
//! (the TUI and the CLI call `InferenceSession::set_adapter`). Training gives way to interactive use through
//! [`LiveControl`], the [`StepGate`] asked between two steps, and runs on a pool of its own, smaller than the
//! machine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::data::{load_dataset, load_tokenizer, DataOptions, Dataset, Sequence};
use super::error::{FinetuneError, Result};
use super::gguf_adapter::write_adapter_gguf_at_step;
use super::lora::{LoraAdapter, LoraTarget};
use super::model::BaseModel;
use super::trainer::{StepGate, TrainEvent, TrainOptions, Trainer};
use super::CHECKPOINT_FILE;

/// Where runs are kept, under the data directory.
pub const ADAPTERS_DIR: &str = "adapters";
pub const PROVENANCE_FILE: &str = "provenance.json";
/// How long a waiting gate sleeps before it looks again.
const GATE_POLL: Duration = Duration::from_millis(10);

/// The directory of run `name`.
pub fn run_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(ADAPTERS_DIR).join(name)
}

/// The adapter GGUF of run `name`.
pub fn adapter_path(data_dir: &Path, name: &str) -> PathBuf {
    run_dir(data_dir, name).join(format!("{name}.gguf"))
}

/// A run's name from its data: the directory's or file's stem (`~/src/myrepo` → `myrepo`), in file-name-safe
/// characters.
pub fn name_for_data(data: &Path) -> String {
    let canonical = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    let stem = canonical.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if name.trim_matches('-').is_empty() {
        "adapter".to_owned()
    } else {
        name
    }
}

/// What a run trains and how; [`LiveSettings::new`] has the defaults of the fine-tune screen.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// The base model: a checkpoint directory or an unquantized GGUF.
    pub base: PathBuf,
    /// A directory of Python files, a `.py` file, or JSONL.
    pub data: PathBuf,
    pub name: String,
    pub rank: usize,
    pub alpha: f32,
    pub targets: BTreeSet<LoraTarget>,
    pub val_fraction: f64,
    /// The trainer's settings; `checkpoint_dir` is set by [`LiveSettings::prepare`] to the run's.
    pub train: TrainOptions,
    /// Threads for training (0: half the cores, at least one), so interactive requests keep the rest.
    pub threads: usize,
}

impl LiveSettings {
    pub fn new(base: PathBuf, data: PathBuf) -> Self {
        let name = name_for_data(&data);
        let targets = LoraTarget::parse_list("q_proj,k_proj,v_proj,dense,fc1,fc2").unwrap_or_default();
        let train = TrainOptions { seq_len: 256, eval_every: 10, ..TrainOptions::default() };
        // A fifth of the files held out: validation decides which adapter the session gets, so it needs some data.
        LiveSettings { base, data, name, rank: 8, alpha: 16.0, targets, val_fraction: 0.2, train, threads: 0 }
    }

    /// The run's directory under `data_dir`.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        run_dir(data_dir, &self.name)
    }

    /// Loads the base model and the data, and measures one step: what the screen shows before training starts.
    pub fn prepare(mut self, data_dir: &Path) -> Result<Prepared> {
        if self.rank == 0 {
            return Err(FinetuneError::Option("the rank must be at least 1".to_owned()));
        }
        let model = BaseModel::load(&self.base, &candle_core::Device::Cpu)?;
        let tokenizer = load_tokenizer(&model.source)?;
        let seq_len = self.train.seq_len.min(model.config.context_length);
        self.train.seq_len = seq_len;
        let options = DataOptions {
            seq_len,
            val_fraction: self.val_fraction,
            seed: self.train.seed,
            vocab_size: Some(model.config.vocab_size),
        };
        let data = load_dataset(&self.data, &tokenizer, &options)?;
        self.train.checkpoint_dir = Some(self.dir(data_dir).join("checkpoint"));
        let pool = training_pool(self.threads)?;
        let adapter = self.initial_adapter(&model)?;
        let (seconds_per_step, steps_per_epoch, total_steps) = pool.install(|| -> Result<_> {
            let trainer = Trainer::new(&model, &data, adapter, self.train.clone())?;
            let batch: Vec<&Sequence> = data.train.iter().take(self.train.batch_size).collect();
            let started = Instant::now();
            trainer.gradients(&batch)?;
            let seconds = started.elapsed().as_secs_f64() * self.train.grad_accum as f64;
            Ok((seconds, trainer.steps_per_epoch(), trainer.total_steps()))
        })?;
        let summary = DataSummary {
            train_sequences: data.train.len(),
            validation_sequences: data.validation.len(),
            train_tokens: data.train_tokens(),
            steps_per_epoch,
            total_steps,
            seconds_per_step,
        };
        let resumable = self.train.checkpoint_dir.as_deref().is_some_and(|d| d.join(CHECKPOINT_FILE).is_file());
        Ok(Prepared { settings: self, model, data, summary, resumable, data_dir: data_dir.to_path_buf() })
    }

    fn initial_adapter(&self, model: &BaseModel) -> Result<LoraAdapter> {
        LoraAdapter::init_random(&model.config, self.rank, self.alpha, &self.targets, self.train.seed)
    }
}

/// The data and the device, as the screen shows them before a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSummary {
    pub train_sequences: usize,
    pub validation_sequences: usize,
    pub train_tokens: usize,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// One optimizer step's forward and backward pass, measured on the first batch.
    pub seconds_per_step: f64,
}

impl DataSummary {
    pub fn seconds_per_epoch(&self) -> f64 {
        self.seconds_per_step * self.steps_per_epoch as f64
    }
}

/// A run ready to start: model and data loaded.
pub struct Prepared {
    pub settings: LiveSettings,
    pub summary: DataSummary,
    /// The run's directory holds a checkpoint of these settings' run: [`Prepared::run`] with `resume` continues it.
    pub resumable: bool,
    model: BaseModel,
    data: Dataset,
    data_dir: PathBuf,
}

/// What a live run reports (besides the trainer's events).
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    Train(TrainEvent),
    /// A better adapter is on disk at `path`: apply it.
    AdapterWritten {
        step: u64,
        validation_loss: Option<f64>,
        path: PathBuf,
    },
}

/// How a live run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOutcome {
    pub state: RunState,
    pub steps_done: u64,
    pub total_steps: u64,
    /// The adapter kept: the best one (or the last, without validation data).
    pub adapter: PathBuf,
    pub provenance: Provenance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Training,
    Stopped,
    Finished,
}

/// Where an adapter comes from, kept beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub name: String,
    pub base_model: PathBuf,
    pub data: PathBuf,
    pub state: RunState,
    /// The step of the adapter file.
    pub adapter_step: u64,
    pub steps_done: u64,
    pub total_steps: u64,
    pub settings: serde_json::Value,
    pub train_sequences: usize,
    pub validation_sequences: usize,
    pub train_tokens: usize,
    pub last_train_loss: Option<f64>,
    pub best_validation_loss: Option<f64>,
    pub phi_tui_version: String,
}

impl Provenance {
    pub fn read(run_dir: &Path) -> Result<Provenance> {
        let path = run_dir.join(PROVENANCE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| FinetuneError::io(&path, "cannot read", e))?;
        serde_json::from_slice(&bytes).map_err(|e| FinetuneError::data(&path, None, e.to_string()))
    }

    fn write(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(PROVENANCE_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| FinetuneError::data(&path, None, e.to_string()))?;
        phi_converters::write_atomically(&path, &bytes).map_err(|e| FinetuneError::io(&path, "cannot write", e))
    }
}

/// The finished and stopped runs in `data_dir` (name, provenance), by name; for F6 and `lora = "NAME"`.
pub fn list_runs(data_dir: &Path) -> Vec<(String, Provenance)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(ADAPTERS_DIR)) else { return Vec::new() };
    let mut runs: Vec<(String, Provenance)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let provenance = Provenance::read(&entry.path()).ok()?;
            adapter_path(data_dir, &name).is_file().then_some((name, provenance))
        })
        .collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    runs
}

/// Pause, stop and give way, between two steps. Shared between the training thread and whoever drives it.
pub struct LiveControl {
    stop: AtomicBool,
    pause: AtomicBool,
    /// Whether an interactive request (a completion, a chat reply) is running; training waits while it is.
    busy: Box<dyn Fn() -> bool + Send + Sync>,
}

impl LiveControl {
    pub fn new(busy: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        LiveControl { stop: AtomicBool::new(false), pause: AtomicBool::new(false), busy: Box::new(busy) }
    }

    /// Stops before the next step (a checkpoint is saved; the best adapter stays).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Pauses (or resumes) before the next step; returns whether it is now paused.
    pub fn toggle_pause(&self) -> bool {
        !self.pause.fetch_xor(true, Ordering::SeqCst)
    }

    pub fn paused(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }
}

impl StepGate for LiveControl {
    fn proceed(&self) -> bool {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if !self.pause.load(Ordering::SeqCst) && !(self.busy)() {
                return true;
            }
            std::thread::sleep(GATE_POLL);
        }
    }
}

impl Prepared {
    /// Trains (continuing the saved checkpoint with `resume`), writing each improved adapter and reporting it.
    /// Blocks until the run ends or `control` stops it.
    pub fn run(
        &self,
        resume: bool,
        control: &LiveControl,
        on_event: &mut (dyn FnMut(LiveEvent) + Send),
    ) -> Result<LiveOutcome> {
        let settings = &self.settings;
        let dir = settings.dir(&self.data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| FinetuneError::io(&dir, "cannot create directory", e))?;
        let adapter_file = adapter_path(&self.data_dir, &settings.name);
        let pool = training_pool(settings.threads)?;
        pool.install(|| {
            let mut trainer = if resume {
                Trainer::resume(&self.model, &self.data, settings.train.clone())?
            } else {
                Trainer::new(&self.model, &self.data, settings.initial_adapter(&self.model)?, settings.train.clone())?
            };
            let mut provenance = self.provenance(&trainer);
            if resume {
                // A resumed run keeps the adapter and the record of its earlier part.
                if let Ok(old) = Provenance::read(&dir) {
                    provenance.adapter_step = old.adapter_step;
                    provenance.last_train_loss = old.last_train_loss;
                }
            }
            provenance.write(&dir)?;
            let mut failure = None;
            let outcome = trainer.run(control, &mut |event| {
                match event {
                    TrainEvent::Step(report) => provenance.last_train_loss = Some(report.loss),
                    TrainEvent::Improved { step, loss, weights: adapter } => {
                        provenance.adapter_step = *step;
                        provenance.best_validation_loss = Some(*loss);
                        provenance.steps_done = *step;
                        let written = write_adapter_gguf_at_step(&adapter_file, adapter, &settings.name, Some(*step))
                            .and_then(|()| provenance.write(&dir));
                        match written {
                            Ok(()) => on_event(LiveEvent::AdapterWritten {
                                step: *step,
                                validation_loss: Some(*loss),
                                path: adapter_file.clone(),
                            }),
                            Err(e) => {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                    _ => {}
                }
                // An improvement was reported as the adapter written (its matrices stay here).
                if !matches!(event, TrainEvent::Improved { .. }) {
                    on_event(LiveEvent::Train(event.clone()));
                }
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            provenance.steps_done = outcome.steps_done;
            provenance.best_validation_loss = outcome.best_validation.map(|(_, loss)| loss);
            provenance.state = if outcome.interrupted { RunState::Stopped } else { RunState::Finished };
            // Without validation data there is no "best": the adapter kept is the last one.
            if outcome.best_validation.is_none() || !adapter_file.is_file() {
                write_adapter_gguf_at_step(&adapter_file, &outcome.weights, &settings.name, Some(outcome.steps_done))?;
                provenance.adapter_step = outcome.steps_done;
                provenance.write(&dir)?;
                on_event(LiveEvent::AdapterWritten {
                    step: outcome.steps_done,
                    validation_loss: None,
                    path: adapter_file.clone(),
                });
            }
            provenance.write(&dir)?;
            Ok(LiveOutcome {
                state: provenance.state,
                steps_done: outcome.steps_done,
                total_steps: outcome.total_steps,
                adapter: adapter_file.clone(),
                provenance,
            })
        })
    }

    fn provenance(&self, trainer: &Trainer<'_>) -> Provenance {
        let s = &self.settings;
        let o = &s.train;
        let targets: Vec<&str> = s.targets.iter().map(|t| t.peft_name()).collect();
        Provenance {
            name: s.name.clone(),
            base_model: s.base.canonicalize().unwrap_or_else(|_| s.base.clone()),
            data: s.data.canonicalize().unwrap_or_else(|_| s.data.clone()),
            state: RunState::Training,
            adapter_step: 0,
            steps_done: trainer.step(),
            total_steps: trainer.total_steps(),
            settings: serde_json::json!({
                "rank": s.rank, "alpha": s.alpha, "targets": targets, "lr": o.lr, "schedule": o.schedule.to_string(),
                "warmup_steps": o.warmup_steps, "epochs": o.epochs, "steps": o.max_steps, "batch": o.batch_size,
                "grad_accum": o.grad_accum, "seq_len": o.seq_len, "seed": o.seed, "val_fraction": s.val_fraction,
                "eval_every": o.eval_every,
            }),
            train_sequences: self.summary.train_sequences,
            validation_sequences: self.summary.validation_sequences,
            train_tokens: self.summary.train_tokens,
            last_train_loss: None,
            best_validation_loss: trainer.best_validation().map(|(_, loss)| loss),
            phi_tui_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The pool training runs on: `threads`, or half the cores (at least one), leaving the rest to the engine.
pub fn training_pool(threads: usize) -> Result<rayon::ThreadPool> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = if threads == 0 { (cores / 2).max(1) } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("phi-tui-train-{i}"))
        .build()
        .map_err(|e| FinetuneError::Option(format!("cannot start {threads} training threads: {e}")))
}

/// An adapter as the user names it: a path, or the name of a run kept in the data directory (`myrepo` for
/// `adapters/myrepo/myrepo.gguf`), as F6 and `lora = "NAME"` in the config accept.
pub fn resolve_adapter(data_dir: &Path, given: &Path) -> PathBuf {
    let is_bare_name = given.components().count() == 1 && given.extension().is_none();
    match given.to_str() {
        Some(name) if is_bare_name && !given.exists() && adapter_path(data_dir, name).is_file() => {
            adapter_path(data_dir, name)
        }
        _ => given.to_path_buf(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_gate_waits_while_busy_or_paused_and_stops_when_told() {
        let busy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&busy);
        let control = Arc::new(LiveControl::new(move || flag.load(Ordering::SeqCst)));
        let gate = Arc::clone(&control);
        let waiting = std::thread::spawn(move || gate.proceed());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "training waits while a request runs");
        busy.store(false, Ordering::SeqCst);
        assert!(waiting.join().unwrap(), "and goes on when it is done");

        assert!(control.toggle_pause());
        let gate = Arc::clone(&control);
        let waiting = std::thread::spawn(move || gate.proceed());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "a paused run waits");
        control.stop();
        assert!(!waiting.join().unwrap(), "stop ends the wait and the run");
    }

    #[test]
    fn runs_are_named_after_their_data_and_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(name_for_data(Path::new("/src/my repo")), "my-repo");
        assert_eq!(name_for_data(Path::new("/src/train.jsonl")), "train");
        let path = adapter_path(dir.path(), "myrepo");
        assert_eq!(resolve_adapter(dir.path(), Path::new("myrepo")), PathBuf::from("myrepo"), "not there yet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"gguf").unwrap();
        assert_eq!(resolve_adapter(dir.path(), Path::new("myrepo")), path);
        assert_eq!(resolve_adapter(dir.path(), Path::new("./x.gguf")), PathBuf::from("./x.gguf"));
    }
}
