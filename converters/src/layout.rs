//! Tensor names: which layout a checkpoint uses, which tensors it must contain with which shapes, and the GGUF
//! tensor each one becomes. Every stored tensor is accounted for: it is mapped, or it is one of the known
//! non-weight buffers ([`crate::checkpoint::is_ignored`], left out when the checkpoint is read), or the conversion
//! fails — nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use crate::checkpoint::Checkpoint;
use crate::config::{ConfigStyle, ModelConfig};
use crate::error::{ConvertError, Result};

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// transformers' `PhiForCausalLM`: `model.layers.N.self_attn.q_proj`, `model.embed_tokens`, `lm_head`.
    Transformers,
    /// microsoft's original remote code: `transformer.h.N.mixer.Wqkv` (q, k and v fused), `lm_head.linear`.
    PhiMsft,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Transformers => "transformers",
            Layout::PhiMsft => "phi-msft",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One GGUF tensor: a range of rows of a stored tensor.
#[derive(Debug, Clone)]
pub(crate) struct MappedTensor {
    pub(crate) gguf_name: String,
    /// Index into `Checkpoint::tensors`.
    pub(crate) source: usize,
    /// Element range within the source tensor (a whole tensor, or a block of rows of a fused one).
    pub(crate) elements: Range<usize>,
    /// Shape in ggml order (`ne`), the reverse of PyTorch's.
    pub(crate) dims: Vec<u64>,
}

/// A tensor the layout expects and what becomes of it.
struct ExpectedTensor {
    name: String,
    shape: Vec<usize>,
    /// (transformers name, GGUF name, rows of the stored tensor). The transformers name decides the order of
    /// the output, so that every layout writes the GGUF in the order llama.cpp's converter does.
    targets: Vec<(String, String, Range<usize>)>,
}

/// Finds the layout from the tensor names.
pub(crate) fn detect(checkpoint: &Checkpoint) -> Result<Layout> {
    let is_transformers = |n: &str| n.starts_with("model.") || n == "lm_head.weight" || n == "lm_head.bias";
    let is_msft =
        |n: &str| n.starts_with("transformer.") || n.starts_with("lm_head.linear.") || n.starts_with("lm_head.ln.");
    let transformers = checkpoint.tensors.iter().find(|t| is_transformers(&t.name));
    let msft = checkpoint.tensors.iter().find(|t| is_msft(&t.name));
    let error = |reason: String| ConvertError::UnknownLayout { path: checkpoint.description.clone(), reason };
    match (transformers, msft) {
        (Some(_), None) => Ok(Layout::Transformers),
        (None, Some(_)) => Ok(Layout::PhiMsft),
        (Some(a), Some(b)) => {
            Err(error(format!("mixes transformers (`{}`) and phi-msft (`{}`) tensor names", a.name, b.name)))
        }
        (None, None) => Err(error(match checkpoint.tensors.first() {
            Some(t) => {
                format!("no phi tensor names (expected `model.…` or `transformer.…`; first tensor: `{}`)", t.name)
            }
            None => "contains no tensors".to_owned(),
        })),
    }
}

/// Maps every stored tensor to its GGUF tensor(s), checking that the set of tensors and every shape is what
/// the config implies. The result is in output order.
pub(crate) fn map_tensors(
    checkpoint: &Checkpoint,
    layout: Layout,
    config: &ModelConfig,
    style: ConfigStyle,
) -> Result<Vec<MappedTensor>> {
    // The config's layer count sizes the list of expected tensors, so it is bounded by the tensors the checkpoint
    // has before anything is built from it (a corrupt count of 2^31 would otherwise take gigabytes first). Every
    // layer has at least eight tensors: a count above the number of tensors is certainly wrong, and below it the
    // list stays as small as the checkpoint's and the missing tensors are named as usual.
    if config.num_layers > checkpoint.tensors.len() {
        let layers = layers_present(checkpoint);
        return Err(ConvertError::InvalidValue {
            path: checkpoint.description.with_file_name("config.json"),
            key: style.layer_count_key().to_owned(),
            reason: format!("is {}, but the checkpoint has tensors for {layers} layers", config.num_layers),
        });
    }
    let expected = expected_tensors(layout, config);
    let by_name: BTreeMap<&str, &ExpectedTensor> = expected.iter().map(|e| (e.name.as_str(), e)).collect();
    let present: BTreeSet<&str> = checkpoint.tensors.iter().map(|t| t.name.as_str()).collect();

    let unexpected: Vec<String> =
        checkpoint.tensors.iter().filter(|t| !by_name.contains_key(t.name.as_str())).map(|t| t.name.clone()).collect();
    if !unexpected.is_empty() {
        return Err(ConvertError::UnexpectedTensors { path: checkpoint.description.clone(), names: unexpected });
    }
    let missing: Vec<String> =
        expected.iter().filter(|e| !present.contains(e.name.as_str())).map(|e| e.name.clone()).collect();
    if !missing.is_empty() {
        return Err(ConvertError::MissingTensors { path: checkpoint.description.clone(), names: missing });
    }

    // (file, transformers name) orders the output: files in order, names sorted within each file.
    let mut mapped: Vec<((usize, String), MappedTensor)> = Vec::new();
    for (index, tensor) in checkpoint.tensors.iter().enumerate() {
        let spec = by_name[tensor.name.as_str()];
        if tensor.shape != spec.shape {
            return Err(ConvertError::ShapeMismatch {
                path: checkpoint.file_path(tensor).to_path_buf(),
                tensor: tensor.name.clone(),
                actual: tensor.shape.clone(),
                expected: spec.shape.clone(),
            });
        }
        let row_len: usize = tensor.shape[1..].iter().product();
        for (canonical, gguf_name, rows) in &spec.targets {
            let mut shape = tensor.shape.clone();
            shape[0] = rows.len();
            mapped.push((
                (tensor.file, canonical.clone()),
                MappedTensor {
                    gguf_name: gguf_name.clone(),
                    source: index,
                    elements: rows.start * row_len..rows.end * row_len,
                    dims: shape.iter().rev().map(|&d| d as u64).collect(),
                },
            ));
        }
    }
    mapped.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(mapped.into_iter().map(|(_, m)| m).collect())
}

/// How many distinct layers (`model.layers.N.` or `transformer.h.N.`) the checkpoint's tensor names number.
fn layers_present(checkpoint: &Checkpoint) -> usize {
    let layer = |name: &str| {
        let rest = name.strip_prefix("model.layers.").or_else(|| name.strip_prefix("transformer.h."))?;
        rest.split_once('.')?.0.parse::<usize>().ok()
    };
    checkpoint.tensors.iter().filter_map(|t| layer(&t.name)).collect::<BTreeSet<_>>().len()
}

/// The tensors of a phi model of shape `config` as transformers' `PhiForCausalLM` names them, with their GGUF names
/// and PyTorch shapes: `(transformers name, GGUF name, shape)`. What a writer of a Hugging Face checkpoint needs.
pub fn transformers_tensors(config: &ModelConfig) -> Vec<(String, String, Vec<usize>)> {
    expected_tensors(Layout::Transformers, config)
        .into_iter()
        .flat_map(|tensor| {
            let shape = tensor.shape;
            tensor.targets.into_iter().map(move |(transformers, gguf, _)| (transformers, gguf, shape.clone()))
        })
        .collect()
}

/// The tensors of a phi model in `layout`, with the shapes `config` implies.
fn expected_tensors(layout: Layout, config: &ModelConfig) -> Vec<ExpectedTensor> {
    let (vocab, hidden, inner, kv) = (config.vocab_size, config.hidden_size, config.intermediate_size, config.kv_dim());
    let pick =
        |msft: String, transformers: &String| if layout == Layout::PhiMsft { msft } else { transformers.clone() };
    let mut expected = Vec::new();
    // (phi-msft name, transformers name, GGUF name, PyTorch shape) of the tensors stored whole in both layouts.
    let mut whole: Vec<(String, String, String, Vec<usize>)> = vec![
        (
            "transformer.embd.wte.weight".into(),
            "model.embed_tokens.weight".into(),
            "token_embd.weight".into(),
            vec![vocab, hidden],
        ),
        ("lm_head.ln.weight".into(), "model.final_layernorm.weight".into(), "output_norm.weight".into(), vec![hidden]),
        ("lm_head.ln.bias".into(), "model.final_layernorm.bias".into(), "output_norm.bias".into(), vec![hidden]),
        ("lm_head.linear.weight".into(), "lm_head.weight".into(), "output.weight".into(), vec![vocab, hidden]),
        ("lm_head.linear.bias".into(), "lm_head.bias".into(), "output.bias".into(), vec![vocab]),
    ];
    let projections = [("q_proj", "attn_q", hidden), ("k_proj", "attn_k", kv), ("v_proj", "attn_v", kv)];
    for layer in 0..config.num_layers {
        let t = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        let g = |suffix: &str| format!("blk.{layer}.{suffix}");
        let m = |suffix: &str| format!("transformer.h.{layer}.{suffix}");
        whole.extend([
            (m("ln.weight"), t("input_layernorm.weight"), g("attn_norm.weight"), vec![hidden]),
            (m("ln.bias"), t("input_layernorm.bias"), g("attn_norm.bias"), vec![hidden]),
            (m("mixer.out_proj.weight"), t("self_attn.dense.weight"), g("attn_output.weight"), vec![hidden, hidden]),
            (m("mixer.out_proj.bias"), t("self_attn.dense.bias"), g("attn_output.bias"), vec![hidden]),
            (m("mlp.fc1.weight"), t("mlp.fc1.weight"), g("ffn_up.weight"), vec![inner, hidden]),
            (m("mlp.fc1.bias"), t("mlp.fc1.bias"), g("ffn_up.bias"), vec![inner]),
            (m("mlp.fc2.weight"), t("mlp.fc2.weight"), g("ffn_down.weight"), vec![hidden, inner]),
            (m("mlp.fc2.bias"), t("mlp.fc2.bias"), g("ffn_down.bias"), vec![hidden]),
        ]);
        for part in ["weight", "bias"] {
            let shape_of = |rows: usize| if part == "weight" { vec![rows, hidden] } else { vec![rows] };
            match layout {
                Layout::Transformers => {
                    for (proj, gguf, rows) in projections {
                        // Stored whole only in this layout, so the phi-msft slot never gets picked.
                        let name = t(&format!("self_attn.{proj}.{part}"));
                        whole.push((name.clone(), name, g(&format!("{gguf}.{part}")), shape_of(rows)));
                    }
                }
                Layout::PhiMsft => {
                    // Wqkv stacks q, k and v along the output rows, each head-major like the separate
                    // projections, so the split is three blocks of rows and no permutation.
                    let mut start = 0;
                    let mut targets = Vec::new();
                    for (proj, gguf, rows) in projections {
                        targets.push((
                            t(&format!("self_attn.{proj}.{part}")),
                            g(&format!("{gguf}.{part}")),
                            start..start + rows,
                        ));
                        start += rows;
                    }
                    expected.push(ExpectedTensor {
                        name: m(&format!("mixer.Wqkv.{part}")),
                        shape: shape_of(start),
                        targets,
                    });
                }
            }
        }
    }
    for (msft, transformers, gguf, shape) in whole {
        let rows = 0..shape[0];
        let name = pick(msft, &transformers);
        expected.push(ExpectedTensor { name, shape, targets: vec![(transformers, gguf, rows)] });
    }
    expected
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig {
            vocab_size: 100,
            hidden_size: 8,
            intermediate_size: 32,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            context_length: 64,
            layer_norm_eps: 1e-5,
            rope_dims: 2,
            rope_theta: 10000.0,
        }
    }

    #[test]
    fn both_layouts_produce_the_same_gguf_tensors() {
        let gguf_names = |layout| {
            let mut names: Vec<(String, String, Vec<usize>)> = expected_tensors(layout, &config())
                .into_iter()
                .flat_map(|e| {
                    let row: usize = e.shape[1..].iter().product();
                    e.targets.into_iter().map(move |(canonical, gguf, rows)| (canonical, gguf, vec![rows.len(), row]))
                })
                .collect();
            names.sort();
            names
        };
        let transformers = gguf_names(Layout::Transformers);
        assert_eq!(transformers.len(), 5 + 2 * 14); // per layer: norm, q, k, v, dense, fc1, fc2 (weight + bias)
        assert_eq!(transformers, gguf_names(Layout::PhiMsft));
        // With one kv head of 4 channels, k and v have 4 rows.
        assert!(transformers.contains(&(
            "model.layers.1.self_attn.k_proj.weight".into(),
            "blk.1.attn_k.weight".into(),
            vec![4, 8]
        )));
    }

    #[test]
    fn the_fused_qkv_has_q_k_v_rows_in_order() {
        let expected = expected_tensors(Layout::PhiMsft, &config());
        let wqkv = expected.iter().find(|e| e.name == "transformer.h.0.mixer.Wqkv.weight").unwrap();
        assert_eq!(wqkv.shape, [16, 8]);
        let rows: Vec<(&str, Range<usize>)> = wqkv.targets.iter().map(|(_, g, r)| (g.as_str(), r.clone())).collect();
        assert_eq!(
            rows,
            [("blk.0.attn_q.weight", 0..8), ("blk.0.attn_k.weight", 8..12), ("blk.0.attn_v.weight", 12..16)]
        );
        assert_eq!(expected.len(), 5 + 2 * 10);
    }
}
