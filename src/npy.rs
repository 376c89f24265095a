//! `.npy` headers: written (NumPy format 1.0, 2.0 when the header is too long for 1.0) for every
//! tensor of the tree, and read (versions 1.0 to 3.0, docs/formats/numpy.md#npy-layout) from `.npy` sources.

use crate::dtype::DType;

pub const MAGIC: &[u8] = b"\x93NUMPY";
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

/// What a `.npy` header says about the data after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub descr: Descr,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    /// Where the data section starts (the header's whole length).
    pub data_offset: u64,
}

/// The `descr` of a header: a type string such as `<f4`, or a list (a structured type).
#[derive(Debug, PartialEq, Eq)]
pub enum Descr {
    Simple(String),
    Structured,
}

/// Most dimensions numpy allows (`NPY_MAXDIMS` of numpy 2).
const MAX_RANK: usize = 64;
/// Longest header text read; numpy itself refuses more than 10000 bytes without `allow_pickle`.
pub const MAX_HEADER_TEXT: u64 = 1 << 20;
/// Nesting of tuples and lists inside the header dict (a structured descr nests a little).
const MAX_NESTING: usize = 16;

/// The length of the whole header (where the data starts) from the file's first 12 bytes (or
/// fewer, for a short file).
pub fn header_len(prefix: &[u8]) -> Result<u64, String> {
    let rest = prefix.strip_prefix(MAGIC).ok_or("no .npy magic")?;
    let (fixed, len) = match rest {
        [1, 0, a, b, ..] => (10, u64::from(u16::from_le_bytes([*a, *b]))),
        [2 | 3, 0, a, b, c, d, ..] => (12, u64::from(u32::from_le_bytes([*a, *b, *c, *d]))),
        [major, minor, ..] if prefix.len() >= 12 => return Err(format!("unknown .npy version {major}.{minor}")),
        _ => return Err("truncated .npy header".into()),
    };
    if len > MAX_HEADER_TEXT {
        return Err(format!(".npy header of {len} bytes (wfs reads at most {MAX_HEADER_TEXT})"));
    }
    Ok(fixed + len)
}

/// Parses a whole `.npy` header (`bytes` holds at least `header_len` bytes) by numpy's rules:
/// a Python dict literal with exactly the keys `descr`, `fortran_order` and `shape`.
pub fn parse_header(bytes: &[u8]) -> Result<Parsed, String> {
    let data_offset = header_len(bytes)?;
    let text = bytes.get(if bytes[6] == 1 { 10 } else { 12 }..data_offset as usize).ok_or("truncated .npy header")?;
    let mut parser = Literal::parser(text);
    let dict = match parser.value(0)? {
        Literal::Dict(entries) => entries,
        _ => return Err("the .npy header is not a dict".into()),
    };
    if !parser.at_end() {
        return Err("text after the .npy header dict".into());
    }
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    for (key, value) in dict {
        let slot = match key.as_str() {
            "descr" => descr.replace(value),
            "fortran_order" => fortran_order.replace(value),
            "shape" => shape.replace(value),
            other => return Err(format!("unexpected key {other:?} in the .npy header")),
        };
        if slot.is_some() {
            return Err(format!("key {key:?} twice in the .npy header"));
        }
    }
    let descr = match descr.ok_or("the .npy header has no descr")? {
        Literal::Str(s) => Descr::Simple(s),
        Literal::Seq(..) => Descr::Structured,
        _ => return Err("descr is neither a string nor a list".into()),
    };
    let Some(Literal::Bool(fortran_order)) = fortran_order else {
        return Err("fortran_order is missing or not True/False".into());
    };
    let shape = match shape.ok_or("the .npy header has no shape")? {
        Literal::Seq(items, true) if items.len() <= MAX_RANK => items
            .into_iter()
            .map(|d| match d {
                Literal::Int(n) => Ok(n),
                _ => Err("a dimension is not a non-negative integer".to_string()),
            })
            .collect::<Result<Vec<u64>, String>>()?,
        Literal::Seq(items, true) => return Err(format!("shape of rank {} (numpy allows {MAX_RANK})", items.len())),
        _ => return Err("shape is not a tuple".into()),
    };
    Ok(Parsed { descr, fortran_order, shape, data_offset })
}

/// The element type a simple `descr` names, and whether its bytes are big-endian; `Err` says
/// why wfs cannot expose it.
pub fn dtype_of(descr: &str) -> Result<(DType, bool), String> {
    let unsupported = |what: &str| Err(format!("{what} ({descr}) has no wfs type"));
    let (order, code) = descr.split_at_checked(1).ok_or_else(|| format!("empty descr {descr:?}"))?;
    let big_endian = match order {
        "<" | "|" => false,
        ">" => true,
        _ => return Err(format!("descr {descr:?} has no byte order")),
    };
    let dtype = match (numeric_dtype(code), code) {
        (Some(numeric), _) => numeric,
        (None, "O") => return Err("object array (pickled Python objects, never unpickled)".into()),
        _ => match (code.as_bytes().first(), code.get(1..).and_then(|n| n.parse::<usize>().ok())) {
            (Some(b'S'), Some(n)) if n > 0 => DType::Str(n),
            (Some(b'U'), _) => return unsupported("unicode strings"),
            (Some(b'V'), _) => return unsupported("raw void bytes"),
            (Some(b'M' | b'm'), _) => return unsupported("datetimes"),
            (Some(b'f' | b'c'), _) => return unsupported("extended precision floats"),
            _ => return Err(format!("unknown descr {descr:?}")),
        },
    };
    if order == "|" && dtype.size() > 1 && !matches!(dtype, DType::Str(_)) {
        return Err(format!("descr {descr:?} has no byte order"));
    }
    Ok((dtype, big_endian))
}

/// The Python literals a `.npy` header holds.
#[derive(Debug)]
enum Literal {
    Str(String),
    Bool(bool),
    Int(u64),
    /// A tuple (`true`) or a list.
    Seq(Vec<Literal>, bool),
    Dict(Vec<(String, Literal)>),
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Literal {
    fn parser(text: &[u8]) -> Parser<'_> {
        Parser { text, at: 0 }
    }
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.at == self.text.len()
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn value(&mut self, depth: usize) -> Result<Literal, String> {
        if depth > MAX_NESTING {
            return Err("the .npy header nests too deeply".into());
        }
        match self.peek().ok_or("the .npy header ends early")? {
            b'{' => {
                self.at += 1;
                let mut entries = Vec::new();
                while !self.eat(b'}') {
                    let Literal::Str(key) = self.value(depth + 1)? else { return Err("a header key is not a string".into()) };
                    if !self.eat(b':') {
                        return Err("':' missing in the .npy header".into());
                    }
                    entries.push((key, self.value(depth + 1)?));
                    if !self.eat(b',') && self.peek() != Some(b'}') {
                        return Err("',' missing in the .npy header dict".into());
                    }
                }
                Ok(Literal::Dict(entries))
            }
            open @ (b'(' | b'[') => {
                self.at += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let (mut items, mut comma) = (Vec::new(), false);
                while !self.eat(close) {
                    items.push(self.value(depth + 1)?);
                    comma = self.eat(b',');
                    if !comma && self.peek() != Some(close) {
                        return Err("',' missing in a .npy header sequence".into());
                    }
                }
                // `(x)` is x in parentheses, not a tuple.
                if open == b'(' && items.len() == 1 && !comma {
                    return Ok(items.remove(0));
                }
                Ok(Literal::Seq(items, open == b'('))
            }
            quote @ (b'\'' | b'"') => {
                self.at += 1;
                let len = self.text[self.at..].iter().position(|&b| b == quote || b == b'\\').ok_or("unterminated string in the .npy header")?;
                if self.text[self.at + len] == b'\\' {
                    return Err("escapes in .npy header strings are not supported".into());
                }
                let s = String::from_utf8_lossy(&self.text[self.at..self.at + len]).into_owned();
                self.at += len + 1;
                Ok(Literal::Str(s))
            }
            b'0'..=b'9' => {
                let digits = self.text[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
                let text = std::str::from_utf8(&self.text[self.at..self.at + digits]).unwrap_or_default();
                let n = text.parse::<u64>().map_err(|_| format!("dimension {text} is too large"))?;
                self.at += digits;
                // Python 2 wrote long integers as `3L`.
                if self.text.get(self.at) == Some(&b'L') {
                    self.at += 1;
                }
                Ok(Literal::Int(n))
            }
            _ => {
                for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
                    if self.text[self.at..].starts_with(word) {
                        self.at += word.len();
                        return Ok(Literal::Bool(value));
                    }
                }
                Err(format!("unexpected byte {:?} in the .npy header", char::from(self.text[self.at])))
            }
        }
    }
}

/// The numeric type of a numpy type code without its byte order (`f4`, `c16`, `b1`).
pub fn numeric_dtype(code: &str) -> Option<DType> {
    Some(match code {
        "b1" => DType::Bool,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "c8" => DType::C64,
        "c16" => DType::C128,
        _ => return None,
    })
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

    #[test]
    fn parses_what_numpy_and_older_writers_write() {
        let h = header(DType::F32, &[2, 3]);
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed, Parsed { descr: Descr::Simple("<f4".into()), fortran_order: false, shape: vec![2, 3], data_offset: 128 });
        // Python 2 numpy: long integers, no trailing comma after the last key, double quotes.
        let old = b"\x93NUMPY\x01\x00\x3f\x00{\"descr\": \">i8\", \"fortran_order\": True, \"shape\": (3L, 4L)}    \n";
        let parsed = parse_header(old).unwrap();
        assert_eq!((parsed.descr, parsed.fortran_order, parsed.shape), (Descr::Simple(">i8".into()), true, vec![3, 4]));
        // Version 3 (UTF-8 header), a structured descr, a scalar.
        let v3 = b"\x93NUMPY\x03\x00\x3f\x00\x00\x00{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': ()}\n";
        let parsed = parse_header(v3).unwrap();
        assert_eq!((parsed.descr, parsed.shape, parsed.data_offset), (Descr::Structured, vec![], 75));
    }

    #[test]
    fn refuses_what_numpy_refuses() {
        let dict = |text: &str| {
            let mut h = b"\x93NUMPY\x01\x00".to_vec();
            h.extend_from_slice(&((text.len() + 1) as u16).to_le_bytes());
            h.extend_from_slice(text.as_bytes());
            h.push(b'\n');
            parse_header(&h)
        };
        assert!(dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}").is_ok());
        assert!(dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2)}").unwrap_err().contains("not a tuple"));
        assert!(dict("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}").is_err());
        assert!(dict("{'descr': '<f4', 'shape': (2,)}").is_err());
        assert!(dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}").is_err());
        assert!(dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x").is_err());
        assert!(dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1, -2)}").is_err());
        let deep = format!("{{'descr': {}, 'fortran_order': False, 'shape': ()}}", "(".repeat(100));
        assert!(dict(&deep).unwrap_err().contains("nests"));
        let rank = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({})}}", "1,".repeat(65));
        assert!(dict(&rank).unwrap_err().contains("rank 65"));
    }

    #[test]
    fn descr_to_dtype() {
        assert_eq!(dtype_of("<f4"), Ok((DType::F32, false)));
        assert_eq!(dtype_of(">c16"), Ok((DType::C128, true)));
        assert_eq!(dtype_of("|b1"), Ok((DType::Bool, false)));
        assert_eq!(dtype_of("|S7"), Ok((DType::Str(7), false)));
        assert!(dtype_of("|f4").is_err() && dtype_of("|O").unwrap_err().contains("pickled"));
        assert!(dtype_of("<U3").is_err() && dtype_of("<M8[ns]").is_err() && dtype_of("|V2").is_err() && dtype_of("").is_err());
        assert!(dtype_of("|S0").is_err() && dtype_of("<f16").is_err() && dtype_of("=f4").is_err());
    }
}
