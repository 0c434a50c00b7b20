//! Turning a conversation into a prompt for a base code model, and knowing when its answer is done.
//!
//! phi-1 is not a chat model. In **code mode** the input is code (a signature and a docstring, say) and the model
//! continues it; the continuation ends where a new top-level statement would start after a non-empty body (see
//! [`phi_lsp::stop::code_block_end`]). In **chat mode** the conversation is laid out as `Question: … / Answer: …` pairs, the plain
//! format a base model follows best; the engine has no chat-template support, so models that ship a template get
//! the same layout.

use phi_lsp::stop::StopRule;

use crate::config::PromptMode;
use crate::engine::{Prompt, SamplingParams};
use crate::session::SessionRequest;

use super::session::{Message, MessageStatus, Role};

/// Everything needed to start one reply; turned into a session request by [`GenerationSpec::request`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    pub mode: PromptMode,
    pub prompt: String,
    pub stop_strings: Vec<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u32,
}

impl GenerationSpec {
    pub fn request(&self) -> SessionRequest {
        let mut request = SessionRequest::new(Prompt::Text(self.prompt.clone()));
        request.max_tokens = self.max_tokens;
        request.stop_strings = self.stop_strings.clone();
        request.sampling = SamplingParams {
            temperature: self.temperature,
            top_p: if self.temperature > 0.0 { 0.95 } else { 1.0 },
            seed: self.seed,
            ..SamplingParams::default()
        };
        if self.mode == PromptMode::Code {
            request.stop_rule = Some(StopRule::EndOfDefinition { prompt: self.prompt.clone() });
        }
        request
    }
}

/// Stop strings of chat mode: the model starting the next question.
pub const CHAT_STOPS: [&str; 3] = ["\nQuestion:", "Question:", "\n\n\n"];

/// The prompt for a new user message: in code mode the code itself; in chat mode the earlier complete chat
/// exchanges (as many as fit in about `budget_chars`) and the question.
pub fn build_prompt(history: &[Message], input: &str, mode: PromptMode, budget_chars: usize) -> (String, Vec<String>) {
    match mode {
        PromptMode::Code => (input.to_owned(), Vec::new()),
        PromptMode::Chat => {
            let question = format!("Question: {}\nAnswer:", input.trim());
            let mut exchanges: Vec<String> = Vec::new();
            let mut used = question.len();
            let mut i = history.len();
            while i >= 2 {
                let (user, reply) = (&history[i - 2], &history[i - 1]);
                i -= 1;
                let pair = user.role == Role::User
                    && reply.role == Role::Assistant
                    && user.mode == PromptMode::Chat
                    && reply.mode == PromptMode::Chat
                    && reply.status == MessageStatus::Complete;
                if !pair {
                    continue;
                }
                i -= 1;
                let exchange = format!("Question: {}\nAnswer: {}\n\n", user.text.trim(), reply.text.trim());
                if used + exchange.len() > budget_chars {
                    break;
                }
                used += exchange.len();
                exchanges.push(exchange);
            }
            exchanges.reverse();
            (exchanges.concat() + &question, CHAT_STOPS.iter().map(|s| (*s).to_owned()).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompts_carry_complete_chat_exchanges() {
        let mut history = vec![
            Message::user("What is 1+1?".into(), PromptMode::Chat),
            Message::assistant(PromptMode::Chat, String::new()),
            Message::user("def f():".into(), PromptMode::Code),
            Message::assistant(PromptMode::Code, "def f():".into()),
        ];
        history[1].text = " 2".into();
        history[1].status = MessageStatus::Complete;
        history[3].status = MessageStatus::Complete;
        let (prompt, stops) = build_prompt(&history, "And 2+2?", PromptMode::Chat, 10_000);
        assert_eq!(prompt, "Question: What is 1+1?\nAnswer: 2\n\nQuestion: And 2+2?\nAnswer:");
        assert!(stops.contains(&"Question:".to_owned()));
        let (prompt, _) = build_prompt(&history, "And 2+2?", PromptMode::Chat, 40);
        assert_eq!(prompt, "Question: And 2+2?\nAnswer:");
        let (prompt, stops) = build_prompt(&history, "def g():", PromptMode::Code, 10);
        assert_eq!((prompt.as_str(), stops.len()), ("def g():", 0));
    }

    #[test]
    fn specs_become_requests() {
        let spec = GenerationSpec {
            mode: PromptMode::Code,
            prompt: "def f():\n".into(),
            stop_strings: vec![],
            max_tokens: 12,
            temperature: 0.0,
            seed: 0,
        };
        let request = spec.request();
        assert_eq!(request.max_tokens, 12);
        let rule = request.stop_rule.unwrap_or_else(|| panic!("code mode has a stop rule"));
        assert_eq!(rule.cut("    return 1\nx"), Some(12));
    }
}
