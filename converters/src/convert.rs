//! Checkpoint → GGUF. Everything that can be checked is checked before the output file is created (config,
//! tensor names and shapes, dtypes, tokenizer); then the header is written and the tensors are streamed through
//! a small buffer, one chunk at a time, so memory use does not grow with the model.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::checkpoint::{Checkpoint, SourceDtype};
use crate::config::ModelConfig;
use crate::error::{ConvertError, Result};
use crate::gguf::{padding, write_zeros, GgufHeader};
use crate::layout::{self, Layout, MappedTensor};
use crate::metadata;
use crate::out_type::OutType;
use crate::output::{self, PendingFile};
use crate::quant::{ChunkConverter, Encoding};
use crate::tokenizer::{self, TokenizerOrigin, TokenizerSource};

/// Elements converted per step: 4 MiB of f32 source, a whole number of Q8_0 blocks.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// What to write.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Must be a native type (`OutType::is_native`); the others are made from an f16/f32 output by llama.cpp.
    pub out_type: OutType,
    /// An explicit tokenizer, which overrides the checkpoint's own.
    pub tokenizer: Option<TokenizerSource>,
    /// Used only when the checkpoint directory has no tokenizer.json.
    pub fallback_tokenizer: Option<TokenizerSource>,
}

/// Reported after each converted chunk.
#[derive(Debug, Clone)]
pub struct ConvertProgress {
    /// The GGUF name of the tensor being written.
    pub tensor: String,
    pub index: usize,
    pub tensor_count: usize,
    /// Tensor data written so far and in all, in bytes of the output.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub layout: Layout,
    /// Tensors in the GGUF.
    pub tensor_count: usize,
    pub parameter_count: u64,
    /// Size of the written file.
    pub output_bytes: u64,
    pub tokenizer: TokenizerOrigin,
    /// The widest dtype among the source weights (F32 > BF16 > F16).
    pub source_dtype: SourceDtype,
}

/// A checkpoint as `inspect` sees it, without converting anything.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    pub layout: Layout,
    pub config: ModelConfig,
    /// The widest dtype among the weights: picks a lossless intermediate for llama.cpp's quantizer.
    pub source_dtype: SourceDtype,
    /// Tensors the GGUF will have.
    pub tensor_count: usize,
    pub parameter_count: u64,
    /// The safetensors files, in reading order.
    pub weight_files: Vec<PathBuf>,
}

/// A checkpoint whose config, tensor names, shapes and dtypes have been checked.
struct Validated {
    config: ModelConfig,
    config_json: serde_json::Value,
    checkpoint: Checkpoint,
    layout: Layout,
    /// In output order.
    tensors: Vec<MappedTensor>,
}

impl Validated {
    fn load(input_dir: &Path) -> Result<Validated> {
        let (config, style, config_json) = ModelConfig::load(input_dir)?;
        let checkpoint = Checkpoint::open(input_dir)?;
        let layout = layout::detect(&checkpoint)?;
        let tensors = layout::map_tensors(&checkpoint, layout, &config, style)?;
        Ok(Validated { config, config_json, checkpoint, layout, tensors })
    }

    fn info(&self) -> CheckpointInfo {
        CheckpointInfo {
            layout: self.layout,
            source_dtype: self.source_dtype(),
            tensor_count: self.tensors.len(),
            parameter_count: self.parameter_count(),
            weight_files: self.checkpoint.files.iter().map(|f| f.path.clone()).collect(),
            config: self.config.clone(),
        }
    }

    fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.elements.len() as u64).sum()
    }

    fn source_dtype(&self) -> SourceDtype {
        // `map_tensors` succeeded, so there are tensors; F32 is only a formal default.
        self.checkpoint.widest_dtype().unwrap_or(SourceDtype::F32)
    }
}

/// Reads a checkpoint's config and weight headers and checks them, without converting.
pub fn inspect(input_dir: &Path) -> Result<CheckpointInfo> {
    Ok(Validated::load(input_dir)?.info())
}

/// A checkpoint opened for reading its weights as the converter reads them: config, tensor names, shapes and
/// dtypes checked, the weight files memory-mapped, every tensor under the GGUF name the converter gives it.
pub struct CheckpointReader {
    validated: Validated,
}

/// One tensor of a checkpoint under its GGUF name: a stored tensor, or the block of rows of a fused one
/// (phi-msft's `Wqkv`) that becomes the GGUF tensor.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// The GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: &'a str,
    pub dtype: SourceDtype,
    /// PyTorch order (outermost first).
    pub shape: Vec<usize>,
    /// The stored little-endian elements, from the memory map.
    pub data: &'a [u8],
}

impl CheckpointReader {
    pub fn open(input_dir: &Path) -> Result<CheckpointReader> {
        Ok(CheckpointReader { validated: Validated::load(input_dir)? })
    }

    pub fn info(&self) -> CheckpointInfo {
        self.validated.info()
    }

    /// Every tensor, in the GGUF's order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        let checkpoint = &self.validated.checkpoint;
        self.validated.tensors.iter().map(move |mapped| {
            let source = &checkpoint.tensors[mapped.source];
            let element_size = source.dtype.element_size();
            let bytes = mapped.elements.start * element_size..mapped.elements.end * element_size;
            TensorView {
                name: &mapped.gguf_name,
                dtype: source.dtype,
                shape: mapped.dims.iter().rev().map(|&d| d as usize).collect(),
                data: checkpoint.bytes(source, bytes),
            }
        })
    }
}

/// Checks that `output` can take the GGUF of the checkpoint in `input_dir`: its directory exists, and it is not a
/// directory, a device, a FIFO or a socket (the rename into place would replace those), nor one of the files the
/// conversion reads (`-o CHECKPOINT/model.safetensors` would destroy the checkpoint).
pub fn check_output(input_dir: &Path, output: &Path, options: &ConvertOptions) -> Result<()> {
    output::check_output_path(output).map_err(|(path, reason)| ConvertError::Output { path, reason })?;
    if !output.exists() {
        return Ok(());
    }
    let mut source_dirs = vec![input_dir.to_path_buf()];
    if let Some(TokenizerSource::Dir(dir)) = &options.tokenizer {
        source_dirs.push(dir.clone());
    }
    for dir in source_dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_source_file(&name) && output::same_file(output, &entry.path()) {
                return Err(ConvertError::Output {
                    path: output.to_path_buf(),
                    reason: format!("this is `{name}` of the checkpoint being converted; choose another output"),
                });
            }
        }
    }
    Ok(())
}

/// The files of a checkpoint directory that a conversion reads.
fn is_source_file(name: &str) -> bool {
    name == "config.json"
        || name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || tokenizer::SOURCE_FILES.contains(&name)
}

/// Converts the checkpoint in `input_dir` to a GGUF at `output` (replacing any file there). On error nothing is
/// left at `output` nor in its directory.
pub fn convert(
    input_dir: &Path,
    output: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(&ConvertProgress),
) -> Result<ConvertSummary> {
    let weight_encoding = options
        .out_type
        .encoding()
        .ok_or_else(|| ConvertError::NonNativeOutType { out_type: options.out_type.name().to_owned() })?;
    check_output(input_dir, output, options)?;
    let validated = Validated::load(input_dir)?;
    let (tokenizer_files, tokenizer_origin) =
        tokenizer::resolve(input_dir, options.tokenizer.as_ref(), options.fallback_tokenizer.as_ref())?;
    let vocab = tokenizer_files.vocab(validated.config.vocab_size, &validated.config_json)?;
    tracing::info!(
        layout = %validated.layout,
        tensors = validated.tensors.len(),
        tokens = vocab.tokens.len(),
        out_type = %options.out_type,
        "converting {}",
        input_dir.display()
    );

    let mut header = GgufHeader::new();
    let parameter_count = validated.parameter_count();
    metadata::write_metadata(
        &mut header,
        &metadata::model_name(&directory_name(input_dir)),
        parameter_count,
        &validated.config,
        options.out_type,
        vocab,
    );
    let mut encodings = Vec::with_capacity(validated.tensors.len());
    for tensor in &validated.tensors {
        let encoding = tensor_encoding(tensor, weight_encoding);
        header
            .push_tensor(tensor.gguf_name.clone(), tensor.dims.clone(), encoding.ggml_type())
            .map_err(|e| ConvertError::Output { path: output.to_path_buf(), reason: e.to_string() })?;
        encodings.push(encoding);
    }
    let output_bytes =
        header.file_len().map_err(|e| ConvertError::Output { path: output.to_path_buf(), reason: e.to_string() })?;

    let mut file = PendingFile::create(output).map_err(|e| ConvertError::Output {
        path: output::parent_dir(output).to_path_buf(),
        reason: format!("cannot create a file in the output directory: {e}"),
    })?;
    write_gguf(&mut file, &header, &validated, &encodings, progress)
        .map_err(|e| ConvertError::io(output, "cannot write", e))?;
    file.commit().map_err(|e| ConvertError::io(output, "cannot write", e))?;
    tracing::info!(bytes = output_bytes, "wrote {}", output.display());

    Ok(ConvertSummary {
        layout: validated.layout,
        tensor_count: validated.tensors.len(),
        parameter_count,
        output_bytes,
        tokenizer: tokenizer_origin,
        source_dtype: validated.source_dtype(),
    })
}

/// The storage type of one tensor, by gguf-py's rules: 1-D tensors (norms, biases) stay F32, as llama.cpp
/// needs; Q8_0 needs rows of whole 32-element blocks, and rows that are not fall back to F16.
fn tensor_encoding(tensor: &MappedTensor, weights: Encoding) -> Encoding {
    if tensor.dims.len() <= 1 || tensor.gguf_name.ends_with("_norm.weight") {
        return Encoding::F32;
    }
    let row = tensor.dims[0] as usize;
    if row % weights.elements_per_unit() != 0 {
        tracing::warn!(tensor = tensor.gguf_name, row, "row length is not a whole number of Q8_0 blocks; writing F16");
        return Encoding::F16;
    }
    weights
}

/// Writes the header, then every tensor chunk by chunk, each followed by its alignment padding.
///
/// Converting and writing overlap: this thread reads and converts the next chunk while a writer thread hands the
/// previous one to the kernel. On a phi-1-sized model the two take about as long as each other (the writes alone
/// are several seconds of system time), so this nearly halves the wall time.
fn write_gguf(
    file: &mut PendingFile,
    header: &GgufHeader,
    validated: &Validated,
    encodings: &[Encoding],
    progress: &mut dyn FnMut(&ConvertProgress),
) -> std::io::Result<()> {
    let w = file.writer()?;
    header.write_to(w)?;
    // Two chunks in flight are enough to keep both threads busy; more would only use memory.
    let (full, to_write) = mpsc::sync_channel::<Vec<u8>>(2);
    let (recycle, empty) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            for chunk in to_write {
                w.write_all(&chunk)?;
                // The converting side may have finished already; then the buffer is simply dropped.
                let _ = recycle.send(chunk);
            }
            Ok(())
        });
        let mut send = |bytes: &[u8]| {
            let mut chunk = empty.try_recv().unwrap_or_default();
            chunk.clear();
            chunk.extend_from_slice(bytes);
            // The writer only hangs up after a write error, which `join` below reports.
            full.send(chunk).is_ok()
        };
        let converted = convert_tensors(header, validated, encodings, progress, &mut send);
        drop(full);
        let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        // A write error explains a converting side that stopped early, so it comes first.
        written.and(converted)
    })
}

/// Converts every tensor chunk by chunk and passes the bytes (padding included) to `send`, which returns false
/// when the output can take no more.
fn convert_tensors(
    header: &GgufHeader,
    validated: &Validated,
    encodings: &[Encoding],
    progress: &mut dyn FnMut(&ConvertProgress),
    send: &mut dyn FnMut(&[u8]) -> bool,
) -> std::io::Result<()> {
    let output_closed = || std::io::Error::other("the output stopped accepting data");
    let checkpoint = &validated.checkpoint;
    let bytes_total: u64 = header.tensors().iter().map(|t| t.n_bytes).sum();
    let tensor_count = header.tensors().len();
    let mut bytes_done = 0u64;
    let mut converter = ChunkConverter::default();
    let mut zeros = Vec::new();
    for (index, ((mapped, info), &encoding)) in
        validated.tensors.iter().zip(header.tensors()).zip(encodings).enumerate()
    {
        let source = &checkpoint.tensors[mapped.source];
        let element_size = source.dtype.element_size();
        let byte_range = |elements: std::ops::Range<usize>| elements.start * element_size..elements.end * element_size;
        checkpoint.prefetch(source, byte_range(mapped.elements.clone()));
        let mut written = 0u64;
        let mut start = mapped.elements.start;
        while start < mapped.elements.end {
            let end = (start + CHUNK_ELEMENTS).min(mapped.elements.end);
            let stored = checkpoint.bytes(source, byte_range(start..end));
            let encoded = converter.convert(stored, source.dtype, encoding);
            if !send(encoded) {
                return Err(output_closed());
            }
            written += encoded.len() as u64;
            bytes_done += encoded.len() as u64;
            checkpoint.release(source, byte_range(start..end));
            progress(&ConvertProgress { tensor: info.name.clone(), index, tensor_count, bytes_done, bytes_total });
            start = end;
        }
        if written != info.n_bytes {
            return Err(std::io::Error::other(format!(
                "internal error: wrote {written} bytes for `{}`, expected {}",
                info.name, info.n_bytes
            )));
        }
        zeros.clear();
        write_zeros(&mut zeros, padding(info.n_bytes, header.alignment()))?;
        if !zeros.is_empty() && !send(&zeros) {
            return Err(output_closed());
        }
    }
    Ok(())
}

/// The checkpoint directory's own name, which becomes `general.name` (`"."` resolves to the real name).
fn directory_name(dir: &Path) -> String {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_owned())
}
