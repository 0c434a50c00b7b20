//! llama.cpp's LoRA adapter GGUF, as `convert_lora_to_gguf.py --outtype f32` writes it and `llama_adapter_lora_init`
//! reads it:
//!
//! * metadata, in the converter's order: `general.architecture` (`phi2`), `general.type` = `adapter`,
//!   `adapter.type` = `lora`, `general.name`, `adapter.lora.alpha` (f32, always written: llama.cpp takes a missing
//!   alpha as "scale 1", which silently changes the update), `general.quantization_version` = 2;
//! * per adapted layer `blk.{i}.{attn_q|attn_k|attn_v|attn_output|ffn_up|ffn_down}.weight.lora_a` with ggml
//!   `ne = [in, r]` and `.lora_b` with `ne = [r, out]`, F32 — PEFT's `lora_A` `[r, in]` and `lora_B` `[out, r]` with
//!   the same bytes (ggml lists dimensions innermost first).
//!
//! llama.cpp applies `user_scale · alpha / r · B·A`, so scale 1.0 is PEFT's merge.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use phi_converters::gguf::{padding, write_zeros, GgmlType, GgufFile, GgufHeader, MetadataValue};
use phi_converters::ModelConfig;

use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};
use super::peft::{read_peft, write_atomically};

/// The tensor name of one LoRA matrix in the GGUF (`matrix` is `a` or `b`).
pub fn gguf_tensor_name(layer: usize, target: LoraTarget, matrix: char) -> String {
    format!("blk.{layer}.{}.weight.lora_{matrix}", target.gguf_name())
}

/// `general.name` from a file or directory name, as gguf-py derives it: words title-cased (`final` → `Final`,
/// `my-adapter` → `My Adapter`).
pub fn name_from_path(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `adapter` as a llama.cpp LoRA GGUF at `path` (atomically).
pub fn write_adapter_gguf(path: &Path, adapter: &LoraAdapter, name: &str) -> Result<()> {
    write_adapter_gguf_at_step(path, adapter, name, None)
}

/// [`write_adapter_gguf`] for an adapter still in training: `step` goes into the file
/// ([`crate::engine::TRAINING_STEP_KEY`]), so that the session shows which step it applies. llama.cpp ignores it.
pub fn write_adapter_gguf_at_step(path: &Path, adapter: &LoraAdapter, name: &str, step: Option<u64>) -> Result<()> {
    let fail = |e: std::io::Error| FinetuneError::io(path, "cannot write file", e);
    let mut header = GgufHeader::new();
    if let Some(step) = step {
        let step = u32::try_from(step).unwrap_or(u32::MAX);
        header.set_metadata(crate::engine::TRAINING_STEP_KEY, MetadataValue::U32(step));
    }
    header.set_metadata("general.architecture", MetadataValue::String("phi2".to_owned()));
    header.set_metadata("general.type", MetadataValue::String("adapter".to_owned()));
    header.set_metadata("adapter.type", MetadataValue::String("lora".to_owned()));
    header.set_metadata("general.name", MetadataValue::String(name.to_owned()));
    header.set_metadata("adapter.lora.alpha", MetadataValue::F32(adapter.alpha));
    header.set_metadata("general.quantization_version", MetadataValue::U32(2));
    let mut data: Vec<&[f32]> = Vec::new();
    for (&(layer, target), pair) in &adapter.modules {
        for (which, matrix) in [('a', &pair.a), ('b', &pair.b)] {
            let dims = vec![matrix.cols as u64, matrix.rows as u64];
            header.push_tensor(gguf_tensor_name(layer, target, which), dims, GgmlType::F32).map_err(fail)?;
            data.push(&matrix.data);
        }
    }
    let mut bytes = Vec::new();
    header.write_to(&mut bytes).map_err(fail)?;
    for values in data {
        let start = bytes.len();
        bytes.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        let pad = padding((bytes.len() - start) as u64, header.alignment());
        write_zeros(&mut bytes, pad).map_err(fail)?;
    }
    write_atomically(path, &bytes)
}

/// Reads a llama.cpp LoRA GGUF (F32, F16 or BF16 matrices).
pub fn read_adapter_gguf(path: &Path) -> Result<LoraAdapter> {
    let file = GgufFile::open(path).map_err(|e| FinetuneError::adapter(path, e.reason))?;
    let fail = |reason: String| FinetuneError::adapter(path, reason);
    if file.get_str("general.type") != Some("adapter") || file.get_str("adapter.type") != Some("lora") {
        return Err(fail("not a LoRA adapter (general.type must be `adapter`, adapter.type `lora`)".to_owned()));
    }
    if let Some(arch) = file.get_str("general.architecture") {
        if arch != "phi2" {
            return Err(fail(format!("the adapter is for architecture `{arch}`, not phi2")));
        }
    }
    let mut found: BTreeMap<(usize, LoraTarget), (Option<Matrix>, Option<Matrix>)> = BTreeMap::new();
    for info in file.tensors() {
        let parsed = info.name.strip_prefix("blk.").and_then(|rest| {
            let (layer, rest) = rest.split_once('.')?;
            let (module, matrix) = rest.split_once(".weight.lora_")?;
            let target = LoraTarget::ALL.into_iter().find(|t| t.gguf_name() == module)?;
            Some((layer.parse::<usize>().ok()?, target, matrix))
        });
        let Some((layer, target, matrix)) = parsed else {
            return Err(fail(format!("unexpected tensor `{}`", info.name)));
        };
        let dtype = match info.ggml_type {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::Bf16 => DType::BF16,
            other => return Err(fail(format!("tensor `{}` is {other}; only F32, F16 and BF16 are read", info.name))),
        };
        let [cols, rows] = info.dims[..] else {
            return Err(fail(format!("tensor `{}` is not a matrix", info.name)));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let values = Tensor::from_raw_buffer(file.tensor_data(info), dtype, &[rows, cols], &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())?;
        let entry = found.entry((layer, target)).or_default();
        let m = Some(Matrix { rows, cols, data: values });
        match matrix {
            "a" => entry.0 = m,
            "b" => entry.1 = m,
            _ => return Err(fail(format!("unexpected tensor `{}`", info.name))),
        }
    }
    let mut modules = BTreeMap::new();
    let mut rank = None;
    for ((layer, target), pair) in found {
        let (Some(a), Some(b)) = pair else {
            return Err(fail(format!("layer {layer} {target}: lora_a or lora_b is missing")));
        };
        if *rank.get_or_insert(a.rows) != a.rows || b.cols != a.rows {
            return Err(fail(format!("layer {layer} {target}: inconsistent ranks")));
        }
        modules.insert((layer, target), LoraPair { a, b });
    }
    let rank = rank.ok_or_else(|| fail("no LoRA tensors".to_owned()))?;
    // A missing alpha means "no alpha/r factor" to llama.cpp: the same as alpha = r.
    let alpha = file.get("adapter.lora.alpha").and_then(|v| v.as_f64()).map_or(rank as f32, |a| a as f32);
    Ok(LoraAdapter { rank, alpha, modules })
}

/// Reads an adapter given as a PEFT directory or a llama.cpp GGUF.
pub fn read_adapter(path: &Path, config: Option<&ModelConfig>) -> Result<LoraAdapter> {
    if path.is_dir() {
        read_peft(path, config)
    } else if path.is_file() {
        read_adapter_gguf(path)
    } else {
        Err(FinetuneError::adapter(path, "no such file or directory"))
    }
}

/// Converts a PEFT adapter directory into a llama.cpp GGUF (what `convert_lora_to_gguf.py --outtype f32` does).
/// With `config`, the adapter is checked against that base model first.
pub fn import_peft(dir: &Path, output: &Path, config: Option<&ModelConfig>) -> Result<LoraAdapter> {
    let adapter = read_peft(dir, config)?;
    if let Some(config) = config {
        adapter.check_fits(config, dir)?;
    }
    write_adapter_gguf(output, &adapter, &name_from_path(dir))?;
    Ok(adapter)
}
