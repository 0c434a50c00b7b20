//! GGUF v3, the file format of llama.cpp: a reader (used to check files before llama.cpp loads them, and by the
//! tests to compare with the reference converter's output) and a header writer for streaming conversion.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! (key string, u32 value type, value), the tensor infos (name, u32 n_dims, u64 `ne` per dim, u32 ggml type,
//! u64 offset into the data section), zero padding to the alignment, then the data section in which every
//! tensor starts at a multiple of the alignment. Strings are a u64 byte length and UTF-8 bytes.

mod reader;
mod types;
mod writer;

use std::io::Write;
use std::path::Path;

pub use reader::{GgufError, GgufFile};
pub use types::{GgmlType, MetadataArray, MetadataValue, TensorInfo, ValueType};
pub use writer::{padding, write_zeros, GgufHeader};

use crate::output::PendingFile;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// The alignment of a file without `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Opens and parses a GGUF; the same as [`GgufFile::open`].
pub fn read(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
    GgufFile::open(path)
}

/// Copies a GGUF to `target`, passing each metadata value through `edit` on the way (keys, key order and
/// tensors stay as they are). The target appears only when complete.
pub fn rewrite_metadata(
    source: &Path,
    target: &Path,
    mut edit: impl FnMut(&str, &mut MetadataValue),
) -> Result<(), GgufError> {
    let input = GgufFile::open(source)?;
    let failed = |reason: String| GgufError { path: target.to_path_buf(), reason };
    let mut header = GgufHeader::new();
    for (key, value) in input.metadata() {
        let mut value = value.clone();
        edit(key, &mut value);
        header.set_metadata(key, value);
    }
    for tensor in input.tensors() {
        header
            .push_tensor(tensor.name.clone(), tensor.dims.clone(), tensor.ggml_type)
            .map_err(|e| failed(e.to_string()))?;
    }
    let mut output = PendingFile::create(target).map_err(|e| failed(format!("cannot create: {e}")))?;
    let write_all = |output: &mut PendingFile| -> std::io::Result<()> {
        let w = output.writer()?;
        header.write_to(w)?;
        for tensor in header.tensors() {
            let data = input.tensor(&tensor.name).map(|t| input.tensor_data(t)).unwrap_or_default();
            w.write_all(data)?;
            write_zeros(w, padding(tensor.n_bytes, header.alignment()))?;
        }
        Ok(())
    };
    write_all(&mut output).map_err(|e| failed(format!("cannot write: {e}")))?;
    output.commit().map_err(|e| failed(format!("cannot write: {e}")))
}
