//! Runs untrusted Python programs: model completions under evaluation, and the TUI's run-and-verify.
//!
//! Every program runs in its own subprocess of the system's `python3` (`-I -B`), never in phi-tui's process, with:
//!
//! - its own temporary work directory as the working directory, `HOME` and `TMPDIR`, removed afterwards;
//! - a scrubbed environment (a minimal `PATH`, `LANG=C.UTF-8`), stdin from `/dev/null`;
//! - a wall-clock limit, after which its whole process group is killed; and rlimits on CPU time, address space,
//!   file size and core dumps, set between `fork` and `exec`;
//! - when phi-tui runs as root: the program runs as `nobody` (65534), so it owns nothing, and `RLIMIT_NPROC`
//!   (which the kernel never enforces for root) caps its processes — provided `nobody` can run a python3 (one under
//!   `/root`, e.g. pyenv's, it cannot: then `/usr/bin/python3` is used, or root as a last resort);
//! - where the OS lets an unprivileged process create namespaces (as `unshare --user` does): fresh user, network,
//!   mount, IPC and pid namespaces (see `namespaces.rs`). There is no network (only a loopback interface that is
//!   down), every mount is read-only except the work directory, the process tree dies with the program, its
//!   signals reach nothing outside, and on Linux ≥ 6.14 the pid namespace's `pid_max` caps its processes. Every
//!   capability is dropped before Python starts;
//! - a seccomp filter (see `seccomp.rs`): no Unix sockets, so no socket file of the host (which a read-only mount
//!   does not protect) can be reached, and no io_uring.
//!
//! What is available is found once by [`Sandbox::detect`], which runs probe programs and reports what it *observed*
//! (e.g. that a connection to a listening local port failed) as an [`Isolation`].
//!
//! A small Python prelude also disables `os.fork`, `subprocess` and friends (like human-eval's `reliability_guard`);
//! it stops accidents early but is no security boundary — the OS-level limits are.

mod capture;
mod doctest;
mod namespaces;
mod seccomp;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capture::Capture;
pub use doctest::{doctest_counts, doctest_program, RESULT_MARK, SYNTAX_ERROR_EXIT};
use namespaces::NamespacePlan;
use seccomp::UnixSocketFilter;

/// Runs `program.py` as `__main__`, after the optional process-creation guard.
const PRELUDE: &str = include_str!("prelude.py");
/// The kernel's smallest `pid_max` (RESERVED_PIDS + 1).
const PID_MAX_MIN: u32 = 301;
/// The unprivileged user that programs run as when phi-tui is root.
const NOBODY: u32 = 65534;
const PROGRAM_FILE: &str = "program.py";
/// How long to keep reading output after the program exited, for pipes that a leftover process still holds.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Errors of the sandbox itself (not of the program it runs, which end up in [`SandboxStatus`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    #[error("no usable python3 found: {0}")]
    PythonNotFound(String),
    #[error("no way to run python3 found (tried: {0})")]
    Unusable(String),
    #[error("could not prepare the work directory: {0}")]
    WorkDir(String),
    #[error("could not start {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
    #[error("waiting for the program failed: {0}")]
    Wait(String),
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What a program may use. The defaults suit a unit test or a HumanEval problem.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLimits {
    /// Wall-clock time; then the whole process group (and pid namespace) is killed.
    pub wall_time: Duration,
    /// CPU time per process (`RLIMIT_CPU`, whole seconds, rounded up; at least 1 s).
    pub cpu_time: Duration,
    /// Address space per process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// Processes at most: `RLIMIT_NPROC` when the program runs as `nobody` (shared by every concurrent sandbox),
    /// and the pid namespace's `pid_max` where the kernel has one per namespace (at least 300 there).
    pub max_processes: u32,
    /// Bytes of stdout and of stderr kept (the beginning and the end; the middle is elided).
    pub output_bytes: usize,
    /// Disable process creation (`os.fork`, `os.system`, `subprocess`, …) and `os.kill` inside Python.
    pub python_guard: bool,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            wall_time: Duration::from_secs(10),
            cpu_time: Duration::from_secs(5),
            memory_bytes: 1 << 30,
            file_size_bytes: 16 << 20,
            max_processes: 64,
            output_bytes: 64 << 10,
            python_guard: true,
        }
    }
}

impl SandboxLimits {
    /// The defaults with `cpu` of CPU time per process and twice that plus 2 s of wall-clock time (a program may
    /// wait on I/O or its children, but not for long): the limits of eval and datagen's checks.
    pub fn with_cpu_time(cpu: Duration) -> Self {
        Self { cpu_time: cpu, wall_time: cpu * 2 + Duration::from_secs(2), ..Self::default() }
    }
}

/// Which time limit stopped a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    Wall,
    Cpu,
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Exit code 0.
    Passed,
    /// A non-zero exit code, e.g. 1 for an uncaught exception.
    Failed {
        exit_code: i32,
    },
    TimedOut {
        limit: TimeLimit,
    },
    /// A `MemoryError` (the address-space limit) or an allocation failure.
    MemoryExceeded,
    /// Killed by a signal that no limit explains (e.g. SIGSEGV, or SIGKILL from the OOM killer).
    Killed {
        signal: i32,
    },
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxOutcome {
    pub status: SandboxStatus,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time.
    pub duration: Duration,
    /// CPU time of the program and the descendants it waited for.
    pub cpu_time: Duration,
}

impl SandboxOutcome {
    pub fn passed(&self) -> bool {
        self.status == SandboxStatus::Passed
    }

    /// A one-line reason, in human-eval's style: `passed`, `timed out`, `failed: AssertionError`, …
    pub fn reason(&self) -> String {
        match &self.status {
            SandboxStatus::Passed => "passed".to_owned(),
            SandboxStatus::TimedOut { limit: TimeLimit::Wall } => "timed out (wall-clock limit)".to_owned(),
            SandboxStatus::TimedOut { limit: TimeLimit::Cpu } => "timed out (CPU-time limit)".to_owned(),
            SandboxStatus::MemoryExceeded => "failed: memory limit exceeded (MemoryError)".to_owned(),
            SandboxStatus::Killed { signal } => format!("failed: killed by signal {signal} ({})", signal_name(*signal)),
            SandboxStatus::Failed { exit_code } => match last_line(&self.stderr) {
                Some(line) => format!("failed: {line}"),
                None => format!("failed: exit code {exit_code}"),
            },
        }
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|line| !line.is_empty())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// How processes are capped beyond the rlimits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessCap {
    /// The pid namespace's own `pid_max` (Linux ≥ 6.14): per run.
    PidNamespace,
    /// `RLIMIT_NPROC` for the sandbox user: shared by concurrent runs.
    Nproc,
    /// Nothing but the Python guard and the kill at the time limit.
    None,
}

/// What isolation is active, as observed by the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Isolation {
    pub python: PathBuf,
    pub python_version: String,
    /// Namespaces (user, network, mount, pid) are in use.
    pub namespaces: bool,
    /// A connection to a port listening on the host's loopback failed.
    pub network: bool,
    /// A connection to a Unix socket of the host that anyone may write to failed.
    pub unix_sockets: bool,
    /// Creating a file in the shared temporary directory (and `/dev/shm`) failed.
    pub filesystem: bool,
    /// The program's process tree dies with it and its signals reach nothing outside.
    pub pid_namespace: bool,
    pub process_cap: ProcessCap,
    /// The uid the program runs as (outside any namespace).
    pub uid: u32,
    /// One line for reports.
    pub description: String,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

#[derive(Debug, Clone)]
struct Config {
    python: PathBuf,
    /// Run as this uid/gid (when phi-tui is root).
    run_as: Option<(u32, u32)>,
    namespaces: bool,
}

/// A detected way of running Python programs. Cheap to share; runs may go on concurrently from many threads.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: Config,
    isolation: Isolation,
}

/// The process-wide sandbox, detected on first use.
pub fn shared() -> Result<&'static Sandbox> {
    static SHARED: OnceLock<Result<Sandbox>> = OnceLock::new();
    SHARED.get_or_init(Sandbox::detect).as_ref().map_err(Clone::clone)
}

/// Runs a Python program in the [`shared`] sandbox.
pub fn run_python(program: &str, limits: &SandboxLimits) -> Result<SandboxOutcome> {
    shared()?.run_python(program, limits)
}

impl Sandbox {
    /// Finds python3 and the strongest isolation that works here, by running probe programs (a few tenths of a
    /// second). Prefers, in order: namespaces as an unprivileged user, namespaces, no namespaces as an unprivileged
    /// user, no namespaces; and for each, python3 from `PATH`, then `/usr/bin/python3` (or only `PHI_TUI_PYTHON`,
    /// when set). Under root the unprivileged user is `nobody`, who may not reach a python3 under `/root`.
    pub fn detect() -> Result<Self> {
        let pythons = python_candidates();
        if pythons.is_empty() {
            return Err(SandboxError::PythonNotFound(match std::env::var_os("PHI_TUI_PYTHON") {
                Some(path) if !path.is_empty() => format!("PHI_TUI_PYTHON={} is not a file", path.to_string_lossy()),
                _ => "python3 is not on PATH (nor /usr/bin/python3); install it (e.g. `apt-get install python3`) or \
                      set PHI_TUI_PYTHON"
                    .to_owned(),
            }));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let run_as_options: Vec<Option<(u32, u32)>> =
            if euid == 0 { vec![Some((NOBODY, NOBODY)), None] } else { vec![None] };
        let mut attempts = Vec::new();
        for namespaces in [true, false] {
            for run_as in &run_as_options {
                for python in &pythons {
                    let config = Config { python: python.clone(), run_as: *run_as, namespaces };
                    match probe(&config) {
                        Ok(isolation) => {
                            tracing::debug!(%isolation, "sandbox detected");
                            return Ok(Self { config, isolation });
                        }
                        Err(reason) => {
                            tracing::debug!(?config, %reason, "sandbox probe failed");
                            attempts.push(format!("{}: {reason}", config.label()));
                        }
                    }
                }
            }
        }
        Err(SandboxError::Unusable(attempts.join("; ")))
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Runs `program` as a Python script, in a fresh work directory that is removed afterwards.
    pub fn run_python(&self, program: &str, limits: &SandboxLimits) -> Result<SandboxOutcome> {
        let work = tempfile::Builder::new()
            .prefix("phi-tui-sandbox-")
            .tempdir()
            .map_err(|e| SandboxError::WorkDir(e.to_string()))?;
        let outcome = self.run_in(work.path(), program, limits);
        remove_work_dir(work);
        outcome
    }

    fn run_in(&self, work: &Path, program: &str, limits: &SandboxLimits) -> Result<SandboxOutcome> {
        std::fs::write(work.join(PROGRAM_FILE), program).map_err(|e| SandboxError::WorkDir(e.to_string()))?;
        if let Some((uid, gid)) = self.config.run_as {
            std::os::unix::fs::chown(work, Some(uid), Some(gid)).map_err(|e| SandboxError::WorkDir(e.to_string()))?;
        }
        let mut command = self.config.command(work, limits).map_err(|e| SandboxError::WorkDir(e.to_string()))?;
        let started = Instant::now();
        let child = command.spawn().map_err(|e| match self.config.namespaces {
            true => SandboxError::Setup(format!("starting {} in new namespaces: {e}", self.config.python.display())),
            false => SandboxError::Spawn { program: self.config.python.display().to_string(), reason: e.to_string() },
        })?;
        let finished = supervise(child, started + limits.wall_time, limits.output_bytes)?;
        let duration = started.elapsed();
        let stdout = finished.stdout.into_string();
        let stderr = finished.stderr.into_string();
        let cpu_limited = finished.cpu_time >= Rlimits::new(limits, false).cpu();
        let status = classify(&finished.status, finished.timed_out, cpu_limited, &stderr);
        Ok(SandboxOutcome { status, stdout, stderr, duration, cpu_time: finished.cpu_time })
    }
}

impl Config {
    fn label(&self) -> String {
        format!(
            "{} {}{}",
            self.python.display(),
            if self.namespaces { "with namespaces" } else { "without namespaces" },
            match self.run_as {
                Some((uid, _)) => format!(" as uid {uid}"),
                None => String::new(),
            }
        )
    }

    fn command(&self, work: &Path, limits: &SandboxLimits) -> io::Result<Command> {
        let guard = if limits.python_guard { "1" } else { "0" };
        let mut command = Command::new(&self.python);
        command.args(["-I", "-B", "-c", PRELUDE, PROGRAM_FILE, guard]);
        command
            .current_dir(work)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", work)
            .env("TMPDIR", work)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups too when it changes the uid as root.
            command.uid(uid).gid(gid);
        }
        let rlimits = Rlimits::new(limits, self.run_as.is_some());
        let filter = UnixSocketFilter::new();
        let plan = match self.namespaces {
            true => {
                // SAFETY: geteuid and getegid have no preconditions.
                let (uid, gid) = self.run_as.unwrap_or_else(|| unsafe { (libc::geteuid(), libc::getegid()) });
                Some(NamespacePlan::new(work, uid, gid, pid_max(limits))?)
            }
            false => None,
        };
        // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe calls are
        // allowed: it makes plain system calls on values computed beforehand, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                rlimits.apply()?;
                if let Some(plan) = &plan {
                    plan.enter()?;
                }
                // Last, so that it binds only the program. A kernel without seccomp runs it without the filter;
                // the probe then reports Unix sockets as reachable.
                if let Some(filter) = &filter {
                    let _ = filter.install();
                }
                Ok(())
            });
        }
        Ok(command)
    }
}

/// The limits, computed before the fork so that the child only makes system calls.
#[derive(Debug, Clone, Copy)]
struct Rlimits {
    cpu_seconds: u64,
    memory_bytes: u64,
    file_size_bytes: u64,
    /// Only set for a dedicated sandbox user: for anyone else it would count (and be exhausted by) their own
    /// processes, and for root the kernel ignores it.
    processes: Option<u64>,
}

impl Rlimits {
    fn cpu(&self) -> Duration {
        Duration::from_secs(self.cpu_seconds)
    }

    fn new(limits: &SandboxLimits, dedicated_user: bool) -> Self {
        let cpu = limits.cpu_time.as_secs() + u64::from(limits.cpu_time.subsec_nanos() > 0);
        Self {
            cpu_seconds: cpu.max(1),
            memory_bytes: limits.memory_bytes,
            file_size_bytes: limits.file_size_bytes,
            processes: dedicated_user.then_some(u64::from(limits.max_processes)),
        }
    }

    /// Runs in the child between fork and exec (after std changed the uid, so the parent-death signal, which a
    /// uid change clears, is set here).
    fn apply(&self) -> io::Result<()> {
        fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
            let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            // SAFETY: a plain system call on a valid struct.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        // SAFETY: plain system calls with constant arguments.
        unsafe {
            // A session (and process group) of its own: the kill at the time limit reaches every descendant that
            // does not leave the group, and Ctrl-C in phi-tui's terminal does not reach the program.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // If phi-tui dies, so does the program (and with namespaces, its pid 1 and so every process in it).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SIGXCPU at the soft limit, SIGKILL one second later if that was ignored.
        set(libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        set(libc::RLIMIT_AS, self.memory_bytes, self.memory_bytes)?;
        set(libc::RLIMIT_FSIZE, self.file_size_bytes, self.file_size_bytes)?;
        set(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(processes) = self.processes {
            set(libc::RLIMIT_NPROC, processes, processes)?;
        }
        Ok(())
    }
}

fn pid_max(limits: &SandboxLimits) -> u32 {
    limits.max_processes.saturating_add(1).max(PID_MAX_MIN)
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `cpu_limited`: the program used up its CPU time. In a pid namespace Python is its init, which the kernel spares
/// SIGXCPU, so the hard limit's SIGKILL ends it instead.
fn classify(status: &ExitStatus, timed_out: bool, cpu_limited: bool, stderr: &str) -> SandboxStatus {
    if timed_out {
        return SandboxStatus::TimedOut { limit: TimeLimit::Wall };
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => SandboxStatus::Passed,
        (Some(_), _) if mentions_memory_error(stderr) => SandboxStatus::MemoryExceeded,
        (Some(exit_code), _) => SandboxStatus::Failed { exit_code },
        (None, Some(libc::SIGXCPU)) => SandboxStatus::TimedOut { limit: TimeLimit::Cpu },
        (None, Some(libc::SIGKILL)) if cpu_limited => SandboxStatus::TimedOut { limit: TimeLimit::Cpu },
        (None, Some(signal)) => SandboxStatus::Killed { signal },
        (None, None) => SandboxStatus::Killed { signal: 0 },
    }
}

/// Python ends with a `MemoryError` traceback when the address-space limit refuses an allocation, or prints an
/// allocation failure of its own.
fn mentions_memory_error(stderr: &str) -> bool {
    match last_line(stderr) {
        Some(line) => {
            line == "MemoryError"
                || line.starts_with("MemoryError:")
                || line.contains("Cannot allocate memory")
                || line.contains("std::bad_alloc")
        }
        None => false,
    }
}

struct Finished {
    status: ExitStatus,
    timed_out: bool,
    cpu_time: Duration,
    stdout: Capture,
    stderr: Capture,
}

/// Collects output and waits for the program, killing its process group at the deadline. Also kills the group once
/// the program has exited, so nothing it left behind lives on.
fn supervise(mut child: Child, deadline: Instant, output_bytes: usize) -> Result<Finished> {
    let pid = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: a plain system call. The group's leader is not reaped until we call wait below, so its id (the
        // group's id) cannot have been reused.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
    };
    let mut stdout = Capture::new(output_bytes);
    let mut stderr = Capture::new(output_bytes);
    let mut pipes: Vec<(Box<dyn Read>, i32, bool)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        let fd = out.as_raw_fd();
        pipes.push((Box::new(out), fd, true));
    }
    if let Some(err) = child.stderr.take() {
        let fd = err.as_raw_fd();
        pipes.push((Box::new(err), fd, false));
    }
    let pidfd = PidFd::open(pid);
    let mut timed_out = false;
    let mut exited_at: Option<Instant> = None;
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        if exited_at.is_none() && leader_exited(pid)? {
            kill_group();
            exited_at = Some(Instant::now());
        }
        let now = Instant::now();
        if exited_at.is_none() && now >= deadline && !timed_out {
            kill_group();
            timed_out = true;
        }
        if let Some(at) = exited_at {
            if pipes.is_empty() || now >= at + DRAIN_GRACE {
                break;
            }
        }
        // Sleep until output arrives, the program exits (pidfd), or the next deadline.
        let wake = match exited_at {
            Some(at) => at + DRAIN_GRACE,
            None if timed_out => now + Duration::from_millis(10),
            None => deadline,
        };
        let mut timeout = wake.saturating_duration_since(now);
        if pidfd.is_none() && exited_at.is_none() {
            timeout = timeout.min(Duration::from_millis(5));
        }
        let mut fds: Vec<libc::pollfd> =
            pipes.iter().map(|(_, fd, _)| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
        if let (Some(pidfd), None) = (&pidfd, exited_at) {
            fds.push(libc::pollfd { fd: pidfd.0, events: libc::POLLIN, revents: 0 });
        }
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of fds.len() pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis.max(1)) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                kill_group();
                return Err(SandboxError::Wait(error.to_string()));
            }
            continue;
        }
        let mut index = 0;
        pipes.retain_mut(|(reader, _, is_stdout)| {
            let revents = fds[index].revents;
            index += 1;
            if revents == 0 {
                return true;
            }
            // poll said readable (or hung up), so this read does not block.
            match reader.read(&mut buffer) {
                Ok(0) => false,
                Ok(n) => {
                    let target = if *is_stdout { &mut stdout } else { &mut stderr };
                    target.push(&buffer[..n]);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(_) => false,
            }
        });
    }
    let (status, cpu_time) = reap(pid)?;
    // The Child is reaped now; dropping it neither waits nor kills.
    drop(child);
    Ok(Finished { status, timed_out, cpu_time, stdout, stderr })
}

/// Waits for the child and returns its status and the CPU time it and its reaped descendants used.
fn reap(pid: libc::pid_t) -> Result<(ExitStatus, Duration)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value, and wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: a plain system call on valid pointers.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(SandboxError::Wait(error.to_string()));
        }
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    Ok((ExitStatus::from_raw(status), time(usage.ru_utime) + time(usage.ru_stime)))
}

/// Whether the child has exited, without reaping it (so its pid stays reserved for the group kill).
fn leader_exited(pid: libc::pid_t) -> Result<bool> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value, and waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a plain system call on a valid siginfo_t.
    let result = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    if result != 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::Interrupted => Ok(false),
            _ => Err(SandboxError::Wait(error.to_string())),
        };
    }
    // SAFETY: waitid succeeded, so si_pid is set (0 while the child still runs).
    Ok(unsafe { info.si_pid() } != 0)
}

/// A pidfd (Linux ≥ 5.3): readable once the process has exited, so waiting needs no polling.
struct PidFd(i32);

impl PidFd {
    fn open(pid: libc::pid_t) -> Option<Self> {
        // SAFETY: a plain system call; the result is a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        (fd >= 0).then_some(Self(fd as i32))
    }
}

impl Drop for PidFd {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

/// Removes the work directory, first making every directory in it accessible again (a program may have created
/// one without permissions, which would stop the removal).
fn remove_work_dir(work: tempfile::TempDir) {
    let path = work.path().to_path_buf();
    if let Err(error) = work.close() {
        restore_permissions(&path);
        if let Err(error2) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), %error, %error2, "could not remove a sandbox work directory");
        }
    }
}

fn restore_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                restore_permissions(&entry.path());
            }
        }
    }
}

/// python3 candidates: PHI_TUI_PYTHON alone when set, else python3 on PATH (resolved to the real interpreter, since e.g. pyenv's shim
/// needs an environment the sandbox scrubs), /usr/bin/python3.
fn python_candidates() -> Vec<PathBuf> {
    // An explicit choice is the only candidate: silently using another python would hide the mistake.
    if let Some(path) = std::env::var_os("PHI_TUI_PYTHON").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() { vec![path] } else { Vec::new() };
    }
    let mut candidates = Vec::new();
    if let Some(on_path) = which("python3") {
        if let Some(real) = real_interpreter(&on_path) {
            candidates.push(real);
        }
        candidates.push(on_path);
    }
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        candidates.push(system);
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for candidate in candidates {
        let canonical = std::fs::canonicalize(&candidate).unwrap_or(candidate);
        if !unique.contains(&canonical) {
            unique.push(canonical);
        }
    }
    unique
}

fn real_interpreter(python: &Path) -> Option<PathBuf> {
    let output = Command::new(python)
        .args(["-I", "-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?;
    let path = PathBuf::from(path.trim());
    (output.status.success() && path.is_absolute()).then_some(path)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    std::env::split_paths(&path).chain(std::env::split_paths(&system)).map(|dir| dir.join(name)).find(|candidate| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The probe: checks from inside what a configuration really isolates. Fails when Python does not run at all.
fn probe(config: &Config) -> std::result::Result<Isolation, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("binding a probe port: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let host_socket = HostUnixSocket::bind().map_err(|e| format!("binding a probe Unix socket: {e}"))?;
    let shared_tmp = std::env::temp_dir();
    let marker = format!("phi-tui-sandbox-probe-{}-{port}", std::process::id());
    let outside = [shared_tmp.join(&marker), PathBuf::from("/dev/shm").join(&marker)];
    let program = format!(
        r#"
import json, os, socket, sys
def connects():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", {port}))
        return True
    except OSError:
        return False
def connects_unix(path):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(path)
        return True
    except OSError:
        return False
def writes(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
try:
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
except (OSError, ValueError):
    pid_max = 0
print(json.dumps({{"version": sys.version.split()[0], "pid": os.getpid(), "connects": connects(),
    "connects_unix": connects_unix({unix_socket:?}),
    "writes": [writes(p) for p in {outside:?}], "pid_max": pid_max, "cwd_writable": writes("probe.txt")}}))
"#,
        outside = outside.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        unix_socket = host_socket.path().to_string_lossy(),
    );
    let limits = SandboxLimits { wall_time: Duration::from_secs(20), ..SandboxLimits::default() };
    let sandbox = Sandbox { config: config.clone(), isolation: placeholder_isolation(config) };
    let result = sandbox.run_python(&program, &limits);
    for path in &outside {
        let _ = std::fs::remove_file(path);
    }
    let outcome = result.map_err(|e| e.to_string())?;
    if !outcome.passed() {
        return Err(format!("{} ({})", outcome.reason(), outcome.stderr.trim()));
    }
    let report: serde_json::Value =
        serde_json::from_str(outcome.stdout.trim()).map_err(|e| format!("unreadable probe output: {e}"))?;
    let flag = |key: &str| report.get(key).and_then(serde_json::Value::as_bool).unwrap_or(false);
    if !flag("cwd_writable") {
        return Err("the work directory is not writable".to_owned());
    }
    let namespaces = config.namespaces;
    let network = !flag("connects");
    let unix_sockets = !flag("connects_unix");
    let filesystem = report
        .get("writes")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|writes| writes.iter().all(|w| w.as_bool() == Some(false)));
    let pid_namespace = report.get("pid").and_then(serde_json::Value::as_u64) == Some(1);
    let pid_max_observed = report.get("pid_max").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let process_cap = if pid_namespace && pid_max_observed == u64::from(pid_max(&limits)) {
        ProcessCap::PidNamespace
    } else if config.run_as.is_some() {
        ProcessCap::Nproc
    } else {
        ProcessCap::None
    };
    let version = report.get("version").and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
    // SAFETY: geteuid has no preconditions.
    let uid = config.run_as.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
    let mut parts = vec![if namespaces {
        "user+network+mount+ipc+pid namespaces, capabilities dropped".to_owned()
    } else {
        "no namespaces (not permitted here)".to_owned()
    }];
    parts.push(if network { "no network".to_owned() } else { "NETWORK REACHABLE".to_owned() });
    parts.push(if unix_sockets { "no Unix sockets".to_owned() } else { "HOST UNIX SOCKETS REACHABLE".to_owned() });
    parts.push(if filesystem {
        "read-only filesystem except the work dir".to_owned()
    } else {
        "FILESYSTEM WRITABLE outside the work dir".to_owned()
    });
    parts.push(match (process_cap, config.run_as.is_some()) {
        (ProcessCap::PidNamespace, true) => {
            "processes capped by pid_max in the pid namespace and RLIMIT_NPROC".to_owned()
        }
        (ProcessCap::PidNamespace, false) => "processes capped by pid_max in the pid namespace".to_owned(),
        (_, true) => "processes capped by RLIMIT_NPROC".to_owned(),
        (_, false) => "NO OS process cap (Python guard and time limit only)".to_owned(),
    });
    parts.push(match config.run_as {
        Some((uid, _)) => format!("runs as uid {uid} (nobody)"),
        None if uid == 0 => "runs as root".to_owned(),
        None => format!("runs as uid {uid}"),
    });
    parts.push("rlimits on CPU, memory, file size; wall-clock kill".to_owned());
    parts.push(format!("python {version} at {}", config.python.display()));
    Ok(Isolation {
        python: config.python.clone(),
        python_version: version,
        namespaces,
        network,
        unix_sockets,
        filesystem,
        pid_namespace,
        process_cap,
        uid,
        description: parts.join("; "),
    })
}

/// A Unix socket that anyone may connect to, in a directory anyone may enter (as `/tmp` sockets of desktop
/// services are): what the probe tries to reach from inside. Removed on drop.
struct HostUnixSocket {
    dir: tempfile::TempDir,
    _listener: std::os::unix::net::UnixListener,
}

impl HostUnixSocket {
    fn bind() -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("phi-tui-sandbox-probe-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let path = dir.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        Ok(Self { dir, _listener: listener })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("socket")
    }
}

fn placeholder_isolation(config: &Config) -> Isolation {
    Isolation {
        python: config.python.clone(),
        python_version: String::new(),
        namespaces: config.namespaces,
        network: false,
        unix_sockets: false,
        filesystem: false,
        pid_namespace: false,
        process_cap: ProcessCap::None,
        uid: 0,
        description: "probing".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn reasons_name_the_last_stderr_line() {
        let outcome = |status, stderr: &str| SandboxOutcome {
            status,
            stdout: String::new(),
            stderr: stderr.to_owned(),
            duration: Duration::ZERO,
            cpu_time: Duration::ZERO,
        };
        let failed = outcome(SandboxStatus::Failed { exit_code: 1 }, "Traceback ...\n  File x\nAssertionError\n\n");
        assert_eq!(failed.reason(), "failed: AssertionError");
        assert_eq!(outcome(SandboxStatus::Failed { exit_code: 3 }, "").reason(), "failed: exit code 3");
        assert_eq!(outcome(SandboxStatus::Passed, "").reason(), "passed");
        assert!(outcome(SandboxStatus::Killed { signal: 11 }, "").reason().contains("SIGSEGV"));
    }

    #[test]
    fn memory_errors_are_recognised() {
        let ok = ExitStatus::from_raw(1 << 8);
        assert_eq!(classify(&ok, false, false, "Traceback\nMemoryError\n"), SandboxStatus::MemoryExceeded);
        assert_eq!(classify(&ok, false, false, "Traceback\nValueError: x\n"), SandboxStatus::Failed { exit_code: 1 });
        assert_eq!(classify(&ExitStatus::from_raw(0), false, false, ""), SandboxStatus::Passed);
        assert_eq!(
            classify(&ExitStatus::from_raw(libc::SIGXCPU), false, false, ""),
            SandboxStatus::TimedOut { limit: TimeLimit::Cpu }
        );
        assert_eq!(
            classify(&ExitStatus::from_raw(libc::SIGKILL), true, false, ""),
            SandboxStatus::TimedOut { limit: TimeLimit::Wall }
        );
        assert_eq!(
            classify(&ExitStatus::from_raw(libc::SIGKILL), false, true, ""),
            SandboxStatus::TimedOut { limit: TimeLimit::Cpu }
        );
        assert_eq!(
            classify(&ExitStatus::from_raw(libc::SIGKILL), false, false, ""),
            SandboxStatus::Killed { signal: libc::SIGKILL }
        );
    }

    #[test]
    fn pid_max_respects_the_kernel_minimum() {
        let limits = SandboxLimits { max_processes: 8, ..SandboxLimits::default() };
        assert_eq!(pid_max(&limits), PID_MAX_MIN);
        let limits = SandboxLimits { max_processes: 1000, ..SandboxLimits::default() };
        assert_eq!(pid_max(&limits), 1001);
    }
}
