//! Structurally valid GGUFs with values a phi model must not have, against the real engine: every file either
//! loads and decodes, or is refused with an error that names the problem — never an abort (which would kill this
//! test process), a panic, or a hang.
//!
//! `each_reported_file_is_refused_by_name` holds the files that once aborted, looped or stopped the engine;
//! `seeded_fuzz_load_and_decode` mutates the converted tiny model at random (a fixed seed; a few hundred cases
//! here). The long run: `tests/bench/gguf-fuzz.sh` (or `PHI_TUI_FUZZ_CASES=5000 PHI_TUI_FUZZ_SEED=7 cargo test
//! --release --test gguf_fuzz seeded`).
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use phi_converters::gguf::{GgufFile, MetadataArray, MetadataValue};
use phi_converters::OutType;
use phi_tui::engine::{Engine, EngineError};

/// Longer than any load and decode of the tiny model takes; past it the case counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CASES: usize = 300;
const DEFAULT_SEED: u64 = 0x5eed_6767_7566_0001;
/// The fuzzed model keeps this many tokens of the tiny model's vocabulary (the 256 byte tokens and the first
/// merges' results), so that each case writes and checks a small file: the costs of a case are its vocabulary's.
const FUZZ_VOCAB: usize = 1024;
/// A prompt within that vocabulary.
const PROMPT: [i32; 2] = [400, 500];

const U32_KEYS: &[&str] = &[
    "phi2.context_length",
    "phi2.embedding_length",
    "phi2.feed_forward_length",
    "phi2.block_count",
    "phi2.attention.head_count",
    "phi2.attention.head_count_kv",
    "phi2.rope.dimension_count",
];
const F32_KEYS: &[&str] = &["phi2.attention.layer_norm_epsilon", "phi2.rope.freq_base"];

fn u32_values() -> Vec<MetadataValue> {
    use MetadataValue::*;
    vec![
        U32(0),
        U32(1),
        U32(2),
        U32(3),
        U32(7),
        U32(16),
        U32(17),
        U32(32),
        U32(63),
        U32(64),
        U32(1000),
        U32(4096),
        U32(1 << 31),
        U32(u32::MAX),
        I32(-1),
        I32(8),
        U64(1 << 40),
        U64(2),
        F32(f32::NAN),
        F32(8.0),
        String("8".into()),
        Bool(true),
        Array(MetadataArray::U32(vec![2, 2])),
    ]
}

fn f32_values() -> Vec<MetadataValue> {
    use MetadataValue::*;
    vec![
        F32(0.0),
        F32(-0.0),
        F32(-1e-5),
        F32(f32::NAN),
        F32(f32::INFINITY),
        F32(f32::NEG_INFINITY),
        F32(1e-45),
        F32(1e30),
        F32(f32::MAX),
        F32(1.0),
        F64(1e-5),
        U32(1),
        String("1e-5".into()),
    ]
}

/// One mutation, described for the failure message.
#[derive(Debug, Clone)]
enum Mutation {
    Set(String, MetadataValue),
    Remove(String),
    Reshape(String, Vec<u64>),
    DropTensor(String),
    DropLayer(u32),
    AddLayerTensor { layer: u32 },
}

fn apply(mutations: &[Mutation], base: &GgufFile) -> GgufEdit {
    let mut edit = GgufEdit::default();
    for mutation in mutations {
        match mutation {
            Mutation::Set(key, value) => edit.set.push((key.clone(), value.clone())),
            Mutation::Remove(key) => edit.remove.push(key.clone()),
            Mutation::Reshape(name, dims) => edit.reshape.push((name.clone(), dims.clone())),
            Mutation::DropTensor(name) => edit.drop_tensors.push(name.clone()),
            Mutation::DropLayer(layer) => edit.drop_tensors.extend(
                base.tensors().iter().filter(|t| t.name.starts_with(&format!("blk.{layer}."))).map(|t| t.name.clone()),
            ),
            Mutation::AddLayerTensor { layer } => {
                for t in base.tensors().iter().filter(|t| t.name.starts_with("blk.0.")) {
                    let name = t.name.replacen("blk.0.", &format!("blk.{layer}."), 1);
                    // A case may add the same layer twice; a GGUF cannot hold two tensors of one name.
                    if base.tensor(&name).is_none() && !edit.add_tensors.iter().any(|(n, _, _)| *n == name) {
                        edit.add_tensors.push((name, t.name.clone(), t.dims.clone()));
                    }
                }
            }
        }
    }
    edit
}

/// Every single-mutation case: each phi2 key with each value of its own kind and of the other kinds, each key
/// removed, unknown keys of other architectures, foreign architectures and tokenizers, and tensor shapes that
/// disagree with the metadata.
fn systematic_cases(base: &GgufFile) -> Vec<Vec<Mutation>> {
    let mut cases = Vec::new();
    for key in U32_KEYS.iter().chain(F32_KEYS) {
        let values = if F32_KEYS.contains(key) { f32_values() } else { u32_values() };
        for value in values {
            cases.push(vec![Mutation::Set((*key).to_owned(), value)]);
        }
        cases.push(vec![Mutation::Remove((*key).to_owned())]);
    }
    for (key, value) in [
        ("phi2.expert_count", MetadataValue::U32(1)),
        ("phi2.expert_used_count", MetadataValue::U32(2)),
        ("phi2.attention.key_length", MetadataValue::U32(7)),
        ("phi2.rope.scaling.type", MetadataValue::String("yarn".into())),
        ("phi2.vocab_size", MetadataValue::U32(12)),
        ("phi2.vocab_size", MetadataValue::U32(51200)),
    ] {
        cases.push(vec![Mutation::Set(key.to_owned(), value)]);
    }
    for architecture in ["llama", "bert", "phi3", "gpt2", "", "PHI2", "phi2\0"] {
        cases.push(vec![Mutation::Set("general.architecture".into(), MetadataValue::String(architecture.into()))]);
    }
    cases.push(vec![Mutation::Set("general.architecture".into(), MetadataValue::U32(2))]);
    cases.push(vec![Mutation::Remove("general.architecture".into())]);
    for model in ["llama", "bert", "none", "t5"] {
        cases.push(vec![Mutation::Set("tokenizer.ggml.model".into(), MetadataValue::String(model.into()))]);
    }
    let tokens = base.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).and_then(|a| a.as_strings()).unwrap();
    let vocab = tokens.len() as u64;
    let mut duplicated = tokens.to_vec();
    duplicated[1] = duplicated[0].clone();
    let mut short = tokens.to_vec();
    short.pop();
    for list in [duplicated, short, Vec::new()] {
        cases.push(vec![Mutation::Set(
            "tokenizer.ggml.tokens".into(),
            MetadataValue::Array(MetadataArray::String(list)),
        )]);
    }
    cases.push(vec![Mutation::Set(
        "tokenizer.ggml.token_type".into(),
        MetadataValue::Array(MetadataArray::I32(vec![1])),
    )]);
    cases.push(vec![Mutation::Remove("tokenizer.ggml.merges".into())]);
    for (name, dims) in [
        ("token_embd.weight", vec![63, vocab]),
        ("token_embd.weight", vec![64, vocab - 1]),
        ("token_embd.weight", vec![64, vocab, 1]),
        ("token_embd.weight", vec![]),
        ("output.weight", vec![64, vocab + 32]),
        ("output.bias", vec![vocab, 1]),
        ("output_norm.weight", vec![32]),
        ("blk.0.ffn_up.weight", vec![64, 255]),
        ("blk.0.ffn_up.bias", vec![]),
        ("blk.1.attn_k.weight", vec![64, 32]),
        ("blk.1.attn_q.weight", vec![32, 128]),
        ("blk.0.attn_norm.bias", vec![64, 1]),
    ] {
        cases.push(vec![Mutation::Reshape(name.to_owned(), dims)]);
    }
    for name in ["output.bias", "blk.1.ffn_down.weight", "blk.0.attn_q.bias", "token_embd.weight"] {
        cases.push(vec![Mutation::DropTensor(name.to_owned())]);
    }
    cases.push(vec![Mutation::DropLayer(1)]);
    cases.push(vec![Mutation::DropLayer(0)]);
    cases.push(vec![Mutation::AddLayerTensor { layer: 2 }]);
    cases.push(vec![Mutation::AddLayerTensor { layer: 7 }]);
    // Consistent changes that llama.cpp can run: these must load and decode.
    cases.push(vec![Mutation::Set("phi2.block_count".into(), MetadataValue::U32(1)), Mutation::DropLayer(1)]);
    cases.push(vec![
        Mutation::Set("phi2.block_count".into(), MetadataValue::U32(3)),
        Mutation::AddLayerTensor { layer: 2 },
    ]);
    cases
}

/// xorshift64*: a fixed sequence for a seed, no dependency.
struct Rng(u64);

impl Rng {
    /// Every seed its own sequence (splitmix64 of the seed as the state, never 0).
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// One to three mutations drawn from the systematic ones, plus random values for random keys and shapes.
fn random_case(rng: &mut Rng, systematic: &[Vec<Mutation>], base: &GgufFile) -> Vec<Mutation> {
    let mut case = Vec::new();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 | 1 => case.extend(rng.pick(systematic)),
            2 => {
                let key = rng.pick(&U32_KEYS.iter().chain(F32_KEYS).collect::<Vec<_>>());
                let value = match rng.below(4) {
                    0 => MetadataValue::U32(rng.next() as u32 >> rng.below(32)),
                    1 => MetadataValue::F32(f32::from_bits(rng.next() as u32)),
                    2 => MetadataValue::I32(rng.next() as i32),
                    _ => MetadataValue::U32(2 * (1 + rng.below(40) as u32)),
                };
                case.push(Mutation::Set((*key).to_owned(), value));
            }
            _ => {
                let tensor = rng.pick(base.tensors());
                let mut dims = tensor.dims.clone();
                match rng.below(3) {
                    0 if !dims.is_empty() => {
                        let i = rng.below(dims.len());
                        dims[i] = 1 + rng.below(2 * dims[i] as usize + 2) as u64;
                    }
                    1 => dims.push(1 + rng.below(3) as u64),
                    _ => {
                        dims.pop();
                    }
                }
                // Quantized rows must stay whole blocks for the writer; these are F16/F32 here.
                case.push(Mutation::Reshape(tensor.name.clone(), dims));
            }
        }
    }
    case
}

/// Loads the file and decodes one token. `Ok(true)`: it ran; `Ok(false)`: refused with a named error.
async fn load_and_decode(engine: &Engine, path: &Path) -> Result<bool, String> {
    let run = async {
        match engine.load_model(path, None).await {
            Ok(_) => {
                let summary = engine.generate(greedy_request(0, &PROMPT, 1)).finish().await;
                summary.map(|s| s.tokens.len() == 1).map_err(|e| format!("decode failed: {e}"))
            }
            Err(
                error @ (EngineError::InvalidModel { .. } | EngineError::ModelLoad { .. } | EngineError::Context(_)),
            ) => {
                let message = error.to_string();
                let reason = message.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&message);
                if reason.trim().is_empty() || reason.contains("null result") {
                    return Err(format!("an error that names nothing: {message}"));
                }
                Ok(false)
            }
            Err(error) => Err(format!("unexpected error: {error:?}")),
        }
    };
    match tokio::time::timeout(CASE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CASE_TIMEOUT:?}: a hang")),
    }
}

struct Fuzz {
    engine: Engine,
    /// The model the cases start from, loaded in the engine at first.
    base: PathBuf,
    file: GgufFile,
    dir: tempfile::TempDir,
}

impl Fuzz {
    /// Fuzzes the converted tiny model as it is (`full`), or with its vocabulary cut to [`FUZZ_VOCAB`] tokens.
    async fn new(full: bool) -> Self {
        let converted = converted("tiny-phi", OutType::F16);
        // tmpfs where there is one: every case writes a file.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let base = if full {
            converted
        } else {
            let small = dir.path().join("small-vocab.gguf");
            rewrite_gguf(&GgufFile::open(&converted).unwrap(), &small, &small_vocabulary(&converted));
            small
        };
        let file = GgufFile::open(&base).unwrap();
        let engine = engine_with(&base, small_engine_options()).await;
        Self { engine, base, file, dir }
    }

    /// Runs a case; panics with its description if the engine misbehaves. Returns whether the file ran.
    async fn run(&self, index: usize, case: &[Mutation]) -> bool {
        let path = self.dir.path().join("case.gguf");
        rewrite_gguf(&self.file, &path, &apply(case, &self.file));
        match load_and_decode(&self.engine, &path).await {
            Ok(ran) => ran,
            Err(problem) => panic!("case {index} {case:?}: {problem}"),
        }
    }
}

/// The edit that cuts the tiny model's vocabulary to its first [`FUZZ_VOCAB`] tokens: GPT-2's first 256 tokens are
/// the bytes and merge `i` makes token `256 + i`, so the first merges are kept; the embeddings and the output layer
/// shrink with it.
fn small_vocabulary(converted: &Path) -> GgufEdit {
    let file = GgufFile::open(converted).unwrap();
    let strings = |key: &str| file.get(key).and_then(|v| v.as_array()).and_then(|a| a.as_strings()).unwrap().to_vec();
    let types = file.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()).and_then(|a| a.as_i32s()).unwrap();
    let n = FUZZ_VOCAB as u64;
    let last = MetadataValue::U32(FUZZ_VOCAB as u32 - 1);
    let tokens = strings("tokenizer.ggml.tokens")[..FUZZ_VOCAB].to_vec();
    let merges = strings("tokenizer.ggml.merges")[..FUZZ_VOCAB - 256].to_vec();
    GgufEdit {
        set: vec![
            ("tokenizer.ggml.tokens".into(), MetadataValue::Array(MetadataArray::String(tokens))),
            (
                "tokenizer.ggml.token_type".into(),
                MetadataValue::Array(MetadataArray::I32(types[..FUZZ_VOCAB].to_vec())),
            ),
            ("tokenizer.ggml.merges".into(), MetadataValue::Array(MetadataArray::String(merges))),
            ("tokenizer.ggml.bos_token_id".into(), last.clone()),
            ("tokenizer.ggml.eos_token_id".into(), last.clone()),
            ("tokenizer.ggml.unknown_token_id".into(), last),
        ],
        reshape: vec![
            ("token_embd.weight".into(), vec![64, n]),
            ("output.weight".into(), vec![64, n]),
            ("output.bias".into(), vec![n]),
        ],
        ..GgufEdit::default()
    }
}

#[tokio::test]
async fn each_reported_file_is_refused_by_name() {
    let fuzz = Fuzz::new(true).await;
    let path = fuzz.dir.path().join("reported.gguf");
    let set = |key: &str, value: MetadataValue| vec![Mutation::Set(key.to_owned(), value)];
    let reported: Vec<(Vec<Mutation>, &str)> = vec![
        (set("phi2.block_count", MetadataValue::U32(0)), "`phi2.block_count` is 0"),
        (set("phi2.block_count", MetadataValue::U32(1000)), "`phi2.block_count` is 1000"),
        (set("phi2.block_count", MetadataValue::U32(1 << 31)), "`phi2.block_count` is 2147483648"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(1)), "`phi2.rope.dimension_count` is 1"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(3)), "`phi2.rope.dimension_count` is 3"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(17)), "at most the head size 16"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(64)), "`phi2.rope.dimension_count` is 64"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(1000)), "`phi2.rope.dimension_count` is 1000"),
        (set("phi2.rope.dimension_count", MetadataValue::U32(0)), "`phi2.rope.dimension_count` is 0"),
        (set("phi2.attention.layer_norm_epsilon", MetadataValue::F32(f32::NAN)), "layer_norm_epsilon` is NaN"),
        (set("phi2.attention.layer_norm_epsilon", MetadataValue::F32(-1e-5)), "layer_norm_epsilon` is -0.00001"),
        (set("phi2.context_length", MetadataValue::U32(1 << 31)), "`phi2.context_length` is 2147483648"),
        (set("general.architecture", MetadataValue::String("llama".into())), "unsupported architecture `llama`"),
        (set("general.architecture", MetadataValue::String("bert".into())), "unsupported architecture `bert`"),
        (set("general.architecture", MetadataValue::String("phi3".into())), "unsupported architecture `phi3`"),
    ];
    for (case, expected) in reported {
        rewrite_gguf(&fuzz.file, &path, &apply(&case, &fuzz.file));
        let error = fuzz.engine.load_model(&path, None).await.unwrap_err();
        assert!(matches!(error, EngineError::InvalidModel { .. }), "{case:?}: {error:?}");
        assert!(error.to_string().contains(expected), "{case:?}: `{error}` does not say `{expected}`");
        // The working model stays loaded and serving.
        let tokens = fuzz.engine.generate(greedy_request(0, &[4299, 751], 2)).finish().await.unwrap().tokens;
        assert_eq!(tokens.len(), 2);
    }
    // A llama GGUF with llama's own keys is refused too, not run.
    let renamed: Vec<Mutation> = fuzz
        .file
        .metadata()
        .filter_map(|(key, value)| key.strip_prefix("phi2.").map(|rest| (rest.to_owned(), value.clone())))
        .flat_map(|(rest, value)| {
            [Mutation::Remove(format!("phi2.{rest}")), Mutation::Set(format!("llama.{rest}"), value)]
        })
        .chain([Mutation::Set("general.architecture".into(), MetadataValue::String("llama".into()))])
        .collect();
    rewrite_gguf(&fuzz.file, &path, &apply(&renamed, &fuzz.file));
    let error = fuzz.engine.load_model(&path, None).await.unwrap_err();
    assert!(error.to_string().contains("unsupported architecture `llama`"), "{error}");
}

#[tokio::test]
async fn seeded_fuzz_load_and_decode() {
    let cases: usize = std::env::var("PHI_TUI_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    let seed: u64 = std::env::var("PHI_TUI_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED);
    let fuzz = Fuzz::new(false).await;
    let systematic = systematic_cases(&fuzz.file);
    let mut rng = Rng::new(seed);
    let (mut ran, mut refused) = (0, 0);
    let started = std::time::Instant::now();
    for index in 0..cases {
        let case = match systematic.get(index) {
            Some(case) => case.clone(),
            None => random_case(&mut rng, &systematic, &fuzz.file),
        };
        if fuzz.run(index, &case).await {
            ran += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "{cases} cases (seed {seed}): {ran} loaded and decoded, {refused} refused by name, in {:.1?}",
        started.elapsed()
    );
    assert!(ran >= 2, "the consistent edits must load and decode");
    // After all that, the original still loads and serves.
    fuzz.engine.load_model(&fuzz.base, None).await.unwrap();
    let tokens = fuzz.engine.generate(greedy_request(0, &PROMPT, 2)).finish().await.unwrap().tokens;
    assert_eq!(tokens.len(), 2);
}
