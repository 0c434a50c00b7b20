//! Training checkpoints: everything a resumed run needs to continue exactly where the saved one stopped — the
//! LoRA matrices, AdamW's moments and step count, and the step index. The data order is not stored: it is a pure
//! function of the seed and the epoch (see `Trainer`), so the step index recovers it.
//!
//! One file, `DIR/checkpoint.safetensors`: float32 tensors `lora.{layer}.{target}.{A|B}`, `adam.m.…`, `adam.v.…`,
//! and the state as JSON in the safetensors metadata under `phi_tui.finetune`. The settings that shape the run
//! (hyperparameters, data and model fingerprints) are stored too, so resuming with other settings is an error
//! instead of a silently different run.

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
    /// The adapted modules, in parameter order: `[layer, target]`.
    pub(crate) modules: Vec<(usize, String)>,
    /// The settings the run depends on; a resume must match them all.
    pub(crate) settings: BTreeMap<String, serde_json::Value>,
    /// The lowest validation loss so far and its step (absent in checkpoints of older versions).
    #[serde(default)]
    pub(crate) best_validation: Option<(u64, f64)>,
}

/// What a checkpoint holds.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    pub(crate) state: CheckpointState,
    pub(crate) adapter: LoraAdapter,
    /// AdamW moments, two vectors (A, B) per module in adapter order.
    pub(crate) m: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
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
    let mut tensors = Vec::new();
    let mut index = 0;
    for (&(layer, target), pair) in &checkpoint.adapter.modules {
        for (name, matrix) in [("A", &pair.a), ("B", &pair.b)] {
            let shape = vec![matrix.rows, matrix.cols];
            let k = key(layer, target);
            tensors.push((format!("lora.{k}.{name}"), f32_bytes(&matrix.data), shape.clone()));
            tensors.push((format!("adam.m.{k}.{name}"), f32_bytes(&checkpoint.m[index]), shape.clone()));
            tensors.push((format!("adam.v.{k}.{name}"), f32_bytes(&checkpoint.v[index]), shape));
            index += 1;
        }
    }
    let state =
        serde_json::to_string(&checkpoint.state).map_err(|e| FinetuneError::checkpoint(&path, e.to_string()))?;
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
        .ok_or_else(|| fail("not a phi-tui fine-tuning checkpoint".to_owned()))?;
    let state: CheckpointState =
        serde_json::from_str(state_json).map_err(|e| fail(format!("unreadable state: {e}")))?;
    if state.version != FORMAT_VERSION {
        return Err(fail(format!("checkpoint format {} (this build reads {FORMAT_VERSION})", state.version)));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("invalid safetensors: {e}")))?;
    let read = |name: &str| -> Result<Matrix> {
        let view = st.tensor(name).map_err(|_| fail(format!("missing tensor `{name}`")))?;
        let [rows, cols] = view.shape() else { return Err(fail(format!("`{name}` is not a matrix"))) };
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(format!("`{name}` is not float32")));
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Matrix { rows: *rows, cols: *cols, data })
    };
    let mut modules = BTreeMap::new();
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (layer, target_name) in &state.modules {
        let target = LoraTarget::parse(target_name)
            .and_then(|t| (t.len() == 1).then_some(t[0]))
            .ok_or_else(|| fail(format!("unknown module `{target_name}`")))?;
        let k = key(*layer, target);
        let a = read(&format!("lora.{k}.A"))?;
        let b = read(&format!("lora.{k}.B"))?;
        for name in ["A", "B"] {
            m.push(read(&format!("adam.m.{k}.{name}"))?.data);
            v.push(read(&format!("adam.v.{k}.{name}"))?.data);
        }
        modules.insert((*layer, target), LoraPair { a, b });
    }
    let adapter = LoraAdapter { rank: state.rank, alpha: state.alpha, modules };
    Ok(Checkpoint { state, adapter, m, v })
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
