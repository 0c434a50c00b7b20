//! Prompt-lookup speculative decoding in the real engine, on the fixture models: greedy output is token for token
//! what plain decoding gives — across prompts with and without repetition, with drafts rejected at every position,
//! and with drafts that run into a stop string, a stop predicate or the end-of-text token — and the cache is left
//! as plain decoding leaves it.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::sync::Arc;

use common::*;
use phi_converters::OutType;
use phi_tui::engine::{
    Drafting, Engine, EngineError, EngineOptions, GenerateRequest, GenerationEvent, GenerationSummary, LookupOptions,
    SequenceId, StopReason, TokenId,
};

const N_GEN: u32 = 40;

/// One thread: the fixtures are too small to share out, and a second thread only waits for the first.
async fn engine(model: &str) -> Engine {
    let options = EngineOptions { threads: Some(1), ..small_engine_options() };
    engine_with(&converted(model, OutType::F16), options).await
}

fn lookup() -> Drafting {
    Drafting::Lookup(LookupOptions::default())
}

/// Drafts only from `reference` (the fixture prompts hold no 4-gram twice), `first_draft` tokens at first.
fn lookup_in(reference: Vec<TokenId>, first_draft: u32) -> Drafting {
    Drafting::Lookup(LookupOptions { ngram: 4, min_ngram: 4, max_draft: 2 * first_draft, reference })
}

fn request(prompt: &[TokenId], max_tokens: u32, draft: Drafting) -> GenerateRequest {
    let mut request = greedy_request(0, prompt, max_tokens);
    request.draft = draft;
    request
}

/// Runs a request to its end: the token groups of its deltas (one group per step), the streamed text, and the
/// summary.
async fn run(engine: &Engine, request: GenerateRequest) -> (Vec<Vec<TokenId>>, String, GenerationSummary) {
    let mut generation = engine.generate(request);
    let mut groups = Vec::new();
    let mut streamed = String::new();
    loop {
        match generation.next().await.unwrap().unwrap() {
            GenerationEvent::Delta { tokens, text } => {
                if !tokens.is_empty() {
                    groups.push(tokens);
                }
                streamed.push_str(&text);
            }
            GenerationEvent::Finished(summary) => return (groups, streamed, summary),
        }
    }
}

async fn cached_tokens(engine: &Engine) -> usize {
    engine.state().await.unwrap().cached_tokens[0]
}

/// Prompts with and without repetition: the fixtures' reference prompts, and code that repeats itself.
async fn prompts(engine: &Engine, model: &str) -> Vec<(String, Vec<TokenId>)> {
    let mut prompts: Vec<_> = reference_prompts(&fixtures().join(model).join("reference"))
        .into_iter()
        .map(|prompt| (prompt.name, prompt.ids))
        .collect();
    let repeated_lines = "values = []\n".to_owned() + &"values.append(compute(index, offset, scale))\n".repeat(6);
    let mirrored = "def get_width(self):\n    return self._width\n\ndef get_height(self):\n    return self._height\n\n\
                    def get_depth(self):\n";
    for (name, text) in [("repeated_lines", repeated_lines.as_str()), ("mirrored_functions", mirrored)] {
        prompts.push((name.to_owned(), engine.tokenize(text, true).await.unwrap()));
    }
    let fib = prompts.iter().find(|(name, _)| name == "fib_loop").unwrap().1.clone();
    prompts.push(("prompt_twice".to_owned(), [fib.clone(), fib].concat()));
    prompts
}

#[tokio::test]
async fn greedy_output_is_identical_with_and_without_drafting() {
    for model in ["tiny-phi", "tiny-phi-sharded-bf16"] {
        let engine = engine(model).await;
        let (mut drafted, mut accepted) = (0, 0);
        for (name, prompt) in prompts(&engine, model).await {
            let (_, plain_text, plain) = run(&engine, request(&prompt, N_GEN, Drafting::Off)).await;
            let (groups, text, drafting) = run(&engine, request(&prompt, N_GEN, lookup())).await;
            assert_eq!(drafting.tokens, plain.tokens, "{model} {name}");
            assert_eq!((&drafting.text, &text), (&plain.text, &plain_text), "{model} {name}");
            assert_eq!(drafting.stop_reason, plain.stop_reason, "{model} {name}");
            assert_eq!(plain.timings.drafted, 0);
            assert_eq!(groups.concat(), drafting.tokens, "{model} {name}: the deltas carry every token once");
            // Each step adds one token and every confirmed draft token: plain decoding's steps minus the latter.
            assert_eq!(groups.len(), drafting.tokens.len() - drafting.timings.draft_accepted, "{model} {name}");
            assert_eq!(drafting.timings.gen_tokens_decoded, drafting.tokens.len() - 1, "{model} {name}");
            assert_eq!(cached_tokens(&engine).await, prompt.len() + drafting.tokens.len() - 1, "{model} {name}");
            drafted += drafting.timings.drafted;
            accepted += drafting.timings.draft_accepted;
        }
        // The comparison means something only if drafts were made, and some of them taken.
        assert!(accepted > 0 && drafted > accepted, "{model}: {accepted} of {drafted} draft tokens accepted");
    }
}

#[tokio::test]
async fn interleaved_drafting_sequences_give_the_plain_tokens() {
    let engine = engine("tiny-phi").await;
    let prompts = prompts(&engine, "tiny-phi").await;
    let pick = |name: &str| prompts.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let (first, second) = (pick("repeated_lines"), pick("long_300"));
    let plain_first = run(&engine, request(&first, N_GEN, Drafting::Off)).await.2.tokens;
    let plain_second = run(&engine, request(&second, N_GEN, Drafting::Off)).await.2.tokens;
    engine.clear_sequence(SequenceId(0)).await.unwrap();

    // Two drafting jobs on two sequences take turns step by step, each trimming its own cache.
    let mut on_second_sequence = request(&second, N_GEN, lookup());
    on_second_sequence.sequence = SequenceId(1);
    let first_generation = engine.generate(request(&first, N_GEN, lookup()));
    let second_generation = engine.generate(on_second_sequence);
    let (first_summary, second_summary) = tokio::join!(first_generation.finish(), second_generation.finish());
    let (first_summary, second_summary) = (first_summary.unwrap(), second_summary.unwrap());
    assert!(first_summary.timings.draft_accepted > 0);
    assert_eq!(first_summary.tokens, plain_first);
    assert_eq!(second_summary.tokens, plain_second);
}

#[tokio::test]
async fn a_draft_rejected_at_any_position_gives_the_plain_tokens() {
    const DRAFT: usize = 6;
    let engine = engine("tiny-phi").await;
    let prompt = reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == "def_docstring")
        .unwrap()
        .ids;
    let longer = run(&engine, request(&prompt, 24, Drafting::Off)).await.2.tokens;
    let plain = &longer[..16];
    let context: Vec<TokenId> = [&prompt[..], &plain[..1]].concat();
    let last_4gram = &context[context.len() - 4..];

    // After the first token, the reference drafts the plain tokens up to position `wrong`, then a wrong one.
    for wrong in 0..=DRAFT {
        let mut reference = last_4gram.to_vec();
        reference.extend(&plain[1..1 + wrong]);
        reference.push((plain[1 + wrong] + 1) % 50_000);
        reference.extend(&plain[2 + wrong..]);
        let (groups, _, summary) = run(&engine, request(&prompt, 16, lookup_in(reference, DRAFT as u32))).await;
        assert_eq!(summary.tokens, plain, "rejected at {wrong}");
        // The first drafting step kept the draft's first `wrong` tokens, and the model's own token in place of
        // the wrong one (or the token after a draft accepted whole).
        assert_eq!(groups[1], plain[1..2 + wrong], "rejected at {wrong}");
        assert!(summary.timings.drafted >= DRAFT && summary.timings.draft_accepted >= wrong);
        // The rejected draft tokens' keys and values were trimmed: the cache holds what plain decoding leaves,
        // and generation continues from it as from a cold cache.
        assert_eq!(cached_tokens(&engine).await, prompt.len() + plain.len() - 1);
        let resumed = [&prompt[..], plain].concat();
        let (_, _, more) = run(&engine, request(&resumed, 8, Drafting::Off)).await;
        assert_eq!(more.reused_tokens, resumed.len() - 1);
        assert_eq!(more.tokens, longer[16..], "rejected at {wrong}: continued");
    }
}

#[tokio::test]
async fn a_draft_that_runs_into_a_stop_string_or_a_predicate_stops_where_plain_decoding_stops() {
    let engine = engine("tiny-phi").await;
    let prompt = reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == "class_def")
        .unwrap()
        .ids;
    let plain = run(&engine, request(&prompt, 24, Drafting::Off)).await.2;
    let context: Vec<TokenId> = [&prompt[..], &plain.tokens[..1]].concat();
    // The plain continuation after the first token, drafted 8 at a time.
    let reference = [&context[context.len() - 4..], &plain.tokens[1..]].concat();

    // A stop string that first occurs where the text of one of the first drafted tokens starts.
    let mut stop = None;
    for first in 3..8 {
        let before = engine.detokenize(&plain.tokens[..first]).await.unwrap().len();
        let candidate: String = plain.text.get(before..).unwrap_or_default().chars().take(2).collect();
        if candidate.chars().count() == 2 && plain.text.find(&candidate) == Some(before) {
            stop = Some((before, candidate));
            break;
        }
    }
    let (before, stop) = stop.expect("a stop string in the first draft");
    let with_stop = |draft| {
        let mut request = request(&prompt, 24, draft);
        request.stop_strings = vec![stop.clone()];
        request
    };
    let (_, plain_streamed, plain_stopped) = run(&engine, with_stop(Drafting::Off)).await;
    let (groups, streamed, stopped) = run(&engine, with_stop(lookup_in(reference.clone(), 8))).await;
    assert_eq!(stopped.stop_reason, StopReason::StopString(stop.clone()));
    assert_eq!((&stopped.tokens, &stopped.text), (&plain_stopped.tokens, &plain_stopped.text));
    assert_eq!(streamed, plain_streamed, "no part of the stop string was streamed");
    assert_eq!(groups.len(), 2, "the stop came inside the first draft");
    assert!(stopped.timings.drafted == 8 && stopped.timings.draft_accepted == stopped.tokens.len() - 1);
    assert_eq!(cached_tokens(&engine).await, prompt.len() + stopped.tokens.len() - 1);

    // A predicate that cuts the text in the middle of the draft.
    let cut = before + 1;
    let with_predicate = |draft| {
        let mut request = request(&prompt, 24, draft);
        request.stop_predicate = Some(Arc::new(move |text: &str| (text.len() > cut).then_some(cut)));
        request
    };
    let plain_cut = run(&engine, with_predicate(Drafting::Off)).await.2;
    let (groups, _, drafted_cut) = run(&engine, with_predicate(lookup_in(reference, 8))).await;
    assert_eq!(drafted_cut.stop_reason, StopReason::Predicate);
    assert_eq!((&drafted_cut.tokens, &drafted_cut.text), (&plain_cut.tokens, &plain_cut.text));
    assert_eq!(groups.len(), 2);
    assert_eq!(cached_tokens(&engine).await, prompt.len() + drafted_cut.tokens.len() - 1);
}

#[tokio::test]
async fn a_draft_that_runs_into_the_end_of_text_stops_there() {
    // This model's greedy continuation of `def_docstring` reaches <|endoftext|> at its 5th token.
    let engine = engine("tiny-phi-sharded-bf16").await;
    let eos = engine.state().await.unwrap().model.unwrap().eos_token;
    let prompt = reference_prompts(&fixtures().join("tiny-phi-sharded-bf16/reference"))
        .into_iter()
        .find(|p| p.name == "def_docstring")
        .unwrap()
        .ids;
    let through = run(&engine, request(&prompt, 12, Drafting::Off)).await.2.tokens;
    let at = through.iter().position(|&t| t == eos).expect("the fixture reaches end-of-text");
    assert!(at >= 2, "end-of-text comes after the first drafting step starts");

    let context: Vec<TokenId> = [&prompt[..], &through[..1]].concat();
    let reference = [&context[context.len() - 4..], &through[1..]].concat();
    let stopping = |draft| {
        let mut request = request(&prompt, 12, draft);
        request.stop_at_eog = true;
        request
    };
    let plain = run(&engine, stopping(Drafting::Off)).await.2;
    assert_eq!(plain.stop_reason, StopReason::EndOfGeneration);
    let (groups, _, drafted) = run(&engine, stopping(lookup_in(reference, 8))).await;
    assert_eq!(drafted.stop_reason, StopReason::EndOfGeneration);
    assert_eq!((&drafted.tokens, &drafted.text), (&plain.tokens, &plain.text));
    assert_eq!(drafted.tokens.len(), at + 1);
    assert_eq!(groups.concat(), plain.tokens[..at], "the end-of-text token is not streamed");
    assert_eq!(cached_tokens(&engine).await, prompt.len() + at);
}

#[tokio::test]
async fn sampled_requests_do_not_draft_and_bad_options_are_errors() {
    let engine = engine("tiny-phi").await;
    let prompt = [4299, 751, 7, 4299, 751, 7, 4299, 751];
    let sampled = |draft| {
        let mut request = request(&prompt, 16, draft);
        request.sampling.temperature = 0.9;
        request.sampling.seed = 7;
        engine.generate(request).finish()
    };
    let plain = sampled(Drafting::Off).await.unwrap();
    let with_lookup = sampled(lookup()).await.unwrap();
    assert_eq!(with_lookup.tokens, plain.tokens);
    assert_eq!(with_lookup.timings.drafted, 0, "sampled tokens are never drafted");

    for bad in [
        LookupOptions { ngram: 0, ..LookupOptions::default() },
        LookupOptions { max_draft: 0, ..LookupOptions::default() },
        LookupOptions { max_draft: 1000, ..LookupOptions::default() },
        LookupOptions { reference: vec![51_200], ..LookupOptions::default() },
    ] {
        let result = engine.generate(request(&prompt, 4, Drafting::Lookup(bad.clone()))).finish().await;
        assert!(matches!(result, Err(EngineError::InvalidDraft(_))), "{bad:?}: {result:?}");
    }
}

fn phi_tui(args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_phi-tui")).args(args).output().unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or_default();
    (output.status.success(), json, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn generate_drafts_by_default_and_reports_it_in_json() {
    let model = converted("tiny-phi", OutType::F16);
    // A prompt whose continuation repeats a few bigrams on this model.
    let prompt = reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == "long_300")
        .unwrap()
        .text;
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "-m", model.to_str().unwrap(), "-p", &prompt, "-n", "32", "--ignore-eos"];
        args.extend(["--json", "--threads", "1"]);
        args.extend(extra);
        phi_tui(&args)
    };
    let (ok, lookup, stderr) = generate(&[]);
    assert!(ok, "{stderr}");
    let (ok, off, stderr) = generate(&["--draft", "off"]);
    assert!(ok, "{stderr}");
    assert_eq!(lookup["tokens"], off["tokens"]);
    assert_eq!(lookup["text"], off["text"]);
    assert!(lookup["timings"]["drafted"].as_u64().unwrap() > 0, "{}", lookup["timings"]);
    assert!(lookup["timings"]["draft_accepted"].as_u64().is_some());
    assert_eq!(off["timings"]["drafted"], 0);

    let (ok, _, stderr) = generate(&["--draft-ngram", "0"]);
    assert!(!ok);
    assert!(stderr.contains("n-gram size must be between 1 and"), "{stderr}");
}

#[test]
fn bench_compares_drafting_on_its_workloads() {
    let model = converted("tiny-phi", OutType::F16);
    let (ok, report, stderr) = phi_tui(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "16",
        "-r",
        "1",
        "--threads",
        "1",
        "--draft",
        "lookup",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let rows = report["draft"].as_array().unwrap();
    let names: Vec<_> = rows.iter().map(|row| row["workload"].as_str().unwrap()).collect();
    assert_eq!(names, ["code-edit", "refactor", "prose"]);
    for row in rows {
        assert_eq!(row["identical"], true, "{row}");
        assert!(row["plain_tok_s"].as_f64().unwrap() > 0.0 && row["lookup_tok_s"].as_f64().unwrap() > 0.0);
        assert!(row["accepted"].as_u64().unwrap() <= row["drafted"].as_u64().unwrap());
    }
}

#[tokio::test]
async fn lsp_completions_draft_from_the_text_after_the_cursor() {
    use phi_lsp::stop::StopRule;
    use phi_lsp::{CompletionBackend, CompletionRequest};

    let engine = engine("tiny-phi").await;
    let prompt = reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == "fib_loop")
        .unwrap()
        .text;
    // The chat's code-mode rule: the completion ends where the definition does, with or without drafts.
    let stop = StopRule::EndOfDefinition { prompt: prompt.clone() };
    let mut plain = GenerateRequest::new(SequenceId(0), phi_tui::engine::Prompt::Text(prompt.clone()));
    plain.max_tokens = 24;
    plain.stop_predicate = Some(stop.clone().into_predicate());
    let plain = engine.generate(plain).finish().await.unwrap();
    assert!(plain.tokens.len() > 4, "{plain:?}");

    let backend = phi_tui::lsp_backend::SessionBackend::new(Arc::new(phi_tui::session::LocalSession::new(
        engine.clone(),
        SequenceId(0),
    )));
    let complete = |draft_hint: String| {
        backend.complete(CompletionRequest {
            prompt: prompt.clone(),
            max_tokens: 24,
            stop: stop.clone(),
            stop_strings: Vec::new(),
            draft_hint,
        })
    };
    // Code after the cursor that the completion re-types: its tokens are drafted, the text stays the same.
    let hinted = complete(plain.text.clone()).await.unwrap();
    assert_eq!(hinted.text, plain.text);
    assert!(hinted.accepted_tokens > 0, "{hinted:?}");
    let unhinted = complete(String::new()).await.unwrap();
    assert_eq!(unhinted.text, plain.text);
    assert!(unhinted.accepted_tokens < hinted.accepted_tokens, "{unhinted:?}");

    // `phi-tui lsp --draft off`: no drafts, hint or not.
    let backend = backend.with_drafting(Drafting::Off);
    let off = backend
        .complete(CompletionRequest {
            prompt: prompt.clone(),
            max_tokens: 24,
            stop,
            stop_strings: Vec::new(),
            draft_hint: plain.text.clone(),
        })
        .await
        .unwrap();
    assert_eq!(off.text, plain.text);
    assert_eq!((off.drafted_tokens, off.accepted_tokens), (0, 0));
}

#[test]
fn lsp_refuses_drafting_settings_out_of_bounds() {
    let (ok, _, stderr) = phi_tui(&["lsp", "--standalone", "--draft-max", "0", "--log-file", "/dev/null"]);
    assert!(!ok);
    assert!(stderr.contains("draft length must be between 1 and"), "{stderr}");
}
