//! Snapshots of the TUI's screens (ratatui's TestBackend, insta), and the rendering benchmark (`--ignored`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::KeyCode;
use insta::assert_snapshot;
use phi_tui::config::PromptMode;
use phi_tui::engine::{AdapterInfo, StopReason};
use phi_tui::tui::app::{Action, App, ModelState, ViewReport};
use phi_tui::tui::render::{render, RenderCache};
use phi_tui::tui::session::{Message, MessageStatus, RunRecord, Session, SessionSummary};
use phi_tui::tui::testing::*;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn screen(app: &mut App) -> String {
    render_app(app, 80, 24).backend().to_string()
}

fn conversation() -> App {
    let mut app = ready_app();
    exchange(
        &mut app,
        "def is_even(n):\n    \"\"\"Return True if n is even.\n\n    >>> is_even(4)\n    True\n    \"\"\"",
        "\n    return n % 2 == 0",
    );
    let record = RunRecord { block: 0, passed: true, summary: "1 doctest passed".into(), output: String::new() };
    app.update(Action::RunFinished { session: app.session.id.clone(), message: 1, record });
    app.update(ctrl('t'));
    exchange(
        &mut app,
        "How do I reverse a list?",
        "Use **slicing** or `reversed`:\n\n```python\nitems[::-1]\n```\n\n- `list.reverse()` works *in place*",
    );
    app.notice = None;
    app
}

#[test]
fn first_run_without_a_model_says_how_to_get_one() {
    let session = Session::new(String::new(), PromptMode::Code);
    let mut app = App::new(options(), session, ModelState::None);
    let screen = screen(&mut app);
    assert!(screen.contains("F5 then Enter downloads phi-1 from Hugging Face (2.8 GB)"), "{screen}");
    assert!(screen.contains("phi-tui convert /path/to/phi-1 -o phi-1.f16.gguf"), "{screen}");
    assert!(screen.contains("/home/user/.config/phi-tui/config.toml"), "{screen}");
    assert_snapshot!("first_run", screen);
}

#[test]
fn loading_shows_progress() {
    let session = Session::new(String::new(), PromptMode::Code);
    let state = ModelState::Loading { path: PathBuf::from("/models/phi-1.f16.gguf"), progress: 0.4 };
    let mut app = App::new(options(), session, state);
    assert_snapshot!("loading", screen(&mut app));
}

#[test]
fn load_failure_explains_and_offers_the_way_out() {
    let session = Session::new(String::new(), PromptMode::Code);
    let state = ModelState::Failed {
        path: PathBuf::from("/models/missing.gguf"),
        error: "/models/missing.gguf: No such file or directory".into(),
    };
    let mut app = App::new(options(), session, state);
    assert_snapshot!("load_failed", screen(&mut app));
}

#[test]
fn ready_code_mode_welcome() {
    let mut app = ready_app();
    assert_snapshot!("welcome_code_mode", screen(&mut app));
}

#[test]
fn status_line_names_the_gpu_the_model_runs_on() {
    let mut info = model_info("phi-1");
    info.device = "NVIDIA H200 (CUDA)".to_owned();
    info.gpu_layers = 25;
    let mut app = App::new(options(), Session::new("gpu".into(), PromptMode::Code), ModelState::Ready(Box::new(info)));
    let screen = screen(&mut app);
    let status = screen.lines().last().unwrap();
    assert!(status.contains("phi-1 F16 NVIDIA H200 (CUDA) │ ctx"), "{status}");
}

#[test]
fn conversation_with_code_and_chat_replies() {
    let mut app = conversation();
    app.update(Action::AdapterChanged(Ok(Some(AdapterInfo { path: PathBuf::from("/a/style.gguf"), scale: 0.5 }))));
    app.notice = None;
    let screen = screen(&mut app);
    assert!(screen.contains("[2] python"), "{screen}");
    assert!(screen.contains("LoRA style.gguf ×0.5"), "{screen}");
    assert_snapshot!("conversation", screen);
}

#[test]
fn selected_block_is_brought_into_view() {
    let mut app = conversation();
    app.update(alt(KeyCode::Up));
    app.update(alt(KeyCode::Up));
    assert_eq!(app.selected_block, Some(1));
    let screen = screen(&mut app);
    assert!(screen.contains("▶ [1] python"), "{screen}");
    assert!(screen.contains("✓ run [1]: 1 doctest passed"), "{screen}");
    assert_snapshot!("block_selected_and_scrolled", screen);
}

#[test]
fn streaming_reply_in_progress() {
    let mut app = ready_app();
    type_text(&mut app, "def fib(n):");
    app.update(key(KeyCode::Enter));
    app.update(Action::Delta { tokens: 4, text: "\n    if n < 2:\n        return".into() });
    assert_snapshot!("streaming", screen(&mut app));
}

#[test]
fn cancelled_and_failed_replies() {
    let mut app = ready_app();
    app.update(ctrl('t'));
    type_text(&mut app, "Explain recursion");
    app.update(key(KeyCode::Enter));
    app.update(Action::Delta { tokens: 3, text: "Recursion is when".into() });
    app.update(key(KeyCode::Esc));
    type_text(&mut app, "Again");
    app.update(key(KeyCode::Enter));
    app.update(Action::GenerationFailed("the prompt has 3000 tokens but a sequence holds at most 2048".into()));
    app.notice = None;
    assert_snapshot!("cancelled_and_failed", screen(&mut app));
}

#[test]
fn help_overlay_lists_every_key() {
    let mut app = ready_app();
    app.update(key(KeyCode::F(1)));
    let screen = screen(&mut app);
    for needle in ["Enter", "Alt-Enter / Ctrl-J", "Esc / Ctrl-C", "Ctrl-X", "F2", "F5", "F6", "Ctrl-O"] {
        assert!(screen.contains(needle), "{needle} missing:\n{screen}");
    }
    assert_snapshot!("help", screen);
}

#[test]
fn sessions_overlay() {
    let mut app = ready_app();
    app.update(ctrl('o'));
    let item = |id: &str, title: &str, updated: u64, messages: usize| SessionSummary {
        id: id.into(),
        title: title.into(),
        updated,
        messages,
        snippet: None,
    };
    app.update(Action::SessionList(vec![
        item("test-session", "def is_prime(n):", 1_767_225_600, 4),
        item("b", "How do I reverse a list?", 1_767_139_200, 2),
        item("c", "a very long title that goes on and on and on and on about nothing in particular", 1_767_052_800, 12),
    ]));
    app.update(key(KeyCode::Down));
    assert_snapshot!("sessions", screen(&mut app));
}

#[test]
fn model_path_prompt() {
    let mut app = ready_app();
    app.update(key(KeyCode::F(5)));
    assert_snapshot!("model_prompt", screen(&mut app));
}

#[test]
fn resizes_cleanly_down_to_tiny_terminals() {
    let mut app = conversation();
    let mut cache = RenderCache::new();
    for (w, h) in [(80, 24), (120, 40), (50, 15), (20, 6), (1, 1), (200, 60), (80, 24)] {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut report = ViewReport::default();
        terminal.draw(|frame| report = render(&app, &mut cache, frame)).unwrap();
        app.update(Action::View(report));
    }
    let small = render_app(&mut app, 50, 15).backend().to_string();
    assert_snapshot!("small_50x15", small);
}

#[test]
fn only_the_streaming_message_is_rendered_again() {
    let mut app = conversation();
    let mut cache = RenderCache::new();
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal
        .draw(|frame| {
            render(&app, &mut cache, frame);
        })
        .unwrap();
    let after_first = cache.misses;
    type_text(&mut app, "Next?");
    app.update(key(KeyCode::Enter));
    for i in 0..10 {
        app.update(Action::Delta { tokens: 1, text: format!("word{i} ") });
        terminal
            .draw(|frame| {
                render(&app, &mut cache, frame);
            })
            .unwrap();
    }
    // Each frame renders only the new or changed messages (the user's and the streaming reply).
    assert!(cache.misses - after_first <= 12, "{} re-renders", cache.misses - after_first);
}

/// A history of `n` messages: chat replies with Markdown and code, and code-mode replies.
fn long_history(n: usize) -> Session {
    let mut session = Session::new("bench".into(), PromptMode::Chat);
    for i in 0..n / 2 {
        let mode = if i % 2 == 0 { PromptMode::Chat } else { PromptMode::Code };
        let question = match mode {
            PromptMode::Chat => format!("Question {i}: how do I sort a list of tuples by the second item?"),
            PromptMode::Code => format!("def f{i}(xs):\n    \"\"\"Sort xs by the second item.\"\"\""),
        };
        session.messages.push(Message::user(question.clone(), mode));
        let mut reply = Message::assistant(mode, if mode == PromptMode::Code { question } else { String::new() });
        reply.text = match mode {
            PromptMode::Chat => format!(
                "Use **sorted** with a key ({i}):\n\n```python\nitems = [(1, 'b'), (2, 'a')]\nprint(sorted(items, key=lambda t: t[1]))\n```\n\n- it is *stable*\n- it returns a new list\n"
            ),
            PromptMode::Code => "\n    return sorted(xs, key=lambda t: t[1])".to_owned(),
        };
        reply.status = MessageStatus::Complete;
        session.messages.push(reply);
    }
    session
}

/// Run with `cargo test --release --test tui_render -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run explicitly with --release"]
fn bench_render_2000_messages() {
    let session = long_history(2000);
    let mut app = App::new(options(), session, ModelState::Ready(Box::new(model_info("phi-1"))));
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let mut cache = RenderCache::new();
    // Highlighting needs syntect's syntaxes and theme: load them outside the measurement.
    let _ = phi_tui::tui::markdown::render_markdown("```python\nx = 1\n```", 40, 1, None);

    let start = Instant::now();
    terminal
        .draw(|frame| {
            render(&app, &mut cache, frame);
        })
        .unwrap();
    let cold = start.elapsed();

    let frames = 200;
    let start = Instant::now();
    for _ in 0..frames {
        terminal
            .draw(|frame| {
                render(&app, &mut cache, frame);
            })
            .unwrap();
    }
    let warm = start.elapsed() / frames;

    // A fresh render cache (e.g. another session opened), with syntect already warm.
    let mut fresh = RenderCache::new();
    let start = Instant::now();
    terminal
        .draw(|frame| {
            render(&app, &mut fresh, frame);
        })
        .unwrap();
    let fresh_frame = start.elapsed();

    // Streaming: a reply grows by a token before every frame.
    type_text(&mut app, "Another question?");
    app.update(ctrl('t'));
    app.update(key(KeyCode::Enter));
    let start = Instant::now();
    for i in 0..frames {
        app.update(Action::Delta { tokens: 1, text: if i % 12 == 11 { "\n\n".into() } else { format!("tok{i} ") } });
        terminal
            .draw(|frame| {
                render(&app, &mut cache, frame);
            })
            .unwrap();
    }
    let streaming = start.elapsed() / frames;

    // Scrolled far up: the view renders back to there once, then hits the cache.
    app.update(Action::Finished(Box::new(summary("done", 1, StopReason::MaxTokens))));
    app.update(Action::View(ViewReport { height: 38, max_scroll: usize::MAX / 4, reveal: None, scroll: 0 }));
    app.scroll = 5000;
    let start = Instant::now();
    terminal
        .draw(|frame| {
            render(&app, &mut cache, frame);
        })
        .unwrap();
    let scrolled_cold = start.elapsed();
    let start = Instant::now();
    for _ in 0..frames {
        terminal
            .draw(|frame| {
                render(&app, &mut cache, frame);
            })
            .unwrap();
    }
    let scrolled = start.elapsed() / frames;

    println!(
        "render, 2000 messages, 120x40: first frame {cold:?} (syntect warming up); first frame of a fresh cache \
         {fresh_frame:?}; steady {warm:?}/frame; streaming {streaming:?}/frame; scrolled 5000 lines up: first \
         {scrolled_cold:?}, then {scrolled:?}/frame"
    );
    assert!(warm.as_micros() < 5000, "steady frame {warm:?}");
    assert!(streaming.as_micros() < 5000, "streaming frame {streaming:?}");
}

#[test]
fn a_scrolled_up_view_stays_put_while_the_reply_grows() {
    let mut app = conversation();
    type_text(&mut app, "More?");
    app.update(key(KeyCode::Enter));
    app.update(Action::Delta { tokens: 2, text: "First line.\n\n".into() });
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut cache = RenderCache::new();
    let mut frame = |app: &mut App| {
        let mut report = ViewReport::default();
        terminal.draw(|frame| report = render(app, &mut cache, frame)).unwrap();
        app.update(Action::View(report));
        terminal.backend().to_string()
    };
    frame(&mut app);
    app.update(Action::Scroll(4));
    let before = frame(&mut app);
    app.update(Action::Delta { tokens: 5, text: "Second paragraph.\n\nThird one.\n\n".into() });
    let after = frame(&mut app);
    // Only the status line (token count) differs.
    let strip = |s: &str| {
        s.lines().filter(|l| !l.contains("generating") && !l.contains("more lines")).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(strip(&before), strip(&after));
    assert_eq!(app.scroll, 8);
}

#[test]
fn installing_shows_the_download_and_the_conversion() {
    use phi_converters::OutType;
    use phi_tui::hub::FetchEvent;
    use phi_tui::models::PullEvent;
    let session = Session::new(String::new(), PromptMode::Code);
    let download = PullEvent::Download(FetchEvent::Progress {
        file: "model.safetensors".into(),
        done: 1_420_000_000,
        total: 2_840_000_000,
    });
    let state = ModelState::Installing { what: "phi-1".into(), event: Some(download) };
    let mut app = App::new(options(), session, state);
    let screen = screen(&mut app);
    assert!(screen.contains("downloading model.safetensors · 1.4 GB of 2.8 GB"), "{screen}");
    assert!(screen.contains("50%") && screen.contains("Esc stops the download"), "{screen}");
    assert_snapshot!("installing", screen);
    let converting = PullEvent::Converting { out_type: OutType::Q8_0, done: 3, total: 4 };
    app.model = ModelState::Installing { what: "phi-1".into(), event: Some(converting) };
    let screen = self::screen(&mut app);
    assert!(screen.contains("converting to q8_0") && screen.contains("75%"), "{screen}");
}

#[test]
fn a_long_error_is_shown_whole_under_the_title_bar() {
    let mut app = ready_app();
    let error = "could not read a conversation: /home/user/.local/share/phi-tui/sessions/20260514-153012-1a2b.json: \
                 not a session file: EOF while parsing an object at line 1 column 1";
    app.update(Action::Error(error.into()));
    let screen = screen(&mut app);
    let text: String = screen.lines().map(|line| line.trim_matches('"').trim()).collect::<Vec<_>>().join(" ");
    assert!(text.contains(error), "the error is cut:\n{screen}");
    assert_snapshot!("long_error", screen);
    // An overlay opened meanwhile stays below it.
    app.update(ctrl('o'));
    app.update(Action::SessionList(vec![]));
    let screen = render_app(&mut app, 80, 24).backend().to_string();
    let text: String = screen.lines().map(|line| line.trim_matches('"').trim()).collect::<Vec<_>>().join(" ");
    assert!(text.contains(error) && text.contains("Conversations (0)"), "{screen}");
    app.update(key(KeyCode::Esc));
    // And a tiny terminal still draws.
    render_app(&mut app, 12, 4);

    // A short one stays in the title bar.
    app.update(Action::Error("no model loaded".into()));
    let screen = render_app(&mut app, 80, 24).backend().to_string();
    assert!(screen.lines().next().unwrap().contains("no model loaded"), "{screen}");
}
