//! `phi-tui eval humaneval|mbpp`: generate completions through the engine, run each against its tests in the
//! sandbox (while the next ones are generated), and report pass@k.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use phi_tui::engine::{Engine, EngineError};
use phi_tui::eval::{
    self, plan, Benchmark, Executor, GenerationPlan, Report, ResultWriter, SampleResult, Tally, Task, WorkItem,
};
use phi_tui::sandbox::{Sandbox, SandboxLimits};

use super::interrupt::Interrupt;
use super::progress::{self, Unit};
use super::RuntimeArgs;

#[derive(Args, Debug)]
#[command(after_help = "\
HumanEval: the model continues each prompt; generation stops at \\nclass, \\ndef, \\n#, \\nif, \\nprint or \
end-of-text (as in human-eval). MBPP: the MBPP paper's 3-shot prompt (tasks 2-4 as examples), tasks 11-510, \
generation stops at [DONE]. Every program runs in the sandbox: its own python3 process and temporary directory, \
time, memory and file-size limits, and no network where the OS allows it; the report says which isolation was active.")]
pub struct EvalArgs {
    /// humaneval or mbpp
    benchmark: Benchmark,
    /// The model: an installed name or a GGUF file [default: `model` in the config file, else the only installed
    /// model] (not used with --completions or --from)
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// A LoRA adapter GGUF to apply
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The adapter's scale (llama.cpp multiplies it by alpha / rank)
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
    /// Completions per task (N); pass@k is reported for k up to N
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    samples: u32,
    /// Temperature (default: 0, greedy, for one sample; 0.8 for several)
    #[arg(long = "temp")]
    temperature: Option<f32>,
    /// Nucleus sampling when the temperature is above 0 (the Codex paper's 0.95)
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed of the first sample (sample i of task t uses seed + 1000 t + i)
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Tokens to generate at most per completion
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    /// Evaluate only the first K tasks
    #[arg(long)]
    limit: Option<usize>,
    /// Programs run in parallel (default: half the CPUs)
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// CPU seconds per program; the wall-clock limit is twice this plus 2 s
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Address space per program, in MiB
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Write per-sample results (task_id, sample, completion, passed, result, verdict) as JSON Lines
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run recorded in --out: skip the task/sample pairs it already has
    #[arg(long, requires = "out")]
    resume: bool,
    /// Score completions from elsewhere, in human-eval's sample format ({"task_id": …, "completion": …} per line)
    #[arg(long, conflicts_with_all = ["from", "model", "resume"])]
    completions: Option<PathBuf>,
    /// Re-score the completions of an earlier results file (runs them again; nothing is generated)
    #[arg(long, conflicts_with_all = ["model", "resume"])]
    from: Option<PathBuf>,
    /// With --from: only print the report from the recorded verdicts
    #[arg(long, requires = "from")]
    no_exec: bool,
    /// A directory with HumanEval.jsonl.gz and mbpp.jsonl [default: the copies built into phi-tui]
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut tasks = eval::load_tasks(args.benchmark, &eval::BenchmarkData::from_dir(args.data.clone()))?;
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    if args.no_exec {
        let Some(from) = &args.from else { anyhow::bail!("--no-exec needs --from") };
        let results = plan::in_scope(eval::read_results(from)?, &tasks);
        print_report(&args, &Report::new(&results), None, started.elapsed(), None, None);
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let sandbox = Sandbox::detect().context("setting up the sandbox for running Python")?;
    tracing::info!(isolation = %sandbox.isolation(), "sandbox");
    let limits = SandboxLimits {
        memory_bytes: args.memory_mb.saturating_mul(1 << 20),
        ..SandboxLimits::with_cpu_time(Duration::from_secs_f64(args.timeout))
    };
    let jobs = args.jobs.unwrap_or_else(plan::default_jobs).max(1);

    let stop = Interrupt::install("finishing the programs that are running", || {})?;
    let mut previous = Vec::new();
    let mut done = HashSet::new();
    if args.resume {
        if let Some(out) = args.out.as_deref().filter(|out| out.exists()) {
            previous = plan::in_scope(eval::read_results(out)?, &tasks);
            done = previous.iter().map(|r| (r.task_id.clone(), r.sample)).collect();
            eprintln!("resuming: {} samples already in {}", previous.len(), out.display());
        }
    }
    let work = match (&args.completions, &args.from) {
        (Some(path), _) | (None, Some(path)) => {
            let (work, skipped) = plan::scoring_work(&tasks, eval::read_completions(path, args.benchmark)?);
            if skipped > 0 {
                eprintln!("skipping {skipped} completions of tasks outside the evaluated set");
            }
            work
        }
        (None, None) => plan::generation_work(&tasks, args.samples, &done),
    };

    // Opened only now: --out may be the --from file, which truncating would have emptied before it was read.
    let writer = match &args.out {
        Some(out) => Some(ResultWriter::open(out, args.resume)?),
        None => None,
    };
    let bar = progress::bar(work.len() as u64, "", Unit::Items);
    let tasks = Arc::new(tasks);
    let mut executor = Executor::start(tasks.clone(), sandbox.clone(), limits, jobs);
    let mut progress = Progress { bar: &bar, writer, tally: Tally::resumed(previous) };

    let runtime = super::runtime()?;
    let generation_time = runtime.block_on(async {
        let generating = work.iter().any(|item| item.completion.is_none());
        let mut generation_time = None;
        if generating {
            let model = super::model_path(args.model.as_deref())?;
            let generate_started = Instant::now();
            generate_all(&args, &model, &tasks, &work, &mut executor, &mut progress, &stop).await?;
            generation_time = Some(generate_started.elapsed());
        } else {
            for item in &work {
                executor.submit(item.task, item.sample, item.completion.clone().unwrap_or_default());
            }
        }
        executor.close();
        loop {
            tokio::select! {
                result = executor.next() => match result {
                    Some(result) => progress.record(result)?,
                    None => break,
                },
                () = stop.notified() => executor.cancel(),
            }
        }
        anyhow::Ok(generation_time)
    })?;
    bar.finish_and_clear();
    let interrupted = stop.requested().then_some((progress.tally.finished, work.len()));
    let report = Report::new(&progress.tally.results);
    print_report(&args, &report, Some(&sandbox), started.elapsed(), generation_time, interrupted);
    Ok(if interrupted.is_some() { ExitCode::from(130) } else { ExitCode::SUCCESS })
}

/// Generates the missing completions one after another on sequence 0, handing each to the executor as soon as it
/// is complete, and recording results as they come in.
async fn generate_all(
    args: &EvalArgs,
    model: &Path,
    tasks: &[Task],
    work: &[WorkItem],
    executor: &mut Executor,
    progress: &mut Progress<'_>,
    stop: &Interrupt,
) -> anyhow::Result<()> {
    let engine = Engine::start(args.runtime.engine_options(1)?)?;
    progress.bar.set_message("loading the model");
    engine.load_model(model, None).await.with_context(|| format!("loading {}", model.display()))?;
    if let Some(lora) = &args.lora {
        engine.set_adapter(lora, args.lora_scale).await.with_context(|| format!("applying {}", lora.display()))?;
    }
    let generation =
        GenerationPlan::new(args.benchmark, args.samples, args.temperature, args.top_p, args.seed, args.max_tokens);
    if args.samples > 1 && generation.temperature == 0.0 {
        progress
            .bar
            .suspend(|| eprintln!("warning: greedy decoding gives {} identical samples per task", args.samples));
    }
    for item in work {
        if stop.requested() {
            break;
        }
        let task = &tasks[item.task];
        progress.set_message(&format!("generating {}", task.task_id));
        let generation = engine.generate(generation.request(tasks, item)).finish();
        tokio::pin!(generation);
        let summary = loop {
            tokio::select! {
                summary = &mut generation => break Some(summary),
                Some(result) = executor.next() => progress.record(result)?,
                // Dropping the generation cancels it.
                () = stop.notified() => break None,
            }
        };
        let completion = match summary {
            None => {
                stop.notify_again();
                break;
            }
            Some(Ok(summary)) => summary.text,
            // One task's prompt being too long for the context is that sample's failure, not the run's.
            Some(Err(error @ EngineError::PromptTooLong { .. })) => {
                progress.record(SampleResult {
                    task_id: task.task_id.clone(),
                    sample: item.sample,
                    completion: String::new(),
                    passed: false,
                    result: format!("failed: {error}"),
                    verdict: eval::Verdict::Error,
                    duration_ms: 0,
                })?;
                continue;
            }
            Some(Err(error)) => return Err(error).with_context(|| format!("generating {}", task.task_id)),
        };
        executor.submit(item.task, item.sample, completion);
    }
    Ok(())
}

/// The run's tally, shown on the progress bar.
struct Progress<'a> {
    bar: &'a ProgressBar,
    writer: Option<ResultWriter>,
    tally: Tally,
}

impl Progress<'_> {
    fn record(&mut self, result: SampleResult) -> anyhow::Result<()> {
        self.tally.record(result, self.writer.as_mut())?;
        self.bar.inc(1);
        self.set_message("");
        Ok(())
    }

    fn set_message(&self, activity: &str) {
        let separator = if activity.is_empty() { "" } else { " · " };
        self.bar.set_message(format!("{}{separator}{activity}", self.tally.summary()));
    }
}

fn print_report(
    args: &EvalArgs,
    report: &Report,
    sandbox: Option<&Sandbox>,
    wall: Duration,
    generation: Option<Duration>,
    interrupted: Option<(usize, usize)>,
) {
    if let Some((finished, planned)) = interrupted {
        println!("interrupted: {finished} of {planned} samples finished; the report covers the finished ones");
    }
    println!(
        "{}: {} tasks, {} samples ({} per task at least)",
        args.benchmark, report.tasks, report.samples, report.min_samples
    );
    if report.pass_at.is_empty() {
        println!("pass@1: n/a (no results)");
    }
    for (k, value) in &report.pass_at {
        println!("pass@{k}: {:.2}%", 100.0 * value);
    }
    println!(
        "samples: {} passed, {} failed, {} timed out, {} over the memory limit, {} sandbox errors; {} of {} tasks solved",
        report.passed,
        report.failed,
        report.timed_out,
        report.memory_exceeded,
        report.errors,
        report.tasks_solved,
        report.tasks
    );
    match generation {
        Some(generation) => println!(
            "wall time: {:.1} s (model load and generation {:.1} s)",
            wall.as_secs_f64(),
            generation.as_secs_f64()
        ),
        None => println!("wall time: {:.1} s", wall.as_secs_f64()),
    }
    if let Some(sandbox) = sandbox {
        println!("sandbox: {}", sandbox.isolation());
    }
    if let Some(out) = &args.out {
        println!("results: {}", out.display());
    }
}
