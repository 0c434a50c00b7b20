//! Drawing: `render(&App, &mut RenderCache, &mut Frame)`. Nothing here changes the app.
//!
//! Messages are rendered to pre-wrapped lines once per (revision, width) and cached; a frame only re-renders the
//! message that is streaming and draws the conversation from the bottom up until the screen is full, so a frame
//! costs the same with ten messages or ten thousand.

use std::collections::HashMap;
use std::rc::Rc;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::app::{file_name, App, ModelState, Overlay, SessionsView, TextPrompt, ViewReport};
use super::keys::Command;
use super::markdown::{display_width, render_code_block, render_markdown, wrap_spans, BlockLook};
use super::session::{format_time, Message, MessageStatus, Role};
use crate::config::PromptMode;
use crate::hub::FetchEvent;
use crate::models::{self, PullEvent};

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const DIM: Style = Style::new().fg(Color::DarkGray);
const BAR: Style = Style::new().fg(Color::White).bg(Color::Rgb(40, 44, 52));
const USER: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
const ASSISTANT: Style = Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD);
const ERROR: Style = Style::new().fg(Color::Red);
const OK: Style = Style::new().fg(Color::Green);

/// Most lines of a run's output shown under its block.
const RUN_OUTPUT_LINES: usize = 12;
/// An error too long for the title bar is shown whole on rows of its own under it, up to this many.
const MAX_ERROR_ROWS: usize = 6;

#[derive(Clone)]
struct Entry {
    rev: u64,
    width: usize,
    first_block: usize,
    selected: Option<usize>,
    lines: Rc<Vec<Line<'static>>>,
    /// Rows of the code blocks' headers.
    block_rows: Rc<Vec<usize>>,
}

/// Rendered messages of the current session, by message index.
#[derive(Default)]
pub struct RenderCache {
    session: String,
    entries: HashMap<usize, Entry>,
    /// Messages rendered (cache misses) since the cache was made: for tests and the benchmark.
    pub misses: usize,
    /// The last message's index, the width and its height in the previous frame.
    last_seen: Option<(usize, usize, usize)>,
}

impl RenderCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn message(&mut self, app: &App, index: usize, first_block: usize, width: usize) -> Entry {
        let message = &app.session.messages[index];
        let last = first_block + message.blocks.len();
        let selected = app.selected_block.filter(|n| (first_block..last).contains(n));
        if let Some(entry) = self.entries.get(&index) {
            if entry.rev == message.rev
                && entry.width == width
                && entry.first_block == first_block
                && entry.selected == selected
            {
                return entry.clone();
            }
        }
        self.misses += 1;
        let (lines, block_rows) = message_lines(app, message, first_block, selected, width);
        let entry = Entry {
            rev: message.rev,
            width,
            first_block,
            selected,
            lines: Rc::new(lines),
            block_rows: Rc::new(block_rows),
        };
        self.entries.insert(index, entry.clone());
        entry
    }
}

/// Draws the whole screen and reports where the conversation view stands.
pub fn render(app: &App, cache: &mut RenderCache, frame: &mut Frame) -> ViewReport {
    if cache.session != app.session.id || app.session.messages.len() < cache.entries.len() {
        cache.entries.clear();
        cache.session = app.session.id.clone();
    }
    let area = frame.area();
    let (input_rows, input_lines, cursor) = input_layout(app, area.width as usize);
    let error = long_error_lines(app, area.width as usize);
    let [title, error_area, body, input, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(error.len() as u16),
        Constraint::Min(1),
        Constraint::Length(input_rows as u16 + 1),
        Constraint::Length(1),
    ])
    .areas(area);

    render_title(app, frame, title, !error.is_empty());
    frame.render_widget(Paragraph::new(error).style(BAR), error_area);
    let report = if app.session.messages.is_empty() {
        render_empty(app, frame, body);
        ViewReport { height: body.height as usize, max_scroll: 0, reveal: None, scroll: 0 }
    } else {
        render_conversation(app, cache, frame, body)
    };
    render_input(app, frame, input, &input_lines, cursor);
    render_status(app, frame, status);

    // Overlays stay below a long error, so that it is read whole (the error is often about what they show).
    let below_error = match error_area.height {
        0 => area,
        _ => Rect { y: error_area.bottom(), height: area.bottom().saturating_sub(error_area.bottom()), ..area },
    };
    match &app.overlay {
        Some(Overlay::Help) => render_help(app, frame, below_error),
        Some(Overlay::Sessions(view)) => render_sessions(app, view, frame, below_error),
        None => {}
    }
    if let Some(prompt) = &app.prompt {
        render_prompt(prompt, frame, below_error);
    }
    report
}

/// Room for a notice at the right of the title bar.
fn notice_room(width: usize) -> usize {
    width.saturating_sub(12).max(1)
}

const ERROR_TEXT: Style = BAR.fg(Color::LightRed).add_modifier(Modifier::BOLD);

/// An error notice that does not fit in the title bar, wrapped to the screen's width (cut only past
/// [`MAX_ERROR_ROWS`] rows); nothing when there is no such error.
fn long_error_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let Some(notice) = app.notice.as_ref().filter(|notice| notice.error) else { return Vec::new() };
    if display_width(&notice.text) <= notice_room(width) {
        return Vec::new();
    }
    let indent = [Span::styled(" ", BAR)];
    let mut lines = wrap_spans(
        vec![Span::styled(notice.text.clone(), ERROR_TEXT)],
        width.saturating_sub(1).max(1),
        &indent,
        &indent,
    );
    if lines.len() > MAX_ERROR_ROWS {
        lines.truncate(MAX_ERROR_ROWS);
        if let Some(last) = lines.last_mut() {
            last.spans.push(Span::styled("…", ERROR_TEXT));
        }
    }
    lines
}

/// The title bar: the conversation's title, and a notice or the help key. `error_below`: the notice is an
/// error shown in full under the bar, so the bar only points at it.
fn render_title(app: &App, frame: &mut Frame, area: Rect, error_below: bool) {
    let left = format!(" phi-tui │ {}", app.session.display_title());
    let right = match &app.notice {
        Some(_) if error_below => "error ".to_owned(),
        Some(notice) => notice.text.clone(),
        None => format!("{} help ", app.options.keymap.first(Command::Help)),
    };
    let right_style = match &app.notice {
        Some(notice) if notice.error => ERROR_TEXT,
        Some(_) => BAR.fg(Color::LightYellow),
        None => BAR.fg(Color::Gray),
    };
    let width = area.width as usize;
    let right = super::session::shorten(&right, notice_room(width));
    let left_room = width.saturating_sub(display_width(&right) + 1);
    let left = super::session::shorten(&left, left_room);
    let pad = width.saturating_sub(display_width(&left) + display_width(&right));
    let line = Line::from(vec![
        Span::styled(left, BAR.add_modifier(Modifier::BOLD)),
        Span::styled(" ".repeat(pad), BAR),
        Span::styled(right, right_style),
    ]);
    frame.render_widget(Paragraph::new(line).style(BAR), area);
}

/// The lines of one message (header, body, status, runs, blank line) and its code blocks' header rows.
fn message_lines(
    app: &App,
    message: &Message,
    first_block: usize,
    selected: Option<usize>,
    width: usize,
) -> (Vec<Line<'static>>, Vec<usize>) {
    let mut lines = Vec::new();
    let mut block_rows = Vec::new();
    let mode = match message.mode {
        PromptMode::Code => "code",
        PromptMode::Chat => "chat",
    };
    match message.role {
        Role::User => {
            lines.push(Line::from(vec![Span::styled("▌ You", USER), Span::styled(format!(" · {mode}"), DIM)]));
            for text_line in message.text.split('\n') {
                let text_line = text_line.replace('\t', "    ");
                lines.extend(wrap_spans(vec![Span::raw(text_line)], width, &[], &[]));
            }
        }
        Role::Assistant => {
            let name = match (&message.stats, app.model_info()) {
                (Some(stats), _) if !stats.model.is_empty() => stats.model.clone(),
                (_, Some(info)) => info.name.clone(),
                _ => "model".to_owned(),
            };
            let mut header =
                vec![Span::styled(format!("▌ {name}"), ASSISTANT), Span::styled(format!(" · {mode}"), DIM)];
            match (&message.status, &message.stats) {
                (MessageStatus::Streaming, _) => header.push(Span::styled(" · writing…", DIM)),
                (_, Some(stats)) => header.push(Span::styled(
                    format!(" · {} tokens · {:.1} tok/s · {}", stats.tokens, stats.tokens_per_second, stats.stop),
                    DIM,
                )),
                _ => {}
            }
            lines.push(Line::from(header));
            match message.mode {
                PromptMode::Code => {
                    let code = message.content();
                    let look = BlockLook { number: Some(first_block), selected: selected == Some(first_block) };
                    block_rows.push(lines.len());
                    lines.extend(render_code_block(code.trim_end(), "python", look, width, &[]));
                }
                PromptMode::Chat => {
                    let text = if message.text.is_empty() && message.is_streaming() { "…" } else { &message.text };
                    let rendered = render_markdown(text, width, first_block, selected);
                    let offset = lines.len();
                    block_rows.extend(rendered.block_rows.iter().map(|r| r + offset));
                    lines.extend(rendered.lines);
                }
            }
            match &message.status {
                MessageStatus::Cancelled => lines.push(Line::from(Span::styled("(stopped)", DIM))),
                MessageStatus::Interrupted => lines.push(Line::from(Span::styled("(interrupted)", DIM))),
                MessageStatus::Error(e) => {
                    lines.extend(wrap_spans(vec![Span::styled(format!("error: {e}"), ERROR)], width, &[], &[]));
                }
                MessageStatus::Complete | MessageStatus::Streaming => {}
            }
            for run in &message.runs {
                let (mark, style) = if run.passed { ("✓", OK) } else { ("✗", ERROR) };
                let text = format!("{mark} run [{}]: {}", first_block + run.block, run.summary);
                lines.extend(wrap_spans(vec![Span::styled(text, style.add_modifier(Modifier::BOLD))], width, &[], &[]));
                let output: Vec<&str> = run.output.lines().collect();
                let skip = output.len().saturating_sub(RUN_OUTPUT_LINES);
                if skip > 0 {
                    lines.push(Line::from(Span::styled(format!("  … {skip} more lines (see the export)"), DIM)));
                }
                for line in &output[skip..] {
                    let prefix = [Span::styled("  ", DIM)];
                    lines.extend(wrap_spans(vec![Span::styled(line.to_string(), DIM)], width, &prefix, &prefix));
                }
            }
        }
    }
    lines.push(Line::default());
    (lines, block_rows)
}

fn render_conversation(app: &App, cache: &mut RenderCache, frame: &mut Frame, area: Rect) -> ViewReport {
    let width = area.width as usize;
    let height = area.height as usize;
    let firsts = app.first_block_numbers();
    // The message holding the block to bring into view.
    let reveal_message = match (app.reveal_block, app.selected_block) {
        (true, Some(n)) => app.session.messages.iter().enumerate().position(|(i, m)| {
            let first = firsts[i];
            (first..first + m.blocks.len()).contains(&n)
        }),
        _ => None,
    };
    // A reply growing below a scrolled-up view pushes the offset up by as much, so the text in view stays put.
    let last = app.session.messages.len() - 1;
    let last_len = cache.message(app, last, firsts[last], width).lines.len();
    let mut scroll = app.scroll;
    if let (true, Some((index, seen_width, seen_len))) = (scroll > 0, cache.last_seen) {
        if index == last && seen_width == width {
            scroll += last_len.saturating_sub(seen_len);
        }
    }
    cache.last_seen = Some((last, width, last_len));
    let wanted = scroll.saturating_add(height);
    let mut entries: Vec<Entry> = Vec::new();
    let mut total = 0;
    let mut reveal = None;
    let mut index = app.session.messages.len();
    while index > 0 {
        let need_more = total < wanted || reveal_message.is_some_and(|m| m < index);
        if !need_more {
            break;
        }
        index -= 1;
        let entry = cache.message(app, index, firsts[index], width);
        total += entry.lines.len();
        if Some(index) == reveal_message {
            if let Some(n) = app.selected_block {
                let row = entry.block_rows.get(n - firsts[index]).copied().unwrap_or(0);
                // Lines from this block's header down to the bottom.
                let from_bottom = total - row;
                reveal = Some(from_bottom.saturating_sub(height));
            }
        }
        entries.push(entry);
    }
    let reached_top = index == 0;
    let max_scroll = if reached_top { total.saturating_sub(height) } else { usize::MAX / 4 };
    let scroll = scroll.min(total.saturating_sub(height));

    // Visible rows: from `total - scroll - height` to `total - scroll`, counting from the top of what we have.
    let end = total - scroll;
    let start = end.saturating_sub(height);
    let mut visible: Vec<Line<'static>> = Vec::with_capacity(height);
    let mut row = 0;
    for entry in entries.iter().rev() {
        let len = entry.lines.len();
        if row + len > start && row < end {
            let from = start.saturating_sub(row);
            let to = (end - row).min(len);
            visible.extend(entry.lines[from..to].iter().cloned());
        }
        row += len;
        if row >= end {
            break;
        }
    }
    frame.render_widget(Paragraph::new(visible), area);
    if scroll > 0 {
        let text = format!(" ↓ {scroll} more lines ({}) ", app.options.keymap.first(Command::ScrollBottom));
        let w = display_width(&text) as u16;
        if area.width > w {
            let at = Rect { x: area.x + area.width - w, y: area.y + area.height - 1, width: w, height: 1 };
            frame.render_widget(Paragraph::new(Span::styled(text, BAR)), at);
        }
    }
    ViewReport { height, max_scroll, reveal, scroll }
}

fn render_empty(app: &App, frame: &mut Frame, area: Rect) {
    let keys = &app.options.keymap;
    let mut lines: Vec<Line<'static>> = Vec::new();
    let cmd = Style::new().fg(Color::Yellow);
    let heading = Style::new().add_modifier(Modifier::BOLD);
    let config = app.options.config_path.to_string_lossy().into_owned();
    let how_to_get_one = |lines: &mut Vec<Line<'static>>| {
        let load = keys.first(Command::LoadModel);
        let first = models::FIRST_MODEL;
        lines.push(Line::from(vec![
            Span::styled(format!("{load} then Enter"), cmd),
            Span::raw(format!(
                " downloads {} from Hugging Face ({}) and installs it; phi-tui starts with it from then on.",
                first.name,
                models::human_size(first.download_bytes)
            )),
        ]));
        lines.push(Line::from(format!(
            "{load} also takes a GGUF file, a Hugging Face checkpoint directory to convert, or another model: \
             phi-1_5, phi-2, owner/name."
        )));
        lines.push(Line::default());
        lines.push(Line::from(vec![
            Span::raw("From a shell: "),
            Span::styled(format!("phi-tui pull {}", first.name), cmd),
            Span::raw(" · "),
            Span::styled("phi-tui models", cmd),
            Span::raw(" (what is installed)"),
        ]));
        lines.push(Line::from(vec![
            Span::raw("  "),
            Span::styled("phi-tui convert /path/to/phi-1 -o phi-1.f16.gguf", cmd),
            Span::raw(" (a checkpoint you have)"),
        ]));
        lines.push(Line::default());
        lines.push(Line::from("Or name the model in the config file (an installed model, or a GGUF's path):"));
        lines.push(Line::from(vec![Span::raw("  "), Span::styled(config.clone(), cmd)]));
        lines.push(Line::from(vec![Span::raw("  "), Span::styled(format!("model = \"{}\"", first.name), cmd)]));
        lines.push(Line::default());
        lines.push(Line::from(format!(
            "{} lists every key · {} quits",
            keys.first(Command::Help),
            keys.first(Command::Quit)
        )));
    };
    match &app.model {
        ModelState::None => {
            lines.push(Line::from(Span::styled("No model loaded.", heading)));
            lines.push(Line::default());
            how_to_get_one(&mut lines);
        }
        ModelState::Failed { path, error } => {
            lines.push(Line::from(Span::styled(format!("Could not load {}", path.display()), heading.patch(ERROR))));
            lines.extend(wrap_spans(vec![Span::styled(error.clone(), ERROR)], area.width as usize, &[], &[]));
            lines.push(Line::default());
            how_to_get_one(&mut lines);
        }
        ModelState::Installing { what, event } => {
            lines.push(Line::from(Span::styled(format!("Installing {what} …"), heading)));
            lines.push(Line::default());
            let bar_width = (area.width as usize).saturating_sub(10).min(50);
            install_progress(event.as_ref(), bar_width, &mut lines);
            lines.push(Line::default());
            lines.push(Line::from(format!(
                "{} stops the download; loading {what} again resumes it.",
                keys.first(Command::Cancel)
            )));
        }
        ModelState::Loading { path, progress } => {
            lines.push(Line::from(Span::styled(format!("Loading {} …", path.display()), heading)));
            lines.push(Line::default());
            let bar_width = (area.width as usize).saturating_sub(10).min(50);
            lines.push(progress_bar(*progress, bar_width));
        }
        ModelState::Ready(info) => {
            lines.push(Line::from(Span::styled(
                format!("{} · {} · {} · {} mode", info.name, info.file_type, info.device, app.session.mode.name()),
                heading,
            )));
            lines.push(Line::default());
            match app.session.mode {
                PromptMode::Code => {
                    lines.push(Line::from("Code mode: type the start of a function — its signature and docstring —"));
                    lines.push(Line::from("and press Enter; the model writes the body. For example:"));
                    lines.push(Line::default());
                    lines.push(Line::from(Span::styled("    def is_prime(n):", cmd)));
                    lines
                        .push(Line::from(Span::styled("        \"\"\"Return True if n is a prime number.\"\"\"", cmd)));
                }
                PromptMode::Chat => {
                    lines.push(Line::from("Chat mode: ask a question and press Enter."));
                    if !info.has_chat_template {
                        lines.push(Line::from(
                            "(This is a base code model: answers are best-effort; code mode suits it better.)",
                        ));
                    }
                }
            }
            lines.push(Line::default());
            lines.push(Line::from(format!(
                "{} newline · {} {} mode · {} conversations · {} run a block · {} help",
                keys.first(Command::Newline),
                keys.first(Command::ToggleMode),
                app.session.mode.toggled().name(),
                keys.first(Command::Sessions),
                keys.first(Command::RunBlock),
                keys.first(Command::Help),
            )));
        }
    }
    let wrapped: Vec<Line<'static>> = lines
        .into_iter()
        .flat_map(|line| {
            let spans = line.spans;
            wrap_spans(spans, area.width.saturating_sub(2) as usize, &[Span::raw(" ")], &[Span::raw("   ")])
        })
        .collect();
    frame.render_widget(Paragraph::new(wrapped), area);
}

/// The lines of an install's progress: what it is doing, and a bar where it counts bytes.
fn install_progress(event: Option<&PullEvent>, bar_width: usize, lines: &mut Vec<Line<'static>>) {
    let fraction = |done: u64, total: u64| if total == 0 { 0.0 } else { (done as f64 / total as f64) as f32 };
    match event {
        None => lines.push(Line::from("starting…")),
        Some(PullEvent::Resolving { repo }) => lines.push(Line::from(format!("asking the hub for {repo}…"))),
        Some(PullEvent::UsingCache { repo, .. }) => {
            lines.push(Line::from(format!("the hub is out of reach: using {repo} from the Hugging Face cache")))
        }
        Some(PullEvent::Download(FetchEvent::Checking { file })) => lines.push(Line::from(format!("checking {file}…"))),
        Some(PullEvent::Download(FetchEvent::Retrying { file, reason, .. })) => {
            lines.push(Line::from(format!("{file}: {reason}; resuming…")))
        }
        Some(PullEvent::Download(FetchEvent::Corrupt { file })) => {
            lines.push(Line::from(format!("{file} did not match the hub's hash; fetching it again…")))
        }
        Some(PullEvent::Download(FetchEvent::Progress { file, done, total })) => {
            lines.push(Line::from(format!(
                "downloading {file} · {} of {}",
                models::human_size(*done),
                models::human_size(*total)
            )));
            lines.push(progress_bar(fraction(*done, *total), bar_width));
        }
        Some(PullEvent::Converting { out_type, done, total }) => {
            lines.push(Line::from(format!("converting to {out_type}")));
            lines.push(progress_bar(fraction(*done, *total), bar_width));
        }
        Some(PullEvent::Quantizing { out_type }) => {
            lines.push(Line::from(format!("quantizing to {out_type} with llama.cpp…")))
        }
    }
}

fn progress_bar(progress: f32, width: usize) -> Line<'static> {
    let filled = ((progress.clamp(0.0, 1.0) * width as f32).round() as usize).min(width);
    Line::from(vec![
        Span::styled("█".repeat(filled), Style::new().fg(Color::Cyan)),
        Span::styled("░".repeat(width - filled), DIM),
        Span::raw(format!(" {:>3.0}%", progress * 100.0)),
    ])
}

/// The input's height in rows (1–8), its visible rows, and the cursor within them.
fn input_layout(app: &App, width: usize) -> (usize, Vec<String>, (usize, usize)) {
    let (rows, (row, col)) = app.input.layout(width.max(1));
    let visible = rows.len().clamp(1, 8);
    let first = (row + 1).saturating_sub(visible);
    let shown: Vec<String> = rows.into_iter().skip(first).take(visible).collect();
    (visible, shown, (row - first, col))
}

fn render_input(app: &App, frame: &mut Frame, area: Rect, rows: &[String], cursor: (usize, usize)) {
    let keys = &app.options.keymap;
    let mode = app.session.mode.name();
    let what = if app.editing_last { format!(" {mode} · editing the last message ") } else { format!(" {mode} ") };
    let hint = format!(
        " {} send · {} newline · {} {} ",
        keys.first(Command::Send),
        keys.first(Command::Newline),
        keys.first(Command::ToggleMode),
        app.session.mode.toggled().name()
    );
    let mode_style = Style::new().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD);
    let fill = (area.width as usize).saturating_sub(display_width(&what) + display_width(&hint) + 1);
    let border = Line::from(vec![
        Span::styled("─", DIM),
        Span::styled(what, mode_style),
        Span::styled("─".repeat(fill), DIM),
        Span::styled(hint, DIM),
    ]);
    let [top, text] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(border), top);
    if app.input.is_empty() {
        let placeholder = match app.session.mode {
            PromptMode::Code => "def fizzbuzz(n):  ← code for the model to continue",
            PromptMode::Chat => "Ask a question…",
        };
        frame.render_widget(Paragraph::new(Span::styled(placeholder, DIM)), text);
    } else {
        let lines: Vec<Line> = rows.iter().map(|r| Line::raw(r.clone())).collect();
        frame.render_widget(Paragraph::new(lines), text);
    }
    if app.overlay.is_none() && app.prompt.is_none() {
        let x = text.x + (cursor.1 as u16).min(text.width.saturating_sub(1));
        let y = text.y + (cursor.0 as u16).min(text.height.saturating_sub(1));
        frame.set_cursor_position((x, y));
    }
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    let mut left: Vec<String> = Vec::new();
    match &app.model {
        ModelState::None => left.push("no model".to_owned()),
        ModelState::Failed { .. } => left.push("model failed to load".to_owned()),
        ModelState::Loading { path, progress } => {
            left.push(format!("loading {} {:.0}%", file_name(path), progress * 100.0));
        }
        ModelState::Installing { what, .. } => left.push(format!("installing {what}")),
        ModelState::Ready(info) => {
            left.push(format!("{} {} {}", info.name, info.file_type, info.device));
            let used = app.context_used.map(|n| n.to_string()).unwrap_or_else(|| "?".to_owned());
            left.push(format!("ctx {used}/{}", info.context_size));
            if let Some(speed) = app.last_speed {
                left.push(format!("{speed:.1} tok/s"));
            }
        }
    }
    if app.adapter_loading {
        left.push("LoRA …".to_owned());
    } else if let Some(adapter) = &app.adapter {
        left.push(format!("LoRA {} ×{}", file_name(&adapter.path), adapter.scale));
    }
    if let Some(activity) = &app.activity {
        left.push(activity.clone());
    }
    if !app.mouse_captured {
        left.push("mouse off".to_owned());
    }
    let spinner = SPINNER[(app.tick % SPINNER.len() as u64) as usize];
    let right = if app.generating {
        format!(
            "{spinner} generating {} tok · {} stops ",
            app.streamed_tokens,
            app.options.keymap.first(Command::Cancel)
        )
    } else if let Some((message, block)) = app.running {
        let number = app.first_block_numbers().get(message).copied().unwrap_or(1) + block;
        format!("{spinner} running [{number}] ")
    } else if matches!(app.model, ModelState::Loading { .. }) {
        format!("{spinner} loading ")
    } else if matches!(app.model, ModelState::Installing { .. }) {
        format!("{spinner} installing · {} stops ", app.options.keymap.first(Command::Cancel))
    } else {
        String::new()
    };
    let left = format!(" {}", left.join(" │ "));
    let width = area.width as usize;
    let left = super::session::shorten(&left, width.saturating_sub(display_width(&right)).max(1));
    let pad = width.saturating_sub(display_width(&left) + display_width(&right));
    let line = Line::from(vec![
        Span::styled(left, BAR),
        Span::styled(" ".repeat(pad), BAR),
        Span::styled(right, BAR.fg(Color::LightYellow)),
    ]);
    frame.render_widget(Paragraph::new(line).style(BAR), area);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height }
}

fn short_description(command: Command) -> &'static str {
    match command {
        Command::Send => "send",
        Command::Newline => "newline",
        Command::Cancel => "stop reply / clear",
        Command::Quit => "quit",
        Command::HistoryPrev => "older input",
        Command::HistoryNext => "newer input",
        Command::ScrollUp => "scroll up",
        Command::ScrollDown => "scroll down",
        Command::ScrollBottom => "to the latest",
        Command::Regenerate => "regenerate reply",
        Command::EditLast => "edit last message",
        Command::ToggleMode => "code / chat mode",
        Command::NewSession => "new conversation",
        Command::Sessions => "conversations",
        Command::PrevBlock => "previous block",
        Command::NextBlock => "next block",
        Command::CopyBlock => "copy block",
        Command::CopyReply => "copy whole reply",
        Command::RunBlock => "run block, doctests",
        Command::Export => "export Markdown",
        Command::ToggleMouse => "mouse on/off",
        Command::LoadModel => "load model",
        Command::LoadAdapter => "LoRA adapter",
        Command::Help => "this help",
    }
}

fn render_help(app: &App, frame: &mut Frame, area: Rect) {
    let keys = &app.options.keymap;
    let commands = Command::ALL;
    let half = commands.len().div_ceil(2);
    let key_style = Style::new().fg(Color::Yellow);
    let column = |command: Command| -> Vec<Span<'static>> {
        let key = super::session::shorten(&keys.describe(command), 18);
        vec![Span::styled(format!("{key:<18} "), key_style), Span::raw(format!("{:<19}", short_description(command)))]
    };
    let mut lines: Vec<Line<'static>> = Vec::new();
    for i in 0..half {
        let mut spans = column(commands[i]);
        if let Some(&right) = commands.get(i + half) {
            spans.push(Span::raw(" "));
            spans.extend(column(right));
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::default());
    lines.push(Line::from(vec![
        Span::styled("Editing ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw("←→ Home End · Ctrl-←→ words · Ctrl-U/K/W delete · Tab 4 spaces · paste keeps newlines"),
    ]));
    lines.push(Line::from(vec![
        Span::styled("Conversations ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw("↑↓ Enter open · n new · r rename · d delete · / search · e export · Esc close"),
    ]));
    lines.push(Line::from(vec![
        Span::styled("Keys and defaults ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("in {} (names for [keys]: phi-tui --help)", app.options.config_path.display())),
    ]));
    let width = 80.min(area.width);
    let inner = width.saturating_sub(2) as usize;
    let wrapped: Vec<Line<'static>> =
        lines.into_iter().flat_map(|l| wrap_spans(l.spans, inner, &[], &[Span::raw("  ")])).collect();
    let popup = centered(area, width, wrapped.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    let block = Block::default().borders(Borders::ALL).title(" Keys — any key closes ").border_style(DIM);
    frame.render_widget(Paragraph::new(wrapped).block(block), popup);
}

fn render_sessions(app: &App, view: &SessionsView, frame: &mut Frame, area: Rect) {
    let width = area.width.saturating_sub(4).min(100);
    let height = area.height.saturating_sub(2);
    let popup = centered(area, width, height);
    frame.render_widget(Clear, popup);
    let title = if view.query.is_empty() {
        format!(" Conversations ({}) ", view.items.len())
    } else {
        format!(" Conversations matching “{}” ({}) ", view.query, view.items.len())
    };
    let block = Block::default().borders(Borders::ALL).title(title).border_style(DIM);
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let [list_area, footer] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let row_width = list_area.width as usize;
    let mut lines: Vec<Line<'static>> = Vec::new();
    if view.items.is_empty() {
        let text = if view.loading {
            "reading…"
        } else if view.query.is_empty() {
            "no saved conversations yet"
        } else {
            "nothing matches"
        };
        lines.push(Line::from(Span::styled(text, DIM)));
    }
    // Each item takes one row, two with a search snippet; keep the selection in view.
    let per_item = if view.query.is_empty() { 1 } else { 2 };
    let capacity = (list_area.height as usize / per_item).max(1);
    let first = (view.selected + 1).saturating_sub(capacity);
    for (i, item) in view.items.iter().enumerate().skip(first).take(capacity) {
        let current = if item.id == app.session.id { "● " } else { "  " };
        let meta = format!(" {} msgs · {}", item.messages, &format_time(item.updated)[..16]);
        let title_room = row_width.saturating_sub(display_width(&meta) + 2);
        let title = super::session::shorten(&item.title, title_room);
        let pad = row_width.saturating_sub(2 + display_width(&title) + display_width(&meta));
        let style = if i == view.selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
        lines.push(Line::from(vec![
            Span::styled(current.to_owned(), style),
            Span::styled(title, style.add_modifier(Modifier::BOLD)),
            Span::styled(" ".repeat(pad), style),
            Span::styled(meta, style.patch(DIM)),
        ]));
        if per_item == 2 {
            let snippet = item.snippet.clone().unwrap_or_default();
            lines.push(Line::from(Span::styled(
                format!("    {}", super::session::shorten(&snippet, row_width.saturating_sub(4))),
                DIM,
            )));
        }
    }
    frame.render_widget(Paragraph::new(lines), list_area);
    let hint = if view.confirm_delete {
        "delete it? d / y deletes · any other key keeps it"
    } else {
        "Enter open · n new · r rename · d delete · / search · e export · Esc close"
    };
    frame.render_widget(Paragraph::new(Span::styled(super::session::shorten(hint, row_width), DIM)), footer);
}

fn render_prompt(prompt: &TextPrompt, frame: &mut Frame, area: Rect) {
    let width = area.width.saturating_sub(4).min(90);
    let popup = centered(area, width, 4);
    frame.render_widget(Clear, popup);
    let block = Block::default().borders(Borders::ALL).title(format!(" {} ", prompt.title)).border_style(DIM);
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let [line, hint] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    // A single row that scrolls horizontally to keep the cursor visible.
    let text = prompt.input.text();
    let before = display_width(&text[..prompt.input.cursor()]);
    let room = inner.width.saturating_sub(1) as usize;
    let skip = before.saturating_sub(room);
    let mut shown = String::new();
    let mut col = 0;
    for c in text.chars() {
        let w = display_width(&c.to_string());
        if col >= skip {
            shown.push(c);
        }
        col += w;
    }
    frame.render_widget(Paragraph::new(shown), line);
    let hint_text = format!("{} · Enter ok · Esc cancel", prompt.hint);
    frame.render_widget(
        Paragraph::new(Span::styled(super::session::shorten(&hint_text, inner.width as usize), DIM)),
        hint,
    );
    frame.set_cursor_position((line.x + (before - skip) as u16, line.y));
}
