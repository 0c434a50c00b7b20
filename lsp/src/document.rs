//! Open documents, as the client's `didOpen`/`didChange`/`didClose` describe them.

use crate::position::{byte_offset, Utf16Position};

/// One open document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    pub version: i32,
    pub language_id: String,
    /// Whether the latest edit only removed text. Automatic requests right after a deletion get no completion: a
    /// suggestion popping up while the user backspaces is noise.
    pub last_edit_deleted: bool,
}

impl Document {
    pub fn new(text: String, version: i32, language_id: String) -> Self {
        Self { text, version, language_id, last_edit_deleted: false }
    }

    /// Only Python gets completions: phi-1 knows no other language.
    pub fn is_python(&self) -> bool {
        self.language_id == "python"
    }

    /// Applies one content change: the text between `range`'s ends (UTF-16 positions, clamped to the document) is
    /// replaced by `new_text`; without a range, `new_text` is the whole document.
    pub fn apply_change(&mut self, range: Option<(Utf16Position, Utf16Position)>, new_text: &str) {
        match range {
            Some((start, end)) => {
                let (a, b) = (byte_offset(&self.text, start), byte_offset(&self.text, end));
                // A reversed range is a client bug; replacing what it spans does the least harm.
                let (start, end) = (a.min(b), a.max(b));
                self.last_edit_deleted = end > start && new_text.is_empty();
                self.text.replace_range(start..end, new_text);
            }
            None => {
                self.last_edit_deleted = new_text.len() < self.text.len();
                self.text = new_text.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Utf16Position {
        Utf16Position { line, character }
    }

    #[test]
    fn incremental_changes_count_utf16_units() {
        let mut doc = Document::new("s = 'é🐍'\nx = 1\n".into(), 1, "python".into());
        // Insert after the snake: 5 units (`s = '`) + 1 (é) + 2 (🐍) = 8.
        doc.apply_change(Some((pos(0, 8), pos(0, 8))), "!");
        assert_eq!(doc.text, "s = 'é🐍!'\nx = 1\n");
        assert!(!doc.last_edit_deleted);
        // Replace across the line break.
        doc.apply_change(Some((pos(0, 10), pos(1, 1))), "\ny");
        assert_eq!(doc.text, "s = 'é🐍!'\ny = 1\n");
        // Delete the snake (two units).
        doc.apply_change(Some((pos(0, 6), pos(0, 8))), "");
        assert_eq!(doc.text, "s = 'é!'\ny = 1\n");
        assert!(doc.last_edit_deleted);
    }

    #[test]
    fn full_changes_replace_everything_and_note_shrinking() {
        let mut doc = Document::new("abc".into(), 1, "python".into());
        doc.apply_change(None, "ab");
        assert_eq!(doc.text, "ab");
        assert!(doc.last_edit_deleted);
        doc.apply_change(None, "abcd");
        assert!(!doc.last_edit_deleted);
    }

    #[test]
    fn out_of_range_and_reversed_ranges_clamp() {
        let mut doc = Document::new("ab\ncd".into(), 1, "python".into());
        doc.apply_change(Some((pos(9, 0), pos(9, 0))), "!");
        assert_eq!(doc.text, "ab\ncd!");
        doc.apply_change(Some((pos(0, 2), pos(0, 0))), "X");
        assert_eq!(doc.text, "X\ncd!");
    }
}
