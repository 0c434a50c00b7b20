//! The one progress-bar style of the CLI commands (convert, pull, eval, datagen, finetune):
//! `⠋ LABEL DONE/TOTAL [=====>    ] MESSAGE ETA 1m`, counting items or bytes. indicatif draws only when stderr is a
//! terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    Items,
    /// Bytes, shown with their rate.
    Bytes,
}

/// The style of a bar of `unit`s; `label` (may be empty) says what they are ("step", "kept", "downloading").
pub(super) fn style(label: &str, unit: Unit) -> ProgressStyle {
    ProgressStyle::with_template(&template(label, unit))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn template(label: &str, unit: Unit) -> String {
    let label = if label.is_empty() { String::new() } else { format!("{label} ") };
    let count = match unit {
        Unit::Items => "{pos}/{len} [{bar:30}]",
        Unit::Bytes => "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
    };
    format!("{{spinner}} {label}{count} {{msg}} ETA {{eta}}")
}

/// A bar of `len` `unit`s in [`style`].
pub(super) fn bar(len: u64, label: &str, unit: Unit) -> ProgressBar {
    ProgressBar::new(len).with_style(style(label, unit))
}

/// For work of unknown length (llama.cpp's quantizer): a spinner and the message.
pub(super) fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_are_valid() {
        // An invalid template would fall back to indicatif's default bar without a word.
        for unit in [Unit::Items, Unit::Bytes] {
            for label in ["", "step"] {
                let template = template(label, unit);
                assert!(ProgressStyle::with_template(&template).is_ok(), "{template}");
            }
        }
        assert_eq!(template("kept", Unit::Items), "{spinner} kept {pos}/{len} [{bar:30}] {msg} ETA {eta}");
    }
}
