//! `phi-tui convert`: a Hugging Face phi checkpoint to GGUF (the conversion itself is `phi_tui::convert`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_converters::{ConvertSummary, OutType, TokenizerOrigin};
use phi_tui::convert::{CheckpointConversion, ConvertStage};

use super::progress::{self, Unit};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint directory (config.json + model.safetensors or shards)
    input: PathBuf,
    /// The GGUF to write (default: <checkpoint name>.<outtype>.gguf in the current directory)
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Storage type of the weights: f32/f16/bf16/q8_0 are written directly, the others through llama.cpp's quantizer
    #[arg(long, default_value = "f16", ignore_case = true, value_parser = out_type_parser())]
    outtype: OutType,
    /// Directory with the tokenizer (tokenizer.json) to embed, if not the checkpoint's own
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Threads for llama.cpp's quantizer (default: all cores)
    #[arg(long, short = 't', value_parser = clap::value_parser!(u32).range(1..=512))]
    threads: Option<u32>,
    /// Directory of ggml backend modules for llama.cpp's quantizer; needs the `dynamic-backends` build
    #[arg(long, env = "PHI_TUI_BACKENDS_DIR")]
    backends_dir: Option<PathBuf>,
}

/// Parses `--outtype`, listing its values in `--help` and in errors.
fn out_type_parser() -> impl clap::builder::TypedValueParser<Value = OutType> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(OutType::ALL.map(OutType::name)).try_map(|s| s.parse::<OutType>())
}

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let output = match &args.output {
        Some(path) => path.clone(),
        None => default_output(&args.input, args.outtype)?,
    };
    super::use_backends_dir(args.backends_dir.as_deref())?;
    super::check_threads(args.threads)?;
    // An interrupted run leaves no temporary file behind.
    remove_temporary_files_on_signals()?;
    let conversion =
        CheckpointConversion { out_type: args.outtype, tokenizer: args.tokenizer.clone(), threads: args.threads };
    let summary = convert_with_progress(&args.input, &output, &conversion)?;
    if let TokenizerOrigin::Fallback(what) = &summary.tokenizer {
        eprintln!("note: {} has no tokenizer.json; embedded {what}", args.input.display());
    }
    eprintln!(
        "wrote {} ({}, {} tensors, {} parameters, {:.1} MiB)",
        output.display(),
        args.outtype,
        summary.tensor_count,
        summary.parameter_count,
        std::fs::metadata(&output).map(|m| m.len()).unwrap_or(summary.output_bytes) as f64 / (1024.0 * 1024.0)
    );
    Ok(ExitCode::SUCCESS)
}

fn default_output(input: &Path, out_type: OutType) -> anyhow::Result<PathBuf> {
    let name = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .with_context(|| format!("{}: cannot name the output after this path; pass -o", input.display()))?;
    Ok(PathBuf::from(format!("{name}.{out_type}.gguf")))
}

/// Converts (and quantizes) with a progress bar on stderr: bytes of tensors written, then a spinner while
/// llama.cpp quantizes. `pull` converts through here too.
pub(super) fn convert_with_progress(
    input: &Path,
    output: &Path,
    conversion: &CheckpointConversion,
) -> anyhow::Result<ConvertSummary> {
    let bar = progress::bar(0, "converting", Unit::Bytes);
    let mut on_stage = |stage: ConvertStage<'_>| match stage {
        ConvertStage::Converting(progress) => {
            bar.set_length(progress.bytes_total);
            bar.set_position(progress.bytes_done);
            bar.set_message(format!("{}/{} {}", progress.index + 1, progress.tensor_count, progress.tensor));
        }
        ConvertStage::Quantizing(out_type) => {
            bar.set_style(progress::spinner_style());
            bar.set_message(format!("quantizing to {out_type} with llama.cpp"));
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
    };
    let result = phi_tui::convert::convert_checkpoint(input, output, conversion, &mut on_stage);
    bar.finish_and_clear();
    Ok(result?)
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary files of the conversion, then ends the process as the
/// signal would have (exit status 128 + signal). A thread of its own waits for the signals, so the removal runs
/// outside the signal handler; `_exit` then skips destructors, which could meet llama.cpp's quantizer mid-work.
fn remove_temporary_files_on_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new().name("convert-signals".to_owned()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            phi_converters::remove_temporary_files();
            eprintln!("\ninterrupted; no output written");
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(128 + signal) };
        }
    })?;
    Ok(())
}
