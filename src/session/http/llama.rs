//! llama-server's own endpoints, with the request and response fields that llama.vscode, llama.vim and Continue's
//! llama.cpp provider use: `POST /completion`, `POST /infill`, `GET/POST /lora-adapters`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    any_of, finish, indent_limit, json_body, lock, max_tokens, model_id, parse, stream, time_limit, ApiError,
    Authorized, Connection, HttpState, PromptField, SamplingFields, StreamRender,
};
use crate::engine::{GenerationSummary, ModelInfo, Priority, Prompt, StopReason, TokenId};
use crate::session::{InferenceSession, LocalSession, SessionRequest};

/// What separates the extra context chunks of an infill prompt, and the chunks from the file being edited, where
/// the vocabulary has no FIM tokens (phi's has none): llama-server's separator for that case.
pub const CHUNK_SEPARATOR: &str = "\n\n--- snippet ---\n\n";

/// Tokens kept free for pieces of an infill prompt that tokenize differently where they meet.
const JOIN_SLACK_TOKENS: usize = 16;

/// The fields of `/completion` and `/infill` besides the prompt pieces and sampling. Accepted without effect:
/// `cache_prompt` (a connection's prompt prefix is always kept in its sequence), `samplers` (phi-tui's sampler
/// order is fixed), `id_slot`, `t_max_prompt_ms`, `n_keep`.
#[derive(Debug, Deserialize)]
struct LlamaRequest {
    #[serde(default)]
    prompt: Option<PromptField>,
    #[serde(default)]
    n_predict: Option<i64>,
    /// llama-server takes this as an alias of `n_predict`.
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    n_indent: Option<i64>,
    #[serde(default)]
    t_max_predict_ms: Option<i64>,
    #[serde(default)]
    return_tokens: Option<bool>,
    #[serde(default)]
    response_fields: Option<Vec<String>>,
}

/// The pieces of an infill request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InfillFields {
    input_prefix: String,
    /// Not used: without FIM tokens the model cannot see what follows the cursor.
    #[allow(dead_code)]
    input_suffix: String,
    input_extra: Vec<ExtraChunk>,
}

/// A chunk of extra context (from other files, or elsewhere in this one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExtraChunk {
    pub text: String,
    /// Not used without FIM tokens, as in llama-server.
    pub filename: Option<String>,
}

/// `POST /completion` (and `/completions`): continues `prompt`.
pub(super) async fn completion(
    _: Authorized,
    State(state): State<Arc<HttpState>>,
    Extension(connection): Extension<Arc<Connection>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(body)?;
    let request: LlamaRequest = parse(&value)?;
    let sampling: SamplingFields = parse(&value)?;
    let prompt = request
        .prompt
        .clone()
        .ok_or_else(|| ApiError::bad_request("missing field `prompt`", Some("prompt".to_owned())))?
        .into_prompt()?;
    let client = connection.client()?;
    let model = state.model().await?;
    let reply = Reply::new(&model, client.session().sequence().0, &request, &sampling, &prompt, false);
    generate(client, request, sampling, prompt, reply).await
}

/// `POST /infill`: a completion at the cursor, from llama.vscode's or llama.vim's pieces. Without FIM tokens the
/// prompt is the extra chunks, then the text before the cursor (`input_prefix` + `prompt`); see [`infill_prompt`].
pub(super) async fn infill(
    _: Authorized,
    State(state): State<Arc<HttpState>>,
    Extension(connection): Extension<Arc<Connection>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(body)?;
    let request: LlamaRequest = parse(&value)?;
    let sampling: SamplingFields = parse(&value)?;
    let fields: InfillFields = parse(&value)?;
    let middle = match &request.prompt {
        None => String::new(),
        Some(PromptField::Text(text)) => text.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "prompt: /infill takes the text before the cursor on its line, as a string",
                Some("prompt".to_owned()),
            ))
        }
    };
    let client = connection.client()?;
    let model = state.model().await?;
    let context = model.context_size as usize;
    let reserve = (max_tokens(request.n_predict.or(request.max_tokens)) as usize).min(context / 4);
    let built =
        infill_prompt(client.session(), context, reserve, &fields.input_extra, &fields.input_prefix, &middle).await?;
    let prompt = Prompt::Text(built.text);
    let reply = Reply::new(&model, client.session().sequence().0, &request, &sampling, &prompt, built.truncated);
    generate(client, request, sampling, prompt, reply).await
}

async fn generate(
    client: crate::session::daemon::Client,
    request: LlamaRequest,
    sampling: SamplingFields,
    prompt: Prompt,
    reply: Reply,
) -> Result<Response, ApiError> {
    let mut session_request = SessionRequest::new(prompt);
    session_request.sampling = sampling.params();
    session_request.stop_strings = sampling.stop_strings();
    session_request.max_tokens = max_tokens(request.n_predict.or(request.max_tokens));
    session_request.stop_at_eog = !request.ignore_eos.unwrap_or(false);
    // An editor waits for every completion: it goes before chat replies.
    session_request.priority = Priority::Interactive;
    let mut predicates = Vec::new();
    if let Some(columns) = request.n_indent.filter(|&n| n > 0) {
        predicates.push(indent_limit(columns as usize));
    }
    if let Some(ms) = request.t_max_predict_ms.filter(|&ms| ms > 0) {
        predicates.push(time_limit(Duration::from_millis(ms as u64)));
    }
    let generation = client.generate(session_request, any_of(predicates));
    if request.stream.unwrap_or(false) {
        return stream(generation, LlamaStream { reply, predicted: 0 }).await;
    }
    let summary = finish(generation).await?;
    let body = reply.final_json(&summary, &summary.text);
    let body = match &request.response_fields {
        Some(fields) => select_fields(fields, &body),
        None => body,
    };
    Ok(Json(body).into_response())
}

/// An infill prompt and whether anything had to be left out to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct InfillPrompt {
    pub text: String,
    pub truncated: bool,
}

/// The prompt for an infill without FIM tokens, as llama-server builds one: the extra chunks, each after
/// [`CHUNK_SEPARATOR`], then (after one more separator, when there are chunks) the text before the cursor. It must
/// fit in `context` tokens with `reserve` left to generate: the text before the cursor keeps up to three quarters
/// of that (its end, from the start of a line), and the chunks fill what is left, the most recent (last) first.
pub async fn infill_prompt(
    session: &LocalSession,
    context: usize,
    reserve: usize,
    extra: &[ExtraChunk],
    prefix: &str,
    middle: &str,
) -> Result<InfillPrompt, ApiError> {
    let available = context.saturating_sub(reserve).saturating_sub(JOIN_SLACK_TOKENS);
    let mut truncated = false;
    let mut core = format!("{prefix}{middle}");
    let core_budget = available * 3 / 4;
    // A token is at least one byte, so a short text needs no counting unless chunks share the budget.
    let mut core_tokens = core.len();
    if core.len() > core_budget || !extra.is_empty() {
        let tokens = session.tokenize(core.clone(), false).await.map_err(ApiError::engine)?;
        core_tokens = tokens.len();
        if tokens.len() > core_budget {
            core = keep_tail(session, &core, &tokens, core_budget).await?;
            core_tokens = core_budget;
            truncated = true;
        }
    }
    let mut budget = available.saturating_sub(core_tokens);
    let mut kept = Vec::new();
    for chunk in extra.iter().rev() {
        let piece = format!("{CHUNK_SEPARATOR}{}", chunk.text);
        let cost = if piece.len() <= budget {
            piece.len()
        } else {
            session.tokenize(piece.clone(), false).await.map_err(ApiError::engine)?.len()
        };
        if cost > budget {
            truncated = true;
            break;
        }
        budget -= cost;
        kept.push(piece);
    }
    kept.reverse();
    let mut text = kept.concat();
    if !text.is_empty() {
        text.push_str(CHUNK_SEPARATOR);
    }
    text.push_str(&core);
    Ok(InfillPrompt { text, truncated })
}

/// The end of `text` that fits in `keep` of its `tokens`, starting at a line when one starts soon after the cut.
async fn keep_tail(session: &LocalSession, text: &str, tokens: &[TokenId], keep: usize) -> Result<String, ApiError> {
    const LINE_SEARCH_BYTES: usize = 256;
    let dropped = tokens.len().saturating_sub(keep);
    let head = session.detokenize(tokens[..dropped].to_vec()).await.map_err(ApiError::engine)?;
    let mut start = head.len().min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if let Some(newline) = text[start..].find('\n').filter(|&i| i < LINE_SEARCH_BYTES && start + i + 1 < text.len()) {
        start += newline + 1;
    }
    Ok(text[start..].to_owned())
}

/// What the responses of one request share.
struct Reply {
    model: String,
    slot: u32,
    settings: Value,
    prompt: Value,
    truncated: bool,
    return_tokens: bool,
}

impl Reply {
    fn new(
        model: &ModelInfo,
        slot: u32,
        request: &LlamaRequest,
        sampling: &SamplingFields,
        prompt: &Prompt,
        truncated: bool,
    ) -> Self {
        let params = sampling.params();
        let settings = json!({
            "n_predict": request.n_predict.or(request.max_tokens).unwrap_or(-1),
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "min_p": params.min_p,
            "repeat_penalty": params.repeat_penalty,
            "repeat_last_n": params.repeat_last_n,
            "seed": params.seed,
            "stop": sampling.stop_strings(),
            "ignore_eos": request.ignore_eos.unwrap_or(false),
            "n_indent": request.n_indent.unwrap_or(0),
            "t_max_predict_ms": request.t_max_predict_ms.unwrap_or(-1),
            "stream": request.stream.unwrap_or(false),
        });
        let prompt = match prompt {
            Prompt::Text(text) => json!(text),
            Prompt::Tokens(tokens) => json!(tokens),
        };
        Self {
            model: model_id(model),
            slot,
            settings,
            prompt,
            truncated,
            return_tokens: request.return_tokens.unwrap_or(false),
        }
    }

    /// llama-server's final result (the last event of a stream, with `content` empty there).
    fn final_json(&self, summary: &GenerationSummary, content: &str) -> Value {
        let timings = &summary.timings;
        let predicted = summary.tokens.len();
        let (stop_type, stopping_word) = match &summary.stop_reason {
            StopReason::EndOfGeneration => ("eos", ""),
            StopReason::StopString(word) => ("word", word.as_str()),
            StopReason::MaxTokens | StopReason::ContextFull | StopReason::Predicate => ("limit", ""),
            StopReason::Cancelled => ("none", ""),
        };
        let per_token = |ms: f64, n: usize| if n > 0 { ms / n as f64 } else { 0.0 };
        json!({
            "index": 0,
            "content": content,
            "tokens": if self.return_tokens { summary.tokens.clone() } else { Vec::new() },
            "id_slot": self.slot,
            "stop": true,
            "model": self.model,
            "tokens_predicted": predicted,
            "tokens_evaluated": summary.prompt_tokens.len(),
            "generation_settings": self.settings,
            "prompt": self.prompt,
            "has_new_line": summary.text.contains('\n'),
            "truncated": self.truncated,
            "stop_type": stop_type,
            "stopping_word": stopping_word,
            "tokens_cached": summary.prompt_tokens.len() + predicted,
            "timings": {
                "prompt_n": timings.prompt_tokens_decoded,
                "prompt_ms": timings.prompt_ms,
                "prompt_per_token_ms": per_token(timings.prompt_ms, timings.prompt_tokens_decoded),
                "prompt_per_second": timings.prompt_tok_s(),
                "predicted_n": predicted,
                "predicted_ms": timings.gen_ms,
                "predicted_per_token_ms": per_token(timings.gen_ms, timings.gen_tokens_decoded),
                "predicted_per_second": timings.gen_tok_s(),
            },
        })
    }
}

struct LlamaStream {
    reply: Reply,
    predicted: usize,
}

impl StreamRender for LlamaStream {
    fn delta(&mut self, text: &str, tokens: &[TokenId]) -> Vec<String> {
        self.predicted += tokens.len();
        if text.is_empty() && !self.reply.return_tokens {
            return Vec::new();
        }
        let tokens = if self.reply.return_tokens { tokens.to_vec() } else { Vec::new() };
        vec![json!({
            "index": 0,
            "content": text,
            "tokens": tokens,
            "stop": false,
            "id_slot": self.reply.slot,
            "tokens_predicted": self.predicted,
        })
        .to_string()]
    }

    fn finished(&mut self, summary: &GenerationSummary) -> Vec<String> {
        vec![self.reply.final_json(summary, "").to_string()]
    }

    fn failed(&mut self, error: ApiError) -> Vec<String> {
        vec![error.body().to_string()]
    }
}

/// llama-server's `response_fields`: only these fields, each under its path (`timings/prompt_n`); missing ones
/// are left out.
fn select_fields(fields: &[String], body: &Value) -> Value {
    let mut selected = serde_json::Map::new();
    for path in fields {
        let found = path.split('/').try_fold(body, |value, key| value.get(key));
        if let Some(value) = found {
            selected.insert(path.clone(), value.clone());
        }
    }
    Value::Object(selected)
}

/// One entry of `POST /lora-adapters`: llama-server's `{"id", "scale"}`, or phi-tui's `{"path", "scale"}` to apply
/// another adapter file.
#[derive(Debug, Deserialize)]
struct AdapterEntry {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    scale: Option<f32>,
}

/// `GET /lora-adapters`: the session's adapter (it has at most one) as id 0; at scale 0 when it was switched off.
pub(super) async fn adapters(_: Authorized, State(state): State<Arc<HttpState>>) -> Result<Json<Value>, ApiError> {
    let engine = state.daemon.engine().state().await.map_err(ApiError::engine)?;
    let listed = match engine.adapter {
        Some(adapter) => {
            *lock(&state.last_adapter) = Some(adapter.path.clone());
            Some((adapter.path, adapter.scale))
        }
        None => lock(&state.last_adapter).clone().map(|path| (path, 0.0)),
    };
    let list: Vec<Value> =
        listed.into_iter().map(|(path, scale)| json!({ "id": 0, "path": path, "scale": scale })).collect();
    Ok(Json(Value::Array(list)))
}

/// `POST /lora-adapters`: sets the adapter's scale (0 switches it off; an empty list too, as in llama-server, where
/// adapters not listed get scale 0), or applies another file. The adapter is the session's: this changes it for the
/// TUI and the editors too, which say so.
pub(super) async fn set_adapters(
    _: Authorized,
    State(state): State<Arc<HttpState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = json_body(body)?;
    let entries: Vec<AdapterEntry> = parse(&value)?;
    let session = state.daemon.shared_session();
    let (path, scale) = match entries.as_slice() {
        [] => (None, 0.0),
        [entry] => {
            let path = match (&entry.path, entry.id) {
                (Some(path), _) => path.clone(),
                (None, Some(0)) => lock(&state.last_adapter).clone().ok_or_else(|| {
                    ApiError::bad_request("[0].id: the session has no adapter 0", Some("[0].id".to_owned()))
                })?,
                (None, _) => {
                    return Err(ApiError::bad_request(
                        "[0]: invalid adapter id (the session has one adapter, id 0; or give a `path`)",
                        Some("[0].id".to_owned()),
                    ))
                }
            };
            (Some(path), entry.scale.unwrap_or(if entry.path.is_some() { 1.0 } else { 0.0 }))
        }
        _ => return Err(ApiError::bad_request("the session applies one adapter at a time; list at most one", None)),
    };
    match path {
        Some(path) if scale != 0.0 => {
            session.set_adapter(path, scale).await.map_err(ApiError::engine)?;
        }
        _ => {
            if state.daemon.engine().state().await.map_err(ApiError::engine)?.adapter.is_some() {
                session.remove_adapter().await.map_err(ApiError::engine)?;
            }
        }
    }
    Ok(Json(json!({ "success": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_fields_pick_nested_values_by_path() {
        let body = json!({"content": "x", "timings": {"prompt_n": 3}, "truncated": false});
        let fields = ["content", "timings/prompt_n", "timings/missing", "tokens_cached"].map(String::from);
        assert_eq!(select_fields(&fields, &body), json!({"content": "x", "timings/prompt_n": 3}));
    }
}
