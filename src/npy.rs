//! `.npy` headers (NumPy format 1.0, 2.0 when the header is too long for 1.0).

use crate::dtype::DType;

const MAGIC: &[u8] = b"\x93NUMPY";
/// NumPy aligns the data section to 64 bytes so that mmap'd arrays are aligned.
const ALIGN: usize = 64;

/// The bytes that precede the data section of a C-order little-endian `.npy` file.
pub fn header(dtype: DType, shape: &[u64]) -> Vec<u8> {
    let shape_text = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.npy_descr(),
        shape_text
    );
    for (version, len_field) in [(1u8, 2usize), (2u8, 4usize)] {
        let prefix = MAGIC.len() + 2 + len_field;
        // dict + padding spaces + '\n', padded so the data starts on a 64-byte boundary
        let unpadded = prefix + dict.len() + 1;
        let total = unpadded.div_ceil(ALIGN) * ALIGN;
        let header_len = total - prefix;
        if version == 1 && header_len > u16::MAX as usize {
            continue;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    unreachable!("a version 2.0 header holds any shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_2x3_matches_numpy_bytes() {
        // numpy writes HEADER_LEN 118 for this array: total 128 bytes before the data
        let h = header(DType::F32, &[2, 3]);
        assert_eq!(h.len(), 128);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(h.starts_with(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert_eq!(*h.last().unwrap(), b'\n');
    }

    #[test]
    fn scalar_and_vector_shapes() {
        let s = String::from_utf8_lossy(&header(DType::I64, &[])).to_string();
        assert!(s.contains("'shape': ()"));
        let v = String::from_utf8_lossy(&header(DType::Bool, &[7])).to_string();
        assert!(v.contains("'shape': (7,)") && v.contains("'|b1'"));
    }

    #[test]
    fn every_header_is_aligned() {
        for rank in 0..40 {
            let shape: Vec<u64> = (0..rank).map(|i| 10u64.pow((i % 12) as u32)).collect();
            assert_eq!(header(DType::F64, &shape).len() % ALIGN, 0);
        }
    }

    #[test]
    fn huge_rank_uses_version_2() {
        let shape = vec![123_456_789u64; 6000];
        let h = header(DType::F32, &shape);
        assert_eq!(h[6], 2);
        assert_eq!(h.len() % ALIGN, 0);
        let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
        assert_eq!(len + 12, h.len());
    }
}
