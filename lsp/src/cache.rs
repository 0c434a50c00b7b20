//! Recent suggestions, so that typing into a suggestion does not ask the model again.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use crate::stop::Shape;

/// How many suggestions the cache keeps.
pub const CACHE_ENTRIES: usize = 64;

/// A least-recently-used list of suggestions. An entry matches a later request for the same document, shape and
/// text after the cursor when the text before the cursor is the entry's plus a start of its suggestion: the user
/// typed part of it, and the rest is still the answer.
#[derive(Debug, Default)]
pub struct SuggestionCache {
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    uri: String,
    shape: Shape,
    /// The document before the cursor when the suggestion was made.
    before: String,
    /// A hash of the document after the cursor: typing into a suggestion does not change it.
    after_hash: u64,
    suggestion: String,
}

impl SuggestionCache {
    /// The rest of a cached suggestion that the text before the cursor has typed into, if any (never empty).
    pub fn lookup(&mut self, uri: &str, shape: Shape, before: &str, after: &str) -> Option<String> {
        let after_hash = hash(after);
        let position = self.entries.iter().position(|entry| {
            entry.uri == uri
                && entry.shape == shape
                && entry.after_hash == after_hash
                && before.len() >= entry.before.len()
                && before.len() - entry.before.len() < entry.suggestion.len()
                && before.starts_with(entry.before.as_str())
                && entry.suggestion.starts_with(&before[entry.before.len()..])
        })?;
        let entry = self.entries.remove(position)?;
        let rest = entry.suggestion[before.len() - entry.before.len()..].to_owned();
        self.entries.push_front(entry);
        (!rest.trim().is_empty()).then_some(rest)
    }

    pub fn insert(&mut self, uri: &str, shape: Shape, before: &str, after: &str, suggestion: &str) {
        let after_hash = hash(after);
        self.entries.retain(|entry| !(entry.uri == uri && entry.shape == shape && entry.before == before));
        self.entries.push_front(Entry {
            uri: uri.to_owned(),
            shape,
            before: before.to_owned(),
            after_hash,
            suggestion: suggestion.to_owned(),
        });
        self.entries.truncate(CACHE_ENTRIES);
    }

    /// Forgets everything (the model or the settings changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets a closed document's suggestions.
    pub fn forget(&mut self, uri: &str) {
        self.entries.retain(|entry| entry.uri != uri);
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_into_a_suggestion_returns_the_rest() {
        let mut cache = SuggestionCache::default();
        cache.insert("a.py", Shape::Block, "def f(x):\n    ", "\n", "return x + 1");
        assert_eq!(cache.lookup("a.py", Shape::Block, "def f(x):\n    ", "\n").as_deref(), Some("return x + 1"));
        assert_eq!(cache.lookup("a.py", Shape::Block, "def f(x):\n    ret", "\n").as_deref(), Some("urn x + 1"));
        // Typing something else, typing all of it, or a changed text after the cursor: no match.
        assert_eq!(cache.lookup("a.py", Shape::Block, "def f(x):\n    rex", "\n"), None);
        assert_eq!(cache.lookup("a.py", Shape::Block, "def f(x):\n    return x + 1", "\n"), None);
        assert_eq!(cache.lookup("a.py", Shape::Block, "def f(x):\n    ret", "\n\nz = 1"), None);
        assert_eq!(cache.lookup("b.py", Shape::Block, "def f(x):\n    ret", "\n"), None);
        assert_eq!(cache.lookup("a.py", Shape::RestOfLine, "def f(x):\n    ret", "\n"), None);
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let mut cache = SuggestionCache::default();
        for i in 0..=CACHE_ENTRIES {
            cache.insert("a.py", Shape::Block, &format!("x{i} = "), "", "1");
        }
        assert_eq!(cache.lookup("a.py", Shape::Block, "x0 = ", ""), None);
        assert_eq!(cache.lookup("a.py", Shape::Block, "x1 = ", "").as_deref(), Some("1"));
        cache.forget("a.py");
        assert_eq!(cache.lookup("a.py", Shape::Block, "x1 = ", ""), None);
    }
}
