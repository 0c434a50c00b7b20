//! The real `phi-tui` binary's TUI, driven through tmux (a private server per test): typing, streaming, cancel,
//! quit, run-and-verify, the session file on disk, and a SIGKILL in the middle of a reply.
//!
//! Every test runs in its own temporary PHI_TUI_DATA_DIR and PHI_TUI_CONFIG_DIR. They are skipped (with a message)
//! only when tmux is not installed; CI installs it.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fake_hub.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use phi_converters::OutType;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

fn tmux_available() -> bool {
    Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success())
}

macro_rules! require_tmux {
    () => {
        if !tmux_available() {
            // Skipped on a developer's machine; in CI (.ci/run installs tmux) a missing tmux is a failure.
            assert!(std::env::var_os("CI").is_none(), "tmux is missing in CI (.ci/run installs it)");
            eprintln!("SKIPPED: tmux is not installed (apt-get install tmux); the TUI end-to-end tests need it");
            return;
        }
    };
}

/// A private tmux server running one program in one pane; killed on drop.
struct Tmux {
    socket: String,
    _conf: tempfile::TempDir,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!("phi-tui-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        // Keep the pane after the program exits, to read its exit status and last screen.
        let conf = tempfile::tempdir().unwrap();
        let conf_file = conf.path().join("tmux.conf");
        std::fs::write(&conf_file, "set -g remain-on-exit on\nset -g status off\n").unwrap();
        let tmux = Tmux { socket, _conf: conf };
        let conf_file = conf_file.to_str().unwrap();
        let out = tmux.run(&["-f", conf_file, "new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    fn type_text(&self, text: &str) {
        assert!(self.run(&["send-keys", "-t", "t", "-l", text]).status.success());
    }

    fn pane(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "t", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls the screen until `done` holds; panics with the last screen after the timeout.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            if self.pane("#{pane_dead}") == "1" && !done(&self.screen()) {
                panic!("phi-tui exited while waiting for {what}; screen:\n{screen}");
            }
            if start.elapsed() > TIMEOUT {
                panic!("timed out waiting for {what}; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the program to exit; returns its exit status, or "" where tmux did not learn it (tmux 3.3
    /// sometimes marks a pane dead without collecting the status).
    fn wait_exit(&self) -> String {
        let start = Instant::now();
        while self.pane("#{pane_dead}") != "1" {
            assert!(start.elapsed() < TIMEOUT, "phi-tui did not exit; screen:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(50));
        }
        let dead = Instant::now();
        loop {
            let status = self.pane("#{pane_dead_status}");
            if !status.is_empty() || dead.elapsed() > Duration::from_secs(2) {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Quits with Ctrl-Q and checks that the program exited cleanly and gave the terminal back.
    fn quit(&self) {
        self.keys(&["C-q"]);
        let status = self.wait_exit();
        assert!(status == "0" || status.is_empty(), "exit status {status}; screen:\n{}", self.screen());
        assert!(self.pane("#{pane_dead_signal}").is_empty(), "killed by a signal; screen:\n{}", self.screen());
        assert_eq!(self.pane("#{alternate_on}"), "0", "the alternate screen was left");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

struct Dirs {
    _root: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

fn dirs(config: &str) -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let config_dir = root.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("config.toml"), config).unwrap();
    Dirs { data, config: config_dir, _root: root }
}

fn command(dirs: &Dirs, args: &str) -> String {
    format!(
        "env PHI_TUI_DATA_DIR={} PHI_TUI_CONFIG_DIR={} PHI_TUI_RUNTIME_DIR={} {} {args}",
        dirs.data.display(),
        dirs.config.display(),
        // A session daemon of the test's own, which exits when the directory goes away with the test.
        dirs.data.join("run").display(),
        env!("CARGO_BIN_EXE_phi-tui")
    )
}

/// The TUI in chat mode on the tiny model, once the model has loaded.
fn chat_tui(dirs: &Dirs) -> Tmux {
    let tmux = Tmux::start(&command(dirs, &format!("-m {} {CHAT_ARGS}", tiny_model().display())));
    tmux.wait_for("the model to load", |s| s.contains("ctx 0/8192"));
    tmux
}

fn tiny_model() -> PathBuf {
    converted("tiny-phi", OutType::F16)
}

fn session_files(data: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data.join("sessions")) else { return vec![] };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    files
}

fn read_session(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The token count in the status line's `generating N tok`.
fn streamed_tokens(screen: &str) -> Option<usize> {
    let rest = &screen[screen.find("generating ")? + "generating ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Chat mode with greedy decoding: the tiny random model then writes long (seconds), deterministic replies, with
/// [`CHAT_ARGS`] giving them room.
const CHAT_CONFIG: &str = "mode = \"chat\"\nmax_tokens = 3000\n";
const CHAT_ARGS: &str = "-t 1 -c 8192 --force-context";

/// One TUI at a time: two engines on a small machine slow each other down a lot (llama.cpp's threads spin).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn type_stream_cancel_quit_and_find_the_session_on_disk() {
    require_tmux!();
    let _serial = serial();
    let dirs = dirs(CHAT_CONFIG);
    let model = tiny_model();
    let tmux = Tmux::start(&command(&dirs, &format!("-m {} {CHAT_ARGS}", model.display())));
    tmux.wait_for("the model to load", |s| s.contains("ctx 0/8192") && s.contains("chat mode"));

    // A reply streams token by token and completes.
    tmux.type_text("Write hello world");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("streaming", |s| streamed_tokens(s).is_some_and(|n| n > 0));
    let first = streamed_tokens(&screen).unwrap();
    tmux.wait_for("more tokens", |s| streamed_tokens(s).is_none_or(|n| n > first));
    let screen = tmux.wait_for("the reply to finish", |s| !s.contains("generating") && s.contains("tok/s"));
    assert!(screen.contains("phi-tui │ Write hello world"), "the title comes from the first message:\n{screen}");

    // A second reply is cancelled with Esc while it streams.
    tmux.type_text("Tell me more");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the second reply to stream", |s| streamed_tokens(s).is_some_and(|n| n >= 3));
    tmux.keys(&["Escape"]);
    let screen = tmux.wait_for("the cancel", |s| s.contains("(stopped)") && !s.contains("generating"));
    assert!(!screen.contains("error"), "{screen}");

    // Quit: the terminal is given back (no alternate screen) and the exit status is 0.
    tmux.quit();

    let files = session_files(&dirs.data);
    assert_eq!(files.len(), 1, "{files:?}");
    let session = read_session(&files[0]);
    let messages = session["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{session:#}");
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["text"], "Write hello world");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["status"], "complete");
    assert!(messages[1]["stats"]["tokens"].as_u64().unwrap() > 0);
    assert_eq!(messages[2]["text"], "Tell me more");
    assert_eq!(messages[3]["status"], "cancelled");
    assert!(!messages[3]["text"].as_str().unwrap().is_empty(), "the streamed part is kept");
    // Logs went to a file, not to the terminal.
    assert!(dirs.data.join("phi-tui.log").exists());
}

#[test]
fn a_session_file_survives_sigkill_mid_reply() {
    require_tmux!();
    let _serial = serial();
    // Long replies, so that a periodic save (every second) lands in the middle of one.
    let dirs = dirs(CHAT_CONFIG);
    let tmux = chat_tui(&dirs);
    tmux.type_text("First question");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the first reply", |s| !s.contains("generating") && s.contains("tok/s"));
    tmux.type_text("Second question");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the second reply to stream", |s| streamed_tokens(s).is_some_and(|n| n > 0));

    // Wait until a periodic save has caught part of the streaming reply, then kill -9.
    let start = Instant::now();
    let file = loop {
        if let Some(file) = session_files(&dirs.data).pop() {
            if let Ok(session) = serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap_or_default()) {
                let messages = session["messages"].as_array().cloned().unwrap_or_default();
                if messages.len() == 4
                    && messages[3]["status"] == "streaming"
                    && !messages[3]["text"].as_str().unwrap_or("").is_empty()
                {
                    break file;
                }
            }
        }
        assert!(start.elapsed() < TIMEOUT, "no mid-reply save; screen:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = tmux.pane("#{pane_pid}");
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    tmux.wait_exit();

    let session = read_session(&file);
    let messages = session["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{session:#}");
    assert_eq!(messages[0]["text"], "First question");
    assert_eq!(messages[1]["status"], "complete");
    assert!(!messages[1]["text"].as_str().unwrap().is_empty());
    assert_eq!(messages[2]["text"], "Second question");
    // The store reads the unfinished reply back as interrupted.
    let store = phi_tui::tui::session::SessionStore::new(&dirs.data);
    let id = session["id"].as_str().unwrap();
    let loaded = store.load(id).unwrap();
    assert_eq!(loaded.messages[3].status, phi_tui::tui::session::MessageStatus::Interrupted);
    assert_eq!(store.list().items.len(), 1);
}

#[test]
fn first_run_without_a_model_explains_how_to_get_one() {
    require_tmux!();
    let _serial = serial();
    let dirs = dirs("");
    let tmux = Tmux::start(&command(&dirs, ""));
    let screen = tmux.wait_for("the first-run screen", |s| s.contains("No model loaded"));
    assert!(screen.contains("phi-tui convert /path/to/phi-1 -o phi-1.f16.gguf"), "{screen}");
    assert!(screen.contains(&dirs.config.join("config.toml").display().to_string()), "{screen}");
    // The help overlay opens; any key closes it.
    tmux.keys(&["F1"]);
    tmux.wait_for("the help", |s| s.contains("Keys — any key closes"));
    tmux.keys(&["x"]);
    tmux.wait_for("the help to close", |s| !s.contains("Keys — any key closes"));
    tmux.quit();
    assert!(session_files(&dirs.data).is_empty(), "nothing was said, nothing is saved");
}

#[test]
fn conversations_that_cannot_be_read_are_reported() {
    require_tmux!();
    let _serial = serial();
    let dirs = dirs("");
    std::fs::create_dir_all(dirs.data.join("sessions")).unwrap();
    std::fs::write(dirs.data.join("sessions/broken.json"), "{\"version\": 1, \"id\": ").unwrap();
    let tmux = Tmux::start(&command(&dirs, ""));
    tmux.wait_for("the first-run screen", |s| s.contains("No model loaded"));
    tmux.keys(&["C-o"]);
    // The whole error, under the title bar: which file, and why.
    let screen = tmux.wait_for("the error", |s| s.contains("could not read a conversation:"));
    let text = screen.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("broken.json: not a session file: EOF while parsing"), "{screen}");
    tmux.keys(&["Escape"]);
    // An Escape read together with the Ctrl-Q after it is one key, Alt+Ctrl-Q, which quits nothing: send the quit
    // only once the list has closed.
    tmux.wait_for("the list to close", |s| !s.contains(" Conversations ("));
    tmux.quit();
}

#[test]
fn code_mode_reply_runs_in_the_sandbox_on_request() {
    require_tmux!();
    let _serial = serial();
    let dirs = dirs("mode = \"code\"\nmax_tokens = 24\n");
    let model = tiny_model();
    let tmux = Tmux::start(&command(&dirs, &format!("-m {} -t 1 -c 2048", model.display())));
    tmux.wait_for("the model to load", |s| s.contains("ctx 0/2048") && s.contains("code mode"));
    // Multi-line input: Ctrl-J inserts a newline, Enter sends.
    tmux.type_text("def add(a, b):");
    tmux.keys(&["C-j"]);
    tmux.type_text("    return a + b");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the reply", |s| !s.contains("generating") && s.contains("tok/s"));
    assert!(screen.contains("[1] python"), "{screen}");
    assert!(!screen.contains("run [1]"), "nothing runs without the key");
    tmux.keys(&["C-x"]);
    // The tiny model's continuation is noise, so the verdict may be either; it must be shown inline.
    let screen = tmux.wait_for("the run result", |s| s.contains("run [1]:"));
    assert!(screen.contains("✓ run [1]") || screen.contains("✗ run [1]"), "{screen}");
    tmux.quit();
    let session = read_session(&session_files(&dirs.data)[0]);
    assert_eq!(session["messages"][1]["runs"].as_array().unwrap().len(), 1, "{session:#}");
}

#[test]
fn config_mistakes_are_reported_before_the_screen_is_taken() {
    for (config, expected) in [
        ("max_tokens = \"many\"\n", "expected u32"),
        ("[keys]\nsned = \"enter\"\n", "unknown command `sned`"),
        ("[keys]\nsend = \"ctrl-\"\n", "cannot read key `ctrl-`"),
        ("theme = \"neon\"\n", "unknown theme `neon`"),
    ] {
        let dirs = dirs(config);
        let output = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
            .env("PHI_TUI_DATA_DIR", &dirs.data)
            .env("PHI_TUI_CONFIG_DIR", &dirs.config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("config.toml") && stderr.contains(expected), "{config}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    // A good config without a terminal: a clear message, not a garbled screen.
    let dirs = dirs("");
    let output = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .env("PHI_TUI_DATA_DIR", &dirs.data)
        .env("PHI_TUI_CONFIG_DIR", &dirs.config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a terminal"));
}

/// The TUI and an editor share one session: the TUI shows the editor's activity, and an adapter set with F6 in
/// the TUI is the editor's too (its language server tells the user).
#[test]
fn the_tui_shares_its_session_with_an_editor() {
    use phi_lsp::testing::TestClient;
    use serde_json::json;

    require_tmux!();
    let _serial = serial();
    let dirs = dirs(CHAT_CONFIG);
    let tmux = chat_tui(&dirs);
    let model = tiny_model();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut editor = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .args(["lsp", "-t", "1", "-m"])
        .arg(&model)
        .env("PHI_TUI_DATA_DIR", &dirs.data)
        .env("PHI_TUI_CONFIG_DIR", &dirs.config)
        .env("PHI_TUI_RUNTIME_DIR", dirs.data.join("run"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (editor.stdin.take().unwrap(), editor.stdout.take().unwrap());
    let mut client = runtime.block_on(async {
        let stdin = tokio::process::ChildStdin::from_std(stdin).unwrap();
        let stdout = tokio::process::ChildStdout::from_std(stdout).unwrap();
        let mut client = TestClient::over(stdout, stdin);
        client.initialize(json!({"debounceMs": 0, "maxTokens": 8})).await;
        client.open("file:///work/a.py", "def add(a, b):\n    ").await;
        let id = client.request_inline("file:///work/a.py", 1, 4, true).await;
        let response = client.response(id).await;
        assert!(response.get("result").is_some(), "{response}");
        client
    });
    tmux.wait_for("the editor's activity in the status line", |s| s.contains("1 editor · 1 completion"));

    let adapter = fixtures().join("lora/final-adapter.gguf");
    tmux.keys(&["F6"]);
    tmux.type_text(&format!("{} 0.5", adapter.display()));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the adapter", |s| s.contains("LoRA final-adapter.gguf ×0.5"));
    runtime.block_on(async {
        let message = client.notification("window/showMessage").await;
        let text = message["params"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(text.contains("LoRA adapter") && text.contains("final-adapter.gguf"), "{message}");
    });
    let _ = editor.kill();
    let _ = editor.wait();
    tmux.quit();
}

#[test]
fn first_run_pulls_phi_1_from_the_hub_then_answers_and_starts_with_it_next_time() {
    require_tmux!();
    let _serial = serial();
    // A stand-in for the Hugging Face hub on 127.0.0.1, serving the tiny checkpoint as microsoft/phi-1.
    let hub = fake_hub::FakeHub::start();
    hub.add_repo("microsoft/phi-1", fake_hub::HubRepo::from_dir(&fixtures().join("tiny-phi")));
    let dirs = dirs("mode = \"code\"\nmax_tokens = 16\n");
    let hf_home = dirs.config.with_file_name("hf");
    let run = |args: &str| {
        format!(
            "env -u HF_TOKEN -u HF_HUB_OFFLINE -u HF_HUB_CACHE HF_ENDPOINT={} HF_HOME={} {}",
            hub.endpoint,
            hf_home.display(),
            command(&dirs, args)
        )
    };
    let tmux = Tmux::start(&run("-t 1 -c 2048"));
    let screen = tmux.wait_for("the first-run screen", |s| s.contains("No model loaded"));
    assert!(screen.contains("F5 then Enter downloads phi-1 from Hugging Face (2.8 GB)"), "{screen}");
    // F5 offers phi-1; Enter pulls, converts and loads it, with progress on the way.
    tmux.keys(&["F5"]);
    tmux.wait_for("the load prompt", |s| s.contains("Load a model") && s.contains("│phi-1"));
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the model to load", |s| s.contains("ctx 0/2048") && s.contains("code mode"));
    assert!(hub.served("model.safetensors") > 0, "{screen}");
    let registry = std::fs::read_to_string(dirs.data.join("models/models.json")).unwrap();
    assert!(registry.contains("\"name\": \"phi-1\"") && registry.contains("microsoft/phi-1"), "{registry}");
    tmux.type_text("def add(a, b):");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the reply", |s| !s.contains("generating") && s.contains("tok/s"));
    tmux.quit();
    drop(tmux);

    // The next start, with no -m and nothing in the config file, opens the installed model.
    let tmux = Tmux::start(&run("-t 1 -c 2048"));
    tmux.wait_for("the installed model to load", |s| s.contains("ctx 0/2048") && s.contains("code mode"));
    tmux.quit();
}

/// Fine-tune mode end to end: `:finetune DIR` opens the screen, the settings are edited, the run is checked (token
/// count, time per epoch) and trained; the loss on screen goes down, and the status line shows the adapter and its
/// step as the session applies each improvement. Then an editor attached to the same session completes with that
/// adapter: its suggestion is what `phi-tui generate --lora ADAPTER` generates for the same prompt, and not what
/// the base model does.
#[test]
fn the_finetune_screen_trains_an_adapter_that_the_session_and_an_editor_use() {
    use phi_lsp::testing::TestClient;
    use serde_json::json;

    require_tmux!();
    let _serial = serial();
    let dirs = dirs("mode = \"code\"\nmax_tokens = 8\n");
    let model = tiny_model();
    let tmux = Tmux::start(&command(&dirs, &format!("-m {} -t 1 -c 2048", model.display())));
    tmux.wait_for("the model to load", |s| s.contains("ctx 0/2048"));
    let data = fixtures().join("finetune-py");
    tmux.type_text(&format!(":finetune {}", data.display()));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the fine-tune screen", |s| s.contains("Fine-tune") && s.contains("learning rate"));
    // Past data and rank: steps 30, learning rate 2e-2, batch 2, sequence length 48 (seconds on the tiny model).
    tmux.keys(&["Tab"]);
    for value in ["30", "2e-2", "2", "48"] {
        tmux.keys(&["Tab"]);
        for _ in 0..12 {
            tmux.keys(&["BSpace"]);
        }
        tmux.type_text(value);
    }
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the run's cost", |s| s.contains("training sequences") && s.contains("per epoch"));
    assert!(screen.contains("Enter starts; the adapter goes to adapters/finetune-py/"), "{screen}");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the end of the run", |s| s.contains("finished 30 steps"));
    let text = screen.split_whitespace().collect::<Vec<_>>().join(" ");
    let trend = text.split("loss ").nth(1).unwrap();
    let (first, last): (f64, f64) = {
        let mut numbers = trend.split(" → ");
        (numbers.next().unwrap().parse().unwrap(), numbers.next().unwrap().split(' ').next().unwrap().parse().unwrap())
    };
    assert!(last < first, "the loss went down on screen: {first} → {last}\n{screen}");
    let adapter = dirs.data.join("adapters/finetune-py/finetune-py.gguf");
    assert!(adapter.is_file());
    let provenance: Value =
        serde_json::from_slice(&std::fs::read(dirs.data.join("adapters/finetune-py/provenance.json")).unwrap())
            .unwrap();
    assert_eq!(provenance["state"], "finished", "{provenance:#}");
    let step = provenance["adapter_step"].as_u64().unwrap();
    tmux.wait_for("the adapter in the status line", |s| s.contains(&format!("LoRA finetune-py.gguf @ step {step} ×1")));

    // An editor on the same session completes with the adapter.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut editor = Command::new(env!("CARGO_BIN_EXE_phi-tui"))
        .args(["lsp", "-t", "1", "-m"])
        .arg(&model)
        .env("PHI_TUI_DATA_DIR", &dirs.data)
        .env("PHI_TUI_CONFIG_DIR", &dirs.config)
        .env("PHI_TUI_RUNTIME_DIR", dirs.data.join("run"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (editor.stdin.take().unwrap(), editor.stdout.take().unwrap());
    // In a comment, whatever the tiny model writes on the line is valid Python, so the editor shows all of it.
    let document = "\"\"\"Geometry helpers.\"\"\"\n\n# Return the area of a ";
    let insert_text = runtime.block_on(async {
        let stdin = tokio::process::ChildStdin::from_std(stdin).unwrap();
        let stdout = tokio::process::ChildStdout::from_std(stdout).unwrap();
        let mut client = TestClient::over(stdout, stdin);
        client.initialize(json!({"debounceMs": 0, "maxTokens": 8})).await;
        client.open("file:///work/shapes/new.py", document).await;
        let id = client.request_inline("file:///work/shapes/new.py", 2, 23, true).await;
        let response = client.response(id).await;
        let items = TestClient::inline_items(&response);
        assert_eq!(items.len(), 1, "{response}");
        items[0]["insertText"].as_str().unwrap().to_owned()
    });
    let _ = editor.kill();
    let _ = editor.wait();
    let suggestion = insert_text.strip_prefix("# Return the area of a ").unwrap_or_else(|| panic!("{insert_text:?}"));
    assert!(!suggestion.trim().is_empty(), "{insert_text:?}");
    let generate = |lora: Option<&Path>| -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_phi-tui"));
        command.args(["generate", "-t", "1", "-n", "8", "--json", "-p", document, "-m"]).arg(&model);
        if let Some(lora) = lora {
            command.arg("--lora").arg(lora);
        }
        let output =
            command.env("PHI_TUI_DATA_DIR", &dirs.data).env("PHI_TUI_CONFIG_DIR", &dirs.config).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        json["text"].as_str().unwrap().to_owned()
    };
    let with_adapter = generate(Some(&adapter));
    let base = generate(None);
    eprintln!("editor: {suggestion:?}\nwith the adapter: {with_adapter:?}\nbase: {base:?}");
    assert!(
        with_adapter.starts_with(suggestion.trim_end()),
        "editor {suggestion:?} vs generate --lora {with_adapter:?}"
    );
    assert!(!base.starts_with(suggestion.trim_end()), "the base model says the same: {base:?}");
    tmux.quit();
}

#[test]
fn an_abort_gives_the_terminal_back() {
    require_tmux!();
    let _serial = serial();
    let dirs = dirs("mouse = true\n");
    let model = tiny_model();
    // The shell around phi-tui records how it ended: tmux does not always collect a killed pane's signal.
    let ended = dirs.data.join("ended");
    let program = command(&dirs, &format!("-m {} -t 1", model.display()));
    let tmux = Tmux::start(&format!("{program}; echo $? > {}", ended.display()));
    tmux.wait_for("the model to load", |s| s.contains("code mode"));
    assert_eq!(tmux.pane("#{alternate_on} #{mouse_any_flag}"), "1 1", "the TUI runs in the alternate screen");
    // What a failed assert in llama.cpp does: abort(), that is SIGABRT, with no Rust code unwinding.
    let shell = tmux.pane("#{pane_pid}");
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let pid: libc::pid_t = children.trim().parse().unwrap();
    // SAFETY: a signal to the program in our private tmux pane.
    unsafe { libc::kill(pid, libc::SIGABRT) };
    tmux.wait_exit();
    let status = std::fs::read_to_string(&ended).unwrap_or_default();
    assert_eq!(status.trim(), "134", "it still dies of SIGABRT (128 + 6); screen:\n{}", tmux.screen());
    assert_eq!(tmux.pane("#{alternate_on}"), "0", "the alternate screen was left on");
    assert_eq!(tmux.pane("#{mouse_any_flag} #{mouse_sgr_flag}"), "0 0", "mouse reporting was left on");
}
