//! Executing completions: a pool of worker threads, each running one sandboxed program at a time, so execution
//! overlaps generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::{SampleResult, Task, Verdict};
use crate::sandbox::{Sandbox, SandboxLimits};

/// Tests one completion of `task` in the sandbox. A sandbox failure is recorded as a failed sample with verdict
/// [`Verdict::Error`] (and logged) so that a long run goes on.
///
/// A sample passes only when its program exits with 0 *and* its checks ran to the end: the program prints a marker
/// after them, which a completion that leaves early (`sys.exit(0)` or `os._exit(0)` at top level, before the
/// checks) never prints. The marker is new for every run, so a completion cannot simply contain it.
pub fn score(task: &Task, sample: u32, completion: &str, sandbox: &Sandbox, limits: &SandboxLimits) -> SampleResult {
    let marker = checks_completed_marker();
    let program = format!("{}\nprint({marker:?}, flush=True)\n", task.program(completion));
    let (passed, result, verdict, duration_ms) = match sandbox.run_python(&program, limits) {
        Ok(outcome) if outcome.passed() && !outcome.stdout.lines().any(|line| line.trim_end() == marker) => (
            false,
            "failed: the program exited before its checks ran to the end".to_owned(),
            Verdict::Failed,
            outcome.duration.as_millis() as u64,
        ),
        Ok(outcome) => (outcome.passed(), outcome.reason(), Verdict::of(&outcome), outcome.duration.as_millis() as u64),
        Err(error) => {
            tracing::warn!(task = %task.task_id, sample, %error, "the sandbox could not run a sample");
            (false, format!("sandbox error: {error}"), Verdict::Error, 0)
        }
    };
    SampleResult {
        task_id: task.task_id.clone(),
        sample,
        completion: completion.to_owned(),
        passed,
        result,
        verdict,
        duration_ms,
    }
}

/// A line no completion contains by chance: fixed text and 64 random bits (std's per-instance hash keys).
fn checks_completed_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    format!("phi-tui: checks completed {:016x}", hasher.finish())
}

/// Scores `(task index, sample, completion)` jobs with `jobs` parallel workers; results in job order.
pub fn score_all(
    tasks: &[Task],
    completions: &[(usize, u32, String)],
    sandbox: &Sandbox,
    limits: &SandboxLimits,
    jobs: usize,
) -> Vec<SampleResult> {
    let mut executor = Executor::start(Arc::new(tasks.to_vec()), sandbox.clone(), limits.clone(), jobs);
    for (task, sample, completion) in completions {
        executor.submit(*task, *sample, completion.clone());
    }
    executor.close();
    let mut results = Vec::with_capacity(completions.len());
    while let Some(result) = executor.blocking_next() {
        results.push(result);
    }
    let position = |r: &SampleResult| {
        completions.iter().position(|(task, sample, _)| tasks[*task].task_id == r.task_id && *sample == r.sample)
    };
    results.sort_by_key(position);
    results
}

struct Job {
    task: usize,
    sample: u32,
    completion: String,
}

/// Worker threads that run submitted completions and report [`SampleResult`]s as they finish (in any order).
pub struct Executor {
    jobs: Option<std_mpsc::Sender<Job>>,
    results: mpsc::UnboundedReceiver<SampleResult>,
    cancelled: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Executor {
    pub fn start(tasks: Arc<Vec<Task>>, sandbox: Sandbox, limits: SandboxLimits, workers: usize) -> Self {
        let (job_sender, job_receiver) = std_mpsc::channel::<Job>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let (result_sender, results) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let sandbox = Arc::new(sandbox);
        let workers = (0..workers.max(1))
            .map(|index| {
                let (tasks, sandbox, limits) = (tasks.clone(), sandbox.clone(), limits.clone());
                let (job_receiver, result_sender, cancelled) =
                    (job_receiver.clone(), result_sender.clone(), cancelled.clone());
                std::thread::Builder::new().name(format!("eval-exec-{index}")).spawn(move || loop {
                    // The lock is held only while waiting for the next job, not while running one.
                    let job = match job_receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = job else { break };
                    if cancelled.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Some(task) = tasks.get(job.task) else { continue };
                    let result = score(task, job.sample, &job.completion, &sandbox, &limits);
                    if result_sender.send(result).is_err() {
                        break;
                    }
                })
            })
            .filter_map(|spawned| match spawned {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "could not start an execution worker");
                    None
                }
            })
            .collect();
        Self { jobs: Some(job_sender), results, cancelled, workers }
    }

    /// Queues a completion of `tasks[task]`.
    pub fn submit(&self, task: usize, sample: u32, completion: String) {
        if let Some(jobs) = &self.jobs {
            // The workers only stop once the sender is gone, so this cannot fail while we hold it.
            let _ = jobs.send(Job { task, sample, completion });
        }
    }

    /// No more jobs: once the queue is empty, [`Executor::next`] returns `None`.
    pub fn close(&mut self) {
        self.jobs = None;
    }

    /// Drops queued jobs that have not started; running ones finish and are reported.
    pub fn cancel(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.close();
    }

    /// The next finished result; `None` once closed and everything has been reported.
    pub async fn next(&mut self) -> Option<SampleResult> {
        self.results.recv().await
    }

    /// A finished result if there is one now.
    pub fn try_next(&mut self) -> Option<SampleResult> {
        self.results.try_recv().ok()
    }

    /// Like [`Executor::next`], for callers outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<SampleResult> {
        self.results.blocking_recv()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.cancel();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
