//! `phi-tui finetune`: train a LoRA adapter on a JSONL file or a Python repository, write it as a llama.cpp GGUF
//! (for `generate --lora` and the running session) and as a PEFT directory (for Python tools). With
//! `--import-peft DIR` it converts an existing PEFT adapter to GGUF instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use phi_tui::finetune::live::LiveControl;
use phi_tui::finetune::{
    self, AdamWConfig, AdapterShape, BaseModel, DataOptions, LoraAdapter, Precision, ScheduleKind, TrainEvent,
    TrainOptions, TrainOutcome,
};
use phi_tui::session::client::DaemonSession;
use phi_tui::session::paths::SessionPaths;
use phi_tui::session::{watch_interactive, ClientKind, SharedSession};

use indicatif::ProgressBar;

use super::interrupt::Interrupt;
use super::progress::{self, Unit};

/// With --live, validation (and so a possible push) every this many steps unless --eval-every says otherwise.
const LIVE_EVAL_EVERY: u64 = 10;

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a Hugging Face checkpoint directory, a GGUF in F32, F16 or BF16, or an installed model's name
    /// (its downloaded checkpoint) [default: `model` in the config file, else the only installed model]
    #[arg(long)]
    base: Option<PathBuf>,
    /// Training data: JSONL ({"text"}, {"prompt","completion"} or {"ids"} per line), a .py file, or a directory of
    /// Python files (.gitignore respected)
    #[arg(long, required_unless_present = "import_peft")]
    data: Option<PathBuf>,
    /// The adapter GGUF to write
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// The PEFT directory to write too (default: OUT with the extension `.peft`)
    #[arg(long)]
    peft_out: Option<PathBuf>,
    /// Convert this PEFT adapter directory to the GGUF at --out instead of training (checked against --base if
    /// given)
    #[arg(long, conflicts_with_all = ["data", "resume", "init_adapter"])]
    import_peft: Option<PathBuf>,
    /// LoRA rank [default: 8, or the --init-adapter's]
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha/rank [default: 16, or the --init-adapter's]
    #[arg(long)]
    alpha: Option<f32>,
    /// Layers to adapt, comma-separated (q_proj, k_proj, v_proj, dense, fc1, fc2; Wqkv and out_proj are aliases)
    /// [default: all six, or the --init-adapter's]
    #[arg(long)]
    targets: Option<String>,
    /// Peak learning rate
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Passes over the training data
    #[arg(long, default_value_t = 1, conflicts_with = "steps")]
    epochs: usize,
    /// Optimizer steps in all (instead of --epochs)
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Longest sequence in tokens (at most the model's context)
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Seeds the LoRA initialisation, the data order and the validation split
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Learning-rate schedule after warmup: cosine, linear or constant
    #[arg(long, default_value = "cosine")]
    schedule: ScheduleKind,
    /// Steps of linear warmup from 0 to --lr
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// AdamW's decoupled weight decay
    #[arg(long, default_value_t = 0.0)]
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
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Keep the data in file order instead of shuffling each epoch
    #[arg(long)]
    no_shuffle: bool,
    /// Start from this adapter (PEFT directory or GGUF) instead of a random initialisation
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Where checkpoints go (default: OUT with the extension `.ckpt`)
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Also save a checkpoint every N steps (always: at each epoch's end, on Ctrl-C and at the end)
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Continue the run saved in the checkpoint directory, exactly where it stopped
    #[arg(long, conflicts_with = "init_adapter")]
    resume: bool,
    /// Write one JSON line per optimizer step: {"step","loss","lr","grad_norm","tokens","seconds"} (loss before the
    /// update; step counts from 1; grad_norm before clipping; seconds of wall-clock time for the step)
    #[arg(long)]
    log: Option<PathBuf>,
    /// Also measure the validation loss every N steps (always: at each epoch's end and at the end) [default: 0, or
    /// 10 with --live]
    #[arg(long)]
    eval_every: Option<u64>,
    /// Push each improved adapter (lowest validation loss so far; written to --out) into the running session
    /// daemon, so the TUI and the editors use it while training goes on; training waits between steps while the
    /// session is generating, and uses --threads
    #[arg(long)]
    live: bool,
    /// Training threads with --live [default: half the cores]
    #[arg(long, default_value_t = 0, requires = "live")]
    threads: usize,
    /// Where to train: cpu, or cuda / cuda:N in a build with the `cuda` feature
    #[arg(long, default_value = if cfg!(feature = "cuda") { "cuda" } else { "cpu" })]
    device: String,
    /// What the passes compute in: f32, or bf16 / f16 mixed precision (float32 master weights and optimizer,
    /// products in 16 bits, loss scaling for f16; bf16 needs an Ampere or newer GPU) [default: bf16 on a GPU, f32
    /// on the CPU, where 16 bits are emulated and slower]
    #[arg(long)]
    precision: Option<Precision>,
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<ExitCode> {
    tune_process_for_training();
    let device = finetune::device(&args.device)?;
    if let Some(peft_dir) = &args.import_peft {
        let base = args.base.as_deref().map(|base| super::checkpoint_path(Some(base))).transpose()?;
        return import(base.as_deref(), peft_dir, &args.out, &device);
    }
    let Some(data_path) = &args.data else {
        bail!("--data is needed to train");
    };
    let base_path = &super::checkpoint_path(args.base.as_deref())?;
    let checkpoint_dir = args.checkpoint_dir.clone().unwrap_or_else(|| args.out.with_extension("ckpt"));
    let peft_out = args.peft_out.clone().unwrap_or_else(|| args.out.with_extension("peft"));
    if args.rank == Some(0) {
        bail!("--rank must be at least 1");
    }

    let mut model = BaseModel::load(base_path, &device)?;
    model.set_precision(args.precision.unwrap_or_else(|| Precision::default_for(&device)))?;
    let model = model;
    let config = &model.config;
    finetune::plan::check_seq_len(config, args.seq_len)?;
    tracing::info!(
        layers = config.num_layers,
        hidden = config.hidden_size,
        context = config.context_length,
        "loaded base {}",
        base_path.display()
    );
    let data_options =
        DataOptions { seq_len: args.seq_len, val_fraction: args.val_fraction, seed: args.seed, vocab_size: None };
    let data = finetune::plan::load_data(&model, data_path, data_options)?;
    eprintln!(
        "data: {} training sequences ({} tokens), {} validation sequences",
        data.train.len(),
        data.train_tokens(),
        data.validation.len()
    );

    let options = TrainOptions {
        seq_len: args.seq_len,
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
        eval_every: args.eval_every.unwrap_or(if args.live { LIVE_EVAL_EVERY } else { 0 }),
        ..TrainOptions::default()
    };
    let shape = AdapterShape { rank: args.rank, alpha: args.alpha, targets: args.targets.clone() };
    let mut trainer =
        finetune::plan::start_trainer(&model, &data, options, &shape, args.resume, args.init_adapter.as_deref())?;

    let live = args.live.then(LiveSession::connect).transpose()?;
    let busy = live.as_ref().map(|l| Arc::clone(&l.busy));
    let control = Arc::new(LiveControl::new(move || busy.as_ref().is_some_and(|b| b.load(Ordering::SeqCst))));
    let handler_control = Arc::clone(&control);
    Interrupt::install("finishing this step and saving a checkpoint", move || handler_control.stop())?;

    let mut log = StepLog::open(args.log.as_deref(), args.resume)?;
    let bar = progress::bar(trainer.total_steps(), "step", Unit::Items);
    let adapter_name = finetune::gguf_adapter::name_from_path(&args.out);
    let mut best: Option<LoraAdapter> = None;
    let mut live_error = None;
    let mut on_event = |event: &TrainEvent| match event {
        TrainEvent::Improved { step, loss, weights: adapter } => {
            let Some(live) = &live else { return };
            best = Some((**adapter).clone());
            let pushed = finetune::write_adapter_gguf_at_step(&args.out, adapter, &adapter_name, Some(*step))
                .map_err(anyhow::Error::from)
                .and_then(|()| live.push(&args.out));
            match pushed {
                Ok(()) => bar.suspend(|| {
                    eprintln!("step {step}: validation loss {loss:.4}, the session now applies {}", args.out.display())
                }),
                Err(e) => {
                    bar.suspend(|| eprintln!("step {step}: {e:#}"));
                    live_error.get_or_insert(e);
                }
            }
        }
        other => show_training_event(&bar, &mut log, other),
    };
    let outcome = match &live {
        Some(_) => finetune::live::training_pool(args.threads)?.install(|| trainer.run(&*control, &mut on_event)),
        None => trainer.run(&*control, &mut on_event),
    };
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(e) = live_error {
        tracing::warn!("live fine-tuning could not reach the session: {e:#}");
    }
    log.finish()?;
    if let Some(interrupted) = report_interruption(&outcome, &checkpoint_dir) {
        return Ok(interrupted);
    }

    // Live, --out holds the best adapter (lowest validation loss), already applied; without validation data there
    // was none, and the last one is written and applied now.
    let kept = match (&live, best) {
        (Some(_), Some(best)) => best,
        (Some(live), None) => {
            finetune::write_adapter_gguf_at_step(&args.out, &outcome.weights, &adapter_name, Some(outcome.steps_done))?;
            if let Err(e) = live.push(&args.out) {
                eprintln!("{e:#}");
            }
            outcome.weights.clone()
        }
        (None, _) => {
            finetune::write_adapter_gguf(&args.out, &outcome.weights, &adapter_name)?;
            outcome.weights.clone()
        }
    };
    let base_name = base_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    finetune::write_peft(&peft_out, &kept, &base_name)?;
    report_final_losses(&outcome);
    eprintln!(
        "wrote {} (rank {}, alpha {}, {} parameters) and {}",
        args.out.display(),
        kept.rank,
        kept.alpha,
        kept.parameter_count(),
        peft_out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--live`: the running session daemon, reached as a probe (it neither starts a daemon nor takes a sequence),
/// and whether it is generating, watched on a thread of its own.
struct LiveSession {
    runtime: tokio::runtime::Runtime,
    session: SharedSession,
    busy: Arc<AtomicBool>,
}

impl LiveSession {
    fn connect() -> anyhow::Result<LiveSession> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let paths = SessionPaths::for_user()?;
        let session: SharedSession = Arc::new(DaemonSession::new(paths, ClientKind::Probe, None));
        match runtime.block_on(session.state()) {
            Ok(state) if state.model.is_some() => {}
            Ok(_) => eprintln!("live: the session daemon has no model loaded yet; adapters are pushed once it has"),
            Err(e) => bail!("--live needs a running session (start the TUI, an editor, or `phi-tui serve`): {e}"),
        }
        let busy = Arc::new(AtomicBool::new(false));
        runtime.spawn(watch_interactive(Arc::clone(&session), Arc::clone(&busy)));
        Ok(LiveSession { runtime, session, busy })
    }

    /// Applies the adapter at `path` for every client of the session.
    fn push(&self, path: &Path) -> anyhow::Result<()> {
        let path = path.canonicalize().with_context(|| format!("{}", path.display()))?;
        self.runtime.block_on(self.session.set_adapter(path, 1.0))?;
        Ok(())
    }
}

fn import(base: Option<&Path>, peft_dir: &Path, out: &Path, device: &candle_core::Device) -> anyhow::Result<ExitCode> {
    let model = base.map(|b| BaseModel::load(b, device)).transpose()?;
    let adapter = finetune::import_peft(peft_dir, out, model.as_ref().map(|m| &m.config))?;
    eprintln!(
        "wrote {} (rank {}, alpha {}, {} LoRA matrices)",
        out.display(),
        adapter.rank,
        adapter.alpha,
        adapter.modules.len() * 2
    );
    Ok(ExitCode::SUCCESS)
}

/// Shows a trainer's event on `bar` and in `log` the way every training command does (`finetune`, `train`); what
/// an improved model means is each command's own business, so `Improved` shows nothing here.
pub(super) fn show_training_event<W>(bar: &ProgressBar, log: &mut StepLog, event: &TrainEvent<W>) {
    match event {
        TrainEvent::Started { start_step, total_steps, steps_per_epoch } => {
            bar.set_position(*start_step);
            bar.reset_eta();
            tracing::info!(total_steps, steps_per_epoch, start_step, "training");
        }
        TrainEvent::Step(report) => log.step(bar, report),
        TrainEvent::Validation { step, epoch, loss } => {
            bar.suspend(|| eprintln!("epoch {} (step {step}): validation loss {loss:.4}", epoch + 1));
        }
        TrainEvent::Checkpoint { step, path } => tracing::info!(step, "checkpoint {}", path.display()),
        TrainEvent::Improved { .. } => {}
    }
}

/// For a run stopped by Ctrl-C: says where its checkpoint is and how to continue, and gives the exit status (130).
pub(super) fn report_interruption<W>(outcome: &TrainOutcome<W>, checkpoint_dir: &Path) -> Option<ExitCode> {
    outcome.interrupted.then(|| {
        eprintln!(
            "stopped after step {}/{}; checkpoint in {} — continue with the same command plus --resume",
            outcome.steps_done,
            outcome.total_steps,
            checkpoint_dir.display()
        );
        ExitCode::from(130)
    })
}

/// The last step's training loss and the last validation loss of a finished run.
pub(super) fn report_final_losses<W>(outcome: &TrainOutcome<W>) {
    if let Some(loss) = outcome.last_loss {
        eprint!("final training loss {loss:.4}");
        if let Some(v) = outcome.validation_loss {
            eprint!(", validation loss {v:.4}");
        }
        eprintln!();
    }
}

/// `--log`: one JSON line per optimizer step, and the progress bar's message. A write error is kept and reported
/// at the end rather than stopping the run.
pub(super) struct StepLog {
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    error: Option<std::io::Error>,
}

impl StepLog {
    /// Opens `path` (appending when the run resumes); no path, no log.
    pub(super) fn open(path: Option<&Path>, append: bool) -> anyhow::Result<StepLog> {
        let file = match path {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(path)
                    .with_context(|| format!("{}: cannot open the log", path.display()))?;
                Some((path.to_path_buf(), std::io::BufWriter::new(file)))
            }
            None => None,
        };
        Ok(StepLog { file, error: None })
    }

    pub(super) fn step(&mut self, bar: &ProgressBar, report: &finetune::StepReport) {
        bar.set_position(report.step);
        let skipped = match report.loss_scale {
            Some(scale) if report.skipped => format!("  (float16 overflow: step skipped, loss scale {})", scale / 2.0),
            _ => String::new(),
        };
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s  lr {:.2e}{skipped}",
            report.loss,
            report.tokens as f64 / report.seconds.max(1e-9),
            report.lr
        ));
        tracing::debug!(step = report.step, loss = report.loss, lr = report.lr, grad_norm = report.grad_norm, "step");
        if let Some((_, log)) = &mut self.file {
            let mut line = serde_json::json!({
                "step": report.step,
                "loss": report.loss,
                "lr": report.lr,
                "grad_norm": report.grad_norm,
                "tokens": report.tokens,
                "seconds": report.seconds,
            });
            // float16 runs only, so that other runs' lines stay as they were.
            if let Some(scale) = report.loss_scale {
                line["loss_scale"] = serde_json::json!(scale);
                line["skipped"] = serde_json::json!(report.skipped);
            }
            if let Err(e) = writeln!(log, "{line}").and_then(|()| log.flush()) {
                self.error.get_or_insert(e);
            }
        }
    }

    /// The first write error, if any.
    pub(super) fn finish(self) -> anyhow::Result<()> {
        match (self.error, self.file) {
            (Some(e), Some((path, _))) => bail!("{}: cannot write the log: {e}", path.display()),
            _ => Ok(()),
        }
    }
}

/// Process-wide settings that make a training step ~25 % faster on a CPU. Called first thing, before any other
/// thread exists (setting the environment races with threads that read it).
///
/// * candle runs its elementwise ops on a pool of `CANDLE_NUM_THREADS` workers that spin between ops, while the
///   matmuls (most of a step) run on rayon's pool; with both sized to the core count the spinning workers steal the
///   matmuls' cores. The elementwise ops left in training are a few memory-bound adds, so one thread does them.
/// * mimalloc (the global allocator, see `main.rs`) returns freed memory to the OS after 10 ms; a training step
///   frees and reallocates the same hundreds of megabytes, which then fault back in page by page. Training keeps
///   them.
pub(super) fn tune_process_for_training() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // `mi_option_purge_delay` of mimalloc v3's `mi_option_t` (include/mimalloc.h of the pinned libmimalloc-sys),
    // which the crate's constants (written for v2's names) do not name; -1 means never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores the value in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
