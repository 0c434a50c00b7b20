//! Shared test support: fixture paths, converted fixture models, reference outputs, and engines.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod openai_stub;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use phi_converters::{ConvertOptions, OutType};
use phi_tui::engine::{Engine, EngineOptions, GenerateRequest, Prompt, SequenceId, TokenId};
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory that lives as long as the test process.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

/// Converts a fixture checkpoint once per test process and returns the GGUF's path.
pub fn converted(model: &str, out_type: OutType) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let output = scratch_dir().join(format!("{model}.{out_type}.gguf"));
    if !output.exists() {
        let options = ConvertOptions { out_type, tokenizer: None, fallback_tokenizer: None };
        phi_converters::convert(&fixtures().join(model), &output, &options, &mut |_| {})
            .unwrap_or_else(|e| panic!("converting {model}: {e}"));
    }
    output
}

#[derive(Debug, Deserialize)]
pub struct PromptsFile {
    pub prompts: Vec<ReferencePrompt>,
}

#[derive(Debug, Deserialize)]
pub struct ReferencePrompt {
    pub name: String,
    pub text: String,
    pub ids: Vec<TokenId>,
    pub last_logits_file: String,
    pub greedy: Greedy,
}

#[derive(Debug, Deserialize)]
pub struct Greedy {
    pub new_ids: Vec<TokenId>,
    pub gaps: Vec<f32>,
}

impl Greedy {
    /// The reference tokens that are safe to compare: those before the first step whose top-1/top-2 gap is
    /// below `min_gap` (past that, a 1e-2 logit difference may legitimately pick the other token).
    pub fn stable_prefix(&self, min_gap: f32) -> &[TokenId] {
        let stable = self.gaps.iter().take_while(|&&gap| gap >= min_gap).count();
        &self.new_ids[..stable.min(self.new_ids.len())]
    }
}

pub fn reference_prompts(reference_dir: &Path) -> Vec<ReferencePrompt> {
    let text = std::fs::read_to_string(reference_dir.join("prompts.json")).expect("prompts.json");
    serde_json::from_str::<PromptsFile>(&text).expect("prompts.json parses").prompts
}

pub fn read_logits(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit vectors differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The index of the largest value; ties go to the lower index, as in the references.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

pub fn small_engine_options() -> EngineOptions {
    EngineOptions { context_size: Some(512), sequences: 3, threads: Some(2), batch_size: 64, ..Default::default() }
}

pub async fn engine_with(model: &Path, options: EngineOptions) -> Engine {
    let engine = Engine::start(options).expect("engine starts");
    engine.load_model(model, None).await.unwrap_or_else(|e| panic!("loading {}: {e}", model.display()));
    engine
}

/// A greedy request that ignores end-of-text, as the reference generations do.
pub fn greedy_request(sequence: u32, tokens: &[TokenId], max_tokens: u32) -> GenerateRequest {
    let mut request = GenerateRequest::new(SequenceId(sequence), Prompt::Tokens(tokens.to_vec()));
    request.max_tokens = max_tokens;
    request.stop_at_eog = false;
    request
}
