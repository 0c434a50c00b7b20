//! The prompt: the text before the cursor, cut to fit the model's context.
//!
//! phi-1 has no fill-in-the-middle training, so the prompt is what comes before the cursor and the stop rules stand
//! in for the text after it. When the file does not fit, its start is cut, keeping the file's imports and the
//! `def`/`class` lines that enclose the cursor. The cut moves in blocks of [`WINDOW_BLOCK_LINES`] lines, so the
//! prompt's start stays the same over many keystrokes and the engine can reuse its cached keys and values.

use std::future::Future;

use crate::backend::{BackendError, FimTokens};
use crate::python::{indent_width, is_blank, is_definition, is_import};

/// The window over the file starts at a multiple of this many lines.
pub const WINDOW_BLOCK_LINES: usize = 16;
/// Other files' outlines may take at most this fraction (1/n) of the prompt budget.
const OTHER_FILES_SHARE: usize = 4;
/// Lines of one other file's outline, at most.
const OUTLINE_MAX_LINES: usize = 40;
/// Lines after the cursor a fill-in-the-middle prompt may hold, at most.
const FIM_SUFFIX_MAX_LINES: usize = 64;
/// More bytes per token than any tokenizer gives on code: windows longer than this many bytes per token of budget
/// cannot fit, so they are not even counted.
const MAX_BYTES_PER_TOKEN: usize = 32;
/// Longest `def` signature (in lines) kept as an enclosing header.
const HEADER_MAX_LINES: usize = 8;

/// Another open file, shown to the model as an outline in comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherFile {
    /// The name the prompt shows (a path relative to the workspace when known).
    pub name: String,
    pub text: String,
}

/// What a prompt is built from.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    pub text: &'a str,
    /// Byte offset of the cursor in `text` (a character boundary).
    pub cursor: usize,
    pub other_files: &'a [OtherFile],
    /// The model's fill-in-the-middle tokens, if it has any.
    pub fim: Option<&'a FimTokens>,
    /// Tokens the prompt may take.
    pub budget: usize,
    /// The window start of the previous prompt for this document. When the window from there still fits, it is
    /// kept: one tokenizer call, and a prompt start the engine has cached.
    pub previous_window_start: Option<usize>,
}

/// A prompt that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    /// Its length in tokens, as counted while fitting it.
    pub tokens: usize,
    /// The first line of the file the window holds in full (0 when nothing was cut).
    pub window_start_line: usize,
}

/// Builds the prompt for `input`, counting tokens with `count` (the backend's tokenizer). The count is called a
/// handful of times: once when everything fits, a binary search over window starts when not.
pub async fn build_prompt<C, F>(input: &PromptInput<'_>, mut count: C) -> Result<Prompt, BackendError>
where
    C: FnMut(String) -> F,
    F: Future<Output = Result<usize, BackendError>>,
{
    let cursor = input.cursor.min(input.text.len());
    let prefix = &input.text[..cursor];
    let other_files = fit_other_files(input.other_files, input.budget / OTHER_FILES_SHARE, &mut count).await?;

    let Some(fim) = input.fim else {
        let window = fit_window(prefix, &other_files, input.budget, input.previous_window_start, &mut count).await?;
        return Ok(Prompt { text: window.text, tokens: window.tokens, window_start_line: window.start_line });
    };

    // Fill in the middle: a share of the budget for the text after the cursor, the rest for the text before.
    let overhead = count(format!("{}{}{}", fim.prefix, fim.suffix, fim.middle)).await?;
    let (suffix, suffix_tokens) = fit_suffix(&input.text[cursor..], input.budget / 4, &mut count).await?;
    let prefix_budget = input.budget.saturating_sub(overhead + suffix_tokens);
    let window = fit_window(prefix, &other_files, prefix_budget, input.previous_window_start, &mut count).await?;
    Ok(Prompt {
        text: format!("{}{}{}{suffix}{}", fim.prefix, window.text, fim.suffix, fim.middle),
        tokens: window.tokens + overhead + suffix_tokens,
        window_start_line: window.start_line,
    })
}

struct Window {
    text: String,
    tokens: usize,
    start_line: usize,
}

/// The other files' outlines as comment blocks, dropping files from the end until they fit `budget`.
async fn fit_other_files<C, F>(files: &[OtherFile], budget: usize, count: &mut C) -> Result<String, BackendError>
where
    C: FnMut(String) -> F,
    F: Future<Output = Result<usize, BackendError>>,
{
    let blocks: Vec<String> = files.iter().filter_map(outline_block).collect();
    for n in (1..=blocks.len()).rev() {
        let text = blocks[..n].concat();
        if count(text.clone()).await? <= budget {
            return Ok(text);
        }
    }
    Ok(String::new())
}

/// `# file: NAME` and the file's imports and `def`/`class` lines, each as a comment, then a blank line.
fn outline_block(file: &OtherFile) -> Option<String> {
    let lines: Vec<&str> =
        file.text.lines().filter(|line| is_import(line) || is_definition(line)).take(OUTLINE_MAX_LINES).collect();
    if lines.is_empty() {
        return None;
    }
    let mut block = format!("# file: {}\n", file.name);
    for line in lines {
        block.push_str("# ");
        block.push_str(line.trim_end());
        block.push('\n');
    }
    block.push('\n');
    Some(block)
}

/// The lines after the cursor for a fill-in-the-middle prompt: as many as fit `budget`, halving from
/// [`FIM_SUFFIX_MAX_LINES`].
async fn fit_suffix<C, F>(after: &str, budget: usize, count: &mut C) -> Result<(String, usize), BackendError>
where
    C: FnMut(String) -> F,
    F: Future<Output = Result<usize, BackendError>>,
{
    let mut lines = FIM_SUFFIX_MAX_LINES;
    while lines > 0 {
        let end = after.match_indices('\n').nth(lines - 1).map_or(after.len(), |(i, _)| i + 1);
        let text = after[..end].to_owned();
        let tokens = count(text.clone()).await?;
        if tokens <= budget {
            return Ok((text, tokens));
        }
        lines /= 2;
    }
    Ok((String::new(), 0))
}

/// The text before the cursor, behind `other_files`, cut to fit `budget`: the window from `previous_start` (or the
/// whole text) if it fits, else the window from the first block boundary after it that fits.
async fn fit_window<C, F>(
    prefix: &str,
    other_files: &str,
    budget: usize,
    previous_start: Option<usize>,
    count: &mut C,
) -> Result<Window, BackendError>
where
    C: FnMut(String) -> F,
    F: Future<Output = Result<usize, BackendError>>,
{
    let lines = Lines::new(prefix);
    let max_bytes = budget.saturating_mul(MAX_BYTES_PER_TOKEN);
    let mut attempt = async |start: usize| -> Result<Option<Window>, BackendError> {
        let text = format!("{other_files}{}", lines.window(start));
        if text.len() > max_bytes {
            return Ok(None);
        }
        let tokens = count(text.clone()).await?;
        Ok((tokens <= budget).then_some(Window { text, tokens, start_line: start }))
    };

    // First the previous start (or the whole text), which usually still fits.
    let first = previous_start.filter(|&start| start % WINDOW_BLOCK_LINES == 0 && start <= lines.cursor_line);
    let first = first.unwrap_or(0);
    if let Some(window) = attempt(first).await? {
        return Ok(window);
    }
    // Then the smallest block-aligned start below it that fits; the fit only improves as the start moves down.
    let (mut low, mut high) = (first / WINDOW_BLOCK_LINES + 1, lines.cursor_line / WINDOW_BLOCK_LINES);
    let mut best = None;
    while low <= high {
        let middle = low + (high - low) / 2;
        match attempt(middle * WINDOW_BLOCK_LINES).await? {
            Some(window) => {
                best = Some(window);
                high = middle - 1;
            }
            None => low = middle + 1,
        }
    }
    if let Some(window) = best {
        return Ok(window);
    }

    // Not even the last block fits: the cursor's line with the kept lines, then without other files, then without
    // the kept lines, then the end of the cursor's line alone.
    let cursor_line = lines.cursor_line;
    let candidates = [
        format!("{other_files}{}", lines.window(cursor_line)),
        lines.window(cursor_line),
        prefix[lines.starts[cursor_line]..].to_owned(),
    ];
    for text in candidates {
        let tokens = count(text.clone()).await?;
        if tokens <= budget {
            return Ok(Window { text, tokens, start_line: cursor_line });
        }
    }
    let mut tail = &prefix[lines.starts[cursor_line]..];
    while !tail.is_empty() {
        // Keep at most the last half, starting after a space so that no word is cut (and a tail without spaces
        // becomes empty, which ends the loop).
        let mut half = tail.len() - tail.len() / 2;
        while !tail.is_char_boundary(half) {
            half += 1;
        }
        let start = tail[half..].find(' ').map_or(tail.len(), |space| half + space + 1);
        tail = &tail[start..];
        let tokens = count(tail.to_owned()).await?;
        if tokens <= budget {
            return Ok(Window { text: tail.to_owned(), tokens, start_line: cursor_line + 1 });
        }
    }
    Err(BackendError::Failed(format!("a prompt budget of {budget} tokens leaves no room for any text")))
}

/// The lines of the text before the cursor, with the ranges (inclusive line numbers) worth keeping when the window
/// starts below them.
struct Lines<'a> {
    prefix: &'a str,
    /// Byte offset of each line's start; the last line is the cursor's.
    starts: Vec<usize>,
    cursor_line: usize,
    /// Imports and the headers of the definitions enclosing the cursor, in file order.
    kept: Vec<(usize, usize)>,
}

impl<'a> Lines<'a> {
    fn new(prefix: &'a str) -> Self {
        let starts: Vec<usize> = std::iter::once(0).chain(prefix.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let cursor_line = starts.len() - 1;
        let mut lines = Self { prefix, starts, cursor_line, kept: Vec::new() };
        let mut kept = lines.imports();
        kept.extend(lines.enclosing_headers());
        kept.sort_unstable();
        lines.kept = kept;
        lines
    }

    fn line(&self, index: usize) -> &'a str {
        let end = self.starts.get(index + 1).map_or(self.prefix.len(), |&next| next - 1);
        &self.prefix[self.starts[index]..end]
    }

    /// Top-level imports above the cursor's line, with their continuation lines.
    fn imports(&self) -> Vec<(usize, usize)> {
        let mut ranges = Vec::new();
        let mut index = 0;
        while index < self.cursor_line {
            let line = self.line(index);
            if !is_import(line) {
                index += 1;
                continue;
            }
            let mut end = index;
            let parenthesized = line.contains('(') && !line.contains(')');
            while end + 1 < self.cursor_line {
                let current = self.line(end).trim_end();
                let continues = if parenthesized { !current.contains(')') } else { current.ends_with('\\') };
                if !continues {
                    break;
                }
                end += 1;
            }
            ranges.push((index, end));
            index = end + 1;
        }
        ranges
    }

    /// The `def` and `class` lines (whole signatures) of the definitions the cursor is in, innermost last.
    fn enclosing_headers(&self) -> Vec<(usize, usize)> {
        let mut level = indent_width(self.line(self.cursor_line));
        let mut headers = Vec::new();
        for index in (0..self.cursor_line).rev() {
            if level == 0 {
                break;
            }
            let line = self.line(index);
            if is_blank(line) || line.trim_start().starts_with('#') {
                continue;
            }
            let indent = indent_width(line);
            if indent >= level {
                continue;
            }
            level = indent;
            if is_definition(line) {
                let mut end = index;
                while end + 1 < self.cursor_line
                    && end - index + 1 < HEADER_MAX_LINES
                    && !self.line(end).trim_end().ends_with(':')
                {
                    end += 1;
                }
                headers.push((index, end));
            }
        }
        headers
    }

    /// The window from line `start` to the cursor, after the kept lines above `start`.
    fn window(&self, start: usize) -> String {
        let mut text = String::new();
        let mut next_unwritten = 0;
        for &(first, last) in &self.kept {
            let first = first.max(next_unwritten);
            let last = last.min(start.saturating_sub(1));
            if first >= start || first > last {
                continue;
            }
            for index in first..=last {
                text.push_str(self.line(index));
                text.push('\n');
            }
            next_unwritten = last + 1;
        }
        text.push_str(&self.prefix[self.starts[start.min(self.cursor_line)]..]);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_tokens;

    fn build(text_with_cursor: &str, budget: usize, other_files: &[OtherFile], fim: Option<&FimTokens>) -> Prompt {
        let cursor = text_with_cursor.find('█').unwrap_or(text_with_cursor.len());
        let text = text_with_cursor.replace('█', "");
        let input = PromptInput { text: &text, cursor, other_files, fim, budget, previous_window_start: None };
        let count = |text: String| async move { Ok(fake_tokens(&text).len()) };
        futures::executor::block_on(build_prompt(&input, count)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Imports, a class and a method, then `lines` assignments in the method, and the cursor on a new line.
    fn long_method(lines: usize) -> String {
        let mut text =
            "import os\nfrom typing import (\n    List,\n)\n\nclass Model:\n    def predict(self, xs):\n".to_owned();
        for i in 0..lines {
            text.push_str(&format!("        x{i} = {i}\n"));
        }
        text.push_str("        █");
        text
    }

    #[test]
    fn a_file_that_fits_is_sent_whole() {
        let prompt = build("import os\n\ndef f():\n    █\n\nx = 1\n", 100, &[], None);
        assert_eq!(prompt.text, "import os\n\ndef f():\n    ");
        assert_eq!(prompt.window_start_line, 0);
        assert_eq!(prompt.tokens, fake_tokens(&prompt.text).len());
    }

    #[test]
    fn a_cut_keeps_imports_and_enclosing_headers() {
        let source = long_method(41);
        let prompt = build(&source, 150, &[], None);
        assert_eq!(prompt.window_start_line, 32);
        let kept = "import os\nfrom typing import (\n    List,\n)\nclass Model:\n    def predict(self, xs):\n";
        let text = source.replace('█', "");
        let window_start = text.match_indices('\n').nth(31).map_or(0, |(i, _)| i + 1);
        assert_eq!(prompt.text, format!("{kept}{}", &text[window_start..]));
        assert!(prompt.tokens <= 150);
    }

    #[test]
    fn the_window_start_moves_in_blocks_as_the_file_grows() {
        let mut previous: Option<Prompt> = None;
        let mut moves = 0;
        for lines in 30..90 {
            let prompt = build(&long_method(lines), 200, &[], None);
            assert!(prompt.tokens <= 200);
            assert_eq!(prompt.window_start_line % WINDOW_BLOCK_LINES, 0);
            if let Some(previous) = previous {
                if previous.window_start_line == prompt.window_start_line {
                    // Same start: the earlier prompt (up to its cursor line) is a prefix of this one, so an engine
                    // reuses all of it.
                    let stable = previous.text.trim_end_matches(' ');
                    assert!(prompt.text.starts_with(stable), "{lines} lines: prompt start changed");
                } else {
                    assert!(prompt.window_start_line > previous.window_start_line);
                    moves += 1;
                }
            }
            previous = Some(prompt);
        }
        // 60 more lines of about 6 tokens each: the window moved, but only a few times.
        assert!((2..=5).contains(&moves), "{moves} moves");
    }

    #[test]
    fn a_previous_window_start_that_still_fits_is_kept() {
        let source = long_method(41);
        let text = source.replace('█', "");
        let calls = std::cell::Cell::new(0);
        let count = |text: String| {
            calls.set(calls.get() + 1);
            async move { Ok(fake_tokens(&text).len()) }
        };
        let cursor = text.len();
        let input = PromptInput {
            text: &text,
            cursor,
            other_files: &[],
            fim: None,
            budget: 150,
            previous_window_start: Some(32),
        };
        let prompt = futures::executor::block_on(build_prompt(&input, count)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((prompt.window_start_line, calls.get()), (32, 1));
        // A later start is kept too (stability over the last few lines of context).
        let input = PromptInput { previous_window_start: Some(48), ..input };
        calls.set(0);
        let prompt = futures::executor::block_on(build_prompt(&input, count)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((prompt.window_start_line, calls.get()), (48, 1));
        // One that no longer fits moves down to the next start that does.
        let input = PromptInput { budget: 100, previous_window_start: Some(16), ..input };
        let prompt = futures::executor::block_on(build_prompt(&input, count)).unwrap_or_else(|e| panic!("{e}"));
        assert!(prompt.window_start_line > 16 && prompt.window_start_line % WINDOW_BLOCK_LINES == 0, "{prompt:?}");
        assert!(prompt.tokens <= 100);
    }

    #[test]
    fn other_files_come_first_as_commented_outlines() {
        let others = [
            OtherFile { name: "pkg/util.py".into(), text: "import re\n\ndef slug(s):\n    return s\nX = 1\n".into() },
            OtherFile { name: "empty.py".into(), text: "x = 1\n".into() },
        ];
        let prompt = build("def f():\n    █", 400, &others, None);
        assert_eq!(prompt.text, "# file: pkg/util.py\n# import re\n# def slug(s):\n\ndef f():\n    ");
        // A quarter of a small budget has no room for them.
        let prompt = build("def f():\n    █", 20, &others, None);
        assert_eq!(prompt.text, "def f():\n    ");
    }

    #[test]
    fn fill_in_the_middle_models_get_the_text_after_the_cursor() {
        let fim = FimTokens { prefix: "<PRE>".into(), suffix: "<SUF>".into(), middle: "<MID>".into() };
        let prompt = build("def f(x):\n    █\n    return y\n", 200, &[], Some(&fim));
        assert_eq!(prompt.text, "<PRE>def f(x):\n    <SUF>\n    return y\n<MID>");
    }

    #[test]
    fn a_tiny_budget_keeps_the_end_of_the_cursor_line() {
        let prompt = build("x = 1\ny = some_function(argument_one, argument_two, █", 4, &[], None);
        assert!(prompt.tokens <= 4, "{prompt:?}");
        assert_eq!(prompt.text, "argument_two, ");
        // Multi-byte characters never split.
        let prompt = build("s = 'ééééééééééééé ééééééééééé █", 3, &[], None);
        assert_eq!(prompt.text, "ééééééééééé ");
    }
}
