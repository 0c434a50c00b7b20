//! A Hugging Face checkpoint to a GGUF of any type: f32/f16/bf16/q8_0 are written by the converter directly; the
//! other types go through llama.cpp's quantizer from an f16 (or f32) intermediate that is removed afterwards.
//! `phi-tui convert` and `phi-tui pull` both convert through here.

use std::path::{Path, PathBuf};

use phi_converters::{
    ConvertError, ConvertOptions, ConvertProgress, ConvertSummary, OutType, SourceDtype, TemporaryPath, TokenizerSource,
};

use crate::engine::QuantizeError;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    #[error("{path}: cannot write the output: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where a conversion stands.
#[derive(Debug, Clone)]
pub enum ConvertStage<'a> {
    /// Tensors being written (to the output, or to the intermediate of a quantized type).
    Converting(&'a ConvertProgress),
    /// llama.cpp's quantizer is running (no finer progress).
    Quantizing(OutType),
}

/// What to convert to.
#[derive(Debug, Clone)]
pub struct CheckpointConversion {
    pub out_type: OutType,
    /// A directory with the tokenizer to embed, if not the checkpoint's own.
    pub tokenizer: Option<PathBuf>,
    /// Threads for llama.cpp's quantizer (default: all cores).
    pub threads: Option<u32>,
}

/// Converts the checkpoint directory `input` to `output`. The output appears only when complete, and whatever
/// happens, no intermediate file is left behind. A checkpoint without a tokenizer gets phi-1's bundled one. An
/// unusable output (a device, a directory, a file of the checkpoint itself) is refused before anything is written.
pub fn convert_checkpoint(
    input: &Path,
    output: &Path,
    conversion: &CheckpointConversion,
    on_stage: &mut dyn FnMut(ConvertStage<'_>),
) -> Result<ConvertSummary, CheckpointError> {
    let options = ConvertOptions {
        out_type: conversion.out_type,
        tokenizer: conversion.tokenizer.clone().map(TokenizerSource::Dir),
        fallback_tokenizer: Some(TokenizerSource::Bundled {
            tokenizer_json: crate::bundled::TOKENIZER_JSON,
            tokenizer_config_json: crate::bundled::TOKENIZER_CONFIG_JSON,
        }),
    };
    phi_converters::check_output(input, output, &options)?;
    let mut on_progress = |progress: &ConvertProgress| on_stage(ConvertStage::Converting(progress));
    if conversion.out_type.is_native() {
        return Ok(phi_converters::convert(input, output, &options, &mut on_progress)?);
    }
    let info = phi_converters::inspect(input)?;
    // Quantizing from f16 loses nothing for f16 checkpoints; wider sources keep their precision until the end.
    let intermediate_type = if info.source_dtype == SourceDtype::F16 { OutType::F16 } else { OutType::F32 };
    let intermediate = TemporaryPath::new(output, &intermediate_type.to_string());
    let quantized = TemporaryPath::new(output, "quantized");

    let options = ConvertOptions { out_type: intermediate_type, ..options };
    let summary = phi_converters::convert(input, intermediate.path(), &options, &mut on_progress)?;
    on_stage(ConvertStage::Quantizing(conversion.out_type));
    crate::engine::quantize_model(
        intermediate.path(),
        quantized.path(),
        conversion.out_type.llama_ftype(),
        conversion.threads.unwrap_or(0),
    )?;
    quantized.persist(output).map_err(|source| CheckpointError::Io { path: output.to_path_buf(), source })?;
    Ok(summary)
}
