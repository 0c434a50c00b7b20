//! LSP positions count UTF-16 code units within a line; Rust strings are UTF-8. Every position that crosses the
//! protocol boundary goes through here, so non-ASCII text (é, 日本語, 🐍) lands where the editor means.

/// A zero-based line and UTF-16 column, as the protocol sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utf16Position {
    pub line: u32,
    pub character: u32,
}

/// The byte offset in `text` of an LSP position. A column past the end of its line clamps to the line's end (the
/// protocol says so); a line past the end of the text clamps to the end of the text. A column inside a surrogate
/// pair rounds down to the character's start.
pub fn byte_offset(text: &str, position: Utf16Position) -> usize {
    let mut line_start = 0;
    for _ in 0..position.line {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let mut units = 0u32;
    for (offset, ch) in line.char_indices() {
        let width = ch.len_utf16() as u32;
        if units + width > position.character {
            return line_start + offset;
        }
        units += width;
    }
    // `\r\n` line ends: the `\r` belongs to the line ending, not to the line.
    line_start + line.strip_suffix('\r').map_or(line.len(), str::len)
}

/// The byte offset of a position a client sent in a request: like [`byte_offset`], but a line past the end of the
/// text is an error (`None`) rather than the end of the text, because a request about a line the server does not
/// have means the client and the server disagree about the document.
pub fn checked_byte_offset(text: &str, position: Utf16Position) -> Option<usize> {
    (position.line < line_count(text)).then(|| byte_offset(text, position))
}

/// The number of lines in `text`; text ending in a line break has an empty last line after it.
pub fn line_count(text: &str) -> u32 {
    u32::try_from(text.matches('\n').count()).unwrap_or(u32::MAX).saturating_add(1)
}

/// The LSP position of a byte offset (rounded down to a character boundary).
pub fn position_of(text: &str, offset: usize) -> Utf16Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Utf16Position {
        line: before.matches('\n').count() as u32,
        character: before[line_start..].chars().map(|c| c.len_utf16() as u32).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Utf16Position {
        Utf16Position { line, character }
    }

    #[test]
    fn ascii_positions_are_byte_offsets() {
        let text = "def f():\n    return 1\n";
        assert_eq!(byte_offset(text, pos(1, 4)), 13);
        assert_eq!(position_of(text, 13), pos(1, 4));
    }

    #[test]
    fn non_ascii_columns_count_utf16_units() {
        // é is 2 bytes and 1 unit; 🐍 is 4 bytes and 2 units.
        let text = "s = 'é🐍x'";
        let x = text.find('x').unwrap();
        assert_eq!(byte_offset(text, pos(0, 8)), x);
        assert_eq!(position_of(text, x), pos(0, 8));
        // Inside the surrogate pair: round down to the snake.
        assert_eq!(byte_offset(text, pos(0, 7)), text.find('🐍').unwrap());
    }

    #[test]
    fn out_of_range_positions_clamp() {
        let text = "ab\r\ncd";
        assert_eq!(byte_offset(text, pos(0, 99)), 2);
        assert_eq!(byte_offset(text, pos(7, 0)), text.len());
        assert_eq!(position_of(text, 999), pos(1, 2));
    }

    #[test]
    fn checked_offsets_reject_lines_past_the_end() {
        let text = "a\nb\n";
        assert_eq!(line_count(text), 3);
        assert_eq!(checked_byte_offset(text, pos(2, 0)), Some(4));
        assert_eq!(checked_byte_offset(text, pos(1, 9)), Some(3));
        assert_eq!(checked_byte_offset(text, pos(3, 0)), None);
        assert_eq!(checked_byte_offset("", pos(0, 0)), Some(0));
    }
}
