//! Just enough Python lexing for the completion rules and the chat TUI's code mode (`stop::code_block_end`):
//! brackets, strings, comments and indentation. It never fails: the code around a cursor is usually unfinished, so
//! anything odd is taken as it comes.

/// A bracket, string or comment boundary found by [`LexState::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lexeme {
    Newline,
    Open,
    /// A closing bracket that matches the innermost open one.
    Close,
    /// A closing bracket with no open bracket to match, or the wrong kind.
    UnmatchedClose,
}

/// Where a lexer stands: the open brackets (innermost last), and whether it is inside a string or a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LexState {
    pub brackets: Vec<char>,
    pub string: Option<StringDelimiter>,
    pub comment: bool,
}

/// The quote that ends the string the lexer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StringDelimiter {
    pub quote: char,
    pub triple: bool,
}

impl LexState {
    /// Lexes the text before a cursor. The brackets are forgotten at every line that starts a top-level `def`,
    /// `class`, decorator or import, so one unclosed bracket far above (a typo) does not skew the rules forever.
    pub fn at_end_of(text: &str) -> Self {
        let mut state = Self::default();
        let mut at_line_start = true;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if at_line_start && state.string.is_none() && starts_top_level_statement(rest) {
                state.brackets.clear();
            }
            let (len, lexeme) = state.step(rest);
            at_line_start = lexeme == Some(Lexeme::Newline);
            i += len;
        }
        state
    }

    /// Whether the lexer is in plain code: not in a string, a comment or brackets. Only there does a line's
    /// indentation mean a block.
    pub fn in_plain_code(&self) -> bool {
        self.brackets.is_empty() && self.string.is_none() && !self.comment
    }

    /// Consumes the first character (or escape, or triple quote) of `rest`, which must not be empty, and returns
    /// how many bytes it took and what it was.
    pub fn step(&mut self, rest: &str) -> (usize, Option<Lexeme>) {
        let Some(c) = rest.chars().next() else { return (1, None) };
        let len = c.len_utf8();
        if c == '\n' {
            self.comment = false;
            if self.string.is_some_and(|s| !s.triple) {
                // An unterminated one-line string ends with its line (a syntax error the user is still typing).
                self.string = None;
            }
            return (1, Some(Lexeme::Newline));
        }
        if self.comment {
            return (len, None);
        }
        if let Some(delimiter) = self.string {
            if c == '\\' {
                // Skip the escaped character, but never a line break: lines must still be seen.
                let escaped = rest[1..].chars().next().filter(|&e| e != '\n').map_or(0, char::len_utf8);
                return (1 + escaped, None);
            }
            if c == delimiter.quote {
                if !delimiter.triple {
                    self.string = None;
                    return (1, None);
                }
                if rest.starts_with(triple(c)) {
                    self.string = None;
                    return (3, None);
                }
            }
            return (len, None);
        }
        match c {
            '#' => {
                self.comment = true;
                (1, None)
            }
            '\'' | '"' => {
                let is_triple = rest.starts_with(triple(c));
                self.string = Some(StringDelimiter { quote: c, triple: is_triple });
                (if is_triple { 3 } else { 1 }, None)
            }
            '(' | '[' | '{' => {
                self.brackets.push(c);
                (1, Some(Lexeme::Open))
            }
            ')' | ']' | '}' => {
                let opener = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if self.brackets.last() == Some(&opener) {
                    self.brackets.pop();
                    (1, Some(Lexeme::Close))
                } else {
                    (1, Some(Lexeme::UnmatchedClose))
                }
            }
            _ => (len, None),
        }
    }
}

fn triple(quote: char) -> &'static str {
    if quote == '"' {
        "\"\"\""
    } else {
        "'''"
    }
}

/// Whether a line (at column 0) starts a statement that can only be top level: lines like these end any bracket
/// left open above them.
fn starts_top_level_statement(line: &str) -> bool {
    ["def ", "async def ", "class ", "@", "import ", "from "].iter().any(|p| line.starts_with(p))
}

/// The width of a line's leading whitespace (a tab counts to the next multiple of 8, as Python does).
pub fn indent_width(line: &str) -> usize {
    let mut width = 0;
    for c in line.chars() {
        match c {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            '\x0c' => width = 0,
            _ => break,
        }
    }
    width
}

/// Whether a line holds nothing but whitespace.
pub fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Whether a line is a top-level import (`import x`, `from x import y`).
pub fn is_import(line: &str) -> bool {
    line.starts_with("import ") || (line.starts_with("from ") && line.contains(" import"))
}

/// Whether a line (after its indentation) starts a function or class definition.
pub fn is_definition(line: &str) -> bool {
    let code = line.trim_start();
    code.starts_with("def ") || code.starts_with("async def ") || code.starts_with("class ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let state = LexState::at_end_of("x = foo(')', \"(\", # )\n    '''(\n)''', [1");
        assert_eq!(state.brackets, vec!['(', '[']);
        assert!(state.string.is_none());
    }

    #[test]
    fn an_open_docstring_is_remembered() {
        let state = LexState::at_end_of("def f():\n    \"\"\"Add (two");
        assert_eq!(state.string, Some(StringDelimiter { quote: '"', triple: true }));
        assert!(state.brackets.is_empty());
    }

    #[test]
    fn escapes_do_not_end_strings() {
        let state = LexState::at_end_of(r#"s = "a\"(" + ("#);
        assert_eq!(state.brackets, vec!['(']);
    }

    #[test]
    fn top_level_definitions_forget_stale_brackets() {
        let state = LexState::at_end_of("x = foo(1,\n\ndef g():\n    return [");
        assert_eq!(state.brackets, vec!['[']);
    }

    #[test]
    fn unmatched_closers_are_reported() {
        let mut state = LexState::default();
        assert_eq!(state.step("("), (1, Some(Lexeme::Open)));
        assert_eq!(state.step("]"), (1, Some(Lexeme::UnmatchedClose)));
        assert_eq!(state.step(")"), (1, Some(Lexeme::Close)));
        assert_eq!(state.step(")"), (1, Some(Lexeme::UnmatchedClose)));
    }

    #[test]
    fn indentation_widths() {
        assert_eq!(indent_width("    x"), 4);
        assert_eq!(indent_width("\tx"), 8);
        assert_eq!(indent_width("  \tx"), 8);
        assert_eq!(indent_width(""), 0);
    }
}
