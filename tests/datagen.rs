//! `phi-tui datagen` end to end: the real binary with an OpenAI-compatible stub server on loopback as the teacher
//! (canned good and bad samples), and with the converted fixture model as the teacher through the engine.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::openai_stub::OpenAiStub;
use common::*;
use phi_converters::OutType;
use phi_tui::finetune::{load_dataset, DataOptions};
use serde_json::Value;

fn phi_tui(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phi-tui"));
    command.args(args).env_remove("PHI_TUI_TEACHER_API_KEY").env_remove("OPENAI_API_KEY");
    command
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run phi-tui");
    assert!(output.status.success(), "{}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    output
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The value of a `Name: value` line of a datagen prompt.
fn field<'a>(prompt: &'a str, name: &str) -> &'a str {
    prompt.lines().find_map(|line| line.strip_prefix(name)).unwrap_or_default().trim()
}

const FIXED: &str =
    "def count_vowels(text: str) -> int:\n    \"\"\"Count the vowels in a string, ignoring case.\n\n    \
                     >>> count_vowels(\"banana\")\n    3\n    >>> count_vowels(\"\")\n    0\n    >>> \
                     count_vowels(\"AEIOU\")\n    5\n    \"\"\"\n    vowels = \"aeiou\"\n    count = 0\n    for ch in \
                     text.lower():\n        if ch in vowels:\n            count += 1\n    return count\n\n\nassert \
                     count_vowels(\"Sky\") == 0\n";

/// The stub teacher's exercises: mostly good ones made from the prompt's words (so they differ), and each kind of
/// bad one, picked by a hash of the prompt.
fn exercise_reply(prompt: &str) -> String {
    let name = field(prompt, "Words:").replace(", ", "_");
    let topic = field(prompt, "Topic:");
    let code = match fnv(prompt) % 20 {
        0..=9 => format!(
            "def {name}(values: list) -> int:\n    \"\"\"Add up the scores in values, for a lesson on {topic}.\n\n    \
             >>> {name}([1, 2, 3])\n    6\n    >>> {name}([])\n    0\n    \"\"\"\n    total = 0\n    for value in \
             values:\n        total += value\n    return total\n\n\nassert {name}([4]) == 4\n"
        ),
        10 | 11 => FIXED.to_owned(),
        12 => FIXED.replace("vowels in a string", "vowels of a string"),
        13 => format!("def {name}(x: int) -> int:\n    \"\"\"Twice x.\n\n    >>> {name}(2)\n    5\n    \"\"\"\n    return 2 * x\n"),
        14 => format!("def {name}(x:\n    return x\n"),
        15 => "def close(numbers: list, threshold: float) -> bool:\n    \"\"\"Check if in given list of numbers, are \
               any two numbers closer to each other than given threshold.\n\n    >>> close([1.0, 2.5], 1.0)\n    \
               False\n    \"\"\"\n    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not \
               b)\n"
            .to_owned(),
        16 => format!("def {name}(x: int) -> int:\n    \"\"\"Identity.\"\"\"\n    return x\n"),
        17 => format!("def {name}(x: int) -> int:\n    \"\"\"Identity.\n\n    >>> {name}(1)\n    1\n    \"\"\"\n    return x\n\n\nundefined_helper()\n"),
        _ => return "I cannot write that exercise.".to_owned(),
    };
    format!("Here is the exercise:\n\n```python\n{code}```\n")
}

/// The stub teacher's textbook sections: a section about the prompt's topic, a contaminated one, a short one.
fn textbook_reply(prompt: &str) -> String {
    let (topic, words) = (field(prompt, "Topic:"), field(prompt, "Words:"));
    match fnv(prompt) % 4 {
        0 | 1 => format!(
            "# {topic}\n\nThis section is about {topic}, with examples that mention {words}. We start from a small \
             example and build up, one step at a time, until the idea is clear.\n\n```python\nitems = [3, 1, 2]\n\
             print(sorted(items))\n```\n"
        ),
        2 => "# Closeness\n\nCheck if in given list of numbers, are any two numbers closer to each other than given \
              threshold. This is a classic exercise that we solve with two loops over the list of numbers.\n"
            .to_owned(),
        _ => "Too short.".to_owned(),
    }
}

/// Checks a run's files against its report: every sample has exactly one record, with its provenance, and the
/// counts add up. Returns the kept records.
fn check_accounting(out: &Path, report: &Value, kind: &str) -> Vec<Value> {
    let rejected_path = out.with_file_name(format!("{}.rejected.jsonl", out.file_stem().unwrap().to_str().unwrap()));
    let (kept, rejected) = (lines(out), lines(&rejected_path));
    let tally = &report["summary"]["tally"];
    let by_reason: BTreeMap<String, u64> =
        tally["rejected"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
    assert_eq!(tally["kept"].as_u64().unwrap(), kept.len() as u64);
    assert_eq!(by_reason.values().sum::<u64>(), rejected.len() as u64);
    assert_eq!(
        tally["generated"].as_u64().unwrap(),
        (kept.len() + rejected.len()) as u64,
        "kept + rejected = generated"
    );
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for record in &rejected {
        *counted.entry(record["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        assert!(!record["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(counted, by_reason, "the rejected file matches the report's reasons");
    let mut indices = BTreeSet::new();
    for record in kept.iter().chain(&rejected) {
        assert!(indices.insert(record["index"].as_u64().unwrap()), "one record per sample: {record}");
        assert_eq!(record["kind"], kind);
        assert_eq!(record["seed"], report["seed"]);
        assert_eq!(record["teacher"], report["teacher"]);
        for key in ["topic", "audience", "constraint"] {
            assert!(!record[key].as_str().unwrap().is_empty(), "{key}: {record}");
        }
        assert_eq!(record["words"].as_array().unwrap().len(), 3);
        assert!(record["temperature"].is_number() && record["sample_seed"].is_number());
        assert!(record["filters"].as_object().is_some_and(|f| !f.is_empty()));
        let id = format!("{kind}-{}-{}", record["seed"], record["index"]);
        assert_eq!(record["id"], id.as_str());
    }
    assert_eq!(indices, (0..indices.len() as u64).collect(), "samples 0..n, none missing");
    for record in &kept {
        match kind {
            "textbook" => assert!(record["text"].is_string() && record.get("prompt").is_none()),
            _ => assert!(
                record["prompt"].is_string() && record["completion"].is_string() && record.get("text").is_none()
            ),
        }
        let filters = record["filters"].as_object().unwrap();
        assert_eq!(filters["decontamination"], "clean");
        assert!(filters["dedup"].as_str().unwrap().starts_with("unique"));
    }
    kept
}

/// What `phi-tui finetune --data` makes of a file: its training sequences.
fn finetune_sequences(path: &Path) -> usize {
    let tokenizer = tokenizers::Tokenizer::from_bytes(phi_tui::bundled::TOKENIZER_JSON).unwrap();
    let options = DataOptions { seq_len: 2048, val_fraction: 0.0, seed: 0, vocab_size: Some(51200) };
    load_dataset(path, &tokenizer, &options).unwrap().train.len()
}

#[test]
fn exercises_from_an_openai_compatible_teacher_are_filtered_and_accounted_for() {
    let stub = OpenAiStub::start(Duration::ZERO, exercise_reply);
    let dir = tempfile::tempdir().unwrap();
    let (out, report_path) = (dir.path().join("ex.jsonl"), dir.path().join("report.json"));
    let output = run(phi_tui(&[
        "datagen",
        "exercises",
        "--teacher-url",
        &stub.url,
        "--teacher-model",
        "stub-model",
        "--count",
        "100",
        "--max-attempts",
        "40",
        "--jobs",
        "4",
        "--seed",
        "2",
        "-o",
        out.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
    ])
    .env("PHI_TUI_TEACHER_API_KEY", "secret-key"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("stopped after 40 samples (--max-attempts)"), "{stdout}");
    let report = report(&report_path);
    assert_eq!(report["summary"]["ending"], "attempts_exhausted");
    assert_eq!(report["teacher"]["kind"], "openai-chat");
    assert_eq!(report["summary"]["peak_in_flight"], 4);
    let kept = check_accounting(&out, &report, "exercises");
    assert!(kept.len() >= 10, "{}", kept.len());
    let tally = &report["summary"]["tally"];
    for reason in
        ["tests_failed", "parse", "contaminated", "no_tests", "runtime_error", "exact_duplicate", "near_duplicate"]
    {
        assert!(tally["rejected"][reason].as_u64().unwrap_or(0) > 0, "{reason} in {tally}");
    }
    assert_eq!(tally["contaminated"]["HumanEval"], tally["rejected"]["contaminated"]);
    assert!(stdout.contains(&format!("{} dropped (HumanEval", tally["rejected"]["contaminated"])), "{stdout}");
    for record in &kept {
        assert!(record["prompt"].as_str().unwrap().trim_end().ends_with("\"\"\""), "{record}");
        assert!(record["completion"].as_str().unwrap().starts_with("    "));
        assert!(record["tests"].as_str().unwrap().contains("assert"));
        assert!(record["filters"]["execution"].as_str().unwrap().ends_with("passed"));
    }

    // The stub saw one chat request per sample, with the key, the model and the sampling settings.
    let requests = stub.requests();
    assert_eq!(requests.len(), 40);
    for request in &requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.authorization.as_deref(), Some("Bearer secret-key"));
        assert_eq!(request.body["model"], "stub-model");
        assert_eq!(request.body["temperature"].as_f64(), Some(0.8));
        assert!(request.body["seed"].is_u64() && request.body["max_tokens"] == 512);
    }
    // What finetune reads: one prompt/completion sequence per kept exercise.
    assert_eq!(finetune_sequences(&out), kept.len());
}

#[test]
fn the_same_seed_sends_the_same_prompts() {
    let stub = OpenAiStub::start(Duration::ZERO, textbook_reply);
    let dir = tempfile::tempdir().unwrap();
    let generate = |seed: &str, name: &str| {
        stub.clear();
        let out = dir.path().join(name);
        run(&mut phi_tui(&[
            "datagen",
            "textbook",
            "--teacher-url",
            &stub.url,
            "--teacher-model",
            "base",
            "--teacher-api",
            "completions",
            "--count",
            "100",
            "--max-attempts",
            "8",
            "--jobs",
            "3",
            "--seed",
            seed,
            "-o",
            out.to_str().unwrap(),
        ]));
        let mut prompts: Vec<(String, u64)> =
            stub.requests().iter().map(|r| (r.prompt(), r.body["seed"].as_u64().unwrap())).collect();
        prompts.sort();
        (prompts, std::fs::read_to_string(out).unwrap())
    };
    let (first, first_out) = generate("11", "a.jsonl");
    let (again, again_out) = generate("11", "b.jsonl");
    let (other, _) = generate("12", "c.jsonl");
    // The run stops at --max-attempts, so exactly samples 0..8 were asked for.
    assert_eq!(first.len(), 8);
    assert_eq!(first, again, "the same seed, the same prompts and sampling seeds");
    assert_eq!(first_out, again_out, "and, from a deterministic teacher, the same dataset");
    assert!(first.iter().all(|p| !other.contains(p)), "another seed, other prompts");
    let distinct: BTreeSet<&String> = first.iter().map(|(prompt, _)| prompt).collect();
    assert_eq!(distinct.len(), first.len());
    for (prompt, _) in &first {
        // A completion teacher continues the prompt: the instructions, then the sample's own lines.
        assert!(prompt.starts_with("Write a section of a Python textbook."), "{prompt}");
        for name in ["Audience:", "Topic:", "Constraint:", "Words:"] {
            assert!(!field(prompt, name).is_empty(), "{name} in {prompt}");
        }
    }
    let records = lines(&dir.path().join("a.jsonl"));
    assert!(!records.is_empty());
    assert_eq!(finetune_sequences(&dir.path().join("a.jsonl")), records.len());

    // Against an existing dataset: the same samples again are all duplicates of it.
    let (out, report_path) = (dir.path().join("d.jsonl"), dir.path().join("d.report.json"));
    run(&mut phi_tui(&[
        "datagen",
        "textbook",
        "--teacher-url",
        &stub.url,
        "--teacher-model",
        "base",
        "--teacher-api",
        "completions",
        "--count",
        "100",
        "--max-attempts",
        "8",
        "--seed",
        "11",
        "-o",
        out.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
        "--dedup-against",
        dir.path().join("a.jsonl").to_str().unwrap(),
    ]));
    let tally = &report(&report_path)["summary"]["tally"];
    assert_eq!(tally["kept"], 0);
    assert_eq!(tally["rejected"]["exact_duplicate"], records.len());
}

#[test]
fn a_killed_run_resumes_without_duplicates_or_lost_samples() {
    // Slow replies, so that the kill lands mid-run.
    let stub = OpenAiStub::start(Duration::from_millis(40), exercise_reply);
    let dir = tempfile::tempdir().unwrap();
    let (out, reference) = (dir.path().join("run.jsonl"), dir.path().join("reference.jsonl"));
    let args = |out: &Path| -> Vec<String> {
        [
            "datagen",
            "exercises",
            "--teacher-url",
            &stub.url,
            "--teacher-model",
            "m",
            "--count",
            "16",
            "--jobs",
            "4",
            "--seed",
            "9",
            "-o",
            out.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let rejected_of =
        |out: &Path| out.with_file_name(format!("{}.rejected.jsonl", out.file_stem().unwrap().to_str().unwrap()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .args(args(&out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Complete lines only: the run may be writing one as it is read.
    let complete_lines = |path: &Path| std::fs::read_to_string(path).unwrap_or_default().matches('\n').count();
    while complete_lines(&out) < 5 {
        assert!(started.elapsed() < Duration::from_secs(120), "no samples were kept");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What was on disk when it died, up to the last complete line (a torn one is the sample in flight).
    let on_disk = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text[..text.rfind('\n').map_or(0, |end| end + 1)].to_owned()
    };
    let (before_kill, rejected_before_kill) = (on_disk(&out), on_disk(&rejected_of(&out)));
    assert!(lines(&out).len() < 16, "killed mid-run");

    let report_path = dir.path().join("report.json");
    let mut resume = phi_tui(&[]);
    resume.args(args(&out)).args(["--resume", "--report", report_path.to_str().unwrap()]);
    let output = run(&mut resume);
    assert!(String::from_utf8_lossy(&output.stderr).contains("resuming: "));
    let report = report(&report_path);
    assert_eq!(report["summary"]["ending"], "complete");
    let kept = check_accounting(&out, &report, "exercises");
    assert_eq!(kept.len(), 16);
    let resumed = report["summary"]["tally"]["resumed"].as_u64().unwrap();
    assert!(resumed >= 5 && report["summary"]["generated_now"].as_u64().unwrap() > 0, "{report}");
    let after = std::fs::read_to_string(&out).unwrap();
    assert!(after.starts_with(&before_kill), "every sample kept before the kill is still there, first");
    assert!(std::fs::read_to_string(rejected_of(&out)).unwrap().starts_with(&rejected_before_kill));
    let ids: BTreeSet<&str> = kept.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), kept.len(), "no duplicates");

    // The same run without the kill writes the same files.
    run(phi_tui(&[]).args(args(&reference)));
    assert_eq!(after, std::fs::read_to_string(&reference).unwrap());
    assert_eq!(
        std::fs::read_to_string(rejected_of(&out)).unwrap(),
        std::fs::read_to_string(rejected_of(&reference)).unwrap()
    );
}

#[test]
fn the_fixture_model_teaches_through_the_engine_with_several_sequences() {
    let model = converted("tiny-phi", OutType::F16);
    let dir = tempfile::tempdir().unwrap();
    for (kind, count) in [("textbook", "3"), ("exercises", "2")] {
        let out = dir.path().join(format!("{kind}.jsonl"));
        let report_path = dir.path().join(format!("{kind}.report.json"));
        let output = run(phi_tui(&[
            "datagen",
            kind,
            "-m",
            model.to_str().unwrap(),
            "--count",
            count,
            "--max-attempts",
            "6",
            "--jobs",
            "3",
            "--max-tokens",
            "48",
            "--min-chars",
            "40",
            "--ctx-size",
            "256",
            "--threads",
            "1",
            "--seed",
            "1",
            "-o",
            out.to_str().unwrap(),
            "--report",
            report_path.to_str().unwrap(),
        ])
        .env("PHI_TUI_LOG", "warn"));
        let report = report(&report_path);
        let summary = &report["summary"];
        assert_eq!(report["teacher"]["kind"], "engine");
        assert_eq!(report["teacher"]["model"], model.file_name().unwrap().to_str().unwrap());
        assert_eq!(summary["peak_in_flight"], 3, "three sequences in flight: {report}");
        assert!(summary["tally"]["teacher_tokens"].as_u64().unwrap() > 0);
        let kept = check_accounting(&out, &report, kind);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(&format!("{kind}: kept {} of", kept.len())), "{stdout}");
        if kind == "textbook" {
            // The tiny model's random text passes the length filter: the kept path runs end to end.
            assert!(!kept.is_empty(), "{report}");
            assert_eq!(finetune_sequences(&out), kept.len());
        }
    }
}
