//! A trained model as a Hugging Face checkpoint directory: `config.json` (transformers ≥ 5 style),
//! `model.safetensors` with `PhiForCausalLM`'s tensor names, and the phi-1 tokenizer. `phi-tui convert` and
//! `phi-tui train --init` read it; transformers loads it with `from_pretrained`, so training can go on with the
//! PyTorch ecosystem. The tensor names and the config come from the converters crate, which reads them back.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use super::error::{FinetuneError, Result};
use super::peft::write_atomically;
use super::trainer::NamedWeights;
use phi_converters::ModelConfig;

pub const WEIGHTS_FILE: &str = "model.safetensors";

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    /// The name transformers' `config.json` uses.
    fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::Bf16 => "bfloat16",
        }
    }

    fn encode(self, values: &[f32]) -> (safetensors::Dtype, Vec<u8>) {
        match self {
            WeightDtype::F32 => (safetensors::Dtype::F32, values.iter().flat_map(|x| x.to_le_bytes()).collect()),
            WeightDtype::F16 => {
                (safetensors::Dtype::F16, values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect())
            }
            WeightDtype::Bf16 => {
                (safetensors::Dtype::BF16, values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect())
            }
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            _ => Err(format!("unknown weight type `{s}` (f32, f16 or bf16)")),
        }
    }
}

/// Writes `weights` (GGUF names, as [`super::Trainer::weights`] gives them for full training) of a model of shape
/// `config` as a Hugging Face checkpoint in `dir`, then reads it back with the converter's checks.
pub fn write_hf_checkpoint(dir: &Path, config: &ModelConfig, weights: &NamedWeights, dtype: WeightDtype) -> Result<()> {
    let fail = |reason: String| FinetuneError::base(dir, reason);
    std::fs::create_dir_all(dir).map_err(|e| FinetuneError::io(dir, "cannot create directory", e))?;
    let mut by_gguf: HashMap<&str, &(String, Vec<usize>, Vec<f32>)> =
        weights.tensors.iter().map(|t| (t.0.as_str(), t)).collect();
    let mut encoded = Vec::new();
    for (transformers, gguf, shape) in phi_converters::transformers_tensors(config) {
        let (_, have_shape, values) =
            by_gguf.remove(gguf.as_str()).ok_or_else(|| fail(format!("no trained weight `{gguf}`")))?;
        if *have_shape != shape {
            return Err(fail(format!("`{gguf}` has shape {have_shape:?}, the config implies {shape:?}")));
        }
        let (st_dtype, bytes) = dtype.encode(values);
        encoded.push((transformers, st_dtype, shape, bytes));
    }
    if let Some(extra) = by_gguf.keys().min() {
        return Err(fail(format!("unexpected weight `{extra}`")));
    }
    let mut views = Vec::with_capacity(encoded.len());
    for (name, st_dtype, shape, bytes) in &encoded {
        let view = safetensors::tensor::TensorView::new(*st_dtype, shape.clone(), bytes)
            .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
    write_atomically(&dir.join(WEIGHTS_FILE), &bytes)?;
    let json = serde_json::to_string_pretty(&config.to_transformers_json(dtype.torch_name()))
        .map_err(|e| fail(e.to_string()))?;
    write_atomically(&dir.join("config.json"), json.as_bytes())?;
    for (name, contents) in [
        ("tokenizer.json", crate::bundled::TOKENIZER_JSON),
        ("tokenizer_config.json", crate::bundled::TOKENIZER_CONFIG_JSON),
    ] {
        write_atomically(&dir.join(name), contents)?;
    }
    // What was written must read back as this model (config, tensor set, shapes).
    let info = phi_converters::inspect(dir).map_err(|e| fail(format!("the written checkpoint: {e}")))?;
    if info.config != *config {
        return Err(fail("the written config.json does not read back as the model's config".to_owned()));
    }
    Ok(())
}
