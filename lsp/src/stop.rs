//! Where a completion ends: Python block rules over the generated text, applied while the model generates (as the
//! engine's stop predicate) and again to the finished text.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::StopPredicate;
use crate::python::{indent_width, is_blank, LexState, Lexeme};
use crate::settings::LineMode;

/// What the text around the cursor says about a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorContext {
    /// The cursor's line up to the cursor.
    pub line_prefix: String,
    /// The cursor's line after the cursor (without the line break).
    pub line_suffix: String,
    /// The next line after the cursor's line that is not blank, trimmed.
    pub next_line: Option<String>,
    /// Brackets, string and comment state at the cursor.
    pub lex: LexState,
}

impl CursorContext {
    /// `cursor` is a byte offset into `text` (clamped to it, and rounded down to a character boundary).
    pub fn new(text: &str, cursor: usize) -> Self {
        let mut cursor = cursor.min(text.len());
        while !text.is_char_boundary(cursor) {
            cursor -= 1;
        }
        let (before, after) = text.split_at(cursor);
        let line_prefix = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        let (line_suffix, below) = after.split_once('\n').unwrap_or((after, ""));
        Self {
            line_prefix: line_prefix.to_owned(),
            line_suffix: line_suffix.strip_suffix('\r').unwrap_or(line_suffix).to_owned(),
            next_line: below.lines().find(|line| !is_blank(line)).map(|line| line.trim().to_owned()),
            lex: LexState::at_end_of(before),
        }
    }

    /// Whether the cursor is in the middle of a line: something other than whitespace follows it.
    pub fn mid_line(&self) -> bool {
        !is_blank(&self.line_suffix)
    }

    /// Whether the cursor ends a line that opens a block (`def f():`), so what follows must be indented deeper.
    pub fn opens_block(&self) -> bool {
        self.lex.in_plain_code() && self.line_prefix.trim_end().ends_with(':')
    }
}

/// How much a completion may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// The rest of the cursor's line: the cursor is mid-line, or the client shows completions in a popup list.
    RestOfLine,
    /// One line: the rest of the cursor's line, or the first line of the block the cursor's line opens.
    OneLine,
    /// Up to the end of the cursor's block.
    Block,
}

impl Shape {
    /// The shape for a request: mid-line and popup (`textDocument/completion`) requests get the rest of the line.
    pub fn choose(context: &CursorContext, mode: LineMode, popup: bool) -> Self {
        if popup || context.mid_line() {
            Self::RestOfLine
        } else if mode == LineMode::SingleLine {
            Self::OneLine
        } else {
            Self::Block
        }
    }
}

/// The stop rules for one request. The completion ends:
/// - [`Shape::RestOfLine`]: at the first line break; [`Shape::OneLine`]: at the first line break after some text;
/// - at a line indented less than the cursor's block (or not deeper than the cursor's line, when that line opens a
///   block), unless that line continues a bracket or a string, or is a comment;
/// - at a blank line followed by a top-level (unindented) line;
/// - before a closing bracket that nothing opened;
/// - before a line that repeats the next line of the file.
///
/// Trailing blank lines before a stop are dropped with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRules {
    shape: Shape,
    line_prefix: String,
    next_line: Option<String>,
    lex: LexState,
    /// The block's indentation; `None` when the cursor's line is blank (the first generated line sets it).
    scope: Option<usize>,
    opens_block: bool,
}

impl StopRules {
    pub fn new(context: &CursorContext, shape: Shape) -> Self {
        let prefix_blank = is_blank(&context.line_prefix);
        Self {
            shape,
            line_prefix: context.line_prefix.clone(),
            next_line: context.next_line.clone().filter(|line| !line.is_empty()),
            lex: context.lex.clone(),
            scope: (!prefix_blank).then(|| indent_width(&context.line_prefix)),
            opens_block: context.opens_block(),
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// These rules as the engine's stop predicate (called on unfinished text).
    pub fn predicate(self: &Arc<Self>) -> StopPredicate {
        let rules = Arc::clone(self);
        Arc::new(move |generated: &str| rules.cut(generated, false))
    }

    /// The byte offset at which `generated` should end, if a rule has fired. With `finished`, the text is all there
    /// is, so its last line counts as complete.
    pub fn cut(&self, generated: &str, finished: bool) -> Option<usize> {
        let mut lex = self.lex.clone();
        let mut scope = self.scope;
        // One-line completions end at the first line break after text; the cursor's own line counts as text unless
        // it opens a block (then the block's first line is wanted).
        let mut text_seen = !is_blank(&self.line_prefix) && !self.opens_block;
        let mut line = Line { start: 0, index: 0, has_content: false, in_code: lex.in_plain_code(), cut_before: 0 };
        // Where the run of blank lines before the current line began (the line break before the first of them).
        let mut blank_run: Option<usize> = None;

        let mut i = 0;
        while i < generated.len() {
            let rest = &generated[i..];
            let c = rest.chars().next().unwrap_or(' ');
            if !line.has_content && !c.is_whitespace() {
                line.has_content = true;
                text_seen = true;
                line.cut_before = if line.index == 0 { 0 } else { blank_run.unwrap_or(line.start - 1) };
                if line.index > 0 || is_blank(&self.line_prefix) {
                    let mut indent = indent_width(&generated[line.start..i]);
                    if line.index == 0 {
                        indent += indent_width(&self.line_prefix);
                    }
                    match scope {
                        None => scope = Some(indent),
                        Some(scope) if line.index > 0 && line.in_code => {
                            let comment = c == '#';
                            let dedent = indent < scope || (self.opens_block && indent <= scope);
                            let new_top_level = blank_run.is_some() && indent == 0;
                            if (dedent && !comment) || new_top_level {
                                return Some(line.cut_before);
                            }
                        }
                        Some(_) => {}
                    }
                }
                blank_run = None;
            }
            let (len, lexeme) = lex.step(rest);
            match lexeme {
                Some(Lexeme::Newline) => {
                    match self.shape {
                        Shape::RestOfLine => return Some(i),
                        Shape::OneLine if text_seen => return Some(i),
                        _ => {}
                    }
                    if let Some(cut) = self.repeats_next_line(&generated[line.start..i], &line) {
                        return Some(cut);
                    }
                    if !line.has_content && line.index > 0 && blank_run.is_none() {
                        blank_run = Some(line.start - 1);
                    }
                    line = Line {
                        start: i + 1,
                        index: line.index + 1,
                        has_content: false,
                        in_code: lex.in_plain_code(),
                        cut_before: 0,
                    };
                }
                Some(Lexeme::UnmatchedClose) => return Some(i),
                _ => {}
            }
            i += len;
        }
        if finished {
            return self.repeats_next_line(&generated[line.start..], &line);
        }
        None
    }

    /// If a complete line of generated text repeats the file's next line, where to cut.
    fn repeats_next_line(&self, text: &str, line: &Line) -> Option<usize> {
        let next = self.next_line.as_deref()?;
        if !line.has_content {
            return None;
        }
        let repeated =
            if line.index == 0 { format!("{}{text}", self.line_prefix).trim() == next } else { text.trim() == next };
        repeated.then_some(line.cut_before)
    }
}

/// The generated line the rules are looking at.
struct Line {
    /// Byte offset of its first character.
    start: usize,
    /// 0 for the rest of the cursor's line.
    index: usize,
    has_content: bool,
    /// Whether it starts outside brackets and strings (only then does its indentation mean anything).
    in_code: bool,
    /// Where to cut to drop this line (and the blank lines before it).
    cut_before: usize,
}

/// Where a generation ends, as data rather than as a closure, so that it can travel with a request to wherever the
/// model runs (the session daemon across a socket) and become a [`StopPredicate`] there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopRule {
    /// An editor completion: the Python block rules of [`StopRules`].
    Block(StopRules),
    /// A code-mode continuation of `prompt` (the chat TUI): it ends where [`code_block_end`] says.
    EndOfDefinition { prompt: String },
}

impl StopRule {
    /// The byte offset at which the unfinished `generated` text should end, if a rule has fired.
    pub fn cut(&self, generated: &str) -> Option<usize> {
        match self {
            Self::Block(rules) => rules.cut(generated, false),
            Self::EndOfDefinition { prompt } => code_block_end(prompt, generated),
        }
    }

    /// This rule as the engine's stop predicate.
    pub fn into_predicate(self) -> StopPredicate {
        Arc::new(move |generated: &str| self.cut(generated))
    }
}

/// Where a code-mode continuation should end: the byte offset in `generated`, or `None` to go on.
///
/// Looking at `prompt + generated` line by line, the answer ends before the first line that starts a new top-level
/// statement (anything at column 0 other than `else`/`elif`/`except`/`finally` or a closing bracket, outside a
/// triple-quoted string, as [`LexState`] lexes them) once the current top-level statement has an indented body, and
/// only in generated text.
/// Blank lines before that line are dropped. So `def f():` + `    return 1\n\ndef g` ends after `return 1`, and a
/// comment or `print(…)` at column 0 after the body ends it too.
pub fn code_block_end(prompt: &str, generated: &str) -> Option<usize> {
    let text = format!("{prompt}{generated}");
    let generated_start = prompt.len();
    let mut body_seen = false;
    let mut lex = LexState::default();
    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..].find('\n').map(|i| line_start + i);
        let complete = line_end.is_some();
        let line = &text[line_start..line_end.unwrap_or(text.len())];
        // Only a triple-quoted string outlives its line.
        let string_at_start = lex.string.is_some();
        let mut i = line_start;
        let after_line = line_end.map_or(text.len(), |end| end + 1);
        while i < after_line {
            i += lex.step(&text[i..]).0;
        }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `source` at the `█` marker and applies the rules of `shape` to `generated`.
    fn cut(source: &str, shape: Shape, generated: &str) -> String {
        let cursor = source.find('█').unwrap_or(source.len());
        let text = source.replace('█', "");
        let rules = StopRules::new(&CursorContext::new(&text, cursor), shape);
        let end = rules.cut(generated, true).unwrap_or(generated.len());
        generated[..end].to_owned()
    }

    #[test]
    fn context_splits_the_cursor_line() {
        let source = "a = 1\nb = f(x█)  \n\n  c = 2\n";
        let context = CursorContext::new(&source.replace('█', ""), source.find('█').unwrap_or(0));
        assert_eq!(context.line_prefix, "b = f(x");
        assert_eq!(context.line_suffix, ")  ");
        assert_eq!(context.next_line.as_deref(), Some("c = 2"));
        assert!(context.mid_line());
        assert_eq!(context.lex.brackets, vec!['(']);
    }

    #[test]
    fn dedent_ends_a_block() {
        let source = "def f(x):\n    █";
        assert_eq!(
            cut(source, Shape::Block, "y = x + 1\n    return y\n\ndef g():\n    pass"),
            "y = x + 1\n    return y"
        );
        assert_eq!(cut(source, Shape::Block, "return x\nprint(f(1))"), "return x");
    }

    #[test]
    fn a_line_that_opens_a_block_needs_deeper_lines() {
        let source = "class A:\n    def f(self):█";
        assert_eq!(cut(source, Shape::Block, "\n        return 1\n    def g(self):"), "\n        return 1");
    }

    #[test]
    fn continuation_lines_and_comments_may_dedent() {
        let source = "def f():\n    x = g(█";
        assert_eq!(cut(source, Shape::Block, "1,\n2)\n# note\n    return x\nz = 1"), "1,\n2)\n# note\n    return x");
    }

    #[test]
    fn one_line_shape_takes_the_first_line_of_a_new_block() {
        assert_eq!(cut("def f(x):█", Shape::OneLine, "\n    return x\n"), "\n    return x");
        assert_eq!(cut("x = █", Shape::OneLine, "1\ny = 2"), "1");
        assert_eq!(cut("def f(x):█", Shape::RestOfLine, "\n    return x\n"), "");
    }

    #[test]
    fn unmatched_closers_end_the_completion() {
        assert_eq!(cut("print(█", Shape::Block, "a, (b))\nx)"), "a, (b))\nx");
        assert_eq!(cut("x = █", Shape::Block, "[1, 2)"), "[1, 2");
        assert_eq!(cut("s = \"█", Shape::Block, "a)\" + f(1)"), "a)\" + f(1)");
    }

    #[test]
    fn a_repeat_of_the_next_line_is_dropped() {
        let source = "def f(x):\n    █\n    return y\n";
        assert_eq!(cut(source, Shape::Block, "y = x * 2\n    return y\n"), "y = x * 2");
        assert_eq!(cut("def f(x):\n    █\n    return x", Shape::Block, "return x"), "");
        let source = "def f(x):\n    y = █\n    return y\n";
        assert_eq!(cut(source, Shape::Block, "x * 2\n\n    return y"), "x * 2");
    }

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
    fn quotes_are_lexed_as_python_lexes_them() {
        // A triple quote inside a one-line string, or after a `#` inside one, is not a docstring.
        let prompt = "def f():\n    s = '\"\"\"'\n";
        assert_eq!(end(prompt, "    return s\nx = 1"), Some("    return s".into()));
        let prompt = "def f():\n    s = \"#\" + '''\n";
        assert_eq!(end(prompt, "x = 1\n'''\n    return s\ny = 2"), Some("x = 1\n'''\n    return s".into()));
    }

    #[test]
    fn top_level_code_before_any_body_goes_on() {
        assert_eq!(end("import math\n", "def area(r):\n    return math.pi * r * r\n"), None);
        assert_eq!(end("import math\n", "import os\nx = 1\n"), None);
        assert_eq!(end("import math\n", "def f():\n    return 1\n\n\nclass A"), Some("def f():\n    return 1".into()));
        // A prompt that already holds a finished function: the next definition is not wanted.
        assert_eq!(end("def f():\n    return 1\n", "\ndef g():"), Some(String::new()));
    }
}
