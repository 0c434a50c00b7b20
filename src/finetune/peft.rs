//! PEFT's adapter format: a directory with `adapter_config.json` and `adapter_model.safetensors`, as
//! `PeftModel.save_pretrained` writes it and `PeftModel.from_pretrained` reads it.
//!
//! Tensor names are `base_model.model.model.layers.{i}.{self_attn.q_proj|…|mlp.fc2}.lora_{A,B}.weight` for the
//! transformers layout. Adapters trained on the legacy phi-msft layout (`transformer.h.{i}.mixer.Wqkv`,
//! `mixer.out_proj`) are read too: a fused `Wqkv` update `B·A` is exactly three updates `B_q·A`, `B_k·A`, `B_v·A`
//! (the rows of `B` split like the rows of `Wqkv`), so it becomes q, k and v modules sharing a copy of `A`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use phi_converters::ModelConfig;
use serde_json::{json, Value};

use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT tensor name of one matrix.
pub fn tensor_name(layer: usize, target: LoraTarget, matrix: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{matrix}.weight", target.module_path())
}

/// Reads a PEFT LoRA adapter. `config` (the base model's) splits fused `Wqkv` updates; without it the three parts
/// are taken as equal.
pub fn read_peft(dir: &Path, config: Option<&ModelConfig>) -> Result<LoraAdapter> {
    let config_path = dir.join(CONFIG_FILE);
    let fail = |reason: String| FinetuneError::adapter(&config_path, reason);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| FinetuneError::io(&config_path, "cannot read file", e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    if let Some(kind) = json.get("peft_type").and_then(Value::as_str) {
        if kind != "LORA" {
            return Err(fail(format!("peft_type `{kind}`; only LORA adapters are supported")));
        }
    }
    let rank = json
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| fail("`r` must be a positive integer".to_owned()))? as usize;
    let mut alpha =
        json.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| fail("missing `lora_alpha`".to_owned()))?;
    let is_true = |key: &str| json.get(key).and_then(Value::as_bool) == Some(true);
    let is_set = |key: &str| match json.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    for (key, why) in [
        ("use_dora", "DoRA adapters are not LoRA updates llama.cpp can apply"),
        ("fan_in_fan_out", "fan_in_fan_out (transposed weights) is for GPT-2 style Conv1D layers, not phi"),
        ("lora_bias", "LoRA biases have no place in a llama.cpp adapter"),
    ] {
        if is_true(key) {
            return Err(fail(format!("{key} = true: {why}")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern", "modules_to_save"] {
        if is_set(key) {
            return Err(fail(format!(
                "`{key}` is set; per-module ranks or alphas and saved whole modules are not supported"
            )));
        }
    }
    if let Some(bias) = json.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            return Err(fail(format!("bias = `{bias}`; only bias = \"none\" is supported")));
        }
    }
    if is_true("use_rslora") {
        // rsLoRA scales by alpha/sqrt(r); llama.cpp and this trainer by alpha/r. The same update with alpha·sqrt(r).
        alpha *= (rank as f64).sqrt();
    }

    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(FinetuneError::adapter(
            dir,
            "only adapter_model.bin (a pickle) is here; save the adapter with safe_serialization=True",
        ));
    }
    let bytes = std::fs::read(&weights_path).map_err(|e| FinetuneError::io(&weights_path, "cannot read file", e))?;
    let fail = |reason: String| FinetuneError::adapter(&weights_path, reason);
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("invalid safetensors: {e}")))?;
    // (layer, module as named in the file) → (A, B)
    let mut found: BTreeMap<(usize, String), (Option<Matrix>, Option<Matrix>)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let (layer, module, matrix) = parse_tensor_name(&name)
            .ok_or_else(|| fail(format!("unexpected tensor `{name}` for a phi LoRA adapter")))?;
        let matrix_data = read_matrix(&name, &view).map_err(fail)?;
        let entry = found.entry((layer, module)).or_default();
        if matrix == 'A' {
            entry.0 = Some(matrix_data);
        } else {
            entry.1 = Some(matrix_data);
        }
    }
    if found.is_empty() {
        return Err(fail("no LoRA tensors".to_owned()));
    }
    let mut modules = BTreeMap::new();
    for ((layer, module), pair) in found {
        let (Some(a), Some(b)) = pair else {
            return Err(fail(format!("layer {layer} {module}: lora_A or lora_B is missing")));
        };
        if a.rows != rank || b.cols != rank {
            return Err(fail(format!(
                "layer {layer} {module}: lora_A {:?} / lora_B {:?} do not have rank r = {rank}",
                a.shape(),
                b.shape()
            )));
        }
        if module == "Wqkv" {
            let (q_rows, kv_rows) = match config {
                Some(c) => (c.hidden_size, c.kv_dim()),
                None if b.rows % 3 == 0 => (b.rows / 3, b.rows / 3),
                None => return Err(fail(format!("layer {layer} Wqkv: {} rows do not split into q, k, v", b.rows))),
            };
            if q_rows + 2 * kv_rows != b.rows {
                return Err(fail(format!(
                    "layer {layer} Wqkv: lora_B has {} rows, the model {}",
                    b.rows,
                    q_rows + 2 * kv_rows
                )));
            }
            let mut start = 0;
            for (target, rows) in
                [(LoraTarget::QProj, q_rows), (LoraTarget::KProj, kv_rows), (LoraTarget::VProj, kv_rows)]
            {
                let part = Matrix { rows, cols: rank, data: b.data[start * rank..(start + rows) * rank].to_vec() };
                modules.insert((layer, target), LoraPair { a: a.clone(), b: part });
                start += rows;
            }
            continue;
        }
        let target = LoraTarget::parse(&module)
            .and_then(|t| (t.len() == 1).then_some(t[0]))
            .ok_or_else(|| fail(format!("layer {layer}: unknown module `{module}`")))?;
        modules.insert((layer, target), LoraPair { a, b });
    }
    Ok(LoraAdapter { rank, alpha: alpha as f32, modules })
}

/// `(layer, module, 'A'|'B')` of a PEFT tensor name, for either layout (with or without PEFT's adapter name).
fn parse_tensor_name(name: &str) -> Option<(usize, String, char)> {
    let name = name.strip_prefix("base_model.model.")?;
    let name = name.strip_suffix(".weight")?;
    let (rest, matrix) =
        if let Some(rest) = name.strip_suffix(".lora_A").or_else(|| name.strip_suffix(".lora_A.default")) {
            (rest, 'A')
        } else {
            (name.strip_suffix(".lora_B").or_else(|| name.strip_suffix(".lora_B.default"))?, 'B')
        };
    let rest = rest.strip_prefix("model.layers.").or_else(|| rest.strip_prefix("transformer.h."))?;
    let (layer, module) = rest.split_once('.')?;
    let module = module.rsplit('.').next()?;
    Some((layer.parse().ok()?, module.to_owned(), matrix))
}

fn read_matrix(name: &str, view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Matrix, String> {
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
    };
    let [rows, cols] = view.shape() else {
        return Err(format!("tensor `{name}` has shape {:?}, not a matrix", view.shape()));
    };
    let data = Tensor::from_raw_buffer(view.data(), dtype, &[*rows, *cols], &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    Ok(Matrix { rows: *rows, cols: *cols, data })
}

/// Writes `adapter` as a PEFT directory (created if needed) that `PeftModel.from_pretrained` loads onto
/// transformers' `PhiForCausalLM`. `base_model` goes to `base_model_name_or_path`.
pub fn write_peft(dir: &Path, adapter: &LoraAdapter, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| FinetuneError::io(dir, "cannot create directory", e))?;
    let target_modules: Vec<&str> = adapter.targets().iter().map(|t| t.peft_name()).collect();
    // The keys PEFT itself writes that matter for loading; PEFT fills in the rest with its defaults.
    let config = json!({
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": adapter.rank,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    let config_path = dir.join(CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| FinetuneError::adapter(&config_path, e.to_string()))?;
    write_atomically(&config_path, text.as_bytes())?;

    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (&(layer, target), pair) in &adapter.modules {
        for (matrix, m) in [('A', &pair.a), ('B', &pair.b)] {
            tensors.push((tensor_name(layer, target, matrix), f32_bytes(&m.data), vec![m.rows, m.cols]));
        }
    }
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, HashMap::from([("format".to_owned(), "pt".to_owned())]))
}

pub(crate) fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes float32 tensors `(name, little-endian bytes, shape)` as safetensors with `metadata`.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<u8>, Vec<usize>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, bytes, shape) in tensors {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
            .map_err(|e| FinetuneError::adapter(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| FinetuneError::adapter(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// Writes a file so that it appears complete or not at all.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    phi_converters::write_atomically(path, bytes).map_err(|e| FinetuneError::io(path, "cannot write file", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_of_both_layouts_parse() {
        assert_eq!(
            parse_tensor_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, "q_proj".to_owned(), 'A'))
        );
        assert_eq!(
            parse_tensor_name("base_model.model.transformer.h.0.mixer.Wqkv.lora_B.weight"),
            Some((0, "Wqkv".to_owned(), 'B'))
        );
        assert_eq!(parse_tensor_name("base_model.model.lm_head.lora_A.weight"), None);
    }
}
