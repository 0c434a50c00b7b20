//! Hugging Face phi checkpoints (phi-1, phi-1.5, phi-2: `PhiForCausalLM`) to GGUF for llama.cpp's `phi2`
//! architecture, with output identical to llama.cpp's own `convert_hf_to_gguf.py`.
//!
//! * [`convert`] writes F32, F16, BF16 or Q8_0 GGUFs; other types are made from its output by llama.cpp's
//!   quantizer (see [`OutType::is_native`]).
//! * [`inspect`] checks a checkpoint and describes it without converting; [`CheckpointReader`] reads its weights
//!   under their GGUF names (fine-tuning's base), memory-mapped.
//! * [`gguf_model_config`] reads a GGUF's hyperparameters back: the counterpart of what [`convert`] writes.
//! * [`gguf`] reads and writes GGUF files.
//!
//! Accepted inputs: `config.json` in the transformers 5, transformers 4.37 and legacy `phi-msft` styles;
//! weights in `model.safetensors` or shards with `model.safetensors.index.json`, as F32, F16 or BF16, named in
//! the transformers or the `phi-msft` layout.

mod checkpoint;
mod config;
mod convert;
mod error;
pub mod gguf;
mod layout;
mod metadata;
mod out_type;
mod output;
mod quant;
mod tokenizer;

pub use checkpoint::SourceDtype;
pub use config::{ConfigStyle, ModelConfig};
pub use convert::{
    check_output, convert, inspect, CheckpointInfo, CheckpointReader, ConvertOptions, ConvertProgress, ConvertSummary,
    TensorView,
};
pub use error::ConvertError;
pub use layout::{transformers_tensors, Layout};
pub use metadata::gguf_model_config;
pub use out_type::OutType;
pub use output::{remove_temporary_files, rename_durably, write_atomically, TemporaryPath};
pub use tokenizer::{TokenizerOrigin, TokenizerSource};
