//! Element types shared by every format, with their numpy spellings.

/// Element type of a tensor as wfs exposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F16,
    BF16,
    F32,
    F64,
    C64,
    C128,
    /// Fixed-width byte strings of the given width (numpy `|S<n>`).
    Str(usize),
    /// 8-bit floats (docs/formats/safetensors.md#element-encodings-of-the-8-bit-and-sub-byte-floats): `.npy` widens them to float32.
    F8E4M3FN,
    F8E5M2,
    F8E4M3FNUZ,
    F8E5M2FNUZ,
    F8E8M0FNU,
    /// 4-bit floats packed two to a byte, element 2i in the low nibble (ONNX, PyTorch, OCP MX).
    F4E2M1FN,
    /// 6-bit floats packed four to three bytes, least significant bit first (ONNX).
    F6E2M3FN,
    F6E3M2FN,
    /// Quantized blocks (GGUF): `elems` values stored in `bytes` bytes, decoded by the reader
    /// that made the tensor (`Tensor::decoded`); `name` is what `.dtype` says.
    Block { name: &'static str, elems: u32, bytes: u32 },
}

impl DType {
    /// Bytes per element in `.raw` for the whole-byte types; for packed and block types, the
    /// bytes of one block (see `block`).
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
            DType::Str(n) => n,
            DType::F8E4M3FN | DType::F8E5M2 | DType::F8E4M3FNUZ | DType::F8E5M2FNUZ | DType::F8E8M0FNU => 1,
            DType::F4E2M1FN => 1,
            DType::F6E2M3FN | DType::F6E3M2FN => 3,
            DType::Block { bytes, .. } => bytes as usize,
        }
    }

    /// (elements, bytes) of the smallest unit that holds whole elements: (1, size) for every
    /// whole-byte type, (2, 1) for float4, (4, 3) for float6, a quantized block's own size.
    pub fn block(self) -> (u64, u64) {
        match self {
            DType::F4E2M1FN => (2, 1),
            DType::F6E2M3FN | DType::F6E3M2FN => (4, 3),
            DType::Block { elems, bytes, .. } => (u64::from(elems), u64::from(bytes)),
            other => (1, other.size() as u64),
        }
    }

    /// Bytes of `.raw` for `elements` values, or `None` if they overflow or fill no whole
    /// number of blocks.
    pub fn raw_len(self, elements: u64) -> Option<u64> {
        let (per_block, bytes) = self.block();
        if per_block == 0 || !elements.is_multiple_of(per_block) {
            return None;
        }
        (elements / per_block).checked_mul(bytes)
    }

    /// `true` for the types whose `.npy` holds float32 values made from other stored bits.
    pub fn widens(self) -> bool {
        matches!(
            self,
            DType::BF16
                | DType::F8E4M3FN
                | DType::F8E5M2
                | DType::F8E4M3FNUZ
                | DType::F8E5M2FNUZ
                | DType::F8E8M0FNU
                | DType::F4E2M1FN
                | DType::F6E2M3FN
                | DType::F6E3M2FN
                | DType::Block { .. }
        )
    }

    /// Bytes per element in `.npy` (widened types hold float32).
    pub fn npy_size(self) -> usize {
        if self.widens() { 4 } else { self.size() }
    }

    /// Size of the unit that byte order applies to (complex swaps each half).
    pub fn swap_unit(self) -> usize {
        match self {
            DType::C64 => 4,
            DType::C128 => 8,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
            _ => 1,
        }
    }

    /// What `.dtype` says.
    pub fn name(self) -> String {
        match self {
            DType::Bool => "bool",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::I64 => "int64",
            DType::U64 => "uint64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::C64 => "complex64",
            DType::C128 => "complex128",
            DType::Str(_) => "string",
            DType::F8E4M3FN => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
            DType::F8E4M3FNUZ => "float8_e4m3fnuz",
            DType::F8E5M2FNUZ => "float8_e5m2fnuz",
            DType::F8E8M0FNU => "float8_e8m0fnu",
            DType::F4E2M1FN => "float4_e2m1fn",
            DType::F6E2M3FN => "float6_e2m3fn",
            DType::F6E3M2FN => "float6_e3m2fn",
            DType::Block { name, .. } => name,
        }
        .to_string()
    }

    /// numpy `descr` of the `.npy` data.
    pub fn npy_descr(self) -> String {
        match self {
            DType::Bool => "|b1".into(),
            DType::I8 => "|i1".into(),
            DType::U8 => "|u1".into(),
            DType::I16 => "<i2".into(),
            DType::U16 => "<u2".into(),
            DType::I32 => "<i4".into(),
            DType::U32 => "<u4".into(),
            DType::I64 => "<i8".into(),
            DType::U64 => "<u8".into(),
            DType::F16 => "<f2".into(),
            DType::F64 => "<f8".into(),
            DType::C64 => "<c8".into(),
            DType::C128 => "<c16".into(),
            DType::Str(n) => format!("|S{n}"),
            _ => "<f4".into(),
        }
    }

    /// The safetensors dtype string, where safetensors has the type.
    pub fn safetensors_name(self) -> Option<&'static str> {
        Some(match self {
            DType::Bool => "BOOL",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::C64 => "C64",
            DType::F8E4M3FN => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3FNUZ => "F8_E4M3FNUZ",
            DType::F8E5M2FNUZ => "F8_E5M2FNUZ",
            DType::F8E8M0FNU => "F8_E8M0",
            DType::F4E2M1FN => "F4",
            DType::F6E2M3FN => "F6_E2M3",
            DType::F6E3M2FN => "F6_E3M2",
            DType::C128 | DType::Str(_) | DType::Block { .. } => return None,
        })
    }

    /// The type a safetensors dtype string names.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        [
            DType::Bool,
            DType::I8,
            DType::U8,
            DType::I16,
            DType::U16,
            DType::I32,
            DType::U32,
            DType::I64,
            DType::U64,
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
            DType::C64,
            DType::F8E4M3FN,
            DType::F8E5M2,
            DType::F8E4M3FNUZ,
            DType::F8E5M2FNUZ,
            DType::F8E8M0FNU,
            DType::F4E2M1FN,
            DType::F6E2M3FN,
            DType::F6E3M2FN,
        ]
        .into_iter()
        .find(|d| d.safetensors_name() == Some(name))
    }

    /// The type numpy (with ml_dtypes) names so (`arr.dtype.name`: `float32`, `bfloat16`,
    /// `float8_e4m3fn`), as Flax, zarr v3 and TensorStore write it; one element per byte.
    pub fn from_numpy_name(name: &str) -> Option<DType> {
        use DType::*;
        [Bool, I8, U8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, C64, C128, F8E4M3FN, F8E5M2, F8E4M3FNUZ, F8E5M2FNUZ, F8E8M0FNU]
            .into_iter()
            .find(|d| d.name() == name)
    }

    /// The TensorFlow `DataType` enum value, for formats that use it.
    pub fn from_tf(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::F64,
            3 => DType::I32,
            4 => DType::U8,
            5 => DType::I16,
            6 => DType::I8,
            8 => DType::C64,
            9 => DType::I64,
            10 => DType::Bool,
            14 => DType::BF16,
            17 => DType::U16,
            18 => DType::C128,
            19 => DType::F16,
            22 => DType::U32,
            23 => DType::U64,
            24 => DType::F8E5M2,
            25 => DType::F8E4M3FN,
            26 => DType::F8E4M3FNUZ,
            28 => DType::F8E5M2FNUZ,
            _ => return None,
        })
    }

    /// Widens whole blocks of stored bits (`raw`, a multiple of `block().1` bytes) into float32
    /// values (`out`, `block().0` values per block). Only for the types `widens()` names, except
    /// `Block`, which its reader decodes.
    pub fn widen(self, raw: &[u8], out: &mut [f32]) {
        match self {
            DType::BF16 => {
                for (o, h) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([h[0], h[1]])) << 16);
                }
            }
            DType::F4E2M1FN => {
                for (pair, &b) in out.chunks_mut(2).zip(raw) {
                    for (o, code) in pair.iter_mut().zip([b & 0x0F, b >> 4]) {
                        *o = small_float(u32::from(code), 2, 1, 1);
                    }
                }
            }
            DType::F6E2M3FN | DType::F6E3M2FN => {
                let (e, m, bias) = if self == DType::F6E2M3FN { (2, 3, 1) } else { (3, 2, 3) };
                for (four, three) in out.chunks_mut(4).zip(raw.chunks_exact(3)) {
                    let bits = u32::from(three[0]) | u32::from(three[1]) << 8 | u32::from(three[2]) << 16;
                    for (i, o) in four.iter_mut().enumerate() {
                        *o = small_float((bits >> (6 * i)) & 0x3F, e, m, bias);
                    }
                }
            }
            _ => {
                for (o, &b) in out.iter_mut().zip(raw) {
                    *o = float8(self, b);
                }
            }
        }
    }
}

/// One 8-bit float (docs/formats/safetensors.md#element-encodings-of-the-8-bit-and-sub-byte-floats), specials first.
fn float8(dtype: DType, b: u8) -> f32 {
    match dtype {
        DType::F8E4M3FN if b & 0x7F == 0x7F => f32::NAN,
        DType::F8E4M3FN => small_float(u32::from(b), 4, 3, 7),
        DType::F8E5M2 => {
            // IEEE-like: float16's top byte.
            let half = u16::from(b) << 8;
            f16_to_f32(half)
        }
        DType::F8E4M3FNUZ | DType::F8E5M2FNUZ if b == 0x80 => f32::NAN,
        DType::F8E4M3FNUZ => small_float(u32::from(b), 4, 3, 8),
        DType::F8E5M2FNUZ => small_float(u32::from(b), 5, 2, 16),
        DType::F8E8M0FNU if b == 0xFF => f32::NAN,
        DType::F8E8M0FNU => f32::from_bits(if b == 0 { 0x0040_0000 } else { u32::from(b) << 23 }),
        _ => f32::NAN,
    }
}

/// A sign-exponent-mantissa code with `e` exponent and `m` mantissa bits, no specials.
fn small_float(code: u32, e: u32, m: u32, bias: i32) -> f32 {
    let sign = if code >> (e + m) & 1 == 1 { -1.0f32 } else { 1.0 };
    let exp = (code >> m) & ((1 << e) - 1);
    let mant = (code & ((1 << m) - 1)) as f32;
    let scale = (1u32 << m) as f32;
    let value = if exp == 0 {
        mant / scale * 2f32.powi(1 - bias)
    } else {
        (1.0 + mant / scale) * 2f32.powi(exp as i32 - bias)
    };
    sign * value
}

/// IEEE half precision to single, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1F);
    let mant = u32::from(h & 0x3FF);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let shift = mant.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | ((mant << (shift + 13)) & 0x7F_FFFF)
        }
        (0x1F, 0) => sign | 0x7F80_0000,
        (0x1F, _) => sign | 0x7FC0_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(dtype: DType, raw: &[u8]) -> Vec<f32> {
        let (per, bytes) = dtype.block();
        let mut out = vec![0f32; raw.len() / bytes as usize * per as usize];
        dtype.widen(raw, &mut out);
        out
    }

    /// docs/formats/safetensors.md#element-encodings-of-the-8-bit-and-sub-byte-floats's example bytes for [1, -2, 0.5], written by torch.
    #[test]
    fn float8_examples_from_torch() {
        assert_eq!(widen(DType::F8E4M3FN, &[0x38, 0xc0, 0x30]), [1.0, -2.0, 0.5]);
        assert_eq!(widen(DType::F8E5M2, &[0x3c, 0xc0, 0x38]), [1.0, -2.0, 0.5]);
        assert_eq!(widen(DType::F8E4M3FNUZ, &[0x40, 0xc8, 0x38]), [1.0, -2.0, 0.5]);
        assert_eq!(widen(DType::F8E5M2FNUZ, &[0x40, 0xc4, 0x3c]), [1.0, -2.0, 0.5]);
        assert_eq!(widen(DType::F8E8M0FNU, &[0x7f, 0x80, 0x7e]), [1.0, 2.0, 0.5]);
    }

    #[test]
    fn float8_limits_and_specials() {
        assert_eq!(widen(DType::F8E4M3FN, &[0x7E, 0x01]), [448.0, 2f32.powi(-9)]);
        assert!(widen(DType::F8E4M3FN, &[0x7F])[0].is_nan() && widen(DType::F8E4M3FN, &[0xFF])[0].is_nan());
        assert_eq!(widen(DType::F8E5M2, &[0x7B, 0x7C, 0x01]), [57344.0, f32::INFINITY, 2f32.powi(-16)]);
        assert_eq!(widen(DType::F8E4M3FNUZ, &[0x7F, 0x01]), [240.0, 2f32.powi(-10)]);
        assert!(widen(DType::F8E5M2FNUZ, &[0x80])[0].is_nan());
        assert_eq!(widen(DType::F8E8M0FNU, &[0x00])[0], 2f32.powi(-127));
    }

    #[test]
    fn sub_byte_floats() {
        // float4 codes 0-7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6; low nibble first.
        assert_eq!(widen(DType::F4E2M1FN, &[0x21, 0xF7]), [0.5, 1.0, 6.0, -6.0]);
        // float6 e2m3: 7.5 is 0b011111, 0.125 is 0b000001; e3m2: 28 is 0b011111.
        let packed = |codes: [u32; 4]| {
            let bits = codes.iter().enumerate().fold(0u32, |acc, (i, c)| acc | c << (6 * i));
            [bits as u8, (bits >> 8) as u8, (bits >> 16) as u8]
        };
        assert_eq!(widen(DType::F6E2M3FN, &packed([0x1F, 0x01, 0x20 | 0x08, 0])), [7.5, 0.125, -1.0, 0.0]);
        assert_eq!(widen(DType::F6E3M2FN, &packed([0x1F, 0x01, 0x0C, 0])), [28.0, 0.0625, 1.0, 0.0]);
    }

    #[test]
    fn f16_every_code_matches_the_formula() {
        for h in 0u16..=u16::MAX {
            let v = f16_to_f32(h);
            let (exp, mant) = ((h >> 10) & 0x1F, h & 0x3FF);
            if exp == 0x1F {
                assert_eq!(v.is_nan(), mant != 0);
                continue;
            }
            let expected = small_float(u32::from(h), 5, 10, 15);
            assert_eq!(v.to_bits(), expected.to_bits(), "{h:#06x}");
        }
    }

    #[test]
    fn safetensors_names_round_trip() {
        for name in ["BOOL", "F8_E4M3", "F4", "BF16", "C64", "U64"] {
            assert_eq!(DType::from_safetensors(name).and_then(DType::safetensors_name), Some(name));
        }
        assert_eq!(DType::from_safetensors("Q4"), None);
    }
}
