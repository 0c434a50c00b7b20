//! The training loop: the trained parameters as candle `Var`s for the forward and backward pass, AdamW on host
//! copies. What is trained is the seam [`Trainable`]: LoRA matrices on a frozen base ([`LoraParameters`], `phi-tui
//! finetune`) or every weight of the model ([`FullParameters`], `phi-tui train`); the loop, the optimizer, the
//! data order, validation and checkpoints are the same for both.
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

use super::checkpoint::{self, Checkpoint, CheckpointState, SavedParameter};
use super::data::{make_batch, Dataset, Sequence};
use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};
use super::model::{parameter_shapes, BaseModel, LoraTensors};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule, ScheduleKind};
use super::precision::{LossScaler, Precision, INITIAL_LOSS_SCALE};
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
    /// The first loss scale of a float16 mixed-precision run ([`LossScaler`]); unused otherwise.
    pub initial_loss_scale: f64,
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
            initial_loss_scale: INITIAL_LOSS_SCALE,
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
    /// float16 mixed precision: the loss scale of this step's backward pass.
    pub loss_scale: Option<f64>,
    /// The float16 gradients overflowed: the step did not update the weights, and the loss scale was halved
    /// (`grad_norm` is then infinite).
    pub skipped: bool,
}

/// What a run trains: the parameters as `Var`s (in a fixed order), what the forward pass adds to the model for
/// them, and what the run produces from their values. Implemented here only (its methods take the crate's
/// internal forward-pass and checkpoint types, hence `private_interfaces`); callers choose one of the two.
#[allow(private_interfaces)]
pub trait Trainable {
    /// What a run produces: a LoRA adapter, or the model's weights.
    type Weights: Clone + std::fmt::Debug;

    /// The parameters the forward pass reads, in parameter order.
    fn vars(&self) -> &[Var];

    /// The LoRA matrices the forward pass applies (none when the model's own weights are the `Var`s).
    fn lora(&self) -> LoraTensors;

    /// The result, from the parameters' values (`params[i]` is `vars()[i]`'s).
    fn weights(&self, params: &[Vec<f32>]) -> Self::Weights;

    /// Records in a checkpoint's state what the parameters are.
    fn describe(&self, state: &mut CheckpointState);
}

/// LoRA matrices on a frozen base (`phi-tui finetune`): parameters `2i` and `2i + 1` are module `keys[i]`'s A and B.
pub struct LoraParameters {
    rank: usize,
    alpha: f32,
    keys: Vec<(usize, LoraTarget)>,
    vars: Vec<Var>,
    /// `[rows, cols]` of each parameter.
    shapes: Vec<[usize; 2]>,
}

#[allow(private_interfaces)]
impl Trainable for LoraParameters {
    type Weights = LoraAdapter;

    fn vars(&self) -> &[Var] {
        &self.vars
    }

    fn lora(&self) -> LoraTensors {
        let pairs = self.vars.chunks_exact(2).map(|ab| (ab[0].as_tensor().clone(), ab[1].as_tensor().clone()));
        LoraTensors {
            scaling: f64::from(self.alpha) / self.rank as f64,
            modules: self.keys.iter().copied().zip(pairs).collect(),
        }
    }

    fn weights(&self, params: &[Vec<f32>]) -> LoraAdapter {
        let mut modules = BTreeMap::new();
        let matrices =
            self.shapes.iter().zip(params).map(|(&[rows, cols], data)| Matrix { rows, cols, data: data.clone() });
        let matrices: Vec<Matrix> = matrices.collect();
        for (&key, ab) in self.keys.iter().zip(matrices.chunks_exact(2)) {
            modules.insert(key, LoraPair { a: ab[0].clone(), b: ab[1].clone() });
        }
        LoraAdapter { rank: self.rank, alpha: self.alpha, modules }
    }

    fn describe(&self, state: &mut CheckpointState) {
        state.rank = self.rank;
        state.alpha = self.alpha;
        state.modules = self.keys.iter().map(|&(l, t)| (l, t.peft_name().to_owned())).collect();
    }
}

/// Every weight of the model (`phi-tui train`), made trainable by [`BaseModel::make_trainable`].
pub struct FullParameters {
    /// GGUF names, in parameter order.
    names: Vec<String>,
    vars: Vec<Var>,
}

impl FullParameters {
    /// The `Var`s [`BaseModel::make_trainable`] returned for `model`.
    pub fn new(model: &BaseModel, named: Vec<(String, Var)>) -> Result<FullParameters> {
        let expected = parameter_shapes(&model.config);
        let fits = expected.len() == named.len()
            && expected
                .iter()
                .zip(&named)
                .all(|((name, shape), (n, var))| name == n && var.as_tensor().dims() == shape);
        if !fits || !model.is_trainable() {
            return Err(FinetuneError::Option("the parameters are not this model's trainable weights".to_owned()));
        }
        let (names, vars) = named.into_iter().unzip();
        Ok(FullParameters { names, vars })
    }
}

/// A model's weights by GGUF name, with their shapes (row-major float32).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedWeights {
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

#[allow(private_interfaces)]
impl Trainable for FullParameters {
    type Weights = NamedWeights;

    fn vars(&self) -> &[Var] {
        &self.vars
    }

    fn lora(&self) -> LoraTensors {
        LoraTensors::none()
    }

    fn weights(&self, params: &[Vec<f32>]) -> NamedWeights {
        let tensors = self.names.iter().zip(&self.vars).zip(params);
        NamedWeights {
            tensors: tensors.map(|((n, var), p)| (n.clone(), var.as_tensor().dims().to_vec(), p.clone())).collect(),
        }
    }

    fn describe(&self, state: &mut CheckpointState) {
        state.parameters.clone_from(&self.names);
    }
}

/// What happens during a run.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent<W = LoraAdapter> {
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
    /// The validation loss is the lowest of the run so far (the first one included): the weights (the adapter,
    /// for LoRA) as they are now.
    Improved {
        step: u64,
        loss: f64,
        weights: Box<W>,
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
pub struct TrainOutcome<W = LoraAdapter> {
    /// The trained weights at the end (the adapter, for LoRA).
    pub weights: W,
    pub steps_done: u64,
    pub total_steps: u64,
    /// Stopped by the stop flag (Ctrl-C) before the last step; a checkpoint was saved if a directory was set.
    pub interrupted: bool,
    pub last_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    /// The lowest validation loss of the run (resumed runs included) and its step.
    pub best_validation: Option<(u64, f64)>,
}

pub struct Trainer<'a, P: Trainable = LoraParameters> {
    model: &'a BaseModel,
    data: &'a Dataset,
    options: TrainOptions,
    trained: P,
    /// Host copies of the parameters, in `trained.vars()` order; the truth the optimizer updates.
    params: Vec<Vec<f32>>,
    adam: AdamW,
    step: u64,
    steps_per_epoch: u64,
    total_steps: u64,
    /// The lowest validation loss so far and its step (kept in checkpoints, so a resumed run knows it).
    best_validation: Option<(u64, f64)>,
    /// Dynamic loss scaling: float16 mixed precision only.
    scaler: Option<LossScaler>,
}

impl<'a> Trainer<'a, LoraParameters> {
    /// A run starting from `adapter` (a fresh or a given initialisation). Every option and the adapter are
    /// checked against the model and the data here, before any training.
    pub fn new(model: &'a BaseModel, data: &'a Dataset, adapter: LoraAdapter, options: TrainOptions) -> Result<Self> {
        adapter.check_fits(&model.config, model.source.path())?;
        let keys: Vec<_> = adapter.modules.keys().copied().collect();
        let (mut vars, mut shapes) = (Vec::new(), Vec::new());
        for pair in adapter.modules.values() {
            for m in [&pair.a, &pair.b] {
                vars.push(Var::from_slice(&m.data, (m.rows, m.cols), model.device())?);
                shapes.push(m.shape());
            }
        }
        let trained = LoraParameters { rank: adapter.rank, alpha: adapter.alpha, keys, vars, shapes };
        Trainer::with_parameters(model, data, trained, options)
    }

    /// Continues the run saved in `options.checkpoint_dir`. The settings, data and model must be those of the
    /// saved run.
    pub fn resume(model: &'a BaseModel, data: &'a Dataset, options: TrainOptions) -> Result<Self> {
        let (dir, saved) = load_checkpoint(&options)?;
        let adapter = saved.adapter(&checkpoint::checkpoint_path(&dir))?;
        let trainer = Trainer::new(model, data, adapter, options)?;
        trainer.restored(saved)
    }

    /// The adapter as it is now.
    pub fn adapter(&self) -> LoraAdapter {
        self.weights()
    }
}

impl<'a> Trainer<'a, FullParameters> {
    /// A full-training run of `model`'s weights, from their current values; `trained` holds the `Var`s
    /// [`BaseModel::make_trainable`] made of them.
    pub fn new_full(
        model: &'a BaseModel,
        data: &'a Dataset,
        trained: FullParameters,
        options: TrainOptions,
    ) -> Result<Self> {
        Trainer::with_parameters(model, data, trained, options)
    }

    /// Continues the full-training run saved in `options.checkpoint_dir`: the weights, the optimizer state and the
    /// step come from the checkpoint.
    pub fn resume_full(
        model: &'a BaseModel,
        data: &'a Dataset,
        trained: FullParameters,
        options: TrainOptions,
    ) -> Result<Self> {
        let (dir, saved) = load_checkpoint(&options)?;
        let path = checkpoint::checkpoint_path(&dir);
        if !saved.state.is_full() {
            return Err(FinetuneError::checkpoint(path, "this checkpoint is of a LoRA run (`phi-tui finetune`)"));
        }
        if saved.state.parameters != trained.names {
            return Err(FinetuneError::checkpoint(path, "the checkpoint's weights are not this model's"));
        }
        let mut trainer = Trainer::new_full(model, data, trained, options)?;
        for (param, saved) in trainer.params.iter_mut().zip(&saved.parameters) {
            if saved.data.len() != param.len() {
                return Err(FinetuneError::checkpoint(path, "the checkpoint's weights do not fit the model"));
            }
            param.clone_from(&saved.data);
        }
        trainer.restored(saved)
    }
}

/// The checkpoint in `options.checkpoint_dir`, and that directory.
fn load_checkpoint(options: &TrainOptions) -> Result<(PathBuf, Checkpoint)> {
    let dir = options
        .checkpoint_dir
        .clone()
        .ok_or_else(|| FinetuneError::Option("resuming needs a checkpoint directory".to_owned()))?;
    let saved = checkpoint::load(&dir)?;
    Ok((dir, saved))
}

impl<'a, P: Trainable> Trainer<'a, P> {
    fn with_parameters(model: &'a BaseModel, data: &'a Dataset, trained: P, options: TrainOptions) -> Result<Self> {
        check_options(model, data, &options)?;
        let params = trained
            .vars()
            .iter()
            .map(|var| Ok(var.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
        let effective = (options.batch_size * options.grad_accum) as u64;
        let steps_per_epoch = (data.train.len() as u64).div_ceil(effective);
        let total_steps = options.max_steps.unwrap_or(steps_per_epoch * options.epochs as u64);
        let scaler = model.precision().needs_loss_scaling().then(|| LossScaler::new(options.initial_loss_scale));
        Ok(Trainer {
            model,
            data,
            adam: AdamW::new(options.adamw, &sizes),
            options,
            trained,
            params,
            step: 0,
            steps_per_epoch,
            total_steps,
            best_validation: None,
            scaler,
        })
    }

    /// This run continued from `saved`, whose parameters it already holds: the settings must match, and the
    /// optimizer state and step come from it.
    fn restored(mut self, saved: Checkpoint) -> Result<Self> {
        let path = self.options.checkpoint_dir.as_deref().map(checkpoint::checkpoint_path).unwrap_or_default();
        let saved_precision = saved.state.settings.get("precision").and_then(|p| p.as_str()).unwrap_or("f32");
        if saved_precision != self.model.precision().to_string() {
            return Err(FinetuneError::checkpoint(
                path,
                format!("the run trained in {saved_precision}; resume it with --precision {saved_precision}"),
            ));
        }
        if let Some(difference) = checkpoint::settings_difference(&saved.state.settings, &self.settings()) {
            return Err(FinetuneError::checkpoint(path, format!("cannot resume with other settings: {difference}")));
        }
        let sizes_match = saved.m.len() == self.params.len()
            && saved
                .m
                .iter()
                .zip(&saved.v)
                .zip(&self.params)
                .all(|((m, v), p)| m.len() == p.len() && v.len() == p.len());
        if !sizes_match || saved.state.step > self.total_steps {
            return Err(FinetuneError::checkpoint(path, "the optimizer state does not fit the parameters"));
        }
        self.adam.m = saved.m;
        self.adam.v = saved.v;
        self.adam.step = saved.state.adam_step;
        self.step = saved.state.step;
        self.best_validation = saved.state.best_validation;
        // The settings matched, so a float16 run continues a float16 run, which saved its scaler.
        if let (Some(scaler), Some(saved)) = (&mut self.scaler, saved.state.loss_scaler) {
            *scaler = saved;
        }
        tracing::info!(step = self.step, "resuming from {}", path.display());
        Ok(self)
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

    /// The trained weights as they are now.
    pub fn weights(&self) -> P::Weights {
        self.trained.weights(&self.params)
    }

    /// Everything the run's result depends on besides the initial adapter; a checkpoint stores it and a resume
    /// must match it.
    fn settings(&self) -> BTreeMap<String, serde_json::Value> {
        let o = &self.options;
        let c = &self.model.config;
        let mut settings = BTreeMap::from([
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
        ]);
        // Recorded only when not float32, so that checkpoints from before mixed precision still resume.
        let precision = self.model.precision();
        if precision != Precision::F32 {
            settings.insert("precision".to_owned(), json!(precision.to_string()));
        }
        if precision.needs_loss_scaling() {
            settings.insert("initial_loss_scale".to_owned(), json!(o.initial_loss_scale));
        }
        settings
    }

    /// Saves a checkpoint into `dir`.
    pub fn save_checkpoint(&self, dir: &std::path::Path) -> Result<PathBuf> {
        let mut state = CheckpointState {
            version: checkpoint::FORMAT_VERSION,
            step: self.step,
            adam_step: self.adam.step,
            rank: 0,
            alpha: 0.0,
            modules: Vec::new(),
            parameters: Vec::new(),
            settings: self.settings(),
            best_validation: self.best_validation,
            loss_scaler: self.scaler,
        };
        self.trained.describe(&mut state);
        let parameters = self
            .trained
            .vars()
            .iter()
            .zip(&self.params)
            .map(|(var, data)| SavedParameter { shape: var.as_tensor().dims().to_vec(), data: data.clone() })
            .collect();
        let checkpoint = Checkpoint { state, parameters, m: self.adam.m.clone(), v: self.adam.v.clone() };
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

    /// Copies the host parameters into the `Var`s the forward pass reads.
    fn sync_vars(&self) -> Result<()> {
        for (var, values) in self.trained.vars().iter().zip(&self.params) {
            var.set(&Tensor::from_slice(values, var.as_tensor().shape(), self.model.device())?)?;
        }
        Ok(())
    }

    /// Loss and gradients (one per parameter, in parameter order) of a set of micro-batches, normalised by their
    /// total target count. Also the number of tokens. With loss scaling the gradients are those of the scaled
    /// loss (the loss itself is not scaled).
    fn loss_and_gradients(&self, batches: &[Vec<&Sequence>]) -> Result<(f64, Vec<Vec<f32>>, usize)> {
        self.sync_vars()?;
        let count: usize = batches.iter().flatten().map(|s| s.target_count()).sum();
        if count == 0 {
            return Err(FinetuneError::Option("a training step has no targets".to_owned()));
        }
        let lora = self.trained.lora();
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
            let store = match self.scaler {
                Some(scaler) => loss.affine(scaler.scale, 0.0)?.backward()?,
                None => loss.backward()?,
            };
            for (var, sum) in self.trained.vars().iter().zip(&mut grads) {
                if let Some(grad) = store.get(var.as_tensor()) {
                    let grad = grad.flatten_all()?.to_vec1::<f32>()?;
                    sum.iter_mut().zip(grad).for_each(|(sum, g)| *sum += g);
                }
            }
        }
        Ok((loss_total, grads, tokens))
    }

    /// Loss and gradients of the given sequences (one batch) at the current parameters, without an update; the
    /// gradients come back shaped as the weights (for LoRA an adapter whose `A` and `B` hold ∂loss/∂A and
    /// ∂loss/∂B).
    pub fn gradients(&self, sequences: &[&Sequence]) -> Result<(f64, P::Weights)> {
        let (loss, mut grads, _) = self.loss_and_gradients(&[sequences.to_vec()])?;
        if let Some(scaler) = self.scaler {
            scaler.divide(&mut grads);
        }
        Ok((loss, self.trained.weights(&grads)))
    }

    /// Mean loss over the validation sequences (token-weighted), `None` without validation data.
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.data.validation.is_empty() {
            return Ok(None);
        }
        self.sync_vars()?;
        let lora = self.trained.lora();
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
    pub fn run(
        &mut self,
        gate: &dyn StepGate,
        on_event: &mut dyn FnMut(&TrainEvent<P::Weights>),
    ) -> Result<TrainOutcome<P::Weights>> {
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
                let advice = match self.model.precision() {
                    // A forward pass that overflows float16 needs bfloat16's range, not a smaller step.
                    Precision::F16 => "train with --precision bf16 (float16's range is too narrow) or f32",
                    _ => "lower the learning rate",
                };
                return Err(FinetuneError::Option(format!("the loss became {loss} at step {}; {advice}", step + 1)));
            }
            let loss_scale = self.scaler.map(|s| s.scale);
            // An overflowed float16 step updates nothing (torch's `GradScaler.step`); the schedule moves on.
            let update = self.scaler.as_mut().is_none_or(|scaler| scaler.unscale(&mut grads));
            let grad_norm = if update { clip_grad_norm(&mut grads, self.options.max_grad_norm) } else { f64::INFINITY };
            let lr = schedule.lr(step);
            if update {
                self.adam.update(&mut self.params, &grads, lr);
            }
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
                loss_scale,
                skipped: !update,
            }));
            let epoch_end = self.step % self.steps_per_epoch == 0 || self.step == self.total_steps;
            let evaluate = epoch_end || (self.options.eval_every > 0 && self.step % self.options.eval_every == 0);
            if evaluate {
                if let Some(loss) = self.validation_loss()? {
                    validation_loss = Some(loss);
                    on_event(&TrainEvent::Validation { step: self.step, epoch, loss });
                    if self.best_validation.is_none_or(|(_, best)| loss < best) {
                        self.best_validation = Some((self.step, loss));
                        on_event(&TrainEvent::Improved { step: self.step, loss, weights: Box::new(self.weights()) });
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
            weights: self.weights(),
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
