//! Markdown → styled, pre-wrapped terminal lines, with numbered and syntax-highlighted code blocks.
//!
//! Lines are wrapped here (not by ratatui) so that the conversation view knows every message's height and can
//! draw only what is visible.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use syntect::highlighting::{
    FontStyle, HighlightIterator, HighlightState, Highlighter as ThemeHighlighter, Theme, ThemeSet,
};
use syntect::parsing::{ParseState, ScopeStack, SyntaxSet};
use syntect::util::LinesWithEndings;
use unicode_width::UnicodeWidthChar;

/// A fenced or indented code block of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    /// The fence's language (`python`, …), empty when none was given.
    pub language: String,
    pub code: String,
}

impl CodeBlock {
    /// Whether the run key may treat it as Python.
    pub fn is_python(&self) -> bool {
        matches!(self.language.to_ascii_lowercase().as_str(), "" | "python" | "py" | "python3" | "pycon" | "doctest")
    }
}

fn parser(markdown: &str) -> Parser<'_> {
    Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS)
}

/// The code blocks of a Markdown text, in order: the numbering the renderer uses.
pub fn code_blocks(markdown: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut current: Option<CodeBlock> = None;
    for event in parser(markdown) {
        match event {
            Event::Start(Tag::CodeBlock(kind)) => {
                current = Some(CodeBlock { language: language_of(&kind), code: String::new() });
            }
            Event::Text(text) => {
                if let Some(block) = current.as_mut() {
                    block.code.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some(mut block) = current.take() {
                    let trimmed = block.code.trim_end_matches('\n').len();
                    block.code.truncate(trimmed);
                    blocks.push(block);
                }
            }
            _ => {}
        }
    }
    // An unterminated fence (a reply still streaming) still counts.
    if let Some(block) = current {
        blocks.push(block);
    }
    blocks
}

fn language_of(kind: &CodeBlockKind<'_>) -> String {
    match kind {
        CodeBlockKind::Fenced(info) => info.split([' ', ',', '{']).next().unwrap_or("").to_owned(),
        CodeBlockKind::Indented => String::new(),
    }
}

/// Syntax highlighting with syntect's bundled syntaxes and themes.
pub struct Highlighter {
    syntaxes: SyntaxSet,
    theme: Theme,
    lines: Mutex<HashMap<u64, CachedLine>>,
}

static HIGHLIGHTER: OnceLock<Highlighter> = OnceLock::new();
static THEME_NAME: OnceLock<String> = OnceLock::new();

/// The default theme.
pub const DEFAULT_THEME: &str = "base16-ocean.dark";

/// Chooses the theme before the first highlight; unknown names are an error listing the known ones.
pub fn set_theme(name: &str) -> Result<(), String> {
    let themes = ThemeSet::load_defaults();
    if !themes.themes.contains_key(name) {
        let known: Vec<&str> = themes.themes.keys().map(String::as_str).collect();
        return Err(format!("unknown theme `{name}` (known: {})", known.join(", ")));
    }
    let _ = THEME_NAME.set(name.to_owned());
    Ok(())
}

impl Highlighter {
    pub fn get() -> &'static Highlighter {
        HIGHLIGHTER.get_or_init(|| {
            let mut themes = ThemeSet::load_defaults();
            let name = THEME_NAME.get().map(String::as_str).unwrap_or(DEFAULT_THEME);
            let theme = themes
                .themes
                .remove(name)
                .or_else(|| themes.themes.remove(DEFAULT_THEME))
                .or_else(|| themes.themes.into_values().next())
                .unwrap_or_default();
            Highlighter { syntaxes: SyntaxSet::load_defaults_newlines(), theme, lines: Mutex::new(HashMap::new()) }
        })
    }

    /// The code's lines as styled spans (no line breaks; tabs expanded to 4 spaces).
    ///
    /// Complete lines are memoised with the parser state after them, keyed by a hash of the language and every
    /// line up to them: a code block that grows (a streaming reply) only highlights its new lines.
    pub fn highlight(&self, code: &str, language: &str) -> Vec<Vec<Span<'static>>> {
        let token = match language.to_ascii_lowercase().as_str() {
            "" | "py" | "python3" | "pycon" | "doctest" => "python".to_owned(),
            other => other.to_owned(),
        };
        let syntax =
            self.syntaxes.find_syntax_by_token(&token).unwrap_or_else(|| self.syntaxes.find_syntax_plain_text());
        let lines: Vec<&str> = LinesWithEndings::from(code).collect();
        let mut hasher = DefaultHasher::new();
        syntax.name.hash(&mut hasher);
        let hashes: Vec<u64> = lines
            .iter()
            .map(|line| {
                line.hash(&mut hasher);
                hasher.finish()
            })
            .collect();

        let mut out: Vec<Vec<Span<'static>>> = Vec::with_capacity(lines.len() + 1);
        let mut cache = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // The longest prefix already highlighted.
        let cached = (0..lines.len()).rev().find(|&i| cache.contains_key(&hashes[i]));
        let (mut parse, mut highlight) = match cached {
            Some(last) => {
                for hash in &hashes[..=last] {
                    out.push(cache.get(hash).map(|l| l.spans.clone()).unwrap_or_default());
                }
                let state = cache.get(&hashes[last]).map(|l| (l.parse.clone(), l.highlight.clone()));
                state.unwrap_or_else(|| self.start(syntax))
            }
            None => self.start(syntax),
        };
        let highlighter = ThemeHighlighter::new(&self.theme);
        if cache.len() > MAX_CACHED_LINES {
            cache.clear();
        }
        for (i, line) in lines.iter().enumerate().skip(out.len()) {
            let spans: Vec<Span<'static>> = match parse.parse_line(line, &self.syntaxes) {
                Ok(ops) => HighlightIterator::new(&mut highlight, &ops, line, &highlighter)
                    .filter_map(|(style, text)| {
                        let text = text.trim_end_matches(['\n', '\r']).replace('\t', "    ");
                        (!text.is_empty()).then(|| Span::styled(text, convert_style(style)))
                    })
                    .collect(),
                Err(_) => vec![Span::raw(line.trim_end_matches(['\n', '\r']).replace('\t', "    "))],
            };
            // The last line of a streaming block is still changing: only complete lines are kept.
            if line.ends_with('\n') {
                let state = CachedLine { spans: spans.clone(), parse: parse.clone(), highlight: highlight.clone() };
                cache.insert(hashes[i], state);
            }
            out.push(spans);
        }
        if code.ends_with('\n') || code.is_empty() {
            out.push(Vec::new());
        }
        out
    }

    fn start(&self, syntax: &syntect::parsing::SyntaxReference) -> (ParseState, HighlightState) {
        let highlighter = ThemeHighlighter::new(&self.theme);
        (ParseState::new(syntax), HighlightState::new(&highlighter, ScopeStack::new()))
    }
}

/// Memoised highlighted lines at most (then the memo starts over).
const MAX_CACHED_LINES: usize = 50_000;

struct CachedLine {
    spans: Vec<Span<'static>>,
    parse: ParseState,
    highlight: HighlightState,
}

fn convert_style(style: syntect::highlighting::Style) -> Style {
    let fg = style.foreground;
    let mut out = Style::default().fg(Color::Rgb(fg.r, fg.g, fg.b));
    if style.font_style.contains(FontStyle::BOLD) {
        out = out.add_modifier(Modifier::BOLD);
    }
    if style.font_style.contains(FontStyle::ITALIC) {
        out = out.add_modifier(Modifier::ITALIC);
    }
    out
}

/// How a code block is drawn.
#[derive(Debug, Clone, Copy)]
pub struct BlockLook {
    /// Its number in the conversation (1-based), shown in the header.
    pub number: Option<usize>,
    pub selected: bool,
}

const CODE_RULE: Style = Style::new().fg(Color::DarkGray);

/// A code block: a header with its number and language, the highlighted code (hard-wrapped), a closing rule.
pub fn render_code_block(
    code: &str,
    language: &str,
    look: BlockLook,
    width: usize,
    prefix: &[Span<'static>],
) -> Vec<Line<'static>> {
    let prefix_width: usize = prefix.iter().map(|s| s.width()).sum();
    let width = width.saturating_sub(prefix_width).max(8);
    let mut lines = Vec::new();
    let label = match look.number {
        Some(n) => format!("[{n}] {}", if language.is_empty() { "code" } else { language }),
        None => (if language.is_empty() { "code" } else { language }).to_owned(),
    };
    let header_style = if look.selected {
        Style::new().fg(Color::Black).bg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Cyan)
    };
    let marker = if look.selected { "▶ " } else { "─ " };
    let head = format!("{marker}{label} ");
    let fill = width.saturating_sub(display_width(&head));
    let mut header = prefix.to_vec();
    header.push(Span::styled(head, header_style));
    header.push(Span::styled("─".repeat(fill), CODE_RULE));
    lines.push(Line::from(header));
    let code = code.strip_suffix('\n').unwrap_or(code);
    for spans in Highlighter::get().highlight(code, language) {
        for piece in hard_wrap(spans, width) {
            let mut line = prefix.to_vec();
            line.extend(piece);
            lines.push(Line::from(line));
        }
    }
    let mut footer = prefix.to_vec();
    footer.push(Span::styled("─".repeat(width), CODE_RULE));
    lines.push(Line::from(footer));
    lines
}

/// Splits spans into rows of at most `width` columns, cutting anywhere (code keeps its spaces).
fn hard_wrap(spans: Vec<Span<'static>>, width: usize) -> Vec<Vec<Span<'static>>> {
    let mut rows = vec![Vec::new()];
    let mut used = 0;
    for span in spans {
        let mut current = String::new();
        for c in span.content.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width && used > 0 {
                if let Some(row) = rows.last_mut().filter(|_| !current.is_empty()) {
                    row.push(Span::styled(std::mem::take(&mut current), span.style));
                }
                rows.push(Vec::new());
                used = 0;
            }
            current.push(c);
            used += w;
        }
        if !current.is_empty() {
            if let Some(row) = rows.last_mut() {
                row.push(Span::styled(current, span.style));
            }
        }
    }
    rows
}

pub fn display_width(text: &str) -> usize {
    text.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Word-wraps styled spans to `width` columns; the first row starts with `first`, the others with `rest`.
pub fn wrap_spans(
    spans: Vec<Span<'static>>,
    width: usize,
    first: &[Span<'static>],
    rest: &[Span<'static>],
) -> Vec<Line<'static>> {
    // Split into words (with their trailing spaces) that keep their style.
    let mut words: Vec<Vec<Span<'static>>> = Vec::new();
    let mut word: Vec<Span<'static>> = Vec::new();
    let mut word_has_space = false;
    for span in spans {
        let mut current = String::new();
        for c in span.content.chars() {
            if c == ' ' {
                word_has_space = true;
            } else if word_has_space {
                if !current.is_empty() {
                    word.push(Span::styled(std::mem::take(&mut current), span.style));
                }
                words.push(std::mem::take(&mut word));
                word_has_space = false;
            }
            current.push(c);
        }
        if !current.is_empty() {
            word.push(Span::styled(current, span.style));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }

    let mut lines = Vec::new();
    let mut line: Vec<Span<'static>> = first.to_vec();
    let mut prefix_width: usize = first.iter().map(|s| s.width()).sum();
    let mut used = 0;
    let rest_width: usize = rest.iter().map(|s| s.width()).sum();
    for word in words {
        let word_width: usize = word.iter().map(|s| s.width()).sum();
        let trimmed_width: usize = word_width - trailing_spaces(&word);
        let available = width.saturating_sub(prefix_width).max(1);
        if used > 0 && used + trimmed_width > available {
            lines.push(Line::from(std::mem::replace(&mut line, rest.to_vec())));
            prefix_width = rest_width;
            used = 0;
        }
        let available = width.saturating_sub(prefix_width).max(1);
        if word_width > available {
            // A word longer than a line: cut it.
            for (i, row) in hard_wrap(word, available).into_iter().enumerate() {
                if i > 0 || used > 0 {
                    lines.push(Line::from(std::mem::replace(&mut line, rest.to_vec())));
                    prefix_width = rest_width;
                    used = 0;
                }
                used += row.iter().map(|s| s.width()).sum::<usize>();
                line.extend(row);
            }
        } else {
            used += word_width;
            line.extend(word);
        }
    }
    lines.push(Line::from(line));
    lines
}

fn trailing_spaces(word: &[Span<'static>]) -> usize {
    let mut n = 0;
    for span in word.iter().rev() {
        let content = span.content.as_ref();
        let stripped = content.trim_end_matches(' ');
        n += content.len() - stripped.len();
        if !stripped.is_empty() {
            break;
        }
    }
    n
}

/// Renders Markdown to lines at most `width` columns wide. Code blocks are numbered from `first_block`;
/// `selected` (a block number) is highlighted.
pub fn render_markdown(markdown: &str, width: usize, first_block: usize, selected: Option<usize>) -> Rendered {
    let mut r =
        Renderer { width: width.max(10), lines: Vec::new(), next_block: first_block, selected, ..Default::default() };
    for event in parser(markdown) {
        r.event(event);
    }
    if let Some((language, code)) = r.code.take() {
        r.finish_code(&language, &code);
    }
    r.flush();
    while r.lines.last().is_some_and(|l| l.width() == 0) {
        r.lines.pop();
    }
    Rendered { lines: r.lines, block_rows: r.block_rows }
}

/// Rendered Markdown: the lines, and the row of each code block's header.
#[derive(Debug, Default)]
pub struct Rendered {
    pub lines: Vec<Line<'static>>,
    pub block_rows: Vec<usize>,
}

#[derive(Default)]
struct Renderer {
    width: usize,
    lines: Vec<Line<'static>>,
    spans: Vec<Span<'static>>,
    styles: Vec<Style>,
    /// One entry per open list: the next number of an ordered list.
    lists: Vec<Option<u64>>,
    /// The marker the current list item's first line starts with.
    item_marker: Option<String>,
    quote_depth: usize,
    heading: Option<HeadingLevel>,
    code: Option<(String, String)>,
    link: Option<String>,
    need_blank: bool,
    next_block: usize,
    selected: Option<usize>,
    block_rows: Vec<usize>,
    table_row: Vec<String>,
    in_table_cell: bool,
}

const INLINE_CODE: Style = Style::new().fg(Color::Yellow);

impl Renderer {
    fn style(&self) -> Style {
        self.styles.iter().fold(Style::default(), |acc, s| acc.patch(*s))
    }

    fn prefix(&self, first: bool) -> Vec<Span<'static>> {
        let mut prefix = Vec::new();
        if self.quote_depth > 0 {
            prefix.push(Span::styled("│ ".repeat(self.quote_depth), Style::new().fg(Color::DarkGray)));
        }
        if !self.lists.is_empty() {
            let indent = 2 * (self.lists.len() - 1);
            match (&self.item_marker, first) {
                (Some(marker), true) => {
                    prefix.push(Span::raw(" ".repeat(indent)));
                    prefix.push(Span::styled(marker.clone(), Style::new().fg(Color::Cyan)));
                }
                _ => prefix.push(Span::raw(" ".repeat(indent + 2))),
            }
        }
        prefix
    }

    fn blank_if_needed(&mut self) {
        if self.need_blank && !self.lines.is_empty() {
            let prefix = if self.quote_depth > 0 { self.prefix(false) } else { Vec::new() };
            self.lines.push(Line::from(prefix));
        }
        self.need_blank = false;
    }

    /// Emits the collected inline text as wrapped lines.
    fn flush(&mut self) {
        if self.spans.is_empty() {
            return;
        }
        self.blank_if_needed();
        let spans = std::mem::take(&mut self.spans);
        let first = self.prefix(true);
        let rest = self.prefix(false);
        self.item_marker = None;
        self.lines.extend(wrap_spans(spans, self.width, &first, &rest));
    }

    fn finish_code(&mut self, language: &str, code: &str) {
        self.flush();
        self.blank_if_needed();
        let number = self.next_block;
        self.next_block += 1;
        let look = BlockLook { number: Some(number), selected: self.selected == Some(number) };
        let prefix = self.prefix(false);
        self.item_marker = None;
        self.block_rows.push(self.lines.len());
        self.lines.extend(render_code_block(code, language, look, self.width, &prefix));
        self.need_blank = true;
    }

    fn event(&mut self, event: Event<'_>) {
        if let Some((_, code)) = self.code.as_mut() {
            match event {
                Event::Text(text) => code.push_str(&text),
                Event::End(TagEnd::CodeBlock) => {
                    if let Some((language, code)) = self.code.take() {
                        self.finish_code(&language, &code);
                    }
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => {
                if self.in_table_cell {
                    if let Some(cell) = self.table_row.last_mut() {
                        cell.push_str(&text);
                    }
                } else {
                    let style = self.style();
                    self.spans.push(Span::styled(text.replace('\t', "    "), style));
                }
            }
            Event::Code(text) => {
                if self.in_table_cell {
                    if let Some(cell) = self.table_row.last_mut() {
                        cell.push_str(&text);
                    }
                } else {
                    let style = self.style().patch(INLINE_CODE);
                    self.spans.push(Span::styled(text.into_string(), style));
                }
            }
            Event::Html(text) | Event::InlineHtml(text) => {
                let style = self.style();
                self.spans.push(Span::styled(text.trim_end_matches('\n').to_owned(), style));
            }
            Event::SoftBreak => self.spans.push(Span::raw(" ")),
            Event::HardBreak => self.flush(),
            Event::Rule => {
                self.flush();
                self.blank_if_needed();
                self.lines.push(Line::from(Span::styled("─".repeat(self.width.min(40)), CODE_RULE)));
                self.need_blank = true;
            }
            Event::TaskListMarker(done) => self.spans.push(Span::raw(if done { "[x] " } else { "[ ] " })),
            Event::FootnoteReference(name) => self.spans.push(Span::raw(format!("[^{name}]"))),
            _ => {}
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => {}
            Tag::Heading { level, .. } => {
                self.flush();
                self.heading = Some(level);
                let hashes = "#".repeat(level as usize);
                let style = Style::new().fg(Color::LightBlue).add_modifier(Modifier::BOLD);
                self.styles.push(style);
                self.spans.push(Span::styled(format!("{hashes} "), style));
            }
            Tag::BlockQuote(_) => {
                self.flush();
                self.blank_if_needed();
                self.quote_depth += 1;
            }
            Tag::CodeBlock(kind) => {
                self.flush();
                self.code = Some((language_of(&kind), String::new()));
            }
            Tag::List(start) => {
                self.flush();
                if self.lists.is_empty() {
                    self.blank_if_needed();
                }
                self.lists.push(start);
            }
            Tag::Item => {
                self.flush();
                let depth = self.lists.len();
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let marker = format!("{n}. ");
                        *n += 1;
                        marker
                    }
                    _ => (if depth % 2 == 1 { "• " } else { "◦ " }).to_owned(),
                };
                self.item_marker = Some(marker);
                self.need_blank = false;
            }
            Tag::Emphasis => self.styles.push(Style::new().add_modifier(Modifier::ITALIC)),
            Tag::Strong => self.styles.push(Style::new().add_modifier(Modifier::BOLD)),
            Tag::Strikethrough => self.styles.push(Style::new().add_modifier(Modifier::CROSSED_OUT)),
            Tag::Link { dest_url, .. } => {
                self.styles.push(Style::new().fg(Color::LightBlue).add_modifier(Modifier::UNDERLINED));
                self.link = Some(dest_url.into_string());
            }
            Tag::Image { dest_url, .. } => {
                self.spans.push(Span::raw("[image: "));
                self.link = Some(dest_url.into_string());
                self.styles.push(Style::new());
            }
            Tag::Table(_) => {
                self.flush();
                self.blank_if_needed();
            }
            Tag::TableHead | Tag::TableRow => self.table_row.clear(),
            Tag::TableCell => {
                self.table_row.push(String::new());
                self.in_table_cell = true;
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => {
                self.flush();
                self.need_blank = true;
            }
            TagEnd::Heading(_) => {
                self.styles.pop();
                self.flush();
                self.heading = None;
                self.need_blank = true;
            }
            TagEnd::BlockQuote(_) => {
                self.flush();
                self.quote_depth = self.quote_depth.saturating_sub(1);
                self.need_blank = true;
            }
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
                self.need_blank = self.lists.is_empty();
            }
            TagEnd::Item => {
                self.flush();
                self.need_blank = false;
            }
            TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough => {
                self.styles.pop();
            }
            TagEnd::Link => {
                self.styles.pop();
                if let Some(url) = self.link.take() {
                    let shown: String = self.spans.iter().rev().take(1).map(|s| s.content.to_string()).collect();
                    if !url.is_empty() && shown != url {
                        self.spans.push(Span::styled(format!(" ({url})"), Style::new().fg(Color::DarkGray)));
                    }
                }
            }
            TagEnd::Image => {
                self.styles.pop();
                if let Some(url) = self.link.take() {
                    self.spans.push(Span::raw(format!("] ({url})")));
                }
            }
            TagEnd::TableCell => self.in_table_cell = false,
            TagEnd::TableHead | TagEnd::TableRow => {
                let row = std::mem::take(&mut self.table_row);
                let header = matches!(tag, TagEnd::TableHead);
                let style = if header { Style::new().add_modifier(Modifier::BOLD) } else { Style::new() };
                let cells: Vec<String> = row.iter().map(|c| c.trim().to_owned()).collect();
                self.spans.push(Span::styled(cells.join(" │ "), style));
                self.flush();
                if header {
                    let width = self.lines.last().map(Line::width).unwrap_or(0).min(self.width);
                    self.lines.push(Line::from(Span::styled("─".repeat(width), CODE_RULE)));
                }
            }
            TagEnd::Table => self.need_blank = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line<'static>]) -> Vec<String> {
        lines.iter().map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect::<String>()).collect()
    }

    #[test]
    fn finds_code_blocks_including_an_unterminated_one() {
        let md = "Intro\n\n```python\ndef f():\n    return 1\n```\n\n    indented = 1\n\n```rust\nfn main() {";
        let blocks = code_blocks(md);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0], CodeBlock { language: "python".into(), code: "def f():\n    return 1".into() });
        assert_eq!(blocks[1].language, "");
        assert_eq!(blocks[1].code, "indented = 1");
        assert_eq!(blocks[2].code, "fn main() {");
        assert!(blocks[0].is_python() && blocks[1].is_python() && !blocks[2].is_python());
    }

    #[test]
    fn renders_prose_lists_and_numbered_code() {
        let md = "# Title\n\nSome *text* that is long enough to wrap around.\n\n- one\n- two\n  1. nested\n\n```python\nx = 1\n```\n\n> quoted";
        let rendered = render_markdown(md, 24, 3, Some(3));
        let lines = rendered.lines;
        assert_eq!(rendered.block_rows, [9]);
        assert_eq!(
            text(&lines),
            [
                "# Title",
                "",
                "Some text that is long ",
                "enough to wrap around.",
                "",
                "• one",
                "• two",
                "  1. nested",
                "",
                "▶ [3] python ───────────",
                "x = 1",
                "────────────────────────",
                "",
                "│ quoted",
            ]
        );
        assert!(lines.iter().all(|l| l.width() <= 24));
    }

    #[test]
    fn wraps_long_words_and_code() {
        let lines = wrap_spans(vec![Span::raw("abcdefghijkl mn")], 5, &[], &[]);
        assert_eq!(text(&lines), ["abcde", "fghij", "kl mn"]);
        let code = render_code_block(
            "print('a very long line')",
            "python",
            BlockLook { number: None, selected: false },
            12,
            &[],
        );
        assert_eq!(text(&code), ["─ python ───", "print('a ver", "y long line'", ")", "────────────"]);
    }

    #[test]
    fn highlighting_a_growing_block_matches_highlighting_it_whole() {
        let code = "def f(x):\n    \"\"\"Doc\n    string.\"\"\"\n    return [x, 'a']  # c\n";
        let h = Highlighter::get();
        let mut streamed = Vec::new();
        for end in (1..=code.len()).filter(|&i| code.is_char_boundary(i)) {
            streamed = h.highlight(&code[..end], "python");
        }
        h.lines.lock().unwrap_or_else(|e| e.into_inner()).clear();
        assert_eq!(streamed, h.highlight(code, "python"));
        assert_eq!(streamed.len(), 5);
    }
}
