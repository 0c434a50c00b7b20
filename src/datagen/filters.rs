//! What makes a sample worth keeping. Exercises: the code is extracted from the reply, parsed with tree-sitter,
//! split into the signature + docstring (the prompt) and the solution (the completion), and run in the sandbox with
//! its doctests and asserts. Textbook sections: not empty, not too short. Decontamination and deduplication follow
//! in [`super::decontam`] and [`super::dedup`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sandbox::{
    doctest_counts, doctest_program, Sandbox, SandboxError, SandboxLimits, SandboxStatus, SYNTAX_ERROR_EXIT,
};

/// Why a sample was rejected; the first filter that fails names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The teacher failed on this request (e.g. the prompt did not fit).
    TeacherError,
    /// Nothing but whitespace.
    Empty,
    /// A textbook section shorter than the minimum.
    TooShort,
    /// The code does not parse.
    Parse,
    /// No function with a docstring and a body after it.
    Format,
    /// Shares a 13-gram with a HumanEval or MBPP problem or solution.
    Contaminated,
    /// The code raised (or was killed) before its tests could pass.
    RuntimeError,
    /// A doctest or an assert failed.
    TestsFailed,
    /// Ran, but had no doctest and no assert to check the solution.
    NoTests,
    /// Exceeded the time limit.
    Timeout,
    ExactDuplicate,
    NearDuplicate,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TeacherError => "teacher_error",
            Self::Empty => "empty",
            Self::TooShort => "too_short",
            Self::Parse => "parse",
            Self::Format => "format",
            Self::Contaminated => "contaminated",
            Self::RuntimeError => "runtime_error",
            Self::TestsFailed => "tests_failed",
            Self::NoTests => "no_tests",
            Self::Timeout => "timeout",
            Self::ExactDuplicate => "exact_duplicate",
            Self::NearDuplicate => "near_duplicate",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed filter: the reason and what exactly failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// An exercise split for training: `prompt` + `completion` + `tests` is the program that was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exercise {
    /// Everything up to and including the function's docstring (imports and helpers before it included).
    pub prompt: String,
    /// The function's body after the docstring.
    pub completion: String,
    /// What follows the function (asserts, a `__main__` block), run in the check but not trained on.
    pub tests: String,
    /// The function's name.
    pub entry_point: String,
    /// Asserts that run when the program runs (outside functions and `__main__` blocks).
    pub asserts: usize,
}

impl Exercise {
    pub fn program(&self) -> String {
        format!("{}{}{}", self.prompt, self.completion, self.tests)
    }

    /// The part that duplicates are judged on: the tests may differ between two copies of one exercise.
    pub fn dedup_text(&self) -> String {
        format!("{}{}", self.prompt, self.completion)
    }
}

/// The code in a reply: the first fenced block when there is one (a chat teacher's answer), else the whole reply
/// (a completion teacher continued an opened fence and stopped at the closing one). Ends with one newline.
pub fn extract_code(reply: &str) -> String {
    let code = match reply.find("```") {
        Some(fence) => {
            let after = &reply[fence + 3..];
            // Skip the language tag.
            let body = after.find('\n').map_or("", |newline| &after[newline + 1..]);
            body.find("```").map_or(body, |end| &body[..end])
        }
        None => reply,
    };
    let code = code.trim_end();
    if code.trim().is_empty() {
        String::new()
    } else {
        format!("{code}\n")
    }
}

/// Splits exercise code into prompt, completion and tests: the first top-level function with a docstring is the
/// exercise. Rejects code that is empty, does not parse, or has no such function with a body.
pub fn split_exercise(code: &str) -> Result<Exercise, Rejection> {
    if code.trim().is_empty() {
        return Err(Rejection::new(RejectReason::Empty, "no code in the reply"));
    }
    let outline = phi_lsp::syntax::outline(code)
        .ok_or_else(|| Rejection::new(RejectReason::Parse, "tree-sitter could not parse the code"))?;
    if outline.errors > 0 {
        return Err(Rejection::new(RejectReason::Parse, format!("{} syntax errors", outline.errors)));
    }
    let function = outline
        .functions
        .iter()
        .find(|f| f.docstring_end.is_some())
        .ok_or_else(|| Rejection::new(RejectReason::Format, "no function with a docstring"))?;
    let docstring_end = function.docstring_end.unwrap_or(function.end);
    let prompt_end = code[docstring_end..].find('\n').map_or(code.len(), |newline| docstring_end + newline + 1);
    let body_end = function.end.max(prompt_end);
    let completion = &code[prompt_end..body_end];
    if completion.trim().is_empty() {
        return Err(Rejection::new(
            RejectReason::Format,
            format!("`{}` has no body after its docstring", function.name),
        ));
    }
    let rest = code[body_end..].trim_start_matches('\n');
    Ok(Exercise {
        prompt: code[..prompt_end].to_owned(),
        completion: format!("{completion}\n"),
        tests: if rest.is_empty() { String::new() } else { format!("\n{rest}") },
        entry_point: function.name.clone(),
        asserts: outline.import_time_asserts,
    })
}

/// Runs the exercise with its doctests and asserts in the sandbox. `Ok(Ok(detail))` when everything ran and
/// passed (and, with `require_tests`, there was something to pass); `Ok(Err(_))` names the failure; `Err(_)` is
/// the sandbox's own failure, not the sample's.
pub fn check_exercise(
    exercise: &Exercise,
    sandbox: &Sandbox,
    limits: &SandboxLimits,
    require_tests: bool,
) -> Result<Result<String, Rejection>, SandboxError> {
    let outcome = sandbox.run_python(&doctest_program(&exercise.program()), limits)?;
    let counts = doctest_counts(&outcome.stdout);
    let last_error_line = || outcome.stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    Ok(match outcome.status {
        SandboxStatus::Passed => {
            let doctests = counts.flatten().map_or(0, |(tries, _)| tries);
            if require_tests && doctests + exercise.asserts == 0 {
                Err(Rejection::new(RejectReason::NoTests, "no doctest and no assert"))
            } else {
                Ok(format!("{doctests} doctests and {} asserts passed", exercise.asserts))
            }
        }
        SandboxStatus::Failed { exit_code } => match counts {
            Some(Some((tries, failures))) if failures > 0 => {
                Err(Rejection::new(RejectReason::TestsFailed, format!("{failures} of {tries} doctests failed")))
            }
            _ if exit_code == SYNTAX_ERROR_EXIT && outcome.stdout.starts_with("SyntaxError") => {
                Err(Rejection::new(RejectReason::Parse, outcome.stdout.trim().to_owned()))
            }
            _ if last_error_line().starts_with("AssertionError") => {
                Err(Rejection::new(RejectReason::TestsFailed, format!("an assert failed: {}", last_error_line())))
            }
            _ => Err(Rejection::new(RejectReason::RuntimeError, outcome.reason())),
        },
        SandboxStatus::TimedOut { .. } => Err(Rejection::new(RejectReason::Timeout, outcome.reason())),
        SandboxStatus::MemoryExceeded | SandboxStatus::Killed { .. } => {
            Err(Rejection::new(RejectReason::RuntimeError, outcome.reason()))
        }
    })
}

/// A textbook section: its text trimmed, if it is long enough.
pub fn check_textbook(text: &str, min_chars: usize) -> Result<String, Rejection> {
    let text = text.trim();
    let chars = text.chars().count();
    if chars == 0 {
        return Err(Rejection::new(RejectReason::Empty, "no text in the reply"));
    }
    if chars < min_chars {
        return Err(Rejection::new(RejectReason::TooShort, format!("{chars} characters, fewer than {min_chars}")));
    }
    Ok(format!("{text}\n"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CLEAN: &str =
        "from typing import List\n\n\ndef running_max(values: List[int]) -> List[int]:\n    \
                                    \"\"\"The largest value seen so far, at each position.\n\n    >>> running_max([1, \
                                    3, 2, 5])\n    [1, 3, 3, 5]\n    >>> running_max([])\n    []\n    \"\"\"\n    \
                                    result = []\n    for value in values:\n        result.append(value if not result \
                                    else max(result[-1], value))\n    return result\n\n\nassert running_max([2, 1]) == \
                                    [2, 2]\n";

    fn sandbox() -> Sandbox {
        Sandbox::detect().expect("python3 for the sandbox")
    }

    fn check(code: &str) -> Result<String, Rejection> {
        let exercise = split_exercise(&extract_code(code))?;
        check_exercise(&exercise, &sandbox(), &SandboxLimits::default(), true).expect("the sandbox runs")
    }

    #[test]
    fn code_comes_out_of_fences_or_as_is() {
        assert_eq!(extract_code("Here:\n```python\ndef f():\n    pass\n```\nDone."), "def f():\n    pass\n");
        assert_eq!(extract_code("def f():\n    pass\n\n\n"), "def f():\n    pass\n");
        assert_eq!(extract_code("```\n```"), "");
    }

    #[test]
    fn an_exercise_splits_at_the_end_of_its_docstring() {
        let exercise = split_exercise(CLEAN).unwrap();
        assert!(exercise.prompt.starts_with("from typing import List\n"));
        assert!(exercise.prompt.ends_with("    []\n    \"\"\"\n"), "{:?}", exercise.prompt);
        assert!(exercise.completion.starts_with("    result = []\n"));
        assert!(exercise.completion.ends_with("    return result\n"));
        assert_eq!(exercise.tests, "\nassert running_max([2, 1]) == [2, 2]\n");
        assert_eq!((exercise.entry_point.as_str(), exercise.asserts), ("running_max", 1));
        assert_eq!(exercise.program(), CLEAN.replace("result\n\n\nassert", "result\n\nassert"));
    }

    #[test]
    fn a_clean_exercise_passes_its_doctests_and_asserts() {
        assert_eq!(check(CLEAN), Ok("2 doctests and 1 asserts passed".to_owned()));
    }

    #[test]
    fn each_failure_is_rejected_with_its_reason() {
        let reason = |code: &str| check(code).map_err(|r| r.reason);
        // Parse failure.
        assert_eq!(reason("def broken(x:\n    return x\n"), Err(RejectReason::Parse));
        // No function with a docstring, or nothing after the docstring.
        assert_eq!(reason("def f(x):\n    return x\n\nassert f(1) == 1\n"), Err(RejectReason::Format));
        assert_eq!(reason("def f(x):\n    \"\"\"Nothing.\"\"\"\n"), Err(RejectReason::Format));
        assert_eq!(reason("   \n"), Err(RejectReason::Empty));
        // A failing doctest.
        let failing_doctest =
            "def double(x: int) -> int:\n    \"\"\"Twice x.\n\n    >>> double(2)\n    5\n    \"\"\"\n    \
                               return 2 * x\n";
        assert_eq!(check(failing_doctest), Err(Rejection::new(RejectReason::TestsFailed, "1 of 1 doctests failed")));
        // A failing assert after the function.
        let failing_assert = CLEAN.replace("== [2, 2]", "== [2, 1]");
        assert_eq!(reason(&failing_assert), Err(RejectReason::TestsFailed));
        // An error before any test.
        assert_eq!(
            reason(&CLEAN.replace("from typing import List", "from typing import Nothing")),
            Err(RejectReason::RuntimeError)
        );
        // Nothing to check.
        assert_eq!(reason("def f(x):\n    \"\"\"Identity.\"\"\"\n    return x\n"), Err(RejectReason::NoTests));
        // A hang.
        let limits = SandboxLimits { wall_time: std::time::Duration::from_secs(1), ..SandboxLimits::default() };
        let hang =
            split_exercise("def f():\n    \"\"\"Forever.\"\"\"\n    while True:\n        pass\n\nf()\n").unwrap();
        let verdict = check_exercise(&hang, &sandbox(), &limits, true).unwrap();
        assert_eq!(verdict.map_err(|r| r.reason), Err(RejectReason::Timeout));
    }

    #[test]
    fn textbook_sections_need_some_length() {
        assert_eq!(check_textbook("  \n", 10).map_err(|r| r.reason), Err(RejectReason::Empty));
        assert_eq!(check_textbook("# Short\n", 10).map_err(|r| r.reason), Err(RejectReason::TooShort));
        assert_eq!(
            check_textbook("\n# Loops\n\nA loop repeats.\n\n", 10),
            Ok("# Loops\n\nA loop repeats.\n".to_owned())
        );
    }
}
