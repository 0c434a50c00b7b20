//! A multi-line text buffer with a cursor: the message being typed, and the one-line prompts.

use unicode_width::UnicodeWidthChar;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    text: String,
    /// A byte offset into `text`, always on a character boundary.
    cursor: usize,
}

impl Input {
    pub fn new(text: &str) -> Self {
        Self { text: text.to_owned(), cursor: text.len() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn set(&mut self, text: &str) {
        self.text = text.to_owned();
        self.cursor = self.text.len();
    }

    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    pub fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    /// Inserts pasted text (CRLF and CR become LF; tabs stay).
    pub fn insert_str(&mut self, s: &str) {
        let s = s.replace("\r\n", "\n").replace('\r', "\n");
        self.text.insert_str(self.cursor, &s);
        self.cursor += s.len();
    }

    fn prev_boundary(&self) -> usize {
        self.text[..self.cursor].char_indices().next_back().map(|(i, _)| i).unwrap_or(0)
    }

    fn next_boundary(&self) -> usize {
        self.text[self.cursor..].chars().next().map(|c| self.cursor + c.len_utf8()).unwrap_or(self.cursor)
    }

    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            let start = self.prev_boundary();
            self.text.replace_range(start..self.cursor, "");
            self.cursor = start;
        }
    }

    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            let end = self.next_boundary();
            self.text.replace_range(self.cursor..end, "");
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.prev_boundary();
    }

    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map(|i| i + 1).unwrap_or(0)
    }

    fn line_end(&self) -> usize {
        self.text[self.cursor..].find('\n').map(|i| self.cursor + i).unwrap_or(self.text.len())
    }

    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    pub fn end(&mut self) {
        self.cursor = self.line_end();
    }

    pub fn on_first_line(&self) -> bool {
        !self.text[..self.cursor].contains('\n')
    }

    pub fn on_last_line(&self) -> bool {
        !self.text[self.cursor..].contains('\n')
    }

    /// Moves to the same column of the line above (or below); false at the first (last) line.
    pub fn vertical(&mut self, up: bool) -> bool {
        if (up && self.on_first_line()) || (!up && self.on_last_line()) {
            return false;
        }
        let column = self.text[self.line_start()..self.cursor].chars().count();
        let target_start = if up {
            let this_start = self.line_start();
            self.text[..this_start - 1].rfind('\n').map(|i| i + 1).unwrap_or(0)
        } else {
            self.line_end() + 1
        };
        let line_end = self.text[target_start..].find('\n').map(|i| target_start + i).unwrap_or(self.text.len());
        let line = &self.text[target_start..line_end];
        let offset = line.char_indices().nth(column).map(|(i, _)| i).unwrap_or(line.len());
        self.cursor = target_start + offset;
        true
    }

    /// Ctrl-U: deletes from the start of the line to the cursor.
    pub fn kill_to_line_start(&mut self) {
        let start = self.line_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Ctrl-K: deletes from the cursor to the end of the line.
    pub fn kill_to_line_end(&mut self) {
        let end = self.line_end();
        self.text.replace_range(self.cursor..end, "");
    }

    /// Ctrl-W: deletes the word (or one other character) before the cursor, and the spaces after it.
    pub fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end_matches([' ', '\t']);
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let word_start = trimmed.char_indices().rev().take_while(|(_, c)| is_word(*c)).last().map(|(i, _)| i);
        let start = match word_start {
            Some(i) => i,
            None => trimmed.char_indices().next_back().map(|(i, _)| i).unwrap_or(0),
        };
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    pub fn word_left(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        self.cursor =
            trimmed.char_indices().rev().find(|(_, c)| c.is_whitespace()).map(|(i, c)| i + c.len_utf8()).unwrap_or(0);
    }

    pub fn word_right(&mut self) {
        let after = &self.text[self.cursor..];
        let skip_space = after.len() - after.trim_start().len();
        let rest = &after[skip_space..];
        let word = rest.find(char::is_whitespace).unwrap_or(rest.len());
        self.cursor += skip_space + word;
    }

    /// The text laid out in rows of at most `width` columns, and the cursor's (row, column).
    pub fn layout(&self, width: usize) -> (Vec<String>, (usize, usize)) {
        let width = width.max(1);
        let mut rows = vec![String::new()];
        let mut col = 0;
        let mut cursor = (0, 0);
        for (i, c) in self.text.char_indices() {
            if i == self.cursor {
                cursor = (rows.len() - 1, col);
            }
            if c == '\n' {
                rows.push(String::new());
                col = 0;
                continue;
            }
            let (shown, w) = if c == '\t' { ("    ".to_owned(), 4) } else { (c.to_string(), c.width().unwrap_or(0)) };
            if col + w > width {
                rows.push(String::new());
                col = 0;
            }
            if let Some(row) = rows.last_mut() {
                row.push_str(&shown);
            }
            col += w;
        }
        if self.cursor >= self.text.len() {
            if col >= width {
                rows.push(String::new());
                col = 0;
            }
            cursor = (rows.len() - 1, col);
        }
        (rows, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_and_moves() {
        let mut input = Input::default();
        for c in "héllo".chars() {
            input.insert(c);
        }
        input.left();
        input.backspace();
        assert_eq!(input.text(), "hélo");
        input.home();
        input.delete();
        assert_eq!(input.text(), "élo");
        input.end();
        input.insert_str("\r\nworld\tx");
        assert_eq!(input.text(), "élo\nworld\tx");
        assert!(input.on_last_line() && !input.on_first_line());
        assert!(input.vertical(true));
        assert_eq!(input.cursor(), "élo".len());
        assert!(!input.vertical(true));
        assert!(input.vertical(false));
        input.end();
        input.delete_word();
        assert_eq!(input.text(), "élo\nworld\t");
        input.kill_to_line_start();
        assert_eq!(input.text(), "élo\n");
        assert_eq!(input.take(), "élo\n");
        assert!(input.is_empty());
    }

    #[test]
    fn words() {
        let mut input = Input::new("def foo(bar): pass");
        input.word_left();
        assert_eq!(&input.text()[input.cursor()..], "pass");
        input.word_left();
        input.word_right();
        assert_eq!(&input.text()[input.cursor()..], " pass");
        input.delete_word();
        assert_eq!(input.text(), "def foo(bar) pass");
    }

    #[test]
    fn lays_out_rows_with_the_cursor() {
        let input = Input::new("abcdef\ngh");
        assert_eq!(input.layout(4), (vec!["abcd".into(), "ef".into(), "gh".into()], (2, 2)));
        let input = Input::new("abcd");
        assert_eq!(input.layout(4), (vec!["abcd".into(), String::new()], (1, 0)));
    }
}
