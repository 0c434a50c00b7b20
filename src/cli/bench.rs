//! `phi-tui bench`: prompt processing (pp) and generation (tg) throughput through the engine, measured the way
//! llama-bench does — one warm-up, then the median of several runs, each from an empty cache. As in pbench (the raw
//! llama.h harness in tests/bench), each tg run generates right after its pp run's prompt, so engine and raw
//! numbers compare at the same depth of the KV cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_tui::engine::{Engine, GenerateRequest, ModelInfo, Prompt, SequenceId, Timings, TokenId};
use serde::Serialize;

use super::RuntimeArgs;

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
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut options = args.runtime.engine_options(1)?;
    // pp runs decode the whole prompt in one batch, as llama-bench does.
    options.batch_size = options.batch_size.max(args.n_prompt);
    // The prompt, the generated tokens, and room to sample one more.
    let needed = args.n_prompt + args.n_gen + 1;
    options.context_size = Some(options.context_size.unwrap_or(needed).max(needed));
    let model = super::model_path(args.model.as_deref())?;
    let engine = Engine::start(options)?;
    let report = super::runtime()?.block_on(async {
        // The prompt and the generated tokens must fit the model's context: say so in the bench's terms.
        let info = engine.load_model(&model, None).await.with_context(|| {
            format!("bench -p {} -n {} needs a context of {needed} tokens", args.n_prompt, args.n_gen)
        })?;
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
