//! Run-and-verify: a Python code block runs in the sandbox together with the doctests written in it, and the
//! result comes back as one line (passed / failed) and the program's output. Only the run key starts this.

use crate::sandbox::{doctest_program, SandboxLimits, SandboxOutcome, SandboxStatus, RESULT_MARK, SYNTAX_ERROR_EXIT};

use super::session::RunRecord;

/// Most output kept in a run record.
const MAX_OUTPUT_LINES: usize = 40;
const MAX_OUTPUT_CHARS: usize = 4000;

/// What the sandbox reported about one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOutcome {
    /// The exit status; `None` when the process was killed (time or memory limit, signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Why the sandbox killed it, when it did (memory limit, …).
    pub killed_because: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a code block and its doctests in the sandbox (blocking: call it off the UI thread).
pub fn run_block(block: usize, code: &str) -> RunRecord {
    let limits = SandboxLimits { wall_time: std::time::Duration::from_secs(10), ..SandboxLimits::default() };
    match crate::sandbox::run_python(&doctest_program(code), &limits) {
        Ok(outcome) => record(block, &raw_outcome(&outcome)),
        Err(e) => RunRecord { block, passed: false, summary: format!("could not run: {e}"), output: String::new() },
    }
}

fn raw_outcome(outcome: &SandboxOutcome) -> RawOutcome {
    let mut raw = RawOutcome { stdout: outcome.stdout.clone(), stderr: outcome.stderr.clone(), ..Default::default() };
    match &outcome.status {
        SandboxStatus::Passed => raw.exit_code = Some(0),
        SandboxStatus::Failed { exit_code } => raw.exit_code = Some(*exit_code),
        SandboxStatus::TimedOut { .. } => raw.timed_out = true,
        SandboxStatus::MemoryExceeded | SandboxStatus::Killed { .. } => {
            raw.killed_because = Some(outcome.reason().trim_start_matches("failed: ").to_owned());
        }
    }
    raw
}

/// Reads a run of [`doctest_program`] into a record for block `block`.
pub fn record(block: usize, outcome: &RawOutcome) -> RunRecord {
    let mut counts = None;
    let mut stdout_lines = Vec::new();
    for line in outcome.stdout.lines() {
        match line.strip_prefix(RESULT_MARK) {
            Some(rest) => {
                let numbers: Vec<usize> = rest.split_whitespace().filter_map(|n| n.parse().ok()).collect();
                counts = Some(match numbers.as_slice() {
                    [tries, failures] => Some((*tries, *failures)),
                    _ => None,
                });
            }
            None => stdout_lines.push(line),
        }
    }
    let mut output = stdout_lines.join("\n");
    if !outcome.stderr.trim().is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(outcome.stderr.trim_end());
    }
    let output = shorten_output(output.trim_end());
    let (passed, summary) = if outcome.timed_out {
        (false, "timed out".to_owned())
    } else if let Some(reason) = &outcome.killed_because {
        (false, format!("stopped: {reason}"))
    } else {
        match (outcome.exit_code, counts) {
            (Some(0), Some(None)) => (true, "ran without error (no doctests)".to_owned()),
            (Some(0), Some(Some((tries, _)))) => (true, format!("{tries} doctest{} passed", plural(tries))),
            (Some(1), Some(Some((tries, failures)))) => {
                (false, format!("{failures} of {tries} doctest{} failed", plural(tries)))
            }
            (Some(SYNTAX_ERROR_EXIT), None) => (false, "syntax error".to_owned()),
            (Some(code), _) => {
                let last = outcome.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                if last.is_empty() {
                    (false, format!("exit status {code}"))
                } else {
                    (false, format!("error: {}", super::session::shorten(last.trim(), 70)))
                }
            }
            (None, _) => (false, "killed".to_owned()),
        }
    };
    RunRecord { block, passed, summary, output }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The last lines of the output, within the limits.
fn shorten_output(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut kept = if lines.len() > MAX_OUTPUT_LINES {
        format!("… ({} lines)\n{}", lines.len() - MAX_OUTPUT_LINES, lines[lines.len() - MAX_OUTPUT_LINES..].join("\n"))
    } else {
        output.to_owned()
    };
    if kept.len() > MAX_OUTPUT_CHARS {
        let mut cut = kept.len() - MAX_OUTPUT_CHARS;
        while !kept.is_char_boundary(cut) {
            cut += 1;
        }
        kept = format!("…{}", &kept[cut..]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(exit: i32, stdout: &str, stderr: &str) -> RawOutcome {
        RawOutcome { exit_code: Some(exit), stdout: stdout.into(), stderr: stderr.into(), ..Default::default() }
    }

    #[test]
    fn reads_results() {
        let r = record(0, &outcome(0, "hello\nPHI_TUI_RESULT 3 0\n", ""));
        assert_eq!((r.passed, r.summary.as_str(), r.output.as_str()), (true, "3 doctests passed", "hello"));
        let r = record(1, &outcome(1, "Failed example:\n    f(1)\nPHI_TUI_RESULT 2 1\n", ""));
        assert_eq!((r.block, r.passed, r.summary.as_str()), (1, false, "1 of 2 doctests failed"));
        assert!(r.output.contains("Failed example"));
        let r = record(0, &outcome(0, "PHI_TUI_RESULT none\n", ""));
        assert_eq!(r.summary, "ran without error (no doctests)");
        let r = record(0, &outcome(1, "", "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"));
        assert_eq!(r.summary, "error: ZeroDivisionError: division by zero");
        let r = record(0, &outcome(2, "SyntaxError: invalid syntax (block.py, line 1)\n", ""));
        assert_eq!(r.summary, "syntax error");
        let r = record(0, &RawOutcome { timed_out: true, ..Default::default() });
        assert_eq!((r.passed, r.summary.as_str()), (false, "timed out"));
    }

    #[test]
    fn long_output_keeps_its_end() {
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let r = record(0, &outcome(0, &long, ""));
        assert!(r.output.starts_with("… (60 lines)\nline 60"), "{}", &r.output[..30]);
        assert!(r.output.ends_with("line 99"));
    }
}
