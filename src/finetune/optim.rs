//! The optimizer, learning-rate schedules and gradient clipping, on host vectors (LoRA parameters are small, and
//! host state is trivially checkpointed).

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's betas and eps; weight decay 0, as transformers' Trainer (torch's own default is 0.01).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW with exactly the update of `torch.optim.AdamW` (single-tensor implementation, `amsgrad=False`):
///
/// ```text
/// t += 1
/// p  *= 1 - lr·wd                       (decoupled weight decay)
/// m  = m + (1-β1)·(g - m)               (torch's lerp)
/// v  = β2·v + (1-β2)·g²
/// p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates done so far (torch's `state["step"]`).
    pub step: u64,
    /// First and second moments, one vector per parameter tensor.
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> AdamW {
        AdamW {
            config,
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of every parameter with its gradient.
    pub fn update(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2 = 1.0 - c.beta2.powi(t);
        // torch computes these scalars in Python floats (f64) and applies them to float32 tensors.
        let step_size = (lr / bias_correction1) as f32;
        let bias_correction2_sqrt = bias_correction2.sqrt() as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (one_minus_beta1, beta2, one_minus_beta2, eps) =
            ((1.0 - c.beta1) as f32, c.beta2 as f32, (1.0 - c.beta2) as f32, c.eps as f32);
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            for i in 0..p.len() {
                if c.weight_decay != 0.0 {
                    p[i] *= decay;
                }
                m[i] += one_minus_beta1 * (g[i] - m[i]);
                v[i] = v[i] * beta2 + one_minus_beta2 * g[i] * g[i];
                let denom = v[i].sqrt() / bias_correction2_sqrt + eps;
                p[i] -= step_size * (m[i] / denom);
            }
        }
    }
}

/// How the learning rate moves over the run (after the linear warmup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Half a cosine from the peak to 0 (transformers' `get_cosine_schedule_with_warmup`).
    Cosine,
    /// A straight line from the peak to 0 (`get_linear_schedule_with_warmup`).
    Linear,
    /// The peak throughout (`get_constant_schedule_with_warmup`).
    Constant,
}

impl FromStr for ScheduleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(ScheduleKind::Cosine),
            "linear" => Ok(ScheduleKind::Linear),
            "constant" => Ok(ScheduleKind::Constant),
            _ => Err(format!("unknown schedule `{s}` (cosine, linear or constant)")),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Constant => "constant",
        })
    }
}

/// The learning rate of each optimizer step, as transformers' schedules compute it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The rate for the update at `step` (0-based): `step/warmup` of the peak during warmup (so step 0 of a warmup
    /// trains at rate 0, as in transformers), then the decay.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay_steps;
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        };
        self.peak * factor
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`, as `torch.nn.utils.clip_grad_norm_`
/// (coefficient `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = grads.iter().flatten().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
    if max_norm > 0.0 {
        let coefficient = max_norm / (norm + 1e-6);
        if coefficient < 1.0 {
            let coefficient = coefficient as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= coefficient);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
        // At t = 1, m̂ = g and v̂ = g², so the step is lr·g/(|g| + eps) ≈ lr·sign(g).
        let mut adam = AdamW::new(AdamWConfig::default(), &[3]);
        let mut params = vec![vec![1.0f32, 1.0, 1.0]];
        adam.update(&mut params, &[vec![0.5, -2.0, 0.0]], 0.1);
        assert!((params[0][0] - 0.9).abs() < 1e-6);
        assert!((params[0][1] - 1.1).abs() < 1e-6);
        assert_eq!(params[0][2], 1.0);
    }

    #[test]
    fn adamw_weight_decay_is_decoupled() {
        let config = AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() };
        let mut adam = AdamW::new(config, &[1]);
        let mut params = vec![vec![2.0f32]];
        adam.update(&mut params, &[vec![0.0]], 0.1);
        assert!((params[0][0] - 2.0 * 0.95).abs() < 1e-6);
    }

    #[test]
    fn schedules_follow_transformers() {
        let cosine = Schedule { kind: ScheduleKind::Cosine, peak: 1.0, warmup_steps: 10, total_steps: 110 };
        assert_eq!(cosine.lr(0), 0.0);
        assert!((cosine.lr(5) - 0.5).abs() < 1e-12);
        assert!((cosine.lr(10) - 1.0).abs() < 1e-12);
        assert!((cosine.lr(60) - 0.5).abs() < 1e-12);
        assert!(cosine.lr(109) < 1e-3);
        let linear = Schedule { kind: ScheduleKind::Linear, ..cosine };
        assert!((linear.lr(60) - 0.5).abs() < 1e-12);
        let constant = Schedule { kind: ScheduleKind::Constant, warmup_steps: 0, ..cosine };
        assert_eq!(constant.lr(0), 1.0);
        assert_eq!(constant.lr(109), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut grads = vec![vec![3.0f32], vec![4.0]];
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((grads[0][0] - 0.6).abs() < 1e-6 && (grads[1][0] - 0.8).abs() < 1e-6);
        let mut small = vec![vec![0.3f32]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small[0][0], 0.3);
    }
}
