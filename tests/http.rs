//! The session daemon's HTTP front-end, against the real binary on a converted fixture model: llama-server's
//! endpoints with the bodies llama.vscode sends, OpenAI's (also through the official `openai` Python package),
//! greedy results equal to `phi-tui generate` on the same prompt, the token, the size limit, malformed bodies, and
//! a client that disconnects mid-stream, seen in the daemon's counters.
//!
//! Every test runs its own daemon (`serve --http 127.0.0.1:0`) with its own runtime, data and config directories,
//! and stops it at the end.
#![allow(clippy::unwrap_used)] // a test whose set-up fails should fail loudly

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::converted;
use phi_converters::OutType;
use phi_tui::session::chat::CHAT_STOPS;
use phi_tui::session::client::DaemonSession;
use phi_tui::session::paths::SessionPaths;
use phi_tui::session::{ClientKind, DaemonStatus, InferenceSession};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_phi-tui");
/// llama-server's separator of extra context chunks (src/session/http/llama.rs), which infill prompts use.
const CHUNK_SEPARATOR: &str = "\n\n--- snippet ---\n\n";
const PREFIX: &str = "import os\n\n\ndef list_python_files(root):\n    \"\"\"Return the Python files under root.\"\"\"\n    result = []\n    for name in os.listdir(root):\n";
const N_PREDICT: u32 = 12;

/// A daemon with an HTTP listener, in private directories.
struct Server {
    root: tempfile::TempDir,
    child: Child,
    address: SocketAddr,
    token: String,
    model: PathBuf,
}

impl Server {
    fn start() -> Self {
        Self::start_with(converted("tiny-phi", OutType::F16))
    }

    fn start_with(model: PathBuf) -> Self {
        let root = tempfile::tempdir().unwrap();
        for dir in ["data", "config"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let command = |args: &[&str]| {
            let mut command = Command::new(BIN);
            command.args(args).envs(envs(root.path()));
            command
        };
        // The token, as a user gets it: made on first use, private.
        let output = command(&["serve", "--print-token"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let token_file = root.path().join("config/http-token");
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);

        // A context longer than the tiny model's own, so that a generation can stream for a while.
        let child = command(&[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--ctx-size",
            "8192",
            "--force-context",
            "-m",
        ])
        .arg(&model)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let mut server = Self { root, child, address: ([127, 0, 0, 1], 0).into(), token, model };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            assert!(
                Instant::now() < deadline,
                "the daemon should listen on HTTP with its model; logs:\n{}",
                server.logs()
            );
            if let Some(status) = server.try_status() {
                if status.http.is_some() && status.engine.model.is_some() {
                    break status;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        server.address = status.http.unwrap().parse().unwrap();
        assert!(server.address.ip().is_loopback() && server.address.port() != 0);
        server
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).envs(envs(self.root.path()));
        command
    }

    fn try_status(&self) -> Option<DaemonStatus> {
        let probe =
            DaemonSession::new(SessionPaths::in_dir(self.root.path().join("run")).unwrap(), ClientKind::Probe, None);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(probe.status()).ok().flatten()
    }

    /// Waits until the daemon has let go of every HTTP connection (a closed connection's sequence is released
    /// asynchronously; until then, a new connection gets another, cold sequence).
    fn wait_for_http_clients_to_leave(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status().clients.iter().any(|c| c.kind == ClientKind::Http) {
            assert!(Instant::now() < deadline, "an HTTP client stays connected: {:?}", self.status().clients);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&self) -> DaemonStatus {
        self.try_status().unwrap_or_else(|| panic!("no status; logs:\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.root.path().join("data/daemon.log")).unwrap_or_default()
    }

    /// A request on a connection of its own (`Connection: close`).
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        let mut stream = self.open(method, path, token, body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        Reply::parse(&raw)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(&self.token), body.to_string().as_bytes())
    }

    fn open(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.address,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // A server that refuses a large body may stop reading it: what it answered is still read below.
        let _ = stream.write_all(body);
        stream
    }

    /// `phi-tui generate` on the same model, greedy: the reference every endpoint must match.
    fn generate(&self, prompt: &str, stops: &[&str]) -> String {
        self.generate_json(prompt, stops)["text"].as_str().unwrap().to_owned()
    }

    /// `generate --json`: the text, and the prompt's tokens.
    fn generate_json(&self, prompt: &str, stops: &[&str]) -> Value {
        let mut command = self.command(&["generate", "--threads", "1", "--json", "-n", &N_PREDICT.to_string(), "-m"]);
        command.arg(&self.model).arg("-p").arg(prompt);
        for stop in stops {
            command.arg("--stop").arg(stop);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn wait_until(&self, what: &str, check: impl Fn(&DaemonStatus) -> bool) -> DaemonStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status();
            if check(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {status:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The environment that points phi-tui at a test's own directories.
fn envs(root: &Path) -> Vec<(OsString, OsString)> {
    vec![
        ("PHI_TUI_RUNTIME_DIR".into(), root.join("run").into()),
        ("PHI_TUI_DATA_DIR".into(), root.join("data").into()),
        ("PHI_TUI_CONFIG_DIR".into(), root.join("config").into()),
    ]
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.command(&["serve", "--stop"]).output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Self { status, head, body }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        assert!(self.head.contains("content-type: text/event-stream"), "{}", self.head);
        sse_payloads(&String::from_utf8_lossy(&self.body))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).map(str::to_owned).collect()
}

/// The prompt `/infill` builds for the model without FIM tokens: the chunks, then the text before the cursor.
fn infill_prompt(chunks: &[&str], prefix: &str, middle: &str) -> String {
    let mut text: String = chunks.iter().map(|chunk| format!("{CHUNK_SEPARATOR}{chunk}")).collect();
    text.push_str(CHUNK_SEPARATOR);
    text + prefix + middle
}

/// The body llama.vscode sends (src/llama-server.ts, getFIMCompletion), temperature added: the extension sends
/// none and gets llama-server's sampling, while phi-tui defaults to greedy anyway; 0 makes the test say so.
fn vscode_infill(stream: bool) -> Value {
    json!({
        "input_prefix": PREFIX,
        "input_suffix": "\n    return result\n",
        "input_extra": [
            {"filename": "util.py", "text": "def is_python(name):\n    return name.endswith('.py')\n"},
            {"filename": "walk.py", "text": "import os\n\nfor root, dirs, files in os.walk('.'):\n    pass\n"},
        ],
        "prompt": "        ",
        "n_predict": N_PREDICT,
        "top_k": 40,
        "top_p": 0.99,
        "stream": stream,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": true,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 60_000,
        "temperature": 0,
    })
}

#[test]
fn llama_server_endpoints_match_generate() {
    let server = Server::start();
    let expected = server.generate(
        &infill_prompt(
            &[
                "def is_python(name):\n    return name.endswith('.py')\n",
                "import os\n\nfor root, dirs, files in os.walk('.'):\n    pass\n",
            ],
            PREFIX,
            "        ",
        ),
        &[],
    );
    assert!(!expected.is_empty());

    let reply = server.post("/infill", &vscode_infill(false));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["content"], expected.as_str(), "{body:#}");
    assert_eq!(body["stop"], true);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["tokens_predicted"], body["timings"]["predicted_n"]);
    assert!(body["timings"]["prompt_n"].as_u64().unwrap() > 0);

    server.wait_for_http_clients_to_leave();
    let reply = server.post("/infill", &vscode_infill(true));
    assert_eq!(reply.status, 200);
    let events: Vec<Value> = reply.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = events.iter().map(|e| e["content"].as_str().unwrap()).collect();
    assert_eq!(streamed, expected);
    assert!(events.len() >= 2, "content arrives in pieces, then the final result: {events:#?}");
    let last = events.last().unwrap();
    assert_eq!((last["stop"].as_bool(), last["content"].as_str()), (Some(true), Some("")));
    assert!(events[..events.len() - 1].iter().all(|e| e["stop"] == false));
    // A new connection got the last one's sequence, its cache kept: the prompt was not decoded again.
    let (decoded, evaluated) =
        (last["timings"]["prompt_n"].as_u64().unwrap(), last["tokens_evaluated"].as_u64().unwrap());
    assert!(decoded < evaluated, "the prompt prefix should be reused: {last:#}");

    // llama.vim's cache warm-up: the extra context alone, nothing to predict, no fields wanted.
    let mut warm_up = vscode_infill(false);
    warm_up["input_prefix"] = json!("");
    warm_up["prompt"] = json!("");
    warm_up["n_predict"] = json!(0);
    warm_up["response_fields"] = json!([""]);
    let reply = server.post("/infill", &warm_up);
    assert_eq!((reply.status, reply.json()), (200, json!({})));

    // llama.vim's `response_fields`: only those, under their paths.
    let mut body = vscode_infill(false);
    body["response_fields"] = json!(["content", "timings/prompt_n", "truncated"]);
    let selected = server.post("/infill", &body).json();
    assert_eq!(selected["content"], expected.as_str());
    assert!(selected["timings/prompt_n"].is_u64() && selected.as_object().unwrap().len() == 3, "{selected:#}");

    // `/completion` continues a plain prompt, like `generate`.
    let expected = server.generate(PREFIX, &[]);
    let body = server.post("/completion", &json!({"prompt": PREFIX, "n_predict": N_PREDICT, "temperature": 0})).json();
    assert_eq!(body["content"], expected.as_str(), "{body:#}");

    // Each request above came on a connection of its own: each was a client, and is gone.
    let status = server.wait_until("the HTTP clients' departure", |s| s.clients.is_empty());
    assert_eq!((status.generations, status.cancelled, status.model_loads), (5, 0, 1), "{status:#?}");
}

#[test]
fn openai_endpoints_match_generate() {
    let server = Server::start();
    let expected = server.generate(PREFIX, &[]);
    let request = json!({"model": "phi-1", "prompt": PREFIX, "max_tokens": N_PREDICT, "temperature": 0});
    let body = server.post("/v1/completions", &request).json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], expected.as_str(), "{body:#}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], N_PREDICT);

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = server.post("/v1/completions", &streaming).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, expected);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], N_PREDICT);

    // Chat: phi-1's Question/Answer layout and stops, as in the TUI's chat mode.
    let question = "Write a function that adds two numbers.";
    let expected = server.generate(&format!("Question: {question}\nAnswer:"), &CHAT_STOPS);
    let request = json!({
        "model": "phi-1",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": N_PREDICT,
        "temperature": 0,
    });
    let body = server.post("/v1/chat/completions", &request).json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str(), "{body:#}");
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let events = server.post("/v1/chat/completions", &streaming).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, expected);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    let models = server.request("GET", "/v1/models", Some(&server.token), b"").json();
    assert_eq!(models["data"][0]["id"], server.model.file_name().unwrap().to_str().unwrap());

    // The adapter endpoints: none applied yet; one with an unknown id is refused, naming the field.
    let adapters = server.request("GET", "/lora-adapters", Some(&server.token), b"").json();
    assert_eq!(adapters, json!([]));
    let reply = server.post("/lora-adapters", &json!([{"id": 3, "scale": 1.0}]));
    assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (400, Some("[0].id")));
    // Applying one (phi-tui's `path`), rescaling it by id and switching it off (scale 0) change the session's.
    let adapter = common::fixtures().join("lora/final-adapter.gguf");
    assert_eq!(
        server.post("/lora-adapters", &json!([{"path": adapter, "scale": 0.5}])).json(),
        json!({"success": true})
    );
    let listed = server.request("GET", "/lora-adapters", Some(&server.token), b"").json();
    assert_eq!(listed, json!([{"id": 0, "path": adapter, "scale": 0.5}]));
    assert_eq!(server.status().engine.adapter.map(|a| a.scale), Some(0.5));
    assert_eq!(server.post("/lora-adapters", &json!([{"id": 0, "scale": 0.0}])).status, 200);
    assert_eq!(server.status().engine.adapter, None);
    let listed = server.request("GET", "/lora-adapters", Some(&server.token), b"").json();
    assert_eq!(listed, json!([{"id": 0, "path": adapter, "scale": 0.0}]), "switched off, still listed");
}

#[test]
fn a_model_with_a_chat_template_is_prompted_with_it() {
    // The tiny fixture with a ChatML template added to its tokenizer config, converted: its GGUF carries it.
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("tiny-phi-chatml");
    std::fs::create_dir(&checkpoint).unwrap();
    for entry in std::fs::read_dir(common::fixtures().join("tiny-phi")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, checkpoint.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config_path = checkpoint.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    );
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = dir.path().join("chatml.gguf");
    let options = phi_converters::ConvertOptions { out_type: OutType::F16, tokenizer: None, fallback_tokenizer: None };
    phi_converters::convert(&checkpoint, &model, &options, &mut |_| {}).unwrap();

    let server = Server::start_with(model);
    let question = "Write a function that adds two numbers.";
    let expected =
        server.generate_json(&format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"), &[]);
    let request = json!({"messages": [{"role": "user", "content": question}], "max_tokens": N_PREDICT});
    let body = server.post("/v1/chat/completions", &request).json();
    assert_eq!(body["choices"][0]["message"]["content"], expected["text"], "{body:#}");
    // The prompt was the template's, token for token.
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(expected["prompt_tokens"].as_array().unwrap().len() as u64)
    );
}

#[test]
fn the_openai_python_package_streams_a_completion() {
    let import = Command::new("python3").args(["-c", "import openai"]).output();
    if !import.is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI installs the openai package (.ci/run)");
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let server = Server::start();
    let expected = server.generate(PREFIX, &[]);
    let script = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
stream = client.completions.create(model="phi-1", prompt=sys.argv[3], max_tokens=int(sys.argv[4]), temperature=0, stream=True)
chunks = [chunk.choices[0].text for chunk in stream if chunk.choices]
sys.stdout.write("%d\n%s" % (len(chunks), "".join(chunks)))
"#;
    let output = Command::new("python3")
        .args(["-c", script, &format!("http://{}/v1", server.address), &server.token, PREFIX, &N_PREDICT.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (chunks, text) = stdout.split_once('\n').unwrap();
    assert!(chunks.parse::<usize>().unwrap() > 1, "the completion streamed in pieces");
    assert_eq!(text, expected);
}

#[test]
fn requests_without_the_token_malformed_or_too_large_are_refused() {
    let server = Server::start();
    // /health needs no token; everything else does.
    let health = server.request("GET", "/health", None, b"");
    assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
    let body = json!({"prompt": "def f():", "n_predict": 2}).to_string();
    for token in [None, Some("not-the-token")] {
        let reply = server.request("POST", "/completion", token, body.as_bytes());
        assert_eq!(reply.status, 401);
        let error = reply.json();
        assert_eq!(error["error"]["type"], "authentication_error");
        assert!(error["error"]["message"].as_str().unwrap().contains("--print-token"), "{error}");
    }
    assert_eq!(server.request("GET", "/v1/models", None, b"").status, 401);

    let reply = server.request("POST", "/v1/completions", Some(&server.token), b"{\"prompt\": ");
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"].as_str().unwrap().starts_with("malformed JSON"));
    for (path, body, field) in [
        ("/completion", json!({"prompt": "x", "n_predict": "many"}), "n_predict"),
        ("/infill", json!({"input_prefix": "x", "input_extra": [{"text": 7}]}), "input_extra[0].text"),
        ("/v1/completions", json!({"max_tokens": 2}), "prompt"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}), "n"),
    ] {
        let reply = server.post(path, &body);
        let error = reply.json();
        assert_eq!((reply.status, error["error"]["param"].as_str()), (400, Some(field)), "{path}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(field), "{error}");
    }

    let large = vec![b' '; 3 << 19];
    let reply = server.request("POST", "/completion", Some(&server.token), &large);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], 413);

    // Nothing of the above reached the engine.
    assert_eq!(server.status().generations, 0);

    // A non-loopback address needs --http-allow-remote.
    let output = server.command(&["serve", "--http", "0.0.0.0:0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--http-allow-remote"), "{stderr}");
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let server = Server::start();
    // A generation that would run for thousands of tokens.
    let long = json!({"prompt": "def fibonacci(n):\n", "n_predict": 6000, "ignore_eos": true, "stream": true});
    let mut stream = server.open("POST", "/completion", Some(&server.token), long.to_string().as_bytes());
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\"") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream should start: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    // While it streams, the client shows in the status and the TUI's activity line.
    let status = server.status();
    assert_eq!(status.engine.pending_requests, 1, "{status:#?}");
    let http: Vec<_> = status.clients.iter().filter(|c| c.kind == ClientKind::Http).collect();
    assert_eq!(http.len(), 1, "{status:#?}");
    assert!(http[0].peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:")), "{http:?}");
    assert_eq!(status.editor_activity().unwrap().split(" · ").next(), Some("1 HTTP client"));
    let output = server.command(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("http     http://{}", server.address)) && text.contains("http     127.0.0.1:"),
        "{text}"
    );

    drop(stream);
    let status = server.wait_until("the cancelled generation and the freed sequence", |s| {
        s.engine.pending_requests == 0 && s.cancelled == 1 && s.clients.is_empty()
    });
    assert!(status.tokens_generated < 6000, "{status:#?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.status().tokens_generated, status.tokens_generated, "decoding stopped");

    // The same without streaming: the handler owns the generation, and the disconnection drops it.
    let long = json!({"prompt": "def fibonacci(n):\n", "n_predict": 6000, "ignore_eos": true});
    let stream = server.open("POST", "/completion", Some(&server.token), long.to_string().as_bytes());
    server.wait_until("the second generation", |s| s.engine.pending_requests == 1);
    drop(stream);
    server.wait_until("the second cancellation", |s| {
        s.engine.pending_requests == 0 && s.cancelled == 2 && s.clients.is_empty()
    });
}

/// Benchmark, not a test (`cargo test --release --test http http_hop -- --ignored --nocapture`, or
/// tests/bench/session-bench.sh): what the HTTP path adds to a completion, against the socket path. The same short
/// completion (its prompt cached after the first) runs alternately through the daemon's socket (a `DaemonSession`,
/// as an editor's `phi-tui lsp` uses it) and through `POST /completion` on a keep-alive connection; for each, the
/// time the client waited minus the engine's own time (prompt + generation) is the overhead of the path.
/// `ROUNDS` sets the number of pairs (default 300).
#[test]
#[ignore = "benchmark"]
fn http_hop_latency() {
    use phi_tui::engine::{Priority, Prompt};
    use phi_tui::session::SessionRequest;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(300);
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (socket_runs, http_runs) = runtime.block_on(async {
        let socket =
            DaemonSession::new(SessionPaths::in_dir(server.root.path().join("run")).unwrap(), ClientKind::Editor, None);
        let connection = tokio::net::TcpStream::connect(server.address).await.unwrap();
        connection.set_nodelay(true).unwrap();
        let mut http = BufReader::new(connection);
        let body = json!({"prompt": PREFIX, "n_predict": 2, "ignore_eos": true}).to_string();
        let head = format!(
            "POST /completion HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            server.address,
            server.token,
            body.len()
        );
        let (mut socket_runs, mut http_runs) = (Vec::new(), Vec::new());
        for round in 0..rounds + 10 {
            let mut request = SessionRequest::new(Prompt::Text(PREFIX.to_owned()));
            request.max_tokens = 2;
            request.stop_at_eog = false;
            request.priority = Priority::Interactive;
            let started = Instant::now();
            let summary = socket.generate(request).finish().await.unwrap();
            let total = started.elapsed().as_secs_f64() * 1000.0;
            let socket_run = (total, total - (summary.timings.prompt_ms + summary.timings.gen_ms));

            let started = Instant::now();
            http.get_mut().write_all(format!("{head}{body}").as_bytes()).await.unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                http.read_line(&mut line).await.unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut reply = vec![0u8; length];
            http.read_exact(&mut reply).await.unwrap();
            let total = started.elapsed().as_secs_f64() * 1000.0;
            let reply: Value = serde_json::from_slice(&reply).unwrap();
            let engine =
                reply["timings"]["prompt_ms"].as_f64().unwrap() + reply["timings"]["predicted_ms"].as_f64().unwrap();
            // The first rounds decode the prompt and warm the caches.
            if round >= 10 {
                socket_runs.push(socket_run);
                http_runs.push((total, total - engine));
            }
        }
        (socket_runs, http_runs)
    });
    let percentile = |values: &mut Vec<f64>, q: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * q).round() as usize]
    };
    println!("model: {}  rounds: {rounds}", server.model.display());
    println!("{:<8} {:>10} {:>10} {:>14} {:>14}", "path", "total p50", "total p95", "overhead p50", "overhead p95");
    let mut overheads = Vec::new();
    for (name, runs) in [("socket", &socket_runs), ("http", &http_runs)] {
        let mut totals: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut extra: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let total = (percentile(&mut totals, 0.5), percentile(&mut totals, 0.95));
        let over = (percentile(&mut extra, 0.5), percentile(&mut extra, 0.95));
        println!("{name:<8} {:>8.3}ms {:>8.3}ms {:>12.3}ms {:>12.3}ms", total.0, total.1, over.0, over.1);
        overheads.push(over);
    }
    println!(
        "HTTP path adds over the socket path: p50 {:.3} ms, p95 {:.3} ms (goal: p50 <= 1 ms)",
        overheads[1].0 - overheads[0].0,
        overheads[1].1 - overheads[0].1
    );
}
