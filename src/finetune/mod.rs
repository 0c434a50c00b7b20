//! Training of phi models — LoRA fine-tuning and full training — on candle (CPU, or CUDA in a `cuda` build).
//!
//! llama.cpp cannot train phi (no LoRA training, no LayerNorm backward), so training happens here, and llama.cpp
//! only applies the result: the engine's `set_adapter` loads the GGUF this module writes.
//!
//! * [`model`]: the frozen base (Hugging Face checkpoint or unquantized GGUF) and a forward pass with LoRA that
//!   is the math of transformers' `PhiForCausalLM` + PEFT;
//! * [`lora`]: adapters as host data ([`LoraAdapter`]); [`peft`] and [`gguf_adapter`] read and write them as PEFT
//!   directories and llama.cpp GGUFs;
//! * [`data`]: JSONL and Python-repository datasets; [`optim`]: AdamW (torch's math), schedules, clipping;
//!   [`precision`]: float32, or bfloat16/float16 mixed precision (PyTorch's autocast recipe) with loss scaling;
//! * [`trainer`]: the loop, validation and checkpoints that resume exactly, over what is trained ([`Trainable`]:
//!   LoRA matrices, or every weight for `phi-tui train`); [`hf_checkpoint`] writes fully trained models as Hugging
//!   Face checkpoints;
//! * [`live`]: runs kept in the data directory whose improved adapters the session applies while they train.

mod checkpoint;
mod cpu_ops;
pub mod data;
mod error;
pub mod gguf_adapter;
pub mod hf_checkpoint;
pub mod live;
pub mod lora;
pub mod model;
pub mod optim;
pub mod peft;
pub mod plan;
pub mod precision;
pub(crate) mod rng;
pub mod trainer;

pub use checkpoint::CHECKPOINT_FILE;
pub use data::{load_dataset, load_tokenizer, DataOptions, Dataset, Sequence, END_OF_TEXT};
pub use error::{FinetuneError, Result};
pub use gguf_adapter::{import_peft, read_adapter, read_adapter_gguf, write_adapter_gguf, write_adapter_gguf_at_step};
pub use lora::{LoraAdapter, LoraPair, LoraTarget, Matrix};
pub use model::{parameter_shapes, preset, BaseModel, BaseSource, PRESETS};
pub use optim::{AdamW, AdamWConfig, Schedule, ScheduleKind};
pub use peft::{read_peft, write_peft};
pub use plan::AdapterShape;
pub use precision::{LossScaler, Precision};
pub use trainer::{
    FullParameters, LoraParameters, NamedWeights, StepGate, StepReport, TrainEvent, TrainOptions, TrainOutcome,
    Trainable, Trainer,
};

/// The device training runs on: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
pub fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| FinetuneError::Option(format!("unknown device `{name}` (cpu, cuda or cuda:N)")))?,
                None => return Err(FinetuneError::Option(format!("unknown device `{name}` (cpu, cuda or cuda:N)"))),
            };
            if !cfg!(feature = "cuda") {
                return Err(FinetuneError::Option(format!(
                    "device `{name}` needs a phi-tui built with `--features cuda`"
                )));
            }
            Ok(candle_core::Device::new_cuda(ordinal)?)
        }
    }
}
