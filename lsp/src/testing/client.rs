//! An LSP client for tests: real JSON-RPC framing (Content-Length headers) over an in-memory duplex stream to a
//! server running [`crate::serve`] with any backend — the [`FakeBackend`](super::FakeBackend) here, the real engine
//! in the `phi-tui` binary's tests — or over the pipes of a real `phi-tui lsp` process ([`TestClient::over`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{serve, CompletionBackend, ServerOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// How long a test waits for any one message before it fails (generous: CI machines are small and busy).
pub const TIMEOUT: Duration = Duration::from_secs(30);

type Writer = Arc<Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;
type Reader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;

pub struct TestClient {
    writer: Writer,
    incoming: mpsc::UnboundedReceiver<Value>,
    /// Responses and notifications that arrived while the test waited for something else.
    responses: HashMap<i64, Value>,
    notifications: Vec<Value>,
    next_id: i64,
    /// The in-process server; `None` for a server in another process.
    server: Option<JoinHandle<()>>,
    reader: JoinHandle<()>,
}

impl TestClient {
    /// Starts a server on an in-memory connection.
    pub fn start<B: CompletionBackend>(backend: B, options: ServerOptions) -> Self {
        let (client_end, server_end) = tokio::io::duplex(1 << 20);
        let (server_read, server_write) = tokio::io::split(server_end);
        let server = tokio::spawn(serve(server_read, server_write, backend, options));
        let (client_read, client_write) = tokio::io::split(client_end);
        let mut client = Self::over(client_read, client_write);
        client.server = Some(server);
        client
    }

    /// A client of a server on the other end of these streams (e.g. a child process's stdout and stdin).
    pub fn over(
        input: impl AsyncRead + Unpin + Send + 'static,
        output: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        let writer: Writer = Arc::new(Mutex::new(Box::new(output)));
        let (sender, incoming) = mpsc::unbounded_channel();
        let input: Reader = BufReader::new(Box::new(input));
        let reader = tokio::spawn(read_messages(input, sender, Arc::clone(&writer)));
        Self {
            writer,
            incoming,
            responses: HashMap::new(),
            notifications: Vec::new(),
            next_id: 1,
            server: None,
            reader,
        }
    }

    /// Sends `initialize` with these `initializationOptions`, then `initialized`.
    pub async fn initialize(&mut self, init: Value) {
        let result = self.call("initialize", json!({"capabilities": {}, "initializationOptions": init})).await;
        assert!(result.get("result").is_some(), "initialize failed: {result}");
        self.notify("initialized", json!({})).await;
    }

    /// Starts a server and initializes it with these `initializationOptions`.
    pub async fn initialized<B: CompletionBackend>(backend: B, options: ServerOptions, init: Value) -> Self {
        let mut client = Self::start(backend, options);
        client.initialize(init).await;
        client
    }

    /// Sends raw bytes as one framed message body.
    pub async fn send_body(&self, body: &str) {
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        let mut writer = self.writer.lock().await;
        writer.write_all(frame.as_bytes()).await.expect("the server reads");
        writer.flush().await.expect("the server reads");
    }

    pub async fn notify(&self, method: &str, params: Value) {
        self.send_body(&json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()).await;
    }

    /// Sends a request and returns its id, without waiting for the response.
    pub async fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_body(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()).await;
        id
    }

    /// The whole response message to request `id`.
    pub async fn response(&mut self, id: i64) -> Value {
        loop {
            if let Some(response) = self.responses.remove(&id) {
                return response;
            }
            self.receive(&format!("the response to request {id}")).await;
        }
    }

    /// Sends a request and waits for its response message.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params).await;
        self.response(id).await
    }

    /// The next notification with this method (others stay queued).
    pub async fn notification(&mut self, method: &str) -> Value {
        loop {
            if let Some(index) = self.notifications.iter().position(|n| n["method"] == method) {
                return self.notifications.remove(index);
            }
            self.receive(&format!("a {method} notification")).await;
        }
    }

    /// Notifications received so far with this method, without waiting.
    pub fn received_notifications(&mut self, method: &str) -> Vec<Value> {
        while let Ok(message) = self.incoming.try_recv() {
            self.file(message);
        }
        self.notifications.iter().filter(|n| n["method"] == method).cloned().collect()
    }

    async fn receive(&mut self, what: &str) {
        let message = tokio::time::timeout(TIMEOUT, self.incoming.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("the connection closed while waiting for {what}"));
        self.file(message);
    }

    fn file(&mut self, message: Value) {
        match message.get("id").and_then(Value::as_i64) {
            Some(id) if message.get("method").is_none() => {
                self.responses.insert(id, message);
            }
            _ => self.notifications.push(message),
        }
    }

    pub async fn open(&self, uri: &str, text: &str) {
        self.open_as(uri, "python", text).await;
    }

    pub async fn open_as(&self, uri: &str, language: &str, text: &str) {
        let document = json!({"uri": uri, "languageId": language, "version": 1, "text": text});
        self.notify("textDocument/didOpen", json!({"textDocument": document})).await;
    }

    /// Replaces the UTF-16 range `(line, character)..(line, character)` of `uri` with `text`.
    pub async fn change(&self, uri: &str, version: i32, start: (u32, u32), end: (u32, u32), text: &str) {
        let change = json!({
            "range": {"start": {"line": start.0, "character": start.1}, "end": {"line": end.0, "character": end.1}},
            "text": text,
        });
        let params = json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]});
        self.notify("textDocument/didChange", params).await;
    }

    /// Sends `textDocument/inlineCompletion` (`invoked`: triggerKind Invoked, else Automatic) and returns its id.
    pub async fn request_inline(&mut self, uri: &str, line: u32, character: u32, invoked: bool) -> i64 {
        let params = json!({
            "textDocument": {"uri": uri},
            "position": {"line": line, "character": character},
            "context": {"triggerKind": if invoked { 1 } else { 2 }},
        });
        self.request("textDocument/inlineCompletion", params).await
    }

    /// The inline completion items of a response (panics on an error response).
    pub fn inline_items(response: &Value) -> Vec<Value> {
        let result = response.get("result").unwrap_or_else(|| panic!("not a result: {response}"));
        let items = result.get("items").unwrap_or(result);
        items.as_array().cloned().unwrap_or_default()
    }

    /// Closes the connection's client-to-server direction, and waits for the server to stop.
    pub async fn hang_up(mut self) {
        self.writer.lock().await.shutdown().await.expect("the stream closes");
        if let Some(server) = self.server.as_mut() {
            tokio::time::timeout(TIMEOUT, server).await.expect("the server stops at end of input").ok();
        }
        self.reader.abort();
    }

    /// Sends `shutdown` and `exit`, and waits for the server to stop.
    pub async fn shut_down(mut self) {
        let response = self.call("shutdown", Value::Null).await;
        assert!(response.get("error").is_none(), "shutdown failed: {response}");
        self.notify("exit", Value::Null).await;
        if let Some(server) = self.server.as_mut() {
            tokio::time::timeout(TIMEOUT, server).await.expect("the server stops after exit").ok();
        }
        self.reader.abort();
    }
}

/// Reads framed messages from the server; answers the server's own requests (e.g. `client/registerCapability`)
/// with a null result, and passes everything else on.
async fn read_messages(mut input: Reader, messages: mpsc::UnboundedSender<Value>, writer: Writer) {
    while let Some(message) = read_message(&mut input).await {
        if let (Some(id), Some(_)) = (message.get("id"), message.get("method")) {
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": null}).to_string();
            let frame = format!("Content-Length: {}\r\n\r\n{reply}", reply.len());
            let mut writer = writer.lock().await;
            if writer.write_all(frame.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if messages.send(message).is_err() {
            return;
        }
    }
}

async fn read_message(input: &mut Reader) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length: ") {
            length = value.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    input.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}
