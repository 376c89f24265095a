//! The format-neutral model: tensors (dtype, shape, where their bytes are) plus files such as
//! configs, as every format reader produces it and the tree consumes it.

use crate::dtype::DType;
use crate::error::ReadError;
use crate::source::Blob;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Produces a tensor's `.raw` bytes: C order, little-endian, `len()` bytes in all.
pub trait TensorBytes: Send + Sync {
    fn len(&self) -> u64;
    /// Fills `buf` with the bytes at `[offset, offset + buf.len())`, which lies inside `len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
    /// Where the bytes lie as-is in a source file, for users: `None` when they are decoded
    /// (or held in memory).
    fn location(&self) -> Option<Location> {
        None
    }
}

pub use crate::source::Location;

/// Bytes stored as-is in a blob at `[offset, offset + len)`: served by `pread`, never copied.
pub struct Extent {
    pub blob: Blob,
    pub offset: u64,
    pub len: u64,
}

impl TensorBytes for Extent {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.blob.read_at(self.offset + offset, buf)
    }
    fn location(&self) -> Option<Location> {
        self.blob.location(self.offset, self.len)
    }
}

/// Small tensors and files whose bytes were produced at mount (strings, compact datasets).
pub struct InMemory(pub Arc<[u8]>);

impl TensorBytes for InMemory {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

/// Big-endian source data, swapped per element on every read.
pub struct ByteSwapped {
    pub inner: Arc<dyn TensorBytes>,
    /// Bytes per swapped unit (the element size; half of it for complex numbers).
    pub unit: usize,
}

impl TensorBytes for ByteSwapped {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let unit = self.unit as u64;
        let start = offset / unit * unit;
        let end = (offset + buf.len() as u64).div_ceil(unit) * unit;
        let mut aligned = vec![0u8; (end - start) as usize];
        self.inner.read_at(start, &mut aligned)?;
        for element in aligned.chunks_exact_mut(self.unit) {
            element.reverse();
        }
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&aligned[skip..skip + buf.len()]);
        Ok(())
    }
}

/// One tensor of the model.
#[derive(Clone)]
pub struct Tensor {
    /// Path below the mount root, as raw source names (sanitised when the tree is built).
    pub path: Vec<String>,
    /// The tensor's own name in the source (docs/tree.md 7.1: `tensors.tsv`'s fifth column and
    /// `user.wfs.name`). Empty for Keras and TensorFlow sources, whose name is the tensor's
    /// path in the tree below its top level, filled in by the tree.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// The `.raw` bytes.
    pub bytes: Arc<dyn TensorBytes>,
    /// The `.npy` data section (float32 values) of a `DType::Block` tensor, decoded by its
    /// reader; `None` leaves such a tensor without `.npy`. Other types derive `.npy` from `.raw`.
    pub decoded: Option<Arc<dyn TensorBytes>>,
    /// Further extended attributes of the tensor's files, as (full name, value): what a format
    /// records per tensor beyond dtype and shape (TFLite quantization parameters).
    pub extra_attrs: Vec<(String, String)>,
    /// The source gives this tensor no name (an unnamed TFLite tensor): `name` stays empty in
    /// the tree instead of taking the tensor's path.
    pub nameless: bool,
    /// Its part in a quantized layer (docs/tree.md 7.3), which decides where `model.safetensors`
    /// holds it.
    pub role: Role,
}

/// What a tensor is to the quantized layers of its model (docs/tree.md 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// An ordinary tensor.
    #[default]
    Plain,
    /// A stored part of a quantized layer (GPTQ `qweight`, MLX `scales`, ...): in
    /// `model.safetensors`, left out when it holds the dequantized model instead.
    QuantizedPart,
    /// A layer's values computed from its parts, under `dequantized/`: in `model.safetensors`
    /// only when it holds the dequantized model, in place of the parts.
    Dequantized,
}

impl Tensor {
    /// A tensor whose name is its path in the tree.
    pub fn new(path: Vec<String>, dtype: DType, shape: Vec<u64>, bytes: Arc<dyn TensorBytes>) -> Tensor {
        Tensor { path, name: String::new(), dtype, shape, bytes, decoded: None, extra_attrs: Vec::new(), nameless: false, role: Role::Plain }
    }

    /// A tensor of a format whose names are its own (docs/tree.md 7.1): placed at
    /// `tensors/<name split on '/' and '.'>`.
    pub fn named(name: &str, dtype: DType, shape: Vec<u64>, bytes: Arc<dyn TensorBytes>) -> Tensor {
        Tensor { name: name.to_string(), ..Tensor::new(split_name("tensors", name), dtype, shape, bytes) }
    }

    /// A tensor the source leaves unnamed, placed at `path` (its `name` column stays empty).
    pub fn nameless(path: Vec<String>, dtype: DType, shape: Vec<u64>, bytes: Arc<dyn TensorBytes>) -> Tensor {
        Tensor { nameless: true, ..Tensor::new(path, dtype, shape, bytes) }
    }

    /// Number of elements, or `None` if the shape's product overflows.
    pub fn element_count(shape: &[u64]) -> Option<u64> {
        shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// The `.raw` size the shape implies, or `None` on overflow (or, for packed and block
    /// types, when the elements fill no whole number of blocks).
    pub fn raw_size(dtype: DType, shape: &[u64]) -> Option<u64> {
        dtype.raw_len(Self::element_count(shape)?)
    }

    /// Bytes of the `.npy` data section, or `None` when the tensor has no `.npy`.
    pub fn npy_data_len(&self) -> Option<u64> {
        match self.dtype {
            DType::Block { .. } => self.decoded.as_ref().map(|d| d.len()),
            dtype => {
                let (per_block, bytes) = dtype.block();
                Some(self.bytes.len() / bytes * per_block * dtype.npy_size() as u64)
            }
        }
    }

    /// Fills `out` with the bytes of the `.npy` data section at `offset` (which lies inside
    /// `npy_data_len()`): `.raw` as it is, widened to float32, or decoded by the tensor's reader.
    pub fn read_npy_data(&self, offset: u64, out: &mut [u8]) -> Result<(), ReadError> {
        match (&self.decoded, self.dtype.widens()) {
            (Some(decoded), _) => decoded.read_at(offset, out),
            (None, false) => self.bytes.read_at(offset, out),
            (None, true) => read_widened(self.dtype, self.bytes.as_ref(), offset, out),
        }
    }
}

/// Float32 values at byte `offset` of a widened tensor's data, from the whole blocks of stored
/// bits under that range.
fn read_widened(dtype: DType, raw: &dyn TensorBytes, offset: u64, out: &mut [u8]) -> Result<(), ReadError> {
    let (per_block, block_bytes) = dtype.block();
    let block_values = per_block * 4;
    let first = offset / block_values;
    let last = (offset + out.len() as u64).div_ceil(block_values);
    let mut stored = vec![0u8; ((last - first) * block_bytes) as usize];
    raw.read_at(first * block_bytes, &mut stored)?;
    let mut values = vec![0f32; ((last - first) * per_block) as usize];
    dtype.widen(&stored, &mut values);
    let skip = (offset - first * block_values) as usize;
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).skip(skip);
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b;
    }
    Ok(())
}

/// `[top, components...]`: a source's own tensor name split into path components on `/` and
/// `.` (docs/tree.md 7.1); the tree makes each component safe.
pub fn split_name(top: &str, name: &str) -> Vec<String> {
    std::iter::once(top).chain(name.split(['/', '.'])).map(str::to_string).collect()
}

/// A plain file of the tree (config.json, a layer's config, an asset).
#[derive(Clone)]
pub struct ModelFile {
    pub path: Vec<String>,
    pub bytes: Arc<dyn TensorBytes>,
}

/// A symlink of the tree; both ends are raw source paths from the mount root.
#[derive(Clone)]
pub struct ModelLink {
    pub path: Vec<String>,
    pub target: Vec<String>,
}

/// What a format reader hands to the tree.
#[derive(Default)]
pub struct Model {
    /// `info.json` fields after `format` and `source`, in order.
    pub info: Map<String, Value>,
    pub format: String,
    pub tensors: Vec<Tensor>,
    pub files: Vec<ModelFile>,
    pub links: Vec<ModelLink>,
    /// Directories that must exist even when nothing is inside (weightless layers).
    pub dirs: Vec<Vec<String>>,
    /// Models mounted below the root with a top level of their own.
    pub parts: Vec<Part>,
    /// Tensors of the source left out of the tree (`info.json`'s `skipped`, after `info`).
    pub skipped: Vec<SkippedTensor>,
}

/// A tensor the source holds but the tree leaves out, and why.
pub struct SkippedTensor {
    pub id: TensorId,
    pub reason: String,
}

/// How `info.json` names a skipped tensor: as its format names tensors.
pub enum TensorId {
    /// Its path in the tree (HDF5 and Keras files).
    Path(String),
    /// Its own name in the source (NumPy, ONNX, PyTorch).
    Name(String),
    /// Its name and its index in its subgraph (TFLite).
    Indexed { name: String, index: usize },
    /// Its key in a TensorFlow bundle (checkpoints, SavedModels).
    Key(String),
}

impl SkippedTensor {
    pub fn new(id: TensorId, reason: impl Into<String>) -> SkippedTensor {
        SkippedTensor { id, reason: reason.into() }
    }

    /// The tensor's entry in `info.json`'s `skipped` list.
    pub fn to_json(&self) -> Value {
        let mut entry = Map::new();
        match &self.id {
            TensorId::Path(path) => entry.insert("path".into(), Value::from(path.as_str())),
            TensorId::Name(name) => entry.insert("name".into(), Value::from(name.as_str())),
            TensorId::Indexed { name, index } => {
                entry.insert("name".into(), Value::from(name.as_str()));
                entry.insert("index".into(), Value::from(*index))
            }
            TensorId::Key(key) => entry.insert("key".into(), Value::from(key.as_str())),
        };
        entry.insert("reason".into(), Value::from(self.reason.as_str()));
        Value::Object(entry)
    }
}

/// A model with its own top level below the root (one checkpoint of a directory): the tree
/// gives it an `info.json` (this info, then its tensor count and bytes) and a `tensors.tsv`.
pub struct Part {
    pub path: Vec<String>,
    pub info: Map<String, Value>,
    /// Its tensors left out of the tree, as `Model::skipped`.
    pub skipped: Vec<SkippedTensor>,
}

impl Model {
    pub fn add_file(&mut self, path: Vec<String>, bytes: Vec<u8>) {
        self.files.push(ModelFile { path, bytes: Arc::new(InMemory(bytes.into())) });
    }

    /// A JSON file, pretty-printed with a final newline.
    pub fn add_json(&mut self, path: Vec<String>, value: &Value) {
        self.add_file(path, json_text(value));
    }
}

/// How every JSON file of the tree is written: pretty-printed, with a final newline.
pub fn json_text(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Joins a prefix and further components into a path.
pub fn path_of(prefix: &[&str], rest: &[String]) -> Vec<String> {
    prefix.iter().map(|s| s.to_string()).chain(rest.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries readers wrote by hand before the list was typed, byte for byte.
    #[test]
    fn skipped_entries_keep_each_format_s_fields_and_order() {
        let text = |id, reason: &str| serde_json::to_string(&SkippedTensor::new(id, reason).to_json()).unwrap();
        assert_eq!(text(TensorId::Path("datasets/far".into()), "r"), r#"{"path":"datasets/far","reason":"r"}"#);
        assert_eq!(text(TensorId::Name("w".into()), "r"), r#"{"name":"w","reason":"r"}"#);
        assert_eq!(text(TensorId::Indexed { name: "t".into(), index: 7 }, "r"), r#"{"name":"t","index":7,"reason":"r"}"#);
        assert_eq!(text(TensorId::Key("a/b".into()), "r"), r#"{"key":"a/b","reason":"r"}"#);
    }
}
