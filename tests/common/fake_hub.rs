//! A stand-in for the Hugging Face hub on 127.0.0.1, started by a test: enough of the hub's HTTP API for a client
//! that lists a repository and downloads its files, with faults on request.
//!
//! - `GET /api/models/{owner}/{name}/revision/{rev}?blobs=true`: `{"id", "sha", "siblings": [{"rfilename", "size",
//!   "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}`;
//! - `GET /{owner}/{name}/resolve/{rev}/{file}`: small files directly (`ETag` = git blob id, `X-Repo-Commit`); LFS
//!   files as a 302 to `/cdn/{sha256}` (with `X-Linked-Etag`, `X-Linked-Size`), as the hub redirects to its CDN;
//! - `GET /cdn/{sha256}`: the bytes, with `Range` (206 and `Content-Range`);
//! - errors as the hub sends them: 404 / 401 / 403 with `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`, `GatedRepo`) and `X-Error-Message`.
//!
//! It counts the bytes of each file it serves and logs every request, so tests can tell what was downloaded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A file of a fake repository.
#[derive(Clone)]
pub struct HubFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    pub lfs: bool,
}

impl HubFile {
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(self.bytes.as_slice()))
    }

    /// The git blob id: sha1 of `blob <size>\0<content>`.
    pub fn git_sha1(&self) -> String {
        let mut hasher = Sha1::new();
        hasher.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        hasher.update(self.bytes.as_slice());
        hex(&hasher.finalize())
    }

    /// The name `huggingface_hub` gives its blob in the cache.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

/// A repository at one commit.
#[derive(Clone)]
pub struct HubRepo {
    pub commit: String,
    pub files: Vec<HubFile>,
    /// Requests without `Authorization: Bearer <token>` get 401.
    pub token: Option<String>,
    /// Downloads answer 403 GatedRepo.
    pub gated: bool,
}

impl HubRepo {
    /// The top-level files of a fixture checkpoint directory; safetensors go through LFS, as on the hub.
    pub fn from_dir(dir: &Path) -> HubRepo {
        let mut files: Vec<HubFile> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("dir entry").path())
            .filter(|path| path.is_file())
            .map(|path| {
                let name = path.file_name().expect("file name").to_string_lossy().into_owned();
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                HubFile { lfs: name.ends_with(".safetensors"), path: name, bytes: Arc::new(bytes) }
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        HubRepo { commit: "3f2c6a1b9d8e7f60514a3b2c1d0e9f8a7b6c5d4e".to_owned(), files, token: None, gated: false }
    }

    pub fn with_file(mut self, path: &str, bytes: &[u8], lfs: bool) -> HubRepo {
        self.files.push(HubFile { path: path.to_owned(), bytes: Arc::new(bytes.to_vec()), lfs });
        self
    }

    pub fn file(&self, path: &str) -> &HubFile {
        self.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no file {path}"))
    }
}

/// What goes wrong with a file's downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next `times` responses for the file stop after `bytes` bytes of content, closing the connection.
    DropAfter { bytes: u64, times: u32 },
    /// The next `times` responses for the file carry one flipped byte.
    Corrupt { times: u32 },
}

#[derive(Default)]
struct State {
    repos: HashMap<String, HubRepo>,
    /// Content bytes served, by file path.
    served: HashMap<String, u64>,
    /// `METHOD target [range]` of every request.
    requests: Vec<String>,
    faults: HashMap<String, Fault>,
}

/// The server; it stops when dropped.
pub struct FakeHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    listener: Option<TcpListener>,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(State::default()));
        let accept = listener.try_clone().expect("clone listener");
        let shared = Arc::clone(&state);
        let base = endpoint.clone();
        std::thread::spawn(move || {
            for stream in accept.incoming() {
                let Ok(stream) = stream else { break };
                let state = Arc::clone(&shared);
                let base = base.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state, &base);
                });
            }
        });
        FakeHub { endpoint, state, listener: Some(listener) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_repo(&self, id: &str, repo: HubRepo) {
        self.state().repos.insert(id.to_owned(), repo);
    }

    pub fn set_fault(&self, file: &str, fault: Fault) {
        self.state().faults.insert(file.to_owned(), fault);
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Content bytes of `file` served so far.
    pub fn served(&self, file: &str) -> u64 {
        self.state().served.get(file).copied().unwrap_or(0)
    }

    pub fn served_total(&self) -> u64 {
        self.state().served.values().sum()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        // Wake the accept loop with one last connection after closing: it then fails and ends.
        if let Some(listener) = self.listener.take() {
            let address = listener.local_addr().ok();
            drop(listener);
            if let Some(address) = address {
                let _ = TcpStream::connect(address);
            }
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    Some(Request { method, target, headers })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut response = Response::new(status).header("X-Error-Message", message);
        if !code.is_empty() {
            response = response.header("X-Error-Code", code);
        }
        response.body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        response
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

fn write_head(stream: &mut TcpStream, response: &Response, length: u64) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\nConnection: close\r\n\r\n"));
    stream.write_all(head.as_bytes())
}

fn serve(stream: TcpStream, state: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(request) = read_request(&mut reader) else { return Ok(()) };
    let mut stream = stream;
    let range = request.headers.get("range").cloned();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    lock().requests.push(format!("{} {} {}", request.method, request.target, range.clone().unwrap_or_default()));

    if let Some(sha) = request.target.strip_prefix("/cdn/") {
        let sha = sha.split('?').next().unwrap_or(sha);
        let file = lock().repos.values().flat_map(|r| r.files.iter()).find(|f| f.lfs && f.sha256() == sha).cloned();
        return match file {
            Some(file) => send_content(&mut stream, state, &file, range.as_deref(), Response::new(200)),
            None => {
                let response = Response::error(404, "", "no such object");
                write_head(&mut stream, &response, response.body.len() as u64)?;
                stream.write_all(&response.body)
            }
        };
    }

    let response = route(&request, &lock(), base);
    match response {
        Routed::Answer(response) => {
            write_head(&mut stream, &response, response.body.len() as u64)?;
            stream.write_all(&response.body)
        }
        Routed::Content(file, head) => send_content(&mut stream, state, &file, range.as_deref(), head),
    }
}

enum Routed {
    Answer(Response),
    Content(HubFile, Response),
}

fn route(request: &Request, state: &State, base: &str) -> Routed {
    let path = request.target.split('?').next().unwrap_or_default();
    let (repo_id, rest, api) = match path.strip_prefix("/api/models/") {
        Some(rest) => match split_repo(rest) {
            Some((id, rest)) => (id, rest, true),
            None => return Routed::Answer(Response::error(404, "", "bad path")),
        },
        None => match split_repo(path.trim_start_matches('/')) {
            Some((id, rest)) => (id, rest, false),
            None => return Routed::Answer(Response::error(404, "", "bad path")),
        },
    };
    let Some(repo) = state.repos.get(&repo_id) else {
        return Routed::Answer(Response::error(404, "RepoNotFound", "Repository not found"));
    };
    if let Some(token) = &repo.token {
        let authorized = request.headers.get("authorization").is_some_and(|v| *v == format!("Bearer {token}"));
        if !authorized {
            return Routed::Answer(Response::error(401, "", "Invalid credentials in Authorization header"));
        }
    }
    if api {
        let Some(revision) = rest.strip_prefix("revision/") else {
            return Routed::Answer(Response::error(404, "", "bad path"));
        };
        let revision = decode(revision);
        if revision != "main" && revision != repo.commit {
            return Routed::Answer(Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {revision}")));
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut sibling = serde_json::json!({
                    "rfilename": f.path, "size": f.bytes.len(), "blobId": f.git_sha1(),
                });
                if f.lfs {
                    sibling["lfs"] =
                        serde_json::json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134});
                }
                sibling
            })
            .collect();
        let body = serde_json::json!({
            "_id": "0", "id": repo_id, "sha": repo.commit, "private": repo.token.is_some(),
            "gated": repo.gated, "siblings": siblings,
        });
        let mut response = Response::new(200).header("Content-Type", "application/json");
        response.body = body.to_string().into_bytes();
        return Routed::Answer(response);
    }
    let Some(rest) = rest.strip_prefix("resolve/") else {
        return Routed::Answer(Response::error(404, "", "bad path"));
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return Routed::Answer(Response::error(404, "", "bad path"));
    };
    if revision != "main" && revision != repo.commit {
        return Routed::Answer(Response::error(404, "RevisionNotFound", "Invalid rev id"));
    }
    if repo.gated {
        return Routed::Answer(Response::error(
            403,
            "GatedRepo",
            "Access to this model is restricted: you must accept its conditions",
        ));
    }
    let file_path = decode(file);
    let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
        return Routed::Answer(Response::error(404, "EntryNotFound", "Entry not found"));
    };
    if file.lfs {
        let response = Response::new(302)
            .header("Location", format!("{base}/cdn/{}?file={}", file.sha256(), file.path))
            .header("X-Repo-Commit", repo.commit.clone())
            .header("X-Linked-Etag", format!("\"{}\"", file.sha256()))
            .header("X-Linked-Size", file.bytes.len().to_string());
        return Routed::Answer(response);
    }
    let head = Response::new(200)
        .header("X-Repo-Commit", repo.commit.clone())
        .header("ETag", format!("\"{}\"", file.git_sha1()));
    Routed::Content(file.clone(), head)
}

/// `owner/name/rest` → (`owner/name`, `rest`).
fn split_repo(path: &str) -> Option<(String, &str)> {
    let mut parts = path.splitn(3, '/');
    let owner = parts.next()?;
    let name = parts.next()?;
    Some((format!("{owner}/{name}"), parts.next().unwrap_or_default()))
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit) {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a file's bytes (the requested range of them), applying and using up its fault.
fn send_content(
    stream: &mut TcpStream,
    state: &Mutex<State>,
    file: &HubFile,
    range: Option<&str>,
    mut head: Response,
) -> std::io::Result<()> {
    let size = file.bytes.len() as u64;
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    if start >= size && size > 0 {
        let response = Response::new(416).header("Content-Range", format!("bytes */{size}"));
        return write_head(stream, &response, 0);
    }
    if range.is_some() {
        head.status = 206;
        head = head.header("Content-Range", format!("bytes {start}-{}/{size}", size.saturating_sub(1)));
    }
    let fault = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let fault = state.faults.get(&file.path).copied();
        match fault {
            Some(Fault::DropAfter { bytes, times }) if times > 0 => {
                let next = if times > 1 { Some(Fault::DropAfter { bytes, times: times - 1 }) } else { None };
                match next {
                    Some(next) => state.faults.insert(file.path.clone(), next),
                    None => state.faults.remove(&file.path),
                };
                Some(Fault::DropAfter { bytes, times })
            }
            Some(Fault::Corrupt { times }) if times > 0 => {
                match times {
                    1 => state.faults.remove(&file.path),
                    _ => state.faults.insert(file.path.clone(), Fault::Corrupt { times: times - 1 }),
                };
                Some(Fault::Corrupt { times })
            }
            _ => None,
        }
    };
    let mut body = file.bytes[start as usize..].to_vec();
    let mut limit = body.len();
    match fault {
        Some(Fault::DropAfter { bytes, .. }) => limit = limit.min(bytes as usize),
        Some(Fault::Corrupt { .. }) if !body.is_empty() => {
            let middle = body.len() / 2;
            body[middle] ^= 0x5a;
        }
        _ => {}
    }
    write_head(stream, &head, body.len() as u64)?;
    for chunk in body[..limit].chunks(64 * 1024) {
        stream.write_all(chunk)?;
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        *state.served.entry(file.path.clone()).or_default() += chunk.len() as u64;
    }
    stream.flush()?;
    // A dropped connection: close it with the body unfinished.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
