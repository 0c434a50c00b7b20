//! The records: kept samples go to the output file that `phi-tui finetune --data` reads (`{"text"}` for textbook
//! sections, `{"prompt", "completion"}` for exercises), rejected ones to a second file, each with its provenance.
//! Every record is appended as one line and synced to disk before the next, so a killed run loses at most the
//! samples in flight; a torn last line is cut off when the run resumes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::filters::RejectReason;
use super::teacher::TeacherInfo;
use super::{DatagenError, Kind, Result};

/// Where a sample came from, recorded with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub kind: Kind,
    pub teacher: TeacherInfo,
    /// The run's `--seed`.
    pub seed: u64,
    /// The sample's index in the run: with the seed, it fixes the prompt.
    pub index: u64,
    /// The teacher's sampling seed.
    pub sample_seed: u32,
    /// The topic's path, `Area > Leaf`.
    pub topic: String,
    pub audience: String,
    pub constraint: String,
    pub words: Vec<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    /// Tokens the teacher generated (0 when it does not say).
    pub tokens: u64,
    /// The teacher stopped at the token limit.
    pub truncated: bool,
}

/// A kept sample: one line of the output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptSample {
    pub id: String,
    /// A textbook section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An exercise's signature and docstring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// An exercise's solution: the body after the docstring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    /// What followed the exercise's function (its asserts), checked but not trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
    #[serde(flatten)]
    pub provenance: Provenance,
    /// Each filter's result, by filter.
    pub filters: BTreeMap<String, String>,
}

/// A rejected sample: one line of the rejected file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedSample {
    pub id: String,
    pub reason: RejectReason,
    pub detail: String,
    /// What the teacher wrote.
    pub output: String,
    #[serde(flatten)]
    pub provenance: Provenance,
    /// The results of the filters that ran, the failed one included.
    pub filters: BTreeMap<String, String>,
}

/// A sample's id: kind, seed and index.
pub fn sample_id(kind: Kind, seed: u64, index: u64) -> String {
    format!("{kind}-{seed}-{index}")
}

/// Appends records to a JSONL file, syncing each one to disk.
pub struct JsonlAppender {
    path: PathBuf,
    file: File,
}

impl JsonlAppender {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| DatagenError::io(path, "cannot open for appending", e))?;
        // The file's directory entry must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Writes `record` as one line with a single write, then syncs the file's data.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| DatagenError::bad_file(&self.path, None, format!("cannot serialize a record: {e}")))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| DatagenError::io(&self.path, "cannot write", e))?;
        self.file.sync_data().map_err(|e| DatagenError::io(&self.path, "cannot sync", e))
    }
}

/// Reads the records of a file this module wrote; a missing file has none. A last line without its newline (a
/// write torn by a kill) is cut off the file, with a warning: its sample is generated again.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DatagenError::io(path, "cannot read", e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |newline| newline + 1);
    if complete < bytes.len() {
        tracing::warn!("{}: cutting off a torn last line ({} bytes)", path.display(), bytes.len() - complete);
        let file = OpenOptions::new().write(true).open(path).map_err(|e| DatagenError::io(path, "cannot open", e))?;
        file.set_len(complete as u64).map_err(|e| DatagenError::io(path, "cannot truncate", e))?;
        file.sync_all().map_err(|e| DatagenError::io(path, "cannot sync", e))?;
    }
    let text = std::str::from_utf8(&bytes[..complete])
        .map_err(|e| DatagenError::bad_file(path, None, format!("not UTF-8: {e}")))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record =
            serde_json::from_str(line).map_err(|e| DatagenError::bad_file(path, Some(index + 1), e.to_string()))?;
        records.push(record);
    }
    Ok(records)
}

/// The texts of an existing dataset, for deduplication against it: each line's `text`, or its `prompt` followed
/// by its `completion`. Lines with neither (e.g. pre-tokenized `ids`) are skipped.
pub fn dataset_texts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DatagenError::io(path, "cannot read", e))?;
    let mut texts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| DatagenError::bad_file(path, Some(index + 1), format!("invalid JSON: {e}")))?;
        if let Some(text) = value["text"].as_str() {
            texts.push(text.to_owned());
        } else if let (Some(prompt), Some(completion)) = (value["prompt"].as_str(), value["completion"].as_str()) {
            texts.push(format!("{prompt}{completion}"));
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_read_back_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut out = JsonlAppender::open(&path).unwrap();
        out.append(&serde_json::json!({"text": "a"})).unwrap();
        out.append(&serde_json::json!({"text": "b"})).unwrap();
        drop(out);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"text\": \"c").unwrap();
        let records: Vec<serde_json::Value> = read_records(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"text\":\"a\"}\n{\"text\":\"b\"}\n");
        assert!(read_records::<serde_json::Value>(&dir.path().join("missing.jsonl")).unwrap().is_empty());
        std::fs::write(&path, "{\"text\":\"a\"}\nnot json\n").unwrap();
        let error = read_records::<serde_json::Value>(&path).unwrap_err().to_string();
        assert!(error.contains("out.jsonl:2"), "{error}");
        std::fs::write(&path, "{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"ids\":[1]}\n").unwrap();
        assert_eq!(dataset_texts(&path).unwrap(), ["a", "pc"]);
    }
}
