//! `phi-tui bench`: prompt processing (pp) and generation (tg) throughput through the engine, measured the way
//! llama-bench does — one warm-up, then the median of several runs, each from an empty cache. As in pbench (the raw
//! llama.h harness in tests/bench), each tg run generates right after its pp run's prompt, so engine and raw
//! numbers compare at the same depth of the KV cache.
//!
//! With `--draft lookup` it also generates greedily from a few workloads (code that repeats itself, and prose that
//! does not), once with prompt-lookup drafting and once without, and compares the two: speed, acceptance of the
//! drafts, and whether the tokens are the same (they must be).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_tui::engine::{
    Drafting, Engine, GenerateRequest, GenerationSummary, ModelInfo, Prompt, SequenceId, Timings, TokenId,
};
use serde::Serialize;

use super::{DraftMode, LookupArgs, RuntimeArgs};

/// The built-in workloads of `--draft lookup`: a file whose next function mirrors the ones before it, a refactor of
/// repeated lines, and prose with no repetition.
const WORKLOADS: [(&str, &str); 3] = [
    ("code-edit", include_str!("bench_workloads/code_edit.py")),
    ("refactor", include_str!("bench_workloads/refactor.py")),
    ("prose", include_str!("bench_workloads/prose.txt")),
];

/// Context for the workloads' prompts (phi's training context).
const WORKLOAD_CONTEXT: u32 = 2048;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model: an installed name (`phi-tui models`) or a GGUF file [default: `model` in the config file, else
    /// the only installed model]
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Prompt tokens per pp run (decoded as one batch)
    #[arg(long = "n-prompt", short = 'p', default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    n_prompt: u32,
    /// Generated tokens per tg run
    #[arg(long = "n-gen", short = 'n', default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    n_gen: u32,
    /// Measured runs (after one warm-up)
    #[arg(long = "repetitions", short = 'r', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repetitions: u32,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// `lookup` also compares generation with and without prompt-lookup drafting on the workloads
    #[arg(long, value_enum, default_value_t = DraftMode::Off)]
    draft: DraftMode,
    #[command(flatten)]
    lookup: LookupArgs,
    /// With --draft lookup: a prompt file to use as a workload instead of the built-in ones (repeatable)
    #[arg(long = "workload")]
    workloads: Vec<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Serialize)]
struct BenchReport {
    model: String,
    file_type: String,
    device: String,
    gpu_layers: u32,
    flash_attention: String,
    threads: u32,
    n_prompt: u32,
    n_gen: u32,
    repetitions: u32,
    pp_tok_s: f64,
    tg_tok_s: f64,
    pp_runs_tok_s: Vec<f64>,
    tg_runs_tok_s: Vec<f64>,
    /// With `--draft lookup`: each workload with and without drafting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    draft: Vec<DraftComparison>,
}

/// One workload generated greedily without drafting and with it.
#[derive(Serialize)]
struct DraftComparison {
    workload: String,
    prompt_tokens: usize,
    n_gen: u32,
    /// Median generation speed over the measured runs.
    plain_tok_s: f64,
    lookup_tok_s: f64,
    /// `lookup_tok_s / plain_tok_s`.
    speedup: f64,
    /// Draft tokens checked and confirmed in one run (every run drafts the same).
    drafted: usize,
    accepted: usize,
    acceptance: f64,
    /// Whether every drafting run generated exactly the plain runs' tokens.
    identical: bool,
    /// Where the tokens first differed, if they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_difference: Option<usize>,
    /// Where they differed: how far apart the model's logits for the two tokens are there. Batched verification and
    /// single-token decoding round differently (different kernels), so two tokens whose logits are within that
    /// rounding can swap places; a gap far larger than the logits' rounding (~1e-3) would be a bug.
    #[serde(skip_serializing_if = "Option::is_none")]
    difference_logit_gap: Option<f32>,
    plain_runs_tok_s: Vec<f64>,
    lookup_runs_tok_s: Vec<f64>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut options = args.runtime.engine_options(1)?;
    // pp runs decode the whole prompt in one batch, as llama-bench does.
    options.batch_size = options.batch_size.max(args.n_prompt);
    // The prompt, the generated tokens, and room to sample one more.
    let needed = args.n_prompt + args.n_gen + 1;
    options.context_size = if args.draft == DraftMode::Lookup && args.workloads.is_empty() {
        Some(options.context_size.unwrap_or(needed).max(needed).max(WORKLOAD_CONTEXT))
    } else if args.draft == DraftMode::Lookup {
        // Workload files of unknown length: the model's own context (unless given), checked against each prompt.
        options.context_size.map(|given| given.max(needed))
    } else {
        Some(options.context_size.unwrap_or(needed).max(needed))
    };
    let options_context = options.context_size;
    let workloads = workloads(&args.workloads)?;
    let model = super::model_path(args.model.as_deref())?;
    let engine = Engine::start(options)?;
    let report = super::runtime()?.block_on(async {
        // The prompt and the generated tokens must fit the model's context: say so in the bench's terms.
        let context_needed = options_context.unwrap_or(needed);
        let info = engine.load_model(&model, None).await.with_context(|| {
            format!("bench -p {} -n {} needs a context of {context_needed} tokens", args.n_prompt, args.n_gen)
        })?;
        anyhow::ensure!(
            info.context_size >= needed,
            "bench -p {} -n {} needs a context of {needed} tokens; the model's is {}",
            args.n_prompt,
            args.n_gen,
            info.context_size
        );
        let tokens = bench_tokens(&info, args.n_prompt as usize);
        let mut pp = Vec::new();
        let mut tg = Vec::new();
        for run in 0..=args.repetitions {
            engine.clear_sequence(SequenceId(0)).await?;
            let pp_speed = timed(&engine, tokens.clone(), 0).await?.prompt_tok_s();
            // The same prompt again: the cache holds it, so only its last token is decoded (for its logits)
            // before the n_gen timed tokens. (max_tokens counts the last sampled token, which is never decoded.)
            let tg_speed = timed(&engine, tokens.clone(), args.n_gen + 1).await?.gen_tok_s();
            // Run 0 warms caches and lazy allocations up.
            if run > 0 {
                pp.push(pp_speed);
                tg.push(tg_speed);
            }
        }
        let mut draft = Vec::new();
        if args.draft == DraftMode::Lookup {
            for (name, text) in &workloads {
                draft.push(compare_drafting(&engine, &args, &info, name, text).await?);
            }
        }
        anyhow::Ok(BenchReport {
            model: info.name.clone(),
            file_type: info.file_type.clone(),
            device: info.device.clone(),
            gpu_layers: info.gpu_layers,
            flash_attention: info.flash_attention.to_string(),
            threads: info.threads,
            n_prompt: args.n_prompt,
            n_gen: args.n_gen,
            repetitions: args.repetitions,
            pp_tok_s: median(&pp),
            tg_tok_s: median(&tg),
            pp_runs_tok_s: pp,
            tg_runs_tok_s: tg,
            draft,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "model: {} ({}), device: {}, threads: {}, flash attention: {}",
            report.model, report.file_type, report.device, report.threads, report.flash_attention
        );
        println!("pp{:<6} {:>10.2} tok/s", report.n_prompt, report.pp_tok_s);
        println!("tg{:<6} {:>10.2} tok/s", report.n_gen, report.tg_tok_s);
        if !report.draft.is_empty() {
            println!(
                "\n{:<12} {:>7} {:>12} {:>12} {:>8} {:>11} {:>10}",
                "workload", "prompt", "plain tok/s", "lookup tok/s", "speedup", "acceptance", "identical"
            );
        }
        for row in &report.draft {
            println!(
                "{:<12} {:>7} {:>12.2} {:>12.2} {:>7.2}x {:>5}/{:<5} {:>10}",
                row.workload,
                row.prompt_tokens,
                row.plain_tok_s,
                row.lookup_tok_s,
                row.speedup,
                row.accepted,
                row.drafted,
                match (row.first_difference, row.difference_logit_gap) {
                    (None, _) => "yes".to_owned(),
                    (Some(at), Some(gap)) => format!("NO (at {at}, logit gap {gap:.1e})"),
                    (Some(at), None) => format!("NO (at {at})"),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One generation on sequence 0, reusing whatever prefix of `prompt` it holds. With `max_tokens` 0 it only
/// decodes the prompt.
async fn timed(engine: &Engine, prompt: Vec<TokenId>, max_tokens: u32) -> anyhow::Result<Timings> {
    let mut request = GenerateRequest::new(SequenceId(0), Prompt::Tokens(prompt));
    request.max_tokens = max_tokens;
    request.stop_at_eog = false;
    let summary = engine.generate(request).finish().await?;
    Ok(summary.timings)
}

/// The workloads' names and prompts: the files given, else the built-in ones.
fn workloads(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    if files.is_empty() {
        return Ok(WORKLOADS.iter().map(|&(name, text)| (name.to_owned(), text.to_owned())).collect());
    }
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into());
            Ok((name, text))
        })
        .collect()
}

/// Generates `n_gen` tokens greedily from one workload, alternately without and with drafting: a warm-up each
/// (which also leaves the prompt cached, so the measured runs decode only its last token), then the medians of
/// `repetitions` runs.
async fn compare_drafting(
    engine: &Engine,
    args: &BenchArgs,
    info: &ModelInfo,
    name: &str,
    text: &str,
) -> anyhow::Result<DraftComparison> {
    let prompt = engine.tokenize(text, true).await?;
    let room = info.context_size as usize;
    anyhow::ensure!(
        prompt.len() + (args.n_gen as usize) < room,
        "workload {name}: {} prompt tokens and {} to generate do not fit the context of {room}",
        prompt.len(),
        args.n_gen
    );
    let drafting = args.lookup.drafting(DraftMode::Lookup)?;
    let run = |draft: Drafting| {
        let mut request = GenerateRequest::new(SequenceId(0), Prompt::Tokens(prompt.clone()));
        request.max_tokens = args.n_gen + 1;
        request.stop_at_eog = false;
        request.draft = draft;
        engine.generate(request).finish()
    };
    let mut plain_runs = Vec::new();
    let mut lookup_runs = Vec::new();
    let mut first_difference: Option<usize> = None;
    let mut difference_logit_gap: Option<f32> = None;
    let mut last_lookup: Option<GenerationSummary> = None;
    for repetition in 0..=args.repetitions {
        let plain = run(Drafting::Off).await?;
        let lookup = run(drafting.clone()).await?;
        if plain.tokens != lookup.tokens {
            let at = plain.tokens.iter().zip(&lookup.tokens).take_while(|(a, b)| a == b).count();
            if first_difference.is_none_or(|earlier| at < earlier) {
                first_difference = Some(at);
                difference_logit_gap = logit_gap(engine, &prompt, &plain.tokens, &lookup.tokens, at).await?;
            }
        }
        if repetition > 0 {
            plain_runs.push(plain.timings.gen_tok_s());
            lookup_runs.push(lookup.timings.gen_tok_s());
        }
        last_lookup = Some(lookup);
    }
    let timings = last_lookup.map(|summary| summary.timings).unwrap_or_default();
    let (plain_tok_s, lookup_tok_s) = (median(&plain_runs), median(&lookup_runs));
    Ok(DraftComparison {
        workload: name.to_owned(),
        prompt_tokens: prompt.len(),
        n_gen: args.n_gen,
        plain_tok_s,
        lookup_tok_s,
        speedup: if plain_tok_s > 0.0 { lookup_tok_s / plain_tok_s } else { 0.0 },
        drafted: timings.drafted,
        accepted: timings.draft_accepted,
        acceptance: timings.draft_acceptance(),
        identical: first_difference.is_none(),
        first_difference,
        difference_logit_gap,
        plain_runs_tok_s: plain_runs,
        lookup_runs_tok_s: lookup_runs,
    })
}

/// The model's logit for `plain[at]` minus its logit for `drafted[at]`, after the prompt and the tokens both runs
/// share, decoded token by token as plain decoding does; `None` where one run ended before `at`.
async fn logit_gap(
    engine: &Engine,
    prompt: &[TokenId],
    plain: &[TokenId],
    drafted: &[TokenId],
    at: usize,
) -> anyhow::Result<Option<f32>> {
    let (Some(&plain_token), Some(&drafted_token)) = (plain.get(at), drafted.get(at)) else {
        return Ok(None);
    };
    let mut request =
        GenerateRequest::new(SequenceId(0), Prompt::Tokens(prompt.iter().chain(&plain[..at]).copied().collect()));
    request.max_tokens = 0;
    request.return_logits = true;
    let summary = engine.generate(request).finish().await?;
    let logits = summary.last_logits.unwrap_or_default();
    let logit = |token: TokenId| usize::try_from(token).ok().and_then(|i| logits.get(i).copied());
    Ok(logit(plain_token).zip(logit(drafted_token)).map(|(p, d)| p - d))
}

/// Fixed pseudo-random ordinary tokens: speed does not depend on which tokens they are, and fixed ones make runs
/// comparable.
fn bench_tokens(info: &ModelInfo, n: usize) -> Vec<TokenId> {
    let range = info.n_vocab.clamp(1, 50_000) as u64;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % range) as TokenId
        })
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
