//! Mixed precision: the type the forward and backward passes compute in, and the loss scaling that float16 needs.
//!
//! The recipe is PyTorch's automatic mixed precision (`torch.autocast` + `GradScaler`), so a run here and one in
//! the PyTorch ecosystem mean the same thing by `bf16`:
//!
//! * the trained weights, their gradients and AdamW's state stay float32 (the "master" weights); each forward pass
//!   casts the weights it multiplies to the compute type, and the casts' backward passes bring the gradients back
//!   to float32;
//! * matrix products (the linear layers, attention's two products, `lm_head`) run in the compute type; LayerNorm,
//!   the residual stream, rotary embedding, the attention softmax and the cross-entropy stay float32, as autocast
//!   keeps them;
//! * float16's range is narrow, so its loss is multiplied by a scale before the backward pass and the gradients
//!   divided by it after; a step whose gradients overflow is skipped and the scale halved, and after
//!   [`GROWTH_INTERVAL`] good steps in a row it doubles ([`LossScaler`], torch's `GradScaler` defaults). bfloat16
//!   has float32's range and needs none of this.
//!
//! GPUs multiply float16 and bfloat16 natively. candle's CPU matmul has no bfloat16 kernel, so on the CPU a
//! bfloat16 product is computed from the rounded inputs in float32 and rounded back — the same numbers a GPU's
//! bfloat16 GEMM (float32 accumulation) gives, at float32 speed or less. On the CPU mixed precision is for checking
//! a recipe before a GPU run; float32 with the fused CPU ops is the fast path there.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// The type a training run computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything in float32 (on the CPU, with the fused ops).
    F32,
    /// Mixed precision with bfloat16 products.
    Bf16,
    /// Mixed precision with float16 products and dynamic loss scaling.
    F16,
}

impl Precision {
    /// The default of a device: bfloat16 mixed precision on a GPU (what Ampere and later run fastest), float32 on
    /// the CPU.
    pub fn default_for(device: &Device) -> Precision {
        if device.is_cpu() {
            Precision::F32
        } else {
            Precision::Bf16
        }
    }

    /// The type matrix products run in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Whether gradients need loss scaling to stay in range.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "float16" | "fp16" => Ok(Precision::F16),
            _ => Err(format!("unknown precision `{s}` (f32, bf16 or f16)")),
        }
    }
}

/// torch's `GradScaler(init_scale=2.**16)`.
pub const INITIAL_LOSS_SCALE: f64 = 65536.0;
/// Good steps in a row after which the scale doubles (torch's `growth_interval`).
pub const GROWTH_INTERVAL: u64 = 2000;

/// Dynamic loss scaling, as torch's `GradScaler` (growth factor 2, backoff 0.5). Its state is part of a
/// checkpoint: a resumed run must scale as the uninterrupted one would have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// What the loss is multiplied by before the backward pass.
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
}

impl LossScaler {
    pub fn new(initial_scale: f64) -> LossScaler {
        LossScaler { scale: initial_scale, good_steps: 0 }
    }

    /// Divides scaled gradients by the scale and updates it; returns whether the step may update the weights
    /// (false when a gradient overflowed: the step is skipped and the scale halved). The gradients are left as
    /// they came when the step is skipped.
    pub fn unscale(&mut self, grads: &mut [Vec<f32>]) -> bool {
        if grads.iter().flatten().any(|g| !g.is_finite()) {
            self.scale *= 0.5;
            self.good_steps = 0;
            return false;
        }
        self.divide(grads);
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }

    /// Divides gradients of the scaled loss by the scale, leaving the scaler as it is.
    pub fn divide(&self, grads: &mut [Vec<f32>]) {
        let inverse = (1.0 / self.scale) as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= inverse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale_and_good_steps_double_it() {
        let mut scaler = LossScaler::new(1024.0);
        let mut grads = vec![vec![2048.0, f32::INFINITY], vec![1.0]];
        assert!(!scaler.unscale(&mut grads));
        assert_eq!((scaler.scale, scaler.good_steps), (512.0, 0));
        assert_eq!(grads[0][0], 2048.0, "a skipped step's gradients are not touched");
        let mut grads = vec![vec![1024.0, f32::NAN]];
        assert!(!scaler.unscale(&mut grads));
        assert_eq!(scaler.scale, 256.0);

        let mut grads = vec![vec![512.0, -256.0], vec![128.0]];
        assert!(scaler.unscale(&mut grads));
        assert_eq!(grads, vec![vec![2.0, -1.0], vec![0.5]]);
        assert_eq!((scaler.scale, scaler.good_steps), (256.0, 1));
        for _ in 1..GROWTH_INTERVAL {
            assert!(scaler.unscale(&mut [vec![1.0]]));
        }
        assert_eq!((scaler.scale, scaler.good_steps), (512.0, 0));
    }

    #[test]
    fn precisions_parse_by_their_usual_names() {
        for (name, precision) in [("f32", Precision::F32), ("bfloat16", Precision::Bf16), ("fp16", Precision::F16)] {
            assert_eq!(name.parse::<Precision>(), Ok(precision));
        }
        assert_eq!("bf16".parse::<Precision>().map(|p| p.to_string()), Ok("bf16".to_owned()));
        assert!("int8".parse::<Precision>().is_err());
        assert_eq!(Precision::default_for(&Device::Cpu), Precision::F32);
    }
}
