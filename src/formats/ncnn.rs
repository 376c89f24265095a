//! ncnn models (docs/formats/ncnn.md): the text `.param` file (magic line `7767517`, one line
//! per layer with its integer-keyed parameters) and the `.bin` beside it, which holds every
//! layer's arrays in layer order, each layer reading its own in its `load_model` order. Sizes
//! and shapes come from the parameters. Arrays are served in place (float32, float16, int8);
//! table-quantized ones decode through their 256-entry table on read. Tensors are named
//! `<layer index>_<type>/<ncnn member name>` (layer names are often bare numbers).

use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{Extent, Model, Tensor, TensorBytes};
use crate::source::{Blob, Dir};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The first line of a text `.param` file.
pub const MAGIC: &str = "7767517";
/// Largest `.param` file read.
const MAX_PARAM: u64 = 64 << 20;
/// Layers and blobs a file may declare (ncnn has no limit; this bounds a hostile count).
const MAX_LAYERS: u64 = 1 << 20;

/// `alignSize(n, 4)`.
fn padded(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// Whether `head` (a file's first bytes) is a text `.param` file.
pub fn sniff(head: &[u8]) -> bool {
    head.strip_prefix(MAGIC.as_bytes()).is_some_and(|rest| matches!(rest.first(), Some(b'\n' | b'\r')))
}

/// One parameter's value: ints, floats, or an array of either.
#[derive(Clone)]
enum Param {
    Int(i64),
    Float(f64),
    Array(Vec<f64>),
}

impl Param {
    fn json(&self) -> Value {
        match self {
            Param::Int(i) => json!(i),
            Param::Float(f) => json!(f),
            Param::Array(a) => json!(a),
        }
    }
}

struct Layer {
    kind: String,
    name: String,
    bottoms: Vec<String>,
    tops: Vec<String>,
    params: Vec<(u32, Param)>,
}

impl Layer {
    /// Integer parameter `key`, or `default`. A float given where ncnn reads an int is
    /// truncated, as ncnn's `ParamDict::get` does.
    fn int(&self, key: u32, default: i64) -> i64 {
        match self.params.iter().find(|(k, _)| *k == key).map(|(_, v)| v) {
            Some(Param::Int(i)) => *i,
            Some(Param::Float(f)) => *f as i64,
            _ => default,
        }
    }
}

fn parse_value(text: &str) -> Option<Param> {
    let is_float = text.contains(['.', 'e', 'E']);
    if is_float { text.parse().ok().map(Param::Float) } else { text.parse().ok().map(Param::Int) }
}

/// `k=v` or `-233kk=n,v1,...,vn` (array parameter `kk`).
fn parse_param(word: &str) -> Option<(u32, Param)> {
    let (key, value) = word.split_once('=')?;
    let key: i64 = key.parse().ok()?;
    if key <= -23300 {
        let mut items = value.split(',');
        let count: usize = items.next()?.trim().parse().ok()?;
        let values: Vec<f64> = items.map(|v| v.trim().parse().ok()).collect::<Option<_>>()?;
        return (values.len() == count).then_some(((-key - 23300) as u32, Param::Array(values)));
    }
    Some((u32::try_from(key).ok()?, parse_value(value)?))
}

fn parse(text: &str) -> Result<(u64, Vec<Layer>), OpenError> {
    let bad = |line: usize, what: &str| OpenError::corrupt(format!("ncnn: .param line {line}: {what}"));
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
    lines.next();
    let (at, counts) = lines.next().ok_or_else(|| bad(2, "no layer and blob counts"))?;
    let counts: Vec<u64> = counts.split_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(|_| bad(at, "the counts are not numbers"))?;
    let [layer_count, blob_count] = counts[..] else { return Err(bad(at, "expected two counts")) };
    if layer_count > MAX_LAYERS || blob_count > MAX_LAYERS {
        return Err(bad(at, &format!("{layer_count} layers and {blob_count} blobs (at most {MAX_LAYERS})")));
    }
    let mut layers = Vec::new();
    for (at, line) in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [kind, name, inputs, outputs, rest @ ..] = &words[..] else { return Err(bad(at, "a layer line needs type, name and blob counts")) };
        let count = |w: &str| w.parse::<usize>().ok().filter(|&n| n <= rest.len());
        let (Some(inputs), Some(outputs)) = (count(inputs), count(outputs)) else { return Err(bad(at, "blob counts are wrong")) };
        if inputs + outputs > rest.len() {
            return Err(bad(at, "fewer blob names than its counts"));
        }
        let params = rest[inputs + outputs..].iter().map(|w| parse_param(w).ok_or_else(|| bad(at, &format!("parameter {w:?} is not k=v")))).collect::<Result<_, _>>()?;
        layers.push(Layer {
            kind: kind.to_string(),
            name: name.to_string(),
            bottoms: rest[..inputs].iter().map(|s| s.to_string()).collect(),
            tops: rest[inputs..inputs + outputs].iter().map(|s| s.to_string()).collect(),
            params,
        });
    }
    if layers.len() as u64 != layer_count {
        return Err(OpenError::corrupt(format!("ncnn: the .param declares {layer_count} layers but lists {}", layers.len())));
    }
    Ok((blob_count, layers))
}

/// How one array is stored: `Auto` arrays (ncnn's type 0) start with a 4-byte tag saying how.
#[derive(Clone, Copy, PartialEq)]
enum Stored {
    Auto,
    Raw,
}

/// One array a layer reads: its member name, stored kind, shape (elements in C order).
struct Wanted {
    member: &'static str,
    stored: Stored,
    shape: Vec<u64>,
}

fn want(member: &'static str, stored: Stored, shape: Vec<u64>) -> Wanted {
    Wanted { member, stored, shape }
}

/// The arrays a layer reads from the `.bin`, in its `load_model` order; `None` for a type whose
/// order wfs does not know.
fn arrays_of(layer: &Layer) -> Result<Option<Vec<Wanted>>, String> {
    let p = |key, default| layer.int(key, default);
    let size = |value: i64, what: &str| u64::try_from(value).map_err(|_| format!("layer {}: {what} is {value}", layer.name));
    let raw = Stored::Raw;
    Ok(Some(match layer.kind.as_str() {
        "Convolution" | "ConvolutionDepthWise" | "Deconvolution" | "DeconvolutionDepthWise" | "Convolution1D" | "Convolution3D" => {
            // A dynamic-weight convolution takes its weights from a second input.
            if p(19, 0) != 0 {
                return Ok(Some(Vec::new()));
            }
            let outputs = size(p(0, 0), "num_output")?;
            let weights = size(p(6, 0), "weight_data_size")?;
            let (kw, kh) = (size(p(1, 0), "kernel_w")?, size(p(11, p(1, 0)), "kernel_h")?);
            // Convolution's weight is (out, in/group, kh, kw); other layouts stay flat.
            let shape = match layer.kind.as_str() {
                "Convolution" | "ConvolutionDepthWise" if outputs * kw * kh > 0 && weights % (outputs * kw * kh) == 0 => {
                    vec![outputs, weights / (outputs * kw * kh), kh, kw]
                }
                _ => vec![weights],
            };
            let mut list = vec![want("weight_data", Stored::Auto, shape)];
            if p(5, 0) != 0 {
                list.push(want("bias_data", raw, vec![outputs]));
            }
            let int8 = p(8, 0);
            if int8 != 0 {
                let per = if layer.kind.ends_with("DepthWise") { if int8 == 2 || int8 == 102 { 1 } else { size(p(7, 1), "group")? } } else { outputs };
                list.push(want("weight_data_int8_scales", raw, vec![per]));
                list.push(want("bottom_blob_int8_scales", raw, vec![1]));
            }
            if int8 > 100 {
                list.push(want("top_blob_int8_scales", raw, vec![1]));
            }
            list
        }
        "InnerProduct" => {
            let outputs = size(p(0, 0), "num_output")?;
            let weights = size(p(2, 0), "weight_data_size")?;
            let shape = if outputs > 0 && weights % outputs == 0 { vec![outputs, weights / outputs] } else { vec![weights] };
            let mut list = vec![want("weight_data", Stored::Auto, shape)];
            if p(1, 0) != 0 {
                list.push(want("bias_data", raw, vec![outputs]));
            }
            if p(8, 0) != 0 {
                list.push(want("weight_data_int8_scales", raw, vec![outputs]));
                list.push(want("bottom_blob_int8_scales", raw, vec![1]));
            }
            list
        }
        "BatchNorm" => {
            let c = size(p(0, 0), "channels")?;
            ["slope_data", "mean_data", "var_data", "bias_data"].into_iter().map(|m| want(m, raw, vec![c])).collect()
        }
        "Scale" => {
            // -233: the scale comes from a second input.
            let n = p(0, 0);
            let mut list = if n == -233 { Vec::new() } else { vec![want("scale_data", raw, vec![size(n, "scale_data_size")?])] };
            if p(1, 0) != 0 {
                list.push(want("bias_data", raw, vec![size(n, "scale_data_size")?]));
            }
            list
        }
        "PReLU" => vec![want("slope_data", raw, vec![size(p(0, 0), "num_slope")?])],
        "Bias" => vec![want("bias_data", raw, vec![size(p(0, 0), "bias_data_size")?])],
        "Normalize" => vec![want("scale_data", raw, vec![size(p(3, 0), "scale_data_size")?])],
        "Embed" => {
            let mut list = vec![want("weight_data", Stored::Auto, vec![size(p(3, 0), "weight_data_size")?])];
            if p(2, 0) != 0 {
                list.push(want("bias_data", raw, vec![size(p(0, 0), "num_output")?]));
            }
            list
        }
        "MemoryData" => {
            let dims: Vec<u64> = [p(2, 0), p(11, 0), p(1, 0), p(0, 0)].into_iter().map(|d| size(d, "a dimension")).collect::<Result<_, _>>()?;
            let shape: Vec<u64> = dims.into_iter().skip_while(|&d| d == 0).collect();
            if shape.is_empty() { Vec::new() } else { vec![want("data", raw, shape)] }
        }
        kind if WEIGHTLESS.contains(&kind) => Vec::new(),
        _ => return Ok(None),
    }))
}

/// Layer types that read nothing from the `.bin`.
const WEIGHTLESS: &[&str] = &[
    "AbsVal", "ArgMax", "BNLL", "BinaryOp", "Cast", "CELU", "Clip", "Concat", "Crop", "DeepCopy", "DetectionOutput", "Dropout", "Eltwise", "ELU",
    "Erf", "Exp", "ExpandDims", "Flatten", "Flip", "Fold", "GELU", "GLU", "Gemm", "GridSample", "HardSigmoid", "HardSwish", "Input", "Interp",
    "Log", "LRN", "MatMul", "Mish", "MVN", "Noop", "Packing", "Padding", "Permute", "PixelShuffle", "Pooling", "Pooling1D", "Pooling3D", "Power",
    "PriorBox", "Proposal", "PSROIPooling", "Reduction", "ReLU", "Reorg", "Reshape", "ROIAlign", "ROIPooling", "SELU", "ShuffleChannel",
    "Sigmoid", "Slice", "Softmax", "Softplus", "Split", "SPP", "Squeeze", "StatisticsPooling", "Swish", "TanH", "Threshold", "Tile",
    "UnaryOp", "Unfold", "YoloDetectionOutput", "Yolov3DetectionOutput",
];

/// A table-quantized array's float32 values: each stored byte indexes a 256-entry table.
struct TableLookup {
    indices: Extent,
    table: Arc<[f32; 256]>,
}

impl TensorBytes for TableLookup {
    fn len(&self) -> u64 {
        self.indices.len * 4
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let first = offset / 4;
        let last = (offset + buf.len() as u64).div_ceil(4);
        let mut indices = vec![0u8; (last - first) as usize];
        self.indices.read_at(first, &mut indices)?;
        let values: Vec<u8> = indices.iter().flat_map(|&i| self.table[i as usize].to_le_bytes()).collect();
        let skip = (offset - first * 4) as usize;
        buf.copy_from_slice(&values[skip..skip + buf.len()]);
        Ok(())
    }
}

/// The `.bin` beside a `.param` file: `<stem>.bin` (`<stem>.param.bin` is the binary param
/// form, not weights).
fn bin_beside(blob: &Blob, dir: Option<&Dir>) -> Result<(String, Blob), OpenError> {
    let name = blob.file_name().unwrap_or_default();
    let stem = name.strip_suffix(".param").unwrap_or(&name);
    let bin = format!("{stem}.bin");
    let dir = dir.ok_or_else(|| OpenError::UnknownFormat("ncnn: a .param file needs its .bin beside it (not standard input)".into()))?;
    let file = dir.open(&bin).map_err(|e| OpenError::unreadable(format!("ncnn: the weights {} beside the .param: {e}", dir.shown(&bin))))?;
    Ok((bin, file))
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    let (bin_name, bin) = bin_beside(blob, dir)?;
    read_pair(blob, &bin_name, &bin)
}

/// A `.param` file with its `.bin` (`bin_name` names it in refusals).
pub(crate) fn read_pair(blob: &Blob, bin_name: &str, bin: &Blob) -> Result<Model, OpenError> {
    if blob.len() > MAX_PARAM {
        return Err(OpenError::corrupt(format!("ncnn: the .param file has {} bytes (at most {MAX_PARAM})", blob.len())));
    }
    let bytes = blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| OpenError::corrupt("ncnn: the .param file is not UTF-8 text"))?;
    let (blob_count, layers) = parse(text)?;
    let mut model = Model::default();
    let mut pos = 0u64;
    let mut unread = None;
    let mut storage: HashMap<&str, u64> = HashMap::new();
    for (index, layer) in layers.iter().enumerate() {
        let wanted = match arrays_of(layer) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => {
                unread = Some(format!("layer {index} ({} {}): how it reads its weights is not known; the .bin is read up to it", layer.kind, layer.name));
                break;
            }
            Err(why) => return Err(OpenError::corrupt(format!("ncnn: {why}"))),
        };
        for w in wanted {
            let name = format!("{index}_{}/{}", layer.kind, w.member);
            let count = Tensor::element_count(&w.shape).ok_or_else(|| OpenError::corrupt(format!("ncnn: {name}: shape {:?} overflows", w.shape)))?;
            let past_end = |len: u64, at: u64| OpenError::corrupt(format!("ncnn: {name}: {len} bytes at offset {at} run past the end of {bin_name} ({} bytes)", bin.len()));
            let take = |pos: &mut u64, len: u64| -> Result<Extent, OpenError> {
                if pos.checked_add(len).is_none_or(|end| end > bin.len()) {
                    return Err(past_end(len, *pos));
                }
                let extent = Extent { blob: bin.clone(), offset: *pos, len };
                *pos += len;
                Ok(extent)
            };
            let f32_len = count.checked_mul(4).ok_or_else(|| past_end(u64::MAX, pos))?;
            let (dtype, bytes, kind): (DType, Arc<dyn TensorBytes>, &str) = if w.stored == Stored::Raw {
                (DType::F32, Arc::new(take(&mut pos, f32_len)?), "raw")
            } else {
                let tag = take(&mut pos, 4)?;
                let tag = bin.read_vec(tag.offset, 4).map_err(|e| OpenError::unreadable(e.to_string()))?;
                match u32::from_le_bytes(tag.try_into().expect("4 bytes")) {
                    0x0130_6B47 => {
                        let data = take(&mut pos, padded(count * 2))?;
                        (DType::F16, Arc::new(Extent { len: count * 2, ..data }), "fp16")
                    }
                    0x000D_4B38 => {
                        let data = take(&mut pos, padded(count))?;
                        (DType::I8, Arc::new(Extent { len: count, ..data }), "int8")
                    }
                    0x0002_C056 | 0 => (DType::F32, Arc::new(take(&mut pos, f32_len)?), "fp32"),
                    _ => {
                        let table_extent = take(&mut pos, 256 * 4)?;
                        let table_bytes = bin.read_vec(table_extent.offset, table_extent.len).map_err(|e| OpenError::unreadable(e.to_string()))?;
                        let mut table = [0f32; 256];
                        for (value, chunk) in table.iter_mut().zip(table_bytes.chunks_exact(4)) {
                            *value = f32::from_le_bytes(chunk.try_into().expect("chunks of 4"));
                        }
                        let data = take(&mut pos, padded(count))?;
                        (DType::F32, Arc::new(TableLookup { indices: Extent { len: count, ..data }, table: Arc::new(table) }), "table-quantized")
                    }
                }
            };
            *storage.entry(kind).or_default() += 1;
            model.tensors.push(Tensor::named(&name, dtype, w.shape, bytes));
        }
    }
    if unread.is_none() && pos != bin.len() {
        return Err(OpenError::corrupt(format!("ncnn: the layers read {pos} bytes of {bin_name}, which has {}", bin.len())));
    }
    let mut types: Vec<&str> = layers.iter().map(|l| l.kind.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    model.info.insert("bin".into(), Value::from(bin_name));
    model.info.insert("layer_count".into(), json!(layers.len()));
    model.info.insert("blob_count".into(), json!(blob_count));
    model.info.insert("layer_types".into(), json!(types));
    let mut kinds: Vec<(&str, u64)> = storage.into_iter().collect();
    kinds.sort_unstable();
    model.info.insert("storage".into(), Value::Object(kinds.into_iter().map(|(k, n)| (k.to_string(), json!(n))).collect()));
    if let Some(why) = unread {
        model.info.insert("unread".into(), Value::from(why));
    }
    let graph: Vec<Value> = layers
        .iter()
        .map(|l| {
            let params: Map<String, Value> = l.params.iter().map(|(k, v)| (k.to_string(), v.json())).collect();
            json!({"type": l.kind, "name": l.name, "bottoms": l.bottoms, "tops": l.tops, "params": params})
        })
        .collect();
    model.add_json(vec!["graph.json".into()], &json!({ "layers": graph }));
    Ok(model)
}
