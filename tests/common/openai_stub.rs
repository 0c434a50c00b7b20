//! An OpenAI-compatible server on 127.0.0.1 for tests: it answers `POST /v1/chat/completions` and
//! `POST /v1/completions` with what a closure makes of the prompt, and records every request. HTTP/1.1 with
//! keep-alive, one thread per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

impl StubRequest {
    /// The prompt: the chat's last user message, or the completion prompt.
    pub fn prompt(&self) -> String {
        let chat = self.body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str());
        chat.or_else(|| self.body["prompt"].as_str()).unwrap_or_default().to_owned()
    }
}

type Responder = dyn Fn(&str) -> String + Send + Sync;

pub struct OpenAiStub {
    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    requests: Arc<Mutex<Vec<StubRequest>>>,
}

impl OpenAiStub {
    /// Starts a server that answers each prompt with `respond(prompt)`, after `delay`.
    pub fn start(delay: Duration, respond: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}/v1", listener.local_addr().expect("local address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (recorded, respond) = (recorded.clone(), respond.clone());
                std::thread::spawn(move || serve(stream, &recorded, respond.as_ref(), delay));
            }
        });
        Self { url, requests }
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn serve(stream: TcpStream, recorded: &Mutex<Vec<StubRequest>>, respond: &Responder, delay: Duration) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let request = StubRequest { path: path.clone(), authorization, body };
        let text = respond(&request.prompt());
        recorded.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        std::thread::sleep(delay);
        let usage = json!({"prompt_tokens": 100, "completion_tokens": text.split_whitespace().count()});
        let (status, reply) = match path.as_str() {
            "/v1/chat/completions" => (
                "200 OK",
                json!({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": text}}], "usage": usage}),
            ),
            "/v1/completions" => (
                "200 OK",
                json!({"object": "text_completion", "choices": [{"index": 0, "finish_reason": "stop", "text": text}],
                       "usage": usage}),
            ),
            _ => ("404 Not Found", json!({"error": {"message": format!("no route {path}")}})),
        };
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}
