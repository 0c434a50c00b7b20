//! Where a completion ends: Python block rules over the generated text, applied while the model generates (as the
//! engine's stop predicate) and again to the finished text.

use std::sync::Arc;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}
