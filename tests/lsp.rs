//! The language server on the real engine: real JSON-RPC framing over an in-memory connection, a converted fixture
//! model behind it. (lsp/tests covers the protocol in depth against a scripted backend; this checks the wiring:
//! completions come from the engine, reuse its KV cache across keystrokes, and a cancel stops its decoding.)

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use futures::FutureExt;
use phi_converters::OutType;
use phi_lsp::testing::TestClient;
use phi_lsp::{BackendError, Completion, CompletionBackend, CompletionRequest, ModelSummary, ServerOptions};
use phi_tui::engine::{Engine, SequenceId};
use phi_tui::lsp_backend::SessionBackend;
use phi_tui::session::LocalSession;
use serde_json::json;

const URI: &str = "file:///work/demo.py";
const REQUEST_CANCELLED: i64 = -32800;

/// The engine backend, recording what each completion cost.
#[derive(Clone)]
struct Recording {
    inner: SessionBackend,
    completions: Arc<Mutex<Vec<Completion>>>,
}

impl CompletionBackend for Recording {
    fn load_model(&self, path: PathBuf) -> BoxFuture<'static, Result<ModelSummary, BackendError>> {
        self.inner.load_model(path)
    }
    fn model(&self) -> BoxFuture<'static, Option<ModelSummary>> {
        self.inner.model()
    }
    fn tokenize(&self, text: String) -> BoxFuture<'static, Result<Vec<u32>, BackendError>> {
        self.inner.tokenize(text)
    }
    fn complete(&self, request: CompletionRequest) -> BoxFuture<'static, Result<Completion, BackendError>> {
        let completions = Arc::clone(&self.completions);
        let completion = self.inner.complete(request);
        async move {
            let completion = completion.await?;
            completions.lock().unwrap().push(completion.clone());
            Ok(completion)
        }
        .boxed()
    }
}

async fn client_on_engine(init: serde_json::Value) -> (TestClient, Engine, Arc<Mutex<Vec<Completion>>>) {
    let engine = Engine::start(small_engine_options()).unwrap();
    let completions = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        inner: SessionBackend::new(std::sync::Arc::new(LocalSession::new(engine.clone(), SequenceId(0)))),
        completions: completions.clone(),
    };
    let options = ServerOptions { model: Some(converted("tiny-phi", OutType::F16)), ..ServerOptions::default() };
    let client = TestClient::initialized(backend, options, init).await;
    (client, engine, completions)
}

const SOURCE: &str = "import os\n\n\ndef list_python_files(root):\n    \"\"\"Return the Python files under root.\"\"\"\n    result = []\n    for name in os.listdir(root):\n        ";

#[tokio::test]
async fn completions_come_from_the_engine_and_reuse_its_cache_across_keystrokes() {
    let (mut client, engine, completions) = client_on_engine(json!({"debounceMs": 0, "maxTokens": 8})).await;
    client.open(URI, SOURCE).await;
    let (line, character) = (7, 8);
    let first = client.call("textDocument/inlineCompletion", inline_params(line, character)).await;
    assert!(first.get("result").is_some(), "{first}");

    // The user types a word; the next request decodes only the new tail of the prompt.
    client.change(URI, 2, (line, character), (line, character), "if").await;
    let second = client.call("textDocument/inlineCompletion", inline_params(line, character + 2)).await;
    assert!(second.get("result").is_some(), "{second}");
    let popup = client
        .call(
            "textDocument/completion",
            json!({"textDocument": {"uri": URI}, "position": {"line": line, "character": character + 2}}),
        )
        .await;
    assert!(popup.get("result").is_some(), "{popup}");

    let completions = completions.lock().unwrap().clone();
    assert!(completions.len() >= 2, "the engine answered {} requests", completions.len());
    let (first, second) = (&completions[0], &completions[1]);
    assert!(first.prompt_tokens > 20);
    assert!(
        second.reused_tokens + 4 >= first.prompt_tokens,
        "a keystroke re-decoded the prompt: {} of {} tokens reused",
        second.reused_tokens,
        first.prompt_tokens
    );
    assert!(engine.state().await.unwrap().cached_tokens[0] > 0);
    client.shut_down().await;
}

#[tokio::test]
async fn cancel_request_stops_the_engine_decoding() {
    let (mut client, engine, completions) = client_on_engine(json!({"debounceMs": 0, "maxTokens": 400})).await;
    client.open(URI, SOURCE).await;
    let id = client.request("textDocument/inlineCompletion", inline_params(7, 8)).await;
    // Let the engine start on it, then cancel.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.state().await.unwrap().pending_requests == 0 {
        assert!(Instant::now() < deadline, "the request never reached the engine");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    client.notify("$/cancelRequest", json!({"id": id})).await;
    let response = client.response(id).await;
    let cancelled = response["error"]["code"].as_i64() == Some(REQUEST_CANCELLED)
        || response["result"].as_array().is_some_and(Vec::is_empty)
        || response["result"]["items"].as_array().is_some_and(Vec::is_empty);
    assert!(cancelled, "{response}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while engine.state().await.unwrap().pending_requests > 0 {
        assert!(Instant::now() < deadline, "the engine kept decoding the cancelled completion");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(completions.lock().unwrap().is_empty(), "the cancelled completion ran to its end");
    client.shut_down().await;
}

fn inline_params(line: u32, character: u32) -> serde_json::Value {
    json!({
        "textDocument": {"uri": URI},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 1},
    })
}

/// Benchmark (not a test; `cargo test --release --test lsp -- --ignored --nocapture`): replays typing a Python file
/// keystroke by keystroke, asking for an inline completion after each, and reports time to suggestion (p50/p95),
/// the share of prompt tokens reused from the KV cache, and the server's overhead over the engine's own time for
/// the requests that reached the engine. `PHI_TUI_BENCH_MODEL` picks the model (default: the tiny fixture).
#[tokio::test]
#[ignore = "benchmark"]
async fn replay_typing_session() {
    const TYPED: &str = "def mean(values):\n    \"\"\"Return the arithmetic mean of values.\"\"\"\n    total = 0\n    for value in values:\n        total += value\n    return total / len(values)\n\n\ndef variance(values):\n    m = mean(values)\n    return sum((v - m) ** 2 for v in values) / len(values)\n";
    let model = std::env::var_os("PHI_TUI_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| converted("tiny-phi", OutType::F16));
    let engine = Engine::start(phi_tui::engine::EngineOptions { sequences: 1, ..Default::default() }).unwrap();
    let completions = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        inner: SessionBackend::new(std::sync::Arc::new(LocalSession::new(engine.clone(), SequenceId(0)))),
        completions: completions.clone(),
    };
    let options = ServerOptions { model: Some(model), ..ServerOptions::default() };
    let mut client = TestClient::initialized(backend, options, json!({"debounceMs": 0, "maxTokens": 24})).await;
    client.open(URI, "").await;

    let (mut line, mut character, mut version) = (0u32, 0u32, 1);
    let mut latencies = Vec::new();
    let (mut engine_ms, mut paired_client_ms) = (0.0, 0.0);
    for ch in TYPED.chars() {
        version += 1;
        client.change(URI, version, (line, character), (line, character), &ch.to_string()).await;
        if ch == '\n' {
            line += 1;
            character = 0;
        } else {
            character += ch.len_utf16() as u32;
        }
        let before = completions.lock().unwrap().len();
        let started = Instant::now();
        let response = client.call("textDocument/inlineCompletion", inline_params(line, character)).await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert!(response.get("result").is_some(), "{response}");
        latencies.push(elapsed);
        let recorded = completions.lock().unwrap();
        if recorded.len() > before {
            let c = &recorded[recorded.len() - 1];
            engine_ms += c.queue_ms + c.prompt_ms + c.gen_ms;
            paired_client_ms += elapsed;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let recorded = completions.lock().unwrap();
    let prompt: usize = recorded.iter().map(|c| c.prompt_tokens).sum();
    let reused: usize = recorded.iter().map(|c| c.reused_tokens).sum();
    println!(
        "{} keystrokes, {} reached the engine: time to suggestion p50 {:.1} ms, p95 {:.1} ms; prompt tokens reused \
         {:.1} %; server overhead over engine time {:.1} %",
        latencies.len(),
        recorded.len(),
        percentile(0.5),
        percentile(0.95),
        100.0 * reused as f64 / prompt.max(1) as f64,
        100.0 * (paired_client_ms - engine_ms) / engine_ms.max(f64::MIN_POSITIVE),
    );
}
