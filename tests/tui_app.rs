//! The TUI's state and update logic, with no terminal: keys and engine events in, effects out.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use crossterm::event::KeyCode;
use phi_tui::config::{KeyList, PromptMode};
use phi_tui::engine::{AdapterInfo, StopReason};
use phi_tui::tui::app::{Action, App, Effect, ModelState, Overlay, PromptPurpose};
use phi_tui::tui::keys::KeyMap;
use phi_tui::tui::session::{MessageStatus, Role, RunRecord, Session, SessionSummary};
use phi_tui::tui::testing::*;

fn generate_spec(effects: &[Effect]) -> &phi_tui::tui::prompt::GenerationSpec {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Generate(spec) => Some(spec),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Generate in {effects:?}"))
}

#[test]
fn code_mode_sends_the_code_and_streams_the_continuation() {
    let mut app = ready_app();
    type_text(&mut app, "def add(a, b):\n    \"\"\"Add.\"\"\"");
    let effects = app.update(key(KeyCode::Enter));
    assert_eq!(effects[0], Effect::Save, "the user message is saved before generating");
    let spec = generate_spec(&effects);
    assert_eq!(spec.mode, PromptMode::Code);
    assert_eq!(spec.prompt, "def add(a, b):\n    \"\"\"Add.\"\"\"");
    assert!(spec.request().stop_rule.is_some());
    assert!(app.generating && app.input.is_empty());
    assert_eq!(app.session.messages.len(), 2);
    assert_eq!(app.session.messages[1].status, MessageStatus::Streaming);

    assert!(app.update(Action::Delta { tokens: 2, text: "\n    return".into() }).is_empty());
    app.update(Action::Delta { tokens: 3, text: " a + b\n\n".into() });
    assert_eq!(app.streamed_tokens, 5);
    assert_eq!(app.session.messages[1].text, "\n    return a + b\n\n");
    // The block is prompt + continuation, as it streams.
    assert_eq!(app.session.messages[1].blocks[0].code, "def add(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b");

    let effects = app.update(Action::Finished(Box::new(summary("\n    return a + b", 5, StopReason::Predicate))));
    assert_eq!(effects, vec![Effect::Save]);
    let reply = &app.session.messages[1];
    assert_eq!(reply.status, MessageStatus::Complete);
    assert_eq!(reply.text, "\n    return a + b");
    let stats = reply.stats.as_ref().unwrap();
    assert_eq!((stats.tokens, stats.stop.as_str(), stats.model.as_str()), (5, "end of block", "phi-1"));
    assert_eq!(app.last_speed, Some(100.0));
    assert_eq!(app.context_used, Some(17));
    assert!(!app.generating);
}

#[test]
fn chat_mode_uses_a_question_answer_prompt_with_earlier_exchanges() {
    let mut app = ready_app();
    app.update(ctrl('t'));
    assert_eq!(app.session.mode, PromptMode::Chat);
    exchange(&mut app, "What is a list?", " An ordered collection.");
    assert_eq!(app.session.messages[1].text, "An ordered collection.");
    type_text(&mut app, "And a tuple?");
    let effects = app.update(key(KeyCode::Enter));
    let spec = generate_spec(&effects);
    assert_eq!(
        spec.prompt,
        "Question: What is a list?\nAnswer: An ordered collection.\n\nQuestion: And a tuple?\nAnswer:"
    );
    assert!(spec.stop_strings.iter().any(|s| s == "Question:"));
    assert!(spec.request().stop_rule.is_none());
}

#[test]
fn the_default_mode_follows_the_model() {
    let session = Session::new(String::new(), PromptMode::Code);
    let mut app = App::new(options(), session, ModelState::Loading { path: "/m.gguf".into(), progress: 0.0 });
    app.update(Action::ModelProgress(0.5));
    assert_eq!(app.model, ModelState::Loading { path: "/m.gguf".into(), progress: 0.5 });
    let mut chat_model = model_info("chatty");
    chat_model.has_chat_template = true;
    app.update(Action::ModelLoaded(Ok(Box::new(chat_model))));
    assert_eq!(app.session.mode, PromptMode::Chat);
    // phi-1 (no template) goes back to code mode, as long as the user has not chosen.
    app.update(Action::ModelLoaded(Ok(Box::new(model_info("phi-1")))));
    assert_eq!(app.session.mode, PromptMode::Code);
    app.update(ctrl('t'));
    app.update(Action::ModelLoaded(Ok(Box::new(model_info("phi-1")))));
    assert_eq!(app.session.mode, PromptMode::Chat, "an explicit choice stays");
    // A failed load says so and keeps serving.
    app.update(Action::ModelLoaded(Err("bad magic".into())));
    assert!(matches!(&app.model, ModelState::Failed { error, .. } if error == "bad magic"));
}

#[test]
fn nothing_is_sent_without_a_model() {
    let session = Session::new(String::new(), PromptMode::Code);
    let mut app = App::new(options(), session, ModelState::None);
    type_text(&mut app, "def f():");
    assert!(app.update(key(KeyCode::Enter)).is_empty());
    assert_eq!(app.input.text(), "def f():", "the input is kept");
    assert!(app.notice.as_ref().unwrap().text.contains("no model loaded"));
}

#[test]
fn cancel_stops_the_generation_and_keeps_the_partial_reply() {
    let mut app = ready_app();
    type_text(&mut app, "def f():");
    app.update(key(KeyCode::Enter));
    app.update(Action::Delta { tokens: 1, text: "\n    x".into() });
    let effects = app.update(key(KeyCode::Esc));
    assert_eq!(effects, vec![Effect::CancelGeneration, Effect::Save]);
    assert!(!app.generating);
    assert_eq!(app.session.messages[1].status, MessageStatus::Cancelled);
    // Late events of the cancelled generation change nothing.
    assert!(app.update(Action::Delta { tokens: 1, text: " = 1".into() }).is_empty());
    assert!(app.update(Action::Finished(Box::new(summary("x", 1, StopReason::Cancelled)))).is_empty());
    assert_eq!(app.session.messages[1].text, "\n    x");
    // Ctrl-C does the same.
    type_text(&mut app, "def g():");
    app.update(key(KeyCode::Enter));
    assert_eq!(app.update(ctrl('c')), vec![Effect::CancelGeneration, Effect::Save]);
    // Idle: Esc clears the input.
    type_text(&mut app, "draft");
    assert!(app.update(key(KeyCode::Esc)).is_empty());
    assert!(app.input.is_empty());
}

#[test]
fn a_streaming_reply_is_saved_periodically() {
    let mut app = ready_app();
    type_text(&mut app, "def f():");
    app.update(key(KeyCode::Enter));
    let saves: usize = (0..12).map(|_| app.update(Action::Tick).iter().filter(|e| **e == Effect::Save).count()).sum();
    assert_eq!(saves, 3, "every {} ticks", phi_tui::tui::app::SAVE_EVERY_TICKS);
    app.update(Action::Finished(Box::new(summary("", 0, StopReason::EndOfGeneration))));
    assert!(app.update(Action::Tick).is_empty());
}

#[test]
fn regenerate_replaces_the_last_reply_with_a_sampled_one() {
    let mut app = ready_app();
    exchange(&mut app, "def f():", "\n    return 1");
    let effects = app.update(ctrl('r'));
    let spec = generate_spec(&effects);
    assert_eq!(spec.prompt, "def f():");
    assert!(spec.temperature > 0.0, "greedy would repeat the same reply");
    assert_eq!(spec.seed, 1);
    assert_eq!(app.session.messages.len(), 2);
    assert_eq!(app.session.messages[1].text, "");
    assert!(app.generating);
}

#[test]
fn edit_last_message_and_resend_replaces_the_exchange() {
    let mut app = ready_app();
    exchange(&mut app, "def f():", "\n    return 1");
    exchange(&mut app, "def g():", "\n    return 2");
    app.update(ctrl('e'));
    assert!(app.editing_last);
    assert_eq!(app.input.text(), "def g():");
    app.update(key(KeyCode::Backspace));
    type_text(&mut app, " -> int:");
    let effects = app.update(key(KeyCode::Enter));
    assert_eq!(generate_spec(&effects).prompt, "def g() -> int:");
    assert_eq!(app.session.messages.len(), 4);
    assert_eq!(app.session.messages[2].text, "def g() -> int:");
    assert!(!app.editing_last);
}

#[test]
fn history_and_multi_line_input() {
    let mut app = ready_app();
    exchange(&mut app, "first", "x");
    exchange(&mut app, "second", "y");
    type_text(&mut app, "draft");
    app.update(key(KeyCode::Up));
    assert_eq!(app.input.text(), "second");
    app.update(key(KeyCode::Up));
    assert_eq!(app.input.text(), "first");
    app.update(key(KeyCode::Up));
    assert_eq!(app.input.text(), "first");
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Down));
    assert_eq!(app.input.text(), "draft", "the draft comes back");

    app.update(key(KeyCode::Esc));
    type_text(&mut app, "a");
    app.update(ctrl('j'));
    type_text(&mut app, "b");
    app.update(alt(KeyCode::Enter));
    type_text(&mut app, "c");
    assert_eq!(app.input.text(), "a\nb\nc");
    // Up moves within the input before it reaches the history.
    app.update(key(KeyCode::Up));
    app.update(key(KeyCode::Up));
    assert_eq!(app.input.text(), "a\nb\nc");
    app.update(key(KeyCode::Up));
    assert_eq!(app.input.text(), "second");
    // Pasted text keeps its newlines and is not sent.
    app.update(key(KeyCode::Esc));
    assert!(app.update(Action::Paste("x = 1\r\ny = 2".into())).is_empty());
    assert_eq!(app.input.text(), "x = 1\ny = 2");
}

#[test]
fn send_and_newline_keys_come_from_the_config() {
    let mut keys = BTreeMap::new();
    keys.insert("send".to_owned(), KeyList::One("ctrl-s".into()));
    keys.insert("newline".to_owned(), KeyList::One("enter".into()));
    let mut options = options();
    options.keymap = KeyMap::from_config(&keys).unwrap();
    let mut app = App::new(
        options,
        Session::new(String::new(), PromptMode::Code),
        ModelState::Ready(Box::new(model_info("phi-1"))),
    );
    type_text(&mut app, "def f():");
    assert!(app.update(key(KeyCode::Enter)).is_empty());
    type_text(&mut app, "    pass");
    assert_eq!(app.input.text(), "def f():\n    pass");
    let effects = app.update(ctrl('s'));
    assert_eq!(generate_spec(&effects).prompt, "def f():\n    pass");
}

#[test]
fn code_blocks_are_numbered_selected_copied_and_run() {
    let mut app = ready_app();
    exchange(&mut app, "def f():", "\n    return 1");
    app.update(ctrl('t'));
    exchange(&mut app, "Show me", "Here:\n\n```python\nx = 1\n```\n\nand\n\n```rust\nfn main() {}\n```\n");
    let numbers: Vec<usize> = app.blocks().iter().map(|b| b.number).collect();
    assert_eq!(numbers, [1, 2, 3]);

    // Without a selection, copy and run take the last block.
    assert_eq!(app.update(ctrl('y')), vec![Effect::Copy { text: "fn main() {}".into(), what: "block [3]".into() }]);
    assert!(app.update(ctrl('x')).is_empty(), "rust is not run");
    assert!(app.notice.as_ref().unwrap().text.contains("not Python"));

    app.update(alt(KeyCode::Up));
    assert_eq!(app.selected_block, Some(3));
    app.update(alt(KeyCode::Up));
    app.update(alt(KeyCode::Up));
    app.update(alt(KeyCode::Up));
    assert_eq!(app.selected_block, Some(1));
    assert_eq!(
        app.update(ctrl('y')),
        vec![Effect::Copy { text: "def f():\n    return 1".into(), what: "block [1]".into() }]
    );
    assert_eq!(
        app.update(alt(KeyCode::Char('y'))),
        vec![Effect::Copy { text: "def f():\n    return 1".into(), what: "the reply".into() }]
    );
    let effects = app.update(ctrl('x'));
    assert_eq!(effects, vec![Effect::Run { message: 1, block: 0, code: "def f():\n    return 1".into() }]);
    assert!(app.update(ctrl('x')).is_empty(), "one run at a time");
    let record = RunRecord { block: 0, passed: true, summary: "2 doctests passed".into(), output: String::new() };
    let effects =
        app.update(Action::RunFinished { session: app.session.id.clone(), message: 1, record: record.clone() });
    assert_eq!(effects, vec![Effect::Save]);
    assert_eq!(app.session.messages[1].runs, vec![record]);
    assert!(app.running.is_none());

    app.update(alt(KeyCode::Down));
    assert_eq!(app.selected_block, Some(2));
    assert_eq!(
        app.update(alt(KeyCode::Char('y'))),
        vec![Effect::Copy { text: app.session.messages[3].text.clone(), what: "the reply".into() }]
    );
}

#[test]
fn sessions_overlay_lists_opens_renames_searches_and_deletes() {
    let mut app = ready_app();
    assert_eq!(app.update(ctrl('o')), vec![Effect::ListSessions]);
    let item = |id: &str, title: &str| SessionSummary {
        id: id.into(),
        title: title.into(),
        updated: 0,
        messages: 2,
        snippet: None,
    };
    app.update(Action::SessionList(vec![item("a", "first"), item("b", "second")]));
    app.update(key(KeyCode::Down));
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::OpenSession("b".into())]);

    app.update(key(KeyCode::Char('r')));
    assert_eq!(app.prompt.as_ref().unwrap().purpose, PromptPurpose::Rename { id: "b".into() });
    for _ in 0.."second".len() {
        app.update(key(KeyCode::Backspace));
    }
    type_text(&mut app, "renamed");
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        vec![Effect::RenameSession { id: "b".into(), title: "renamed".into() }]
    );

    app.update(key(KeyCode::Char('/')));
    type_text(&mut app, "fib");
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::SearchSessions("fib".into())]);
    assert!(matches!(&app.overlay, Some(Overlay::Sessions(view)) if view.query == "fib"));
    app.update(Action::SessionList(vec![item("b", "renamed")]));

    app.update(key(KeyCode::Char('d')));
    assert!(app.update(key(KeyCode::Char('x'))).is_empty(), "any other key keeps it");
    app.update(key(KeyCode::Char('d')));
    assert_eq!(app.update(key(KeyCode::Char('y'))), vec![Effect::DeleteSession("b".into())]);

    let mut opened = Session::new("b".into(), PromptMode::Chat);
    opened.messages.push(phi_tui::tui::session::Message::user("hello".into(), PromptMode::Chat));
    app.update(Action::SessionOpened(Ok(Box::new(opened))));
    assert!(app.overlay.is_none());
    assert_eq!(app.session.id, "b");
    assert_eq!(app.history, ["hello"]);
    // Deleting the open session starts a new one.
    assert_eq!(app.update(Action::SessionDeleted(Ok("b".into()))), vec![Effect::ListSessions]);
    assert!(app.session.messages.is_empty() && app.session.id.is_empty());
}

#[test]
fn model_and_adapter_prompts() {
    let mut app = ready_app();
    app.update(key(KeyCode::F(5)));
    assert_eq!(app.prompt.as_ref().unwrap().input.text(), "/models/phi-1.gguf");
    for _ in 0.."phi-1.gguf".len() {
        app.update(key(KeyCode::Backspace));
    }
    type_text(&mut app, "other.gguf");
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::LoadModel(PathBuf::from("/models/other.gguf"))]);
    assert!(matches!(app.model, ModelState::Loading { .. }));
    app.update(Action::ModelLoaded(Ok(Box::new(model_info("other")))));

    app.update(key(KeyCode::F(6)));
    type_text(&mut app, "/a/my adapter.gguf 0.5");
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        vec![Effect::SetAdapter { path: PathBuf::from("/a/my adapter.gguf"), scale: 0.5 }]
    );
    assert!(app.adapter_loading);
    let adapter = AdapterInfo { path: PathBuf::from("/a/my adapter.gguf"), scale: 0.5 };
    app.update(Action::AdapterChanged(Ok(Some(adapter.clone()))));
    assert_eq!(app.adapter, Some(adapter));
    app.update(key(KeyCode::F(6)));
    app.update(ctrl('u'));
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::RemoveAdapter]);
    // Esc leaves a prompt without doing anything.
    app.update(key(KeyCode::F(5)));
    assert!(app.update(key(KeyCode::Esc)).is_empty());
    assert!(app.prompt.is_none());
}

#[test]
fn export_mouse_help_new_and_quit() {
    let mut app = ready_app();
    exchange(&mut app, "def fib(n):", "\n    return n");
    app.update(ctrl('s'));
    assert_eq!(app.prompt.as_ref().unwrap().input.text(), "/home/user/def-fib-n.md");
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        vec![Effect::Export { id: "test-session".into(), path: PathBuf::from("/home/user/def-fib-n.md") }]
    );
    assert_eq!(app.update(key(KeyCode::F(2))), vec![Effect::SetMouseCapture(false)]);
    assert!(!app.mouse_captured);
    app.update(key(KeyCode::F(1)));
    assert_eq!(app.overlay, Some(Overlay::Help));
    app.update(key(KeyCode::Char('z')));
    assert_eq!(app.overlay, None, "any key closes the help");
    assert_eq!(app.input.text(), "", "and is not typed");

    type_text(&mut app, "def g():");
    app.update(key(KeyCode::Enter));
    let effects = app.update(ctrl('q'));
    assert_eq!(effects, vec![Effect::CancelGeneration, Effect::Save, Effect::Quit]);
    assert!(app.quit);
    assert_eq!(app.session.messages.last().unwrap().status, MessageStatus::Cancelled);

    let mut app = ready_app();
    exchange(&mut app, "x", "y");
    app.update(ctrl('n'));
    assert!(app.session.messages.is_empty());
    assert!(app.session.id.is_empty(), "a new session gets its id when first saved");
    assert_eq!(app.update(ctrl('q')), vec![Effect::Quit], "nothing to save");
    assert_eq!(app.session.messages.iter().filter(|m| m.role == Role::User).count(), 0);
}

#[test]
fn scrolling_is_clamped_by_what_the_view_reports() {
    let mut app = ready_app();
    app.update(Action::View(phi_tui::tui::app::ViewReport { height: 10, max_scroll: 12, reveal: None, scroll: 0 }));
    app.update(key(KeyCode::PageUp));
    assert_eq!(app.scroll, 5);
    app.update(Action::Scroll(30));
    assert_eq!(app.scroll, 12);
    app.update(key(KeyCode::PageDown));
    assert_eq!(app.scroll, 7);
    app.update(Action::Scroll(-30));
    assert_eq!(app.scroll, 0);
}

#[test]
fn run_and_verify_uses_the_sandbox_and_doctests() {
    use phi_tui::tui::runner::run_block;
    let passing = "def add(a, b):\n    \"\"\"Add.\n\n    >>> add(1, 2)\n    3\n    >>> add('a', 'b')\n    'ab'\n    \"\"\"\n    return a + b\n";
    let record = run_block(0, passing);
    assert!(record.passed, "{record:?}");
    assert_eq!(record.summary, "2 doctests passed");

    let failing = passing.replace("return a + b", "return a - b if isinstance(a, int) else a + b");
    let record = run_block(1, &failing);
    assert!(!record.passed);
    assert_eq!((record.block, record.summary.as_str()), (1, "1 of 2 doctests failed"));
    assert!(record.output.contains("Failed example"), "{}", record.output);

    let record = run_block(0, "print('hi')\n1 / 0\n");
    assert!(!record.passed);
    assert_eq!(record.summary, "error: ZeroDivisionError: division by zero");
    assert!(record.output.starts_with("hi"), "{}", record.output);

    let record = run_block(0, "x = 1\nprint(x + 1)\n");
    assert_eq!(
        (record.passed, record.summary.as_str(), record.output.as_str()),
        (true, "ran without error (no doctests)", "2")
    );
    // The program cannot reach the network or spawn processes.
    let record = run_block(0, "import subprocess\nsubprocess.run(['true'])\n");
    assert!(!record.passed, "{record:?}");
}

#[test]
fn first_run_pulls_the_first_model_with_progress_and_loads_it() {
    use phi_tui::hub::FetchEvent;
    use phi_tui::models::PullEvent;
    let mut app = App::new(options(), Session::new(String::new(), PromptMode::Code), ModelState::None);
    // F5 offers phi-1; Enter asks for it (the event loop finds it is not installed and pulls it).
    app.update(key(KeyCode::F(5)));
    assert_eq!(app.prompt.as_ref().unwrap().input.text(), "phi-1");
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::LoadModel(PathBuf::from("phi-1"))]);
    app.update(Action::InstallStarted("phi-1".into()));
    let progress = PullEvent::Download(FetchEvent::Progress { file: "model.safetensors".into(), done: 5, total: 10 });
    app.update(Action::InstallProgress(progress.clone()));
    assert_eq!(app.model, ModelState::Installing { what: "phi-1".into(), event: Some(progress) });
    assert!(app.animating());
    // One install at a time.
    app.update(key(KeyCode::F(5)));
    assert!(app.update(key(KeyCode::Enter)).is_empty());
    assert!(app.notice.as_ref().unwrap().text.contains("being installed"));
    // Sending waits for the model; Esc stops the download.
    type_text(&mut app, "def f():");
    assert!(app.update(key(KeyCode::Enter)).is_empty());
    app.input.take();
    assert_eq!(app.update(key(KeyCode::Esc)), vec![Effect::CancelInstall]);
    // A failed install explains itself; a finished one loads the installed file.
    app.update(Action::Installed(Err("the download was stopped; the next pull resumes it".into())));
    assert!(matches!(&app.model, ModelState::Failed { path, .. } if path == &PathBuf::from("phi-1")));
    app.update(Action::InstallStarted("phi-1".into()));
    let gguf = PathBuf::from("/data/models/phi-1.q8_0.gguf");
    let effects = app.update(Action::Installed(Ok((gguf.clone(), "installed phi-1 (q8_0, 1.5 GB)".into()))));
    assert_eq!(effects, vec![Effect::LoadModel(gguf.clone())]);
    assert!(matches!(&app.model, ModelState::Loading { path, .. } if path == &gguf));
    assert_eq!(app.notice.as_ref().unwrap().text, "installed phi-1 (q8_0, 1.5 GB)");
}

#[test]
fn renaming_the_open_conversation_shows_its_new_title_in_the_list() {
    let mut app = ready_app();
    exchange(&mut app, "def add(a, b):", "\n    return a + b");
    let id = app.session.id.clone();
    let listed =
        |title: &str| SessionSummary { id: id.clone(), title: title.into(), updated: 0, messages: 2, snippet: None };
    app.update(ctrl('o'));
    app.update(Action::SessionList(vec![listed("def add(a, b):")]));
    app.update(key(KeyCode::Char('r')));
    for _ in 0.."def add(a, b):".len() {
        app.update(key(KeyCode::Backspace));
    }
    type_text(&mut app, "adding");
    assert_eq!(app.update(key(KeyCode::Enter)), vec![Effect::Save, Effect::ListSessions]);
    let titles = |app: &App| match &app.overlay {
        Some(Overlay::Sessions(view)) => view.items.iter().map(|item| item.title.clone()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(titles(&app), ["adding"], "the list shows the new title at once");
    // The save runs in the background: the listing that follows may have been read before it landed. The app's
    // own copy of the open conversation wins.
    app.update(Action::SessionList(vec![listed("def add(a, b):")]));
    assert_eq!(titles(&app), ["adding"]);
    assert_eq!(app.session.title, "adding");
}

#[test]
fn a_later_success_takes_an_error_down() {
    let mut app = ready_app();
    type_text(&mut app, "def f():");
    app.update(key(KeyCode::Enter));
    app.update(Action::GenerationFailed("the session daemon went away".into()));
    assert!(app.notice.as_ref().is_some_and(|notice| notice.error));

    // A reply that is cancelled proves nothing; one that finishes does.
    app.update(ctrl('r'));
    app.update(Action::Finished(Box::new(summary("", 0, StopReason::Cancelled))));
    assert!(app.notice.as_ref().is_some_and(|notice| notice.error), "{:?}", app.notice);
    app.update(ctrl('r'));
    app.update(Action::Delta { tokens: 1, text: "\n    pass".into() });
    app.update(Action::Finished(Box::new(summary("\n    pass", 1, StopReason::Predicate))));
    assert_eq!(app.notice, None);

    // A rename of another conversation that worked says so, replacing an earlier error too.
    app.update(Action::Error("could not save: disk full".into()));
    app.update(Action::SessionRenamed(Ok(("other".into(), "new title".into()))));
    let notice = app.notice.as_ref().unwrap();
    assert!(!notice.error && notice.text == "renamed to “new title”", "{notice:?}");
}
