//! The phi model for training: the base weights (frozen, float32 on the training device) read from a Hugging Face
//! checkpoint or an unquantized GGUF, and a forward pass with LoRA that is exactly the math of transformers'
//! `PhiForCausalLM`:
//!
//! * parallel block sharing one LayerNorm: `h = x + attn(LN(x)) + mlp(LN(x))`, `mlp = fc2(gelu_new(fc1(.)))`;
//! * attention with partial rotary (the first `rope_dims` channels of each head, NeoX `rotate_half` pairing),
//!   scores scaled by `1/sqrt(head_dim)`, causal softmax;
//! * final LayerNorm, then `lm_head` with a bias;
//! * LoRA on a linear layer as PEFT computes it: `y = x·Wᵀ + b + scaling · (x·Aᵀ)·Bᵀ`.
//!
//! For LoRA the base weights get no gradients: their matmuls compute the input's gradient only. Full training
//! ([`BaseModel::make_trainable`]) turns every weight into a `Var` and switches to ops that give the weights their
//! gradients too, so the LoRA path never pays for them. On the CPU the pieces of a block are the fused ops of
//! [`super::cpu_ops`]; elsewhere candle's differentiable ops.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor, D};
use phi_converters::gguf::{GgmlType, GgufFile};
use phi_converters::{CheckpointReader, ModelConfig, SourceDtype};

use super::cpu_ops;
use super::error::{FinetuneError, Result};
use super::lora::{LoraAdapter, LoraTarget};
use super::precision::Precision;

/// The shapes `phi-tui train --preset` offers, smallest first: (name, what it is). All use the phi-1 vocabulary and
/// tokenizer, half the head rotary, LayerNorm ε 1e-5 and rope θ 10000, as phi-1 does.
pub const PRESETS: [(&str, &str); 4] = [
    ("tiny", "2 layers, width 64, 4 heads, MLP 256, context 512 (~6.6M parameters, nearly all vocabulary)"),
    ("small", "4 layers, width 128, 4 heads, MLP 512, context 1024 (~14M parameters)"),
    ("base", "8 layers, width 512, 8 heads, MLP 2048, context 2048 (~78M parameters)"),
    ("phi-1", "phi-1's own shape: 24 layers, width 2048, 32 heads, MLP 8192, context 2048 (1.4B parameters)"),
];

/// The config of a preset shape ([`PRESETS`]).
pub fn preset(name: &str) -> Option<ModelConfig> {
    let (num_layers, hidden_size, num_heads, context_length) = match name {
        "tiny" => (2, 64, 4, 512),
        "small" => (4, 128, 4, 1024),
        "base" => (8, 512, 8, 2048),
        "phi-1" => (24, 2048, 32, 2048),
        _ => return None,
    };
    Some(ModelConfig {
        vocab_size: 51200,
        hidden_size,
        intermediate_size: 4 * hidden_size,
        num_layers,
        num_heads,
        num_kv_heads: num_heads,
        context_length,
        layer_norm_eps: 1e-5,
        rope_dims: hidden_size / num_heads / 2,
        rope_theta: 10000.0,
    })
}

/// Where the base weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// A Hugging Face checkpoint directory (transformers or phi-msft layout).
    HfDir(PathBuf),
    /// A GGUF in F32, F16 or BF16.
    Gguf(PathBuf),
    /// Randomly initialised ([`BaseModel::init_random`]), for training from scratch.
    Fresh,
}

impl BaseSource {
    pub fn path(&self) -> &Path {
        match self {
            BaseSource::HfDir(p) | BaseSource::Gguf(p) => p,
            BaseSource::Fresh => Path::new("(new model)"),
        }
    }
}

/// A linear layer of the base: `w` is `[out, in]`, contiguous.
#[derive(Debug, Clone)]
struct Linear {
    w: Tensor,
    b: Tensor,
}

#[derive(Debug, Clone)]
struct Block {
    norm_w: Tensor,
    norm_b: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    dense: Linear,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn linear(&self, target: LoraTarget) -> &Linear {
        match target {
            LoraTarget::QProj => &self.q,
            LoraTarget::KProj => &self.k,
            LoraTarget::VProj => &self.v,
            LoraTarget::Dense => &self.dense,
            LoraTarget::Fc1 => &self.fc1,
            LoraTarget::Fc2 => &self.fc2,
        }
    }
}

/// The frozen base model on a device.
#[derive(Debug)]
pub struct BaseModel {
    pub config: ModelConfig,
    pub source: BaseSource,
    device: Device,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm_w: Tensor,
    final_norm_b: Tensor,
    lm_head: Linear,
    /// Whether the forward pass uses the fused ops of [`cpu_ops`] (on the CPU) or candle's ops (elsewhere, and in
    /// tests that hold the two to each other).
    fused: bool,
    /// Whether the weights are `Var`s that get gradients (full training) rather than frozen.
    trained: bool,
    /// The type the products compute in ([`BaseModel::set_precision`]).
    precision: Precision,
}

/// The LoRA matrices as device tensors, for one forward pass. In training they are the tensors of `Var`s (so the
/// graph reaches them); in evaluation plain tensors.
#[derive(Debug, Clone)]
pub(crate) struct LoraTensors {
    pub(crate) scaling: f64,
    /// (layer, target) → (A `[r, in]`, B `[out, r]`).
    pub(crate) modules: BTreeMap<(usize, LoraTarget), (Tensor, Tensor)>,
}

impl LoraTensors {
    pub(crate) fn none() -> LoraTensors {
        LoraTensors { scaling: 0.0, modules: BTreeMap::new() }
    }

    pub(crate) fn from_adapter(adapter: &LoraAdapter, device: &Device) -> Result<LoraTensors> {
        let mut modules = BTreeMap::new();
        for (&key, pair) in &adapter.modules {
            let a = Tensor::from_slice(&pair.a.data, (pair.a.rows, pair.a.cols), device)?;
            let b = Tensor::from_slice(&pair.b.data, (pair.b.rows, pair.b.cols), device)?;
            modules.insert(key, (a, b));
        }
        Ok(LoraTensors { scaling: f64::from(adapter.scaling()), modules })
    }
}

/// Token ids and loss targets of a batch, on the device.
#[derive(Debug)]
pub(crate) struct DeviceBatch {
    /// `[batch, seq]` u32 (padding included).
    pub(crate) ids: Tensor,
    /// Flat indices (`b·seq + t`) of the positions whose next token is a target, u32 `[n]`.
    pub(crate) positions: Tensor,
    /// The target token of each of those positions, u32 `[n, 1]`.
    pub(crate) targets: Tensor,
    /// Number of targets.
    pub(crate) count: usize,
    /// Tokens that are not padding.
    pub(crate) tokens: usize,
}

impl BaseModel {
    /// Reads a base model: a directory is a Hugging Face checkpoint, a file a GGUF. Weights are upcast to float32.
    pub fn load(path: &Path, device: &Device) -> Result<BaseModel> {
        if path.is_dir() {
            load_hf(path, device)
        } else if path.is_file() {
            load_gguf(path, device)
        } else {
            Err(FinetuneError::base(path, "no such file or directory"))
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A new model of shape `config` with transformers' `PhiPreTrainedModel` initialisation: linear weights and the
    /// embedding from N(0, `init_std`²), biases 0, LayerNorm weights 1 and biases 0. Seeded, so a run repeats.
    pub fn init_random(config: ModelConfig, init_std: f64, seed: u64, device: &Device) -> Result<BaseModel> {
        if config.num_heads == 0
            || config.num_kv_heads == 0
            || config.hidden_size % config.num_heads != 0
            || config.num_heads % config.num_kv_heads != 0
            || config.rope_dims > config.head_dim()
            || config.rope_dims % 2 != 0
        {
            return Err(FinetuneError::Option(format!(
                "invalid model shape: width {}, {} heads, {} key/value heads, {} rotary channels",
                config.hidden_size, config.num_heads, config.num_kv_heads, config.rope_dims
            )));
        }
        let mut rng = super::rng::SplitMix64::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(&config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; count]
            } else if name.ends_with(".bias") {
                vec![0.0; count]
            } else {
                (0..count).map(|_| (rng.next_normal() * init_std) as f32).collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        assemble(config, BaseSource::Fresh, tensors, device)
    }

    /// Turns every weight into a `Var` that gets gradients (full training) and returns them by canonical (GGUF)
    /// name, in [`parameter_shapes`] order. After this the forward pass takes the gradient-giving ops. The weights
    /// must still be float32 (make a model trainable before [`BaseModel::set_precision`]): they are the master
    /// weights of mixed precision.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, candle_core::Var)>> {
        if self.precision != Precision::F32 && !self.trained {
            return Err(FinetuneError::Option(
                "the weights were cast to a lower precision; make the model trainable first".to_owned(),
            ));
        }
        let mut vars = Vec::new();
        for (name, tensor) in self.parameters_mut() {
            let var = candle_core::Var::from_tensor(tensor)?;
            *tensor = var.as_tensor().clone();
            vars.push((name, var));
        }
        self.trained = true;
        Ok(vars)
    }

    /// Whether [`BaseModel::make_trainable`] made the weights `Var`s.
    pub fn is_trainable(&self) -> bool {
        self.trained
    }

    /// Sets the type the forward and backward passes compute in ([`Precision`], PyTorch's autocast recipe). Mixed
    /// precision takes candle's graph ops (the fused CPU ops are float32). Trainable weights stay float32 `Var`s,
    /// cast in each forward pass; the products' frozen weights (a LoRA run's base) are cast once here, which
    /// halves their memory, so a frozen model's precision can be lowered once and not raised again. LayerNorm's
    /// weights stay float32.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == self.precision {
            return Ok(());
        }
        if !self.trained {
            if self.precision != Precision::F32 {
                return Err(FinetuneError::Option(format!(
                    "the frozen weights are already {}; load the model again for {precision}",
                    self.precision
                )));
            }
            let dtype = precision.compute_dtype();
            for (name, tensor) in self.parameters_mut() {
                // LayerNorm runs in float32 (`attn_norm`, `output_norm`).
                if !name.contains("_norm.") {
                    *tensor = tensor.to_dtype(dtype)?;
                }
            }
        }
        self.precision = precision;
        self.fused = self.device.is_cpu() && precision == Precision::F32;
        Ok(())
    }

    /// The type the forward and backward passes compute in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Every weight by canonical name, in [`parameter_shapes`] order.
    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut all = vec![("token_embd.weight".to_owned(), &mut self.embed)];
        for (layer, block) in self.blocks.iter_mut().enumerate() {
            let name = |s: &str| format!("blk.{layer}.{s}");
            all.push((name("attn_norm.weight"), &mut block.norm_w));
            all.push((name("attn_norm.bias"), &mut block.norm_b));
            for (gguf, linear) in [
                ("attn_q", &mut block.q),
                ("attn_k", &mut block.k),
                ("attn_v", &mut block.v),
                ("attn_output", &mut block.dense),
                ("ffn_up", &mut block.fc1),
                ("ffn_down", &mut block.fc2),
            ] {
                all.push((name(&format!("{gguf}.weight")), &mut linear.w));
                all.push((name(&format!("{gguf}.bias")), &mut linear.b));
            }
        }
        all.push(("output_norm.weight".to_owned(), &mut self.final_norm_w));
        all.push(("output_norm.bias".to_owned(), &mut self.final_norm_b));
        all.push(("output.weight".to_owned(), &mut self.lm_head.w));
        all.push(("output.bias".to_owned(), &mut self.lm_head.b));
        all
    }

    /// Hidden states after the final LayerNorm, `[batch·seq, hidden]`.
    fn hidden_states(&self, ids: &Tensor, lora: &LoraTensors) -> Result<Tensor> {
        let c = &self.config;
        let (batch, seq) = ids.dims2()?;
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let (fused, trained) = (self.fused, self.trained);
        // The residual stream and LayerNorm are float32; the products take `compute` (float32 unless mixed).
        let compute = self.precision.compute_dtype();
        let attention = Attention::new(c, &self.device, batch, seq, fused)?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.to_dtype(DType::F32)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let linear = |input: &Tensor, target: LoraTarget| -> Result<Tensor> {
                let lora_pair = lora.modules.get(&(layer, target));
                linear_with_lora(input, block.linear(target), lora_pair, lora.scaling, fused, trained)
            };
            let h = layer_norm(&x, &block.norm_w, &block.norm_b, c.layer_norm_eps, fused, trained)?;
            let h = h.to_dtype(compute)?;
            let q = attention.split_heads(&linear(&h, LoraTarget::QProj)?, heads, true)?;
            let k = attention.split_heads(&linear(&h, LoraTarget::KProj)?, kv_heads, true)?;
            let v = attention.split_heads(&linear(&h, LoraTarget::VProj)?, kv_heads, false)?;
            let (k, v) = (repeat_kv(k, heads / kv_heads)?, repeat_kv(v, heads / kv_heads)?);
            let probs = attention.causal_softmax(&matmul(&q, &k.t()?)?)?;
            let attn =
                matmul(&probs, &v)?.transpose(1, 2)?.contiguous()?.reshape((batch * seq, heads * c.head_dim()))?;
            let attn = linear(&attn, LoraTarget::Dense)?;
            let mlp = linear(&gelu_new(&linear(&h, LoraTarget::Fc1)?, fused)?, LoraTarget::Fc2)?;
            x = ((attn + mlp)?.to_dtype(DType::F32)? + x)?;
        }
        layer_norm(&x, &self.final_norm_w, &self.final_norm_b, c.layer_norm_eps, fused, trained)
    }

    /// Logits from final hidden states, float32 whatever the precision (the loss is taken in float32).
    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden.to_dtype(self.precision.compute_dtype())?;
        let logits = linear_with_lora(&hidden, &self.lm_head, None, 0.0, self.fused, self.trained)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// The summed cross-entropy of a batch's targets (a scalar tensor in the graph when `lora` holds `Var`s).
    pub(crate) fn loss_sum(&self, batch: &DeviceBatch, lora: &LoraTensors) -> Result<Tensor> {
        let hidden = self.hidden_states(&batch.ids, lora)?;
        // Only positions with a target need logits: with loss on completions only this skips most of lm_head.
        let selected = hidden.index_select(&batch.positions, 0)?;
        if self.fused {
            self.fused_loss_sum(&selected, batch)
        } else {
            self.graph_loss_sum(&selected, batch)
        }
    }

    /// lm_head and cross-entropy in one CPU op ([`cpu_ops::LmHeadCrossEntropy`]): the `[targets, vocab]` logits
    /// are made once and turned into probabilities in place, instead of a dozen vocabulary-wide temporaries in the
    /// graph.
    fn fused_loss_sum(&self, hidden: &Tensor, batch: &DeviceBatch) -> Result<Tensor> {
        let op = cpu_ops::LmHeadCrossEntropy {
            head: self.lm_head.cpu_op(0.0),
            targets: batch.targets.flatten_all()?.to_vec1::<u32>()?,
            softmax: std::sync::Mutex::new(None),
        };
        let hidden = hidden.contiguous()?;
        let losses = if self.trained {
            hidden.apply_op3_arc(&self.lm_head.w, &self.lm_head.b, Arc::new(Box::new(op)))?
        } else {
            hidden.apply_op1_arc(Arc::new(Box::new(op)))?
        };
        Ok(losses.sum_all()?)
    }

    /// The same loss from candle's differentiable ops, for devices without the fused op.
    fn graph_loss_sum(&self, hidden: &Tensor, batch: &DeviceBatch) -> Result<Tensor> {
        let logits = self.lm_head(hidden)?;
        let max = logits.detach().max_keepdim(1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let log_sum_exp = shifted.exp()?.sum_keepdim(1)?.log()?;
        let picked = shifted.gather(&batch.targets, 1)?;
        Ok((log_sum_exp - picked)?.sum_all()?)
    }

    /// Logits at the last position of `ids` (one sequence), with an adapter applied or not. For checks against
    /// reference implementations.
    pub fn last_logits(&self, ids: &[u32], adapter: Option<&LoraAdapter>) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(FinetuneError::Option("no tokens to evaluate".to_owned()));
        }
        let lora = match adapter {
            Some(adapter) => LoraTensors::from_adapter(adapter, &self.device)?,
            None => LoraTensors::none(),
        };
        let ids_t = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        let hidden = self.hidden_states(&ids_t, &lora)?;
        let last = hidden.narrow(0, ids.len() - 1, 1)?;
        Ok(self.lm_head(&last)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

// The forward pass's pieces. On the CPU each is a fused op of `cpu_ops` (one pass forward, one backward); on
// other devices the same math from candle's differentiable ops. The tests in `cpu_ops` hold the two to each other.

impl Linear {
    fn cpu_op(&self, scaling: f64) -> cpu_ops::Linear {
        cpu_ops::Linear { w: self.w.clone(), b: self.b.clone(), scaling: scaling as f32 }
    }
}

/// `x·Wᵀ + b`, plus `scaling·(x·Aᵀ)·Bᵀ` when the layer has LoRA matrices. `x` is `[m, in]`. With `trained`
/// (full training, no LoRA), `W` and `b` get gradients too. Off the fused path everything is computed in `x`'s
/// type (the compute type of mixed precision): float32 `Var`s are cast to it in the graph, so their gradients
/// come back float32.
fn linear_with_lora(
    x: &Tensor,
    linear: &Linear,
    lora: Option<&(Tensor, Tensor)>,
    scaling: f64,
    fused: bool,
    trained: bool,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    if trained {
        if fused {
            return Ok(x.apply_op3_arc(&linear.w, &linear.b, Arc::new(Box::new(cpu_ops::TrainedLinear)))?);
        }
        let dtype = x.dtype();
        return Ok(matmul(&x, &linear.w.to_dtype(dtype)?.t()?)?.broadcast_add(&linear.b.to_dtype(dtype)?)?);
    }
    if fused {
        let op = linear.cpu_op(scaling);
        return Ok(match lora {
            Some((a, b)) => x.apply_op3_arc(&a.contiguous()?, &b.contiguous()?, Arc::new(Box::new(op)))?,
            None => x.apply_op1_arc(Arc::new(Box::new(op)))?,
        });
    }
    let y = x.apply_op1_arc(Arc::new(Box::new(FrozenMatmul { w: linear.w.clone() })))?;
    let y = y.broadcast_add(&linear.b)?;
    match lora {
        Some((a, b)) => {
            let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
            Ok((y + (matmul(&matmul(&x, &a.t()?)?, &b.t()?)? * scaling)?)?)
        }
        None => Ok(y),
    }
}

/// `a · b` in the inputs' type. candle's CPU matmul has no bfloat16 kernel: there the product is taken in float32
/// from the bfloat16 inputs and rounded back, the numbers of a GPU's bfloat16 GEMM (which accumulates in float32).
fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.dtype() == DType::BF16 && a.device().is_cpu() {
        return a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?.to_dtype(DType::BF16);
    }
    a.matmul(b)
}

/// `gelu_new` (the tanh approximation); candle's `gelu` off the CPU.
fn gelu_new(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        Ok(x.contiguous()?.apply_op1_arc(Arc::new(Box::new(cpu_ops::GeluNew)))?)
    } else {
        Ok(x.gelu()?)
    }
}

/// torch's LayerNorm over the last dimension (biased variance), with a frozen weight and bias, or with `trained`
/// ones that get gradients (candle's graph ops give them theirs anyway).
fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, fused: bool, trained: bool) -> Result<Tensor> {
    if fused && trained {
        let op = cpu_ops::TrainedLayerNorm { eps: eps as f32 };
        return Ok(x.contiguous()?.apply_op3_arc(w, b, Arc::new(Box::new(op)))?);
    }
    if fused {
        let op = cpu_ops::LayerNorm { w: w.clone(), b: b.clone(), eps: eps as f32 };
        return Ok(x.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?.broadcast_add(b)?)
}

/// cos and sin `[seq, rope_dims]`, computed in float32 as transformers does (inverse frequencies
/// `1/theta^(2i/d)`, angles `position · inv_freq`, the half repeated); shared, as every rotary op of a pass holds
/// them.
struct RopeTables {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
}

impl RopeTables {
    fn new(config: &ModelConfig, seq: usize) -> RopeTables {
        let dims = config.rope_dims;
        let half = dims / 2;
        let theta = config.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / dims as f32)).collect();
        let mut cos = Vec::with_capacity(seq * dims);
        let mut sin = Vec::with_capacity(seq * dims);
        for position in 0..seq {
            for _half in 0..2 {
                for &f in &inv_freq {
                    let angle = position as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        RopeTables { cos: cos.into(), sin: sin.into() }
    }
}

/// What a forward pass's attention layers share: the shape, the rotary tables and (off the CPU) the mask.
struct Attention {
    batch: usize,
    seq: usize,
    head_dim: usize,
    rope_dims: usize,
    scale: f64,
    rope: RopeTables,
    /// Without the fused ops: the tables and the causal mask as device tensors.
    graph: Option<GraphAttention>,
}

struct GraphAttention {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Attention {
    fn new(config: &ModelConfig, device: &Device, batch: usize, seq: usize, fused: bool) -> Result<Attention> {
        let (head_dim, rope_dims) = (config.head_dim(), config.rope_dims);
        let rope = RopeTables::new(config, seq);
        let graph = if fused {
            None
        } else {
            Some(GraphAttention {
                cos: Tensor::from_slice(&rope.cos, (seq, rope_dims), device)?,
                sin: Tensor::from_slice(&rope.sin, (seq, rope_dims), device)?,
                mask: causal_mask(seq, device)?,
            })
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        Ok(Attention { batch, seq, head_dim, rope_dims, scale, rope, graph })
    }

    /// A projection `[batch·seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`, rotated when `rotary`.
    fn split_heads(&self, t: &Tensor, heads: usize, rotary: bool) -> Result<Tensor> {
        let rope_dims = if rotary { self.rope_dims } else { 0 };
        let Some(graph) = &self.graph else {
            let op = cpu_ops::SplitHeadsRope {
                batch: self.batch,
                heads,
                cos: self.rope.cos.clone(),
                sin: self.rope.sin.clone(),
                rope_dims,
            };
            return Ok(t.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?);
        };
        let t = t.reshape((self.batch, self.seq, heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        if rope_dims == 0 {
            return Ok(t);
        }
        // The rotation is float32 whatever the compute type, as transformers' (its tables are float32).
        let dtype = t.dtype();
        Ok(apply_rope(&t.to_dtype(DType::F32)?, &graph.cos, &graph.sin, rope_dims)?.to_dtype(dtype)?)
    }

    /// Scaled, causally masked softmax of attention scores `[batch, heads, seq, seq]`, in the scores' type. The
    /// mask and the softmax are float32 whatever the compute type, as in transformers' eager attention.
    fn causal_softmax(&self, scores: &Tensor) -> Result<Tensor> {
        let Some(graph) = &self.graph else {
            let op = cpu_ops::CausalSoftmax { scale: self.scale as f32 };
            return Ok(scores.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?);
        };
        let scaled = (scores * self.scale)?;
        let probs = softmax_last_dim(&scaled.to_dtype(DType::F32)?.broadcast_add(&graph.mask)?)?;
        Ok(probs.to_dtype(scores.dtype())?)
    }
}

/// Softmax over the last dimension. The max is subtracted for range only; it is detached because softmax does
/// not depend on it, which spares its backward pass.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.detach().max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Additive causal mask `[seq, seq]`: 0 where a query may attend, the most negative float elsewhere (as
/// transformers' eager attention; -inf would work too but keeps infinities out of the graph).
fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq).flat_map(|i| (0..seq).map(move |j| if j > i { f32::MIN } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (seq, seq), device)?)
}

/// Rotates the first `dims` channels of each head of `x` `[batch, heads, seq, head_dim]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, dims: usize) -> Result<Tensor> {
    if dims == 0 {
        return Ok(x.clone());
    }
    let head_dim = x.dim(D::Minus1)?;
    let rot = x.narrow(D::Minus1, 0, dims)?;
    let x1 = rot.narrow(D::Minus1, 0, dims / 2)?;
    let x2 = rot.narrow(D::Minus1, dims / 2, dims / 2)?;
    let rotated_half = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let embedded = (rot.broadcast_mul(cos)? + rotated_half.broadcast_mul(sin)?)?;
    if dims == head_dim {
        return Ok(embedded);
    }
    let pass = x.narrow(D::Minus1, dims, head_dim - dims)?;
    Ok(Tensor::cat(&[&embedded, &pass], D::Minus1)?)
}

/// transformers' `repeat_kv`: head `h` uses key/value head `h / n_rep`.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (batch, kv_heads, seq, head_dim) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((batch, kv_heads * n_rep, seq, head_dim))?)
}

/// `x · Wᵀ` for a frozen `W` `[out, in]` captured by the op, off the CPU: the backward pass returns `grad · W` for
/// `x` and nothing for `W`, which is not part of the graph (candle's own matmul would also compute the weight's
/// gradient, which for `lm_head` costs as much as the forward pass).
struct FrozenMatmul {
    w: Tensor,
}

impl FrozenMatmul {
    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize, Layout)> {
        let (m, k) = layout.shape().dims2()?;
        let (_, w_layout) = self.w.storage_and_layout();
        let (n, k_w) = w_layout.shape().dims2()?;
        if k != k_w {
            candle_core::bail!("frozen matmul: input width {k} but weight {n}x{k_w}");
        }
        Ok((m, n, k, w_layout.transpose(0, 1)?))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n, k, wt_layout) = self.dims(layout)?;
        let (w, w_layout) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*w else { candle_core::bail!("frozen matmul: weight not on the CPU") };
        if storage.dtype() == DType::BF16 {
            // No bfloat16 kernel on the CPU: float32 from the rounded inputs, rounded back (see `matmul`).
            let x = storage.to_dtype(layout, DType::F32)?;
            let w = w.to_dtype(w_layout, DType::F32)?;
            let wt_layout = Layout::contiguous(w_layout.shape()).transpose(0, 1)?;
            let product = x.matmul(&w, (1, m, n, k), &Layout::contiguous(layout.shape()), &wt_layout)?;
            let shape = Shape::from((m, n));
            return Ok((product.to_dtype(&Layout::contiguous(&shape), DType::BF16)?, shape));
        }
        Ok((storage.matmul(w, (1, m, n, k), layout, &wt_layout)?, Shape::from((m, n))))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (m, n, k, wt_layout) = self.dims(layout)?;
        let (w, _) = self.w.storage_and_layout();
        let Storage::Cuda(w) = &*w else { candle_core::bail!("frozen matmul: weight not on the GPU") };
        Ok((storage.matmul(w, (1, m, n, k), layout, &wt_layout)?, Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(matmul(grad_res, &self.w)?))
    }
}

fn load_hf(dir: &Path, device: &Device) -> Result<BaseModel> {
    // The converter's reader validates config.json (all three styles), the tensor set and every shape, and names
    // each tensor as the GGUF would (phi-msft's fused `Wqkv` comes as its q, k and v rows).
    let checkpoint = CheckpointReader::open(dir).map_err(|e| FinetuneError::base(dir, e.to_string()))?;
    let mut tensors = HashMap::new();
    for view in checkpoint.tensors() {
        let dtype = match view.dtype {
            SourceDtype::F32 => DType::F32,
            SourceDtype::F16 => DType::F16,
            SourceDtype::Bf16 => DType::BF16,
        };
        let tensor = Tensor::from_raw_buffer(view.data, dtype, &view.shape, device)?.to_dtype(DType::F32)?;
        tensors.insert(view.name.to_owned(), tensor);
    }
    assemble(checkpoint.info().config, BaseSource::HfDir(dir.to_path_buf()), tensors, device)
}

fn load_gguf(path: &Path, device: &Device) -> Result<BaseModel> {
    let file = GgufFile::open(path).map_err(|e| FinetuneError::base(path, e.reason))?;
    let fail = |reason: String| FinetuneError::base(path, reason);
    if let Some(kind) = file.get_str("general.type") {
        if kind != "model" {
            return Err(fail(format!("this GGUF is a `{kind}`, not a model")));
        }
    }
    // The engine's checks of a phi GGUF: architecture, every hyperparameter (the layer count bounded by the tensors
    // present) and every tensor's shape, so nothing below indexes or allocates by an unchecked value.
    crate::engine::phi2_hparams(&file).map_err(fail)?;
    let config = phi_converters::gguf_model_config(&file).map_err(fail)?;
    let mut tensors = HashMap::new();
    for info in file.tensors() {
        let dtype = match info.ggml_type {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::Bf16 => DType::BF16,
            other => {
                return Err(fail(format!(
                    "tensor `{}` is {other}; training needs an unquantized base (F32, F16 or BF16 GGUF, or the \
                     Hugging Face checkpoint)",
                    info.name
                )))
            }
        };
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let tensor = Tensor::from_raw_buffer(file.tensor_data(info), dtype, &shape, device)?.to_dtype(DType::F32)?;
        tensors.insert(info.name.clone(), tensor);
    }
    assemble(config, BaseSource::Gguf(path.to_path_buf()), tensors, device)
}

/// The canonical (GGUF) names and shapes of a phi model's weights, in the order [`BaseModel::make_trainable`]
/// returns them.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (vocab, hidden, inner, kv) = (config.vocab_size, config.hidden_size, config.intermediate_size, config.kv_dim());
    let mut all = vec![("token_embd.weight".to_owned(), vec![vocab, hidden])];
    for layer in 0..config.num_layers {
        let name = |s: &str| format!("blk.{layer}.{s}");
        all.push((name("attn_norm.weight"), vec![hidden]));
        all.push((name("attn_norm.bias"), vec![hidden]));
        for (gguf, out, input) in [
            ("attn_q", hidden, hidden),
            ("attn_k", kv, hidden),
            ("attn_v", kv, hidden),
            ("attn_output", hidden, hidden),
            ("ffn_up", inner, hidden),
            ("ffn_down", hidden, inner),
        ] {
            all.push((name(&format!("{gguf}.weight")), vec![out, input]));
            all.push((name(&format!("{gguf}.bias")), vec![out]));
        }
    }
    all.push(("output_norm.weight".to_owned(), vec![hidden]));
    all.push(("output_norm.bias".to_owned(), vec![hidden]));
    all.push(("output.weight".to_owned(), vec![vocab, hidden]));
    all.push(("output.bias".to_owned(), vec![vocab]));
    all
}

/// Canonical tensors by name, taken one by one with their expected shapes.
struct TensorSet {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl TensorSet {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor =
            self.tensors.remove(name).ok_or_else(|| FinetuneError::base(&self.path, format!("missing `{name}`")))?;
        if tensor.dims() != shape {
            return Err(FinetuneError::base(
                &self.path,
                format!("`{name}` has shape {:?}, but the config implies {shape:?}", tensor.dims()),
            ));
        }
        Ok(tensor.contiguous()?)
    }

    fn linear(&mut self, name: &str, out: usize, input: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.take(&format!("{name}.weight"), &[out, input])?,
            b: self.take(&format!("{name}.bias"), &[out])?,
        })
    }
}

/// Builds the model from canonical tensors, checking that every tensor is there with the shape the config implies.
fn assemble(
    config: ModelConfig,
    source: BaseSource,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<BaseModel> {
    let mut set = TensorSet { path: source.path().to_path_buf(), tensors };
    let (vocab, hidden, inner, kv) = (config.vocab_size, config.hidden_size, config.intermediate_size, config.kv_dim());
    let embed = set.take("token_embd.weight", &[vocab, hidden])?;
    let final_norm_w = set.take("output_norm.weight", &[hidden])?;
    let final_norm_b = set.take("output_norm.bias", &[hidden])?;
    let lm_head = set.linear("output", vocab, hidden)?;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for layer in 0..config.num_layers {
        let name = |s: &str| format!("blk.{layer}.{s}");
        let (q, k, v) = if set.tensors.contains_key(&name("attn_qkv.weight")) {
            // Fused q/k/v (phi-msft `Wqkv`, or a GGUF written from it): blocks of rows, each head-major.
            let fused = set.linear(&name("attn_qkv"), hidden + 2 * kv, hidden)?;
            let rows = |start: usize, len: usize| -> Result<Linear> {
                Ok(Linear {
                    w: fused.w.narrow(0, start, len)?.contiguous()?,
                    b: fused.b.narrow(0, start, len)?.contiguous()?,
                })
            };
            (rows(0, hidden)?, rows(hidden, kv)?, rows(hidden + kv, kv)?)
        } else {
            (
                set.linear(&name("attn_q"), hidden, hidden)?,
                set.linear(&name("attn_k"), kv, hidden)?,
                set.linear(&name("attn_v"), kv, hidden)?,
            )
        };
        let dense = set.linear(&name("attn_output"), hidden, hidden)?;
        let fc1 = set.linear(&name("ffn_up"), inner, hidden)?;
        let fc2 = set.linear(&name("ffn_down"), hidden, inner)?;
        let norm_w = set.take(&name("attn_norm.weight"), &[hidden])?;
        let norm_b = set.take(&name("attn_norm.bias"), &[hidden])?;
        blocks.push(Block { norm_w, norm_b, q, k, v, dense, fc1, fc2 });
    }
    if let Some(extra) = set.tensors.keys().min() {
        return Err(FinetuneError::base(
            &set.path,
            format!("unexpected tensor `{extra}` for {} layers", config.num_layers),
        ));
    }
    let fused = device.is_cpu();
    Ok(BaseModel {
        config,
        source,
        device: device.clone(),
        embed,
        blocks,
        final_norm_w,
        final_norm_b,
        lm_head,
        fused,
        trained: false,
        precision: Precision::F32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::rng::SplitMix64;

    /// Normal values, std `std`, from a seeded generator: the tests below compare two computations to a tolerance,
    /// so their inputs must be the same on every run (candle's `randn` on the CPU cannot be seeded).
    fn normal(rng: &mut SplitMix64, std: f64, shape: &[usize], device: &Device) -> Tensor {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| (rng.next_normal() * std) as f32).collect();
        Tensor::from_vec(values, shape, device).unwrap()
    }
    use candle_core::Var;

    /// A random 2-layer model with a small vocabulary, built directly from tensors.
    fn random_model(device: &Device) -> BaseModel {
        let config = ModelConfig {
            vocab_size: 40,
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            context_length: 32,
            layer_norm_eps: 1e-5,
            rope_dims: 2,
            rope_theta: 10000.0,
        };
        let mut tensors = HashMap::new();
        let mut rng = SplitMix64::new(1234);
        let mut add = |name: String, shape: &[usize]| {
            let t = normal(&mut rng, 0.5, shape, device);
            tensors.insert(name, t);
        };
        let (v, h, i, kv) = (40, 8, 16, 4);
        add("token_embd.weight".into(), &[v, h]);
        add("output_norm.weight".into(), &[h]);
        add("output_norm.bias".into(), &[h]);
        add("output.weight".into(), &[v, h]);
        add("output.bias".into(), &[v]);
        for l in 0..2 {
            for (name, out, input) in [
                ("attn_q", h, h),
                ("attn_k", kv, h),
                ("attn_v", kv, h),
                ("attn_output", h, h),
                ("ffn_up", i, h),
                ("ffn_down", h, i),
            ] {
                add(format!("blk.{l}.{name}.weight"), &[out, input]);
                add(format!("blk.{l}.{name}.bias"), &[out]);
            }
            add(format!("blk.{l}.attn_norm.weight"), &[h]);
            add(format!("blk.{l}.attn_norm.bias"), &[h]);
        }
        assemble(config, BaseSource::Gguf(PathBuf::from("random")), tensors, device).unwrap()
    }

    #[test]
    fn the_gelu_op_equals_candles_gelu_with_its_gradient() {
        let mut rng = SplitMix64::new(5);
        let x = Var::from_tensor(&normal(&mut rng, 2.0, &[3, 50_000], &Device::Cpu)).unwrap();
        let weights = normal(&mut rng, 1.0, &[3, 50_000], &Device::Cpu);
        let ours = (gelu_new(x.as_tensor(), true).unwrap() * &weights).unwrap().sum_all().unwrap();
        let candle = (x.as_tensor().gelu().unwrap() * &weights).unwrap().sum_all().unwrap();
        let close = |a: &Tensor, b: &Tensor, tolerance: f32| {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tolerance * (1.0 + y.abs()))
        };
        assert!(close(&ours, &candle, 1e-4));
        let (g_ours, g_candle) = (ours.backward().unwrap(), candle.backward().unwrap());
        // candle's backward uses constants rounded to 6 digits.
        assert!(close(g_ours.get(x.as_tensor()).unwrap(), g_candle.get(x.as_tensor()).unwrap(), 1e-5));
    }

    #[test]
    fn the_fused_lm_head_loss_equals_the_graph_loss_with_its_gradients() {
        let device = Device::Cpu;
        let model = random_model(&device);
        let sequences = [
            crate::finetune::Sequence { ids: vec![1, 5, 7, 9, 2, 39], targets: vec![true; 6] },
            crate::finetune::Sequence { ids: vec![3, 4, 0], targets: vec![false, false, true] },
        ];
        let batch = crate::finetune::data::make_batch(&sequences.iter().collect::<Vec<_>>(), &device).unwrap();
        let mut rng = SplitMix64::new(6);
        let a = Var::from_tensor(&normal(&mut rng, 0.3, &[2, 8], &device)).unwrap();
        let b = Var::from_tensor(&normal(&mut rng, 0.3, &[16, 2], &device)).unwrap();
        let lora = LoraTensors {
            scaling: 2.0,
            modules: BTreeMap::from([((1, LoraTarget::Fc1), (a.as_tensor().clone(), b.as_tensor().clone()))]),
        };
        let hidden = model.hidden_states(&batch.ids, &lora).unwrap().index_select(&batch.positions, 0).unwrap();
        let fused = model.fused_loss_sum(&hidden, &batch).unwrap();
        let graph = model.graph_loss_sum(&hidden, &batch).unwrap();
        let (fused_value, graph_value) = (fused.to_scalar::<f32>().unwrap(), graph.to_scalar::<f32>().unwrap());
        assert!((fused_value - graph_value).abs() <= 1e-5 * graph_value.abs(), "{fused_value} vs {graph_value}");
        let (fused_grads, graph_grads) = (fused.backward().unwrap(), graph.backward().unwrap());
        for var in [&a, &b] {
            let f = fused_grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = graph_grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0);
            for (x, y) in f.iter().zip(&g) {
                assert!((x - y).abs() <= 1e-5 * scale, "{f:?} vs {g:?}");
            }
        }
    }

    /// Full training: the weight-gradient ops (linear, LayerNorm, the lm_head loss) against candle's graph ops,
    /// every weight's gradient included (the embedding's from candle's `index_select` in both).
    #[test]
    fn the_fused_trained_forward_pass_equals_the_graph_one_with_every_weights_gradient() {
        let device = Device::Cpu;
        let mut model = random_model(&device);
        let vars = model.make_trainable().unwrap();
        assert_eq!(vars.len(), parameter_shapes(&model.config).len());
        let sequences = [
            crate::finetune::Sequence { ids: vec![1, 5, 7, 9, 2, 39, 11], targets: vec![true; 7] },
            crate::finetune::Sequence { ids: vec![3, 4, 0], targets: vec![false, true, true] },
        ];
        let batch = crate::finetune::data::make_batch(&sequences.iter().collect::<Vec<_>>(), &device).unwrap();
        let mut run = |fused: bool| {
            model.fused = fused;
            let loss = model.loss_sum(&batch, &LoraTensors::none()).unwrap();
            let grads = loss.backward().unwrap();
            let grads: Vec<Vec<f32>> = vars
                .iter()
                .map(|(name, v)| {
                    let grad = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                    grad.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect();
            (loss.to_scalar::<f32>().unwrap(), grads)
        };
        let (fused_loss, fused_grads) = run(true);
        let (graph_loss, graph_grads) = run(false);
        assert!((fused_loss - graph_loss).abs() <= 1e-5 * graph_loss.abs(), "{fused_loss} vs {graph_loss}");
        for ((name, _), (f, g)) in vars.iter().zip(fused_grads.iter().zip(&graph_grads)) {
            let scale = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name}");
            for (x, y) in f.iter().zip(g) {
                assert!((x - y).abs() <= 1e-4 * scale, "{name}: {f:?} vs {g:?}");
            }
        }
    }

    /// Mixed precision against float32 through a whole forward and backward pass, with LoRA on a frozen base (its
    /// weights cast once; bfloat16 products through `FrozenMatmul`'s CPU path) and in full training (float32
    /// `Var`s cast in the graph): the losses agree to the 16-bit type's rounding, the gradients come back float32
    /// and point the same way.
    #[test]
    fn mixed_precision_passes_agree_with_float32_and_give_float32_gradients() {
        let device = Device::Cpu;
        let sequences = [
            crate::finetune::Sequence { ids: vec![1, 5, 7, 9, 2, 39, 11], targets: vec![true; 7] },
            crate::finetune::Sequence { ids: vec![3, 4, 0], targets: vec![false, true, true] },
        ];
        let batch = crate::finetune::data::make_batch(&sequences.iter().collect::<Vec<_>>(), &device).unwrap();
        let mut rng = SplitMix64::new(8);
        let lora_vars: Vec<Var> = [(2, 8), (16, 2)]
            .iter()
            .map(|&(rows, cols)| Var::from_tensor(&normal(&mut rng, 0.3, &[rows, cols], &device)).unwrap())
            .collect();
        let lora = LoraTensors {
            scaling: 2.0,
            modules: BTreeMap::from([(
                (1, LoraTarget::Fc1),
                (lora_vars[0].as_tensor().clone(), lora_vars[1].as_tensor().clone()),
            )]),
        };
        let loss_and_grads = |model: &BaseModel, lora: &LoraTensors, vars: &[Var]| {
            let loss = model.loss_sum(&batch, lora).unwrap();
            assert_eq!(loss.dtype(), DType::F32);
            let grads = loss.backward().unwrap();
            let grads: Vec<f32> = vars
                .iter()
                .flat_map(|v| {
                    let grad = grads.get(v.as_tensor()).unwrap();
                    assert_eq!(grad.dtype(), DType::F32);
                    grad.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect();
            (loss.to_scalar::<f32>().unwrap(), grads)
        };
        let agree = |what: &str, (loss, grads): (f32, Vec<f32>), (want, want_grads): (f32, Vec<f32>), tol: f32| {
            assert!((loss - want).abs() <= tol * want.abs(), "{what}: loss {loss} vs float32 {want}");
            assert_ne!(loss, want, "{what}: the pass rounded nothing");
            let dot: f32 = grads.iter().zip(&want_grads).map(|(a, b)| a * b).sum();
            let norm = |g: &[f32]| g.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cosine = dot / (norm(&grads) * norm(&want_grads));
            assert!(cosine >= 1.0 - tol, "{what}: gradient cosine {cosine}");
            assert!((norm(&grads) / norm(&want_grads) - 1.0).abs() <= 10.0 * tol, "{what}: gradient norm");
        };
        for (precision, tolerance) in [(Precision::Bf16, 1e-2), (Precision::F16, 2e-3)] {
            let mut float32 = random_model(&device);
            float32.fused = false;
            let mut mixed = random_model(&device);
            mixed.set_precision(precision).unwrap();
            assert_eq!(mixed.lm_head.w.dtype(), precision.compute_dtype(), "a frozen base is cast once");
            assert_eq!(mixed.final_norm_w.dtype(), DType::F32, "LayerNorm stays float32");
            let want = loss_and_grads(&float32, &lora, &lora_vars);
            agree(&format!("{precision} LoRA"), loss_and_grads(&mixed, &lora, &lora_vars), want, tolerance);

            let mut float32 = random_model(&device);
            let float32_vars: Vec<Var> = float32.make_trainable().unwrap().into_iter().map(|(_, v)| v).collect();
            float32.fused = false;
            let mut mixed = random_model(&device);
            let mixed_vars: Vec<Var> = mixed.make_trainable().unwrap().into_iter().map(|(_, v)| v).collect();
            mixed.set_precision(precision).unwrap();
            assert_eq!(mixed.lm_head.w.dtype(), DType::F32, "trained weights stay float32 masters");
            let none = LoraTensors::none();
            let want = loss_and_grads(&float32, &none, &float32_vars);
            agree(&format!("{precision} full"), loss_and_grads(&mixed, &none, &mixed_vars), want, tolerance);
        }
    }

    #[test]
    fn a_frozen_bases_precision_is_lowered_once_and_masters_stay_float32() {
        let mut frozen = random_model(&Device::Cpu);
        frozen.set_precision(Precision::Bf16).unwrap();
        assert!(frozen.set_precision(Precision::F32).is_err(), "the rounding cannot be undone");
        assert!(frozen.make_trainable().is_err(), "rounded weights are no master weights");
        let mut trained = random_model(&Device::Cpu);
        trained.make_trainable().unwrap();
        trained.set_precision(Precision::F16).unwrap();
        trained.set_precision(Precision::F32).unwrap();
        assert!(trained.fused, "float32 on the CPU takes the fused ops again");
    }

    /// Every fused CPU op against candle's graph ops through a whole forward and backward pass: a model with
    /// grouped-query attention and partial rotary, LoRA on every target, padded sequences.
    #[test]
    fn the_fused_forward_pass_equals_the_graph_one_with_its_gradients() {
        let device = Device::Cpu;
        let mut model = random_model(&device);
        let sequences = [
            crate::finetune::Sequence { ids: vec![1, 5, 7, 9, 2, 39, 11], targets: vec![true; 7] },
            crate::finetune::Sequence { ids: vec![3, 4, 0], targets: vec![false, true, true] },
        ];
        let batch = crate::finetune::data::make_batch(&sequences.iter().collect::<Vec<_>>(), &device).unwrap();
        let mut vars = Vec::new();
        let mut modules = BTreeMap::new();
        let mut rng = SplitMix64::new(7);
        for layer in 0..2 {
            for target in LoraTarget::ALL {
                let (input, output) = target.dims(&model.config);
                let a = Var::from_tensor(&normal(&mut rng, 0.3, &[2, input], &device)).unwrap();
                let b = Var::from_tensor(&normal(&mut rng, 0.3, &[output, 2], &device)).unwrap();
                modules.insert((layer, target), (a.as_tensor().clone(), b.as_tensor().clone()));
                vars.extend([a, b]);
            }
        }
        let lora = LoraTensors { scaling: 1.5, modules };
        let mut run = |fused: bool| {
            model.fused = fused;
            let loss = model.loss_sum(&batch, &lora).unwrap();
            let grads = loss.backward().unwrap();
            let grads: Vec<Vec<f32>> = vars
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect();
            (loss.to_scalar::<f32>().unwrap(), grads)
        };
        let (fused_loss, fused_grads) = run(true);
        let (graph_loss, graph_grads) = run(false);
        assert!((fused_loss - graph_loss).abs() <= 1e-5 * graph_loss.abs(), "{fused_loss} vs {graph_loss}");
        for (f, g) in fused_grads.iter().zip(&graph_grads) {
            let scale = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0);
            for (x, y) in f.iter().zip(g) {
                assert!((x - y).abs() <= 1e-4 * scale, "{f:?} vs {g:?}");
            }
        }
    }
}
