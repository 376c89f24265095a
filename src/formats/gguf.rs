//! GGUF files (llama.cpp; docs/formats/gguf.md#header-metadata-and-tensor-infos, docs/formats/gguf.md): metadata into `metadata.json` (every array
//! also as `metadata/<key>.txt`), tensors under `tensors/` by their own names. Plain types are
//! served in place; quantized blocks are decoded on read, a run of blocks at a time, into the
//! shared chunk cache.

use super::ggml_tensors::{TensorInfo, tensor};
use super::options::ReadOptions;
use crate::error::OpenError;
use crate::model::Model;
use crate::source::Blob;
use serde_json::{Map, Value, json};

pub const MAGIC: &[u8; 4] = b"GGUF";

/// ggml's limit on tensor dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Metadata values (array elements included) a file may hold: real vocabularies hold about a
/// million; the cap bounds the memory a hostile file can make the mount spend.
const MAX_VALUES: u64 = 1 << 22;
/// Deepest nesting of arrays inside arrays.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Longest tensor name accepted (ggml itself allows 63 bytes).
const MAX_NAME: u64 = 1 << 16;
/// `general.*` arrays up to this many elements are repeated in info.json.
const INFO_ARRAY_MAX: usize = 64;
/// How much of the header is read from the source at a time.
const READ_AHEAD: u64 = 64 << 10;

/// Metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// A metadata value as stored.
enum Meta {
    Int(i128),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(Vec<u8>),
    Array(Vec<Meta>),
}

/// Sequential reads over the header, through a read-ahead buffer, in the file's byte order.
struct Cursor<'a> {
    blob: &'a Blob,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
    big_endian: bool,
    /// GGUF v1: lengths, counts and dimensions are u32.
    v1: bool,
    /// Metadata values read so far.
    values: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.blob.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&[u8], OpenError> {
        if n > self.remaining() {
            return Err(OpenError::corrupt(format!("{}: {n} bytes at offset {} run past the end of the file", what(), self.pos)));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            let len = n.max(READ_AHEAD).min(self.remaining());
            self.buf = self.blob.read_vec(self.pos, len).map_err(|e| OpenError::unreadable(e.to_string()))?;
            self.buf_start = self.pos;
        }
        let start = (self.pos - self.buf_start) as usize;
        self.pos += n;
        Ok(&self.buf[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], OpenError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N as u64, what)?);
        if self.big_endian {
            out.reverse();
        }
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, OpenError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, OpenError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length, count or dimension: u64, or u32 in GGUF v1.
    fn size(&mut self, what: &dyn Fn() -> String) -> Result<u64, OpenError> {
        if self.v1 { self.u32(what).map(u64::from) } else { self.u64(what) }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>, OpenError> {
        let len = self.size(what)?;
        Ok(self.bytes(len, what)?.to_vec())
    }

    /// Checks that `count` items of at least `min_size` bytes each can be in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<(), OpenError> {
        if count.checked_mul(min_size).is_none_or(|bytes| bytes > self.remaining()) {
            return Err(OpenError::corrupt(format!("{}: {count} entries cannot fit in the {} bytes left in the file", what(), self.remaining())));
        }
        Ok(())
    }

    fn value(&mut self, kind: u32, depth: u32, what: &dyn Fn() -> String) -> Result<Meta, OpenError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(OpenError::corrupt(format!("{}: the metadata holds more than {MAX_VALUES} values", what())));
        }
        Ok(match kind {
            T_U8 => Meta::Int(self.array::<1>(what)?[0].into()),
            T_I8 => Meta::Int((self.array::<1>(what)?[0] as i8).into()),
            T_U16 => Meta::Int(u16::from_le_bytes(self.array(what)?).into()),
            T_I16 => Meta::Int(i16::from_le_bytes(self.array(what)?).into()),
            T_U32 => Meta::Int(u32::from_le_bytes(self.array(what)?).into()),
            T_I32 => Meta::Int(i32::from_le_bytes(self.array(what)?).into()),
            T_U64 => Meta::Int(u64::from_le_bytes(self.array(what)?).into()),
            T_I64 => Meta::Int(i64::from_le_bytes(self.array(what)?).into()),
            T_F32 => Meta::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => Meta::F64(f64::from_le_bytes(self.array(what)?)),
            T_BOOL => Meta::Bool(self.array::<1>(what)?[0] != 0),
            T_STRING => Meta::Str(self.string(what)?),
            T_ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(OpenError::corrupt(format!("{}: arrays nested more than {MAX_ARRAY_DEPTH} deep", what())));
                }
                let elem = self.u32(what)?;
                let count = self.size(what)?;
                self.check_count(count, min_value_size(elem, self.v1), what)?;
                let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                Meta::Array(items)
            }
            other => return Err(OpenError::corrupt(format!("{}: unknown value type {other}", what()))),
        })
    }
}

/// The fewest bytes a value of type `kind` takes (a failed type check is left to `value`).
fn min_value_size(kind: u32, v1: bool) -> u64 {
    let size_field = if v1 { 4 } else { 8 };
    match kind {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => size_field,
        T_ARRAY => 4 + size_field,
        _ => 1,
    }
}

/// The value as JSON: numbers as numbers, strings as text (invalid UTF-8 replaced), and the
/// floats JSON cannot hold as the strings "NaN", "Infinity", "-Infinity".
fn to_json(value: &Meta) -> Value {
    match value {
        Meta::Int(i) => i64::try_from(*i).map(Value::from).unwrap_or_else(|_| Value::from(*i as u64)),
        Meta::F32(f) => float_json(f64::from(*f)),
        Meta::F64(f) => float_json(*f),
        Meta::Bool(b) => json!(b),
        Meta::Str(s) => json!(String::from_utf8_lossy(s)),
        Meta::Array(items) => Value::Array(items.iter().map(to_json).collect()),
    }
}

fn float_json(f: f64) -> Value {
    match f {
        f if f.is_finite() => json!(f),
        f if f.is_nan() => json!("NaN"),
        f => json!(if f > 0.0 { "Infinity" } else { "-Infinity" }),
    }
}

/// One line of a `metadata/<key>.txt` file: strings with `\`, newline and carriage return
/// escaped as `\\`, `\n`, `\r` (so that line i is entry i); numbers in their shortest exact
/// form; nested arrays as JSON.
fn line(value: &Meta, out: &mut Vec<u8>) {
    match value {
        Meta::Str(s) => {
            for &b in s {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
        Meta::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Meta::F32(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
        Meta::F64(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
        Meta::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Meta::Array(_) => out.extend_from_slice(to_json(value).to_string().as_bytes()),
    }
    out.push(b'\n');
}

/// Reads a GGUF file.
pub fn read(blob: &Blob, options: &ReadOptions) -> Result<Model, OpenError> {
    let mut cur = Cursor { blob, pos: 0, buf: Vec::new(), buf_start: 0, big_endian: false, v1: false, values: 0 };
    let header = || "header".to_string();
    if cur.bytes(4, &header)? != MAGIC {
        return Err(OpenError::UnknownFormat("not a GGUF file".into()));
    }
    let mut version = cur.u32(&header)?;
    // A big-endian file's version read as little-endian has its low half zero (ggml's check).
    if version & 0xFFFF == 0 {
        cur.big_endian = true;
        version = version.swap_bytes();
    }
    if !(1..=3).contains(&version) {
        return Err(OpenError::corrupt(format!("GGUF version {version} is not one wfs knows (1 to 3)")));
    }
    cur.v1 = version == 1;
    let tensor_count = cur.size(&header)?;
    let kv_count = cur.size(&header)?;
    let size_field = if cur.v1 { 4 } else { 8 };
    cur.check_count(kv_count, size_field + 4 + 1, &|| "metadata count".into())?;

    let mut metadata = Vec::new();
    for i in 0..kv_count {
        let key = cur.string(&|| format!("metadata key {i}"))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let what = || format!("metadata key '{key}'");
        let kind = cur.u32(&what)?;
        let value = cur.value(kind, 0, &what)?;
        metadata.push((key, kind, value));
    }
    let alignment = match metadata.iter().find(|(k, _, _)| k == "general.alignment") {
        None => 32,
        Some((_, T_U32, Meta::Int(a))) if *a > 0 && (*a as u64).is_power_of_two() => *a as u64,
        Some((_, _, value)) => {
            return Err(OpenError::corrupt(format!("general.alignment is {}, not a u32 power of two", to_json(value))));
        }
    };

    cur.check_count(tensor_count, size_field + 4 + 4 + 8, &|| "tensor count".into())?;
    let mut infos = Vec::new();
    for i in 0..tensor_count {
        let what = || format!("tensor {i}");
        let name_len = cur.size(&what)?;
        if name_len > MAX_NAME {
            return Err(OpenError::corrupt(format!("tensor {i}: name of {name_len} bytes")));
        }
        let name = String::from_utf8_lossy(cur.bytes(name_len, &what)?).into_owned();
        let what = || format!("tensor '{name}'");
        let n_dims = cur.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(OpenError::corrupt(format!("tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})")));
        }
        let dims = (0..n_dims).map(|_| cur.size(&what)).collect::<Result<Vec<u64>, _>>()?;
        let kind = cur.u32(&what)?;
        let offset = cur.u64(&what)?;
        infos.push(TensorInfo { name, dims, kind, offset });
    }
    let data_start = cur.pos.div_ceil(alignment).saturating_mul(alignment);

    let mut model = Model::default();
    let mut not_decoded = Vec::new();
    let mut starts: Vec<u64> = infos.iter().map(|t| data_start.saturating_add(t.offset)).collect();
    starts.sort_unstable();
    for info in &infos {
        let (tensor, reason) = tensor(blob, info, data_start, &starts, cur.big_endian, options)?;
        if let Some(reason) = reason {
            not_decoded.push(json!({"name": info.name, "type": info.kind, "reason": reason}));
        }
        model.tensors.push(tensor);
    }

    model.info.insert("gguf_version".into(), json!(version));
    model.info.insert("byte_order".into(), json!(if cur.big_endian { "big-endian" } else { "little-endian" }));
    model.info.insert("alignment".into(), json!(alignment));
    model.info.insert("tensor_data_offset".into(), json!(data_start));
    model.info.insert("metadata_keys".into(), json!(metadata.len()));
    let mut all = Map::new();
    for (key, _, value) in &metadata {
        let json = to_json(value);
        let short = !matches!(value, Meta::Array(items) if items.len() > INFO_ARRAY_MAX);
        if key.starts_with("general.") && short {
            model.info.insert(key.clone(), json.clone());
        }
        all.insert(key.clone(), json);
    }
    if !not_decoded.is_empty() {
        model.info.insert("not_decoded".into(), Value::Array(not_decoded));
    }
    model.add_json(vec!["metadata.json".into()], &Value::Object(all));
    for (key, _, value) in metadata {
        if let Meta::Array(items) = value {
            let mut text = Vec::new();
            for item in &items {
                line(item, &mut text);
            }
            model.add_file(vec!["metadata".into(), format!("{key}.txt")], text);
        }
    }
    Ok(model)
}
