//! bitsandbytes layers (docs/formats/quantized.md#bitsandbytes): 4-bit NF4/FP4 codes, two to a
//! byte, high nibble first, with one absmax per block of the flattened weight (itself 8-bit
//! quantized under double quantization), described by a JSON quant state stored as a tensor;
//! and LLM.int8 (`Linear8bitLt`) rows of int8 with a per-row absmax `SCB`.

use super::{Found, Layer, Part, Stored, Unfit, Unpack, Whole, f32_at, read_rows, shape_str};
use crate::cache::ChunkCache;
use crate::dtype::DType;
use crate::error::ReadError;
use crate::model::Tensor;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The suffixes of the quant state tensor of each 4-bit type.
const STATES: [&str; 2] = [".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"];

/// Largest quant state read (it is a short JSON object).
const MAX_STATE: u64 = 1 << 16;

/// bitsandbytes layers: each weight with a 4-bit quant state, each module with an `SCB`.
pub(crate) fn find(stored: &Stored, tensors: &[Tensor]) -> Found {
    let mut layers: Vec<Result<Layer, Unfit>> = Vec::new();
    let mut kinds = Vec::new();
    for suffix in STATES {
        for weight in stored.modules_with(tensors, suffix) {
            let layer = four_bit(stored, weight, &format!("{weight}{suffix}"));
            if let Ok((kind, _)) = &layer {
                kinds.push(kind.clone());
            }
            layers.push(layer.map(|(_, layer)| layer));
        }
    }
    for module in stored.modules_with(tensors, ".SCB") {
        layers.push(int8(stored, module));
        kinds.push(json!({"quant_type": "llm_int8"}));
    }
    kinds.dedup();
    let mut info = Map::new();
    info.insert("method".into(), json!("bitsandbytes"));
    info.insert("types".into(), Value::Array(kinds));
    Found { info, layers }
}

/// A 4-bit layer from its quant state: what `info.json` shows of it, and the layer.
fn four_bit(stored: &Stored, weight: &str, state_name: &str) -> Result<(Value, Layer), Unfit> {
    let unfit = |why: String| Unfit::new(weight, why);
    let state_part = stored.require(weight, state_name)?;
    if state_part.bytes.len() > MAX_STATE {
        return Err(unfit(format!("{state_name} is over {MAX_STATE} bytes")));
    }
    let state: Value = state_part.read_all().ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| unfit(format!("{state_name} is not a JSON quant state")))?;
    let quant_type = state.get("quant_type").and_then(Value::as_str).unwrap_or_default();
    let blocksize = state.get("blocksize").and_then(Value::as_u64).filter(|&b| b > 0).ok_or_else(|| unfit(format!("{state_name} has no blocksize")))?;
    let shape: Vec<u64> = state
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(Value::as_u64).collect())
        .ok_or_else(|| unfit(format!("{state_name} has no shape")))?;
    if !["nf4", "fp4"].contains(&quant_type) {
        return Err(unfit(format!("quant type {quant_type:?} is not nf4 or fp4")));
    }
    let numel = Tensor::element_count(&shape).filter(|&n| n < 1 << 50).ok_or_else(|| unfit(format!("shape {} overflows", shape_str(&shape))))?;
    let packed = stored.require(weight, weight)?;
    if packed.bytes.len() != numel.div_ceil(2) {
        return Err(unfit(format!("{weight} has {} bytes, where {numel} 4-bit codes take {}", packed.bytes.len(), numel.div_ceil(2))));
    }
    let blocks = numel.div_ceil(blocksize);
    let quant_map = stored.require(weight, &format!("{weight}.quant_map"))?;
    if quant_map.dtype != DType::F32 || quant_map.shape != [16] {
        return Err(unfit(format!("{} is {} {}, not float32 [16]", quant_map.name, quant_map.dtype.name(), shape_str(&quant_map.shape))));
    }
    let absmax = stored.require(weight, &format!("{weight}.absmax"))?;
    let mut parts = vec![packed.name.clone(), state_part.name.clone(), quant_map.name.clone(), absmax.name.clone()];
    let absmax = match absmax.dtype {
        DType::F32 if absmax.shape == [blocks] => Absmax::Plain(Whole::floats(absmax, stored.cache)),
        DType::U8 if absmax.shape == [blocks] => {
            let nested_block = state.get("nested_blocksize").and_then(Value::as_u64).filter(|&b| b > 0).ok_or_else(|| unfit(format!("{state_name} has no nested_blocksize")))?;
            let offset = state.get("nested_offset").and_then(Value::as_f64).ok_or_else(|| unfit(format!("{state_name} has no nested_offset")))? as f32;
            let nested = stored.require(weight, &format!("{weight}.nested_absmax"))?;
            let map = stored.require(weight, &format!("{weight}.nested_quant_map"))?;
            if nested.dtype != DType::F32 || nested.shape != [blocks.div_ceil(nested_block)] || map.dtype != DType::F32 || map.shape != [256] {
                return Err(unfit(format!("{} and {} are not float32 [{}] and [256]", nested.name, map.name, blocks.div_ceil(nested_block))));
            }
            parts.extend([nested.name.clone(), map.name.clone()]);
            let nested = Nested { codes: absmax, absmax: nested, map, block: nested_block, offset, cache: stored.cache.clone(), cache_id: stored.cache.new_id() };
            Absmax::Nested(nested)
        }
        _ => return Err(unfit(format!("{} is {} {}, where float32 or uint8 [{blocks}] was due", absmax.name, absmax.dtype.name(), shape_str(&absmax.shape)))),
    };
    let info = json!({"quant_type": quant_type, "blocksize": blocksize, "double_quant": matches!(absmax, Absmax::Nested(_))});
    let cols = shape.last().copied().unwrap_or(1);
    let unpack = FourBit { packed, cols, blocksize, quant_map: Whole::floats(quant_map, stored.cache), absmax };
    Ok((info, Layer { name: weight.to_string(), shape, parts, unpack: Arc::new(unpack) }))
}

/// One absmax per block of the flattened weight.
enum Absmax {
    Plain(Whole),
    /// Double quantization: 8-bit codes into `map`, scaled per `block` codes by `absmax`, plus
    /// `offset` (bitsandbytes `dequantize_blockwise` then `+= offset`, in float32).
    Nested(Nested),
}

struct Nested {
    codes: Part,
    absmax: Part,
    map: Part,
    block: u64,
    offset: f32,
    cache: Arc<ChunkCache>,
    cache_id: u64,
}

impl Absmax {
    /// Every block's absmax as float32 bytes, computed once and kept in the chunk cache.
    fn get(&self) -> Result<Arc<[u8]>, ReadError> {
        match self {
            Absmax::Plain(whole) => whole.get(),
            Absmax::Nested(n) => n.cache.get_or_load((n.cache_id, 0), || {
                let (codes, absmax, map) = (n.codes.read_all()?, n.absmax.read_all()?, n.map.read_all()?);
                let values = codes.iter().enumerate().map(|(j, &c)| f32_at(&map, usize::from(c)) * f32_at(&absmax, j / n.block as usize) + n.offset);
                Ok(values.flat_map(f32::to_le_bytes).collect::<Vec<u8>>())
            }),
        }
    }
}

/// A 4-bit layer: flattened element `i` is nibble `i % 2` (the high one first) of byte `i / 2`,
/// worth `quant_map[code] × absmax[i / blocksize]`.
struct FourBit {
    packed: Part,
    cols: u64,
    blocksize: u64,
    quant_map: Whole,
    absmax: Absmax,
}

impl Unpack for FourBit {
    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let begin = first * self.cols;
        let end = begin + out.len() as u64;
        let mut data = vec![0u8; (end.div_ceil(2) - begin / 2) as usize];
        self.packed.bytes.read_at(begin / 2, &mut data)?;
        let (map, absmax) = (self.quant_map.get()?, self.absmax.get()?);
        for (i, value) in (begin..end).zip(out.iter_mut()) {
            let byte = data[(i / 2 - begin / 2) as usize];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
            *value = f32_at(&map, usize::from(code)) * f32_at(&absmax, (i / self.blocksize) as usize);
        }
        Ok(())
    }
}

/// An LLM.int8 layer: `weight` int8 `[out, in]` and `SCB` float32 `[out]`.
fn int8(stored: &Stored, module: &str) -> Result<Layer, Unfit> {
    let weight = format!("{module}.weight");
    let unfit = |why: String| Unfit::new(&weight, why);
    let w = stored.require(&weight, &weight)?;
    let scb = stored.require(&weight, &format!("{module}.SCB"))?;
    let [rows, cols] = w.shape[..] else { return Err(unfit(format!("{weight} is {}, not 2-d", shape_str(&w.shape)))) };
    if w.dtype != DType::I8 || scb.dtype != DType::F32 || scb.shape != [rows] {
        return Err(unfit(format!("{weight} and {} are {} and {} {}, where int8 and float32 [{rows}] were due", scb.name, w.dtype.name(), scb.dtype.name(), shape_str(&scb.shape))));
    }
    let mut parts = vec![w.name.clone(), scb.name.clone()];
    if let Some(format) = stored.part(&format!("{weight}_format")) {
        // 0 = row-major; the others are tile layouts of old GPU kernels.
        if format.read_all().ok().as_deref() != Some(&[0]) {
            return Err(unfit(format!("{} is not 0 (row): a GPU tile layout", format.name)));
        }
        parts.push(format.name.clone());
    }
    let unpack = Int8 { weight: w, cols, scb: Whole::floats(scb, stored.cache) };
    Ok(Layer { name: weight.clone(), shape: vec![rows, cols], parts, unpack: Arc::new(unpack) })
}

/// bitsandbytes' `int8_vectorwise_dequant`: `A × SCB[n] × 7.874015718698502e-3`, the Python
/// float rounded to float32 as torch does for a float32 tensor.
const INV_127: f32 = 7.874_015_718_698_502e-3_f64 as f32;

struct Int8 {
    weight: Part,
    cols: u64,
    scb: Whole,
}

impl Unpack for Int8 {
    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let n = out.len() as u64 / self.cols;
        let data = read_rows(&self.weight, first, n, self.cols)?;
        let scb = self.scb.get()?;
        for (j, (row, codes)) in out.chunks_exact_mut(self.cols as usize).zip(data.chunks_exact(self.cols as usize)).enumerate() {
            let s = f32_at(&scb, first as usize + j);
            for (value, &q) in row.iter_mut().zip(codes) {
                *value = f32::from(q as i8) * s * INV_127;
            }
        }
        Ok(())
    }
}
