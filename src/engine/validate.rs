//! Checks on GGUF files before llama.cpp sees them. llama.cpp reports most problems as errors, but some
//! (a truncated tensor, an adapter for another model, a layer count of zero, an odd rotary dimension, a duplicated
//! token) end in a `GGML_ASSERT` that kills the whole process — and with it the user's chat and editor session —
//! or in an endless loop. Reading the file's header ourselves first is cheap, so a model is accepted only when it is
//! what phi-tui runs (GGUF architecture `phi2`) with hyperparameters that llama.cpp can use and tensors of exactly
//! the shapes they imply. Every refusal names the key or tensor at fault.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use phi_converters::gguf::{GgmlType, GgufFile, MetadataArray, MetadataValue};

use super::{EngineError, Result};

/// The llama.cpp architecture of phi-1, phi-1.5 and phi-2.
pub(crate) const ARCHITECTURE: &str = "phi2";
/// llama.cpp's `LLAMA_MAX_LAYERS`; more is a `GGML_ASSERT`.
const MAX_LAYERS: u32 = 512;
/// The longest training context accepted. phi models have 2048; llama.cpp keeps it in an `i32` (llama-cpp-2 panics
/// past that), and the default context is the training context, so a huge value would also mean a huge KV cache.
pub(crate) const MAX_CONTEXT_LENGTH: u32 = 1 << 20;
/// The `phi2.*` keys that llama.cpp reads for this architecture and phi-tui's files use. llama.cpp also reads many
/// optional keys of other architectures under the same prefix (experts, rope scaling, key/value lengths, ...), some
/// of which reach asserts; none belongs in a phi model, so any other `phi2.*` key is refused.
const PHI2_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "block_count",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "vocab_size",
];

/// What the engine keeps from a model file's header.
#[derive(Debug, Clone)]
pub(crate) struct ModelFacts {
    pub(crate) architecture: String,
    pub(crate) name: String,
    pub(crate) file_type: String,
    /// Tensor name → shape in ggml order (`ne`).
    pub(crate) tensors: HashMap<String, Vec<u64>>,
    pub(crate) hparams: Phi2Hparams,
}

/// A phi model's hyperparameters as llama.cpp reads them from the GGUF, checked against each other and against
/// the tensors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Phi2Hparams {
    pub(crate) context_length: u32,
    pub(crate) embedding_length: u32,
    pub(crate) feed_forward_length: u32,
    pub(crate) block_count: u32,
    pub(crate) head_count: u32,
    pub(crate) head_count_kv: u32,
    pub(crate) layer_norm_epsilon: f32,
    pub(crate) rope_dimension_count: u32,
    pub(crate) rope_freq_base: f32,
    /// Tokens in the vocabulary (`tokenizer.ggml.tokens`).
    pub(crate) vocab_size: u32,
}

impl Phi2Hparams {
    pub(crate) fn head_size(&self) -> u32 {
        self.embedding_length / self.head_count
    }

    /// Channels of the keys (and of the values) of one token in one layer.
    pub(crate) fn kv_width(&self) -> u32 {
        self.head_size() * self.head_count_kv
    }
}

/// Reads and checks a model file: a readable GGUF whose tensors all lie inside the file, of type `model`, a phi model
/// (see [`phi2_hparams`]) with a vocabulary llama.cpp can load.
pub(crate) fn model_file(path: &Path) -> Result<ModelFacts> {
    let invalid = |reason: String| EngineError::InvalidModel { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(invalid("no such file".to_owned()));
    }
    let file = GgufFile::open(path).map_err(|e| invalid(strip_path(&e.to_string(), path)))?;
    let general_type = file.get_str("general.type").unwrap_or("model");
    if general_type != "model" {
        return Err(invalid(format!("this is a GGUF `{general_type}`, not a model (is it a LoRA adapter?)")));
    }
    let architecture =
        file.get_str("general.architecture").ok_or_else(|| invalid("no general.architecture".to_owned()))?.to_owned();
    let hparams = phi2_hparams(&file).map_err(invalid)?;
    check_vocabulary(&file).map_err(invalid)?;
    let name = file
        .get_str("general.name")
        .map(str::to_owned)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let file_type = file.get_u32("general.file_type").map_or_else(|| "unknown".to_owned(), file_type_name);
    let tensors = file.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    Ok(ModelFacts { architecture, name, file_type, tensors, hparams })
}

/// The hyperparameters of a phi GGUF, refused (with the key or tensor at fault) unless llama.cpp can run them:
/// architecture `phi2`; no `phi2.*` key it does not use; every count positive and within llama.cpp's limits; heads
/// that divide the width (and key/value heads that divide the heads); a rotary dimension that is even, positive
/// and at most the head size; a finite positive layer-norm epsilon and rope base; and exactly the tensors these
/// imply, with their shapes (llama.cpp checks shapes too, but not before some of the values above have already
/// reached an assert).
pub(crate) fn phi2_hparams(file: &GgufFile) -> Result<Phi2Hparams, String> {
    match file.get_str("general.architecture") {
        Some(ARCHITECTURE) => {}
        Some(other) => {
            return Err(format!(
                "unsupported architecture `{other}`: phi-tui runs phi models (phi-1, phi-1.5, phi-2), GGUF \
                 architecture `{ARCHITECTURE}`"
            ))
        }
        None => return Err("no general.architecture".to_owned()),
    }
    for (key, _) in file.metadata() {
        if let Some(name) = key.strip_prefix("phi2.") {
            if !PHI2_KEYS.contains(&name) {
                return Err(format!("unsupported key `{key}`: phi models do not use it"));
            }
        }
    }
    let u32_key = |name: &str| -> Result<Option<u32>, String> {
        match file.get(&format!("phi2.{name}")) {
            None => Ok(None),
            Some(MetadataValue::U32(value)) => Ok(Some(*value)),
            Some(other) => Err(format!("`phi2.{name}` must be a u32, not {}", other.type_name())),
        }
    };
    let f32_key = |name: &str| -> Result<Option<f32>, String> {
        match file.get(&format!("phi2.{name}")) {
            None => Ok(None),
            Some(MetadataValue::F32(value)) => Ok(Some(*value)),
            Some(other) => Err(format!("`phi2.{name}` must be an f32, not {}", other.type_name())),
        }
    };
    let required = |name: &str, value: Option<u32>| value.ok_or_else(|| format!("missing `phi2.{name}`"));
    let positive = |name: &str, value: u32| {
        if value == 0 {
            Err(format!("`phi2.{name}` is 0"))
        } else {
            Ok(value)
        }
    };

    let context_length = positive("context_length", required("context_length", u32_key("context_length")?)?)?;
    if context_length > MAX_CONTEXT_LENGTH {
        return Err(format!(
            "`phi2.context_length` is {context_length}, more than the {MAX_CONTEXT_LENGTH} tokens phi-tui accepts"
        ));
    }
    let embedding_length = positive("embedding_length", required("embedding_length", u32_key("embedding_length")?)?)?;
    let feed_forward_length =
        positive("feed_forward_length", required("feed_forward_length", u32_key("feed_forward_length")?)?)?;
    let block_count = positive("block_count", required("block_count", u32_key("block_count")?)?)?;
    if block_count > MAX_LAYERS {
        return Err(format!("`phi2.block_count` is {block_count}; llama.cpp supports at most {MAX_LAYERS} layers"));
    }
    let layers = layers_present(file);
    if layers != (0..block_count).collect::<BTreeSet<u32>>() {
        return Err(format!(
            "`phi2.block_count` is {block_count}, but the file has tensors for {}",
            describe_layers(&layers)
        ));
    }
    let head_count =
        positive("attention.head_count", required("attention.head_count", u32_key("attention.head_count")?)?)?;
    let head_count_kv = positive("attention.head_count_kv", u32_key("attention.head_count_kv")?.unwrap_or(head_count))?;
    if embedding_length % head_count != 0 {
        return Err(format!(
            "`phi2.attention.head_count` {head_count} does not divide `phi2.embedding_length` {embedding_length}"
        ));
    }
    if head_count % head_count_kv != 0 {
        return Err(format!(
            "`phi2.attention.head_count_kv` {head_count_kv} does not divide `phi2.attention.head_count` {head_count}"
        ));
    }
    let head_size = embedding_length / head_count;
    // llama.cpp's default when the key is absent is the whole head.
    let rope_dimension_count = u32_key("rope.dimension_count")?.unwrap_or(head_size);
    if rope_dimension_count == 0 || rope_dimension_count % 2 != 0 || rope_dimension_count > head_size {
        return Err(format!(
            "`phi2.rope.dimension_count` is {rope_dimension_count}; it must be even, positive and at most the head \
             size {head_size}"
        ));
    }
    let layer_norm_epsilon = f32_key("attention.layer_norm_epsilon")?
        .ok_or_else(|| "missing `phi2.attention.layer_norm_epsilon`".to_owned())?;
    if !(layer_norm_epsilon.is_finite() && layer_norm_epsilon > 0.0) {
        return Err(format!(
            "`phi2.attention.layer_norm_epsilon` is {layer_norm_epsilon}; it must be finite and positive"
        ));
    }
    let rope_freq_base = f32_key("rope.freq_base")?.unwrap_or(10_000.0);
    if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
        return Err(format!("`phi2.rope.freq_base` is {rope_freq_base}; it must be finite and positive"));
    }
    let vocab_size = match file.get("tokenizer.ggml.tokens").and_then(MetadataValue::as_array) {
        Some(tokens) => u32::try_from(tokens.len()).map_err(|_| "too many tokens".to_owned())?,
        None => return Err("no vocabulary (`tokenizer.ggml.tokens`)".to_owned()),
    };
    if vocab_size == 0 {
        return Err("the vocabulary (`tokenizer.ggml.tokens`) is empty".to_owned());
    }
    if let Some(declared) = u32_key("vocab_size")? {
        if declared != vocab_size {
            return Err(format!("`phi2.vocab_size` is {declared}, but the vocabulary has {vocab_size} tokens"));
        }
    }
    let hparams = Phi2Hparams {
        context_length,
        embedding_length,
        feed_forward_length,
        block_count,
        head_count,
        head_count_kv,
        layer_norm_epsilon,
        rope_dimension_count,
        rope_freq_base,
        vocab_size,
    };
    check_tensors(file, &hparams)?;
    Ok(hparams)
}

/// The layer numbers `N` of the file's `blk.N.*` tensors (a name that does not parse counts as no layer; the
/// tensor check names it).
fn layers_present(file: &GgufFile) -> BTreeSet<u32> {
    file.tensors().iter().filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()).collect()
}

fn describe_layers(layers: &BTreeSet<u32>) -> String {
    match (layers.first(), layers.last()) {
        (Some(first), Some(last)) if layers.len() as u64 == u64::from(last - first) + 1 => {
            format!("{} layers ({first}..={last})", layers.len())
        }
        (Some(_), Some(_)) => format!("{} layers (numbered {:?})", layers.len(), layers),
        _ => "no layers".to_owned(),
    }
}

/// Exactly the tensors llama.cpp's phi2 loader takes, with the shapes `hparams` imply (ggml order, `ne`).
/// Norms and biases must be F32, as every converter writes them.
fn check_tensors(file: &GgufFile, hparams: &Phi2Hparams) -> Result<(), String> {
    let (embd, ff, vocab) =
        (u64::from(hparams.embedding_length), u64::from(hparams.feed_forward_length), u64::from(hparams.vocab_size));
    let gqa = u64::from(hparams.kv_width());
    // name → (shape, required)
    let mut expected: HashMap<String, (Vec<u64>, bool)> = HashMap::new();
    let mut expect = |name: String, shape: Vec<u64>, required: bool| {
        expected.insert(name, (shape, required));
    };
    expect("token_embd.weight".into(), vec![embd, vocab], true);
    expect("output_norm.weight".into(), vec![embd], true);
    expect("output_norm.bias".into(), vec![embd], true);
    expect("output.weight".into(), vec![embd, vocab], true);
    expect("output.bias".into(), vec![vocab], true);
    for layer in 0..hparams.block_count {
        let name = |suffix: &str| format!("blk.{layer}.{suffix}");
        expect(name("attn_norm.weight"), vec![embd], true);
        expect(name("attn_norm.bias"), vec![embd], true);
        // Fused q/k/v, or separate projections: llama.cpp takes either.
        let fused = file.tensor(&name("attn_qkv.weight")).is_some();
        if fused {
            expect(name("attn_qkv.weight"), vec![embd, embd + 2 * gqa], true);
            expect(name("attn_qkv.bias"), vec![embd + 2 * gqa], false);
        } else {
            expect(name("attn_q.weight"), vec![embd, embd], true);
            expect(name("attn_k.weight"), vec![embd, gqa], true);
            expect(name("attn_v.weight"), vec![embd, gqa], true);
        }
        // Separate biases go with either form (llama.cpp reads them for fused weights without a fused bias).
        if !(fused && file.tensor(&name("attn_qkv.bias")).is_some()) {
            expect(name("attn_q.bias"), vec![embd], false);
            expect(name("attn_k.bias"), vec![gqa], false);
            expect(name("attn_v.bias"), vec![gqa], false);
        }
        expect(name("attn_output.weight"), vec![embd, embd], true);
        expect(name("attn_output.bias"), vec![embd], true);
        expect(name("ffn_up.weight"), vec![embd, ff], true);
        expect(name("ffn_up.bias"), vec![ff], true);
        expect(name("ffn_down.weight"), vec![ff, embd], true);
        expect(name("ffn_down.bias"), vec![embd], true);
    }
    let mut seen = HashSet::new();
    for tensor in file.tensors() {
        let Some((shape, _)) = expected.get(&tensor.name) else {
            return Err(format!(
                "unexpected tensor `{}` in a phi model of {} layers",
                tensor.name, hparams.block_count
            ));
        };
        if tensor.dims != *shape {
            return Err(format!(
                "tensor `{}` has shape {:?}, but the metadata implies {shape:?} (embedding_length {embd}, \
                 feed_forward_length {ff}, {} heads of which {} for keys/values, {vocab} tokens)",
                tensor.name, tensor.dims, hparams.head_count, hparams.head_count_kv
            ));
        }
        if shape.len() == 1 && tensor.ggml_type != GgmlType::F32 {
            return Err(format!("tensor `{}` is {}; norms and biases must be F32", tensor.name, tensor.ggml_type));
        }
        seen.insert(tensor.name.as_str());
    }
    let mut missing: Vec<&String> = expected
        .iter()
        .filter(|(name, (_, required))| *required && !seen.contains(name.as_str()))
        .map(|(n, _)| n)
        .collect();
    missing.sort();
    match missing.first() {
        Some(name) => Err(format!("missing tensor `{name}`")),
        None => Ok(()),
    }
}

/// The vocabulary as llama.cpp's BPE loader needs it: phi's `gpt2` tokenizer, tokens that are strings and all
/// different (a duplicate is a `GGML_ASSERT`), token types and merges of the right kinds.
fn check_vocabulary(file: &GgufFile) -> Result<(), String> {
    match file.get_str("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => return Err(format!("tokenizer `{other}` is not phi's (`tokenizer.ggml.model` must be `gpt2`)")),
        None => return Err("no tokenizer (`tokenizer.ggml.model`)".to_owned()),
    }
    let tokens = match file.get("tokenizer.ggml.tokens") {
        Some(MetadataValue::Array(MetadataArray::String(tokens))) => tokens,
        Some(other) => {
            return Err(format!("`tokenizer.ggml.tokens` must be an array of strings, not {}", other.type_name()))
        }
        None => return Err("no vocabulary (`tokenizer.ggml.tokens`)".to_owned()),
    };
    let mut unique = HashSet::with_capacity(tokens.len());
    if let Some((id, token)) = tokens.iter().enumerate().find(|(_, token)| !unique.insert(token.as_str())) {
        return Err(format!("token {id} ({token:?}) appears twice in `tokenizer.ggml.tokens`"));
    }
    match file.get("tokenizer.ggml.token_type") {
        None => {}
        Some(MetadataValue::Array(MetadataArray::I32(types))) if types.len() == tokens.len() => {}
        Some(other) => {
            return Err(format!(
                "`tokenizer.ggml.token_type` must be {} i32 values, not {}",
                tokens.len(),
                describe_value(other)
            ))
        }
    }
    match file.get("tokenizer.ggml.merges") {
        Some(MetadataValue::Array(MetadataArray::String(_))) => {}
        Some(other) => {
            return Err(format!("`tokenizer.ggml.merges` must be an array of strings, not {}", other.type_name()))
        }
        None => return Err("no BPE merges (`tokenizer.ggml.merges`)".to_owned()),
    }
    Ok(())
}

fn describe_value(value: &MetadataValue) -> String {
    match value.as_array() {
        Some(array) => format!("{} with {} elements", value.type_name(), array.len()),
        None => value.type_name(),
    }
}

/// The GGUF key where live fine-tuning records the step an adapter was written at.
pub const TRAINING_STEP_KEY: &str = "phi_tui.training.step";

/// What the engine keeps from an adapter file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdapterFacts {
    pub(crate) path: PathBuf,
    /// Which version of the file this is: a file rewritten at the same path (live fine-tuning replaces its adapter
    /// with write-then-rename) is another adapter and must be loaded again.
    pub(crate) version: FileVersion,
    pub(crate) step: Option<u64>,
}

/// A file's identity and last change: (device, inode, modification time in ns, length).
pub(crate) type FileVersion = (u64, u64, i64, u64);

fn file_version(metadata: &std::fs::Metadata) -> FileVersion {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino(), metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(), metadata.len())
}

/// Checks that a LoRA adapter fits the loaded model: same architecture, and every `X.lora_a`/`X.lora_b` pair
/// names a tensor `X` of the model with matching dimensions. Returns the adapter's canonical path and version.
pub(crate) fn adapter_file(path: &Path, model: &ModelFacts) -> Result<AdapterFacts> {
    let invalid = |reason: String| EngineError::InvalidAdapter { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(invalid("no such file".to_owned()));
    }
    let canonical = path.canonicalize().map_err(|e| invalid(e.to_string()))?;
    let version = std::fs::metadata(&canonical).map(|m| file_version(&m)).map_err(|e| invalid(e.to_string()))?;
    let file = GgufFile::open(path).map_err(|e| invalid(strip_path(&e.to_string(), path)))?;
    if file.get_str("general.type") != Some("adapter") || file.get_str("adapter.type") != Some("lora") {
        return Err(invalid("not a LoRA adapter (general.type must be `adapter`, adapter.type `lora`)".to_owned()));
    }
    let architecture = file.get_str("general.architecture").unwrap_or("");
    if architecture != model.architecture {
        return Err(invalid(format!(
            "the adapter is for architecture `{architecture}` but the model is `{}`",
            model.architecture
        )));
    }
    let mut pairs = 0;
    for tensor in file.tensors() {
        let Some(base) = tensor.name.strip_suffix(".lora_a") else {
            if !tensor.name.ends_with(".lora_b") {
                return Err(invalid(format!("unexpected tensor `{}`", tensor.name)));
            }
            continue;
        };
        let lora_b_name = format!("{base}.lora_b");
        let lora_b = file
            .tensors()
            .iter()
            .find(|t| t.name == lora_b_name)
            .ok_or_else(|| invalid(format!("`{}` has no matching `{lora_b_name}`", tensor.name)))?;
        let target =
            model.tensors.get(base).ok_or_else(|| invalid(format!("the model has no tensor `{base}` to adapt")))?;
        // ggml order: base [in, out], lora_a [in, r], lora_b [r, out].
        let (a, b) = (&tensor.dims, &lora_b.dims);
        let fits = target.len() == 2
            && a.len() == 2
            && b.len() == 2
            && a[0] == target[0]
            && b[1] == target[1]
            && a[1] == b[0]
            && a[1] > 0;
        if !fits {
            return Err(invalid(format!("`{base}`: lora_a {a:?} and lora_b {b:?} do not fit the model's {target:?}")));
        }
        pairs += 1;
    }
    if pairs == 0 {
        return Err(invalid("the adapter has no lora_a/lora_b tensors".to_owned()));
    }
    let step = file.get_u32(TRAINING_STEP_KEY).map(u64::from);
    Ok(AdapterFacts { path: canonical, version, step })
}

/// Bytes of an f16 KV cache holding `positions` token positions of the model (keys and values, every layer).
pub(crate) fn kv_cache_bytes(hparams: &Phi2Hparams, positions: u64) -> u64 {
    positions
        .saturating_mul(u64::from(hparams.block_count))
        .saturating_mul(2 * u64::from(hparams.kv_width()))
        .saturating_mul(2)
}

/// Checks the context a load would create — `per_sequence` tokens for each of `sequences` sequences — against the
/// model (no more than its training context unless `beyond_training`) and against `available` bytes of memory, when
/// known, for its KV cache. llama.cpp would otherwise allocate whatever it is asked for (or fail with no reason).
pub(crate) fn context_fits(
    hparams: &Phi2Hparams,
    per_sequence: u32,
    sequences: u32,
    beyond_training: bool,
    available: Option<u64>,
) -> Result<(), String> {
    if per_sequence > hparams.context_length && !beyond_training {
        return Err(format!(
            "a context of {per_sequence} tokens is more than the model's training context of {} tokens (a larger one \
             needs --force-context)",
            hparams.context_length
        ));
    }
    let positions = u64::from(per_sequence) * u64::from(sequences);
    if positions > i32::MAX as u64 {
        return Err(format!("a context of {positions} tokens in all is more than llama.cpp can address"));
    }
    let needed = kv_cache_bytes(hparams, positions);
    if let Some(available) = available {
        if needed > available {
            return Err(format!(
                "a context of {positions} tokens needs {} for its KV cache, but only {} of memory is available",
                human_bytes(needed),
                human_bytes(available)
            ));
        }
    }
    Ok(())
}

/// Memory the system can give without swapping (`MemAvailable` of /proc/meminfo), where the OS says.
pub(crate) fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes as f64 >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// Errors from the GGUF reader start with the path, which our own error already shows.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_owned()
}

/// GGUF `general.file_type` (llama.cpp's `llama_ftype`) as people write it.
fn file_type_name(ftype: u32) -> String {
    match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        other => return format!("type {other}"),
    }
    .to_owned()
}
