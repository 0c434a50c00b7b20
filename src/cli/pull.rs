//! `phi-tui pull`, `phi-tui models`, `phi-tui rm`: getting a model, listing and removing what is installed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use phi_converters::OutType;
use phi_tui::hub::{FetchEvent, Hub};
use phi_tui::models::{self, PullEvent, PullRequest, Registry, KNOWN_MODELS};

use super::progress::{self, Unit};

#[derive(Args, Debug)]
#[command(after_help = known_models_help())]
pub struct PullArgs {
    /// phi-1, phi-1_5, phi-2, or a Hugging Face repository (owner/name) with a phi checkpoint in safetensors
    model: String,
    /// A branch, tag or commit of the repository
    #[arg(long, default_value = "main")]
    revision: String,
    /// The GGUF's type: f16, q8_0, q4_k_m, … (default: f16 where a GPU is present, q8_0 otherwise)
    #[arg(long, value_parser = parse_out_type)]
    quant: Option<OutType>,
    /// Install under this name (default: the model's short name); lets two types of one model live side by side
    #[arg(long)]
    name: Option<String>,
    /// Threads for llama.cpp's quantizer (default: all cores)
    #[arg(long, short = 't')]
    threads: Option<u32>,
    /// Directory of ggml backend modules for llama.cpp's quantizer; needs the `dynamic-backends` build
    #[arg(long, env = "PHI_TUI_BACKENDS_DIR")]
    backends_dir: Option<PathBuf>,
}

fn known_models_help() -> String {
    let mut help = String::from("Models:\n");
    for known in KNOWN_MODELS {
        help.push_str(&format!(
            "  {:<8} {:<18} {} download; {}\n",
            known.name,
            known.repo,
            models::human_size(known.download_bytes),
            known.about
        ));
    }
    help.push_str(
        "\nThe download goes to the Hugging Face cache (HF_HOME, default ~/.cache/huggingface; shared with Python's \
         huggingface_hub), resumes after an interruption, and every file is checked against the hub's sha256. \
         HF_ENDPOINT names another hub, HF_TOKEN authenticates, HF_HUB_OFFLINE=1 uses the cache only.",
    );
    help
}

fn parse_out_type(s: &str) -> Result<OutType, String> {
    s.parse().map_err(|e: phi_converters::ConvertError| e.to_string())
}

pub fn run_pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    super::use_backends_dir(args.backends_dir.as_deref())?;
    let data_dir = phi_tui::config::data_dir()?;
    let hub = Hub::from_env();
    let request = PullRequest {
        model: args.model.clone(),
        revision: args.revision.clone(),
        quant: args.quant,
        name: args.name.clone(),
        threads: args.threads,
    };
    let cancel = AtomicBool::new(false);
    let mut display = PullDisplay::new();
    let result = models::pull(&hub, &data_dir, &request, &mut |event| display.show(event), &cancel);
    display.bar.finish_and_clear();
    let pulled = result?;
    let model = &pulled.model;
    if pulled.up_to_date {
        eprintln!("{} is up to date ({}, {})", model.name, model.quant, model.source);
    } else {
        if let Some(old) = &pulled.replaced {
            eprintln!("replaced {} ({}, {})", old.name, old.quant, old.source);
        }
        eprintln!(
            "installed {} ({}, {}) from {}\n  {}",
            model.name,
            model.quant,
            models::human_size(model.size),
            model.source,
            model.path.display()
        );
    }
    eprintln!("run it: phi-tui -m {0}   (or `phi-tui generate -m {0} -p TEXT`)", model.name);
    Ok(ExitCode::SUCCESS)
}

/// Draws a pull's progress on stderr: bytes downloaded (with speed and ETA), then tensors converted, then a
/// spinner while llama.cpp quantizes. indicatif draws only when stderr is a terminal; the log lines always show.
struct PullDisplay {
    bar: ProgressBar,
    stage: Option<&'static str>,
}

impl PullDisplay {
    fn new() -> Self {
        PullDisplay { bar: ProgressBar::hidden(), stage: None }
    }

    fn stage(&mut self, name: &'static str, style: ProgressStyle) {
        if self.stage != Some(name) {
            self.bar.finish_and_clear();
            self.bar = ProgressBar::new(0).with_style(style);
            self.stage = Some(name);
        }
    }

    fn show(&mut self, event: PullEvent) {
        match event {
            PullEvent::Resolving { repo } => eprintln!("pulling {repo}"),
            PullEvent::UsingCache { repo, reason } => {
                eprintln!("{reason}: using the copy of {repo} in the Hugging Face cache (unchecked without the hub)")
            }
            PullEvent::Download(FetchEvent::Progress { file, done, total }) => {
                self.stage("download", progress::style("downloading", Unit::Bytes));
                self.bar.set_length(total);
                self.bar.set_position(done);
                self.bar.set_message(file);
            }
            PullEvent::Download(FetchEvent::Checking { file }) => self.bar.set_message(format!("checking {file}")),
            PullEvent::Download(FetchEvent::Retrying { file, done, total, reason }) => self.bar.suspend(|| {
                eprintln!("{file}: the connection broke after {done} of {total} bytes ({reason}); resuming")
            }),
            PullEvent::Download(FetchEvent::Corrupt { file }) => {
                self.bar.suspend(|| eprintln!("{file}: does not match the hub's hash; fetching it again"))
            }
            PullEvent::Converting { out_type, done, total } => {
                self.stage("convert", progress::style("converting", Unit::Bytes));
                self.bar.set_length(total);
                self.bar.set_position(done);
                self.bar.set_message(format!("to {out_type}"));
            }
            PullEvent::Quantizing { out_type } => {
                self.stage("quantize", progress::spinner_style());
                self.bar.set_message(format!("quantizing to {out_type} with llama.cpp"));
                self.bar.enable_steady_tick(std::time::Duration::from_millis(120));
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Print one JSON array of the installed models
    #[arg(long)]
    json: bool,
}

pub fn run_models(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let data_dir = phi_tui::config::data_dir()?;
    let registry = Registry::load(&data_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&registry.models)?);
        return Ok(ExitCode::SUCCESS);
    }
    if registry.models.is_empty() {
        eprintln!("no models installed; `phi-tui pull phi-1` gets one");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = registry
        .models
        .iter()
        .map(|m| {
            let path =
                if m.path.is_file() { m.path.display().to_string() } else { format!("{} (missing)", m.path.display()) };
            [m.name.clone(), m.quant.clone(), models::human_size(m.size), m.source.to_string(), path]
        })
        .collect();
    let header = ["NAME", "QUANT", "SIZE", "SOURCE", "PATH"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The installed model's name (see `phi-tui models`)
    name: String,
}

pub fn run_rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let data_dir = phi_tui::config::data_dir()?;
    let model = models::remove(&data_dir, &args.name)?;
    eprintln!("removed {} ({}, {})", model.name, model.quant, model.path.display());
    if let Some(checkpoint) =
        model.checkpoint.as_ref().filter(|_| matches!(model.source, models::ModelSource::Hub { .. }))
    {
        eprintln!("the download stays in the Hugging Face cache: {}", checkpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}
