//! Writing GGUF headers. The header (metadata, tensor infos with their offsets) is complete before any tensor data
//! exists, so a converter can write it first and then stream the tensors one after another.

use std::io::{self, Write};

use super::types::{GgmlType, MetadataArray, MetadataValue, TensorInfo};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// Everything of a GGUF file except the tensor data: metadata in insertion order and tensor infos whose offsets
/// are laid out as they are added (each tensor starts at a multiple of the alignment, as gguf-py and llama.cpp do).
#[derive(Debug, Clone)]
pub struct GgufHeader {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    /// Size of the data section laid out so far, including the padding after the last tensor.
    data_len: u64,
}

impl Default for GgufHeader {
    fn default() -> Self {
        GgufHeader::new()
    }
}

impl GgufHeader {
    /// A header with the default alignment (32), which is what a file without `general.alignment` uses.
    pub fn new() -> Self {
        GgufHeader { metadata: Vec::new(), tensors: Vec::new(), alignment: DEFAULT_ALIGNMENT, data_len: 0 }
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Sets a key. A key that is already present keeps its position and gets the new value, the way gguf-py
    /// overwrites a duplicated key; a new key goes to the end. Setting `general.alignment` to a power of two
    /// (as a u32) lays the tensors out with that alignment; any other value makes `write_to` fail.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: MetadataValue) {
        let key = key.into();
        if key == ALIGNMENT_KEY {
            if let MetadataValue::U32(alignment) = value {
                if alignment.is_power_of_two() {
                    self.relayout(alignment.into());
                }
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Recomputes every tensor offset for a new alignment.
    fn relayout(&mut self, alignment: u64) {
        self.alignment = alignment;
        self.data_len = 0;
        for tensor in &mut self.tensors {
            tensor.offset = self.data_len;
            self.data_len += tensor.n_bytes + padding(tensor.n_bytes, alignment);
        }
    }

    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// Adds a tensor after the previous ones. `dims` is in ggml order (`ne`). Fails when the name is taken or
    /// the contiguous dimension is not a whole number of blocks of the type.
    pub fn push_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ggml_type: GgmlType,
    ) -> io::Result<&TensorInfo> {
        let name = name.into();
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid_input(format!("duplicate tensor name `{name}`")));
        }
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let row = dims.first().copied().unwrap_or(1);
        let n_bytes = match elements {
            Some(elements) if row % ggml_type.block_size() == 0 => ggml_type.bytes_for(elements),
            _ => None,
        }
        .ok_or_else(|| invalid_input(format!("tensor `{name}` with ne {dims:?} cannot be stored as {ggml_type}")))?;
        let offset = self.data_len;
        self.data_len = offset + n_bytes + padding(n_bytes, self.alignment);
        let index = self.tensors.len();
        self.tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
        Ok(&self.tensors[index])
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Bytes from the start of the file to the start of the data section (header plus its padding). Fails
    /// like `write_to` on an unusable `general.alignment`.
    pub fn header_len(&self) -> io::Result<u64> {
        self.write_to(&mut io::sink())
    }

    /// Size of the data section, padding after the last tensor included.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The size the complete file will have.
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.header_len()? + self.data_len)
    }

    /// Writes the header and the padding up to the data section. Returns the number of bytes written, which
    /// is where the first tensor's data starts.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        if let Some((_, value)) = self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            if value.as_u64() != Some(self.alignment) || !matches!(value, MetadataValue::U32(_)) {
                return Err(invalid_input(format!("`{ALIGNMENT_KEY}` must be a power of two (u32), not {value:?}")));
            }
        }
        let mut w = CountingWriter { inner: w, written: 0 };
        w.write_all(&GGUF_MAGIC)?;
        w.write_all(&GGUF_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_string(&mut w, key)?;
            w.write_all(&value.value_type().code().to_le_bytes())?;
            write_value(&mut w, value)?;
        }
        for tensor in &self.tensors {
            write_string(&mut w, &tensor.name)?;
            w.write_all(&(tensor.dims.len() as u32).to_le_bytes())?;
            for d in &tensor.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&tensor.ggml_type.code().to_le_bytes())?;
            w.write_all(&tensor.offset.to_le_bytes())?;
        }
        let pad = padding(w.written, self.alignment);
        write_zeros(&mut w, pad)?;
        Ok(w.written)
    }
}

/// Zero bytes needed after `len` bytes to reach the next multiple of `alignment`.
pub fn padding(len: u64, alignment: u64) -> u64 {
    (alignment - len % alignment) % alignment
}

/// Writes `count` zero bytes.
pub fn write_zeros<W: Write + ?Sized>(w: &mut W, count: u64) -> io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    let mut left = count;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        w.write_all(&ZEROS[..n as usize])?;
        left -= n;
    }
    Ok(())
}

fn write_string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, value: &MetadataValue) -> io::Result<()> {
    match value {
        MetadataValue::U8(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::I8(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::U16(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::I16(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::U32(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::I32(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::F32(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::Bool(v) => w.write_all(&[u8::from(*v)]),
        MetadataValue::String(v) => write_string(w, v),
        MetadataValue::Array(v) => write_array(w, v),
        MetadataValue::U64(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::I64(v) => w.write_all(&v.to_le_bytes()),
        MetadataValue::F64(v) => w.write_all(&v.to_le_bytes()),
    }
}

/// An array is its element type, its length, then the elements without per-element type tags.
fn write_array<W: Write>(w: &mut W, array: &MetadataArray) -> io::Result<()> {
    w.write_all(&array.element_type().code().to_le_bytes())?;
    w.write_all(&(array.len() as u64).to_le_bytes())?;
    match array {
        MetadataArray::U8(v) => w.write_all(v),
        MetadataArray::I8(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::U16(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::I16(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::U32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::I32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::F32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::Bool(v) => v.iter().try_for_each(|x| w.write_all(&[u8::from(*x)])),
        MetadataArray::String(v) => v.iter().try_for_each(|x| write_string(w, x)),
        MetadataArray::Array(v) => v.iter().try_for_each(|x| write_array(w, x)),
        MetadataArray::U64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::I64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        MetadataArray::F64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
    }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Counts what passes through, so the header can report where the data section starts.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
