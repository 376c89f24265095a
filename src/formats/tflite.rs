//! TensorFlow Lite models (docs/formats/tflite.md): the tensors that have data (weights and constants)
//! under `tensors/` by their own names, with their quantization parameters as extended
//! attributes; every subgraph's inputs, outputs, operators and tensors in `graph.json`.
//!
//! The FlatBuffer is read by hand, every offset checked against the file before it is followed.
//! Offsets only point forward (tables reach their vtables either way), and the schema's tables
//! nest a fixed number of levels, so no input can make the reader loop. Tensor bytes are served
//! in place: from a buffer's `data` vector, or from the file slice a `Buffer.offset/size` names
//! (the form of models over 2 GiB, docs/formats/tflite.md#models-over-2-gb-buffers-outside-the-flatbuffer).

use super::paged::Paged;
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::Blob;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Most tensors and most operators in all subgraphs together.
const MAX_ITEMS: usize = 1 << 22;
/// Longest name or description read.
const MAX_STRING: u32 = 1 << 20;
/// Bytes of string tensors decoded at mount, all together.
const MAX_DECODED: u64 = 256 << 20;
/// Metadata buffers up to this size are shown as text when they are text.
const MAX_METADATA_TEXT: u64 = 4096;

/// `true` if the file carries the TFLite FlatBuffer identifier.
pub fn sniff(head: &[u8]) -> bool {
    head.get(4..8) == Some(b"TFL3")
}

fn corrupt(why: impl std::fmt::Display) -> OpenError {
    OpenError::Corrupt(format!("TFLite model is damaged: {why}"))
}

pub fn read(blob: &Blob) -> Result<Model, OpenError> {
    let mut fb = FlatBuffer { src: Paged::new(blob) };
    let root_at = fb.deref(0)?;
    let root = fb.table(root_at)?;
    let mut model = Model::default();
    let buffers = fb.tables(&root, 4)?;
    let codes = operator_codes(&mut fb, &root)?;
    let mut reader = Reader { fb, buffers, items: 0, decoded_budget: MAX_DECODED };

    let mut subgraphs = Vec::new();
    let mut tensor_names: Vec<Vec<Value>> = Vec::new();
    for (index, subgraph_at) in reader.fb.tables(&root, 2)?.into_iter().enumerate() {
        let subgraph = reader.fb.table(subgraph_at)?;
        let (json, names) = reader.subgraph(&subgraph, index, &codes, &mut model)?;
        subgraphs.push(json);
        tensor_names.push(names);
    }
    let signatures = signatures(&mut reader.fb, &root, &tensor_names)?;

    let info = &mut model.info;
    info.insert("version".into(), json!(reader.fb.scalar_u32(&root, 0)?.unwrap_or(0)));
    info.insert("description".into(), json!(reader.fb.string(&root, 3)?.unwrap_or_default()));
    info.insert("metadata".into(), Value::Object(reader.metadata(&root)?));
    info.insert("subgraphs".into(), json!(subgraphs.len()));
    info.insert("signature_defs".into(), json!(signatures.iter().map(|s| s["key"].clone()).collect::<Vec<_>>()));
    model.add_json(vec!["graph.json".into()], &json!({"subgraphs": subgraphs, "signatures": signatures}));
    Ok(model)
}

/// (op name, custom code, version) of each `OperatorCode`. The effective builtin code is the
/// larger of the deprecated byte field and the int field (files before schema 3a have only
/// the first; codes over 127 live only in the second).
fn operator_codes(fb: &mut FlatBuffer, root: &Table) -> Result<Vec<(String, Option<String>, i32)>, OpenError> {
    let mut codes = Vec::new();
    for at in fb.tables(root, 1)? {
        let code = fb.table(at)?;
        let deprecated = fb.scalar_u8(&code, 0)?.map_or(0, |b| i32::from(b as i8));
        let builtin = fb.scalar_u32(&code, 3)?.map_or(0, |v| v as i32);
        let effective = deprecated.max(builtin);
        let name = usize::try_from(effective)
            .ok()
            .and_then(|i| BUILTIN_OPERATORS.get(i))
            .map_or_else(|| format!("BUILTIN_{effective}"), |n| n.to_string());
        let custom = fb.string(&code, 1)?;
        let version = fb.scalar_u32(&code, 2)?.map_or(1, |v| v as i32);
        codes.push((name, custom, version));
    }
    Ok(codes)
}

/// `SignatureDef`s with their tensors by reference (name, or index for an unnamed tensor).
fn signatures(fb: &mut FlatBuffer, root: &Table, names: &[Vec<Value>]) -> Result<Vec<Value>, OpenError> {
    let mut out = Vec::new();
    for at in fb.tables(root, 7)? {
        let def = fb.table(at)?;
        let subgraph = fb.scalar_u32(&def, 4)?.unwrap_or(0) as usize;
        let tensors = names.get(subgraph).ok_or_else(|| corrupt(format!("a signature names subgraph {subgraph}")))?;
        let mut maps = Vec::new();
        for id in [0, 1] {
            let mut map = Map::new();
            for at in fb.tables(&def, id)? {
                let entry = fb.table(at)?;
                let name = fb.string(&entry, 0)?.unwrap_or_default();
                let index = fb.scalar_u32(&entry, 1)?.unwrap_or(0) as usize;
                let tensor = tensors.get(index).ok_or_else(|| corrupt(format!("signature input or output {name:?} names tensor {index}")))?;
                map.insert(name, tensor.clone());
            }
            maps.push(Value::Object(map));
        }
        let key = fb.string(&def, 2)?.unwrap_or_default();
        let outputs = maps.pop();
        let inputs = maps.pop();
        out.push(json!({"key": key, "subgraph": subgraph, "inputs": inputs, "outputs": outputs}));
    }
    Ok(out)
}

struct Reader {
    fb: FlatBuffer,
    /// Positions of the `Buffer` tables.
    buffers: Vec<u64>,
    items: usize,
    decoded_budget: u64,
}

impl Reader {
    fn count(&mut self, n: usize) -> Result<(), OpenError> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(corrupt(format!("more than {MAX_ITEMS} tensors and operators")));
        }
        Ok(())
    }

    /// `[offset, offset + len)` of buffer `index`'s bytes, `None` if it has none.
    fn buffer(&mut self, index: u32) -> Result<Option<(u64, u64)>, OpenError> {
        let at = *self.buffers.get(index as usize).ok_or_else(|| corrupt(format!("tensor refers to buffer {index} of {}", self.buffers.len())))?;
        let buffer = self.fb.table(at)?;
        let offset = self.fb.scalar_u64(&buffer, 1)?.unwrap_or(0);
        if offset > 1 {
            let size = self.fb.scalar_u64(&buffer, 2)?.unwrap_or(0);
            if offset.checked_add(size).is_none_or(|end| end > self.fb.src.len()) {
                return Err(corrupt(format!("buffer {index} at [{offset}, +{size}) lies past the end of the file")));
            }
            return Ok(Some((offset, size)));
        }
        Ok(self.fb.vector(&buffer, 0, 1)?.filter(|v| v.len > 0).map(|v| (v.at, u64::from(v.len))))
    }

    /// One subgraph: its tensors with data join the model; returns its `graph.json` entry and
    /// how `graph.json` refers to each of its tensors (`reference`).
    fn subgraph(&mut self, subgraph: &Table, index: usize, codes: &[(String, Option<String>, i32)], model: &mut Model) -> Result<(Value, Vec<Value>), OpenError> {
        let tensor_tables = self.fb.tables(subgraph, 0)?;
        self.count(tensor_tables.len())?;
        let mut tensors = Vec::with_capacity(tensor_tables.len());
        let mut names = Vec::with_capacity(tensor_tables.len());
        for (i, at) in tensor_tables.into_iter().enumerate() {
            let table = self.fb.table(at)?;
            let (json, name) = self.tensor(&table, index, i, model)?;
            tensors.push(json);
            names.push(reference(name, i));
        }
        let pick = |fb: &mut FlatBuffer, id: u16| -> Result<Vec<Value>, OpenError> {
            fb.ints(subgraph, id)?
                .into_iter()
                .map(|i| usize::try_from(i).ok().and_then(|i| tensors.get(i)).cloned().ok_or_else(|| corrupt(format!("subgraph {index} lists tensor {i}"))))
                .collect()
        };
        let inputs = pick(&mut self.fb, 1)?;
        let outputs = pick(&mut self.fb, 2)?;
        let op_tables = self.fb.tables(subgraph, 3)?;
        self.count(op_tables.len())?;
        let mut ops = Vec::with_capacity(op_tables.len());
        for at in op_tables {
            let op = self.fb.table(at)?;
            let code = self.fb.scalar_u32(&op, 0)?.unwrap_or(0) as usize;
            let (op_type, custom, version) = codes.get(code).ok_or_else(|| corrupt(format!("an operator uses operator code {code} of {}", codes.len())))?;
            let mut entry = Map::new();
            entry.insert("op_type".into(), json!(op_type));
            entry.insert("version".into(), json!(version));
            if let Some(custom) = custom {
                entry.insert("custom_code".into(), json!(custom));
            }
            for (key, id) in [("inputs", 1), ("outputs", 2)] {
                // -1 marks an omitted optional input.
                let refs: Vec<Value> = self
                    .fb
                    .ints(&op, id)?
                    .into_iter()
                    .map(|i| match i {
                        -1 => Ok(Value::Null),
                        i => usize::try_from(i).ok().and_then(|i| names.get(i)).cloned().ok_or_else(|| corrupt(format!("an operator of subgraph {index} uses tensor {i}"))),
                    })
                    .collect::<Result<_, _>>()?;
                entry.insert(key.into(), Value::Array(refs));
            }
            ops.push(Value::Object(entry));
        }
        let name = self.fb.string(subgraph, 4)?.unwrap_or_default();
        Ok((json!({"name": name, "inputs": inputs, "outputs": outputs, "ops": ops, "tensors": tensors}), names))
    }

    /// One `Tensor` (number `index` of subgraph `subgraph`): its `graph.json` entry and name; a
    /// tensor with data joins the model.
    fn tensor(&mut self, table: &Table, subgraph: usize, index: usize, model: &mut Model) -> Result<(Value, String), OpenError> {
        let fb = &mut self.fb;
        let name = fb.string(table, 3)?.unwrap_or_default();
        let code = fb.scalar_u8(table, 1)?.unwrap_or(0) as i8;
        let dims = fb.ints(table, 0)?;
        let signature = fb.vector(table, 7, 4)?.is_some().then(|| fb.ints(table, 7)).transpose()?;
        let buffer = fb.scalar_u32(table, 2)?.unwrap_or(0);
        let quantization = match fb.table_field(table, 4)? {
            Some(q) => quantization(fb, &q)?,
            None => None,
        };
        let sparse = fb.table_field(table, 6)?.is_some();
        let data = self.buffer(buffer)?;

        let mut entry = Map::new();
        entry.insert("index".into(), json!(index));
        entry.insert("name".into(), json!(name));
        entry.insert("dtype".into(), json!(type_name(code)));
        entry.insert("shape".into(), json!(dims));
        if let Some(signature) = signature {
            entry.insert("shape_signature".into(), json!(signature));
        }
        entry.insert("has_data".into(), json!(data.is_some()));
        if let Some(q) = &quantization {
            entry.insert("quantization".into(), json!({"scale": q.scale, "zero_point": q.zero_point, "quantized_dimension": q.dimension}));
        }
        if let Some((offset, len)) = data {
            let skip = |reason: String| SkippedTensor::new(TensorId::Indexed { name: name.clone(), index }, reason);
            match tensor_dtype(code) {
                _ if sparse => model.skipped.push(skip("sparse tensors are not densified".into())),
                None => model.skipped.push(skip(format!("element type {} has no dtype in wfs", type_name(code)))),
                Some(dtype) => {
                    let shape: Vec<u64> = dims.iter().map(|&d| u64::try_from(d)).collect::<Result<_, _>>().map_err(|_| corrupt(format!("tensor {name:?} has shape {dims:?}")))?;
                    let (dtype, bytes) = self.tensor_bytes(&name, dtype, &shape, offset, len)?;
                    let mut tensor = if name.is_empty() {
                        Tensor::nameless(unnamed_path(subgraph, index), dtype, shape, bytes)
                    } else {
                        Tensor::named(&name, dtype, shape, bytes)
                    };
                    if let Some(q) = &quantization {
                        tensor.extra_attrs = q.attrs();
                    }
                    model.tensors.push(tensor);
                }
            }
        }
        Ok((Value::Object(entry), name))
    }

    fn tensor_bytes(&mut self, name: &str, dtype: DType, shape: &[u64], offset: u64, len: u64) -> Result<(DType, Arc<dyn TensorBytes>), OpenError> {
        let bad = |why: String| OpenError::Corrupt(format!("TFLite tensor {name:?}: {why}"));
        let count = Tensor::element_count(shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        if let DType::Str(_) = dtype {
            return self.strings(count, offset, len).map_err(bad);
        }
        let size = dtype.raw_len(count).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        if size != len {
            return Err(bad(format!("its buffer holds {len} bytes, its shape needs {size}")));
        }
        Ok((dtype, Arc::new(Extent { blob: self.fb.src.blob().clone(), offset, len })))
    }

    /// A STRING tensor's buffer (i32 count, i32 offsets[count + 1], the bytes: docs/formats/tflite.md#tensor-data-layout-and-quantization)
    /// as fixed-width, NUL-padded elements.
    fn strings(&mut self, count: u64, offset: u64, len: u64) -> Result<(DType, Arc<dyn TensorBytes>), String> {
        if len > self.decoded_budget {
            return Err(format!("string data over {MAX_DECODED} bytes"));
        }
        self.decoded_budget -= len;
        let data = self.fb.src.read(offset, len).map_err(|e| e.to_string())?;
        let int = |i: u64| -> Option<u64> {
            let at = usize::try_from(i.checked_mul(4)?).ok()?;
            data.get(at..at + 4).map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        };
        let n = int(0).ok_or("string buffer too short")?;
        if n != count {
            return Err(format!("string buffer holds {n} strings, its shape needs {count}"));
        }
        let bounds: Vec<u64> = (1..=n + 1).map(int).collect::<Option<_>>().ok_or("string offsets past the buffer")?;
        if bounds.windows(2).any(|w| w[0] > w[1]) || bounds.last().is_some_and(|&end| end > len) {
            return Err("string offsets out of order or past the buffer".into());
        }
        let width = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0).max(1);
        let total = width.checked_mul(count).filter(|&t| t <= self.decoded_budget).ok_or(format!("string data over {MAX_DECODED} bytes"))?;
        self.decoded_budget -= total;
        let mut out = Vec::with_capacity(total as usize);
        for w in bounds.windows(2) {
            out.extend_from_slice(&data[w[0] as usize..w[1] as usize]);
            out.resize(out.len() + (width - (w[1] - w[0])) as usize, 0);
        }
        Ok((DType::Str(width as usize), Arc::new(InMemory(out.into()))))
    }

    /// `Model.metadata`: each entry's buffer as text when it is short printable ASCII (NUL
    /// padding dropped), else its size.
    fn metadata(&mut self, root: &Table) -> Result<Map<String, Value>, OpenError> {
        let mut out = Map::new();
        for at in self.fb.tables(root, 6)? {
            let entry = self.fb.table(at)?;
            let name = self.fb.string(&entry, 0)?.unwrap_or_default();
            let buffer = self.fb.scalar_u32(&entry, 1)?.unwrap_or(0);
            let (offset, len) = self.buffer(buffer)?.unwrap_or((0, 0));
            let text = if len <= MAX_METADATA_TEXT {
                let bytes = self.fb.src.read(offset, len).map_err(corrupt)?;
                let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bytes[..end].iter().all(|b| (32..127).contains(b)).then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
            } else {
                None
            };
            out.insert(name, text.map_or_else(|| json!({"bytes": len}), Value::String));
        }
        Ok(out)
    }
}

struct Quantization {
    scale: Vec<f32>,
    zero_point: Vec<i64>,
    dimension: i32,
}

impl Quantization {
    /// `user.wfs.quant.*` attributes: numbers joined by `,`.
    fn attrs(&self) -> Vec<(String, String)> {
        let join = |v: Vec<String>| v.join(",");
        vec![
            ("user.wfs.quant.scale".into(), join(self.scale.iter().map(|s| format!("{s:?}")).collect())),
            ("user.wfs.quant.zero_point".into(), join(self.zero_point.iter().map(i64::to_string).collect())),
            ("user.wfs.quant.quantized_dimension".into(), self.dimension.to_string()),
        ]
    }
}

/// A tensor's `QuantizationParameters`; `None` when it has no scale (not quantized).
fn quantization(fb: &mut FlatBuffer, q: &Table) -> Result<Option<Quantization>, OpenError> {
    let Some(scales) = fb.vector(q, 2, 4)? else { return Ok(None) };
    if scales.len == 0 {
        return Ok(None);
    }
    let scale = fb.src.read(scales.at, u64::from(scales.len) * 4).map_err(corrupt)?;
    let scale = scale.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let zero_point = match fb.vector(q, 3, 8)? {
        Some(v) => fb.src.read(v.at, u64::from(v.len) * 8).map_err(corrupt)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        None => Vec::new(),
    };
    let dimension = fb.scalar_u32(q, 6)?.map_or(0, |v| v as i32);
    Ok(Some(Quantization { scale, zero_point, dimension }))
}

/// The dtype of a `TensorType` (docs/formats/tflite.md#tensortype); `None` for the types without tensor data in
/// wfs (RESOURCE, VARIANT, INT4).
fn tensor_dtype(code: i8) -> Option<DType> {
    Some(match code {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::I32,
        3 => DType::U8,
        4 => DType::I64,
        5 => DType::Str(0),
        6 => DType::Bool,
        7 => DType::I16,
        8 => DType::C64,
        9 => DType::I8,
        10 => DType::F64,
        11 => DType::C128,
        12 => DType::U64,
        15 => DType::U32,
        16 => DType::U16,
        18 => DType::BF16,
        _ => return None,
    })
}

/// How `graph.json` refers to a tensor: by its name, or by its index when it has none (the name
/// is optional; TFLite Micro's models leave it out).
fn reference(name: String, index: usize) -> Value {
    if name.is_empty() { json!(index) } else { json!(name) }
}

/// Where an unnamed tensor is placed: `tensors/<index>` in the main subgraph,
/// `tensors/<subgraph>/<index>` in the others (indexes restart in each subgraph).
fn unnamed_path(subgraph: usize, index: usize) -> Vec<String> {
    let mut path = vec!["tensors".to_string()];
    if subgraph > 0 {
        path.push(subgraph.to_string());
    }
    path.push(index.to_string());
    path
}

fn type_name(code: i8) -> String {
    match code {
        13 => "resource".into(),
        14 => "variant".into(),
        17 => "int4".into(),
        code => tensor_dtype(code).map_or_else(|| format!("type_{code}"), DType::name),
    }
}

// ---- FlatBuffers, read without generated code (docs/formats/tflite.md#flatbuffers-rules-needed-to-read-without-generated-code) ----

struct FlatBuffer {
    src: Paged,
}

/// A table at `at` and its vtable.
struct Table {
    at: u64,
    vtable: u64,
    vtable_len: u16,
}

/// A vector's first element and its length.
#[derive(Clone, Copy)]
struct Vector {
    at: u64,
    len: u32,
}

impl FlatBuffer {
    fn bytes<const N: usize>(&mut self, at: u64) -> Result<[u8; N], OpenError> {
        let bytes = self.src.read(at, N as u64).map_err(|_| corrupt(format!("offset {at} lies past the end of the file")))?;
        bytes.try_into().map_err(|_| corrupt("short read"))
    }

    fn u32_at(&mut self, at: u64) -> Result<u32, OpenError> {
        self.bytes::<4>(at).map(u32::from_le_bytes)
    }

    /// Follows the uoffset at `at`.
    fn deref(&mut self, at: u64) -> Result<u64, OpenError> {
        let target = at + u64::from(self.u32_at(at)?);
        if target >= self.src.len() {
            return Err(corrupt(format!("offset at {at} points past the end of the file")));
        }
        Ok(target)
    }

    fn table(&mut self, at: u64) -> Result<Table, OpenError> {
        let soffset = i64::from(i32::from_le_bytes(self.bytes::<4>(at)?));
        let vtable = u64::try_from(at as i64 - soffset).map_err(|_| corrupt(format!("table at {at} has its vtable before the file")))?;
        let [a, b, _, _] = self.bytes::<4>(vtable)?;
        let vtable_len = u16::from_le_bytes([a, b]);
        if vtable_len < 4 || vtable_len % 2 != 0 || vtable + u64::from(vtable_len) > self.src.len() {
            return Err(corrupt(format!("table at {at} has a bad vtable")));
        }
        Ok(Table { at, vtable, vtable_len })
    }

    /// Where field `id` of a table lies, `None` if it is absent.
    fn field(&mut self, table: &Table, id: u16) -> Result<Option<u64>, OpenError> {
        let slot = 4 + 2 * u64::from(id);
        if slot + 2 > u64::from(table.vtable_len) {
            return Ok(None);
        }
        let [a, b] = self.bytes::<2>(table.vtable + slot)?;
        match u16::from_le_bytes([a, b]) {
            0 => Ok(None),
            offset => Ok(Some(table.at + u64::from(offset))),
        }
    }

    fn scalar_u8(&mut self, table: &Table, id: u16) -> Result<Option<u8>, OpenError> {
        match self.field(table, id)? {
            Some(at) => Ok(Some(self.bytes::<1>(at)?[0])),
            None => Ok(None),
        }
    }

    fn scalar_u32(&mut self, table: &Table, id: u16) -> Result<Option<u32>, OpenError> {
        match self.field(table, id)? {
            Some(at) => Ok(Some(self.u32_at(at)?)),
            None => Ok(None),
        }
    }

    fn scalar_u64(&mut self, table: &Table, id: u16) -> Result<Option<u64>, OpenError> {
        match self.field(table, id)? {
            Some(at) => Ok(Some(u64::from_le_bytes(self.bytes::<8>(at)?))),
            None => Ok(None),
        }
    }

    fn table_field(&mut self, table: &Table, id: u16) -> Result<Option<Table>, OpenError> {
        match self.field(table, id)? {
            Some(at) => {
                let target = self.deref(at)?;
                self.table(target).map(Some)
            }
            None => Ok(None),
        }
    }

    /// A vector field of `item`-byte elements, checked to lie inside the file.
    fn vector(&mut self, table: &Table, id: u16, item: u64) -> Result<Option<Vector>, OpenError> {
        let Some(at) = self.field(table, id)? else { return Ok(None) };
        let start = self.deref(at)?;
        let len = self.u32_at(start)?;
        let end = (start + 4).checked_add(u64::from(len) * item);
        if end.is_none_or(|end| end > self.src.len()) {
            return Err(corrupt(format!("vector at {start} of {len} elements runs past the end of the file")));
        }
        Ok(Some(Vector { at: start + 4, len }))
    }

    /// A vector of tables: each table's position.
    fn tables(&mut self, table: &Table, id: u16) -> Result<Vec<u64>, OpenError> {
        let Some(v) = self.vector(table, id, 4)? else { return Ok(Vec::new()) };
        if v.len as usize > MAX_ITEMS {
            return Err(corrupt(format!("a vector of {} tables", v.len)));
        }
        (0..u64::from(v.len)).map(|k| self.deref(v.at + 4 * k)).collect()
    }

    /// A vector of i32.
    fn ints(&mut self, table: &Table, id: u16) -> Result<Vec<i32>, OpenError> {
        let Some(v) = self.vector(table, id, 4)? else { return Ok(Vec::new()) };
        if v.len as usize > MAX_ITEMS {
            return Err(corrupt(format!("a vector of {} integers", v.len)));
        }
        let bytes = self.src.read(v.at, u64::from(v.len) * 4).map_err(corrupt)?;
        Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn string(&mut self, table: &Table, id: u16) -> Result<Option<String>, OpenError> {
        let Some(v) = self.vector(table, id, 1)? else { return Ok(None) };
        if v.len > MAX_STRING {
            return Err(corrupt(format!("a string of {} bytes", v.len)));
        }
        let bytes = self.src.read(v.at, u64::from(v.len)).map_err(corrupt)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// `BuiltinOperator` names by code (TF 2.21's schema: 0 ADD .. 209 STABLEHLO_CASE).
const BUILTIN_OPERATORS: &[&str] = &[
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE",
    "DEQUANTIZE", "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP",
    "L2_NORMALIZATION", "L2_POOL_2D", "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION",
    "LSTM", "MAX_POOL_2D", "MUL", "RELU", "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
    "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH", "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL",
    "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD", "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER",
    "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN", "SUB", "DIV", "SQUEEZE",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN", "EXP",
    "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU",
    "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER", "GREATER_EQUAL",
    "LESS_EQUAL", "SELECT", "SLICE", "SIN", "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE",
    "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG", "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN",
    "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX", "PACK", "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND",
    "LOGICAL_NOT", "UNPACK", "REDUCE_MIN", "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE",
    "FILL", "FLOOR_MOD", "RANGE", "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE",
    "MIRROR_PAD", "ABS", "SPLIT_V", "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND", "COS",
    "WHERE", "RANK", "ELU", "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG",
    "ROUND", "HARD_SWISH", "IF", "WHILE", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5",
    "SCATTER_ND", "SELECT_V2", "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL",
    "PLACEHOLDER_FOR_GREATER_OP_CODES", "CUMSUM", "CALL_ONCE", "BROADCAST_TO", "RFFT2D", "CONV_3D",
    "IMAG", "REAL", "COMPLEX_ABS", "HASHTABLE", "HASHTABLE_FIND", "HASHTABLE_IMPORT",
    "HASHTABLE_SIZE", "REDUCE_ALL", "CONV_3D_TRANSPOSE", "VAR_HANDLE", "READ_VARIABLE",
    "ASSIGN_VARIABLE", "BROADCAST_ARGS", "RANDOM_STANDARD_NORMAL", "BUCKETIZE", "RANDOM_UNIFORM",
    "MULTINOMIAL", "GELU", "DYNAMIC_UPDATE_SLICE", "RELU_0_TO_1", "UNSORTED_SEGMENT_PROD",
    "UNSORTED_SEGMENT_MAX", "UNSORTED_SEGMENT_SUM", "ATAN2", "UNSORTED_SEGMENT_MIN", "SIGN",
    "BITCAST", "BITWISE_XOR", "RIGHT_SHIFT", "STABLEHLO_LOGISTIC", "STABLEHLO_ADD",
    "STABLEHLO_DIVIDE", "STABLEHLO_MULTIPLY", "STABLEHLO_MAXIMUM", "STABLEHLO_RESHAPE",
    "STABLEHLO_CLAMP", "STABLEHLO_CONCATENATE", "STABLEHLO_BROADCAST_IN_DIM",
    "STABLEHLO_CONVOLUTION", "STABLEHLO_SLICE", "STABLEHLO_CUSTOM_CALL", "STABLEHLO_REDUCE",
    "STABLEHLO_ABS", "STABLEHLO_AND", "STABLEHLO_COSINE", "STABLEHLO_EXPONENTIAL",
    "STABLEHLO_FLOOR", "STABLEHLO_LOG", "STABLEHLO_MINIMUM", "STABLEHLO_NEGATE", "STABLEHLO_OR",
    "STABLEHLO_POWER", "STABLEHLO_REMAINDER", "STABLEHLO_RSQRT", "STABLEHLO_SELECT",
    "STABLEHLO_SUBTRACT", "STABLEHLO_TANH", "STABLEHLO_SCATTER", "STABLEHLO_COMPARE",
    "STABLEHLO_CONVERT", "STABLEHLO_DYNAMIC_SLICE", "STABLEHLO_DYNAMIC_UPDATE_SLICE",
    "STABLEHLO_PAD", "STABLEHLO_IOTA", "STABLEHLO_DOT_GENERAL", "STABLEHLO_REDUCE_WINDOW",
    "STABLEHLO_SORT", "STABLEHLO_WHILE", "STABLEHLO_GATHER", "STABLEHLO_TRANSPOSE", "DILATE",
    "STABLEHLO_RNG_BIT_GENERATOR", "REDUCE_WINDOW", "STABLEHLO_COMPOSITE", "STABLEHLO_SHIFT_LEFT",
    "STABLEHLO_CBRT", "STABLEHLO_CASE",
];
