//! OpenAI's endpoints, as llama-server serves them: `POST /v1/completions`, `POST /v1/chat/completions` (phi-1's
//! Question/Answer layout, [`crate::session::chat`]), `GET /v1/models`; streaming as server-sent events ending in
//! `data: [DONE]`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    finish, finish_reason, json_body, max_tokens, model_id, parse, stream, unix_seconds, ApiError, Authorized,
    Connection, HttpState, PromptField, SamplingFields, StreamRender,
};
use crate::engine::{GenerationSummary, Priority, Prompt, TokenId};
use crate::session::chat::{chat_prompt, chat_stops, Exchange};
use crate::session::SessionRequest;

/// Characters of conversation per token of context that a chat prompt may use (English text and code run at
/// about 3.5-4 characters per phi token): older exchanges beyond that are left out.
const CHAT_CHARS_PER_TOKEN: usize = 3;

/// Fields of `/v1/completions` besides sampling. `suffix`, `logprobs`, `best_of`, `user`, `presence_penalty` and
/// `frequency_penalty` are accepted without effect.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptField,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// `POST /v1/completions`.
pub(super) async fn completions(
    _: Authorized,
    State(state): State<Arc<HttpState>>,
    Extension(connection): Extension<Arc<Connection>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(body)?;
    let request: CompletionRequest = parse(&value)?;
    let sampling: SamplingFields = parse(&value)?;
    one_choice(request.n)?;
    if request.echo == Some(true) {
        return Err(ApiError::bad_request("echo: not supported", Some("echo".to_owned())));
    }
    let prompt = request.prompt.into_prompt()?;
    let client = connection.client()?;
    let model = state.model().await?;
    let mut session_request = SessionRequest::new(prompt);
    session_request.sampling = sampling.params();
    session_request.stop_strings = sampling.stop_strings();
    session_request.max_tokens = max_tokens(request.max_tokens);
    // Completions are what editor plug-ins (Continue's autocomplete) ask for while someone types.
    session_request.priority = Priority::Interactive;
    let reply = Reply {
        id: state.response_id("cmpl"),
        created: unix_seconds(),
        model: model_id(&model),
        chat: false,
        include_usage: request.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        role_sent: false,
    };
    let generation = client.generate(session_request, None);
    if request.stream.unwrap_or(false) {
        return stream(generation, reply).await;
    }
    let summary = finish(generation).await?;
    Ok(Json(reply.complete(&summary)).into_response())
}

/// `POST /v1/chat/completions`: the conversation in the model's chat template where its GGUF has one, else in
/// phi-1's Question/Answer layout (system messages first, as plain text), answered until the model starts the next
/// question.
pub(super) async fn chat_completions(
    _: Authorized,
    State(state): State<Arc<HttpState>>,
    Extension(connection): Extension<Arc<Connection>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(body)?;
    let request: ChatRequest = parse(&value)?;
    let sampling: SamplingFields = parse(&value)?;
    one_choice(request.n)?;
    let client = connection.client()?;
    let model = state.model().await?;
    let max_tokens = max_tokens(request.max_completion_tokens.or(request.max_tokens));
    let context = model.context_size as usize;
    let budget = context.saturating_sub((max_tokens as usize).min(context / 4)) * CHAT_CHARS_PER_TOKEN;
    // The model's own chat template where its GGUF has one that llama.cpp knows; else phi-1's layout and stops.
    let templated = match model.has_chat_template {
        true => {
            let messages = request
                .messages
                .iter()
                .enumerate()
                .map(|(index, message)| Ok((message.role.clone(), message_text(message, index)?)))
                .collect::<Result<Vec<_>, ApiError>>()?;
            state.daemon.engine().apply_chat_template(messages).await.map_err(ApiError::engine)?
        }
        false => None,
    };
    let (prompt, mut stops) = match templated {
        Some(prompt) => (prompt, Vec::new()),
        None => (chat_layout(&request.messages, budget)?, chat_stops()),
    };
    stops.extend(sampling.stop_strings());
    let mut session_request = SessionRequest::new(Prompt::Text(prompt));
    session_request.sampling = sampling.params();
    session_request.stop_strings = stops;
    session_request.max_tokens = max_tokens;
    session_request.priority = Priority::Chat;
    let reply = Reply {
        id: state.response_id("chatcmpl"),
        created: unix_seconds(),
        model: model_id(&model),
        chat: true,
        include_usage: request.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        role_sent: false,
    };
    let generation = client.generate(session_request, None);
    if request.stream.unwrap_or(false) {
        return stream(generation, reply).await;
    }
    let summary = finish(generation).await?;
    Ok(Json(reply.complete(&summary)).into_response())
}

/// `GET /v1/models`: the session's model, when one is loaded.
pub(super) async fn models(_: Authorized, State(state): State<Arc<HttpState>>) -> Json<Value> {
    let data: Vec<Value> = match state.model().await {
        Ok(model) => vec![json!({
            "id": model_id(&model),
            "object": "model",
            "created": std::fs::metadata(&model.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            "owned_by": "phi-tui",
            "meta": {
                "n_vocab": model.n_vocab,
                "n_ctx_train": model.context_train,
                "n_ctx": model.context_size,
                "n_params": model.parameters,
                "size": model.size_bytes,
            },
        })],
        Err(_) => Vec::new(),
    };
    Json(json!({ "object": "list", "data": data }))
}

fn one_choice(n: Option<i64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::bad_request("n: only one choice per request is supported", Some("n".to_owned()))),
    }
}

/// The conversation as phi-1's prompt: system (and developer) messages as plain text on top, then the exchanges
/// that fit in `budget_chars`, then the last user message as the question.
fn chat_layout(messages: &[ChatMessage], budget_chars: usize) -> Result<String, ApiError> {
    let mut preamble: Vec<String> = Vec::new();
    let mut exchanges: Vec<Exchange> = Vec::new();
    let mut question: Option<String> = None;
    for (index, message) in messages.iter().enumerate() {
        let text = message_text(message, index)?;
        match message.role.as_str() {
            "system" | "developer" => preamble.push(text),
            "user" => {
                question = Some(match question.take() {
                    Some(earlier) => format!("{earlier}\n{text}"),
                    None => text,
                })
            }
            "assistant" => exchanges.push(Exchange { question: question.take().unwrap_or_default(), answer: text }),
            other => {
                return Err(ApiError::bad_request(
                    format!("messages[{index}].role: `{other}` is not supported (system, user or assistant)"),
                    Some(format!("messages[{index}].role")),
                ))
            }
        }
    }
    let question = question.ok_or_else(|| {
        ApiError::bad_request("messages: the last message must be the user's question", Some("messages".to_owned()))
    })?;
    let preamble = preamble.join("\n");
    let top = if preamble.trim().is_empty() { String::new() } else { format!("{}\n\n", preamble.trim()) };
    Ok(top.clone() + &chat_prompt(&exchanges, &question, budget_chars.saturating_sub(top.len())))
}

fn message_text(message: &ChatMessage, index: usize) -> Result<String, ApiError> {
    match &message.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(text)) => Ok(text.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::new();
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => texts.push(text.as_str()),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            format!("messages[{index}].content: `{kind}` parts are not supported (text only)"),
                            Some(format!("messages[{index}].content")),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

/// What the responses of one request share; also its stream's state.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    include_usage: bool,
    role_sent: bool,
}

impl Reply {
    fn usage(summary: &GenerationSummary) -> Value {
        let (prompt, completion) = (summary.prompt_tokens.len(), summary.tokens.len());
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.chat, streaming) {
            (false, _) => "text_completion",
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
        }
    }

    /// The whole answer (no stream).
    fn complete(&self, summary: &GenerationSummary) -> Value {
        let choice = if self.chat {
            json!({
                "index": 0,
                "message": { "role": "assistant", "content": summary.text },
                "logprobs": null,
                "finish_reason": finish_reason(&summary.stop_reason),
            })
        } else {
            json!({
                "index": 0,
                "text": summary.text,
                "logprobs": null,
                "finish_reason": finish_reason(&summary.stop_reason),
            })
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": Self::usage(summary),
        })
    }

    /// One chunk of a stream: `text` so far unsent, and the finish reason on the last one.
    fn chunk(&mut self, text: &str, finish: Option<&str>) -> String {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if !self.role_sent {
                delta.insert("role".to_owned(), json!("assistant"));
                self.role_sent = true;
            }
            if finish.is_none() {
                delta.insert("content".to_owned(), json!(text));
            }
            json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
        } else {
            json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish })
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
        .to_string()
    }
}

impl StreamRender for Reply {
    fn delta(&mut self, text: &str, _tokens: &[TokenId]) -> Vec<String> {
        if text.is_empty() {
            return Vec::new();
        }
        vec![self.chunk(text, None)]
    }

    fn finished(&mut self, summary: &GenerationSummary) -> Vec<String> {
        let mut payloads = vec![self.chunk("", Some(finish_reason(&summary.stop_reason)))];
        if self.include_usage {
            payloads.push(
                json!({
                    "id": self.id,
                    "object": self.object(true),
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": Self::usage(summary),
                })
                .to_string(),
            );
        }
        payloads.push("[DONE]".to_owned());
        payloads
    }

    fn failed(&mut self, error: ApiError) -> Vec<String> {
        vec![error.body().to_string(), "[DONE]".to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_owned(), content: Some(MessageContent::Text(content.to_owned())) }
    }

    #[test]
    fn a_conversation_becomes_questions_and_answers() {
        let messages = [
            message("system", "You write Python."),
            message("user", "What is 1+1?"),
            message("assistant", "2"),
            message("user", "And 2+2?"),
        ];
        assert_eq!(
            chat_layout(&messages, 10_000).ok().as_deref(),
            Some("You write Python.\n\nQuestion: What is 1+1?\nAnswer: 2\n\nQuestion: And 2+2?\nAnswer:")
        );
        let error = chat_layout(&messages[..3], 10_000).err().map(|e| e.param);
        assert_eq!(error, Some(Some("messages".to_owned())));
        let error = chat_layout(&[message("tool", "x")], 10_000).err().map(|e| e.param);
        assert_eq!(error, Some(Some("messages[0].role".to_owned())));
    }
}
