//! The real `phi-tui` binary: convert (native and llama.cpp-quantized types, bad input), generate and bench.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use phi_converters::gguf::GgufFile;
use phi_converters::OutType;
use serde_json::Value;

fn phi_tui(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi-tui")).args(args).output().expect("run phi-tui")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn convert_writes_every_out_type_that_llama_cpp_loads() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("tiny-phi");
    for (out_type, ggml_weight_type) in [
        ("f32", "F32"),
        ("f16", "F16"),
        ("bf16", "BF16"),
        ("q8_0", "Q8_0"),
        ("q4_0", "Q4_0"),
        ("q4_1", "Q4_1"),
        ("q5_0", "Q5_0"),
        ("q5_1", "Q5_1"),
        ("q4_k_m", ""),
        ("q5_k_m", ""),
        ("q6_k", ""),
    ] {
        let output = dir.path().join(format!("tiny.{out_type}.gguf"));
        let result =
            phi_tui(&["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap(), "--outtype", out_type]);
        assert!(result.status.success(), "{out_type}: {}", stderr(&result));
        let file = GgufFile::open(&output).unwrap();
        let expected_ftype: OutType = out_type.parse().unwrap();
        assert_eq!(file.get_u32("general.file_type"), Some(expected_ftype.llama_ftype()), "{out_type}");
        if !ggml_weight_type.is_empty() {
            let ffn_up = file.tensors().iter().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
            assert_eq!(ffn_up.ggml_type.to_string(), ggml_weight_type, "{out_type}");
        }

        let generated =
            phi_tui(&["generate", "-m", output.to_str().unwrap(), "-p", "def add(a, b):", "-n", "4", "--json"]);
        assert!(generated.status.success(), "{out_type}: {}", stderr(&generated));
        let json: Value = serde_json::from_slice(&generated.stdout).unwrap();
        assert_eq!(json["tokens"].as_array().unwrap().len(), 4, "{out_type}");
    }
    // Only the outputs: no intermediate or temporary file is left behind.
    assert_eq!(files_in(dir.path()).len(), 11, "{:?}", files_in(dir.path()));
}

#[test]
fn convert_errors_are_one_line_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.gguf");
    let missing = dir.path().join("no-such-checkpoint");
    let missing = missing.to_str().unwrap();
    let tiny_phi = fixtures().join("tiny-phi");
    let tiny_phi = tiny_phi.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&[missing], "config.json"),
        (&[tiny_phi, "--outtype", "q3_xs"], "q3_xs"),
        (&[tiny_phi, "--tokenizer", missing], "no-such-checkpoint"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["convert", "-o", output.to_str().unwrap()];
        full.extend_from_slice(args);
        let result = phi_tui(&full);
        assert!(!result.status.success(), "{args:?} succeeded");
        let message = stderr(&result);
        let first_line = message.lines().next().unwrap_or_default();
        assert!(first_line.starts_with("error: ") && first_line.contains(needle), "{args:?}: {message}");
        // clap adds a "For more information, try '--help'." hint after a usage error; everything else is one line.
        // clap lists the valid values of an enumerated flag under its error.
        let hint = message.contains("try '--help'");
        let lines = message.trim_end().lines().filter(|l| !l.is_empty() && !l.trim_start().starts_with("[possible"));
        assert_eq!(lines.count(), if hint { 2 } else { 1 }, "{message}");
        assert!(files_in(dir.path()).is_empty(), "{args:?} left {:?}", files_in(dir.path()));
    }
    // A quantized type whose output cannot be written fails before any work, and leaves nothing either.
    let unwritable = dir.path().join("missing-dir/out.gguf");
    let result = phi_tui(&["convert", tiny_phi, "-o", unwritable.to_str().unwrap(), "--outtype", "q4_0"]);
    assert!(!result.status.success());
    assert!(stderr(&result).contains("missing-dir"), "{}", stderr(&result));
    assert!(files_in(dir.path()).is_empty(), "{:?}", files_in(dir.path()));
}

#[test]
fn generate_json_reproduces_the_reference_greedy_tokens() {
    let model = converted("tiny-phi", OutType::F16);
    let reference = reference_prompts(&fixtures().join("tiny-phi/reference"));
    let prompt = reference.iter().find(|p| p.name == "def_docstring").unwrap();
    let result = phi_tui(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        &prompt.text,
        "-n",
        "24",
        "--ignore-eos",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let json: Value = serde_json::from_slice(&result.stdout).unwrap();
    let prompt_tokens: Vec<i32> = serde_json::from_value(json["prompt_tokens"].clone()).unwrap();
    let tokens: Vec<i32> = serde_json::from_value(json["tokens"].clone()).unwrap();
    assert_eq!(prompt_tokens, prompt.ids);
    let stable = prompt.greedy.stable_prefix(0.05);
    assert_eq!(&tokens[..stable.len()], stable);
    assert_eq!(tokens.len(), 24);
    assert!(json["text"].is_string());
    assert_eq!(json["device"], "CPU");
    assert_eq!(json["gpu_layers"], 0);
    for key in ["prompt_ms", "gen_ms", "prompt_tok_s", "gen_tok_s"] {
        assert!(json["timings"][key].as_f64().unwrap() > 0.0, "{key}: {}", json["timings"]);
    }
    // Nothing but the JSON object goes to stdout: llama.cpp's logs stay off it.
    assert_eq!(String::from_utf8_lossy(&result.stdout).trim().lines().count(), 1);
}

#[test]
fn generate_streams_text_and_honours_stop_strings() {
    let model = converted("tiny-phi", OutType::F16);
    let plain =
        phi_tui(&["generate", "-m", model.to_str().unwrap(), "-p", "def add(a, b):", "-n", "12", "--ignore-eos"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let text = String::from_utf8(plain.stdout).unwrap();
    let text = text.strip_suffix('\n').unwrap();
    let stop: String = text.chars().skip(text.chars().count() / 2).take(2).collect();
    let stopped = phi_tui(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "def add(a, b):",
        "-n",
        "12",
        "--ignore-eos",
        "--stop",
        &stop,
    ]);
    let stopped = String::from_utf8(stopped.stdout).unwrap();
    assert_eq!(stopped.strip_suffix('\n').unwrap(), &text[..text.find(&stop).unwrap()]);
}

#[test]
fn generate_reports_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let result = phi_tui(&["generate", "-m", missing.to_str().unwrap(), "-p", "x"]);
    assert!(!result.status.success());
    assert!(stderr(&result).contains("missing.gguf"), "{}", stderr(&result));

    let model = converted("tiny-phi", OutType::F16);
    let long_prompt = "x = 1\n".repeat(400);
    let result = phi_tui(&["generate", "-m", model.to_str().unwrap(), "-p", &long_prompt, "--ctx-size", "64"]);
    assert!(!result.status.success());
    assert!(stderr(&result).contains("tokens but a sequence holds at most"), "{}", stderr(&result));
}

#[test]
fn bench_reports_throughput_as_json() {
    let model = converted("tiny-phi", OutType::F16);
    let result = phi_tui(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "64",
        "-n",
        "8",
        "-r",
        "2",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let json: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(json["pp_tok_s"].as_f64().unwrap() > 0.0);
    assert!(json["tg_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(json["device"], "CPU");
    assert_eq!(json["gpu_layers"], 0);
    assert_eq!(json["pp_runs_tok_s"].as_array().unwrap().len(), 2);
}

#[test]
fn backends_dir_needs_the_dynamic_backends_build() {
    let model = converted("tiny-phi", OutType::F16);
    let result = phi_tui(&["generate", "-m", model.to_str().unwrap(), "-p", "x", "--backends-dir", "/nonexistent"]);
    assert!(!result.status.success());
    let error = stderr(&result);
    if cfg!(feature = "dynamic-backends") {
        assert!(error.contains("/nonexistent: not a directory of ggml backend modules"), "{error}");
    } else {
        assert!(error.contains("needs a phi-tui built with `--features dynamic-backends`"), "{error}");
    }
}

#[test]
fn help_lists_the_values_of_enumerated_flags_and_describes_every_sampling_flag() {
    let help = String::from_utf8(phi_tui(&["generate", "--help"]).stdout).unwrap();
    // An option's entry: its line and the lines below it, up to the next option.
    let entry = |flag: &str| -> String {
        let mut lines = help.lines().skip_while(|l| !l.contains(flag));
        let first = lines.next().unwrap_or_else(|| panic!("{flag}: {help}"));
        let rest = lines.take_while(|l| !l.trim_start().starts_with('-'));
        std::iter::once(first).chain(rest).collect::<Vec<_>>().join(" ")
    };
    assert!(entry("--flash-attn").contains("[possible values: auto, on, off]"), "{help}");
    for flag in ["--temp ", "--top-k ", "--top-p ", "--min-p ", "--repeat-penalty ", "--seed "] {
        // `--top-k <TOP_K>  Sample only … [default: 0]`: a description between the value's name and its default.
        let entry = entry(flag);
        let description = entry.split_once('>').map(|(_, rest)| rest).unwrap_or_default();
        let description = description.split("[default").next().unwrap_or_default().trim();
        assert!(description.len() > 10, "{flag} has no description: {entry}");
    }
    let help = String::from_utf8(phi_tui(&["convert", "-h"]).stdout).unwrap();
    let outtype = help.lines().find(|l| l.contains("--outtype")).unwrap();
    for out_type in OutType::ALL {
        assert!(outtype.contains(out_type.name()), "{out_type}: {outtype}");
    }
    // The values are listed, and still matched in any case.
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("tiny.gguf");
    let input = fixtures().join("tiny-phi");
    let result = phi_tui(&["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap(), "--outtype", "Q8_0"]);
    assert!(result.status.success(), "{}", stderr(&result));
}

/// `phi-tui` with its config directory (and data directory) in `dir`.
fn phi_tui_with_config(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .args(args)
        .env("PHI_TUI_CONFIG_DIR", dir)
        .env("PHI_TUI_DATA_DIR", dir)
        .output()
        .expect("run phi-tui")
}

#[test]
fn generate_bench_and_eval_use_the_config_files_model_without_m() {
    let dir = tempfile::tempdir().unwrap();
    let without = phi_tui_with_config(dir.path(), &["generate", "-p", "def add(a, b):", "-n", "2"]);
    assert!(!without.status.success());
    let config = dir.path().join("config.toml");
    let error = stderr(&without);
    assert!(error.contains("no model yet") && error.contains("-m MODEL.gguf"), "{error}");

    let model = converted("tiny-phi", OutType::F16);
    std::fs::write(&config, format!("model = {:?}\n", model.to_str().unwrap())).unwrap();
    let generated = phi_tui_with_config(dir.path(), &["generate", "-p", "def add(a, b):", "-n", "3", "--json"]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let json: Value = serde_json::from_slice(&generated.stdout).unwrap();
    assert_eq!(json["tokens"].as_array().unwrap().len(), 3, "{json}");

    let bench = ["bench", "-p", "16", "-n", "4", "-r", "1", "--json", "--threads", "2"];
    let benched = phi_tui_with_config(dir.path(), &bench);
    assert!(benched.status.success(), "{}", stderr(&benched));
    let json: Value = serde_json::from_slice(&benched.stdout).unwrap();
    assert!(json["tg_tok_s"].as_f64().unwrap() > 0.0, "{json}");

    let eval = ["eval", "humaneval", "--limit", "1", "--max-tokens", "8", "--jobs", "1", "--threads", "2"];
    let evaluated = phi_tui_with_config(dir.path(), &eval);
    let stdout = String::from_utf8_lossy(&evaluated.stdout);
    assert!(evaluated.status.success(), "{stdout}\n{}", stderr(&evaluated));
    assert!(stdout.contains("HumanEval: 1 tasks"), "{stdout}");
}

#[test]
fn readme_run_command_leaves_no_file_in_the_repository_root() {
    // The README's first command converts the fixture model; its output must land where git ignores it.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let command = readme.lines().find(|l| l.contains("-- convert tests/fixtures/tiny-phi")).unwrap();
    let output = command.split(" -o ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    assert!(output.starts_with("target/"), "the README converts to {output}, not under target/: {command}");
    assert!(command.contains(&format!("-m {output}")), "{command}");
}
