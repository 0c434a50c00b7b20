//! The command line: one binary, one subcommand per job.

mod bench;
mod convert;
mod datagen;
mod eval;
mod finetune;
mod generate;
mod interrupt;
mod lsp;
mod progress;
mod pull;
mod serve;
mod train;
mod tui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use phi_tui::config::Config;
use phi_tui::engine::{Drafting, EngineOptions, FlashAttention, LookupOptions};

#[derive(Parser)]
#[command(
    name = "phi-tui",
    version,
    about = "A local, private code assistant around phi-1",
    long_about = "A local, private code assistant around phi-1.\n\nWith no subcommand, opens the chat TUI (F1 there \
                  lists every key).",
    after_long_help = TUI_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The chat TUI's options (when no subcommand is given)
    #[command(flatten)]
    tui: tui::TuiArgs,
}

const TUI_HELP: &str = "\
The TUI reads config.toml from the config directory (~/.config/phi-tui on Linux; $PHI_TUI_CONFIG_DIR overrides it)
and keeps conversations and its log (phi-tui.log) in the data directory (~/.local/share/phi-tui; $PHI_TUI_DATA_DIR).

config.toml (every setting optional):
  model = \"/path/to/phi-1.f16.gguf\"   # used without -m
                                        # or an installed model: model = \"phi-1\" (phi-tui models)
  lora = \"/path/to/adapter.gguf\"       # optional; lora_scale = 1.0
  mode = \"code\"                        # or \"chat\" (default: code for models without a chat template)
  max_tokens = 256
  temperature = 0.0                     # greedy
  mouse = true                          # capture the mouse (F2 toggles)
  theme = \"base16-ocean.dark\"
  [keys]                                # command = key or [keys]
  send = \"enter\"
  newline = [\"alt-enter\", \"ctrl-j\"]

Commands for [keys]: send newline cancel quit history_prev history_next scroll_up scroll_down scroll_bottom
regenerate edit_last toggle_mode new_session sessions prev_block next_block copy_block copy_reply run_block
export toggle_mouse load_model load_adapter help. Keys: enter, esc, tab, up, pageup, f1…f24, a, ctrl-x,
alt-enter, shift-tab, …";

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face phi checkpoint to GGUF (optionally quantized)
    Convert(convert::ConvertArgs),
    /// Generate a continuation of a prompt
    Generate(generate::GenerateArgs),
    /// Measure prompt-processing and generation speed through the engine
    Bench(bench::BenchArgs),
    /// Serve Python completions to an editor over the Language Server Protocol (stdio)
    Lsp(lsp::LspArgs),
    /// Fine-tune a LoRA adapter on your data (or import a PEFT adapter with --import-peft)
    Finetune(finetune::FinetuneArgs),
    /// Train a phi model: from scratch (a config or a preset shape) or all its weights from a checkpoint
    Train(train::TrainArgs),
    /// Evaluate a model on HumanEval or MBPP (pass@k)
    Eval(eval::EvalArgs),
    /// Run the session daemon that the TUI and editors share (they start it by themselves when needed)
    Serve(serve::ServeArgs),
    /// Show the session daemon: its model, adapter, memory and clients
    Status(serve::StatusArgs),
    /// Download a model from Hugging Face, convert it and install it (phi-1, phi-1_5, phi-2, owner/name)
    Pull(pull::PullArgs),
    /// List the installed models
    Models(pull::ModelsArgs),
    /// Remove an installed model
    Rm(pull::RmArgs),
    /// Generate synthetic training data (textbook sections or exercises) with a teacher model
    Datagen(datagen::DatagenArgs),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Convert(args)) => convert::run(args),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Lsp(args)) => lsp::run(args),
        Some(Command::Finetune(args)) => finetune::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Status(args)) => serve::status(args),
        Some(Command::Pull(args)) => pull::run_pull(args),
        Some(Command::Models(args)) => pull::run_models(args),
        Some(Command::Rm(args)) => pull::run_rm(args),
        Some(Command::Datagen(args)) => datagen::run(args),
        None => tui::run(cli.tui),
    }
}

/// How to run the model: shared by every subcommand that loads one.
#[derive(Args, Debug, Clone)]
struct RuntimeArgs {
    /// CPU threads (default: all cores; at most four per core)
    #[arg(long, short = 't', value_parser = clap::value_parser!(u32).range(1..=512))]
    threads: Option<u32>,
    /// Layers to offload to the GPU (default: all when built with a GPU backend)
    #[arg(long = "ngl", alias = "gpu-layers")]
    gpu_layers: Option<u32>,
    /// Flash attention: auto lets llama.cpp turn it on where the backend supports it
    #[arg(long = "flash-attn", default_value = "auto", value_parser = flash_attention_parser())]
    flash_attention: FlashAttention,
    /// The GPU to use when there are several
    #[arg(long, default_value_t = 0)]
    main_gpu: u32,
    /// Tokens of context (default: the model's training context, which is also the most allowed)
    #[arg(long = "ctx-size", short = 'c', value_parser = clap::value_parser!(u32).range(16..=i32::MAX as i64))]
    context_size: Option<u32>,
    /// Allow a context beyond the model's training context (it was not trained for it)
    #[arg(long, requires = "context_size")]
    force_context: bool,
    /// Directory of ggml backend modules (e.g. a CUDA backend built elsewhere); needs the `dynamic-backends` build
    #[arg(long, env = "PHI_TUI_BACKENDS_DIR")]
    backends_dir: Option<PathBuf>,
}

impl RuntimeArgs {
    fn engine_options(&self, sequences: u32) -> anyhow::Result<EngineOptions> {
        use_backends_dir(self.backends_dir.as_deref())?;
        check_threads(self.threads)?;
        Ok(EngineOptions {
            context_size: self.context_size,
            sequences,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            flash_attention: self.flash_attention,
            main_gpu: self.main_gpu,
            context_beyond_training: self.force_context,
            ..EngineOptions::default()
        })
    }
}

impl RuntimeArgs {
    /// These options as command-line arguments, for a session daemon that a client starts.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |flag: &str, value: String| {
            args.push(flag.into());
            args.push(value.into());
        };
        if let Some(threads) = self.threads {
            push("--threads", threads.to_string());
        }
        if let Some(layers) = self.gpu_layers {
            push("--ngl", layers.to_string());
        }
        push("--flash-attn", self.flash_attention.to_string());
        push("--main-gpu", self.main_gpu.to_string());
        if let Some(context) = self.context_size {
            push("--ctx-size", context.to_string());
        }
        if self.force_context {
            args.push("--force-context".into());
        }
        if let Some(dir) = &self.backends_dir {
            args.push("--backends-dir".into());
            args.push(dir.as_os_str().to_owned());
        }
        args
    }
}

/// More threads than the machine can use slow llama.cpp down, and thousands crash its OpenMP runtime.
fn check_threads(threads: Option<u32>) -> anyhow::Result<()> {
    let most = phi_tui::engine::max_threads();
    match threads {
        Some(threads) if threads > most => {
            anyhow::bail!("--threads {threads}: at most {most} on this machine (four per core, at least 64)")
        }
        _ => Ok(()),
    }
}

/// Tells the engine where the ggml backend modules are, before anything starts llama.cpp.
fn use_backends_dir(dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        #[cfg(feature = "dynamic-backends")]
        phi_tui::engine::set_backends_dir(dir.to_path_buf());
        #[cfg(not(feature = "dynamic-backends"))]
        anyhow::bail!("--backends-dir {} needs a phi-tui built with `--features dynamic-backends`", dir.display());
    }
    Ok(())
}

/// Parses `--flash-attn`, listing its values in `--help` and in errors.
fn flash_attention_parser() -> impl clap::builder::TypedValueParser<Value = FlashAttention> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(["auto", "on", "off"]).try_map(|s| s.parse::<FlashAttention>())
}

/// The model a subcommand runs (`-m`: an installed name or a path; else the config file's; else the only installed
/// one), or first-run guidance when there is none.
fn model_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let config = if given.is_some() { Config::load().unwrap_or_default() } else { Config::load()? };
    phi_tui::models::resolve(given, &config)?.ok_or_else(|| anyhow::anyhow!("{}", no_model_guidance()))
}

/// [`model_path`] for training: an installed model gives the checkpoint it was converted from.
fn checkpoint_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let config = if given.is_some() { Config::load().unwrap_or_default() } else { Config::load()? };
    phi_tui::models::resolve_checkpoint(given, &config)?.ok_or_else(|| anyhow::anyhow!("{}", no_model_guidance()))
}

/// What to say when there is no model at all.
fn no_model_guidance() -> String {
    let first = phi_tui::models::FIRST_MODEL;
    format!(
        "no model yet: `phi-tui pull {}` downloads {} ({}) from Hugging Face and installs it; or pass -m MODEL.gguf \
         (`phi-tui convert DIR` makes one from a checkpoint you have)",
        first.name,
        first.repo,
        phi_tui::models::human_size(first.download_bytes)
    )
}

/// A small runtime for the subcommands that await the engine.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Speculative drafting: `--draft off|lookup`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DraftMode {
    /// One token per decode
    Off,
    /// Prompt lookup: draft the tokens that followed the latest n-gram before, verify them in one decode
    Lookup,
}

/// Prompt lookup's settings, for the subcommands that draft.
#[derive(Args, Debug, Clone)]
struct LookupArgs {
    /// The longest n-gram prompt lookup matches (shorter ones are tried after it)
    #[arg(long, default_value_t = LookupOptions::default().ngram)]
    draft_ngram: u32,
    /// The shortest n-gram prompt lookup matches
    #[arg(long, default_value_t = LookupOptions::default().min_ngram)]
    draft_ngram_min: u32,
    /// Tokens drafted per step at most
    #[arg(long, default_value_t = LookupOptions::default().max_draft)]
    draft_max: u32,
}

impl LookupArgs {
    /// The drafting `mode` asks for with these settings; settings out of bounds are an error, before any model loads.
    fn drafting(&self, mode: DraftMode) -> anyhow::Result<Drafting> {
        Ok(match mode {
            DraftMode::Off => Drafting::Off,
            DraftMode::Lookup => {
                let options = LookupOptions {
                    ngram: self.draft_ngram,
                    min_ngram: self.draft_ngram_min,
                    max_draft: self.draft_max,
                    ..LookupOptions::default()
                };
                // No reference tokens yet, so any vocabulary will do.
                options.validate(i32::MAX).map_err(|e| anyhow::anyhow!("--draft lookup: {e}"))?;
                Drafting::Lookup(options)
            }
        })
    }
}
