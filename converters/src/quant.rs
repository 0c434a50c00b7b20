//! Encoding weights into the GGUF storage types this crate writes itself: F32, F16, BF16 and Q8_0. Each encoder
//! reproduces gguf-py bit for bit (which for Q8_0 is ggml's `quantize_row_q8_0_ref`), so our files equal
//! those of llama.cpp's converter. Source values are first widened to f32, which is exact for F16 and BF16.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::checkpoint::SourceDtype;
use crate::gguf::GgmlType;

/// Values per Q8_0 block.
pub(crate) const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 signed bytes.
pub(crate) const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// The storage types written by this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl Encoding {
    pub(crate) fn ggml_type(self) -> GgmlType {
        match self {
            Encoding::F32 => GgmlType::F32,
            Encoding::F16 => GgmlType::F16,
            Encoding::Bf16 => GgmlType::Bf16,
            Encoding::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// How many source elements `convert` should get at a time: whole blocks for Q8_0.
    pub(crate) fn elements_per_unit(self) -> usize {
        match self {
            Encoding::Q8_0 => Q8_0_BLOCK,
            _ => 1,
        }
    }
}

/// Converts tensor data chunk by chunk into reusable buffers, so the hot loop allocates nothing and hands the
/// writer one large slice per chunk.
#[derive(Default)]
pub(crate) struct ChunkConverter {
    values: Vec<f32>,
    halves: Vec<f16>,
    bytes: Vec<u8>,
}

impl ChunkConverter {
    /// Encodes `source` (little-endian values of `from`) as `to`. For Q8_0 the chunk must hold whole blocks.
    /// Returns `source` itself when the encoding does not change the bytes.
    pub(crate) fn convert<'a>(&'a mut self, source: &'a [u8], from: SourceDtype, to: Encoding) -> &'a [u8] {
        match (from, to) {
            // Widening and narrowing back is the identity for these, bit for bit.
            (SourceDtype::F32, Encoding::F32) | (SourceDtype::F16, Encoding::F16) => return source,
            _ => {}
        }
        self.widen(source, from);
        let values = &self.values;
        let bytes = &mut self.bytes;
        match to {
            Encoding::F32 => {
                bytes.resize(values.len() * 4, 0);
                for (dst, v) in bytes.chunks_exact_mut(4).zip(values) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
            Encoding::F16 => {
                // half's slice conversion uses the F16C instructions where the CPU has them; both it and the
                // scalar fallback round to nearest even, as numpy's astype(float16) does.
                self.halves.resize(values.len(), f16::ZERO);
                self.halves.convert_from_f32_slice(values);
                bytes.resize(values.len() * 2, 0);
                for (dst, h) in bytes.chunks_exact_mut(2).zip(&self.halves) {
                    dst.copy_from_slice(&h.to_le_bytes());
                }
            }
            Encoding::Bf16 => {
                bytes.resize(values.len() * 2, 0);
                for (dst, &v) in bytes.chunks_exact_mut(2).zip(values) {
                    dst.copy_from_slice(&bf16_bits(v).to_le_bytes());
                }
            }
            Encoding::Q8_0 => {
                debug_assert_eq!(values.len() % Q8_0_BLOCK, 0, "Q8_0 chunks hold whole blocks");
                bytes.resize(values.len() / Q8_0_BLOCK * Q8_0_BLOCK_BYTES, 0);
                for (dst, block) in bytes.chunks_exact_mut(Q8_0_BLOCK_BYTES).zip(values.chunks_exact(Q8_0_BLOCK)) {
                    quantize_q8_0_block(block, dst);
                }
            }
        }
        &self.bytes
    }

    /// Widens little-endian source values to f32 (exact for every source type).
    fn widen(&mut self, source: &[u8], from: SourceDtype) {
        self.values.clear();
        match from {
            SourceDtype::F32 => {
                self.values.extend(source.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            SourceDtype::F16 => {
                self.halves.clear();
                self.halves.extend(source.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])));
                self.values.resize(self.halves.len(), 0.0);
                self.halves.convert_to_f32_slice(&mut self.values);
            }
            SourceDtype::Bf16 => self.values.extend(
                source.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
            ),
        }
    }
}

/// f32 → bf16 exactly as gguf-py: NaNs are made quiet (keeping sign and the upper payload), everything else is
/// rounded to nearest even on the upper 16 bits. The sum is done in 64 bits and truncated to 16 like numpy's
/// uint64 arithmetic followed by astype(uint16).
pub(crate) fn bf16_bits(value: f32) -> u16 {
    let mut n = value.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// One Q8_0 block as ggml's `quantize_row_q8_0_ref`: scale d = max|x| / 127 (stored as f16), q = round(x / d)
/// with halves rounded away from zero (C's `roundf`); an all-zero block gets d = 0 and q = 0.
pub(crate) fn quantize_q8_0_block(block: &[f32], out: &mut [u8]) {
    let amax = block.iter().fold(0.0f32, |max, &x| max.max(x.abs()));
    let d = amax / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &x) in out[2..].iter_mut().zip(block) {
        // |x * inverse| <= 127 up to rounding, so the saturating cast never clips a real value.
        *q = ((x * inverse).round() as i8) as u8;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn q8_0(block: &[f32; 32]) -> (u16, Vec<i8>) {
        let mut out = [0u8; Q8_0_BLOCK_BYTES];
        quantize_q8_0_block(block, &mut out);
        (u16::from_le_bytes([out[0], out[1]]), out[2..].iter().map(|&b| b as i8).collect())
    }

    #[test]
    fn q8_0_all_zero_block_has_zero_scale_and_values() {
        let (d, q) = q8_0(&[0.0; 32]);
        assert_eq!(d, 0);
        assert!(q.iter().all(|&v| v == 0));
    }

    #[test]
    fn q8_0_matches_hand_computed_values() {
        // amax = 127 gives d = 1 (f16 0x3c00) and q = x rounded, halves away from zero.
        let mut block = [0.0f32; 32];
        block[0] = 127.0;
        block[1] = -127.0;
        block[2] = 2.5; // -> 3 (away from zero; round-half-even would give 2)
        block[3] = -2.5; // -> -3
        block[4] = 0.49; // -> 0
        block[5] = 1.5; // -> 2
        block[6] = -0.5; // -> -1
        block[7] = 100.4; // -> 100
        let (d, q) = q8_0(&block);
        assert_eq!(d, 0x3c00);
        assert_eq!(&q[..8], &[127, -127, 3, -3, 0, 2, -1, 100]);
        assert!(q[8..].iter().all(|&v| v == 0));
    }

    #[test]
    fn q8_0_scale_is_rounded_to_f16_but_values_use_the_f32_scale() {
        // amax = 1: d = 1/127 in f32; the stored scale is its f16 rounding (0x2008), and the values are computed
        // with the f32 inverse, so x = 0.5 gives round(63.5) = 64.
        let mut block = [0.0f32; 32];
        block[0] = 1.0;
        block[1] = 0.5;
        block[2] = -0.25;
        let (d, q) = q8_0(&block);
        assert_eq!(d, f16::from_f32(1.0 / 127.0).to_bits());
        assert_eq!(d, 0x2008);
        assert_eq!(&q[..3], &[127, 64, -32]);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nans() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1 + 3·2^-8 is halfway too; the even neighbour is above.
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN becomes quiet
        assert_eq!(bf16_bits(f32::from_bits(0xffc1_2345)), 0xffc1);
    }

    #[test]
    fn conversions_between_all_source_and_target_types() {
        let values = [1.0f32, -2.5, 0.1, 65504.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut converter = ChunkConverter::default();

        let f16_bytes = converter.convert(&f32_bytes, SourceDtype::F32, Encoding::F16).to_vec();
        let expected: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(f16_bytes, expected);

        // F16 → F32 is the exact widening.
        let widened = converter.convert(&f16_bytes, SourceDtype::F16, Encoding::F32).to_vec();
        let expected: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_f32().to_le_bytes()).collect();
        assert_eq!(widened, expected);

        // BF16 → BF16 keeps the bytes; BF16 → F32 appends zero bits.
        let bf16_bytes = converter.convert(&f32_bytes, SourceDtype::F32, Encoding::Bf16).to_vec();
        assert_eq!(converter.convert(&bf16_bytes, SourceDtype::Bf16, Encoding::Bf16), &bf16_bytes[..]);
        let bf16_as_f32 = converter.convert(&bf16_bytes, SourceDtype::Bf16, Encoding::F32).to_vec();
        for (wide, narrow) in bf16_as_f32.chunks_exact(4).zip(bf16_bytes.chunks_exact(2)) {
            assert_eq!(&wide[..2], &[0, 0]);
            assert_eq!(&wide[2..], narrow);
        }

        // Identity conversions hand back the source.
        assert_eq!(converter.convert(&f32_bytes, SourceDtype::F32, Encoding::F32), &f32_bytes[..]);
    }

    #[test]
    fn q8_0_chunks_are_whole_blocks() {
        let values: Vec<f32> = (0..64).map(|i| i as f32 - 32.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut converter = ChunkConverter::default();
        let out = converter.convert(&bytes, SourceDtype::F32, Encoding::Q8_0);
        assert_eq!(out.len(), 2 * Q8_0_BLOCK_BYTES);
        // Block 0 holds -32..-1: amax 32, so -32 maps to -127.
        assert_eq!(out[2] as i8, -127);
    }
}
