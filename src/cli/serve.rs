//! `phi-tui serve` (the session daemon), `phi-tui status`, and how the TUI and `phi-tui lsp` get their session.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use phi_tui::config::Config;
use phi_tui::engine::{Engine, KvCacheLayout, SequenceId};
use phi_tui::session::client::{DaemonLaunch, DaemonSession};
use phi_tui::session::daemon::{self, DaemonOptions, Listening};
use phi_tui::session::paths::SessionPaths;
use phi_tui::session::{ClientKind, DaemonStatus, InferenceSession, LocalSession, SharedSession};

use super::RuntimeArgs;

/// Idle timeout of a daemon that a client starts (the same as `serve`'s default).
const DEFAULT_IDLE_TIMEOUT_S: u64 = 600;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model to load at start: a GGUF or an installed model's name (default: `model` in the config file, or the
    /// one installed model; else the first client's)
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Exit after this many seconds without clients; 0 never exits
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT_S)]
    idle_timeout: u64,
    /// Clients served at once; each gets its own KV sequence
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_clients: u32,
    /// Tokens of KV cache that all clients share (default: one context's worth; the least recently used client's
    /// cache is dropped when it is full)
    #[arg(long, value_name = "TOKENS")]
    kv_tokens: Option<u32>,
    /// Stop the running daemon (its clients start a new one on their next request)
    #[arg(long, conflicts_with_all = ["model", "spawned"])]
    stop: bool,
    /// Started by a client: log to the data directory and say "ready" on stdout once listening
    #[arg(long, hide = true)]
    spawned: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let paths = SessionPaths::for_user()?;
    if args.stop {
        return stop(&paths);
    }
    if args.spawned {
        // stdout is the starting client's pipe: the only thing written there is the readiness line.
        phi_tui::logging::init_file(&paths.log).with_context(|| format!("opening {}", paths.log.display()))?;
    }
    // A daemon that a client starts loads what that client asks for; one started by hand resolves a model as
    // every command does (a path or an installed name, the config's, the one installed model).
    let model = match (args.model, args.spawned) {
        (None, true) => None,
        (given, _) => phi_tui::models::resolve(given.as_deref(), &Config::load().unwrap_or_default())?,
    };
    let mut engine = args.runtime.engine_options(args.max_clients)?;
    engine.kv_cache = KvCacheLayout::Shared(args.kv_tokens);
    let options = DaemonOptions {
        engine,
        model,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listening = match Listening::bind(&paths) {
            Ok(listening) => listening,
            Err(daemon::DaemonError::AlreadyRunning { pid }) if args.spawned => {
                // Another client started one at the same moment: that one serves.
                println!("running {}", pid.unwrap_or(0));
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        if args.spawned {
            println!("ready {}", std::process::id());
            std::io::stdout().flush()?;
        } else {
            eprintln!("phi-tui session daemon listening on {} (pid {})", paths.socket.display(), std::process::id());
        }
        daemon::run(listening, options).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Sends SIGTERM to the running daemon and waits until it has gone. Works whatever its protocol version.
fn stop(paths: &SessionPaths) -> anyhow::Result<ExitCode> {
    let Some(pid) = paths.daemon_pid() else {
        eprintln!("no phi-tui session daemon is running");
        return Ok(ExitCode::SUCCESS);
    };
    let pid_t = libc::pid_t::try_from(pid).context("the daemon's pid file is corrupt")?;
    // SAFETY: kill takes two integers and touches no memory; the pid is the lock holder's, as it wrote it.
    if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
        anyhow::bail!("could not signal the session daemon (pid {pid}): {}", std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while paths.daemon_running() {
        if Instant::now() >= deadline {
            anyhow::bail!("the session daemon (pid {pid}) did not stop within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("stopped the phi-tui session daemon (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON
    #[arg(long)]
    json: bool,
}

/// `phi-tui status`: the daemon and its clients.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let paths = SessionPaths::for_user()?;
    let session = DaemonSession::new(paths.clone(), ClientKind::Probe, None);
    let status = super::runtime()?.block_on(async { session.status().await });
    let status = match status {
        Ok(Some(status)) => status,
        Ok(None) => anyhow::bail!("the session answered without a status"),
        Err(error) => {
            if args.json {
                println!("{}", serde_json::json!({ "running": false, "socket": paths.socket }));
            } else {
                println!("no phi-tui session daemon is running ({error})");
            }
            return Ok(ExitCode::from(3));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", describe(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(status: &DaemonStatus) -> String {
    let mut out = format!(
        "phi-tui session daemon {} · pid {} · up {} · socket {}\n",
        status.version,
        status.pid,
        duration(status.uptime_s),
        status.socket.display()
    );
    match &status.engine.model {
        Some(model) => out.push_str(&format!(
            "model    {} ({}, {}, {} ctx) · {}\n",
            model.name,
            model.file_type,
            model.device,
            model.context_size,
            model.path.display()
        )),
        None => out.push_str("model    none loaded\n"),
    }
    match &status.engine.adapter {
        Some(adapter) => out.push_str(&format!("adapter  {} ×{}\n", adapter.path.display(), adapter.scale)),
        None => out.push_str("adapter  none\n"),
    }
    let memory = status.memory_pss_bytes.map_or_else(|| "?".to_owned(), |b| format!("{} MiB", b >> 20));
    out.push_str(&format!(
        "memory   {memory} PSS · {} model load{} · {} generations ({} cancelled) · {} tokens generated\n",
        status.model_loads,
        if status.model_loads == 1 { "" } else { "s" },
        status.generations,
        status.cancelled,
        status.tokens_generated
    ));
    if status.clients.is_empty() {
        out.push_str("clients  none\n");
    } else {
        out.push_str("clients  kind     pid      connected  requests  p50 ms  p95 ms\n");
        for client in &status.clients {
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            out.push_str(&format!(
                "         {:<8} {:<8} {:>9}  {:>8}  {:>6}  {:>6}\n",
                client.kind.name(),
                client.pid,
                duration(client.connected_s),
                client.requests,
                ms(client.p50_ms),
                ms(client.p95_ms)
            ));
        }
    }
    out
}

fn duration(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The session for the TUI or `phi-tui lsp`: the shared daemon's (started if needed), or with `standalone` an
/// engine of this process's own.
pub fn session_for(kind: ClientKind, runtime: &RuntimeArgs, standalone: bool) -> anyhow::Result<SharedSession> {
    if standalone {
        let engine = Engine::start(runtime.engine_options(1)?)?;
        return Ok(Arc::new(LocalSession::new(engine, SequenceId(0))));
    }
    let paths = SessionPaths::for_user()?;
    let program = std::env::current_exe().context("finding this program, to start the session daemon")?;
    let mut args: Vec<OsString> = vec!["serve".into(), "--spawned".into()];
    args.extend(runtime.to_args());
    let launch = DaemonLaunch { program, args, envs: Vec::new() };
    Ok(Arc::new(DaemonSession::new(paths, kind, Some(launch))))
}
