//! The diversity lists. phi-1's synthetic data got its diversity "by providing constraints on topics and target
//! audience" and by injecting random words into prompts (§2.2); these lists are what is sampled from.
//!
//! A topic file is an indented tree, one topic per line, each level indented deeper than its parent; the leaves
//! are the topics sampled, named by their path (`Lists > Sorting lists`). A flat list of lines is a tree of leaves.
//! Blank lines and lines starting with `#` are skipped.

use std::path::Path;

use super::{DatagenError, Result};

const BUILTIN_TOPICS: &str = include_str!("../../assets/datagen/topics.txt");
const BUILTIN_AUDIENCES: &str = include_str!("../../assets/datagen/audiences.txt");
const BUILTIN_CONSTRAINTS: &str = include_str!("../../assets/datagen/constraints.txt");
const BUILTIN_WORDS: &str = include_str!("../../assets/datagen/words.txt");

/// A leaf of the topic tree with the path that leads to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// From the root to the leaf; never empty.
    pub path: Vec<String>,
}

impl Topic {
    pub fn leaf(&self) -> &str {
        self.path.last().map(String::as_str).unwrap_or_default()
    }

    /// `Area > Subarea > Leaf`.
    pub fn display(&self) -> String {
        self.path.join(" > ")
    }
}

/// Everything a prompt is sampled from.
#[derive(Debug, Clone, PartialEq)]
pub struct Diversity {
    pub topics: Vec<Topic>,
    pub audiences: Vec<String>,
    pub constraints: Vec<String>,
    pub words: Vec<String>,
}

impl Diversity {
    /// The built-in lists: a topic tree for Python (235 leaves), 20 audiences, 24 constraints, 209 words.
    pub fn builtin() -> Self {
        Self {
            topics: parse_topic_tree(BUILTIN_TOPICS).unwrap_or_default(),
            audiences: lines(BUILTIN_AUDIENCES),
            constraints: lines(BUILTIN_CONSTRAINTS),
            words: lines(BUILTIN_WORDS).iter().flat_map(|l| l.split_whitespace()).map(str::to_owned).collect(),
        }
    }

    /// The built-in lists with the topics of `path` instead.
    pub fn with_topic_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DatagenError::io(path, "cannot read the topics", e))?;
        let topics = parse_topic_tree(&text).map_err(|(line, reason)| DatagenError::bad_file(path, line, reason))?;
        Ok(Self { topics, ..Self::builtin() })
    }
}

fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}

fn lines(text: &str) -> Vec<String> {
    content_lines(text).map(|(_, l)| l.trim().to_owned()).collect()
}

/// The leaves of an indented topic tree, in file order. Errors carry the 1-based line.
pub fn parse_topic_tree(text: &str) -> std::result::Result<Vec<Topic>, (Option<usize>, String)> {
    // The open branch: (indent, name, whether a child has been seen).
    let mut open: Vec<(usize, String, bool)> = Vec::new();
    let mut leaves = Vec::new();
    let close = |open: &mut Vec<(usize, String, bool)>, leaves: &mut Vec<Topic>| {
        if let Some((_, _, has_child)) = open.last() {
            if !has_child {
                leaves.push(Topic { path: open.iter().map(|(_, name, _)| name.clone()).collect() });
            }
        }
        open.pop();
    };
    for (index, line) in content_lines(text) {
        let indent = line.len() - line.trim_start().len();
        if line[..indent].contains('\t') {
            return Err((Some(index + 1), "indent with spaces, not tabs".to_owned()));
        }
        while open.last().is_some_and(|(open_indent, _, _)| *open_indent >= indent) {
            close(&mut open, &mut leaves);
        }
        if let Some(parent) = open.last_mut() {
            parent.2 = true;
        }
        open.push((indent, line.trim().to_owned(), false));
    }
    while !open.is_empty() {
        close(&mut open, &mut leaves);
    }
    if leaves.is_empty() {
        return Err((None, "no topics in the file".to_owned()));
    }
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_lists_are_large_enough() {
        let diversity = Diversity::builtin();
        assert!(diversity.topics.len() >= 200, "{} topics", diversity.topics.len());
        assert!(diversity.topics.iter().all(|t| t.path.len() == 2), "two levels in the built-in tree");
        assert_eq!(diversity.audiences.len(), 20);
        assert!(diversity.constraints.len() >= 20);
        assert!(diversity.words.len() >= 200);
        let mut leaves: Vec<String> = diversity.topics.iter().map(Topic::display).collect();
        leaves.sort();
        leaves.dedup();
        assert_eq!(leaves.len(), diversity.topics.len(), "topics are distinct");
    }

    #[test]
    fn trees_of_any_depth_and_flat_lists() {
        let text = "# comment\nA\n  A1\n    A1x\n    A1y\n  A2\nB\n\nC\n  C1\n";
        let paths: Vec<String> = parse_topic_tree(text).unwrap().iter().map(Topic::display).collect();
        assert_eq!(paths, ["A > A1 > A1x", "A > A1 > A1y", "A > A2", "B", "C > C1"]);
        let flat: Vec<String> = parse_topic_tree("x\ny\n").unwrap().iter().map(|t| t.leaf().to_owned()).collect();
        assert_eq!(flat, ["x", "y"]);
        assert_eq!(parse_topic_tree("A\n\tB\n").unwrap_err().0, Some(2));
        assert!(parse_topic_tree("# nothing\n").is_err());
    }

    #[test]
    fn a_topic_file_replaces_only_the_topics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.txt");
        std::fs::write(&path, "Rust\n  Ownership\n  Lifetimes\n").unwrap();
        let diversity = Diversity::with_topic_file(&path).unwrap();
        let topics: Vec<String> = diversity.topics.iter().map(Topic::display).collect();
        assert_eq!(topics, ["Rust > Ownership", "Rust > Lifetimes"]);
        assert_eq!(diversity.audiences, Diversity::builtin().audiences);
        std::fs::write(&path, "A\n\tB\n").unwrap();
        let error = Diversity::with_topic_file(&path).unwrap_err().to_string();
        assert!(error.ends_with("topics.txt:2: indent with spaces, not tabs"), "{error}");
    }
}
