//! Training data: JSONL files and directories of Python source, tokenized into sequences of at most `seq_len`
//! tokens, each with the positions that count in the loss.
//!
//! JSONL, one example per line (blank lines are skipped):
//! * `{"text": "..."}`: the text plus `<|endoftext|>`, every token a target; a text longer than `seq_len` becomes
//!   consecutive windows;
//! * `{"prompt": "...", "completion": "..."}`: the loss is on the completion (and its `<|endoftext|>`) only; an
//!   example longer than `seq_len` is cut at the end;
//! * `{"ids": [...]}`: pre-tokenized, used exactly as given (no end token added, never cut).
//!
//! A directory (e.g. the user's repository): every `.py` file that `.gitignore` and friends do not exclude,
//! tokenized whole and packed into sequences at top-level function and class boundaries. Whole files are held out
//! for validation, so validation measures code the model has not seen.

use std::path::{Path, PathBuf};

use phi_converters::ModelConfig;
use tokenizers::Tokenizer;

use super::error::{FinetuneError, Result};
use super::model::{BaseSource, DeviceBatch};
use super::rng::{Fnv64, SplitMix64};

/// `<|endoftext|>` of the phi tokenizer: ends every text and document.
pub const END_OF_TEXT: u32 = 50256;

/// Stream id of the validation split in [`SplitMix64::derived`].
const SPLIT_STREAM: u64 = u64::MAX;

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// `targets[t]`: whether predicting `ids[t]` from the tokens before it counts in the loss (`targets[0]` is
    /// never used: nothing precedes the first token).
    pub targets: Vec<bool>,
}

impl Sequence {
    fn all_targets(ids: Vec<u32>) -> Sequence {
        let targets = vec![true; ids.len()];
        Sequence { ids, targets }
    }

    /// The number of tokens that count in the loss.
    pub fn target_count(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&t| t).count()
    }
}

/// How to read the data.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Longest sequence, in tokens.
    pub seq_len: usize,
    /// Share of the examples (JSONL lines, or files of a directory) held out for validation, rounded down.
    pub val_fraction: f64,
    /// Seeds the validation split.
    pub seed: u64,
    /// The model's vocabulary: pre-tokenized ids at or above it are errors naming their line.
    pub vocab_size: Option<usize>,
}

/// Training and validation sequences.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub train: Vec<Sequence>,
    pub validation: Vec<Sequence>,
}

impl Dataset {
    /// Checks every id against the model's vocabulary and every length against `seq_len`.
    pub fn check_fits(&self, config: &ModelConfig, seq_len: usize) -> Result<()> {
        for (i, sequence) in self.train.iter().chain(&self.validation).enumerate() {
            if let Some(&bad) = sequence.ids.iter().find(|&&id| id as usize >= config.vocab_size) {
                return Err(FinetuneError::data(
                    &self.path,
                    None,
                    format!(
                        "sequence {} holds token id {bad}, beyond the model's vocabulary of {}",
                        i + 1,
                        config.vocab_size
                    ),
                ));
            }
            if sequence.ids.len() > seq_len {
                return Err(FinetuneError::data(
                    &self.path,
                    None,
                    format!(
                        "sequence {} has {} tokens, more than the sequence length {seq_len}",
                        i + 1,
                        sequence.ids.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A fingerprint of the training sequences, so a checkpoint is not resumed on other data.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = Fnv64::new();
        for sequence in &self.train {
            hash.write(&(sequence.ids.len() as u64).to_le_bytes());
            for (&id, &target) in sequence.ids.iter().zip(&sequence.targets) {
                hash.write(&id.to_le_bytes());
                hash.write(&[u8::from(target)]);
            }
        }
        hash.finish()
    }

    /// Packs consecutive sequences of each split into sequences of up to `seq_len` tokens (documents end with
    /// `<|endoftext|>`, so the model sees where one ends), as pretraining does: fewer, fuller sequences and no
    /// padding. Each sequence keeps its loss targets.
    pub fn pack(&mut self, seq_len: usize) {
        for split in [&mut self.train, &mut self.validation] {
            let mut packed: Vec<Sequence> = Vec::new();
            for sequence in std::mem::take(split) {
                match packed.last_mut() {
                    Some(last) if last.ids.len() + sequence.ids.len() <= seq_len => {
                        last.ids.extend(&sequence.ids);
                        last.targets.extend(&sequence.targets);
                    }
                    _ => packed.push(sequence),
                }
            }
            *split = packed;
        }
    }

    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|s| s.ids.len()).sum()
    }
}

/// The tokenizer that goes with a base model: the checkpoint's `tokenizer.json`, else the bundled phi-1 one
/// (always for a GGUF base: phi-1, phi-1.5 and phi-2 share it).
pub fn load_tokenizer(base: &BaseSource) -> Result<Tokenizer> {
    if let BaseSource::HfDir(dir) = base {
        let path = dir.join("tokenizer.json");
        if path.is_file() {
            return Tokenizer::from_file(&path)
                .map_err(|e| FinetuneError::Tokenizer(format!("{}: {e}", path.display())));
        }
    }
    Tokenizer::from_bytes(crate::bundled::TOKENIZER_JSON)
        .map_err(|e| FinetuneError::Tokenizer(format!("the bundled phi-1 tokenizer: {e}")))
}

/// Reads `path`: a directory of Python files, a single `.py` file, or JSONL.
pub fn load_dataset(path: &Path, tokenizer: &Tokenizer, options: &DataOptions) -> Result<Dataset> {
    if options.seq_len < 2 {
        return Err(FinetuneError::Option(format!("--seq-len {} is too short (at least 2 tokens)", options.seq_len)));
    }
    if !(0.0..1.0).contains(&options.val_fraction) {
        return Err(FinetuneError::Option(format!("--val-fraction {} must be in [0, 1)", options.val_fraction)));
    }
    let (train, validation) = if path.is_dir() {
        load_python_dir(path, tokenizer, options)?
    } else if path.extension().is_some_and(|e| e == "py") {
        let text = std::fs::read_to_string(path).map_err(|e| FinetuneError::io(path, "cannot read file", e))?;
        (python_file_sequences(path, &text, tokenizer, options.seq_len)?, Vec::new())
    } else {
        load_jsonl(path, tokenizer, options)?
    };
    if train.is_empty() {
        return Err(FinetuneError::data(path, None, "no training sequences (is the data empty?)"));
    }
    Ok(Dataset { path: path.to_path_buf(), train, validation })
}

/// The examples of one JSONL line: its sequences, or nothing for a blank line.
fn load_jsonl(path: &Path, tokenizer: &Tokenizer, options: &DataOptions) -> Result<(Vec<Sequence>, Vec<Sequence>)> {
    let text = std::fs::read_to_string(path).map_err(|e| FinetuneError::io(path, "cannot read file", e))?;
    let mut examples: Vec<Vec<Sequence>> = Vec::new();
    let mut cut = 0;
    let mut no_target = 0;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| FinetuneError::data(path, Some(number), reason);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| fail("expected a JSON object".to_owned()))?;
        let string = |key: &str| -> Result<Option<&str>> {
            match object.get(key) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(fail(format!("`{key}` must be a string"))),
            }
        };
        let encode = |text: &str| -> Result<Vec<u32>> {
            tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| FinetuneError::Tokenizer(format!("{}:{number}: {e}", path.display())))
        };
        let sequences = if let Some(ids) = object.get("ids") {
            let ids = ids
                .as_array()
                .ok_or_else(|| fail("`ids` must be an array of token ids".to_owned()))?
                .iter()
                .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| fail("`ids` must hold non-negative integers".to_owned()))?;
            if let Some(&bad) = options.vocab_size.and_then(|v| ids.iter().find(|&&id| id as usize >= v)) {
                return Err(fail(format!(
                    "token id {bad} is beyond the model's vocabulary of {}",
                    options.vocab_size.unwrap_or_default()
                )));
            }
            if ids.len() < 2 {
                return Err(fail(format!("{} ids; a sequence needs at least 2 tokens to predict one", ids.len())));
            }
            if ids.len() > options.seq_len {
                return Err(fail(format!(
                    "{} ids, more than --seq-len {} (pre-tokenized sequences are used as given, never cut)",
                    ids.len(),
                    options.seq_len
                )));
            }
            vec![Sequence::all_targets(ids)]
        } else if let Some(text) = string("text")? {
            let mut ids = encode(text)?;
            ids.push(END_OF_TEXT);
            ids.chunks(options.seq_len).filter(|c| c.len() >= 2).map(|c| Sequence::all_targets(c.to_vec())).collect()
        } else if let (Some(prompt), Some(completion)) = (string("prompt")?, string("completion")?) {
            let prompt = encode(prompt)?;
            let mut completion = encode(completion)?;
            completion.push(END_OF_TEXT);
            let mut ids = prompt.clone();
            ids.extend(&completion);
            let mut targets = vec![false; prompt.len()];
            targets.extend(std::iter::repeat_n(true, completion.len()));
            if ids.len() > options.seq_len {
                cut += 1;
                ids.truncate(options.seq_len);
                targets.truncate(options.seq_len);
            }
            let sequence = Sequence { ids, targets };
            if sequence.target_count() == 0 {
                no_target += 1;
                Vec::new()
            } else {
                vec![sequence]
            }
        } else {
            return Err(fail(
                "expected `text`, `prompt` and `completion`, or `ids` (one JSON object per line)".to_owned(),
            ));
        };
        examples.push(sequences);
    }
    if cut > 0 {
        tracing::warn!("{cut} prompt/completion examples are longer than --seq-len {} and were cut", options.seq_len);
    }
    if no_target > 0 {
        tracing::warn!("{no_target} examples were skipped: their prompt alone fills --seq-len {}", options.seq_len);
    }
    if examples.is_empty() {
        return Err(FinetuneError::data(path, None, "no examples (the file is empty)"));
    }
    let (validation, train) = split(examples, options);
    Ok((train.into_iter().flatten().collect(), validation.into_iter().flatten().collect()))
}

/// Holds out `floor(n · val_fraction)` of the examples, picked by a seeded shuffle; both parts keep file order.
fn split<T>(items: Vec<T>, options: &DataOptions) -> (Vec<T>, Vec<T>) {
    let held_out = ((items.len() as f64) * options.val_fraction).floor() as usize;
    let held_out = held_out.min(items.len().saturating_sub(1));
    let mut order: Vec<usize> = (0..items.len()).collect();
    SplitMix64::derived(options.seed, SPLIT_STREAM).shuffle(&mut order);
    let mut is_validation = vec![false; items.len()];
    for &i in &order[..held_out] {
        is_validation[i] = true;
    }
    let (mut validation, mut train) = (Vec::new(), Vec::new());
    for (item, held) in items.into_iter().zip(is_validation) {
        if held {
            validation.push(item);
        } else {
            train.push(item);
        }
    }
    (validation, train)
}

fn load_python_dir(dir: &Path, tokenizer: &Tokenizer, options: &DataOptions) -> Result<(Vec<Sequence>, Vec<Sequence>)> {
    let mut files = Vec::new();
    // `require_git(false)`: a .gitignore counts even in a directory that is not (yet) a git repository.
    for entry in ignore::WalkBuilder::new(dir).require_git(false).build() {
        let entry = entry.map_err(|e| FinetuneError::data(dir, None, format!("cannot walk the directory: {e}")))?;
        if entry.file_type().is_some_and(|t| t.is_file()) && entry.path().extension().is_some_and(|e| e == "py") {
            files.push(entry.into_path());
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(FinetuneError::data(dir, None, "no Python files (.py) here, after .gitignore"));
    }
    let mut per_file = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => per_file.push(python_file_sequences(&file, &text, tokenizer, options.seq_len)?),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!("skipping {}: not UTF-8", file.display());
            }
            Err(e) => return Err(FinetuneError::io(&file, "cannot read file", e)),
        }
    }
    let (validation, train) = split(per_file, options);
    Ok((train.into_iter().flatten().collect(), validation.into_iter().flatten().collect()))
}

/// One Python file as sequences: tokenized whole (so tokens are exactly those of the file), then packed at
/// top-level `def`/`class` boundaries into sequences of at most `seq_len` tokens; a unit longer than that is split
/// into windows. The file ends with `<|endoftext|>`.
fn python_file_sequences(path: &Path, text: &str, tokenizer: &Tokenizer, seq_len: usize) -> Result<Vec<Sequence>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let encoding =
        tokenizer.encode(text, false).map_err(|e| FinetuneError::Tokenizer(format!("{}: {e}", path.display())))?;
    let boundaries = python_unit_starts(text);
    // Unit of each token: the last boundary at or before the token's first byte.
    let mut units: Vec<Vec<u32>> = vec![Vec::new(); boundaries.len()];
    let mut unit = 0;
    for (&id, &(start, _)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
        while unit + 1 < boundaries.len() && boundaries[unit + 1] <= start {
            unit += 1;
        }
        units[unit].push(id);
    }
    if let Some(last) = units.iter_mut().rev().find(|u| !u.is_empty()) {
        last.push(END_OF_TEXT);
    }
    let mut sequences = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut flush = |current: &mut Vec<u32>| {
        if current.len() >= 2 {
            sequences.push(Sequence::all_targets(std::mem::take(current)));
        }
        current.clear();
    };
    for tokens in units.into_iter().filter(|u| !u.is_empty()) {
        if current.len() + tokens.len() <= seq_len {
            current.extend(tokens);
            continue;
        }
        flush(&mut current);
        let mut windows = tokens.chunks(seq_len).peekable();
        while let Some(window) = windows.next() {
            current.extend_from_slice(window);
            if windows.peek().is_some() {
                flush(&mut current);
            }
        }
    }
    flush(&mut current);
    Ok(sequences)
}

/// Byte offsets where top-level units start: 0, and each unindented `def`, `async def`, `class` or decorator line
/// (a decorated definition starts at its first decorator), moved up over comment lines directly above it.
pub(crate) fn python_unit_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let mut offset = 0;
    let mut previous_decorator = false;
    // Start of the run of comment lines directly above the current line, if any.
    let mut comment_run: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let is_definition = ["def ", "async def ", "class ", "@"].iter().any(|p| line.starts_with(p));
        if is_definition && !previous_decorator {
            let start = comment_run.unwrap_or(offset);
            if start > 0 && starts.last() != Some(&start) {
                starts.push(start);
            }
        }
        previous_decorator = line.starts_with('@');
        comment_run = if line.starts_with('#') { Some(comment_run.unwrap_or(offset)) } else { None };
        offset += line.len();
    }
    starts
}

/// Pads sequences (on the right, with id 0: any valid id does, since padding is never attended to by real tokens
/// under the causal mask and never a target) to the longest one, and collects the target positions.
pub(crate) fn make_batch(sequences: &[&Sequence], device: &candle_core::Device) -> Result<DeviceBatch> {
    let seq = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(sequences.len() * seq);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut tokens = 0;
    for (b, sequence) in sequences.iter().enumerate() {
        tokens += sequence.ids.len();
        ids.extend(&sequence.ids);
        ids.extend(std::iter::repeat_n(0, seq - sequence.ids.len()));
        for t in 1..sequence.ids.len() {
            if sequence.targets[t] {
                positions.push((b * seq + t - 1) as u32);
                targets.push(sequence.ids[t]);
            }
        }
    }
    let count = positions.len();
    Ok(DeviceBatch {
        ids: candle_core::Tensor::from_vec(ids, (sequences.len(), seq), device)?,
        positions: candle_core::Tensor::from_vec(positions, count, device)?,
        targets: candle_core::Tensor::from_vec(targets, (count, 1), device)?,
        count,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_start_at_top_level_definitions_with_their_decorators_and_comments() {
        let text = "import os\n\n# helper\ndef a():\n    def inner():\n        pass\n\n@dec\n@dec2\nclass B:\n    x = 1\nasync def c():\n    pass\n";
        let starts = python_unit_starts(text);
        let pieces: Vec<&str> = starts
            .iter()
            .zip(starts.iter().skip(1).chain(std::iter::once(&text.len())))
            .map(|(&a, &b)| &text[a..b])
            .collect();
        assert_eq!(
            pieces,
            [
                "import os\n\n",
                "# helper\ndef a():\n    def inner():\n        pass\n\n",
                "@dec\n@dec2\nclass B:\n    x = 1\n",
                "async def c():\n    pass\n"
            ]
        );
    }

    #[test]
    fn split_holds_out_the_rounded_down_share() {
        let options = DataOptions { seq_len: 8, val_fraction: 0.25, seed: 3, vocab_size: None };
        let (validation, train) = split((0..10).collect::<Vec<_>>(), &options);
        assert_eq!(validation.len(), 2);
        assert_eq!(train.len(), 8);
        let (validation, train) = split(vec![1, 2, 3], &options);
        assert!(validation.is_empty());
        assert_eq!(train, [1, 2, 3]);
    }
}
