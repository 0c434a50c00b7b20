//! The command line: one binary, one subcommand per job.

mod bench;
mod convert;
mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use phi_tui::engine::{EngineOptions, FlashAttention};

#[derive(Parser)]
#[command(name = "phi-tui", version, about = "A local, private code assistant around phi-1")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face phi checkpoint to GGUF (optionally quantized)
    Convert(convert::ConvertArgs),
    /// Generate a continuation of a prompt
    Generate(generate::GenerateArgs),
    /// Measure prompt-processing and generation speed through the engine
    Bench(bench::BenchArgs),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Convert(args)) => convert::run(args),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        None => {
            // The chat TUI is the default once it exists; until then, say what there is.
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::SUCCESS)
        }
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
        if let Some(dir) = &self.backends_dir {
            #[cfg(feature = "dynamic-backends")]
            phi_tui::engine::set_backends_dir(dir.clone());
            #[cfg(not(feature = "dynamic-backends"))]
            anyhow::bail!("--backends-dir {} needs a phi-tui built with `--features dynamic-backends`", dir.display());
        }
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

fn parse_flash_attention(s: &str) -> Result<FlashAttention, String> {
    s.parse()
}

/// A small runtime for the subcommands that await the engine.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
