//! Flax msgpack checkpoints (`flax.serialization.to_bytes`, docs/formats/jax.md#flax-msgpack):
//! one msgpack object whose arrays are ext values `[shape, dtype name, C-order bytes]`. The walk
//! reads headers only and records where each array's bytes lie, so tensors are served in place;
//! arrays Flax split into chunks (`__msgpack_chunked_array__`) are reassembled from their pieces.
//! Everything else (numbers, strings, booleans) goes to `object.json` where it sits in the tree.

use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{Extent, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::source::Blob;
use serde_json::{Map, Value as Json, json};
use std::sync::Arc;

/// Deepest nesting of maps and arrays followed (Flax trees are a few levels deep).
const MAX_DEPTH: usize = 64;
/// Bytes read ahead at once while walking headers.
const WINDOW: u64 = 1 << 16;
/// Longest string or key kept (a longer one is a damaged length, or no checkpoint).
const MAX_STR: u64 = 1 << 20;
/// The key of a map that stands for an array Flax split into 1-D chunks.
const CHUNKED: &str = "__msgpack_chunked_array__";

/// msgpack ext type codes Flax writes (`flax.serialization._MsgpackExtType`).
const EXT_NDARRAY: i8 = 1;
const EXT_COMPLEX: i8 = 2;
const EXT_NPSCALAR: i8 = 3;

/// A map with a string key first: how every Flax state dict begins.
pub fn sniff(head: &[u8]) -> bool {
    let key_at = match head.first() {
        Some(0x81..=0x8f) => 1,
        Some(0xde) => 3,
        Some(0xdf) => 5,
        _ => return false,
    };
    matches!(head.get(key_at), Some(0xa0..=0xbf | 0xd9..=0xdb))
}

pub fn read(blob: &Blob) -> Result<Model, OpenError> {
    let mut cursor = Cursor { blob, pos: 0, window_start: 0, window: Vec::new() };
    let root = cursor.value(0)?;
    if cursor.pos != blob.len() {
        return Err(OpenError::corrupt(format!("{} bytes after the msgpack object", blob.len() - cursor.pos)));
    }
    let mut walk = Walk { blob, tensors: Vec::new(), skipped: Vec::new() };
    let object = walk.node(root, "");
    let mut info = Map::new();
    if let Json::Object(top) = &object {
        info.insert("top_level_keys".into(), json!(top.keys().collect::<Vec<_>>()));
    }
    let mut model = Model { info, tensors: walk.tensors, skipped: walk.skipped, ..Model::default() };
    model.add_json(vec!["object.json".into()], &object);
    Ok(model)
}

/// A parsed msgpack value, arrays standing for where their bytes lie.
enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Array(Array),
    Leaf(Json),
}

/// An ndarray ext: its declared type and shape, and its data's place in the file.
struct Array {
    dtype: String,
    shape: Vec<u64>,
    offset: u64,
    len: u64,
}

/// Reads msgpack from a blob through a read-ahead window; bin payloads are skipped, not read.
struct Cursor<'a> {
    blob: &'a Blob,
    pos: u64,
    window_start: u64,
    window: Vec<u8>,
}

fn truncated() -> OpenError {
    OpenError::corrupt("msgpack data ends early")
}

impl Cursor<'_> {
    /// The next `n` bytes (n small), moving past them.
    fn take(&mut self, n: u64) -> Result<&[u8], OpenError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.blob.len()).ok_or_else(truncated)?;
        if self.pos < self.window_start || end > self.window_start + self.window.len() as u64 {
            let len = n.max(WINDOW).min(self.blob.len() - self.pos);
            self.window = self.blob.read_vec(self.pos, len).map_err(|e| OpenError::unreadable(e.to_string()))?;
            self.window_start = self.pos;
        }
        let from = (self.pos - self.window_start) as usize;
        self.pos = end;
        Ok(&self.window[from..from + n as usize])
    }

    fn skip(&mut self, n: u64) -> Result<u64, OpenError> {
        let at = self.pos;
        self.pos = at.checked_add(n).filter(|&end| end <= self.blob.len()).ok_or_else(truncated)?;
        Ok(at)
    }

    fn byte(&mut self) -> Result<u8, OpenError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: u64) -> Result<u64, OpenError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn string(&mut self, len: u64) -> Result<String, OpenError> {
        if len > MAX_STR {
            return Err(OpenError::corrupt(format!("a msgpack string of {len} bytes")));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| OpenError::corrupt("a msgpack string is not UTF-8"))
    }

    fn value(&mut self, depth: usize) -> Result<Node, OpenError> {
        if depth > MAX_DEPTH {
            return Err(OpenError::corrupt(format!("msgpack nested deeper than {MAX_DEPTH} levels")));
        }
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => Node::Leaf(json!(marker)),
            0xe0..=0xff => Node::Leaf(json!(marker as i8)),
            0x80..=0x8f => self.map(u64::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.list(u64::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => Node::Leaf(Json::String(self.string(u64::from(marker & 0x1f))?)),
            0xc0 => Node::Leaf(Json::Null),
            0xc2 => Node::Leaf(json!(false)),
            0xc3 => Node::Leaf(json!(true)),
            0xc4..=0xc6 => {
                let len = self.uint(1 << (marker - 0xc4))?;
                self.skip(len)?;
                Node::Leaf(json!({ "bytes": len }))
            }
            0xc7..=0xc9 => {
                let len = self.uint(1 << (marker - 0xc7))?;
                self.ext(len, depth)?
            }
            0xca => Node::Leaf(json!(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Node::Leaf(json!(f64::from_bits(self.uint(8)?))),
            0xcc..=0xcf => Node::Leaf(json!(self.uint(1 << (marker - 0xcc))?)),
            0xd0..=0xd3 => {
                let n = 1u32 << (marker - 0xd0);
                let raw = self.uint(u64::from(n))?;
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n;
                Node::Leaf(json!(((raw << shift) as i64) >> shift))
            }
            0xd4..=0xd8 => self.ext(1 << (marker - 0xd4), depth)?,
            0xd9..=0xdb => {
                let len = self.uint(1 << (marker - 0xd9))?;
                Node::Leaf(Json::String(self.string(len)?))
            }
            0xdc | 0xdd => {
                let count = self.uint(if marker == 0xdc { 2 } else { 4 })?;
                self.list(count, depth)?
            }
            0xde | 0xdf => {
                let count = self.uint(if marker == 0xde { 2 } else { 4 })?;
                self.map(count, depth)?
            }
            0xc1 => return Err(OpenError::corrupt("msgpack marker 0xc1 (never used)")),
        })
    }

    // Counts are not trusted for allocation: each entry takes at least a byte, so a false count
    // runs into the end of the file.
    fn map(&mut self, count: u64, depth: usize) -> Result<Node, OpenError> {
        let mut entries = Vec::new();
        for _ in 0..count {
            let key = match self.value(depth + 1)? {
                Node::Leaf(Json::String(key)) => key,
                // `to_state_dict` makes every key a string; int keys are legal msgpack.
                Node::Leaf(Json::Number(n)) => n.to_string(),
                _ => return Err(OpenError::corrupt("a msgpack map key is neither a string nor an integer")),
            };
            entries.push((key, self.value(depth + 1)?));
        }
        Ok(Node::Map(entries))
    }

    fn list(&mut self, count: u64, depth: usize) -> Result<Node, OpenError> {
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(Node::List(items))
    }

    /// An ext value of `len` payload bytes (its type code next).
    fn ext(&mut self, len: u64, depth: usize) -> Result<Node, OpenError> {
        let code = self.byte()? as i8;
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        let node = match code {
            EXT_NDARRAY | EXT_NPSCALAR => self.ndarray(depth)?,
            EXT_COMPLEX => match self.value(depth + 1)? {
                Node::List(parts) if parts.len() == 2 => Node::Leaf(Json::Array(parts.into_iter().map(leaf_json).collect())),
                _ => return Err(OpenError::corrupt("a complex number ext is not [real, imag]")),
            },
            other => return Err(OpenError::corrupt(format!("msgpack ext type {other} (Flax writes 1, 2 and 3)"))),
        };
        if self.pos != end {
            return Err(OpenError::corrupt(format!("an ext of type {code} holds other than its {len} bytes")));
        }
        Ok(node)
    }

    /// `[shape, dtype name, data]` of an ndarray ext.
    fn ndarray(&mut self, depth: usize) -> Result<Node, OpenError> {
        let bad = || OpenError::corrupt("an ndarray ext is not [shape, dtype, data]");
        if !matches!(self.byte()?, 0x93) {
            return Err(bad());
        }
        let Node::List(dims) = self.value(depth + 1)? else { return Err(bad()) };
        let shape = dims
            .into_iter()
            .map(|d| match d {
                Node::Leaf(Json::Number(n)) => n.as_u64().ok_or_else(bad),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let Node::Leaf(Json::String(dtype)) = self.value(depth + 1)? else { return Err(bad()) };
        let marker = self.byte()?;
        if !(0xc4..=0xc6).contains(&marker) {
            return Err(bad());
        }
        let len = self.uint(1 << (marker - 0xc4))?;
        let offset = self.skip(len)?;
        Ok(Node::Array(Array { dtype, shape, offset, len }))
    }
}

fn leaf_json(node: Node) -> Json {
    match node {
        Node::Leaf(value) => value,
        _ => Json::Null,
    }
}

/// Turns the parsed tree into tensors (named by their path) and the JSON of the rest.
struct Walk<'a> {
    blob: &'a Blob,
    tensors: Vec<Tensor>,
    skipped: Vec<SkippedTensor>,
}

fn child(name: &str, key: &str) -> String {
    if name.is_empty() { key.to_string() } else { format!("{name}/{key}") }
}

impl Walk<'_> {
    fn node(&mut self, node: Node, name: &str) -> Json {
        match node {
            Node::Map(entries) if entries.iter().any(|(k, _)| k == CHUNKED) => self.chunked(entries, name),
            Node::Map(entries) => {
                Json::Object(entries.into_iter().map(|(key, value)| (key.clone(), self.node(value, &child(name, &key)))).collect())
            }
            Node::List(items) => Json::Array(items.into_iter().enumerate().map(|(i, item)| self.node(item, &child(name, &i.to_string()))).collect()),
            Node::Array(array) => {
                let extent = Extent { blob: self.blob.clone(), offset: array.offset, len: array.len };
                self.add(name, &array.dtype, array.shape, Arc::new(extent), array.len)
            }
            Node::Leaf(value) => value,
        }
    }

    /// A tensor, or the reason it is left out; its entry in `object.json` either way.
    fn add(&mut self, name: &str, dtype_name: &str, shape: Vec<u64>, bytes: Arc<dyn TensorBytes>, len: u64) -> Json {
        let checked = match DType::from_numpy_name(dtype_name) {
            None => Err(format!("dtype {dtype_name:?} has no wfs type")),
            Some(dtype) => match Tensor::raw_size(dtype, &shape) {
                Some(size) if size == len => Ok(dtype),
                _ => Err(format!("{len} data bytes for a {dtype_name} array of shape {shape:?}")),
            },
        };
        match checked {
            Ok(dtype) => {
                self.tensors.push(Tensor::named(name, dtype, shape.clone(), bytes));
                json!({"__tensor__": name, "dtype": dtype_name, "shape": shape})
            }
            Err(reason) => {
                self.skipped.push(SkippedTensor::new(TensorId::Name(name.into()), reason.clone()));
                json!({"__tensor__": name, "skipped": reason})
            }
        }
    }

    /// `{"__msgpack_chunked_array__": true, "shape": {"0": d0, ...}, "chunks": {"0": ndarray, ...}}`:
    /// the C-order array cut into 1-D chunks, served as their concatenation.
    fn chunked(&mut self, entries: Vec<(String, Node)>, name: &str) -> Json {
        let mut shape = None;
        let mut chunks = None;
        for (key, value) in entries {
            match (key.as_str(), value) {
                ("shape", Node::Map(dims)) => shape = Some(dims),
                ("chunks", Node::Map(parts)) => chunks = Some(parts),
                _ => {}
            }
        }
        let dims: Option<Vec<u64>> = shape.map(|dims| dims.into_iter().map(|(_, d)| leaf_json(d).as_u64()).collect()).unwrap_or(None);
        let mut pieces = Vec::new();
        let mut dtype = None;
        for (_, chunk) in chunks.into_iter().flatten() {
            match chunk {
                Node::Array(a) if a.shape.len() == 1 && dtype.get_or_insert_with(|| a.dtype.clone()) == &a.dtype => {
                    pieces.push(Extent { blob: self.blob.clone(), offset: a.offset, len: a.len })
                }
                _ => dtype = Some(String::new()),
            }
        }
        let (Some(dims), Some(dtype)) = (dims, dtype.filter(|d| !d.is_empty())) else {
            let reason = "a chunked array whose shape or chunks are not what Flax writes".to_string();
            self.skipped.push(SkippedTensor::new(TensorId::Name(name.into()), reason.clone()));
            return json!({"__tensor__": name, "skipped": reason});
        };
        let joined = Concatenated::new(pieces);
        let len = joined.len();
        self.add(name, &dtype, dims, Arc::new(joined), len)
    }
}

/// Pieces served one after another as one run of bytes.
struct Concatenated {
    pieces: Vec<Extent>,
    /// Where each piece starts in the run.
    starts: Vec<u64>,
    total: u64,
}

impl Concatenated {
    fn new(pieces: Vec<Extent>) -> Concatenated {
        let mut starts = Vec::with_capacity(pieces.len());
        let mut total = 0u64;
        for piece in &pieces {
            starts.push(total);
            total = total.saturating_add(piece.len);
        }
        Concatenated { pieces, starts, total }
    }
}

impl TensorBytes for Concatenated {
    fn len(&self) -> u64 {
        self.total
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.starts.partition_point(|&s| s <= at) - 1;
            let within = at - self.starts[i];
            let n = ((self.pieces[i].len - within) as usize).min(buf.len() - done);
            self.pieces[i].read_at(within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}
