//! Data-driven completion tests: tests/cases/suggestions.txt, run through the stop predicate (token by token, as the
//! engine applies it) and the server's post-processing.

use std::sync::Arc;

use phi_lsp::postprocess::finish_suggestion;
use phi_lsp::stop::{CursorContext, Shape, StopRules};
use phi_lsp::testing::generate;
use phi_lsp::LineMode;

const CURSOR: char = '█';

#[derive(Debug, Default)]
struct Case {
    name: String,
    source: String,
    model: String,
    expected: Option<String>,
    mode: LineMode,
    popup: bool,
    max_tokens: u32,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut section: Option<&str> = None;
    let mut body: Vec<&str> = Vec::new();
    for line in text.lines().chain(["### end"]) {
        let Some(header) = line.strip_prefix("### ") else {
            if section.is_some() {
                body.push(line);
            }
            continue;
        };
        if matches!(header, "end") || header.starts_with("name:") {
            // The blank line that separates cases belongs to neither.
            if body.last() == Some(&"") {
                body.pop();
            }
        }
        let text = body.join("\n");
        body.clear();
        if let (Some(case), Some(section)) = (cases.last_mut(), section) {
            match section {
                "source" => case.source = text,
                "model" => case.model = text,
                _ => case.expected = Some(text),
            }
        }
        let (key, value) = header.split_once(':').map_or((header, ""), |(k, v)| (k, v.trim()));
        if key == "name" {
            cases.push(Case { name: value.to_owned(), max_tokens: 64, ..Case::default() });
        }
        let Some(case) = cases.last_mut() else { panic!("{header:?} before the first case") };
        // Options may come before or after the source.
        let source_next = if case.source.is_empty() { Some("source") } else { None };
        section = match (key, value) {
            ("name", _) => Some("source"),
            ("mode", "single-line") => {
                case.mode = LineMode::SingleLine;
                source_next
            }
            ("popup", _) => {
                case.popup = true;
                source_next
            }
            ("max_tokens", n) => {
                case.max_tokens = n.parse().expect("a number");
                source_next
            }
            ("model", _) => Some("model"),
            ("expected", "none") | ("end", _) => None,
            ("expected", _) => Some("expected"),
            (other, _) => panic!("unknown header {other:?}"),
        };
    }
    cases
}

fn run(case: &Case) -> Option<String> {
    let cursor = case.source.find(CURSOR).unwrap_or_else(|| panic!("{}: no cursor marker", case.name));
    let text = case.source.replace(CURSOR, "");
    let context = CursorContext::new(&text, cursor);
    let shape = Shape::choose(&context, case.mode, case.popup);
    let rules = Arc::new(StopRules::new(&context, shape));
    let (generated, hit_token_limit) = generate(&case.model, &rules.predicate(), case.max_tokens);
    finish_suggestion(&text, cursor, &context, &rules, &generated, hit_token_limit)
}

#[test]
fn suggestion_cases() {
    let cases = parse_cases(include_str!("cases/suggestions.txt"));
    assert!(cases.len() >= 20, "only {} cases parsed", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let actual = run(case);
        if actual != case.expected {
            failures.push(format!("{}\n  expected: {:?}\n  actual:   {:?}", case.name, case.expected, actual));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
