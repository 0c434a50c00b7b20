//! The two datasets, their prompts, stop sequences and test programs.

use std::fmt;
use std::io::{BufReader, Read};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{EvalError, Result};

/// MBPP's test split (the MBPP paper's protocol).
pub const MBPP_EVAL_TASKS: RangeInclusive<u32> = 11..=510;
/// MBPP's few-shot examples, in prompt order.
pub const MBPP_FEW_SHOT_TASKS: [u32; 3] = [2, 3, 4];

const HUMANEVAL_FILE: &str = "HumanEval.jsonl.gz";
const MBPP_FILE: &str = "mbpp.jsonl";
/// human-eval's and the Codex paper's stop sequences: the end of the function body.
const HUMANEVAL_STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];
/// The end marker of the MBPP prompt format, and the start of another task should the model skip it.
const MBPP_STOPS: [&str; 2] = ["[DONE]", "\nYou are an expert Python programmer"];

/// The data directory bundled with the sources (`assets/eval`), fixed at compile time.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Benchmark {
    HumanEval,
    Mbpp,
}

impl Benchmark {
    /// The data file in the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::HumanEval => HUMANEVAL_FILE,
            Self::Mbpp => MBPP_FILE,
        }
    }

    /// Where generation stops (besides the model's end-of-text token); the completion excludes the stop.
    pub fn stop_strings(self) -> Vec<String> {
        let stops: &[&str] = match self {
            Self::HumanEval => &HUMANEVAL_STOPS,
            Self::Mbpp => &MBPP_STOPS,
        };
        stops.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HumanEval => "HumanEval",
            Self::Mbpp => "MBPP",
        })
    }
}

impl FromStr for Benchmark {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "humaneval" => Ok(Self::HumanEval),
            "mbpp" => Ok(Self::Mbpp),
            other => Err(format!("unknown benchmark `{other}` (expected humaneval or mbpp)")),
        }
    }
}

/// One problem, ready to prompt a model and to test a completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub benchmark: Benchmark,
    /// `HumanEval/0`…`HumanEval/163`, `Mbpp/11`…`Mbpp/510`.
    pub task_id: String,
    /// What the model continues.
    pub prompt: String,
    /// The dataset's own solution, as a completion (HumanEval's canonical body, MBPP's reference code).
    pub reference: String,
    tests: Tests,
}

#[derive(Debug, Clone, PartialEq)]
enum Tests {
    HumanEval { prompt: String, test: String, entry_point: String },
    Mbpp { setup: String, asserts: Vec<String> },
}

impl Task {
    /// The program that tests `completion`: it exits with status 0 exactly when the completion passes.
    pub fn program(&self, completion: &str) -> String {
        match &self.tests {
            Tests::HumanEval { prompt, test, entry_point } => {
                format!("{prompt}{completion}\n{test}\ncheck({entry_point})\n")
            }
            // The setup goes after the completion: in MBPP it builds objects of classes the solution defines
            // (tasks 367 and 927).
            Tests::Mbpp { setup, asserts } => format!("{completion}\n{setup}\n{}\n", asserts.join("\n")),
        }
    }
}

/// Loads a benchmark's evaluation tasks from `data_dir`: all 164 HumanEval problems, or MBPP tasks 11–510.
pub fn load_tasks(benchmark: Benchmark, data_dir: &Path) -> Result<Vec<Task>> {
    let path = data_dir.join(benchmark.file_name());
    let file = std::fs::File::open(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EvalError::Missing {
            path: path.clone(),
            hint: format!("pass --data DIR, the directory that holds {}", benchmark.file_name()),
        },
        _ => EvalError::Io { path: path.clone(), source },
    })?;
    match benchmark {
        Benchmark::HumanEval => {
            let text = read_gzip(file, &path)?;
            humaneval_tasks(&text, &path)
        }
        Benchmark::Mbpp => {
            let mut text = String::new();
            BufReader::new(file)
                .read_to_string(&mut text)
                .map_err(|source| EvalError::Io { path: path.clone(), source })?;
            mbpp_tasks(&text, &path)
        }
    }
}

/// Every problem's statement and reference solution, as one text per problem: all 164 HumanEval prompts with their
/// canonical solutions, and all 974 MBPP descriptions with their code (not only the evaluated tasks). This is what
/// training data must not overlap (see the dataset generator's decontamination).
pub fn problem_texts(benchmark: Benchmark, data_dir: &Path) -> Result<Vec<(String, String)>> {
    let path = data_dir.join(benchmark.file_name());
    let file = std::fs::File::open(&path).map_err(|source| EvalError::Io { path: path.clone(), source })?;
    match benchmark {
        Benchmark::HumanEval => {
            let rows: Vec<(usize, HumanEvalRow)> = parse_jsonl(&read_gzip(file, &path)?, &path)?;
            Ok(rows.into_iter().map(|(_, r)| (r.task_id, format!("{}{}", r.prompt, r.canonical_solution))).collect())
        }
        Benchmark::Mbpp => {
            let mut text = String::new();
            BufReader::new(file)
                .read_to_string(&mut text)
                .map_err(|source| EvalError::Io { path: path.clone(), source })?;
            let rows: Vec<(usize, MbppRow)> = parse_jsonl(&text, &path)?;
            Ok(rows
                .into_iter()
                .map(|(_, r)| (format!("Mbpp/{}", r.task_id), format!("{}\n{}", r.text, normalize(&r.code))))
                .collect())
        }
    }
}

fn read_gzip(file: std::fs::File, path: &Path) -> Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BufReader::new(file))
        .read_to_string(&mut text)
        .map_err(|e| EvalError::Gzip { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(text)
}

/// Parses JSON Lines, naming the line of any error. Blank lines are allowed.
pub(super) fn parse_jsonl<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<Vec<(usize, T)>> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| EvalError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        rows.push((index + 1, row));
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct HumanEvalRow {
    task_id: String,
    prompt: String,
    entry_point: String,
    canonical_solution: String,
    test: String,
}

fn humaneval_tasks(text: &str, path: &Path) -> Result<Vec<Task>> {
    let rows: Vec<(usize, HumanEvalRow)> = parse_jsonl(text, path)?;
    if rows.is_empty() {
        return Err(EvalError::BadData { path: path.to_path_buf(), reason: "no problems in the file".to_owned() });
    }
    Ok(rows
        .into_iter()
        .map(|(_, row)| Task {
            benchmark: Benchmark::HumanEval,
            task_id: row.task_id,
            prompt: row.prompt.clone(),
            reference: row.canonical_solution,
            tests: Tests::HumanEval { prompt: row.prompt, test: row.test, entry_point: row.entry_point },
        })
        .collect())
}

#[derive(Deserialize)]
struct MbppRow {
    task_id: u32,
    text: String,
    code: String,
    test_list: Vec<String>,
    #[serde(default)]
    test_setup_code: String,
}

/// MBPP's code uses CRLF line ends; the prompt shows the model plain `\n`.
fn normalize(code: &str) -> String {
    code.replace("\r\n", "\n").trim_end().to_owned()
}

fn mbpp_block(row: &MbppRow) -> String {
    let tests: Vec<&str> = row.test_list.iter().map(|t| t.trim()).collect();
    format!(
        "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n{}\n[BEGIN]\n",
        row.text.trim(),
        tests.join("\n")
    )
}

fn mbpp_tasks(text: &str, path: &Path) -> Result<Vec<Task>> {
    let rows: Vec<(usize, MbppRow)> = parse_jsonl(text, path)?;
    let find = |id: u32| rows.iter().map(|(_, row)| row).find(|row| row.task_id == id);
    let mut shots = String::new();
    for id in MBPP_FEW_SHOT_TASKS {
        let row = find(id).ok_or_else(|| EvalError::BadData {
            path: path.to_path_buf(),
            reason: format!("few-shot example task {id} is missing"),
        })?;
        shots.push_str(&mbpp_block(row));
        shots.push_str(&normalize(&row.code));
        shots.push_str("\n[DONE]\n\n");
    }
    let mut tasks = Vec::new();
    let mut missing = Vec::new();
    for id in MBPP_EVAL_TASKS {
        let Some(row) = find(id) else {
            missing.push(id.to_string());
            continue;
        };
        tasks.push(Task {
            benchmark: Benchmark::Mbpp,
            task_id: format!("Mbpp/{id}"),
            prompt: format!("{shots}{}", mbpp_block(row)),
            reference: normalize(&row.code),
            tests: Tests::Mbpp { setup: normalize(&row.test_setup_code), asserts: row.test_list.clone() },
        });
    }
    if !missing.is_empty() {
        return Err(EvalError::BadData {
            path: path.to_path_buf(),
            reason: format!("evaluation tasks missing: {}", missing.join(", ")),
        });
    }
    Ok(tasks)
}

/// Accepts `Mbpp/11`, `11` (as MBPP's own files and several harnesses write it) and `HumanEval/0`.
pub(super) fn canonical_task_id(benchmark: Benchmark, raw: &serde_json::Value) -> Option<String> {
    match (benchmark, raw) {
        (Benchmark::HumanEval, serde_json::Value::String(s)) => Some(s.clone()),
        (Benchmark::Mbpp, serde_json::Value::Number(n)) => n.as_u64().map(|id| format!("Mbpp/{id}")),
        (Benchmark::Mbpp, serde_json::Value::String(s)) => {
            let id = s.strip_prefix("Mbpp/").or_else(|| s.strip_prefix("mbpp/")).unwrap_or(s);
            id.parse::<u32>().ok().map(|id| format!("Mbpp/{id}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbpp_line(id: u32, code: &str) -> String {
        serde_json::json!({
            "task_id": id,
            "text": format!("Write task {id}."),
            "code": code,
            "test_list": [format!("assert f{id}() == {id} "), "assert True"],
            "test_setup_code": "",
            "challenge_test_list": [],
        })
        .to_string()
    }

    #[test]
    fn mbpp_prompt_is_three_shot_and_program_appends_the_tests() {
        let mut text = String::new();
        for id in [2, 3, 4].into_iter().chain(MBPP_EVAL_TASKS) {
            text.push_str(&mbpp_line(id, &format!("def f{id}():\r\n    return {id}")));
            text.push('\n');
        }
        let tasks = mbpp_tasks(&text, Path::new("mbpp.jsonl")).unwrap();
        assert_eq!(tasks.len(), 500);
        let first = &tasks[0];
        assert_eq!(first.task_id, "Mbpp/11");
        let expected_shot = "You are an expert Python programmer, and here is your task: Write task 2. Your code should \
                             pass these tests:\n\nassert f2() == 2\nassert True\n[BEGIN]\ndef f2():\n    return 2\n[DONE]\n\n";
        assert!(first.prompt.starts_with(expected_shot), "{}", first.prompt);
        assert_eq!(first.prompt.matches("[DONE]").count(), 3);
        assert!(first.prompt.ends_with(
            "Write task 11. Your code should pass these tests:\n\nassert f11() == 11\nassert True\n[BEGIN]\n"
        ));
        assert_eq!(first.reference, "def f11():\n    return 11");
        assert_eq!(first.program("X"), "X\n\nassert f11() == 11 \nassert True\n");
    }

    #[test]
    fn a_missing_evaluation_task_is_an_error() {
        let text = [2, 3, 4, 11].map(|id| mbpp_line(id, "pass")).join("\n");
        let error = mbpp_tasks(&text, Path::new("m.jsonl")).unwrap_err().to_string();
        assert!(error.contains("evaluation tasks missing: 12, 13"), "{error}");
    }

    #[test]
    fn bad_jsonl_names_the_line() {
        let text = format!("{}\n\n{{\"task_id\": 3\n", mbpp_line(2, "pass"));
        let error = mbpp_tasks(&text, Path::new("m.jsonl")).unwrap_err().to_string();
        assert!(error.starts_with("m.jsonl:3: "), "{error}");
    }

    #[test]
    fn task_ids_are_canonical() {
        use serde_json::json;
        assert_eq!(canonical_task_id(Benchmark::Mbpp, &json!(11)).as_deref(), Some("Mbpp/11"));
        assert_eq!(canonical_task_id(Benchmark::Mbpp, &json!("11")).as_deref(), Some("Mbpp/11"));
        assert_eq!(canonical_task_id(Benchmark::Mbpp, &json!("Mbpp/11")).as_deref(), Some("Mbpp/11"));
        assert_eq!(canonical_task_id(Benchmark::HumanEval, &json!("HumanEval/3")).as_deref(), Some("HumanEval/3"));
        assert_eq!(canonical_task_id(Benchmark::HumanEval, &json!(3)), None);
    }
}
