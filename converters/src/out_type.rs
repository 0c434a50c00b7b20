//! The storage types a user can ask for.

use std::fmt;
use std::str::FromStr;

use crate::error::ConvertError;
use crate::quant::Encoding;

/// The type of a converted model's weights, named as llama.cpp's tools name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4KM,
    Q5KM,
    Q6K,
}

impl OutType {
    pub const ALL: [OutType; 11] = [
        OutType::F32,
        OutType::F16,
        OutType::Bf16,
        OutType::Q8_0,
        OutType::Q4_0,
        OutType::Q4_1,
        OutType::Q5_0,
        OutType::Q5_1,
        OutType::Q4KM,
        OutType::Q5KM,
        OutType::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4_1 => "q4_1",
            OutType::Q5_0 => "q5_0",
            OutType::Q5_1 => "q5_1",
            OutType::Q4KM => "q4_k_m",
            OutType::Q5KM => "q5_k_m",
            OutType::Q6K => "q6_k",
        }
    }

    /// Whether this crate writes the type itself. The others need llama.cpp's quantizer (k-quants pick types
    /// per tensor and use importance heuristics that are llama.cpp's to define).
    pub fn is_native(self) -> bool {
        self.encoding().is_some()
    }

    /// llama.cpp's `enum llama_ftype`, which is also GGUF's `general.file_type`.
    pub fn llama_ftype(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q4_1 => 3,
            OutType::Q8_0 => 7,
            OutType::Q5_0 => 8,
            OutType::Q5_1 => 9,
            OutType::Q4KM => 15,
            OutType::Q5KM => 17,
            OutType::Q6K => 18,
            OutType::Bf16 => 32,
        }
    }

    /// The encoding of 2-D weights, for the native types.
    pub(crate) fn encoding(self) -> Option<Encoding> {
        match self {
            OutType::F32 => Some(Encoding::F32),
            OutType::F16 => Some(Encoding::F16),
            OutType::Bf16 => Some(Encoding::Bf16),
            OutType::Q8_0 => Some(Encoding::Q8_0),
            _ => None,
        }
    }
}

impl fmt::Display for OutType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutType {
    type Err = ConvertError;

    /// Accepts the names in any case (`Q4_K_M` as well as `q4_k_m`).
    fn from_str(s: &str) -> Result<OutType, ConvertError> {
        OutType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            ConvertError::UnknownOutType { name: s.to_owned(), valid: OutType::ALL.map(OutType::name).join(", ") }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for t in OutType::ALL {
            assert_eq!(t.name().parse::<OutType>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!("Q4_K_M".parse::<OutType>().unwrap(), OutType::Q4KM);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let message = "q3_xs".parse::<OutType>().unwrap_err().to_string();
        assert_eq!(
            message,
            "unknown out type `q3_xs` (valid: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k)"
        );
    }

    #[test]
    fn native_types_and_ftypes() {
        let native: Vec<_> = OutType::ALL.into_iter().filter(|t| t.is_native()).collect();
        assert_eq!(native, [OutType::F32, OutType::F16, OutType::Bf16, OutType::Q8_0]);
        assert_eq!(OutType::Q8_0.llama_ftype(), 7);
        assert_eq!(OutType::Bf16.llama_ftype(), 32);
    }
}
