//! Helpers for tests of the TUI (state updates and snapshots): sample model info, keys, and a TestBackend render.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::{Action, App, AppOptions, Effect, ModelState, ViewReport};
use super::render::{render, RenderCache};
use super::session::Session;
use crate::config::PromptMode;
use crate::engine::{FlashAttention, GenerationSummary, ModelInfo, StopReason, Timings};

/// A phi-1-like model: no chat template.
pub fn model_info(name: &str) -> ModelInfo {
    ModelInfo {
        path: PathBuf::from(format!("/models/{name}.gguf")),
        name: name.to_owned(),
        architecture: "phi2".to_owned(),
        file_type: "F16".to_owned(),
        parameters: 1_418_270_720,
        size_bytes: 2_836_541_440,
        n_vocab: 51200,
        n_layer: 24,
        context_train: 2048,
        context_size: 2048,
        sequences: 1,
        threads: 2,
        device: "CPU".to_owned(),
        gpu_layers: 0,
        flash_attention: FlashAttention::Auto,
        has_chat_template: false,
        fim_tokens: None,
        eos_token: 50256,
    }
}

/// Options with a fixed config path and export directory, so that screens do not depend on the machine.
pub fn options() -> AppOptions {
    AppOptions {
        config_path: PathBuf::from("/home/user/.config/phi-tui/config.toml"),
        export_dir: PathBuf::from("/home/user"),
        ..AppOptions::default()
    }
}

/// An app with phi-1 loaded and an empty code-mode session.
pub fn ready_app() -> App {
    App::new(
        options(),
        Session::new("test-session".into(), PromptMode::Code),
        ModelState::Ready(Box::new(model_info("phi-1"))),
    )
}

pub fn key(code: KeyCode) -> Action {
    Action::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub fn ctrl(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

pub fn alt(code: KeyCode) -> Action {
    Action::Key(KeyEvent::new(code, KeyModifiers::ALT))
}

/// Types text key by key (newlines with Alt-Enter).
pub fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        let action = if c == '\n' { alt(KeyCode::Enter) } else { key(KeyCode::Char(c)) };
        let effects = app.update(action);
        debug_assert!(effects.is_empty());
    }
}

/// A finished generation's summary.
pub fn summary(text: &str, tokens: usize, stop: StopReason) -> GenerationSummary {
    GenerationSummary {
        prompt_tokens: vec![1; 12],
        reused_tokens: 0,
        tokens: vec![2; tokens],
        text: text.to_owned(),
        stop_reason: stop,
        timings: Timings { gen_ms: tokens as f64 * 10.0, gen_tokens_decoded: tokens, ..Timings::default() },
        last_logits: None,
    }
}

/// Sends `input`, streams `reply` in pieces and finishes it. Returns the effects of the send.
pub fn exchange(app: &mut App, input: &str, reply: &str) -> Vec<Effect> {
    type_text(app, input);
    let effects = app.update(key(KeyCode::Enter));
    for piece in reply.split_inclusive(' ') {
        app.update(Action::Delta { tokens: 1, text: piece.to_owned() });
    }
    let tokens = reply.split_inclusive(' ').count();
    app.update(Action::Finished(Box::new(summary(reply, tokens, StopReason::Predicate))));
    effects
}

/// Renders the app into a TestBackend of the given size (twice, as the event loop does when the view changes).
pub fn render_app(app: &mut App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(e) => panic!("test backend: {e}"),
    };
    let mut cache = RenderCache::new();
    for _ in 0..2 {
        let mut report = ViewReport::default();
        if let Err(e) = terminal.draw(|frame| report = render(app, &mut cache, frame)) {
            panic!("draw: {e}");
        }
        app.update(Action::View(report));
    }
    terminal
}

/// A fine-tuning run's progress, as the training thread reports it: `losses[i]` is step `i + 1`'s.
pub fn finetune_progress(app: &mut App, losses: &[f64], total_steps: u64) {
    use crate::finetune::live::LiveEvent;
    use crate::finetune::{StepReport, TrainEvent};
    app.update(Action::FinetuneProgress(LiveEvent::Train(TrainEvent::Started {
        start_step: 0,
        total_steps,
        steps_per_epoch: total_steps,
    })));
    for (i, &loss) in losses.iter().enumerate() {
        let report = StepReport {
            step: i as u64 + 1,
            total_steps,
            epoch: 0,
            loss,
            lr: 2e-4,
            grad_norm: 1.0,
            tokens: 1000,
            seconds: 0.5,
            loss_scale: None,
            skipped: false,
        };
        app.update(Action::FinetuneProgress(LiveEvent::Train(TrainEvent::Step(report))));
    }
}
