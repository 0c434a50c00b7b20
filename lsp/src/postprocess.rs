//! From generated text to the suggestion the editor shows.

use crate::stop::{CursorContext, Shape, StopRules};
use crate::syntax::longest_valid_prefix;

/// Characters that editors insert in pairs, or that end a line: when the suggestion ends with the ones that already
/// follow the cursor, they are dropped from it.
const CLOSERS: &[char] = &[')', ']', '}', '"', '\'', ':', ',', ';'];

/// Turns a generation into a suggestion, or `None` when nothing worth showing is left:
/// 1. the stop rules cut it again, now that it is finished (the engine may not have applied them);
/// 2. if it ran out of tokens in the middle of a line after the first, that unfinished line goes;
/// 3. trailing whitespace goes;
/// 4. what duplicates the text after the cursor goes (`f(x█)` + `x)` → `x`);
/// 5. lines at the end go until the suggestion adds no syntax error to the document.
///
/// `text` is the document and `cursor` the byte offset the context was built at.
pub fn finish_suggestion(
    text: &str,
    cursor: usize,
    context: &CursorContext,
    rules: &StopRules,
    generated: &str,
    hit_token_limit: bool,
) -> Option<String> {
    let mut suggestion = generated;
    match rules.cut(suggestion, true) {
        Some(cut) => suggestion = &suggestion[..cut.min(suggestion.len())],
        None if hit_token_limit && rules.shape() == Shape::Block => {
            if let Some(last_break) = suggestion.rfind('\n') {
                suggestion = &suggestion[..last_break];
            }
        }
        None => {}
    }
    suggestion = suggestion.trim_end();
    suggestion = strip_duplicated_suffix(suggestion, &context.line_suffix);
    if suggestion.trim().is_empty() {
        return None;
    }
    let cursor = cursor.min(text.len());
    let (start, end) = syntax_check_region(text, cursor);
    longest_valid_prefix(&text[start..cursor], suggestion, &text[cursor..end]).map(|valid| valid.trim_end().to_owned())
}

/// The part of the document the syntax check parses: from the last top-level definition that starts before the
/// cursor to the next one after the cursor's line. Errors elsewhere cannot change with the suggestion, and parsing
/// one definition instead of the whole file keeps the check cheap in long files.
fn syntax_check_region(text: &str, cursor: usize) -> (usize, usize) {
    let line_starts = |from: usize, to: usize| {
        std::iter::once(from).chain(text[from..to].match_indices('\n').map(move |(i, _)| from + i + 1))
    };
    let starts_definition = |offset: usize| {
        let line = &text[offset..];
        ["def ", "async def ", "class ", "@"].iter().any(|keyword| line.starts_with(keyword))
    };
    let start = line_starts(0, cursor).rfind(|&offset| starts_definition(offset)).unwrap_or(0);
    let next_line = text[cursor..].find('\n').map_or(text.len(), |i| cursor + i + 1);
    let end = line_starts(next_line, text.len())
        .find(|&offset| offset < text.len() && starts_definition(offset))
        .unwrap_or(text.len());
    (start, end)
}

/// Drops the end of `suggestion` that the text after the cursor already has: all of it (trimmed), or else the
/// closing brackets, quotes and punctuation it starts with.
fn strip_duplicated_suffix<'a>(suggestion: &'a str, line_suffix: &str) -> &'a str {
    let after = line_suffix.trim();
    if after.is_empty() {
        return suggestion;
    }
    if let Some(stripped) = suggestion.strip_suffix(after) {
        return stripped.trim_end();
    }
    let closers_len = after.find(|c: char| !CLOSERS.contains(&c)).unwrap_or(after.len());
    (1..=closers_len).rev().find_map(|n| suggestion.strip_suffix(&after[..n])).unwrap_or(suggestion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syntax_check_parses_the_definition_around_the_cursor() {
        let text = "import os\n\ndef f():\n    x = 1\n\n@cache\ndef g():\n    pass\n";
        let cursor = text.find("x = 1").unwrap_or(0);
        let (start, end) = syntax_check_region(text, cursor);
        assert_eq!(&text[start..end], "def f():\n    x = 1\n\n");
        assert_eq!(syntax_check_region(text, 3), (0, text.find("def f").unwrap_or(0)));
        assert_eq!(syntax_check_region(text, text.len()), (text.find("def g").unwrap_or(0), text.len()));
    }

    #[test]
    fn duplicated_closers_are_stripped() {
        assert_eq!(strip_duplicated_suffix("x, y)", ")"), "x, y");
        assert_eq!(strip_duplicated_suffix("x, y):", "):"), "x, y");
        assert_eq!(strip_duplicated_suffix("x, y)", "):"), "x, y");
        assert_eq!(strip_duplicated_suffix("x, y)", "  "), "x, y)");
        assert_eq!(strip_duplicated_suffix("name", "e)"), "name");
        assert_eq!(strip_duplicated_suffix("len(a) + b", " + b"), "len(a)");
    }
}
