//! The command line: one binary, one subcommand per job.

mod bench;
mod convert;
mod eval;
mod finetune;
mod generate;
mod lsp;
mod tui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    /// Evaluate a model on HumanEval or MBPP (pass@k)
    Eval(eval::EvalArgs),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Convert(args)) => convert::run(args),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Lsp(args)) => lsp::run(args),
        Some(Command::Finetune(args)) => finetune::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        None => tui::run(cli.tui),
    }
}

/// How to run the model: shared by every subcommand that loads one.
#[derive(Args, Debug, Clone)]
struct RuntimeArgs {
    /// CPU threads (default: all cores)
    #[arg(long, short = 't')]
    threads: Option<u32>,
    /// Layers to offload to the GPU (default: all when built with a GPU backend)
    #[arg(long = "ngl", alias = "gpu-layers")]
    gpu_layers: Option<u32>,
    /// Flash attention
    #[arg(long = "flash-attn", default_value = "auto", value_parser = parse_flash_attention)]
    flash_attention: FlashAttention,
    /// The GPU to use when there are several
    #[arg(long, default_value_t = 0)]
    main_gpu: u32,
    /// Tokens of context (default: the model's training context)
    #[arg(long = "ctx-size", short = 'c')]
    context_size: Option<u32>,
    /// Directory of ggml backend modules (e.g. a CUDA backend built elsewhere); needs the `dynamic-backends` build
    #[arg(long, env = "PHI_TUI_BACKENDS_DIR")]
    backends_dir: Option<PathBuf>,
}

impl RuntimeArgs {
    fn engine_options(&self, sequences: u32) -> anyhow::Result<EngineOptions> {
        use_backends_dir(self.backends_dir.as_deref())?;
        Ok(EngineOptions {
            context_size: self.context_size,
            sequences,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            flash_attention: self.flash_attention,
            main_gpu: self.main_gpu,
            ..EngineOptions::default()
        })
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

fn parse_flash_attention(s: &str) -> Result<FlashAttention, String> {
    s.parse()
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
    fn drafting(&self, mode: DraftMode) -> Drafting {
        match mode {
            DraftMode::Off => Drafting::Off,
            DraftMode::Lookup => Drafting::Lookup(LookupOptions {
                ngram: self.draft_ngram,
                min_ngram: self.draft_ngram_min,
                max_draft: self.draft_max,
                ..LookupOptions::default()
            }),
        }
    }
}
