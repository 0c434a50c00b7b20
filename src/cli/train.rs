//! `phi-tui train`: full training of a phi model — from scratch (a `config.json` or a preset shape) or continuing
//! from a checkpoint (full fine-tune) — written as a Hugging Face checkpoint directory that `phi-tui convert`
//! reads, that transformers loads, and that PyTorch's distributed trainers can take further.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use phi_tui::finetune::hf_checkpoint::{write_hf_checkpoint, WeightDtype};
use phi_tui::finetune::{
    self, AdamWConfig, BaseModel, DataOptions, FullParameters, Precision, ScheduleKind, TrainEvent, TrainOptions,
    Trainer,
};

use super::finetune::{
    report_final_losses, report_interruption, show_training_event, tune_process_for_training, StepLog,
};
use super::interrupt::Interrupt;
use super::progress::{self, Unit};

/// Initialisation std of a new model's weights (transformers' `initializer_range` default for phi).
const DEFAULT_INIT_STD: f64 = 0.02;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The shape of a new model: a phi `config.json` (any of transformers 5, transformers 4 or phi-msft style)
    #[arg(long, conflicts_with_all = ["preset", "init"])]
    config: Option<PathBuf>,
    /// The shape of a new model by name: tiny, small, base or phi-1 (phi-1's own shape)
    #[arg(long, conflicts_with = "init")]
    preset: Option<String>,
    /// Continue from this model (full fine-tune): a Hugging Face checkpoint directory or an F32/F16/BF16 GGUF
    #[arg(long)]
    init: Option<PathBuf>,
    /// Training data: JSONL ({"text"}, {"prompt","completion"} or {"ids"} per line), a .py file, or a directory of
    /// Python files (.gitignore respected)
    #[arg(long)]
    data: PathBuf,
    /// The Hugging Face checkpoint directory to write (config.json, model.safetensors, tokenizer)
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// How the written weights are stored: f32, f16 or bf16
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Standard deviation of a new model's random weights
    #[arg(long, default_value_t = DEFAULT_INIT_STD)]
    init_std: f64,
    /// Peak learning rate
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Passes over the training data
    #[arg(long, default_value_t = 1, conflicts_with = "steps")]
    epochs: usize,
    /// Optimizer steps in all (instead of --epochs)
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Sequence length in tokens (at most the model's context) [default: the context, at most 512]
    #[arg(long)]
    seq_len: Option<usize>,
    /// Do not pack short sequences together up to --seq-len
    #[arg(long)]
    no_pack: bool,
    /// Seeds the initialisation, the data order and the validation split
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Learning-rate schedule after warmup: cosine, linear or constant
    #[arg(long, default_value = "cosine")]
    schedule: ScheduleKind,
    /// Steps of linear warmup from 0 to --lr
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// AdamW's decoupled weight decay
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Share of the examples (lines, or files of a directory) held out for validation
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Keep the data in file order instead of shuffling each epoch
    #[arg(long)]
    no_shuffle: bool,
    /// Where checkpoints go (default: OUT with the extension `.ckpt`)
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Also save a checkpoint every N steps (always: at each epoch's end, on Ctrl-C and at the end)
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Continue the run saved in the checkpoint directory, exactly where it stopped
    #[arg(long)]
    resume: bool,
    /// Write one JSON line per optimizer step: {"step","loss","lr","grad_norm","tokens","seconds"}, as finetune
    #[arg(long)]
    log: Option<PathBuf>,
    /// Also measure the validation loss every N steps (always: at each epoch's end and at the end)
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Where to train: cpu, or cuda / cuda:N in a build with the `cuda` feature
    #[arg(long, default_value = if cfg!(feature = "cuda") { "cuda" } else { "cpu" })]
    device: String,
    /// What the passes compute in: f32, or bf16 / f16 mixed precision (float32 master weights and optimizer,
    /// products in 16 bits, loss scaling for f16; bf16 needs an Ampere or newer GPU) [default: bf16 on a GPU, f32
    /// on the CPU, where 16 bits are emulated and slower]
    #[arg(long)]
    precision: Option<Precision>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    tune_process_for_training();
    let device = finetune::device(&args.device)?;
    let checkpoint_dir = args.checkpoint_dir.clone().unwrap_or_else(|| args.out.with_extension("ckpt"));

    let mut model = match (&args.init, &args.config, &args.preset) {
        (Some(init), _, _) => BaseModel::load(init, &device)?,
        (None, config, preset) => {
            let config = match (config, preset) {
                (Some(path), _) => {
                    phi_converters::ModelConfig::read_file(path).with_context(|| format!("{}", path.display()))?
                }
                (None, Some(name)) => finetune::preset(name).with_context(|| {
                    let names: Vec<&str> = finetune::PRESETS.iter().map(|(n, _)| *n).collect();
                    format!("unknown --preset `{name}` ({})", names.join(", "))
                })?,
                (None, None) => bail!("give the model's shape (--config or --preset), or --init to continue a model"),
            };
            BaseModel::init_random(config, args.init_std, args.seed, &device)?
        }
    };
    let precision = args.precision.unwrap_or_else(|| Precision::default_for(&device));
    let config = model.config.clone();
    let parameters: usize = finetune::parameter_shapes(&config).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    eprintln!(
        "model: {} layers, width {}, {} heads, MLP {}, context {} ({:.1}M parameters){}; training in {}",
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.intermediate_size,
        config.context_length,
        parameters as f64 / 1e6,
        args.init.as_ref().map(|p| format!(", from {}", p.display())).unwrap_or_default(),
        match precision {
            Precision::F32 => "float32".to_owned(),
            mixed => format!("{mixed} mixed precision"),
        }
    );
    let seq_len = args.seq_len.unwrap_or(config.context_length.min(512));
    if seq_len > config.context_length {
        bail!("--seq-len {seq_len} is longer than the model's context of {} tokens", config.context_length);
    }

    let tokenizer = finetune::load_tokenizer(&model.source)?;
    let data_options =
        DataOptions { seq_len, val_fraction: args.val_fraction, seed: args.seed, vocab_size: Some(config.vocab_size) };
    let mut data = finetune::load_dataset(&args.data, &tokenizer, &data_options)?;
    if !args.no_pack {
        data.pack(seq_len);
    }
    eprintln!(
        "data: {} training sequences ({} tokens), {} validation sequences",
        data.train.len(),
        data.train_tokens(),
        data.validation.len()
    );

    let options = TrainOptions {
        seq_len,
        batch_size: args.batch,
        grad_accum: args.grad_accum,
        epochs: args.epochs,
        max_steps: args.steps,
        lr: args.lr,
        schedule: args.schedule,
        warmup_steps: args.warmup_steps,
        adamw: AdamWConfig {
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.adam_eps,
            weight_decay: args.weight_decay,
        },
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        checkpoint_dir: Some(checkpoint_dir.clone()),
        save_every: args.save_every,
        eval_every: args.eval_every,
        ..TrainOptions::default()
    };
    let vars = model.make_trainable()?;
    model.set_precision(precision)?;
    let model = model;
    let trained = FullParameters::new(&model, vars)?;
    let mut trainer = if args.resume {
        Trainer::resume_full(&model, &data, trained, options)?
    } else {
        Trainer::new_full(&model, &data, trained, options)?
    };

    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    let _interrupt = Interrupt::install("finishing this step and saving a checkpoint", move || {
        handler_stop.store(true, Ordering::SeqCst);
    })?;

    let mut log = StepLog::open(args.log.as_deref(), args.resume)?;
    let bar = progress::bar(trainer.total_steps(), "step", Unit::Items);
    let mut on_event = |event: &TrainEvent<_>| show_training_event(&bar, &mut log, event);
    let outcome = trainer.run(&*stop, &mut on_event);
    bar.finish_and_clear();
    let outcome = outcome?;
    log.finish()?;
    if let Some(interrupted) = report_interruption(&outcome, &checkpoint_dir) {
        return Ok(interrupted);
    }
    write_hf_checkpoint(&args.out, &config, &outcome.weights, args.dtype)?;
    report_final_losses(&outcome);
    eprintln!("wrote {} (a Hugging Face checkpoint; `phi-tui convert` makes a GGUF of it)", args.out.display());
    Ok(ExitCode::SUCCESS)
}
