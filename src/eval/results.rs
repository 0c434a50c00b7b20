//! Per-sample results as JSON Lines, and completions from elsewhere in human-eval's sample format.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dataset::{canonical_task_id, parse_jsonl};
use super::{Benchmark, EvalError, Result};
use crate::sandbox::{SandboxOutcome, SandboxStatus};

/// How a sample ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    TimedOut,
    MemoryExceeded,
    Killed,
    /// The sandbox could not run the program (not the program's fault).
    Error,
}

impl Verdict {
    pub fn of(outcome: &SandboxOutcome) -> Self {
        match outcome.status {
            SandboxStatus::Passed => Self::Passed,
            SandboxStatus::Failed { .. } => Self::Failed,
            SandboxStatus::TimedOut { .. } => Self::TimedOut,
            SandboxStatus::MemoryExceeded => Self::MemoryExceeded,
            SandboxStatus::Killed { .. } => Self::Killed,
        }
    }
}

/// One line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    pub task_id: String,
    /// The sample's index within its task (0 ≤ sample < N).
    pub sample: u32,
    pub completion: String,
    pub passed: bool,
    /// human-eval's `result`: `passed`, `timed out …`, `failed: <last line of stderr>`.
    pub result: String,
    pub verdict: Verdict,
    pub duration_ms: u64,
}

#[cfg(test)]
impl SampleResult {
    /// A scored sample with nothing but its task, index and verdict, for the tests of what is computed from them.
    pub(crate) fn scored(task_id: &str, sample: u32, passed: bool) -> SampleResult {
        SampleResult {
            task_id: task_id.to_owned(),
            sample,
            completion: String::new(),
            passed,
            result: String::new(),
            verdict: if passed { Verdict::Passed } else { Verdict::Failed },
            duration_ms: 0,
        }
    }
}

/// A completion to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub task_id: String,
    pub sample: u32,
    pub completion: String,
}

#[derive(Deserialize)]
struct CompletionRow {
    task_id: serde_json::Value,
    completion: String,
    #[serde(default)]
    sample: Option<u32>,
}

/// Reads completions: human-eval's sample format (`{"task_id": …, "completion": …}` per line, several per task
/// allowed), which a results file also satisfies. A line without `sample` gets the next index of its task.
pub fn read_completions(path: &Path, benchmark: Benchmark) -> Result<Vec<Completion>> {
    let text = read_text(path)?;
    let rows: Vec<(usize, CompletionRow)> = parse_jsonl(&text, path)?;
    let mut next_sample: HashMap<String, u32> = HashMap::new();
    let mut completions = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let task_id = canonical_task_id(benchmark, &row.task_id).ok_or_else(|| EvalError::BadLine {
            path: path.to_path_buf(),
            line,
            reason: format!("task_id {} is not a {benchmark} task id", row.task_id),
        })?;
        let next = next_sample.entry(task_id.clone()).or_default();
        let sample = row.sample.unwrap_or(*next);
        *next = (*next).max(sample + 1);
        completions.push(Completion { task_id, sample, completion: row.completion });
    }
    Ok(completions)
}

/// Reads a results file written by [`ResultWriter`].
pub fn read_results(path: &Path) -> Result<Vec<SampleResult>> {
    let text = read_text(path)?;
    Ok(parse_jsonl(&text, path)?.into_iter().map(|(_, result)| result).collect())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            EvalError::Missing { path: path.to_path_buf(), hint: "no such file".to_owned() }
        }
        _ => EvalError::Io { path: path.to_path_buf(), source },
    })
}

/// Appends results to a JSONL file, one flushed line per result, so an interrupted run keeps what finished.
pub struct ResultWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ResultWriter {
    /// Creates (or truncates) `path`, or appends to it when `append`.
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    pub fn write(&mut self, result: &SampleResult) -> Result<()> {
        let io = |source| EvalError::Io { path: self.path.clone(), source };
        serde_json::to_writer(&mut self.out, result).map_err(|e| io(e.into()))?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_get_sample_indices_per_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        std::fs::write(
            &path,
            "{\"task_id\": 11, \"completion\": \"a\"}\n{\"task_id\": \"Mbpp/12\", \"completion\": \"b\"}\n\
             {\"task_id\": \"11\", \"completion\": \"c\"}\n",
        )
        .unwrap();
        let completions = read_completions(&path, Benchmark::Mbpp).unwrap();
        let got: Vec<(&str, u32, &str)> =
            completions.iter().map(|c| (c.task_id.as_str(), c.sample, c.completion.as_str())).collect();
        assert_eq!(got, [("Mbpp/11", 0, "a"), ("Mbpp/12", 0, "b"), ("Mbpp/11", 1, "c")]);
        let error = read_completions(&path, Benchmark::HumanEval).unwrap_err().to_string();
        assert!(error.contains("samples.jsonl:1: task_id 11 is not a HumanEval task id"), "{error}");
    }

    #[test]
    fn results_round_trip_and_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let result = SampleResult {
            task_id: "HumanEval/0".to_owned(),
            sample: 0,
            completion: "    return 1\n".to_owned(),
            passed: false,
            result: "failed: AssertionError".to_owned(),
            verdict: Verdict::Failed,
            duration_ms: 12,
        };
        ResultWriter::open(&path, false).unwrap().write(&result).unwrap();
        let second = SampleResult { sample: 1, ..result.clone() };
        ResultWriter::open(&path, true).unwrap().write(&second).unwrap();
        assert_eq!(read_results(&path).unwrap(), [result.clone(), second]);
        ResultWriter::open(&path, false).unwrap().write(&result).unwrap();
        assert_eq!(read_results(&path).unwrap(), [result]);
    }
}
