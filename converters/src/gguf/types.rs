//! The value and tensor types of GGUF, with their on-disk codes and sizes.

use std::fmt;

/// A ggml tensor type, with the numeric codes of `enum ggml_type` (which is what GGUF stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    Bf16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
}

impl GgmlType {
    /// Every type the reader can size, i.e. every type llama.cpp writes into model files.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::Iq2Xxs,
        GgmlType::Iq2Xs,
        GgmlType::Iq3Xxs,
        GgmlType::Iq1S,
        GgmlType::Iq4Nl,
        GgmlType::Iq3S,
        GgmlType::Iq2S,
        GgmlType::Iq4Xs,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::Iq1M,
        GgmlType::Bf16,
        GgmlType::Tq1_0,
        GgmlType::Tq2_0,
        GgmlType::Mxfp4,
    ];

    /// The `ggml_type` code stored in a tensor info.
    pub fn code(self) -> u32 {
        self.traits().0
    }

    /// The type with this code; `None` for codes that are unassigned or removed (4, 5: the old Q4_2/Q4_3).
    pub fn from_code(code: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// ggml's name for the type (`"Q4_K"`), as gguf-py and llama.cpp print it.
    pub fn name(self) -> &'static str {
        self.traits().1
    }

    /// Elements per block: rows (`ne[0]`) must be a multiple of it.
    pub fn block_size(self) -> u64 {
        self.traits().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.traits().3
    }

    /// Bytes of a tensor of `elements` elements, or `None` when the count is not a whole number of blocks.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        if elements % self.block_size() != 0 {
            return None;
        }
        (elements / self.block_size()).checked_mul(self.type_size())
    }

    /// (code, name, block size, block bytes), from ggml's `type_traits` table.
    fn traits(self) -> (u32, &'static str, u64, u64) {
        const QK: u64 = 256; // QK_K, the super-block of the k-quants
        match self {
            GgmlType::F32 => (0, "F32", 1, 4),
            GgmlType::F16 => (1, "F16", 1, 2),
            GgmlType::Q4_0 => (2, "Q4_0", 32, 2 + 16),
            GgmlType::Q4_1 => (3, "Q4_1", 32, 2 + 2 + 16),
            GgmlType::Q5_0 => (6, "Q5_0", 32, 2 + 4 + 16),
            GgmlType::Q5_1 => (7, "Q5_1", 32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (8, "Q8_0", 32, 2 + 32),
            GgmlType::Q8_1 => (9, "Q8_1", 32, 2 + 2 + 32),
            GgmlType::Q2K => (10, "Q2_K", QK, 2 + 2 + QK / 16 + QK / 4),
            GgmlType::Q3K => (11, "Q3_K", QK, 2 + QK / 4 + QK / 8 + 12),
            GgmlType::Q4K => (12, "Q4_K", QK, 2 + 2 + QK / 2 + 12),
            GgmlType::Q5K => (13, "Q5_K", QK, 2 + 2 + QK / 2 + QK / 8 + 12),
            GgmlType::Q6K => (14, "Q6_K", QK, 2 + QK / 2 + QK / 4 + QK / 16),
            GgmlType::Q8K => (15, "Q8_K", QK, 4 + QK + QK / 8),
            GgmlType::Iq2Xxs => (16, "IQ2_XXS", QK, 2 + QK / 4),
            GgmlType::Iq2Xs => (17, "IQ2_XS", QK, 2 + QK / 4 + QK / 32),
            GgmlType::Iq3Xxs => (18, "IQ3_XXS", QK, 2 + QK / 4 + QK / 8),
            GgmlType::Iq1S => (19, "IQ1_S", QK, 2 + QK / 8 + QK / 16),
            GgmlType::Iq4Nl => (20, "IQ4_NL", 32, 2 + 16),
            GgmlType::Iq3S => (21, "IQ3_S", QK, 2 + QK / 4 + QK / 8 + QK / 32 + 4),
            GgmlType::Iq2S => (22, "IQ2_S", QK, 2 + QK / 4 + QK / 16),
            GgmlType::Iq4Xs => (23, "IQ4_XS", QK, 2 + 2 + QK / 2 + QK / 64),
            GgmlType::I8 => (24, "I8", 1, 1),
            GgmlType::I16 => (25, "I16", 1, 2),
            GgmlType::I32 => (26, "I32", 1, 4),
            GgmlType::I64 => (27, "I64", 1, 8),
            GgmlType::F64 => (28, "F64", 1, 8),
            GgmlType::Iq1M => (29, "IQ1_M", QK, QK / 8 + QK / 16 + QK / 32),
            GgmlType::Bf16 => (30, "BF16", 1, 2),
            GgmlType::Tq1_0 => (34, "TQ1_0", QK, 2 + 4 * 13),
            GgmlType::Tq2_0 => (35, "TQ2_0", QK, 2 + 64),
            GgmlType::Mxfp4 => (39, "MXFP4", 32, 1 + 16),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type tag of a metadata value (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The code written before each value.
    pub fn code(self) -> u32 {
        // The declaration order is the code order.
        self as u32
    }

    pub fn from_code(code: u32) -> Option<ValueType> {
        ValueType::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// gguf-py's name (`"UINT32"`), used in metadata dumps.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub(crate) fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetadataArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array. The element type is part of the file even for an empty array, so arrays are
/// typed vectors rather than lists of values.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Arrays of arrays: each inner array has its own element type.
    Array(Vec<MetadataArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetadataValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// gguf-py's type name: `UINT32`, or `ARRAY[STRING]` for arrays.
    pub fn type_name(&self) -> String {
        match self {
            MetadataValue::Array(array) => format!("ARRAY[{}]", array.element_type()),
            other => other.value_type().name().to_owned(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, whatever its integer width (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetadataArray {
    pub fn element_type(&self) -> ValueType {
        match self {
            MetadataArray::U8(_) => ValueType::U8,
            MetadataArray::I8(_) => ValueType::I8,
            MetadataArray::U16(_) => ValueType::U16,
            MetadataArray::I16(_) => ValueType::I16,
            MetadataArray::U32(_) => ValueType::U32,
            MetadataArray::I32(_) => ValueType::I32,
            MetadataArray::F32(_) => ValueType::F32,
            MetadataArray::Bool(_) => ValueType::Bool,
            MetadataArray::String(_) => ValueType::String,
            MetadataArray::Array(_) => ValueType::Array,
            MetadataArray::U64(_) => ValueType::U64,
            MetadataArray::I64(_) => ValueType::I64,
            MetadataArray::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            MetadataArray::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            MetadataArray::I32(v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor lives in a GGUF and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// The shape in ggml order (`ne`): `dims[0]` is the contiguous dimension, the reverse of PyTorch's order.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (without the alignment padding that follows it).
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_code(t.code()), Some(t));
        }
        assert_eq!(GgmlType::from_code(4), None);
        for v in ValueType::ALL {
            assert_eq!(ValueType::from_code(v.code()), Some(v));
        }
        assert_eq!(ValueType::from_code(13), None);
        // The codes of `enum gguf_type`.
        let codes: Vec<u32> = [ValueType::U32, ValueType::F32, ValueType::Bool, ValueType::String, ValueType::Array]
            .iter()
            .map(|v| v.code())
            .collect();
        assert_eq!(codes, [4, 6, 7, 8, 9]);
        assert_eq!((ValueType::U64.code(), ValueType::F64.code()), (10, 12));
        assert_eq!((GgmlType::Bf16.code(), GgmlType::Q8_0.code(), GgmlType::Q6K.code()), (30, 8, 14));
    }

    #[test]
    fn block_sizes_match_ggml() {
        // Spot checks against ggml's `type_traits` (block struct sizes).
        assert_eq!((GgmlType::Q8_0.block_size(), GgmlType::Q8_0.type_size()), (32, 34));
        assert_eq!((GgmlType::Q4K.block_size(), GgmlType::Q4K.type_size()), (256, 144));
        assert_eq!(GgmlType::Q5K.type_size(), 176);
        assert_eq!(GgmlType::Q6K.type_size(), 210);
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(48), None);
        assert_eq!(GgmlType::Q4K.to_string(), "Q4_K");
    }
}
