//! The import rules of ARCHITECTURE.md's invariants, checked on the sources (as rust-analyzer's tidy tests do), so
//! that a dependency pointing the wrong way fails the build's tests instead of waiting for a reviewer.
#![allow(clippy::unwrap_used)] // a test that cannot read the sources should fail loudly

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the repository root), with its text.
fn rust_files(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.strip_prefix(root()).unwrap().to_path_buf(), text));
            }
        }
    }
    assert!(!files.is_empty(), "no Rust files under {dir}");
    files
}

/// The files of `dir` whose code (comments aside) mentions `needle`, except those `allowed` names.
fn offenders(dir: &str, needle: &str, allowed: &[&str]) -> Vec<String> {
    rust_files(dir)
        .into_iter()
        .filter(|(path, _)| !allowed.iter().any(|a| path.starts_with(a)))
        .filter(|(_, text)| text.lines().any(|line| !line.trim_start().starts_with("//") && line.contains(needle)))
        .map(|(path, _)| path.display().to_string())
        .collect()
}

#[test]
fn only_the_engine_touches_llama_cpp() {
    assert_eq!(offenders("src", "llama_cpp_2", &["src/engine"]), Vec::<String>::new());
    assert_eq!(offenders("src", "llama_cpp_sys_2", &["src/engine"]), Vec::<String>::new());
}

#[test]
fn raw_llama_cpp_calls_live_in_the_ffi_module() {
    // Constants (`llama_cpp_sys_2::LLAMA_…`) may be named elsewhere in the engine; functions are called only there.
    assert_eq!(offenders("src", "llama_cpp_sys_2::llama_", &["src/engine/ffi.rs"]), Vec::<String>::new());
}

#[test]
fn the_language_server_and_the_converters_know_nothing_of_inference() {
    for crate_dir in ["lsp", "converters"] {
        assert_eq!(offenders(&format!("{crate_dir}/src"), "llama_cpp", &[]), Vec::<String>::new());
        assert_eq!(offenders(&format!("{crate_dir}/src"), "phi_tui", &[]), Vec::<String>::new());
        let manifest = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
        for dependency in ["llama-cpp", "phi-tui"] {
            let found = manifest.lines().any(|line| line.trim_start().starts_with(dependency));
            assert!(!found, "{crate_dir}/Cargo.toml depends on {dependency}");
        }
    }
}

#[test]
fn the_front_ends_see_only_the_session() {
    // The TUI and the language server's backend talk to an `InferenceSession`, never to an `Engine` of their own.
    let front_ends = rust_files("src/tui")
        .into_iter()
        .chain(rust_files("src").into_iter().filter(|(path, _)| path == Path::new("src/lsp_backend.rs")));
    for (path, text) in front_ends {
        for needle in ["Engine::start", "engine::Engine;", "engine::Engine,", "{Engine,", " Engine}", "Engine::"] {
            assert!(!text.contains(needle), "{} uses the engine directly (`{needle}`)", path.display());
        }
    }
}
