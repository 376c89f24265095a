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
}

impl DType {
    /// Bytes per element in `.raw`.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
            DType::Str(n) => n,
        }
    }

    /// Bytes per element in `.npy` (bfloat16 widens to float32).
    pub fn npy_size(self) -> usize {
        match self {
            DType::BF16 => 4,
            other => other.size(),
        }
    }

    /// Size of the unit that byte order applies to (complex swaps each half).
    pub fn swap_unit(self) -> usize {
        match self {
            DType::C64 => 4,
            DType::C128 => 8,
            DType::Str(_) | DType::Bool => 1,
            other => other.size(),
        }
    }

    /// What `.dtype` says.
    pub fn name(self) -> String {
        match self {
            DType::Bool => "bool".into(),
            DType::I8 => "int8".into(),
            DType::U8 => "uint8".into(),
            DType::I16 => "int16".into(),
            DType::U16 => "uint16".into(),
            DType::I32 => "int32".into(),
            DType::U32 => "uint32".into(),
            DType::I64 => "int64".into(),
            DType::U64 => "uint64".into(),
            DType::F16 => "float16".into(),
            DType::BF16 => "bfloat16".into(),
            DType::F32 => "float32".into(),
            DType::F64 => "float64".into(),
            DType::C64 => "complex64".into(),
            DType::C128 => "complex128".into(),
            DType::Str(_) => "string".into(),
        }
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
            DType::BF16 | DType::F32 => "<f4".into(),
            DType::F64 => "<f8".into(),
            DType::C64 => "<c8".into(),
            DType::C128 => "<c16".into(),
            DType::Str(n) => format!("|S{n}"),
        }
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
            _ => return None,
        })
    }
}
