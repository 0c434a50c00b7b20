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

/// How [`rewrite_gguf`] changes a GGUF.
#[derive(Debug, Clone, Default)]
pub struct GgufEdit {
    /// Keys set to these values (added at the end when new).
    pub set: Vec<(String, phi_converters::gguf::MetadataValue)>,
    /// Keys left out.
    pub remove: Vec<String>,
    /// Tensors given another shape (ggml order); their data is the original's, cut or zero-padded to fit.
    pub reshape: Vec<(String, Vec<u64>)>,
    /// Tensors left out.
    pub drop_tensors: Vec<String>,
    /// Tensors added: a copy (the same type, cut or zero-padded data) of `source` under a new name and shape.
    pub add_tensors: Vec<(String, String, Vec<u64>)>,
}

/// Writes `input` with `edit` applied to `target`, through the project's own GGUF reader and writer — what
/// `gguf-set-metadata` and friends do to a converted model, for tests of files that are well-formed GGUF with
/// contents a model must not have.
pub fn rewrite_gguf(input: &phi_converters::gguf::GgufFile, target: &Path, edit: &GgufEdit) {
    use phi_converters::gguf::{padding, write_zeros, GgufHeader};
    use std::io::Write;
    let mut header = GgufHeader::new();
    for (key, value) in input.metadata() {
        if edit.remove.iter().any(|k| k == key) {
            continue;
        }
        let value = edit.set.iter().find(|(k, _)| k == key).map_or_else(|| value.clone(), |(_, v)| v.clone());
        header.set_metadata(key, value);
    }
    for (key, value) in &edit.set {
        if input.get(key).is_none() {
            header.set_metadata(key.clone(), value.clone());
        }
    }
    // (name in the output, tensor whose data and type it takes, shape)
    let mut layout = Vec::new();
    for tensor in input.tensors() {
        if edit.drop_tensors.contains(&tensor.name) {
            continue;
        }
        let dims = edit.reshape.iter().find(|(n, _)| *n == tensor.name).map_or(tensor.dims.clone(), |(_, d)| d.clone());
        layout.push((tensor.name.clone(), tensor, dims));
    }
    for (name, source_name, dims) in &edit.add_tensors {
        let tensor = input.tensor(source_name).unwrap_or_else(|| panic!("no tensor {source_name}"));
        layout.push((name.clone(), tensor, dims.clone()));
    }
    for (name, tensor, dims) in &layout {
        header.push_tensor(name.clone(), dims.clone(), tensor.ggml_type).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(target).unwrap());
    header.write_to(&mut out).unwrap();
    for ((_, source_tensor, _), info) in layout.iter().zip(header.tensors()) {
        let data = input.tensor_data(source_tensor);
        let n = (info.n_bytes as usize).min(data.len());
        out.write_all(&data[..n]).unwrap();
        write_zeros(&mut out, info.n_bytes - n as u64 + padding(info.n_bytes, header.alignment())).unwrap();
    }
    out.flush().unwrap();
}

/// A trainer's gate that lets `steps` steps through, then stops the run.
pub struct StopAfter {
    pub steps: u64,
    pub asked: std::sync::atomic::AtomicU64,
}

impl phi_tui::finetune::StepGate for StopAfter {
    fn proceed(&self) -> bool {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.steps
    }
}

/// Runs `trainer` to its last step or until `gate` stops it: each step's report, and how the run ended.
pub fn run_steps<P: phi_tui::finetune::Trainable>(
    trainer: &mut phi_tui::finetune::Trainer<'_, P>,
    gate: &dyn phi_tui::finetune::StepGate,
) -> (Vec<phi_tui::finetune::StepReport>, phi_tui::finetune::TrainOutcome<P::Weights>) {
    let mut reports = Vec::new();
    let outcome = trainer
        .run(gate, &mut |event| {
            if let phi_tui::finetune::TrainEvent::Step(report) = event {
                reports.push(report.clone())
            }
        })
        .expect("training runs");
    (reports, outcome)
}

/// The losses of step reports, in order.
pub fn losses(reports: &[phi_tui::finetune::StepReport]) -> Vec<f64> {
    reports.iter().map(|r| r.loss).collect()
}
