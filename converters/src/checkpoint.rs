//! The weights of a checkpoint: `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
//! Files are memory-mapped, so a tensor is read straight from the page cache and nothing holds the whole model
//! in memory; headers are parsed and validated by the safetensors crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError};
use safetensors::SafeTensors;

use crate::error::{ConvertError, Result};

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// The floating-point types a checkpoint may store. The order is by width, so `max` gives the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceDtype {
    F16,
    Bf16,
    F32,
}

impl SourceDtype {
    pub fn name(self) -> &'static str {
        match self {
            SourceDtype::F16 => "F16",
            SourceDtype::Bf16 => "BF16",
            SourceDtype::F32 => "F32",
        }
    }

    pub fn element_size(self) -> usize {
        match self {
            SourceDtype::F16 | SourceDtype::Bf16 => 2,
            SourceDtype::F32 => 4,
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<SourceDtype> {
        match dtype {
            Dtype::F16 => Some(SourceDtype::F16),
            Dtype::BF16 => Some(SourceDtype::Bf16),
            Dtype::F32 => Some(SourceDtype::F32),
            _ => None,
        }
    }
}

impl fmt::Display for SourceDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Buffers some exports store that are not weights. `rotary_emb.inv_freq` is the rotary frequency table,
/// derived from the config (llama.cpp computes its own from the rope settings, and its converter skips it too).
pub(crate) fn is_ignored(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// One mapped safetensors file.
pub(crate) struct WeightFile {
    pub(crate) path: PathBuf,
    map: Mmap,
}

/// A tensor as stored: where its bytes are and how to read them.
#[derive(Debug, Clone)]
pub(crate) struct SourceTensor {
    pub(crate) name: String,
    /// Index into `Checkpoint::files`.
    pub(crate) file: usize,
    pub(crate) dtype: SourceDtype,
    /// PyTorch order (outermost first).
    pub(crate) shape: Vec<usize>,
    /// Byte range in the file.
    pub(crate) bytes: Range<usize>,
}

/// The weights of a checkpoint directory.
pub(crate) struct Checkpoint {
    /// The file that describes the weights: `model.safetensors` or the index. Errors about the tensor set as a
    /// whole (missing, unexpected) name it.
    pub(crate) description: PathBuf,
    /// In the order the reference converter reads them: sorted by file name.
    pub(crate) files: Vec<WeightFile>,
    /// Ordered by file, then by name (Python's `safe_open(...).keys()` is sorted), which is the order in which
    /// llama.cpp's converter meets and writes them.
    pub(crate) tensors: Vec<SourceTensor>,
}

impl Checkpoint {
    /// Maps the weight files of `dir` and reads their headers. Tensors that `is_ignored` are left out.
    pub(crate) fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let (description, file_names, weight_map) = if single.is_file() {
            (single, vec![SINGLE_FILE.to_owned()], None)
        } else if index.is_file() {
            let weight_map = read_index(&index)?;
            let files: BTreeSet<String> = weight_map.values().cloned().collect();
            (index, files.into_iter().collect(), Some(weight_map))
        } else {
            return Err(ConvertError::NoWeights { dir: dir.to_path_buf(), hint: missing_weights_hint(dir) });
        };

        let mut files = Vec::with_capacity(file_names.len());
        let mut tensors = Vec::new();
        for (file_index, file_name) in file_names.iter().enumerate() {
            let path = dir.join(file_name);
            let (map, mut file_tensors) = read_safetensors(&path, file_index)?;
            if let Some(weight_map) = &weight_map {
                for tensor in &file_tensors {
                    match weight_map.get(&tensor.name) {
                        Some(listed) if listed == file_name => {}
                        Some(listed) => {
                            return Err(ConvertError::bad_weights(
                                &description,
                                format!(
                                    "tensor `{}` is in {file_name} but the index lists it in {listed}",
                                    tensor.name
                                ),
                            ))
                        }
                        None => {
                            return Err(ConvertError::bad_weights(
                                &description,
                                format!("tensor `{}` in {file_name} is not listed in the index", tensor.name),
                            ))
                        }
                    }
                }
            }
            file_tensors.sort_by(|a, b| a.name.cmp(&b.name));
            tensors.extend(file_tensors);
            files.push(WeightFile { path, map });
        }
        if let Some(weight_map) = &weight_map {
            let present: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            if let Some((name, file)) = weight_map.iter().find(|(name, _)| !present.contains(name.as_str())) {
                return Err(ConvertError::bad_weights(
                    &description,
                    format!("the index lists tensor `{name}` in {file}, which does not contain it"),
                ));
            }
        }
        tracing::debug!(files = files.len(), tensors = tensors.len(), "read safetensors headers");
        Ok(Checkpoint { description, files, tensors })
    }

    /// The widest dtype among the weights.
    pub(crate) fn widest_dtype(&self) -> Option<SourceDtype> {
        self.tensors.iter().map(|t| t.dtype).max()
    }

    pub(crate) fn file_path(&self, tensor: &SourceTensor) -> &Path {
        &self.files[tensor.file].path
    }

    /// The stored bytes of `range` (relative to the tensor's first byte).
    pub(crate) fn bytes(&self, tensor: &SourceTensor, range: Range<usize>) -> &[u8] {
        let start = tensor.bytes.start + range.start;
        &self.files[tensor.file].map[start..tensor.bytes.start + range.end]
    }

    /// Asks the kernel to start reading a range we are about to convert, so that the disk works ahead of us.
    pub(crate) fn prefetch(&self, tensor: &SourceTensor, range: Range<usize>) {
        #[cfg(unix)]
        {
            let start = tensor.bytes.start + range.start;
            let map = &self.files[tensor.file].map;
            if let Err(error) = map.advise_range(memmap2::Advice::WillNeed, start, range.len()) {
                tracing::debug!(%error, "madvise(WILLNEED) failed");
            }
        }
        #[cfg(not(unix))]
        let _ = (tensor, range);
    }

    /// Drops the pages of a range we are done with from this process. Without this every page of the model we
    /// touched would stay mapped in, and the resident size would grow to the size of the model.
    pub(crate) fn release(&self, tensor: &SourceTensor, range: Range<usize>) {
        #[cfg(unix)]
        {
            let start = tensor.bytes.start + range.start;
            let map = &self.files[tensor.file].map;
            // SAFETY: `MADV_DONTNEED` is "unchecked" because on a private *writable* mapping it discards the
            // process's modifications. This mapping is read-only and file-backed, so there are none: the next
            // access to these pages (even through a slice still alive) faults them in again from the file with
            // the same contents.
            let advised = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, range.len()) };
            if let Err(error) = advised {
                tracing::debug!(%error, "madvise(DONTNEED) failed");
            }
        }
        #[cfg(not(unix))]
        let _ = (tensor, range);
    }
}

/// Maps one safetensors file and lists its tensors.
fn read_safetensors(path: &Path, file_index: usize) -> Result<(Mmap, Vec<SourceTensor>)> {
    let file = File::open(path).map_err(|e| ConvertError::io(path, "cannot open", e))?;
    let len = file.metadata().map_err(|e| ConvertError::io(path, "cannot stat", e))?.len();
    if len < 8 {
        return Err(ConvertError::bad_weights(path, format!("truncated header (file is {len} bytes)")));
    }
    // SAFETY: a read-only private map. The checkpoint must not be modified while it is converted; a truncation
    // under our feet would raise SIGBUS, which is the accepted hazard of reading through mmap (and what every
    // safetensors loader does).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(path, "cannot map", e))?;
    let mut header_len = [0u8; 8];
    header_len.copy_from_slice(&map[..8]);
    let header_len = u64::from_le_bytes(header_len);
    if header_len.checked_add(8).is_none_or(|end| end > len) {
        return Err(ConvertError::bad_weights(
            path,
            format!("truncated header (file is {len} bytes, the header claims {header_len} bytes after the first 8)"),
        ));
    }
    let (header_len, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| ConvertError::bad_weights(path, describe(e)))?;
    let data_start = 8 + header_len;
    let mut tensors = Vec::new();
    for (name, info) in metadata.tensors() {
        if is_ignored(&name) {
            tracing::debug!(tensor = name, "ignoring a non-weight buffer");
            continue;
        }
        let Some(dtype) = SourceDtype::from_safetensors(info.dtype) else {
            return Err(ConvertError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name,
                dtype: format!("{:?}", info.dtype),
            });
        };
        let (start, end) = info.data_offsets;
        tensors.push(SourceTensor {
            name,
            file: file_index,
            dtype,
            shape: info.shape.clone(),
            bytes: data_start + start..data_start + end,
        });
    }
    Ok((map, tensors))
}

/// The safetensors crate's errors as sentences about the file.
fn describe(error: SafeTensorError) -> String {
    match error {
        SafeTensorError::HeaderTooSmall => "truncated header".to_owned(),
        SafeTensorError::InvalidHeaderLength => "truncated header (header length exceeds the file)".to_owned(),
        SafeTensorError::HeaderTooLarge => "corrupt header: header length is over 100 MB".to_owned(),
        SafeTensorError::InvalidHeader(e) => format!("corrupt header: not UTF-8 ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("corrupt header: {e}"),
        SafeTensorError::InvalidOffset(name) => format!("corrupt header: tensor `{name}` has invalid data offsets"),
        SafeTensorError::TensorInvalidInfo => {
            "corrupt header: a tensor's data offsets do not match its shape and dtype".to_owned()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "corrupt file: the tensor data does not match the file size (truncated or trailing bytes)".to_owned()
        }
        SafeTensorError::ValidationOverflow => "corrupt header: a tensor's size overflows".to_owned(),
        other => format!("corrupt file: {other}"),
    }
}

/// Reads `weight_map` (tensor name → shard file name) from a sharded checkpoint's index.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, "cannot read file", e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ConvertError::Json { path: path.to_path_buf(), source })?;
    let entries = json
        .get("weight_map")
        .ok_or_else(|| ConvertError::MissingKey { path: path.to_path_buf(), key: "weight_map".to_owned() })?
        .as_object()
        .ok_or_else(|| invalid_index(path, "must be an object"))?;
    let mut weight_map = BTreeMap::new();
    for (name, file) in entries {
        let file = file.as_str().ok_or_else(|| invalid_index(path, &format!("entry `{name}` is not a file name")))?;
        // A shard is a file of the checkpoint directory, never a path elsewhere.
        if Path::new(file).file_name() != Some(std::ffi::OsStr::new(file)) || file == ".." {
            return Err(invalid_index(
                path,
                &format!("entry `{name}` names `{file}`, which is not a file in this directory"),
            ));
        }
        if !is_ignored(name) {
            weight_map.insert(name.clone(), file.to_owned());
        }
    }
    if weight_map.is_empty() {
        return Err(invalid_index(path, "lists no tensors"));
    }
    Ok(weight_map)
}

fn invalid_index(path: &Path, reason: &str) -> ConvertError {
    ConvertError::InvalidValue { path: path.to_path_buf(), key: "weight_map".to_owned(), reason: reason.to_owned() }
}

/// A hint for a directory without safetensors weights.
fn missing_weights_hint(dir: &Path) -> String {
    let has = |suffix: &str| {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(suffix)))
            .unwrap_or(false)
    };
    if has(".bin") {
        " (PyTorch .bin checkpoints are not supported; save the model with safetensors)".to_owned()
    } else if has(".safetensors") {
        " (there are .safetensors files, but neither of these names)".to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freq_buffers_are_the_only_ignored_names() {
        assert!(is_ignored("model.layers.0.self_attn.rotary_emb.inv_freq"));
        assert!(is_ignored("transformer.h.3.mixer.rotary_emb.inv_freq"));
        assert!(!is_ignored("model.layers.0.self_attn.q_proj.weight"));
    }
}
