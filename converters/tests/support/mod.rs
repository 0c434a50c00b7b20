//! Shared test support: fixture paths, conversion helpers, and a builder for tiny synthetic checkpoints.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};

use phi_converters::{convert, ConvertOptions, ConvertSummary, OutType, TokenizerSource};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn options(out_type: OutType) -> ConvertOptions {
    ConvertOptions { out_type, tokenizer: None, fallback_tokenizer: None }
}

/// Converts a fixture checkpoint into `dir/<model>.<type>.gguf`.
pub fn convert_fixture(model: &str, out_type: OutType, dir: &Path) -> (PathBuf, ConvertSummary) {
    let output = dir.join(format!("{model}.{out_type}.gguf"));
    let summary = convert(&fixtures().join(model), &output, &options(out_type), &mut |_| {})
        .unwrap_or_else(|e| panic!("converting {model}: {e}"));
    (output, summary)
}

/// The names of the entries of a directory, sorted (hidden temporary files included).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The phi tokenizer of the fixtures, as an explicit tokenizer source.
pub fn fixture_tokenizer() -> TokenizerSource {
    TokenizerSource::Dir(fixtures().join("tiny-phi"))
}

/// Dimensions of the synthetic checkpoints: small, but with a vocabulary that holds the phi tokenizer.
pub const HIDDEN: usize = 8;
pub const INNER: usize = 32;
pub const VOCAB: usize = 50304;

/// A transformers-5 style config for a 1-layer model of `HIDDEN` width.
pub fn tiny_config() -> Value {
    json!({
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "hidden_size": HIDDEN,
        "intermediate_size": INNER,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "layer_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "qk_layernorm": false,
        "hidden_act": "gelu_new",
        "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rope_type": "default"}
    })
}

/// (name, shape) of every tensor of the tiny model in the transformers layout.
pub fn tiny_tensor_shapes() -> Vec<(String, Vec<usize>)> {
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_owned(), vec![VOCAB, HIDDEN]),
        ("model.final_layernorm.weight".to_owned(), vec![HIDDEN]),
        ("model.final_layernorm.bias".to_owned(), vec![HIDDEN]),
        ("lm_head.weight".to_owned(), vec![VOCAB, HIDDEN]),
        ("lm_head.bias".to_owned(), vec![VOCAB]),
    ];
    let layer = |s: &str| format!("model.layers.0.{s}");
    for (name, shape) in [
        ("input_layernorm.weight", vec![HIDDEN]),
        ("input_layernorm.bias", vec![HIDDEN]),
        ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.q_proj.bias", vec![HIDDEN]),
        ("self_attn.k_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.k_proj.bias", vec![HIDDEN]),
        ("self_attn.v_proj.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.v_proj.bias", vec![HIDDEN]),
        ("self_attn.dense.weight", vec![HIDDEN, HIDDEN]),
        ("self_attn.dense.bias", vec![HIDDEN]),
        ("mlp.fc1.weight", vec![INNER, HIDDEN]),
        ("mlp.fc1.bias", vec![INNER]),
        ("mlp.fc2.weight", vec![HIDDEN, INNER]),
        ("mlp.fc2.bias", vec![HIDDEN]),
    ] {
        tensors.push((layer(name), shape));
    }
    tensors
}

/// A stored tensor for `write_safetensors`.
pub struct StoredTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// F16 data with varied, deterministic values.
pub fn f16_tensor(name: &str, shape: &[usize]) -> StoredTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|i| half::f16::from_f32(((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.3).to_le_bytes())
        .collect();
    StoredTensor { name: name.to_owned(), dtype: Dtype::F16, shape: shape.to_vec(), data }
}

pub fn write_safetensors(path: &Path, tensors: &[StoredTensor]) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes a complete tiny checkpoint (config + F16 weights, no tokenizer) into `dir`, with `edit` applied to
/// the tensor list first.
pub fn write_tiny_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<StoredTensor>)) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&tiny_config()).unwrap()).unwrap();
    let mut tensors: Vec<StoredTensor> =
        tiny_tensor_shapes().iter().map(|(name, shape)| f16_tensor(name, shape)).collect();
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}
