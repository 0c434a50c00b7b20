//! The engine's session behaviour: prefix reuse, several sequences, cancellation, priorities, LoRA adapters, and
//! bad input that must come back as errors while the engine keeps serving.
#![allow(clippy::unwrap_used)] // a test that cannot read its own fixtures should fail loudly

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use phi_converters::OutType;
use phi_tui::engine::{
    Engine, EngineError, EngineOptions, GenerateRequest, GenerationEvent, Priority, Prompt, SequenceId, StopReason,
    TokenId,
};

fn long_prompt() -> Vec<TokenId> {
    reference_prompts(&fixtures().join("tiny-phi/reference"))
        .into_iter()
        .find(|p| p.name == "long_300")
        .expect("long_300 prompt")
        .ids
}

async fn tiny_engine() -> Engine {
    engine_with(&converted("tiny-phi", OutType::F16), small_engine_options()).await
}

async fn greedy_tokens(engine: &Engine, sequence: u32, prompt: &[TokenId], n: u32) -> Vec<TokenId> {
    engine.generate(greedy_request(sequence, prompt, n)).finish().await.expect("generate").tokens
}

/// The engine still serves an ordinary request.
async fn assert_still_serving(engine: &Engine) {
    let tokens = greedy_tokens(engine, 0, &[4299, 751], 4).await;
    assert_eq!(tokens.len(), 4);
}

#[tokio::test]
async fn prefix_reuse_gives_the_same_tokens_as_a_cold_run() {
    let prompt = long_prompt();
    let cold = greedy_tokens(&tiny_engine().await, 0, &prompt, 16).await;

    let engine = tiny_engine().await;
    // Cache a shorter prefix, then a prompt that diverges after it, then the real prompt.
    greedy_tokens(&engine, 0, &prompt[..200], 4).await;
    let mut diverging = prompt[..150].to_vec();
    diverging.extend_from_slice(&[13, 14, 15]);
    greedy_tokens(&engine, 0, &diverging, 4).await;
    let warm = engine.generate(greedy_request(0, &prompt, 16)).finish().await.unwrap();
    assert_eq!(warm.reused_tokens, 150, "the common prefix with the cached, diverging prompt");
    assert_eq!(warm.timings.prompt_tokens_decoded, prompt.len() - 150);
    assert_eq!(warm.tokens, cold);

    // The same prompt again: everything but the last token (whose logits are needed) comes from the cache.
    let again = engine.generate(greedy_request(0, &prompt, 16)).finish().await.unwrap();
    assert_eq!(again.reused_tokens, prompt.len() - 1);
    assert_eq!(again.tokens, cold);
}

#[tokio::test]
async fn interleaved_sequences_give_the_same_tokens_as_each_alone() {
    let engine = tiny_engine().await;
    let prompt_a = long_prompt();
    let prompt_b = &prompt_a[40..120];
    let alone_a = greedy_tokens(&tiny_engine().await, 0, &prompt_a, 24).await;
    let alone_b = greedy_tokens(&tiny_engine().await, 0, prompt_b, 24).await;

    let mut a = engine.generate(greedy_request(1, &prompt_a, 24));
    let mut b = engine.generate(greedy_request(2, prompt_b, 24));
    let mut order = Vec::new();
    let (mut summary_a, mut summary_b) = (None, None);
    while summary_a.is_none() || summary_b.is_none() {
        tokio::select! {
            Some(event) = a.next(), if summary_a.is_none() => match event.unwrap() {
                GenerationEvent::Delta { .. } => order.push('a'),
                GenerationEvent::Finished(s) => { order.push('A'); summary_a = Some(s) }
            },
            Some(event) = b.next(), if summary_b.is_none() => match event.unwrap() {
                GenerationEvent::Delta { .. } => order.push('b'),
                GenerationEvent::Finished(s) => { order.push('B'); summary_b = Some(s) }
            },
        }
    }
    let order: String = order.into_iter().collect();
    let first_b = order.find('b').unwrap();
    assert!(first_b < order.find('A').unwrap(), "b started only after a finished: {order}");
    assert_eq!(summary_a.unwrap().tokens, alone_a);
    assert_eq!(summary_b.unwrap().tokens, alone_b);
}

#[tokio::test]
async fn cancel_stops_generation_within_a_step() {
    let engine = tiny_engine().await;
    let prompt = long_prompt();

    // Cancelled before its first step: not one prompt chunk is decoded. The request and its cancel are sent from
    // the load's progress callback, that is, while the engine thread is busy loading: both wait in its channel, and
    // the cancel is read before any step. (Sent from here instead, the engine thread could take the request and
    // decode a chunk before this thread got to the cancel.)
    let sent = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (sender, request) = (engine.clone(), greedy_request(0, &prompt, 400));
    let slot = sent.clone();
    let mut request = Some(request);
    let progress: phi_tui::engine::LoadProgress = Box::new(move |_| {
        if let Some(request) = request.take() {
            let generation = sender.generate(request);
            generation.cancel();
            *slot.lock().unwrap() = Some(generation);
        }
    });
    engine.load_model(&converted("tiny-phi", OutType::F16), Some(progress)).await.unwrap();
    let generation = sent.lock().unwrap().take().expect("the load reported progress");
    let summary = generation.finish().await.unwrap();
    assert_eq!(summary.stop_reason, StopReason::Cancelled);
    assert_eq!(summary.timings.prompt_tokens_decoded, 0);

    // Cancelled mid-generation: it ends long before its token budget.
    let mut generation = engine.generate(greedy_request(0, &prompt, 400));
    let mut seen = 0;
    let cancelled_at = loop {
        match generation.next().await.unwrap().unwrap() {
            GenerationEvent::Delta { tokens, .. } => seen += tokens.len(),
            GenerationEvent::Finished(_) => panic!("finished before the cancel"),
        }
        if seen == 3 {
            generation.cancel();
            break Instant::now();
        }
    };
    let summary = generation.finish().await.unwrap();
    assert_eq!(summary.stop_reason, StopReason::Cancelled);
    assert!(summary.tokens.len() < 40, "{} tokens after cancelling at 3", summary.tokens.len());
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    assert_still_serving(&engine).await;
}

#[tokio::test]
async fn dropping_a_generation_cancels_it() {
    let engine = tiny_engine().await;
    let mut generation = engine.generate(greedy_request(0, &long_prompt(), 400));
    generation.next().await.unwrap().unwrap();
    drop(generation);
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.state().await.unwrap().pending_requests > 0 {
        assert!(Instant::now() < deadline, "the dropped generation kept running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn interactive_request_preempts_chat_which_resumes_unchanged() {
    let prompt = long_prompt();
    let editor_prompt = &prompt[..60];
    let alone = greedy_tokens(&tiny_engine().await, 0, &prompt, 48).await;

    let engine = tiny_engine().await;
    let mut chat = engine.generate(greedy_request(0, &prompt, 48));
    // Wait until the chat is generating, then interrupt it.
    assert!(matches!(chat.next().await.unwrap().unwrap(), GenerationEvent::Delta { .. }));
    let mut completion_request = greedy_request(1, editor_prompt, 8);
    completion_request.priority = Priority::Interactive;
    let completion = engine.generate(completion_request);

    let completion = completion.finish().await.unwrap();
    let state = engine.state().await.unwrap();
    assert_eq!(state.pending_requests, 1, "the chat must still be running when the completion is done");
    assert_eq!(completion.tokens.len(), 8);

    let chat = chat.finish().await.unwrap();
    assert_eq!(chat.tokens[1..], alone[1..], "the resumed chat produces what it would have alone");
    assert_eq!(chat.timings.prompt_tokens_decoded, prompt.len(), "the chat's prompt was decoded once");
}

#[tokio::test]
async fn stop_strings_and_predicates_end_generation() {
    let engine = tiny_engine().await;
    let prompt = long_prompt();
    let free = engine.generate(greedy_request(0, &prompt, 24)).finish().await.unwrap();
    // Stop at a piece of text the model is known to produce.
    let chars: Vec<char> = free.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected_text = &free.text[..free.text.find(&stop).unwrap()];

    let mut request = greedy_request(0, &prompt, 24);
    request.stop_strings = vec![stop.clone()];
    let mut generation = engine.generate(request);
    let mut streamed = String::new();
    let summary = loop {
        match generation.next().await.unwrap().unwrap() {
            GenerationEvent::Delta { text, .. } => streamed.push_str(&text),
            GenerationEvent::Finished(summary) => break summary,
        }
    };
    assert_eq!(summary.stop_reason, StopReason::StopString(stop));
    assert_eq!(summary.text, expected_text);
    assert_eq!(streamed, expected_text, "no part of the stop string was streamed");

    let mut request = greedy_request(0, &prompt, 24);
    let cut = expected_text.len();
    request.stop_predicate = Some(std::sync::Arc::new(move |text: &str| (text.len() > cut).then_some(cut)));
    let summary = engine.generate(request).finish().await.unwrap();
    assert_eq!(summary.stop_reason, StopReason::Predicate);
    assert_eq!(summary.text, expected_text);
}

#[tokio::test]
async fn sampling_with_a_seed_is_reproducible() {
    let engine = tiny_engine().await;
    let run = |seed| {
        let mut request = greedy_request(0, &[4299, 751, 7], 16);
        request.sampling.temperature = 0.9;
        request.sampling.top_k = 40;
        request.sampling.top_p = 0.95;
        request.sampling.min_p = 0.01;
        request.sampling.repeat_penalty = 1.1;
        request.sampling.seed = seed;
        engine.generate(request).finish()
    };
    let first = run(7).await.unwrap().tokens;
    assert_eq!(run(7).await.unwrap().tokens, first);
    assert_ne!(run(8).await.unwrap().tokens, first, "another seed, another sample");
}

#[tokio::test]
async fn lora_adapter_matches_the_peft_merged_model_and_removal_restores_the_base() {
    let engine = tiny_engine().await;
    let adapter = fixtures().join("lora/final-adapter.gguf");
    let merged_dir = fixtures().join("lora/merged");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora/merged_reference.json")).unwrap()).unwrap();
    let base_prompts = reference_prompts(&fixtures().join("tiny-phi/reference"));

    let last_logits = |ids: Vec<TokenId>| {
        let mut request = greedy_request(0, &ids, 0);
        request.return_logits = true;
        let generation = engine.generate(request);
        async move { generation.finish().await.unwrap().last_logits.unwrap() }
    };

    let info = engine.set_adapter(&adapter, 1.0).await.unwrap();
    assert_eq!(info.scale, 1.0);
    assert_eq!(engine.state().await.unwrap().adapter, Some(info));
    for prompt in reference["prompts"].as_array().unwrap() {
        let name = prompt["name"].as_str().unwrap();
        let ids: Vec<TokenId> = serde_json::from_value(prompt["ids"].clone()).unwrap();
        let logits = last_logits(ids).await;
        let expected = read_logits(&merged_dir.join(format!("{name}.last_logits.f32")));
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= 2e-2, "{name} with the adapter: max |Δlogit| {diff}");
        assert_eq!(argmax(&logits), argmax(&expected), "{name} with the adapter: top-1");
    }

    engine.remove_adapter().await.unwrap();
    assert_eq!(engine.state().await.unwrap().adapter, None);
    for prompt in
        base_prompts.iter().filter(|p| ["def_docstring", "tabs_spaces", "long_300"].contains(&p.name.as_str()))
    {
        let logits = last_logits(prompt.ids.clone()).await;
        let expected = read_logits(&fixtures().join("tiny-phi/reference").join(&prompt.last_logits_file));
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= 2e-2, "{} after removal: max |Δlogit| {diff}", prompt.name);
    }

    // Applying the same adapter again reuses the loaded one, at another scale.
    assert_eq!(engine.set_adapter(&adapter, 0.5).await.unwrap().scale, 0.5);
}

#[tokio::test]
async fn bad_requests_are_errors_and_the_engine_keeps_serving() {
    let engine = tiny_engine().await;
    let context_size = engine.state().await.unwrap().model.unwrap().context_size as usize;

    let too_long = vec![198; context_size + 1];
    let error = engine.generate(greedy_request(0, &too_long, 4)).finish().await.unwrap_err();
    assert!(matches!(error, EngineError::PromptTooLong { .. }), "{error}");
    assert_still_serving(&engine).await;

    for bad in [-1, 51_200, i32::MAX] {
        let error = engine.generate(greedy_request(0, &[4299, bad], 4)).finish().await.unwrap_err();
        assert!(matches!(error, EngineError::InvalidToken { token, .. } if token == bad), "{error}");
        assert!(matches!(engine.detokenize(&[bad]).await, Err(EngineError::InvalidToken { .. })));
    }
    assert_still_serving(&engine).await;

    let error = engine.generate(greedy_request(7, &[4299], 4)).finish().await.unwrap_err();
    assert!(matches!(error, EngineError::InvalidSequence { sequence: 7, .. }), "{error}");
    let error = engine.generate(greedy_request(0, &[], 4)).finish().await.unwrap_err();
    assert!(matches!(error, EngineError::EmptyPrompt), "{error}");
    let mut request = GenerateRequest::new(SequenceId(0), Prompt::Text("x".into()));
    request.sampling.top_p = 0.0;
    let error = engine.generate(request).finish().await.unwrap_err();
    assert!(matches!(error, EngineError::InvalidSampling(_)), "{error}");
    assert_still_serving(&engine).await;
}

#[tokio::test]
async fn bad_model_files_are_errors_and_the_engine_keeps_serving() {
    let engine = tiny_engine().await;
    let dir = tempfile::tempdir().unwrap();
    let good = converted("tiny-phi", OutType::F16);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    let mut bad_header = bytes.clone();
    bad_header[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, &bad_header).unwrap();

    greedy_tokens(&engine, 0, &long_prompt(), 4).await;
    let cached = engine.state().await.unwrap().cached_tokens;
    for path in [dir.path().join("missing.gguf"), truncated, garbage, corrupt] {
        let error = engine.load_model(&path, None).await.unwrap_err();
        assert!(matches!(error, EngineError::InvalidModel { .. }), "{}: {error}", path.display());
        assert!(error.to_string().contains(&*path.to_string_lossy()), "{error}");
    }
    // A file that fails its checks never unloads the working model (F5 on a bad path in the TUI), nor what its
    // sequences hold.
    let state = engine.state().await.unwrap();
    assert_eq!(state.model.unwrap().path, good);
    assert_eq!(state.cached_tokens, cached);
    assert_still_serving(&engine).await;
    engine.load_model(&good, None).await.unwrap();
    assert_still_serving(&engine).await;
}

#[tokio::test]
async fn bad_adapters_are_errors_and_the_engine_keeps_serving() {
    let engine = tiny_engine().await;
    let dir = tempfile::tempdir().unwrap();
    let adapter = std::fs::read(fixtures().join("lora/final-adapter.gguf")).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &adapter[..adapter.len() - 100]).unwrap();
    let other_arch = dir.path().join("llama-adapter.gguf");
    write_adapter_for_architecture(&fixtures().join("lora/final-adapter.gguf"), &other_arch, "llama");

    let cases = [
        (dir.path().join("missing.gguf"), "no such file"),
        (truncated, ""),
        (other_arch, "architecture `llama`"),
        (converted("tiny-phi", OutType::F16), "not a LoRA adapter"),
    ];
    for (path, message) in cases {
        let error = engine.set_adapter(&path, 1.0).await.unwrap_err();
        assert!(matches!(error, EngineError::InvalidAdapter { .. }), "{}: {error}", path.display());
        assert!(error.to_string().contains(message), "{error}");
    }
    assert_eq!(engine.state().await.unwrap().adapter, None);
    assert_still_serving(&engine).await;
}

/// Rewrites an adapter GGUF with another `general.architecture`, as an adapter trained for another model has.
fn write_adapter_for_architecture(source: &Path, target: &Path, architecture: &str) {
    phi_converters::gguf::rewrite_metadata(source, target, |key, value| {
        if key == "general.architecture" {
            *value = phi_converters::gguf::MetadataValue::String(architecture.to_owned());
        }
    })
    .unwrap();
}

/// Live fine-tuning replaces its adapter file (write-then-rename) at the same path: setting that path again loads
/// the new weights — the output is a fresh engine's with the new file — and reports the file's training step.
#[tokio::test]
async fn an_adapter_rewritten_at_the_same_path_is_loaded_anew() {
    use phi_tui::finetune;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.gguf");
    let first = finetune::read_adapter_gguf(&fixtures().join("lora/final-adapter.gguf")).unwrap();
    let mut second = first.clone();
    for pair in second.modules.values_mut() {
        pair.b.data.iter_mut().for_each(|x| *x *= -40.0);
    }
    let prompt = long_prompt();
    let engine = tiny_engine().await;

    finetune::write_adapter_gguf_at_step(&path, &first, "live", Some(10)).unwrap();
    assert_eq!(engine.set_adapter(&path, 1.0).await.unwrap().step, Some(10));
    let with_first = greedy_tokens(&engine, 0, &prompt, 8).await;
    finetune::write_adapter_gguf_at_step(&path, &second, "live", Some(20)).unwrap();
    assert_eq!(engine.set_adapter(&path, 1.0).await.unwrap().step, Some(20));
    assert_eq!(engine.state().await.unwrap().adapter.unwrap().step, Some(20));
    let with_second = greedy_tokens(&engine, 0, &prompt, 8).await;
    assert_ne!(with_first, with_second, "the rewritten file's weights apply");

    let fresh = tiny_engine().await;
    fresh.set_adapter(&path, 1.0).await.unwrap();
    assert_eq!(greedy_tokens(&fresh, 0, &prompt, 8).await, with_second);
}

#[tokio::test]
async fn a_panic_inside_the_engine_fails_that_request_and_the_engine_keeps_serving() {
    let engine = tiny_engine().await;
    // A stop predicate is the caller's code run on the engine thread: one that panics (here on purpose, in real
    // life a bad string slice) stands for any panic there, llama-cpp-2's included.
    let mut request = greedy_request(0, &long_prompt(), 8);
    request.stop_predicate = Some(std::sync::Arc::new(|_: &str| -> Option<usize> { panic!("a broken stop rule") }));
    let error = engine.generate(request).finish().await.unwrap_err();
    assert!(matches!(&error, EngineError::Internal(message) if message.contains("a broken stop rule")), "{error:?}");
    // The same engine, with its model, serves the next requests.
    assert!(engine.state().await.unwrap().model.is_some());
    assert_still_serving(&engine).await;
    let again = greedy_tokens(&engine, 0, &long_prompt(), 8).await;
    assert_eq!(again.len(), 8);
}

#[tokio::test]
async fn the_context_must_suit_the_model_and_fit_in_memory() {
    let good = converted("tiny-phi", OutType::F16);
    let options = |context_size: u32, beyond: bool| EngineOptions {
        context_size: Some(context_size),
        sequences: 1,
        threads: Some(2),
        context_beyond_training: beyond,
        ..EngineOptions::default()
    };
    // phi's training context is 2048 tokens; a larger one needs asking for.
    let engine = Engine::start(options(1_000_000_000, false)).unwrap();
    let error = engine.load_model(&good, None).await.unwrap_err();
    assert!(error.to_string().contains("more than the model's training context of 2048 tokens"), "{error}");
    // Asked for, it must still fit in memory: a billion positions of this model's KV cache need 477 GiB.
    let engine = Engine::start(options(1_000_000_000, true)).unwrap();
    let error = engine.load_model(&good, None).await.unwrap_err();
    assert!(error.to_string().contains("needs 476.8 GiB for its KV cache"), "{error}");
    // What fits loads, beyond the training context too.
    let engine = Engine::start(options(4096, true)).unwrap();
    assert_eq!(engine.load_model(&good, None).await.unwrap().context_size, 4096);
    assert_still_serving(&engine).await;

    // Threads beyond what the machine can use are refused up front (16384 crashed llama.cpp's OpenMP runtime).
    let threads = EngineOptions { threads: Some(16_384), ..EngineOptions::default() };
    let error = Engine::start(threads).err().unwrap();
    assert!(error.to_string().contains("number of threads must be between 1 and"), "{error}");
}
