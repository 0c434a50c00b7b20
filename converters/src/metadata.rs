//! The GGUF metadata of a converted phi model: keys, value types and order exactly as llama.cpp's
//! `convert_hf_to_gguf.py` writes them for `PhiForCausalLM` (architecture `phi2`), so that our output can be
//! compared with the reference converter's key by key; and [`gguf_model_config`], which reads the hyperparameters
//! back from those keys.

use crate::config::{ModelConfig, DEFAULT_ROPE_THETA};
use crate::gguf::{GgufFile, GgufHeader, MetadataArray, MetadataValue};
use crate::out_type::OutType;
use crate::tokenizer::Vocab;

/// The llama.cpp architecture for phi-1, phi-1.5 and phi-2.
pub(crate) const ARCHITECTURE: &str = "phi2";
/// ggml's `GGML_QNT_VERSION`, which gguf-py writes into every model.
const QUANTIZATION_VERSION: u32 = 2;

/// The hyperparameter keys, under the `phi2.` prefix (see [`arch_key`]).
const CONTEXT_LENGTH: &str = "context_length";
const EMBEDDING_LENGTH: &str = "embedding_length";
const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
const BLOCK_COUNT: &str = "block_count";
const HEAD_COUNT: &str = "attention.head_count";
const HEAD_COUNT_KV: &str = "attention.head_count_kv";
const LAYER_NORM_EPSILON: &str = "attention.layer_norm_epsilon";
const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
const ROPE_FREQ_BASE: &str = "rope.freq_base";
const TOKENS: &str = "tokenizer.ggml.tokens";

/// `phi2.NAME`.
fn arch_key(name: &str) -> String {
    format!("{ARCHITECTURE}.{name}")
}

/// Fills `header` with the metadata of the model.
pub(crate) fn write_metadata(
    header: &mut GgufHeader,
    model_name: &str,
    parameter_count: u64,
    config: &ModelConfig,
    out_type: OutType,
    vocab: Vocab,
) {
    let arch = arch_key;
    let string = |s: &str| MetadataValue::String(s.to_owned());
    // GGUF stores these as u32; the config parser only accepts values that fit.
    let u32_of = |n: usize| MetadataValue::U32(n as u32);

    header.set_metadata("general.architecture", string(ARCHITECTURE));
    header.set_metadata("general.type", string("model"));
    header.set_metadata("general.name", string(model_name));
    header.set_metadata("general.size_label", string(&size_label(parameter_count)));
    header.set_metadata(arch(CONTEXT_LENGTH), u32_of(config.context_length));
    header.set_metadata(arch(EMBEDDING_LENGTH), u32_of(config.hidden_size));
    // The reference converter writes 4·n_embd whatever the config says; that equals intermediate_size for
    // every published phi model, and the config's value is the right one for any other.
    header.set_metadata(arch(FEED_FORWARD_LENGTH), u32_of(config.intermediate_size));
    header.set_metadata(arch(BLOCK_COUNT), u32_of(config.num_layers));
    header.set_metadata(arch(HEAD_COUNT), u32_of(config.num_heads));
    header.set_metadata(arch(HEAD_COUNT_KV), u32_of(config.num_kv_heads));
    header.set_metadata(arch(LAYER_NORM_EPSILON), MetadataValue::F32(config.layer_norm_eps as f32));
    header.set_metadata(arch(ROPE_DIMENSION_COUNT), u32_of(config.rope_dims));
    // llama.cpp assumes 10000 when the key is absent, and the reference converter never writes it; writing it
    // only for another base keeps our output identical to the reference for standard models.
    if config.rope_theta != DEFAULT_ROPE_THETA {
        header.set_metadata(arch(ROPE_FREQ_BASE), MetadataValue::F32(config.rope_theta as f32));
    }
    header.set_metadata("general.file_type", MetadataValue::U32(out_type.llama_ftype()));
    header.set_metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(vocab.add_bos));
    header.set_metadata("general.quantization_version", MetadataValue::U32(QUANTIZATION_VERSION));

    header.set_metadata("tokenizer.ggml.model", string("gpt2"));
    // The pre-tokenizer llama.cpp must use; the reference converter identifies phi's tokenizer as "phi-2".
    header.set_metadata("tokenizer.ggml.pre", string("phi-2"));
    header.set_metadata(TOKENS, MetadataValue::Array(MetadataArray::String(vocab.tokens)));
    header.set_metadata("tokenizer.ggml.token_type", MetadataValue::Array(MetadataArray::I32(vocab.token_types)));
    header.set_metadata("tokenizer.ggml.merges", MetadataValue::Array(MetadataArray::String(vocab.merges)));
    for (key, id) in vocab.special_ids {
        header.set_metadata(key, MetadataValue::U32(id));
    }
    for (key, flag) in vocab.add_flags {
        header.set_metadata(key, MetadataValue::Bool(flag));
    }
    if let Some(template) = vocab.chat_template {
        header.set_metadata("tokenizer.chat_template", MetadataValue::String(template));
    }
}

/// The hyperparameters of a phi GGUF, read from the keys [`write_metadata`] writes (the vocabulary size from
/// `tokenizer.ggml.tokens`), with llama.cpp's defaults for the keys it may lack: `head_count_kv` the head count,
/// `rope.dimension_count` the head size, `rope.freq_base` 10000. Only presence and types are checked here; whether
/// the values make a model llama.cpp can run is the engine's check. Errors name the key at fault.
pub fn gguf_model_config(file: &GgufFile) -> Result<ModelConfig, String> {
    match file.get_str("general.architecture") {
        Some(ARCHITECTURE) => {}
        Some(other) => return Err(format!("architecture `{other}` is not `{ARCHITECTURE}`")),
        None => return Err("no general.architecture".to_owned()),
    }
    let optional_u32 = |name: &str| -> Result<Option<usize>, String> {
        match file.get(&arch_key(name)) {
            None => Ok(None),
            Some(MetadataValue::U32(value)) => Ok(Some(*value as usize)),
            Some(other) => Err(format!("`{}` must be a u32, not {}", arch_key(name), other.type_name())),
        }
    };
    let u32_key = |name: &str| optional_u32(name)?.ok_or_else(|| format!("missing `{}`", arch_key(name)));
    let optional_f32 = |name: &str| -> Result<Option<f32>, String> {
        match file.get(&arch_key(name)) {
            None => Ok(None),
            Some(MetadataValue::F32(value)) => Ok(Some(*value)),
            Some(other) => Err(format!("`{}` must be an f32, not {}", arch_key(name), other.type_name())),
        }
    };
    let hidden_size = u32_key(EMBEDDING_LENGTH)?;
    let num_heads = u32_key(HEAD_COUNT)?;
    if num_heads == 0 {
        return Err(format!("`{}` is 0", arch_key(HEAD_COUNT)));
    }
    let epsilon =
        optional_f32(LAYER_NORM_EPSILON)?.ok_or_else(|| format!("missing `{}`", arch_key(LAYER_NORM_EPSILON)))?;
    let vocab_size = match file.get(TOKENS).and_then(MetadataValue::as_array) {
        Some(tokens) => tokens.len(),
        None => return Err(format!("no vocabulary (`{TOKENS}`)")),
    };
    Ok(ModelConfig {
        vocab_size,
        hidden_size,
        intermediate_size: u32_key(FEED_FORWARD_LENGTH)?,
        num_layers: u32_key(BLOCK_COUNT)?,
        num_heads,
        num_kv_heads: optional_u32(HEAD_COUNT_KV)?.unwrap_or(num_heads),
        context_length: u32_key(CONTEXT_LENGTH)?,
        // Written as f32 from the config's f64; its shortest decimal form is the value the config had (1e-5, not
        // 9.99999974e-6).
        layer_norm_eps: epsilon.to_string().parse::<f64>().unwrap_or(f64::from(epsilon)),
        rope_dims: optional_u32(ROPE_DIMENSION_COUNT)?.unwrap_or(hidden_size / num_heads),
        rope_theta: optional_f32(ROPE_FREQ_BASE)?.map_or(DEFAULT_ROPE_THETA, f64::from),
    })
}

/// `general.name` from the checkpoint directory's name, as gguf-py's `Metadata.id_to_title`: words split on
/// '-' and whitespace; all-lowercase words are title-cased unless they look like a version (`v2`, `v1.5`) or
/// start with a digit (`1`, `7b`); other words stay as they are.
pub(crate) fn model_name(dir_name: &str) -> String {
    dir_name
        .trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|word| if is_lower(word) && !looks_like_version(word) { title(word) } else { word.to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.islower`: there is a cased character and none is uppercase.
fn is_lower(word: &str) -> bool {
    word.chars().any(char::is_lowercase) && !word.chars().any(char::is_uppercase)
}

/// `^(v\d+(?:\.\d+)*|\d.*)$`
fn looks_like_version(word: &str) -> bool {
    if word.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    word.strip_prefix('v')
        .is_some_and(|rest| rest.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit())))
}

/// Python's `str.title` for a lowercase word: a letter that follows a non-letter becomes uppercase.
fn title(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut previous_cased = false;
    for c in word.chars() {
        if previous_cased {
            out.push(c);
        } else {
            out.extend(c.to_uppercase());
        }
        previous_cased = c.is_lowercase() || c.is_uppercase();
    }
    out
}

/// `general.size_label` as gguf-py's `model_weight_count_rounded_notation(count, min_digits=2)`: the count in
/// K/M/B/T with as many decimals as make at least two digits ("6.7M", "1.4B", "13B").
pub(crate) fn size_label(parameter_count: u64) -> String {
    let count = parameter_count as f64;
    let (scaled, suffix) = if count > 1e12 {
        (count * 1e-12, "T")
    } else if count > 1e9 {
        (count * 1e-9, "B")
    } else if count > 1e6 {
        (count * 1e-6, "M")
    } else {
        (count * 1e-3, "K")
    };
    // Python's round() rounds half to even.
    let integer_digits = (scaled.round_ties_even() as u64).to_string().len();
    let decimals = 2usize.saturating_sub(integer_digits);
    format!("{scaled:.decimals$}{suffix}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn names_are_title_cased_like_gguf_py() {
        assert_eq!(model_name("tiny-phi"), "Tiny Phi");
        assert_eq!(model_name("phi-1"), "Phi 1");
        assert_eq!(model_name("phi-1_5"), "Phi 1_5");
        assert_eq!(model_name("tiny-phi-hf4"), "Tiny Phi Hf4");
        assert_eq!(model_name("my-model-v2.1"), "My Model v2.1");
        assert_eq!(model_name("Phi-2-GGUF"), "Phi 2 GGUF");
        assert_eq!(model_name("code-7b"), "Code 7b");
        assert_eq!(model_name("tiny_phi"), "Tiny_Phi");
    }

    #[test]
    fn size_labels_match_gguf_py() {
        assert_eq!(size_label(6_704_640), "6.7M");
        assert_eq!(size_label(1_418_270_720), "1.4B");
        assert_eq!(size_label(2_779_683_840), "2.8B");
        assert_eq!(size_label(13_000_000_000), "13B");
        assert_eq!(size_label(125_000_000), "125M");
        assert_eq!(size_label(9_216), "9.2K");
        assert_eq!(size_label(1_000_000), "1000K");
    }
}
