//! `phi-tui convert`: a Hugging Face phi checkpoint to GGUF. f32/f16/bf16/q8_0 are written directly; the other
//! types go through llama.cpp's quantizer from an f16 (or f32) intermediate that is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use phi_converters::{
    ConvertOptions, ConvertProgress, ConvertSummary, OutType, SourceDtype, TokenizerOrigin, TokenizerSource,
};
use phi_tui::bundled;

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
    #[arg(long, short = 't')]
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
    let options = ConvertOptions {
        out_type: args.outtype,
        tokenizer: args.tokenizer.clone().map(TokenizerSource::Dir),
        fallback_tokenizer: Some(TokenizerSource::Bundled {
            tokenizer_json: bundled::TOKENIZER_JSON,
            tokenizer_config_json: bundled::TOKENIZER_CONFIG_JSON,
        }),
    };
    super::use_backends_dir(args.backends_dir.as_deref())?;
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
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let intermediate = TempPath(dir.join(format!(".{file_name}.{intermediate_type}-{}.tmp", std::process::id())));
    let quantized = TempPath(dir.join(format!(".{file_name}.quantized-{}.tmp", std::process::id())));

    let options = ConvertOptions { out_type: intermediate_type, ..options };
    let summary = convert_with_progress(&args.input, &intermediate.0, &options)?;
    let spinner = ProgressBar::new_spinner().with_message(format!("quantizing to {} with llama.cpp", args.outtype));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = phi_tui::engine::quantize_model(
        &intermediate.0,
        &quantized.0,
        args.outtype.llama_ftype(),
        args.threads.unwrap_or(0),
    );
    spinner.finish_and_clear();
    result?;
    std::fs::rename(&quantized.0, output).with_context(|| format!("{}: cannot write the output", output.display()))?;
    Ok(summary)
}

/// A temporary file removed when dropped (after a successful rename there is nothing left to remove).
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
