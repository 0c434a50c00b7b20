//! Training checkpoints: everything a resumed run needs to continue exactly where the saved one stopped — the
//! trained parameters (LoRA matrices, or every weight of the model in full training), AdamW's moments and step
//! count, and the step index. The data order is not stored: it is a pure function of the seed and the epoch (see
//! `Trainer`), so the step index recovers it.
//!
//! One file, `DIR/checkpoint.safetensors`: float32 tensors `lora.{layer}.{target}.{A|B}` (LoRA) or
//! `weight.{gguf name}` (full training), `adam.m.…`, `adam.v.…`, and the state as JSON in the safetensors metadata
//! under `phi_tui.finetune`. The settings that shape the run (hyperparameters, data and model fingerprints) are
//! stored too, so resuming with other settings is an error instead of a silently different run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};
use super::peft::{f32_bytes, write_safetensors};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const STATE_KEY: &str = "phi_tui.finetune";
pub(crate) const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    pub(crate) version: u32,
    /// Optimizer steps done.
    pub(crate) step: u64,
    pub(crate) adam_step: u64,
    pub(crate) rank: usize,
    pub(crate) alpha: f32,
    /// The adapted modules, in parameter order: `[layer, target]` (LoRA runs).
    pub(crate) modules: Vec<(usize, String)>,
    /// The trained weights by GGUF name, in parameter order (full-training runs; absent for LoRA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) parameters: Vec<String>,
    /// The settings the run depends on; a resume must match them all.
    pub(crate) settings: BTreeMap<String, serde_json::Value>,
    /// The lowest validation loss so far and its step (absent in checkpoints of older versions).
    #[serde(default)]
    pub(crate) best_validation: Option<(u64, f64)>,
    /// float16 mixed precision: the loss scaler's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) loss_scaler: Option<super::precision::LossScaler>,
}

impl CheckpointState {
    /// Whether the run trains every weight rather than LoRA matrices.
    pub(crate) fn is_full(&self) -> bool {
        !self.parameters.is_empty()
    }

    /// The key of each parameter, in order: `{layer}.{target}.{A|B}` or the weight's GGUF name.
    fn keys(&self, path: &Path) -> Result<Vec<String>> {
        if self.is_full() {
            return Ok(self.parameters.clone());
        }
        let mut keys = Vec::new();
        for (layer, target_name) in &self.modules {
            let target = module_target(target_name)
                .ok_or_else(|| FinetuneError::checkpoint(path, format!("unknown module `{target_name}`")))?;
            keys.extend(["A", "B"].map(|part| format!("{}.{part}", key(*layer, target))));
        }
        Ok(keys)
    }

    /// The prefix of the parameters' tensor names.
    fn prefix(&self) -> &'static str {
        if self.is_full() {
            "weight."
        } else {
            "lora."
        }
    }
}

fn module_target(name: &str) -> Option<LoraTarget> {
    LoraTarget::parse(name).and_then(|t| (t.len() == 1).then_some(t[0]))
}

/// One trained parameter as saved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SavedParameter {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
}

/// What a checkpoint holds.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    pub(crate) state: CheckpointState,
    /// The parameters in the order of `state` (A, B per module; or `state.parameters`).
    pub(crate) parameters: Vec<SavedParameter>,
    /// AdamW moments, one vector per parameter.
    pub(crate) m: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
}

impl Checkpoint {
    /// The LoRA adapter of a LoRA run's checkpoint.
    pub(crate) fn adapter(&self, path: &Path) -> Result<LoraAdapter> {
        let fail = |reason: &str| FinetuneError::checkpoint(path, reason);
        if self.state.is_full() {
            return Err(fail("this checkpoint is of a full training run (`phi-tui train`), not of a LoRA run"));
        }
        let matrix = |p: &SavedParameter| -> Result<Matrix> {
            let [rows, cols] = p.shape[..] else { return Err(fail("a LoRA parameter is not a matrix")) };
            Ok(Matrix { rows, cols, data: p.data.clone() })
        };
        let mut modules = BTreeMap::new();
        for ((layer, target_name), pair) in self.state.modules.iter().zip(self.parameters.chunks_exact(2)) {
            let target = module_target(target_name).ok_or_else(|| fail("unknown module"))?;
            modules.insert((*layer, target), LoraPair { a: matrix(&pair[0])?, b: matrix(&pair[1])? });
        }
        Ok(LoraAdapter { rank: self.state.rank, alpha: self.state.alpha, modules })
    }
}

pub(crate) fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

fn key(layer: usize, target: LoraTarget) -> String {
    format!("{layer}.{}", target.peft_name())
}

pub(crate) fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| FinetuneError::io(dir, "cannot create directory", e))?;
    let path = checkpoint_path(dir);
    let state = &checkpoint.state;
    let keys = state.keys(&path)?;
    if keys.len() != checkpoint.parameters.len() {
        return Err(FinetuneError::checkpoint(&path, "the parameters do not match the state"));
    }
    let mut tensors = Vec::new();
    for (index, (k, parameter)) in keys.iter().zip(&checkpoint.parameters).enumerate() {
        let shape = parameter.shape.clone();
        tensors.push((format!("{}{k}", state.prefix()), f32_bytes(&parameter.data), shape.clone()));
        tensors.push((format!("adam.m.{k}"), f32_bytes(&checkpoint.m[index]), shape.clone()));
        tensors.push((format!("adam.v.{k}"), f32_bytes(&checkpoint.v[index]), shape));
    }
    let state = serde_json::to_string(state).map_err(|e| FinetuneError::checkpoint(&path, e.to_string()))?;
    write_safetensors(&path, &tensors, HashMap::from([(STATE_KEY.to_owned(), state)]))?;
    Ok(path)
}

pub(crate) fn load(dir: &Path) -> Result<Checkpoint> {
    let path = checkpoint_path(dir);
    let fail = |reason: String| FinetuneError::checkpoint(&path, reason);
    let bytes = std::fs::read(&path).map_err(|e| FinetuneError::io(&path, "cannot read checkpoint", e))?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fail(format!("invalid safetensors: {e}")))?;
    let state_json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| fail("not a phi-tui training checkpoint".to_owned()))?;
    let state: CheckpointState =
        serde_json::from_str(state_json).map_err(|e| fail(format!("unreadable state: {e}")))?;
    if state.version != FORMAT_VERSION {
        return Err(fail(format!("checkpoint format {} (this build reads {FORMAT_VERSION})", state.version)));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("invalid safetensors: {e}")))?;
    let read = |name: &str| -> Result<SavedParameter> {
        let view = st.tensor(name).map_err(|_| fail(format!("missing tensor `{name}`")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(format!("`{name}` is not float32")));
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(SavedParameter { shape: view.shape().to_vec(), data })
    };
    let (mut parameters, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for k in state.keys(&path)? {
        let parameter = read(&format!("{}{k}", state.prefix()))?;
        let moments = [read(&format!("adam.m.{k}"))?, read(&format!("adam.v.{k}"))?];
        if moments.iter().any(|moment| moment.shape != parameter.shape) {
            return Err(fail(format!("the optimizer state of `{k}` does not fit it")));
        }
        let [m_k, v_k] = moments;
        parameters.push(parameter);
        m.push(m_k.data);
        v.push(v_k.data);
    }
    Ok(Checkpoint { state, parameters, m, v })
}

/// The first setting that differs, as a readable line.
pub(crate) fn settings_difference(
    saved: &BTreeMap<String, serde_json::Value>,
    current: &BTreeMap<String, serde_json::Value>,
) -> Option<String> {
    for (key, value) in current {
        match saved.get(key) {
            Some(old) if old == value => {}
            Some(old) => return Some(format!("{key} was {old} in the checkpoint and is {value} now")),
            None => return Some(format!("the checkpoint does not record {key}")),
        }
    }
    saved.keys().find(|k| !current.contains_key(*k)).map(|k| format!("the checkpoint records an unknown setting {k}"))
}
