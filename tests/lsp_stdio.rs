//! The real `phi-tui lsp` binary over its real stdin and stdout: malformed framing and messages are answered
//! (`-32700`, `-32600`) and never stop or deafen it, and after `shutdown` + `exit` it ends within a second although
//! the client keeps stdin open.
#![allow(clippy::unwrap_used)] // a test that cannot start its server should fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    stdin: ChildStdin,
    messages: mpsc::Receiver<Value>,
    _dirs: tempfile::TempDir,
    next_id: i64,
}

impl Server {
    fn start() -> Self {
        let dirs = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
            .args(["lsp", "--log-file"])
            .arg(dirs.path().join("lsp.log"))
            .env("PHI_TUI_CONFIG_DIR", dirs.path())
            .env("PHI_TUI_DATA_DIR", dirs.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || read_messages(stdout, sender));
        let mut server = Self { child, stdin, messages, _dirs: dirs, next_id: 1 };
        let id = server.request("initialize", json!({"capabilities": {}}));
        let answer = server.answer(&json!(id));
        assert!(answer["result"]["capabilities"].is_object(), "{answer}");
        server.send_message(&json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        server
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send_message(&mut self, message: &Value) {
        let body = message.to_string();
        self.send_raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_message(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The next response with this id (server notifications and requests are skipped).
    fn answer(&self, id: &Value) -> Value {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.messages.recv_timeout(left).unwrap_or_else(|_| panic!("no answer to id {id}"));
            if message.get("method").is_none() && message["id"] == *id {
                return message;
            }
        }
    }

    /// A request the server answers at once (an unknown method): proves it still reads, in step.
    fn assert_alive(&mut self, after: &str) {
        let id = self.request("phi/ping", json!({}));
        let answer = self.answer(&json!(id));
        assert_eq!(answer["error"]["code"], METHOD_NOT_FOUND, "after {after}: {answer}");
    }
}

fn read_messages(stdout: impl Read, sender: mpsc::Sender<Value>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("Content-Length:") {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.expect("the server's own framing has a Content-Length")];
        reader.read_exact(&mut body).unwrap();
        if sender.send(serde_json::from_slice(&body).expect("the server writes JSON")).is_err() {
            return;
        }
    }
}

#[test]
fn bad_framing_and_bad_messages_are_answered_and_the_server_keeps_serving() {
    let mut server = Server::start();
    let ping = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "phi/ping"}).to_string();
    // Header blocks that cannot be used, each followed by its body: the server skips to the next header.
    let body = ping(1000);
    let broken_headers = [
        format!("Content-Length: abc\r\n\r\n{body}"),
        format!("Content-Length: -{}\r\n\r\n{body}", body.len()),
        format!("Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n{body}"),
        format!("Content-Length: {0}\r\nContent-Length: {0}\r\n\r\n{body}", body.len()),
        format!("this is not a header\r\n\r\n{body}"),
    ];
    for bad in &broken_headers {
        server.send_raw(bad.as_bytes());
        let answer = server.answer(&Value::Null);
        assert_eq!(answer["error"]["code"], PARSE_ERROR, "{bad:?}: {answer}");
        server.assert_alive(bad);
    }

    // Bodies that are not messages, framed correctly.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<(Vec<u8>, i64, Value)> = vec![
        (format!("[{}]", ping(1001)).into_bytes(), INVALID_REQUEST, Value::Null),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1002,\"method\":\"phi/\xff\xfe\"}".to_vec(), PARSE_ERROR, Value::Null),
        (deep.into_bytes(), PARSE_ERROR, Value::Null),
        (b"{\"jsonrpc\": \"2.0\", \"id\": 1003, \"method\": 12}".to_vec(), INVALID_REQUEST, json!(1003)),
        (b"{not json".to_vec(), PARSE_ERROR, Value::Null),
    ];
    for (body, code, id) in bodies {
        let mut message = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        message.extend_from_slice(&body);
        server.send_raw(&message);
        let answer = server.answer(&id);
        assert_eq!(answer["error"]["code"], code, "{}: {answer}", String::from_utf8_lossy(&body[..body.len().min(60)]));
        server.assert_alive("a bad body");
    }

    // LF-only line ends and a lower-case header name are still understood.
    let body = ping(1004);
    server.send_raw(format!("content-length: {}\n\n{body}", body.len()).as_bytes());
    assert_eq!(server.answer(&json!(1004))["error"]["code"], METHOD_NOT_FOUND);
    server.assert_alive("LF-only headers");
}

#[test]
fn exit_ends_the_server_within_a_second_while_stdin_stays_open() {
    let mut server = Server::start();
    let id = server.request("shutdown", Value::Null);
    let answer = server.answer(&json!(id));
    assert!(answer.get("error").is_none(), "{answer}");
    server.send_message(&json!({"jsonrpc": "2.0", "method": "exit"}));
    let sent = Instant::now();
    // `server.stdin` stays open all along, as editors that keep the pipe leave it.
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        if sent.elapsed() > Duration::from_secs(1) {
            let _ = server.child.kill();
            panic!("the server was still running {:?} after exit", sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
