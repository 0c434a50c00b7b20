//! Syntax checks with tree-sitter's Python grammar: a suggestion must not make the file less valid than it is.
//!
//! The code around a cursor is usually unfinished, so "valid" cannot mean "parses cleanly". Instead the file is
//! parsed without and with the suggestion, and the suggestion is kept only if it adds no error or missing-token
//! node.

use tree_sitter::{Node, Parser};

/// A top-level function definition, as byte offsets into the parsed source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionOutline {
    pub name: String,
    /// The start of the definition (of its first decorator, when it has one).
    pub start: usize,
    /// The end of the definition (the end of its body's last statement).
    pub end: usize,
    /// The end of the docstring, when the body starts with one.
    pub docstring_end: Option<usize>,
}

/// What a Python module defines and checks, for judging generated programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleOutline {
    /// Top-level functions (decorated ones included), in source order.
    pub functions: Vec<FunctionOutline>,
    /// `assert` statements that run when the module is imported: outside functions, classes and
    /// `if __name__ == "__main__":` blocks.
    pub import_time_asserts: usize,
    /// Error and missing-token nodes (0 for a module that parses cleanly).
    pub errors: usize,
}

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

/// The outline of a whole module, or `None` if tree-sitter could not parse it.
pub fn outline(source: &str) -> Option<ModuleOutline> {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_python::LANGUAGE.into()).ok()?;
    let tree = parser.parse(source, None)?;
    let root = tree.root_node();
    let mut outline = ModuleOutline { errors: count_errors(root), ..ModuleOutline::default() };
    let mut cursor = root.walk();
    for node in root.named_children(&mut cursor) {
        let definition = match node.kind() {
            "decorated_definition" => node.child_by_field_name("definition"),
            "function_definition" => Some(node),
            _ => None,
        };
        if let Some(function) = definition.filter(|d| d.kind() == "function_definition") {
            let name = function.child_by_field_name("name").and_then(|n| n.utf8_text(source.as_bytes()).ok());
            outline.functions.push(FunctionOutline {
                name: name.unwrap_or_default().to_owned(),
                start: node.start_byte(),
                end: node.end_byte(),
                docstring_end: docstring(function).map(|d| d.end_byte()),
            });
        }
    }
    outline.import_time_asserts = import_time_asserts(root, source);
    Some(outline)
}

/// The docstring statement of a function: its body's first statement, when that is a string.
fn docstring(function: Node<'_>) -> Option<Node<'_>> {
    let body = function.child_by_field_name("body")?;
    let mut cursor = body.walk();
    let first = body.named_children(&mut cursor).find(|n| n.kind() != "comment")?;
    let expression = first.named_child(0)?;
    (first.kind() == "expression_statement" && matches!(expression.kind(), "string" | "concatenated_string"))
        .then_some(first)
}

fn import_time_asserts(node: Node<'_>, source: &str) -> usize {
    match node.kind() {
        "assert_statement" => return 1,
        "function_definition" | "class_definition" | "lambda" => return 0,
        "if_statement" => {
            let condition = node.child_by_field_name("condition").and_then(|c| c.utf8_text(source.as_bytes()).ok());
            if condition.is_some_and(|c| c.contains("__name__")) {
                return 0;
            }
        }
        _ => {}
    }
    let mut cursor = node.walk();
    let children: Vec<Node<'_>> = node.named_children(&mut cursor).collect();
    children.into_iter().map(|child| import_time_asserts(child, source)).sum()
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
    fn outline_finds_functions_docstrings_and_import_time_asserts() {
        let source = "import math\n\n@cache\ndef area(r):\n    # a comment\n    \"\"\"Area.\n\n    >>> area(1)\n    3.14\n    \"\"\"\n    assert r >= 0\n    return math.pi * r * r\n\n\ndef bare(x):\n    return x\n\n\nclass C:\n    assert True\n\nassert bare(1) == 1\nfor x in [1]:\n    assert bare(x) == x\nif __name__ == \"__main__\":\n    assert False\n";
        let outline = outline(source).unwrap();
        assert_eq!(outline.errors, 0);
        assert_eq!(outline.import_time_asserts, 2);
        let names: Vec<&str> = outline.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["area", "bare"]);
        let area = &outline.functions[0];
        assert_eq!(&source[area.start..area.start + 6], "@cache");
        assert!(source[..area.docstring_end.unwrap()].ends_with("3.14\n    \"\"\""));
        assert!(source[..area.end].ends_with("return math.pi * r * r"));
        assert_eq!(outline.functions[1].docstring_end, None);
        assert!(super::outline("def f(:\n").unwrap().errors > 0);
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
