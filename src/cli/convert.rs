//! `phi-tui convert`: a Hugging Face phi checkpoint to GGUF. f32/f16/bf16/q8_0 are written directly; the other
//! types go through llama.cpp's quantizer from an f16 (or f32) intermediate that is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use phi_converters::{
    ConvertOptions, ConvertProgress, ConvertSummary, OutType, SourceDtype, TemporaryPath, TokenizerOrigin,
    TokenizerSource,
};
use phi_tui::bundled;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint directory (config.json + model.safetensors or shards)
    input: PathBuf,
    /// The GGUF to write (default: <checkpoint name>.<outtype>.gguf in the current directory)
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Storage type of the weights
    #[arg(long, default_value = "f16", value_parser = parse_out_type)]
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

fn parse_out_type(s: &str) -> Result<OutType, String> {
    s.parse().map_err(|e: phi_converters::ConvertError| e.to_string())
}

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let output = match &args.output {
        Some(path) => path.clone(),
        None => default_output(&args.input, args.outtype)?,
    };
    let options = ConvertOptions {
        out_type: args.outtype,
        tokenizer: args.tokenizer.clone().map(TokenizerSource::Dir),
        fallback_tokenizer: Some(TokenizerSource::Bundled {
            tokenizer_json: bundled::TOKENIZER_JSON,
            tokenizer_config_json: bundled::TOKENIZER_CONFIG_JSON,
        }),
    };
    super::use_backends_dir(args.backends_dir.as_deref())?;
    super::check_threads(args.threads)?;
    // Before anything is written: an unusable output (a device, a file of the checkpoint itself) is refused here,
    // and an interrupted run leaves no temporary file behind.
    phi_converters::check_output(&args.input, &output, &options)?;
    remove_temporary_files_on_signals()?;
    let summary = if args.outtype.is_native() {
        convert_with_progress(&args.input, &output, &options)?
    } else {
        quantize_through_llama(&args, &output, options)?
    };
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

fn convert_with_progress(input: &Path, output: &Path, options: &ConvertOptions) -> anyhow::Result<ConvertSummary> {
    // indicatif draws only when stderr is a terminal.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} [{bar:30}] {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_progress = |progress: &ConvertProgress| {
        bar.set_length(progress.bytes_total);
        bar.set_position(progress.bytes_done);
        bar.set_message(format!("{}/{} {}", progress.index + 1, progress.tensor_count, progress.tensor));
    };
    let result = phi_converters::convert(input, output, options, &mut on_progress);
    bar.finish_and_clear();
    Ok(result?)
}

/// Writes an intermediate GGUF next to the output, quantizes it with llama.cpp into a temporary file, and renames
/// that into place. Whatever happens, the intermediate goes and a failed run leaves no output.
fn quantize_through_llama(
    args: &ConvertArgs,
    output: &Path,
    options: ConvertOptions,
) -> anyhow::Result<ConvertSummary> {
    let info = phi_converters::inspect(&args.input)?;
    // Quantizing from f16 loses nothing for f16 checkpoints; wider sources keep their precision until the end.
    let intermediate_type = if info.source_dtype == SourceDtype::F16 { OutType::F16 } else { OutType::F32 };
    let intermediate = TemporaryPath::new(output, &intermediate_type.to_string());
    let quantized = TemporaryPath::new(output, "quantized");

    let options = ConvertOptions { out_type: intermediate_type, ..options };
    let summary = convert_with_progress(&args.input, intermediate.path(), &options)?;
    let spinner = ProgressBar::new_spinner().with_message(format!("quantizing to {} with llama.cpp", args.outtype));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = phi_tui::engine::quantize_model(
        intermediate.path(),
        quantized.path(),
        args.outtype.llama_ftype(),
        args.threads.unwrap_or(0),
    );
    spinner.finish_and_clear();
    result?;
    std::fs::rename(quantized.path(), output)
        .with_context(|| format!("{}: cannot write the output", output.display()))?;
    quantized.keep();
    Ok(summary)
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
