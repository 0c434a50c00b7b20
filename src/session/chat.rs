//! phi-1's chat layout, shared by every client that chats with the model (the TUI's chat mode, the HTTP front-end's
//! `/v1/chat/completions`).
//!
//! phi-1 is not a chat model: a conversation is laid out as `Question: … / Answer: …` pairs, the plain format a
//! base model follows best, and the answer ends where the model starts the next question ([`CHAT_STOPS`]).

/// Stop strings of a chat answer: the model starting the next question.
pub const CHAT_STOPS: [&str; 3] = ["\nQuestion:", "Question:", "\n\n\n"];

/// One finished exchange of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub question: String,
    pub answer: String,
}

/// The prompt for `question` after the `earlier` exchanges (oldest first): as many of the most recent ones as fit
/// in about `budget_chars`, then the question, ending with `Answer:` for the model to continue.
pub fn chat_prompt(earlier: &[Exchange], question: &str, budget_chars: usize) -> String {
    let question = format!("Question: {}\nAnswer:", question.trim());
    let mut used = question.len();
    let mut kept: Vec<String> = Vec::new();
    for exchange in earlier.iter().rev() {
        let text = format!("Question: {}\nAnswer: {}\n\n", exchange.question.trim(), exchange.answer.trim());
        if used + text.len() > budget_chars {
            break;
        }
        used += text.len();
        kept.push(text);
    }
    kept.reverse();
    kept.concat() + &question
}

/// [`CHAT_STOPS`] as owned strings, for a request.
pub fn chat_stops() -> Vec<String> {
    CHAT_STOPS.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_exchanges_come_first_to_fit() {
        let earlier = [
            Exchange { question: "What is 1+1?".into(), answer: " 2".into() },
            Exchange { question: "And 3+3?".into(), answer: "6 ".into() },
        ];
        assert_eq!(
            chat_prompt(&earlier, " And 2+2? ", 10_000),
            "Question: What is 1+1?\nAnswer: 2\n\nQuestion: And 3+3?\nAnswer: 6\n\nQuestion: And 2+2?\nAnswer:"
        );
        assert_eq!(
            chat_prompt(&earlier, "And 2+2?", 60),
            "Question: And 3+3?\nAnswer: 6\n\nQuestion: And 2+2?\nAnswer:"
        );
        assert_eq!(chat_prompt(&earlier, "And 2+2?", 10), "Question: And 2+2?\nAnswer:");
    }
}
