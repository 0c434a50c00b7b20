//! Turning sampled token pieces into streamed text.
//!
//! Token pieces are raw bytes: one token may end in the middle of a UTF-8 character, and a stop string may span
//! several tokens. [`TextStream`] only releases text that is valid UTF-8 and that can no longer turn out to be the
//! start of a stop string, so a caller never sees half a character or half a stop string.

use std::sync::Arc;

/// A caller-supplied rule over the text generated so far. It returns the byte offset at which the generation should
/// end (the text is cut there), or `None` to go on. The language server uses it for Python block rules.
pub type StopPredicate = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// Why a [`TextStream`] ended the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextStop {
    StopString(String),
    Predicate,
}

pub(crate) struct TextStream {
    stop_strings: Vec<String>,
    predicate: Option<StopPredicate>,
    /// Bytes of a character that is not complete yet.
    pending_bytes: Vec<u8>,
    /// All decoded text so far (the final text, once the generation ends).
    text: String,
    /// How much of `text` has been handed out.
    emitted: usize,
}

impl TextStream {
    pub(crate) fn new(stop_strings: Vec<String>, predicate: Option<StopPredicate>) -> Self {
        let stop_strings = stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stop_strings, predicate, pending_bytes: Vec::new(), text: String::new(), emitted: 0 }
    }

    /// Adds the bytes of one token. Returns the text that may be shown now, and whether a stop rule fired.
    pub(crate) fn push(&mut self, piece: &[u8]) -> (String, Option<TextStop>) {
        self.pending_bytes.extend_from_slice(piece);
        let valid_up_to = match std::str::from_utf8(&self.pending_bytes) {
            Ok(_) => self.pending_bytes.len(),
            // An invalid sequence (not just an unfinished one) can never become valid: show it replaced.
            Err(e) if e.error_len().is_some() => {
                let lossy = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                self.text.push_str(&lossy);
                return self.after_text_grew();
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending_bytes.split_off(valid_up_to);
        if let Ok(complete) = std::str::from_utf8(&self.pending_bytes) {
            self.text.push_str(complete);
        }
        self.pending_bytes = rest;
        self.after_text_grew()
    }

    /// Releases everything still held back (at the end of a generation that no stop rule ended).
    pub(crate) fn flush(&mut self) -> String {
        if !self.pending_bytes.is_empty() {
            let lossy = String::from_utf8_lossy(&self.pending_bytes).into_owned();
            self.pending_bytes.clear();
            self.text.push_str(&lossy);
        }
        self.take_up_to(self.text.len())
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    fn after_text_grew(&mut self) -> (String, Option<TextStop>) {
        // A stop string can only start in text that has not been emitted: emitted text never ends in a stop prefix.
        if let Some((at, stop)) = self.find_stop_string() {
            self.text.truncate(at);
            self.pending_bytes.clear();
            let delta = self.take_up_to(at);
            return (delta, Some(TextStop::StopString(stop)));
        }
        if let Some(predicate) = &self.predicate {
            if let Some(cut) = predicate(&self.text) {
                let cut = floor_char_boundary(&self.text, cut.min(self.text.len()));
                // Text already shown stays shown; the summary's text is the authoritative result.
                self.text.truncate(cut);
                self.pending_bytes.clear();
                let delta = self.take_up_to(self.text.len());
                return (delta, Some(TextStop::Predicate));
            }
        }
        let hold = self.longest_stop_prefix_suffix();
        let safe = floor_char_boundary(&self.text, self.text.len() - hold);
        (self.take_up_to(safe), None)
    }

    fn find_stop_string(&self) -> Option<(usize, String)> {
        let max_len = self.stop_strings.iter().map(String::len).max()?;
        let search_from = floor_char_boundary(&self.text, self.emitted.saturating_sub(max_len));
        let window = &self.text[search_from..];
        self.stop_strings
            .iter()
            .filter_map(|stop| window.find(stop.as_str()).map(|i| (search_from + i, stop.clone())))
            .min_by_key(|(at, _)| *at)
    }

    /// The length of the longest suffix of the text that is a proper prefix of a stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let unemitted = &self.text[self.emitted..];
        self.stop_strings
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(unemitted.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && unemitted.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }

    fn take_up_to(&mut self, end: usize) -> String {
        if end <= self.emitted {
            return String::new();
        }
        let delta = self.text[self.emitted..end].to_owned();
        self.emitted = end;
        delta
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, String, Option<TextStop>) {
        let mut stream = TextStream::new(stops.iter().map(|s| s.to_string()).collect(), None);
        let mut deltas = Vec::new();
        for piece in pieces {
            let (delta, stop) = stream.push(piece);
            deltas.push(delta);
            if stop.is_some() {
                return (deltas, stream.text().to_owned(), stop);
            }
        }
        deltas.push(stream.flush());
        (deltas, stream.text().to_owned(), None)
    }

    #[test]
    fn partial_utf8_is_held_until_complete() {
        let snake = "🐍".as_bytes();
        let (deltas, text, stop) = run(&[], &[b"a", &snake[..2], &snake[2..], b"b"]);
        assert_eq!(deltas, ["a", "", "🐍", "b", ""]);
        assert_eq!(text, "a🐍b");
        assert_eq!(stop, None);
    }

    #[test]
    fn stop_string_across_tokens_is_never_emitted() {
        let (deltas, text, stop) = run(&["\ndef"], &[b"x = 1", b"\n", b"de", b"f foo"]);
        assert_eq!(deltas, ["x = 1", "", "", ""]);
        assert_eq!(text, "x = 1");
        assert_eq!(stop, Some(TextStop::StopString("\ndef".into())));
    }

    #[test]
    fn held_back_prefix_is_released_when_it_stops_matching() {
        let (deltas, text, stop) = run(&["\ndef"], &[b"a\n", b"de", b"lta"]);
        assert_eq!(deltas, ["a", "", "\ndelta", ""]);
        assert_eq!(text, "a\ndelta");
        assert_eq!(stop, None);
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let (_, text, stop) = run(&["END", "\n\n"], &[b"one\n\ntwo END"]);
        assert_eq!(text, "one");
        assert_eq!(stop, Some(TextStop::StopString("\n\n".into())));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_held_forever() {
        let (deltas, text, _) = run(&[], &[b"a\xff", b"b"]);
        assert_eq!(deltas.concat(), "a\u{fffd}b");
        assert_eq!(text, "a\u{fffd}b");
    }

    #[test]
    fn predicate_cuts_the_text() {
        let predicate: StopPredicate = Arc::new(|text: &str| text.find("\nx").map(|i| i + 1));
        let mut stream = TextStream::new(Vec::new(), Some(predicate));
        assert_eq!(stream.push(b"ab"), ("ab".into(), None));
        let (delta, stop) = stream.push(b"\nxyz");
        assert_eq!(delta, "\n");
        assert_eq!(stop, Some(TextStop::Predicate));
        assert_eq!(stream.text(), "ab\n");
    }
}
