//! Quantized layers stored as safetensors tensors (docs/tree.md 7.3, docs/formats/quantized.md):
//! each scheme is recognised from the tensors and the quantization config; the float32 weight a
//! layer stands for is decoded on read, a run of whole rows at a time, into the chunk cache.
//!
//! A scheme's module finds its layers (`find`) and gives each an `Unpack`, which decodes rows
//! of the weight from the stored parts. Everything else (the `dequantized/` tensors, their
//! decode units, `info.json`'s `quantization` and `skipped`) is shared, and open to any reader
//! that can give a layer an `Unpack` (see `add_layers`).

mod affine;
mod bnb;
mod gptq;

use crate::cache::ChunkCache;
use crate::dtype::{DType, f16_to_f32};
use crate::error::ReadError;
use crate::model::{Model, Role, SkippedTensor, Tensor, TensorBytes, TensorId, split_name};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of float32 output decoded together and kept as one cache entry (as for GGUF blocks).
const DECODE_UNIT: u64 = 64 << 10;

/// Decodes rows of a layer's weight from its stored parts.
pub(crate) trait Unpack: Send + Sync {
    /// Decode units start at a multiple of this many rows (packings that put several rows in
    /// one stored word).
    fn row_align(&self) -> u64 {
        1
    }
    /// Rows worth decoding together at least: a layout stored column-wise reads every packed
    /// row for any run of rows, so short runs would read the same rows again and again.
    fn min_rows(&self) -> u64 {
        1
    }
    /// Decodes rows `[first, first + out.len() / cols)` of the weight (every dimension but the
    /// last counts as rows) into `out`.
    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError>;
}

/// A recognised quantized layer.
pub(crate) struct Layer {
    /// The unquantized model's name of the weight (`model.layers.0.mlp.up_proj.weight`).
    pub name: String,
    /// The unquantized weight's shape: `[out, in]` for a linear layer.
    pub shape: Vec<u64>,
    /// The stored tensors the weight is made from.
    pub parts: Vec<String>,
    pub unpack: Arc<dyn Unpack>,
}

/// A layer whose parts do not fit together: its weight's name and why.
pub(crate) struct Unfit {
    pub name: String,
    pub why: String,
}

impl Unfit {
    pub fn new(name: &str, why: impl Into<String>) -> Unfit {
        Unfit { name: name.to_string(), why: why.into() }
    }
}

/// What a scheme found in a model: the scheme's `info.json` `quantization` entry, its layers.
pub(crate) struct Found {
    pub info: Map<String, Value>,
    pub layers: Vec<Result<Layer, Unfit>>,
}

/// A stored tensor as the schemes see it.
#[derive(Clone)]
pub(crate) struct Part {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Arc<dyn TensorBytes>,
}

impl Part {
    /// Its bytes, whole (for the small parts read at mount: JSON states, shapes).
    pub fn read_all(&self) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; self.bytes.len() as usize];
        self.bytes.read_at(0, &mut buf)?;
        Ok(buf)
    }
}

/// The stored tensors of a model by name, and the cache decoded parts go to.
pub(crate) struct Stored<'a> {
    by_name: HashMap<&'a str, &'a Tensor>,
    pub cache: &'a Arc<ChunkCache>,
}

impl<'a> Stored<'a> {
    pub fn part(&self, name: &str) -> Option<Part> {
        self.by_name.get(name).map(|t| Part { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), bytes: t.bytes.clone() })
    }

    /// The names ending in `suffix`, as the module path before it, in the model's order.
    pub fn modules_with(&self, tensors: &'a [Tensor], suffix: &str) -> Vec<&'a str> {
        tensors.iter().filter_map(|t| t.name.strip_suffix(suffix)).filter(|m| self.by_name.contains_key(&*format!("{m}{suffix}"))).collect()
    }

    /// A part every scheme needs, or why the layer cannot be read.
    pub fn require(&self, weight: &str, name: &str) -> Result<Part, Unfit> {
        self.part(name).ok_or_else(|| Unfit::new(weight, format!("{name} is missing")))
    }
}

/// Names that only a quantized layer's parts have: a model without any has no config looked
/// for beside it (which, remote, costs requests).
const PART_SUFFIXES: [&str; 6] = [".qweight", ".weight_packed", ".weight_scale", ".weight_scale_inv", ".biases", ".SCB"];

/// True if some tensor of `names` may be part of a quantized layer.
pub(crate) fn may_be_quantized<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|name| PART_SUFFIXES.iter().any(|s| name.ends_with(s)) || name.contains(".quant_state.bitsandbytes__"))
}

/// Recognises the quantized layers of `model` (a safetensors model) from its tensors and
/// `config` (the quantization config found in or beside the file, `Value::Null` if none), and
/// adds their `dequantized/` tensors.
pub(crate) fn dequantize(model: &mut Model, config: &Value, cache: &Arc<ChunkCache>) {
    let found = {
        let stored = Stored { by_name: model.tensors.iter().map(|t| (t.name.as_str(), t)).collect(), cache };
        let method = config.get("quant_method").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        match method.as_str() {
            "gptq" => gptq::find_gptq(&stored, &model.tensors, config),
            "awq" => gptq::find_awq(&stored, &model.tensors, config),
            "compressed-tensors" => affine::find_compressed(&stored, &model.tensors, config),
            "bitsandbytes" => bnb::find(&stored, &model.tensors),
            "fp8" => affine::find_fp8(&stored, &model.tensors, config),
            // mlx-lm writes no quant_method: its config has `bits` and `group_size`.
            "" if config.get("bits").is_some() && config.get("group_size").is_some() => affine::find_mlx(&stored, &model.tensors, config),
            // Without a config, the schemes whose tensors say everything.
            "" => {
                let bnb = bnb::find(&stored, &model.tensors);
                if bnb.layers.is_empty() { affine::find_fp8(&stored, &model.tensors, config) } else { bnb }
            }
            other => {
                let mut info = Map::new();
                info.insert("method".into(), Value::from(other));
                info.insert("reason".into(), Value::from("wfs does not dequantize this scheme; its stored parts are in tensors/"));
                Found { info, layers: Vec::new() }
            }
        }
    };
    if found.layers.is_empty() && !found.info.contains_key("reason") {
        return;
    }
    add_layers(model, found, cache);
}

/// Adds `found`'s layers to `model`: each as a float32 tensor at `dequantized/<name>`, its
/// parts marked as such; the unfit ones to `skipped`. Any reader with layers calls this.
pub(crate) fn add_layers(model: &mut Model, found: Found, cache: &Arc<ChunkCache>) {
    let mut info = found.info;
    let mut parts = std::collections::HashSet::new();
    let mut count = 0usize;
    for layer in found.layers {
        match layer {
            Ok(layer) => {
                parts.extend(layer.parts);
                let decoded = Decoded::new(&layer.shape, layer.unpack, cache.clone());
                let mut tensor = Tensor::named(&layer.name, DType::F32, layer.shape, Arc::new(decoded));
                tensor.path = split_name("dequantized", &layer.name);
                tensor.role = Role::Dequantized;
                model.tensors.push(tensor);
                count += 1;
            }
            Err(unfit) => model.skipped.push(SkippedTensor::new(TensorId::Name(unfit.name), unfit.why)),
        }
    }
    for tensor in &mut model.tensors {
        if parts.contains(&tensor.name) && tensor.role == Role::Plain {
            tensor.role = Role::QuantizedPart;
        }
    }
    info.insert("layers".into(), Value::from(count));
    model.info.insert("quantization".into(), Value::Object(info));
}

/// The float32 values of a layer, decoded `unit_rows` rows at a time into the chunk cache.
struct Decoded {
    rows: u64,
    cols: u64,
    unit_rows: u64,
    unpack: Arc<dyn Unpack>,
    cache: Arc<ChunkCache>,
    cache_id: u64,
}

impl Decoded {
    fn new(shape: &[u64], unpack: Arc<dyn Unpack>, cache: Arc<ChunkCache>) -> Decoded {
        let cols = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().rev().skip(1).product();
        let unit_rows = (DECODE_UNIT / (4 * cols).max(1)).max(unpack.min_rows()).next_multiple_of(unpack.row_align().max(1));
        let cache_id = cache.new_id();
        Decoded { rows, cols, unit_rows, unpack, cache, cache_id }
    }

    fn decode(&self, unit: u64) -> Result<Vec<u8>, ReadError> {
        let first = unit * self.unit_rows;
        let rows = self.unit_rows.min(self.rows - first);
        let mut values = vec![0f32; (rows * self.cols) as usize];
        self.unpack.rows(first, &mut values)?;
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

impl TensorBytes for Decoded {
    fn len(&self) -> u64 {
        self.rows * self.cols * 4
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let unit_len = self.unit_rows * self.cols * 4;
        self.cache.read_units(self.cache_id, unit_len, offset, buf, |unit| self.decode(unit))
    }
}

/// A small part (scales, zeros, a group map) read whole once, on first use, and kept in the
/// chunk cache: as float32 values (`floats`) or as stored (`raw`).
pub(crate) struct Whole {
    part: Part,
    floats: bool,
    cache: Arc<ChunkCache>,
    cache_id: u64,
}

impl Whole {
    /// A float part (F32, F16, BF16, 8-bit floats), read as float32 values.
    pub fn floats(part: Part, cache: &Arc<ChunkCache>) -> Whole {
        Whole { part, floats: true, cache: cache.clone(), cache_id: cache.new_id() }
    }

    /// A part read as stored (integers).
    pub fn raw(part: Part, cache: &Arc<ChunkCache>) -> Whole {
        Whole { part, floats: false, cache: cache.clone(), cache_id: cache.new_id() }
    }

    pub fn part_name(&self) -> &str {
        &self.part.name
    }

    pub fn get(&self) -> Result<Arc<[u8]>, ReadError> {
        self.cache.get_or_load((self.cache_id, 0), || {
            let raw = self.part.read_all()?;
            if !self.floats {
                return Ok(raw);
            }
            let values = to_f32(self.part.dtype, &raw).ok_or_else(|| ReadError::Corrupt(format!("{} is not a float tensor", self.part.name)))?;
            Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        })
    }
}

/// True if `dtype` is a float type `to_f32` reads.
pub(crate) fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3FN | DType::F8E5M2 | DType::F8E8M0FNU)
}

/// Float values of any float dtype as float32 (all exact).
pub(crate) fn to_f32(dtype: DType, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        DType::F16 => raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        DType::BF16 | DType::F8E4M3FN | DType::F8E5M2 | DType::F8E8M0FNU => {
            let mut out = vec![0f32; raw.len() / dtype.size()];
            dtype.widen(raw, &mut out);
            out
        }
        _ => return None,
    })
}

/// Float32 value `i` of little-endian bytes.
pub(crate) fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

/// 32-bit word `i` of little-endian bytes.
pub(crate) fn u32_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

/// The `bits`-bit field (at most 8 bits) at bit `bit` of a least-significant-bit-first stream
/// of 32-bit words, `word(i)` being the stream's i-th word: a field may span two words.
pub(crate) fn field(word: impl Fn(usize) -> u32, bit: u64, bits: u32) -> u32 {
    let (w, shift) = ((bit / 32) as usize, (bit % 32) as u32);
    let mut value = word(w) >> shift;
    if shift + bits > 32 {
        value |= word(w + 1) << (32 - shift);
    }
    value & ((1 << bits) - 1)
}

/// Rows `[first, first + rows)` of a row-major part with `row_bytes` bytes a row.
pub(crate) fn read_rows(part: &Part, first: u64, rows: u64, row_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let mut buf = vec![0u8; (rows * row_bytes) as usize];
    part.bytes.read_at(first * row_bytes, &mut buf)?;
    Ok(buf)
}

/// Bytes `[begin, begin + len)` of every row of a row-major part with `row_bytes` bytes a row,
/// one after another: a band of columns.
pub(crate) fn read_columns(part: &Part, row_bytes: u64, begin: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    let rows = part.bytes.len().checked_div(row_bytes).unwrap_or(0);
    if len == row_bytes {
        return read_rows(part, 0, rows, row_bytes);
    }
    let mut buf = vec![0u8; (rows * len) as usize];
    for (r, chunk) in buf.chunks_exact_mut(len as usize).enumerate() {
        part.bytes.read_at(r as u64 * row_bytes + begin, chunk)?;
    }
    Ok(buf)
}

/// An unsigned integer of a config, if present.
pub(crate) fn config_u64(config: &Value, key: &str) -> Option<u64> {
    config.get(key).and_then(Value::as_u64)
}

/// `shape` as the text refusals show.
pub(crate) fn shape_str(shape: &[u64]) -> String {
    format!("[{}]", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_span_words_least_significant_bit_first() {
        // 3-bit values 0..=7 then 0..=7 ... packed as one stream: value 10 straddles words 0 and 1.
        let values: Vec<u32> = (0..32).map(|i| i % 8).collect();
        let mut words = [0u32; 3];
        for (i, &v) in values.iter().enumerate() {
            let bit = 3 * i;
            words[bit / 32] |= v << (bit % 32);
            if bit % 32 + 3 > 32 {
                words[bit / 32 + 1] |= v >> (32 - bit % 32);
            }
        }
        let got: Vec<u32> = (0..32).map(|i| field(|w| words[w], 3 * i as u64, 3)).collect();
        assert_eq!(got, values);
    }
}
