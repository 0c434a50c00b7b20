//! Turning a conversation into a prompt for a base code model, and knowing when its answer is done.
//!
//! phi-1 is not a chat model. In **code mode** the input is code (a signature and a docstring, say) and the model
//! continues it; the continuation ends where a new top-level statement would start after a non-empty body (see
//! [`code_block_end`]). In **chat mode** the conversation is laid out as `Question: … / Answer: …` pairs, the plain
//! format a base model follows best; the engine has no chat-template support, so models that ship a template get
//! the same layout.

use std::sync::Arc;

use crate::config::PromptMode;
use crate::engine::{GenerateRequest, Prompt, SamplingParams, SequenceId, StopPredicate};

use super::session::{Message, MessageStatus, Role};

/// Everything needed to start one reply; turned into an engine request by [`GenerationSpec::request`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    pub mode: PromptMode,
    pub prompt: String,
    pub stop_strings: Vec<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u32,
}

/// The sequence (KV cache) the chat uses.
pub const CHAT_SEQUENCE: SequenceId = SequenceId(0);

impl GenerationSpec {
    pub fn request(&self) -> GenerateRequest {
        let mut request = GenerateRequest::new(CHAT_SEQUENCE, Prompt::Text(self.prompt.clone()));
        request.max_tokens = self.max_tokens;
        request.stop_strings = self.stop_strings.clone();
        request.sampling = SamplingParams {
            temperature: self.temperature,
            top_p: if self.temperature > 0.0 { 0.95 } else { 1.0 },
            seed: self.seed,
            ..SamplingParams::default()
        };
        if self.mode == PromptMode::Code {
            let prompt = self.prompt.clone();
            let predicate: StopPredicate = Arc::new(move |generated: &str| code_block_end(&prompt, generated));
            request.stop_predicate = Some(predicate);
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

/// Where a code-mode continuation should end: the byte offset in `generated`, or `None` to go on.
///
/// Looking at `prompt + generated` line by line, the answer ends before the first line that starts a new top-level
/// statement (anything at column 0 other than `else`/`elif`/`except`/`finally` or a closing bracket, outside a
/// triple-quoted string) once the current top-level statement has an indented body, and only in generated text.
/// Blank lines before that line are dropped. So `def f():` + `    return 1\n\ndef g` ends after `return 1`, and a
/// comment or `print(…)` at column 0 after the body ends it too.
pub fn code_block_end(prompt: &str, generated: &str) -> Option<usize> {
    let text = format!("{prompt}{generated}");
    let generated_start = prompt.len();
    let mut body_seen = false;
    let mut in_string: Option<&'static str> = None;
    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..].find('\n').map(|i| line_start + i);
        let complete = line_end.is_some();
        let line = &text[line_start..line_end.unwrap_or(text.len())];
        let string_at_start = in_string.is_some();
        in_string = scan_triple_quotes(line, in_string);

        if !string_at_start && !line.trim().is_empty() {
            let first = line.chars().next().unwrap_or(' ');
            if first == ' ' || first == '\t' {
                body_seen = true;
            } else if !continues_statement(line, complete) {
                if continues_statement_undecided(line, complete) {
                    return None;
                }
                if body_seen && line_start >= generated_start {
                    let cut = text[generated_start..line_start].trim_end().len();
                    return Some(cut);
                }
                body_seen = false;
            }
        } else if string_at_start && !line.trim().is_empty() {
            body_seen = true;
        }
        match line_end {
            Some(end) => line_start = end + 1,
            None => break,
        }
    }
    None
}

const CONTINUATIONS: [&str; 4] = ["else", "elif", "except", "finally"];

/// A column-0 line that belongs to the statement before it.
fn continues_statement(line: &str, complete: bool) -> bool {
    if line.starts_with([')', ']', '}']) {
        return true;
    }
    let word: String = line.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    let word_complete = complete || word.len() < line.len();
    word_complete && CONTINUATIONS.contains(&word.as_str())
}

/// A line so short that it may still become `else`, `except`, …
fn continues_statement_undecided(line: &str, complete: bool) -> bool {
    let word: String = line.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    !complete && word.len() == line.len() && CONTINUATIONS.iter().any(|k| k.starts_with(word.as_str()))
}

/// The triple-quote state after a line.
fn scan_triple_quotes(line: &str, mut state: Option<&'static str>) -> Option<&'static str> {
    let mut rest = line;
    loop {
        match state {
            Some(delimiter) => match rest.find(delimiter) {
                Some(i) => {
                    rest = &rest[i + 3..];
                    state = None;
                }
                None => return state,
            },
            None => {
                // A comment ends the scan (quotes inside it do not count).
                let code = rest.split('#').next().unwrap_or("");
                let double = code.find("\"\"\"");
                let single = code.find("'''");
                let (i, delimiter) = match (double, single) {
                    (Some(d), Some(s)) if s < d => (s, "'''"),
                    (Some(d), _) => (d, "\"\"\""),
                    (None, Some(s)) => (s, "'''"),
                    (None, None) => return None,
                };
                rest = &rest[i + 3..];
                state = Some(delimiter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(prompt: &str, generated: &str) -> Option<String> {
        code_block_end(prompt, generated).map(|cut| generated[..cut].to_owned())
    }

    #[test]
    fn ends_at_the_next_top_level_statement_after_a_body() {
        let prompt = "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n";
        assert_eq!(end(prompt, "    return a + b\n"), None);
        assert_eq!(end(prompt, "    return a + b\n\n\ndef sub"), Some("    return a + b".into()));
        assert_eq!(end(prompt, "    return a + b\n\nprint(add(1, 2))"), Some("    return a + b".into()));
        assert_eq!(end(prompt, "    return a + b\n# test\n"), Some("    return a + b".into()));
        assert_eq!(end(prompt, "    return a + b\nif __name__"), Some("    return a + b".into()));
        assert_eq!(end(prompt, "    return a + b\n@decorator\n"), Some("    return a + b".into()));
    }

    #[test]
    fn a_signature_without_newline_continues_into_its_body() {
        let prompt = "def fibonacci(n):";
        assert_eq!(end(prompt, "\n    if n < 2:\n        return n\n"), None);
        assert_eq!(
            end(prompt, "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nx"),
            Some("\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)".into())
        );
    }

    #[test]
    fn continuations_brackets_and_strings_do_not_end_it() {
        let prompt = "try:\n    x = 1\n";
        assert_eq!(end(prompt, "except ValueError:\n    pass\n"), None);
        assert_eq!(end(prompt, "el"), None, "may become else");
        assert_eq!(end(prompt, "finally:\n    y = 2\nz = 3"), Some("finally:\n    y = 2".into()));
        assert_eq!(end(prompt, "elsewhere = 1"), Some(String::new()));
        assert_eq!(end("x = f(\n    1,\n", ")\n"), None);
        assert_eq!(end("def f():\n    \"\"\"\n", "Docs at column 0.\n\"\"\"\n    return 1\n"), None);
        assert_eq!(
            end("def f():\n    '''\n", "Docs.\n'''\n    return 1\nx = 2"),
            Some("Docs.\n'''\n    return 1".into())
        );
    }

    #[test]
    fn top_level_code_before_any_body_goes_on() {
        assert_eq!(end("import math\n", "def area(r):\n    return math.pi * r * r\n"), None);
        assert_eq!(end("import math\n", "import os\nx = 1\n"), None);
        assert_eq!(end("import math\n", "def f():\n    return 1\n\n\nclass A"), Some("def f():\n    return 1".into()));
        // A prompt that already holds a finished function: the next definition is not wanted.
        assert_eq!(end("def f():\n    return 1\n", "\ndef g():"), Some(String::new()));
    }

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
        let predicate = request.stop_predicate.unwrap_or_else(|| panic!("code mode has a predicate"));
        assert_eq!(predicate("    return 1\nx"), Some(12));
    }
}
