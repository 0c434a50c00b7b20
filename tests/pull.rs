//! `phi-tui pull`, `models` and `rm`, run as the real binary against a stand-in for the Hugging Face hub on
//! 127.0.0.1 (tests/common/fake_hub.rs) that serves the tiny fixture checkpoint: download, conversion, the
//! registry, `generate -m NAME`; resume after a dropped connection, hash mismatches, the hub's error answers, and
//! reuse of the Hugging Face cache. Nothing here reaches the network.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fake_hub.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixtures;
use fake_hub::{FakeHub, Fault, HubRepo};
use serde_json::Value;

const REPO: &str = "microsoft/phi-1";
const WEIGHTS: &str = "model.safetensors";

/// Temporary HF_HOME, data and config directories.
struct Dirs {
    _root: tempfile::TempDir,
    hf_home: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let [hf_home, data, config] = ["hf", "data", "config"].map(|d| root.path().join(d));
    std::fs::create_dir_all(&config).unwrap();
    Dirs { _root: root, hf_home, data, config }
}

/// The binary with the hub at `endpoint` and everything else in `dirs` (none of the caller's HF settings).
fn command(dirs: &Dirs, endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phi-tui"));
    command
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", &dirs.hf_home)
        .env("PHI_TUI_DATA_DIR", &dirs.data)
        .env("PHI_TUI_CONFIG_DIR", &dirs.config);
    for name in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE"] {
        command.env_remove(name);
    }
    command.env_remove("HUGGINGFACE_HUB_CACHE");
    command
}

fn run(dirs: &Dirs, endpoint: &str, args: &[&str]) -> Output {
    command(dirs, endpoint, args).output().expect("run phi-tui")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output) -> String {
    let text = stderr(output);
    assert!(output.status.success(), "exit {:?}:\n{text}", output.status);
    text
}

/// Fails with a message and no panic or backtrace.
fn failed(output: &Output) -> String {
    let text = stderr(output);
    assert!(!output.status.success(), "should have failed:\n{text}");
    assert!(text.starts_with("error: ") || text.contains("\nerror: "), "{text}");
    assert!(!text.contains("panicked") && !text.contains("RUST_BACKTRACE"), "{text}");
    text
}

/// The tiny fixture checkpoint as a hub repository, with two files `pull` has no use for.
fn tiny_repo() -> HubRepo {
    HubRepo::from_dir(&fixtures().join("tiny-phi"))
        .with_file("README.md", b"# a tiny phi for tests\n", false)
        .with_file("pytorch_model.bin", &[7u8; 4096], true)
}

/// The files `pull` downloads from the tiny repository.
fn wanted(repo: &HubRepo) -> Vec<String> {
    repo.files.iter().map(|f| f.path.clone()).filter(|p| p != "README.md" && p != "pytorch_model.bin").collect()
}

fn repo_cache(dirs: &Dirs) -> PathBuf {
    dirs.hf_home.join("hub/models--microsoft--phi-1")
}

fn installed(dirs: &Dirs, endpoint: &str) -> Vec<Value> {
    let output = run(dirs, endpoint, &["models", "--json"]);
    succeeded(&output);
    serde_json::from_slice::<Value>(&output.stdout).unwrap().as_array().unwrap().clone()
}

fn generate_json(dirs: &Dirs, endpoint: &str, model: Option<&str>) -> Output {
    let mut args = vec!["generate", "-p", "def add(a, b):", "-n", "4", "--ignore-eos", "--json", "--threads", "2"];
    if let Some(model) = model {
        args.extend(["-m", model]);
    }
    run(dirs, endpoint, &args)
}

#[test]
fn pull_converts_and_registers_then_generate_runs_by_name() {
    let hub = FakeHub::start();
    let repo = tiny_repo();
    hub.add_repo(REPO, repo.clone());
    let dirs = dirs();

    let log = succeeded(&run(&dirs, &hub.endpoint, &["pull", "phi-1"]));
    assert!(log.contains("installed phi-1 (q8_0"), "{log}");
    // Each file it needs came once; the others not at all.
    for file in wanted(&repo) {
        assert_eq!(hub.served(&file), repo.file(&file).bytes.len() as u64, "{file}");
    }
    assert_eq!(hub.served("README.md") + hub.served("pytorch_model.bin"), 0);

    // The Hugging Face cache layout, as Python's huggingface_hub writes and reads it.
    let cache = repo_cache(&dirs);
    assert_eq!(std::fs::read_to_string(cache.join("refs/main")).unwrap(), repo.commit);
    let weights = repo.file(WEIGHTS);
    let link = cache.join("snapshots").join(&repo.commit).join(WEIGHTS);
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../../blobs").join(weights.sha256()));
    assert_eq!(std::fs::read(&link).unwrap(), *weights.bytes);
    let config = repo.file("config.json");
    assert!(cache.join("blobs").join(config.git_sha1()).is_file());

    // The registry: name, type, size, the file, where it came from.
    let models = installed(&dirs, &hub.endpoint);
    assert_eq!(models.len(), 1);
    let model = &models[0];
    assert_eq!(model["name"], "phi-1");
    assert_eq!(model["quant"], "q8_0");
    let path = PathBuf::from(model["path"].as_str().unwrap());
    assert!(path.starts_with(&dirs.data) && path.is_file(), "{}", path.display());
    assert_eq!(model["size"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(model["source"]["repo"], REPO);
    assert_eq!(model["source"]["commit"], repo.commit.as_str());
    let table = run(&dirs, &hub.endpoint, &["models"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("NAME") && table.contains("phi-1") && table.contains("q8_0"), "{table}");
    assert!(table.contains(&format!("{}/microsoft/phi-1@3f2c6a1", hub.endpoint)), "{table}");

    // `generate -m phi-1` runs the installed model; so does `generate` alone (the only installed one).
    let output = generate_json(&dirs, &hub.endpoint, Some("phi-1"));
    succeeded(&output);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["tokens"].as_array().unwrap().len(), 4);
    let again = generate_json(&dirs, &hub.endpoint, None);
    succeeded(&again);
    assert_eq!(serde_json::from_slice::<Value>(&again.stdout).unwrap()["tokens"], json["tokens"]);

    // Pulling again finds it up to date and downloads nothing.
    let served = hub.served_total();
    let log = succeeded(&run(&dirs, &hub.endpoint, &["pull", "microsoft/phi-1"]));
    assert!(log.contains("phi-1 is up to date"), "{log}");
    assert_eq!(hub.served_total(), served);

    // rm forgets it and deletes its file; then there is no model, and generate says how to get one.
    let log = succeeded(&run(&dirs, &hub.endpoint, &["rm", "phi-1"]));
    assert!(log.contains("removed phi-1") && log.contains("stays in the Hugging Face cache"), "{log}");
    assert!(!path.exists());
    assert!(installed(&dirs, &hub.endpoint).is_empty());
    let error = failed(&generate_json(&dirs, &hub.endpoint, None));
    assert!(error.contains("no model yet: `phi-tui pull phi-1`"), "{error}");
    let error = failed(&generate_json(&dirs, &hub.endpoint, Some("phi-1")));
    assert!(error.contains("`phi-1` is not installed: `phi-tui pull phi-1` downloads it"), "{error}");
}

#[test]
fn a_dropped_connection_resumes_without_downloading_again() {
    let hub = FakeHub::start();
    let repo = tiny_repo();
    let size = repo.file(WEIGHTS).bytes.len() as u64;
    hub.add_repo(REPO, repo.clone());

    // Dropped once: the same pull resumes from where the connection broke.
    let dirs_a = dirs();
    hub.set_fault(WEIGHTS, Fault::DropAfter { bytes: 4_000_000, times: 1 });
    let log = succeeded(&run(&dirs_a, &hub.endpoint, &["pull", "phi-1", "--quant", "f16"]));
    assert!(log.contains("model.safetensors: the connection broke after 4000000 of"), "{log}");
    assert!(log.contains("; resuming"), "{log}");
    assert_eq!(hub.served(WEIGHTS), size, "every byte once");
    assert!(
        hub.requests().iter().any(|r| r.contains("/cdn/") && r.ends_with("bytes=4000000-")),
        "{:?}",
        hub.requests()
    );
    assert_eq!(installed(&dirs_a, &hub.endpoint)[0]["quant"], "f16");

    // Dropped on every attempt: the pull gives up, keeping what it has; the next pull resumes from there.
    let hub = FakeHub::start();
    hub.add_repo(REPO, repo.clone());
    let dirs_b = dirs();
    hub.set_fault(WEIGHTS, Fault::DropAfter { bytes: 3_000_000, times: 3 });
    let error = failed(&run(&dirs_b, &hub.endpoint, &["pull", "phi-1"]));
    assert!(error.contains("model.safetensors: the download broke off at 9000000 of"), "{error}");
    assert!(error.contains("run the same command again to resume"), "{error}");
    let partial = repo_cache(&dirs_b).join("blobs").join(format!("{}.incomplete", repo.file(WEIGHTS).sha256()));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 9_000_000);
    assert_eq!(hub.served(WEIGHTS), 9_000_000);
    succeeded(&run(&dirs_b, &hub.endpoint, &["pull", "phi-1"]));
    assert_eq!(hub.served(WEIGHTS), size, "the second pull fetched only the rest");
    assert!(!partial.exists());
    assert!(hub.requests().iter().any(|r| r.ends_with("bytes=9000000-")), "{:?}", hub.requests());
    assert_eq!(installed(&dirs_b, &hub.endpoint).len(), 1);
}

#[test]
fn corrupt_files_are_detected_and_fetched_again() {
    let hub = FakeHub::start();
    let repo = tiny_repo();
    let size = repo.file(WEIGHTS).bytes.len() as u64;
    hub.add_repo(REPO, repo.clone());
    let dirs = dirs();

    // A download with a flipped byte fails the sha256 check and is fetched again.
    hub.set_fault(WEIGHTS, Fault::Corrupt { times: 1 });
    let log = succeeded(&run(&dirs, &hub.endpoint, &["pull", "phi-1"]));
    assert!(log.contains("model.safetensors: does not match the hub's hash; fetching it again"), "{log}");
    assert_eq!(hub.served(WEIGHTS), 2 * size);
    let blob = repo_cache(&dirs).join("blobs").join(repo.file(WEIGHTS).sha256());
    assert_eq!(std::fs::read(&blob).unwrap(), *repo.file(WEIGHTS).bytes);

    // A file damaged in the cache is found out and replaced (and a small file too: its git blob id is checked).
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let config_blob = repo_cache(&dirs).join("blobs").join(repo.file("config.json").git_sha1());
    std::fs::write(&config_blob, b"{}").unwrap();
    succeeded(&run(&dirs, &hub.endpoint, &["rm", "phi-1"]));
    succeeded(&run(&dirs, &hub.endpoint, &["pull", "phi-1"]));
    assert_eq!(hub.served(WEIGHTS), 3 * size);
    assert_eq!(hub.served("config.json"), 2 * repo.file("config.json").bytes.len() as u64);
    assert_eq!(std::fs::read(&blob).unwrap(), *repo.file(WEIGHTS).bytes);

    // Corrupt twice in a row: an error, and nothing corrupt is kept.
    let dirs = self::dirs();
    hub.set_fault(WEIGHTS, Fault::Corrupt { times: 2 });
    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "phi-1"]));
    assert!(error.contains("model.safetensors: the downloaded bytes do not match the hub's sha256"), "{error}");
    assert!(!repo_cache(&dirs).join("blobs").join(repo.file(WEIGHTS).sha256()).exists());
    assert!(installed(&dirs, &hub.endpoint).is_empty());
}

#[test]
fn hub_errors_and_unknown_names_give_clear_messages() {
    let hub = FakeHub::start();
    hub.add_repo(REPO, tiny_repo());
    let mut private = tiny_repo();
    private.token = Some("hf_secret".to_owned());
    hub.add_repo("someone/private-phi", private);
    let mut gated = tiny_repo();
    gated.gated = true;
    hub.add_repo("someone/gated-phi", gated);
    let dirs = dirs();

    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "someone/nothing"]));
    assert!(error.contains(&format!("someone/nothing: no such model on {}", hub.endpoint)), "{error}");
    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "phi-1", "--revision", "v9"]));
    assert!(error.contains("microsoft/phi-1 has no revision `v9`"), "{error}");
    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "someone/private-phi"]));
    assert!(error.contains("refused access (Invalid credentials in Authorization header)"), "{error}");
    assert!(error.contains("it needs a token: set HF_TOKEN"), "{error}");
    let error = failed(
        &command(&dirs, &hub.endpoint, &["pull", "someone/private-phi"]).env("HF_TOKEN", "hf_wrong").output().unwrap(),
    );
    assert!(error.contains("was not accepted"), "{error}");
    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "someone/gated-phi"]));
    assert!(error.contains("someone/gated-phi is gated: accept its conditions"), "{error}");
    assert!(hub.requests().iter().all(|r| !r.contains("Bearer")), "tokens are never logged by the fake hub");

    // With the right token (from HF_TOKEN) the private repository installs under its own name.
    let log = succeeded(
        &command(&dirs, &hub.endpoint, &["pull", "someone/private-phi"]).env("HF_TOKEN", "hf_secret").output().unwrap(),
    );
    assert!(log.contains("installed private-phi"), "{log}");

    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "phi-1-small"]));
    assert!(
        error.contains("phi-1-small (350M) is described in the phi-1 paper, but its weights were never published"),
        "{error}"
    );
    let error = failed(&run(&dirs, &hub.endpoint, &["pull", "llama"]));
    assert!(error.contains("unknown model `llama`: pull one of phi-1, phi-1_5, phi-2"), "{error}");

    // No hub at all: what to do instead.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = failed(&run(&dirs, &closed, &["pull", "phi-1"]));
    assert!(error.contains(&format!("cannot reach the Hugging Face hub at {closed}")), "{error}");
    assert!(error.contains("phi-tui convert DIR"), "{error}");
    let error = failed(&command(&dirs, &hub.endpoint, &["pull", "phi-2"]).env("HF_HUB_OFFLINE", "1").output().unwrap());
    assert!(error.contains("offline (HF_HUB_OFFLINE is set) and microsoft/phi-2"), "{error}");
}

#[test]
fn files_in_the_hugging_face_cache_are_reused_without_fetching_their_bytes() {
    let hub = FakeHub::start();
    let repo = tiny_repo();
    hub.add_repo(REPO, repo.clone());
    let dirs = dirs();

    // The cache as Python's huggingface_hub leaves it after downloading the weights and the config.
    let cache = repo_cache(&dirs);
    let snapshot = cache.join("snapshots").join(&repo.commit);
    std::fs::create_dir_all(cache.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(cache.join("refs")).unwrap();
    std::fs::write(cache.join("refs/main"), &repo.commit).unwrap();
    for name in [WEIGHTS, "config.json"] {
        let file = repo.file(name);
        std::fs::write(cache.join("blobs").join(file.etag()), file.bytes.as_slice()).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(file.etag()), snapshot.join(name)).unwrap();
    }

    succeeded(&run(&dirs, &hub.endpoint, &["pull", "phi-1"]));
    assert_eq!(hub.served(WEIGHTS), 0);
    assert_eq!(hub.served("config.json"), 0);
    let cached = [WEIGHTS, "config.json"].map(|name| format!("/resolve/{}/{name}", repo.commit));
    let requests = hub.requests();
    assert!(requests.iter().all(|r| !cached.iter().any(|c| r.contains(c.as_str()))), "{requests:?}");
    assert!(requests.iter().all(|r| !r.contains(&repo.file(WEIGHTS).sha256())), "{requests:?}");
    assert_eq!(hub.served("tokenizer.json"), repo.file("tokenizer.json").bytes.len() as u64);

    // Offline, a new data directory installs from the cache without a single request.
    let requests = hub.requests().len();
    let offline = self::dirs();
    std::fs::rename(&dirs.hf_home, &offline.hf_home).unwrap();
    let log =
        succeeded(&command(&offline, &hub.endpoint, &["pull", "phi-1"]).env("HF_HUB_OFFLINE", "1").output().unwrap());
    assert!(log.contains("using the copy of microsoft/phi-1 in the Hugging Face cache"), "{log}");
    assert_eq!(hub.requests().len(), requests);
    let models = installed(&offline, &hub.endpoint);
    assert_eq!(models[0]["source"]["commit"], repo.commit.as_str());
    succeeded(&generate_json(&offline, &hub.endpoint, Some("phi-1")));
}

#[test]
fn a_local_checkpoint_installs_under_its_directory_name() {
    // What the TUI's load prompt does with a checkpoint directory: convert it into the data directory and record it.
    let data = tempfile::tempdir().unwrap();
    let checkpoint = fixtures().join("tiny-phi");
    let name = phi_tui::models::name_for_checkpoint(&checkpoint);
    assert_eq!(name, "tiny-phi");
    let source = phi_tui::models::ModelSource::Local { dir: checkpoint.clone() };
    let mut stages = Vec::new();
    let pulled = phi_tui::models::install(
        data.path(),
        &checkpoint,
        &name,
        phi_converters::OutType::Q8_0,
        source,
        None,
        &mut |event| stages.push(event),
    )
    .unwrap();
    assert!(stages.iter().any(|e| matches!(e, phi_tui::models::PullEvent::Converting { .. })));
    assert_eq!(pulled.model.path, data.path().join("models/tiny-phi.q8_0.gguf"));
    assert!(pulled.model.path.is_file());
    assert_eq!(pulled.model.source.to_string(), format!("local:{}", checkpoint.display()));
    let config = phi_tui::config::Config::default();
    let resolved = phi_tui::models::resolve_in(data.path(), Some(Path::new("tiny-phi")), &config).unwrap();
    assert_eq!(resolved, Some(pulled.model.path.clone()));
    assert_eq!(phi_tui::models::resolve_in(data.path(), None, &config).unwrap(), Some(pulled.model.path));
}
