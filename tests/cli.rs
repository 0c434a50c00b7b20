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

/// A copy of a fixture checkpoint (hard links where possible) that a test may damage.
fn checkpoint_copy(name: &str, dir: &Path) -> std::path::PathBuf {
    let copy = dir.join(name);
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let target = copy.join(entry.file_name());
            std::fs::hard_link(entry.path(), &target)
                .or_else(|_| std::fs::copy(entry.path(), &target).map(drop))
                .unwrap();
        }
    }
    copy
}

#[test]
fn convert_refuses_outputs_it_would_destroy() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint_copy("tiny-phi", dir.path());
    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let weights = input.join("model.safetensors");
    let weights_before = std::fs::read(&weights).unwrap();
    let cases = [
        ("/dev/full".into(), "not a regular file"),
        ("/dev/null".into(), "not a regular file"),
        (fifo.clone(), "not a regular file"),
        (weights.clone(), "`model.safetensors` of the checkpoint being converted"),
        (input.join("config.json"), "`config.json` of the checkpoint being converted"),
    ];
    for (output, message) in cases {
        for outtype in ["f16", "q4_0"] {
            let result =
                phi_tui(&["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap(), "--outtype", outtype]);
            assert!(!result.status.success(), "{} {outtype}", output.display());
            assert!(stderr(&result).contains(message), "{}: {}", output.display(), stderr(&result));
        }
    }
    assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device());
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read(&weights).unwrap(), weights_before, "the checkpoint was overwritten");
    // Writing next to the checkpoint is fine, and a second run replaces its own output.
    for _ in 0..2 {
        let output = input.join("tiny.gguf");
        let result = phi_tui(&["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap()]);
        assert!(result.status.success(), "{}", stderr(&result));
    }
}

#[test]
fn convert_bounds_the_layer_count_by_the_tensors_present() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint_copy("tiny-phi", dir.path());
    let config_path = input.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = 2_147_483_648u64.into();
    std::fs::remove_file(&config_path).unwrap(); // a hard link: do not write through it
    std::fs::write(&config_path, config.to_string()).unwrap();
    let started = std::time::Instant::now();
    let output = dir.path().join("out.gguf");
    let result = phi_tui(&["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap()]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("key `num_hidden_layers` is 2147483648, but the checkpoint has tensors for 2 layers"),
        "{}",
        stderr(&result)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!output.exists());
}

/// Temporary files (hidden, `.tmp-PID` at the end) in `dir`.
fn temporary_files(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|name| name.starts_with('.') && name.contains(".tmp-")).collect()
}

#[test]
fn an_interrupted_convert_leaves_no_temporary_file() {
    let input = fixtures().join("tiny-phi");
    let mut interrupted = 0;
    for (signal, name, code) in [(libc::SIGTERM, "SIGTERM", 143), (libc::SIGINT, "SIGINT", 130)] {
        for outtype in ["f32", "q4_0"] {
            let dir = tempfile::tempdir().unwrap();
            let output = dir.path().join("out.gguf");
            let mut child = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
                .args(["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap(), "--outtype", outtype])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Signal it as soon as it has a temporary file, that is, mid-way.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while temporary_files(dir.path()).is_empty() && child.try_wait().unwrap().is_none() {
                assert!(std::time::Instant::now() < deadline, "no temporary file appeared");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let status = child.wait().unwrap();
            if status.success() {
                // It finished before the signal landed: nothing to check in this round.
                continue;
            }
            assert_eq!(status.code(), Some(code), "{name} {outtype}: {status}");
            assert!(temporary_files(dir.path()).is_empty(), "{name} {outtype} left {:?}", files_in(dir.path()));
            assert!(!output.exists(), "{name} {outtype}");
            interrupted += 1;
        }
    }
    assert!(interrupted >= 2, "only {interrupted} of 4 runs were still converting when signalled");
}

#[test]
fn convert_removes_the_temporary_files_of_killed_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A pid that runs no process (pids are below 2^22 on Linux).
    let dead = (1u32 << 22) + 7;
    let stale = [format!(".out.gguf.part.tmp-{dead}"), format!("..out.gguf.f16.tmp-{dead}.part.tmp-{dead}")];
    let live = format!(".out.gguf.part.tmp-{}", std::process::id());
    for name in stale.iter().chain([&live]) {
        std::fs::write(dir.path().join(name), b"partial").unwrap();
    }
    let output = dir.path().join("out.gguf");
    let result = phi_tui(&["convert", fixtures().join("tiny-phi").to_str().unwrap(), "-o", output.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(files_in(dir.path()), vec![live, "out.gguf".to_owned()]);
}

#[test]
fn generate_and_bench_check_their_sizes_up_front() {
    let model = converted("tiny-phi", OutType::F16);
    let model = model.to_str().unwrap();
    let started = std::time::Instant::now();
    let cases: [(&[&str], &str); 6] = [
        (&["generate", "-m", model, "-p", "x", "--threads", "16384"], "16384 is not in 1..=512"),
        (&["generate", "-m", model, "-p", "x", "--threads", "500"], "on this machine"),
        (&["generate", "-m", model, "-p", "x", "-c", "1000000000"], "more than the model's training context of 2048"),
        (&["generate", "-m", model, "--prompt-file", "/dev/zero"], "the prompt file is larger than 8 MiB"),
        (&["bench", "-m", model, "-p", "100000"], "100000 is not in 1..=65536"),
        (&["bench", "-m", model, "-p", "4000", "-r", "1"], "bench -p 4000 -n 128 needs a context of 4129 tokens"),
    ];
    for (args, message) in cases {
        let result = phi_tui(args);
        assert!(!result.status.success(), "{args:?}");
        assert!(stderr(&result).contains(message), "{args:?}: {}", stderr(&result));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
    // Forced, a context beyond the training context is allowed when it fits.
    let result = phi_tui(&["generate", "-m", model, "-p", "def f():", "-n", "2", "-c", "4096", "--force-context"]);
    assert!(result.status.success(), "{}", stderr(&result));
}
