//! Synthetic training data the way phi-1's was made (*Textbooks Are All You Need*, §2.2): a teacher model writes
//! textbook sections or exercises from prompts made diverse by topic, audience, constraint and random words; what
//! it writes is filtered, deduplicated and decontaminated, and kept samples are appended to a JSONL file that
//! `phi-tui finetune --data` reads as it is.
//!
//! | module | what it does |
//! |---|---|
//! | [`topics`] | the diversity lists: a topic tree for Python (built in, or a file), audiences, constraints, words |
//! | [`prompts`] | sample `i` of seed `s` → its topic, audience, constraint, words → the teacher's prompt |
//! | [`teacher`] | the [`Teacher`] trait; the engine (a local GGUF) and any OpenAI-compatible endpoint behind it |
//! | [`filters`] | exercises: code extraction, split into prompt/completion (tree-sitter), checks in the sandbox |
//! | [`decontam`] | 13-gram overlap with HumanEval and MBPP (phi-1 §5) |
//! | [`dedup`] | exact and near-duplicate (MinHash + LSH) detection within the set and against other files |
//! | [`output`] | the records (kept and rejected, with provenance), appended and fsynced one by one |
//! | [`pipeline`] | samples in flight at once, committed in index order, so a run resumes without duplicates |

pub mod decontam;
pub mod dedup;
pub mod filters;
pub mod output;
pub mod pipeline;
pub mod prompts;
pub mod teacher;
pub mod topics;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use decontam::Decontaminator;
pub use dedup::{DedupIndex, DedupVerdict};
pub use filters::{RejectReason, Rejection};
pub use output::{KeptSample, Provenance, RejectedSample};
pub use pipeline::{DatagenOptions, Ending, OutputFiles, Pipeline, Summary, Tally};
pub use prompts::{GenerationSettings, SampleSpec};
pub use teacher::{
    EngineTeacher, OpenAiApi, OpenAiTeacher, Teacher, TeacherError, TeacherInfo, TeacherReply, TeacherRequest,
};
pub use topics::{Diversity, Topic};

/// What is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Textbook sections: prose interleaved with code, written out as `{"text"}`.
    Textbook,
    /// Exercises: a signature and docstring as `prompt`, its checked solution as `completion`.
    Exercises,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Textbook => "textbook",
            Self::Exercises => "exercises",
        })
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "textbook" => Ok(Self::Textbook),
            "exercises" => Ok(Self::Exercises),
            other => Err(format!("unknown kind `{other}` (expected textbook or exercises)")),
        }
    }
}

/// Errors of dataset generation. Each message is one line that starts with what it is about.
#[derive(Debug, thiserror::Error)]
pub enum DatagenError {
    #[error("{}: {action}: {source}", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    /// A file (topics, an existing dataset, an output being resumed) is malformed.
    #[error("{}{}: {reason}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    BadFile { path: PathBuf, line: Option<usize>, reason: String },
    #[error("teacher: {0}")]
    Teacher(String),
    #[error("benchmarks for decontamination: {0}")]
    Benchmarks(#[from] crate::eval::EvalError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Option(String),
}

impl DatagenError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), action, source }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, line: Option<usize>, reason: impl Into<String>) -> Self {
        Self::BadFile { path: path.into(), line, reason: reason.into() }
    }
}

pub type Result<T, E = DatagenError> = std::result::Result<T, E>;
