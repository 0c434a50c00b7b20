//! Reading GGUF files through a memory map. Every length and offset is checked against the file before use, and
//! the checks are those llama.cpp's `gguf_init_from_file` makes, so a file that opens here also opens there
//! (llama.cpp turns some of these problems into a `GGML_ASSERT` that kills the process instead of an error).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::types::{GgmlType, MetadataArray, MetadataValue, TensorInfo, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// llama.cpp's `GGML_MAX_NAME`: a tensor name must be shorter.
const MAX_NAME: usize = 64;
/// Arrays of arrays deeper than this are refused instead of recursing without bound on a hostile file.
const MAX_ARRAY_NESTING: usize = 8;

/// A GGUF file that cannot be read, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub reason: String,
}

/// An opened GGUF: header parsed, tensor data reachable through the map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Opens and parses a GGUF (version 2 or 3, little-endian).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let error = |reason: String| GgufError { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|e| error(format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only and private. If another process truncates the file while we read it,
        // accesses past the new end fault (SIGBUS); that is the accepted hazard of reading files through mmap,
        // and the GGUFs read here are ones this program or llama.cpp wrote.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| error(format!("cannot map: {e}")))?;
        let header = parse(&map).map_err(error)?;
        let key_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: header.version,
            metadata: header.metadata,
            key_index,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment: `general.alignment`, or 32 when the key is absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Every metadata key with its value, in file order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &MetadataValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A string value; `None` if the key is absent or not a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An unsigned integer value that fits a u32; `None` if absent or of another type.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor of this file (bounds were checked on open). An info that does not come from
    /// this file and points outside it gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset.saturating_add(info.offset);
        let end = start.saturating_add(info.n_bytes);
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(start), Ok(end)) => self.map.get(start..end).unwrap_or(&[]),
            _ => &[],
        }
    }
}

struct ParsedHeader {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

fn parse(bytes: &[u8]) -> Result<ParsedHeader, String> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let magic = cursor.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"));
    }
    let version = cursor.u32("version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err("big-endian GGUF files are not supported".to_owned());
    }
    if version != 2 && version != 3 {
        return Err(format!("unsupported GGUF version {version} (expected 2 or 3)"));
    }
    let tensor_count = cursor.u64("tensor count")?;
    let kv_count = cursor.u64("metadata count")?;

    // Each key-value pair takes at least 12 bytes and each tensor info at least 24, so counts that cannot fit
    // in the file are refused before anything is allocated for them.
    let mut metadata = Vec::with_capacity(cursor.capacity_for(kv_count, 12, "metadata count")?);
    let mut key_index: HashMap<String, usize> = HashMap::new();
    for i in 0..kv_count {
        let key = cursor.string(&format!("key of metadata entry {i}"))?;
        let type_code = cursor.u32(&format!("type of `{key}`"))?;
        let value_type =
            ValueType::from_code(type_code).ok_or_else(|| format!("key `{key}` has unknown value type {type_code}"))?;
        let value = cursor.value(value_type, &key, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(MetadataValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(other) => return Err(format!("`{ALIGNMENT_KEY}` must be a power of two (u32), not {other:?}")),
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(cursor.capacity_for(tensor_count, 24, "tensor count")?);
    let mut names: HashSet<String> = HashSet::new();
    let mut expected_offset = 0u64;
    for i in 0..tensor_count {
        let name = cursor.string(&format!("name of tensor {i}"))?;
        if name.len() >= MAX_NAME {
            return Err(format!("tensor name `{name}` is longer than {} bytes", MAX_NAME - 1));
        }
        if !names.insert(name.clone()) {
            return Err(format!("duplicate tensor `{name}`"));
        }
        let n_dims = cursor.u32(&format!("dimension count of `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = cursor.u64(&format!("shape of `{name}`"))?;
            if d > i64::MAX as u64 {
                return Err(format!("tensor `{name}` has a negative dimension"));
            }
            dims.push(d);
        }
        let type_code = cursor.u32(&format!("type of `{name}`"))?;
        let ggml_type = GgmlType::from_code(type_code)
            .ok_or_else(|| format!("tensor `{name}` has unknown ggml type {type_code}"))?;
        let offset = cursor.u64(&format!("offset of `{name}`"))?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("tensor `{name}` has too many elements ({dims:?})"))?;
        if dims.first().is_some_and(|&row| row % ggml_type.block_size() != 0) {
            return Err(format!(
                "tensor `{name}`: row length {} is not a multiple of the {ggml_type} block size {}",
                dims[0],
                ggml_type.block_size()
            ));
        }
        let n_bytes = ggml_type.bytes_for(elements).ok_or_else(|| format!("tensor `{name}` is too large"))?;
        // llama.cpp requires the data to be laid out in info order, each tensor padded to the alignment.
        if offset != expected_offset {
            return Err(format!("tensor `{name}` has offset {offset}, expected {expected_offset}"));
        }
        expected_offset = offset
            .checked_add(n_bytes)
            .and_then(|end| end.checked_add(super::padding(end, alignment)))
            .ok_or_else(|| format!("tensor `{name}` is too large"))?;
        tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
    }

    let header_end = cursor.pos as u64;
    let data_offset = header_end + super::padding(header_end, alignment);
    let file_len = bytes.len() as u64;
    for tensor in &tensors {
        let end = data_offset + tensor.offset + tensor.n_bytes;
        if end > file_len {
            return Err(format!(
                "truncated: tensor `{}` ends at byte {end} but the file has {file_len} bytes",
                tensor.name
            ));
        }
    }
    Ok(ParsedHeader { version, metadata, tensors, alignment, data_offset })
}

/// A bounds-checked reading position in the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let slice = self.pos.checked_add(n).and_then(|end| self.bytes.get(self.pos..end)).ok_or_else(|| {
            format!("truncated: {what} at byte {} needs {n} bytes but the file has {}", self.pos, self.bytes.len())
        })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// `count` as a capacity, refused when `count` items of at least `min_size` bytes cannot fit in the rest of
    /// the file (which also keeps a corrupt count from allocating gigabytes).
    fn capacity_for(&self, count: u64, min_size: usize, what: &str) -> Result<usize, String> {
        match usize::try_from(count) {
            Ok(n) if n.checked_mul(min_size).is_some_and(|total| total <= self.remaining()) => Ok(n),
            _ => Err(format!("truncated or corrupt: {what} {count} at byte {} does not fit in the file", self.pos)),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| format!("truncated: {what} at byte {} claims {len} bytes", self.pos))?;
        let bytes = self.take(len, what)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                // llama.cpp does not require UTF-8 here; keep the file usable and say so.
                tracing::warn!(what, "GGUF string is not valid UTF-8; invalid bytes replaced");
                String::from_utf8_lossy(bytes).into_owned()
            }
        })
    }

    fn value(&mut self, value_type: ValueType, key: &str, depth: usize) -> Result<MetadataValue, String> {
        Ok(match value_type {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(key)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(key)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(key)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(key)?),
            ValueType::String => MetadataValue::String(self.string(key)?),
            ValueType::Array => MetadataValue::Array(self.metadata_array(key, depth)?),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(key)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(key)?)),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.take(1, key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("`{key}`: invalid boolean byte {other}")),
        }
    }

    fn metadata_array(&mut self, key: &str, depth: usize) -> Result<MetadataArray, String> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(format!("`{key}`: arrays nested deeper than {MAX_ARRAY_NESTING}"));
        }
        let type_code = self.u32(key)?;
        let element_type = ValueType::from_code(type_code)
            .ok_or_else(|| format!("`{key}`: unknown array element type {type_code}"))?;
        let count = self.u64(key)?;
        // A string takes at least its 8-byte length, an inner array 12 bytes of header.
        let min_size = element_type.fixed_size().unwrap_or(if element_type == ValueType::String { 8 } else { 12 });
        let n = self.capacity_for(count, min_size, &format!("length of array `{key}`"))?;
        macro_rules! fixed {
            ($variant:ident, $ty:ty) => {{
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(<$ty>::from_le_bytes(self.array(key)?));
                }
                MetadataArray::$variant(items)
            }};
        }
        Ok(match element_type {
            ValueType::U8 => MetadataArray::U8(self.take(n, key)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => MetadataArray::Bool((0..n).map(|_| self.bool(key)).collect::<Result<_, _>>()?),
            ValueType::String => MetadataArray::String((0..n).map(|_| self.string(key)).collect::<Result<_, _>>()?),
            ValueType::Array => {
                MetadataArray::Array((0..n).map(|_| self.metadata_array(key, depth + 1)).collect::<Result<_, _>>()?)
            }
        })
    }
}
