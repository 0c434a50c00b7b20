//! `phi-tui` with no subcommand: the chat TUI.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_tui::config::{self, Config};
use phi_tui::session::ClientKind;
use phi_tui::tui::{self, TuiOptions};

use super::RuntimeArgs;

/// The log file's name in the data directory.
const LOG_FILE: &str = "phi-tui.log";

#[derive(Args, Debug, Clone)]
pub struct TuiArgs {
    /// The GGUF model (default: `model` in the config file)
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// A LoRA adapter GGUF to apply (default: `lora` in the config file)
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The adapter's scale (default: `lora_scale` in the config file, else 1.0)
    #[arg(long)]
    lora_scale: Option<f32>,
    /// Load the model in this process instead of sharing the session daemon's (and the editors') model
    #[arg(long)]
    standalone: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: TuiArgs) -> anyhow::Result<ExitCode> {
    let config_path = Config::path()?;
    let config = Config::load()?;
    tui::check_config(&config, &config_path)?;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "the chat TUI needs a terminal; for pipes and scripts use `phi-tui generate -m MODEL.gguf -p TEXT`"
        );
    }
    let data_dir = config::data_dir()?;
    let log = data_dir.join(LOG_FILE);
    // From here on the terminal belongs to the TUI: logs go to a file.
    phi_tui::logging::init_file(&log).with_context(|| format!("opening the log file {}", log.display()))?;
    tracing::info!("phi-tui TUI starting; config {}, data {}", config_path.display(), data_dir.display());

    let model = phi_tui::models::resolve(args.model.as_deref(), &config)?;
    let lora_scale = args.lora_scale.unwrap_or(config.lora_scale);
    let lora = args.lora.clone().or_else(|| config.lora.clone()).map(|path| (path, lora_scale));
    let session = super::serve::session_for(ClientKind::Tui, &args.runtime, args.standalone)?;
    let options = TuiOptions { session, model, lora, config, config_path, data_dir };
    super::runtime()?.block_on(tui::run(options))?;
    Ok(ExitCode::SUCCESS)
}
