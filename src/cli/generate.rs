//! `phi-tui generate`: one prompt in, its continuation streamed to stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use phi_tui::engine::{Engine, GenerateRequest, GenerationEvent, Prompt, SamplingParams, SequenceId, StopReason};
use serde::Serialize;

use super::{DraftMode, LookupArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model: an installed name (`phi-tui models`) or a GGUF file [default: `model` in the config file, else
    /// the only installed model]
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// The prompt text
    #[arg(long, short = 'p', conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Tokens to generate at most
    #[arg(long = "n-predict", short = 'n', default_value_t = 256)]
    max_tokens: u32,
    /// Temperature; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.0)]
    temperature: f32,
    /// Sample only from the K most likely tokens; 0 keeps them all
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Sample only from the most likely tokens whose probabilities add up to P (nucleus sampling); 1 keeps all
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop the tokens less likely than P times the most likely one; 0 keeps all
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Divide the scores of tokens seen in the last 64 tokens by R (above 1 discourages repeats); 1 is off
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// The sampler's random seed (the same seed and settings give the same text when --temp is above 0)
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Stop before this text (repeatable)
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep going past the end-of-text token
    #[arg(long)]
    ignore_eos: bool,
    /// A LoRA adapter GGUF to apply
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The adapter's scale (llama.cpp multiplies it by alpha / rank)
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
    /// Print one JSON object with the tokens, text and timings instead of streaming text
    #[arg(long)]
    json: bool,
    /// Speculative drafting, for greedy generation: the same tokens, in fewer decodes
    #[arg(long, value_enum, default_value_t = DraftMode::Lookup)]
    draft: DraftMode,
    #[command(flatten)]
    lookup: LookupArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    /// Where the model ran: `CPU`, or the GPU holding its offloaded layers.
    device: &'a str,
    gpu_layers: u32,
    prompt_tokens: &'a [i32],
    tokens: &'a [i32],
    text: &'a str,
    stop_reason: String,
    timings: JsonTimings,
}

#[derive(Serialize)]
struct JsonTimings {
    prompt_ms: f64,
    gen_ms: f64,
    prompt_tok_s: f64,
    gen_tok_s: f64,
    /// Draft tokens the model checked, and those it confirmed.
    drafted: usize,
    draft_accepted: usize,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => read_prompt_file(path)?,
        (None, None) => anyhow::bail!("give a prompt with -p or --prompt-file"),
    };
    let model = super::model_path(args.model.as_deref())?;
    let engine = Engine::start(args.runtime.engine_options(1)?)?;
    super::runtime()?.block_on(async {
        let info = engine.load_model(&model, None).await?;
        if let Some(lora) = &args.lora {
            engine.set_adapter(lora, args.lora_scale).await?;
        }
        let mut request = GenerateRequest::new(SequenceId(0), Prompt::Text(prompt));
        request.max_tokens = args.max_tokens;
        request.stop_strings = args.stop.clone();
        request.stop_at_eog = !args.ignore_eos;
        request.sampling = SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        };
        request.draft = args.lookup.drafting(args.draft)?;
        let mut generation = engine.generate(request);
        let mut stdout = std::io::stdout().lock();
        while let Some(event) = generation.next().await {
            match event? {
                GenerationEvent::Delta { text, .. } if !args.json => {
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                }
                GenerationEvent::Delta { .. } => {}
                GenerationEvent::Finished(summary) => {
                    if args.json {
                        let timings = summary.timings;
                        let output = JsonOutput {
                            device: &info.device,
                            gpu_layers: info.gpu_layers,
                            prompt_tokens: &summary.prompt_tokens,
                            tokens: &summary.tokens,
                            text: &summary.text,
                            stop_reason: stop_reason_name(&summary.stop_reason),
                            timings: JsonTimings {
                                prompt_ms: timings.prompt_ms,
                                gen_ms: timings.gen_ms,
                                prompt_tok_s: timings.prompt_tok_s(),
                                gen_tok_s: timings.gen_tok_s(),
                                drafted: timings.drafted,
                                draft_accepted: timings.draft_accepted,
                            },
                        };
                        serde_json::to_writer(&mut stdout, &output)?;
                    }
                    writeln!(stdout)?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The largest prompt file read. A prompt must fit the model's context (phi-1's 2048 tokens are ~10 KB of code), so
/// anything near this is a mistake — and `/dev/zero` or a FIFO that never ends would otherwise be read forever.
const MAX_PROMPT_FILE_BYTES: u64 = 8 << 20;

fn read_prompt_file(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading the prompt from {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PROMPT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the prompt from {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_PROMPT_FILE_BYTES,
        "{}: the prompt file is larger than {} MiB; a prompt must fit the model's context",
        path.display(),
        MAX_PROMPT_FILE_BYTES >> 20
    );
    String::from_utf8(bytes).with_context(|| format!("{}: the prompt is not UTF-8 text", path.display()))
}

fn stop_reason_name(reason: &StopReason) -> String {
    match reason {
        StopReason::MaxTokens => "max_tokens".to_owned(),
        StopReason::EndOfGeneration => "end_of_generation".to_owned(),
        StopReason::StopString(s) => format!("stop_string:{s}"),
        StopReason::Predicate => "predicate".to_owned(),
        StopReason::ContextFull => "context_full".to_owned(),
        StopReason::Cancelled => "cancelled".to_owned(),
    }
}
