//! `config.json` of a phi checkpoint, in the three styles found in the wild, reduced to the hyperparameters the
//! GGUF needs. Anything the `phi2` graph of llama.cpp cannot reproduce is refused here, before any work.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ConvertError, Result};

pub(crate) const CONFIG_FILE: &str = "config.json";

/// The rope base llama.cpp assumes for phi2 when the GGUF does not say.
pub(crate) const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// Which generation of config file a checkpoint has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStyle {
    /// transformers ≥ 5: rope settings in `rope_parameters`, `dtype`.
    Transformers5,
    /// transformers 4.37–4.x, as published with microsoft/phi-1: top-level `partial_rotary_factor` and
    /// `rope_theta`, `num_key_value_heads: null`, `torch_dtype`.
    Transformers4,
    /// The original `phi-msft` remote-code config: `n_embd`, `n_layer`, `n_head`, `n_inner`, `rotary_dim`, ….
    PhiMsft,
}

impl ConfigStyle {
    /// The key that holds the layer count in this style.
    pub(crate) fn layer_count_key(self) -> &'static str {
        match self {
            ConfigStyle::PhiMsft => "n_layer",
            ConfigStyle::Transformers5 | ConfigStyle::Transformers4 => "num_hidden_layers",
        }
    }
}

/// The hyperparameters of a phi model: what a checkpoint's `config.json` gives and a GGUF's `phi2.*` keys hold
/// (see [`crate::gguf_model_config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the MLP (fc1's output).
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub context_length: usize,
    pub layer_norm_eps: f64,
    /// Rotary dimensions per head (the first `rope_dims` channels of each head rotate).
    pub rope_dims: usize,
    pub rope_theta: f64,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim()
    }

    /// This config as a transformers ≥ 5 `config.json` for `PhiForCausalLM` (the style `from_pretrained` and
    /// [`ModelConfig::read`] take), weights stored as `dtype` (`float32`, `float16`, …). The rotary share is
    /// written as `rope_dims / head_dim`, which both readers turn back into `rope_dims`.
    pub fn to_transformers_json(&self, dtype: &str) -> Value {
        serde_json::json!({
            "architectures": ["PhiForCausalLM"],
            "model_type": "phi",
            "attention_dropout": 0.0,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "dtype": dtype,
            "embd_pdrop": 0.0,
            "hidden_act": "gelu_new",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.context_length,
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_kv_heads,
            "qk_layernorm": false,
            "resid_pdrop": 0.0,
            "rope_parameters": {
                "partial_rotary_factor": self.rope_dims as f64 / self.head_dim() as f64,
                "rope_theta": self.rope_theta,
                "rope_type": "default",
            },
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    /// Reads a `config.json` file (any of the three styles).
    pub fn read_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, "cannot read file", e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|source| ConvertError::Json { path: path.to_path_buf(), source })?;
        Ok(ModelConfig::from_json(path, &json)?.0)
    }

    /// Reads `dir/config.json`. Returns its style (which names its keys in errors) and the raw JSON too, for the
    /// special token ids it may hold.
    pub(crate) fn load(dir: &Path) -> Result<(ModelConfig, ConfigStyle, Value)> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ConvertError::io(&path, "cannot read file", e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|source| ConvertError::Json { path: path.clone(), source })?;
        let (config, style) = ModelConfig::from_json(&path, &json)?;
        Ok((config, style, json))
    }

    /// Reads and checks `dir/config.json` alone: whether a checkpoint is a phi model this crate converts, known
    /// before its weights are there.
    pub fn read(dir: &Path) -> Result<ModelConfig> {
        Ok(Self::load(dir)?.0)
    }

    /// Parses a config already read from `path` (named in errors).
    pub(crate) fn from_json(path: &Path, json: &Value) -> Result<(ModelConfig, ConfigStyle)> {
        let object = json.as_object().ok_or_else(|| ConvertError::InvalidConfig {
            path: path.to_path_buf(),
            reason: "not a JSON object".to_owned(),
        })?;
        let keys = Keys { path, object };
        let is_msft = check_model_type(&keys)?;
        let (config, style) = if is_msft { parse_msft(&keys)? } else { parse_transformers(&keys)? };
        config.validate(style, &keys)?;
        Ok((config, style))
    }

    fn validate(&self, style: ConfigStyle, keys: &Keys) -> Result<()> {
        let (heads_key, kv_key, rope_key) = match style {
            ConfigStyle::PhiMsft => ("n_head", "n_head_kv", "rotary_dim"),
            _ => ("num_attention_heads", "num_key_value_heads", "partial_rotary_factor"),
        };
        if self.hidden_size % self.num_heads != 0 {
            return Err(keys.invalid(
                heads_key,
                format!("({}) does not divide the hidden size {}", self.num_heads, self.hidden_size),
            ));
        }
        if self.num_kv_heads > self.num_heads || self.num_heads % self.num_kv_heads != 0 {
            return Err(
                keys.invalid(kv_key, format!("({}) must divide the head count {}", self.num_kv_heads, self.num_heads))
            );
        }
        if self.rope_dims > self.head_dim() || self.rope_dims % 2 != 0 {
            return Err(keys.invalid(
                rope_key,
                format!(
                    "gives {} rotary dimensions per head; need an even number up to the head size {}",
                    self.rope_dims,
                    self.head_dim()
                ),
            ));
        }
        Ok(())
    }
}

/// Checks `model_type` and `architectures`; returns whether this is the legacy phi-msft style.
fn check_model_type(keys: &Keys) -> Result<bool> {
    let model_type = keys.optional_str("model_type")?;
    if let Some(model_type) = model_type {
        if model_type != "phi" && model_type != "phi-msft" {
            return Err(ConvertError::UnsupportedModelType {
                path: keys.path.to_path_buf(),
                model_type: model_type.to_owned(),
            });
        }
    }
    match keys.object.get("architectures") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            if !names.is_empty() && !names.iter().any(|n| n.as_str() == Some("PhiForCausalLM")) {
                return Err(ConvertError::UnsupportedArchitecture {
                    path: keys.path.to_path_buf(),
                    architectures: Value::Array(names.clone()).to_string(),
                });
            }
        }
        Some(_) => return Err(keys.invalid("architectures", "must be a list of names".to_owned())),
    }
    if model_type.is_none() && !keys.object.contains_key("architectures") {
        return Err(keys.missing("model_type"));
    }
    Ok(model_type == Some("phi-msft") || (model_type.is_none() && keys.object.contains_key("n_embd")))
}

fn parse_transformers(keys: &Keys) -> Result<(ModelConfig, ConfigStyle)> {
    if keys.optional_bool("qk_layernorm")? == Some(true) {
        return Err(keys.unsupported("qk_layernorm = true (llama.cpp's phi2 has no LayerNorm on q and k)"));
    }
    check_activation(keys, "hidden_act")?;
    let num_heads = keys.size("num_attention_heads")?;
    let hidden_size = keys.size("hidden_size")?;
    let rope = keys.object.get("rope_parameters").and_then(Value::as_object);
    let style = if rope.is_some() { ConfigStyle::Transformers5 } else { ConfigStyle::Transformers4 };
    let (partial_rotary_factor, rope_theta) = match rope {
        Some(rope) => {
            let nested = Keys { path: keys.path, object: rope };
            if let Some(rope_type) = nested.optional_str("rope_type")? {
                if rope_type != "default" {
                    return Err(
                        keys.unsupported(&format!("rope_type `{rope_type}` (llama.cpp's phi2 has no rope scaling)"))
                    );
                }
            }
            (
                nested
                    .optional_f64("partial_rotary_factor")?
                    .map_or_else(|| keys.optional_f64("partial_rotary_factor"), |v| Ok(Some(v)))?,
                nested.optional_f64("rope_theta")?.map_or_else(|| keys.optional_f64("rope_theta"), |v| Ok(Some(v)))?,
            )
        }
        None => {
            if !matches!(keys.object.get("rope_scaling"), None | Some(Value::Null)) {
                return Err(keys.unsupported("rope_scaling (llama.cpp's phi2 has no rope scaling)"));
            }
            (keys.optional_f64("partial_rotary_factor")?, keys.optional_f64("rope_theta")?)
        }
    };
    let partial_rotary_factor = partial_rotary_factor.ok_or_else(|| keys.missing("partial_rotary_factor"))?;
    if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
        return Err(keys.invalid("partial_rotary_factor", format!("must be in (0, 1], got {partial_rotary_factor}")));
    }
    // As llama.cpp's converter: int(partial_rotary_factor * hidden_size) // num_attention_heads.
    let rope_dims = (partial_rotary_factor * hidden_size as f64) as usize / num_heads;
    let config = ModelConfig {
        vocab_size: keys.size("vocab_size")?,
        hidden_size,
        intermediate_size: keys.size("intermediate_size")?,
        num_layers: keys.size("num_hidden_layers")?,
        num_heads,
        num_kv_heads: keys.optional_size("num_key_value_heads")?.unwrap_or(num_heads),
        context_length: keys.size("max_position_embeddings")?,
        layer_norm_eps: keys.positive_f64("layer_norm_eps")?,
        rope_dims,
        rope_theta: positive_theta(keys, rope_theta)?,
    };
    Ok((config, style))
}

fn parse_msft(keys: &Keys) -> Result<(ModelConfig, ConfigStyle)> {
    check_activation(keys, "activation_function")?;
    let hidden_size = keys.size("n_embd")?;
    let num_heads = keys.size("n_head")?;
    let config = ModelConfig {
        vocab_size: keys.size("vocab_size")?,
        hidden_size,
        // phi-msft's MLP defaults to 4·n_embd when n_inner is null.
        intermediate_size: keys.optional_size("n_inner")?.unwrap_or(4 * hidden_size),
        num_layers: keys.size("n_layer")?,
        num_heads,
        num_kv_heads: keys.optional_size("n_head_kv")?.unwrap_or(num_heads),
        context_length: keys.size("n_positions")?,
        layer_norm_eps: keys.positive_f64("layer_norm_epsilon")?,
        rope_dims: keys.size("rotary_dim")?,
        rope_theta: positive_theta(keys, keys.optional_f64("rope_theta")?)?,
    };
    Ok((config, ConfigStyle::PhiMsft))
}

/// phi uses the tanh approximation of GELU, which is what llama.cpp's phi2 computes; another activation would
/// give a model that loads but computes something else.
fn check_activation(keys: &Keys, key: &str) -> Result<()> {
    match keys.optional_str(key)? {
        None | Some("gelu_new") | Some("gelu_pytorch_tanh") => Ok(()),
        Some(other) => {
            Err(keys.unsupported(&format!("{key} `{other}` (llama.cpp's phi2 uses the tanh GELU, `gelu_new`)")))
        }
    }
}

fn positive_theta(keys: &Keys, theta: Option<f64>) -> Result<f64> {
    match theta {
        None => Ok(DEFAULT_ROPE_THETA),
        Some(t) if t > 0.0 && t.is_finite() => Ok(t),
        Some(t) => Err(keys.invalid("rope_theta", format!("must be positive, got {t}"))),
    }
}

/// Typed access to the keys of one JSON object, with errors that name the file and key.
struct Keys<'a> {
    path: &'a Path,
    object: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn missing(&self, key: &str) -> ConvertError {
        ConvertError::MissingKey { path: self.path.to_path_buf(), key: key.to_owned() }
    }

    fn invalid(&self, key: &str, reason: String) -> ConvertError {
        ConvertError::InvalidValue { path: self.path.to_path_buf(), key: key.to_owned(), reason }
    }

    fn unsupported(&self, reason: &str) -> ConvertError {
        ConvertError::UnsupportedFeature { path: PathBuf::from(self.path), reason: reason.to_owned() }
    }

    /// The value, with JSON `null` treated as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.object.get(key).filter(|v| !v.is_null())
    }

    /// A positive integer that fits the u32 fields of GGUF.
    fn optional_size(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value.as_u64() {
            Some(n) if n > 0 && n <= u64::from(u32::MAX) => Ok(Some(n as usize)),
            _ => Err(self.invalid(key, format!("must be a positive integer, got {value}"))),
        }
    }

    fn size(&self, key: &str) -> Result<usize> {
        self.optional_size(key)?.ok_or_else(|| self.missing(key))
    }

    fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value.as_f64().map(Some).ok_or_else(|| self.invalid(key, format!("must be a number, got {value}")))
    }

    fn positive_f64(&self, key: &str) -> Result<f64> {
        match self.optional_f64(key)? {
            Some(v) if v > 0.0 && v.is_finite() => Ok(v),
            Some(v) => Err(self.invalid(key, format!("must be positive, got {v}"))),
            None => Err(self.missing(key)),
        }
    }

    fn optional_str(&self, key: &str) -> Result<Option<&str>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value.as_str().map(Some).ok_or_else(|| self.invalid(key, format!("must be a string, got {value}")))
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value.as_bool().map(Some).ok_or_else(|| self.invalid(key, format!("must be true or false, got {value}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(json: Value) -> Result<ModelConfig> {
        Ok(parse_with_style(json)?.0)
    }

    fn parse_with_style(json: Value) -> Result<(ModelConfig, ConfigStyle)> {
        ModelConfig::from_json(Path::new("/m/config.json"), &json)
    }

    fn transformers5() -> Value {
        json!({
            "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 64, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
            "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "vocab_size": 51200, "qk_layernorm": false,
            "hidden_act": "gelu_new",
            "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rope_type": "default"}
        })
    }

    #[test]
    fn all_three_styles_give_the_same_hyperparameters() {
        let (t5, t5_style) = parse_with_style(transformers5()).unwrap();
        let (t4, t4_style) = parse_with_style(json!({
            "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 64, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null,
            "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "vocab_size": 51200,
            "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rope_scaling": null
        }))
        .unwrap();
        let (msft, msft_style) = parse_with_style(json!({
            "architectures": ["PhiForCausalLM"], "model_type": "phi-msft", "n_embd": 64, "n_layer": 2, "n_head": 4,
            "n_head_kv": null, "n_inner": null, "n_positions": 2048, "rotary_dim": 8, "layer_norm_epsilon": 1e-5,
            "vocab_size": 51200, "activation_function": "gelu_new"
        }))
        .unwrap();
        assert_eq!(t5_style, ConfigStyle::Transformers5);
        assert_eq!(t4_style, ConfigStyle::Transformers4);
        assert_eq!(msft_style, ConfigStyle::PhiMsft);
        for config in [&t5, &t4, &msft] {
            assert_eq!(
                (
                    config.hidden_size,
                    config.intermediate_size,
                    config.num_layers,
                    config.num_heads,
                    config.num_kv_heads
                ),
                (64, 256, 2, 4, 4)
            );
            assert_eq!((config.rope_dims, config.context_length, config.vocab_size), (8, 2048, 51200));
            assert_eq!(config.rope_theta, 10000.0);
        }
    }

    #[test]
    fn rope_dims_truncate_like_python() {
        // int(0.4 * 2560) // 32 = 1024 // 32 = 32 (phi-2's numbers).
        let mut config = transformers5();
        config["hidden_size"] = json!(2560);
        config["num_attention_heads"] = json!(32);
        config["num_key_value_heads"] = json!(32);
        config["rope_parameters"]["partial_rotary_factor"] = json!(0.4);
        assert_eq!(parse(config).unwrap().rope_dims, 32);
    }

    #[test]
    fn unsupported_configs_are_refused_with_the_reason() {
        let cases: Vec<(Value, &str)> = vec![
            (
                {
                    let mut c = transformers5();
                    c["model_type"] = json!("llama");
                    c
                },
                "unsupported model_type `llama`",
            ),
            (
                {
                    let mut c = transformers5();
                    c["qk_layernorm"] = json!(true);
                    c
                },
                "qk_layernorm",
            ),
            (
                {
                    let mut c = transformers5();
                    c["hidden_act"] = json!("relu");
                    c
                },
                "hidden_act `relu`",
            ),
            (
                {
                    let mut c = transformers5();
                    c["rope_parameters"]["rope_type"] = json!("linear");
                    c
                },
                "rope_type `linear`",
            ),
            (
                {
                    let mut c = transformers5();
                    c["architectures"] = json!(["LlamaForCausalLM"]);
                    c
                },
                "LlamaForCausalLM",
            ),
            (
                {
                    let mut c = transformers5();
                    c.as_object_mut().unwrap().remove("hidden_size");
                    c
                },
                "missing key `hidden_size`",
            ),
            (
                {
                    let mut c = transformers5();
                    c["hidden_size"] = json!("64");
                    c
                },
                "key `hidden_size` must be a positive integer",
            ),
            (
                {
                    let mut c = transformers5();
                    c["num_attention_heads"] = json!(5);
                    c
                },
                "does not divide",
            ),
            (
                {
                    let mut c = transformers5();
                    c["rope_parameters"].as_object_mut().unwrap().remove("partial_rotary_factor");
                    c
                },
                "missing key `partial_rotary_factor`",
            ),
            (json!([1, 2]), "not a JSON object"),
        ];
        for (config, needle) in cases {
            let message = parse(config).unwrap_err().to_string();
            assert!(message.starts_with("/m/config.json: "), "{message}");
            assert!(message.contains(needle), "{message} should contain {needle}");
        }
    }

    #[test]
    fn legacy_n_inner_null_means_four_times_the_width() {
        let config = parse(json!({
            "model_type": "phi-msft", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_inner": null,
            "n_positions": 128, "rotary_dim": 4, "layer_norm_epsilon": 1e-5, "vocab_size": 100
        }))
        .unwrap();
        assert_eq!(config.intermediate_size, 128);
        assert_eq!(config.num_kv_heads, 2);
    }
}
