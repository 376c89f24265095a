//! Stored element types whose `.npy` holds float32 values (docs/tree.md 7.2): sub-byte integers
//! (OpenVINO u4, i4, nf4, u2, u1; Core ML's 1- to 7-bit codes), affine-quantized integers and
//! float16 as TensorFlow.js dequantizes them. `.raw` keeps the stored
//! bytes; the values are decoded per read range, from the stored bytes that range covers.

use crate::dtype::{DType, f16_to_f32};
use crate::error::ReadError;
use crate::model::{Tensor, TensorBytes};
use std::sync::Arc;

/// The NF4 code book (16 quantiles of N(0, 1) scaled to [-1, 1]) as OpenVINO's `nf4` type and
/// bitsandbytes decode it.
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// How stored elements become float32 values.
#[derive(Clone, Copy, Debug)]
pub enum Decoding {
    /// Integer codes of 1 to 7 bits packed back to back into a stream of bits.
    Packed { bits: u8, order: BitOrder, values: PackedValues },
    /// `q * scale + min` of stored `u8` (`bytes` 1) or little-endian `u16` (`bytes` 2), computed
    /// in float64 and rounded to float32 (JavaScript numbers stored into a `Float32Array`);
    /// `round` rounds to an integer first as JavaScript's `Math.round` does (an `int32` weight).
    Affine { bytes: u8, scale: f64, min: f64, round: bool },
    /// Little-endian IEEE half floats.
    F16,
}

/// How the bit stream fills a byte: from its least or its most significant bit. A code's first
/// bit in the stream is its least significant bit in the first order, its most in the second.
#[derive(Clone, Copy, Debug)]
pub enum BitOrder {
    LowFirst,
    HighFirst,
}

/// What a packed code means.
#[derive(Clone, Copy, Debug)]
pub enum PackedValues {
    Unsigned,
    /// Two's complement in the code's width.
    Signed,
    /// An index into the NF4 code book.
    Nf4,
}

impl Decoding {
    /// (elements, bytes) of the smallest run of whole stored elements.
    fn unit(self) -> (u64, u64) {
        match self {
            Decoding::Packed { bits, .. } => {
                let common = gcd(u64::from(bits), 8);
                (8 / common, u64::from(bits) / common)
            }
            Decoding::Affine { bytes, .. } => (1, u64::from(bytes)),
            Decoding::F16 => (1, 2),
        }
    }

    fn decode(self, stored: &[u8], out: &mut Vec<f32>) {
        match self {
            Decoding::Packed { bits, order, values } => {
                let bit = |i: usize| match order {
                    BitOrder::LowFirst => (stored[i / 8] >> (i % 8)) & 1,
                    BitOrder::HighFirst => (stored[i / 8] >> (7 - i % 8)) & 1,
                };
                let bits = usize::from(bits);
                for first in (0..stored.len() * 8 / bits).map(|e| e * bits) {
                    let code = (0..bits).fold(0u8, |code, k| match order {
                        BitOrder::LowFirst => code | bit(first + k) << k,
                        BitOrder::HighFirst => code << 1 | bit(first + k),
                    });
                    out.push(match values {
                        PackedValues::Unsigned => f32::from(code),
                        PackedValues::Signed => f32::from(((code << (8 - bits)) as i8) >> (8 - bits)),
                        PackedValues::Nf4 => NF4[usize::from(code)],
                    });
                }
            }
            Decoding::Affine { bytes, scale, min, round } => {
                for q in stored.chunks_exact(usize::from(bytes)) {
                    let q = if bytes == 1 { f64::from(q[0]) } else { f64::from(u16::from_le_bytes([q[0], q[1]])) };
                    let value = q * scale + min;
                    out.push(if round { (value + 0.5).floor() as f32 } else { value as f32 });
                }
            }
            Decoding::F16 => out.extend(stored.chunks_exact(2).map(|h| f16_to_f32(u16::from_le_bytes([h[0], h[1]])))),
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Bytes that `elements` stored elements take (packed codes: up to the byte the last one ends
/// in), `None` on overflow.
pub fn stored_len(decoding: Decoding, elements: u64) -> Option<u64> {
    let (elems, bytes) = decoding.unit();
    Some(elements.checked_mul(bytes)?.div_ceil(elems))
}

/// A tensor whose `.raw` is `raw` and whose `.npy` is its values decoded to float32, with
/// `.dtype` saying `stored` (the stored type's name). `None` when `raw` is not the size the
/// elements of `shape` take.
pub fn tensor(name: &str, stored: &'static str, shape: Vec<u64>, raw: Arc<dyn TensorBytes>, decoding: Decoding) -> Option<Tensor> {
    let (elems, bytes) = decoding.unit();
    let dtype = DType::Block { name: stored, elems: elems as u32, bytes: bytes as u32 };
    let elements = Tensor::element_count(&shape)?;
    if stored_len(decoding, elements) != Some(raw.len()) {
        return None;
    }
    let mut tensor = Tensor::named(name, dtype, shape, raw.clone());
    tensor.decoded = Some(Arc::new(Widened { raw, decoding, elements }));
    Some(tensor)
}

/// The float32 values of stored elements, decoded per read.
struct Widened {
    raw: Arc<dyn TensorBytes>,
    decoding: Decoding,
    elements: u64,
}

impl TensorBytes for Widened {
    fn len(&self) -> u64 {
        self.elements * 4
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let (elems, bytes) = self.decoding.unit();
        let first_unit = offset / 4 / elems;
        let end_unit = (offset + buf.len() as u64).div_ceil(4).div_ceil(elems);
        // The last unit may end inside the stored bytes' last byte, or past them.
        let end = (end_unit * bytes).min(self.raw.len());
        let mut stored = vec![0u8; (end - first_unit * bytes) as usize];
        self.raw.read_at(first_unit * bytes, &mut stored)?;
        let mut values = Vec::with_capacity(stored.len() / bytes as usize * elems as usize);
        self.decoding.decode(&stored, &mut values);
        let skip = (offset - first_unit * elems * 4) as usize;
        let decoded: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buf.copy_from_slice(&decoded[skip..skip + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoding: Decoding, stored: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        decoding.decode(stored, &mut out);
        out
    }

    /// The bit orders openvino's CPU plugin gives (tests/fixtures/openvino/consts.xml).
    #[test]
    fn packed_codes_follow_openvino() {
        let u4 = Decoding::Packed { bits: 4, order: BitOrder::LowFirst, values: PackedValues::Unsigned };
        assert_eq!(decode(u4, &[0x06, 0xa8]), [6.0, 0.0, 8.0, 10.0]);
        let i4 = Decoding::Packed { bits: 4, order: BitOrder::LowFirst, values: PackedValues::Signed };
        assert_eq!(decode(i4, &[0xa0, 0x81]), [0.0, -6.0, 1.0, -8.0]);
        let u1 = Decoding::Packed { bits: 1, order: BitOrder::HighFirst, values: PackedValues::Unsigned };
        assert_eq!(decode(u1, &[0xcf]), [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let u2 = Decoding::Packed { bits: 2, order: BitOrder::LowFirst, values: PackedValues::Unsigned };
        assert_eq!(decode(u2, &[0xba]), [2.0, 2.0, 3.0, 2.0]);
    }

    /// Core ML's NeuralNetwork codes: a most-significant-bit-first stream, across bytes.
    #[test]
    fn three_bit_codes_cross_bytes() {
        let u3 = Decoding::Packed { bits: 3, order: BitOrder::HighFirst, values: PackedValues::Unsigned };
        assert_eq!(u3.unit(), (8, 3));
        // 101 011 00|1 000 111 0|10 110 001
        assert_eq!(decode(u3, &[0b1010_1100, 0b1000_1110, 0b1011_0001]), [5.0, 3.0, 1.0, 0.0, 7.0, 2.0, 6.0, 1.0]);
        assert_eq!(stored_len(u3, 3), Some(2));
    }

    #[test]
    fn affine_values_are_rounded_from_float64() {
        let affine = Decoding::Affine { bytes: 2, scale: 0.1, min: -1.0, round: false };
        assert_eq!(decode(affine, &[3, 0, 0, 1]), [(3.0f64 * 0.1 - 1.0) as f32, (256.0f64 * 0.1 - 1.0) as f32]);
    }
}
