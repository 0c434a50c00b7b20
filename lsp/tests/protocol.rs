//! The server over real JSON-RPC framing, against the fake backend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use phi_lsp::testing::{FakeBackend, FakeReply, TestClient, TIMEOUT};
use phi_lsp::{ServerOptions, Settings};
use serde_json::{json, Value};

const URI: &str = "file:///work/demo.py";
/// Longer than any test may take: a reply this slow only ends by being cancelled.
const FOREVER: Duration = Duration::from_secs(3600);

const REQUEST_CANCELLED: i64 = -32800;
const INVALID_PARAMS: i64 = -32602;

/// A client on a server whose backend has a model loaded, with no debounce.
async fn ready_client(backend: &FakeBackend) -> TestClient {
    TestClient::initialized(backend.clone(), ServerOptions::default(), json!({"debounceMs": 0})).await
}

fn error_code(response: &Value) -> Option<i64> {
    response.get("error").and_then(|error| error["code"].as_i64())
}

#[tokio::test]
async fn initialize_advertises_inline_completion_completion_and_incremental_sync() {
    let mut client = TestClient::start(FakeBackend::with_model("phi-1"), ServerOptions::default());
    let response = client.call("initialize", json!({"capabilities": {}})).await;
    let capabilities = &response["result"]["capabilities"];
    assert_eq!(capabilities["inlineCompletionProvider"], json!(true), "{response}");
    assert!(capabilities["completionProvider"]["triggerCharacters"].as_array().is_some_and(|c| !c.is_empty()));
    assert_eq!(capabilities["textDocumentSync"]["change"], json!(2), "incremental sync: {response}");
    assert_eq!(capabilities["textDocumentSync"]["openClose"], json!(true));
    assert_eq!(capabilities["positionEncoding"], json!("utf-16"));
    assert_eq!(response["result"]["serverInfo"]["name"], json!("phi-tui"));
    client.notify("initialized", json!({})).await;
    client.shut_down().await;
}

#[tokio::test]
async fn inline_completion_after_incremental_changes_in_non_ascii_text() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def greet(name):\n    s = 'é🐍'\n").await;
    // After the closing quote: 4 spaces + `s = '` (5) + é (1 unit) + 🐍 (2 units) + `'` (1) = 13.
    client.change(URI, 2, (1, 13), (1, 13), " + ").await;
    backend.push_reply(FakeReply::new("name\n    return s\n\nprint(greet('x'))"));

    let id = client.request_inline(URI, 1, 16, false).await;
    let response = client.response(id).await;

    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].prompt, "def greet(name):\n    s = 'é🐍' + ");
    let items = TestClient::inline_items(&response);
    assert_eq!(items.len(), 1, "{response}");
    assert_eq!(items[0]["insertText"], json!("    s = 'é🐍' + name\n    return s"));
    assert_eq!(items[0]["range"], json!({"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 16}}));
    client.shut_down().await;
}

#[tokio::test]
async fn full_text_sync_replaces_the_document() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "x = 1\n").await;
    let change = json!({"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": "def f():\n    "}]});
    client.notify("textDocument/didChange", change).await;
    backend.push_reply(FakeReply::new("return 1"));
    let id = client.request_inline(URI, 1, 4, true).await;
    let response = client.response(id).await;
    assert_eq!(backend.requests()[0].prompt, "def f():\n    ");
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    return 1"));
    client.shut_down().await;
}

#[tokio::test]
async fn completion_items_hold_one_line_and_replace_the_typed_word() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def shout(name):\n    return na\n").await;
    backend.push_reply(FakeReply::new("me.upper()\n\nprint(shout('a'))"));
    let params = json!({"textDocument": {"uri": URI}, "position": {"line": 1, "character": 13},
        "context": {"triggerKind": 1}});
    let response = client.call("textDocument/completion", params).await;
    let result = &response["result"];
    assert_eq!(result["isIncomplete"], json!(true), "{response}");
    let item = &result["items"][0];
    assert_eq!(item["textEdit"]["newText"], json!("name.upper()"), "{response}");
    assert_eq!(
        item["textEdit"]["range"],
        json!({"start": {"line": 1, "character": 11}, "end": {"line": 1, "character": 13}})
    );
    assert_eq!(item["filterText"], json!("name.upper()"));
    assert_eq!(backend.requests()[0].max_tokens, Settings::default().max_line_tokens);
    client.shut_down().await;
}

#[tokio::test]
async fn cancel_request_answers_request_cancelled_and_stops_the_backend() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("return 1").after(FOREVER));

    let id = client.request_inline(URI, 1, 4, true).await;
    assert!(backend.wait_until(TIMEOUT, |b| b.started() == 1).await, "the backend never started");
    client.notify("$/cancelRequest", json!({"id": id})).await;

    let response = client.response(id).await;
    assert_eq!(error_code(&response), Some(REQUEST_CANCELLED), "{response}");
    assert!(backend.wait_until(TIMEOUT, |b| b.cancelled() == 1).await, "the backend's future was not dropped");
    assert_eq!(backend.finished(), 0);

    // The server goes on serving.
    backend.push_reply(FakeReply::new("return 2"));
    let id = client.request_inline(URI, 1, 4, true).await;
    let response = client.response(id).await;
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    return 2"));
    client.shut_down().await;
}

#[tokio::test]
async fn a_newer_request_supersedes_an_older_one() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("return 1").after(FOREVER));
    backend.push_reply(FakeReply::new("return 2"));

    let first = client.request_inline(URI, 1, 4, false).await;
    assert!(backend.wait_until(TIMEOUT, |b| b.started() == 1).await, "the backend never started");
    let started = Instant::now();
    let second = client.request_inline(URI, 1, 4, false).await;

    let response = client.response(first).await;
    assert!(TestClient::inline_items(&response).is_empty(), "the superseded request got items: {response}");
    assert!(started.elapsed() < Duration::from_secs(2), "the superseded request was not answered promptly");
    assert!(backend.wait_until(TIMEOUT, |b| b.cancelled() == 1).await, "the older backend future was not dropped");
    let response = client.response(second).await;
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    return 2"));
    client.shut_down().await;
}

#[tokio::test]
async fn debounce_lets_a_burst_of_automatic_requests_reach_the_model_once() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client =
        TestClient::initialized(backend.clone(), ServerOptions::default(), json!({"debounceMs": 500})).await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("return 1"));
    let ids = [
        client.request_inline(URI, 1, 4, false).await,
        client.request_inline(URI, 1, 4, false).await,
        client.request_inline(URI, 1, 4, false).await,
    ];
    for &id in &ids[..2] {
        assert!(TestClient::inline_items(&client.response(id).await).is_empty());
    }
    let last = client.response(ids[2]).await;
    assert_eq!(TestClient::inline_items(&last)[0]["insertText"], json!("    return 1"));
    assert_eq!(backend.started(), 1);
    client.shut_down().await;
}

#[tokio::test]
async fn typing_into_a_suggestion_is_answered_from_the_cache() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def add(a, b):\n    \n").await;
    backend.push_reply(FakeReply::new("return a + b\n\nprint(add(1, 2))"));
    let id = client.request_inline(URI, 1, 4, false).await;
    assert_eq!(TestClient::inline_items(&client.response(id).await)[0]["insertText"], json!("    return a + b"));

    client.change(URI, 2, (1, 4), (1, 4), "ret").await;
    let id = client.request_inline(URI, 1, 7, false).await;
    let response = client.response(id).await;
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    return a + b"), "{response}");
    assert_eq!(backend.started(), 1, "the cache did not answer");
    client.shut_down().await;
}

#[tokio::test]
async fn no_automatic_completion_right_after_a_deletion() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def f():\n    rx").await;
    client.change(URI, 2, (1, 5), (1, 6), "").await;
    let id = client.request_inline(URI, 1, 5, false).await;
    assert!(TestClient::inline_items(&client.response(id).await).is_empty());
    assert_eq!(backend.started(), 0);
    // Asking explicitly still works.
    backend.push_reply(FakeReply::new("eturn 1"));
    let id = client.request_inline(URI, 1, 5, true).await;
    assert_eq!(TestClient::inline_items(&client.response(id).await)[0]["insertText"], json!("    return 1"));
    client.shut_down().await;
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_server_keeps_serving() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def f():\n    ").await;
    client.open_as("file:///work/notes.md", "markdown", "# notes\n").await;

    let id = client.request_inline("file:///work/unknown.py", 0, 0, true).await;
    assert_eq!(error_code(&client.response(id).await), Some(INVALID_PARAMS));
    let id = client.request_inline(URI, 7, 0, true).await;
    assert_eq!(error_code(&client.response(id).await), Some(INVALID_PARAMS));
    let malformed = json!({"textDocument": {"uri": URI}, "context": {"triggerKind": 1}});
    let response = client.call("textDocument/inlineCompletion", malformed).await;
    assert_eq!(error_code(&response), Some(INVALID_PARAMS), "{response}");
    let response = client.call("textDocument/completion", json!({"textDocument": 3})).await;
    assert_eq!(error_code(&response), Some(INVALID_PARAMS), "{response}");
    // Not Python: an empty answer, not an error.
    let id = client.request_inline("file:///work/notes.md", 0, 0, true).await;
    assert!(TestClient::inline_items(&client.response(id).await).is_empty());
    // A frame that is not JSON at all.
    client.send_body("{this is not json").await;
    // A column past the end of the line clamps to the line's end, as the protocol says.
    backend.push_reply(FakeReply::new("return 0"));
    let id = client.request_inline(URI, 1, 99, true).await;
    let response = client.response(id).await;
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    return 0"), "{response}");
    assert_eq!(backend.started(), 1);
    client.shut_down().await;
}

#[tokio::test]
async fn without_a_model_the_server_says_how_to_set_one() {
    let backend = FakeBackend::new();
    let mut client = TestClient::initialized(backend.clone(), ServerOptions::default(), json!({"debounceMs": 0})).await;
    let message = client.notification("window/showMessage").await;
    let text = message["params"]["message"].as_str().unwrap_or_default();
    assert!(text.contains("phi-tui lsp -m MODEL.gguf") && text.contains("initializationOptions"), "{message}");
    assert_eq!(message["params"]["type"], json!(2), "a warning: {message}");

    client.open(URI, "def f():\n    ").await;
    let id = client.request_inline(URI, 1, 4, true).await;
    assert!(TestClient::inline_items(&client.response(id).await).is_empty());
    assert!(backend.loads().is_empty());
    client.shut_down().await;
}

#[tokio::test]
async fn a_failed_model_load_is_shown_as_an_error() {
    let backend = FakeBackend::new();
    backend.fail_loads(Some("not a GGUF file"));
    let init = json!({"model": "/models/broken.gguf", "debounceMs": 0});
    let mut client = TestClient::initialized(backend.clone(), ServerOptions::default(), init).await;
    let message = client.notification("window/showMessage").await;
    let text = message["params"]["message"].as_str().unwrap_or_default();
    assert!(text.contains("/models/broken.gguf") && text.contains("not a GGUF file"), "{message}");
    assert_eq!(message["params"]["type"], json!(1), "an error: {message}");

    // Fixing the setting loads the new model, and completions work.
    backend.fail_loads(None);
    client
        .notify("workspace/didChangeConfiguration", json!({"settings": {"phi-tui": {"model": "/models/phi-1.gguf"}}}))
        .await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("pass"));
    let id = client.request_inline(URI, 1, 4, true).await;
    assert_eq!(TestClient::inline_items(&client.response(id).await)[0]["insertText"], json!("    pass"));
    assert_eq!(backend.loads(), [PathBuf::from("/models/broken.gguf"), PathBuf::from("/models/phi-1.gguf")]);
    client.shut_down().await;
}

#[tokio::test]
async fn the_command_line_model_wins_over_settings() {
    let backend = FakeBackend::new();
    let options = ServerOptions { model: Some(PathBuf::from("/m/cli.gguf")), settings: Settings::default() };
    let init = json!({"model": "/m/init.gguf", "debounceMs": 0});
    let mut client = TestClient::initialized(backend.clone(), options, init).await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("pass"));
    let id = client.request_inline(URI, 1, 4, true).await;
    assert_eq!(TestClient::inline_items(&client.response(id).await).len(), 1);
    client.notify("workspace/didChangeConfiguration", json!({"settings": {"model": "/m/other.gguf"}})).await;
    let id = client.request_inline(URI, 1, 4, true).await;
    client.response(id).await;
    assert_eq!(backend.loads(), [PathBuf::from("/m/cli.gguf")]);
    assert!(client.received_notifications("window/showMessage").is_empty());
    client.shut_down().await;
}

#[tokio::test]
async fn configuration_changes_apply_to_the_next_request() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def total(xs):\n    ").await;
    let settings = json!({"settings": {"phi-tui": {"mode": "singleLine", "maxLineTokens": 5, "maxTokens": "many"}}});
    client.notify("workspace/didChangeConfiguration", settings).await;
    let warning = client.notification("window/showMessage").await;
    assert!(warning["params"]["message"].as_str().unwrap_or_default().contains("maxTokens"), "{warning}");

    backend.push_reply(FakeReply::new("result = 0\n    for x in xs:"));
    let id = client.request_inline(URI, 1, 4, true).await;
    let response = client.response(id).await;
    assert_eq!(TestClient::inline_items(&response)[0]["insertText"], json!("    result = 0"));
    assert_eq!(backend.requests()[0].max_tokens, 5);
    client.shut_down().await;
}

#[tokio::test]
async fn closing_a_document_ends_its_requests() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "def f():\n    ").await;
    backend.push_reply(FakeReply::new("return 1").after(FOREVER));
    let id = client.request_inline(URI, 1, 4, true).await;
    assert!(backend.wait_until(TIMEOUT, |b| b.started() == 1).await);
    client.notify("textDocument/didClose", json!({"textDocument": {"uri": URI}})).await;
    assert!(TestClient::inline_items(&client.response(id).await).is_empty());
    assert!(backend.wait_until(TIMEOUT, |b| b.cancelled() == 1).await);
    let id = client.request_inline(URI, 1, 4, true).await;
    assert_eq!(error_code(&client.response(id).await), Some(INVALID_PARAMS));
    client.shut_down().await;
}

#[tokio::test]
async fn mid_line_suggestions_are_inserted_at_the_cursor() {
    let backend = FakeBackend::with_model("phi-1");
    let mut client = ready_client(&backend).await;
    client.open(URI, "print('🐍', )\n").await;
    backend.push_reply(FakeReply::new("end='')\nprint(1)"));
    let id = client.request_inline(URI, 0, 11, false).await;
    let response = client.response(id).await;
    let items = TestClient::inline_items(&response);
    assert_eq!(items[0]["insertText"], json!("end=''"), "{response}");
    assert_eq!(items[0]["range"], json!({"start": {"line": 0, "character": 11}, "end": {"line": 0, "character": 11}}));
    client.shut_down().await;
}

#[tokio::test]
async fn the_server_stops_when_the_client_hangs_up() {
    let backend = FakeBackend::with_model("phi-1");
    let client = ready_client(&backend).await;
    client.open(URI, "x = 1\n").await;
    client.hang_up().await;
}

#[tokio::test]
async fn status_names_the_model_completions_come_from() {
    let backend = FakeBackend::new();
    let mut client = TestClient::initialized(backend.clone(), ServerOptions::default(), json!({"debounceMs": 0})).await;
    let response = client.call("phi-tui/status", Value::Null).await;
    assert_eq!(response["result"], json!({"model": null}), "{response}");

    client
        .notify("workspace/didChangeConfiguration", json!({"settings": {"phi-tui": {"model": "/models/phi-1.gguf"}}}))
        .await;
    let response = client.call("phi-tui/status", Value::Null).await;
    let expected = json!({"model": {"name": "phi-1.gguf", "path": "/models/phi-1.gguf"}});
    assert_eq!(response["result"], expected, "{response}");
    client.shut_down().await;
}
