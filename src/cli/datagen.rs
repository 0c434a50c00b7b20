//! `phi-tui datagen textbook|exercises`: synthetic training data from a teacher model (a local GGUF through the
//! engine, or an OpenAI-compatible endpoint), filtered, deduplicated and decontaminated, appended to a JSONL file
//! that `phi-tui finetune --data` reads.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use phi_tui::datagen::teacher::decimal;
use phi_tui::datagen::{
    DatagenOptions, Decontaminator, Diversity, Ending, EngineTeacher, GenerationSettings, Kind, OpenAiApi,
    OpenAiTeacher, OutputFiles, Pipeline, Summary, Tally, Teacher, TeacherInfo,
};
use phi_tui::engine::Engine;
use phi_tui::eval;
use phi_tui::sandbox::{Sandbox, SandboxLimits};

use super::interrupt::Interrupt;
use super::progress::{self, Unit};
use super::RuntimeArgs;

#[derive(Args, Debug)]
#[command(after_help = "\
Each sample's prompt is drawn from a topic tree for Python (235 topics, or --topics FILE: one topic per line, \
subtopics indented under their topic), an audience, a constraint and three random words, fixed by --seed and the \
sample's index. Exercises are kept when their code parses, holds a function with a docstring, and runs with its \
doctests and asserts passing in the sandbox. Samples that share a 13-gram with HumanEval or MBPP, and exact and near \
duplicates (MinHash), are dropped. Kept samples go to --out (textbook: {\"text\"}; exercises: {\"prompt\", \
\"completion\"}, with provenance), rejected ones to NAME.rejected.jsonl beside it, each line synced to disk: after a \
crash or Ctrl-C, --resume continues without duplicates. The endpoint's API key is read from $PHI_TUI_TEACHER_API_KEY, \
else $OPENAI_API_KEY.")]
pub struct DatagenArgs {
    /// textbook or exercises
    kind: Kind,
    /// Samples to keep
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// The dataset file (JSONL); rejected samples go to NAME.rejected.jsonl beside it
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// The teacher: a local GGUF model, run through the engine
    #[arg(long, short = 'm', required_unless_present = "teacher_url", conflicts_with = "teacher_url")]
    model: Option<PathBuf>,
    /// The teacher: an OpenAI-compatible endpoint, e.g. http://host:8000/v1 (vLLM, llama-server, a hosted API)
    #[arg(long, requires = "teacher_model")]
    teacher_url: Option<String>,
    /// The model to ask the endpoint for
    #[arg(long)]
    teacher_model: Option<String>,
    /// The endpoint's API: chat (/chat/completions) or completions (/completions, for base models)
    #[arg(long, default_value = "chat")]
    teacher_api: OpenAiApi,
    /// Seconds one request to the endpoint may take
    #[arg(long, default_value_t = 600.0)]
    teacher_timeout: f64,
    /// Fixes every prompt (sample i's topic, audience, constraint, words and sampling seed)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The teacher's sampling temperature
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Tokens per sample at most (default: 1024 for textbook sections, 512 for exercises)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: Option<u32>,
    /// Samples in flight at once (default: 4 with -m, one engine sequence each; 8 with --teacher-url)
    #[arg(long, short = 'j', value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: Option<u32>,
    /// Continue the run recorded in --out (same kind and --seed)
    #[arg(long)]
    resume: bool,
    /// Samples to generate at most, kept or not (default: 10 × --count)
    #[arg(long)]
    max_attempts: Option<u64>,
    /// A topic tree to draw from instead of the built-in one
    #[arg(long)]
    topics: Option<PathBuf>,
    /// An existing dataset (JSONL with text, or prompt and completion) whose samples count as duplicates; repeatable
    #[arg(long = "dedup-against")]
    dedup_against: Vec<PathBuf>,
    /// Estimated Jaccard similarity from which a sample is a near duplicate
    #[arg(long, default_value_t = 0.8)]
    near_dup: f64,
    /// Shortest textbook section kept, in characters
    #[arg(long, default_value_t = 200)]
    min_chars: usize,
    /// Keep exercises that run but have no doctest or assert
    #[arg(long)]
    allow_untested: bool,
    /// CPU seconds per exercise run; the wall-clock limit is twice this plus 2 s
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Also write the summary as JSON
    #[arg(long)]
    report: Option<PathBuf>,
    /// A directory with HumanEval.jsonl.gz and mbpp.jsonl, for decontamination [default: the copies built into
    /// phi-tui]
    #[arg(long)]
    benchmarks: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: DatagenArgs) -> anyhow::Result<ExitCode> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        anyhow::bail!("--temp must be ≥ 0");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    if !(args.teacher_timeout.is_finite() && args.teacher_timeout > 0.0) {
        anyhow::bail!("--teacher-timeout must be a positive number of seconds");
    }
    let diversity = match &args.topics {
        Some(path) => Diversity::with_topic_file(path)?,
        None => Diversity::builtin(),
    };
    let decontaminator = Decontaminator::from_benchmarks(&eval::BenchmarkData::from_dir(args.benchmarks.clone()))?;
    let sandbox = match args.kind {
        Kind::Exercises => {
            let sandbox = Sandbox::detect().context("setting up the sandbox for checking exercises")?;
            tracing::info!(isolation = %sandbox.isolation(), "sandbox");
            Some(sandbox)
        }
        Kind::Textbook => None,
    };
    let cpu = Duration::from_secs_f64(args.timeout);
    let jobs = args.jobs.unwrap_or(if args.model.is_some() { 4 } else { 8 });
    let options = DatagenOptions {
        kind: args.kind,
        count: args.count,
        max_attempts: args.max_attempts.unwrap_or(args.count.saturating_mul(10)),
        seed: args.seed,
        settings: GenerationSettings {
            temperature: args.temperature,
            top_p: args.top_p,
            max_tokens: args.max_tokens.unwrap_or(match args.kind {
                Kind::Textbook => 1024,
                Kind::Exercises => 512,
            }),
        },
        jobs: jobs as usize,
        near_duplicate_threshold: args.near_dup,
        min_chars: args.min_chars,
        require_tests: !args.allow_untested,
        limits: SandboxLimits::with_cpu_time(cpu),
    };
    let files = OutputFiles::beside(&args.out, args.resume);
    let stop = Interrupt::install("finishing the samples in flight", || {})?;
    let runtime = super::runtime()?;
    let result = runtime.block_on(async {
        let teacher: Arc<dyn Teacher> = match (&args.model, &args.teacher_url) {
            (Some(model), _) => {
                let engine = Engine::start(args.runtime.engine_options(jobs)?)?;
                let info =
                    engine.load_model(model, None).await.with_context(|| format!("loading {}", model.display()))?;
                Arc::new(EngineTeacher::new(engine, &info))
            }
            (None, Some(url)) => {
                let model = args.teacher_model.as_deref().context("--teacher-url needs --teacher-model")?;
                let key = OpenAiTeacher::api_key_from_env();
                let timeout = Duration::from_secs_f64(args.teacher_timeout);
                Arc::new(OpenAiTeacher::new(url, model, args.teacher_api, key, timeout))
            }
            (None, None) => anyhow::bail!("a teacher is needed: -m MODEL.gguf or --teacher-url URL"),
        };
        let teacher_info = teacher.info();
        let mut pipeline = Pipeline::open(options.clone(), teacher, diversity, decontaminator, sandbox, &files)?;
        if args.resume && pipeline.tally().resumed > 0 {
            eprintln!(
                "resuming: {} samples already recorded ({} kept)",
                pipeline.tally().resumed,
                pipeline.tally().kept
            );
        }
        for path in &args.dedup_against {
            let samples = pipeline.dedup_against(path)?;
            eprintln!("deduplicating against {} samples of {}", samples, path.display());
        }
        let bar = progress::bar(options.count, "kept", Unit::Items);
        let mut on_progress = |tally: &Tally| {
            bar.set_position(tally.kept);
            bar.set_message(format!("generated {} · rejected {}", tally.generated, tally.rejections()));
        };
        let summary = pipeline.run(&mut on_progress, stop.notified()).await;
        bar.finish_and_clear();
        anyhow::Ok((summary?, teacher_info))
    });
    // Requests to an endpoint still running on blocking threads are abandoned rather than awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    let (summary, teacher) = result?;
    print_summary(&args, &files, &summary, &teacher);
    if let Some(path) = &args.report {
        let report = serde_json::json!({
            "kind": args.kind,
            "seed": args.seed,
            "teacher": teacher,
            "out": files.kept,
            "rejected_file": files.rejected,
            "options": {
                "count": options.count,
                "max_attempts": options.max_attempts,
                "temperature": decimal(options.settings.temperature),
                "top_p": decimal(options.settings.top_p),
                "max_tokens": options.settings.max_tokens,
                "jobs": options.jobs,
                "near_duplicate_threshold": options.near_duplicate_threshold,
                "require_tests": options.require_tests,
            },
            "summary": summary,
        });
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(match summary.ending {
        Ending::Interrupted => ExitCode::from(130),
        Ending::Complete | Ending::AttemptsExhausted => ExitCode::SUCCESS,
    })
}

fn print_summary(args: &DatagenArgs, files: &OutputFiles, summary: &Summary, teacher: &TeacherInfo) {
    let tally = &summary.tally;
    match summary.ending {
        Ending::Complete => {}
        Ending::AttemptsExhausted => println!(
            "stopped after {} samples (--max-attempts) with {} of {} kept",
            tally.generated, tally.kept, args.count
        ),
        Ending::Interrupted => println!("interrupted: --resume continues from here"),
    }
    println!(
        "{}: kept {} of {} generated; rejected {} ({})",
        args.kind,
        tally.kept,
        tally.generated,
        tally.rejected_total(),
        tally.rejections()
    );
    let contaminated: Vec<String> = tally.contaminated.iter().map(|(b, n)| format!("{b} {n}")).collect();
    println!(
        "decontamination (13-grams of HumanEval and MBPP): {} dropped{}",
        tally.contaminated.values().sum::<u64>(),
        if contaminated.is_empty() { String::new() } else { format!(" ({})", contaminated.join(", ")) }
    );
    let at = teacher.url.as_deref().map(|url| format!(" at {url}")).unwrap_or_default();
    println!(
        "teacher: {} {}{at}; {} in flight at most; {} tokens this run ({:.1} tokens/s)",
        teacher.kind, teacher.model, summary.peak_in_flight, summary.tokens_now, summary.teacher_tokens_per_s
    );
    println!(
        "this run: {} samples in {:.1} s ({:.1} samples/minute){}",
        summary.generated_now,
        summary.elapsed_s,
        summary.samples_per_minute,
        if tally.resumed > 0 { format!("; {} resumed", tally.resumed) } else { String::new() }
    );
    println!("kept: {}\nrejected: {}", files.kept.display(), files.rejected.display());
}
