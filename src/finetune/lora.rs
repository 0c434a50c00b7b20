//! LoRA adapters as plain host data: which linear layers they adapt, and the two low-rank matrices of each.
//! Every format (PEFT safetensors, llama.cpp GGUF, training checkpoints) reads into and writes from
//! [`LoraAdapter`], and training turns it into device tensors and back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use phi_converters::ModelConfig;

use super::error::{FinetuneError, Result};
use super::rng::SplitMix64;

/// A linear layer of a phi block that LoRA can adapt.
///
/// The variant order is the alphabetical order of the PEFT module paths (`mlp.fc1` < `mlp.fc2` <
/// `self_attn.dense` < `self_attn.k_proj` < …), which is the order in which PEFT saves the tensors and
/// llama.cpp's `convert_lora_to_gguf.py` writes them; deriving `Ord` keeps every file in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Fc1,
    Fc2,
    Dense,
    KProj,
    QProj,
    VProj,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 6] =
        [LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj, LoraTarget::Dense, LoraTarget::Fc1, LoraTarget::Fc2];

    /// The module name PEFT's `target_modules` uses.
    pub fn peft_name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::Dense => "dense",
            LoraTarget::Fc1 => "fc1",
            LoraTarget::Fc2 => "fc2",
        }
    }

    /// The module path inside a transformers `PhiDecoderLayer`.
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::QProj => "self_attn.q_proj",
            LoraTarget::KProj => "self_attn.k_proj",
            LoraTarget::VProj => "self_attn.v_proj",
            LoraTarget::Dense => "self_attn.dense",
            LoraTarget::Fc1 => "mlp.fc1",
            LoraTarget::Fc2 => "mlp.fc2",
        }
    }

    /// The tensor of llama.cpp's `phi2` graph (without `blk.N.` and `.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "attn_q",
            LoraTarget::KProj => "attn_k",
            LoraTarget::VProj => "attn_v",
            LoraTarget::Dense => "attn_output",
            LoraTarget::Fc1 => "ffn_up",
            LoraTarget::Fc2 => "ffn_down",
        }
    }

    /// Parses one entry of a target list: the transformers names, the legacy phi-msft names (`Wqkv` stands for
    /// q, k and v; `out_proj` for `dense`), or the GGUF names.
    pub fn parse(name: &str) -> Option<Vec<LoraTarget>> {
        let name = name.trim();
        if name == "Wqkv" || name == "attn_qkv" {
            return Some(vec![LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj]);
        }
        if name == "out_proj" {
            return Some(vec![LoraTarget::Dense]);
        }
        LoraTarget::ALL.into_iter().find(|t| t.peft_name() == name || t.gguf_name() == name).map(|t| vec![t])
    }

    /// Parses a comma-separated target list (`all` or `all-linear` for every target).
    pub fn parse_list(list: &str) -> Result<BTreeSet<LoraTarget>> {
        let mut targets = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" || name == "all-linear" {
                targets.extend(LoraTarget::ALL);
                continue;
            }
            let parsed = LoraTarget::parse(name).ok_or_else(|| {
                FinetuneError::Option(format!(
                    "unknown LoRA target `{name}` (expected some of q_proj, k_proj, v_proj, dense, fc1, fc2)"
                ))
            })?;
            targets.extend(parsed);
        }
        if targets.is_empty() {
            return Err(FinetuneError::Option("no LoRA targets given".to_owned()));
        }
        Ok(targets)
    }

    /// (input width, output width) of this layer in a model.
    pub fn dims(self, config: &ModelConfig) -> (usize, usize) {
        let (hidden, inner, kv) = (config.hidden_size, config.intermediate_size, config.kv_dim());
        match self {
            LoraTarget::QProj | LoraTarget::Dense => (hidden, hidden),
            LoraTarget::KProj | LoraTarget::VProj => (hidden, kv),
            LoraTarget::Fc1 => (hidden, inner),
            LoraTarget::Fc2 => (inner, hidden),
        }
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.peft_name())
    }
}

/// A row-major matrix of f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
    }
}

/// The low-rank update of one linear layer: `W' = W + (alpha / rank) · B · A`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// `[rank, in]`, PEFT's `lora_A.weight`.
    pub a: Matrix,
    /// `[out, rank]`, PEFT's `lora_B.weight`.
    pub b: Matrix,
}

/// A LoRA adapter for a phi model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub rank: usize,
    pub alpha: f32,
    /// Keyed by (layer, target); iteration order is the order of every file format.
    pub modules: BTreeMap<(usize, LoraTarget), LoraPair>,
}

impl LoraAdapter {
    /// The multiplier of `B · A` (PEFT's `scaling`, llama.cpp's `alpha / rank` at user scale 1).
    pub fn scaling(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    pub fn targets(&self) -> BTreeSet<LoraTarget> {
        self.modules.keys().map(|&(_, t)| t).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.modules.values().map(|p| p.a.data.len() + p.b.data.len()).sum()
    }

    /// A fresh adapter as PEFT initialises one: `A` kaiming-uniform (bound `1/sqrt(in)`, which is
    /// `kaiming_uniform_(a=sqrt(5))`), `B` zero — so training starts from the base model exactly.
    pub fn init_random(
        config: &ModelConfig,
        rank: usize,
        alpha: f32,
        targets: &BTreeSet<LoraTarget>,
        seed: u64,
    ) -> Result<LoraAdapter> {
        if rank == 0 {
            return Err(FinetuneError::Option("--rank must be at least 1".to_owned()));
        }
        if targets.is_empty() {
            return Err(FinetuneError::Option("no LoRA targets given".to_owned()));
        }
        let mut rng = SplitMix64::new(seed);
        let mut modules = BTreeMap::new();
        for layer in 0..config.num_layers {
            for &target in targets {
                let (input, output) = target.dims(config);
                let bound = 1.0 / (input as f64).sqrt();
                let a = Matrix {
                    rows: rank,
                    cols: input,
                    data: (0..rank * input).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect(),
                };
                modules.insert((layer, target), LoraPair { a, b: Matrix::zeros(output, rank) });
            }
        }
        Ok(LoraAdapter { rank, alpha, modules })
    }

    /// Checks that every matrix fits `config` (layer index, input and output widths, rank), so that neither
    /// training nor llama.cpp meets a shape it cannot use. `origin` names the adapter in errors.
    pub fn check_fits(&self, config: &ModelConfig, origin: &std::path::Path) -> Result<()> {
        let fail = |reason: String| Err(FinetuneError::adapter(origin, reason));
        if self.rank == 0 {
            return fail("rank 0".to_owned());
        }
        if self.modules.is_empty() {
            return fail("the adapter has no LoRA matrices".to_owned());
        }
        if !self.alpha.is_finite() {
            return fail(format!("alpha {} is not a finite number", self.alpha));
        }
        for (&(layer, target), pair) in &self.modules {
            if layer >= config.num_layers {
                return fail(format!("adapts layer {layer}, but the base model has {} layers", config.num_layers));
            }
            let (input, output) = target.dims(config);
            let expected_a = [self.rank, input];
            let expected_b = [output, self.rank];
            if pair.a.shape() != expected_a || pair.b.shape() != expected_b {
                return fail(format!(
                    "layer {layer} {target}: lora_A {:?} and lora_B {:?}, but rank {} on this base needs {expected_a:?} \
                     and {expected_b:?}",
                    pair.a.shape(),
                    pair.b.shape(),
                    self.rank
                ));
            }
            if pair.a.data.iter().chain(&pair.b.data).any(|x| !x.is_finite()) {
                return fail(format!("layer {layer} {target}: the matrices hold NaN or infinite values"));
            }
        }
        Ok(())
    }
}
