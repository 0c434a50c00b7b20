//! Key bindings: the commands the TUI knows, their default keys, and the `[keys]` overrides of the config file.

use std::collections::BTreeMap;
use std::fmt;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::config::KeyList;

/// Everything a key can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    Send,
    Newline,
    Cancel,
    Quit,
    HistoryPrev,
    HistoryNext,
    ScrollUp,
    ScrollDown,
    ScrollBottom,
    Regenerate,
    EditLast,
    ToggleMode,
    NewSession,
    Sessions,
    PrevBlock,
    NextBlock,
    CopyBlock,
    CopyReply,
    RunBlock,
    Export,
    ToggleMouse,
    LoadModel,
    LoadAdapter,
    Finetune,
    ToggleAdapter,
    Help,
}

impl Command {
    pub const ALL: [Command; 26] = [
        Command::Send,
        Command::Newline,
        Command::Cancel,
        Command::Quit,
        Command::HistoryPrev,
        Command::HistoryNext,
        Command::ScrollUp,
        Command::ScrollDown,
        Command::ScrollBottom,
        Command::Regenerate,
        Command::EditLast,
        Command::ToggleMode,
        Command::NewSession,
        Command::Sessions,
        Command::PrevBlock,
        Command::NextBlock,
        Command::CopyBlock,
        Command::CopyReply,
        Command::RunBlock,
        Command::Export,
        Command::ToggleMouse,
        Command::LoadModel,
        Command::LoadAdapter,
        Command::Finetune,
        Command::ToggleAdapter,
        Command::Help,
    ];

    /// The name used in the config file's `[keys]` table.
    pub fn name(self) -> &'static str {
        match self {
            Command::Send => "send",
            Command::Newline => "newline",
            Command::Cancel => "cancel",
            Command::Quit => "quit",
            Command::HistoryPrev => "history_prev",
            Command::HistoryNext => "history_next",
            Command::ScrollUp => "scroll_up",
            Command::ScrollDown => "scroll_down",
            Command::ScrollBottom => "scroll_bottom",
            Command::Regenerate => "regenerate",
            Command::EditLast => "edit_last",
            Command::ToggleMode => "toggle_mode",
            Command::NewSession => "new_session",
            Command::Sessions => "sessions",
            Command::PrevBlock => "prev_block",
            Command::NextBlock => "next_block",
            Command::CopyBlock => "copy_block",
            Command::CopyReply => "copy_reply",
            Command::RunBlock => "run_block",
            Command::Export => "export",
            Command::ToggleMouse => "toggle_mouse",
            Command::LoadModel => "load_model",
            Command::LoadAdapter => "load_adapter",
            Command::Finetune => "finetune",
            Command::ToggleAdapter => "toggle_adapter",
            Command::Help => "help",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Command::Send => "send the message",
            Command::Newline => "insert a newline",
            Command::Cancel => "stop the reply (clears the input when idle)",
            Command::Quit => "quit",
            Command::HistoryPrev => "previous input (on the first line)",
            Command::HistoryNext => "next input (on the last line)",
            Command::ScrollUp => "scroll the conversation up",
            Command::ScrollDown => "scroll the conversation down",
            Command::ScrollBottom => "jump to the latest message",
            Command::Regenerate => "regenerate the last reply",
            Command::EditLast => "edit and resend the last message",
            Command::ToggleMode => "switch prompt mode (code / chat)",
            Command::NewSession => "new conversation",
            Command::Sessions => "conversations: open, rename, delete, search, export",
            Command::PrevBlock => "select the previous code block",
            Command::NextBlock => "select the next code block",
            Command::CopyBlock => "copy the selected (or last) code block",
            Command::CopyReply => "copy the whole reply",
            Command::RunBlock => "run the selected (or last) code block and its doctests",
            Command::Export => "export the conversation to Markdown",
            Command::ToggleMouse => "release / capture the mouse (terminal selection)",
            Command::LoadModel => "load another model",
            Command::LoadAdapter => "set or remove the LoRA adapter (lists the fine-tuned ones)",
            Command::Finetune => "fine-tune: train a LoRA adapter on your code (also `:finetune PATH`)",
            Command::ToggleAdapter => "base model ⇄ adapter, to compare replies",
            Command::Help => "this help",
        }
    }

    pub fn default_keys(self) -> &'static [&'static str] {
        match self {
            Command::Send => &["enter"],
            Command::Newline => &["alt-enter", "ctrl-j"],
            Command::Cancel => &["esc", "ctrl-c"],
            Command::Quit => &["ctrl-q"],
            Command::HistoryPrev => &["up"],
            Command::HistoryNext => &["down"],
            Command::ScrollUp => &["pageup"],
            Command::ScrollDown => &["pagedown"],
            Command::ScrollBottom => &["ctrl-end"],
            Command::Regenerate => &["ctrl-r"],
            Command::EditLast => &["ctrl-e"],
            Command::ToggleMode => &["ctrl-t"],
            Command::NewSession => &["ctrl-n"],
            Command::Sessions => &["ctrl-o"],
            Command::PrevBlock => &["alt-up"],
            Command::NextBlock => &["alt-down"],
            Command::CopyBlock => &["ctrl-y"],
            Command::CopyReply => &["alt-y"],
            Command::RunBlock => &["ctrl-x"],
            Command::Export => &["ctrl-s"],
            Command::ToggleMouse => &["f2"],
            Command::LoadModel => &["f5"],
            Command::LoadAdapter => &["f6"],
            Command::Finetune => &["f7"],
            Command::ToggleAdapter => &["f8"],
            Command::Help => &["f1"],
        }
    }

    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A key with its modifiers, normalised so that a parsed binding and a terminal event compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyBinding {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("[keys]: unknown command `{0}` (see the help screen, F1, for the names)")]
    UnknownCommand(String),
    #[error("[keys] {command}: cannot read key `{key}` (examples: enter, ctrl-j, alt-enter, f5, pageup, ctrl-y)")]
    BadKey { command: String, key: String },
    #[error("[keys]: {key} is bound to both {first} and {second}")]
    Conflict { key: String, first: &'static str, second: &'static str },
    #[error("[keys] {0}: give at least one key")]
    NoKeys(String),
}

impl KeyBinding {
    pub fn new(code: KeyCode, modifiers: KeyModifiers) -> Self {
        Self::normalise(code, modifiers)
    }

    pub fn from_event(event: &KeyEvent) -> Self {
        Self::normalise(event.code, event.modifiers)
    }

    fn normalise(code: KeyCode, modifiers: KeyModifiers) -> Self {
        let mut modifiers = modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        let code = match code {
            // A character's case already says whether shift was down.
            KeyCode::Char(c) => {
                modifiers.remove(KeyModifiers::SHIFT);
                if modifiers.contains(KeyModifiers::CONTROL) {
                    KeyCode::Char(c.to_ascii_lowercase())
                } else {
                    KeyCode::Char(c)
                }
            }
            KeyCode::BackTab => {
                modifiers.insert(KeyModifiers::SHIFT);
                KeyCode::Tab
            }
            other => other,
        };
        Self { code, modifiers }
    }

    /// Parses `ctrl-j`, `alt-enter`, `shift-tab`, `f5`, `pageup`, `y`, `Y`, `space`, …
    pub fn parse(spec: &str) -> Option<KeyBinding> {
        let spec = spec.trim();
        let mut modifiers = KeyModifiers::NONE;
        let mut rest = spec;
        loop {
            let lower = rest.to_ascii_lowercase();
            let (prefix_len, modifier) = if lower.starts_with("ctrl-") || lower.starts_with("ctrl+") {
                (5, KeyModifiers::CONTROL)
            } else if lower.starts_with("alt-") || lower.starts_with("alt+") {
                (4, KeyModifiers::ALT)
            } else if lower.starts_with("shift-") || lower.starts_with("shift+") {
                (6, KeyModifiers::SHIFT)
            } else {
                break;
            };
            modifiers |= modifier;
            rest = &rest[prefix_len..];
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(c), None) => {
                if modifiers.contains(KeyModifiers::SHIFT) {
                    KeyCode::Char(c.to_ascii_uppercase())
                } else {
                    KeyCode::Char(c)
                }
            }
            _ => match rest.to_ascii_lowercase().as_str() {
                "enter" | "return" => KeyCode::Enter,
                "esc" | "escape" => KeyCode::Esc,
                "tab" => KeyCode::Tab,
                "backspace" => KeyCode::Backspace,
                "delete" | "del" => KeyCode::Delete,
                "insert" | "ins" => KeyCode::Insert,
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "pageup" | "pgup" => KeyCode::PageUp,
                "pagedown" | "pgdn" => KeyCode::PageDown,
                "space" => KeyCode::Char(' '),
                f if f.starts_with('f') => match f[1..].parse::<u8>() {
                    Ok(n @ 1..=24) => KeyCode::F(n),
                    _ => return None,
                },
                _ => return None,
            },
        };
        Some(Self::normalise(code, modifiers))
    }
}

impl fmt::Display for KeyBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            f.write_str("Ctrl-")?;
        }
        if self.modifiers.contains(KeyModifiers::ALT) {
            f.write_str("Alt-")?;
        }
        if self.modifiers.contains(KeyModifiers::SHIFT) {
            f.write_str("Shift-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) if self.modifiers.contains(KeyModifiers::CONTROL) => {
                write!(f, "{}", c.to_ascii_uppercase())
            }
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::Backspace => f.write_str("Backspace"),
            KeyCode::Delete => f.write_str("Delete"),
            KeyCode::Insert => f.write_str("Insert"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            KeyCode::Home => f.write_str("Home"),
            KeyCode::End => f.write_str("End"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::F(n) => write!(f, "F{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Keys → commands.
#[derive(Debug, Clone)]
pub struct KeyMap {
    by_command: BTreeMap<Command, Vec<KeyBinding>>,
}

impl Default for KeyMap {
    fn default() -> Self {
        Self::from_config(&BTreeMap::new()).unwrap_or_else(|_| Self { by_command: BTreeMap::new() })
    }
}

impl KeyMap {
    /// The defaults with the config file's `[keys]` applied. A key the user binds is taken away from any command
    /// that has it by default; two commands the user binds to one key are an error.
    pub fn from_config(overrides: &BTreeMap<String, KeyList>) -> Result<KeyMap, KeyError> {
        let mut user: BTreeMap<Command, Vec<KeyBinding>> = BTreeMap::new();
        for (name, keys) in overrides {
            let command = Command::from_name(name).ok_or_else(|| KeyError::UnknownCommand(name.clone()))?;
            let keys = keys.keys();
            if keys.is_empty() {
                return Err(KeyError::NoKeys(name.clone()));
            }
            let mut bindings = Vec::new();
            for key in keys {
                let binding = KeyBinding::parse(key)
                    .ok_or_else(|| KeyError::BadKey { command: name.clone(), key: key.to_owned() })?;
                bindings.push(binding);
            }
            user.insert(command, bindings);
        }
        let mut owner: BTreeMap<String, Command> = BTreeMap::new();
        for (&command, bindings) in &user {
            for binding in bindings {
                if let Some(&first) = owner.get(&binding.to_string()) {
                    if first != command {
                        return Err(KeyError::Conflict {
                            key: binding.to_string(),
                            first: first.name(),
                            second: command.name(),
                        });
                    }
                }
                owner.insert(binding.to_string(), command);
            }
        }
        let mut by_command = BTreeMap::new();
        for command in Command::ALL {
            let bindings = match user.get(&command) {
                Some(bindings) => bindings.clone(),
                None => command
                    .default_keys()
                    .iter()
                    .filter_map(|spec| KeyBinding::parse(spec))
                    .filter(|binding| owner.get(&binding.to_string()).is_none_or(|&c| c == command))
                    .collect(),
            };
            by_command.insert(command, bindings);
        }
        Ok(KeyMap { by_command })
    }

    pub fn lookup(&self, event: &KeyEvent) -> Option<Command> {
        let binding = KeyBinding::from_event(event);
        // Ctrl-J and Alt-Enter are one key in some terminals' eyes; the table order decides ties.
        Command::ALL.into_iter().find(|command| self.keys(*command).contains(&binding))
    }

    pub fn keys(&self, command: Command) -> &[KeyBinding] {
        self.by_command.get(&command).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The keys of a command for display, e.g. `Alt-Enter / Ctrl-J`; `—` when unbound.
    pub fn describe(&self, command: Command) -> String {
        let keys: Vec<String> = self.keys(command).iter().map(ToString::to_string).collect();
        if keys.is_empty() {
            "—".to_owned()
        } else {
            keys.join(" / ")
        }
    }

    /// The first key of a command, for short hints.
    pub fn first(&self, command: Command) -> String {
        self.keys(command).first().map(ToString::to_string).unwrap_or_else(|| "—".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn parses_and_matches_terminal_events() {
        let map = KeyMap::default();
        assert_eq!(map.lookup(&key(KeyCode::Enter, KeyModifiers::NONE)), Some(Command::Send));
        assert_eq!(map.lookup(&key(KeyCode::Enter, KeyModifiers::ALT)), Some(Command::Newline));
        assert_eq!(map.lookup(&key(KeyCode::Char('j'), KeyModifiers::CONTROL)), Some(Command::Newline));
        assert_eq!(map.lookup(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Command::Cancel));
        assert_eq!(map.lookup(&key(KeyCode::Esc, KeyModifiers::NONE)), Some(Command::Cancel));
        assert_eq!(map.lookup(&key(KeyCode::F(1), KeyModifiers::NONE)), Some(Command::Help));
        assert_eq!(map.lookup(&key(KeyCode::Char('y'), KeyModifiers::ALT)), Some(Command::CopyReply));
        assert_eq!(map.lookup(&key(KeyCode::Char('a'), KeyModifiers::NONE)), None);
        assert_eq!(map.lookup(&key(KeyCode::Char('A'), KeyModifiers::SHIFT)), None);
    }

    #[test]
    fn display_round_trips() {
        for spec in ["ctrl-j", "alt-enter", "f5", "pageup", "shift-tab", "y", "ctrl-end"] {
            let binding = KeyBinding::parse(spec).unwrap_or_else(|| panic!("{spec}"));
            let shown = binding.to_string().replace('↑', "up").replace('↓', "down");
            assert_eq!(KeyBinding::parse(&shown.replace("PgUp", "pageup")), Some(binding), "{spec} → {shown}");
        }
        assert_eq!(KeyBinding::parse("Ctrl+Shift+x"), KeyBinding::parse("ctrl-x"));
        assert_eq!(KeyBinding::parse("ctrl-"), None);
        assert_eq!(KeyBinding::parse("f99"), None);
        assert_eq!(KeyBinding::parse("hyper-x"), None);
    }

    #[test]
    fn user_keys_override_and_steal_defaults() {
        let mut overrides = BTreeMap::new();
        overrides.insert("send".to_owned(), KeyList::Many(vec!["ctrl-s".into(), "alt-enter".into()]));
        overrides.insert("newline".to_owned(), KeyList::One("enter".into()));
        let map = KeyMap::from_config(&overrides).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.lookup(&key(KeyCode::Enter, KeyModifiers::NONE)), Some(Command::Newline));
        assert_eq!(map.lookup(&key(KeyCode::Char('s'), KeyModifiers::CONTROL)), Some(Command::Send));
        assert_eq!(map.lookup(&key(KeyCode::Enter, KeyModifiers::ALT)), Some(Command::Send));
        // Export lost its default Ctrl-S to `send`.
        assert!(map.keys(Command::Export).is_empty());
        assert_eq!(map.describe(Command::Export), "—");
    }

    #[test]
    fn config_errors_name_the_problem() {
        let one = |name: &str, key: &str| {
            let mut overrides = BTreeMap::new();
            overrides.insert(name.to_owned(), KeyList::One(key.to_owned()));
            KeyMap::from_config(&overrides).unwrap_err()
        };
        assert_eq!(one("sned", "enter"), KeyError::UnknownCommand("sned".into()));
        assert!(matches!(one("send", "ctrl-"), KeyError::BadKey { .. }));
        let mut overrides = BTreeMap::new();
        overrides.insert("send".to_owned(), KeyList::One("ctrl-k".into()));
        overrides.insert("quit".to_owned(), KeyList::One("ctrl-k".into()));
        assert!(matches!(KeyMap::from_config(&overrides), Err(KeyError::Conflict { .. })));
    }
}
