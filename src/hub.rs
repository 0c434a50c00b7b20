//! The Hugging Face hub: a repository's file list at a revision (sizes and hashes), downloads that resume and are
//! verified, and the hub's shared cache on disk.
//!
//! Downloads land in the cache layout of Python's `huggingface_hub`, so each reuses the other's files:
//!
//! ```text
//! $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default ~/.cache/huggingface)
//!   models--owner--name/
//!     blobs/<etag>               the file's bytes; etag = sha256 for LFS files, the git blob sha1 otherwise
//!     blobs/<etag>.incomplete    a download in progress, resumed with an HTTP Range request
//!     snapshots/<commit>/<path>  relative symlinks to the blobs
//!     refs/<revision>            the commit a branch or tag pointed to
//! ```
//!
//! Every file is checked against the hub's metadata before it is used: size, and sha256 (LFS files) or the git
//! blob sha1 (small files). Files already in the cache are checked the same way and reused without a request for
//! their bytes; a file that fails the check is fetched again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Attempts per file when the connection breaks off mid-file (each resumes where the last stopped).
const ATTEMPTS: u32 = 3;
/// Bytes read from the network (and hashed) per step.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "cannot reach the Hugging Face hub at {endpoint} ({reason}). Check the network (or HF_ENDPOINT and the proxy \
         settings), or convert a checkpoint you already have: `phi-tui convert DIR`, then `phi-tui -m FILE.gguf`"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "offline (HF_HUB_OFFLINE is set) and {repo} at `{revision}` is not in the Hugging Face cache {cache}; unset \
         HF_HUB_OFFLINE to download it, or convert a local checkpoint with `phi-tui convert DIR`"
    )]
    Offline { repo: String, revision: String, cache: PathBuf },
    #[error("{repo}: no such model on {endpoint} (check the name; a private repository also needs HF_TOKEN)")]
    NotFound { repo: String, endpoint: String },
    #[error("{repo}: {endpoint} refused access ({reason}); {hint}")]
    Unauthorized { repo: String, endpoint: String, reason: String, hint: String },
    #[error(
        "{repo} is gated: accept its conditions at {endpoint}/{repo}, then set HF_TOKEN to a token of that account"
    )]
    Gated { repo: String, endpoint: String },
    #[error("{repo} has no revision `{revision}` (a branch, tag or commit)")]
    RevisionNotFound { repo: String, revision: String },
    #[error("{repo}: `{file}` is not in revision {revision}")]
    EntryNotFound { repo: String, file: String, revision: String },
    #[error("{url}: the hub answered {status}: {message}")]
    Http { url: String, status: u16, message: String },
    #[error("{url}: unexpected answer from the hub: {message}")]
    Protocol { url: String, message: String },
    #[error(
        "{file}: the download broke off at {done} of {total} bytes ({reason}); run the same command again to resume \
         from there"
    )]
    Interrupted { file: String, done: u64, total: u64, reason: String },
    #[error(
        "{file}: the downloaded bytes do not match the hub's {algorithm} (expected {expected}, got {actual}) twice"
    )]
    Corrupt { file: String, algorithm: &'static str, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the download was stopped; the next pull resumes it")]
    Cancelled,
}

impl HubError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io { path: path.to_path_buf(), source }
    }

    /// Whether the hub could not be asked at all (no network, offline mode): a cached copy may stand in.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HubError::Unreachable { .. } | HubError::Offline { .. })
    }
}

/// Where the hub is and who asks: from the environment variables Python's `huggingface_hub` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`$HF_HOME/token`, or `HF_TOKEN_PATH`).
    pub token: Option<String>,
    /// The hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
}

impl HubSettings {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| directories::BaseDirs::new().map(|dirs| dirs.home_dir().join(".cache")));
            cache.unwrap_or_else(|| PathBuf::from(".cache")).join("huggingface")
        });
        let cache_dir =
            var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or(home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or(home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
        });
        let endpoint =
            var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()).trim_end_matches('/').to_owned();
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        HubSettings { endpoint, token, cache_dir, offline }
    }
}

/// How a file's bytes are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileHash {
    /// LFS files: the sha256 of the content (also their name in the cache).
    Sha256(String),
    /// Small files kept in git: the git blob id, sha1 of `blob <size>\0<content>`.
    GitSha1(String),
}

impl FileHash {
    /// The blob's name in the cache (what the hub sends as the ETag).
    pub fn etag(&self) -> &str {
        match self {
            FileHash::Sha256(hex) | FileHash::GitSha1(hex) => hex,
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            FileHash::Sha256(_) => "sha256",
            FileHash::GitSha1(_) => "git sha1",
        }
    }
}

/// One file of a repository at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// The path inside the repository (`/`-separated).
    pub path: String,
    pub size: u64,
    pub hash: FileHash,
}

/// A repository at one commit: what the hub lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSnapshot {
    pub repo: String,
    /// The revision asked for (branch, tag or commit).
    pub revision: String,
    pub commit: String,
    pub files: Vec<RepoFile>,
}

/// What a download is doing, for progress displays. Byte counts cover every file asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// Hashing a file already on disk (a cached blob or the part of a download that resumes).
    Checking { file: String },
    /// Bytes of the files asked for that are on disk and checked, or received.
    Progress { file: String, done: u64, total: u64 },
    /// The connection broke off after `done` of the file's `total` bytes; the download resumes from there.
    Retrying { file: String, done: u64, total: u64, reason: String },
    /// A file did not match the hub's hash (in the cache or just downloaded); it is fetched again.
    Corrupt { file: String },
}

/// A client of one hub endpoint with one cache.
pub struct Hub {
    settings: HubSettings,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct ApiRepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: String,
    size: u64,
}

impl Hub {
    pub fn new(settings: HubSettings) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            // A relative redirect (a renamed repository) stays on the hub and needs the token; the CDN the large
            // files redirect to must not see it.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("phi-tui/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Hub { settings, agent }
    }

    pub fn from_env() -> Self {
        Self::new(HubSettings::from_env())
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The repository's directory in the cache: `models--owner--name`.
    pub fn repo_cache_dir(&self, repo: &str) -> PathBuf {
        self.settings.cache_dir.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The files of `repo` at `revision`, with sizes and hashes (`GET /api/models/{repo}/revision/{rev}?blobs=true`).
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<RepoSnapshot, HubError> {
        if self.settings.offline {
            return Err(HubError::Offline {
                repo: repo.to_owned(),
                revision: revision.to_owned(),
                cache: self.settings.cache_dir.clone(),
            });
        }
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.settings.endpoint, encode(revision));
        let mut response = self.get(&url, None)?;
        self.check(&response, &url, repo, revision, None)?;
        let text =
            response.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| self.transport_error(e))?;
        let info: ApiRepoInfo =
            serde_json::from_str(&text).map_err(|e| HubError::Protocol { url: url.clone(), message: e.to_string() })?;
        let commit =
            info.sha.ok_or_else(|| HubError::Protocol { url: url.clone(), message: "no commit (`sha`)".to_owned() })?;
        let mut files = Vec::with_capacity(info.siblings.len());
        for sibling in info.siblings {
            let (size, hash) = match (sibling.lfs, sibling.blob_id, sibling.size) {
                (Some(lfs), _, _) => (lfs.size, FileHash::Sha256(lfs.sha256.to_ascii_lowercase())),
                (None, Some(blob), Some(size)) => (size, FileHash::GitSha1(blob.to_ascii_lowercase())),
                _ => {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("no size or hash for {} (is `blobs=true` supported?)", sibling.rfilename),
                    })
                }
            };
            files.push(RepoFile { path: sibling.rfilename, size, hash });
        }
        Ok(RepoSnapshot { repo: repo.to_owned(), revision: revision.to_owned(), commit, files })
    }

    /// The snapshot directory of `repo` at `revision` in the cache, if one is there (for offline use). Its files
    /// cannot be checked without the hub's metadata.
    pub fn cached_snapshot_dir(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        let dir = self.repo_cache_dir(repo);
        let commit = if is_commit_hash(revision) {
            revision.to_owned()
        } else {
            std::fs::read_to_string(dir.join("refs").join(revision)).ok()?.trim().to_owned()
        };
        let snapshot = dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    /// Makes `files` of the snapshot present and checked in the cache, downloading what is missing, and returns
    /// the snapshot's directory. `cancel` stops a download between two chunks.
    pub fn fetch(
        &self,
        snapshot: &RepoSnapshot,
        files: &[&RepoFile],
        on_event: &mut dyn FnMut(FetchEvent),
        cancel: &AtomicBool,
    ) -> Result<PathBuf, HubError> {
        let repo_dir = self.repo_cache_dir(&snapshot.repo);
        let blobs = repo_dir.join("blobs");
        let snapshot_dir = repo_dir.join("snapshots").join(&snapshot.commit);
        std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| HubError::io(&snapshot_dir, e))?;
        if snapshot.revision != snapshot.commit {
            let reference = repo_dir.join("refs").join(&snapshot.revision);
            if let Some(parent) = reference.parent() {
                std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
            }
            phi_converters::write_atomically(&reference, snapshot.commit.as_bytes())
                .map_err(|e| HubError::io(&reference, e))?;
        }
        let mut progress = Totals { done: 0, total: files.iter().map(|f| f.size).sum() };
        for file in files {
            let blob = blobs.join(file.hash.etag());
            self.fetch_blob(snapshot, file, &blob, &mut progress, on_event, cancel)?;
            link_into_snapshot(&snapshot_dir, &file.path, &blob)?;
        }
        Ok(snapshot_dir)
    }

    fn fetch_blob(
        &self,
        snapshot: &RepoSnapshot,
        file: &RepoFile,
        blob: &Path,
        progress: &mut Totals,
        on_event: &mut dyn FnMut(FetchEvent),
        cancel: &AtomicBool,
    ) -> Result<(), HubError> {
        if blob.exists() {
            on_event(FetchEvent::Checking { file: file.path.clone() });
            let mut hasher = Hasher::new(&file.hash, file.size);
            let size = hash_file(blob, &mut hasher, u64::MAX, cancel)?;
            if size == file.size && hasher.hex() == file.hash.etag() {
                progress.done += file.size;
                on_event(progress.event(&file.path));
                return Ok(());
            }
            tracing::debug!(file = file.path, blob = %blob.display(), "cached file does not match the hub's hash");
            on_event(FetchEvent::Corrupt { file: file.path.clone() });
            std::fs::remove_file(blob).map_err(|e| HubError::io(blob, e))?;
        }
        let partial = blob.with_file_name(format!("{}.incomplete", file.hash.etag()));
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.settings.endpoint,
            snapshot.repo,
            snapshot.commit,
            file.path.split('/').map(encode).collect::<Vec<_>>().join("/")
        );
        let mut mismatches = 0;
        loop {
            let actual = self.download(snapshot, file, &url, &partial, progress, on_event, cancel)?;
            if actual == file.hash.etag() {
                phi_converters::rename_durably(&partial, blob).map_err(|e| HubError::io(blob, e))?;
                return Ok(());
            }
            let _ = std::fs::remove_file(&partial);
            progress.done -= file.size;
            mismatches += 1;
            tracing::debug!(file = file.path, expected = file.hash.etag(), actual, "download does not match its hash");
            if mismatches == 2 {
                return Err(HubError::Corrupt {
                    file: file.path.clone(),
                    algorithm: file.hash.algorithm(),
                    expected: file.hash.etag().to_owned(),
                    actual,
                });
            }
            on_event(FetchEvent::Corrupt { file: file.path.clone() });
        }
    }

    /// Downloads `file` into `partial`, resuming from what it holds, retrying broken connections; returns the
    /// hash of the complete content. On return `progress` counts the whole file as done.
    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        snapshot: &RepoSnapshot,
        file: &RepoFile,
        url: &str,
        partial: &Path,
        progress: &mut Totals,
        on_event: &mut dyn FnMut(FetchEvent),
        cancel: &AtomicBool,
    ) -> Result<String, HubError> {
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(|e| HubError::io(partial, e))?;
        let mut hasher = Hasher::new(&file.hash, file.size);
        let mut have = out.metadata().map_err(|e| HubError::io(partial, e))?.len();
        if have > file.size {
            out.set_len(0).map_err(|e| HubError::io(partial, e))?;
            have = 0;
        }
        if have > 0 {
            on_event(FetchEvent::Checking { file: file.path.clone() });
            have = hash_file(partial, &mut hasher, have, cancel)?;
        }
        let base = progress.done;
        progress.done = base + have;
        on_event(progress.event(&file.path));
        let mut attempt = 0;
        while have < file.size {
            if cancel.load(Ordering::Relaxed) {
                return Err(HubError::Cancelled);
            }
            attempt += 1;
            let result =
                self.receive(snapshot, file, url, &mut out, partial, &mut have, &mut hasher, cancel, &mut |done| {
                    progress.done = base + done;
                    on_event(progress.event(&file.path));
                });
            match result {
                Ok(()) => {}
                Err(Receive::Fatal(error)) => return Err(error),
                Err(Receive::Broken(reason)) => {
                    tracing::debug!(file = file.path, have, attempt, reason, "download broke off");
                    if attempt >= ATTEMPTS {
                        return Err(HubError::Interrupted {
                            file: file.path.clone(),
                            done: have,
                            total: file.size,
                            reason,
                        });
                    }
                    on_event(FetchEvent::Retrying { file: file.path.clone(), done: have, total: file.size, reason });
                    std::thread::sleep(Duration::from_millis(250 << attempt));
                }
            }
        }
        out.sync_all().map_err(|e| HubError::io(partial, e))?;
        progress.done = base + file.size;
        Ok(hasher.hex())
    }

    /// One request for the bytes from `have` on, appended to `out` and hashed as they arrive.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &self,
        snapshot: &RepoSnapshot,
        file: &RepoFile,
        url: &str,
        out: &mut File,
        partial: &Path,
        have: &mut u64,
        hasher: &mut Hasher,
        cancel: &AtomicBool,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), Receive> {
        let range = (*have > 0).then(|| format!("bytes={have}-"));
        let mut response = match self.get(url, range.as_deref()) {
            Ok(response) => response,
            Err(HubError::Unreachable { reason, .. }) => return Err(Receive::Broken(reason)),
            Err(error) => return Err(Receive::Fatal(error)),
        };
        let status = response.status().as_u16();
        match status {
            206 => {
                let start = header(&response, "content-range")
                    .and_then(|v| v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
                if start != Some(*have) {
                    return Err(Receive::Fatal(HubError::Protocol {
                        url: url.to_owned(),
                        message: format!("asked for bytes from {have}, got Content-Range {start:?}"),
                    }));
                }
            }
            200 => {
                // The server ignored the range: start over.
                if *have > 0 {
                    out.set_len(0).map_err(|e| Receive::Fatal(HubError::io(partial, e)))?;
                    *hasher = Hasher::new(&file.hash, file.size);
                    *have = 0;
                    on_bytes(0);
                }
            }
            416 if *have == file.size => return Ok(()),
            _ => {
                self.check(&response, url, &snapshot.repo, &snapshot.commit, Some(&file.path))
                    .map_err(Receive::Fatal)?;
                return Err(Receive::Fatal(HubError::Protocol {
                    url: url.to_owned(),
                    message: format!("status {status} for a file download"),
                }));
            }
        }
        out.seek(SeekFrom::Start(*have)).map_err(|e| Receive::Fatal(HubError::io(partial, e)))?;
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = out.flush();
                return Err(Receive::Fatal(HubError::Cancelled));
            }
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Receive::Broken(e.to_string())),
            };
            let take = (n as u64).min(file.size - *have) as usize;
            out.write_all(&buffer[..take]).map_err(|e| Receive::Fatal(HubError::io(partial, e)))?;
            hasher.update(&buffer[..take]);
            *have += take as u64;
            on_bytes(*have);
            if take < n {
                // More bytes than the hub's size: the content is not what the metadata describes.
                break;
            }
        }
        if *have < file.size {
            return Err(Receive::Broken("the connection closed early".to_owned()));
        }
        Ok(())
    }

    fn get(&self, url: &str, range: Option<&str>) -> Result<ureq::http::Response<ureq::Body>, HubError> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.settings.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        request.call().map_err(|e| self.transport_error(e))
    }

    fn transport_error(&self, error: ureq::Error) -> HubError {
        HubError::Unreachable { endpoint: self.settings.endpoint.clone(), reason: error.to_string() }
    }

    /// Turns an error status into what it means for the user (the hub names the case in `X-Error-Code`).
    fn check(
        &self,
        response: &ureq::http::Response<ureq::Body>,
        url: &str,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> Result<(), HubError> {
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        let code = header(response, "x-error-code").unwrap_or_default();
        let message = header(response, "x-error-message").unwrap_or_default();
        let endpoint = self.settings.endpoint.clone();
        let repo = repo.to_owned();
        Err(match (status, code.as_str()) {
            (_, "GatedRepo") => HubError::Gated { repo, endpoint },
            (_, "RevisionNotFound") => HubError::RevisionNotFound { repo, revision: revision.to_owned() },
            (_, "EntryNotFound") => HubError::EntryNotFound {
                repo,
                file: file.unwrap_or_default().to_owned(),
                revision: revision.to_owned(),
            },
            // The hub answers 401 RepoNotFound for private repositories too, so as not to tell them apart.
            (404, _) | (401 | 403, "RepoNotFound") => HubError::NotFound { repo, endpoint },
            (401 | 403, _) => {
                let hint = if self.settings.token.is_some() {
                    "the token (HF_TOKEN or `huggingface-cli login`) was not accepted for it: check it at \
                     https://huggingface.co/settings/tokens"
                } else {
                    "it needs a token: set HF_TOKEN (or run `huggingface-cli login`)"
                };
                let reason = if message.is_empty() { format!("status {status}") } else { message };
                HubError::Unauthorized { repo, endpoint, reason, hint: hint.to_owned() }
            }
            _ => HubError::Http {
                url: url.to_owned(),
                status,
                message: if message.is_empty() { "no message".to_owned() } else { message },
            },
        })
    }
}

enum Receive {
    /// The connection broke: try again from what is on disk.
    Broken(String),
    Fatal(HubError),
}

struct Totals {
    done: u64,
    total: u64,
}

impl Totals {
    fn event(&self, file: &str) -> FetchEvent {
        FetchEvent::Progress { file: file.to_owned(), done: self.done, total: self.total }
    }
}

/// The hash a file is checked with, fed as its bytes arrive.
enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn new(hash: &FileHash, size: u64) -> Self {
        match hash {
            FileHash::Sha256(_) => Hasher::Sha256(Sha256::new()),
            FileHash::GitSha1(_) => {
                let mut sha1 = Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(sha1)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
        }
    }

    fn hex(&self) -> String {
        match self {
            Hasher::Sha256(h) => to_hex(&h.clone().finalize()),
            Hasher::GitSha1(h) => to_hex(&h.clone().finalize()),
        }
    }
}

/// Feeds at most `limit` bytes of `path` to `hasher`; returns how many there were.
fn hash_file(path: &Path, hasher: &mut Hasher, limit: u64, cancel: &AtomicBool) -> Result<u64, HubError> {
    let file = File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut reader = file.take(limit);
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(HubError::Cancelled);
        }
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io(path, e)),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
}

/// `snapshots/<commit>/<path>` → the blob, as the relative symlink `huggingface_hub` makes (a copy where the
/// platform has no symlinks).
fn link_into_snapshot(snapshot_dir: &Path, path: &str, blob: &Path) -> Result<(), HubError> {
    let link = snapshot_dir.join(path);
    let parent = link.parent().unwrap_or(snapshot_dir);
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    // From snapshots/<commit>/<path>: up once per directory level of the path, then snapshots/<commit>.
    let depth = path.split('/').count() + 1;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    if std::fs::read_link(&link).is_ok_and(|existing| existing == target) {
        return Ok(());
    }
    match std::fs::symlink_metadata(&link) {
        Ok(_) => std::fs::remove_file(&link).map_err(|e| HubError::io(&link, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HubError::io(&link, e)),
    }
    #[cfg(unix)]
    let result = std::os::unix::fs::symlink(&target, &link);
    #[cfg(not(unix))]
    let result = std::fs::copy(blob, &link).map(|_| ());
    result.map_err(|e| HubError::io(&link, e))
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `repo` is a valid `owner/name` repository id.
pub fn is_repo_id(repo: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && !part.starts_with(['.', '-'])
            && !part.contains("..")
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    matches!(repo.split_once('/'), Some((owner, name)) if valid(owner) && valid(name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_are_sha1_of_the_header_and_content() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut hasher = Hasher::new(&FileHash::GitSha1(String::new()), 6);
        hasher.update(b"hello\n");
        assert_eq!(hasher.hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let mut hasher = Hasher::new(&FileHash::Sha256(String::new()), 0);
        hasher.update(b"abc");
        assert_eq!(hasher.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn repository_ids_and_url_segments() {
        assert!(is_repo_id("microsoft/phi-1_5"));
        assert!(!is_repo_id("phi-1"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("a/.."));
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("model-00001-of-00002.safetensors"), "model-00001-of-00002.safetensors");
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash("main"));
    }

    #[test]
    fn snapshot_links_are_relative_to_the_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blobs/abc");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        let snapshot = dir.path().join("snapshots/c0ffee");
        link_into_snapshot(&snapshot, "config.json", &blob).unwrap();
        link_into_snapshot(&snapshot, "sub/dir/file.txt", &blob).unwrap();
        // Twice is harmless.
        link_into_snapshot(&snapshot, "config.json", &blob).unwrap();
        assert_eq!(std::fs::read_link(snapshot.join("config.json")).unwrap(), Path::new("../../blobs/abc"));
        assert_eq!(std::fs::read_link(snapshot.join("sub/dir/file.txt")).unwrap(), Path::new("../../../../blobs/abc"));
        assert_eq!(std::fs::read(snapshot.join("sub/dir/file.txt")).unwrap(), b"x");
    }
}
