//! A training run planned from its settings: the checks that they fit the base model, the data, and the trainer —
//! resumed from its checkpoint, or started from an `--init-adapter` or a fresh adapter of the shape asked for. The
//! CLI handles the arguments and the display; the trainer does the work.

use std::path::Path;

use phi_converters::ModelConfig;

use super::data::{load_dataset, load_tokenizer, DataOptions, Dataset};
use super::error::{FinetuneError, Result};
use super::gguf_adapter::read_adapter;
use super::lora::{LoraAdapter, LoraTarget};
use super::model::BaseModel;
use super::trainer::{TrainOptions, Trainer};

/// The layers a fresh adapter adapts: every linear layer of a block.
pub const DEFAULT_TARGETS: &str = "q_proj,k_proj,v_proj,dense,fc1,fc2";
pub const DEFAULT_RANK: usize = 8;
pub const DEFAULT_ALPHA: f32 = 16.0;

/// The adapter asked for. Unset values take the defaults for a fresh adapter; an adapter that training continues
/// from (a checkpoint, an `--init-adapter`) defines them, and the ones set must agree with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterShape {
    pub rank: Option<usize>,
    pub alpha: Option<f32>,
    /// A comma-separated list of targets, as `LoraTarget::parse_list` reads it.
    pub targets: Option<String>,
}

impl AdapterShape {
    /// Fails, naming `origin`, when `adapter` has another rank, alpha or set of targets than the ones set here.
    pub fn check_matches(&self, adapter: &LoraAdapter, origin: &str) -> Result<()> {
        let mismatch = |what: String| Err(FinetuneError::Option(what));
        if let Some(rank) = self.rank {
            if rank != adapter.rank {
                return mismatch(format!("--rank {rank} does not match {origin}, which has rank {}", adapter.rank));
            }
        }
        if let Some(alpha) = self.alpha {
            if alpha != adapter.alpha {
                return mismatch(format!("--alpha {alpha} does not match {origin}, which has alpha {}", adapter.alpha));
            }
        }
        if let Some(targets) = &self.targets {
            if LoraTarget::parse_list(targets)? != adapter.targets() {
                let have: Vec<String> = adapter.targets().iter().map(ToString::to_string).collect();
                return mismatch(format!(
                    "--targets {targets} does not match {origin}, which adapts {}",
                    have.join(",")
                ));
            }
        }
        Ok(())
    }

    /// The adapter a new run starts from: the one at `init` (which must match and fit the model), or a fresh one.
    pub fn initial_adapter(&self, config: &ModelConfig, init: Option<&Path>, seed: u64) -> Result<LoraAdapter> {
        match init {
            Some(path) => {
                let adapter = read_adapter(path, Some(config))?;
                self.check_matches(&adapter, &path.display().to_string())?;
                adapter.check_fits(config, path)?;
                Ok(adapter)
            }
            None => {
                let targets = LoraTarget::parse_list(self.targets.as_deref().unwrap_or(DEFAULT_TARGETS))?;
                LoraAdapter::init_random(
                    config,
                    self.rank.unwrap_or(DEFAULT_RANK),
                    self.alpha.unwrap_or(DEFAULT_ALPHA),
                    &targets,
                    seed,
                )
            }
        }
    }
}

/// Sequences must fit the model's context.
pub fn check_seq_len(config: &ModelConfig, seq_len: usize) -> Result<()> {
    if seq_len > config.context_length {
        return Err(FinetuneError::Option(format!(
            "--seq-len {seq_len} is longer than the model's context of {} tokens",
            config.context_length
        )));
    }
    Ok(())
}

/// The training data at `path`, tokenized with the base model's tokenizer and checked against its vocabulary.
pub fn load_data(model: &BaseModel, path: &Path, options: DataOptions) -> Result<Dataset> {
    let tokenizer = load_tokenizer(&model.source)?;
    load_dataset(path, &tokenizer, &DataOptions { vocab_size: Some(model.config.vocab_size), ..options })
}

/// The run's trainer: resumed from the checkpoint in `options.checkpoint_dir` (whose adapter must match `shape`),
/// or started from [`AdapterShape::initial_adapter`].
pub fn start_trainer<'a>(
    model: &'a BaseModel,
    data: &'a Dataset,
    options: TrainOptions,
    shape: &AdapterShape,
    resume: bool,
    init_adapter: Option<&Path>,
) -> Result<Trainer<'a>> {
    if resume {
        let trainer = Trainer::resume(model, data, options)?;
        shape.check_matches(&trainer.adapter(), "the checkpoint")?;
        Ok(trainer)
    } else {
        let adapter = shape.initial_adapter(&model.config, init_adapter, options.seed)?;
        Trainer::new(model, data, adapter, options)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig {
            vocab_size: 40,
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 2,
            context_length: 32,
            layer_norm_eps: 1e-5,
            rope_dims: 2,
            rope_theta: 10000.0,
        }
    }

    #[test]
    fn a_fresh_adapter_takes_the_defaults_and_the_shape_set() {
        let fresh = AdapterShape::default().initial_adapter(&config(), None, 1).unwrap();
        assert_eq!((fresh.rank, fresh.alpha), (DEFAULT_RANK, DEFAULT_ALPHA));
        assert_eq!(fresh.targets(), LoraTarget::parse_list(DEFAULT_TARGETS).unwrap());
        let shape = AdapterShape { rank: Some(2), alpha: None, targets: Some("q_proj,fc2".to_owned()) };
        let adapter = shape.initial_adapter(&config(), None, 1).unwrap();
        assert_eq!((adapter.rank, adapter.targets().len()), (2, 2));
        shape.check_matches(&adapter, "it").unwrap();
    }

    #[test]
    fn a_shape_that_disagrees_names_the_option_and_the_origin() {
        let adapter = AdapterShape::default().initial_adapter(&config(), None, 1).unwrap();
        let message = |shape: AdapterShape| shape.check_matches(&adapter, "the checkpoint").unwrap_err().to_string();
        assert_eq!(
            message(AdapterShape { rank: Some(4), ..AdapterShape::default() }),
            "--rank 4 does not match the checkpoint, which has rank 8"
        );
        assert_eq!(
            message(AdapterShape { alpha: Some(8.0), ..AdapterShape::default() }),
            "--alpha 8 does not match the checkpoint, which has alpha 16"
        );
        assert!(message(AdapterShape { targets: Some("fc1".to_owned()), ..AdapterShape::default() })
            .starts_with("--targets fc1 does not match the checkpoint, which adapts "));
    }

    #[test]
    fn sequences_longer_than_the_context_are_refused() {
        check_seq_len(&config(), 32).unwrap();
        assert_eq!(
            check_seq_len(&config(), 33).unwrap_err().to_string(),
            "--seq-len 33 is longer than the model's context of 32 tokens"
        );
    }
}
