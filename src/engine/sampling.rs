//! Sampling parameters and the llama.cpp sampler chain built from them.

use llama_cpp_2::sampling::LlamaSampler;

use super::EngineError;

/// How the next token is chosen. The defaults are greedy decoding: the most likely token, always.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probabilities add up to p; 1.0 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0.0 keeps all.
    pub min_p: f32,
    /// Divide the logits of recently seen tokens by this; 1.0 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the repeat penalty looks at.
    pub repeat_last_n: u32,
    pub seed: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Rejects values that llama.cpp would misbehave on.
    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let bad = |what: String| Err(EngineError::InvalidSampling(what));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!("repeat penalty must be > 0, got {}", self.repeat_penalty));
        }
        if i32::try_from(self.top_k).is_err() || i32::try_from(self.repeat_last_n).is_err() {
            return bad("top-k and repeat-last-n must fit in 31 bits".to_owned());
        }
        Ok(())
    }

    /// The sampler chain: penalties, then the filters, then the final pick. Filters are skipped when they would
    /// keep everything, so greedy decoding is a plain argmax (ties go to the lower id, as in transformers).
    pub(crate) fn build(&self, n_vocab: i32) -> LlamaSampler {
        let mut chain = Vec::new();
        if self.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(n_vocab, self.repeat_last_n as i32, self.repeat_penalty, 0.0, 0.0));
        }
        if self.is_greedy() {
            chain.push(LlamaSampler::greedy());
            return LlamaSampler::chain_simple(chain);
        }
        if self.top_k > 0 {
            chain.push(LlamaSampler::top_k(self.top_k as i32));
        }
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        if self.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(self.min_p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed));
        LlamaSampler::chain_simple(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_greedy_and_valid() {
        let params = SamplingParams::default();
        assert!(params.is_greedy());
        assert!(params.validate().is_ok());
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for params in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { min_p: 2.0, ..Default::default() },
            SamplingParams { repeat_penalty: 0.0, ..Default::default() },
            SamplingParams { top_k: u32::MAX, ..Default::default() },
        ] {
            assert!(matches!(params.validate(), Err(EngineError::InvalidSampling(_))), "{params:?}");
        }
    }
}
