//! `phi-tui lsp`: the language server on stdio, completing Python from the model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_lsp::{ServerOptions, Settings};
use phi_tui::config::{self, Config};
use phi_tui::lsp_backend::SessionBackend;
use phi_tui::session::ClientKind;

use super::{DraftMode, LookupArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct LspArgs {
    /// The GGUF model (default: the client's initializationOptions.model, then `model` in the config file)
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Append logs to this file (default: lsp.log in the data directory). stdout carries the protocol.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Accepted for editors that pass it; stdio is the only transport
    #[arg(long, hide = true)]
    stdio: bool,
    /// Load the model in this process instead of sharing the session daemon's (and the TUI's) model
    #[arg(long)]
    standalone: bool,
    /// Speculative drafting of completions: the same text, in fewer decodes
    #[arg(long, value_enum, default_value_t = DraftMode::Lookup)]
    draft: DraftMode,
    #[command(flatten)]
    lookup: LookupArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: LspArgs) -> anyhow::Result<ExitCode> {
    let log_file = match args.log_file {
        Some(path) => path,
        None => config::data_dir()?.join("lsp.log"),
    };
    phi_tui::logging::init_file(&log_file).with_context(|| format!("opening the log file {}", log_file.display()))?;
    // A broken config file must not keep the server from starting: the client gets its settings anyway.
    let config = Config::load().unwrap_or_else(|error| {
        tracing::warn!(%error, "ignoring the config file");
        Config::default()
    });
    let settings = Settings { model: phi_tui::models::default_model(&config), ..Settings::default() };
    let session = super::serve::session_for(ClientKind::Editor, &args.runtime, args.standalone)?;
    let options = ServerOptions { model: args.model, settings };
    let drafting = args.lookup.drafting(args.draft)?;
    tracing::info!(log = %log_file.display(), "phi-tui lsp starting");
    // Several threads: the protocol keeps answering (cancellations, other documents) while a request waits.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(phi_lsp::serve_stdio(SessionBackend::new(session).with_drafting(drafting), options));
    Ok(ExitCode::SUCCESS)
}
