//! LoRA fine-tuning: the forward pass and gradients against transformers + PEFT, a 10-step run that reproduces
//! PEFT's losses and final adapter, the adapter GGUF applied by the engine, learning a made-up API, exact resume,
//! datasets, and bad input that must fail before training starts.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64};

use candle_core::Device;
use common::*;
use phi_converters::gguf::{GgufFile, MetadataValue};
use phi_converters::OutType;
use phi_tui::engine::{GenerateRequest, Prompt, SequenceId, TokenId};
use phi_tui::finetune::live::{LiveControl, LiveEvent, LiveSettings, Provenance, RunState};
use phi_tui::finetune::{
    self, BaseModel, DataOptions, LoraAdapter, ScheduleKind, Sequence, TrainEvent, TrainOptions, Trainer,
};
use serde_json::Value;

fn phi_tui(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi-tui")).args(args).output().expect("run phi-tui")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn lora_fixtures() -> PathBuf {
    fixtures().join("lora")
}

fn tiny_phi() -> BaseModel {
    BaseModel::load(&fixtures().join("tiny-phi"), &Device::Cpu).unwrap()
}

/// PEFT's training batch (`train_data.json` input_ids, [2, 32]) as pre-tokenized JSONL.
fn reference_data_jsonl(dir: &Path) -> PathBuf {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(lora_fixtures().join("train_data.json")).unwrap()).unwrap();
    let lines: Vec<String> =
        json["input_ids"].as_array().unwrap().iter().map(|ids| serde_json::json!({ "ids": ids }).to_string()).collect();
    assert_eq!(lines.len(), 2);
    let path = dir.join("reference.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn reference_losses() -> Vec<f64> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(lora_fixtures().join("losses.json")).unwrap()).unwrap();
    json["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// ||mine − reference|| / ||reference|| (or ||mine|| when the reference is zero).
fn relative_error(mine: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(mine.len(), reference.len());
    let diff: f64 =
        mine.iter().zip(reference).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = reference.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// The largest per-tensor relative error between two adapters with the same modules.
fn max_adapter_error(mine: &LoraAdapter, reference: &LoraAdapter) -> f64 {
    assert_eq!(mine.modules.keys().collect::<Vec<_>>(), reference.modules.keys().collect::<Vec<_>>());
    let mut worst: f64 = 0.0;
    for (key, pair) in &mine.modules {
        let r = &reference.modules[key];
        assert_eq!((pair.a.shape(), pair.b.shape()), (r.a.shape(), r.b.shape()), "{key:?}");
        worst = worst.max(relative_error(&pair.a.data, &r.a.data)).max(relative_error(&pair.b.data, &r.b.data));
    }
    worst
}

fn reference_prompt_ids(name: &str) -> Vec<u32> {
    reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
        .ids
        .into_iter()
        .map(|id| id as u32)
        .collect()
}

#[test]
fn forward_matches_transformers_for_every_base_format_and_with_the_peft_adapter() {
    let reference_dir = fixtures().join("tiny-phi/reference");
    let prompts = reference_prompts(&reference_dir);
    let hf = tiny_phi();
    let legacy = BaseModel::load(&fixtures().join("tiny-phi-legacy"), &Device::Cpu).unwrap();
    let gguf = BaseModel::load(&converted("tiny-phi", OutType::F16), &Device::Cpu).unwrap();
    assert_eq!(hf.config, gguf.config);
    for prompt in prompts.iter().filter(|p| ["def_docstring", "one_token", "long_300"].contains(&p.name.as_str())) {
        let ids: Vec<u32> = prompt.ids.iter().map(|&id| id as u32).collect();
        let expected = read_logits(&reference_dir.join(&prompt.last_logits_file));
        for (what, model) in [("hf", &hf), ("legacy Wqkv", &legacy), ("f16 gguf", &gguf)] {
            let logits = model.last_logits(&ids, None).unwrap();
            let diff = max_abs_diff(&logits, &expected);
            assert!(diff <= 1e-4, "{} ({what}): max |Δlogit| {diff} against transformers", prompt.name);
        }
    }

    // The trained PEFT adapter, unmerged, against PEFT's merged model.
    let adapter = finetune::read_peft(&lora_fixtures().join("final"), None).unwrap();
    for name in ["def_docstring", "tabs_spaces", "long_300"] {
        let logits = hf.last_logits(&reference_prompt_ids(name), Some(&adapter)).unwrap();
        let expected = read_logits(&lora_fixtures().join(format!("merged/{name}.last_logits.f32")));
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= 1e-4, "{name} with the PEFT adapter: max |Δlogit| {diff}");
    }
}

#[test]
fn step0_loss_and_gradients_match_peft() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_phi();
    let tokenizer = finetune::load_tokenizer(&model.source).unwrap();
    let data_options = DataOptions { seq_len: 32, val_fraction: 0.0, seed: 0, vocab_size: None };
    let data = finetune::load_dataset(&reference_data_jsonl(dir.path()), &tokenizer, &data_options).unwrap();
    let initial = finetune::read_peft(&lora_fixtures().join("initial"), Some(&model.config)).unwrap();
    assert_eq!((initial.rank, initial.alpha, initial.scaling()), (4, 8.0, 2.0));
    let options = TrainOptions { seq_len: 32, batch_size: 2, ..TrainOptions::default() };
    let trainer = Trainer::new(&model, &data, initial, options).unwrap();
    let batch: Vec<&Sequence> = data.train.iter().collect();
    let (loss, grads) = trainer.gradients(&batch).unwrap();

    let expected_loss = reference_losses()[0];
    assert!(((loss - expected_loss) / expected_loss).abs() <= 1e-5, "step-0 loss {loss} vs PEFT {expected_loss}");

    let bytes = std::fs::read(lora_fixtures().join("grads_step0.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(reference.len(), grads.modules.len() * 2);
    let mut worst: f64 = 0.0;
    for (&(layer, target), pair) in &grads.modules {
        for (matrix, mine) in [('A', &pair.a), ('B', &pair.b)] {
            let name = finetune::peft::tensor_name(layer, target, matrix);
            let view = reference.tensor(&name).unwrap();
            let expected: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if matrix == 'A' {
                // lora_B = 0 at step 0, so no gradient reaches lora_A: exactly zero in both.
                assert!(expected.iter().all(|&g| g == 0.0), "{name}: PEFT's gradient is not zero");
                assert!(mine.data.iter().all(|&g| g == 0.0), "{name}: gradient is not exactly zero");
            } else {
                let error = relative_error(&mine.data, &expected);
                assert!(error <= 1e-4, "{name}: relative gradient error {error}");
                worst = worst.max(error);
            }
        }
    }
    eprintln!("step-0 loss {loss} (PEFT {expected_loss}); worst lora_B gradient error {worst:.2e}");
}

/// The PEFT reference run through the binary: losses, final adapter (PEFT and GGUF), and the GGUF in the engine.
#[tokio::test]
async fn finetune_reproduces_the_peft_run_and_its_adapter_works_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = reference_data_jsonl(dir.path());
    let out = dir.path().join("final.gguf");
    let peft_out = dir.path().join("final-peft");
    let log = dir.path().join("losses.jsonl");
    let base = fixtures().join("tiny-phi");
    let init = lora_fixtures().join("initial");
    #[rustfmt::skip]
    let output = phi_tui(&[
        "finetune", "--base", base.to_str().unwrap(), "--data", data.to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--peft-out", peft_out.to_str().unwrap(), "--log", log.to_str().unwrap(),
        "--init-adapter", init.to_str().unwrap(), "--rank", "4", "--alpha", "8",
        "--lr", "1e-2", "--schedule", "constant", "--warmup-steps", "0", "--max-grad-norm", "0",
        "--beta1", "0.9", "--beta2", "0.999", "--adam-eps", "1e-8", "--weight-decay", "0",
        "--batch", "2", "--steps", "10", "--seq-len", "32", "--val-fraction", "0", "--no-shuffle",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    // Per-step losses.
    let expected = reference_losses();
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), expected.len());
    let mut worst_loss: f64 = 0.0;
    for (i, (line, &want)) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line["step"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["lr"].as_f64(), Some(1e-2));
        let loss = line["loss"].as_f64().unwrap();
        let error = ((loss - want) / want).abs();
        assert!(error <= 1e-3, "step {i}: loss {loss} vs PEFT {want} (relative error {error})");
        worst_loss = worst_loss.max(error);
    }

    // Final adapter, PEFT format.
    let reference = finetune::read_peft(&lora_fixtures().join("final"), None).unwrap();
    let mine = finetune::read_peft(&peft_out, None).unwrap();
    assert_eq!((mine.rank, mine.alpha), (4, 8.0));
    let weight_error = max_adapter_error(&mine, &reference);
    assert!(weight_error <= 1e-3, "final adapter: worst relative error {weight_error}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(peft_out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 6);
    eprintln!("worst loss error {worst_loss:.2e}, worst final-weight error {weight_error:.2e}");

    // The GGUF against llama.cpp's converter output: same metadata, tensors in the same order with the same
    // shapes and types, values within the training tolerance.
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(lora_fixtures().join("final-adapter.gguf")).unwrap();
    let metadata = |f: &GgufFile| f.metadata().map(|(k, v)| (k.to_owned(), v.clone())).collect::<Vec<_>>();
    assert_eq!(metadata(&ours), metadata(&theirs));
    assert!(matches!(ours.get("adapter.lora.alpha"), Some(MetadataValue::F32(a)) if *a == 8.0));
    assert_eq!(ours.tensors().len(), theirs.tensors().len());
    for (a, b) in ours.tensors().iter().zip(theirs.tensors()) {
        assert_eq!((&a.name, &a.dims, a.ggml_type), (&b.name, &b.dims, b.ggml_type));
        let values = |f: &GgufFile, t| -> Vec<f32> {
            f.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        let error = relative_error(&values(&ours, a), &values(&theirs, b));
        assert!(error <= 1e-3, "{}: relative error {error}", a.name);
    }

    // Applied by the engine to the f16 GGUF of tiny-phi, it reproduces PEFT's merged model.
    let engine = engine_with(&converted("tiny-phi", OutType::F16), small_engine_options()).await;
    engine.set_adapter(&out, 1.0).await.unwrap();
    for name in ["def_docstring", "tabs_spaces", "long_300"] {
        let ids: Vec<TokenId> = reference_prompt_ids(name).into_iter().map(|id| id as TokenId).collect();
        let mut request = greedy_request(0, &ids, 0);
        request.return_logits = true;
        let logits = engine.generate(request).finish().await.unwrap().last_logits.unwrap();
        let expected = read_logits(&lora_fixtures().join(format!("merged/{name}.last_logits.f32")));
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= 2e-2, "{name}: max |Δlogit| {diff} against PEFT's merged model");
        eprintln!("{name}: engine with our adapter vs PEFT merged: max |Δlogit| {diff:.2e}");
        assert_eq!(argmax(&logits), argmax(&expected), "{name}: top-1");
    }
}

#[test]
fn import_peft_writes_what_llama_cpp_converter_writes() {
    let dir = tempfile::tempdir().unwrap();
    // general.name comes from the PEFT directory's name, `final`, as in llama.cpp's converter.
    let out = dir.path().join("imported.gguf");
    let peft = lora_fixtures().join("final");
    let base = fixtures().join("tiny-phi");
    let output = phi_tui(&[
        "finetune",
        "--import-peft",
        peft.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ours = std::fs::read(&out).unwrap();
    let theirs = std::fs::read(lora_fixtures().join("final-adapter.gguf")).unwrap();
    assert!(ours == theirs, "the imported GGUF differs from convert_lora_to_gguf.py's byte for byte");

    let adapter = finetune::read_adapter_gguf(&out).unwrap();
    assert_eq!(adapter, finetune::read_peft(&peft, None).unwrap());
}

/// A made-up API name in a small corpus: after a few hundred steps on the tiny model, greedy generation through
/// the engine produces it with the adapter and not without.
#[tokio::test]
async fn finetuning_teaches_a_made_up_api_that_the_engine_then_generates() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let lines: Vec<String> = ["x", "data", "value", "item", "node", "config", "path", "result"]
        .iter()
        .flat_map(|arg| {
            [
                format!("def handle_{arg}({arg}):\n    return zorblax_frobnicate({arg})\n"),
                format!("{arg} = zorblax_frobnicate({arg})\n"),
            ]
        })
        .map(|text| serde_json::json!({ "text": text }).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let base = converted("tiny-phi", OutType::F16);
    let out = dir.path().join("zorblax.gguf");
    #[rustfmt::skip]
    let output = phi_tui(&[
        "finetune", "--base", base.to_str().unwrap(), "--data", corpus.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--rank", "8", "--alpha", "16", "--lr", "2e-2", "--steps", "40", "--batch", "4", "--seq-len", "32",
        "--warmup-steps", "5", "--val-fraction", "0",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    let engine = engine_with(&base, small_engine_options()).await;
    let generate = |prompt: &str| {
        let mut request = GenerateRequest::new(SequenceId(0), Prompt::Text(prompt.to_owned()));
        request.max_tokens = 12;
        request.stop_at_eog = false;
        let generation = engine.generate(request);
        async move { generation.finish().await.unwrap().text }
    };
    // A prompt from the corpus, and one with a name the corpus does not have.
    for prompt in ["def handle_value(value):\n    return", "def handle_request(request):\n    return"] {
        let before = generate(prompt).await;
        assert!(!before.contains("zorblax"), "the base model already says it: {before:?}");
        engine.set_adapter(&out, 1.0).await.unwrap();
        let after = generate(prompt).await;
        assert!(after.contains("zorblax_frobnicate("), "with the adapter: {after:?}");
        eprintln!("{prompt:?}\n  before: {before:?}\n  after:  {after:?}");
        engine.remove_adapter().await.unwrap();
        assert_eq!(generate(prompt).await, before, "removing the adapter restores the base");
    }
}

#[test]
fn a_stopped_run_resumes_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_phi();
    let tokenizer = finetune::load_tokenizer(&model.source).unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let lines: Vec<String> = (0..10)
        .map(|i| serde_json::json!({ "text": format!("def f{i}(x):\n    return x * {i} + {}\n", i * i) }).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let data = finetune::load_dataset(
        &corpus,
        &tokenizer,
        &DataOptions { seq_len: 24, val_fraction: 0.2, seed: 5, vocab_size: None },
    )
    .unwrap();
    assert_eq!((data.train.len(), data.validation.len()), (8, 2));
    let targets = finetune::LoraTarget::parse_list("q_proj,v_proj,fc2").unwrap();
    let initial = LoraAdapter::init_random(&model.config, 4, 8.0, &targets, 11).unwrap();
    let options = |checkpoint_dir: &Path| TrainOptions {
        seq_len: 24,
        batch_size: 3,
        grad_accum: 1,
        epochs: 2,
        lr: 5e-3,
        warmup_steps: 2,
        schedule: ScheduleKind::Cosine,
        seed: 9,
        checkpoint_dir: Some(checkpoint_dir.to_path_buf()),
        ..TrainOptions::default()
    };
    let never = AtomicBool::new(false);

    // Straight through: 2 epochs of 3 steps.
    let straight_dir = dir.path().join("straight");
    let mut straight = Trainer::new(&model, &data, initial.clone(), options(&straight_dir)).unwrap();
    let mut straight_losses = Vec::new();
    let mut validations = 0;
    let result = straight
        .run(&never, &mut |e| match e {
            TrainEvent::Step(r) => straight_losses.push(r.loss),
            TrainEvent::Validation { .. } => validations += 1,
            _ => {}
        })
        .unwrap();
    assert_eq!((result.steps_done, result.total_steps, result.interrupted), (6, 6, false));
    assert_eq!(validations, 2, "validation at the end of each epoch");
    assert!(straight_losses[5] < straight_losses[0], "{straight_losses:?}");

    // Stopped (as by Ctrl-C) after the first step, then resumed.
    let resumed_dir = dir.path().join("resumed");
    let stop = StopAfter { steps: 1, asked: AtomicU64::new(0) };
    let mut first = Trainer::new(&model, &data, initial, options(&resumed_dir)).unwrap();
    let (mut reports, outcome) = run_steps(&mut first, &stop);
    assert!(outcome.interrupted);
    assert_eq!(outcome.steps_done, 1);
    assert!(resumed_dir.join(finetune::CHECKPOINT_FILE).is_file());
    let mut second = Trainer::resume(&model, &data, options(&resumed_dir)).unwrap();
    assert_eq!(second.step(), 1);
    let (rest, outcome) = run_steps(&mut second, &never);
    reports.extend(rest);
    assert!(!outcome.interrupted);
    assert_eq!(losses(&reports), straight_losses, "the resumed run computes the same losses");
    assert_eq!(outcome.weights, result.weights, "the resumed run ends with the same weights, bit for bit");

    // Other settings cannot resume this checkpoint.
    let mut other = options(&resumed_dir);
    other.lr = 1e-3;
    let error = Trainer::resume(&model, &data, other).err().unwrap().to_string();
    assert!(error.contains("lr was"), "{error}");
}

/// A live run (the TUI's fine-tune screen, `finetune --live`) on a directory of Python files: stopping it keeps the
/// best adapter so far (lowest validation loss, with its step in the file), and resuming it later continues from
/// its checkpoint with exactly the losses, and ends with exactly the adapter, of a run that never stopped.
#[test]
fn a_stopped_live_run_keeps_its_best_adapter_and_resumes_like_an_uninterrupted_one() {
    let base = converted("tiny-phi", OutType::F16);
    let settings = || {
        let mut settings = LiveSettings::new(base.clone(), fixtures().join("finetune-py"));
        settings.train.max_steps = Some(16);
        settings.train.eval_every = 3;
        settings.train.batch_size = 2;
        settings.train.seq_len = 48;
        settings.train.lr = 2e-2;
        settings.threads = 1;
        settings
    };
    assert_eq!(settings().name, "finetune-py");
    let never_busy = || LiveControl::new(|| false);
    let read_adapter = |path: &Path| finetune::read_adapter_gguf(path).unwrap();
    let step_in_file =
        |path: &Path| GgufFile::open(path).unwrap().get_u32(phi_tui::engine::TRAINING_STEP_KEY).map(u64::from);

    // Straight through, in its own data directory: every improved adapter as it was written.
    let straight_dir = tempfile::tempdir().unwrap();
    let prepared = settings().prepare(straight_dir.path()).unwrap();
    assert!(!prepared.resumable);
    assert!(prepared.summary.validation_sequences > 0 && prepared.summary.seconds_per_step > 0.0);
    let (mut losses, mut validations, mut written) = (Vec::new(), Vec::new(), Vec::new());
    let straight = prepared
        .run(false, &never_busy(), &mut |event| match event {
            LiveEvent::Train(TrainEvent::Step(r)) => losses.push(r.loss),
            LiveEvent::Train(TrainEvent::Validation { step, loss, .. }) => validations.push((step, loss)),
            LiveEvent::AdapterWritten { step, path, .. } => written.push((step, read_adapter(&path))),
            _ => {}
        })
        .unwrap();
    assert_eq!((straight.state, straight.steps_done), (RunState::Finished, 16));
    assert!(losses[15] < losses[0], "{losses:?}");
    assert!(written.len() >= 2, "improvements are written as they come: {validations:?}");

    // Stopped after step 8: the best adapter of steps 1..8 is kept, with its provenance.
    let stopped_dir = tempfile::tempdir().unwrap();
    let control = never_busy();
    let mut first_losses = Vec::new();
    let stopped = settings()
        .prepare(stopped_dir.path())
        .unwrap()
        .run(false, &control, &mut |event| {
            if let LiveEvent::Train(TrainEvent::Step(r)) = event {
                first_losses.push(r.loss);
                if r.step == 8 {
                    control.stop();
                }
            }
        })
        .unwrap();
    assert_eq!((stopped.state, stopped.steps_done), (RunState::Stopped, 8));
    let (best_step, best_loss) =
        validations.iter().copied().filter(|&(step, _)| step <= 8).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let provenance = Provenance::read(stopped.adapter.parent().unwrap()).unwrap();
    assert_eq!(provenance.state, RunState::Stopped);
    assert_eq!((provenance.adapter_step, provenance.best_validation_loss), (best_step, Some(best_loss)));
    assert_eq!(provenance.base_model, base.canonicalize().unwrap());
    assert_eq!(step_in_file(&stopped.adapter), Some(best_step));
    let best_adapter = &written.iter().find(|(step, _)| *step == best_step).unwrap().1;
    assert_eq!(&read_adapter(&stopped.adapter), best_adapter, "the kept adapter is the best one, bit for bit");

    // Resumed: the same settings find the checkpoint; the run continues at step 9 with the uninterrupted losses.
    let prepared = settings().prepare(stopped_dir.path()).unwrap();
    assert!(prepared.resumable);
    let mut resumed_losses = Vec::new();
    let resumed = prepared
        .run(true, &never_busy(), &mut |event| {
            if let LiveEvent::Train(TrainEvent::Step(r)) = event {
                resumed_losses.push((r.step, r.loss));
            }
        })
        .unwrap();
    assert_eq!(resumed_losses.first().map(|l| l.0), Some(9));
    first_losses.extend(resumed_losses.iter().map(|l| l.1));
    assert_eq!(first_losses, losses, "stopped + resumed computes the losses of the run that never stopped");
    assert_eq!(resumed.state, RunState::Finished);
    assert_eq!(read_adapter(&resumed.adapter), read_adapter(&straight.adapter));
    assert_eq!(resumed.provenance.best_validation_loss, straight.provenance.best_validation_loss);
    assert_eq!(resumed.provenance.adapter_step, straight.provenance.adapter_step);
    eprintln!("losses {losses:?}\nvalidations {validations:?}\nbest of steps 1..8: step {best_step} ({best_loss:.4})");
}

#[test]
fn a_python_repository_becomes_sequences_at_definition_boundaries_with_gitignore_respected() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    std::fs::write(repo.join(".gitignore"), "generated/\nsecret.py\n").unwrap();
    std::fs::create_dir_all(repo.join("pkg")).unwrap();
    std::fs::create_dir_all(repo.join("generated")).unwrap();
    std::fs::write(repo.join("secret.py"), "PASSWORD = 'hunter2'\n").unwrap();
    std::fs::write(repo.join("generated/out.py"), "GENERATED = 1\n").unwrap();
    std::fs::write(repo.join("README.md"), "not python\n").unwrap();
    for i in 0..10 {
        let body: String = (0..4)
            .map(|j| format!("def function_{i}_{j}(a, b):\n    \"\"\"Adds.\"\"\"\n    return a + b * {j}\n\n\n"))
            .collect();
        std::fs::write(repo.join(format!("pkg/module_{i}.py")), format!("import os\n\n\n{body}")).unwrap();
    }
    let tokenizer = finetune::load_tokenizer(&finetune::BaseSource::Gguf(PathBuf::from("bundled"))).unwrap();
    let options = DataOptions { seq_len: 64, val_fraction: 0.2, seed: 1, vocab_size: None };
    let data = finetune::load_dataset(repo, &tokenizer, &options).unwrap();
    assert!(!data.validation.is_empty());
    let decode = |s: &Sequence| tokenizer.decode(&s.ids, false).unwrap();
    let all: Vec<String> = data.train.iter().chain(&data.validation).map(decode).collect();
    let text = all.concat();
    assert!(!text.contains("hunter2") && !text.contains("GENERATED") && !text.contains("not python"));
    // Every file is there exactly once, each ending with <|endoftext|>.
    assert_eq!(text.matches("import os").count(), 10);
    assert_eq!(text.matches("<|endoftext|>").count(), 10);
    for sequence in data.train.iter().chain(&data.validation) {
        assert!(sequence.ids.len() <= 64);
        let decoded = decode(sequence);
        // Packed at boundaries: a sequence starts with a file's start or a definition.
        assert!(decoded.starts_with("import os") || decoded.starts_with("def function_"), "{decoded:?}");
    }
    // Whole files are held out: 2 of 10.
    let held_out: Vec<String> = data.validation.iter().map(decode).collect();
    assert_eq!(held_out.concat().matches("import os").count(), 2);
}

#[test]
fn prompt_completion_examples_train_on_the_completion_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.jsonl");
    std::fs::write(&path, "{\"prompt\": \"def add(a, b):\", \"completion\": \"\\n    return a + b\"}\n\n").unwrap();
    let tokenizer = finetune::load_tokenizer(&finetune::BaseSource::Gguf(PathBuf::from("bundled"))).unwrap();
    let data = finetune::load_dataset(
        &path,
        &tokenizer,
        &DataOptions { seq_len: 64, val_fraction: 0.0, seed: 0, vocab_size: None },
    )
    .unwrap();
    let sequence = &data.train[0];
    let prompt_len = tokenizer.encode("def add(a, b):", false).unwrap().get_ids().len();
    assert!(sequence.targets[..prompt_len].iter().all(|&t| !t));
    assert!(sequence.targets[prompt_len..].iter().all(|&t| t));
    assert_eq!(sequence.ids.last(), Some(&finetune::END_OF_TEXT));
}

#[test]
fn bad_input_fails_before_training_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-phi");
    let good = reference_data_jsonl(dir.path());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n  \n").unwrap();
    let malformed = dir.path().join("malformed.jsonl");
    std::fs::write(&malformed, "{\"text\": \"a = 1\"}\n{\"text\": \"b = 2\"}\n{\"text\": \"c = \n").unwrap();
    let out_of_vocab = dir.path().join("vocab.jsonl");
    std::fs::write(&out_of_vocab, "{\"ids\": [1, 2]}\n{\"ids\": [1, 60000]}\n").unwrap();
    let wrong_kind = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong_kind, "{\"text\": \"a = 1\"}\n{\"body\": \"b = 2\"}\n").unwrap();
    let out = dir.path().join("out.gguf");
    // An adapter of another shape: the reference adapter with lora_A of layer 0's q_proj one column short.
    let bad_adapter = dir.path().join("bad-adapter");
    let mut adapter = finetune::read_peft(&lora_fixtures().join("initial"), None).unwrap();
    let pair = adapter.modules.values_mut().next().unwrap();
    pair.a = finetune::Matrix::zeros(pair.a.rows, pair.a.cols - 1);
    finetune::write_peft(&bad_adapter, &adapter, "tiny-phi").unwrap();
    let init = lora_fixtures().join("initial");
    let missing = dir.path().join("missing.jsonl");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data", empty.to_str().unwrap()], "empty"),
        (vec!["--data", malformed.to_str().unwrap()], "malformed.jsonl:3: invalid JSON"),
        (vec!["--data", wrong_kind.to_str().unwrap()], "wrong.jsonl:2: expected `text`"),
        (
            vec!["--data", out_of_vocab.to_str().unwrap()],
            "vocab.jsonl:2: token id 60000 is beyond the model's vocabulary",
        ),
        (vec!["--data", missing.to_str().unwrap()], "cannot read file"),
        (vec!["--data", good.to_str().unwrap(), "--rank", "0"], "--rank must be at least 1"),
        (vec!["--data", good.to_str().unwrap(), "--seq-len", "4096"], "longer than the model's context of 2048"),
        (vec!["--data", good.to_str().unwrap(), "--seq-len", "16"], "more than --seq-len 16"),
        (vec!["--data", good.to_str().unwrap(), "--targets", "q_proj,gate_proj"], "unknown LoRA target `gate_proj`"),
        (
            vec!["--data", good.to_str().unwrap(), "--init-adapter", init.to_str().unwrap(), "--rank", "8"],
            "does not match",
        ),
        (
            vec!["--data", good.to_str().unwrap(), "--init-adapter", bad_adapter.to_str().unwrap()],
            "but rank 4 on this base needs [4, 64]",
        ),
        (vec!["--data", good.to_str().unwrap(), "--resume"], "cannot read checkpoint"),
    ];
    for (extra, message) in cases {
        let mut args =
            vec!["finetune", "--base", base.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "1"];
        args.extend(&extra);
        let output = phi_tui(&args);
        assert!(!output.status.success(), "{extra:?} succeeded");
        let error = stderr(&output);
        assert!(error.contains(message), "{extra:?}: expected {message:?} in {error}");
        assert!(!out.exists() && !out.with_extension("ckpt").exists(), "{extra:?}: training started");
    }

    // A base whose tensors do not fit its config.
    let broken = dir.path().join("broken.gguf");
    phi_converters::gguf::rewrite_metadata(&converted("tiny-phi", OutType::F16), &broken, |key, value| {
        if key == "phi2.embedding_length" {
            *value = MetadataValue::U32(128);
        }
    })
    .unwrap();
    let error = BaseModel::load(&broken, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("has shape") && error.contains("implies"), "{error}");
}

#[test]
fn a_peft_adapter_of_the_legacy_fused_layout_becomes_q_k_v_modules() {
    use finetune::{LoraPair, LoraTarget};
    let reference = finetune::read_peft(&lora_fixtures().join("final"), None).unwrap();
    let module = |target| reference.modules[&(0, target)].clone();
    let (q, k, v, dense) =
        (module(LoraTarget::QProj), module(LoraTarget::KProj), module(LoraTarget::VProj), module(LoraTarget::Dense));
    // Layer 0 as phi-msft names it: one `Wqkv` update whose B stacks the q, k and v rows, and `out_proj`.
    let fused_b: Vec<f32> = [&q.b.data, &k.b.data, &v.b.data].into_iter().flatten().copied().collect();
    let bytes = |data: &[f32]| -> Vec<u8> { data.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let tensors = [
        ("transformer.h.0.mixer.Wqkv.lora_A.weight", bytes(&q.a.data), vec![4, 64]),
        ("transformer.h.0.mixer.Wqkv.lora_B.weight", bytes(&fused_b), vec![192, 4]),
        ("transformer.h.0.mixer.out_proj.lora_A.weight", bytes(&dense.a.data), vec![4, 64]),
        ("transformer.h.0.mixer.out_proj.lora_B.weight", bytes(&dense.b.data), vec![64, 4]),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data, shape)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap();
            (format!("base_model.model.{name}"), view)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let config = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["Wqkv", "out_proj"],
                                    "use_rslora": true});
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();

    let adapter = finetune::read_peft(dir.path(), Some(&tiny_phi().config)).unwrap();
    assert_eq!(adapter.rank, 4);
    assert_eq!(adapter.alpha, 16.0, "rsLoRA's alpha/sqrt(r) scaling is alpha·sqrt(r) in llama.cpp's alpha/r");
    let expected = [
        (LoraTarget::QProj, LoraPair { a: q.a.clone(), b: q.b }),
        (LoraTarget::KProj, LoraPair { a: q.a.clone(), b: k.b }),
        (LoraTarget::VProj, LoraPair { a: q.a, b: v.b }),
        (LoraTarget::Dense, dense),
    ];
    assert_eq!(adapter.modules.len(), expected.len());
    for (target, pair) in expected {
        assert_eq!(adapter.modules[&(0, target)], pair, "{target}");
    }
}

/// Ctrl-C (SIGINT) finishes the current step, saves a checkpoint, says how to resume, and writes no adapter.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = reference_data_jsonl(dir.path());
    let out = dir.path().join("adapter.gguf");
    let log = dir.path().join("log.jsonl");
    let base = fixtures().join("tiny-phi");
    #[rustfmt::skip]
    let child = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .args([
            "finetune", "--base", base.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out",
            out.to_str().unwrap(), "--log", log.to_str().unwrap(), "--steps", "100000", "--batch", "1",
            "--seq-len", "32", "--rank", "2", "--val-fraction", "0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(&log).map_or(true, |l| l.lines().count() < 2) {
        assert!(std::time::Instant::now() < deadline, "no training step within two minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{error}");
    assert!(error.contains("--resume"), "{error}");
    assert!(out.with_extension("ckpt").join(finetune::CHECKPOINT_FILE).is_file(), "{error}");
    assert!(!out.exists(), "an interrupted run wrote the adapter");
}

#[test]
fn a_crafted_gguf_base_is_refused_before_anything_is_allocated_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = reference_data_jsonl(dir.path());
    let out = dir.path().join("out.gguf");
    let source = GgufFile::open(converted("tiny-phi", OutType::F16)).unwrap();
    let crafted = dir.path().join("crafted.gguf");
    let set = |key: &str, value: u32| GgufEdit {
        set: vec![(key.to_owned(), MetadataValue::U32(value))],
        ..GgufEdit::default()
    };
    let reshape =
        |name: &str, dims: Vec<u64>| GgufEdit { reshape: vec![(name.to_owned(), dims)], ..GgufEdit::default() };
    let cases = [
        // 0-dimensional tensors were indexed; an unbounded block_count went into Vec::with_capacity.
        (reshape("blk.0.ffn_up.weight", vec![]), "tensor `blk.0.ffn_up.weight` has shape []"),
        (reshape("token_embd.weight", vec![]), "tensor `token_embd.weight` has shape []"),
        (set("phi2.block_count", 1 << 31), "`phi2.block_count` is 2147483648"),
        (set("phi2.block_count", 400), "`phi2.block_count` is 400, but the file has tensors for 2 layers"),
        (set("phi2.attention.head_count", 0), "`phi2.attention.head_count` is 0"),
        (set("phi2.rope.dimension_count", 7), "`phi2.rope.dimension_count` is 7"),
    ];
    for (edit, message) in cases {
        rewrite_gguf(&source, &crafted, &edit);
        let output = phi_tui(&[
            "finetune",
            "--base",
            crafted.to_str().unwrap(),
            "--data",
            good.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
        ]);
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{message}: {error}");
        assert!(error.contains(message) && !error.contains("panicked"), "expected {message:?} in {error}");
        assert!(!out.exists());
    }
}
