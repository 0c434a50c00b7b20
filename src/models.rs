//! Installed models: `pull` (download from the Hugging Face hub, convert, record), the registry of what is installed
//! (`models/models.json` in the data directory, next to the GGUFs), and [`resolve`], the one rule every subcommand
//! uses to pick its model.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use phi_converters::OutType;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, ConfigError};
use crate::convert::{convert_checkpoint, CheckpointConversion, CheckpointError, ConvertStage};
use crate::hub::{self, FetchEvent, Hub, HubError, RepoFile, RepoSnapshot};

/// A model `pull` knows by a short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub repo: &'static str,
    /// About what the download weighs (the safetensors in f16), in bytes.
    pub download_bytes: u64,
    pub about: &'static str,
}

/// The public phi models.
pub const KNOWN_MODELS: [KnownModel; 3] = [
    KnownModel {
        name: "phi-1",
        repo: "microsoft/phi-1",
        download_bytes: 2_840_000_000,
        about: "1.3B, Python code (HumanEval 50.6%)",
    },
    KnownModel {
        name: "phi-1_5",
        repo: "microsoft/phi-1_5",
        download_bytes: 2_840_000_000,
        about: "1.3B, code and common-sense text",
    },
    KnownModel { name: "phi-2", repo: "microsoft/phi-2", download_bytes: 5_560_000_000, about: "2.7B, code and text" },
];

/// The model the first-run screen offers.
pub const FIRST_MODEL: KnownModel = KNOWN_MODELS[0];

/// The registry's file inside [`models_dir`].
const REGISTRY_FILE: &str = "models.json";

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(
        "phi-1-small (350M) is described in the phi-1 paper, but its weights were never published; the public models \
         are {known}"
    )]
    NotPublic { known: String },
    #[error("unknown model `{name}`: pull one of {known}, or a Hugging Face repository as owner/name")]
    Unknown { name: String, known: String },
    #[error("`{name}` is not installed: `phi-tui pull {name}` downloads it{size}")]
    NotInstalled { name: String, size: String },
    #[error("no model `{name}`: it is neither a file nor an installed model ({installed})")]
    NoSuchModel { name: String, installed: String },
    #[error("no installed model `{name}` ({installed})")]
    NotAnInstalledModel { name: String, installed: String },
    #[error("several models are installed ({names}): pick one with -m NAME, or set `model = \"NAME\"` in {config}")]
    Ambiguous { names: String, config: String },
    #[error("{name}: its file {path} is gone; `phi-tui pull {name}` makes it again, `phi-tui rm {name}` forgets it")]
    Missing { name: String, path: PathBuf },
    #[error("`{name}` cannot name a model: use letters, digits, `-`, `_` and `.`")]
    BadName { name: String },
    #[error(
        "{repo} has no safetensors weights (model.safetensors or model-*.safetensors); phi-tui converts only those"
    )]
    NoWeights { repo: String },
    #[error("{repo} is not a phi checkpoint phi-tui can convert: {reason}")]
    NotPhi { repo: String, reason: String },
    #[error("{path}: {message}")]
    Registry { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Convert(#[from] CheckpointError),
}

/// Where an installed model came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSource {
    /// Downloaded from a hub.
    Hub { endpoint: String, repo: String, revision: String, commit: String },
    /// Converted from a checkpoint directory on this machine.
    Local { dir: PathBuf },
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Hub { endpoint, repo, commit, .. } => {
                let commit = commit.get(..7).unwrap_or(commit);
                if endpoint == hub::DEFAULT_ENDPOINT {
                    write!(f, "hf:{repo}@{commit}")
                } else {
                    write!(f, "{endpoint}/{repo}@{commit}")
                }
            }
            ModelSource::Local { dir } => write!(f, "local:{}", dir.display()),
        }
    }
}

/// One installed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledModel {
    pub name: String,
    /// The GGUF's type (`q8_0`, `f16`, …).
    pub quant: String,
    /// The GGUF.
    pub path: PathBuf,
    /// The GGUF's size in bytes.
    pub size: u64,
    pub source: ModelSource,
    /// The checkpoint directory it was converted from (in the Hugging Face cache for pulled models), which
    /// `finetune` trains on.
    pub checkpoint: Option<PathBuf>,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    models: Vec<InstalledModel>,
}

/// The installed models, as recorded in the data directory.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    pub models: Vec<InstalledModel>,
}

/// Where installed GGUFs and the registry live.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

impl Registry {
    /// Reads the registry; none yet means no models.
    pub fn load(data_dir: &Path) -> Result<Registry, ModelsError> {
        let path = models_dir(data_dir).join(REGISTRY_FILE);
        let models = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<RegistryFile>(&text)
                    .map_err(|e| ModelsError::Registry { path: path.clone(), message: e.to_string() })?
                    .models
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ModelsError::Registry { path, message: e.to_string() }),
        };
        Ok(Registry { path, models })
    }

    pub fn get(&self, name: &str) -> Option<&InstalledModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The installed names, for messages.
    pub fn names(&self) -> String {
        if self.models.is_empty() {
            "none installed".to_owned()
        } else {
            format!("installed: {}", self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "))
        }
    }

    /// Adds a model, replacing one of the same name, which is returned.
    pub fn insert(&mut self, model: InstalledModel) -> Option<InstalledModel> {
        let old = self.models.iter().position(|m| m.name == model.name).map(|i| self.models.remove(i));
        self.models.push(model);
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
        old
    }

    /// Writes the registry (write-then-rename: readers see the old list or the new one).
    pub fn save(&self) -> Result<(), ModelsError> {
        let error = |message: String| ModelsError::Registry { path: self.path.clone(), message };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
        }
        let file = RegistryFile { version: 1, models: self.models.clone() };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| error(e.to_string()))?;
        phi_converters::write_atomically(&self.path, &json).map_err(|e| error(e.to_string()))
    }
}

/// Whether `text` names a model rather than a path: no directory separator, no `.gguf` ending.
pub fn is_bare_name(text: &str) -> bool {
    !text.is_empty()
        && !text.contains(['/', '\\'])
        && !text.starts_with(['~', '.'])
        && !text.to_ascii_lowercase().ends_with(".gguf")
}

fn known_list() -> String {
    KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// `2840000000` → `2.8 GB`.
pub fn human_size(bytes: u64) -> String {
    let units = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, scale) in units {
        if bytes as f64 >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale);
        }
    }
    format!("{bytes} B")
}

/// The model every subcommand uses: `given` (`-m`: an installed name or a path), else the config file's `model`
/// (the same), else the only installed model. `None`: nothing is installed or configured — time for first-run
/// guidance.
pub fn resolve(given: Option<&Path>, config: &Config) -> Result<Option<PathBuf>, ModelsError> {
    resolve_in(&config::data_dir()?, given, config)
}

/// [`resolve`] without a model given, for servers that start without one: what cannot be resolved is logged.
pub fn default_model(config: &Config) -> Option<PathBuf> {
    resolve(None, config).unwrap_or_else(|error| {
        tracing::warn!("no default model: {error}");
        None
    })
}

/// [`resolve`] with the data directory given.
pub fn resolve_in(data_dir: &Path, given: Option<&Path>, config: &Config) -> Result<Option<PathBuf>, ModelsError> {
    match select(data_dir, given, config)? {
        Some(Selected::Installed(model)) => checked(&model).map(Some),
        Some(Selected::Path(path)) => Ok(Some(path)),
        None => Ok(None),
    }
}

/// [`resolve`] for training, which reads checkpoints: an installed model gives the checkpoint it was converted
/// from where that is still there (else its GGUF).
pub fn resolve_checkpoint(given: Option<&Path>, config: &Config) -> Result<Option<PathBuf>, ModelsError> {
    match select(&config::data_dir()?, given, config)? {
        Some(Selected::Installed(model)) => match &model.checkpoint {
            Some(dir) if dir.join("config.json").is_file() => Ok(Some(dir.clone())),
            _ => checked(&model).map(Some),
        },
        Some(Selected::Path(path)) => Ok(Some(path)),
        None => Ok(None),
    }
}

enum Selected {
    Installed(InstalledModel),
    Path(PathBuf),
}

fn select(data_dir: &Path, given: Option<&Path>, config: &Config) -> Result<Option<Selected>, ModelsError> {
    if let Some(given) = given.or(config.model.as_deref()) {
        return select_given(data_dir, given).map(Some);
    }
    let mut registry = Registry::load(data_dir)?;
    match registry.models.len() {
        0 => Ok(None),
        1 => Ok(registry.models.pop().map(Selected::Installed)),
        _ => Err(ModelsError::Ambiguous {
            names: registry.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            config: Config::path().map(|p| p.display().to_string()).unwrap_or_else(|_| "config.toml".to_owned()),
        }),
    }
}

/// An installed name (which wins over a file of the same name: `./NAME` means the file), else a path.
fn select_given(data_dir: &Path, given: &Path) -> Result<Selected, ModelsError> {
    let Some(name) = given.to_str().filter(|text| is_bare_name(text)) else {
        return Ok(Selected::Path(given.to_path_buf()));
    };
    let registry = Registry::load(data_dir)?;
    if let Some(model) = registry.get(name) {
        return Ok(Selected::Installed(model.clone()));
    }
    if given.exists() {
        return Ok(Selected::Path(given.to_path_buf()));
    }
    if let Some(known) = KNOWN_MODELS.iter().find(|m| m.name == name) {
        return Err(ModelsError::NotInstalled {
            name: name.to_owned(),
            size: format!(" (about {}) and converts it", human_size(known.download_bytes)),
        });
    }
    Err(ModelsError::NoSuchModel { name: name.to_owned(), installed: registry.names() })
}

fn checked(model: &InstalledModel) -> Result<PathBuf, ModelsError> {
    if model.path.is_file() {
        Ok(model.path.clone())
    } else {
        Err(ModelsError::Missing { name: model.name.clone(), path: model.path.clone() })
    }
}

/// What `pull` fetches: a repository and the name it is installed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullTarget {
    pub repo: String,
    pub name: String,
}

impl PullTarget {
    /// `phi-1`, `phi-1_5`, `phi-2`, or `owner/name` (installed under the short name of a known model, else `name`).
    pub fn parse(model: &str) -> Result<PullTarget, ModelsError> {
        let model = model.trim();
        if let Some(known) =
            KNOWN_MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(model) || m.repo.eq_ignore_ascii_case(model))
        {
            return Ok(PullTarget { repo: known.repo.to_owned(), name: known.name.to_owned() });
        }
        let last = model.rsplit('/').next().unwrap_or(model);
        if last.eq_ignore_ascii_case("phi-1-small") || last.eq_ignore_ascii_case("phi-1_small") {
            return Err(ModelsError::NotPublic { known: known_list() });
        }
        match model.split_once('/') {
            Some((_, name)) if hub::is_repo_id(model) => {
                Ok(PullTarget { repo: model.to_owned(), name: name.to_owned() })
            }
            _ => Err(ModelsError::Unknown { name: model.to_owned(), known: known_list() }),
        }
    }
}

/// What to pull and how to install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// A known name or `owner/name`.
    pub model: String,
    /// A branch, tag or commit.
    pub revision: String,
    /// The GGUF's type (default: [`default_quant`]).
    pub quant: Option<OutType>,
    /// The installed name (default: the known model's name, or the repository's).
    pub name: Option<String>,
    /// Threads for llama.cpp's quantizer.
    pub threads: Option<u32>,
}

impl PullRequest {
    pub fn new(model: impl Into<String>) -> Self {
        PullRequest { model: model.into(), revision: "main".to_owned(), quant: None, name: None, threads: None }
    }
}

/// What a pull or an install is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    /// Asking the hub for the repository's files.
    Resolving {
        repo: String,
    },
    /// The hub could not be asked; the copy in the Hugging Face cache is used.
    UsingCache {
        repo: String,
        reason: String,
    },
    Download(FetchEvent),
    Converting {
        out_type: OutType,
        done: u64,
        total: u64,
    },
    Quantizing {
        out_type: OutType,
    },
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub model: InstalledModel,
    /// The model of the same name it replaced.
    pub replaced: Option<InstalledModel>,
    /// Nothing to do: the same commit was installed at the same type.
    pub up_to_date: bool,
}

/// f16 where llama.cpp has a GPU to offload to, q8_0 on a CPU (half the memory traffic per token there).
pub fn default_quant() -> OutType {
    if crate::engine::gpu_offload_available() {
        OutType::F16
    } else {
        OutType::Q8_0
    }
}

/// The files of a checkpoint that conversion reads; `config.json` first.
fn checkpoint_files(snapshot: &RepoSnapshot) -> Result<Vec<&RepoFile>, ModelsError> {
    const EXTRA: [&str; 8] = [
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "generation_config.json",
    ];
    let top_level = |f: &&RepoFile| !f.path.contains('/');
    let config = snapshot.files.iter().filter(top_level).find(|f| f.path == "config.json").ok_or_else(|| {
        ModelsError::NotPhi { repo: snapshot.repo.clone(), reason: "it has no config.json".to_owned() }
    })?;
    let weights: Vec<&RepoFile> = snapshot
        .files
        .iter()
        .filter(top_level)
        .filter(|f| f.path.starts_with("model") && f.path.ends_with(".safetensors"))
        .collect();
    if weights.is_empty() {
        return Err(ModelsError::NoWeights { repo: snapshot.repo.clone() });
    }
    let mut files = vec![config];
    files.extend(snapshot.files.iter().filter(top_level).filter(|f| EXTRA.contains(&f.path.as_str())));
    files.extend(weights);
    Ok(files)
}

/// Downloads a model from the hub (reusing and completing what the Hugging Face cache has), converts it into the
/// data directory and records it. Without the hub (offline, unreachable), a complete copy in the cache is used.
pub fn pull(
    hub: &Hub,
    data_dir: &Path,
    request: &PullRequest,
    on_event: &mut dyn FnMut(PullEvent),
    cancel: &AtomicBool,
) -> Result<Pulled, ModelsError> {
    let target = PullTarget::parse(&request.model)?;
    let name = request.name.clone().unwrap_or_else(|| target.name.clone());
    check_name(&name)?;
    let out_type = request.quant.unwrap_or_else(default_quant);
    let revision = request.revision.as_str();
    let endpoint = hub.settings().endpoint.clone();
    on_event(PullEvent::Resolving { repo: target.repo.clone() });
    let (checkpoint, commit) = match hub.snapshot(&target.repo, revision) {
        Ok(snapshot) => {
            let source = hub_source(&endpoint, &target.repo, revision, &snapshot.commit);
            if let Some(installed) = installed_already(data_dir, &name, &source, out_type)? {
                return Ok(Pulled { model: installed, replaced: None, up_to_date: true });
            }
            let files = checkpoint_files(&snapshot)?;
            let mut on_fetch = |event: FetchEvent| on_event(PullEvent::Download(event));
            // config.json first: a repository that is not a phi model is refused before its weights come.
            let dir = hub.fetch(&snapshot, &files[..1], &mut on_fetch, cancel)?;
            phi_converters::ModelConfig::read(&dir)
                .map_err(|e| ModelsError::NotPhi { repo: target.repo.clone(), reason: e.to_string() })?;
            let dir = hub.fetch(&snapshot, &files[1..], &mut on_fetch, cancel)?;
            (dir, snapshot.commit)
        }
        Err(error) if error.is_unreachable() => {
            let Some(dir) = hub.cached_snapshot_dir(&target.repo, revision) else { return Err(error.into()) };
            let commit = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let source = hub_source(&endpoint, &target.repo, revision, &commit);
            if let Some(installed) = installed_already(data_dir, &name, &source, out_type)? {
                return Ok(Pulled { model: installed, replaced: None, up_to_date: true });
            }
            let reason = match error {
                HubError::Unreachable { endpoint, reason } => format!("cannot reach {endpoint} ({reason})"),
                _ => "HF_HUB_OFFLINE is set".to_owned(),
            };
            on_event(PullEvent::UsingCache { repo: target.repo.clone(), reason });
            (dir, commit)
        }
        Err(error) => return Err(error.into()),
    };
    let source = hub_source(&endpoint, &target.repo, revision, &commit);
    install(data_dir, &checkpoint, &name, out_type, source, request.threads, on_event)
}

fn hub_source(endpoint: &str, repo: &str, revision: &str, commit: &str) -> ModelSource {
    ModelSource::Hub {
        endpoint: endpoint.to_owned(),
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        commit: commit.to_owned(),
    }
}

fn installed_already(
    data_dir: &Path,
    name: &str,
    source: &ModelSource,
    out_type: OutType,
) -> Result<Option<InstalledModel>, ModelsError> {
    let registry = Registry::load(data_dir)?;
    let same = |m: &&InstalledModel| {
        let same_commit = match (&m.source, source) {
            (ModelSource::Hub { repo: a, commit: c, .. }, ModelSource::Hub { repo: b, commit: d, .. }) => {
                a == b && c == d
            }
            _ => false,
        };
        same_commit && m.quant == out_type.name() && m.path.is_file()
    };
    Ok(registry.get(name).filter(same).cloned())
}

fn check_name(name: &str) -> Result<(), ModelsError> {
    let valid = is_bare_name(name) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ModelsError::BadName { name: name.to_owned() })
    }
}

/// The installed name for a local checkpoint directory: its own name, made safe.
pub fn name_for_checkpoint(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let name = name.trim_start_matches(['.', '-']).to_owned();
    if name.is_empty() {
        "local".to_owned()
    } else {
        name
    }
}

/// Converts a checkpoint directory into the data directory as `name` and records it (replacing a model of that
/// name; its old GGUF is removed once the new one is in place).
pub fn install(
    data_dir: &Path,
    checkpoint: &Path,
    name: &str,
    out_type: OutType,
    source: ModelSource,
    threads: Option<u32>,
    on_event: &mut dyn FnMut(PullEvent),
) -> Result<Pulled, ModelsError> {
    check_name(name)?;
    let dir = models_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| ModelsError::Registry { path: dir.clone(), message: e.to_string() })?;
    let output = dir.join(format!("{name}.{out_type}.gguf"));
    let conversion = CheckpointConversion { out_type, tokenizer: None, threads };
    convert_checkpoint(checkpoint, &output, &conversion, &mut |stage| match stage {
        ConvertStage::Converting(progress) => {
            on_event(PullEvent::Converting { out_type, done: progress.bytes_done, total: progress.bytes_total })
        }
        ConvertStage::Quantizing(out_type) => on_event(PullEvent::Quantizing { out_type }),
    })?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let installed_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let model = InstalledModel {
        name: name.to_owned(),
        quant: out_type.name().to_owned(),
        path: output,
        size,
        source,
        checkpoint: Some(checkpoint.to_path_buf()),
        installed_at,
    };
    let mut registry = Registry::load(data_dir)?;
    let replaced = registry.insert(model.clone());
    registry.save()?;
    if let Some(old) = replaced.as_ref().filter(|old| old.path != model.path) {
        if let Err(error) = std::fs::remove_file(&old.path) {
            tracing::warn!(path = %old.path.display(), %error, "could not remove the replaced model's file");
        }
    }
    Ok(Pulled { model, replaced, up_to_date: false })
}

/// Forgets an installed model and deletes its GGUF (the download stays in the Hugging Face cache).
pub fn remove(data_dir: &Path, name: &str) -> Result<InstalledModel, ModelsError> {
    let mut registry = Registry::load(data_dir)?;
    let Some(index) = registry.models.iter().position(|m| m.name == name) else {
        return Err(ModelsError::NotAnInstalledModel { name: name.to_owned(), installed: registry.names() });
    };
    let model = registry.models.remove(index);
    registry.save()?;
    match std::fs::remove_file(&model.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ModelsError::Registry { path: model.path.clone(), message: e.to_string() }),
    }
    Ok(model)
}

/// What a model argument of the TUI's load prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// A GGUF to load (a path, or an installed model's file).
    File(PathBuf),
    /// A checkpoint directory to convert and install first.
    Checkpoint(PathBuf),
    /// A model to pull first.
    Pull(String),
}

/// Reads what the user typed: an installed name, a GGUF path, a checkpoint directory, or a model to pull.
pub fn choose(text: &str, data_dir: &Path) -> Result<ModelChoice, ModelsError> {
    let text = text.trim();
    if is_bare_name(text) {
        if let Some(model) = Registry::load(data_dir)?.get(text) {
            return checked(model).map(ModelChoice::File);
        }
    }
    let path = config::resolve_path(Path::new(text), Path::new("."));
    if path.is_dir() {
        return Ok(ModelChoice::Checkpoint(path));
    }
    if !path.exists() && (is_bare_name(text) || hub::is_repo_id(text)) && !text.ends_with(".gguf") {
        return Ok(ModelChoice::Pull(text.to_owned()));
    }
    Ok(ModelChoice::File(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn model(name: &str, path: PathBuf) -> InstalledModel {
        InstalledModel {
            name: name.to_owned(),
            quant: "q8_0".to_owned(),
            path,
            size: 1,
            source: ModelSource::Local { dir: PathBuf::from("/ckpt") },
            checkpoint: None,
            installed_at: 0,
        }
    }

    #[test]
    fn pull_targets() {
        let target = PullTarget::parse("phi-1").unwrap();
        assert_eq!((target.repo.as_str(), target.name.as_str()), ("microsoft/phi-1", "phi-1"));
        assert_eq!(PullTarget::parse("microsoft/phi-2").unwrap().name, "phi-2");
        assert_eq!(PullTarget::parse("someone/phi-1-ft").unwrap().name, "phi-1-ft");
        let error = PullTarget::parse("phi-1-small").unwrap_err().to_string();
        assert!(error.contains("never published") && error.contains("phi-1, phi-1_5, phi-2"), "{error}");
        assert!(matches!(PullTarget::parse("microsoft/phi-1-small"), Err(ModelsError::NotPublic { .. })));
        let error = PullTarget::parse("llama").unwrap_err().to_string();
        assert!(error.contains("unknown model `llama`") && error.contains("phi-1, phi-1_5, phi-2"), "{error}");
    }

    #[test]
    fn resolution_order() {
        let data = tempfile::tempdir().unwrap();
        let none = Config::default();
        assert_eq!(resolve_in(data.path(), None, &none).unwrap(), None);
        let error = resolve_in(data.path(), Some(Path::new("phi-1")), &none).unwrap_err().to_string();
        assert!(error.contains("phi-tui pull phi-1"), "{error}");
        let error = resolve_in(data.path(), Some(Path::new("nothing")), &none).unwrap_err().to_string();
        assert!(error.contains("no model `nothing`"), "{error}");
        // Paths pass through for the loader to judge.
        let path = Path::new("/models/x.gguf");
        assert_eq!(resolve_in(data.path(), Some(path), &none).unwrap().as_deref(), Some(path));

        let file = data.path().join("a.gguf");
        std::fs::write(&file, b"x").unwrap();
        let mut registry = Registry::load(data.path()).unwrap();
        registry.insert(model("a", file.clone()));
        registry.save().unwrap();
        // The only installed model is the default; a name finds it; the config's model wins.
        assert_eq!(resolve_in(data.path(), None, &none).unwrap(), Some(file.clone()));
        assert_eq!(resolve_in(data.path(), Some(Path::new("a")), &none).unwrap(), Some(file.clone()));
        let configured = Config { model: Some(PathBuf::from("/other.gguf")), ..Config::default() };
        assert_eq!(resolve_in(data.path(), None, &configured).unwrap(), Some(PathBuf::from("/other.gguf")));

        let mut registry = Registry::load(data.path()).unwrap();
        registry.insert(model("b", data.path().join("b.gguf")));
        registry.save().unwrap();
        let error = resolve_in(data.path(), None, &none).unwrap_err().to_string();
        assert!(error.contains("several models are installed (a, b)"), "{error}");
        let error = resolve_in(data.path(), Some(Path::new("b")), &none).unwrap_err().to_string();
        assert!(error.contains("is gone"), "{error}");
    }

    #[test]
    fn registry_insert_replaces_and_remove_deletes() {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("a.gguf");
        std::fs::write(&file, b"x").unwrap();
        let mut registry = Registry::load(data.path()).unwrap();
        assert!(registry.insert(model("a", file.clone())).is_none());
        assert!(registry.insert(model("a", file.clone())).is_some());
        registry.save().unwrap();
        assert_eq!(Registry::load(data.path()).unwrap().models.len(), 1);
        assert_eq!(remove(data.path(), "a").unwrap().name, "a");
        assert!(!file.exists());
        assert!(Registry::load(data.path()).unwrap().models.is_empty());
        assert!(matches!(remove(data.path(), "a"), Err(ModelsError::NotAnInstalledModel { .. })));
    }

    #[test]
    fn choices_of_the_load_prompt() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(choose("phi-1", data.path()).unwrap(), ModelChoice::Pull("phi-1".to_owned()));
        assert_eq!(choose("owner/name", data.path()).unwrap(), ModelChoice::Pull("owner/name".to_owned()));
        let dir = data.path().display().to_string();
        assert_eq!(choose(&dir, data.path()).unwrap(), ModelChoice::Checkpoint(data.path().to_path_buf()));
        assert_eq!(choose("/m/x.gguf", data.path()).unwrap(), ModelChoice::File(PathBuf::from("/m/x.gguf")));
    }

    #[test]
    fn names_and_sizes() {
        assert!(is_bare_name("phi-1") && is_bare_name("phi-1.5-ft"));
        assert!(!is_bare_name("a/b") && !is_bare_name("x.gguf") && !is_bare_name("~/x") && !is_bare_name(""));
        assert!(check_name("phi-1_5").is_ok() && check_name("a b").is_err());
        assert_eq!(human_size(2_840_000_000), "2.8 GB");
        assert_eq!(human_size(13_412_640), "13.4 MB");
        assert_eq!(human_size(10), "10 B");
    }
}
