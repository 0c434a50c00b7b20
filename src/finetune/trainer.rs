//! The training loop: LoRA matrices as candle `Var`s for the forward and backward pass, AdamW on host copies.
//!
//! One optimizer step takes `batch_size · grad_accum` sequences. The loss of a step is the mean cross-entropy
//! over all its targets (the sum over micro-batches divided by the step's target count, so accumulation gives the
//! same gradient as one big batch); with one micro-batch this is exactly transformers' causal-LM loss. The data
//! order of epoch `e` is a seeded shuffle that depends only on `(seed, e)`, so a resumed run sees the same order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde_json::json;

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::data::{make_batch, Dataset, Sequence};
use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};
use super::model::{BaseModel, LoraTensors};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule, ScheduleKind};
use super::rng::SplitMix64;

/// The settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Longest sequence (checked against the data and the model's context).
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Passes over the training data (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Optimizer steps in all, overriding `epochs`.
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Shuffle the training sequences each epoch.
    pub shuffle: bool,
    /// Where checkpoints go; `None` saves none.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every this many steps (0: only at the end of each epoch, on interrupt and at the end).
    pub save_every: u64,
    /// Also measure the validation loss every this many steps (0: only at the end of each epoch and of the run).
    /// Validation does not change the weights, so this is not a setting a resume must match.
    pub eval_every: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            seq_len: 512,
            batch_size: 4,
            grad_accum: 1,
            epochs: 1,
            max_steps: None,
            lr: 2e-4,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            seed: 42,
            shuffle: true,
            checkpoint_dir: None,
            save_every: 0,
            eval_every: 0,
        }
    }
}

/// One optimizer step, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done, this one included (1-based).
    pub step: u64,
    pub total_steps: u64,
    /// 0-based epoch of this step.
    pub epoch: u64,
    /// Mean loss of the step's batch, before the update.
    pub loss: f64,
    /// The learning rate of this update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) in the step.
    pub tokens: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

/// What happens during a run.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Started {
        start_step: u64,
        total_steps: u64,
        steps_per_epoch: u64,
    },
    Step(StepReport),
    /// Mean validation loss at the end of an epoch (and of the run).
    Validation {
        step: u64,
        epoch: u64,
        loss: f64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// The validation loss is the lowest of the run so far (the first one included): the adapter as it is now.
    Improved {
        step: u64,
        loss: f64,
        adapter: Box<LoraAdapter>,
    },
}

/// What the loop asks before each optimizer step, and what the caller answers: go on (possibly after waiting), or
/// stop there (a checkpoint is saved, as for Ctrl-C). It may block: a paused run, or a run that gives way to
/// interactive requests, waits here, between two steps, where nothing is half done.
pub trait StepGate {
    fn proceed(&self) -> bool;
}

/// A stop flag (set by Ctrl-C, say) is the simplest gate: it never waits.
impl StepGate for AtomicBool {
    fn proceed(&self) -> bool {
        !self.load(Ordering::SeqCst)
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub adapter: LoraAdapter,
    pub steps_done: u64,
    pub total_steps: u64,
    /// Stopped by the stop flag (Ctrl-C) before the last step; a checkpoint was saved if a directory was set.
    pub interrupted: bool,
    pub last_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    /// The lowest validation loss of the run (resumed runs included) and its step.
    pub best_validation: Option<(u64, f64)>,
}

pub struct Trainer<'a> {
    model: &'a BaseModel,
    data: &'a Dataset,
    options: TrainOptions,
    rank: usize,
    alpha: f32,
    keys: Vec<(usize, LoraTarget)>,
    /// (A, B) per module, in `keys` order.
    vars: Vec<(Var, Var)>,
    /// Host copies of the parameters, two per module (A, B); the truth the optimizer updates.
    params: Vec<Vec<f32>>,
    shapes: Vec<[usize; 2]>,
    adam: AdamW,
    step: u64,
    steps_per_epoch: u64,
    total_steps: u64,
    /// The lowest validation loss so far and its step (kept in checkpoints, so a resumed run knows it).
    best_validation: Option<(u64, f64)>,
}

impl<'a> Trainer<'a> {
    /// A run starting from `adapter` (a fresh or a given initialisation). Every option and the adapter are
    /// checked against the model and the data here, before any training.
    pub fn new(model: &'a BaseModel, data: &'a Dataset, adapter: LoraAdapter, options: TrainOptions) -> Result<Self> {
        check_options(model, data, &options)?;
        adapter.check_fits(&model.config, model.source.path())?;
        let keys: Vec<_> = adapter.modules.keys().copied().collect();
        let mut params = Vec::new();
        let mut shapes = Vec::new();
        let mut vars = Vec::new();
        for pair in adapter.modules.values() {
            let a = Var::from_slice(&pair.a.data, (pair.a.rows, pair.a.cols), model.device())?;
            let b = Var::from_slice(&pair.b.data, (pair.b.rows, pair.b.cols), model.device())?;
            vars.push((a, b));
            for m in [&pair.a, &pair.b] {
                params.push(m.data.clone());
                shapes.push(m.shape());
            }
        }
        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
        let effective = (options.batch_size * options.grad_accum) as u64;
        let steps_per_epoch = (data.train.len() as u64).div_ceil(effective);
        let total_steps = options.max_steps.unwrap_or(steps_per_epoch * options.epochs as u64);
        Ok(Trainer {
            model,
            data,
            adam: AdamW::new(options.adamw, &sizes),
            options,
            rank: adapter.rank,
            alpha: adapter.alpha,
            keys,
            vars,
            params,
            shapes,
            step: 0,
            steps_per_epoch,
            total_steps,
            best_validation: None,
        })
    }

    /// Continues the run saved in `options.checkpoint_dir`. The settings, data and model must be those of the
    /// saved run.
    pub fn resume(model: &'a BaseModel, data: &'a Dataset, options: TrainOptions) -> Result<Self> {
        let dir = options
            .checkpoint_dir
            .clone()
            .ok_or_else(|| FinetuneError::Option("resuming needs a checkpoint directory".to_owned()))?;
        let saved = checkpoint::load(&dir)?;
        let path = checkpoint::checkpoint_path(&dir);
        let mut trainer = Trainer::new(model, data, saved.adapter.clone(), options)?;
        if let Some(difference) = checkpoint::settings_difference(&saved.state.settings, &trainer.settings()) {
            return Err(FinetuneError::checkpoint(path, format!("cannot resume with other settings: {difference}")));
        }
        let sizes_match = saved.m.len() == trainer.params.len()
            && saved
                .m
                .iter()
                .zip(&saved.v)
                .zip(&trainer.params)
                .all(|((m, v), p)| m.len() == p.len() && v.len() == p.len());
        if !sizes_match || saved.state.step > trainer.total_steps {
            return Err(FinetuneError::checkpoint(path, "the optimizer state does not fit the adapter"));
        }
        trainer.adam.m = saved.m;
        trainer.adam.v = saved.v;
        trainer.adam.step = saved.state.adam_step;
        trainer.step = saved.state.step;
        trainer.best_validation = saved.state.best_validation;
        tracing::info!(step = trainer.step, "resuming from {}", path.display());
        Ok(trainer)
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The lowest validation loss so far and its step.
    pub fn best_validation(&self) -> Option<(u64, f64)> {
        self.best_validation
    }

    /// The adapter as it is now.
    pub fn adapter(&self) -> LoraAdapter {
        let mut modules = BTreeMap::new();
        for (i, &key) in self.keys.iter().enumerate() {
            let matrix =
                |j: usize| Matrix { rows: self.shapes[j][0], cols: self.shapes[j][1], data: self.params[j].clone() };
            modules.insert(key, LoraPair { a: matrix(2 * i), b: matrix(2 * i + 1) });
        }
        LoraAdapter { rank: self.rank, alpha: self.alpha, modules }
    }

    /// Everything the run's result depends on besides the initial adapter; a checkpoint stores it and a resume
    /// must match it.
    fn settings(&self) -> BTreeMap<String, serde_json::Value> {
        let o = &self.options;
        let c = &self.model.config;
        BTreeMap::from([
            ("seq_len".to_owned(), json!(o.seq_len)),
            ("batch_size".to_owned(), json!(o.batch_size)),
            ("grad_accum".to_owned(), json!(o.grad_accum)),
            ("total_steps".to_owned(), json!(self.total_steps)),
            ("lr".to_owned(), json!(o.lr)),
            ("schedule".to_owned(), json!(o.schedule.to_string())),
            ("warmup_steps".to_owned(), json!(o.warmup_steps)),
            ("adamw".to_owned(), json!([o.adamw.beta1, o.adamw.beta2, o.adamw.eps, o.adamw.weight_decay])),
            ("max_grad_norm".to_owned(), json!(o.max_grad_norm)),
            ("seed".to_owned(), json!(o.seed)),
            ("shuffle".to_owned(), json!(o.shuffle)),
            ("data".to_owned(), json!(format!("{:016x}", self.data.fingerprint()))),
            (
                "model".to_owned(),
                json!([c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads]),
            ),
        ])
    }

    /// Saves a checkpoint into `dir`.
    pub fn save_checkpoint(&self, dir: &std::path::Path) -> Result<PathBuf> {
        let state = CheckpointState {
            version: checkpoint::FORMAT_VERSION,
            step: self.step,
            adam_step: self.adam.step,
            rank: self.rank,
            alpha: self.alpha,
            modules: self.keys.iter().map(|&(l, t)| (l, t.peft_name().to_owned())).collect(),
            settings: self.settings(),
            best_validation: self.best_validation,
        };
        let checkpoint = Checkpoint { state, adapter: self.adapter(), m: self.adam.m.clone(), v: self.adam.v.clone() };
        checkpoint::save(dir, &checkpoint)
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            kind: self.options.schedule,
            peak: self.options.lr,
            warmup_steps: self.options.warmup_steps,
            total_steps: self.total_steps,
        }
    }

    /// The training sequences of `step` (0-based), in micro-batches.
    fn step_batches(&self, step: u64) -> Vec<Vec<&'a Sequence>> {
        let n = self.data.train.len();
        let epoch = step / self.steps_per_epoch;
        let within = (step % self.steps_per_epoch) as usize;
        let mut order: Vec<usize> = (0..n).collect();
        if self.options.shuffle {
            SplitMix64::derived(self.options.seed, epoch).shuffle(&mut order);
        }
        let effective = self.options.batch_size * self.options.grad_accum;
        let chosen = &order[within * effective..((within + 1) * effective).min(n)];
        let data = self.data;
        chosen.chunks(self.options.batch_size).map(|c| c.iter().map(|&i| &data.train[i]).collect()).collect()
    }

    fn train_lora(&self) -> LoraTensors {
        let modules =
            self.keys.iter().zip(&self.vars).map(|(&k, (a, b))| (k, (a.as_tensor().clone(), b.as_tensor().clone())));
        LoraTensors { scaling: f64::from(self.alpha) / self.rank as f64, modules: modules.collect() }
    }

    /// Loss and gradients (one per parameter, A and B of each module in order) of a set of micro-batches,
    /// normalised by their total target count. Also the number of tokens.
    fn loss_and_gradients(&self, batches: &[Vec<&Sequence>]) -> Result<(f64, Vec<Vec<f32>>, usize)> {
        for ((a, b), j) in self.vars.iter().zip((0..).step_by(2)) {
            a.set(&Tensor::from_slice(&self.params[j], (self.shapes[j][0], self.shapes[j][1]), self.model.device())?)?;
            let [rows, cols] = self.shapes[j + 1];
            b.set(&Tensor::from_slice(&self.params[j + 1], (rows, cols), self.model.device())?)?;
        }
        let count: usize = batches.iter().flatten().map(|s| s.target_count()).sum();
        if count == 0 {
            return Err(FinetuneError::Option("a training step has no targets".to_owned()));
        }
        let lora = self.train_lora();
        let mut loss_total = 0.0;
        let mut tokens = 0;
        let mut grads: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.len()]).collect();
        for micro in batches {
            let batch = make_batch(micro, self.model.device())?;
            tokens += batch.tokens;
            if batch.count == 0 {
                continue;
            }
            let loss = self.model.loss_sum(&batch, &lora)?.affine(1.0 / count as f64, 0.0)?;
            loss_total += f64::from(loss.to_scalar::<f32>()?);
            let store = loss.backward()?;
            for ((a, b), j) in self.vars.iter().zip((0..).step_by(2)) {
                for (var, index) in [(a, j), (b, j + 1)] {
                    if let Some(grad) = store.get(var.as_tensor()) {
                        let grad = grad.flatten_all()?.to_vec1::<f32>()?;
                        grads[index].iter_mut().zip(grad).for_each(|(sum, g)| *sum += g);
                    }
                }
            }
        }
        Ok((loss_total, grads, tokens))
    }

    /// Loss and gradients of the given sequences (one batch) at the current parameters, without an update; the
    /// gradients come back shaped as an adapter (`A` and `B` hold ∂loss/∂A and ∂loss/∂B).
    pub fn gradients(&self, sequences: &[&Sequence]) -> Result<(f64, LoraAdapter)> {
        let (loss, grads, _) = self.loss_and_gradients(&[sequences.to_vec()])?;
        let mut adapter = self.adapter();
        for (pair, j) in adapter.modules.values_mut().zip((0..).step_by(2)) {
            pair.a.data.clone_from(&grads[j]);
            pair.b.data.clone_from(&grads[j + 1]);
        }
        Ok((loss, adapter))
    }

    /// Mean loss over the validation sequences (token-weighted), `None` without validation data.
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.data.validation.is_empty() {
            return Ok(None);
        }
        let adapter = self.adapter();
        let lora = LoraTensors::from_adapter(&adapter, self.model.device())?;
        let (mut sum, mut count) = (0.0, 0);
        let sequences: Vec<&Sequence> = self.data.validation.iter().collect();
        for chunk in sequences.chunks(self.options.batch_size) {
            let batch = make_batch(chunk, self.model.device())?;
            if batch.count == 0 {
                continue;
            }
            sum += f64::from(self.model.loss_sum(&batch, &lora)?.to_scalar::<f32>()?);
            count += batch.count;
        }
        Ok((count > 0).then(|| sum / count as f64))
    }

    /// Trains until the last step or until `gate` says stop (asked before every step). Checkpoints go to
    /// `options.checkpoint_dir` at the end of each epoch, every `save_every` steps, on stop and at the end.
    pub fn run(&mut self, gate: &dyn StepGate, on_event: &mut dyn FnMut(&TrainEvent)) -> Result<TrainOutcome> {
        on_event(&TrainEvent::Started {
            start_step: self.step,
            total_steps: self.total_steps,
            steps_per_epoch: self.steps_per_epoch,
        });
        let schedule = self.schedule();
        let mut last_loss = None;
        let mut validation_loss = None;
        let mut interrupted = false;
        while self.step < self.total_steps {
            if !gate.proceed() {
                interrupted = true;
                if let Some(dir) = self.options.checkpoint_dir.clone() {
                    let path = self.save_checkpoint(&dir)?;
                    on_event(&TrainEvent::Checkpoint { step: self.step, path });
                }
                break;
            }
            let started = Instant::now();
            let step = self.step;
            let batches = self.step_batches(step);
            let (loss, mut grads, tokens) = self.loss_and_gradients(&batches)?;
            if !loss.is_finite() {
                return Err(FinetuneError::Option(format!(
                    "the loss became {loss} at step {}; lower the learning rate",
                    step + 1
                )));
            }
            let grad_norm = clip_grad_norm(&mut grads, self.options.max_grad_norm);
            let lr = schedule.lr(step);
            self.adam.update(&mut self.params, &grads, lr);
            self.step += 1;
            last_loss = Some(loss);
            let epoch = step / self.steps_per_epoch;
            on_event(&TrainEvent::Step(StepReport {
                step: self.step,
                total_steps: self.total_steps,
                epoch,
                loss,
                lr,
                grad_norm,
                tokens,
                seconds: started.elapsed().as_secs_f64(),
            }));
            let epoch_end = self.step % self.steps_per_epoch == 0 || self.step == self.total_steps;
            let evaluate = epoch_end || (self.options.eval_every > 0 && self.step % self.options.eval_every == 0);
            if evaluate {
                if let Some(loss) = self.validation_loss()? {
                    validation_loss = Some(loss);
                    on_event(&TrainEvent::Validation { step: self.step, epoch, loss });
                    if self.best_validation.is_none_or(|(_, best)| loss < best) {
                        self.best_validation = Some((self.step, loss));
                        on_event(&TrainEvent::Improved { step: self.step, loss, adapter: Box::new(self.adapter()) });
                    }
                }
            }
            let every = self.options.save_every > 0 && self.step % self.options.save_every == 0;
            if epoch_end || every {
                if let Some(dir) = self.options.checkpoint_dir.clone() {
                    let path = self.save_checkpoint(&dir)?;
                    on_event(&TrainEvent::Checkpoint { step: self.step, path });
                }
            }
        }
        Ok(TrainOutcome {
            adapter: self.adapter(),
            steps_done: self.step,
            total_steps: self.total_steps,
            interrupted,
            last_loss,
            validation_loss,
            best_validation: self.best_validation,
        })
    }
}

/// Every check that can fail before training starts.
fn check_options(model: &BaseModel, data: &Dataset, options: &TrainOptions) -> Result<()> {
    let option = |message: String| Err(FinetuneError::Option(message));
    if data.train.is_empty() {
        return Err(FinetuneError::data(&data.path, None, "no training sequences"));
    }
    let context = model.config.context_length;
    if options.seq_len < 2 {
        return option(format!("--seq-len {} is too short (at least 2 tokens)", options.seq_len));
    }
    if options.seq_len > context {
        return option(format!("--seq-len {} is longer than the model's context of {context} tokens", options.seq_len));
    }
    if options.batch_size == 0 || options.grad_accum == 0 {
        return option("--batch and --grad-accum must be at least 1".to_owned());
    }
    if options.max_steps == Some(0) || (options.max_steps.is_none() && options.epochs == 0) {
        return option("nothing to train: --steps or --epochs is 0".to_owned());
    }
    if !(options.lr.is_finite() && options.lr > 0.0) {
        return option(format!("--lr {} must be a positive number", options.lr));
    }
    let a = options.adamw;
    if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0 && a.weight_decay >= 0.0) {
        return option(format!(
            "invalid AdamW settings: betas ({}, {}), eps {}, weight decay {}",
            a.beta1, a.beta2, a.eps, a.weight_decay
        ));
    }
    if options.max_grad_norm.is_nan() || options.max_grad_norm < 0.0 {
        return option(format!("--max-grad-norm {} must be 0 (off) or positive", options.max_grad_norm));
    }
    data.check_fits(&model.config, options.seq_len)
}
