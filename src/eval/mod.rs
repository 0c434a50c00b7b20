//! HumanEval and MBPP: datasets, prompts, program assembly, execution in the [`crate::sandbox`], pass@k.
//!
//! The protocol follows the papers' harnesses:
//!
//! - **HumanEval** (Chen et al. 2021, openai/human-eval): the model continues the problem's prompt; generation stops
//!   at `\nclass`, `\ndef`, `\n#`, `\nif`, `\nprint` or end-of-text; the program run is
//!   `prompt + completion + "\n" + test + "\n" + "check(entry_point)"`.
//! - **MBPP** (Austin et al. 2021): the 3-shot prompt of the MBPP paper with tasks 2, 3 and 4 as examples, each
//!   `You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n
//!   {tests}\n[BEGIN]\n{code}\n[DONE]`, then the task itself up to `[BEGIN]\n`; generation stops at `[DONE]`; tasks
//!   11–510 are evaluated; the program run is `completion + test_setup_code + test_list` (the setup code builds
//!   objects of classes that the solution defines, so it cannot come first). No `\ndef`-style stops here: MBPP
//!   solutions often define helpers before the function under test.
//!
//! A sample passes when its program exits with status 0 within the limits. pass@k uses the unbiased estimator of
//! Chen et al., averaged over tasks.

mod dataset;
mod exec;
mod passk;
pub mod plan;
mod results;

use std::path::PathBuf;

pub use dataset::{load_tasks, problem_texts, Benchmark, BenchmarkData, Task, MBPP_EVAL_TASKS, MBPP_FEW_SHOT_TASKS};
pub use exec::{score, score_all, Executor};
pub use passk::{pass_at_k, report_ks, Report};
pub use plan::{GenerationPlan, Tally, WorkItem};
pub use results::{read_completions, read_results, Completion, ResultWriter, SampleResult, Verdict};

/// Errors of the evaluation harness.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: not found ({hint})")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid gzip file: {reason}")]
    Gzip { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    BadLine { path: PathBuf, line: usize, reason: String },
    #[error("{path}: {reason}")]
    BadData { path: PathBuf, reason: String },
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
