//! Checks on GGUF files before llama.cpp sees them. llama.cpp reports most problems as errors, but some
//! (a truncated tensor, an adapter for another model) end in a `GGML_ASSERT` that kills the whole process — and
//! with it the user's chat and editor session. Reading the file's header ourselves first is cheap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use phi_converters::gguf::GgufFile;

use super::{EngineError, Result};

/// What the engine keeps from a model file's header.
#[derive(Debug, Clone)]
pub(crate) struct ModelFacts {
    pub(crate) architecture: String,
    pub(crate) name: String,
    pub(crate) file_type: String,
    /// Tensor name → shape in ggml order (`ne`).
    pub(crate) tensors: HashMap<String, Vec<u64>>,
}

/// Reads and checks a model file: a readable GGUF whose tensors all lie inside the file, of type `model`.
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
    let name = file
        .get_str("general.name")
        .map(str::to_owned)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let file_type = file.get_u32("general.file_type").map_or_else(|| "unknown".to_owned(), file_type_name);
    let tensors = file.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    Ok(ModelFacts { architecture, name, file_type, tensors })
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
