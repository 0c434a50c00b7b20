//! `phi-tui train` (full training): 10 steps of every weight of tiny-phi against transformers + torch AdamW (losses,
//! gradient norms, learning rates and final weights), the Hugging Face checkpoint it writes read back by the
//! converter and the trainer, exact resume, training from a preset shape, and the trained fixture (stdlib-phi)
//! against the random one through the engine.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64};

use candle_core::Device;
use common::*;
use phi_tui::engine::{GenerateRequest, Prompt, SequenceId};
use phi_tui::finetune::{self, BaseModel, DataOptions, FullParameters, Precision, ScheduleKind, TrainOptions, Trainer};
use serde_json::Value;

fn phi_tui(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi-tui")).args(args).output().expect("run phi-tui")
}

fn reference_dir() -> PathBuf {
    fixtures().join("full-train")
}

/// The reference batch (`lora/train_data.json` input_ids, [2, 32]) as pre-tokenized JSONL.
fn reference_data_jsonl(dir: &Path) -> PathBuf {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora/train_data.json")).unwrap()).unwrap();
    let lines: Vec<String> =
        json["input_ids"].as_array().unwrap().iter().map(|ids| serde_json::json!({ "ids": ids }).to_string()).collect();
    let path = dir.join("reference.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// float32 (or float16) tensors of a safetensors file by name.
fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                safetensors::Dtype::F16 => {
                    view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                other => panic!("{name}: {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// ||mine − reference|| / ||reference||.
fn relative_error(mine: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(mine.len(), reference.len());
    let diff: f64 = mine.iter().zip(reference).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>();
    let norm: f64 = reference.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>();
    (diff / norm).sqrt()
}

fn norm(values: &[f32]) -> f64 {
    values.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn train_reproduces_transformers_full_training_and_writes_a_checkpoint_the_converter_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = reference_data_jsonl(dir.path());
    let out = dir.path().join("trained");
    let log = dir.path().join("log.jsonl");
    let init = fixtures().join("tiny-phi");
    #[rustfmt::skip]
    let output = phi_tui(&[
        "train", "--init", init.to_str().unwrap(), "--data", data.to_str().unwrap(), "-o", out.to_str().unwrap(),
        "--log", log.to_str().unwrap(), "--lr", "1e-3", "--weight-decay", "0.1", "--schedule", "cosine",
        "--warmup-steps", "2", "--max-grad-norm", "1", "--beta1", "0.9", "--beta2", "0.999", "--adam-eps", "1e-8",
        "--batch", "2", "--steps", "10", "--seq-len", "32", "--val-fraction", "0", "--no-shuffle", "--no-pack",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Per step: loss before the update, gradient norm before clipping, learning rate.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("losses.json")).unwrap()).unwrap();
    let column =
        |key: &str| -> Vec<f64> { reference[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    let (mut worst_loss, mut worst_norm): (f64, f64) = (0.0, 0.0);
    for (i, line) in lines.iter().enumerate() {
        let (loss, want) = (line["loss"].as_f64().unwrap(), column("losses")[i]);
        let loss_error = ((loss - want) / want).abs();
        assert!(loss_error <= 1e-3, "step {i}: loss {loss} vs transformers {want}");
        let (grad_norm, want_norm) = (line["grad_norm"].as_f64().unwrap(), column("grad_norms")[i]);
        let norm_error = ((grad_norm - want_norm) / want_norm).abs();
        assert!(norm_error <= 1e-3, "step {i}: gradient norm {grad_norm} vs transformers {want_norm}");
        let (lr, want_lr) = (line["lr"].as_f64().unwrap(), column("lrs")[i]);
        assert!((lr - want_lr).abs() <= 1e-12, "step {i}: lr {lr} vs {want_lr}");
        (worst_loss, worst_norm) = (worst_loss.max(loss_error), worst_norm.max(norm_error));
    }
    assert!(column("losses")[9] < column("losses")[0] - 2.0, "the reference run learns");

    // The final weights, tensor by tensor (transformers names), against torch's.
    let mine = read_tensors(&out.join("model.safetensors"));
    let theirs = read_tensors(&reference_dir().join("final.safetensors"));
    let mut worst_weight: f64 = 0.0;
    for (name, (shape, values)) in &theirs {
        let (my_shape, my_values) = match name.strip_suffix("[batch tokens]") {
            Some(matrix) => {
                let (shape, all) = &mine[matrix];
                let rows: Vec<f32> = reference["batch_token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|id| all[id.as_u64().unwrap() as usize * shape[1]..][..shape[1]].to_vec())
                    .collect();
                (vec![rows.len() / shape[1], shape[1]], rows)
            }
            None => mine[name].clone(),
        };
        assert_eq!(&my_shape, shape, "{name}");
        let error = relative_error(&my_values, values);
        // A key bias shifts every score of a query by nearly the same amount, which softmax ignores (only the
        // rotation of its rotary half tells positions apart): its gradient is tiny, float32 rounding a large part
        // of it, and AdamW's normalised step turns that rounding into ~1e-3 of the weight: torch's own eager and
        // sdpa attention end 1.7e-3 apart there. Every other tensor agrees to ~1e-7.
        let tolerance = if name.ends_with("k_proj.bias") { 1e-2 } else { 1e-4 };
        assert!(error <= tolerance, "{name}: relative error {error} against torch");
        if tolerance < 1e-3 {
            worst_weight = worst_weight.max(error);
        }
    }
    for (name, want) in reference["vocab_matrix_norms"].as_object().unwrap() {
        let have = norm(&mine[name].1);
        let want = want.as_f64().unwrap();
        assert!(((have - want) / want).abs() <= 1e-4, "{name}: norm {have} vs {want}");
    }
    eprintln!(
        "worst relative error: loss {worst_loss:.2e}, gradient norm {worst_norm:.2e}, weight {worst_weight:.2e} \
         (key biases aside)"
    );

    // The checkpoint reads back (converter checks, then the trainer's model) and gives the loss of the trained
    // weights, which transformers measured after the last update.
    let info = phi_converters::inspect(&out).unwrap();
    assert_eq!(info.config.num_layers, 2);
    let trained = BaseModel::load(&out, &Device::Cpu).unwrap();
    let tokenizer = finetune::load_tokenizer(&trained.source).unwrap();
    let options = DataOptions { seq_len: 32, val_fraction: 0.0, seed: 0, vocab_size: Some(51200) };
    let data = finetune::load_dataset(&data, &tokenizer, &options).unwrap();
    let ids: Vec<u32> = data.train[0].ids.clone();
    let logits = trained.last_logits(&ids, None).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    let gguf = dir.path().join("trained.gguf");
    let convert = phi_tui(&["convert", out.to_str().unwrap(), "-o", gguf.to_str().unwrap(), "--outtype", "f32"]);
    assert!(convert.status.success(), "{}", String::from_utf8_lossy(&convert.stderr));
    let from_gguf = BaseModel::load(&gguf, &Device::Cpu).unwrap().last_logits(&ids, None).unwrap();
    assert!(max_abs_diff(&logits, &from_gguf) <= 1e-5);
}

/// bf16 and f16 mixed precision against PyTorch's (`torch.autocast` on the CPU, `GradScaler` for f16; made by the
/// reference script): the same 10 steps as above. float16's rounding is fine enough that the two runs agree far
/// more closely than either agrees with float32, which shows the casts are where autocast puts them; bfloat16 keeps
/// 8 bits, so two correct implementations agree only to about its own distance from float32.
#[test]
fn mixed_precision_training_reproduces_torch_autocast() {
    let dir = tempfile::tempdir().unwrap();
    let data = reference_data_jsonl(dir.path());
    let init = fixtures().join("tiny-phi");
    let float32: Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("losses.json")).unwrap()).unwrap();
    // (precision, tolerance on the loss and the gradient norm, what float32 is from the reference at worst)
    for (precision, tolerance, distance_from_float32) in [("f16", 2e-4, 5e-4), ("bf16", 1e-3, 1e-3)] {
        let out = dir.path().join(precision);
        let log = dir.path().join(format!("{precision}.jsonl"));
        #[rustfmt::skip]
        let output = phi_tui(&[
            "train", "--init", init.to_str().unwrap(), "--data", data.to_str().unwrap(), "-o", out.to_str().unwrap(),
            "--log", log.to_str().unwrap(), "--lr", "1e-3", "--weight-decay", "0.1", "--schedule", "cosine",
            "--warmup-steps", "2", "--max-grad-norm", "1", "--batch", "2", "--steps", "10", "--seq-len", "32",
            "--val-fraction", "0", "--no-shuffle", "--no-pack", "--precision", precision,
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("training in {precision} mixed precision")), "{stderr}");

        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(reference_dir().join(format!("losses-{precision}.json"))).unwrap(),
        )
        .unwrap();
        let column = |doc: &Value, key: &str| -> Vec<f64> {
            doc[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
        };
        let (losses, norms) = (column(&reference, "losses"), column(&reference, "grad_norms"));
        let lines: Vec<Value> =
            std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 10);
        let relative = |a: f64, b: f64| ((a - b) / b).abs();
        let (mut worst_loss, mut worst_norm, mut float32_gap): (f64, f64, f64) = (0.0, 0.0, 0.0);
        for (i, line) in lines.iter().enumerate() {
            let loss = line["loss"].as_f64().unwrap();
            assert!(relative(loss, losses[i]) <= tolerance, "{precision} step {i}: loss {loss} vs torch {}", losses[i]);
            let grad_norm = line["grad_norm"].as_f64().unwrap();
            let norm_error = relative(grad_norm, norms[i]);
            assert!(norm_error <= tolerance, "{precision} step {i}: gradient norm {grad_norm} vs torch {}", norms[i]);
            assert!((line["lr"].as_f64().unwrap() - column(&reference, "lrs")[i]).abs() <= 1e-12);
            // float16 runs log their loss scale (torch's, as no step overflows here); others do not.
            assert_eq!(line["loss_scale"], reference["loss_scales"][i], "{precision} step {i}");
            worst_loss = worst_loss.max(relative(loss, losses[i]));
            worst_norm = worst_norm.max(norm_error);
            float32_gap = float32_gap.max(relative(losses[i], column(&float32, "losses")[i]));
        }
        // The comparison means something only if the precision moved torch's own losses off float32's.
        assert!(float32_gap >= distance_from_float32, "{precision}: torch's run is {float32_gap:.1e} from float32");
        eprintln!(
            "{precision}: worst relative error against torch: loss {worst_loss:.1e}, gradient norm {worst_norm:.1e} \
             (torch's {precision} run is up to {float32_gap:.1e} from float32)"
        );

        // The master weights are what is written: float32, by default, and the converter reads them.
        let tensors = read_tensors(&out.join("model.safetensors"));
        assert_eq!(tensors["lm_head.weight"].0, vec![51200, 64]);
        phi_converters::inspect(&out).unwrap();
    }
}

/// float16's loss scaling, as torch's `GradScaler`: a scale too large for float16 overflows the gradients, the step
/// is skipped (the weights are untouched, so the next step on the same batch has the same loss) and the scale
/// halved until it fits; a run stopped in the middle of that and resumed scales, and so computes, exactly as one
/// that never stopped.
#[test]
fn float16_overflow_skips_steps_and_a_resumed_run_keeps_the_loss_scale() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = finetune::load_tokenizer(&finetune::BaseSource::Fresh).unwrap();
    let data_options = DataOptions { seq_len: 32, val_fraction: 0.0, seed: 0, vocab_size: Some(51200) };
    let data = finetune::load_dataset(&reference_data_jsonl(dir.path()), &tokenizer, &data_options).unwrap();
    let options = |checkpoint_dir: &Path| TrainOptions {
        seq_len: 32,
        batch_size: 2,
        max_steps: Some(10),
        lr: 1e-3,
        shuffle: false,
        checkpoint_dir: Some(checkpoint_dir.to_path_buf()),
        initial_loss_scale: 2f64.powi(21),
        ..TrainOptions::default()
    };
    let model = || {
        let mut model = BaseModel::load(&fixtures().join("tiny-phi"), &Device::Cpu).unwrap();
        let vars = model.make_trainable().unwrap();
        model.set_precision(Precision::F16).unwrap();
        let trained = FullParameters::new(&model, vars).unwrap();
        (model, trained)
    };
    // (loss, loss scale, skipped) of each step: what a resumed run must repeat.
    let steps_of = |trainer: &mut Trainer<'_, FullParameters>, gate: &dyn finetune::StepGate| {
        let (reports, outcome) = run_steps(trainer, gate);
        let steps: Vec<_> = reports.iter().map(|r| (r.loss, r.loss_scale.unwrap(), r.skipped)).collect();
        (steps, outcome)
    };
    let never = AtomicBool::new(false);

    let (straight_model, trained) = model();
    let mut straight = Trainer::new_full(&straight_model, &data, trained, options(&dir.path().join("a"))).unwrap();
    let (reports, straight_outcome) = steps_of(&mut straight, &never);
    let skipped = reports.iter().take_while(|r| r.2).count();
    assert!((2..=5).contains(&skipped), "{reports:?}");
    assert!(reports[skipped..].iter().all(|r| !r.2), "once the scale fits no step overflows: {reports:?}");
    for (i, pair) in reports.windows(2).enumerate() {
        let expected_scale = if pair[0].2 { pair[0].1 / 2.0 } else { pair[0].1 };
        assert_eq!(pair[1].1, expected_scale, "step {i}: {reports:?}");
        if pair[0].2 {
            assert_eq!(pair[1].0, pair[0].0, "a skipped step changes no weight: {reports:?}");
        }
    }
    assert_eq!(reports[0].1, 2f64.powi(21));
    assert!(reports[9].0 < reports[skipped].0 - 0.5, "the run learns once the scale fits: {reports:?}");

    // Stopped after 2 steps (both skipped, the scale halved twice), then resumed in a new trainer.
    let resumed_dir = dir.path().join("b");
    let (first_model, trained) = model();
    let mut first = Trainer::new_full(&first_model, &data, trained, options(&resumed_dir)).unwrap();
    let (mut resumed_reports, outcome) = steps_of(&mut first, &StopAfter { steps: 2, asked: AtomicU64::new(0) });
    assert!(outcome.interrupted);
    let (second_model, trained) = model();
    let mut second = Trainer::resume_full(&second_model, &data, trained, options(&resumed_dir)).unwrap();
    let (rest, resumed_outcome) = steps_of(&mut second, &never);
    resumed_reports.extend(rest);
    assert_eq!(resumed_reports, reports, "the resumed run scales and computes as the uninterrupted one");
    assert!(resumed_outcome.weights == straight_outcome.weights, "and ends with the same weights, bit for bit");

    // A float16 checkpoint does not resume as float32.
    let (f32_model, vars) = {
        let mut model = BaseModel::load(&fixtures().join("tiny-phi"), &Device::Cpu).unwrap();
        let vars = model.make_trainable().unwrap();
        (model, vars)
    };
    let trained = FullParameters::new(&f32_model, vars).unwrap();
    let error = Trainer::resume_full(&f32_model, &data, trained, options(&resumed_dir)).err().unwrap().to_string();
    assert!(error.contains("precision"), "{error}");
}

/// A full-training run stopped after 2 of 5 steps and resumed computes the same losses and ends with the same
/// weights, bit for bit, as one that never stopped; a LoRA run cannot resume it.
#[test]
fn a_stopped_full_training_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data_options = DataOptions { seq_len: 48, val_fraction: 0.25, seed: 3, vocab_size: Some(51200) };
    let tokenizer = finetune::load_tokenizer(&finetune::BaseSource::Fresh).unwrap();
    let mut data = finetune::load_dataset(&fixtures().join("finetune-py"), &tokenizer, &data_options).unwrap();
    data.pack(48);
    let options = |checkpoint_dir: &Path| TrainOptions {
        seq_len: 48,
        batch_size: 2,
        max_steps: Some(5),
        lr: 3e-3,
        warmup_steps: 1,
        schedule: ScheduleKind::Cosine,
        adamw: finetune::AdamWConfig { weight_decay: 0.01, ..Default::default() },
        seed: 5,
        checkpoint_dir: Some(checkpoint_dir.to_path_buf()),
        ..TrainOptions::default()
    };
    let fresh = || {
        let config = finetune::preset("tiny").unwrap();
        let mut model = BaseModel::init_random(config, 0.02, 7, &Device::Cpu).unwrap();
        let vars = model.make_trainable().unwrap();
        (model, vars)
    };
    let never = AtomicBool::new(false);
    let (model, vars) = fresh();
    let straight_dir = dir.path().join("straight");
    let trained = FullParameters::new(&model, vars).unwrap();
    let mut straight = Trainer::new_full(&model, &data, trained, options(&straight_dir)).unwrap();
    let (reports, result) = run_steps(&mut straight, &never);
    let straight_losses = losses(&reports);
    assert!(straight_losses[4] < straight_losses[0], "{straight_losses:?}");

    let resumed_dir = dir.path().join("resumed");
    let (model, vars) = fresh();
    let trained = FullParameters::new(&model, vars).unwrap();
    let mut first = Trainer::new_full(&model, &data, trained, options(&resumed_dir)).unwrap();
    let (mut reports, outcome) = run_steps(&mut first, &StopAfter { steps: 2, asked: AtomicU64::new(0) });
    assert!(outcome.interrupted);
    // A new process: a fresh model whose weights come from the checkpoint.
    let (model, vars) = fresh();
    let trained = FullParameters::new(&model, vars).unwrap();
    let mut second = Trainer::resume_full(&model, &data, trained, options(&resumed_dir)).unwrap();
    assert_eq!(second.step(), 2);
    let (rest, outcome) = run_steps(&mut second, &never);
    reports.extend(rest);
    assert_eq!(losses(&reports), straight_losses, "the resumed run computes the same losses");
    assert!(outcome.weights == result.weights, "the resumed run ends with the same weights, bit for bit");

    let base = BaseModel::load(&fixtures().join("tiny-phi"), &Device::Cpu).unwrap();
    let error = Trainer::resume(&base, &data, options(&resumed_dir)).err().unwrap().to_string();
    assert!(error.contains("full training run"), "{error}");
}

/// From a preset shape on a directory of Python files: the loss falls, and the checkpoint written in float16
/// converts to a GGUF the engine's checks accept.
#[test]
fn train_from_a_preset_learns_and_writes_a_float16_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let log = dir.path().join("log.jsonl");
    let data = fixtures().join("finetune-py");
    #[rustfmt::skip]
    let output = phi_tui(&[
        "train", "--preset", "tiny", "--data", data.to_str().unwrap(), "-o", out.to_str().unwrap(),
        "--log", log.to_str().unwrap(), "--dtype", "f16", "--steps", "12", "--batch", "2", "--seq-len", "64",
        "--lr", "5e-3", "--warmup-steps", "2", "--val-fraction", "0.2",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("validation loss"), "{stderr}");
    let losses: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 12);
    assert!(losses[11] < losses[0] - 1.0, "{losses:?}");
    let tensors = read_tensors(&out.join("model.safetensors"));
    assert_eq!(tensors["lm_head.weight"].0, vec![51200, 64]);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float16");
    let gguf = dir.path().join("model.gguf");
    let convert = phi_tui(&["convert", out.to_str().unwrap(), "-o", gguf.to_str().unwrap()]);
    assert!(convert.status.success(), "{}", String::from_utf8_lossy(&convert.stderr));
    BaseModel::load(&gguf, &Device::Cpu).unwrap();
}

/// Starts of Python code whose continuation must hold at least one indented line to parse.
const PARSE_PROMPTS: [&str; 12] = [
    "def add(a, b):\n",
    "def read_lines(path):\n",
    "class Stack:\n",
    "class Config(object):\n    def __init__(self, name):\n",
    "for item in items:\n",
    "if __name__ == '__main__':\n",
    "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"\n",
    "with open(filename) as f:\n",
    "try:\n",
    "def parse_args(argv=None):\n",
    "while True:\n",
    "def __repr__(self):\n",
];

/// For each (prompt, completion): whether the prompt and the completion's complete lines parse as Python
/// (`ast.parse` in python3), allowing up to two trailing lines dropped (a block cut open by the token limit) as long
/// as a generated line remains.
fn parse_as_python(samples: &[(String, String)]) -> Vec<bool> {
    const CHECK: &str = r#"
import ast, json, sys
def parses(prompt, completion):
    lines = (prompt + completion).split("\n")[:-1]
    for drop in range(3):
        kept = len(lines) - drop
        if kept <= prompt.count("\n"):
            return False
        try:
            ast.parse("\n".join(lines[:kept]) + "\n")
            return True
        except Exception:
            pass
    return False
print(json.dumps([parses(p, c) for p, c in json.load(sys.stdin)]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    serde_json::to_writer(child.stdin.take().unwrap(), samples).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Greedy continuations of [`PARSE_PROMPTS`] through the engine, and the share of them that parse.
async fn parse_rate(model: &Path) -> (f64, Vec<(String, String)>) {
    // The trained fixture's context is 256 tokens.
    let options = phi_tui::engine::EngineOptions { context_size: Some(256), ..small_engine_options() };
    let engine = engine_with(model, options).await;
    let mut samples = Vec::new();
    for prompt in PARSE_PROMPTS {
        let mut request = GenerateRequest::new(SequenceId(0), Prompt::Text(prompt.to_owned()));
        request.max_tokens = 48;
        let text = engine.generate(request).finish().await.unwrap().text;
        samples.push((prompt.to_owned(), text));
    }
    let parsed = parse_as_python(&samples);
    let rate = parsed.iter().filter(|&&p| p).count() as f64 / parsed.len() as f64;
    (rate, samples)
}

/// The trained fixture (tests/fixtures/stdlib-phi, see its README), converted to GGUF and run by the engine, continues Python as Python far more often than
/// the random tiny fixture of the same vocabulary.
#[tokio::test]
async fn the_trained_fixture_writes_python_that_parses_and_the_random_one_does_not() {
    let trained = converted("stdlib-phi", phi_converters::OutType::F16);
    let random = converted("tiny-phi", phi_converters::OutType::F16);
    let (trained_rate, trained_samples) = parse_rate(&trained).await;
    let (random_rate, _) = parse_rate(&random).await;
    eprintln!("parses as Python: trained {trained_rate:.2}, random {random_rate:.2}");
    eprintln!("a trained sample: {:?}", trained_samples[0]);
    assert!(random_rate <= 0.1, "the random model parses {random_rate}");
    assert!(trained_rate >= 0.5 && trained_rate >= random_rate + 0.4, "trained {trained_rate}, random {random_rate}");
}
