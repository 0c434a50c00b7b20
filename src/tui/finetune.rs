//! The fine-tune screen's state and keys (no IO): choose the data and the main settings, see what a run would
//! cost, start it, and follow it (losses, speed, ETA) while the chat stays usable. The event loop runs the
//! training (`finetune::live`) and applies every improved adapter to the session.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::input::Input;
use crate::finetune::live::{DataSummary, LiveEvent, LiveOutcome, RunState};
use crate::finetune::TrainEvent;

/// The settings fields, in screen order.
pub const FIELDS: [&str; 6] = ["data", "rank", "steps", "learning rate", "batch", "sequence length"];
/// Default optimizer steps of a run from the screen.
pub const DEFAULT_STEPS: u64 = 200;
const DEFAULT_RANK: usize = 8;
const DEFAULT_LR: f64 = 2e-4;
const DEFAULT_BATCH: usize = 4;
/// Shorter than the CLI's 512: a step on phi-1 then takes seconds on a CPU, and the chart moves.
const DEFAULT_SEQ_LEN: usize = 256;
/// Steps whose speed the ETA averages.
const SPEED_WINDOW: usize = 10;

/// What the screen asks the event loop to prepare: the data and the settings as entered.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneSpec {
    pub data: PathBuf,
    pub rank: usize,
    pub steps: u64,
    pub lr: f64,
    pub batch: usize,
    pub seq_len: usize,
}

/// A prepared run, as the screen shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRun {
    pub name: String,
    pub summary: DataSummary,
    /// A checkpoint of the same run exists: starting resumes it.
    pub resumable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Editing the settings.
    Setup,
    /// Loading the base model and the data, measuring a step.
    Checking,
    Ready(PreparedRun),
    Training,
    Ended(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneView {
    pub fields: [Input; 6],
    pub focus: usize,
    pub phase: Phase,
    pub run: Option<PreparedRun>,
    /// (step, training loss) and (step, validation loss), for the chart.
    pub losses: Vec<(f64, f64)>,
    pub validation: Vec<(f64, f64)>,
    pub step: u64,
    pub total_steps: u64,
    pub tokens_per_s: f64,
    /// Seconds of the latest steps, for the ETA.
    recent_seconds: Vec<f64>,
    /// The step of the adapter the session applies.
    pub adapter_step: Option<u64>,
    pub best_validation: Option<f64>,
    pub paused: bool,
}

/// What a key on the screen asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum FinetuneRequest {
    Prepare(FinetuneSpec),
    Start { resume: bool },
    TogglePause,
    Stop,
    Close,
}

impl FinetuneView {
    pub fn new(data: &str) -> Self {
        FinetuneView {
            fields: [
                Input::new(data),
                Input::new(&DEFAULT_RANK.to_string()),
                Input::new(&DEFAULT_STEPS.to_string()),
                Input::new(&format!("{DEFAULT_LR:e}")),
                Input::new(&DEFAULT_BATCH.to_string()),
                Input::new(&DEFAULT_SEQ_LEN.to_string()),
            ],
            focus: 0,
            phase: Phase::Setup,
            run: None,
            losses: Vec::new(),
            validation: Vec::new(),
            step: 0,
            total_steps: 0,
            tokens_per_s: 0.0,
            recent_seconds: Vec::new(),
            adapter_step: None,
            best_validation: None,
            paused: false,
        }
    }

    pub fn training(&self) -> bool {
        self.phase == Phase::Training
    }

    /// The settings as entered, or what is wrong with them.
    pub fn spec(&self) -> Result<FinetuneSpec, String> {
        let text = |i: usize| self.fields[i].text().trim().to_owned();
        let data = text(0);
        if data.is_empty() {
            return Err("data: a directory, a .py file or a JSONL file".to_owned());
        }
        let rank = text(1).parse().ok().filter(|&r| r > 0).ok_or("rank: a whole number, at least 1")?;
        let steps = text(2).parse().ok().filter(|&s| s > 0).ok_or("steps: a whole number, at least 1")?;
        let lr =
            text(3).parse().ok().filter(|&lr: &f64| lr > 0.0 && lr.is_finite()).ok_or("learning rate: e.g. 2e-4")?;
        let batch = text(4).parse().ok().filter(|&b| b > 0).ok_or("batch: a whole number, at least 1")?;
        let seq_len = text(5).parse().ok().filter(|&n| n >= 2).ok_or("sequence length: tokens, at least 2")?;
        Ok(FinetuneSpec { data: PathBuf::from(data), rank, steps, lr, batch, seq_len })
    }

    /// Seconds left at the recent speed.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.recent_seconds.is_empty() {
            return None;
        }
        let mean = self.recent_seconds.iter().sum::<f64>() / self.recent_seconds.len() as f64;
        Some(mean * self.total_steps.saturating_sub(self.step) as f64)
    }

    pub fn key(&mut self, key: KeyEvent) -> Option<Result<Option<FinetuneRequest>, String>> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match (&self.phase, key.code) {
            (_, KeyCode::Esc) => Some(Ok(Some(FinetuneRequest::Close))),
            (Phase::Training, KeyCode::Char('p')) => Some(Ok(Some(FinetuneRequest::TogglePause))),
            (Phase::Training, KeyCode::Char('s')) => Some(Ok(Some(FinetuneRequest::Stop))),
            (Phase::Training | Phase::Checking, KeyCode::Char(_)) if !ctrl => Some(Ok(None)),
            (Phase::Training | Phase::Checking, _) => None,
            (Phase::Ready(run), KeyCode::Enter) => Some(Ok(Some(FinetuneRequest::Start { resume: run.resumable }))),
            (Phase::Ready(_), KeyCode::Char('n')) if ctrl => Some(Ok(Some(FinetuneRequest::Start { resume: false }))),
            (_, KeyCode::Enter) => Some(self.spec().map(|spec| {
                self.phase = Phase::Checking;
                Some(FinetuneRequest::Prepare(spec))
            })),
            (_, KeyCode::Tab | KeyCode::Down) => {
                self.focus = (self.focus + 1) % FIELDS.len();
                Some(Ok(None))
            }
            (_, KeyCode::BackTab | KeyCode::Up) => {
                self.focus = (self.focus + FIELDS.len() - 1) % FIELDS.len();
                Some(Ok(None))
            }
            (_, code @ (KeyCode::Char(_) | KeyCode::Backspace | KeyCode::Delete | KeyCode::Left | KeyCode::Right))
                if !ctrl =>
            {
                let input = &mut self.fields[self.focus];
                match code {
                    KeyCode::Char(c) => input.insert(c),
                    KeyCode::Backspace => input.backspace(),
                    KeyCode::Delete => input.delete(),
                    KeyCode::Left => input.left(),
                    _ => input.right(),
                }
                // Changed settings must be checked again before a start.
                self.phase = Phase::Setup;
                Some(Ok(None))
            }
            _ => None,
        }
    }

    pub fn prepared(&mut self, result: Result<PreparedRun, String>) {
        match result {
            Ok(run) => {
                self.run = Some(run.clone());
                self.phase = Phase::Ready(run);
            }
            Err(e) => self.phase = Phase::Failed(e),
        }
    }

    pub fn started(&mut self) {
        self.phase = Phase::Training;
        self.losses.clear();
        self.validation.clear();
        self.recent_seconds.clear();
        self.paused = false;
    }

    pub fn event(&mut self, event: &LiveEvent) {
        match event {
            LiveEvent::Train(TrainEvent::Started { start_step, total_steps, .. }) => {
                self.step = *start_step;
                self.total_steps = *total_steps;
            }
            LiveEvent::Train(TrainEvent::Step(report)) => {
                self.step = report.step;
                self.total_steps = report.total_steps;
                self.losses.push((report.step as f64, report.loss));
                self.tokens_per_s = report.tokens as f64 / report.seconds.max(1e-9);
                self.recent_seconds.push(report.seconds);
                if self.recent_seconds.len() > SPEED_WINDOW {
                    self.recent_seconds.remove(0);
                }
            }
            LiveEvent::Train(TrainEvent::Validation { step, loss, .. }) => {
                self.validation.push((*step as f64, *loss));
            }
            LiveEvent::Train(_) => {}
            LiveEvent::AdapterWritten { step, validation_loss, .. } => {
                self.adapter_step = Some(*step);
                if validation_loss.is_some() {
                    self.best_validation = *validation_loss;
                }
            }
        }
    }

    pub fn ended(&mut self, result: &Result<LiveOutcome, String>) {
        self.paused = false;
        self.phase = match result {
            Ok(outcome) => {
                let kept = format!("{} (step {})", outcome.adapter.display(), outcome.provenance.adapter_step);
                Phase::Ended(match outcome.state {
                    RunState::Stopped => format!(
                        "stopped at step {}/{}; kept the best adapter {kept}; Enter then Enter resumes",
                        outcome.steps_done, outcome.total_steps
                    ),
                    _ => format!("finished {} steps; kept {kept}", outcome.steps_done),
                })
            }
            Err(e) => Phase::Failed(e.clone()),
        };
    }

    /// The first and the latest training loss.
    pub fn loss_trend(&self) -> Option<(f64, f64)> {
        Some((self.losses.first()?.1, self.losses.last()?.1))
    }
}
