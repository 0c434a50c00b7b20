//! Syntax checks with tree-sitter's Python grammar: a suggestion must not make the file less valid than it is.
//!
//! The code around a cursor is usually unfinished, so "valid" cannot mean "parses cleanly". Instead the file is
//! parsed without and with the suggestion, and the suggestion is kept only if it adds no error or missing-token
//! node.

use tree_sitter::{Node, Parser};

/// The number of error and missing-token nodes in a parse of `source`, or `None` if tree-sitter could not parse it
/// (then the caller has nothing to compare and should not reject anything).
pub fn error_count(source: &str) -> Option<usize> {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_python::LANGUAGE.into()).ok()?;
    let tree = parser.parse(source, None)?;
    Some(count_errors(tree.root_node()))
}

fn count_errors(node: Node<'_>) -> usize {
    if !node.has_error() {
        return 0;
    }
    let own = usize::from(node.is_error() || node.is_missing());
    let mut cursor = node.walk();
    let children: usize = node.children(&mut cursor).map(count_errors).sum();
    own + children
}

/// The longest part of `suggestion`, cut at a line end, that adds no syntax error when inserted between `before` and
/// `after`: the whole suggestion if it is fine, otherwise fewer and fewer of its lines. `None` when not even its
/// first line is acceptable.
pub fn longest_valid_prefix<'a>(before: &str, suggestion: &'a str, after: &str) -> Option<&'a str> {
    let Some(baseline) = error_count(&format!("{before}{after}")) else { return Some(suggestion) };
    let mut ends: Vec<usize> = suggestion.match_indices('\n').map(|(i, _)| i).filter(|&i| i > 0).collect();
    ends.push(suggestion.len());
    ends.into_iter()
        .rev()
        .map(|end| &suggestion[..end])
        .filter(|candidate| !candidate.trim().is_empty())
        .find(|candidate| error_count(&format!("{before}{candidate}{after}")).is_none_or(|errors| errors <= baseline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_code_has_no_errors_and_broken_code_has_some() {
        assert_eq!(error_count("def f(x):\n    return x + 1\n"), Some(0));
        assert!(error_count("def f(x):\n    return x +\n").is_some_and(|n| n > 0));
    }

    #[test]
    fn unfinished_surroundings_do_not_count_against_a_suggestion() {
        // The file is already broken (an open call); a suggestion that leaves it as broken is fine.
        assert_eq!(longest_valid_prefix("x = f(", "1, 2", "\n"), Some("1, 2"));
        // A suggestion that fixes the file is fine too.
        assert_eq!(longest_valid_prefix("def f(x):\n    ", "return x", "\n"), Some("return x"));
    }

    #[test]
    fn a_broken_tail_is_cut_and_a_broken_start_is_rejected() {
        let before = "def f(x):\n    ";
        assert_eq!(longest_valid_prefix(before, "y = x\n    return y +", "\n"), Some("y = x"));
        assert_eq!(longest_valid_prefix(before, "return ) x", "\n"), None);
    }
}
