//! ONNX models (docs/formats/onnx.md#messages): initializers as tensors under `tensors/`, by their own names;
//! the graph's inputs, outputs and ops in `graph.json`; IR version, producer, opsets and
//! metadata in `info.json`.
//!
//! The protobuf is walked in place (`Walker`) rather than decoded: a model may be 2 GiB, and
//! `raw_data` is served by `pread` from where it lies in the file, like external data. Values in
//! the typed fields (`float_data`, `int32_data`, ...) are decoded at mount, within a budget,
//! except a single packed run of `float_data` or `double_data`, whose bytes already are the
//! tensor's and are served in place too. Sparse initializers are densified on read. Small leaf
//! messages (value infos, opsets, key/value pairs) are decoded with prost.

use super::paged::Paged;
use super::wire::{Field, Walker, Wire, decode_varint};
use crate::error::io_reason;
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::{Blob, Dir, SourceFile};
use prost::Message;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::Arc;

/// Bytes of tensor data decoded at mount (typed fields, strings, sparse indices), all tensors
/// together.
const MAX_DECODED: u64 = 512 << 20;
/// Bytes of names and small messages read for `graph.json` and `info.json`, all together.
const MAX_TEXT: u64 = 256 << 20;
/// Largest single name or small message (a value info, an opset entry).
const MAX_SMALL: u64 = 1 << 20;
/// Most initializers (dense and sparse) and most ops in a model.
const MAX_ITEMS: usize = 1 << 20;
/// Deepest nesting of graphs inside node attributes (`If`, `Loop`, `Scan` bodies).
const MAX_GRAPH_DEPTH: usize = 16;
/// Packed values are decoded from chunks of this size.
const CHUNK: u64 = 64 << 10;

/// `true` if the bytes look like a serialized `ModelProto`: it starts with `ir_version` (field
/// 1, as every writer puts it first) and the next top-level fields are well formed ModelProto
/// fields, up to the graph or to where a truncated file ends.
pub fn sniff(blob: &Blob) -> bool {
    let mut src = Paged::new(blob);
    let len = src.len();
    // No end: a field that runs past the end of a cut file still counts.
    let mut walker = Walker { at: 0, end: u64::MAX };
    for i in 0..64 {
        if walker.at >= len {
            return i > 0;
        }
        let Ok(Some(field)) = walker.next(&mut src) else { return false };
        let expected = match field.number() {
            1 | 5 => Wire::Varint,
            2 | 3 | 4 | 6 | 7 | 8 | 14 | 20 | 25 | 26 => Wire::Bytes,
            _ => return false,
        };
        if field.wire() != expected || (i == 0 && (field.number() != 1 || !(1..=100).contains(&field.varint()))) {
            return false;
        }
        if field.number() == 7 || walker.at > len {
            return true;
        }
    }
    true
}

/// An ONNX model; `dir` is the model's directory, where external data files must lie (`None`
/// for a model read from standard input, which can then have none).
pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    let mut reader = Reader {
        src: Paged::new(blob),
        dir: dir.cloned(),
        external: HashMap::new(),
        decoded_budget: MAX_DECODED,
        text_budget: MAX_TEXT,
        model: Model::default(),
        items: 0,
    };
    let mut info = Map::new();
    let mut opsets = Map::new();
    let mut props = Map::new();
    let mut graph_json = None;
    let mut walker = Walker { at: 0, end: reader.src.len() };
    while let Some(field) = walker.next(&mut reader.src).map_err(corrupt)? {
        match (field.number(), field.wire()) {
            (1, Wire::Varint) => {
                info.insert("ir_version".into(), json!(field.varint() as i64));
            }
            (2, Wire::Bytes) => {
                info.insert("producer_name".into(), json!(reader.text(&field)?));
            }
            (3, Wire::Bytes) => {
                info.insert("producer_version".into(), json!(reader.text(&field)?));
            }
            (4, Wire::Bytes) => {
                info.insert("domain".into(), json!(reader.text(&field)?));
            }
            (5, Wire::Varint) => {
                info.insert("model_version".into(), json!(field.varint() as i64));
            }
            (6, Wire::Bytes) => {
                info.insert("doc_string".into(), json!(reader.text(&field)?));
            }
            (7, Wire::Bytes) => {
                let (at, len) = field.span();
                graph_json = Some(reader.graph(at, len, 0)?);
            }
            (8, Wire::Bytes) => {
                let opset: OperatorSetIdProto = reader.small(&field)?;
                let domain = if opset.domain.is_empty() { "ai.onnx".to_string() } else { opset.domain };
                opsets.insert(domain, json!(opset.version));
            }
            (14, Wire::Bytes) => {
                let entry: StringStringEntryProto = reader.small(&field)?;
                props.insert(entry.key, json!(entry.value));
            }
            _ => {}
        }
    }
    let graph = graph_json.ok_or_else(|| OpenError::corrupt("ONNX model has no graph"))?;
    for key in ["ir_version", "producer_name", "producer_version", "domain", "model_version"] {
        let value = info.remove(key).unwrap_or(if key.ends_with("version") && key != "producer_version" { json!(0) } else { json!("") });
        reader.model.info.insert(key.into(), value);
    }
    reader.model.info.extend(info);
    reader.model.info.insert("opset_import".into(), Value::Object(opsets));
    reader.model.info.insert("metadata_props".into(), Value::Object(props));
    reader.model.info.insert("graph_name".into(), graph["name"].clone());
    if !reader.external.is_empty() {
        let mut files: Vec<&String> = reader.external.keys().collect();
        files.sort();
        reader.model.info.insert("external_data".into(), json!(files));
    }
    reader.model.add_json(vec!["graph.json".into()], &graph);
    Ok(reader.model)
}

fn corrupt(why: String) -> OpenError {
    OpenError::Corrupt(format!("ONNX model is damaged: {why}"))
}

fn read_error(e: ReadError) -> String {
    e.to_string()
}

/// A repeated scalar field as it lies in the file: packed runs and single unpacked values, in
/// wire order (parsers concatenate them).
#[derive(Default)]
struct Repeated {
    pieces: Vec<Piece>,
}

enum Piece {
    Packed { at: u64, len: u64 },
    One(u64),
}

/// What an initializer's `TensorProto` says, with where its data lies.
#[derive(Default)]
struct TensorRecord {
    name: String,
    dims: Vec<i64>,
    data_type: i32,
    segmented: bool,
    raw: Option<(u64, u64)>,
    float_data: Repeated,
    int32_data: Repeated,
    int64_data: Repeated,
    double_data: Repeated,
    uint64_data: Repeated,
    string_data: Vec<(u64, u64)>,
    external: Vec<(String, String)>,
    external_location: bool,
}

/// A tensor's dtype, shape and `.raw` bytes.
type Resolved = (DType, Vec<u64>, Arc<dyn TensorBytes>);

struct Reader {
    src: Paged,
    dir: Option<Dir>,
    /// External data files opened so far, by their `location`.
    external: HashMap<String, Blob>,
    decoded_budget: u64,
    text_budget: u64,
    model: Model,
    /// Initializers and ops seen so far (see `MAX_ITEMS`).
    items: usize,
}

impl Reader {
    /// Bytes of a small length-delimited field, counted against the text budget.
    fn small_bytes(&mut self, field: &Field) -> Result<Vec<u8>, OpenError> {
        let (at, len) = field.span();
        if len > MAX_SMALL || len > self.text_budget {
            return Err(corrupt(format!("field {} of {len} bytes is larger than wfs reads", field.number())));
        }
        self.text_budget -= len;
        self.src.read(at, len).map_err(|e| corrupt(e.to_string()))
    }

    fn text(&mut self, field: &Field) -> Result<String, OpenError> {
        Ok(String::from_utf8_lossy(&self.small_bytes(field)?).into_owned())
    }

    fn small<M: Message + Default>(&mut self, field: &Field) -> Result<M, OpenError> {
        let bytes = self.small_bytes(field)?;
        M::decode(bytes.as_slice()).map_err(|e| corrupt(format!("field {}: {e}", field.number())))
    }

    fn count_item(&mut self) -> Result<(), OpenError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(corrupt(format!("more than {MAX_ITEMS} initializers and ops")));
        }
        Ok(())
    }

    /// A `GraphProto`: its initializers become tensors; returns its `graph.json` (the main
    /// graph's is the file; a nested graph's only lends its initializers).
    fn graph(&mut self, at: u64, len: u64, depth: usize) -> Result<Value, OpenError> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(corrupt(format!("graphs nested more than {MAX_GRAPH_DEPTH} deep")));
        }
        let mut name = String::new();
        let (mut inputs, mut outputs, mut ops) = (Vec::new(), Vec::new(), Vec::new());
        let mut walker = Walker::over(at, len);
        while let Some(field) = walker.next(&mut self.src).map_err(corrupt)? {
            if field.wire() != Wire::Bytes {
                continue;
            }
            let (at, len) = field.span();
            match field.number() {
                1 => {
                    self.count_item()?;
                    ops.push(self.node(at, len, depth)?);
                }
                2 => name = self.text(&field)?,
                5 => {
                    self.count_item()?;
                    let record = self.tensor_record(at, len)?;
                    self.add_dense(record)?;
                }
                11 => inputs.push(value_info_json(self.small(&field)?)),
                12 => outputs.push(value_info_json(self.small(&field)?)),
                15 => {
                    self.count_item()?;
                    self.add_sparse(at, len)?;
                }
                _ => {}
            }
        }
        Ok(json!({"name": name, "inputs": inputs, "outputs": outputs, "ops": ops}))
    }

    /// A `NodeProto` as a `graph.json` op; graphs in its attributes lend their initializers.
    fn node(&mut self, at: u64, len: u64, depth: usize) -> Result<Value, OpenError> {
        let (mut name, mut op_type, mut domain) = (String::new(), String::new(), String::new());
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        let mut walker = Walker::over(at, len);
        while let Some(field) = walker.next(&mut self.src).map_err(corrupt)? {
            if field.wire() != Wire::Bytes {
                continue;
            }
            match field.number() {
                1 => inputs.push(self.text(&field)?),
                2 => outputs.push(self.text(&field)?),
                3 => name = self.text(&field)?,
                4 => op_type = self.text(&field)?,
                7 => domain = self.text(&field)?,
                5 => {
                    let (at, len) = field.span();
                    self.attribute_graphs(at, len, depth)?;
                }
                _ => {}
            }
        }
        Ok(json!({"name": name, "op_type": op_type, "domain": domain, "inputs": inputs, "outputs": outputs}))
    }

    /// The graphs of an `AttributeProto` (`g` = 6, `graphs` = 11).
    fn attribute_graphs(&mut self, at: u64, len: u64, depth: usize) -> Result<(), OpenError> {
        let mut walker = Walker::over(at, len);
        while let Some(field) = walker.next(&mut self.src).map_err(corrupt)? {
            if matches!(field.number(), 6 | 11) && field.wire() == Wire::Bytes {
                let (at, len) = field.span();
                self.graph(at, len, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Walks a `TensorProto`, recording where its data lies.
    fn tensor_record(&mut self, at: u64, len: u64) -> Result<TensorRecord, OpenError> {
        let mut t = TensorRecord::default();
        let mut walker = Walker::over(at, len);
        while let Some(field) = walker.next(&mut self.src).map_err(corrupt)? {
            let repeated = match field.number() {
                4 => Some(&mut t.float_data),
                5 => Some(&mut t.int32_data),
                7 => Some(&mut t.int64_data),
                10 => Some(&mut t.double_data),
                11 => Some(&mut t.uint64_data),
                _ => None,
            };
            if let Some(repeated) = repeated {
                let piece = match field {
                    Field::Bytes { at, len, .. } => Piece::Packed { at, len },
                    other => {
                        // One unpacked value costs a `Piece` of memory: counted as decoded.
                        self.decoded_budget = self
                            .decoded_budget
                            .checked_sub(std::mem::size_of::<Piece>() as u64)
                            .ok_or_else(|| corrupt(format!("typed tensor data over {MAX_DECODED} bytes")))?;
                        Piece::One(other.varint())
                    }
                };
                repeated.pieces.push(piece);
                continue;
            }
            match (field.number(), field) {
                (1, Field::Varint(_, v)) => t.dims.push(v as i64),
                (1, Field::Bytes { at, len, .. }) => {
                    let mut dims = Vec::new();
                    self.values(&[Piece::Packed { at, len }], Wire::Varint, |v| {
                        dims.push(v as i64);
                        Ok(())
                    })
                    .map_err(corrupt)?;
                    t.dims.extend(dims);
                }
                (2, Field::Varint(_, v)) => t.data_type = v as i32,
                (3, _) => t.segmented = true,
                (6, Field::Bytes { at, len, .. }) => {
                    if t.string_data.len() >= MAX_ITEMS {
                        return Err(corrupt(format!("more than {MAX_ITEMS} strings in one tensor")));
                    }
                    t.string_data.push((at, len));
                }
                (8, Field::Bytes { .. }) => t.name = self.text(&field)?,
                (9, Field::Bytes { at, len, .. }) => t.raw = Some((at, len)),
                (13, Field::Bytes { .. }) => {
                    let entry: StringStringEntryProto = self.small(&field)?;
                    t.external.push((entry.key, entry.value));
                }
                (14, Field::Varint(_, v)) => t.external_location = v == 1,
                _ => {}
            }
        }
        Ok(t)
    }

    /// Calls `f` with every value of a repeated scalar field, decoding packed runs chunk by
    /// chunk. Fixed-width values come as their bits.
    fn values(&mut self, pieces: &[Piece], wire: Wire, mut f: impl FnMut(u64) -> Result<(), String>) -> Result<(), String> {
        for piece in pieces {
            let (at, len) = match *piece {
                Piece::One(v) => {
                    f(v)?;
                    continue;
                }
                Piece::Packed { at, len } => (at, len),
            };
            let end = at + len;
            let mut pos = at;
            let mut data: Vec<u8> = Vec::new();
            while pos < end {
                let n = (end - pos).min(CHUNK);
                data.extend(self.src.read(pos, n).map_err(read_error)?);
                pos += n;
                let mut used = 0;
                loop {
                    let rest = &data[used..];
                    let next = match wire {
                        Wire::Varint => decode_varint(rest)?,
                        Wire::Fixed32 => rest.get(..4).map(|b| (u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])), 4)),
                        Wire::Fixed64 => rest.get(..8).map(|b| (u64::from_le_bytes(b.try_into().unwrap_or_default()), 8)),
                        Wire::Bytes => return Err("strings are not packed".into()),
                    };
                    let Some((value, n)) = next else { break };
                    f(value)?;
                    used += n;
                }
                data.drain(..used);
            }
            if !data.is_empty() {
                return Err("a packed field ends inside a value".into());
            }
        }
        Ok(())
    }

    fn take_decoded(&mut self, name: &str, bytes: u64) -> Result<(), OpenError> {
        self.decoded_budget = self
            .decoded_budget
            .checked_sub(bytes)
            .ok_or_else(|| OpenError::Corrupt(format!("ONNX initializer {name:?}: data decoded at mount would pass {MAX_DECODED} bytes")))?;
        Ok(())
    }

    /// A dense initializer: its dtype, shape and bytes, or a reason to skip it.
    fn add_dense(&mut self, t: TensorRecord) -> Result<(), OpenError> {
        if let Some((dtype, shape, bytes)) = self.resolve(&t)? {
            self.model.tensors.push(Tensor::named(&t.name, dtype, shape, bytes));
        }
        Ok(())
    }

    fn skip(&mut self, name: &str, reason: String) {
        self.model.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), reason));
    }

    /// `(dtype, shape, bytes)` of a tensor, `None` (recorded in `skipped`) for one wfs cannot
    /// show; an error for a damaged one.
    fn resolve(&mut self, t: &TensorRecord) -> Result<Option<Resolved>, OpenError> {
        let name = t.name.as_str();
        let bad = |why: String| OpenError::Corrupt(format!("ONNX initializer {name:?}: {why}"));
        let Some(dtype) = onnx_dtype(t.data_type) else {
            let what = type_name(t.data_type).unwrap_or_else(|| "undefined".into());
            self.skip(name, format!("element type {} ({what}) has no dtype in wfs", t.data_type));
            return Ok(None);
        };
        if t.segmented {
            self.skip(name, "segmented tensors are not supported".into());
            return Ok(None);
        }
        let shape: Vec<u64> = t.dims.iter().map(|&d| u64::try_from(d)).collect::<Result<_, _>>().map_err(|_| bad(format!("negative dimension in {:?}", t.dims)))?;
        let count = Tensor::element_count(&shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        if let DType::Str(_) = dtype {
            return self.strings(t, shape, count).map(Some);
        }
        let Some(size) = dtype.raw_len(count) else {
            if dtype.block().0 > 1 && count.checked_mul(dtype.size() as u64).is_some() {
                self.skip(name, format!("{count} {} elements fill no whole byte", dtype.name()));
                return Ok(None);
            }
            return Err(bad(format!("shape {shape:?} is too large")));
        };
        let check = |len: u64, what: &str| {
            if len == size { Ok(()) } else { Err(bad(format!("{what} holds {len} bytes, its shape needs {size}"))) }
        };
        let bytes: Arc<dyn TensorBytes> = if t.external_location {
            let (blob, offset, len) = self.external_bytes(t).map_err(bad)?;
            check(len, "external data")?;
            Arc::new(Extent { blob, offset, len })
        } else if let Some((at, len)) = t.raw {
            check(len, "raw_data")?;
            Arc::new(Extent { blob: self.src.blob().clone(), offset: at, len })
        } else {
            self.typed(t, dtype, count, size)?
        };
        Ok(Some((dtype, shape, bytes)))
    }

    /// The bytes of a tensor in the typed field its dtype uses (docs/formats/onnx.md#element-packing).
    fn typed(&mut self, t: &TensorRecord, dtype: DType, count: u64, size: u64) -> Result<Arc<dyn TensorBytes>, OpenError> {
        let name = t.name.as_str();
        let bad = |why: String| OpenError::Corrupt(format!("ONNX initializer {name:?}: {why}"));
        let (field, wire) = match dtype {
            DType::F32 | DType::C64 => (&t.float_data, Wire::Fixed32),
            DType::F64 | DType::C128 => (&t.double_data, Wire::Fixed64),
            DType::I64 => (&t.int64_data, Wire::Varint),
            DType::U32 | DType::U64 => (&t.uint64_data, Wire::Varint),
            _ => (&t.int32_data, Wire::Varint),
        };
        // A float or double tensor in one packed run already holds its bytes.
        if let ([Piece::Packed { at, len }], Wire::Fixed32 | Wire::Fixed64) = (field.pieces.as_slice(), wire) {
            if *len != size {
                return Err(bad(format!("its typed field holds {len} bytes, its shape needs {size}")));
            }
            return Ok(Arc::new(Extent { blob: self.src.blob().clone(), offset: *at, len: *len }));
        }
        // Entries of the typed field: one per element, but one per packed byte for float4, and
        // 6-bit codes that are packed here four to three bytes for float6.
        let (entries, width) = match dtype {
            DType::F4E2M1FN => (size, 1),
            DType::F6E2M3FN | DType::F6E3M2FN => (count, 0),
            DType::C64 | DType::C128 => (count * 2, dtype.size() / 2),
            _ => (count, dtype.size()),
        };
        // Every entry takes at least a byte (a varint) or its fixed width: a field too short for
        // the shape is refused before anything is allocated for it.
        let least = match wire {
            Wire::Fixed32 => 4,
            Wire::Fixed64 => 8,
            _ => 1,
        };
        let room: u64 = field.pieces.iter().map(|p| match *p {
            Piece::Packed { len, .. } => len / least,
            Piece::One(_) => 1,
        }).sum();
        if room < entries {
            return Err(bad(format!("its typed field holds at most {room} values, its shape needs {entries}")));
        }
        self.take_decoded(name, size)?;
        let mut out = Vec::with_capacity(size as usize);
        let mut seen = 0u64;
        self.values(&field.pieces, wire, |v| {
            seen += 1;
            if seen > entries {
                return Err(format!("its typed field holds more than the {entries} values its shape needs"));
            }
            if width == 0 {
                // float6: element i at bit 6 * (i % 4) of its 3-byte group.
                let shift = 6 * ((seen - 1) % 4);
                let bits = (v & 0x3F) << shift;
                if shift == 0 {
                    out.extend_from_slice(&[0, 0, 0]);
                }
                let group = out.len() - 3;
                for (i, byte) in out[group..].iter_mut().enumerate() {
                    *byte |= (bits >> (8 * i)) as u8;
                }
            } else {
                out.extend_from_slice(&v.to_le_bytes()[..width]);
            }
            Ok(())
        })
        .map_err(bad)?;
        if seen != entries {
            return Err(bad(format!("its typed field holds {seen} values, its shape needs {entries}")));
        }
        Ok(Arc::new(InMemory(out.into())))
    }

    /// A STRING tensor from `string_data`: fixed-width, NUL-padded to the longest element.
    fn strings(&mut self, t: &TensorRecord, shape: Vec<u64>, count: u64) -> Result<Resolved, OpenError> {
        let name = t.name.as_str();
        if t.string_data.len() as u64 != count {
            return Err(OpenError::Corrupt(format!("ONNX initializer {name:?}: {} strings, its shape needs {count}", t.string_data.len())));
        }
        let width = t.string_data.iter().map(|&(_, len)| len).max().unwrap_or(0).max(1);
        let total = width.saturating_mul(count);
        self.take_decoded(name, total)?;
        let mut out = Vec::with_capacity(total as usize);
        for &(at, len) in &t.string_data {
            out.extend(self.src.read(at, len).map_err(|e| corrupt(e.to_string()))?);
            out.resize(out.len() + (width - len) as usize, 0);
        }
        Ok((DType::Str(width as usize), shape, Arc::new(InMemory(out.into()))))
    }

    /// Where an external tensor's bytes lie: (file, offset, length), the file found inside the
    /// model's directory only (docs/formats/onnx.md#external-data-as-onnxsave_model-writes-it).
    fn external_bytes(&mut self, t: &TensorRecord) -> Result<(Blob, u64, u64), String> {
        let get = |key: &str| t.external.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let location = get("location").ok_or("external data without a location")?.to_string();
        let number = |key: &str| -> Result<Option<u64>, String> {
            get(key).map(|v| v.trim().parse::<u64>().map_err(|_| format!("external data {key} {v:?} is not a number"))).transpose()
        };
        let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
        let blob = match self.external.get(&location) {
            Some(blob) => blob.clone(),
            None => {
                let blob = self.open_external(&location)?;
                self.external.insert(location.clone(), blob.clone());
                blob
            }
        };
        let len = match length {
            Some(len) => len,
            None => blob.len().checked_sub(offset).ok_or_else(|| format!("external data offset {offset} is past the end of {location}"))?,
        };
        if offset.checked_add(len).is_none_or(|end| end > blob.len()) {
            return Err(format!("external data [{offset}, +{len}) lies past the end of {location} ({} bytes)", blob.len()));
        }
        Ok((blob, offset, len))
    }

    fn open_external(&self, location: &str) -> Result<Blob, String> {
        let dir = match self.dir.as_ref().ok_or("external data cannot be found beside a model read from standard input")? {
            Dir::Local(dir) if dir.as_os_str().is_empty() => Path::new("."),
            Dir::Local(dir) => dir.as_path(),
            // Plain names below the model's directory: a store has no `..` or links to follow.
            remote @ Dir::Remote(_) => return remote.open_below(location).map_err(|e| format!("external data file {location}: {e}")),
        };
        let leaves = || format!("external data location {location:?} leaves the model's directory");
        let rel = Path::new(location);
        if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(leaves());
        }
        let base = std::fs::canonicalize(dir).map_err(|e| format!("{}: {}", dir.display(), io_reason(&e)))?;
        let path = std::fs::canonicalize(dir.join(rel)).map_err(|e| format!("external data file {location}: {}", io_reason(&e)))?;
        if !path.starts_with(&base) {
            return Err(leaves());
        }
        if !path.is_file() {
            return Err(format!("external data file {location}: not a regular file"));
        }
        SourceFile::open(&path).map(|f| Blob::File(Arc::new(f))).map_err(|e| format!("external data file {location}: {}", io_reason(&e)))
    }

    /// A `SparseTensorProto`: values, indices and the dense shape (docs/formats/onnx.md#sparse-initializers).
    fn add_sparse(&mut self, at: u64, len: u64) -> Result<(), OpenError> {
        let (mut values, mut indices, mut dims) = (None, None, Vec::new());
        let mut walker = Walker::over(at, len);
        while let Some(field) = walker.next(&mut self.src).map_err(corrupt)? {
            match (field.number(), field) {
                (1, Field::Bytes { at, len, .. }) => values = Some(self.tensor_record(at, len)?),
                (2, Field::Bytes { at, len, .. }) => indices = Some(self.tensor_record(at, len)?),
                (3, Field::Varint(_, v)) => dims.push(v as i64),
                (3, Field::Bytes { at, len, .. }) => {
                    self.values(&[Piece::Packed { at, len }], Wire::Varint, |v| {
                        dims.push(v as i64);
                        Ok(())
                    })
                    .map_err(corrupt)?;
                }
                _ => {}
            }
        }
        let values = values.ok_or_else(|| corrupt("a sparse initializer has no values".into()))?;
        let indices = indices.ok_or_else(|| corrupt(format!("sparse initializer {:?} has no indices", values.name)))?;
        let name = values.name.clone();
        let bad = |why: String| OpenError::Corrupt(format!("ONNX sparse initializer {name:?}: {why}"));
        let Some((dtype, value_shape, value_bytes)) = self.resolve(&values)? else { return Ok(()) };
        if dtype.block().0 != 1 || matches!(dtype, DType::Str(_)) {
            self.skip(&name, format!("sparse {} tensors are not densified", dtype.name()));
            return Ok(());
        }
        let shape: Vec<u64> = dims.iter().map(|&d| u64::try_from(d)).collect::<Result<_, _>>().map_err(|_| bad(format!("negative dimension in {dims:?}")))?;
        let count = Tensor::element_count(&shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let size = dtype.raw_len(count).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let nnz = match value_shape.as_slice() {
            [n] => *n,
            other => return Err(bad(format!("values have shape {other:?}, not [NNZ]"))),
        };
        let Some((index_type, index_shape, index_bytes)) = self.resolve(&indices)? else { return Ok(()) };
        if index_type != DType::I64 {
            return Err(bad(format!("indices are {}, not int64", index_type.name())));
        }
        let rank = match index_shape.as_slice() {
            [n] if *n == nnz => None,
            [n, r] if *n == nnz && *r == shape.len() as u64 => Some(*r as usize),
            other => return Err(bad(format!("indices have shape {other:?} for {nnz} values of rank {}", shape.len()))),
        };
        self.take_decoded(&name, index_bytes.len())?;
        let mut raw = vec![0u8; index_bytes.len() as usize];
        index_bytes.read_at(0, &mut raw).map_err(|e| bad(e.to_string()))?;
        let numbers: Vec<i64> = raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        drop(raw);
        let linear: Vec<u64> = match rank {
            None => numbers.iter().map(|&i| u64::try_from(i).ok().filter(|&i| i < count)).collect::<Option<_>>(),
            Some(rank) => numbers
                .chunks_exact(rank.max(1))
                .map(|coords| {
                    coords.iter().zip(&shape).try_fold(0u64, |acc, (&c, &d)| {
                        let c = u64::try_from(c).ok().filter(|&c| c < d)?;
                        Some(acc * d + c)
                    })
                })
                .collect::<Option<_>>(),
        }
        .ok_or_else(|| bad("an index lies outside the dense shape".into()))?;
        if linear.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("indices are not strictly ascending".into()));
        }
        let bytes = Densified { values: value_bytes, indices: linear, item: dtype.size() as u64, len: size };
        self.model.tensors.push(Tensor::named(&name, dtype, shape, Arc::new(bytes)));
        Ok(())
    }
}

/// A sparse initializer's dense bytes: zeros, with each value at its (linear, ascending) index.
struct Densified {
    values: Arc<dyn TensorBytes>,
    indices: Vec<u64>,
    item: u64,
    len: u64,
}

impl TensorBytes for Densified {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        buf.fill(0);
        let first = offset / self.item;
        let end = (offset + buf.len() as u64).div_ceil(self.item);
        let k0 = self.indices.partition_point(|&i| i < first);
        let k1 = self.indices.partition_point(|&i| i < end);
        if k0 == k1 {
            return Ok(());
        }
        let mut values = vec![0u8; ((k1 - k0) as u64 * self.item) as usize];
        self.values.read_at(k0 as u64 * self.item, &mut values)?;
        for (&index, value) in self.indices[k0..k1].iter().zip(values.chunks_exact(self.item as usize)) {
            // The element's bytes that fall inside the read.
            for (b, &byte) in value.iter().enumerate() {
                let at = index * self.item + b as u64;
                if at >= offset && at < offset + buf.len() as u64 {
                    buf[(at - offset) as usize] = byte;
                }
            }
        }
        Ok(())
    }
}

/// The dtype of an ONNX `TensorProto.DataType` (docs/formats/README.md#element-types, docs/formats/onnx.md#element-packing); `None` for UNDEFINED and
/// the types wfs has no dtype for (int4, uint4, int2, uint2).
fn onnx_dtype(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        8 => DType::Str(0),
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        14 => DType::C64,
        15 => DType::C128,
        16 => DType::BF16,
        17 => DType::F8E4M3FN,
        18 => DType::F8E4M3FNUZ,
        19 => DType::F8E5M2,
        20 => DType::F8E5M2FNUZ,
        23 => DType::F4E2M1FN,
        24 => DType::F8E8M0FNU,
        27 => DType::F6E2M3FN,
        28 => DType::F6E3M2FN,
        _ => return None,
    })
}

/// The numpy-style name of an element type, for `graph.json` (`None` for UNDEFINED).
fn type_name(code: i32) -> Option<String> {
    let name = match code {
        8 => "string",
        21 => "uint4",
        22 => "int4",
        25 => "uint2",
        26 => "int2",
        code => return onnx_dtype(code).map(DType::name),
    };
    Some(name.into())
}

fn value_info_json(info: ValueInfoProto) -> Value {
    let kind = info.r#type.and_then(|t| t.value);
    match kind {
        Some(TypeValue::Tensor(tensor)) => {
            let shape = tensor.shape.map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimValue::DimValue(v)) => json!(v),
                        Some(DimValue::DimParam(p)) => json!(p),
                        None => Value::Null,
                    })
                    .collect::<Vec<_>>()
            });
            json!({"name": info.name, "dtype": type_name(tensor.elem_type), "shape": shape})
        }
        Some(other) => json!({"name": info.name, "type": other.kind()}),
        None => json!({"name": info.name, "type": Value::Null}),
    }
}

// ---- Small leaf messages of `onnx.proto`, decoded with prost (only the fields wfs shows) ----

#[derive(Clone, PartialEq, prost::Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeProto {
    #[prost(oneof = "TypeValue", tags = "1, 4, 5, 7, 8, 9")]
    value: Option<TypeValue>,
}

/// The kinds of `TypeProto`; only a tensor's type is described further (the others' contents
/// are skipped, so nesting in them costs nothing).
#[derive(Clone, PartialEq, prost::Oneof)]
enum TypeValue {
    #[prost(message, tag = "1")]
    Tensor(TensorTypeProto),
    #[prost(message, tag = "4")]
    Sequence(Opaque),
    #[prost(message, tag = "5")]
    Map(Opaque),
    #[prost(message, tag = "7")]
    Opaque(Opaque),
    #[prost(message, tag = "8")]
    SparseTensor(Opaque),
    #[prost(message, tag = "9")]
    Optional(Opaque),
}

impl TypeValue {
    /// The `TypeProto` field's name, as onnx's `WhichOneof("value")` gives it.
    fn kind(&self) -> &'static str {
        match self {
            TypeValue::Tensor(_) => "tensor_type",
            TypeValue::Sequence(_) => "sequence_type",
            TypeValue::Map(_) => "map_type",
            TypeValue::Opaque(_) => "opaque_type",
            TypeValue::SparseTensor(_) => "sparse_tensor_type",
            TypeValue::Optional(_) => "optional_type",
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct Opaque {}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    value: Option<DimValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum DimValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &[u8]) -> Blob {
        Blob::Memory(Arc::new(bytes.to_vec()))
    }

    #[test]
    fn sniffs_model_protos_and_nothing_else() {
        // ir_version 8, producer "x", graph {} (empty).
        assert!(sniff(&blob(&[0x08, 0x08, 0x12, 0x01, b'x', 0x3A, 0x00])));
        // Cut inside the producer name: still an ONNX model, a damaged one.
        assert!(sniff(&blob(&[0x08, 0x08, 0x12, 0x09, b'x'])));
        // A safetensors header length that starts with 0x08.
        assert!(!sniff(&blob(&[0x08, 0x01, 0, 0, 0, 0, 0, 0, b'{', b'}'])));
        assert!(!sniff(&blob(b"\x08")));
        assert!(!sniff(&blob(b"hello world")));
        assert!(!sniff(&blob(&[0x12, 0x01, b'x'])));
    }

    #[test]
    fn densified_reads_match_at_every_offset() {
        let values: Vec<u8> = [1.5f32, -2.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let dense = Densified { values: Arc::new(InMemory(values.into())), indices: vec![1, 6, 11], item: 4, len: 48 };
        let mut whole = vec![0xAAu8; 48];
        dense.read_at(0, &mut whole).unwrap();
        let floats: Vec<f32> = whole.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(floats, [0.0, 1.5, 0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 4.0]);
        for offset in 0..48 {
            for len in 1..=(48 - offset) {
                let mut part = vec![0xAAu8; len];
                dense.read_at(offset as u64, &mut part).unwrap();
                assert_eq!(part, whole[offset..offset + len], "{offset} +{len}");
            }
        }
    }
}
